"""Edge: the head of sales' plan table (CSV or XLSX) in and out of plans.yaml."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from crmbridge.errors import MappingError
from crmbridge.kpi.load import load_kpis
from crmbridge.kpi.plans import (
    PLANS_FILE,
    PlanProblem,
    export_rows,
    merge_table,
    parse_plans,
    resolve,
    table_rows,
)
from crmbridge.mapping.load import did_you_mean, load_mappings, read_text
from crmbridge.mapping.yamlpos import read_yaml

HEADER_COMMENT = ("# yaml-language-server: $schema=./plans.schema.json\n"
                  "# Sales plans per manager, metric and period (crmbridge plans import merges a table into it).\n")


def read_cells(path: Path) -> list[list[Any]]:
    """The table's cells, header first: CSV (comma or semicolon, UTF-8 with or without BOM) or the first XLSX sheet."""
    if not path.exists():
        raise MappingError([f"{path}:1: file not found — give the path of the CSV or XLSX table"])
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        from openpyxl import load_workbook

        try:
            book = load_workbook(path, read_only=True, data_only=True)
        except Exception as bad:  # noqa: BLE001 - openpyxl raises many kinds for a broken file
            raise MappingError([f"{path}:1: not a readable XLSX file ({type(bad).__name__}) — save it again from Excel"]) from None
        sheet = book.worksheets[0]
        cells = [list(row) for row in sheet.iter_rows(values_only=True)]
        book.close()
        return cells
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise MappingError([f"{path}:1: not UTF-8 text — save the table as CSV UTF-8"]) from None
    dialect = "excel-tab" if "\t" in text.splitlines()[0] else None
    delimiter = ";" if dialect is None and text.splitlines()[0].count(";") > text.splitlines()[0].count(",") else ","
    reader = csv.reader(io.StringIO(text), dialect=dialect) if dialect else csv.reader(io.StringIO(text), delimiter=delimiter)
    return [row for row in reader]


def import_table(table: Path, target: Path, mappings_dir: Path, *, dry_run: bool = False) -> tuple[str, int]:
    """Merge the table into plans.yaml and check the result; nothing is written when it has problems."""
    from crmbridge.commands import common

    mappings = load_mappings(mappings_dir, crm=common.settings().crm)
    kpis = load_kpis(mappings_dir, mappings).kpis
    rows, problems = table_rows(read_cells(table), str(table))
    for row in rows:
        if row.metric not in kpis.kpis:
            problems.append(_problem(f"{table}:{row.line}", f'unknown metric "{row.metric}"',
                                     did_you_mean(row.metric, kpis.kpis)))
        if row.direction is not None and row.direction not in mappings.regulation.directions:
            problems.append(_problem(f"{table}:{row.line}", f'unknown direction "{row.direction}"',
                                     did_you_mean(row.direction, mappings.regulation.directions)))
    if problems:
        raise MappingError([str(problem) for problem in sorted(problems)])
    yaml = _round_trip()
    if target.exists():
        doc = read_yaml(read_text(target), str(target))
        if doc.problems:
            raise MappingError([str(problem) for problem in doc.problems])
        data = yaml.load(read_text(target))  # round-trip: the admin's comments and layout survive the merge
        text_before = None
    else:
        data, text_before = None, HEADER_COMMENT
    merged = merge_table(data, rows)
    out = io.StringIO()
    yaml.dump(merged, out)
    text = (text_before or "") + out.getvalue()
    checked = parse_plans(text, str(target), metrics=kpis.kpis, directions=mappings.regulation.directions)
    resolution = resolve(checked.inputs)
    found = [*checked.problems, *resolution.problems]
    if found:
        raise MappingError([f"after the merge: {problem}" for problem in found])
    if not dry_run:
        target.write_text(text, encoding="utf-8")
    return text, len(rows)


def _problem(where: str, what: str, fix: str) -> PlanProblem:
    return PlanProblem(where, what, fix)


def _round_trip() -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 120
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def dump_plans(data: dict[str, Any]) -> str:
    """Plain plans data as YAML text (the header comment not included)."""
    out = io.StringIO()
    plain = {"version": data.get("version", 1), **{k: v for k, v in data.items() if k != "version"}}
    _round_trip().dump(plain, out)
    return out.getvalue()


def export_table(mappings_dir: Path, out: Path | None, *, written_only: bool = True) -> int:
    """plans.yaml and the portal's plan items (from the cache) as the table `plans import` reads."""
    from crmbridge.commands import common
    from crmbridge.commands.kpi import optional_cache
    from crmbridge.kpi.service import plan_state

    settings = common.settings()
    mappings = load_mappings(mappings_dir, crm=settings.crm)
    kpis = load_kpis(mappings_dir, mappings).kpis
    with optional_cache() as cache:
        state = plan_state(cache, mappings_dir, mappings, kpis, None)
    if state.errors:
        raise MappingError([str(problem) for problem in state.errors])
    table = export_rows(state.resolution.rows if state.resolution else [], written_only=written_only)
    if out is None:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerows(table)
    elif out.suffix.lower() == ".xlsx":
        from openpyxl import Workbook

        book = Workbook()
        sheet = book.active
        sheet.title = "plans"
        for row in table:
            sheet.append(row)
        book.save(out)
    else:
        with out.open("w", encoding="utf-8", newline="") as handle:
            csv.writer(handle, lineterminator="\n").writerows(table)
    return len(table) - 1


__all__ = ["PLANS_FILE", "dump_plans", "export_table", "import_table", "read_cells"]

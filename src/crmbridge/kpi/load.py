"""Load and lint kpi.yaml, plans.yaml and motivation.yaml: every problem as `file:line:col: what — fix`."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from crmbridge.errors import MappingError
from crmbridge.kpi.plans import PLANS_FILE, ParsedPlans, PlanProblem, parse_plans
from crmbridge.kpi.schema import DATES, KpiFileSpec, MotivationSpec
from crmbridge.mapping.load import Mappings, did_you_mean, read_text, validate_document
from crmbridge.mapping.yamlpos import LocatedDocument, Problem, read_yaml

KPI_FILE = "kpi.yaml"
MOTIVATION_FILE = "motivation.yaml"
#: deal values besides bound number fields
DEAL_VALUES = ("amount", "cycle_days")


@dataclass(frozen=True)
class KpiFiles:
    """kpi.yaml (the shipped default when the admin has none) and where it came from."""

    kpis: KpiFileSpec
    path: str


def default_kpi_text() -> str:
    return files("crmbridge.defaults").joinpath(KPI_FILE).read_text(encoding="utf-8")


def parse_kpis(text: str, file: str, mappings: Mappings | None) -> tuple[KpiFileSpec | None, list[Problem]]:
    doc = read_yaml(text, file)
    spec = validate_document(doc, KpiFileSpec)
    if isinstance(spec, KpiFileSpec):
        _lint_kpis(doc, spec, mappings)
    problems = sorted(set(doc.problems))
    return (spec if not problems else None), problems  # type: ignore[return-value]


def _lint_kpis(doc: LocatedDocument, spec: KpiFileSpec, mappings: Mappings | None) -> None:
    number_fields: list[str] = []
    if mappings is not None:
        number_fields = [field_id for field_id, field in mappings.regulation.fields.items()
                         if field.type == "number" and field_id in mappings.binding.fields]
    for kpi_id, kpi in spec.kpis.items():
        base = ("kpis", kpi_id)
        needs_source = kpi.aggregate in ("count", "sum", "average", "median", "p90")
        if needs_source and kpi.source is None:
            doc.problem(base, f'KPI "{kpi_id}": {kpi.aggregate} needs `source`', "add `source: deals` (or activities, tasks)",
                        key=True)
        if not needs_source and kpi.source is not None:
            doc.problem(base + ("source",), f'KPI "{kpi_id}": {kpi.aggregate} has no source',
                        "remove `source` (and `where`, `date`)")
        if kpi.source is not None and kpi.date is not None and kpi.date not in DATES[kpi.source]:
            doc.problem(base + ("date",), f'KPI "{kpi_id}": {kpi.source} have no date "{kpi.date}"',
                        did_you_mean(kpi.date, DATES[kpi.source]))
        if kpi.aggregate in ("sum", "average", "median", "p90"):
            if kpi.source != "deals":
                doc.problem(base + ("aggregate",), f'KPI "{kpi_id}": {kpi.aggregate} adds up deal values only',
                            "use `source: deals`, or `aggregate: count` for activities and tasks")
            elif kpi.value is None:
                doc.problem(base, f'KPI "{kpi_id}": {kpi.aggregate} of what?',
                            "add `value: amount` (or cycle_days, or a number field of the binding)", key=True)
            elif kpi.value not in DEAL_VALUES and mappings is not None and kpi.value not in number_fields:
                doc.problem(base + ("value",), f'KPI "{kpi_id}": "{kpi.value}" is not a number field bound in the binding',
                            did_you_mean(kpi.value, [*DEAL_VALUES, *number_fields])
                            + " (declare it under `fields:` of regulation.yaml and bind it)")
        if kpi.aggregate == "growth":
            target = spec.kpis.get(kpi.of or "")
            if kpi.of is None:
                doc.problem(base, f'KPI "{kpi_id}": growth of which KPI?', "add `of: revenue`", key=True)
            elif target is None:
                doc.problem(base + ("of",), f'KPI "{kpi_id}": no KPI "{kpi.of}"', did_you_mean(kpi.of, spec.kpis))
            elif target.aggregate in ("growth", "conversion"):
                doc.problem(base + ("of",), f'KPI "{kpi_id}": growth of a {target.aggregate} KPI is not defined',
                            "point `of` at a count, sum or average KPI")
        if kpi.where.outcome is not None and kpi.source != "deals":
            doc.problem(base + ("where", "outcome"), f'KPI "{kpi_id}": outcome filters deals',
                        "remove it, or use `source: deals`")
        if (kpi.where.kind or kpi.where.completed is not None or kpi.where.overdue is not None) and kpi.source == "deals":
            doc.problem(base + ("where",), f'KPI "{kpi_id}": kind / completed / overdue filter activities and tasks',
                        "remove them, or change `source`")
    for index, kpi_id in enumerate(spec.headline):
        if kpi_id not in spec.kpis:
            doc.problem(("headline", index), f'headline: no KPI "{kpi_id}"', did_you_mean(kpi_id, spec.kpis))


def load_kpis(directory: str | Path, mappings: Mappings | None) -> KpiFiles:
    """kpi.yaml of the mappings directory, else the shipped default; MappingError lists every problem."""
    path = Path(directory) / KPI_FILE
    text = read_text(path) if path.exists() else default_kpi_text()
    where = str(path) if path.exists() else f"{KPI_FILE} (shipped default)"
    spec, problems = parse_kpis(text, where, mappings)
    if problems or spec is None:
        raise MappingError([str(problem) for problem in problems] or [f"{where}:1:1: cannot be loaded"])
    return KpiFiles(spec, where)


#: plans name CRM user ids, so each CRM's binding has its plans file (as it has its binding file)
PLANS_FILES = {"bitrix24": PLANS_FILE, "amocrm": "plans.amocrm.yaml"}


def plans_path(directory: str | Path, mappings: Mappings | None) -> Path:
    crm = getattr(mappings.binding, "crm", "bitrix24") if mappings is not None else "bitrix24"
    return Path(directory) / PLANS_FILES.get(crm, f"plans.{crm}.yaml")


def load_plans_file(directory: str | Path, kpis: KpiFileSpec, mappings: Mappings | None,
                    managers: set[str] | None = None) -> ParsedPlans | None:
    """The plans file of the mappings directory (None when there is none: the KPIs then show facts only)."""
    path = plans_path(directory, mappings)
    if not path.exists():
        return None
    directions = list(mappings.regulation.directions) if mappings is not None else []
    return parse_plans(read_text(path), str(path), metrics=list(kpis.kpis), directions=directions,
                       managers=managers)


def raise_plan_problems(problems: list[PlanProblem]) -> None:
    if problems:
        raise MappingError([str(problem) for problem in problems])


def parse_motivation(text: str, file: str, kpis: KpiFileSpec) -> tuple[MotivationSpec | None, list[Problem]]:
    doc = read_yaml(text, file)
    spec = validate_document(doc, MotivationSpec)
    if isinstance(spec, MotivationSpec):
        for path, kpi_id in _motivation_kpis(spec):
            if kpi_id not in kpis.kpis:
                doc.problem(path, f'no KPI "{kpi_id}" in kpi.yaml', did_you_mean(kpi_id, kpis.kpis))
    problems = sorted(set(doc.problems))
    return (spec if not problems else None), problems  # type: ignore[return-value]


def _motivation_kpis(spec: MotivationSpec) -> list[tuple[tuple[Any, ...], str]]:
    found: list[tuple[tuple[Any, ...], str]] = []
    if spec.commission is not None:
        found.append((("commission", "kpi"), spec.commission.kpi))
    if spec.bonus is not None:
        found.append((("bonus", "kpi"), spec.bonus.kpi))
    if spec.kpi_bonus is not None:
        found.extend(((("kpi_bonus", "weights", kpi_id)), kpi_id) for kpi_id in spec.kpi_bonus.weights)
    return found


def load_motivation(directory: str | Path, kpis: KpiFileSpec) -> tuple[MotivationSpec, str]:
    path = Path(directory) / MOTIVATION_FILE
    if not path.exists():
        raise MappingError([f"{path}:1:1: file not found — copy the shipped mappings/motivation.yaml and edit it"])
    spec, problems = parse_motivation(read_text(path), str(path), kpis)
    if problems or spec is None:
        raise MappingError([str(problem) for problem in problems] or [f"{path}:1:1: cannot be loaded"])
    return spec, str(path)

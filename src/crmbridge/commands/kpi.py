"""`crmbridge kpi | kpi snapshot | kpi push | plans check|import|export | payout | report`: plans and KPIs from the cache."""

from __future__ import annotations

import csv
import io
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import typer
from rich.table import Table

from crmbridge.commands import common
from crmbridge.errors import MappingError
from crmbridge.kpi import present
from crmbridge.kpi.facts import KpiRow
from crmbridge.kpi.periods import Period, PeriodError, last_full_month
from crmbridge.kpi.service import KpiSession, open_session, plan_state, portal_zone, take_snapshot
from crmbridge.mapping.load import did_you_mean

kpi_app = typer.Typer(help="KPIs: plan, fact, share done and trend per manager, department and company.",
                      invoke_without_command=True, no_args_is_help=False)
plans_app = typer.Typer(help="Sales plans: check, import the head of sales' table, export.", no_args_is_help=True)

PERIOD_HELP = "2026-11, 2026-Q4, 2026-H2 or 2026 (default: the current month)"


def parse_period(text: str | None, default: Period) -> Period:
    if text is None:
        return default
    try:
        return Period.parse(text)
    except PeriodError as bad:
        raise typer.BadParameter(str(bad), param_hint="--period") from None


def _now() -> datetime:
    return datetime.now(timezone.utc)


@contextmanager
def kpi_session(mappings_dir: Path | None, now: datetime) -> Iterator[tuple[KpiSession, Any]]:
    """The cache (refused when missing) and a KPI session over it; warnings of portal plans and rates on stderr."""
    settings = common.settings()
    with common.cache(settings) as cache:
        session = open_session(cache, mappings_dir or settings.mappings_dir, now, crm=settings.crm)
        for warning in [*session.data.warnings, *session.plans.warnings]:
            common.err_console.print(f"[yellow]warning[/yellow]: {warning}", highlight=False, markup=True)
        yield session, cache


@contextmanager
def optional_cache() -> Iterator[Any]:
    """The cache when there is one (plans check and export work without it), else None."""
    settings = common.settings()
    if not settings.cache_path.exists():
        yield None
        return
    with common.cache(settings) as cache:
        yield cache


@contextmanager
def month_session(mappings_dir: Path | None, period: str | None, what: str) -> Iterator[tuple[KpiSession, Any, Period, datetime]]:
    """The KPI session of a month command (payout, report): the month given, else the last full one."""
    now = _now()
    with kpi_session(mappings_dir, now) as (session, cache):
        chosen = parse_period(period, last_full_month(now.astimezone(portal_zone(session.mappings)).date()))
        if chosen.kind != "month":
            raise typer.BadParameter(f"{what} per month, e.g. 2026-11", param_hint="--period")
        yield session, cache, chosen, now


def current_month(session: KpiSession, now: datetime) -> Period:
    return Period.containing(now.astimezone(portal_zone(session.mappings)).date())


def rows_as_csv(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if value is None else value for key, value in row.items()})
    return out.getvalue()


JSON_KEYS = ("period", "scope", "manager_id", "department_id", "direction", "kpi", "plan", "fact", "share_done",
             "previous", "trend")


def register(app: typer.Typer) -> None:
    app.add_typer(kpi_app, name="kpi")
    app.add_typer(plans_app, name="plans")

    @kpi_app.callback()
    def kpi(
        ctx: typer.Context,
        period: str = typer.Option(None, "--period", help=PERIOD_HELP),
        manager: str = typer.Option(None, "--manager", help="Only this manager (the CRM user id)."),
        direction: str = typer.Option(None, "--direction", help="Only this direction (a direction id)."),
        as_json: bool = typer.Option(False, "--json", help="A JSON list of rows."),
        as_csv: bool = typer.Option(False, "--csv", help="CSV rows."),
        mappings_dir: Path = typer.Option(None, "--mappings", help="Directory with the mapping files."),
    ) -> None:
        """Plan, fact, share done and trend of every KPI (kpi.yaml) per manager, department and company."""
        if ctx.invoked_subcommand is not None:
            return
        now = _now()
        with kpi_session(mappings_dir, now) as (session, _):
            chosen = parse_period(period, current_month(session, now))
            if direction is not None and direction not in session.directions:
                raise typer.BadParameter(f'no direction "{direction}" — {did_you_mean(direction, session.directions)}',
                                         param_hint="--direction")
            if manager is not None and manager not in session.data.users and not manager.isdigit():
                raise typer.BadParameter(f'"{manager}" is not a CRM user id', param_hint="--manager")
            rows = session.rows([chosen], managers={manager} if manager else None,
                                direction_filter=direction if direction else "*")
        if as_json:
            common.print_json([row.as_json() for row in rows])
        elif as_csv:
            sys.stdout.write(rows_as_csv((row.as_json() for row in rows), JSON_KEYS))
        else:
            print_kpi_tables(session, rows, chosen, direction)

    @kpi_app.command("snapshot")
    def snapshot(
        period: str = typer.Option(None, "--period", help="2026-11 (default: the last full month), or 2026-Q4 ..."),
        as_json: bool = typer.Option(False, "--json", help="A JSON summary (for scheduled jobs)."),
        mappings_dir: Path = typer.Option(None, "--mappings", help="Directory with the mapping files."),
    ) -> None:
        """Write the period's KPIs into kpi_snapshots: same figures write nothing; changed ones keep the old as history."""
        now = _now()
        with kpi_session(mappings_dir, now) as (session, cache):
            chosen = parse_period(period, last_full_month(now.astimezone(portal_zone(session.mappings)).date()))
            result = take_snapshot(cache, session, chosen, now)
        changed = [{"kpi": row.kpi, "scope": row.scope, "manager_id": row.manager_id,
                    "department_id": row.department_id, "direction": row.direction,
                    "plan_before": old["plan"], "fact_before": old["fact"], "plan": row.plan, "fact": row.fact}
                   for old, row in result.changed]
        if as_json:
            common.print_json({"period": result.period, "written": result.written, "unchanged": result.unchanged,
                               "changed": changed})
            return
        common.console.print(f"[green]✓[/green] KPI snapshot {result.period}: {result.written:,} figures written, "
                             f"{result.unchanged:,} unchanged")
        if changed:
            common.console.print(f"[yellow]{len(changed)} figures differ from the earlier snapshot[/yellow] "
                                 "(the earlier rows are kept, superseded): e.g.")
            for item in changed[:10]:
                who = item["manager_id"] or item["department_id"] or item["scope"]
                common.console.print(f"  {item['kpi']} {who} {item['direction'] or ''}: "
                                     f"{item['fact_before']} → {item['fact']}", highlight=False)

    @kpi_app.command("push")
    def push(
        period: str = typer.Option(None, "--period", help="2026-11 (default: the last full month)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Show the messages; write nothing to the CRM."),
        as_json: bool = typer.Option(False, "--json", help="A JSON summary (for scheduled jobs)."),
        mappings_dir: Path = typer.Option(None, "--mappings", help="Directory with the mapping files."),
    ) -> None:
        """Message each manager their plan and fact of the month, and each head of sales the managers' table: once per
        person and period, in working hours, through the enforcement outbox (Bitrix24 chat)."""
        from crmbridge.kpi.push_run import push_month

        settings = common.settings()
        now = _now()
        with kpi_session(mappings_dir, now) as (session, cache):
            chosen = parse_period(period, last_full_month(now.astimezone(portal_zone(session.mappings)).date()))
            report = push_month(common.crm_client(settings), cache, session, chosen, dry_run=dry_run,
                                channel=settings.enforce_notify_channel, client_id=settings.bitrix24_client_id)
        if as_json:
            common.print_json(report.as_dict())
            return
        if dry_run:
            for key, text in report.texts.items():
                common.console.print(f"[bold]{key}[/bold]\n{text}\n", highlight=False, markup=False)
        execution = report.execution
        written = execution.done if execution is not None else 0
        common.console.print(
            f"KPI messages {report.period}: {report.composed} composed" + ("" if dry_run else f", {written} written")
            + f", {report.already_sent} sent by an earlier run"
            + "".join(f", {count} waiting ({why.replace('_', ' ')})" for why, count in report.held.items()),
            highlight=False, markup=False)
        if execution is not None and (execution.failed or execution.unknown):
            for error in execution.errors[:10]:
                common.err_console.print(error, highlight=False, markup=False)
            raise typer.Exit(1)

    @plans_app.command("check")
    def plans_check(
        mappings_dir: Path = typer.Option(None, "--mappings", help="Directory with the mapping files."),
    ) -> None:
        """Validate plans.yaml (and the portal's plan items the last sync cached): file:line:col for every problem."""
        problems, summary = check_plan_files(mappings_dir or common.settings().mappings_dir)
        if problems:
            raise MappingError(problems)
        common.console.print(f"[green]ok[/green]: {summary}")

    @plans_app.command("import")
    def plans_import(
        table: Path = typer.Argument(..., help="The plan table: CSV or XLSX with columns manager, period, metric, "
                                               "target (and optionally direction)."),
        out: Path = typer.Option(None, "--out", help="The plans file to write or merge into (default: <mappings>/plans.yaml; "
                                                     "plans.amocrm.yaml on amoCRM)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Check and show what would change, write nothing."),
    ) -> None:
        """Merge the head of sales' table into plans.yaml (a row replaces the same manager, metric and period)."""
        from crmbridge.kpi import tables

        settings = common.settings()
        from crmbridge.kpi.load import plans_path
        from crmbridge.mapping.load import load_mappings

        target = out or plans_path(settings.mappings_dir, load_mappings(settings.mappings_dir, crm=settings.crm))
        written, count = tables.import_table(table, target, settings.mappings_dir, dry_run=dry_run)
        if dry_run:
            sys.stdout.write(written)
            return
        common.console.print(f"[green]✓[/green] {count} rows of {table} merged into {target}; "
                             "`crmbridge plans check` passed")

    @plans_app.command("export")
    def plans_export(
        out: Path = typer.Option(None, "--out", help="A .csv or .xlsx file (default: CSV on standard output)."),
        all_rows: bool = typer.Option(False, "--all", help="Also the months spread from quarters and years."),
        mappings_dir: Path = typer.Option(None, "--mappings", help="Directory with the mapping files."),
    ) -> None:
        """The plans in force (file and portal) as the table `plans import` reads."""
        from crmbridge.kpi import tables

        count = tables.export_table(mappings_dir or common.settings().mappings_dir, out, written_only=not all_rows)
        if out is not None:
            common.console.print(f"[green]✓[/green] {count} plan rows written to {out}")

    @app.command()
    def payout(
        period: str = typer.Option(None, "--period", help="The month (default: the last full month)."),
        as_csv: bool = typer.Option(False, "--csv", help="CSV for payroll."),
        as_json: bool = typer.Option(False, "--json", help="JSON rows."),
        mappings_dir: Path = typer.Option(None, "--mappings", help="Directory with the mapping files."),
    ) -> None:
        """Pay per manager for a month from motivation.yaml: base, commission, bonus steps, KPI bonus, deductions."""
        from crmbridge.kpi.payroll import payout_rows

        with month_session(mappings_dir, period, "pay is computed") as (session, _, chosen, _):
            rows, columns = payout_rows(session, mappings_dir or common.settings().mappings_dir, chosen)
        if as_csv:
            sys.stdout.write(rows_as_csv(rows, columns))
        elif as_json:
            common.print_json(rows)
        else:
            table = Table(title=f"Payout {chosen}", title_justify="left")
            for column in ("manager", "base_salary", "commission", "bonus", "kpi_bonus", "deduction", "total"):
                table.add_column(column, justify="left" if column == "manager" else "right")
            for row in rows:
                table.add_row(f"{row['manager']} ({row['manager_id']})",
                              *(f"{row[c]:,.0f}" if row[c] is not None else "—"
                                for c in ("base_salary", "commission", "bonus", "kpi_bonus", "deduction", "total")))
            common.console.print(table)

    @app.command()
    def report(
        html: Path = typer.Option(..., "--html", help="Where to write the report (one self-contained HTML file)."),
        period: str = typer.Option(None, "--period", help="The last month shown (default: the last full month)."),
        mappings_dir: Path = typer.Option(None, "--mappings", help="Directory with the mapping files."),
    ) -> None:
        """A self-contained HTML report (opens offline): plan vs fact, funnel, cycle, compliance, violations."""
        from crmbridge.kpi.report import build_report

        with month_session(mappings_dir, period, "the report ends with a month: give one") as (session, cache, chosen, now):
            text = build_report(session, cache, chosen, now)
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(text, encoding="utf-8")
        common.console.print(f"[green]✓[/green] wrote {html} ({len(text.encode('utf-8')) / 1024:.0f} KB)")


def check_plan_files(directory: Path) -> tuple[list[str], str]:
    """plans.yaml (+ the portal's items in the cache, when there is one) and kpi.yaml / motivation.yaml."""
    from crmbridge.kpi.load import MOTIVATION_FILE, load_kpis, load_motivation
    from crmbridge.kpi.service import people_data
    from crmbridge.mapping.load import load_mappings

    mappings = load_mappings(directory, crm=getattr(common.settings(), "crm", None))
    kpis = load_kpis(directory, mappings).kpis
    problems: list[str] = []
    if (directory / MOTIVATION_FILE).exists():
        try:
            load_motivation(directory, kpis)
        except MappingError as bad:
            problems.extend(bad.problems)
    with optional_cache() as cache:
        data = people_data(cache) if cache is not None else None
        state = plan_state(cache, directory, mappings, kpis, data)
    problems.extend(str(problem) for problem in state.errors)
    for warning in state.warnings:
        common.err_console.print(f"[yellow]warning[/yellow]: {warning}", highlight=False)
    rows = state.resolution.rows if state.resolution is not None else []
    written = sum(1 for row in rows if row.written)
    sources = ", ".join(state.files) or "no plans (the KPIs show facts only)"
    departments = "" if data is not None and data.departments else " (departments not checked: no cache yet)"
    return problems, f"{written} plan figures from {sources}{departments}"


def print_kpi_tables(session: KpiSession, rows: list[KpiRow], period: Period, direction: str | None) -> None:
    language = session.mappings.regulation.language
    w = present.words(language)
    kpis = session.kpis
    wanted_direction = direction
    shown = [row for row in rows if row.direction == wanted_direction]
    headline = [kpi for kpi in (kpis.headline or list(kpis.kpis)[:3]) if kpi in kpis.kpis]
    other = [kpi for kpi, spec in kpis.kpis.items() if kpi not in headline]
    by_unit: dict[tuple[str, str | None, str | None], dict[str, KpiRow]] = {}
    for row in shown:
        by_unit.setdefault((row.scope, row.manager_id, row.department_id), {})[row.kpi] = row
    where = f" — {wanted_direction}" if wanted_direction else f" — {w['all']}"
    table = Table(title=f"{w['plan_fact']}, {period.label(language)}{where}", title_justify="left")
    table.add_column(w["manager"])
    for kpi in headline:
        table.add_column(f"{kpis.kpis[kpi].label}\n{w['fact']} / {w['plan']}", justify="right")
        table.add_column(w["done"], justify="right")
    for (scope, _, _), figures in by_unit.items():
        any_row = next(iter(figures.values()))
        name = present.scope_name(any_row, session.data, language)
        cells = []
        for kpi in headline:
            row = figures.get(kpi)
            if row is None:
                cells.extend(["", ""])
                continue
            unit = kpis.kpis[kpi].unit
            fact = present.fmt_value(row.fact, unit, language)
            plan = present.fmt_value(row.plan, unit, language) if row.plan is not None else "—"
            trend = present.fmt_trend(row.trend)
            cells.append(f"{fact} / {plan}" + (f" {trend}" if trend else ""))
            colour = "" if row.share_done is None else ("green" if row.share_done >= 1 else
                                                         "yellow" if row.share_done >= 0.8 else "red")
            cells.append(f"[{colour}]{present.fmt_share(row.share_done)}[/]" if colour else present.fmt_share(row.share_done))
        style = "bold" if scope != "manager" else None
        table.add_row(name, *cells, style=style)
    common.console.print(table)
    activity = [kpi for kpi in other if kpis.kpis[kpi].source in ("activities", "tasks")]
    quality = [kpi for kpi in other if kpi not in activity]
    for title, columns in ((w["activity"], activity), (w["quality"], quality)):
        if not columns:
            continue
        table = Table(title=f"{title}, {period.label(language)}{where}", title_justify="left")
        table.add_column(w["manager"])
        for kpi in columns:
            table.add_column(kpis.kpis[kpi].label, justify="right")
        for (scope, _, _), figures in by_unit.items():
            any_row = next(iter(figures.values()))
            cells = [present.fmt_value(figures[kpi].fact, kpis.kpis[kpi].unit, language) if kpi in figures else ""
                     for kpi in columns]
            table.add_row(present.scope_name(any_row, session.data, language), *cells,
                          style="bold" if scope != "manager" else None)
        common.console.print(table)
    plans = session.plans
    if plans.files:
        common.console.print(f"{w['plans_from']}: {', '.join(plans.files)}; {w['base_currency']}: "
                             f"{session.data.base_currency}", highlight=False)

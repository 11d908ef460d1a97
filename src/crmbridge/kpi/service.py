"""Edge: the cache and the admin's files -> the KPI engine, the plans in force, snapshots written back."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from typing import Any, Iterable
from zoneinfo import ZoneInfo

from crmbridge.bulk import paused_gc
from crmbridge.cache import kpi as store
from crmbridge.cache.store import Cache
from crmbridge.errors import MappingError
from crmbridge.kpi import inputs
from crmbridge.kpi.facts import KpiEngine, KpiRow, department_members, kpi_rows, work_kinds
from crmbridge.kpi.inputs import Binding, FactData, LocalTime, WorkFact
from crmbridge.kpi.load import load_kpis, load_plans_file, plans_path
from crmbridge.kpi.periods import Period
from crmbridge.kpi.plans import PlanBook, PlanInput, PlanProblem, PortalPlanFields, Resolution, portal_plan_inputs, resolve
from crmbridge.kpi.schema import KpiFileSpec
from crmbridge.mapping.load import Mappings, load_mappings
from crmbridge.mapping.schema import IGNORE
from crmbridge.model import WON


def portal_zone(mappings: Mappings) -> tzinfo:
    name = mappings.binding.timezone or (mappings.regulation.calendar.timezone if mappings.regulation.calendar else None)
    return ZoneInfo(name) if name else timezone.utc


def binding_view(mappings: Mappings, kpis: KpiFileSpec) -> Binding:
    """What the KPIs need of the binding and the regulation."""
    direction_of: dict[str, str | None] = {}
    stage_of: dict[tuple[str, str], tuple[str | None, str | None]] = {}
    for category, pipeline in mappings.binding.pipelines.items():
        direction = None if pipeline.direction == IGNORE else pipeline.direction
        direction_of[category] = direction
        for crm_stage, target in pipeline.stages.items():
            stage_of[(category, crm_stage)] = (direction, None if target == IGNORE or direction is None else target)
    funnels = {direction_id: [*direction.stage_ids, WON] for direction_id, direction in mappings.regulation.directions.items()}
    wanted = {spec.value for spec in kpis.kpis.values() if spec.value not in (None, "amount", "cycle_days")}
    fields = {field_id: mappings.binding.fields[field_id].crm_field for field_id in sorted(wanted)
              if field_id in mappings.binding.fields}
    return Binding(direction_of, stage_of, funnels, fields)


def work_needs(kpis: KpiFileSpec) -> dict[str, dict[str, bool]]:
    """Per table of calls / to-dos / tasks (cache/kpi.py WORK_SOURCES): the dates the KPIs count its rows by, each
    with whether a KPI so dated asks which rows are overdue. A table no KPI counts is not read."""
    needs: dict[str, dict[str, bool]] = {}
    for spec in kpis.kpis.values():
        if spec.source not in ("activities", "tasks") or spec.aggregate in ("new_clients", "conversion", "compliance",
                                                                             "growth"):
            continue
        kinds = work_kinds(spec)
        date = spec.date or ("start" if spec.source == "activities" else "closed")
        date = "closed" if date == "completed" else date
        for source, held in inputs.SOURCE_KINDS.items():
            if kinds & held:
                dates = needs.setdefault(source, {})
                dates[date] = dates.get(date, False) or spec.where.overdue is not None
    return needs


@dataclass
class GroupedReads:
    """What SQL grouped (cache/kpi.py): per source and dates read alike, the groups and whether they hold every row
    with such a date; the stage changes the same; the violations."""

    #: (source, its dates read alike, whether overdue rows are told apart, groups, every row grouped)
    work: list[tuple[str, list[str], bool, list[Any], bool]] = field(default_factory=list)
    stages: list[tuple[Any, ...]] = field(default_factory=list)
    stages_all_grouped: bool = False
    violations: list[tuple[Any, ...]] = field(default_factory=list)


def grouped_reads(cache: Cache, needs: dict[str, dict[str, bool]], suffix: str | None,
                  at_now: tuple[str, bool] | None) -> GroupedReads:
    """The grouped reads, in one read transaction (they may run on a connection of their own: see fact_data)."""
    found = GroupedReads()
    with store.read_snapshot(cache):
        for name, dates in needs.items():
            source = store.WORK_SOURCES[name]
            # one query per column (to-dos and tasks are started and due at their deadline) and lateness
            alike: dict[tuple[str, bool, bool], list[str]] = {}
            for date, late in sorted(dates.items()):
                alike.setdefault((source.dates[date], date == "closed", late), []).append(date)
            for (_, _, late), names in sorted(alike.items()):
                if suffix is None:
                    found.work.append((name, names, late, [], False))
                    continue
                groups = store.work_groups(cache, source, names[0], suffix, at_now if late else None)
                every_row = sum(group.rows for group in groups) == store.work_count(cache, source, names[0])
                found.work.append((name, names, late, groups, every_row))
        if suffix is not None:
            found.stages = store.stage_groups(cache, suffix)
            found.stages_all_grouped = sum(group[4] for group in found.stages) == store.stage_count(cache)
        found.violations = store.violation_rows(cache, suffix)
    return found


@paused_gc()  # about a million small acyclic facts: the cycle collector would rescan them again and again
def fact_data(cache: Cache, mappings: Mappings, kpis: KpiFileSpec, now: datetime, *, grouped: bool = True) -> FactData:
    """Everything the KPIs count, read from the cache: deals one by one, calls, to-dos, tasks and stage changes
    grouped in SQL where their timestamps allow (cache/kpi.py), the rest one by one (`grouped` False: every row one by
    one, the slow way the grouped reads must agree with).

    The grouped reads are mostly SQLite's own work, done without holding Python's lock: on a second connection of a
    file cache they run in a thread while this one reads and converts the deals (two cores: about half the time)."""
    binding = binding_view(mappings, kpis)
    clock = LocalTime(portal_zone(mappings))
    suffix = clock.fixed_suffix if grouped else None
    at_now = store_moment(now, clock) if suffix is not None else None
    if at_now is not None and not at_now[0].endswith(suffix or ""):
        suffix = at_now = None  # the zone's offset changed since (a far future `now`): every row one by one
    needs = work_needs(kpis)
    with ThreadPoolExecutor(max_workers=1) as pool:
        side = store.side_reader(cache)
        pending = pool.submit(_grouped_reads_on, side, needs, suffix, at_now) if side is not None else None
        warnings: list[str] = []
        base, rates = inputs.currency_rates(store.currency_rows(cache), kpis.base_currency)
        deals = inputs.deal_facts(store.deal_rows(cache, suffix), binding, rates, base, clock, warnings,
                                  store.deal_values(cache, binding.fields, mappings.binding.crm))
        known = store.deal_ids(cache)
        directions = inputs.DealDirections(deals, known) if suffix is not None and needs else None
        users, departments = inputs.people(store.user_rows(cache), store.department_rows(cache))
        reads = pending.result() if pending is not None else grouped_reads(cache, needs, suffix, at_now)
    by_id = {deal.id: deal for deal in deals}
    direction_of = {deal.id: deal.direction for deal in deals}
    work: list[WorkFact] = []
    for name, names, late, groups, every_row in reads.work:
        if groups:
            work += inputs.grouped_work(name, groups, names, directions or inputs.DealDirections([], []), clock, late)
        if not every_row:
            rows = store.work_singles(cache, store.WORK_SOURCES[name], names[0], late, suffix)
            work += inputs.single_work(name, rows, direction_of, known, clock, [*names, *(["overdue"] if late else [])])
    rule_directions: dict[str, set[str]] = {}
    for direction_id in mappings.regulation.directions:
        rules = mappings.regulation.rules_for(direction_id)
        for rule in type(rules).model_fields:
            if getattr(rules, rule).mode.value != "off":
                rule_directions.setdefault(rule, set()).add(direction_id)
    singles = [] if reads.stages_all_grouped else store.stage_history_rows(cache, suffix)
    entries = inputs.grouped_entries(reads.stages, singles, binding, by_id, clock)
    return FactData(
        deals=deals, work=work, violations=inputs.violation_facts(reads.violations, clock),
        entries=entries, funnels=dict(binding.funnels), users=users, departments=departments,
        rule_directions=rule_directions, base_currency=base, warnings=warnings,
        violations_recorded=store.violations_recorded(cache))


def _grouped_reads_on(side: Any, needs: dict[str, dict[str, bool]], suffix: str | None,
                      at_now: tuple[str, bool] | None) -> GroupedReads:
    with side as reader:
        return grouped_reads(reader, needs, suffix, at_now)


def people_data(cache: Cache) -> FactData:
    """Only the portal's users and departments (what checking plans needs of the cache)."""
    users, departments = inputs.people(store.user_rows(cache), store.department_rows(cache))
    return FactData(users=users, departments=departments)


def store_moment(now: datetime, clock: LocalTime) -> tuple[str, bool]:
    """`now` as the cache writes timestamps in the portal's fixed offset (to the second), and whether a fraction of
    a second was cut off."""
    local = now.astimezone(clock.zone)
    return local.replace(microsecond=0).isoformat(), bool(local.microsecond)


@dataclass
class PlanState:
    """The plans in force: resolved, with problems of the file (errors) and of portal items (warnings)."""

    resolution: Resolution | None
    errors: list[PlanProblem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def book(self) -> PlanBook | None:
        return self.resolution.book if self.resolution is not None else None


def plan_state(cache: Cache | None, directory: Path, mappings: Mappings, kpis: KpiFileSpec,
               data: FactData | None) -> PlanState:
    """plans.yaml and the bound smart process's items (as the last sync cached them), checked together."""
    managers = set(data.users) if data is not None and data.users else None
    parsed = load_plans_file(directory, kpis, mappings, managers)
    plan_inputs: list[PlanInput] = []
    errors: list[PlanProblem] = []
    warnings: list[str] = []
    files: list[str] = []
    if parsed is not None:
        files.append(str(plans_path(directory, mappings)))
        errors.extend(parsed.problems)
        plan_inputs.extend(parsed.inputs)
    source = getattr(mappings.binding, "plans_source", None)  # a Bitrix24 smart process; amoCRM has none
    if source is not None and cache is not None:
        items = [item for entity_type, item in store.plan_items(cache) if entity_type == source.entity_type_id]
        fields = PortalPlanFields(source.manager, source.period, source.metric, source.target, source.direction,
                                  dict(source.metrics), dict(source.directions))
        portal, portal_problems = portal_plan_inputs(items, fields, source.entity_type_id, metrics=kpis.kpis,
                                                     directions=mappings.regulation.directions)
        plan_inputs.extend(portal)
        warnings.extend(f"{problem} (the item is left out)" for problem in portal_problems)
        files.append(f"portal smart process {source.entity_type_id} ({len(items)} items)")
    if not plan_inputs and not errors:
        return PlanState(None, [], warnings, files)
    members = department_members(data) if data is not None and data.departments else None
    resolution = resolve(plan_inputs, members=members)
    warnings.extend(resolution.notes)
    for problem in resolution.problems:
        (warnings.append(str(problem)) if problem.where.startswith("portal") else errors.append(problem))
    return PlanState(resolution, sorted(set(errors)), warnings, files)


def record_plans(cache: Cache, state: PlanState, now: datetime) -> int:
    """All plan rows in force land in the `plans` table with their source."""
    rows = [] if state.resolution is None else [
        {"source": row.source, "origin": row.origin, "scope": row.owner.scope, "scope_id": row.owner.id,
         "direction": row.direction, "metric": row.metric, "period": str(row.period), "target": row.target,
         "written": int(row.written)}
        for row in state.resolution.rows]
    return store.replace_plans(cache, rows, now.astimezone(timezone.utc).isoformat(timespec="seconds"))


@dataclass
class KpiSession:
    """One look at the KPIs: the admin's files, the facts of the cache and the plans in force."""

    mappings: Mappings
    kpis: KpiFileSpec
    kpi_path: str
    data: FactData
    engine: KpiEngine
    plans: PlanState

    @property
    def directions(self) -> list[str]:
        return list(self.mappings.regulation.directions)

    def rows(self, periods: Iterable[Period], **options: Any) -> list[KpiRow]:
        with paused_gc():  # the events and groups are acyclic too (see fact_data)
            return kpi_rows(self.engine, periods, self.plans.book, directions=self.directions, **options)


@paused_gc()  # the facts (see fact_data), the plans and the engine's indexes
def open_session(cache: Cache, directory: Path, now: datetime, *, strict_plans: bool = True,
                 crm: str | None = None) -> KpiSession:
    """Load the files, read the cache, check the plans (file problems raise MappingError) and record them."""
    mappings = load_mappings(directory, crm=crm)
    files = load_kpis(directory, mappings)
    data = fact_data(cache, mappings, files.kpis, now)
    plans = plan_state(cache, directory, mappings, files.kpis, data)
    if plans.errors and strict_plans:
        raise MappingError([str(problem) for problem in plans.errors])
    record_plans(cache, plans, now)
    engine = KpiEngine(data, files.kpis, now)
    return KpiSession(mappings, files.kpis, files.path, data, engine, plans)


# ---------------------------------------------------------------- snapshots


@dataclass
class SnapshotResult:
    period: str
    written: int  # new figures (first time or changed)
    unchanged: int
    changed: list[tuple[dict[str, Any], KpiRow]]  # (the superseded row, the new figure)


def take_snapshot(cache: Cache, session: KpiSession, period: Period, now: datetime) -> SnapshotResult:
    """kpi_snapshots for one period: idempotent (same figures write nothing), a changed figure supersedes the old
    row, which stays as history."""
    rows = session.rows([period], with_trend=False)
    current = store.current_snapshots(cache, [str(period)])
    new: list[dict[str, Any]] = []
    changed: list[tuple[dict[str, Any], KpiRow]] = []
    superseded: list[int] = []
    unchanged = 0
    for row in rows:
        values = {"period": row.period, "scope": row.scope,
                  "manager_id": int(row.manager_id) if row.manager_id and row.manager_id.isdigit() else None,
                  "department_id": int(row.department_id) if row.department_id and row.department_id.isdigit() else None,
                  "direction": row.direction, "kpi": row.kpi, "plan": _r(row.plan), "fact": _r(row.fact),
                  "share_done": _r(row.share_done, 6)}
        key = tuple(values[name] for name in store.SNAPSHOT_KEY)
        old = current.get(key)
        if old is not None and old["plan"] == values["plan"] and old["fact"] == values["fact"]:
            unchanged += 1
            continue
        if old is not None:
            superseded.append(old["id"])
            changed.append((old, row))
        new.append(values)
    store.write_snapshots(cache, new, superseded, now.astimezone(timezone.utc).isoformat(timespec="seconds"))
    return SnapshotResult(str(period), len(new), unchanged, changed)


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)

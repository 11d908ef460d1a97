"""Plans: `plans.yaml` and portal plan items -> checked, spread targets per owner, direction, metric and period.

Pure: text and plain records in, plan rows and problems out. An admin may write months, or a quarter /
half-year / year to be spread over its months (evenly or by weights), or both; then the parts must sum to
the whole, and managers must sum to a department or company figure where one is given. Every
inconsistency is one problem at the figure that disagrees, naming both figures.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping

from crmbridge.kpi.periods import Period, PeriodError
from crmbridge.kpi.schema import PlansSpec
from crmbridge.mapping.load import did_you_mean, validate_document
from crmbridge.mapping.yamlpos import LocatedDocument, read_yaml

PLANS_FILE = "plans.yaml"
Scope = Literal["manager", "department", "company"]
EVEN = (1.0,) * 12


@dataclass(frozen=True, order=True)
class PlanProblem:
    """One problem of a plan: where (file:line:col, or the portal item), what, and how to fix it."""

    where: str
    what: str
    fix: str = ""

    def __str__(self) -> str:
        return f"{self.where}: {self.what}" + (f" — {self.fix}" if self.fix else "")


@dataclass(frozen=True, order=True)
class Owner:
    """Whose plan: a manager (CRM user id), a department (CRM department id) or the company."""

    scope: Scope
    id: str | None = None

    def __str__(self) -> str:
        return "the company" if self.scope == "company" else f"{self.scope} {self.id}"


@dataclass(frozen=True)
class PlanInput:
    """One written target, from the file or from the portal."""

    owner: Owner
    direction: str | None
    metric: str
    period: Period
    target: float
    where: str  # plans.yaml:12:9 or "portal item 17"
    source: Literal["file", "portal"] = "file"
    weights: tuple[float, ...] = EVEN


@dataclass(frozen=True)
class PlanRow:
    """A resolved target as the `plans` table keeps it: written, or spread from a larger period."""

    owner: Owner
    direction: str | None
    metric: str
    period: Period
    target: float
    written: bool
    source: str
    origin: str


SeriesKey = tuple[Owner, str | None, str]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.005)


def fmt_figure(value: float) -> str:
    """12500000.0 -> 12,500,000; 0.5 -> 0.5."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


# ---------------------------------------------------------------- resolution


@dataclass
class _Series:
    """One owner's targets for one metric and direction: written figures and what follows from them."""

    key: SeriesKey
    written: dict[Period, PlanInput] = field(default_factory=dict)
    resolved: dict[Period, float] = field(default_factory=dict)

    @property
    def what(self) -> str:
        owner, direction, metric = self.key
        return f"{metric} of {owner}" + (f" in {direction}" if direction else "")


class _YearSolver:
    """Checks and spreads one series' figures of one year over the tree year > halves > quarters > months."""

    def __init__(self, series: _Series, year: int, problems: list[PlanProblem]) -> None:
        self.series = series
        self.year = year
        self.problems = problems
        self.written = {p: item for p, item in series.written.items() if p.year == year}
        self._known: dict[Period, float | None] = {}
        weights = next(iter(self.written.values())).weights if self.written else EVEN
        self.weights = weights

    def known(self, period: Period) -> float | None:
        """The figure written for `period`, else the sum of its parts when every part is known."""
        if period not in self._known:
            if period in self.written:
                value: float | None = self.written[period].target
            else:
                parts = [self.known(child) for child in period.children()]
                value = sum(parts) if parts and all(part is not None for part in parts) else None  # type: ignore[misc]
            self._known[period] = value
        return self._known[period]

    def parts(self, period: Period) -> list[PlanInput]:
        """The written figures a derived period is made of (to name them in a problem)."""
        found: list[PlanInput] = []
        for child in period.children():
            found.extend([self.written[child]] if child in self.written else self.parts(child))
        return found

    def weight(self, period: Period) -> float:
        return sum(self.weights[month.first_month - 1] for month in period.months())

    def check(self) -> None:
        for period, item in sorted(self.written.items()):
            children = period.children()
            if not children:
                continue
            values = [self.known(child) for child in children]
            known = [value for value in values if value is not None]
            shown = " + ".join(f"{part.period} {fmt_figure(part.target)} ({_line(part.where)})"
                               for part in self.parts(period))
            if len(known) == len(values):
                total = sum(known)
                if not _close(total, item.target):
                    self.problems.append(PlanProblem(
                        item.where,
                        f"{self.series.what}: {period} is {fmt_figure(item.target)}, but its parts sum to "
                        f"{fmt_figure(total)}: {shown}",
                        "make them agree, or remove the figures you do not mean (a larger period alone is spread "
                        "over its months)"))
            elif known and sum(known) > item.target + 0.005:
                self.problems.append(PlanProblem(
                    item.where,
                    f"{self.series.what}: {period} is {fmt_figure(item.target)}, but the parts written already sum "
                    f"to {fmt_figure(sum(known))}: {shown}",
                    "raise the larger figure or lower its parts"))

    def spread(self, period: Period, value: float) -> None:
        self.series.resolved[period] = value
        children = period.children()
        if not children:
            return
        values = [self.known(child) for child in children]
        missing = [child for child, known in zip(children, values) if known is None]
        if missing:
            rest = max(0.0, value - sum(known for known in values if known is not None))
            total_weight = sum(self.weight(child) for child in missing)
            for child in missing:
                share = self.weight(child) / total_weight if total_weight > 0 else 1 / len(missing)
                values[children.index(child)] = rest * share
        for child, child_value in zip(children, values):
            self.spread(child, child_value)  # type: ignore[arg-type]

    def solve(self) -> None:
        self.check()
        year = Period.whole_year(self.year)

        def descend(period: Period) -> None:
            known = self.known(period)
            if known is not None:
                self.spread(period, known)
                return
            for child in period.children():
                descend(child)

        descend(year)


def _line(where: str) -> str:
    """`plans.yaml:13:9` -> `line 13`; a portal origin stays as it is."""
    parts = where.rsplit(":", 2)
    return f"line {parts[1]}" if len(parts) == 3 and parts[1].isdigit() else where


@dataclass
class Resolution:
    """The resolved plans, their problems, and notes (e.g. a portal figure the file overrides)."""

    rows: list[PlanRow]
    problems: list[PlanProblem]
    notes: list[str]
    book: "PlanBook"


def resolve(inputs: Iterable[PlanInput], *, members: Mapping[str, set[str]] | None = None) -> Resolution:
    """Check and spread written targets; `members` (department id -> manager ids) enables department checks."""
    problems: list[PlanProblem] = []
    notes: list[str] = []
    series: dict[SeriesKey, _Series] = {}
    for item in inputs:
        key = (item.owner, item.direction, item.metric)
        one = series.setdefault(key, _Series(key))
        earlier = one.written.get(item.period)
        if earlier is not None:
            if earlier.source != item.source:
                kept, dropped = (earlier, item) if earlier.source == "file" else (item, earlier)
                one.written[item.period] = kept
                notes.append(f"{dropped.where}: {one.what} {item.period} {fmt_figure(dropped.target)} is overridden "
                             f"by {kept.where} ({fmt_figure(kept.target)})")
            else:
                problems.append(PlanProblem(item.where, f"{one.what}: {item.period} is written twice (also at "
                                                        f"{earlier.where})", "keep one of them"))
            continue
        one.written[item.period] = item
    for one in series.values():
        for year in sorted({period.year for period in one.written}):
            _YearSolver(one, year, problems).solve()
    book = PlanBook({key: one.resolved for key, one in series.items()}, members or {},
                    {key: set(one.written) for key, one in series.items()})
    _check_owners(series, book, problems, members is not None)
    rows = [PlanRow(key[0], key[1], key[2], period, value, period in one.written,
                    one.written[period].source if period in one.written else _source_of(one),
                    one.written[period].where if period in one.written else "spread")
            for key, one in series.items() for period, value in sorted(one.resolved.items())]
    return Resolution(rows, sorted(set(problems)), notes, book)


def _source_of(series: _Series) -> str:
    sources = {item.source for item in series.written.values()}
    return "file" if "file" in sources else "portal"


def _check_owners(series: dict[SeriesKey, _Series], book: PlanBook, problems: list[PlanProblem],
                  with_departments: bool) -> None:
    """Managers must sum to a department or company figure where one is written."""
    for (owner, direction, metric), one in series.items():
        if owner.scope == "manager" or (owner.scope == "department" and not with_departments):
            continue
        for period, item in sorted(one.written.items()):
            managers = book.members_of(owner)
            figures = {manager: value for manager in sorted(managers, key=_natural)
                       if (value := book.own_target(Owner("manager", manager), direction, metric, period)) is not None}
            if not figures:
                continue  # a top-down figure nobody below has split yet
            total = sum(figures.values())
            if not _close(total, item.target):
                listed = ", ".join(f"{manager}: {fmt_figure(value)}" for manager, value in figures.items())
                problems.append(PlanProblem(
                    item.where,
                    f"{metric} of {owner}{' in ' + direction if direction else ''} {period} is "
                    f"{fmt_figure(item.target)}, but its managers' plans sum to {fmt_figure(total)} ({listed})",
                    "make them agree, or remove the figure to use the managers' sum"))


def _natural(text: str) -> tuple[int, str]:
    return (int(text), "") if text.isdigit() else (1 << 30, text)


class PlanBook:
    """Targets by owner, direction, metric and period, with the sums the regulation implies.

    A department's or the company's plan is its own figure where written, else the sum of its managers'
    plans; a manager's plan for all directions is the written one, else the sum over directions; a period
    without a figure of its own is the sum of its months when every month has one.
    """

    def __init__(self, resolved: Mapping[SeriesKey, Mapping[Period, float]],
                 members: Mapping[str, set[str]], written: Mapping[SeriesKey, set[Period]] | None = None) -> None:
        self.resolved = resolved
        self.members = members
        self.written = written or {}
        self.managers = {key[0].id for key in resolved if key[0].scope == "manager" and key[0].id}
        self.by_owner: dict[tuple[Owner, str], set[str | None]] = defaultdict(set)
        for owner, direction, metric in resolved:
            self.by_owner[(owner, metric)].add(direction)

    def members_of(self, owner: Owner) -> set[str]:
        if owner.scope == "company":
            return set(self.managers)
        if owner.scope == "department":
            return set(self.members.get(owner.id or "", set()))
        return {owner.id or ""}

    def _series_value(self, key: SeriesKey, period: Period) -> float | None:
        values = self.resolved.get(key)
        if not values:
            return None
        if period in values:
            return values[period]
        months = [values.get(month) for month in period.months()]
        if period.kind != "month" and all(value is not None for value in months):
            return sum(months)  # type: ignore[arg-type]
        return None

    def own_target(self, owner: Owner, direction: str | None, metric: str, period: Period) -> float | None:
        """The owner's own figure (directions summed for `direction=None` when no total is written)."""
        value = self._series_value((owner, direction, metric), period)
        if value is not None or direction is not None:
            return value
        parts = [self._series_value((owner, other, metric), period)
                 for other in self.by_owner.get((owner, metric), ()) if other is not None]
        found = [part for part in parts if part is not None]
        return sum(found) if found else None

    def _written_here(self, key: SeriesKey, period: Period) -> bool:
        """The figure was written for this period or adds up from written parts (not spread from above)."""
        written = self.written.get(key, set())
        if period in written:
            return True
        children = period.children()
        return bool(children) and all(self._written_here(key, child) for child in children)

    def target(self, owner: Owner, direction: str | None, metric: str, period: Period) -> float | None:
        own = self.own_target(owner, direction, metric, period)
        if owner.scope == "manager" or (own is not None and self._written_here((owner, direction, metric), period)):
            return own
        # a department's or the company's month spread from a quarter yields to its managers' own months
        parts = [self.own_target(Owner("manager", manager), direction, metric, period)
                 for manager in self.members_of(owner)]
        found = [part for part in parts if part is not None]
        return sum(found) if found else own


# ---------------------------------------------------------------- plans.yaml


@dataclass
class ParsedPlans:
    spec: PlansSpec | None
    inputs: list[PlanInput]
    problems: list[PlanProblem]


def parse_plans(text: str, file: str = PLANS_FILE, *, metrics: Iterable[str] = (),
                directions: Iterable[str] = (), managers: Iterable[str] | None = None) -> ParsedPlans:
    """Parse and lint plans.yaml: schema, unknown metrics / directions / managers (did-you-mean), periods."""
    doc = read_yaml(text, file)
    spec = validate_document(doc, PlansSpec)
    problems = [PlanProblem(f"{p.file}:{p.line}:{p.column}", p.what, p.fix) for p in doc.problems]
    if not isinstance(spec, PlansSpec):
        return ParsedPlans(None, [], sorted(set(problems)))
    metrics, directions = sorted(set(metrics)), sorted(set(directions))
    known_managers = set(managers) if managers is not None else None

    def where(path: tuple[Any, ...]) -> str:
        line, column = doc.at(path)
        return f"{file}:{line}:{column}"

    inputs: list[PlanInput] = []
    for index, entry in enumerate(spec.plans):
        base = ("plans", index)
        if metrics and entry.metric not in metrics:
            problems.append(PlanProblem(where(base + ("metric",)), f'unknown metric "{entry.metric}"',
                                        did_you_mean(entry.metric, metrics) + " (a KPI id of kpi.yaml)"))
        if entry.direction is not None and directions and entry.direction not in directions:
            problems.append(PlanProblem(where(base + ("direction",)), f'unknown direction "{entry.direction}"',
                                        did_you_mean(entry.direction, directions)))
        if entry.manager is not None and known_managers is not None and entry.manager not in known_managers:
            problems.append(PlanProblem(where(base + ("manager",)), f"no user {entry.manager} on the portal",
                                        did_you_mean(entry.manager, known_managers) + " (a CRM user id)"))
        profile = entry.spread or spec.spread
        if profile != "even" and profile not in spec.weights:
            problems.append(PlanProblem(where(base + (("spread",) if entry.spread else ())) if entry.spread
                                        else where(("spread",)), f'unknown spread "{profile}"',
                                        did_you_mean(profile, ["even", *spec.weights])))
        weights = tuple(spec.weights.get(profile, EVEN))
        if not any(weights):
            weights = EVEN
        owner = (Owner("manager", entry.manager) if entry.manager is not None else
                 Owner("department", entry.department) if entry.department is not None else Owner("company"))
        raw_targets = doc.data["plans"][index]["targets"] if isinstance(doc.data, dict) else {}
        for written_key in raw_targets:
            period = Period.parse(written_key)
            inputs.append(PlanInput(owner, entry.direction, entry.metric, period,
                                    float(entry.targets[str(period)]), where(base + ("targets", written_key)),
                                    "file", weights))
    return ParsedPlans(spec, inputs, sorted(set(problems)))


# ---------------------------------------------------------------- portal plans (a bound smart process)


@dataclass(frozen=True)
class PortalPlanFields:
    """Which fields of the smart process's items hold manager, period, metric, target (and direction)."""

    manager: str = "assignedById"
    period: str = ""
    metric: str = ""
    target: str = ""
    direction: str | None = None
    metrics: Mapping[str, str] = field(default_factory=dict)  # enum option id -> metric
    directions: Mapping[str, str] = field(default_factory=dict)  # enum option id -> direction


def portal_plan_inputs(items: Iterable[Mapping[str, Any]], fields: PortalPlanFields, entity_type_id: int, *,
                       metrics: Iterable[str] = (), directions: Iterable[str] = ()) -> tuple[list[PlanInput], list[PlanProblem]]:
    """crm.item.list records of the bound smart process -> plan inputs; a bad item is a problem naming it."""
    inputs: list[PlanInput] = []
    problems: list[PlanProblem] = []
    metrics, directions = sorted(set(metrics)), sorted(set(directions))
    for item in items:
        where = f"portal smart process {entity_type_id} item {item.get('id')}"
        manager = _scalar(item.get(fields.manager))
        period_raw = _scalar(item.get(fields.period))
        metric_raw = _scalar(item.get(fields.metric))
        target_raw = _scalar(item.get(fields.target))
        direction_raw = _scalar(item.get(fields.direction)) if fields.direction else None
        if manager in (None, "", 0, "0"):
            problems.append(PlanProblem(where, f"no manager in {fields.manager}", "set the item's manager"))
            continue
        try:
            period = Period.parse(str(period_raw)[:7] if _looks_like_date(period_raw) else period_raw)
        except PeriodError as bad:
            problems.append(PlanProblem(where, f"{fields.period}: {bad}".split(" — ")[0], str(bad).split(" — ")[-1]))
            continue
        metric = fields.metrics.get(str(metric_raw), str(metric_raw) if metric_raw is not None else "")
        if not metric or (metrics and metric not in metrics):
            problems.append(PlanProblem(where, f'{fields.metric}: unknown metric "{metric_raw}"',
                                        did_you_mean(metric, metrics)))
            continue
        direction = None
        if direction_raw not in (None, "", 0, "0"):
            direction = fields.directions.get(str(direction_raw), str(direction_raw))
            if directions and direction not in directions:
                problems.append(PlanProblem(where, f'{fields.direction}: unknown direction "{direction_raw}"',
                                            did_you_mean(direction, directions)))
                continue
        target = parse_target(target_raw)
        if isinstance(target, PlanProblem):
            problems.append(PlanProblem(where, f"{fields.target}: {target.what}", target.fix))
            continue
        inputs.append(PlanInput(Owner("manager", str(manager)), direction, metric, period, target, where, "portal"))
    return inputs, problems


def parse_target(raw: Any) -> float | PlanProblem:
    """A target as a person or a CRM writes it: 1500000, "1 500 000", "1500000,50", "1500000|RUB"."""
    text = str(raw).replace("\u00a0", "").replace(" ", "").replace(",", ".").split("|")[0]
    try:
        target = float(text)
    except ValueError:
        return PlanProblem("", f'"{raw}" is not a number', "write the figure")
    if not math.isfinite(target) or target < 0:
        return PlanProblem("", f"{raw} is not a target", "write a figure >= 0")
    return target


def _scalar(value: Any) -> Any:
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _looks_like_date(value: Any) -> bool:
    text = str(value or "")
    return len(text) >= 10 and text[4] == "-" and text[7] == "-"


# ---------------------------------------------------------------- the head of sales' table (CSV / XLSX)

TABLE_COLUMNS = ("manager", "period", "metric", "target", "direction")
_HEADER_ALIASES = {
    "manager": {"manager", "manager_id", "менеджер", "id менеджера", "сотрудник", "user", "user_id"},
    "period": {"period", "период", "месяц", "month"},
    "metric": {"metric", "kpi", "показатель", "метрика"},
    "target": {"target", "plan", "план", "цель", "значение", "value"},
    "direction": {"direction", "направление", "воронка", "pipeline"},
}


@dataclass(frozen=True)
class TableRow:
    """One row of an imported plan table."""

    line: int
    manager: str
    period: Period
    metric: str
    target: float
    direction: str | None = None


def table_rows(cells: list[list[Any]], file: str) -> tuple[list[TableRow], list[PlanProblem]]:
    """The head of sales' table (a header row: manager, period, metric, target[, direction]) -> rows."""
    problems: list[PlanProblem] = []
    if not cells:
        return [], [PlanProblem(f"{file}:1", "the table is empty", "add a header row: manager, period, metric, target")]
    header = [str(cell or "").strip().lower() for cell in cells[0]]
    columns: dict[str, int] = {}
    for index, name in enumerate(header):
        for column, aliases in _HEADER_ALIASES.items():
            if name in aliases and column not in columns:
                columns[column] = index
    missing = [column for column in TABLE_COLUMNS[:4] if column not in columns]
    if missing:
        return [], [PlanProblem(f"{file}:1", f"no column {', '.join(missing)} in the header ({', '.join(header)})",
                                "name the columns manager, period, metric, target (and optionally direction)")]
    rows: list[TableRow] = []
    for number, row in enumerate(cells[1:], start=2):
        if not any(str(cell or "").strip() for cell in row):
            continue

        def cell(column: str) -> str:
            index = columns.get(column)
            value = row[index] if index is not None and index < len(row) else None
            if isinstance(value, float) and value.is_integer() and column in ("manager", "period"):
                value = int(value)
            return "" if value is None else str(value).strip()

        where = f"{file}:{number}"
        manager = cell("manager")
        if not manager.isdigit():
            problems.append(PlanProblem(where, f'manager "{manager}" is not a CRM user id', "write the user's id, e.g. 3"))
            continue
        period_text = cell("period")
        try:
            period = Period.parse(period_text[:7] if _looks_like_date(period_text) else period_text)
        except PeriodError as bad:
            problems.append(PlanProblem(where, str(bad).split(" — ")[0], str(bad).split(" — ")[-1]))
            continue
        target = parse_target(cell("target"))
        if isinstance(target, PlanProblem):
            problems.append(PlanProblem(where, f"target {target.what}", target.fix))
            continue
        metric = cell("metric")
        if not metric:
            problems.append(PlanProblem(where, "no metric", "write a KPI id such as revenue"))
            continue
        rows.append(TableRow(number, manager, period, metric, target, cell("direction") or None))
    return rows, problems


def merge_table(data: Any, rows: Iterable[TableRow]) -> Any:
    """Merge the table's rows into plans.yaml data in place (plain dicts or ruamel's round-trip maps, so the
    admin's comments survive): a row replaces the same owner / metric / period, a new one goes in period order."""
    if data is None:
        data = {"version": 1}
    if data.get("plans") is None:
        data["plans"] = []
    entries = data["plans"]
    index: dict[tuple[str, str | None, str], Any] = {}
    for entry in entries:
        if isinstance(entry, dict) and entry.get("manager") is not None:
            index.setdefault((str(entry["manager"]), entry.get("direction"), str(entry.get("metric"))), entry)
    for row in rows:
        key = (row.manager, row.direction, row.metric)
        entry = index.get(key)
        if entry is None:
            entry = {"manager": int(row.manager), **({"direction": row.direction} if row.direction else {}),
                     "metric": row.metric, "targets": {}}
            entries.append(entry)
            entry = entries[-1]
            index[key] = entry
        targets = entry.get("targets")
        if targets is None:
            entry["targets"] = {}
            targets = entry["targets"]
        value = int(row.target) if float(row.target).is_integer() else row.target
        same = [written for written in list(targets) if _same_period(written, row.period)]
        if same:
            targets[same[0]] = value
            continue
        position = sum(1 for written in list(targets) if _period_order(written) < _period_order(str(row.period)))
        if hasattr(targets, "insert"):
            targets.insert(position, str(row.period), value)
        else:
            items = list(targets.items())
            items.insert(position, (str(row.period), value))
            targets.clear()
            targets.update(items)
    return data


def _same_period(written: Any, period: Period) -> bool:
    try:
        return Period.parse(written) == period
    except PeriodError:
        return False


def _period_order(written: Any) -> tuple[Any, int]:
    try:
        period = Period.parse(written)
    except PeriodError:
        return (Period.parse("2999").start, 0)
    return (period.start, -period.months_count)


def export_rows(rows: Iterable[PlanRow], *, written_only: bool = True) -> list[list[Any]]:
    """Resolved plans -> the table (header + rows) `plans import` reads back; managers only."""
    table: list[list[Any]] = [list(TABLE_COLUMNS)]
    for row in sorted(rows, key=lambda r: (_natural(r.owner.id or ""), r.metric, r.direction or "", r.period.start,
                                           -r.period.months_count)):
        if row.owner.scope != "manager" or (written_only and not row.written):
            continue
        target = int(row.target) if float(row.target).is_integer() else round(row.target, 2)
        table.append([row.owner.id, str(row.period), row.metric, target, row.direction or ""])
    return table

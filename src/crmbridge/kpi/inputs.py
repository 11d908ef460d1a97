"""Pure: cached rows (plain dicts, the CRM's own ids and texts) -> the typed facts the KPI engine counts.

What a row means comes from the binding (pipeline -> direction, CRM stage -> regulated stage), the currency
rates of the portal (crm.currency.list) and its time zone: a close date written as midnight +03:00 belongs to
that day in Moscow, whatever zone it is read in.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timezone, tzinfo
from itertools import repeat
from typing import Any, Callable, Iterable, Mapping, NamedTuple

from crmbridge.model import LOST, WON

UNBOUND = "\x00unbound"  # direction of a call or task not bound to any deal: counts only in "all directions"


class DealFact(NamedTuple):
    """A deal as the KPIs see it (a tuple: hundreds of thousands are built, and a frozen dataclass costs 3x)."""

    id: int
    manager: str | None
    direction: str
    outcome: str  # won, lost, open
    amount: float | None  # in the deal's currency
    rate: float | None  # deal currency -> base currency; None: the portal has no rate for it
    created: date
    closed: date | None  # the close date (CLOSEDATE) of a closed deal
    client: str | None  # contact:12 / company:7
    values: Mapping[str, float | None] = {}  # bound number fields (margin, nps); never mutated

    @property
    def cycle_days(self) -> float | None:
        return float((self.closed - self.created).days) if self.closed is not None else None


class WorkFact(NamedTuple):
    """A call, meeting, e-mail, CRM to-do or task of a manager; or `count` of them alike in all a KPI reads.

    Grouped facts (read grouped in SQL) carry only the one date they were grouped by (the others None, so a KPI
    dated by another date does not count them: the same rows come grouped by that date too), `late` instead of the
    deadline and closing moments, and `due` for the deadline's date."""

    kind: str  # call, meeting, email, todo, task
    manager: str | None
    direction: str  # the deal's direction, or UNBOUND
    completed: bool
    incoming: bool | None
    start: date | None
    created: date | None
    closed: date | None
    deadline: datetime | None  # aware, in the offset it was written in
    closed_at: datetime | None
    due: date | None = None  # the deadline's date as written (what a KPI dated by `deadline` counts by)
    late: bool | None = None  # overdue at the session's `now`, when known without the moments
    count: int = 1

    def overdue(self, now: datetime) -> bool:
        if self.late is not None:
            return self.late
        if self.deadline is None:
            return False
        if self.completed:
            return self.closed_at is not None and self.closed_at > self.deadline
        return self.deadline < now

    def due_date(self) -> date | None:
        if self.due is not None:
            return self.due
        return self.deadline.date() if self.deadline is not None else None


class ViolationFact(NamedTuple):
    deal_id: int
    rule: str
    manager: str | None
    opened: date
    resolved: date | None


class StageVisit(NamedTuple):
    """A deal's first arrival in a regulated stage of a direction (index in the direction's order; won = last)."""

    deal_id: int
    direction: str
    index: int
    entered: date


@dataclass
class FactData:
    """Everything the KPIs count, as plain typed values."""

    deals: list[DealFact] = field(default_factory=list)
    work: list[WorkFact] = field(default_factory=list)
    violations: list[ViolationFact] = field(default_factory=list)
    visits: list[StageVisit] = field(default_factory=list)
    #: the same as `visits`, compact (what a session reads): direction -> per stage index {deal id: first arrival};
    #: None: derived from `visits`
    entries: dict[str, list[dict[int, date]]] | None = None
    funnels: dict[str, list[str]] = field(default_factory=dict)  # direction -> stage ids in order, then won
    users: dict[str, "UserInfo"] = field(default_factory=dict)
    departments: dict[str, "DepartmentInfo"] = field(default_factory=dict)
    rule_directions: dict[str, set[str]] = field(default_factory=dict)  # rule -> directions where it is not off
    base_currency: str = "RUB"
    warnings: list[str] = field(default_factory=list)
    #: False until an audit or enforcement recorded violations: compliance is then unknown, not 100 %
    violations_recorded: bool = True


@dataclass(frozen=True)
class UserInfo:
    name: str
    active: bool
    departments: tuple[str, ...]


@dataclass(frozen=True)
class DepartmentInfo:
    name: str
    parent: str | None
    head: str | None


class LocalTime:
    """Portal timestamps -> dates in the portal's zone, and comparable moments.

    Hundreds of thousands of timestamps go through here: a Bitrix24 timestamp already written in the zone's
    own offset for that day ("2026-11-30T23:30:00+03:00" in Moscow) has its date in its first ten characters,
    so only texts in another offset (or another format) are parsed and converted.
    """

    def __init__(self, zone: tzinfo) -> None:
        self.zone = zone
        self._days: dict[str, date | None] = {}
        self._offsets: dict[str, str] = {}
        #: the zone's offset when it has kept one since 2015 (Moscow: +03:00), else None (a DST zone)
        suffixes = {self._offset_of(f"{year}-{month:02d}-15") for year in (2015, 2020, 2025, 2030) for month in (1, 7)}
        self.fixed_suffix = suffixes.pop() if len(suffixes) == 1 else None

    def moment(self, text: Any) -> datetime | None:
        """An aware datetime (in whatever offset it was written: comparisons do not care), or None."""
        if not text:
            return None
        try:
            value = datetime.fromisoformat(str(text))
        except ValueError:
            return None
        return value.replace(tzinfo=self.zone) if value.tzinfo is None else value

    def _offset_of(self, day_text: str) -> str:
        """The zone's UTC offset at noon of a day, written as the portal writes it (+03:00)."""
        found = self._offsets.get(day_text)
        if found is None:
            try:
                noon = datetime.fromisoformat(day_text + "T12:00:00").replace(tzinfo=self.zone)
            except ValueError:
                found = ""
            else:
                minutes = int(noon.utcoffset().total_seconds() // 60)  # type: ignore[union-attr]
                sign = "+" if minutes >= 0 else "-"
                found = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
            self._offsets[day_text] = found
        return found

    def day(self, text: Any) -> date | None:
        if not text:
            return None
        key = text if type(text) is str else str(text)
        if len(key) == 10:
            found = self._days.get(key, False)
            if found is not False:
                return found  # type: ignore[return-value]
            return self._date(key)
        if self.fixed_suffix is not None and len(key) == 25 and key.endswith(self.fixed_suffix):
            found = self._days.get(key[:10], False)  # the fast path of fixed-offset zones
            if found is not False:
                return found  # type: ignore[return-value]
        head = key[:10]
        # the common case: written in the zone's own offset of that day (a DST night differs: parsed below)
        if len(key) == 25 and key[10] == "T" and key[19:] == self._offset_of(head):
            return self._date(head)
        if len(key) == 10:
            return self._date(key)
        moment = self.moment(key)
        if moment is None:
            return None
        return moment.astimezone(self.zone).date() if moment.tzinfo is not self.zone else moment.date()

    def _date(self, head: str) -> date | None:
        found = self._days.get(head, False)
        if found is False:
            try:
                found = date.fromisoformat(head)
            except ValueError:
                found = None
            self._days[head] = found
        return found  # type: ignore[return-value]


def currency_rates(rows: Iterable[Mapping[str, Any]], base: str | None = None) -> tuple[str, dict[str, float]]:
    """crm.currency.list rows -> (base currency, multiplier of each currency into it).

    AMOUNT_CNT units of a currency cost AMOUNT units of the portal's base currency; another base (kpi.yaml
    `base_currency`) divides by its own rate.
    """
    per_unit: dict[str, float] = {}
    portal_base = None
    for row in rows:
        code = str(row.get("currency") or "")
        count, amount = row.get("amount_cnt") or 1, row.get("amount")
        if not code or amount in (None, 0):
            continue
        per_unit[code] = float(amount) / float(count)
        if row.get("base"):
            portal_base = code
    chosen = base or portal_base or "RUB"
    if chosen not in per_unit:
        per_unit.setdefault(chosen, 1.0)
    divisor = per_unit[chosen]
    return chosen, {code: value / divisor for code, value in per_unit.items()}


@dataclass(frozen=True)
class Binding:
    """What the KPIs need of the binding: pipeline -> direction, CRM stage -> (direction, regulated stage)."""

    direction_of: Mapping[str, str | None]  # CATEGORY_ID -> direction (None: ignore)
    # (pipeline, CRM stage) -> (direction, stage / won / lost / None); keyed by both because amoCRM's statuses
    # 142 / 143 (won / lost) are the same in every pipeline
    stage_of: Mapping[tuple[str, str], tuple[str | None, str | None]]
    funnels: Mapping[str, list[str]]  # direction -> its stage ids in order, then "won"
    fields: Mapping[str, str]  # regulated number field -> CRM field (margin -> UF_CRM_...)


#: a deal row's columns (cache/kpi.py deal_rows), then the bound fields as "field:<name>"
DEAL_KEYS = ("id", "category_id", "stage_id", "stage_semantic", "amount", "currency", "assigned_by_id", "contact_id",
             "company_id", "date_create", "close_date", "closed")


def deal_facts(rows: Iterable[Any], binding: Binding, rates: Mapping[str, float], base: str,
               clock: LocalTime, warnings: list[str], values: Mapping[str, Mapping[int, Any]] | None = None
               ) -> list[DealFact]:
    """Cached deals in a bound direction; a deal in an `ignore` or unbound pipeline does not count.

    Rows are tuples (DEAL_KEYS, then the binding's fields in order) or dicts with those keys; the bound fields'
    values may come apart instead (`values`: field -> {deal id: value})."""
    found: list[DealFact] = []
    unknown_currency: dict[str, int] = {}
    names = list(binding.fields)
    keys = DEAL_KEYS + (() if values is not None else tuple(f"field:{name}" for name in names))
    apart = [values.get(name, {}) for name in names] if values is not None else None
    width = len(DEAL_KEYS)
    day = clock.day
    #: (pipeline, CRM stage, semantic) -> (direction, outcome): a few dozen combinations among all deals
    placed: dict[tuple[Any, Any, Any], tuple[str | None, str]] = {}
    for row in rows:
        values_of = _values(row, keys)
        (deal_id, category, stage_id, semantic, amount, currency_id, manager, contact, company, date_create,
         close_date, _) = values_of[:width]
        where = placed.get((category, stage_id, semantic))
        if where is None:
            where = placed[(category, stage_id, semantic)] = _placed(binding, category, stage_id, semantic)
        direction, outcome = where
        if direction is None:
            continue
        created = day(date_create)
        if created is None:
            continue
        closed = day(close_date) if outcome != "open" else None
        currency = str(currency_id or base)
        rate = rates.get(currency)
        if rate is None:
            unknown_currency[currency] = unknown_currency.get(currency, 0) + 1
        client = f"company:{company}" if company else f"contact:{contact}" if contact else None
        if not names:
            numbers: dict[str, float | None] = {}
        elif apart is not None:
            numbers = {name: _number(of.get(deal_id)) for name, of in zip(names, apart)}
        else:
            numbers = dict(zip(names, map(_number, values_of[width:])))
        found.append(DealFact(int(deal_id), str(manager) if manager else None, direction, outcome,
                              _number(amount), rate, created, closed, client, numbers))
    for currency, count in sorted(unknown_currency.items()):
        warnings.append(f"{count} deals in {currency}: the portal lists no rate for it (crm.currency.list); "
                        "their money is left out")
    return found


def _placed(binding: Binding, category: Any, stage_id: Any, semantic: Any) -> tuple[str | None, str]:
    """A deal's direction (None: its pipeline does not count) and outcome (won, lost, open)."""
    direction = binding.direction_of.get(str(category or 0))
    if direction is None:
        return None, "open"
    _, stage = binding.stage_of.get((str(category or 0), str(stage_id or "")), (direction, None))
    if stage == WON or (stage is None and semantic == "S"):
        return direction, "won"
    if stage == LOST or (stage is None and semantic == "F"):
        return direction, "lost"
    return direction, "open"


def _number(value: Any) -> float | None:
    if type(value) is float:
        return value
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).replace(" ", "").replace(",", ".").split("|")[0])
    except ValueError:
        return None


def stage_visits(rows: Iterable[Mapping[str, Any]], binding: Binding, deals: Mapping[int, DealFact],
                 clock: LocalTime) -> list[StageVisit]:
    """Stage history -> each deal's first arrival in each regulated stage (won = past the last stage)."""
    first: dict[tuple[int, str, int], date] = {}
    positions = {direction: {stage: index for index, stage in enumerate(stages)}
                 for direction, stages in binding.funnels.items()}
    stage_of = binding.stage_of
    for row in rows:
        deal_id, category, stage_id, created = _values(row, ("deal_id", "category_id", "stage_id", "created_time"))
        if deal_id not in deals:
            continue
        direction, stage = stage_of.get((str(category or 0), str(stage_id or "")), (None, None))
        if direction is None or stage is None or stage == LOST:
            continue
        index = positions.get(direction, {}).get(stage)
        entered = clock.day(created)
        if index is None or entered is None:
            continue
        key = (deal_id, direction, index)
        if key not in first or entered < first[key]:
            first[key] = entered
    return [StageVisit(deal_id, direction, index, entered) for (deal_id, direction, index), entered in first.items()]


#: the dates a WorkFact can be counted by (kpi.yaml `date`), and `overdue` (needs deadline and closing moments)
WORK_DATES = ("start", "created", "closed", "deadline", "overdue")


def work_facts(communications: Iterable[Any], todos: Iterable[Any], tasks: Iterable[Any],
               direction_of_deal: Mapping[int, str], known_deals: set[int], clock: LocalTime,
               needed: Iterable[str] = WORK_DATES) -> list[WorkFact]:
    """Calls / meetings / e-mails, CRM to-dos and tasks; bound to a deal of an ignored pipeline, they do not count.

    Rows are tuples in the order of cache/kpi.py (or dicts with those keys). Only the dates the KPIs read are
    parsed (`needed`): a year of a big portal's activities is half a million timestamps.
    """
    fact = work_fact_maker(direction_of_deal, known_deals, clock, needed)
    found = (fact(source, row) for source, rows in (("communications", communications), ("todos", todos),
                                                    ("tasks", tasks)) for row in rows)
    return [work for work in found if work is not None]


def single_work(source: str, rows: Iterable[Any], direction_of_deal: Mapping[int, str], known_deals: set[int],
                clock: LocalTime, needed: Iterable[str]) -> list[WorkFact]:
    """Rows SQL did not group (cache/kpi.py work_singles) for the `needed` dates; the other dates stay empty (SQL
    groups those rows by them, or reads them one by one again for them)."""
    fact = work_fact_maker(direction_of_deal, known_deals, clock, needed)
    return [work for work in (fact(source, row) for row in rows) if work is not None]


def work_fact_maker(direction_of_deal: Mapping[int, str], known_deals: set[int], clock: LocalTime,
                    needed: Iterable[str] = WORK_DATES) -> Callable[[str, Any], WorkFact | None]:
    """(source, row) -> the WorkFact of one cached row (None: it does not count), parsing only the `needed` dates."""
    wanted = set(needed)
    day = clock.day
    moment = clock.moment
    want_start, want_created = "start" in wanted, "created" in wanted
    want_closed, want_deadline = "closed" in wanted or "completed" in wanted, "deadline" in wanted
    want_moments = "overdue" in wanted
    get_direction = direction_of_deal.get

    def direction(deal_id: Any) -> str | None:
        if deal_id is None:
            return UNBOUND
        where = get_direction(deal_id)
        if where is not None:
            return where
        return None if deal_id in known_deals else UNBOUND

    def fact(source: str, row: Any) -> WorkFact | None:
        if source == "communications":
            kind, responsible, deal_id, completed, incoming, start, created, updated = _values(
                row, ("kind", "responsible_id", "deal_id", "completed", "incoming", "start_time", "created",
                      "last_updated"))
            where = direction(deal_id)
            if where is None or not kind:
                return None
            return WorkFact(kind, _user(responsible), where, bool(completed),
                            None if incoming is None else bool(incoming), day(start) if want_start else None,
                            day(created) if want_created else None,
                            day(updated) if want_closed and completed else None, None, None)
        todo = source == "todos"
        responsible, deal_id, state, deadline, created, closed = _values(
            row, ("responsible_id", "deal_id", "completed", "deadline", "created", "last_updated") if todo else
            ("responsible_id", "deal_id", "status", "deadline", "created_date", "closed_date"))
        where = direction(deal_id)
        if where is None:
            return None
        # a completed to-do's last update is when it was completed (crm.activity.list has no completion time)
        completed = bool(state) if todo else state in (4, 5, "4", "5")
        closed_text = closed if completed else None
        deadline_day = day(deadline) if want_deadline or want_start else None
        deadline_moment = moment(deadline) if want_moments or want_deadline else None
        return WorkFact("todo" if todo else "task", _user(responsible), where, completed, None, deadline_day,
                        day(created) if want_created else None,
                        day(closed_text) if want_closed else None,
                        deadline_moment if want_moments else None,
                        moment(closed_text) if want_moments else None,
                        deadline_moment.date() if deadline_moment is not None and want_deadline else None)

    return fact


#: the kinds each table of the cache holds (cache/kpi.py WORK_SOURCES)
SOURCE_KINDS: Mapping[str, frozenset[str]] = {"communications": frozenset({"call", "meeting", "email"}),
                                              "todos": frozenset({"todo"}), "tasks": frozenset({"task"})}


#: what a cached deal that does not count (ignored pipeline, deleted) maps to; an overdue row's mark
_DROPPED, _LATE = "\x00dropped", "\x00late"


class DealDirections:
    """Deal id as SQL's group_concat writes it -> its direction (_DROPPED: a cached deal that does not count); with
    lateness, "L" + id -> its direction marked _LATE as well: a group's ids are counted at C speed (texts hash once)."""

    def __init__(self, deals: Iterable[DealFact], known: Iterable[int]) -> None:
        self.of: dict[str, str] = dict.fromkeys(map(str, known), _DROPPED)
        self.of.update((str(deal.id), deal.direction) for deal in deals)
        self._late: dict[str, str] | None = None

    def with_lateness(self) -> dict[str, str]:
        if self._late is None:
            marked = {direction: direction + _LATE for direction in set(self.of.values())}
            self._late = dict(self.of)
            self._late.update((f"L{key}", marked[direction]) for key, direction in self.of.items())
        return self._late


def grouped_work(source: str, groups: Iterable[Any], dates: Iterable[str], directions: DealDirections,
                 clock: LocalTime, overdue: bool) -> list[WorkFact]:
    """Groups of `source` (cache/kpi.py WorkGroup: kind, responsible, state, incoming, month, rows bound to no deal and
    how many of them are overdue, the deal ids of the others, an overdue one's prefixed "L") -> a WorkFact per group,
    direction and lateness, dated the 1st of its month (every period is whole months).

    `dates`: the dates the group's month is of (start, created, closed, deadline: one column can be several);
    `overdue`: whether SQL told the overdue rows apart (calls, meetings and e-mails have no deadline: never overdue)."""
    wanted = set(dates)
    lateness = overdue or source == "communications"
    found: list[WorkFact] = []
    for kind, responsible, state, incoming, month, unbound, unbound_late, ids, _ in groups:
        if not kind:
            continue
        day = clock.day(f"{month}-01")  # the KPIs' periods are whole months: the 1st stands for the month
        if day is None:
            continue
        completed = state in (4, 5, "4", "5") if source == "tasks" else bool(state)
        manager = _user(responsible)
        into = None if incoming is None else bool(incoming)
        start = day if "start" in wanted else None
        created = day if "created" in wanted else None
        closed = day if "closed" in wanted else None
        due = day if "deadline" in wanted else None
        tokens = ids.split(",") if ids else []
        counts: Counter[str | None]
        if overdue and ids and "L" in ids:
            late_of = directions.with_lateness()
            counts = Counter(map(late_of.get, tokens))
            if None in counts:  # deals not in the cache (bound to nothing we know): all directions only
                del counts[None]
                counts.update(UNBOUND + _LATE if token.startswith("L") else UNBOUND
                              for token in tokens if token not in late_of)
        else:
            counts = Counter(map(directions.of.get, tokens, repeat(UNBOUND)))
        late_unbound = int(unbound_late or 0)
        if unbound:
            counts[UNBOUND] += int(unbound) - late_unbound
            counts[UNBOUND + _LATE] += late_unbound
        for marked, count in counts.items():
            late = marked.endswith(_LATE)  # type: ignore[union-attr]
            direction = marked[:-len(_LATE)] if late else marked  # type: ignore[index]
            if direction != _DROPPED and count:
                found.append(WorkFact(kind, manager, direction, completed, into, start, created, closed, None,
                                      None, due, late if lateness else None, count))
    return found


def grouped_entries(groups: Iterable[tuple[Any, ...]], rows: Iterable[Any], binding: Binding,
                    deals: Mapping[int, DealFact], clock: LocalTime) -> dict[str, list[dict[int, date]]]:
    """Stage changes -> per direction and regulated stage, each deal's first arrival (what stage_visits gives, compact).

    `groups`: (pipeline, CRM stage, month, deal ids comma-separated) from SQL, a month standing as its 1st (the KPIs'
    periods are whole months); `rows`: single changes (deal, pipeline, stage, created) with timestamps SQL could not
    cut."""
    positions = {direction: {stage: index for index, stage in enumerate(stages)}
                 for direction, stages in binding.funnels.items()}
    entries: dict[str, list[dict[int, date]]] = {direction: [{} for _ in stages]
                                                  for direction, stages in binding.funnels.items()}

    def place(category: Any, stage_id: Any) -> tuple[str, int] | None:
        direction, stage = binding.stage_of.get((str(category or 0), str(stage_id or "")), (None, None))
        if direction is None or stage is None or stage == LOST:
            return None
        index = positions.get(direction, {}).get(stage)
        return None if index is None else (direction, index)

    # newest month first: the last write of a deal is its earliest arrival
    for category, stage_id, month, ids, *_ in sorted(groups, key=lambda group: group[2], reverse=True):
        where = place(category, stage_id)
        day = clock.day(f"{month}-01")
        if where is None or day is None or not ids:
            continue
        entries[where[0]][where[1]].update(zip(map(int, ids.split(",")), repeat(day)))
    for row in rows:
        deal_id, category, stage_id, created = _values(row, ("deal_id", "category_id", "stage_id", "created_time"))
        where = place(category, stage_id)
        entered = clock.day(created)
        if where is None or entered is None:
            continue
        firsts = entries[where[0]][where[1]]
        if deal_id not in firsts or entered < firsts[deal_id]:
            firsts[deal_id] = entered
    for per_stage in entries.values():
        for index, firsts in enumerate(per_stage):
            if not firsts.keys() <= deals.keys():
                per_stage[index] = {deal_id: day for deal_id, day in firsts.items() if deal_id in deals}
    return entries


def entries_of_visits(visits: Iterable[StageVisit], funnels: Mapping[str, list[str]]) -> dict[str, list[dict[int, date]]]:
    """StageVisit rows -> the compact form of FactData.entries."""
    entries: dict[str, list[dict[int, date]]] = {direction: [{} for _ in stages] for direction, stages in funnels.items()}
    for visit in visits:
        per_stage = entries.get(visit.direction)
        if per_stage is None or visit.index >= len(per_stage):
            continue
        firsts = per_stage[visit.index]
        if visit.deal_id not in firsts or visit.entered < firsts[visit.deal_id]:
            firsts[visit.deal_id] = visit.entered
    return entries


def _values(row: Any, keys: tuple[str, ...]) -> tuple[Any, ...]:
    # `type(...) is` on purpose: isinstance against typing.Mapping costs more than the rest of the row
    return row if type(row) is tuple else tuple(row.get(key) for key in keys)


def _user(value: Any) -> str | None:
    return str(value) if value not in (None, "", 0, "0") else None


def violation_facts(rows: Iterable[Any], clock: LocalTime) -> list[ViolationFact]:
    """Rows (deal_id, rule, manager_id, opened, resolved) as tuples or dicts."""
    found = []
    day = clock.day
    for row in rows:
        deal_id, rule, manager, opened_text, resolved = _values(row, ("deal_id", "rule", "manager_id", "opened",
                                                                      "resolved"))
        opened = day(opened_text)
        if opened is None:
            continue
        found.append(ViolationFact(int(deal_id), str(rule), _user(manager), opened, day(resolved)))
    return found


def people(users: Iterable[Mapping[str, Any]], departments: Iterable[Mapping[str, Any]]
           ) -> tuple[dict[str, UserInfo], dict[str, DepartmentInfo]]:
    import json

    found_users = {}
    for row in users:
        try:
            member_of = tuple(str(d) for d in json.loads(row.get("departments") or "[]") if d is not None)
        except (TypeError, ValueError):
            member_of = ()
        name = " ".join(part for part in (row.get("name"), row.get("last_name")) if part) or f"#{row['id']}"
        found_users[str(row["id"])] = UserInfo(name, bool(row.get("active", 1)), member_of)
    found_departments = {str(row["id"]): DepartmentInfo(str(row.get("name") or row["id"]),
                                                        _user(row.get("parent_id")), _user(row.get("head_id")))
                         for row in departments}
    return found_users, found_departments


UTC = timezone.utc

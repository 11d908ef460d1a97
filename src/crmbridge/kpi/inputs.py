"""Pure: cached rows (plain dicts, the CRM's own ids and texts) -> the typed facts the KPI engine counts.

What a row means comes from the binding (pipeline -> direction, CRM stage -> regulated stage), the currency
rates of the portal (crm.currency.list) and its time zone: a close date written as midnight +03:00 belongs to
that day in Moscow, whatever zone it is read in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timezone, tzinfo
from typing import Any, Iterable, Mapping, NamedTuple

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
    """A call, meeting, e-mail, CRM to-do or task of a manager."""

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

    def overdue(self, now: datetime) -> bool:
        if self.deadline is None:
            return False
        if self.completed:
            return self.closed_at is not None and self.closed_at > self.deadline
        return self.deadline < now


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


def deal_facts(rows: Iterable[Mapping[str, Any]], binding: Binding, rates: Mapping[str, float], base: str,
               clock: LocalTime, warnings: list[str]) -> list[DealFact]:
    """Cached deals in a bound direction; a deal in an `ignore` or unbound pipeline does not count."""
    found: list[DealFact] = []
    unknown_currency: dict[str, int] = {}
    for row in rows:
        direction = binding.direction_of.get(str(row.get("category_id") or 0))
        if direction is None:
            continue
        _, stage = binding.stage_of.get((str(row.get("category_id") or 0), str(row.get("stage_id") or "")),
                                        (direction, None))
        semantic = row.get("stage_semantic")
        if stage == WON or (stage is None and semantic == "S"):
            outcome = "won"
        elif stage == LOST or (stage is None and semantic == "F"):
            outcome = "lost"
        else:
            outcome = "open"
        created = clock.day(row.get("date_create"))
        if created is None:
            continue
        closed = clock.day(row.get("close_date")) if outcome != "open" else None
        currency = str(row.get("currency") or base)
        rate = rates.get(currency)
        if rate is None:
            unknown_currency[currency] = unknown_currency.get(currency, 0) + 1
        client = (f"company:{row['company_id']}" if row.get("company_id") else
                  f"contact:{row['contact_id']}" if row.get("contact_id") else None)
        values = {name: _number(row.get(f"field:{name}")) for name in binding.fields}
        manager = row.get("assigned_by_id")
        found.append(DealFact(int(row["id"]), str(manager) if manager else None, direction, outcome,
                              _number(row.get("amount")), rate, created, closed, client, values))
    for currency, count in sorted(unknown_currency.items()):
        warnings.append(f"{count} deals in {currency}: the portal lists no rate for it (crm.currency.list); "
                        "their money is left out")
    return found


def _number(value: Any) -> float | None:
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
    wanted = set(needed)
    day = clock.day
    moment = clock.moment
    want_start, want_created = "start" in wanted, "created" in wanted
    want_closed, want_deadline = "closed" in wanted or "completed" in wanted, "deadline" in wanted
    want_moments = "overdue" in wanted
    found: list[WorkFact] = []
    get_direction = direction_of_deal.get

    def direction(deal_id: Any) -> str | None:
        if deal_id is None:
            return UNBOUND
        where = get_direction(deal_id)
        if where is not None:
            return where
        return None if deal_id in known_deals else UNBOUND

    for row in communications:
        kind, responsible, deal_id, completed, incoming, start, created, updated = _values(
            row, ("kind", "responsible_id", "deal_id", "completed", "incoming", "start_time", "created", "last_updated"))
        where = direction(deal_id)
        if where is None or not kind:
            continue
        found.append(WorkFact(kind, _user(responsible), where, bool(completed),
                              None if incoming is None else bool(incoming), day(start) if want_start else None,
                              day(created) if want_created else None,
                              day(updated) if want_closed and completed else None, None, None))
    for kind, rows, keys in (("todo", todos, ("responsible_id", "deal_id", "completed", "deadline", "created",
                                                "last_updated")),
                             ("task", tasks, ("responsible_id", "deal_id", "status", "deadline", "created_date",
                                              "closed_date"))):
        for row in rows:
            responsible, deal_id, state, deadline, created, closed = _values(row, keys)
            where = direction(deal_id)
            if where is None:
                continue
            # a completed to-do's last update is when it was completed (crm.activity.list has no completion time)
            completed = bool(state) if kind == "todo" else state in (4, 5, "4", "5")
            closed_text = closed if completed else None
            deadline_day = day(deadline) if want_deadline or want_start else None
            found.append(WorkFact(kind, _user(responsible), where, completed, None, deadline_day,
                                  day(created) if want_created else None,
                                  day(closed_text) if want_closed else None,
                                  moment(deadline) if want_moments else None,
                                  moment(closed_text) if want_moments else None))
    return found


def _values(row: Any, keys: tuple[str, ...]) -> tuple[Any, ...]:
    # `type(...) is` on purpose: isinstance against typing.Mapping costs more than the rest of the row
    return row if type(row) is tuple else tuple(row.get(key) for key in keys)


def _user(value: Any) -> str | None:
    return str(value) if value not in (None, "", 0, "0") else None


def violation_facts(rows: Iterable[Mapping[str, Any]], clock: LocalTime) -> list[ViolationFact]:
    found = []
    for row in rows:
        opened = clock.day(row.get("opened"))
        if opened is None:
            continue
        found.append(ViolationFact(int(row["deal_id"]), str(row["rule"]), _user(row.get("manager_id")), opened,
                                   clock.day(row.get("resolved"))))
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

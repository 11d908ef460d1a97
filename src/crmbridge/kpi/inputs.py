"""Pure: cached rows (plain dicts, the CRM's own ids and texts) -> the typed facts the KPI engine counts.

What a row means comes from the binding (pipeline -> direction, CRM stage -> regulated stage), the currency
rates of the portal (crm.currency.list) and its time zone: a close date written as midnight +03:00 belongs to
that day in Moscow, whatever zone it is read in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timezone, tzinfo
from typing import Any, Iterable, Mapping

from crmbridge.model import LOST, WON

UNBOUND = "\x00unbound"  # direction of a call or task not bound to any deal: counts only in "all directions"


@dataclass(frozen=True, slots=True)
class DealFact:
    """A deal as the KPIs see it."""

    id: int
    manager: str | None
    direction: str
    outcome: str  # won, lost, open
    amount: float | None  # in the deal's currency
    rate: float | None  # deal currency -> base currency; None: the portal has no rate for it
    created: date
    closed: date | None  # the close date (CLOSEDATE) of a closed deal
    client: str | None  # contact:12 / company:7
    values: Mapping[str, float | None] = field(default_factory=dict)  # bound number fields (margin, nps)

    @property
    def cycle_days(self) -> float | None:
        return float((self.closed - self.created).days) if self.closed is not None else None


@dataclass(frozen=True, slots=True)
class WorkFact:
    """A call, meeting, e-mail, CRM to-do or task of a manager."""

    kind: str  # call, meeting, email, todo, task
    manager: str | None
    direction: str  # the deal's direction, or UNBOUND
    completed: bool
    incoming: bool | None
    start: date | None
    created: date | None
    closed: date | None
    deadline: datetime | None
    closed_at: datetime | None

    def overdue(self, now: datetime) -> bool:
        if self.deadline is None:
            return False
        if self.completed:
            return self.closed_at is not None and self.closed_at > self.deadline
        return self.deadline < now


@dataclass(frozen=True, slots=True)
class ViolationFact:
    deal_id: int
    rule: str
    manager: str | None
    opened: date
    resolved: date | None


@dataclass(frozen=True, slots=True)
class StageVisit:
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
    """Portal timestamps -> dates and moments in the portal's zone; texts repeat a lot, so parses are memoised."""

    def __init__(self, zone: tzinfo) -> None:
        self.zone = zone
        self._days: dict[str, date | None] = {}
        self._moments: dict[str, datetime | None] = {}

    def moment(self, text: Any) -> datetime | None:
        if not text:
            return None
        key = str(text)
        if key in self._moments:
            return self._moments[key]
        try:
            value = datetime.fromisoformat(key)
        except ValueError:
            value = None
        if value is not None:
            value = value.replace(tzinfo=self.zone) if value.tzinfo is None else value.astimezone(self.zone)
        self._moments[key] = value
        return value

    def day(self, text: Any) -> date | None:
        if not text:
            return None
        key = str(text)
        found = self._days.get(key, False)
        if found is not False:
            return found  # type: ignore[return-value]
        if len(key) == 10:
            try:
                value: date | None = date.fromisoformat(key)
            except ValueError:
                value = None
        else:
            moment = self.moment(key)
            value = moment.date() if moment is not None else None
        self._days[key] = value
        return value


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
    for row in rows:
        deal_id = int(row["deal_id"])
        if deal_id not in deals:
            continue
        direction, stage = binding.stage_of.get((str(row.get("category_id") or 0), str(row.get("stage_id") or "")),
                                                (None, None))
        if direction is None or stage is None or stage == LOST:
            continue
        index = positions.get(direction, {}).get(stage)
        entered = clock.day(row.get("created_time"))
        if index is None or entered is None:
            continue
        key = (deal_id, direction, index)
        if key not in first or entered < first[key]:
            first[key] = entered
    return [StageVisit(deal_id, direction, index, entered) for (deal_id, direction, index), entered in first.items()]


def work_facts(communications: Iterable[Mapping[str, Any]], todos: Iterable[Mapping[str, Any]],
               tasks: Iterable[Mapping[str, Any]], direction_of_deal: Mapping[int, str], known_deals: set[int],
               clock: LocalTime) -> list[WorkFact]:
    """Calls / meetings / e-mails, CRM to-dos and tasks; bound to a deal of an ignored pipeline, they do not count."""
    found: list[WorkFact] = []

    def direction(deal_id: Any) -> str | None:
        if deal_id is None:
            return UNBOUND
        deal_id = int(deal_id)
        if deal_id in direction_of_deal:
            return direction_of_deal[deal_id]
        return None if deal_id in known_deals else UNBOUND

    for row in communications:
        where = direction(row.get("deal_id"))
        if where is None or not row.get("kind"):
            continue
        completed = bool(row.get("completed"))
        incoming = row.get("incoming")
        found.append(WorkFact(str(row["kind"]), _user(row.get("responsible_id")), where, completed,
                              None if incoming is None else bool(incoming), clock.day(row.get("start_time")),
                              clock.day(row.get("created")),
                              clock.day(row.get("last_updated")) if completed else None, None, None))
    for row in todos:
        where = direction(row.get("deal_id"))
        if where is None:
            continue
        completed = bool(row.get("completed"))
        deadline = clock.moment(row.get("deadline"))
        # a completed to-do's last update is when it was completed (crm.activity.list has no completion time)
        closed_at = clock.moment(row.get("last_updated")) if completed else None
        found.append(WorkFact("todo", _user(row.get("responsible_id")), where, completed, None,
                              deadline.date() if deadline else None, clock.day(row.get("created")),
                              closed_at.date() if closed_at else None, deadline, closed_at))
    for row in tasks:
        where = direction(row.get("deal_id"))
        if where is None:
            continue
        completed = row.get("status") in (4, 5, "4", "5")
        deadline = clock.moment(row.get("deadline"))
        closed_at = clock.moment(row.get("closed_date")) if completed else None
        found.append(WorkFact("task", _user(row.get("responsible_id")), where, completed, None,
                              deadline.date() if deadline else None, clock.day(row.get("created_date")),
                              closed_at.date() if closed_at else None, deadline, closed_at))
    return found


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

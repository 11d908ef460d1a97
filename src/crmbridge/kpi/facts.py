"""Pure KPI engine: facts per manager, department and company, per direction, per period, with plans.

Every KPI of kpi.yaml becomes dated events (a won deal on its close date, a call on its day, a stage entry
on its day); a period takes the events inside it and adds them up per manager and direction. A department
or the company merges its managers' events, so a sum or a count of the company is the sum of its managers,
and a median or a rate is recomputed over the merged events, never averaged.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from itertools import groupby, zip_longest
from operator import itemgetter
from typing import Any, Callable, Iterable, Iterator

from crmbridge.kpi.inputs import UNBOUND, DealFact, FactData, WorkFact, entries_of_visits
from crmbridge.kpi.periods import Period
from crmbridge.kpi.plans import Owner, PlanBook
from crmbridge.kpi.schema import KpiFileSpec, KpiSpec

GroupKey = tuple[str | None, str]  # (manager, direction or UNBOUND)


# ---------------------------------------------------------------- accumulators


class Acc:
    """Adds up values of one group; `merge` combines groups (a department, the company)."""

    __slots__ = ()

    def add(self, value: float) -> None:
        raise NotImplementedError

    def add_many(self, value: float, count: int) -> None:
        """`count` equal values (grouped rows)."""
        raise NotImplementedError

    def merge(self, other: Acc) -> None:
        raise NotImplementedError

    def result(self) -> float | None:
        raise NotImplementedError


class SumAcc(Acc):
    __slots__ = ("total",)

    def __init__(self) -> None:
        self.total = 0.0

    def add(self, value: float) -> None:
        self.total += value

    def add_many(self, value: float, count: int) -> None:
        self.total += value * count

    def merge(self, other: Acc) -> None:
        self.total += other.total  # type: ignore[attr-defined]

    def result(self) -> float | None:
        return self.total


class MeanAcc(Acc):
    __slots__ = ("total", "count")

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def add(self, value: float) -> None:
        self.total += value
        self.count += 1

    def add_many(self, value: float, count: int) -> None:
        self.total += value * count
        self.count += count

    def merge(self, other: Acc) -> None:
        self.total += other.total  # type: ignore[attr-defined]
        self.count += other.count  # type: ignore[attr-defined]

    def result(self) -> float | None:
        return self.total / self.count if self.count else None


class QuantileAcc(Acc):
    __slots__ = ("values", "q")

    def __init__(self, q: float) -> None:
        self.values: list[float] = []
        self.q = q

    def add(self, value: float) -> None:
        self.values.append(value)

    def add_many(self, value: float, count: int) -> None:
        self.values.extend([value] * count)

    def merge(self, other: Acc) -> None:
        self.values.extend(other.values)  # type: ignore[attr-defined]

    def result(self) -> float | None:
        return quantile(self.values, self.q)


class RateAcc(Acc):
    """Share of hits in percent."""

    __slots__ = ("hits", "count")

    def __init__(self) -> None:
        self.hits, self.count = 0.0, 0

    def add(self, value: float) -> None:
        self.hits += value
        self.count += 1

    def add_many(self, value: float, count: int) -> None:
        self.hits += value * count
        self.count += count

    def merge(self, other: Acc) -> None:
        self.hits += other.hits  # type: ignore[attr-defined]
        self.count += other.count  # type: ignore[attr-defined]

    def result(self) -> float | None:
        return 100.0 * self.hits / self.count if self.count else None


def quantile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default): median = quantile(v, 0.5)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _factory(spec: KpiSpec) -> Callable[[], Acc]:
    if spec.aggregate in ("count", "sum", "new_clients"):
        return SumAcc
    if spec.aggregate == "average":
        return MeanAcc
    if spec.aggregate == "median":
        return lambda: QuantileAcc(0.5)
    if spec.aggregate == "p90":
        return lambda: QuantileAcc(0.9)
    return RateAcc  # conversion, compliance


# ---------------------------------------------------------------- events


#: one event: (day, manager, direction, value) or (day, manager, direction, value, how many alike)
Event = tuple[Any, ...]


@dataclass
class Events:
    """Dated values of one KPI, sorted by day (ordinal), so a period is a bisect slice."""

    days: list[int] = field(default_factory=list)
    managers: list[str | None] = field(default_factory=list)
    directions: list[str] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    counts: list[int] | None = None  # how many alike each event stands for (None: one each)

    @staticmethod
    def of(items: Iterable[Event]) -> Events:
        ordered = sorted(items, key=itemgetter(0))  # stable: a day's events keep their order (the sums' order)
        events = Events()
        if not ordered:
            return events
        # the columns at C speed (a KPI of a big portal has hundreds of thousands of events); an event of four
        # stands for one
        days, managers, directions, values, *counts = zip_longest(*ordered, fillvalue=1)
        events.days = list(map(date.toordinal, days))
        events.managers, events.directions, events.values = list(managers), list(directions), list(values)
        if counts and any(map((1).__ne__, counts[0])):
            events.counts = list(counts[0])
        return events

    def groups(self, period: Period, factory: Callable[[], Acc]) -> dict[GroupKey, Acc]:
        low = bisect.bisect_left(self.days, period.start.toordinal())
        high = bisect.bisect_left(self.days, period.end.toordinal())
        found: dict[GroupKey, Acc] = {}
        managers, directions, values, counts = self.managers, self.directions, self.values, self.counts
        for i in range(low, high):
            key = (managers[i], directions[i])
            acc = found.get(key)
            if acc is None:
                acc = found[key] = factory()
            if counts is None or counts[i] == 1:
                acc.add(values[i])
            else:
                acc.add_many(values[i], counts[i])
        return found


@dataclass
class _GroupDeals:
    """The deals of one (manager, direction) as day ordinals, sorted: whose are worked on in a period is counted by
    bisecting (a closed deal is worked on from its creation to its close)."""

    created: list[int] = field(default_factory=list)  # every deal
    open_created: list[int] = field(default_factory=list)  # deals still open
    closed: list[int] = field(default_factory=list)  # closed deals: their close, and their creation
    closed_created: list[int] = field(default_factory=list)
    odd: list[tuple[int, int]] = field(default_factory=list)  # (created, closed) of deals closed before creation


@dataclass
class _ComplianceIndex:
    groups: dict[GroupKey, _GroupDeals]
    deal_of: dict[int, tuple[GroupKey, int, int | None]]
    #: cohort created: per group, the creation days of its deals with a violation, sorted
    troubled_created: dict[GroupKey, list[int]] = field(default_factory=dict)
    #: cohort active: per group, each troubled deal's months (ranges, inclusive) of a violation while worked on
    troubled_months: dict[GroupKey, list[list[tuple[int, float]]]] = field(default_factory=dict)
    #: the same counted: per group, (months where the count changes, the count from there on)
    monthly: dict[GroupKey, tuple[list[int], list[int]]] = field(default_factory=dict)


class KpiEngine:
    """Facts of the KPIs of one kpi.yaml over one FactData; memoised per KPI and period."""

    def __init__(self, data: FactData, kpis: KpiFileSpec, now: datetime) -> None:
        self.data = data
        self.kpis = kpis
        self.now = now
        self._events: dict[str, Events] = {}
        self._groups: dict[tuple[str, Period], dict[GroupKey, Acc]] = {}
        self._index: dict[tuple[str, Period], dict[str | None, list[tuple[GroupKey, Acc]]]] = {}
        self._active: dict[Period, set[str]] = {}
        self._steps_events: dict[str, list[Event]] | None = None
        self._entries: dict[str, list[dict[int, date]]] | None = None
        self._compliance_index: dict[tuple[Any, ...], Any] = {}
        self._by_outcome: dict[str, list[DealFact]] = {}
        self._present: set[str] | None = None
        self._facts: dict[tuple[Any, ...], float | None] = {}
        self._groups_of: dict[frozenset[str] | None, tuple[dict[GroupKey, _GroupDeals],
                                                            dict[int, tuple[GroupKey, int, int | None]]]] = {}
        self.deals_by_id = {deal.id: deal for deal in data.deals}

    # ---------------------------------------------------------- which rows a KPI expands to

    def kpi_ids(self) -> list[str]:
        """KPI ids as rows carry them: a conversion KPI expands into one id per funnel step."""
        ids: list[str] = []
        for kpi_id, spec in self.kpis.kpis.items():
            ids.append(kpi_id)
            if spec.aggregate == "conversion":
                ids.extend(f"{kpi_id}:{step}" for step in self.steps())
        return ids

    def steps(self) -> list[str]:
        seen: list[str] = []
        for stages in self.data.funnels.values():
            for first, second in zip(stages, stages[1:]):
                step = f"{first}-{second}"
                if step not in seen:
                    seen.append(step)
        return seen

    def step_directions(self, step: str) -> set[str]:
        return {direction for direction, stages in self.data.funnels.items()
                if step in {f"{a}-{b}" for a, b in zip(stages, stages[1:])}}

    def spec_of(self, kpi: str) -> KpiSpec:
        return self.kpis.kpis[kpi.split(":")[0]]

    # ---------------------------------------------------------- events per KPI

    def events(self, kpi: str) -> Events:
        if kpi not in self._events:
            self._events[kpi] = Events.of(self._event_items(kpi))
        return self._events[kpi]

    def _event_items(self, kpi: str) -> Iterator[Event]:
        spec = self.spec_of(kpi)
        if spec.aggregate == "new_clients":
            yield from self._new_clients()
        elif spec.aggregate == "conversion":
            yield from self._conversion(kpi.partition(":")[2])
        elif spec.source == "deals":
            yield from self._deal_events(spec)
        elif spec.source in ("activities", "tasks"):
            yield from self._work_events(spec)

    def _deal_events(self, spec: KpiSpec) -> Iterator[tuple[date, str | None, str, float]]:
        outcome = spec.where.outcome
        money = spec.unit == "money"
        for deal in self._deals_with(outcome):
            day = deal.closed if spec.date in (None, "closed") else deal.created
            if day is None:
                continue
            if spec.aggregate == "count":
                value: float | None = 1.0
            else:
                value = deal_value(deal, spec.value or "amount", money)
                if value is None:
                    continue
            yield day, deal.manager, deal.direction, value

    def _work_events(self, spec: KpiSpec) -> Iterator[Event]:
        kinds = work_kinds(spec)
        where = spec.where
        date_of: Callable[[WorkFact], date | None] = {
            "start": lambda w: w.start, "created": lambda w: w.created, "closed": lambda w: w.closed,
            "completed": lambda w: w.closed, "deadline": WorkFact.due_date,
        }[spec.date or ("start" if spec.source == "activities" else "closed")]
        for work in self.data.work:
            if work.kind not in kinds:
                continue
            if where.completed is not None and work.completed != where.completed:
                continue
            if where.incoming is not None and work.incoming != where.incoming:
                continue
            if where.overdue is not None and work.overdue(self.now) != where.overdue:
                continue
            day = date_of(work)
            if day is not None:
                yield day, work.manager, work.direction, 1.0, work.count

    def _deals_with(self, outcome: str | None) -> list[DealFact]:
        """The deals of an outcome (None: all), in their order: each deal KPI reads the same few."""
        if outcome is None:
            return self.data.deals
        found = self._by_outcome.get(outcome)
        if found is None:
            found = self._by_outcome[outcome] = [deal for deal in self.data.deals if deal.outcome == outcome]
        return found

    def _new_clients(self) -> Iterator[tuple[date, str | None, str, float]]:
        """A client's first won deal (by close date, then id) makes it a new client of that deal's manager."""
        first: dict[str, DealFact] = {}
        for deal in self._deals_with("won"):
            if deal.client is None or deal.closed is None:
                continue
            earlier = first.get(deal.client)
            if earlier is None or (deal.closed, deal.id) < (earlier.closed, earlier.id):  # type: ignore[operator]
                first[deal.client] = deal
        for deal in first.values():
            yield deal.closed, deal.manager, deal.direction, 1.0  # type: ignore[misc]

    def _conversion(self, step: str) -> Iterator[Event]:
        """Entering a stage in the period, and reaching the next one (or later) by now; no step: entry to won."""
        return iter(self._conversion_events().get(step, []))

    def _conversion_events(self) -> dict[str, list[Event]]:
        """Every step's events in one pass over the first arrivals ("" = the first stage to won), counted alike
        per (day, manager, reached or not)."""
        if self._steps_events is not None:
            return self._steps_events
        entries = self.entries()
        manager_of = {deal.id: deal.manager for deal in self.data.deals}
        won = {deal.id for deal in self.data.deals if deal.outcome == "won"}
        found: dict[str, list[Event]] = defaultdict(list)
        for direction, stages in self.data.funnels.items():
            steps = [f"{a}-{b}" for a, b in zip(stages, stages[1:])]
            per_stage = [firsts if firsts.keys() <= manager_of.keys() else
                         {deal: day for deal, day in firsts.items() if deal in manager_of}
                         for firsts in entries.get(direction, [])]
            if not steps or not per_stage:
                continue
            # set operations and C-level counting: a year of a big portal is hundreds of thousands of arrivals
            later: list[set[int]] = [set() for _ in per_stage]  # deals that got past each stage
            for index in range(len(per_stage) - 2, -1, -1):
                later[index] = later[index + 1] | per_stage[index + 1].keys()
            to_won = per_stage[-1].keys() & won if len(per_stage) == len(steps) + 1 else set()
            manager = manager_of.__getitem__
            for index, firsts in enumerate(per_stage[:len(steps)]):
                for day, arrived in groupby(sorted(firsts.items(), key=itemgetter(1)), key=itemgetter(1)):
                    deals = list(map(itemgetter(0), arrived))
                    everyone = Counter(map(manager, deals))
                    counted = [(steps[index], later[index].intersection(deals))]
                    if index == 0:
                        counted.append(("", to_won.intersection(deals)))
                    for step, hits in counted:
                        reached = Counter(map(manager, hits))
                        for who, count in everyone.items():
                            if reached[who]:
                                found[step].append((day, who, direction, 1.0, reached[who]))
                            if count > reached[who]:
                                found[step].append((day, who, direction, 0.0, count - reached[who]))
        self._steps_events = dict(found)
        return self._steps_events

    def entries(self) -> dict[str, list[dict[int, date]]]:
        """Per direction and regulated stage, each deal's first arrival (FactData.entries, or made of its visits)."""
        if self._entries is None:
            self._entries = (self.data.entries if self.data.entries is not None
                             else entries_of_visits(self.data.visits, self.data.funnels))
        return self._entries

    def funnel(self, direction: str, start: date, end: date) -> list[int]:
        """Deals that entered the direction in [start, end), and how many of them reached each stage by now."""
        per_stage = self.entries().get(direction, [])
        first: dict[int, date] = {}
        furthest: dict[int, int] = {}
        for index, firsts in enumerate(per_stage):
            furthest.update(dict.fromkeys(firsts, index))
            for deal, day in firsts.items():
                if deal not in first or day < first[deal]:
                    first[deal] = day
        cohort = [furthest[deal] for deal, day in first.items() if start <= day < end]
        return [sum(1 for reached in cohort if reached >= index) for index in range(len(self.data.funnels[direction]))]

    # ---------------------------------------------------------- groups per period

    def groups(self, kpi: str, period: Period) -> dict[GroupKey, Acc]:
        key = (kpi, period)
        if key not in self._groups:
            spec = self.spec_of(kpi)
            if spec.aggregate == "compliance":
                self._groups[key] = self._compliance(spec, period)
            elif spec.aggregate == "growth":
                self._groups[key] = {}
            else:
                self._groups[key] = self.events(kpi).groups(period, _factory(spec))
        return self._groups[key]

    def _compliance(self, spec: KpiSpec, period: Period) -> dict[GroupKey, Acc]:
        """Share of deals without a violation of `rules` in the period: worked on in it, or created in it."""
        if not self.data.violations_recorded:
            return {}
        index = self._compliance_of(spec)
        start, end = period.start.toordinal(), period.end.toordinal()
        found: dict[GroupKey, Acc] = {}
        for group, deals in index.groups.items():
            if spec.cohort == "created":
                count = bisect.bisect_left(deals.created, end) - bisect.bisect_left(deals.created, start)
                troubled_created = index.troubled_created.get(group, [])
                troubled = (bisect.bisect_left(troubled_created, end)
                            - bisect.bisect_left(troubled_created, start))
            else:
                # worked on in the period: created before its end and not closed before its start
                count = (bisect.bisect_left(deals.open_created, end)
                         + len(deals.closed) - bisect.bisect_left(deals.closed, start)
                         - (len(deals.closed_created) - bisect.bisect_left(deals.closed_created, end))
                         + sum(1 for created, closed in deals.odd if created < end and closed >= start))
                troubled = -1
            if count:
                acc = RateAcc()
                acc.count = count
                acc.hits = float(count - max(troubled, 0))
                found[group] = acc
        if spec.cohort != "created":
            self._troubled_while_worked(index, period, found)
        return found

    def _troubled_while_worked(self, index: _ComplianceIndex, period: Period, found: dict[GroupKey, Acc]) -> None:
        """Takes from each group's hits its deals worked on in the period with a violation open in it."""
        first, last = _month_number(period.start), _month_number(period.end) - 1
        if first == last:
            # one month (the usual question): counted per group and month once for all months
            for group, acc in found.items():
                months, counts = index.monthly.get(group, ([], []))
                at = bisect.bisect_right(months, first)
                acc.hits -= float(counts[at - 1]) if at else 0.0  # type: ignore[attr-defined]
            return
        for group, ranges in index.troubled_months.items():
            hit = sum(1 for deal_ranges in ranges if any(low <= last and high >= first for low, high in deal_ranges))
            if hit:
                found[group].hits -= float(hit)  # type: ignore[attr-defined]

    def _deal_groups(self, applies: set[str] | None) -> tuple[dict[GroupKey, _GroupDeals],
                                                             dict[int, tuple[GroupKey, int, int | None]]]:
        """The deals of the `applies` directions (None: all) by (manager, direction), days as ordinals, sorted; and
        each deal's (group, created, closed), of every direction: a deal whose group is not among the groups does not
        count. Built once for all directions; the compliance KPIs of fewer directions take some of its groups."""
        if self._present is None:
            self._present = {deal.direction for deal in self.data.deals}
        key = None if applies is None or applies >= self._present else frozenset(applies & self._present)
        found = self._groups_of.get(key)
        if found is not None:
            return found
        if key is not None:
            every, every_deal = self._deal_groups(None)
            found = self._groups_of[key] = ({group: deals for group, deals in every.items() if group[1] in key},
                                            every_deal)
            return found
        groups: dict[GroupKey, _GroupDeals] = {}
        deal_of: dict[int, tuple[GroupKey, int, int | None]] = {}
        ordinal = date.toordinal
        for deal_id, manager, direction, _, _, _, created_day, closed_day, *_ in self.data.deals:
            group = (manager, direction)
            deals = groups.get(group)
            if deals is None:
                deals = groups[group] = _GroupDeals()
            created = ordinal(created_day)
            if closed_day is None:
                deal_of[deal_id] = (group, created, None)
                deals.created.append(created)
                deals.open_created.append(created)
                continue
            closed = ordinal(closed_day)
            deal_of[deal_id] = (group, created, closed)
            deals.created.append(created)
            if closed >= created:
                deals.closed.append(closed)
                deals.closed_created.append(created)
            else:
                deals.odd.append((created, closed))  # closed before it was created: counted as it is
        for deals in groups.values():
            for values in (deals.created, deals.open_created, deals.closed, deals.closed_created):
                values.sort()
        self._groups_of[key] = (groups, deal_of)
        return groups, deal_of

    def _compliance_of(self, spec: KpiSpec) -> _ComplianceIndex:
        """Deals (of the directions where `rules` apply) by group, and their violations, sorted for bisecting."""
        key = (tuple(spec.rules), spec.cohort)
        index = self._compliance_index.get(key)
        if index is not None:
            return index
        rules = set(spec.rules)
        applies: set[str] | None = None
        if rules:
            applies = set().union(*(self.data.rule_directions.get(rule, set()) for rule in rules))
        groups, deal_of = self._deal_groups(applies)
        index = _ComplianceIndex(groups, deal_of)
        chosen = [v for v in self.data.violations if not rules or v.rule in rules]
        if spec.cohort == "created":
            for deal_id in {v.deal_id for v in chosen}:
                where = deal_of.get(deal_id)
                if where is not None and where[0] in groups:
                    index.troubled_created.setdefault(where[0], []).append(where[1])
            for created in index.troubled_created.values():
                created.sort()
        else:
            # a deal is troubled while worked on in month m when one of its violations was open in m and the deal was
            # worked on in m too: from the later of opening and creation to the earlier of resolving and closing
            spans: dict[int, list[tuple[int, float]]] = {}
            month_of: dict[date, int] = {}
            deal_months: dict[int, tuple[int, float]] = {}
            for v in chosen:
                where = deal_of.get(v.deal_id)
                if where is None or where[0] not in groups:
                    continue
                worked = deal_months.get(v.deal_id)
                if worked is None:
                    _, created, closed = where
                    worked = deal_months[v.deal_id] = (
                        _month_number(date.fromordinal(created)),
                        _month_number(date.fromordinal(closed)) if closed is not None else math.inf)
                opened = month_of.get(v.opened)
                if opened is None:
                    opened = month_of[v.opened] = _month_number(v.opened)
                resolved: float = math.inf
                if v.resolved is not None:
                    resolved = month_of.get(v.resolved) or month_of.setdefault(v.resolved, _month_number(v.resolved))
                spans.setdefault(v.deal_id, []).append((max(opened, worked[0]), min(resolved, worked[1])))
            monthly: dict[GroupKey, list[list[tuple[int, float]]]] = {}
            for deal_id, ranges in spans.items():
                group = deal_of[deal_id][0]
                if len(ranges) == 1:  # the usual deal: one violation
                    single = ranges[0]
                    monthly.setdefault(group, []).append([single] if single[0] <= single[1] else [])
                    index.troubled_months.setdefault(group, []).append(ranges)
                    continue
                merged: list[tuple[int, float]] = []
                for low, high in sorted(range_ for range_ in ranges if range_[0] <= range_[1]):
                    if merged and low <= merged[-1][1] + 1:
                        merged[-1] = (merged[-1][0], max(merged[-1][1], high))
                    else:
                        merged.append((low, high))
                monthly.setdefault(group, []).append(merged)
                # a range ending before it starts (a violation resolved before it opened, a deal closed before it was
                # created) is in no single month, yet in a longer period that holds both ends, as plain counting had it
                index.troubled_months.setdefault(group, []).append(
                    merged + [range_ for range_ in ranges if range_[0] > range_[1]])
            for group, per_deal in monthly.items():
                deltas: dict[int, int] = defaultdict(int)
                for merged in per_deal:
                    for low, high in merged:
                        deltas[int(low)] += 1
                        if high != math.inf:
                            deltas[int(high) + 1] -= 1
                months = sorted(deltas)
                running, counts = 0, []
                for month in months:
                    running += deltas[month]
                    counts.append(running)
                index.monthly[group] = (months, counts)
        self._compliance_index[key] = index
        return index

    # ---------------------------------------------------------- one figure

    def fact(self, kpi: str, period: Period, managers: set[str | None] | None, direction: str | None) -> float | None:
        """The KPI over the events of `managers` (None = everyone) in `direction` (None = all); remembered (a
        month's figure is the next month's trend base)."""
        key = (kpi, period, None if managers is None else frozenset(managers), direction)
        if key in self._facts:
            return self._facts[key]
        found = self._fact(kpi, period, managers, direction)
        self._facts[key] = found
        return found

    def _fact(self, kpi: str, period: Period, managers: set[str | None] | None, direction: str | None) -> float | None:
        spec = self.spec_of(kpi)
        if spec.aggregate == "growth":
            base = spec.of or ""
            now_value = self.fact(base, period, managers, direction)
            earlier = period.previous() if spec.against == "previous" else period.year_ago()
            before = self.fact(base, earlier, managers, direction)
            if now_value is None or before is None or before == 0:
                return None
            return 100.0 * (now_value - before) / abs(before)
        merged: Acc | None = None
        if managers is None:
            candidates: Iterable[tuple[GroupKey, Acc]] = self.groups(kpi, period).items()
        else:
            index = self._by_manager(kpi, period)
            candidates = [item for manager in managers for item in index.get(manager, ())]
        for (_, where), acc in candidates:
            if direction is not None and where != direction:
                continue
            if merged is None:
                merged = _factory(spec)() if spec.aggregate != "compliance" else RateAcc()
            merged.merge(acc)
        if merged is None:
            return 0.0 if spec.aggregate in ("count", "sum", "new_clients") else None
        return merged.result()

    def _by_manager(self, kpi: str, period: Period) -> dict[str | None, list[tuple[GroupKey, Acc]]]:
        key = (kpi, period)
        index = self._index.get(key)
        if index is None:
            index = defaultdict(list)
            for group, acc in self.groups(kpi, period).items():
                index[group[0]].append((group, acc))
            self._index[key] = index
        return index

    def managers_in(self, period: Period) -> set[str]:
        """Managers with any event in the period."""
        if period not in self._active:
            found: set[str] = set()
            for kpi in self.kpis.kpis:
                if self.spec_of(kpi).aggregate == "growth":
                    continue
                for manager, _ in self.groups(kpi, period):
                    if manager is not None:
                        found.add(manager)
            self._active[period] = found
        return self._active[period]


def _month_number(day: date) -> int:
    """Months since year 0: the month of a day, as a number that orders and subtracts."""
    return day.year * 12 + day.month - 1


def work_kinds(spec: KpiSpec) -> set[str]:
    """The kinds of calls / to-dos / tasks a KPI counts (where.kind, or its source's defaults)."""
    kinds = set(spec.where.kind) or ({"call", "meeting", "email", "todo"} if spec.source == "activities"
                                    else {"task", "todo"})
    if spec.source == "tasks":
        kinds &= {"task", "todo"}
    return kinds


def deal_value(deal: DealFact, value: str, money: bool) -> float | None:
    """A deal's figure for sum / average / median / p90: its amount, cycle days or a bound number field."""
    if value == "cycle_days":
        return deal.cycle_days
    raw = deal.amount if value == "amount" else deal.values.get(value)
    if raw is None:
        return None
    if money or value == "amount":
        return raw * deal.rate if deal.rate is not None else None
    return raw


# ---------------------------------------------------------------- rows


@dataclass(frozen=True)
class KpiRow:
    """One figure: the keys `crmbridge kpi --json` prints."""

    period: str
    scope: str  # manager, department, company
    manager_id: str | None
    department_id: str | None
    direction: str | None
    kpi: str
    plan: float | None
    fact: float | None
    share_done: float | None
    previous: float | None = None
    trend: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "period": self.period, "scope": self.scope,
            "manager_id": int(self.manager_id) if self.manager_id and self.manager_id.isdigit() else self.manager_id,
            "department_id": (int(self.department_id) if self.department_id and self.department_id.isdigit()
                              else self.department_id),
            "direction": self.direction, "kpi": self.kpi, "plan": _round(self.plan), "fact": _round(self.fact),
            "share_done": _round(self.share_done, 4), "previous": _round(self.previous),
            "trend": _round(self.trend, 1),
        }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def share(fact: float | None, plan: float | None) -> float | None:
    if fact is None or plan is None or plan == 0:
        return None
    return fact / plan


def department_members(data: FactData) -> dict[str, set[str]]:
    """Department id -> the users in it or in any department below it."""
    children: dict[str, set[str]] = defaultdict(set)
    for department_id, info in data.departments.items():
        if info.parent:
            children[info.parent].add(department_id)
    direct: dict[str, set[str]] = defaultdict(set)
    for user_id, info in data.users.items():
        for department_id in info.departments:
            direct[department_id].add(user_id)
    members: dict[str, set[str]] = {}

    def collect(department_id: str, seen: set[str]) -> set[str]:
        if department_id in seen:
            return set()  # a cycle in the portal's tree: count each department once
        seen.add(department_id)
        found = set(direct.get(department_id, set()))
        for child in children.get(department_id, ()):
            found |= collect(child, seen)
        return found

    for department_id in set(data.departments) | set(direct):
        members[department_id] = collect(department_id, set())
    return members


def kpi_rows(engine: KpiEngine, periods: Iterable[Period], plans: PlanBook | None, *,
             directions: list[str], managers: set[str] | None = None, direction_filter: str | None = "*",
             kpi_filter: set[str] | None = None, with_trend: bool = True) -> list[KpiRow]:
    """Every KPI for every period, scope (each manager, each department, the company) and direction.

    `managers` limits the manager rows (e.g. `--manager 3`); `direction_filter` "*" = all directions and the
    total, None = only the total, else one direction.
    """
    rows: list[KpiRow] = []
    members = department_members(engine.data)
    wanted_directions: list[str | None] = ([None, *directions] if direction_filter == "*" else [direction_filter])
    for period in periods:
        planned = {owner.id for owner in _planned_owners(plans, period)} if plans else set()
        active = (engine.managers_in(period) | planned) - {None}
        if managers is not None:
            active &= managers
        units: list[tuple[str, str | None, str | None, set[str | None] | None]] = []
        for manager in sorted(active, key=_natural):
            units.append(("manager", manager, None, {manager}))
        if managers is None:
            for department_id in sorted(members, key=_natural):
                people = members[department_id]
                if people & (engine.managers_in(period) | planned):
                    units.append(("department", None, department_id, set(people)))
            units.append(("company", None, None, None))
        for kpi in engine.kpi_ids():
            if kpi_filter is not None and kpi.split(":")[0] not in kpi_filter:
                continue
            spec = engine.spec_of(kpi)
            step = kpi.partition(":")[2]
            kpi_directions = wanted_directions
            if step:
                allowed = engine.step_directions(step)
                kpi_directions = [d for d in wanted_directions if d in allowed]
            for scope, manager, department_id, who in units:
                for direction in kpi_directions:
                    fact = engine.fact(kpi, period, who, direction)
                    plan = None
                    if plans is not None and spec.plannable and not step:
                        owner = (Owner("manager", manager) if scope == "manager" else
                                 Owner("department", department_id) if scope == "department" else Owner("company"))
                        plan = plans.target(owner, direction, kpi, period)
                    previous = trend = None
                    if with_trend and spec.aggregate != "growth":
                        previous = engine.fact(kpi, period.previous(), who, direction)
                        if previous not in (None, 0) and fact is not None:
                            trend = 100.0 * (fact - previous) / abs(previous)  # type: ignore[operator]
                    rows.append(KpiRow(str(period), scope, manager, department_id, direction, kpi, plan, fact,
                                       share(fact, plan), previous, trend))
    return rows


def _planned_owners(plans: PlanBook, period: Period) -> list[Owner]:
    owners = []
    for (owner, _direction, _metric), values in plans.resolved.items():
        if owner.scope == "manager" and any(period.contains(p) or p.contains(period) for p in values):
            owners.append(owner)
    return owners


def _natural(text: str | None) -> tuple[int, str]:
    text = text or ""
    return (int(text), "") if text.isdigit() else (1 << 30, text)


__all__ = ["KpiEngine", "KpiRow", "UNBOUND", "department_members", "kpi_rows", "quantile", "share", "work_kinds"]

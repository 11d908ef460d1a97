"""The regulation prepared for fast evaluation: stage order, cumulative requirements and rules per direction."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from typing import Any, Mapping

from crmbridge.mapping.schema import (
    DirectionSpec,
    FieldSpec,
    FinalStageSpec,
    RegulationSpec,
    RequirementSpec,
    RulesSpec,
    StageSpec,
)
from crmbridge.model import LOST, WON, Deal, Mode, Outcome, StageEntry, Violation, fill
from crmbridge.regulation.calendar import WorkingCalendar


@dataclass(frozen=True, slots=True)
class CompiledDirection:
    """One direction with everything a rule looks up, precomputed."""

    id: str
    spec: DirectionSpec
    rules: RulesSpec
    order: Mapping[str, int]  # open stage id -> position 0..n-1
    stages: Mapping[str, StageSpec | FinalStageSpec]  # includes WON and LOST
    required: Mapping[str, tuple[RequirementSpec, ...]]  # R2 cumulative: stage -> fields required while in it
    modes: Mapping[str, Mode]
    specs: Mapping[str, Any]  # rule id -> its parameters (the RulesSpec entry)
    from_position: Mapping[str, int | None] = field(default_factory=dict)  # R6 / R8: first position the rule covers
    plain_required: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # R2 fast path: stage -> field ids
    #: R2 fast path: stage -> (field id, option it must equal or None, must be a future date) of the other requirements
    conditioned_required: Mapping[str, tuple[tuple[str, Any, bool], ...]] = field(default_factory=dict)
    placeholders: Mapping[str | None, Mapping[str, str]] = field(default_factory=dict)  # stage -> its message words
    # looked up by every deal, so read once here instead of through the specs per deal:
    created_in: frozenset[str] = frozenset()  # R1: where a deal may be created (first stage, `created_in`, Lost)
    stage_tasks: Mapping[str, Any] = field(default_factory=dict)  # R3: stage -> its task spec (stages that have one)
    #: the regulation's zone (its calendar's), in which a rule's days are counted: R5's next-contact dates
    zone: tzinfo = timezone.utc

    def position_of(self, stages: list[str]) -> int | None:
        positions = [self.order[stage] for stage in stages if stage in self.order]
        return min(positions) if positions else None

    @property
    def first_stage(self) -> str:
        return self.spec.stages[0].id

    @property
    def last_stage(self) -> str:
        return self.spec.stages[-1].id

    def stage_name(self, stage: str | None) -> str:
        spec = self.stages.get(stage) if stage else None
        return spec.name if spec is not None else (stage or "")


@dataclass(frozen=True)
class CompiledRegulation:
    """The regulation, ready for evaluating many deals quickly."""

    spec: RegulationSpec
    directions: Mapping[str, CompiledDirection]
    calendar: WorkingCalendar
    fields: Mapping[str, FieldSpec] = field(default_factory=dict)

    def label(self, field_id: str) -> str:
        spec = self.fields.get(field_id)
        return spec.label if spec is not None and spec.label else field_id


def compile_regulation(spec: RegulationSpec) -> CompiledRegulation:
    """Precompute per-direction lookups once per run."""
    directions: dict[str, CompiledDirection] = {}
    calendar = WorkingCalendar(spec.calendar)
    for direction_id, direction in spec.directions.items():
        rules = spec.rules_for(direction_id)
        order = {stage.id: index for index, stage in enumerate(direction.stages)}
        stages: dict[str, Any] = {stage.id: stage for stage in direction.stages}
        stages[WON] = direction.won
        stages[LOST] = direction.lost
        required: dict[str, tuple[RequirementSpec, ...]] = {}
        passed: list[RequirementSpec] = []  # what every earlier stage required, to enter or to leave it
        for stage in direction.stages:
            required[stage.id] = _unique(passed + list(stage.requires_to_enter)) if rules.R2.cumulative else tuple(stage.requires_to_enter)
            passed += list(stage.requires_to_enter) + list(stage.requires_to_leave)
        required[WON] = _unique(passed + list(direction.won.requires)) if rules.R2.cumulative else tuple(direction.won.requires)
        required[LOST] = tuple(direction.lost.requires)
        # Lost from stage X: what X required while the deal was in it, plus Lost's own fields
        for stage in direction.stages:
            required[f"{LOST}<{stage.id}"] = (_unique(list(required[stage.id]) + list(direction.lost.requires))
                                             if rules.R2.cumulative else required[LOST])
        modes = {rule: getattr(rules, rule).mode for rule in RulesSpec.model_fields}
        specs = {rule: getattr(rules, rule) for rule in RulesSpec.model_fields}
        compiled = CompiledDirection(
            direction_id, direction, rules, order, stages, required, modes, specs,
            created_in=frozenset((LOST, direction.stages[0].id, *rules.R1.created_in)),
            stage_tasks={stage: spec.task for stage, spec in stages.items() if spec.task is not None},
            zone=calendar.zone)
        compiled.plain_required.update({stage: tuple(r.field for r in requirements if r.plain)  # type: ignore[attr-defined]
                                        for stage, requirements in required.items()})
        compiled.conditioned_required.update({stage: tuple((r.field, r.equals, r.future)  # type: ignore[attr-defined]
                                                           for r in requirements if not r.plain)
                                              for stage, requirements in required.items()})
        compiled.placeholders.update({stage: {"stage": stage or "", "stage_name": compiled.stage_name(stage),  # type: ignore[attr-defined]
                                              "direction": direction.name} for stage in (*stages, None)})
        compiled.from_position.update({"R6": compiled.position_of(rules.R6.stages),  # type: ignore[attr-defined]
                                       "R8": compiled.position_of(rules.R8.from_stages)})
        directions[direction_id] = compiled
    return CompiledRegulation(spec, directions, calendar, dict(spec.fields))


def _unique(requirements: list[RequirementSpec]) -> tuple[RequirementSpec, ...]:
    seen: dict[tuple[str, Any, bool], RequirementSpec] = {}
    for requirement in requirements:
        seen.setdefault((requirement.field, requirement.equals, requirement.future), requirement)
    return tuple(seen.values())


def render(template: str, values: Mapping[str, Any]) -> str:
    """Fill a message template from the regulation; unknown placeholders stay visible instead of failing."""
    return fill(template, values)


def say(ctx: "Context", why: list[str] | None, explanation: str, /, **values: Any) -> None:
    """Explain (for `audit --deal`) why a rule passed or did not apply, in the regulation's wording."""
    if why is not None:
        why.append(render(getattr(ctx.regulation.spec.wording.explain, explanation), values))


class Horizon:
    """The first moment after `now` at which what a rule said of a deal (its verdict or a figure in its message)
    may change by the clock alone: until then the judgement holds unless the deal changes (the audit's reuse)."""

    __slots__ = ("next",)

    def __init__(self) -> None:
        self.next: datetime | None = None

    def note(self, moment: datetime) -> None:
        if self.next is None or moment < self.next:
            self.next = moment


_DAY = timedelta(days=1)
_TICK = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Context:
    """What a rule sees besides the deal: the clock, the regulation and cross-deal facts.

    Rules ask the clock only through the methods below, which note on `horizon` when each answer would change:
    that is what lets a judgement be kept until then (tests/unit/test_horizon.py checks every rule against it)."""

    now: datetime
    regulation: CompiledRegulation
    purchases: Mapping[str, tuple[datetime, str]] | None = None  # R10: client key -> (last purchase, deal id)
    today: date | None = None  # `now`'s date in the regulation's zone (computed once per run)
    horizon: Horizon | None = None

    def reached(self, moment: datetime) -> bool:
        """now >= moment; a moment still ahead is when the answer changes."""
        if self.now >= moment:
            return True
        if self.horizon is not None:
            self.horizon.note(moment)
        return False

    def passed(self, moment: datetime) -> bool:
        """now > moment (strictly); the answer changes just after a moment not yet passed."""
        if self.now > moment:
            return True
        if self.horizon is not None:
            self.horizon.note(moment + _TICK)
        return False

    def local_today(self) -> date:
        return self.today or self.now.astimezone(self.regulation.calendar.zone).date()

    def day_over(self, day: date) -> bool:
        """`day` lies before today (in the regulation's zone); else it will from the midnight after it."""
        if day < self.local_today():
            return True
        if self.horizon is not None:
            self.horizon.note(datetime.combine(day + _DAY, time(), self.regulation.calendar.zone))
        return False

    def days_since(self, moment: datetime) -> int:
        """Whole days (24 h) from `moment` to now; the count grows at the next full day."""
        days = (self.now - moment).days
        if self.horizon is not None:
            self.horizon.note(moment + _DAY * (days + 1))
        return days

    def local_days_since(self, day: date) -> int:
        """Calendar days from `day` to today in the regulation's zone; the count grows at the next midnight."""
        today = self.local_today()
        if self.horizon is not None:
            self.horizon.note(datetime.combine(today + _DAY, time(), self.regulation.calendar.zone))
        return (today - day).days


#: a rule's message when the regulation gives none
DEFAULT_MESSAGE = "{rule}: deal «{title}» ({stage_name}): {missing}"


def texts(direction: CompiledDirection, rule: str) -> tuple[str, str]:
    """A rule's clause and message template in a direction, as its violations carry them."""
    spec = direction.specs[rule]
    return spec.clause or rule, spec.message or DEFAULT_MESSAGE


def violation(rule: str, deal: Deal, direction: CompiledDirection, ctx: Context, *, since: datetime,
              entry: StageEntry | None, missing: tuple[str, ...] = (), stage: str | None = None,
              values: Mapping[str, Any] | None = None, details: Mapping[str, Any] | None = None,
              grows: tuple[datetime, bool] | None = None) -> Violation:
    """Build a Violation with the rule's clause and its message rendered from the regulation file."""
    spec = direction.specs[rule]
    if stage is None:
        stage = deal.stage
    # rule, deal, manager, missing and since are filled from the Violation itself when the message is read
    filled = {"title": deal.title}
    filled.update(direction.placeholders.get(stage) or {"stage": stage or "", "stage_name": stage or ""})
    if values:
        filled.update(values)
    return _new_violation(rule, deal.id, direction.modes[rule], spec.clause or rule,
                          spec.message or DEFAULT_MESSAGE, since, direction.id, stage,
                          entry, missing, deal.manager, details or {}, filled, closed_moment(deal), grows)


def closed_moment(deal: Deal) -> datetime | None:
    """When a won or lost deal was closed: its entry into Won / Lost, else the CRM's close date (or last change)."""
    if deal.outcome is Outcome.OPEN:
        return None
    history = deal.history
    if history and history[-1].stage in (WON, LOST):
        return history[-1].entered
    return deal.closed_at or deal.modified


_SET = [Violation.__dict__[name].__set__ for name in Violation.__dataclass_fields__]
assert len(_SET) == 15


def _new_violation(rule: str, deal: str, severity: Mode, clause: str, template: str, since: datetime,
                   direction: str | None, stage: str | None, entry: StageEntry | None, missing: tuple[str, ...],
                   manager: str | None, details: Mapping[str, Any], values: Mapping[str, Any], closed: datetime | None,
                   grows: tuple[datetime, bool] | None = None, _new: Any = object.__new__,
                   _s: list[Any] = _SET) -> Violation:
    """Violation(...) without the frozen dataclass's per-field __setattr__ (2 µs of a 20 µs budget per deal)."""
    found = _new(Violation)
    _s[0](found, rule); _s[1](found, deal); _s[2](found, severity); _s[3](found, clause)  # noqa: E702
    _s[4](found, template); _s[5](found, since); _s[6](found, direction); _s[7](found, stage)  # noqa: E702
    _s[8](found, entry); _s[9](found, missing); _s[10](found, manager); _s[11](found, details)  # noqa: E702
    _s[12](found, values); _s[13](found, closed); _s[14](found, grows)  # noqa: E702
    return found


class Text:
    """Message text built only if the message is read: `Text(function, *args)`."""

    __slots__ = ("build", "args")

    def __init__(self, build: Any, *args: Any) -> None:
        self.build = build
        self.args = args

    def __str__(self) -> str:
        return str(self.build(*self.args))

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def joined(template_values: Any, separator: str = "; ") -> str:
    """Render (template, values) pairs and join them: the lazy half of a `missing` list."""
    return separator.join(render(template, values) for template, values in template_values)


class Span:
    """A duration shown as 1h30m / 3d in a message, formatted only if the message is read."""

    __slots__ = ("span", "units")

    def __init__(self, span: Any, units: str = "d h m") -> None:
        self.span = span
        self.units = units

    def __str__(self) -> str:
        from crmbridge.mapping.schema import format_duration

        return format_duration(self.span, self.units)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Span) and other.span == self.span

    __hash__ = None  # type: ignore[assignment]

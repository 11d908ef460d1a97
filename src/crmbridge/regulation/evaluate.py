"""Evaluate deals against the regulation: violations per deal, explanations, impact; pure, the clock is passed in."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Callable, Iterable, Iterator, Mapping

from crmbridge.mapping.schema import RULE_IDS, RegulationSpec
from crmbridge.model import Deal, Mode, Outcome, RuleExplanation, Verdict, Violation
from crmbridge.regulation.clients import (
    check_r5,
    check_r6,
    check_r10,
    last_purchases,
    next_contact_day,
    note_latest,
    note_purchase,
    purchase_fields,
    purchase_of,
)
from crmbridge.regulation.compiled import (
    CompiledDirection,
    CompiledRegulation,
    Context,
    Horizon,
    compile_regulation,
    render,
)
from crmbridge.regulation.stages import check_r1, check_r2, check_r3, check_r4
from crmbridge.regulation.timers import check_r7, check_r8, check_r9, check_r11, grown

Rule = Callable[..., "tuple[Violation, ...] | None"]

RULES: Mapping[str, Rule] = {
    "R1": check_r1, "R2": check_r2, "R3": check_r3, "R4": check_r4, "R5": check_r5, "R6": check_r6,
    "R7": check_r7, "R8": check_r8, "R9": check_r9, "R10": check_r10, "R11": check_r11,
}
assert tuple(RULES) == RULE_IDS

_ANY = frozenset(Outcome)
#: the outcomes a rule can judge at all; the others are "not applicable" without calling it (speed)
APPLIES_TO: Mapping[str, frozenset[Outcome]] = {
    "R1": _ANY, "R2": _ANY, "R3": _ANY, "R4": _ANY, "R5": frozenset({Outcome.LOST}),
    "R6": frozenset({Outcome.OPEN, Outcome.WON}), "R7": _ANY, "R8": frozenset({Outcome.OPEN, Outcome.WON}),
    "R9": frozenset({Outcome.OPEN, Outcome.WON}), "R10": frozenset({Outcome.WON}), "R11": frozenset({Outcome.OPEN}),
}


@dataclass(frozen=True)
class Evaluator:
    """A compiled regulation plus the clock: call it on deals."""

    regulation: CompiledRegulation
    now: datetime
    purchases: Mapping[str, tuple[datetime, str]] | None = None

    @classmethod
    def of(cls, regulation: RegulationSpec | CompiledRegulation, now: datetime, *,
           deals_for_purchases: Iterable[Deal] | None = None,
           override_modes: Mapping[str, Mode] | None = None) -> "Evaluator":
        compiled = regulation if isinstance(regulation, CompiledRegulation) else compile_regulation(regulation)
        if override_modes:
            compiled = _with_modes(compiled, override_modes)
        purchases = None
        if deals_for_purchases is not None:
            purchases = last_purchases(deals_for_purchases, Context(now, compiled))
        return cls(compiled, now, purchases)

    def __post_init__(self) -> None:
        # `now` in the regulation's zone: the mapper puts every moment there, and same-zone comparisons are fast
        now = self.now.astimezone(self.regulation.calendar.zone)
        object.__setattr__(self, "now", now)
        object.__setattr__(self, "_context", Context(now, self.regulation, self.purchases, now.date(), Horizon()))
        plans: dict[str | None, tuple[CompiledDirection, dict[Outcome, tuple[Rule, ...]]]] = {}
        for direction_id, direction in self.regulation.directions.items():
            plans[direction_id] = (direction, {
                outcome: tuple(check for rule, check in RULES.items()
                               if direction.modes[rule] is not Mode.OFF and outcome in APPLIES_TO[rule])
                for outcome in Outcome})
        object.__setattr__(self, "_plans", plans)

    def violations(self, deal: Deal) -> list[Violation]:
        """Every violation of one deal (rules in mode `off` are skipped)."""
        plan = self._plans.get(deal.direction)  # type: ignore[attr-defined]
        if plan is None:
            return []
        direction, by_outcome = plan
        context = self._context  # type: ignore[attr-defined]
        found: list[Violation] = []
        for check in by_outcome[deal.outcome]:
            result = check(deal, direction, context)
            if result:
                found += result
        return found

    def judged(self, deal: Deal) -> tuple[list[Violation], datetime | None]:
        """The deal's violations and the first moment after `now` at which the clock alone may change them (what is
        found or a figure its messages show); None: only a change of the deal can."""
        horizon = self._context.horizon  # type: ignore[attr-defined]
        horizon.next = None
        return self.violations(deal), horizon.next

    def grown(self, violation: Violation) -> Violation:
        """A violation judged earlier as judging now would show it: a time waited it shows (R7, R8) counted up to
        `now` (`regulation.timers.grown`)."""
        return grown(violation, self._context)  # type: ignore[attr-defined]

    def explain(self, deal: Deal) -> list[RuleExplanation]:
        """`audit --deal`: each rule's verdict on the deal (passed / failed / not applicable) and why."""
        direction = self.regulation.directions.get(deal.direction) if deal.direction else None
        if direction is None:
            words = self.regulation.spec.wording.explain
            reason = render(words.ignored if deal.ignored else words.not_bound, {"crm_stage": deal.crm_stage})
            return [RuleExplanation(rule, Verdict.NOT_APPLICABLE, reason) for rule in RULES]
        context = self._context  # type: ignore[attr-defined]
        lines: list[RuleExplanation] = []
        for rule, check in RULES.items():
            if direction.modes[rule] is Mode.OFF:
                lines.append(RuleExplanation(rule, Verdict.NOT_APPLICABLE, self.regulation.spec.wording.explain.rule_off))
                continue
            why: list[str] = []
            result = check(deal, direction, context, why)
            reason = "; ".join(why)
            if result is None:
                lines.append(RuleExplanation(rule, Verdict.NOT_APPLICABLE, reason))
            elif result:
                lines.append(RuleExplanation(rule, Verdict.FAILED, reason, tuple(result)))
            else:
                lines.append(RuleExplanation(rule, Verdict.PASSED, reason))
        return lines

    def evaluate_all(self, deals: Iterable[Deal]) -> Iterator[tuple[Deal, list[Violation]]]:
        """Each deal with its violations."""
        for deal in deals:
            yield deal, self.violations(deal)


@dataclass(frozen=True)
class Evaluation:
    """What `evaluate_stream` found: how many deals, their violations (deal by deal, in the order the deals came),
    and the evaluator that knows every client's last purchase (for messages and look-back windows)."""

    deals: int
    violations: list[Violation]
    evaluator: Evaluator


class StreamJudge:
    """Judges deals one at a time, keeping none; `latest(deal id, client key)` answers R10's cross-deal question once
    every deal was judged.

    R10 is the one rule that looks across deals (it judges only a client's latest purchase). Each won deal is judged
    as if it were its client's latest purchase (`judge`); once every deal was seen, an R10 violation of a won deal
    that a later purchase of the same client superseded is dropped, which is what R10 says of it (not applicable).
    """

    def __init__(self, regulation: RegulationSpec | CompiledRegulation, now: datetime, *,
                 override_modes: Mapping[str, Mode] | None = None) -> None:
        # no purchases: R10 judges every won deal as its client's latest
        self.evaluator = Evaluator.of(regulation, now, override_modes=override_modes)
        self._context = self.evaluator._context  # type: ignore[attr-defined]
        self._paid_fields = purchase_fields(self._context)
        self.purchases: dict[str, tuple[datetime, str]] = {}
        self.deals = 0

    def judge(self, deal: Deal) -> list[Violation]:
        """The deal's violations, its R10 one (if any) as if it were its client's latest purchase."""
        self.deals += 1
        if deal.outcome is Outcome.WON:
            note_purchase(self.purchases, deal, self._paid_fields, self._context)
        return self.evaluator.violations(deal)

    def judgement(self, deal: Deal) -> "Judgement":
        """`judge`, with what an audit keeps of it: the horizon and the deal's purchase (R10 settles across deals)."""
        self.deals += 1
        purchase = purchase_of(deal, self._paid_fields, self._context) if deal.outcome is Outcome.WON else None
        if purchase is not None:
            note_latest(self.purchases, purchase[0], purchase[1], deal.id)
        violations, horizon = self.evaluator.judged(deal)
        return Judgement(deal.id, violations, horizon, purchase)

    def latest(self, deal_id: str, client_key: str) -> bool:
        """After every deal was judged: is this deal its client's latest purchase (or the client has none)?"""
        latest = self.purchases.get(client_key)
        return latest is None or latest[1] == deal_id

    def finished(self) -> Evaluator:
        """The evaluator that knows every client's last purchase (for messages and look-back windows)."""
        return replace(self.evaluator, purchases=self.purchases)


@dataclass(frozen=True, slots=True)
class Judgement:
    """One deal judged, as an audit keeps it: its violations (R10's as if it were its client's latest purchase), the
    horizon (the first moment the clock alone may change them; None: only a change of the deal can) and the purchase
    it is, when it is one: (client key, moment)."""

    deal: str
    violations: list[Violation]
    horizon: datetime | None
    purchase: tuple[str, Any] | None


def latest_purchases(purchases: Iterable[tuple[str, str, Any]]) -> dict[str, tuple[Any, str]]:
    """Client key -> (moment, deal id) of its latest purchase, from (deal id, client key, moment) in deal order: what
    `StreamJudge.purchases` holds after the same deals."""
    found: dict[str, tuple[Any, str]] = {}
    for deal_id, client_key, moment in purchases:
        note_latest(found, client_key, moment, deal_id)
    return found


def settle_r10(violations: list[Violation], client_key: str | None, latest: Mapping[str, tuple[Any, str]]) -> list[Violation]:
    """A deal's violations once every purchase is known: R10's is dropped when a later purchase of the same client
    superseded the deal (R10 judges only the client's latest purchase)."""
    if client_key is None or not violations:
        return violations
    known = latest.get(client_key)
    if known is None or known[1] == violations[0].deal:
        return violations
    return [violation for violation in violations if violation.rule != "R10"]


def evaluate_stream(regulation: RegulationSpec | CompiledRegulation, now: datetime, deals: Iterable[Deal], *,
                    override_modes: Mapping[str, Mode] | None = None) -> Evaluation:
    """Every deal's violations in one pass that keeps no deal: the same violations, in the same order, as
    `Evaluator.of(regulation, now, deals_for_purchases=deals)` finds deal by deal, with memory for the violations only
    (R10: see StreamJudge)."""
    judge = StreamJudge(regulation, now, override_modes=override_modes)
    found: list[Violation] = []
    judged_r10: list[tuple[int, str]] = []  # (position in found, client key) of R10 violations of won deals
    won = Outcome.WON
    for deal in deals:
        violations = judge.judge(deal)
        if deal.outcome is won and violations:
            key = deal.client_key
            if key is not None:
                judged_r10 += [(len(found) + index, key) for index, violation in enumerate(violations)
                               if violation.rule == "R10"]
        found += violations
    superseded = {position for position, key in judged_r10 if not judge.latest(found[position].deal, key)}
    if superseded:
        found = [violation for position, violation in enumerate(found) if position not in superseded]
    return Evaluation(judge.deals, found, judge.finished())


def beyond_look_back(violation: Violation, direction: CompiledDirection, now: datetime) -> bool:
    """A breach too old to push: recorded and shown by `audit`, never pushed to people (no task, notice or correction).

    Either a moment in the past (R7's first response, R8's or R9's deadline) older than its rule's `look_back`, or a
    stage rule's breach (R1-R4, R6) on a deal won or lost longer ago than the rule's `closed_look_back`: reverting a
    deal won a year ago would reopen it and rewrite past KPIs. R5's remedy is a next-contact date 3, 6 or 9 months
    after the refusal (its `since`): once the last of them has passed there is no date left to set or task anyone
    for. Rules about the deal's state now act on every open deal, however old."""
    spec = getattr(direction.rules, violation.rule, None)
    if violation.rule == "R5" and spec is not None and spec.months:
        return next_contact_day(violation.since, spec.months, now, direction.zone) is None
    window = getattr(spec, "look_back", None)
    if window is not None and violation.since < now - window:
        return True
    closed, closed_window = violation.closed, getattr(spec, "closed_look_back", None)
    return closed is not None and closed_window is not None and closed < now - closed_window


def _with_modes(compiled: CompiledRegulation, modes: Mapping[str, Mode]) -> CompiledRegulation:
    directions = {direction_id: replace(direction, modes={**direction.modes, **modes})
                  for direction_id, direction in compiled.directions.items()}
    return CompiledRegulation(compiled.spec, directions, compiled.calendar, compiled.fields)


def evaluate(deal: Deal, regulation: RegulationSpec | CompiledRegulation, now: datetime) -> list[Violation]:
    """Violations of one deal at `now` (convenience; build an Evaluator once for many deals)."""
    return Evaluator.of(regulation, now).violations(deal)


def explain(deal: Deal, regulation: RegulationSpec | CompiledRegulation, now: datetime) -> list[RuleExplanation]:
    """Rule-by-rule explanation of one deal at `now`."""
    return Evaluator.of(regulation, now).explain(deal)


def impact(deals: Iterable[Deal], regulation: RegulationSpec | CompiledRegulation, now: datetime) -> dict[str, dict[str, int]]:
    """`check --impact`: per rule, how many current deals it would flag (as if every rule were on) and its mode.

    One pass over `deals` that keeps no deal and no violation (a stream of the whole cache is fine)."""
    compiled = regulation if isinstance(regulation, CompiledRegulation) else compile_regulation(regulation)
    judge = StreamJudge(compiled, now, override_modes={rule: Mode.AUDIT for rule in RULES})
    flagged: Counter[str] = Counter()
    counted: Counter[str] = Counter()
    pending_r10: list[tuple[str, str, bool]] = []  # deal id, client key, flagged with the file's modes
    for deal in deals:
        rules_hit = {violation.rule for violation in judge.judge(deal)}
        if not rules_hit:
            continue
        modes = compiled.directions[deal.direction].modes if deal.direction in compiled.directions else None
        for rule in rules_hit:
            now_on = modes is not None and modes[rule] is not Mode.OFF
            if rule == "R10" and deal.client_key is not None:
                pending_r10.append((deal.id, deal.client_key, now_on))  # settled once every purchase is known
                continue
            flagged[rule] += 1
            counted[rule] += now_on
    for deal_id, client_key, now_on in pending_r10:
        if judge.latest(deal_id, client_key):
            flagged["R10"] += 1
            counted["R10"] += now_on
    return {rule: {"would_flag": flagged[rule], "flagged_now": counted[rule]} for rule in RULES}

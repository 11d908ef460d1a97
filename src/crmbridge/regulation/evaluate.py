"""Evaluate deals against the regulation: violations per deal, explanations, impact; pure, the clock is passed in."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Callable, Iterable, Iterator, Mapping, Sequence

from crmbridge.mapping.schema import RULE_IDS, RegulationSpec
from crmbridge.model import Deal, Mode, Outcome, RuleExplanation, Verdict, Violation
from crmbridge.regulation.clients import check_r5, check_r6, check_r10, last_purchases, note_purchase, purchase_fields
from crmbridge.regulation.compiled import CompiledDirection, CompiledRegulation, Context, compile_regulation, render
from crmbridge.regulation.stages import check_r1, check_r2, check_r3, check_r4
from crmbridge.regulation.timers import check_r7, check_r8, check_r9, check_r11

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
        object.__setattr__(self, "_context", Context(now, self.regulation, self.purchases, now.date()))
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


def evaluate_stream(regulation: RegulationSpec | CompiledRegulation, now: datetime, deals: Iterable[Deal]) -> Evaluation:
    """Every deal's violations in one pass that keeps no deal: the same violations, in the same order, as
    `Evaluator.of(regulation, now, deals_for_purchases=deals)` finds deal by deal, with memory for the violations only.

    R10 is the one rule that looks across deals (it judges only a client's latest purchase). Each won deal is
    judged as if it were its client's latest purchase; once every deal was seen, the R10 violations of won deals a
    later purchase of the same client superseded are dropped, which is what R10 says of them (not applicable).
    """
    evaluator = Evaluator.of(regulation, now)  # no purchases: R10 judges every won deal as its client's latest
    context = evaluator._context  # type: ignore[attr-defined]
    paid_fields = purchase_fields(context)
    purchases: dict[str, tuple[datetime, str]] = {}
    found: list[Violation] = []
    judged_r10: list[tuple[int, str]] = []  # (position in found, client key) of R10 violations of won deals
    count = 0
    won = Outcome.WON
    for deal in deals:
        count += 1
        violations = evaluator.violations(deal)
        if deal.outcome is won:
            note_purchase(purchases, deal, paid_fields, context)
            key = deal.client_key
            if key is not None:
                judged_r10 += [(len(found) + index, key) for index, violation in enumerate(violations)
                               if violation.rule == "R10"]
        found += violations
    superseded = {position for position, key in judged_r10
                  if key in purchases and purchases[key][1] != found[position].deal}
    if superseded:
        found = [violation for position, violation in enumerate(found) if position not in superseded]
    return Evaluation(count, found, replace(evaluator, purchases=purchases))


def beyond_look_back(violation: Violation, direction: CompiledDirection, now: datetime) -> bool:
    """A breach that is a moment in the past (R7's first response, R8's or R9's deadline) older than its rule's
    `look_back` window: recorded and shown by `audit`, never pushed to people. Rules about the deal's state now have
    no window: they act on every open deal, however old."""
    window = getattr(getattr(direction.rules, violation.rule, None), "look_back", None)
    return window is not None and violation.since < now - window


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


def impact(deals: Sequence[Deal], regulation: RegulationSpec | CompiledRegulation, now: datetime) -> dict[str, dict[str, int]]:
    """`check --impact`: per rule, how many current deals it would flag (as if every rule were on) and its mode."""
    compiled = regulation if isinstance(regulation, CompiledRegulation) else compile_regulation(regulation)
    everything_on = Evaluator.of(compiled, now, deals_for_purchases=deals,
                                 override_modes={rule: Mode.AUDIT for rule in RULES})
    flagged: Counter[str] = Counter()
    counted: Counter[str] = Counter()
    for deal in deals:
        rules_hit = {violation.rule for violation in everything_on.violations(deal)}
        flagged.update(rules_hit)
        if deal.direction in compiled.directions:
            direction = compiled.directions[deal.direction]
            counted.update(rule for rule in rules_hit if direction.modes[rule] is not Mode.OFF)
    return {rule: {"would_flag": flagged[rule], "flagged_now": counted[rule]} for rule in RULES}

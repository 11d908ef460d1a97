"""A judgement holds until its horizon: the clock alone changes nothing a rule says of a deal before it.

The audit reuses a deal's judgement until the deal changes or its horizon comes (issue 7, item 15), so a rule that
asks the clock without noting when its answer changes would leave a stale verdict or message in the audit. Every
deal of a seeded portal that breaks every rule is judged at many moments before its horizon: all the same.
"""

from __future__ import annotations

import ast
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from crmbridge.commands.regulation import violation_json
from crmbridge.mapping.binding import DealMapper
from crmbridge.mapping.load import Mappings, load_mappings
from crmbridge.model import Deal
from crmbridge.regulation.evaluate import RULES, Evaluator
from regulation_kit import seeded_cache

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 20, 9, 30, 17, 250_000, tzinfo=timezone.utc)  # not on a whole minute: R7's waited counts
#: how far after NOW a judgement is checked again (capped by its horizon); a year covers R10's segments
LATER = [timedelta(seconds=1), timedelta(seconds=42), timedelta(minutes=1), timedelta(minutes=59),
         timedelta(hours=5), timedelta(hours=14, minutes=31), timedelta(days=1), timedelta(days=3),
         timedelta(days=8), timedelta(days=45), timedelta(days=200), timedelta(days=400)]


@pytest.fixture(scope="module")
def mappings() -> Mappings:
    return load_mappings(ROOT / "mappings")


@pytest.fixture(scope="module")
def deals(mappings: Mappings) -> list[Deal]:
    with tempfile.TemporaryDirectory() as folder, seeded_cache(Path(folder) / "c.db", deals=1200, seed=5, now=NOW) as cache:
        return DealMapper(mappings.regulation, mappings.binding).deals(cache.deals.records())


def said(evaluator: Evaluator, deal: Deal) -> list[dict]:
    return [violation_json(violation) for violation in evaluator.violations(deal)]


def kept(evaluator: Evaluator, found: list) -> list[dict]:
    """An earlier judgement's violations as the audit shows them at the evaluator's moment (a time waited grown)."""
    return [violation_json(evaluator.grown(violation)) for violation in found]


def test_nothing_a_rule_says_changes_before_the_horizon(mappings: Mappings, deals: list[Deal]) -> None:
    now = Evaluator.of(mappings.regulation, NOW)
    later = {step: Evaluator.of(mappings.regulation, NOW + step) for step in LATER}
    checked = grows = 0
    horizons: list[timedelta] = []
    for deal in deals:
        found, horizon = now.judged(deal)
        expected = [violation_json(violation) for violation in found]
        assert expected == said(now, deal)  # judging with the horizon is the same judgement
        if horizon is not None:
            assert horizon > NOW, deal.id
            horizons.append(horizon - NOW)
            just_before = Evaluator.of(mappings.regulation, horizon - timedelta(microseconds=1))
            assert said(just_before, deal) == kept(just_before, found), (deal.id, horizon)
        for step, evaluator in later.items():
            if horizon is None or NOW + step < horizon:
                assert said(evaluator, deal) == kept(evaluator, found), (deal.id, step, horizon)
                checked += 1
                grows += any(violation.grows for violation in found) and step >= timedelta(minutes=1)
    assert checked > len(deals) * 3
    # the horizon is not merely "now": most judgements hold for hours or more (what makes reuse pay)
    assert sum(span >= timedelta(hours=1) for span in horizons) > len(horizons) / 2
    assert grows > 100  # R7 / R8: a time waited, shown to the minute, grew while the judgement held


def test_the_horizon_comes_when_the_answer_changes(mappings: Mappings, deals: list[Deal]) -> None:
    """Not only safe but useful: for many deals what a rule says does change at the horizon (within a minute after)."""
    now = Evaluator.of(mappings.regulation, NOW)
    changed = 0
    judged = 0
    for deal in deals[:400]:
        found, horizon = now.judged(deal)
        if horizon is None:
            continue
        judged += 1
        at = Evaluator.of(mappings.regulation, horizon + timedelta(seconds=30))
        changed += said(at, deal) != [violation_json(violation) for violation in found]
    assert judged and changed > judged / 4, (changed, judged)


def test_rules_ask_the_clock_only_through_the_context() -> None:
    """`ctx.now` in a rule's comparison or arithmetic would not note its horizon: only `ctx.reached`, `ctx.passed`,
    `ctx.day_over`, `ctx.days_since` and `ctx.local_days_since` do. A call's argument is fine: a time waited
    (`calendar.elapsed(start, ctx.now)`) is a figure that grows (`Violation.grows`, counted again by `grown`)."""
    for module in ("stages", "timers", "clients"):
        tree = ast.parse((ROOT / "src" / "crmbridge" / "regulation" / f"{module}.py").read_text(encoding="utf-8"))
        arguments = {id(arg) for node in ast.walk(tree) if isinstance(node, ast.Call) for arg in node.args}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("now", "today") and isinstance(node.value, ast.Name) \
                    and node.value.id == "ctx":
                assert id(node) in arguments, f"{module}.py:{node.lineno}: ctx.{node.attr} outside the Context's clock"
    assert set(RULES) == {f"R{n}" for n in range(1, 12)}

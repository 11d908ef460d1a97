"""The shipped regulation and sandbox binding find the violations the sandbox seeder planted (its ground truth)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from crmbridge.mapping.binding import DealMapper
from crmbridge.mapping.load import load_mappings
from crmbridge.regulation.evaluate import Evaluator

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
NOW = 1795000000.0  # 2026-11-17, fixed so the seeded portal is the same every run

#: planted kind -> the rule that must find it; the seeder follows mappings/regulation.yaml, so no rule may flag
#: a deal the seeder did not plant that kind in
PLANTED = {
    "skipped_stage": "R1",
    "required_uf_empty": "R2",
    "no_stage_task": "R3",
    "probability_mismatch": "R4",
    "lost_no_next_contact": "R5",
    "no_contact_data": "R6",
    "lead_not_contacted": "R7",
    "won_no_payment_date": "R8",
    "overdue_receivable": "R9",
    "stale": "R11",
}


@pytest.fixture(scope="module")
def evaluated():
    from crmbridge.sandbox.seed import seed_portal
    from crmbridge.sandbox.state import PortalState

    state = PortalState(clock=lambda: NOW)
    seed_portal(state, deals=1500, seed=11, now=NOW)
    mappings = load_mappings(MAPPINGS)
    mapper = DealMapper(mappings.regulation, mappings.binding)
    deals = [mapper.deal(*records) for records in state.deal_records()]
    evaluator = Evaluator.of(mappings.regulation, datetime.fromtimestamp(NOW, timezone.utc), deals_for_purchases=deals)
    found = {deal.id: {violation.rule for violation in evaluator.violations(deal)} for deal in deals}
    planted = {str(deal_id): set(kinds) for deal_id, kinds in state.planted.items()}
    return found, planted


@pytest.mark.parametrize("kind", sorted(PLANTED))
def test_exactly_the_planted_violations_are_found(evaluated, kind: str) -> None:
    found, planted = evaluated
    rule = PLANTED[kind]
    with_kind = {deal_id for deal_id, kinds in planted.items() if kind in kinds}
    flagged = {deal_id for deal_id, rules in found.items() if rule in rules}
    assert with_kind, f"the seeder planted no {kind}"
    assert with_kind <= flagged, f"{rule} missed {sorted(with_kind - flagged, key=int)[:5]}"
    assert flagged == with_kind, f"{rule} flagged clean deals {sorted(flagged - with_kind, key=int)[:5]}"


def test_clean_deals_break_no_rule_but_r10(evaluated) -> None:
    found, planted = evaluated
    clean = [deal_id for deal_id in found if deal_id not in planted]
    assert len(clean) > 500
    assert not {rule for deal_id in clean for rule in found[deal_id]} - {"R10"}

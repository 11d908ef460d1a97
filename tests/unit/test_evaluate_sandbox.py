"""The shipped regulation and sandbox binding find the violations the sandbox seeder planted (its ground truth)."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import pytest

from crmbridge.mapping.binding import DealMapper
from crmbridge.mapping.load import load_mappings
from crmbridge.regulation.evaluate import Evaluator

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
NOW = 1795000000.0  # 2026-11-17, fixed so the seeded portal is the same every run

#: planted kind -> the rule that must find it; `exact`: no other deal may be flagged by that rule
PLANTED = {
    "skipped_stage": ("R1", True),
    "probability_mismatch": ("R4", True),
    "stale": ("R11", True),
    "won_no_payment_date": ("R8", True),
    "lost_no_next_contact": ("R5", False),  # R5 also wants 3/6/9 months, the seeder does not
    "overdue_receivable": ("R9", False),  # an unpaid won deal past its due date is overdue too
    "no_stage_task": ("R3", False),  # the seeder's tasks are not the regulation's formal stage tasks
}


@pytest.fixture(scope="module")
def evaluated():
    from crmbridge.sandbox.seed import seed_portal
    from crmbridge.sandbox.state import PortalState

    state = PortalState(clock=lambda: NOW)
    seed_portal(state, deals=1500, seed=11, now=NOW)
    mappings = load_mappings(MAPPINGS)
    mapper = DealMapper(mappings.regulation, mappings.binding)
    history, tasks = defaultdict(list), defaultdict(list)
    for row in state.history.rows.values():
        history[str(row["OWNER_ID"])].append(row)
    for row in state.tasks.rows.values():
        for binding in row.get("ufCrmTask") or ():
            if binding.startswith("D_"):
                tasks[binding[2:]].append(row)
    deals = [mapper.deal(raw, history[str(deal_id)], tasks[str(deal_id)],
                         state.contacts.rows.get(int(raw.get("CONTACT_ID") or 0)),
                         state.companies.rows.get(int(raw.get("COMPANY_ID") or 0)))
             for deal_id, raw in state.deals.rows.items()]
    evaluator = Evaluator.of(mappings.regulation, datetime.fromtimestamp(NOW, timezone.utc), deals_for_purchases=deals)
    found = {deal.id: {violation.rule for violation in evaluator.violations(deal)} for deal in deals}
    planted = {str(deal_id): set(kinds) for deal_id, kinds in state.planted.items()}
    return found, planted


@pytest.mark.parametrize("kind", sorted(PLANTED))
def test_planted_violations_are_found(evaluated, kind: str) -> None:
    found, planted = evaluated
    rule, exact = PLANTED[kind]
    with_kind = {deal_id for deal_id, kinds in planted.items() if kind in kinds}
    flagged = {deal_id for deal_id, rules in found.items() if rule in rules}
    assert with_kind, f"the seeder planted no {kind}"
    assert with_kind <= flagged, f"{rule} missed {sorted(with_kind - flagged)[:5]}"
    if exact:
        assert flagged == with_kind, f"{rule} flagged clean deals {sorted(flagged - with_kind)[:5]}"


def test_overdue_extras_are_unpaid_won_deals(evaluated) -> None:
    found, planted = evaluated
    extra = {deal_id for deal_id, rules in found.items() if "R9" in rules and "overdue_receivable" not in planted.get(deal_id, ())}
    assert all("won_no_payment_date" in planted.get(deal_id, ()) for deal_id in extra)


def test_late_contact_is_found_unless_the_delay_was_outside_working_hours(evaluated) -> None:
    found, planted = evaluated
    clean = {deal_id for deal_id in found if deal_id not in planted}
    assert not any("R7" in found[deal_id] for deal_id in clean)
    late = {deal_id for deal_id, kinds in planted.items() if "lead_not_contacted" in kinds}
    assert len({deal_id for deal_id in late if "R7" in found[deal_id]}) >= 0.6 * len(late)

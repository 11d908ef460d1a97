"""The same regulation, bound to the sandbox amoCRM account by amocrm.yaml, finds the same planted breaches as Bitrix24."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from crmbridge.cache.store import open_cache
from crmbridge.mapping.binding import DealMapper
from crmbridge.mapping.load import load_mappings
from crmbridge.regulation.evaluate import Evaluator
from tests.unit.test_evaluate_sandbox import NOW, PLANTED

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"


def _found(deals: list[Any], mappings: Any) -> dict[str, list[tuple[str, str | None]]]:
    evaluator = Evaluator.of(mappings.regulation, datetime.fromtimestamp(NOW, timezone.utc), deals_for_purchases=deals)
    return {deal.id: sorted((v.rule, v.stage) for v in evaluator.violations(deal)) for deal in deals}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, set[str]]]:
    from crmbridge.sandbox.amocrm.state import seeded_state
    from crmbridge.sandbox.seed import seed_portal
    from crmbridge.sandbox.state import PortalState

    account = seeded_state(deals=1500, seed=11, now=NOW)
    amo_mappings = load_mappings(MAPPINGS, crm="amocrm")
    cache = open_cache(tmp_path_factory.mktemp("amo") / "cache.db")
    with cache.atomic():
        for table, table_rows in account.cache_rows("2026-01-01T00:00:00+00:00").items():
            cache.upsert(table, table_rows)
    amo_deals = DealMapper(amo_mappings.regulation, amo_mappings.binding).deals(cache.deals.records())
    cache.close()

    portal = PortalState(clock=lambda: NOW)
    seed_portal(portal, deals=1500, seed=11, now=NOW)
    b24_mappings = load_mappings(MAPPINGS)
    mapper = DealMapper(b24_mappings.regulation, b24_mappings.binding)
    b24_deals = [mapper.deal(*records) for records in portal.deal_records()]
    planted = {str(deal_id): set(kinds) for deal_id, kinds in account.planted.items()}
    return _found(amo_deals, amo_mappings), _found(b24_deals, b24_mappings), planted


@pytest.mark.parametrize("kind", sorted(PLANTED))
def test_exactly_the_planted_violations_are_found_on_amocrm(evaluated: Any, kind: str) -> None:
    found, _, planted = evaluated
    rule = PLANTED[kind]
    with_kind = {deal_id for deal_id, kinds in planted.items() if kind in kinds}
    flagged = {deal_id for deal_id, violations in found.items() if any(r == rule for r, _ in violations)}
    assert with_kind, f"the seeder planted no {kind}"
    assert with_kind <= flagged, f"{rule} missed {sorted(with_kind - flagged, key=int)[:5]}"
    assert flagged == with_kind, f"{rule} flagged clean leads {sorted(flagged - with_kind, key=int)[:5]}"


def test_every_lead_breaks_what_the_same_bitrix24_deal_breaks(evaluated: Any) -> None:
    amo, b24, _ = evaluated
    assert amo.keys() == b24.keys()
    different = [deal_id for deal_id in amo if amo[deal_id] != b24[deal_id]]
    assert not different, f"{len(different)} leads differ, e.g. {[(d, amo[d], b24[d]) for d in different[:3]]}"

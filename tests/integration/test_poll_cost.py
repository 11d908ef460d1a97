"""What an incremental poll costs the portal: an idle one 1 HTTP request, three deal edits at most 3."""

from __future__ import annotations

from datetime import timedelta

import pytest

from crmbridge.cache.store import Cache
from crmbridge.connectors.bitrix24.client import Bitrix24Client
from crmbridge.connectors.bitrix24.reader import Bitrix24Reader
from crmbridge.sync import Syncer

pytestmark = pytest.mark.integration


def poll(client: Bitrix24Client, cache: Cache, **options: object) -> tuple[int, object]:
    before = client.requests_made
    summary = Syncer(Bitrix24Reader(client), cache, **options).run(full=False)  # type: ignore[arg-type]
    return client.requests_made - before, summary


def test_idle_poll_and_three_edits_cost_one_request(make_portal, cache) -> None:
    portal = make_portal(deals=300, seed=2)
    client = Bitrix24Client(portal.webhook_url)
    Syncer(Bitrix24Reader(client), cache).run(full=True)
    requests, summary = poll(client, cache)
    assert requests == 1 and summary.mode == "incremental"
    with portal.state.lock:
        ids = sorted(portal.state.deals.rows)[:3]
    for deal_id in ids:
        portal.update_deal(deal_id, {"COMMENTS": "edited", "STAGE_ID": "PREPARATION"})
    requests, summary = poll(client, cache)
    assert requests <= 3 and summary.deals_changed == 3 and summary.stage_history_read >= 3
    cached = {row["id"]: row["stage_id"] for row in cache.query(f"SELECT id, stage_id FROM deals WHERE id IN {tuple(ids)}")}
    assert cached == {deal_id: portal.state.deals.rows[deal_id]["STAGE_ID"] for deal_id in ids}


def test_a_deal_given_a_new_contact_reads_that_contact(make_portal, cache) -> None:
    portal = make_portal(deals=50, seed=2)
    client = Bitrix24Client(portal.webhook_url)
    Syncer(Bitrix24Reader(client), cache).run(full=True)
    with portal.state.lock:
        contact = max(portal.state.contacts.rows)
        deal_id = min(d for d, row in portal.state.deals.rows.items() if row.get("CONTACT_ID") != str(contact))
    cache.db.execute("DELETE FROM contacts WHERE id = ?", [contact])
    portal.update_deal(deal_id, {"CONTACT_ID": contact})
    requests, _ = poll(client, cache)
    assert requests <= 3
    assert cache.count("contacts", "id = ?", [contact]) == 1


def test_metadata_is_reread_hourly_or_when_a_deal_names_an_unknown_stage(make_portal, cache) -> None:
    portal = make_portal(deals=50, seed=2)
    client = Bitrix24Client(portal.webhook_url)
    Syncer(Bitrix24Reader(client), cache).run(full=True)
    calls = portal.stats.calls.get("crm.category.list", 0)
    poll(client, cache)
    assert portal.stats.calls.get("crm.category.list", 0) == calls  # fresh: not read again
    poll(client, cache, metadata_max_age=timedelta(0))
    assert portal.stats.calls.get("crm.category.list", 0) == calls + 1  # due: read
    stage = cache.query("SELECT stage_id FROM deals LIMIT 1")[0]["stage_id"]
    cache.db.execute("DELETE FROM stages WHERE status_id = ?", [stage])
    poll(client, cache)
    assert portal.stats.calls.get("crm.category.list", 0) == calls + 2  # a deal's stage unknown: read now
    assert cache.count("stages", "status_id = ?", [stage]) == 1

"""Deletion needs evidence: an empty, null, early-ended or malformed list is a failed read, not an empty portal.

Each case first syncs a healthy portal, then lets the proxy break one list during `sync --full`, and
checks that nothing the portal still has left the cache (no deal marked deleted, no task or to-do
dropped) and that the run said so. Real deletions still arrive: confirmed by reading the ids back, and
beyond the share guard only with `--confirm-deletions`, on Bitrix24 and on amoCRM.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

from crmbridge.cache.store import open_cache
from crmbridge.sandbox.amocrm import catalog as amo
from crmbridge.sandbox.proxy import result_of, rows_of
from tests.integration.amocrm_kit import make_account  # noqa: F401 - fixture

from .conftest import World

pytestmark = [pytest.mark.integration, pytest.mark.hostile("deletion")]


def full_list(params: dict[str, Any]) -> bool:
    """The full read's own pages (a `>ID` cursor), not the read-back of vanished ids (`@ID`)."""
    found = params.get("filter")
    return isinstance(found, dict) and ">ID" in found and "@ID" not in found


def first_page(params: dict[str, Any]) -> bool:
    """The first page of a full read (cursor 0)."""
    return full_list(params) and str(params["filter"][">ID"]) == "0"


def synced(world: World) -> World:
    first = world.sync("--full")
    assert first.code == 0, first.err
    return world


def add_todos(world: World, count: int) -> None:
    """To-dos on the first deals, added through the portal's API as a manager would."""
    for deal_id in list(world.portal.state.deals.rows)[:count]:
        answer = requests.post(world.portal.webhook_url + "crm.activity.todo.add", json={
            "ownerTypeId": 2, "ownerId": deal_id, "deadline": "2030-01-01T10:00:00+03:00", "title": "call back",
            "responsibleId": 2}, timeout=10)
        assert answer.ok, answer.text


def test_an_empty_task_list_in_a_full_sync_drops_no_task(make_world: Any) -> None:
    world = synced(make_world(deals=300))
    tasks = world.count("tasks")
    assert tasks > 100
    world.proxy.add(result_of("tasks.task.list", lambda result: {"tasks": []}, when=full_list))
    second = world.sync("--full")
    assert world.count("tasks") == tasks
    assert second.code != 0 or "task" in second.out + second.err


def test_a_null_deal_list_marks_no_deal_deleted(make_world: Any) -> None:
    world = synced(make_world(deals=300))
    world.proxy.add(result_of("crm.deal.list", lambda result: None, when=full_list))
    second = world.sync("--full")
    assert not second.crashed, second.err
    assert world.count("deals", "deleted = 1") == 0
    audit = world.run("audit", "--json", "--no-record")
    assert audit.code == 0, audit.err
    assert '"deals": 300' in audit.out


def test_an_empty_deal_list_marks_no_deal_deleted(make_world: Any) -> None:
    world = synced(make_world(deals=300))
    world.proxy.add(result_of("crm.deal.list", lambda result: [], when=full_list))
    second = world.sync("--full")
    assert world.count("deals", "deleted = 1") == 0
    assert second.code != 0
    assert "--confirm-deletions" in second.err


def test_a_deal_list_that_ends_early_loses_nothing(make_world: Any) -> None:
    world = synced(make_world(deals=300))
    # the first page stops after 20 rows: a client can not tell it from the real end of the list
    world.proxy.add(rows_of("crm.deal.list", lambda row: ..., where=lambda row: int(row["ID"]) > 20, when=first_page))
    second = world.sync("--full")
    assert not second.crashed, second.err
    assert world.count("deals", "deleted = 1") == 0
    assert world.count("deals") == 300


def test_a_task_list_that_ends_early_drops_no_task(make_world: Any) -> None:
    world = synced(make_world(deals=300))
    tasks = world.count("tasks")
    world.proxy.add(rows_of("tasks.task.list", lambda row: ..., where=lambda row: int(row["id"]) > 10, when=first_page))
    second = world.sync("--full")
    assert not second.crashed, second.err
    assert world.count("tasks") == tasks


def test_an_empty_todo_list_drops_no_todo(make_world: Any) -> None:
    world = make_world(deals=60)
    add_todos(world, 30)
    synced(world)
    assert world.count("activities") == 30
    world.proxy.add(result_of("crm.activity.list", lambda result: [], when=full_list))
    second = world.sync("--full")
    assert not second.crashed, second.err
    assert world.count("activities") == 30


def test_null_contact_and_company_answers_drop_no_client(make_world: Any) -> None:
    world = synced(make_world(deals=100))
    contacts, companies = world.count("contacts"), world.count("companies")
    world.proxy.add(result_of("crm.contact.list", lambda result: None),
                    result_of("crm.company.list", lambda result: None))
    second = world.sync("--full")
    assert not second.crashed, second.err
    assert (world.count("contacts"), world.count("companies")) == (contacts, companies)
    assert world.count("deals", "deleted = 1") == 0


def test_an_empty_stage_history_drops_no_history(make_world: Any) -> None:
    world = synced(make_world(deals=100))
    history = world.count("stage_history")
    world.proxy.add(result_of("crm.stagehistory.list", lambda result: {"items": []}))
    second = world.sync("--full")
    assert not second.crashed, second.err
    assert world.count("stage_history") == history


@pytest.mark.parametrize("method, empty", [
    ("crm.category.list", {"categories": []}),
    ("crm.status.list", []),
    ("crm.deal.userfield.list", []),
])
def test_an_empty_reference_list_keeps_the_cached_one(make_world: Any, method: str, empty: Any) -> None:
    world = synced(make_world(deals=30))
    before = {table: world.count(table) for table in ("pipelines", "stages", "deal_fields")}
    world.proxy.add(result_of(method, lambda result: empty))
    second = world.sync()
    assert not second.crashed, second.err
    assert {table: world.count(table) for table in before} == before


def test_a_few_real_deletions_arrive_confirmed_by_id(make_world: Any) -> None:
    world = synced(make_world(deals=100))
    for deal_id in (3, 50, 77):
        world.portal.delete_deal(deal_id)
    second = world.sync("--full")
    assert second.code == 0, second.err
    assert {row["id"] for row in world.query("SELECT id FROM deals WHERE deleted = 1")} == {3, 50, 77}
    assert world.proxy.calls("crm.deal.list") > 0


def test_many_deletions_wait_for_confirmation(make_world: Any) -> None:
    world = synced(make_world(deals=100))
    for deal_id in range(1, 61):
        world.portal.delete_deal(deal_id)
    refused = world.sync("--full")
    assert refused.code != 0
    assert "--confirm-deletions" in refused.one_line()
    assert world.count("deals", "deleted = 1") == 0
    confirmed = world.sync("--full", "--confirm-deletions")
    assert confirmed.code == 0, confirmed.err
    assert world.count("deals", "deleted = 1") == 60


def test_amocrm_many_vanished_leads_and_tasks_wait_for_confirmation(make_account: Any, cli: Any,
                                                                     tmp_path: Any) -> None:
    """The same guard on amoCRM: leads and tasks gone from the lists and from the look-up by id (a wiped or
    misbehaving account looks exactly like this) stay in the cache until a person confirms."""
    account = make_account(deals=100, seed=2, rate=100)
    env = {"CRMBRIDGE_CRM": "amocrm", "CRMBRIDGE_AMOCRM_BASE_URL": account.base_url,
           "CRMBRIDGE_AMOCRM_LONG_LIVED_TOKEN": amo.LONG_LIVED_TOKEN}
    assert cli("sync", env=env).code == 0
    cache = open_cache(tmp_path / "cache.db")
    try:
        tasks = cache.count("tasks")
        assert tasks >= 20
        with account.state.lock:  # gone without a trace in the events feed
            for lead_id in range(1, 61):
                account.state.leads.pop(lead_id)
            for task_id in sorted(account.state.tasks)[: tasks * 6 // 10]:
                account.state.tasks.pop(task_id)
            account.state.version += 1
        refused = cli("sync", "--full", env=env)
        assert refused.code == 1, refused.err
        assert "--confirm-deletions" in refused.err
        assert cache.count("deals", "deleted = 1") == 0
        assert cache.count("tasks") == tasks
        confirmed = cli("sync", "--full", "--confirm-deletions", env=env)
        assert confirmed.code == 0, confirmed.err
        assert cache.count("deals", "deleted = 1") == 60
        assert cache.count("tasks") < tasks
    finally:
        cache.close()

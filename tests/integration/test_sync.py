"""Sync against the sandbox portal over loopback: full, incremental, resumed, under faults, within limits."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import pytest

from crmbridge.cache.store import Cache, open_cache
from crmbridge.sandbox import SandboxPortal
from tests.integration.conftest import make_syncer

pytestmark = pytest.mark.integration


def portal_deals(portal: SandboxPortal) -> dict[int, dict[str, Any]]:
    """Every deal as the portal's API returns it (all fields incl. UF_CRM_*)."""
    return {int(deal["ID"]): deal for deal in portal.state.api_deals()}


def cached_deals(cache: Cache) -> dict[int, dict[str, Any]]:
    return {row["id"]: json.loads(row["raw"]) for row in cache.query("SELECT id, raw FROM deals WHERE deleted = 0")}


def assert_cache_equals_portal(cache: Cache, portal: SandboxPortal) -> None:
    expected = portal_deals(portal)
    actual = cached_deals(cache)
    assert actual.keys() == expected.keys()
    different = [deal_id for deal_id in expected if actual[deal_id] != expected[deal_id]]
    assert not different, f"{len(different)} deals differ, e.g. {different[:5]}"
    assert cache.count("stage_history") == portal.state.count("stage_history")
    deal_tasks = portal.state.deal_task_ids()
    assert {row["id"] for row in cache.query("SELECT id FROM tasks")} == deal_tasks
    # calls, meetings and e-mails of any owner (the activity KPIs), to-dos only of deals (R3)
    communications = {int(a["ID"]) for a in portal.state.activities.values() if a["TYPE_ID"] in ("1", "2", "4")}
    assert {row["id"] for row in cache.query("SELECT id FROM communications")} == communications
    wanted_contacts = {int(d["CONTACT_ID"]) for d in expected.values() if d.get("CONTACT_ID") not in (None, "", "0")}
    cached_contacts = {row["id"] for row in cache.query("SELECT id FROM contacts")}
    assert wanted_contacts <= cached_contacts


def test_full_sync_of_10000_deals_equals_the_portal(make_portal: Any, cache: Cache) -> None:
    portal = make_portal(deals=10_000, seed=7)
    summary = make_syncer(portal, cache).run()
    assert summary.mode == "full"
    assert summary.deals_read == 10_000
    assert_cache_equals_portal(cache, portal)
    # the fast list pattern: 2,500 deals per HTTP request
    assert portal.stats.requests_for("crm.deal.list") <= 10_000 // 50 + 1
    # deals 4, contacts and companies, history 11, tasks 11, calls / meetings / e-mails ~12 (28,000 rows)
    assert summary.http_requests <= 75
    # reference data arrived too
    assert cache.count("pipelines") == 4
    assert cache.count("stages", "category_id = 0") == 8
    assert cache.count("users") == 9
    assert cache.count("deal_fields") >= 19
    assert cache.count("departments") == 3 and cache.count("currencies") == 4


def test_incremental_sync_fetches_just_what_changed(make_portal: Any, cache: Cache) -> None:
    portal = make_portal(deals=3_000, seed=11)
    make_syncer(portal, cache).run()
    changed_ids = [17, 1234, 2999]
    for deal_id in changed_ids:
        portal.update_deal(deal_id, {"TITLE": f"changed {deal_id}", "OPPORTUNITY": "777.00"})
    summary = make_syncer(portal, cache).run()
    assert summary.mode == "incremental"
    assert summary.deals_changed == 3
    # besides the three, only deals inside the overlap window may be re-read (and are de-duplicated)
    assert summary.deals_read <= 3 + portal.state.count_modified_within(minutes=5, before_last_sync=True)
    for deal_id in changed_ids:
        row = cache.query("SELECT title, amount FROM deals WHERE id = ?", [deal_id])[0]
        assert row == {"title": f"changed {deal_id}", "amount": 777.0}
    assert_cache_equals_portal(cache, portal)


def test_syncs_leave_one_audit_mark_per_changed_deal(make_portal: Any, cache: Cache) -> None:
    """The audit's marks (deals to judge afresh, written by the cache's triggers) do not pile up while no audit runs:
    a sync leaves one per deal whatever it wrote (issue 7, item 15)."""
    portal = make_portal(deals=400, seed=7)
    make_syncer(portal, cache).run()
    assert cache.count("judge_marks") == cache.count("deals")  # a new cache: every deal, once
    for round_ in range(3):
        portal.update_deal(17, {"TITLE": f"changed {round_}", "OPPORTUNITY": f"{700 + round_}.00"})
        make_syncer(portal, cache).run()
    assert cache.query("SELECT deal_id FROM judge_marks GROUP BY deal_id HAVING COUNT(*) > 1") == []
    assert cache.count("judge_marks", "deal_id = 17") == 1
    assert cache.count("judge_marks") == cache.count("deals")


def test_stage_change_arrives_with_its_history(make_portal: Any, cache: Cache) -> None:
    portal = make_portal(deals=500, seed=5)
    make_syncer(portal, cache).run()
    history_before = cache.count("stage_history", "deal_id = 42")
    deal = portal_deals(portal)[42]
    target = "LOSE" if deal["STAGE_ID"] != "LOSE" else "NEW"
    portal.update_deal(42, {"STAGE_ID": target} if deal["CATEGORY_ID"] == "0" else {"STAGE_ID": f"C{deal['CATEGORY_ID']}:LOSE"})
    make_syncer(portal, cache).run()
    assert cache.count("stage_history", "deal_id = 42") == history_before + 1
    assert_cache_equals_portal(cache, portal)


def test_full_sync_marks_vanished_deals_deleted(make_portal: Any, cache: Cache) -> None:
    portal = make_portal(deals=300, seed=2)
    make_syncer(portal, cache).run()
    portal.delete_deal(100)
    summary = make_syncer(portal, cache).run(full=True)
    assert summary.deals_deleted == 1
    assert cache.query("SELECT deleted FROM deals WHERE id = 100") == [{"deleted": 1}]
    assert_cache_equals_portal(cache, portal)


def test_sync_under_20_percent_faults_ends_identical(make_portal: Any, cache: Cache) -> None:
    portal = make_portal(deals=2_000, seed=13, faults=0.2)
    summary = make_syncer(portal, cache, max_attempts=12).run()
    assert summary.deals_read >= 2_000
    assert portal.stats.faults_injected > 0
    assert_cache_equals_portal(cache, portal)


def test_steady_sync_never_draws_a_503(make_portal: Any, cache: Cache) -> None:
    # a small bucket, so the sync needs more requests than the burst allows at once
    portal = make_portal(deals=1_500, seed=4, rate=4.0, burst=6)
    syncer = make_syncer(portal, cache, rate=4.0, burst=6)  # one client: its bucket mirrors the portal's
    syncer.run(full=True)
    syncer.run(full=True)
    assert portal.stats.requests_total > 6
    assert portal.stats.query_limit_exceeded == 0


def test_full_sync_killed_midway_resumes_from_its_last_commit(make_portal: Any, tmp_path: Path) -> None:
    portal = make_portal(deals=10_000, seed=21, latency_ms=250)
    cache_file = tmp_path / "resume.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMBRIDGE_")}
    env.update({"CRMBRIDGE_BITRIX24_WEBHOOK_URL": portal.webhook_url, "CRMBRIDGE_CACHE_PATH": str(cache_file)})
    command = [sys.executable, "-m", "crmbridge", "sync", "--json"]
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    committed = 0
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with sqlite3.connect(cache_file, timeout=1) as conn:
                row = conn.execute("SELECT last_id FROM sync_state WHERE entity = 'deals'").fetchone()
            committed = row[0] if row and row[0] else 0
        except sqlite3.Error:
            committed = 0
        if committed > 0:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the sync finished before it could be interrupted"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert 0 < committed < 10_000

    finished = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    summary = json.loads(finished.stdout)
    assert summary["resumed"] is True
    assert summary["deals_read"] <= 10_000 - committed
    cache = open_cache(cache_file)
    try:
        assert_cache_equals_portal(cache, portal)
    finally:
        cache.close()


def test_contact_edited_alone_is_picked_up_incrementally(make_portal: Any, cache: Cache) -> None:
    portal = make_portal(deals=400, seed=8)
    make_syncer(portal, cache).run()
    contact_id = cache.query("SELECT contact_id FROM deals WHERE contact_id IS NOT NULL LIMIT 1")[0]["contact_id"]
    with portal.state.lock:  # the sandbox has no crm.contact.update: edit as the portal's UI would
        contact = portal.state.contacts.rows[contact_id]
        contact["PHONE"] = [{"ID": "990001", "VALUE_TYPE": "WORK", "VALUE": "+7 900 000-00-01", "TYPE_ID": "PHONE"}]
        contact["DATE_MODIFY"] = portal.state.now_wire()
    summary = make_syncer(portal, cache).run()
    assert summary.mode == "incremental" and summary.deals_changed == 0
    row = cache.query("SELECT has_phone, raw FROM contacts WHERE id = ?", [contact_id])[0]
    assert row["has_phone"] == 1 and "+7 900 000-00-01" in row["raw"]


def test_full_sync_rereads_clients_edited_long_ago(make_portal: Any, cache: Cache) -> None:
    portal = make_portal(deals=300, seed=9)
    make_syncer(portal, cache).run()
    contact_id = cache.query("SELECT contact_id FROM deals WHERE contact_id IS NOT NULL LIMIT 1")[0]["contact_id"]
    with portal.state.lock:  # edited long before the next sync: outside any overlap window
        portal.state.contacts.rows[contact_id]["EMAIL"] = [{"ID": "990002", "VALUE_TYPE": "WORK", "VALUE": "new@example.ru", "TYPE_ID": "EMAIL"}]
        portal.state.contacts.rows[contact_id]["DATE_MODIFY"] = "2020-01-01T00:00:00+03:00"
    make_syncer(portal, cache).run(full=True)
    assert cache.query("SELECT has_email FROM contacts WHERE id = ?", [contact_id]) == [{"has_email": 1}]


def test_tasks_deleted_or_unbound_on_the_portal_leave_the_cache(make_portal: Any, cache: Cache) -> None:
    portal = make_portal(deals=300, seed=12)
    make_syncer(portal, cache).run()
    deleted, unbound = [row["id"] for row in cache.query("SELECT id FROM tasks ORDER BY id LIMIT 2")]
    portal.state.update_task(unbound, {"UF_CRM_TASK": []})  # as tasks.task.update would
    with portal.state.lock:
        portal.state.tasks.delete(deleted)
    make_syncer(portal, cache).run()  # incremental: the unbound task changed, so it is read and dropped
    assert cache.count("tasks", "id = ?", [unbound]) == 0
    assert cache.count("tasks", "id = ?", [deleted]) == 1  # a deletion is not a change an incremental read sees
    make_syncer(portal, cache).run(full=True)
    assert cache.count("tasks", "id = ?", [deleted]) == 0
    assert {row["id"] for row in cache.query("SELECT id FROM tasks")} == portal.state.deal_task_ids()


def test_a_full_sync_reads_each_client_once(make_portal: Callable[..., SandboxPortal], cache: Cache,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 7, item 16: deals of one client fall into different chunks; a full sync read the client again for
    each (15,811 contact rows for 5,000 contacts on 20,000 deals)."""
    from crmbridge import sync as sync_module

    monkeypatch.setattr(sync_module, "CHUNK_ROWS", 100)  # many chunks, as 20,000 deals make 8 of 2,500
    portal = make_portal(deals=900, seed=11, limits=False)
    summary = make_syncer(portal, cache).run(full=True)
    named = {row["contact_id"] for row in cache.query("SELECT DISTINCT contact_id FROM deals WHERE contact_id IS NOT NULL")}
    companies = {row["id"] for row in cache.query("SELECT id FROM companies")}
    assert len(named) < 900 // 2  # clients are shared by deals of different chunks
    assert summary.contacts_read == len(named) == portal.stats.rows_for("crm.contact.list")
    assert summary.companies_read == len(companies) == portal.stats.rows_for("crm.company.list")

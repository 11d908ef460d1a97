"""`crmbridge serve` end to end over loopback: events from the sandbox portal, corrections back into it."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest

from crmbridge.sandbox import SandboxPortal

from .conftest import TOKEN, LiveDaemon

pytestmark = pytest.mark.integration


def open_deal_at(portal: SandboxPortal, stage: str) -> int:
    with portal.state.lock:
        return min(int(row["ID"]) for row in portal.state.deals.rows.values() if row["STAGE_ID"] == stage)


def wait_for(condition, timeout: float = 15.0, what: str = "condition") -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def stage_of(portal: SandboxPortal, deal_id: int) -> str:
    with portal.state.lock:
        return portal.state.deals.rows[deal_id]["STAGE_ID"]


def actions(cache: Path, deal_id: int) -> list[tuple[str, str]]:
    with sqlite3.connect(cache) as conn:
        return conn.execute("SELECT kind, status FROM actions WHERE deal_id = ? ORDER BY id", (deal_id,)).fetchall()


def form(event: str, entity_id: int, portal: SandboxPortal, **auth: str) -> bytes:
    fields = {"event": event, "event_handler_id": "1", "data[FIELDS][ID]": str(entity_id), "ts": "1766047124",
              "auth[domain]": f"127.0.0.1:{portal.port}", "auth[member_id]": portal.member_id,
              "auth[application_token]": TOKEN}
    fields.update({f"auth[{key}]": value for key, value in auth.items()})
    return urlencode(fields).encode()


def test_an_illegal_move_is_corrected_within_seconds(live, tmp_path: Path) -> None:
    portal, daemon = live()
    daemon.start().wait_ready()
    portal.send_events_to(daemon.url + "/bitrix24/events")
    deal_id = open_deal_at(portal, "C1:NEW")
    manager = int(portal.state.deals.rows[deal_id]["ASSIGNED_BY_ID"])
    portal.update_deal(deal_id, {"STAGE_ID": "C1:EXECUTING"}, user_id=manager)  # skips C1:PREPARATION
    wait_for(lambda: stage_of(portal, deal_id) == "C1:NEW", what="the revert")
    portal.wait_events()
    time.sleep(1.0)  # the revert's own event comes back: it must cause nothing new
    reverts = [row for row in actions(tmp_path / "cache.db", deal_id) if row[0] == "revert_stage"]
    assert reverts == [("revert_stage", "done")]
    assert stage_of(portal, deal_id) == "C1:NEW"
    assert all(d.status == 200 for d in portal.deliveries())


def inbox_rows(cache: Path) -> list[tuple[str, str, str, int]]:
    with sqlite3.connect(cache) as conn:
        return conn.execute("SELECT event, entity_id, status, attempts FROM inbox ORDER BY id").fetchall()


def dead_letters(cache: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(cache) as conn:
        return conn.execute("SELECT source, reason FROM dead_letters ORDER BY id").fetchall()


def test_forged_foreign_malformed_and_oversized_events_are_refused(live, tmp_path: Path) -> None:
    portal, daemon = live()
    daemon.start().wait_ready()
    deal_id = open_deal_at(portal, "C1:NEW")
    assert daemon.post("/bitrix24/events", form("ONCRMDEALUPDATE", deal_id, portal, application_token="guess"))[0] == 401
    assert daemon.post("/bitrix24/events", form("ONCRMDEALUPDATE", deal_id, portal, domain="evil.bitrix24.ru"))[0] == 401
    assert daemon.post("/bitrix24/events", b"\xff\xfe not a form")[0] == 401
    # the first verified event makes its member_id the portal's; another one is foreign from then on
    assert daemon.post("/bitrix24/events", form("ONCRMDEALUPDATE", deal_id, portal))[0] == 200
    assert daemon.post("/bitrix24/events", form("ONCRMDEALUPDATE", deal_id, portal, member_id="other"))[0] == 401
    status, text = daemon.post("/bitrix24/events", form("ONCRMDEALUPDATE", 0, portal).replace(b"ID%5D=0", b"ID%5D="))
    assert status == 400 and "dead letter" in text
    assert daemon.post("/bitrix24/events", form("ONCRMDEALUPDATE", deal_id, portal) + b"&x=" + b"a" * 70_000)[0] == 413
    assert daemon.post("/bitrix24/events", form("ONCRMLEADADD", 5, portal))[0] == 200  # not ours: ignored
    rows = inbox_rows(tmp_path / "cache.db")
    assert [(event, entity) for event, entity, *_ in rows] == [("ONCRMDEALUPDATE", str(deal_id))]
    assert [source for source, _ in dead_letters(tmp_path / "cache.db")] == ["bitrix24.webhook"]
    metrics = daemon.get("/metrics")[1]
    assert 'crmbridge_events_rejected_total{reason="forged",source="bitrix24.webhook"} 2.0' in metrics
    assert 'crmbridge_events_rejected_total{reason="foreign",source="bitrix24.webhook"} 2.0' in metrics
    assert 'crmbridge_events_rejected_total{reason="malformed",source="bitrix24.webhook"} 1.0' in metrics
    assert 'crmbridge_events_rejected_total{reason="too_large",source="bitrix24.webhook"} 1.0' in metrics
    assert "crmbridge_events_dead 1.0" in metrics
    # what the inbox and the dead letters keep (and `crmbridge inbox` shows) carries no credential
    with sqlite3.connect(tmp_path / "cache.db") as conn:
        stored = [row[0] for row in conn.execute("SELECT payload FROM inbox UNION ALL SELECT payload FROM dead_letters")]
    assert stored and all(TOKEN not in payload and "application_token%5D=%2A%2A%2A" not in payload
                          and "application_token%5D=***" in payload for payload in stored)


def test_duplicate_deliveries_give_one_action(live, tmp_path: Path) -> None:
    portal, daemon = live()
    daemon.start().wait_ready()
    deal_id = open_deal_at(portal, "C1:NEW")
    portal.update_deal(deal_id, {"STAGE_ID": "C1:EXECUTING"})  # no outgoing webhook yet: we deliver it ourselves
    body = form("ONCRMDEALUPDATE", deal_id, portal)
    for _ in range(5):
        assert daemon.post("/bitrix24/events", body)[0] == 200
    wait_for(lambda: stage_of(portal, deal_id) == "C1:NEW", what="the revert")
    for _ in range(3):
        assert daemon.post("/bitrix24/events", body)[0] == 200
    wait_for(lambda: all(status == "done" for *_, status, _ in inbox_rows(tmp_path / "cache.db")), what="processing")
    assert [row for row in actions(tmp_path / "cache.db", deal_id) if row[0] == "revert_stage"] == [
        ("revert_stage", "done")]
    assert portal.stats.calls.get("crm.deal.update", 0) == 1


def test_events_wait_while_the_portal_is_down_and_are_processed_when_it_returns(live, tmp_path: Path) -> None:
    portal, daemon = live()
    daemon.env["CRMBRIDGE_BITRIX24_MAX_ATTEMPTS"] = "2"
    daemon.start().wait_ready()
    portal.send_events_to(daemon.url + "/bitrix24/events")
    deal_id = open_deal_at(portal, "C1:NEW")
    portal.outage = True
    portal.update_deal(deal_id, {"STAGE_ID": "C1:EXECUTING"})
    portal.wait_events()
    assert [d.status for d in portal.deliveries()] == [200]
    wait_for(lambda: "the worker's last round failed" in daemon.get("/readyz")[1], timeout=20, what="a failed round")
    time.sleep(2.0)
    assert stage_of(portal, deal_id) == "C1:EXECUTING"
    portal.outage = False
    wait_for(lambda: stage_of(portal, deal_id) == "C1:NEW", timeout=30, what="the revert after the outage")
    wait_for(lambda: all(status == "done" for *_, status, _ in inbox_rows(tmp_path / "cache.db")), what="processing")
    assert dead_letters(tmp_path / "cache.db") == []
    assert [attempts for *_, attempts in inbox_rows(tmp_path / "cache.db")][0] == 0  # waiting is not failing


def test_sigterm_mid_batch_leaves_nothing_half_written(live, tmp_path: Path) -> None:
    portal, daemon = live(deals=300)
    daemon.env["CRMBRIDGE_BITRIX24_RATE"] = "4"  # slow enough that SIGTERM lands while the worker writes
    daemon.env["CRMBRIDGE_BITRIX24_BURST"] = "6"
    daemon.start().wait_ready()
    portal.send_events_to(daemon.url + "/bitrix24/events")
    with portal.state.lock:
        moved = sorted(int(r["ID"]) for r in portal.state.deals.rows.values() if r["STAGE_ID"] == "C1:NEW")[:40]
    for deal_id in moved:
        portal.update_deal(deal_id, {"STAGE_ID": "C1:EXECUTING"})
    portal.wait_events()
    wait_for(lambda: any(stage_of(portal, deal_id) == "C1:NEW" for deal_id in moved), timeout=30,
             what="the first reverts")
    daemon.signal(15)
    assert daemon.wait(60) == 0
    cache = tmp_path / "cache.db"
    with sqlite3.connect(cache) as conn:
        statuses = dict(conn.execute("SELECT status, COUNT(*) FROM actions GROUP BY status").fetchall())
        reverted = {deal for (deal,) in conn.execute(
            "SELECT deal_id FROM actions WHERE kind = 'revert_stage' AND status = 'done'")}
    assert "intent" not in statuses  # the batch in flight finished and its outcomes committed
    assert reverted and all(stage_of(portal, deal_id) == "C1:NEW" for deal_id in reverted)
    daemon.start().wait_ready()
    wait_for(lambda: all(stage_of(portal, deal_id) == "C1:NEW" for deal_id in moved), timeout=60,
             what="the rest after the restart")
    with sqlite3.connect(cache) as conn:
        per_deal = conn.execute("SELECT deal_id, COUNT(*) FROM actions WHERE kind = 'revert_stage' "
                                "GROUP BY deal_id HAVING COUNT(*) > 1").fetchall()
    assert per_deal == []


def test_metrics_cover_events_crm_requests_and_jobs(live, tmp_path: Path) -> None:
    portal, daemon = live(jobs={"sync": "run: sync\nevery: 2s\ntimeout: 1m\n"})
    daemon.start().wait_ready()
    portal.send_events_to(daemon.url + "/bitrix24/events")
    deal_id = open_deal_at(portal, "C1:NEW")
    portal.update_deal(deal_id, {"STAGE_ID": "C1:EXECUTING"})
    wait_for(lambda: stage_of(portal, deal_id) == "C1:NEW", what="the revert")
    wait_for(lambda: 'crmbridge_job_runs_total{job="sync",status="done"}' in daemon.get("/metrics")[1],
             what="a job run")
    metrics = daemon.get("/metrics")[1]
    for line in ('crmbridge_events_received_total{event="ONCRMDEALUPDATE",source="bitrix24.webhook"}',
                 "crmbridge_event_ack_seconds_count", "crmbridge_event_reaction_seconds_count",
                 'crmbridge_crm_requests_total{method="batch",status="200"}',
                 # the commands inside the batches, each by its own method
                 'crmbridge_crm_calls_total{method="crm.deal.list",status="ok"}',
                 'crmbridge_crm_calls_total{method="crm.stagehistory.list",status="ok"}',
                 'crmbridge_crm_calls_total{method="crm.deal.update",status="ok"}',
                 'crmbridge_job_duration_seconds_count{job="sync"}',
                 'crmbridge_job_last_success_timestamp_seconds{job="sync"}',
                 "crmbridge_events_pending", 'crmbridge_actions{status="done"}', "crmbridge_open_violations{rule="):
        assert line in metrics, line


def test_an_empty_cache_is_synced_first_while_events_wait(live, tmp_path: Path) -> None:
    portal, daemon = live(sync=False, deals=400)
    daemon.start()
    deal_id = open_deal_at(portal, "C1:NEW")
    portal.update_deal(deal_id, {"STAGE_ID": "C1:EXECUTING"})
    status, text = daemon.post("/bitrix24/events", form("ONCRMDEALUPDATE", deal_id, portal))
    assert status == 200  # accepted at once, even before the first sync is done
    daemon.wait_ready()
    wait_for(lambda: stage_of(portal, deal_id) == "C1:NEW", what="the revert after the initial sync")
    with sqlite3.connect(tmp_path / "cache.db") as conn:
        assert conn.execute("SELECT mode, status FROM sync_runs ORDER BY id LIMIT 1").fetchone() == ("full", "done")


def test_inbox_commands_show_the_backlog_and_requeue_dead_letters(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    from crmbridge.live.inbox import Inbox, InboxEvent

    cache = tmp_path / "cache.db"
    with Inbox(cache, max_attempts=1) as box:
        first, second = box.accept([InboxEvent("bitrix24.webhook", "ONCRMDEALUPDATE", "deal", str(n), "x")
                                    for n in (1, 2)])
        box.failed([second], "CrmRejected: Access denied.")
        box.reject("bitrix24.webhook", "malformed: no `event` field", b"junk")
    env = {key: value for key, value in os.environ.items() if not key.startswith("CRMBRIDGE_")}
    env["CRMBRIDGE_CACHE_PATH"] = str(cache)

    def crmbridge(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "crmbridge", *args], env=env, capture_output=True, text=True,
                              timeout=60)

    backlog = json.loads(crmbridge("inbox", "--json").stdout)
    assert backlog["pending"] == 1 and backlog["dead"] == 2 and backlog["events"][0]["id"] == first
    dead = json.loads(crmbridge("inbox", "--dead", "--json").stdout)
    assert {letter["reason"] for letter in dead["letters"]} == {"CrmRejected: Access denied.",
                                                                 "malformed: no `event` field"}
    table = crmbridge("inbox", "--dead").stdout
    assert "Access" in table and "retry" in table
    malformed = next(letter["id"] for letter in dead["letters"] if letter["inbox_id"] is None)
    refused = crmbridge("inbox", "retry", str(malformed))
    assert refused.returncode == 1 and "names no event" in refused.stderr
    done = crmbridge("inbox", "retry", "--all")
    assert done.returncode == 0 and "1 event(s) back in the inbox" in done.stdout
    assert json.loads(crmbridge("inbox", "--json").stdout)["pending"] == 2


def test_task_todo_and_client_events_refresh_their_deals(live, tmp_path: Path) -> None:
    portal, daemon = live(rules=())
    daemon.start().wait_ready()
    portal.send_events_to(daemon.url + "/bitrix24/events")
    cache = tmp_path / "cache.db"
    with portal.state.lock:
        task_id, task = next((tid, row) for tid, row in portal.state.tasks.rows.items()
                             if row["status"] != "5" and row.get("ufCrmTask"))
        contact_id = next(cid for cid, row in portal.state.contacts.rows.items() if not row.get("PHONE"))
    deal_id = int(task["ufCrmTask"][0][2:])
    portal.update_task(task_id, {"STATUS": 5})
    todo_id = portal.state.add_todo(2, deal_id, portal.state.now_wire(), title="Позвонить", responsible_id=2,
                                    author_id=1)
    portal.update_client("contact", contact_id, {"PHONE": [{"ID": "1", "VALUE": "+79990000000",
                                                            "VALUE_TYPE": "WORK", "TYPE_ID": "PHONE"}]})

    def cached(sql: str, *params: object) -> object:
        with sqlite3.connect(cache) as conn:
            row = conn.execute(sql, params).fetchone()
        return row[0] if row else None

    wait_for(lambda: cached("SELECT status FROM tasks WHERE id = ?", task_id) == 5, what="the task re-read")
    wait_for(lambda: cached("SELECT deal_id FROM activities WHERE id = ?", todo_id) == deal_id, what="the to-do")
    wait_for(lambda: cached("SELECT has_phone FROM contacts WHERE id = ?", contact_id) == 1, what="the contact")


def test_a_deal_deleted_on_the_portal_closes_its_breaches_and_tells_nobody(live, tmp_path: Path) -> None:
    portal, daemon = live(rules=())  # every rule as shipped (warn): a skipped stage is told, not reverted
    daemon.start().wait_ready()
    portal.send_events_to(daemon.url + "/bitrix24/events")
    cache = tmp_path / "cache.db"
    deal_id = open_deal_at(portal, "C1:NEW")
    portal.update_deal(deal_id, {"STAGE_ID": "C1:EXECUTING"})

    def told(status: str) -> list[str]:
        with sqlite3.connect(cache) as conn:
            return [rule for (rule,) in conn.execute(
                "SELECT rule FROM actions WHERE deal_id = ? AND kind = 'notify' AND status = ?", (deal_id, status))]

    def open_rules() -> list[str]:
        with sqlite3.connect(cache) as conn:
            return [rule for (rule,) in conn.execute(
                "SELECT rule FROM violations WHERE deal_id = ? AND resolved IS NULL", (deal_id,))]

    wait_for(lambda: "R1" in told("queued"), what="the R1 notice waiting for its digest")
    assert "R1" in open_rules()
    portal.delete_deal(deal_id)
    # closed, and the notices waiting for a digest cancelled (the R4 one too, though its correction landed)
    wait_for(lambda: not open_rules() and not told("queued"), what="the deleted deal's breaches closed")
    assert {"R1", "R4"} <= set(told("cancelled"))
    with sqlite3.connect(cache) as conn:
        assert conn.execute("SELECT deleted FROM deals WHERE id = ?", (deal_id,)).fetchone() == (1,)


def test_readyz_follows_mapping_edits_and_the_log_says_what_the_daemon_does(live, tmp_path: Path) -> None:
    portal, daemon = live()
    daemon.start().wait_ready()
    binding = tmp_path / "mappings" / "bitrix24.yaml"
    good = binding.read_text(encoding="utf-8")
    binding.write_text(good.replace("\ntimezone:", "\ntimezon:"), encoding="utf-8")
    status, text = daemon.get("/readyz")  # no event needed: the probe itself notices the edit
    assert status == 503 and 'bitrix24.yaml:' in text and 'did you mean \\"timezone\\"' in text
    binding.write_text(good, encoding="utf-8")
    assert daemon.get("/readyz")[0] == 200
    daemon.signal(15)
    assert daemon.wait(30) == 0
    log = daemon.output()
    for said in ("crmbridge serve: listening on http://127.0.0.1:", "mapping files changed but do not load",
                 "mapping files changed: reloaded", "SIGTERM received", "crmbridge serve: stopped (SIGTERM)"):
        assert said in log, said

"""`crmbridge connect`, the OAuth client and the offline-event poller over real HTTP against the sandbox portal."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from crmbridge.config import load_settings
from crmbridge.connectors.bitrix24.app import oauth_auth
from crmbridge.connectors.bitrix24.client import Bitrix24Client
from crmbridge.connectors.bitrix24.oauth import OAuthAuth
from crmbridge.connectors.oauth import TokenStore
from crmbridge.live.inbox import Inbox
from crmbridge.live.offline import CHECKPOINTS, OfflinePoller
from crmbridge.sandbox import SandboxPortal

pytestmark = pytest.mark.integration

PROCESS = Path(__file__).with_name("oauth_process.py")


@pytest.fixture
def portal() -> Iterator[SandboxPortal]:
    with SandboxPortal(deals=40, seed=11, limits=False) as p:
        yield p


def environment(portal: SandboxPortal, cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMBRIDGE_")}
    env.update({
        "CRMBRIDGE_BITRIX24_CLIENT_ID": portal.app.client_id,
        "CRMBRIDGE_BITRIX24_CLIENT_SECRET": portal.app.client_secret,
        "CRMBRIDGE_BITRIX24_OAUTH_URL": portal.app.oauth_url,
        "CRMBRIDGE_CACHE_PATH": str(cache),
        **extra,
    })
    return env


def cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crmbridge", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def process(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(PROCESS), *args], env=env, capture_output=True, text=True, timeout=60)


def connected(portal: SandboxPortal, tmp_path: Path, *, events: bool = True) -> dict[str, str]:
    env = environment(portal, tmp_path / "cache.db")
    done = cli(env, "connect", "--code", portal.app.authorization_code(), *(() if events else ("--no-events",)))
    assert done.returncode == 0, done.stderr
    return env


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch):
    def apply(env: dict[str, str]) -> Any:
        for key, value in env.items():
            if key.startswith("CRMBRIDGE_"):
                monkeypatch.setenv(key, value)
        return load_settings()

    return apply


def client_for(settings: Any) -> Bitrix24Client:
    auth = oauth_auth(settings)
    assert isinstance(auth, OAuthAuth)
    return Bitrix24Client(auth=auth, rate=100, burst=100)


# --- connect ------------------------------------------------------------------------------------------------

def test_connect_with_a_code_stores_the_tokens_and_binds_the_offline_events(portal: SandboxPortal,
                                                                             tmp_path: Path) -> None:
    env = environment(portal, tmp_path / "cache.db")
    done = cli(env, "connect", "--code", portal.app.authorization_code())
    assert done.returncode == 0, done.stderr
    assert "connected to 127.0.0.1" in done.stdout and "10 new" in done.stdout
    pair = TokenStore(tmp_path / "cache.db", "bitrix24").require()
    assert pair.account == portal.member_id and pair.generation == 1
    assert pair.details["client_endpoint"] == portal.app.client_endpoint
    assert pair.details["offline"] == {"connector": "crmbridge", "reserve": True, "events": sorted(
        ["ONCRMDEALADD", "ONCRMDEALUPDATE", "ONCRMDEALDELETE", "ONTASKADD", "ONTASKUPDATE", "ONTASKDELETE",
         "ONCRMACTIVITYADD", "ONCRMACTIVITYUPDATE", "ONCRMCONTACTUPDATE", "ONCRMCOMPANYUPDATE"])}
    assert {(b.event, b.offline, b.connector) for b in portal.app.bindings} == {
        (event, True, "crmbridge") for event in pair.details["offline"]["events"]}
    with sqlite3.connect(tmp_path / "cache.db") as conn:
        assert conn.execute("SELECT value FROM live_state WHERE name = 'bitrix24.member_id'").fetchone() == (
            portal.member_id,)
    assert stat.S_IMODE((tmp_path / "cache.db").stat().st_mode) == 0o600
    for secret in (pair.access_token, pair.refresh_token or "", portal.app.client_secret):
        assert secret not in done.stdout + done.stderr
    # connecting again is idempotent: the handlers exist, nothing is bound twice
    again = cli(env, "connect", "--events-only", "--json")
    assert json.loads(again.stdout)["offline"]["bound"] == [] and len(portal.app.bindings) == 10


def test_connect_catches_bitrix24s_redirect_on_loopback(tmp_path: Path) -> None:
    from tests.live.conftest import free_port

    port = free_port()
    with SandboxPortal(deals=5, limits=False, app_options={"redirect_uri": f"http://127.0.0.1:{port}/"}) as portal:
        env = environment(portal, tmp_path / "cache.db")
        proc = subprocess.Popen(
            [sys.executable, "-m", "crmbridge", "connect", "--listen", f"127.0.0.1:{port}", "--portal",
             f"http://127.0.0.1:{portal.port}", "--no-events", "--timeout", "30"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        url = ""
        while not url:
            line = proc.stderr.readline()
            assert line, "connect printed no authorization address"
            if "/oauth/authorize/" in line:
                url = line.strip()
        for _ in range(100):  # the admin's browser: the portal's page redirects it to the listener
            try:
                answer = requests.get(url, timeout=5)
                break
            except requests.ConnectionError:
                time.sleep(0.05)
        assert answer.status_code == 200 and "received the authorization" in answer.text
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert TokenStore(tmp_path / "cache.db", "bitrix24").require().account == portal.member_id


def test_a_used_code_and_a_wrong_secret_are_one_clear_line_each(portal: SandboxPortal, tmp_path: Path) -> None:
    env = environment(portal, tmp_path / "cache.db")
    code = portal.app.authorization_code()
    assert cli(env, "connect", "--code", code, "--no-events").returncode == 0
    used = cli(env, "connect", "--code", code, "--no-events")
    assert used.returncode == 1 and used.stderr.count("\n") == 1
    assert "invalid_grant" in used.stderr and "30 seconds" in used.stderr
    wrong = cli({**env, "CRMBRIDGE_BITRIX24_CLIENT_SECRET": "not-the-secret"}, "connect", "--code",
                portal.app.authorization_code(), "--no-events")
    assert wrong.returncode == 1 and "invalid_client" in wrong.stderr and "CLIENT_SECRET" in wrong.stderr
    assert "not-the-secret" not in wrong.stderr
    unset = cli({k: v for k, v in env.items() if k != "CRMBRIDGE_BITRIX24_CLIENT_ID"}, "connect", "--code", "x")
    assert unset.returncode == 2 and "CRMBRIDGE_BITRIX24_CLIENT_ID" in unset.stderr


# --- the OAuth client -----------------------------------------------------------------------------------------

def test_expired_token_is_refreshed_and_the_call_repeated_transparently(portal: SandboxPortal, tmp_path: Path,
                                                                         settings_env: Any) -> None:
    settings = settings_env(connected(portal, tmp_path, events=False))
    client = client_for(settings)
    assert client.call("crm.deal.get", {"id": 1}).result["ID"] == "1"
    portal.app.expire_access_tokens()
    assert client.call("crm.deal.get", {"id": 2}).result["ID"] == "2"
    # a batch of writes is repeated after the refresh too: the portal refused it before running it
    portal.app.expire_access_tokens()
    answer = client.batch({"a": ("crm.deal.update", {"id": 3, "fields": {"TITLE": "after refresh"}})},
                          idempotent=False)
    assert answer.ok and portal.state.deals.rows[3]["TITLE"] == "after refresh"
    assert portal.app.calls.refresh_token == 2
    assert TokenStore(settings.cache_path, "bitrix24").require().generation == 3


def test_a_pair_another_process_rotated_is_picked_up_without_a_refresh(portal: SandboxPortal, tmp_path: Path,
                                                                        settings_env: Any) -> None:
    settings = settings_env(connected(portal, tmp_path, events=False))
    mine, theirs = client_for(settings), client_for(settings)
    mine.call("crm.deal.get", {"id": 1})
    theirs.call("crm.deal.get", {"id": 1})
    portal.app.expire_access_tokens()
    theirs.call("crm.deal.get", {"id": 1})  # refreshes: the sandbox revokes the old access token
    assert portal.app.calls.refresh_token == 1
    assert mine.call("crm.deal.get", {"id": 2}).result["ID"] == "2"  # NO_AUTH_FOUND -> the newer pair, no call
    assert portal.app.calls.refresh_token == 1


def test_two_processes_refreshing_at_once_make_one_refresh_call(portal: SandboxPortal, tmp_path: Path) -> None:
    env = connected(portal, tmp_path, events=False)
    portal.app.expire_access_tokens()
    start_at = f"{time.time() + 2.0:.3f}"
    procs = [subprocess.Popen([sys.executable, str(PROCESS), "call", "--start-at", start_at], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert results == [{"ok": "1", "generation": 2}] * 2
    assert portal.app.calls.refresh_token == 1


def test_a_kill_before_the_refresh_call_loses_nothing(portal: SandboxPortal, tmp_path: Path) -> None:
    env = connected(portal, tmp_path, events=False)
    portal.app.expire_access_tokens()
    killed = process(env, "call", "--kill-at", "recorded")
    assert killed.returncode == -9 and portal.app.calls.refresh_token == 0
    assert json.loads(process(env, "call").stdout) == {"ok": "1", "generation": 2}
    assert portal.app.calls.refresh_token == 1


def test_a_kill_between_the_exchange_and_the_write_is_reported_and_connect_recovers(
        portal: SandboxPortal, tmp_path: Path) -> None:
    env = connected(portal, tmp_path, events=False)
    portal.app.expire_access_tokens()
    killed = process(env, "call", "--kill-at", "exchanged")
    assert killed.returncode == -9 and portal.app.calls.refresh_token == 1
    stored = TokenStore(tmp_path / "cache.db", "bitrix24").require()
    assert stored.refresh_started_at is not None and stored.generation == 1  # the old pair, intact
    # the sandbox refuses a used refresh token, as Bitrix24 does: the store says so in one line
    after = json.loads(process(env, "call").stdout)
    assert after["error"] == "ReauthorizationRequired" and "crmbridge connect" in after["message"]
    assert "cut off after the server had rotated" in after["message"]
    # every later process learns it from the cache, without asking the server again
    assert json.loads(process(env, "call").stdout)["error"] == "ReauthorizationRequired"
    assert portal.app.calls.refresh_token == 2
    assert cli(env, "connect", "--code", portal.app.authorization_code(), "--no-events").returncode == 0
    assert json.loads(process(env, "call").stdout) == {"ok": "1", "generation": 2}


# --- offline events -----------------------------------------------------------------------------------------

def inbox_events(cache: Path) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(cache) as conn:
        return conn.execute("SELECT source, event, entity, entity_id FROM inbox ORDER BY id").fetchall()


def test_own_writes_are_not_queued_back_and_a_managers_are(portal: SandboxPortal, tmp_path: Path,
                                                           settings_env: Any) -> None:
    settings = settings_env(connected(portal, tmp_path))
    client = client_for(settings)
    answer = client.batch({
        "deal": ("crm.deal.update", {"id": 5, "fields": {"STAGE_ID": "PREPARATION"}}),
        "task": ("tasks.task.add", {"fields": {"TITLE": "Позвонить", "RESPONSIBLE_ID": 2, "UF_CRM_TASK": ["D_5"]}}),
        "todo": ("crm.activity.todo.add", {"ownerTypeId": 2, "ownerId": 5, "deadline": "2030-01-01T10:00:00+03:00",
                                           "title": "Встреча", "responsibleId": 2}),
    }, idempotent=False)
    assert answer.ok, answer.errors
    assert portal.app.queue() == []
    portal.update_deal(6, {"TITLE": "a manager's edit"})
    webhook = Bitrix24Client(portal.webhook_url, rate=100, burst=100)
    webhook.call("crm.deal.update", {"id": 7, "fields": {"TITLE": "a webhook's write is not the app's"}})
    assert sorted(r.data["FIELDS"]["ID"] for r in portal.app.queue()) == ["6", "7"]


def test_offline_events_go_to_the_inbox_and_then_leave_the_portals_queue(portal: SandboxPortal, tmp_path: Path,
                                                                         settings_env: Any) -> None:
    settings = settings_env(connected(portal, tmp_path))
    portal.update_deal(3, {"TITLE": "edited"})
    task_id = portal.add_task({"TITLE": "t", "RESPONSIBLE_ID": 2, "UF_CRM_TASK": ["D_3"]})
    portal.update_client("contact", int(portal.state.deals.rows[3]["CONTACT_ID"] or 1), {"NAME": "Иван"})
    with Inbox(settings.cache_path) as inbox:
        poller = OfflinePoller(client_for(settings), settings.cache_path, connector="crmbridge")
        assert poller.poll(inbox) == 3
        assert poller.poll(inbox) == 0
    rows = inbox_events(settings.cache_path)
    assert [(event, entity) for _, event, entity, _ in rows] == [
        ("ONCRMDEALUPDATE", "deal"), ("ONTASKADD", "task"), ("ONCRMCONTACTUPDATE", "contact")]
    assert rows[1][3] == str(task_id) and {r[0] for r in rows} == {"bitrix24.offline"}
    assert portal.app.queue() == []
    with sqlite3.connect(settings.cache_path) as conn:
        assert conn.execute("SELECT status FROM offline_batches WHERE status <> 'cleared'").fetchall() == []


def test_a_record_crmbridge_cannot_take_is_reported_and_kept(portal: SandboxPortal, tmp_path: Path,
                                                             settings_env: Any) -> None:
    settings = settings_env(connected(portal, tmp_path))
    portal.update_deal(3, {"TITLE": "fine"})
    portal.update_deal(4, {"TITLE": "will be broken"})
    with portal.app.lock:
        broken = next(r for r in portal.app.offline.values() if r.data == {"FIELDS": {"ID": "4"}})
        broken.data = {"FIELDS": {}}
    with Inbox(settings.cache_path) as inbox:
        assert OfflinePoller(client_for(settings), settings.cache_path, connector="crmbridge").poll(inbox) == 1
        dead = inbox.dead_letters()
    assert [r[3] for r in inbox_events(settings.cache_path)] == ["3"]
    assert len(dead) == 1 and "names no record id" in dead[0].reason
    assert [(r.id, r.error, r.process_id) for r in portal.app.queue()] == [(broken.id, 1, "")]


def test_a_reservation_whose_answer_was_lost_is_found_and_taken(portal: SandboxPortal, tmp_path: Path,
                                                                settings_env: Any) -> None:
    settings = settings_env(connected(portal, tmp_path))
    for deal_id in (3, 4, 5):
        portal.update_deal(deal_id, {"TITLE": "x"})
    client = client_for(settings)
    lost = client.call("event.offline.get", {"clear": 0, "limit": 2}).result  # reserved, then the process died
    assert len(lost["events"]) == 2
    with Inbox(settings.cache_path) as inbox:
        poller = OfflinePoller(client, settings.cache_path, connector="crmbridge")
        assert poller.poll(inbox) == 3 and poller.stats["recovered"] == 1
    assert sorted(r[3] for r in inbox_events(settings.cache_path)) == ["3", "4", "5"]
    assert portal.app.queue() == []


@pytest.mark.slow
@pytest.mark.parametrize("point", CHECKPOINTS)
def test_a_poll_killed_at_every_step_loses_and_duplicates_nothing(point: str, portal: SandboxPortal,
                                                                  tmp_path: Path) -> None:
    env = {**connected(portal, tmp_path), "TEST_BATCH_SIZE": "4"}
    for deal_id in range(1, 11):
        portal.update_deal(deal_id, {"TITLE": f"edit {deal_id}"})
    killed = process(env, "poll", "--kill-at", point)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    finished = json.loads(process(env, "poll").stdout)
    assert "ok" in finished, finished
    ids = [r[3] for r in inbox_events(tmp_path / "cache.db")]
    assert sorted(ids, key=int) == [str(i) for i in range(1, 11)]  # every change once, none twice
    assert portal.app.queue() == []


def test_connect_takes_a_pasted_code_for_the_address_it_printed(portal: SandboxPortal, tmp_path: Path) -> None:
    env = environment(portal, tmp_path / "cache.db")
    proc = subprocess.Popen([sys.executable, "-m", "crmbridge", "connect", "--portal", f"http://127.0.0.1:{portal.port}",
                             "--no-events"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None and proc.stdin is not None
    url = ""
    while not url:
        line = proc.stderr.readline()
        assert line, "connect printed no authorization address"
        if "/oauth/authorize/" in line:
            url = line.strip()
    # the application has no redirect URI: Bitrix24 shows the code on its page, the admin pastes it
    page = requests.get(url, timeout=10).text
    code = page.split("<b>")[1].split("</b>")[0]
    out, err = proc.communicate(code + "\n", timeout=60)
    assert proc.returncode == 0, err
    assert TokenStore(tmp_path / "cache.db", "bitrix24").require().account == portal.member_id


@pytest.mark.slow
def test_offline_events_survive_a_faulty_network_exactly_once(tmp_path: Path, settings_env: Any) -> None:
    """20 % of requests fail (500, HTML 503, dropped, slow, or applied with the answer lost): every change
    still reaches the inbox once and leaves the portal's queue."""
    with SandboxPortal(deals=60, seed=13, limits=False) as portal:
        settings = settings_env(connected(portal, tmp_path))
        for deal_id in range(1, 41):
            portal.update_deal(deal_id, {"TITLE": f"edit {deal_id}"})
        portal.faults = 0.2
        client = Bitrix24Client(auth=oauth_auth(settings), rate=100, burst=100, backoff_initial=0.01,
                                backoff_max=0.05)
        failures = 0
        with Inbox(settings.cache_path) as inbox:
            poller = OfflinePoller(client, settings.cache_path, connector="crmbridge", batch_size=7, scan_every=0.0)
            deadline = time.monotonic() + 120
            quiet = 0
            while quiet < 3 and time.monotonic() < deadline:
                try:
                    quiet = quiet + 1 if poller.poll(inbox) == 0 and not portal.app.queue() else 0
                except Exception:  # noqa: BLE001 - the daemon logs it and polls again later
                    failures += 1
        portal.faults = 0.0
        assert sum(portal.stats.faults.values()) > 0 and failures > 0  # the faults did hit
        ids = [r[3] for r in inbox_events(settings.cache_path)]
        assert sorted(ids, key=int) == [str(i) for i in range(1, 41)]
        assert portal.app.queue() == []


def test_an_idle_offline_poll_costs_one_request_and_three_edits_two(portal: SandboxPortal, tmp_path: Path,
                                                                    settings_env: Any) -> None:
    settings = settings_env(connected(portal, tmp_path))
    client = client_for(settings)
    with Inbox(settings.cache_path) as inbox:
        poller = OfflinePoller(client, settings.cache_path, connector="crmbridge")
        poller.poll(inbox)  # the first poll also looks for reservations an earlier process left: one more request
        before = client.requests_made
        assert poller.poll(inbox) == 0
        assert client.requests_made - before == 1  # event.offline.get
        for deal_id in (3, 4, 5):
            portal.update_deal(deal_id, {"TITLE": "edited"})
        before = client.requests_made
        assert poller.poll(inbox) == 3
        assert client.requests_made - before == 2  # event.offline.get + event.offline.clear

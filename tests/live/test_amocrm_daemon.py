"""`crmbridge serve` on an amoCRM account: hooks at /amocrm/hooks/<secret> into the inbox, corrections back in seconds."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from crmbridge.sandbox.amocrm import SandboxAccount
from crmbridge.sandbox.amocrm import catalog as amo

from .conftest import LiveDaemon, enforcing_mappings, free_port

pytestmark = pytest.mark.integration
SECRET = "hook-s3cret-42"


@pytest.fixture
def amocrm_live(tmp_path: Path) -> Iterator[tuple[SandboxAccount, LiveDaemon]]:
    account = SandboxAccount(deals=150, seed=3).start(port=0)
    mappings = enforcing_mappings(tmp_path / "mappings", ("R1",))
    (tmp_path / "jobs").mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("CRMBRIDGE_")}
    env.update({"CRMBRIDGE_CRM": "amocrm", "CRMBRIDGE_AMOCRM_BASE_URL": account.base_url,
                "CRMBRIDGE_AMOCRM_LONG_LIVED_TOKEN": amo.LONG_LIVED_TOKEN, "CRMBRIDGE_AMOCRM_HOOK_SECRET": SECRET,
                "CRMBRIDGE_CACHE_PATH": str(tmp_path / "cache.db"), "CRMBRIDGE_MAPPINGS_DIR": str(mappings),
                "CRMBRIDGE_JOBS_DIR": str(tmp_path / "jobs"), "CRMBRIDGE_STOP_TIMEOUT_SECONDS": "20"})
    daemon = LiveDaemon(env, free_port(), tmp_path / "serve.log")
    yield account, daemon
    daemon.stop()
    account.stop()


def wait_for(condition: Any, timeout: float = 30.0, what: str = "condition") -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def rows(cache: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(cache) as conn:
        return conn.execute(sql, params).fetchall()


def test_an_illegal_move_is_reverted_after_its_hook(amocrm_live: Any, tmp_path: Path) -> None:
    account, daemon = amocrm_live
    daemon.start().wait_ready(timeout=120)  # the initial full sync runs first, at 7 requests a second
    account.hooks_url = f"{daemon.url}/amocrm/hooks/{SECRET}"  # registered under Settings > Integrations
    pipeline = amo.PIPELINE_IDS[1]
    first, _, third = (status.id for status in amo.STATUSES[pipeline][1:4])
    lead_id = account.state.add_lead("Входящая заявка", pipeline, responsible=amo.USER_IDS[3])
    time.sleep(1.1)  # a second later, as a manager would
    account.update_lead(lead_id, {"status_id": third, "pipeline_id": pipeline})  # skips «Общее КП»
    wait_for(lambda: account.state.leads[lead_id]["status_id"] == first, what="the revert")
    time.sleep(2.0)  # the revert's own hook comes back: it must cause nothing new
    reverts = rows(tmp_path / "cache.db", "SELECT status FROM actions WHERE deal_id = ? AND kind = 'revert_stage'",
                   lead_id)
    assert reverts == [("done",)]
    assert account.state.leads[lead_id]["status_id"] == first
    assert account.stats.hooks_failed == 0 and account.stats.hooks_sent >= 2
    received = rows(tmp_path / "cache.db", "SELECT event, entity, entity_id, status FROM inbox WHERE source = 'amocrm.hook'")
    assert ("leads.status", "lead", str(lead_id), "done") in received
    metrics = daemon.get("/metrics")[1]  # the account's requests by route, as for a Bitrix24 portal
    for line in ('crmbridge_crm_requests_total{method="GET /api/v4/leads",status="200"}',
                 'crmbridge_crm_requests_total{method="PATCH /api/v4/leads",status="200"}',
                 'crmbridge_crm_calls_total{method="PATCH /api/v4/leads",status="ok"}'):
        assert line in metrics, line


def test_forged_foreign_and_malformed_hooks_are_refused(amocrm_live: Any, tmp_path: Path) -> None:
    account, daemon = amocrm_live
    daemon.start().wait_ready(timeout=120)
    good = {"leads[update][0][id]": "5", "leads[update][0][status_id]": "142", "account[subdomain]": amo.SUBDOMAIN,
            "account[id]": str(amo.ACCOUNT_ID)}
    assert daemon.post(f"/amocrm/hooks/wrong-secret", urlencode(good).encode())[0] == 401
    foreign = dict(good, **{"account[id]": "999"})
    assert daemon.post(f"/amocrm/hooks/{SECRET}", urlencode(foreign).encode())[0] == 401
    status, text = daemon.post(f"/amocrm/hooks/{SECRET}", b"leads[update][0][name]=no+id&account[id]=31000001")
    assert status == 400 and "dead letter" in text
    assert daemon.post(f"/amocrm/hooks/{SECRET}", urlencode(good).encode())[0] == 200
    inbox = rows(tmp_path / "cache.db", "SELECT source, entity_id FROM inbox WHERE source = 'amocrm.hook'")
    assert inbox == [("amocrm.hook", "5")]
    dead = rows(tmp_path / "cache.db", "SELECT source FROM dead_letters")
    assert dead == [("amocrm.hook",)]

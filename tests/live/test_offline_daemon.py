"""`crmbridge serve` with no public endpoint: a connected OAuth app, offline events polled, corrections back, nothing echoed."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crmbridge.sandbox import SandboxPortal

from .test_daemon import actions, open_deal_at, stage_of, wait_for

pytestmark = pytest.mark.integration


def offline_only(portal: SandboxPortal, env: dict[str, str]) -> dict[str, str]:
    """The daemon's environment without a webhook: only the OAuth application, polled every 0.2 s."""
    env.pop("CRMBRIDGE_BITRIX24_WEBHOOK_URL", None)
    env.update({
        "CRMBRIDGE_BITRIX24_CLIENT_ID": portal.app.client_id,
        "CRMBRIDGE_BITRIX24_CLIENT_SECRET": portal.app.client_secret,
        "CRMBRIDGE_BITRIX24_OAUTH_URL": portal.app.oauth_url,
        "CRMBRIDGE_BITRIX24_OFFLINE_POLL_SECONDS": "0.2",
    })
    done = subprocess.run([sys.executable, "-m", "crmbridge", "connect", "--code", portal.app.authorization_code()],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return env


def offline_inbox(cache: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(cache) as conn:
        return conn.execute("SELECT event, entity_id, status FROM inbox WHERE source = 'bitrix24.offline' "
                            "ORDER BY id").fetchall()


def test_an_illegal_move_is_corrected_through_offline_events_and_nothing_echoes(live, tmp_path: Path) -> None:
    portal, daemon = live()
    offline_only(portal, daemon.env)
    daemon.start().wait_ready()
    deal_id = open_deal_at(portal, "C1:NEW")
    manager = int(portal.state.deals.rows[deal_id]["ASSIGNED_BY_ID"])
    portal.update_deal(deal_id, {"STAGE_ID": "C1:EXECUTING"}, user_id=manager)  # skips C1:PREPARATION
    wait_for(lambda: stage_of(portal, deal_id) == "C1:NEW", timeout=30, what="the revert")
    cache = tmp_path / "cache.db"
    wait_for(lambda: offline_inbox(cache) and all(row[2] == "done" for row in offline_inbox(cache)),
             what="the offline event processed")
    time.sleep(1.5)  # several polls: the bridge's own writes (revert, comment, task) must not come back
    assert portal.app.queue() == []
    assert offline_inbox(cache) == [("ONCRMDEALUPDATE", str(deal_id), "done")]
    assert [row for row in actions(cache, deal_id) if row[0] == "revert_stage"] == [("revert_stage", "done")]
    with sqlite3.connect(cache) as conn:
        assert conn.execute("SELECT count(*) FROM offline_batches WHERE status <> 'cleared'").fetchone() == (0,)
    daemon.stop()
    log = daemon.output()
    assert "event source bitrix24.offline failed" not in log and "Traceback" not in log, log

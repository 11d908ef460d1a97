"""Crash safety of the daemon: `kill -9` during a burst of 10,000 events, and two daemons on one cache."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

from .test_daemon import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def stored(cache: Path) -> Counter[tuple[str, int]]:
    with sqlite3.connect(cache) as conn:
        return Counter((event, int(entity)) for event, entity in conn.execute("SELECT event, entity_id FROM inbox"))


def pending(cache: Path) -> int:
    with sqlite3.connect(cache) as conn:
        return conn.execute("SELECT COUNT(*) FROM inbox WHERE status != 'done'").fetchone()[0]


def test_every_acknowledged_event_survives_kill_9_during_a_burst(live, tmp_path: Path) -> None:
    portal, daemon = live(deals=150, rules=())
    daemon.start().wait_ready()
    portal.send_events_to(daemon.url + "/bitrix24/events")
    with portal.state.lock:
        deal_ids = sorted(int(row["ID"]) for row in portal.state.deals.rows.values())
    cache = tmp_path / "cache.db"
    total = 10_000
    # the daemon is killed at several points of the burst, not one, and restarted each time
    kill_at = (1_500, 4_000, 7_000)
    for number in range(total):
        portal.update_deal(deal_ids[number % len(deal_ids)], {"COMMENTS": f"edit {number}"})
        if kill_at and sum(1 for d in portal.deliveries() if d.status is not None) >= kill_at[0]:
            daemon.kill()
            kill_at = kill_at[1:]
            daemon.start()
    portal.wait_events(120)
    delivered = portal.deliveries()
    assert len(delivered) >= total  # the edits, and the events of the bridge's own corrections
    acknowledged = Counter((d.event, d.entity_id) for d in delivered if d.status == 200)
    assert sum(acknowledged.values()) > total * 0.5  # most got through between the kills
    # every event that got a 200 is in the inbox (an event the kill cut off before its 200 may be there too)
    assert not acknowledged - stored(cache)
    wait_for(lambda: pending(cache) == 0, timeout=180, what="the inbox to drain")
    daemon.stop()
    assert daemon.process is not None and daemon.process.returncode == 0


def test_two_daemons_on_one_cache_run_each_job_once(live, tmp_path: Path) -> None:
    portal, first = live(deals=60, rules=(), jobs={"sync": "run: sync\nevery: 2s\ntimeout: 1m\n"})
    _, second = live(deals=60, rules=(), cache=tmp_path / "cache.db", sync=False)
    second.env.update({**first.env, "CRMBRIDGE_BITRIX24_WEBHOOK_URL": portal.webhook_url})
    first.start()
    second.start()
    time.sleep(12)
    first.stop()
    second.stop()
    with sqlite3.connect(tmp_path / "cache.db") as conn:
        runs = conn.execute("SELECT scheduled_for, status, host, started, finished FROM job_runs "
                            "WHERE job = 'sync' ORDER BY started").fetchall()
        syncs = conn.execute("SELECT COUNT(*) FROM sync_runs WHERE mode = 'incremental'").fetchone()[0]
    assert len(runs) >= 3
    assert len({when for when, *_ in runs}) == len(runs)  # one run per fire time
    # a run the daemons' stop cut short stops after its batch: `interrupted`, and only the last one can be
    assert {status for _, status, *_ in runs[:-1]} == {"done"} and runs[-1][1] in ("done", "interrupted")
    assert syncs == len(runs)  # each fire time synced once, whichever daemon took it
    for earlier, later in zip(runs, runs[1:]):
        assert earlier[4] <= later[3]  # never two runs of the job at once

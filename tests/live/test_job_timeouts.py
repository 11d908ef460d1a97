"""A scheduled job over its timeout really stops, between two batches, and leaves nothing half-written: the next run
goes on and the portal ends as planned (real sync and enforce against the sandbox, each in its child process)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crmbridge.cache.store import open_cache
from crmbridge.config import Settings
from crmbridge.connectors.bitrix24.reader import Bitrix24Reader
from crmbridge.live.jobs import Job, JobContext, JobLock, JobSpec, run_job
from crmbridge.sandbox import SandboxPortal
from crmbridge.sync import Syncer

from ..integration.enforce_kit import assert_each_lands_once, fast_client
from .conftest import enforcing_mappings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WHEN = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)


def settings(portal: SandboxPortal, tmp_path: Path, **more: object) -> Settings:
    return Settings(bitrix24_webhook_url=portal.webhook_url, cache_path=tmp_path / "cache.db",
                    mappings_dir=tmp_path / "mappings", jobs_dir=tmp_path / "jobs", bitrix24_rate=1000,
                    bitrix24_burst=1000, **more)


def lock_is_free(cache: Path, name: str) -> bool:
    lock = JobLock(cache, name)
    if not lock.acquire():
        return False
    lock.release()
    return True


def test_a_full_sync_over_its_timeout_stops_at_a_chunk_and_the_next_sync_finishes_it(tmp_path: Path) -> None:
    with SandboxPortal(deals=3000, seed=4, limits=False, latency_ms=40).start() as portal:
        config = settings(portal, tmp_path)
        slow = Job("full-sync", JobSpec(run="sync --full", cron="30 2 * * *", timeout="1s"), Path("full-sync.yaml"))
        first = run_job(slow, JobContext(config), WHEN, grace=30)
        assert first.status == "timeout" and "between two batches" in first.summary["error"], first.summary
        assert lock_is_free(config.cache_path, "full-sync")
        with sqlite3.connect(config.cache_path) as conn:
            unfinished = conn.execute("SELECT entity FROM sync_state WHERE status = 'running'").fetchall()
        assert unfinished  # it stopped part way, at a committed chunk: the next sync resumes there
        # the five-minute incremental job picks the full sync up where it stopped
        sync = Job("sync", JobSpec(run="sync", every="5m", timeout="10m"), Path("sync.yaml"))
        second = run_job(sync, JobContext(config), WHEN + timedelta(minutes=5))
        assert second.status == "done", second.summary
        with portal.state.lock:
            on_portal = {int(deal_id): row["DATE_MODIFY"] for deal_id, row in portal.state.deals.rows.items()}
        with open_cache(config.cache_path) as cache:
            cached = {row["id"]: row["date_modify"] for row in cache.query("SELECT id, date_modify FROM deals")}
            assert cache.query("SELECT entity FROM sync_state WHERE status = 'running'") == []
            cached_tasks = {row["id"] for row in cache.query("SELECT id FROM tasks")}
        assert cached == on_portal
        with portal.state.lock:
            bound = {int(task_id) for task_id, row in portal.state.tasks.rows.items() if row.get("ufCrmTask")}
        assert cached_tasks == bound


def test_enforce_over_its_timeout_stops_between_rounds_and_every_action_lands_once(tmp_path: Path) -> None:
    with SandboxPortal(deals=600, seed=3, limits=False).start() as portal:
        enforcing_mappings(tmp_path / "mappings", ("R1", "R2", "R3", "R4", "R5"))
        config = settings(portal, tmp_path)
        with open_cache(config.cache_path) as cache:
            Syncer(Bitrix24Reader(fast_client(portal)), cache).run(full=True)
        portal.latency_ms = 700  # each write round takes a while: the timeout lands between two of them
        job = Job("enforce", JobSpec(run="enforce", every="15m", timeout="2s"), Path("enforce.yaml"))
        first = run_job(job, JobContext(config), WHEN, grace=60)
        assert first.status == "timeout" and "between two batches" in first.summary["error"], first.summary
        assert lock_is_free(config.cache_path, "enforce")
        with sqlite3.connect(config.cache_path) as conn:
            statuses = dict(conn.execute("SELECT status, COUNT(*) FROM actions GROUP BY status").fetchall())
        assert statuses.get("done", 0) > 0 and "intent" not in statuses  # whole rounds: written and recorded
        portal.latency_ms = 0
        patient = Job("enforce", JobSpec(run="enforce", every="15m", timeout="10m"), Path("enforce.yaml"))
        second = run_job(patient, JobContext(config), WHEN + timedelta(minutes=15))
        assert second.status == "done", second.summary
        with open_cache(config.cache_path) as cache:
            assert cache.count("actions", "status = 'intent'") == 0
            assert_each_lands_once(portal, cache)
            reverts = cache.query("SELECT deal_id, COUNT(*) AS n FROM actions WHERE kind = 'revert_stage' AND "
                                  "status = 'done' GROUP BY deal_id HAVING n > 1")
        assert reverts == []

"""The `sync_state` and `sync_runs` tables: where each entity's sync stands, and one row per sync run."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from crmbridge.cache.lock import WriterLock
from crmbridge.cache.tables import Tables

#: seconds a sync waits for another sync of the same cache to finish before it says who holds it
SYNC_LOCK_WAIT = 60.0


@dataclass
class SyncState:
    """Where one entity's sync stands; `status == 'running'` at start means the last run was interrupted."""

    entity: str
    mode: str | None = None
    status: str | None = None
    cursor: str | None = None
    run_cursor: str | None = None
    last_id: int | None = None
    started_at: str | None = None
    finished_at: str | None = None


class SyncStates:
    """Cursors per entity and the log of sync runs."""

    def __init__(self, cache: Tables) -> None:
        self.cache = cache

    def get(self, entity: str) -> SyncState:
        rows = self.cache.query("SELECT * FROM sync_state WHERE entity = ?", [entity])
        return SyncState(**rows[0]) if rows else SyncState(entity=entity)

    def save(self, state: SyncState) -> None:
        self.cache.upsert("sync_state", [dict(state.__dict__)])

    def start_run(self, mode: str, started_at: str) -> int:
        return int(self.cache.db["sync_runs"].insert({"mode": mode, "started_at": started_at, "status": "running"}).last_pk)

    def finish_run(self, run_id: int, status: str, finished_at: str, summary: dict[str, Any]) -> None:
        self.cache.db["sync_runs"].update(
            run_id, {"status": status, "finished_at": finished_at, "summary": json.dumps(summary, ensure_ascii=False)}
        )

    @contextmanager
    def writer(self, *, wait: float = SYNC_LOCK_WAIT, break_lock: bool = False) -> Iterator[WriterLock]:
        """One sync at a time per cache (two would move each other's cursors): an OS lock beside the file that dies
        with its holder. A second sync waits up to `wait` seconds, then raises CacheLocked naming the holder."""
        run = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{os.getpid()}"
        lock = WriterLock(self.cache.path, "sync", run)
        lock.acquire(wait=wait, break_lock=break_lock)
        try:
            yield lock
        finally:
            lock.release()

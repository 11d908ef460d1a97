"""The `sync_state` and `sync_runs` tables: where each entity's sync stands, and one row per sync run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from crmbridge.cache.tables import Tables


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

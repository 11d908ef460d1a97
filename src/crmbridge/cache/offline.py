"""The SQL of `offline_batches`: the journal of Bitrix24 offline-event batches, from before the reservation to the clear."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

__all__ = ["OfflineBatchRow", "OfflineBatches"]

FETCHING, FETCHED, ACCEPTED, CLEARED = "fetching", "fetched", "accepted", "cleared"


@dataclass(frozen=True)
class OfflineBatchRow:
    id: int
    connector: str
    status: str
    process_id: str | None
    events: list[dict[str, Any]]
    started_at: str


class OfflineBatches:
    """offline_batches on one autocommit sqlite3 connection; every method is one committed statement."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def start(self, connector: str, started_at: str) -> int:
        """A get is about to reserve a batch: recorded first, so a lost answer is noticed."""
        cursor = self.conn.execute(
            "INSERT INTO offline_batches (connector, status, started_at) VALUES (?, ?, ?)",
            (connector, FETCHING, started_at),
        )
        return int(cursor.lastrowid or 0)

    def fetched(self, batch_id: int, process_id: str, events: list[dict[str, Any]]) -> None:
        self.conn.execute(
            "UPDATE offline_batches SET status = ?, process_id = ?, events = ? WHERE id = ?",
            (FETCHED, process_id, json.dumps(events, ensure_ascii=False), batch_id),
        )

    def accepted(self, batch_id: int, count: int, failed: dict[str, str]) -> None:
        self.conn.execute(
            "UPDATE offline_batches SET status = ?, accepted = ?, failed = ? WHERE id = ?",
            (ACCEPTED, count, json.dumps(failed, ensure_ascii=False) if failed else None, batch_id),
        )

    def cleared(self, batch_id: int, finished_at: str) -> None:
        self.conn.execute(
            "UPDATE offline_batches SET status = ?, finished_at = ? WHERE id = ?", (CLEARED, finished_at, batch_id)
        )

    def forget(self, batch_id: int, finished_at: str) -> None:
        """A `fetching` row whose reservation was found and finished by a scan, or that reserved nothing."""
        self.cleared(batch_id, finished_at)

    def open(self, connector: str) -> list[OfflineBatchRow]:
        """Batches of this connector not yet cleared, oldest first."""
        rows = self.conn.execute(
            "SELECT id, connector, status, process_id, events, started_at FROM offline_batches "
            "WHERE status <> ? AND connector = ? ORDER BY id",
            (CLEARED, connector),
        ).fetchall()
        return [
            OfflineBatchRow(int(i), c, s, p, json.loads(e) if e else [], started)
            for (i, c, s, p, e, started) in rows
        ]

    def known_process_ids(self, connector: str) -> set[str]:
        return {
            pid
            for (pid,) in self.conn.execute(
                "SELECT process_id FROM offline_batches WHERE connector = ? AND process_id IS NOT NULL", (connector,)
            )
        }

    def prune(self, before: str) -> int:
        """Cleared batches older than `before` (UTC ISO): the journal only needs the recent ones."""
        return self.conn.execute(
            "DELETE FROM offline_batches WHERE status = ? AND finished_at < ?", (CLEARED, before)
        ).rowcount

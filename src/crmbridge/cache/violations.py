"""The `violations` table: the compliance history, one row per violation episode."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from crmbridge.cache.tables import Tables

Row = dict[str, Any]


class Changes(Protocol):
    """What one evaluation changes in the ledger (regulation.ledger.LedgerChanges)."""

    opened: Sequence[Row]  # new rows
    refreshed: Sequence[Row]  # id + checked, severity, message, missing, details
    resolved: list[int]  # row ids no longer found


C = TypeVar("C", bound=Changes)


class Violations:
    """Open rows by key, and one evaluation's changes written in one transaction."""

    def __init__(self, cache: Tables) -> None:
        self.cache = cache

    def open_rows(self) -> dict[str, Row]:
        """Open violations (not resolved) by key: their row id and deal (all a reconciliation compares; the texts
        are rewritten, not read, so 45,000 messages are not loaded)."""
        return {key: {"id": row_id, "key": key, "deal_id": deal_id} for row_id, key, deal_id in self.cache.db.execute(
            "SELECT id, key, deal_id FROM violations WHERE resolved IS NULL")}

    def record(self, reconcile: Callable[[dict[str, Row]], C], now_iso: str) -> C:
        """One transaction: the open rows, `reconcile` (pure) compares them with an evaluation, its changes are
        written (rows resolved at `now_iso`). Returns the changes."""
        with self.cache.atomic():
            changes = reconcile(self.open_rows())
            self._apply(changes.opened, changes.refreshed, changes.resolved, now_iso)
        return changes

    def _apply(self, opened: Sequence[Row], refreshed: Sequence[Row], resolved: Sequence[int], now_iso: str) -> None:
        if opened:
            self.cache.db["violations"].insert_all(opened)
        self.cache.db.conn.executemany(
            "UPDATE violations SET checked = ?, severity = ?, message = ?, missing = ?, details = ? WHERE id = ?",
            ((row["checked"], row["severity"], row["message"], row["missing"], row["details"], row["id"])
             for row in refreshed))
        for start in range(0, len(resolved), 500):
            chunk = list(resolved[start:start + 500])
            self.cache.db.execute(f"UPDATE violations SET resolved = ? WHERE id IN ({','.join('?' * len(chunk))})",
                                  [now_iso, *chunk])

"""The open SQLite file and the generic helpers every repository of the cache is built from."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

PRIMARY_KEYS: dict[str, str | tuple[str, ...]] = {
    "deals": "id",
    "pipelines": "id",
    "stages": ("category_id", "status_id"),
    "deal_fields": "field_name",
    "users": "id",
    "contacts": "id",
    "companies": "id",
    "stage_history": "id",
    "tasks": "id",
    "activities": "id",
    "communications": "id",
    "departments": "id",
    "currencies": "currency",
    "plan_items": "id",
    "sync_state": "entity",
}


class Tables:
    """The open SQLite file and the generic helpers the repositories are built from (transactions, upserts, reads)."""

    def __init__(self, db: sqlite_utils.Database, path: Path | None) -> None:
        self.db = db
        self.path = path

    # --- transactions -----------------------------------------------------------------------

    @contextmanager
    def atomic(self) -> Iterator[Tables]:
        """One write transaction: a chunk of rows and the cursor that covers them commit together.

        `BEGIN IMMEDIATE` takes the file's write lock before anything is read. A deferred transaction reads a
        snapshot first (sqlite-utils looks at the table, the ledger reads the open rows) and its first write fails
        at once with "database is locked" when another connection committed meanwhile: no busy timeout helps
        there. This one waits its turn (the busy timeout of open_cache) and then reads what the other committed.
        Nested, it is a savepoint of the outer transaction.
        """
        conn = self.db.conn
        if conn.in_transaction:
            with self.db.atomic():
                yield self
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        conn.commit()

    @contextmanager
    def snapshot(self) -> Iterator[Tables]:
        """One read transaction: every read inside sees the file as it was at the first one (WAL), whatever other
        connections commit meanwhile; nothing is blocked. Inside a transaction already, that one's view serves."""
        conn = self.db.conn
        if conn.in_transaction:
            yield self
            return
        changes = conn.total_changes
        conn.execute("BEGIN")
        try:
            yield self
        finally:
            if conn.in_transaction:
                # for reads; a write made inside (between a stream's chunks, say) is the caller's and is kept
                conn.commit() if conn.total_changes != changes else conn.rollback()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Tables:
        return self

    def __exit__(self, *exc: object) -> None:
        """`with open_cache(path) as cache:` closes it (a sync given a factory closes what it opened)."""
        self.close()

    # --- generic writes ---------------------------------------------------------------------

    def upsert(self, table: str, rows: Iterable[dict[str, Any]]) -> int:
        rows = list(rows)
        if rows:
            self.db[table].upsert_all(rows, pk=PRIMARY_KEYS[table])
        return len(rows)

    def replace_all(self, table: str, rows: Iterable[dict[str, Any]]) -> int:
        """For lists read whole (pipelines, stages, fields, users): what the portal no longer has goes too."""
        rows = list(rows)
        self.db.execute(f"DELETE FROM {table}")
        return self.upsert(table, rows)

    def changed_ids(self, table: str, rows: list[dict[str, Any]]) -> set[Any]:
        """Ids among `rows` whose raw record differs from the cached one (new rows included)."""
        if not rows:
            return set()
        pk = PRIMARY_KEYS[table]
        ids = [row[pk] for row in rows]
        cached: dict[Any, str] = {}
        for start in range(0, len(ids), 500):  # SQLite's parameter limit
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, raw in self.db.execute(f"SELECT {pk}, raw FROM {table} WHERE {pk} IN ({marks})", chunk):
                cached[key] = raw
        changed = set()
        for row in rows:
            if cached.get(row[pk]) != row["raw"]:
                changed.add(row[pk])
        return changed

    def delete_ids(self, table: str, ids: list[Any]) -> None:
        pk = PRIMARY_KEYS[table]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            self.db.execute(f"DELETE FROM {table} WHERE {pk} IN ({','.join('?' * len(chunk))})", chunk)

    # --- reads ------------------------------------------------------------------------------

    def count(self, table: str, where: str = "1=1", params: list[Any] | None = None) -> int:
        return int(self.db.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}", params or []).fetchone()[0])

    def query(self, sql: str, params: list[Any] | dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return list(self.db.query(sql, params or []))

"""Opening, migrating and writing the SQLite cache (sqlite-utils, WAL mode)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from crmbridge.cache.schema import MIGRATIONS, SCHEMA_VERSION
from crmbridge.errors import CacheError

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

_CRM_NAMES = {"bitrix24": "Bitrix24", "amocrm": "amoCRM"}


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


class Cache:
    """The local SQLite file: every write goes through here, so transactions stay in one place."""

    def __init__(self, db: sqlite_utils.Database, path: Path | None) -> None:
        self.db = db
        self.path = path

    # --- transactions -----------------------------------------------------------------------

    @contextmanager
    def atomic(self) -> Iterator[Cache]:
        """One transaction: a chunk of rows and the cursor that covers them commit together.

        It takes the write lock at once (BEGIN IMMEDIATE): several connections write this file (the daemon's
        inbox, worker and jobs), and in WAL mode a transaction that read first and writes later fails at once
        with "database is locked" when another connection committed in between (the busy timeout does not
        apply to that upgrade). Nested calls are savepoints."""
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
                conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

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
        # a deal marked deleted that shows up again is a change too
        if table == "deals":
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for (key,) in self.db.execute(f"SELECT id FROM deals WHERE deleted = 1 AND id IN ({marks})", chunk):
                    changed.add(key)
        return changed

    def delete_ids(self, table: str, ids: list[Any]) -> None:
        pk = PRIMARY_KEYS[table]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            self.db.execute(f"DELETE FROM {table} WHERE {pk} IN ({','.join('?' * len(chunk))})", chunk)

    def delete_not_synced_since(self, table: str, since: str) -> int:
        """After a full read of tasks or to-dos: rows it did not see are gone from the portal."""
        return self.db.execute(
            f"DELETE FROM {table} WHERE synced_at IS NULL OR synced_at < ?", [since]
        ).rowcount

    def mark_deleted_deals(self, not_synced_since: str) -> int:
        """After a full sync: deals the run did not see are gone from the portal."""
        cursor = self.db.execute(
            "UPDATE deals SET deleted = 1 WHERE deleted = 0 AND (synced_at IS NULL OR synced_at < ?)",
            [not_synced_since],
        )
        return cursor.rowcount

    # --- which account the cache serves ------------------------------------------------------

    def crm_account(self) -> dict[str, Any] | None:
        """The account this cache holds (crm, account host, ...), or None before the first sync."""
        rows = list(self.db.query("SELECT * FROM crm_account WHERE id = 1"))
        return rows[0] if rows else None

    def claim_account(self, crm: str, account: str, claimed_at: str, **details: Any) -> dict[str, Any]:
        """Mark the cache as holding `account` of `crm`; refuse when it already holds another one.

        A cache written before the marker existed holds Bitrix24 data and is claimed by its first sync.
        `details` (account_id, name, timezone, currency, filter_enabled, raw) are updated on every claim.
        """
        with self.atomic():
            held = self.crm_account()
            if held is not None and (held["crm"], held["account"]) != (crm, account):
                raise CacheError(
                    f"{self.path or 'the cache'} holds the {_CRM_NAMES.get(held['crm'], held['crm'])} account "
                    f"{held['account']}, not the {_CRM_NAMES.get(crm, crm)} account {account}",
                    hint="point CRMBRIDGE_CACHE_PATH at another file for this account (one cache per account), "
                         "or check CRMBRIDGE_CRM",
                )
            row = {"id": 1, "crm": crm, "account": account,
                   "claimed_at": held["claimed_at"] if held else claimed_at,
                   **{key: value for key, value in details.items() if value is not None}}
            self.db["crm_account"].upsert(row, pk="id")
        return self.crm_account() or row

    def check_account(self, crm: str) -> None:
        """Refuse to read a cache of another CRM than the one configured (CRMBRIDGE_CRM)."""
        held = self.crm_account()
        if held is not None and held["crm"] != crm:
            raise CacheError(
                f"{self.path or 'the cache'} holds the {_CRM_NAMES.get(held['crm'], held['crm'])} account "
                f"{held['account']}, but CRMBRIDGE_CRM is {crm}",
                hint="set CRMBRIDGE_CRM to the cache's CRM, or point CRMBRIDGE_CACHE_PATH at this CRM's cache",
            )

    # --- sync state -------------------------------------------------------------------------

    def sync_state(self, entity: str) -> SyncState:
        rows = list(self.db.query("SELECT * FROM sync_state WHERE entity = ?", [entity]))
        return SyncState(**rows[0]) if rows else SyncState(entity=entity)

    def save_sync_state(self, state: SyncState) -> None:
        self.db["sync_state"].upsert(state.__dict__, pk="entity")

    def start_run(self, mode: str, started_at: str) -> int:
        return int(
            self.db["sync_runs"].insert({"mode": mode, "started_at": started_at, "status": "running"}).last_pk
        )

    def finish_run(self, run_id: int, status: str, finished_at: str, summary: dict[str, Any]) -> None:
        self.db["sync_runs"].update(
            run_id, {"status": status, "finished_at": finished_at, "summary": json.dumps(summary, ensure_ascii=False)}
        )

    # --- reads ------------------------------------------------------------------------------

    def count(self, table: str, where: str = "1=1", params: list[Any] | None = None) -> int:
        return int(self.db.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}", params or []).fetchone()[0])

    def query(self, sql: str, params: list[Any] | dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return list(self.db.query(sql, params or []))

    def raw_records(self, table: str, where: str = "1=1", params: list[Any] | None = None) -> Iterator[dict[str, Any]]:
        for (raw,) in self.db.execute(f"SELECT raw FROM {table} WHERE {where}", params or []):
            yield json.loads(raw)


def open_cache(path: Path | str) -> Cache:
    """Open (creating if needed) and migrate the cache; refuse a file written by a newer crmbridge."""
    in_memory = str(path) == ":memory:"
    file_path = None if in_memory else Path(path)
    if file_path is not None:
        file_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(str(path), timeout=30)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise CacheError(
            f"{path}: not a crmbridge cache ({exc})",
            hint="point CRMBRIDGE_CACHE_PATH at another file, or move this one away",
        ) from None
    if version > SCHEMA_VERSION:
        conn.close()
        raise CacheError(
            f"{path}: cache schema version {version} was written by a newer crmbridge (this one knows {SCHEMA_VERSION})",
            hint="upgrade crmbridge, or set CRMBRIDGE_CACHE_PATH to a new file",
        )
    db = sqlite_utils.Database(conn)
    if not in_memory:
        db.enable_wal()
    db.execute("PRAGMA synchronous=NORMAL")  # safe with WAL: a crash loses at most the last commit
    for number in range(version + 1, SCHEMA_VERSION + 1):
        # each migration and its version bump commit together, so a kill never leaves a half-migrated file
        with db.atomic():
            for statement in _statements(MIGRATIONS[number - 1]):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {number}")
    return Cache(db, file_path)


def _statements(script: str) -> list[str]:
    """Split a migration into statements (executescript would commit on its own, outside our transaction)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements

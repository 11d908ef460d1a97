"""Opening, migrating and writing the SQLite cache (sqlite-utils, WAL mode)."""

from __future__ import annotations

import json
import os
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

    def unseen_ids(self, table: str, since: str) -> list[int]:
        """Ids of `deals` (not yet marked deleted), `tasks` or `activities` a full read that started at `since` did
        not write: candidates for deletion, to be read back by id first. A record the portal sent but crmbridge
        could not use (rejected_records) was seen: it is no candidate."""
        if table not in ("deals", "tasks", "activities"):
            raise ValueError(f"not a table a full read deletes from: {table}")
        alive = "deleted = 0 AND " if table == "deals" else ""
        return [row_id for (row_id,) in self.db.execute(
            f"SELECT id FROM {table} WHERE {alive}(synced_at IS NULL OR synced_at < ?) AND CAST(id AS TEXT) NOT IN "
            "(SELECT record_key FROM rejected_records WHERE entity = ? AND seen_at >= ?)", [since, table, since])]

    def mark_deleted(self, deal_ids: list[int]) -> int:
        """Deals confirmed gone from the portal: kept, marked `deleted = 1`."""
        marked = 0
        for start in range(0, len(deal_ids), 500):
            chunk = deal_ids[start:start + 500]
            marked += self.db.execute(f"UPDATE deals SET deleted = 1 WHERE deleted = 0 AND id IN "
                                      f"({','.join('?' * len(chunk))})", chunk).rowcount
        return marked

    def pipeline_ids(self) -> list[int]:
        return [pipeline_id for (pipeline_id,) in self.db.execute("SELECT id FROM pipelines")]

    def cached_stages(self, category_id: int) -> list[dict[str, Any]]:
        """The stages of one pipeline as last cached (kept when the portal answers none for it)."""
        return self.query("SELECT status_id, category_id, entity_id, name, sort, semantics, raw FROM stages "
                          "WHERE category_id = ?", [category_id])

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

    # --- facts about the file itself ---------------------------------------------------------

    def set_meta(self, name: str, value: str) -> None:
        with self.atomic():
            self.db.execute("INSERT INTO cache_meta (name, value) VALUES (?, ?) "
                            "ON CONFLICT(name) DO UPDATE SET value = excluded.value", [name, value])

    def meta(self, name: str) -> str | None:
        rows = list(self.db.execute("SELECT value FROM cache_meta WHERE name = ?", [name]))
        return rows[0][0] if rows else None

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


#: what every SQLite database file starts with
SQLITE_HEADER = b"SQLite format 3\x00"
_CHECK = "check CRMBRIDGE_CACHE_PATH and the permissions of the file and its folder"


def open_cache(path: Path | str) -> Cache:
    """Open (creating if needed) and migrate the cache; refuse a file written by a newer crmbridge.

    A new cache is created readable by its owner only (0600): it holds clients' phones and e-mails.
    SQLite gives the `-wal` and `-shm` files beside it the same permissions.
    """
    in_memory = str(path) == ":memory:"
    file_path = None if in_memory else Path(path)
    if file_path is not None:
        _prepare(file_path)
    try:
        conn = sqlite3.connect(str(path), timeout=30)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        if _contended(exc):
            raise  # another connection holds the file for a moment: callers that wait and retry see it as ever
        raise _open_error(path, exc) from None
    if version > SCHEMA_VERSION:
        conn.close()
        raise CacheError(
            f"{path}: cache schema version {version} was written by a newer crmbridge (this one knows {SCHEMA_VERSION})",
            hint="upgrade crmbridge, or set CRMBRIDGE_CACHE_PATH to a new file",
        )
    db = sqlite_utils.Database(conn)
    try:
        if not in_memory:
            db.enable_wal()
        db.execute("PRAGMA synchronous=NORMAL")  # safe with WAL: a crash loses at most the last commit
        for number in range(version + 1, SCHEMA_VERSION + 1):
            # each migration and its version bump commit together, so a kill never leaves a half-migrated file
            with db.atomic():
                for statement in _statements(MIGRATIONS[number - 1]):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")
    except sqlite3.DatabaseError as exc:
        conn.close()
        if _contended(exc):
            raise
        raise _open_error(path, exc) from None
    return Cache(db, file_path)


#: cache_meta: who created the file; `crmbridge demo` replaces only files it created itself
CREATED_BY = "created_by"
DEMO = "crmbridge demo"


def replaceable_demo_cache(path: Path) -> str | None:
    """None when `path` is free or holds a cache `crmbridge demo` created; else why the demo must leave it alone.

    Read without changing anything (read-only, no migration), so even a refused file is untouched.
    """
    companions = [Path(str(path) + suffix) for suffix in ("-wal", "-shm")]
    if path.is_symlink():
        return "is a symbolic link"
    if not path.exists():
        if any(companion.exists() for companion in companions):
            return "does not exist, but a -wal or -shm file of another database is beside it"
        return None
    if not path.is_file():
        return "is not a regular file"
    try:
        with open(path, "rb") as file:
            if file.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                return "is not a crmbridge demo cache (not an SQLite file)"
        # immutable: SQLite reads the file as it is and creates no -wal / -shm beside it (a read-only connection
        # to a WAL database would). A marker still in a -wal of a killed demo is not seen: refused, safely.
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True, timeout=5)
        try:
            rows = connection.execute("SELECT value FROM cache_meta WHERE name = ?", [CREATED_BY]).fetchall()
        finally:
            connection.close()
    except (OSError, sqlite3.Error):
        return "is not a crmbridge demo cache"
    if not rows or rows[0][0] != DEMO:
        return "is not a cache crmbridge demo created (it may be a real cache with its audit log)"
    return None


def _prepare(path: Path) -> None:
    """The cache's folder exists and a new cache file is created owner-only; an unusable path says why."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot create the folder {path.parent} for the cache ({_why(exc)})", hint=_CHECK) from None
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        _check_existing(path)
        return
    except OSError as exc:
        raise CacheError(f"cannot create the cache {path}: the folder {path.parent} is not writable ({_why(exc)})",
                         hint=_CHECK) from None
    try:
        os.fchmod(descriptor, 0o600)  # exactly owner read/write, whatever the umask lets through
    finally:
        os.close(descriptor)


def _check_existing(path: Path) -> None:
    # only stat, never open: closing any descriptor of a database file drops every POSIX lock this process
    # holds on it, and the daemon keeps connections open while its threads open more
    if path.is_dir():
        raise CacheError(f"{path} is a folder, not a cache file", hint="point CRMBRIDGE_CACHE_PATH at a file")


def _contended(exc: sqlite3.DatabaseError) -> bool:
    """A lock held by another connection: not a fault of the file, and worth waiting for."""
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _open_error(path: Path | str, exc: sqlite3.DatabaseError) -> CacheError:
    """The real cause of an SQLite error on opening: a read-only file or folder, a damaged file, or another file."""
    text = str(exc)
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return CacheError(f"the cache {path} cannot be opened for writing ({text}): crmbridge reads and writes it "
                          f"and {path}-wal beside it", hint=_CHECK)
    if "malformed" in text or "corrupt" in text:
        return CacheError(f"the cache {path} is damaged ({text})",
                          hint="move it away and run `crmbridge sync` to build a new one (the portal has the data)")
    return CacheError(f"{path}: not a crmbridge cache ({text})",
                      hint="point CRMBRIDGE_CACHE_PATH at another file, or move this one away")


def _why(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower() if isinstance(exc, OSError) else str(exc)


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

"""Opening, migrating and writing the SQLite cache (sqlite-utils, WAL mode)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import sqlite_utils

from crmbridge.cache.account import Account
from crmbridge.cache.deals import Deals
from crmbridge.cache.kpi import Kpi
from crmbridge.cache.reference import Reference
from crmbridge.cache.schema import MIGRATIONS, SCHEMA_VERSION
from crmbridge.cache.sync_state import SyncStates
from crmbridge.cache.tables import Tables
from crmbridge.cache.violations import Violations
from crmbridge.errors import CacheError


class Cache(Tables):
    """The local SQLite file: one repository per table family, and the transactions they share.

    `cache.deals`, `cache.reference`, `cache.violations`, `cache.syncs`, `cache.account`, `cache.kpi` hold every
    query of their
    tables (`cache.actions.ActionsRepository(cache)` those of the enforcement's outbox).
    """

    def __init__(self, db: sqlite_utils.Database, path: Path | None) -> None:
        super().__init__(db, path)
        self.deals = Deals(self)
        self.reference = Reference(self)
        self.violations = Violations(self)
        self.syncs = SyncStates(self)
        self.account = Account(self)
        self.kpi = Kpi(self)


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
        _enable_wal(conn)
    db.execute("PRAGMA synchronous=NORMAL")  # safe with WAL: a crash loses at most the last commit
    cache = Cache(db, file_path)
    if version < SCHEMA_VERSION:
        # under the write lock, from the version found then: two processes opening an old cache migrate it once;
        # every migration and its version bump commit together, so a kill never leaves a half-migrated file
        with cache.atomic():
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for number in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _statements(MIGRATIONS[number - 1]):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")
    return cache


def _enable_wal(conn: sqlite3.Connection, wait_seconds: float = 30.0) -> None:
    """Switch a new file to WAL, waiting for another process that opens it at the same moment.

    Leaving rollback-journal mode needs the file to itself, and SQLite answers "database is locked" at once
    instead of calling the busy handler when another connection is switching or migrating the same new file
    (two syncs started together on a fresh cache). The mode is stored in the file, so this waits only once.
    """
    deadline = time.monotonic() + wait_seconds
    delay = 0.01
    while conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        try:
            conn.execute("PRAGMA journal_mode=wal")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)


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

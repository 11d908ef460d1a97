"""Opening, migrating and writing the SQLite cache (sqlite-utils, WAL mode)."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import sqlite_utils

from crmbridge.cache.account import Account
from crmbridge.cache.deals import Deals
from crmbridge.cache.judged import Judged
from crmbridge.cache.kpi import Kpi
from crmbridge.cache.meta import Meta
from crmbridge.cache.reference import Reference
from crmbridge.cache.rejected import RejectedRecords
from crmbridge.cache.schema import MIGRATIONS, SCHEMA_VERSION
from crmbridge.cache.sync_state import SyncStates
from crmbridge.cache.tables import Tables
from crmbridge.cache.violations import Violations
from crmbridge.errors import CacheError


class Cache(Tables):
    """The local SQLite file: one repository per table family, and the transactions they share.

    `cache.deals`, `cache.reference`, `cache.violations`, `cache.syncs`, `cache.account`, `cache.kpi`, `cache.rejected`
    (records a sync could not use), `cache.meta` (facts about the file) and `cache.judged` (the audit's kept judgements) hold every query of their tables
    (`cache.actions.ActionsRepository(cache)` those of the enforcement's outbox).
    """

    def __init__(self, db: sqlite_utils.Database, path: Path | None) -> None:
        super().__init__(db, path)
        self.deals = Deals(self)
        self.reference = Reference(self)
        self.violations = Violations(self)
        self.syncs = SyncStates(self)
        self.account = Account(self)
        self.kpi = Kpi(self)
        self.rejected = RejectedRecords(self)
        self.meta = Meta(self)
        self.judged = Judged(self)


def open_cache(path: Path | str) -> Cache:
    """Open (creating if needed) and migrate the cache; refuse a file written by a newer crmbridge.

    A new cache is created readable by its owner only (0600): it holds clients' phones and e-mails. SQLite gives
    the `-wal` and `-shm` files beside it the same permissions. A path that cannot be used says why.
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
    except sqlite3.DatabaseError as exc:
        conn.close()
        if _contended(exc):
            raise
        raise _open_error(path, exc) from None
    return cache


#: what every SQLite database file starts with
SQLITE_HEADER = b"SQLite format 3\x00"
_CHECK = "check CRMBRIDGE_CACHE_PATH and the permissions of the file and its folder"
#: cache_meta: who created the file; `crmbridge demo` replaces only files it created itself
CREATED_BY = "created_by"
DEMO = "crmbridge demo"


def replaceable_demo_cache(path: Path) -> str | None:
    """None when `path` is free or holds a cache `crmbridge demo` created; else why the demo must leave it alone.

    Read without changing anything (no migration, no -wal or -shm created), so even a refused file is untouched;
    only before this process opens the file (closing a descriptor of a database file drops the process's locks).
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
        # only stat, never open: closing any descriptor of a database file drops every POSIX lock this process
        # holds on it, and the daemon keeps connections open while its threads open more
        if path.is_dir():
            raise CacheError(f"{path} is a folder, not a cache file", hint="point CRMBRIDGE_CACHE_PATH at a file") from None
        return
    except OSError as exc:
        raise CacheError(f"cannot create the cache {path}: the folder {path.parent} is not writable ({_why(exc)})",
                         hint=_CHECK) from None
    try:
        os.fchmod(descriptor, 0o600)  # exactly owner read/write, whatever the umask lets through
    finally:
        os.close(descriptor)


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
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


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

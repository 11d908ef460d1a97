"""The durable event inbox: every accepted event is committed (WAL, synchronous=FULL, group commit) before it is acknowledged.

Any source puts events in with `Inbox.accept` (blocking) or `Inbox.accept_async` (from the HTTP handler's
event loop); both return only after the events are on disk, so an acknowledged event survives `kill -9`
and a power cut. Concurrent callers share one transaction and one fsync (group commit): a writer thread
takes everything queued while the previous commit was syncing and commits it together.

The worker reads with `claim`, and settles with `done` / `failed` / `postpone`. Events that fail again and
again go to `dead_letters` with their reason; malformed bodies go there directly (`reject`).
`retry` puts dead letters back. See docs/architecture.md ("Live bridge") for the contract.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Callable

from crmbridge.cache.store import open_cache
from crmbridge.errors import CacheError

#: bytes of a malformed or dead event kept for inspection
DEAD_PAYLOAD_LIMIT = 16_384
#: events committed together at most (one transaction, one fsync)
GROUP_MAX = 2_000
#: processing failures of one event before it goes to the dead letters
DEFAULT_MAX_ATTEMPTS = 8

PENDING, DONE, DEAD = "pending", "done", "dead"


def utc_iso(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class InboxEvent:
    """One event as a source hands it in; `payload` is kept exactly as received (text)."""

    source: str  # bitrix24.webhook, bitrix24.offline, amocrm.hook, ...
    event: str  # the CRM's event name, upper case for Bitrix24 (ONCRMDEALUPDATE)
    entity: str  # deal, task, activity, contact, company, or the source's own kind (lead, ...)
    entity_id: str
    payload: str
    received_at: str = field(default_factory=utc_iso)
    dedupe_key: str | None = None  # the source's delivery id: the same key from the same source is stored once


@dataclass(frozen=True)
class InboxRow:
    """A stored event as the worker sees it."""

    id: int
    source: str
    event: str
    entity: str
    entity_id: str
    payload: str
    received_at: str
    attempts: int
    status: str = PENDING
    last_error: str | None = None


@dataclass(frozen=True)
class DeadLetter:
    id: int
    source: str
    reason: str
    received_at: str
    dead_at: str
    inbox_id: int | None
    event: str | None
    entity: str | None
    entity_id: str | None
    attempts: int
    payload: str
    truncated: bool
    requeued_at: str | None


@dataclass(frozen=True)
class InboxStats:
    pending: int
    due: int  # pending and not waiting for a backoff
    done: int
    dead: int  # dead letters not requeued
    oldest_pending: str | None  # received_at of the oldest pending event


def connect(path: Path | str, *, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) on the cache file, already migrated."""
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class Inbox:
    """The `inbox` and `dead_letters` tables of one cache file; thread-safe.

    `clock` gives the current UTC time (injected for tests of the backoff).
    """

    def __init__(self, path: Path | str, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS, on_commit: Callable[[int, float], None] | None = None) -> None:
        if str(path) == ":memory:":
            raise CacheError("the inbox needs a cache file (an acknowledged event must survive a restart)")
        self.path = Path(path)
        open_cache(self.path).close()  # create and migrate before anything is accepted
        self.clock = clock
        self.max_attempts = max_attempts
        self._on_commit = on_commit
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[list[InboxEvent], _Waiter] | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, name="inbox-writer", daemon=True)
        self._writer_ready = threading.Event()
        self._writer_error: BaseException | None = None
        self._closed = False
        #: (monotonic time, events) of recent group commits: how fast events are arriving right now
        self._arrivals: collections.deque[tuple[float, int]] = collections.deque(maxlen=4096)
        self._writer.start()
        self._writer_ready.wait()
        if self._writer_error is not None:
            raise self._writer_error

    # ------------------------------------------------------------------ accepting (any thread, any source)

    def accept(self, events: Sequence[InboxEvent]) -> list[int]:
        """Store events durably; returns their inbox ids (a duplicate `dedupe_key` returns the stored row's id)."""
        return self.submit(events).result()

    async def accept_async(self, events: Sequence[InboxEvent]) -> list[int]:
        """`accept` for an asyncio handler: the event loop keeps serving while the group commit syncs.

        The writer wakes each event loop once per group commit (not once per event): under a burst that is
        one cross-thread wake-up for dozens of acknowledgements."""
        if not events:
            return []
        if self._closed:
            raise CacheError("the inbox is closed")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[list[int]] = loop.create_future()
        self._queue.put((list(events), _AsyncWaiter(loop, waiter)))
        return await waiter

    def arrival_rate(self, window: float = 0.5) -> float:
        """Events per second committed over the last `window` seconds (0 when quiet)."""
        cutoff = time.monotonic() - window
        return sum(count for moment, count in list(self._arrivals) if moment >= cutoff) / window

    def submit(self, events: Sequence[InboxEvent]) -> concurrent.futures.Future[list[int]]:
        future: concurrent.futures.Future[list[int]] = concurrent.futures.Future()
        if self._closed:
            future.set_exception(CacheError("the inbox is closed"))
            return future
        if not events:
            future.set_result([])
            return future
        self._queue.put((list(events), future))
        return future

    def _write_loop(self) -> None:
        try:
            # FULL: the commit is on disk (the WAL fsynced) before the caller acknowledges the event
            conn = connect(self.path, synchronous="FULL")
            # no checkpoints on the acknowledging path (copying the WAL into the file and syncing it can take
            # 100+ ms): the other connections' commits and `checkpoint()` do them
            conn.execute("PRAGMA wal_autocheckpoint=0")
        except BaseException as exc:  # noqa: BLE001 - reported to the constructor
            self._writer_error = exc
            self._writer_ready.set()
            return
        self._writer_ready.set()
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                group = [item]
                count = len(item[0])
                stop = False
                while count < GROUP_MAX:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                        break
                    group.append(more)
                    count += len(more[0])
                self._commit_group(conn, group)
                if stop:
                    return
        finally:
            conn.close()

    def _commit_group(self, conn: sqlite3.Connection, group: list[tuple[list[InboxEvent], _Waiter]]) -> None:
        started = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = [[self._insert(conn, event) for event in events] for events, _ in group]
            conn.execute("COMMIT")
        except BaseException as exc:  # noqa: BLE001 - every waiting caller learns it; none is acknowledged
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            error = exc if isinstance(exc, Exception) else CacheError(str(exc))
            _settle([(waiter, error) for _, waiter in group])
            return
        _settle([(waiter, ids) for (_, waiter), ids in zip(group, results, strict=True)])
        self._arrivals.append((time.monotonic(), sum(len(ids) for ids in results)))
        if self._on_commit is not None:
            self._on_commit(sum(len(ids) for ids in results), time.perf_counter() - started)

    @staticmethod
    def _insert(conn: sqlite3.Connection, event: InboxEvent) -> int:
        if event.dedupe_key is not None:
            found = conn.execute("SELECT id FROM inbox WHERE source = ? AND dedupe_key = ?",
                                 (event.source, event.dedupe_key)).fetchone()
            if found is not None:
                return int(found[0])
        cursor = conn.execute(
            "INSERT INTO inbox (source, event, entity, entity_id, payload, received_at, dedupe_key) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (event.source, event.event, event.entity, str(event.entity_id), event.payload, event.received_at,
             event.dedupe_key))
        return int(cursor.lastrowid or 0)

    # ------------------------------------------------------------------ rejected input

    def reject(self, source: str, reason: str, body: bytes | str, *, received_at: str | None = None) -> int:
        """Keep a malformed event (truncated) in the dead letters for inspection; returns its id."""
        text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
        payload, truncated = _truncate(text)
        now = utc_iso(self.clock())
        with self._transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO dead_letters (source, reason, received_at, dead_at, payload, truncated) "
                "VALUES (?, ?, ?, ?, ?, ?)", (source, reason[:500], received_at or now, now, payload, int(truncated)))
            return int(cursor.lastrowid or 0)

    # ------------------------------------------------------------------ the worker's side

    def claim(self, limit: int = 5_000) -> list[InboxRow]:
        """Pending events that are due (no backoff running), oldest first."""
        now = utc_iso(self.clock())
        rows = self._conn().execute(
            "SELECT id, source, event, entity, entity_id, payload, received_at, attempts, status, last_error "
            "FROM inbox WHERE status = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= ?) "
            "ORDER BY id LIMIT ?", (now, limit)).fetchall()
        return [InboxRow(**dict(row)) for row in rows]

    def claim_entities(self, entities: int = 500, *, max_events: int = 50_000) -> list[InboxRow]:
        """Every due event of the `entities` records that have waited longest: a record's ten events come
        in one round, so it is re-read once for all of them (oldest first)."""
        now = utc_iso(self.clock())
        rows = self._conn().execute(
            "SELECT id, source, event, entity, entity_id, payload, received_at, attempts, status, last_error "
            "FROM inbox WHERE status = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= ?1) "
            "AND (source, entity, entity_id) IN (SELECT source, entity, entity_id FROM inbox "
            "  WHERE status = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= ?1) "
            "  GROUP BY source, entity, entity_id ORDER BY MIN(id) LIMIT ?2) "
            "ORDER BY id LIMIT ?3", (now, entities, max_events)).fetchall()
        return [InboxRow(**dict(row)) for row in rows]

    def done(self, ids: Iterable[int]) -> None:
        now = utc_iso(self.clock())
        with self._transaction() as conn:
            for chunk in _chunks(list(ids)):
                conn.execute(f"UPDATE inbox SET status = 'done', processed_at = ?, next_attempt_at = NULL "
                             f"WHERE id IN ({_marks(chunk)})", (now, *chunk))

    def postpone(self, ids: Iterable[int], reason: str, delay: float) -> None:
        """Not the events' fault (the portal is unreachable): they wait, without counting an attempt."""
        until = utc_iso(self.clock() + timedelta(seconds=delay))
        with self._transaction() as conn:
            for chunk in _chunks(list(ids)):
                conn.execute(f"UPDATE inbox SET next_attempt_at = ?, last_error = ? WHERE id IN ({_marks(chunk)})",
                             (until, reason[:500], *chunk))

    def failed(self, ids: Iterable[int], reason: str, *, base_delay: float = 2.0, max_delay: float = 600.0) -> int:
        """Processing these events failed: back off (doubling per attempt); after `max_attempts` they go to the
        dead letters with the reason. Returns how many went dead."""
        now = self.clock()
        dead = 0
        with self._transaction() as conn:
            for chunk in _chunks(list(ids)):
                rows = conn.execute(f"SELECT id, source, event, entity, entity_id, payload, received_at, attempts "
                                    f"FROM inbox WHERE status = 'pending' AND id IN ({_marks(chunk)})", chunk).fetchall()
                for row in rows:
                    attempts = int(row["attempts"]) + 1
                    if attempts >= self.max_attempts:
                        payload, truncated = _truncate(row["payload"])
                        conn.execute(
                            "INSERT INTO dead_letters (source, reason, received_at, dead_at, inbox_id, event, entity, "
                            "entity_id, attempts, payload, truncated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (row["source"], reason[:500], row["received_at"], utc_iso(now), row["id"], row["event"],
                             row["entity"], row["entity_id"], attempts, payload, int(truncated)))
                        conn.execute("UPDATE inbox SET status = 'dead', attempts = ?, last_error = ? WHERE id = ?",
                                     (attempts, reason[:500], row["id"]))
                        dead += 1
                    else:
                        delay = min(max_delay, base_delay * 2 ** (attempts - 1))
                        conn.execute("UPDATE inbox SET attempts = ?, last_error = ?, next_attempt_at = ? WHERE id = ?",
                                     (attempts, reason[:500], utc_iso(now + timedelta(seconds=delay)), row["id"]))
        return dead

    def retry(self, ids: Iterable[int] | None = None) -> tuple[int, list[str]]:
        """Put dead letters (all not yet requeued, or the given ids) back into the inbox.

        Returns how many went back, and one line per letter that cannot (a malformed body names no event).
        """
        now = utc_iso(self.clock())
        problems: list[str] = []
        requeued = 0
        with self._transaction() as conn:
            if ids is None:
                rows = conn.execute("SELECT * FROM dead_letters WHERE requeued_at IS NULL ORDER BY id").fetchall()
            else:
                wanted = list(ids)
                rows = []
                for chunk in _chunks(wanted):
                    rows += conn.execute(f"SELECT * FROM dead_letters WHERE id IN ({_marks(chunk)})", chunk).fetchall()
                for missing in sorted(set(wanted) - {int(row["id"]) for row in rows}):
                    problems.append(f"dead letter {missing}: there is no such dead letter")
            for row in rows:
                if row["requeued_at"] is not None:
                    problems.append(f"dead letter {row['id']}: already requeued at {row['requeued_at']}")
                    continue
                if row["inbox_id"] is None:
                    if ids is not None:
                        problems.append(f"dead letter {row['id']}: a malformed {row['source']} body ({row['reason']}); "
                                        "it names no event to process")
                    continue
                conn.execute("UPDATE inbox SET status = 'pending', attempts = 0, next_attempt_at = NULL, "
                             "last_error = NULL WHERE id = ?", (row["inbox_id"],))
                conn.execute("UPDATE dead_letters SET requeued_at = ? WHERE id = ?", (now, row["id"]))
                requeued += 1
        return requeued, problems

    # ------------------------------------------------------------------ reading (CLI, metrics, readiness)

    def stats(self) -> InboxStats:
        now = utc_iso(self.clock())
        conn = self._conn()
        pending, due, oldest = conn.execute(
            "SELECT COUNT(*), SUM(next_attempt_at IS NULL OR next_attempt_at <= ?), MIN(received_at) "
            "FROM inbox WHERE status = 'pending'", (now,)).fetchone()
        done = conn.execute("SELECT COUNT(*) FROM inbox WHERE status = 'done'").fetchone()[0]
        dead = conn.execute("SELECT COUNT(*) FROM dead_letters WHERE requeued_at IS NULL").fetchone()[0]
        return InboxStats(int(pending or 0), int(due or 0), int(done or 0), int(dead or 0), oldest)

    def backlog(self, limit: int = 1_000) -> list[InboxRow]:
        rows = self._conn().execute(
            "SELECT id, source, event, entity, entity_id, payload, received_at, attempts, status, last_error "
            "FROM inbox WHERE status = 'pending' ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [InboxRow(**dict(row)) for row in rows]

    def dead_letters(self, limit: int = 1_000, *, include_requeued: bool = False) -> list[DeadLetter]:
        where = "" if include_requeued else "WHERE requeued_at IS NULL"
        rows = self._conn().execute(f"SELECT * FROM dead_letters {where} ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [DeadLetter(**{**dict(row), "truncated": bool(row["truncated"])}) for row in rows]

    def prune(self, older_than: timedelta) -> int:
        """Forget processed events older than `older_than` (dead letters stay until someone deals with them)."""
        cutoff = utc_iso(self.clock() - older_than)
        with self._transaction() as conn:
            return conn.execute("DELETE FROM inbox WHERE status = 'done' AND processed_at < ?", (cutoff,)).rowcount

    def checkpoint(self) -> None:
        """Move the WAL into the database file without waiting for readers (the daemon calls it every minute)."""
        self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)")

    # ------------------------------------------------------------------ small state shared with other parts

    def get_state(self, name: str) -> str | None:
        row = self._conn().execute("SELECT value FROM live_state WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    def set_state(self, name: str, value: str, *, only_if_unset: bool = False) -> str:
        """Store a value; with `only_if_unset` the first writer wins. Returns the value now stored."""
        with self._transaction() as conn:
            if only_if_unset:
                conn.execute("INSERT OR IGNORE INTO live_state (name, value, updated) VALUES (?, ?, ?)",
                             (name, value, utc_iso(self.clock())))
            else:
                conn.execute("INSERT INTO live_state (name, value, updated) VALUES (?, ?, ?) "
                             "ON CONFLICT(name) DO UPDATE SET value = excluded.value, updated = excluded.updated",
                             (name, value, utc_iso(self.clock())))
            return str(conn.execute("SELECT value FROM live_state WHERE name = ?", (name,)).fetchone()[0])

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Commit what is queued, stop the writer, close the connections."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._writer.join(timeout=30)
        with self._connections_lock:
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._connections.clear()

    def __enter__(self) -> Inbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # settling events is not an acknowledgement: NORMAL (a crash may redo the last settle; harmless)
            conn = connect(self.path)
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn())


class _AsyncWaiter:
    """An asyncio future waiting for a group commit, with the loop it belongs to."""

    __slots__ = ("loop", "future")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[list[int]]) -> None:
        self.loop = loop
        self.future = future


_Waiter = concurrent.futures.Future  # a blocking caller's, or an _AsyncWaiter


def _settle(outcomes: list[tuple[Any, list[int] | BaseException]]) -> None:
    """Hand each waiter its ids (or the error): thread futures directly, each event loop in one call."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[list[int]], Any]]] = {}
    for waiter, outcome in outcomes:
        if isinstance(waiter, _AsyncWaiter):
            by_loop.setdefault(waiter.loop, []).append((waiter.future, outcome))
        elif not waiter.done():
            if isinstance(outcome, BaseException):
                waiter.set_exception(outcome)
            else:
                waiter.set_result(outcome)
    for loop, pairs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve_async, pairs)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more


def _resolve_async(pairs: list[tuple[asyncio.Future[list[int]], Any]]) -> None:
    for future, outcome in pairs:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT on one connection (ROLLBACK on error)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _truncate(text: str) -> tuple[str, bool]:
    encoded = text.encode("utf-8")
    if len(encoded) <= DEAD_PAYLOAD_LIMIT:
        return text, False
    return encoded[:DEAD_PAYLOAD_LIMIT].decode("utf-8", errors="ignore"), True


def _chunks(ids: list[int], size: int = 500) -> Iterable[list[int]]:
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


def _marks(chunk: Sequence[Any]) -> str:
    return ",".join("?" * len(chunk))


def payload_json(data: Any) -> str:
    """A source that gets structured data (offline events, amoCRM) stores it as JSON text."""
    return json.dumps(data, ensure_ascii=False, sort_keys=True, default=str)


__all__ = ["DEAD", "DONE", "DeadLetter", "Inbox", "InboxEvent", "InboxRow", "InboxStats", "PENDING", "payload_json",
           "utc_iso"]

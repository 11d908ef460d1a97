"""The `actions` table: outbox and audit log of every write to the CRM (intent before, result after), and its queries."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Any

from crmbridge.cache.store import Cache
from crmbridge.enforce.plan import Action, ActionKind

INTENT = "intent"  # recorded before the write: if found by a later run, the outcome is unknown until reconciled
DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"  # an unknown outcome no longer needed: the violation is gone and nothing was found
GIVEN_UP = "given_up"  # not a status: a failed action sent `max_sends_total` times is not sent again


def utc_now() -> datetime:
    return datetime.now(UTC)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str, separators=(",", ":"))


@contextmanager
def _write_transaction(cache: Cache) -> Iterator[Cache]:
    """`BEGIN IMMEDIATE`: SQLite's write lock is taken before anything is read. A deferred transaction that reads
    and then writes fails at once with SQLITE_BUSY (no busy timeout) when another connection wrote in between;
    this one waits its turn (the connection's busy timeout) and then reads what the other one committed."""
    if cache.db.conn.in_transaction:  # inside a caller's transaction: its lock, its commit
        with cache.atomic():
            yield cache
        return
    cache.db.execute("BEGIN IMMEDIATE")
    try:
        yield cache
    except BaseException:
        cache.db.rollback()
        raise
    cache.db.execute("COMMIT")


def _lock_holder(value: Any) -> tuple[str, str]:
    holder, _, since = str(value).partition("@")
    return holder, since


@dataclass(frozen=True)
class LogEntry:
    """One row of `crmbridge log`."""

    id: int
    when: str
    rule: str
    deal: int
    kind: str
    status: str
    summary: str
    reason: str
    crm_ids: list[str]
    error: str | None
    idempotency_key: str
    attempts: int
    payload: dict[str, Any]
    result: Any

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class AuditLog:
    """Reads and writes the `actions` table; each write of a chunk is one transaction."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    # ------------------------------------------------------------ outbox

    def rows_for(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start:start + 500])
            marks = ",".join("?" * len(chunk))
            for row in self.cache.query(f"SELECT * FROM actions WHERE idempotency_key IN ({marks})", chunk):
                rows[row["idempotency_key"]] = row
        return rows

    @staticmethod
    def settled(row: Mapping[str, Any] | None, max_sends_total: int) -> str | None:
        """Why an action needs no (further) send, from its row (None: never recorded): DONE, written already;
        GIVEN_UP, failed after `max_sends_total` sends. None: it is (still) to be sent."""
        if row is None:
            return None
        if row["status"] == DONE:
            return DONE
        if row["status"] == FAILED and row["attempts"] >= max_sends_total:
            return GIVEN_UP
        return None

    def record_intents(self, actions: Sequence[tuple[Action, Mapping[str, Any]]], run_id: str, now: datetime) -> None:
        """Before the write: the action exists as an intent, with the exact payload about to be sent."""
        stamp = now.astimezone(UTC).isoformat()
        with self.cache.atomic():
            for action, params in actions:
                self.cache.db.execute(
                    """
                    INSERT INTO actions (idempotency_key, marker, run_id, planned, updated, rule, deal_id, kind, method,
                                         payload, summary, reason, clause, violation_keys, recipient_id, status,
                                         attempts, sent)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'intent', 1, ?)
                    ON CONFLICT(idempotency_key) DO UPDATE SET
                        run_id = excluded.run_id, updated = excluded.updated, payload = excluded.payload,
                        status = 'intent', attempts = actions.attempts + 1, sent = excluded.sent
                    """,
                    [action.idempotency_key, action.marker, run_id, stamp, stamp, action.rule, int(action.deal),
                     action.kind.value, action.method, _json(dict(params)), action.summary, action.reason,
                     action.clause, _json(list(action.violation_keys)),
                     int(action.recipient) if action.recipient and action.recipient.isdigit() else None, stamp],
                )

    def record_outcomes(self, done: Iterable[tuple[str, Any, list[str]]], failed: Iterable[tuple[str, str]],
                        now: datetime, *, found: bool = False) -> None:
        """After the write: results (with the ids the CRM created) and errors, in one transaction."""
        stamp = now.astimezone(UTC).isoformat()
        with self.cache.atomic():
            for key, result, crm_ids in done:
                self.cache.db.execute(
                    "UPDATE actions SET status = 'done', result = ?, crm_ids = ?, error = NULL, updated = ?, done = ? "
                    "WHERE idempotency_key = ?",
                    [_json({"found": result} if found else result), _json(crm_ids), stamp, stamp, key])
            for key, error in failed:
                self.cache.db.execute(
                    "UPDATE actions SET status = 'failed', error = ?, updated = ? WHERE idempotency_key = ?",
                    [error, stamp, key])

    def note_error(self, keys: Iterable[str], error: str, now: datetime) -> None:
        """An error that leaves the outcome unknown (the row stays an intent, to be reconciled)."""
        stamp = now.astimezone(UTC).isoformat()
        with self.cache.atomic():
            for key in keys:
                self.cache.db.execute("UPDATE actions SET error = ?, updated = ? WHERE idempotency_key = ?",
                                      [error, stamp, key])

    def pending(self, deal_ids: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """Intents whose outcome is unknown: a run died (or lost an answer) between the write and its result."""
        if deal_ids is None:
            return self.cache.query("SELECT * FROM actions WHERE status = 'intent' ORDER BY id")
        ids = [int(deal_id) for deal_id in deal_ids]
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        return self.cache.query(f"SELECT * FROM actions WHERE status = 'intent' AND deal_id IN ({marks}) ORDER BY id", ids)

    def cancel(self, keys: Iterable[str], now: datetime) -> int:
        stamp = now.astimezone(UTC).isoformat()
        count = 0
        with self.cache.atomic():
            for key in keys:
                count += self.cache.db.execute(
                    "UPDATE actions SET status = 'cancelled', updated = ?, "
                    "error = COALESCE(error, 'no longer needed: the violation was gone before the outcome was known') "
                    "WHERE idempotency_key = ? AND status = 'intent'", [stamp, key]).rowcount
        return count

    # ------------------------------------------------------------ loop guard and round robin

    def reverts_today(self, now: datetime, zone: tzinfo, deal_ids: Iterable[str] | None = None) -> dict[str, int]:
        """Stage reverts written per deal since local midnight (the loop guard's counter)."""
        midnight = datetime.combine(now.astimezone(zone).date(), time(), zone).astimezone(UTC)
        rows = self.cache.query(
            "SELECT deal_id, COUNT(*) AS reverts FROM actions WHERE kind = ? AND status = 'done' AND done >= ? "
            "GROUP BY deal_id", [ActionKind.REVERT_STAGE.value, midnight.isoformat()])
        wanted = None if deal_ids is None else {str(deal_id) for deal_id in deal_ids}
        return {str(row["deal_id"]): int(row["reverts"]) for row in rows
                if wanted is None or str(row["deal_id"]) in wanted}

    def reverted_entries(self) -> dict[str, dict[str, str]]:
        """Deal id -> {stage entry the bridge reverted: the CRM stage it moved the deal back to} (done reverts)."""
        found: dict[str, dict[str, str]] = {}
        for row in self.cache.query("SELECT deal_id, idempotency_key, payload FROM actions WHERE kind = ? AND status = 'done'",
                                    [ActionKind.REVERT_STAGE.value]):
            prefix = f"revert:{row['deal_id']}:"
            if row["idempotency_key"].startswith(prefix):
                target = json.loads(row["payload"]).get("fields", {}).get("STAGE_ID")
                found.setdefault(str(row["deal_id"]), {})[row["idempotency_key"][len(prefix):]] = str(target)
        return found

    def acquire_lock(self, run_id: str, now: datetime, *, stale_after: timedelta = timedelta(minutes=30)) -> str | None:
        """Take the one-writer lock (two overlapping scheduled runs would write twice); None when taken,
        else a description of the run that holds it. A lock older than `stale_after` is a dead run's: taken over
        (a live run refreshes it after each write batch: `refresh_lock`)."""
        stamp = now.astimezone(UTC)
        try:
            with _write_transaction(self.cache):
                rows = self.cache.query("SELECT value FROM enforce_state WHERE name = 'lock'")
                if rows:
                    holder, since = _lock_holder(rows[0]["value"])
                    try:
                        held_since = datetime.fromisoformat(since)
                    except ValueError:
                        held_since = stamp - stale_after
                    if holder != run_id and stamp - held_since < stale_after:
                        return f"run {holder} since {since}"
                self.cache.db.execute("INSERT INTO enforce_state (name, value) VALUES ('lock', ?) "
                                      "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                                      [f"{run_id}@{stamp.isoformat()}"])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            # another process kept the cache's write lock for the whole busy timeout
            return f"a process writing to the cache ({exc})"
        return None

    def refresh_lock(self, run_id: str, now: datetime) -> str | None:
        """Move the lock's time on (after each write batch), so a long run is not taken for a dead one.
        Returns a description of the run that holds the lock when it is no longer this run's (taken over);
        None when refreshed, or when no run holds it (an Executor used without the lock)."""
        stamp = now.astimezone(UTC)
        with _write_transaction(self.cache):
            refreshed = self.cache.db.execute("UPDATE enforce_state SET value = ? WHERE name = 'lock' AND value LIKE ?",
                                              [f"{run_id}@{stamp.isoformat()}", f"{run_id}@%"]).rowcount
            rows = [] if refreshed else self.cache.query("SELECT value FROM enforce_state WHERE name = 'lock'")
        if not rows:
            return None
        holder, since = _lock_holder(rows[0]["value"])
        return f"run {holder} since {since}"

    def release_lock(self, run_id: str) -> None:
        with self.cache.atomic():
            self.cache.db.execute("DELETE FROM enforce_state WHERE name = 'lock' AND value LIKE ?", [f"{run_id}@%"])

    def rotation(self) -> dict[str, int]:
        rows = self.cache.query("SELECT name, value FROM enforce_state WHERE name LIKE 'rotation:%'")
        return {row["name"].split(":", 1)[1]: int(row["value"]) for row in rows}

    def save_rotation(self, rotation: Mapping[str, int]) -> None:
        with self.cache.atomic():
            for team, index in rotation.items():
                self.cache.db.execute("INSERT INTO enforce_state (name, value) VALUES (?, ?) "
                                      "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                                      [f"rotation:{team}", str(index)])

    # ------------------------------------------------------------ the log

    def entries(self, *, deal: int | None = None, since: datetime | None = None, rule: str | None = None,
                status: str | None = None, limit: int | None = None) -> list[LogEntry]:
        """`crmbridge log`: newest first; `since` compares with the last status change."""
        where: list[str] = ["1=1"]
        params: list[Any] = []
        if deal is not None:
            where.append("deal_id = ?")
            params.append(deal)
        if since is not None:
            where.append("updated >= ?")
            params.append(since.astimezone(UTC).isoformat())
        if rule is not None:
            where.append("(',' || rule || ',') LIKE ?")
            params.append(f"%,{rule},%")
        if status is not None:
            where.append("status = ?")
            params.append(status)
        sql = f"SELECT * FROM actions WHERE {' AND '.join(where)} ORDER BY updated DESC, id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [
            LogEntry(row["id"], row["done"] or row["updated"], row["rule"], row["deal_id"], row["kind"], row["status"],
                     row["summary"] or "", row["reason"] or "", json.loads(row["crm_ids"] or "[]"), row["error"],
                     row["idempotency_key"], row["attempts"], json.loads(row["payload"]),
                     json.loads(row["result"]) if row["result"] else None)
            for row in self.cache.query(sql, params)
        ]


def parse_since(text: str, now: datetime) -> datetime:
    """`--since`: an ISO date or date-time, or a span back from now (90m, 2h, 1d, 2w)."""
    from crmbridge.mapping.schema import parse_duration

    value = text.strip()
    try:
        span = parse_duration(value)
    except ValueError:
        span = None
    if span is not None and value:
        return now - span
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--since {text!r}: write a date (2026-11-25), a date-time (2026-11-25T10:00) "
                         "or a span back from now (90m, 2h, 1d, 2w)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=now.tzinfo or UTC)
    return moment


__all__ = ["AuditLog", "CANCELLED", "DONE", "FAILED", "GIVEN_UP", "INTENT", "LogEntry", "parse_since", "utc_now"]

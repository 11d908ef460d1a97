"""The `actions` table (enforcement's outbox and audit log) and `enforce_state`: every SQL statement on them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from crmbridge.cache.store import Cache

#: SQLite's bound-parameter limit is 999 on old builds: IN lists go in chunks of this many
_CHUNK = 500


def _chunks(values: Sequence[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield list(values[start:start + _CHUNK])


class ActionsRepository:
    """Reads and writes `actions` and `enforce_state`; callers pass plain values (rows as dicts, ISO stamps)."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    # ------------------------------------------------------------ outbox rows

    def by_keys(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Rows by idempotency key (keys never recorded are absent)."""
        rows: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            for row in self.cache.query(f"SELECT * FROM actions WHERE idempotency_key IN ({marks})", chunk):
                rows[row["idempotency_key"]] = row
        return rows

    def by_groups(self, groups: Sequence[str]) -> list[dict[str, Any]]:
        """Every row of these action groups (actions that belong together, e.g. a revert and its comment)."""
        rows: list[dict[str, Any]] = []
        for chunk in _chunks(groups):
            marks = ",".join("?" * len(chunk))
            rows += self.cache.query(f"SELECT * FROM actions WHERE group_key IN ({marks}) ORDER BY id", chunk)
        return rows

    def record_intents(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """One transaction: each row becomes (or again is) an intent with the exact payload about to be sent."""
        with self.cache.atomic():
            for row in rows:
                self.cache.db.execute(
                    """
                    INSERT INTO actions (idempotency_key, marker, run_id, planned, updated, rule, deal_id, kind, method,
                                         payload, summary, reason, clause, violation_keys, recipient_id, group_key,
                                         status, attempts, sent)
                    VALUES (:idempotency_key, :marker, :run_id, :stamp, :stamp, :rule, :deal_id, :kind, :method,
                            :payload, :summary, :reason, :clause, :violation_keys, :recipient_id, :group_key,
                            'intent', 1, :stamp)
                    ON CONFLICT(idempotency_key) DO UPDATE SET
                        run_id = excluded.run_id, updated = excluded.updated, payload = excluded.payload,
                        group_key = COALESCE(actions.group_key, excluded.group_key), status = 'intent',
                        attempts = actions.attempts + 1, sent = excluded.sent
                    """,
                    dict(row),
                )

    def record_outcomes(self, done: Iterable[tuple[str, str, str]], failed: Iterable[tuple[str, str]],
                        stamp: str) -> None:
        """One transaction: (key, result JSON, CRM ids JSON) become done, (key, error) failed."""
        with self.cache.atomic():
            for key, result, crm_ids in done:
                self.cache.db.execute(
                    "UPDATE actions SET status = 'done', result = ?, crm_ids = ?, error = NULL, updated = ?, done = ? "
                    "WHERE idempotency_key = ?", [result, crm_ids, stamp, stamp, key])
            for key, error in failed:
                self.cache.db.execute("UPDATE actions SET status = 'failed', error = ?, updated = ? WHERE idempotency_key = ?",
                                      [error, stamp, key])

    def note_error(self, keys: Iterable[str], error: str, stamp: str) -> None:
        with self.cache.atomic():
            for key in keys:
                self.cache.db.execute("UPDATE actions SET error = ?, updated = ? WHERE idempotency_key = ?",
                                      [error, stamp, key])

    def intents(self, deal_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """Rows still `intent` (all, or of these deals), oldest first."""
        if deal_ids is None:
            return self.cache.query("SELECT * FROM actions WHERE status = 'intent' ORDER BY id")
        rows: list[dict[str, Any]] = []
        for chunk in _chunks(deal_ids):
            marks = ",".join("?" * len(chunk))
            rows += self.cache.query(f"SELECT * FROM actions WHERE status = 'intent' AND deal_id IN ({marks})", chunk)
        return sorted(rows, key=lambda row: row["id"])

    def cancel(self, keys: Iterable[str], reason: str, stamp: str) -> int:
        """Intents that will not be sent: `cancelled` with the reason (an error already noted is kept)."""
        count = 0
        with self.cache.atomic():
            for key in keys:
                count += self.cache.db.execute(
                    "UPDATE actions SET status = 'cancelled', updated = ?, error = COALESCE(error, ?) "
                    "WHERE idempotency_key = ? AND status = 'intent'", [stamp, reason, key]).rowcount
        return count

    def done_since(self, kind: str, since: str) -> list[dict[str, Any]]:
        """deal_id and count of done actions of a kind since a moment (the loop guard's counter)."""
        return self.cache.query("SELECT deal_id, COUNT(*) AS count FROM actions WHERE kind = ? AND status = 'done' "
                                "AND done >= ? GROUP BY deal_id", [kind, since])

    def done_of_kind(self, kind: str) -> list[dict[str, Any]]:
        return self.cache.query("SELECT deal_id, idempotency_key, payload FROM actions WHERE kind = ? AND status = 'done'",
                                [kind])

    def log(self, *, deal: int | None = None, since: str | None = None, rule: str | None = None,
            status: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """`crmbridge log`: newest first; `since` compares with the last status change."""
        where: list[str] = ["1=1"]
        params: list[Any] = []
        if deal is not None:
            where.append("deal_id = ?")
            params.append(deal)
        if since is not None:
            where.append("updated >= ?")
            params.append(since)
        if rule is not None:
            where.append("(',' || rule || ',') LIKE ?")
            params.append(f"%,{rule},%")
        if status is not None:
            where.append("status = ?")
            params.append(status)
        sql = f"SELECT * FROM actions WHERE {' AND '.join(where)} ORDER BY updated DESC, id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self.cache.query(sql, params)

    # ------------------------------------------------------------ enforce_state

    def state(self, prefix: str) -> dict[str, str]:
        """`enforce_state` values whose name starts with `prefix`, by the rest of the name."""
        rows = self.cache.query("SELECT name, value FROM enforce_state WHERE name LIKE ?", [prefix + "%"])
        return {row["name"][len(prefix):]: row["value"] for row in rows}

    def save_state(self, prefix: str, values: Mapping[str, str]) -> None:
        with self.cache.atomic():
            for name, value in values.items():
                self.cache.db.execute("INSERT INTO enforce_state (name, value) VALUES (?, ?) "
                                      "ON CONFLICT(name) DO UPDATE SET value = excluded.value", [prefix + name, value])


__all__ = ["ActionsRepository"]

"""The `actions` table (enforcement's outbox and audit log) and `enforce_state`: every SQL statement on them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from crmbridge.cache.tables import Tables

#: SQLite's bound-parameter limit is 999 on old builds: IN lists go in chunks of this many
_CHUNK = 500


def _chunks(values: Sequence[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield list(values[start:start + _CHUNK])


class ActionsRepository:
    """Reads and writes `actions` and `enforce_state`; callers pass plain values (rows as dicts, ISO stamps)."""

    def __init__(self, cache: Tables) -> None:
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

    def record_intents(self, rows: Iterable[Mapping[str, Any]], deliveries: Mapping[str, Sequence[str]] | None = None,
                       ) -> None:
        """One transaction: each row becomes (or again is) an `intent` with the exact payload about to be sent, or,
        with `status: queued`, a notice waiting for its message. `deliveries`: message key -> the notices it carries
        (linked to it in the same transaction, so a notice is in one message at a time)."""
        with self.cache.atomic():
            for row in rows:
                values = {"status": "intent", **row}
                sent = values["status"] == "intent"
                self.cache.db.execute(
                    f"""
                    INSERT INTO actions (idempotency_key, marker, run_id, planned, updated, rule, deal_id, kind, method,
                                         payload, summary, reason, clause, violation_keys, recipient_id, group_key,
                                         status, attempts, sent)
                    VALUES (:idempotency_key, :marker, :run_id, :stamp, :stamp, :rule, :deal_id, :kind, :method,
                            :payload, :summary, :reason, :clause, :violation_keys, :recipient_id, :group_key,
                            :status, {1 if sent else 0}, {':stamp' if sent else 'NULL'})
                    ON CONFLICT(idempotency_key) DO UPDATE SET
                        run_id = excluded.run_id, updated = excluded.updated, payload = excluded.payload,
                        group_key = COALESCE(actions.group_key, excluded.group_key), status = excluded.status,
                        attempts = actions.attempts + {1 if sent else 0}, sent = excluded.sent, delivered_by = NULL
                    """,
                    values,
                )
            for message, notices in (deliveries or {}).items():
                for chunk in _chunks(list(notices)):
                    marks = ",".join("?" * len(chunk))
                    self.cache.db.execute(f"UPDATE actions SET delivered_by = ? WHERE status = 'queued' "
                                          f"AND idempotency_key IN ({marks})", [message, *chunk])

    def record_outcomes(self, done: Iterable[tuple[str, str, str]], failed: Iterable[tuple[str, str]],
                        stamp: str) -> None:
        """One transaction: (key, result JSON, CRM ids JSON) become done, (key, error) failed; the notices a done
        message carried are done with it, those of a failed one fail with its error."""
        with self.cache.atomic():
            for key, result, crm_ids in done:
                self.cache.db.execute(
                    "UPDATE actions SET status = 'done', result = ?, crm_ids = ?, error = NULL, updated = ?, done = ? "
                    "WHERE idempotency_key = ?", [result, crm_ids, stamp, stamp, key])
                self.cache.db.execute(
                    "UPDATE actions SET status = 'done', result = json_object('message', ?), crm_ids = ?, updated = ?, "
                    "done = ? WHERE delivered_by = ? AND status = 'queued'", [key, crm_ids, stamp, stamp, key])
            for key, error in failed:
                self.cache.db.execute("UPDATE actions SET status = 'failed', error = ?, updated = ? WHERE idempotency_key = ?",
                                      [error, stamp, key])
                self.cache.db.execute("UPDATE actions SET status = 'failed', error = ?, updated = ? "
                                      "WHERE delivered_by = ? AND status = 'queued'", [f"message {key}: {error}", stamp, key])

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

    def failed(self) -> list[dict[str, Any]]:
        return self.cache.query("SELECT * FROM actions WHERE status = 'failed' ORDER BY id")

    def cancel(self, keys: Iterable[str], reason: str, stamp: str) -> int:
        """Intents (or queued notices) that will not be sent: `cancelled` with the reason (an error already noted is
        kept); the notices a cancelled message carried wait for another message."""
        count = 0
        with self.cache.atomic():
            for key in keys:
                count += self.cache.db.execute(
                    "UPDATE actions SET status = 'cancelled', updated = ?, error = COALESCE(error, ?) "
                    "WHERE idempotency_key = ? AND status IN ('intent', 'queued')", [stamp, reason, key]).rowcount
                self.cache.db.execute("UPDATE actions SET delivered_by = NULL, updated = ? "
                                      "WHERE delivered_by = ? AND status = 'queued'", [stamp, key])
        return count

    def queued(self) -> list[dict[str, Any]]:
        """Notices no message carries yet, oldest first."""
        return self.cache.query("SELECT * FROM actions WHERE status = 'queued' AND delivered_by IS NULL ORDER BY id")

    def messages_since(self, since: str) -> list[dict[str, Any]]:
        """Messages sent (or in flight) since a moment: idempotency_key, recipient_id (daily caps, daily summary)."""
        return self.cache.query("SELECT idempotency_key, recipient_id FROM actions WHERE kind = 'message' "
                                "AND status IN ('done', 'intent') AND COALESCE(sent, planned) >= ?", [since])

    def done_by_kind_since(self, since: str | None) -> dict[str, int]:
        """Writes done since a moment (all, without one), by kind; notices count as the messages that carried them."""
        rows = self.cache.query("SELECT kind, COUNT(*) AS count FROM actions WHERE status = 'done' AND done >= ? "
                                "AND kind != 'notify' GROUP BY kind", [since or ""])
        return {row["kind"]: int(row["count"]) for row in rows}

    def first_done(self, key_prefix: str) -> dict[str, Any] | None:
        """The oldest done action whose key starts with `key_prefix`."""
        rows = self.cache.query("SELECT * FROM actions WHERE status = 'done' AND substr(idempotency_key, 1, ?) = ? "
                                "ORDER BY id LIMIT 1", [len(key_prefix), key_prefix])
        return rows[0] if rows else None

    def last_done(self, key_prefix: str) -> str | None:
        """When the newest done action whose key starts with `key_prefix` was done (None: never)."""
        rows = self.cache.query("SELECT MAX(done) AS done FROM actions WHERE status = 'done' "
                                "AND substr(idempotency_key, 1, ?) = ?", [len(key_prefix), key_prefix])
        return rows[0]["done"] if rows else None

    def done_since(self, kind: str, since: str) -> list[dict[str, Any]]:
        """deal_id and count of done actions of a kind since a moment (the loop guard's counter)."""
        return self.cache.query("SELECT deal_id, COUNT(*) AS count FROM actions WHERE kind = ? AND status = 'done' "
                                "AND done >= ? GROUP BY deal_id", [kind, since])

    def done_of_kind(self, kind: str) -> list[dict[str, Any]]:
        return self.cache.query("SELECT deal_id, idempotency_key, payload FROM actions WHERE kind = ? AND status = 'done'",
                                [kind])

    def reverted_entries(self) -> dict[str, dict[str, str]]:
        """Deal id -> {stage entry the bridge reverted: the CRM stage it moved the deal back to} (done reverts)."""
        found: dict[str, dict[str, str]] = {}
        for row in self.done_of_kind("revert_stage"):
            prefix = f"revert:{row['deal_id']}:"
            if row["idempotency_key"].startswith(prefix):
                payload = json.loads(row["payload"])
                # Bitrix24 crm.deal.update {"fields": {"STAGE_ID"}}; amoCRM PATCH /api/v4/leads item {"status_id"}
                target = payload.get("fields", {}).get("STAGE_ID") or payload.get("status_id")
                found.setdefault(str(row["deal_id"]), {})[row["idempotency_key"][len(prefix):]] = str(target)
        return found

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

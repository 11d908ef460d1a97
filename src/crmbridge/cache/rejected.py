"""The `rejected_records` table: portal records crmbridge could not use, kept raw for a person to inspect."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crmbridge.cache.tables import Tables

#: longest text kept of one value of a rejected record (a 300 MB title is not copied into the cache)
KEEP_CHARS = 2000
#: longest raw JSON kept of one rejected record
KEEP_JSON = 64 * 1024


@dataclass(frozen=True)
class Rejected:
    """One record a sync skipped: which list it came from, its id as sent (if any), why, and the record."""

    entity: str  # the cache table it was meant for: deals, contacts, tasks, ...
    record_id: str | None  # the id as the portal sent it; None when it had none
    reason: str
    raw: Any

    @property
    def label(self) -> str:
        """`deal 17`, `contact without an ID`: how messages name it."""
        word = ENTITY_WORDS.get(self.entity, self.entity)
        if self.record_id in (None, ""):
            return f"a {word} without an ID"
        shown = self.record_id if len(self.record_id) <= 40 else self.record_id[:40] + "…"
        return f"{word} {shown}"


ENTITY_WORDS = {"deals": "deal", "contacts": "contact", "companies": "company", "users": "user",
                "pipelines": "pipeline", "stages": "stage", "deal_fields": "deal field",
                "stage_history": "stage history row", "tasks": "task", "activities": "to-do"}


def plural(entity: str, count: int) -> str:
    """`1 deal`, `2 deals`, `3 companies` (the word only)."""
    word = ENTITY_WORDS.get(entity, entity)
    if count == 1:
        return word
    return word[:-1] + "ies" if word.endswith("y") else word + "s"


def shortened(value: Any, depth: int = 0) -> Any:
    """The record with long texts cut and deep nesting flattened, so keeping it costs little."""
    if isinstance(value, str):
        return value if len(value) <= KEEP_CHARS else value[:KEEP_CHARS] + f"… ({len(value):,} characters)"
    if depth > 20:
        return "…"
    if isinstance(value, dict):
        return {str(key)[:200]: shortened(item, depth + 1) for key, item in list(value.items())[:500]}
    if isinstance(value, list):
        return [shortened(item, depth + 1) for item in value[:500]]
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def raw_json(raw: Any) -> str:
    text = json.dumps(shortened(raw), ensure_ascii=False, sort_keys=True, default=str)
    if len(text) > KEEP_JSON:
        text = json.dumps({"_shortened": text[:KEEP_JSON]}, ensure_ascii=False)
    return text


class RejectedRecords:
    """Records the last syncs could not use; a record read fine later leaves the table."""

    def __init__(self, cache: Tables) -> None:
        self.cache = cache

    def keep(self, records: Sequence[Rejected], seen_at: str) -> None:
        """Record (or refresh) skipped records; call inside the chunk's transaction."""
        for record in records:
            raw = raw_json(record.raw)
            key = record.record_id if record.record_id not in (None, "") else \
                "sha1:" + hashlib.sha1(raw.encode("utf-8")).hexdigest()
            self.cache.db.execute(
                "INSERT INTO rejected_records (entity, record_key, record_id, reason, raw, seen_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(entity, record_key) DO UPDATE SET reason = excluded.reason, "
                "raw = excluded.raw, seen_at = excluded.seen_at",
                [record.entity, key, record.record_id, record.reason[:500], raw, seen_at])

    def forget(self, entity: str, ids: Iterable[Any]) -> None:
        """Records read fine now are no longer rejected."""
        keys = [str(record_id) for record_id in ids]
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            self.cache.db.execute(f"DELETE FROM rejected_records WHERE entity = ? AND record_key IN "
                                  f"({','.join('?' * len(chunk))})", [entity, *chunk])

    def seen_since(self, entity: str, since: str) -> set[int]:
        """Ids (as integers) of records of `entity` the portal still sent since `since`, though unusable:
        they exist, so a full read must not count them as deleted."""
        ids = set()
        for (record_id,) in self.cache.db.execute(
                "SELECT record_id FROM rejected_records WHERE entity = ? AND seen_at >= ?", [entity, since]):
            try:
                ids.add(int(record_id))
            except (TypeError, ValueError):
                continue
        return ids

    def entities(self) -> set[str]:
        """Tables some kept record was meant for."""
        return {entity for (entity,) in self.cache.db.execute("SELECT DISTINCT entity FROM rejected_records")}

    def count(self) -> int:
        return int(self.cache.db.execute("SELECT COUNT(*) FROM rejected_records").fetchone()[0])

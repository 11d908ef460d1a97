"""Deletion needs evidence: what a full read did not see is read back by id, and a large share waits for a person.

A full sync used to take "not in the list" for "deleted on the portal", so one empty, null or early-ended
answer emptied the cache (and the next enforcement re-created every stage task). Now a record leaves the
cache only when (1) the full read finished, (2) reading its id back says the portal does not have it, and
(3) the records going at once are few, or `--confirm-deletions` says a person expects them to go.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: below this many records a deletion needs no confirmation, whatever their share (a small portal)
CONFIRM_FROM = 10
#: default share of an entity's cached records a run may delete without --confirm-deletions
DEFAULT_MAX_SHARE = 0.1

RawRecord = dict[str, Any]


@dataclass
class ReadBack:
    """The portal's answer about ids a full read did not see, read one by one (or by `@ID`)."""

    found: list[RawRecord] = field(default_factory=list)  # still there: the list missed them
    missing: list[int] = field(default_factory=list)  # the portal says it has no such record
    unknown: list[int] = field(default_factory=list)  # the read-back failed: nothing is concluded about them


@dataclass
class DeletionVerdict:
    """What a full read of one entity may delete, and what it tells the admin."""

    entity: str
    vanished: int  # cached records the full read did not see
    delete: list[int] = field(default_factory=list)  # confirmed gone: leave the cache now
    held: list[int] = field(default_factory=list)  # confirmed or not, too many at once: kept until confirmed
    unknown: int = 0
    restored: int = 0  # found by id after the list missed them

    @property
    def warning(self) -> str | None:
        words = ENTITY_WORDS.get(self.entity, self.entity)
        parts = []
        if self.held:
            parts.append(f"{len(self.held):,} of the cached {words} were not in the portal's list; "
                         f"nothing was removed (more than the share a sync removes on its own). If they were "
                         f"really deleted on the portal, run `crmbridge sync --full --confirm-deletions`")
        if self.restored:
            parts.append(f"{self.restored:,} {words} missing from the portal's list were read by id and kept "
                         f"(the list ended early)")
        if self.unknown:
            parts.append(f"{self.unknown:,} {words} missing from the list could not be read back; they stay "
                         f"in the cache until a later full sync can tell")
        return "; ".join(parts) or None


ENTITY_WORDS = {"deals": "deals", "tasks": "tasks", "activities": "to-dos"}


def needs_confirmation(count: int, cached: int, max_share: float) -> bool:
    """Whether deleting `count` of `cached` records at once is more than a sync does without a person's word."""
    if count < CONFIRM_FROM:
        return False
    return cached <= 0 or count / cached > max_share


def verdict(entity: str, vanished: Sequence[int], cached: int, read_back: ReadBack | None, *,
            max_share: float, confirmed: bool) -> DeletionVerdict:
    """Decide from the ids a full read did not see and (when it was worth asking) the portal's read-back.

    `read_back` is None when the ids were not read back because too many vanished to delete them without a
    confirmation anyway: they are all held, and the next confirmed full sync reads them back.
    """
    result = DeletionVerdict(entity, len(vanished))
    if not vanished:
        return result
    if read_back is None:
        result.held = list(vanished)
        return result
    result.restored = len(read_back.found)
    result.unknown = len(read_back.unknown)
    gone = list(read_back.missing)
    if gone and not confirmed and needs_confirmation(len(gone), cached, max_share):
        result.held = gone
    else:
        result.delete = gone
    return result


def worth_reading_back(vanished: int, cached: int, *, max_share: float, confirmed: bool) -> bool:
    """Reading ids back costs a request per 50 (tasks) or 2,500 (deals); skip it when its answer could not
    lead to a deletion anyway (too many vanished, no confirmation): they are held either way."""
    return vanished > 0 and (confirmed or not needs_confirmation(vanished, cached, max_share))

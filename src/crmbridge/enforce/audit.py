"""Enforcement's outbox and audit log in the words of actions: intent before each write, result after (SQL in cache/actions.py)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, tzinfo
from typing import Any

from crmbridge.cache.actions import ActionsRepository
from crmbridge.cache.store import Cache
from crmbridge.enforce.plan import Action, ActionKind

INTENT = "intent"  # recorded before the write: if found by a later run, the outcome is unknown until reconciled
QUEUED = "queued"  # a notice waiting for the message (digest) that will carry it
DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"  # never sent, or looked up and not found, and no longer needed (the violation is gone)
GIVEN_UP = "given_up"  # not a status: a failed action sent `max_sends_total` times is not sent again
STATUSES = (INTENT, QUEUED, DONE, FAILED, CANCELLED)


def utc_now() -> datetime:
    return datetime.now(UTC)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str, separators=(",", ":"))


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


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
    """The outbox and audit log of enforcement in the words of actions; the SQL is in `cache.actions`."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.rows = ActionsRepository(cache)

    # ------------------------------------------------------------ outbox

    def rows_for(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        return self.rows.by_keys(keys)

    @staticmethod
    def settled(row: Mapping[str, Any] | None, max_sends_total: int) -> str | None:
        """Why an action needs no (further) send, from its row (None: never recorded): DONE, written already;
        QUEUED, a notice waiting for its message; GIVEN_UP, failed after `max_sends_total` sends. None: it is
        (still) to be sent."""
        if row is None:
            return None
        if row["status"] in (DONE, QUEUED):
            return row["status"]
        if row["status"] == FAILED and row["attempts"] >= max_sends_total:
            return GIVEN_UP
        return None

    def record_intents(self, actions: Sequence[tuple[Action, Mapping[str, Any]]], run_id: str, now: datetime) -> None:
        """Before the write: the action exists as an intent, with the exact payload about to be sent."""
        stamp = _stamp(now)
        self.rows.record_intents(
            ({"idempotency_key": action.idempotency_key, "marker": action.marker, "run_id": run_id, "stamp": stamp,
              "rule": action.rule, "deal_id": int(action.deal), "kind": action.kind.value, "method": action.method,
              "payload": _json(dict(params)), "summary": action.summary, "reason": action.reason,
              "clause": action.clause, "violation_keys": _json(list(action.violation_keys)),
              "recipient_id": int(action.recipient) if action.recipient and action.recipient.isdigit() else None,
              "group_key": action.group or action.idempotency_key,
              # a notice waits for its message; one a CRM's dialect made a write of its own (amoCRM) is an intent
              "status": QUEUED if action.kind is ActionKind.NOTIFY and not action.crm_method else INTENT}
             for action, params in actions),
            {action.idempotency_key: action.items for action, _ in actions if action.items})

    def record_outcomes(self, done: Iterable[tuple[str, Any, list[str]]], failed: Iterable[tuple[str, str]],
                        now: datetime, *, found: bool = False) -> None:
        """After the write: results (with the ids the CRM created) and errors, in one transaction."""
        self.rows.record_outcomes(((key, _json({"found": result} if found else result), _json(crm_ids))
                                   for key, result, crm_ids in done), failed, _stamp(now))

    def note_error(self, keys: Iterable[str], error: str, now: datetime) -> None:
        """An error that leaves the outcome unknown (the row stays an intent, to be reconciled)."""
        self.rows.note_error(keys, error, _stamp(now))

    def pending(self, deal_ids: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """Intents whose outcome is unknown: a run died (or lost an answer) between the write and its result."""
        return self.rows.intents(None if deal_ids is None else [int(deal_id) for deal_id in deal_ids])

    def cancel(self, keys: Iterable[str], now: datetime,
               reason: str = "no longer needed: the violation was gone before the outcome was known") -> int:
        return self.rows.cancel(keys, reason, _stamp(now))

    # ------------------------------------------------------------ groups and messages

    def owed(self, exclude: Iterable[str] = ()) -> list[dict[str, Any]]:
        """Rows to complete whatever the plan now says: members of a group some of which landed (a revert landed, its
        comment did not) that are intents looked up and not found, or failed and not given up. Messages and notices
        have their own way (digests); `exclude`: keys not to send (their lookup failed: they may have landed)."""
        skip = set(exclude)
        pending = [row for row in self.rows.intents() + self.rows.failed()
                   if row["kind"] not in (ActionKind.NOTIFY.value, ActionKind.MESSAGE.value)
                   and row["idempotency_key"] not in skip and row["group_key"]]
        groups = sorted({row["group_key"] for row in pending})
        landed = {row["group_key"] for row in self.rows.by_groups(groups) if row["status"] == DONE}
        return [row for row in pending if row["group_key"] in landed]

    def queued(self) -> list[dict[str, Any]]:
        """Notices no message carries yet, oldest first."""
        return self.rows.queued()

    def groups_landed(self, groups: Iterable[str]) -> set[str]:
        """The groups with at least one member done."""
        return {row["group_key"] for row in self.rows.by_groups(sorted(set(groups))) if row["status"] == DONE}

    def messages_today(self, now: datetime, zone: tzinfo) -> tuple[dict[str, int], frozenset[str]]:
        """Messages each person got today (done or in flight), and the heads whose daily summary exists."""
        midnight = datetime.combine(now.astimezone(zone).date(), time(), zone)
        counts: dict[str, int] = {}
        summaries: set[str] = set()
        for row in self.rows.messages_since(_stamp(midnight)):
            user = str(row["recipient_id"])
            counts[user] = counts.get(user, 0) + 1
            if row["idempotency_key"].startswith("summary:"):
                summaries.add(user)
        return counts, frozenset(summaries)

    def a_digest(self) -> str | None:
        """The text of the first digest sent (the demo shows it)."""
        row = self.rows.first_done("message:")
        return str(json.loads(row["payload"]).get("MESSAGE") or "") if row is not None else None

    def done_since_summary(self, user: str) -> dict[str, int]:
        """crmbridge's writes by kind since `user`'s last summary (all of them before the first one)."""
        return self.rows.done_by_kind_since(self.rows.last_done(f"summary:{user}:"))

    # ------------------------------------------------------------ loop guard and round robin

    def reverts_today(self, now: datetime, zone: tzinfo, deal_ids: Iterable[str] | None = None) -> dict[str, int]:
        """Stage reverts written per deal since local midnight (the loop guard's counter)."""
        midnight = datetime.combine(now.astimezone(zone).date(), time(), zone)
        rows = self.rows.done_since(ActionKind.REVERT_STAGE.value, _stamp(midnight))
        wanted = None if deal_ids is None else {str(deal_id) for deal_id in deal_ids}
        return {str(row["deal_id"]): int(row["count"]) for row in rows
                if wanted is None or str(row["deal_id"]) in wanted}

    def reverted_entries(self) -> dict[str, dict[str, str]]:
        """Deal id -> {stage entry the bridge reverted: the CRM stage it moved the deal back to} (done reverts)."""
        return self.rows.reverted_entries()

    def rotation(self) -> dict[str, int]:
        return {team: int(index) for team, index in self.rows.state("rotation:").items()}

    def save_rotation(self, rotation: Mapping[str, int]) -> None:
        self.rows.save_state("rotation:", {team: str(index) for team, index in rotation.items()})

    # ------------------------------------------------------------ the log

    def entries(self, *, deal: int | None = None, since: datetime | None = None, rule: str | None = None,
                status: str | None = None, limit: int | None = None) -> list[LogEntry]:
        """`crmbridge log`: newest first; `since` compares with the last status change."""
        return [
            LogEntry(row["id"], row["done"] or row["updated"], row["rule"], row["deal_id"], row["kind"], row["status"],
                     row["summary"] or "", row["reason"] or "", json.loads(row["crm_ids"] or "[]"), row["error"],
                     row["idempotency_key"], row["attempts"], json.loads(row["payload"]),
                     json.loads(row["result"]) if row["result"] else None)
            for row in self.rows.log(deal=deal, since=None if since is None else _stamp(since), rule=rule,
                                     status=status, limit=limit)
        ]


def parse_since(text: str, now: datetime) -> datetime:
    """`--since`: an ISO date or date-time (1970..9999), or a span back from now (90m, 2h, 1d, 2w)."""
    from crmbridge.mapping.schema import parse_duration

    value = text.strip()
    try:
        span = parse_duration(value)
    except ValueError as bad:
        if "too long" in str(bad):
            raise ValueError(f"--since {text!r}: {str(bad).split(' — ')[0]}") from None
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
    try:
        in_utc = moment.astimezone(UTC)
    except OverflowError:
        in_utc = None
    if in_utc is None or not 1970 <= in_utc.year <= 9998:
        raise ValueError(f"--since {text!r}: the date is out of range; write one between 1970 and 9998")
    return moment


__all__ = ["AuditLog", "CANCELLED", "DONE", "FAILED", "GIVEN_UP", "INTENT", "LogEntry", "QUEUED", "STATUSES", "parse_since",
           "utc_now"]

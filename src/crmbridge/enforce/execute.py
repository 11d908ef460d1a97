"""Execution (edge): actions go out in batches of 50, each written exactly once and recorded in the audit log.

Exactly once, the way it holds here: the intent (with the exact payload) is committed before a batch is
sent, the result after it. A write batch is never repeated blindly: when its answer is lost (no answer,
5xx, HTML) the actions may or may not have landed, so they are looked up in the CRM first: a task, to-do
or comment by the marker crmbridge put into its text, a deal update by reading the deal back. Only what is
not found is sent again. A run killed between intent and result leaves intents that the next run
reconciles the same way before writing. An action whose lookup fails (the CRM did not answer it) stays an
intent and is not sent by this run: it may have landed, and a later run's reconciliation looks again.
Messages to people go through the `chat` channel (im.message.add to the person's private dialog) and are read
back the same way (im.dialog.messages.get, by the marker at their end). The `notify` channel
(im.notify.system.add) has no read-back: a lost answer is sent again, which through a webhook deduplicates only
with CLIENT_ID (the docs: TAG is unique within an application) — see the README for what each channel guarantees.
An answer without an id (`false`: "not created") is never recorded as done: the action is sent again.
Notices (kind notify) are not sent at all: they are recorded `queued` with their group's intents, and a message
(enforce/digest.py) carries them later; a message done makes its notices done in the same transaction. (On amoCRM,
which has no notification API, the dialect turns a notice into a task for its recipient: it is written like any
other action.)
A command the portal refused for a limit (rate, operating time) did not run and goes into a later batch;
one it rejected is recorded as failed with the CRM's error, and retried by later runs up to a limit.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Protocol

from crmbridge.cache.lock import WriterLock
from crmbridge.connectors.bitrix24.client import MAX_BATCH, Bitrix24Client
from crmbridge.enforce.audit import DONE, GIVEN_UP, INTENT, QUEUED, AuditLog, utc_now
from crmbridge.enforce.plan import DEAL_OWNER_TYPE, METHODS, UPDATING, Action, ActionKind, same_value
from crmbridge.errors import CrmError, OperatingTimeExceeded, RateLimited

log = logging.getLogger("crmbridge.enforce")

#: sends of one action within one run before its outcome is left to the next run
MAX_SENDS_PER_RUN = 6
#: sends of one action over all runs before a failed action is given up (it stays in the log as failed)
MAX_SENDS_TOTAL = 12
#: kinds that create something and answer its id: an answer without one (`false`) means nothing was created
_CREATING = frozenset({ActionKind.CREATE_TASK, ActionKind.CREATE_TODO, ActionKind.COMMENT, ActionKind.MESSAGE})
#: how far back (pages of 50) a lost chat message is looked for, and the clock difference allowed for
MESSAGE_PAGES = 10
MESSAGE_CLOCK_SKEW = timedelta(minutes=5)
#: a lookup that could not read far enough
_UNKNOWN = object()


@dataclass
class ExecutionSummary:
    """What one execution did; `crmbridge enforce --json` prints it."""

    planned: int = 0
    already_done: int = 0  # written by an earlier run (same idempotency key)
    given_up: int = 0  # failed too often before; left as failed in the log
    sent: int = 0  # commands sent (a command sent twice counts twice)
    done: int = 0
    failed: int = 0
    found_after_lost_answer: int = 0  # landed although the answer was lost (found by marker / read-back)
    unknown: int = 0  # outcome still unknown at the end (left as intents for the next run)
    queued: int = 0  # notices recorded for a message (digest) to carry
    batches: int = 0
    http_requests: int = 0
    done_by_kind: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Reconciliation(NamedTuple):
    """What `Executor.reconcile` made of the intents earlier runs left."""

    found: int  # in the CRM after all: recorded as done
    not_found: int  # looked up and not there (or not to be looked up: notifications): sent again by this run
    unknown: frozenset[str]  # keys whose lookup failed: left as intents, not sent by this run; a later run looks again


@dataclass
class _Pending:
    action: Action
    params: Mapping[str, Any]
    sends: int = 0
    sent_at: str | None = None  # when it was last sent (UTC ISO): a message lookup reads back to there


#: what a CRM's writer sees of each action: the action and the exact payload recorded as its intent
Pending = _Pending


@dataclass
class WriteOutcome:
    """What one write round did, per idempotency key (a key absent from all four was not in the round)."""

    done: dict[str, tuple[Any, list[str]]] = field(default_factory=dict)  # landed: (what to keep, CRM ids)
    failed: dict[str, str] = field(default_factory=dict)  # rejected by the CRM: its error
    again: set[str] = field(default_factory=set)  # refused before running (a limit): send again
    lost: set[str] = field(default_factory=set)  # no answer (5xx, dropped): may have landed, look in the CRM
    #: why a whole request was refused or lost (recorded on the intents); empty when every answer came
    notes: dict[str, str] = field(default_factory=dict)


class ActionWriter(Protocol):
    """How actions reach one CRM: the batches it takes, the write, and the look-up after a lost answer."""

    client: Any  # has `requests_made`

    def next_chunk(self, queue: deque[_Pending]) -> list[_Pending]:
        """The next round's actions, taken from the front of the queue (whole groups where the CRM allows)."""
        ...

    def write(self, chunk: list[_Pending]) -> WriteOutcome:
        """Send one round; raise a non-retryable CrmError (auth, rejected request) to stop the run."""
        ...

    def look_up(self, chunk: Sequence[_Pending]) -> tuple[dict[str, tuple[Any, list[str]]], set[str]]:
        """Which of these are in the CRM already ({key: (found, ids)}), and the keys whose look-up failed."""
        ...


class Executor:
    """Writes actions through one CRM's writer (a Bitrix24Client or AmoCRMClient is wrapped in its own) and records
    every outcome in the audit log."""

    def __init__(self, client: Any, audit: AuditLog, *, run_id: str | None = None,
                 lock: WriterLock | None = None, now: Callable[[], datetime] = utc_now,
                 sleep: Callable[[float], None] = time.sleep, max_sends_per_run: int = MAX_SENDS_PER_RUN,
                 max_sends_total: int = MAX_SENDS_TOTAL, checkpoint: Callable[[str], None] | None = None) -> None:
        self.writer: ActionWriter = writer_for(client)
        self.client = self.writer.client
        self.audit = audit
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.lock = lock
        self.now = now
        self.sleep = sleep
        self.max_sends_per_run = max_sends_per_run
        self.max_sends_total = max_sends_total
        #: intents `reconcile` could not look up: this run does not send them (they may have landed)
        self.unresolved: frozenset[str] = frozenset()
        #: called at each step of a batch ("intents" committed, "answer" received, "outcomes" committed; prefixed
        #: "message_" for a batch of messages): the seam the crash tests kill the process at (a no-op otherwise)
        self.checkpoint = checkpoint or (lambda step: None)

    # ------------------------------------------------------------ reconciliation of earlier runs

    def reconcile(self, deal_ids: Iterable[int] | None = None) -> Reconciliation:
        """Look in the CRM for intents an earlier run left (killed, or answers lost). Those found are recorded as
        done; those whose lookup failed stay intents, and `execute` leaves them alone in this run (`unresolved`)."""
        rows = self.audit.pending(deal_ids)
        pending = [_Pending(action_of_row(row), json.loads(row["payload"]), sent_at=row["sent"]) for row in rows]
        found = 0
        unknown: set[str] = set()
        for start in range(0, len(pending), MAX_BATCH):
            hits, lost = self.writer.look_up(pending[start:start + MAX_BATCH])
            self.audit.record_outcomes(((key, result, ids) for key, (result, ids) in hits.items()), (), self.now(),
                                       found=True)
            found += len(hits)
            unknown |= lost
            self._keep_lock()
        self.unresolved = frozenset(unknown)
        return Reconciliation(found, len(rows) - found - len(unknown), self.unresolved)

    # ------------------------------------------------------------ execution

    def execute(self, actions: Sequence[Action]) -> ExecutionSummary:
        summary = ExecutionSummary(planned=len(actions))
        requests_before = self.client.requests_made
        rows = self.audit.rows_for([action.idempotency_key for action in actions])
        queue: deque[_Pending] = deque()
        for action in actions:
            row = rows.get(action.idempotency_key)
            settled = self.audit.settled(row, self.max_sends_total)
            if settled == DONE:
                summary.already_done += 1
                continue
            if settled == GIVEN_UP:
                summary.given_up += 1
                continue
            if settled == QUEUED:
                summary.queued += 1  # a notice recorded earlier, waiting for its message
                continue
            if action.idempotency_key in self.unresolved:
                # reconcile could not look it up: it may have landed, so it is not sent again blindly
                summary.unknown += 1
                summary.errors.append(f"{action.idempotency_key}: outcome unknown (the CRM lookup failed); "
                                      "a later run reconciles it")
                continue
            # an unconfirmed intent goes out exactly as it was recorded: that is what may have landed
            params = json.loads(row["payload"]) if row is not None and row["status"] == INTENT else action.params
            queue.append(_Pending(action, params))
        done_by_kind: dict[str, int] = defaultdict(int)
        queue = deque(_by_group(queue))
        while queue:
            chunk = self.writer.next_chunk(queue)
            retry = self._round(chunk, summary, done_by_kind)
            self._keep_lock()
            for item in retry:
                if item.sends < self.max_sends_per_run:
                    queue.append(item)
                else:
                    summary.unknown += 1
                    summary.errors.append(f"{item.action.idempotency_key}: outcome unknown after {item.sends} sends; "
                                          "the next run reconciles it")
            if retry:
                self.sleep(min(5.0, 0.25 * 2 ** max(item.sends for item in retry)))
        summary.done_by_kind = dict(done_by_kind)
        summary.http_requests = self.client.requests_made - requests_before
        return summary

    def _round(self, chunk: list[_Pending], summary: ExecutionSummary, done_by_kind: dict[str, int]) -> list[_Pending]:
        """One round: intents (and the notices of the same groups, queued), the write, the outcomes. Returns what must
        be sent again."""
        stamp = self.now()
        step = "message_" if chunk[0].action.kind is ActionKind.MESSAGE else ""  # deal writes or messages
        self.audit.record_intents([(item.action, item.params) for item in chunk], self.run_id, stamp)
        self.checkpoint(step + "intents")
        notices = [item for item in chunk if _queued(item.action)]
        summary.queued += len(notices)
        chunk = [item for item in chunk if not _queued(item.action)]
        if not chunk:
            return []
        for item in chunk:
            item.sends += 1
            item.sent_at = stamp.astimezone(UTC).isoformat()
        summary.sent += len(chunk)
        summary.batches += 1
        by_key = {item.action.idempotency_key: item for item in chunk}
        # a non-retryable error (auth, scope, a rejected request) stops the run; the intents are reconciled next time
        outcome = self.writer.write(chunk)
        self.checkpoint(step + "answer")
        for key, note in outcome.notes.items():
            self.audit.note_error([key], note, self.now())
        done: list[tuple[str, Any, list[str]]] = []
        failed = list(outcome.failed.items())
        for key, (result, ids) in outcome.done.items():
            item = by_key[key]
            if item.action.kind in _CREATING and not ids:
                # im.notify.system.add documents `false`: not created. Never done; sent again, then failed
                text = f"the CRM answered {json.dumps(result, default=str)}: not created"
                if item.sends < self.max_sends_per_run:
                    self.audit.note_error([key], text, self.now())
                    outcome.again.add(key)
                else:
                    failed.append((key, text))
                continue
            done.append((key, result, ids))
        if outcome.lost:
            # no answer: the writes may have landed; only what the CRM does not have goes out again
            hits, unknown = self.writer.look_up([by_key[key] for key in sorted(outcome.lost)])
            self.audit.record_outcomes(((key, result, ids) for key, (result, ids) in hits.items()), (), self.now(),
                                       found=True)
            summary.found_after_lost_answer += len(hits)
            summary.done += len(hits)
            summary.unknown += len(unknown)
            for key in hits:
                done_by_kind[by_key[key].action.kind.value] += 1
            outcome.again |= outcome.lost - set(hits) - unknown
        for key, _, _ in done:
            done_by_kind[by_key[key].action.kind.value] += 1
        for key, text in failed:
            action = by_key[key].action
            summary.errors.append(f"{action.rule} deal {action.deal} {action.kind.value}: {text}")
        self.audit.record_outcomes(done, failed, self.now())
        self.checkpoint(step + "outcomes")
        summary.done += len(done)
        summary.failed += len(failed)
        return [item for item in chunk if item.action.idempotency_key in outcome.again]

    def _keep_lock(self) -> None:
        """After each batch: the lock's heartbeat; a run whose lock was broken (`--break-lock`) stops writing
        (LockLost), or both runs would write the same actions."""
        if self.lock is not None:
            self.lock.heartbeat(self.now())

class Bitrix24Writer:
    """Actions as Bitrix24 REST calls: up to 50 commands in one `batch` request; look-ups by marker or read-back."""

    def __init__(self, client: Bitrix24Client) -> None:
        self.client = client

    def next_chunk(self, queue: deque[_Pending]) -> list[_Pending]:
        return _next_chunk(queue)

    def write(self, chunk: list[_Pending]) -> WriteOutcome:
        outcome = WriteOutcome()
        keys = [item.action.idempotency_key for item in chunk]
        commands = {f"a{index}": (item.action.method, dict(item.params)) for index, item in enumerate(chunk)}
        try:
            # one write batch, never repeated by the client: a lost answer may mean it landed (see the module doc)
            answer = self.client.batch(commands, idempotent=False)
        except (RateLimited, OperatingTimeExceeded) as exc:
            # refused before running: nothing landed, the limiter now holds the pace
            outcome.again.update(keys)
            outcome.notes.update(dict.fromkeys(keys, _describe(exc)))
            return outcome
        except CrmError as exc:
            if not exc.retryable:
                raise
            outcome.lost.update(keys)
            outcome.notes.update(dict.fromkeys(keys, _describe(exc)))
            return outcome
        for index, item in enumerate(chunk):
            key, command = item.action.idempotency_key, f"a{index}"
            if command in answer.results:
                outcome.done[key] = _outcome(item.action.kind, answer.results[command])
                continue
            error = answer.errors.get(command)
            if error is not None and error.retryable:
                outcome.again.add(key)  # a limit refused this command: it did not run
                continue
            outcome.failed[key] = _describe(error) if error is not None else "no result and no error for this command"
        return outcome

    def look_up(self, chunk: Sequence[_Pending]) -> tuple[dict[str, tuple[Any, list[str]]], set[str]]:
        """Which of these actions are in the CRM already: {key: (what was found, ids)}, and the keys whose lookup
        failed (outcome still unknown). One lookup per deal (per recipient for messages) and method, all in one
        `batch_calls`; a message not on the newest page of its dialog is looked for further back."""
        calls: dict[tuple[str, str], dict[str, Any]] = {}
        for item in chunk:
            call = lookup_call(item.action)
            if call is not None:
                calls.setdefault((call[0], call[2]), call[1])
        keys = sorted(calls)
        try:
            answers = self.client.batch_calls([(method, calls[method, scope]) for method, scope in keys]) if keys else []
        except CrmError as exc:
            if not exc.retryable:
                raise
            log.warning("looking up %d actions in the CRM failed (%s); their outcome stays unknown", len(chunk), exc)
            answers = [exc] * len(keys)
        answered = dict(zip(keys, answers, strict=True))
        hits: dict[str, tuple[Any, list[str]]] = {}
        unknown: set[str] = set()
        for item in chunk:
            action = item.action
            call = lookup_call(action)
            if call is None:
                continue  # a notification through im.notify.system.add: nothing to read it back by (README)
            answer = answered[call[0], call[2]]
            if isinstance(answer, CrmError):
                unknown.add(action.idempotency_key)
                continue
            if action.kind is ActionKind.MESSAGE:
                row = self._find_message(call[1], answer, action.marker, item.sent_at)
                if row is _UNKNOWN:
                    unknown.add(action.idempotency_key)
                elif row is not None:
                    hits[action.idempotency_key] = ({"message_id": str(row.get("id"))}, [str(row.get("id"))])
                continue
            lookup = _MARKER_LOOKUPS.get(action.kind)
            if lookup is not None:
                row = lookup.find(answer, action.marker)
                if row is not None:
                    crm_id = str(row.get("id") or row.get("ID"))
                    hits[action.idempotency_key] = ({lookup.result_key: crm_id}, [crm_id])
            else:  # UPDATING: read the deal back
                record = answer or {}
                wanted = dict(item.params.get("fields") or {})
                if wanted and all(same_value(record.get(name), value) for name, value in wanted.items()):
                    hits[action.idempotency_key] = ({"deal_fields": wanted}, [])
        return hits, unknown

    def _find_message(self, params: Mapping[str, Any], answer: Any, marker: str, sent_at: str | None) -> Any:
        """The chat message carrying `marker` (a row), None when the dialog provably has none since it was sent, or
        _UNKNOWN when it could not be read back that far. Pages go back (LAST_ID) until messages older than the send."""
        since = datetime.fromisoformat(sent_at) - MESSAGE_CLOCK_SKEW if sent_at else None
        page = answer
        for _ in range(MESSAGE_PAGES):
            rows = ((page or {}).get("messages") or []) if isinstance(page, Mapping) else []
            for row in rows:
                if marker in str(row.get("text") or ""):
                    return row
            if len(rows) < int(params.get("LIMIT", 20)):
                return None  # the whole dialog was read
            oldest = rows[-1]
            try:
                older_than_send = since is not None and datetime.fromisoformat(str(oldest.get("date"))) < since
            except ValueError:
                older_than_send = False
            if older_than_send:
                return None  # everything since the send was read
            try:
                page = self.client.call("im.dialog.messages.get", {**params, "LAST_ID": oldest.get("id")}).result
            except CrmError as exc:
                if not exc.retryable:
                    raise
                return _UNKNOWN
        return _UNKNOWN


def writer_for(client: Any) -> ActionWriter:
    """The writer of the client's CRM; a writer passes through (tests script their own)."""
    if hasattr(client, "write") and hasattr(client, "look_up"):
        return client
    if getattr(client, "crm", None) == "amocrm":
        from crmbridge.connectors.amocrm.writer import AmoCRMWriter

        return AmoCRMWriter(client)
    return Bitrix24Writer(client)


def _by_group(items: Iterable[_Pending]) -> list[_Pending]:
    """The items with each group's members together, groups in the order they first appear."""
    groups: dict[str, list[_Pending]] = {}
    for item in items:
        groups.setdefault(item.action.group or item.action.idempotency_key, []).append(item)
    return [item for members in groups.values() for item in members]


def _next_chunk(queue: deque[_Pending]) -> list[_Pending]:
    """The next write batch: whole groups (a revert and its comment land in one request, or neither does), up to
    MAX_BATCH commands; a group larger than a batch is split. Notices ride along with their group without taking a
    command (they are recorded, not sent)."""
    chunk: list[_Pending] = []
    commands = 0
    while queue and commands < MAX_BATCH:
        group = queue[0].action.group or queue[0].action.idempotency_key
        members: list[_Pending] = []
        for item in queue:
            if (item.action.group or item.action.idempotency_key) != group:
                break
            members.append(item)
        size = sum(not _queued(item.action) for item in members)
        if chunk and commands + size > MAX_BATCH:
            break
        for item in members:
            if not _queued(item.action) and commands >= MAX_BATCH:
                break  # a group larger than a batch: the rest goes into the next one
            chunk.append(queue.popleft())
            commands += not _queued(item.action)
    return chunk


@dataclass(frozen=True)
class _MarkerLookup:
    """How something crmbridge created on a deal is found again by the marker in its text (after a lost answer)."""

    method: str  # the list method
    params: Callable[[str], dict[str, Any]]  # its parameters for one deal (newest first: on the first page)
    text_fields: tuple[str, ...]  # the row's field holding the marker (the first one that is set)
    result_key: str  # what the audit log records: {result_key: id}
    rows_key: str | None = None  # the answer's list when the method wraps it ({"tasks": [...]})

    def find(self, answer: Any, marker: str) -> Mapping[str, Any] | None:
        rows = answer or []
        if isinstance(rows, Mapping):
            rows = rows.get(self.rows_key or "", [])
        for row in rows:
            text = next((row.get(name) for name in self.text_fields if row.get(name)), "")
            if marker in str(text):
                return row
        return None


_MARKER_LOOKUPS: Mapping[ActionKind, _MarkerLookup] = {
    ActionKind.CREATE_TASK: _MarkerLookup(
        "tasks.task.list",
        lambda deal: {"filter": {"UF_CRM_TASK": f"D_{deal}"}, "order": {"ID": "desc"},
                      "select": ["ID", "TITLE", "DESCRIPTION", "UF_CRM_TASK"]},
        ("description", "DESCRIPTION"), "task_id", rows_key="tasks"),
    ActionKind.CREATE_TODO: _MarkerLookup(
        "crm.activity.list",
        lambda deal: {"filter": {"OWNER_TYPE_ID": DEAL_OWNER_TYPE, "OWNER_ID": int(deal), "PROVIDER_ID": "CRM_TODO"},
                      "order": {"ID": "DESC"}, "select": ["ID", "SUBJECT", "DESCRIPTION"]},
        ("DESCRIPTION",), "todo_id"),
    ActionKind.COMMENT: _MarkerLookup(
        "crm.timeline.comment.list",
        lambda deal: {"filter": {"ENTITY_ID": int(deal), "ENTITY_TYPE": "deal"}, "order": {"ID": "DESC"},
                      "select": ["ID", "COMMENT"]},
        ("COMMENT",), "comment_id"),
}


def lookup_call(action: Action) -> tuple[str, dict[str, Any], str] | None:
    """The Bitrix24 read that tells whether an action landed, and what it is per (one read per deal, or per recipient
    for messages): its marker lookup, the deal read back, the chat read back; None for im.notify.system.add."""
    lookup = _MARKER_LOOKUPS.get(action.kind)
    if lookup is not None:
        return lookup.method, lookup.params(action.deal), action.deal
    if action.kind in UPDATING:
        return "crm.deal.get", {"id": int(action.deal)}, action.deal
    if action.kind is ActionKind.MESSAGE and "DIALOG_ID" in action.params:
        dialog = str(action.params["DIALOG_ID"])
        return "im.dialog.messages.get", {"DIALOG_ID": dialog, "LIMIT": 50}, f"dialog:{dialog}"
    return None


def _queued(action: Action) -> bool:
    """A notice waiting for its message (digest): recorded, not written itself (unless a CRM's dialect made it a
    write of its own: amoCRM turns it into a task)."""
    return action.kind is ActionKind.NOTIFY and not action.crm_method


def action_of_row(row: Mapping[str, Any]) -> Action:
    """An Action rebuilt from its audit row (for reconciling an earlier run's intents)."""
    return Action(row["idempotency_key"], ActionKind(row["kind"]), row["rule"], str(row["deal_id"]),
                  json.loads(row["payload"]), row["summary"] or "", row["reason"] or "", row["clause"] or "",
                  tuple(json.loads(row["violation_keys"] or "[]")),
                  str(row["recipient_id"]) if row["recipient_id"] is not None else None,
                  group=row["group_key"] or "",
                  crm_method="" if row["method"] == METHODS[ActionKind(row["kind"])] else row["method"])


def _outcome(kind: ActionKind, result: Any) -> tuple[Any, list[str]]:
    """The part of the CRM's answer worth keeping, and the ids it created."""
    if kind is ActionKind.CREATE_TASK:
        task = result.get("task") if isinstance(result, Mapping) else None
        task_id = str(task.get("id")) if isinstance(task, Mapping) and task.get("id") is not None else None
        return {"task_id": task_id}, [task_id] if task_id else []
    if kind is ActionKind.CREATE_TODO:
        # crm.activity.todo.add answers {"id": N}
        todo_id = result.get("id") if isinstance(result, Mapping) else None
        return {"todo_id": str(todo_id) if todo_id is not None else None}, [str(todo_id)] if todo_id is not None else []
    if kind in (ActionKind.COMMENT, ActionKind.MESSAGE):
        return result, [str(result)] if result not in (None, False, "", 0) else []
    return result, []


def _describe(error: CrmError | None) -> str:
    if error is None:
        return "unknown error"
    code = error.code or type(error).__name__
    description = (error.description or str(error)).replace("<br>", "").strip()
    return f"{code}: {description}"[:500]


__all__ = ["ActionWriter", "Bitrix24Writer", "Executor", "ExecutionSummary", "MAX_SENDS_PER_RUN", "MAX_SENDS_TOTAL",
           "Pending", "Reconciliation", "WriteOutcome", "action_of_row", "lookup_call", "writer_for"]

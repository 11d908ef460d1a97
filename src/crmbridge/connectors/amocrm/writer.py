"""Actions into an amoCRM account: one array request per endpoint and round (up to 50 items), found again by marker.

A round takes up to 50 items per endpoint from the queue (the documented recommendation, reference §2),
then sends at most three requests: POST /api/v4/leads/notes, POST /api/v4/tasks, PATCH /api/v4/leads
(updates of one lead merged into one item). Items carry `request_id`, which the answer echoes,
so each action gets its own id. A 400 with `validation-errors` fails the named items and sends the others
again (amoCRM validates an array before writing any of it: the error names the items, and nothing in the
docs says a part was written); a 429 sends them again; a 5xx or a dropped answer is looked up: tasks and
notes by the marker in their text, lead updates by reading the leads back.
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from typing import Any

from crmbridge.connectors.amocrm.actions import LEADS, NOTES, TASKS
from crmbridge.connectors.amocrm.client import WRITE_BATCH, AmoCRMClient
from crmbridge.connectors.amocrm.envelope import ValidationRejected
from crmbridge.enforce.execute import Pending, WriteOutcome
from crmbridge.errors import CrmError, RateLimited

log = logging.getLogger("crmbridge.enforce")

#: endpoint -> (method, path, the answer's _embedded key, what the audit log records the created id as)
ENDPOINTS: dict[str, tuple[str, str, str, str]] = {
    LEADS: ("PATCH", "/api/v4/leads", "leads", "lead_id"),
    NOTES: ("POST", "/api/v4/leads/notes", "notes", "note_id"),
    TASKS: ("POST", "/api/v4/tasks", "tasks", "task_id"),
}
#: the order a round sends in: the note saying why and the tasks first, the lead updates (a stage revert) last.
#: A group (a revert, its note, its notices) spans requests on amoCRM; killed between them, the next run still
#: plans the revert (its violation is still there) and finds the note by its marker. The other way round, a
#: revert that landed would leave a plan without the violation, and its note would never be written.
ORDER = (NOTES, TASKS, LEADS)
#: lead ids per look-up request
LOOKUP_IDS = 50


def _describe(error: CrmError) -> str:
    return f"{error.code or type(error).__name__}: {error.description or error.message}"[:500]


class AmoCRMWriter:
    """The executor's writer for amoCRM (see enforce/execute.py ActionWriter)."""

    def __init__(self, client: AmoCRMClient, *, batch: int = WRITE_BATCH) -> None:
        self.client = client
        self.batch = batch

    # ------------------------------------------------------------ rounds

    def next_chunk(self, queue: deque[Pending]) -> list[Pending]:
        """Up to `batch` items of each endpoint, in queue order: each endpoint's request is as full as it can be, so
        A actions cost about A/50 requests however they mix (a group's members still go out in queue order)."""
        chunk: list[Pending] = []
        left: list[Pending] = []
        counts: dict[str, int] = defaultdict(int)
        while queue:
            item = queue.popleft()
            if counts[item.action.method] < self.batch:
                counts[item.action.method] += 1
                chunk.append(item)
            else:
                left.append(item)
        queue.extend(left)
        return chunk

    def write(self, chunk: list[Pending]) -> WriteOutcome:
        outcome = WriteOutcome()
        by_method: dict[str, list[Pending]] = defaultdict(list)
        for item in chunk:
            by_method[item.action.method].append(item)
        for method in ORDER:
            if by_method.get(method):
                self._send(method, by_method[method], outcome)
        unknown = [item for item in chunk if item.action.method not in ENDPOINTS]
        for item in unknown:
            outcome.failed[item.action.idempotency_key] = f"not an amoCRM request: {item.action.method}"
        return outcome

    def _send(self, method: str, items: list[Pending], outcome: WriteOutcome) -> None:
        verb, path, key, id_name = ENDPOINTS[method]
        body, owners = self._body(method, items)
        try:
            answer = self.client.patch(path, body) if verb == "PATCH" else self.client.post(path, body)
        except RateLimited as exc:  # refused before running, after the client's own retries
            for item in items:
                outcome.again.add(item.action.idempotency_key)
                outcome.notes[item.action.idempotency_key] = _describe(exc)
            return
        except ValidationRejected as exc:
            for request_id, actions in owners.items():
                for item in actions:
                    if request_id in exc.by_request_id:
                        outcome.failed[item.action.idempotency_key] = f"{exc.by_request_id[request_id]}"[:500]
                    else:  # not written: the array was refused for the named items
                        outcome.again.add(item.action.idempotency_key)
            return
        except CrmError as exc:
            if not exc.retryable:
                raise  # auth, rights, a blocked account: the run stops; the intents are reconciled next time
            for item in items:
                outcome.lost.add(item.action.idempotency_key)
                outcome.notes[item.action.idempotency_key] = _describe(exc)
            return
        embedded = (answer or {}).get("_embedded") or {}
        answered = {str(row.get("request_id")): row for row in embedded.get(key) or [] if isinstance(row, Mapping)}
        for request_id, actions in owners.items():
            row = answered.get(request_id)
            for item in actions:
                if row is None:  # an answer without this item: whether it landed only a look-up can tell
                    outcome.lost.add(item.action.idempotency_key)
                    continue
                crm_id = str(row.get("id"))
                result = {id_name: crm_id}
                outcome.done[item.action.idempotency_key] = (result, [] if method == LEADS else [crm_id])

    @staticmethod
    def _body(method: str, items: list[Pending]) -> tuple[list[dict[str, Any]], dict[str, list[Pending]]]:
        """The array to send and which actions each `request_id` stands for (a lead's updates share one item)."""
        body: list[dict[str, Any]] = []
        owners: dict[str, list[Pending]] = {}
        if method == LEADS:
            merged: dict[Any, dict[str, Any]] = {}
            for item in items:
                lead = item.params.get("id")
                if lead not in merged:
                    merged[lead] = {"request_id": str(len(merged))}
                    owners[merged[lead]["request_id"]] = []
                _merge(merged[lead], item.params)
                owners[merged[lead]["request_id"]].append(item)
            body = list(merged.values())
        else:
            for index, item in enumerate(items):
                body.append({**dict(item.params), "request_id": str(index)})
                owners[str(index)] = [item]
        return body, owners

    # ------------------------------------------------------------ looking in the account

    def look_up(self, chunk: Sequence[Pending]) -> tuple[dict[str, tuple[Any, list[str]]], set[str]]:
        hits: dict[str, tuple[Any, list[str]]] = {}
        unknown: set[str] = set()
        by_method: dict[str, list[Pending]] = defaultdict(list)
        for item in chunk:
            by_method[item.action.method].append(item)
        for method, items in by_method.items():
            if method not in ENDPOINTS:
                continue
            leads = sorted({int(item.action.deal) for item in items})
            try:
                rows = self._rows(method, leads)
            except CrmError as exc:
                if not exc.retryable:
                    raise
                log.warning("looking up %d actions in amoCRM failed (%s); their outcome stays unknown", len(items), exc)
                unknown.update(item.action.idempotency_key for item in items)
                continue
            if method == LEADS:
                by_id = {row.get("id"): row for row in rows}
                for item in items:
                    lead = by_id.get(item.params.get("id"))
                    if lead is not None and _holds(lead, item.params):
                        hits[item.action.idempotency_key] = ({"found": "lead read back"}, [])
            else:
                id_name = ENDPOINTS[method][3]
                for item in items:
                    row = next((row for row in rows if _text(row, method) and item.action.marker in _text(row, method)),
                               None)
                    if row is not None:
                        hits[item.action.idempotency_key] = ({id_name: str(row.get("id"))}, [str(row.get("id"))])
        return hits, unknown

    def _rows(self, method: str, leads: list[int]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for start in range(0, len(leads), LOOKUP_IDS):
            ids = leads[start:start + LOOKUP_IDS]
            if method == LEADS:
                rows += list(self.client.items("/api/v4/leads", "leads", {"filter": {"id": ids}}))
            elif method == NOTES:
                rows += list(self.client.items("/api/v4/leads/notes", "notes",
                                               {"filter": {"entity_id": ids, "note_type": "common"}}))
            else:
                rows += list(self.client.items("/api/v4/tasks", "tasks",
                                               {"filter": {"entity_type": "leads", "entity_id": ids}}))
        return rows


def _text(row: Mapping[str, Any], method: str) -> str:
    if method == NOTES:
        params = row.get("params")
        return str(params.get("text") or "") if isinstance(params, Mapping) else ""
    return str(row.get("text") or "")


def _merge(into: dict[str, Any], params: Mapping[str, Any]) -> None:
    for key, value in params.items():
        if key == "custom_fields_values":
            current = {field["field_id"]: field for field in into.get(key, [])}
            for field in value or []:
                current[field["field_id"]] = field
            into[key] = list(current.values())
        else:
            into[key] = value


def _same(current: Any, wanted: Any) -> bool:
    if current == wanted:
        return True
    try:
        return float(str(current)) == float(str(wanted))
    except ValueError:
        return False


def _holds(lead: Mapping[str, Any], item: Mapping[str, Any]) -> bool:
    """Whether a lead read back already holds what a PATCH item set (reconciliation after a lost answer)."""
    for key, value in item.items():
        if key in ("id", "request_id"):
            continue
        if key == "custom_fields_values":
            have = {field.get("field_id"): field.get("values") or [] for field in lead.get(key) or []
                    if isinstance(field, Mapping)}
            for field in value or []:
                current = have.get(field["field_id"], [])
                wanted = field.get("values") or []
                if not wanted:
                    if current:
                        return False
                    continue
                if not current:
                    return False
                first, target = current[0], wanted[0]
                if "enum_id" in target:
                    if not _same(first.get("enum_id"), target["enum_id"]):
                        return False
                elif not _same(first.get("value"), target.get("value")):
                    return False
        elif not _same(lead.get(key), value):
            return False
    return True


__all__ = ["AmoCRMWriter", "ENDPOINTS"]

"""Bitrix24 offline events over REST: bind them, reserve a batch, confirm or mark it failed, find lost reservations.

Shapes (D api-reference/events/offline-events.md, event-bind.md, event-get.md, event-offline-get.md, -clear.md,
-error.md, -list.md, common/system/feature-get.md, and the rest module's Api\\Event it documents):

* `event.bind {event, event_type: "offline"}` (no handler) -> true; the queue is split by the request's
  `auth_connector`; a handler bound twice -> 400 ERROR_CORE "Unable to set event handler: Handler already binded".
* `event.get` -> offline handlers as `{"event", "connector_id", "offline": 1}`.
* `event.offline.get {clear: 0, limit}` -> `{"process_id", "events": [{ID, TIMESTAMP_X, EVENT_NAME, EVENT_DATA,
  EVENT_ADDITIONAL, MESSAGE_ID}]}`: the batch is reserved (hidden from other readers) until cleared;
  `process_id` given again returns the batch's unconfirmed records. `clear=0` needs the
  `rest_offline_extended` feature (403 WRONG_LICENSE otherwise), `auth_connector` the `rest_auth_connector` one.
* `event.offline.clear {process_id, id: [...]}`, `event.offline.error {process_id, message_id: [...]}` -> true.
* `event.offline.list {order, start}` -> records with PROCESS_ID and ERROR, 50 per page.
* EVENT_DATA is what an online handler gets: `FIELDS.ID`, or for tasks `FIELDS_AFTER.ID` / `FIELDS_BEFORE.ID`.

Every call goes through the client's OAuth auth, which carries the `auth_connector`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from crmbridge.connectors.bitrix24.client import Bitrix24Client
from crmbridge.connectors.bitrix24.oauth import OFFLINE_EVENTS
from crmbridge.errors import CrmError, CrmRejected

__all__ = [
    "EVENT_ENTITIES",
    "OfflineBatch",
    "OfflineSetup",
    "bind_offline_events",
    "clear_batch",
    "describe_record",
    "features",
    "fetch_batch",
    "mark_failed",
    "reserved_process_ids",
    "unbind_offline_events",
]

log = logging.getLogger("crmbridge.bitrix24.offline")

#: what each offline event is about; the same names and entities as webhook events (live/bitrix24_events.py)
EVENT_ENTITIES: Mapping[str, str] = {
    "ONCRMDEALADD": "deal", "ONCRMDEALUPDATE": "deal", "ONCRMDEALDELETE": "deal",
    "ONTASKADD": "task", "ONTASKUPDATE": "task", "ONTASKDELETE": "task",
    "ONCRMACTIVITYADD": "activity", "ONCRMACTIVITYUPDATE": "activity",
    "ONCRMCONTACTUPDATE": "contact", "ONCRMCOMPANYUPDATE": "company",
}
#: the biggest batch crmbridge reserves at once (the docs' default is 50; the inbox takes thousands per commit)
MAX_BATCH = 500


@dataclass(frozen=True)
class OfflineSetup:
    """What connecting did about offline events."""

    connector: str  # the auth_connector the handlers are bound with ('' = none)
    reserve: bool  # rest_offline_extended: batches are reserved and confirmed (clear=0), not deleted on read
    bound: list[str] = field(default_factory=list)  # newly bound
    already: list[str] = field(default_factory=list)  # were bound before
    notes: list[str] = field(default_factory=list)  # what an admin should know (plan limits)


@dataclass(frozen=True)
class OfflineBatch:
    process_id: str | None
    events: list[dict[str, Any]]


def features(client: Bitrix24Client, codes: Sequence[str]) -> dict[str, bool]:
    """`feature.get` for each code, in one batch request: True when the portal's plan has it."""
    answer = client.batch({f"f{i}": ("feature.get", {"CODE": code}) for i, code in enumerate(codes)})
    out: dict[str, bool] = {}
    for i, code in enumerate(codes):
        value = answer.results.get(f"f{i}")
        out[code] = isinstance(value, Mapping) and str(value.get("value", "")).upper() == "Y"
    return out


def bind_offline_events(
    client: Bitrix24Client, connector: str, events: Iterable[str] = OFFLINE_EVENTS
) -> OfflineSetup:
    """Bind each event as an offline event for `connector`, skipping those bound already (idempotent).

    `connector` must be what the client's auth sends as `auth_connector` (the rest module takes it from
    the request's auth data). Raises the CRM's error when the app's user is no administrator
    (403 ACCESS_DENIED) or the call is not in an application context (403 WRONG_AUTH_TYPE).
    """
    wanted = list(dict.fromkeys(events))
    available = features(client, ("rest_offline_extended", "rest_auth_connector"))
    notes: list[str] = []
    if connector and not available["rest_auth_connector"]:
        raise CrmRejected(
            "event.bind: the portal's plan has no auth_connector (source keys need Professional or above)",
            method="event.bind", code="WRONG_LICENSE",
            description="This feature is not enabled for the current license: auth_connector",
            hint="set CRMBRIDGE_BITRIX24_AUTH_CONNECTOR= (empty) and run `crmbridge connect --events-only`; the "
            "bridge's own writes then come back as offline events (they cause no new action, only a re-read)",
        )
    if not available["rest_offline_extended"]:
        notes.append("the portal's plan has no confirmed offline processing (rest_offline_extended): events are "
                     "deleted when read, so one read just before a crash is lost until the next incremental sync")
    existing = client.call("event.get").result or []
    bound_before = {
        str(row.get("event", "")).upper()
        for row in existing
        if isinstance(row, Mapping) and int(row.get("offline") or 0) == 1
        and str(row.get("connector_id") or "") == connector
    }
    bound, already = [], []
    for event in wanted:
        if event in bound_before:
            already.append(event)
            continue
        try:
            client.call("event.bind", {"event": event, "event_type": "offline"})
            bound.append(event)
        except CrmError as exc:
            if exc.code == "ERROR_CORE" and "already binded" in (exc.description or ""):
                already.append(event)  # bound meanwhile by a parallel connect
                continue
            raise
    return OfflineSetup(connector, available["rest_offline_extended"], bound, already, notes)


def unbind_offline_events(client: Bitrix24Client, events: Iterable[str] = OFFLINE_EVENTS) -> int:
    """Remove the offline handlers of `events` for the client's connector; returns how many went."""
    removed = 0
    for event in dict.fromkeys(events):
        result = client.call("event.unbind", {"event": event, "event_type": "offline"}).result
        removed += int(result.get("count", 0)) if isinstance(result, Mapping) else 0
    return removed


def fetch_batch(
    client: Bitrix24Client, *, limit: int = 50, reserve: bool = True, process_id: str | None = None
) -> OfflineBatch:
    """Reserve the next batch (or re-read reserved batch `process_id`); never sent twice on a lost answer.

    A reservation whose answer was lost raises; the batch stays reserved at the portal, and
    `reserved_process_ids` finds it.
    """
    params: dict[str, Any] = {"limit": max(1, min(MAX_BATCH, limit)), "clear": 0 if reserve else 1}
    if process_id:
        params["process_id"] = process_id
    result = client.call("event.offline.get", params, idempotent=process_id is not None).result or {}
    events = result.get("events") if isinstance(result, Mapping) else None
    pid = result.get("process_id") if isinstance(result, Mapping) else None
    return OfflineBatch(str(pid) if pid else None, [e for e in (events or []) if isinstance(e, Mapping)])


def clear_batch(client: Bitrix24Client, process_id: str, record_ids: Sequence[str | int] | None = None) -> None:
    """Confirm a reserved batch (only `record_ids` of it when given): the portal deletes those records."""
    params: dict[str, Any] = {"process_id": process_id}
    if record_ids is not None:
        if not record_ids:
            return
        params["id"] = [int(i) for i in record_ids]
    client.call("event.offline.clear", params)


def mark_failed(client: Bitrix24Client, process_id: str, message_ids: Sequence[str]) -> None:
    """Report records crmbridge could not take: the portal keeps them (ERROR=1) for inspection."""
    if message_ids:
        client.call("event.offline.error", {"process_id": process_id, "message_id": list(message_ids)})


def reserved_process_ids(client: Bitrix24Client, *, max_pages: int = 200) -> list[str]:
    """Batches reserved at the portal (by any reader of this connector), from `event.offline.list`.

    Sorted by PROCESS_ID descending, reserved records come before unreserved ones (empty id), so
    the scan stops at the first unreserved record instead of reading the whole queue.
    """
    found: list[str] = []
    start = 0
    for _ in range(max_pages):
        page = client.call("event.offline.list", {"order": {"PROCESS_ID": "DESC", "ID": "ASC"}, "start": start})
        rows = page.result or []
        for row in rows:
            pid = str(row.get("PROCESS_ID") or "") if isinstance(row, Mapping) else ""
            if not pid:
                return found
            if pid not in found:
                found.append(pid)
        if page.next is None or not rows:
            return found
        start = page.next
    return found


def describe_record(record: Mapping[str, Any]) -> tuple[str, str, str] | str:
    """(event, entity, entity id) of an offline record, or why crmbridge cannot take it."""
    event = str(record.get("EVENT_NAME") or "").upper()
    entity = EVENT_ENTITIES.get(event)
    if entity is None:
        return f"event {event or '(none)'} is not one crmbridge binds"
    data = record.get("EVENT_DATA")
    if not isinstance(data, Mapping):
        return "EVENT_DATA names no record"
    candidates: list[Any] = []
    if entity == "task":
        # add and update name the task after the change, delete before it; the other side is "undefined"
        for side in ("FIELDS_AFTER", "FIELDS_BEFORE"):
            part = data.get(side)
            if isinstance(part, Mapping):
                candidates.append(part.get("ID"))
    else:
        part = data.get("FIELDS")
        if isinstance(part, Mapping):
            candidates.append(part.get("ID"))
    for value in candidates:
        text = str(value or "").strip()
        if text.isdigit() and int(text) > 0:
            return event, entity, text
    return "EVENT_DATA names no record id"

"""Bitrix24 outgoing events (form-encoded POSTs): parse, authenticate, and name the entity each one is about; pure.

The shape (D api-reference/events/index.md, local-integrations/local-webhooks.md): `event` (upper case),
`event_handler_id`, `data[...]`, `ts`, `auth[domain]`, `auth[member_id]`, `auth[application_token]`, and
for applications also tokens. CRM events carry the id in `data[FIELDS][ID]`; task events in
`data[FIELDS_AFTER][ID]` (add, update) or `data[FIELDS_BEFORE][ID]` (delete), the other one being the
string `undefined` (D api-reference/tasks/events-tasks/on-task-*.md). Only the id is sent: the worker
reads the record itself.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from urllib.parse import parse_qsl, urlsplit

#: what each event the bridge reacts to is about; other events are acknowledged and ignored
EVENT_ENTITIES: Mapping[str, str] = {
    "ONCRMDEALADD": "deal", "ONCRMDEALUPDATE": "deal", "ONCRMDEALDELETE": "deal", "ONCRMDEALMOVETOCATEGORY": "deal",
    "ONTASKADD": "task", "ONTASKUPDATE": "task", "ONTASKDELETE": "task",
    "ONCRMACTIVITYADD": "activity", "ONCRMACTIVITYUPDATE": "activity", "ONCRMACTIVITYDELETE": "activity",
    "ONCRMCONTACTUPDATE": "contact", "ONCRMCONTACTDELETE": "contact",
    "ONCRMCOMPANYUPDATE": "company", "ONCRMCOMPANYDELETE": "company",
}
#: the events an admin binds (README "Run it as a service"); the sandbox sends the same set
BOUND_EVENTS: tuple[str, ...] = (
    "ONCRMDEALADD", "ONCRMDEALUPDATE", "ONCRMDEALDELETE", "ONTASKADD", "ONTASKUPDATE", "ONTASKDELETE",
    "ONCRMACTIVITYADD", "ONCRMACTIVITYUPDATE", "ONCRMCONTACTUPDATE", "ONCRMCOMPANYUPDATE",
)
DELETE_EVENTS = frozenset(name for name in EVENT_ENTITIES if name.endswith("DELETE"))


class Verdict(Enum):
    """What the receiver answers."""

    ACCEPT = 200
    IGNORE = 202  # authentic, but an event the bridge does not react to (answered 200, not stored)
    FORGED = 401  # wrong or missing application token: not stored
    FOREIGN = 403  # right token, another portal (domain or member_id): not stored (answered 401)
    MALFORMED = 400  # authentic but unusable: kept in the dead letters


@dataclass(frozen=True)
class ParsedEvent:
    verdict: Verdict
    reason: str = ""
    event: str = ""
    entity: str = ""
    entity_id: str = ""
    member_id: str = ""
    ts: str = ""


@dataclass(frozen=True)
class PortalIdentity:
    """What an event must match: the outgoing webhook's token, the portal's host, its member_id once known."""

    application_token: str
    domain: str  # host[:port] of the configured portal
    member_id: str | None = None


def portal_domain(webhook_url: str) -> str:
    """`auth[domain]` of events from this portal: the URL's host, with its port where the URL has one."""
    parts = urlsplit(webhook_url)
    host = (parts.hostname or "").lower()
    return f"{host}:{parts.port}" if parts.port else host


#: `auth[...]` fields that are credentials: the outgoing webhook's token, and an application's OAuth pair
_SECRET_AUTH = re.compile(r"(^|&)(auth(?:\[|%5B)(?:application_token|access_token|refresh_token)(?:\]|%5D)=)[^&]*",
                          re.IGNORECASE)


def redact_auth(body: str) -> str:
    """The body with its credentials replaced by ***: what the inbox and the dead letters keep (they are shown by
    `crmbridge inbox`, and a token that reaches the cache or a screen is a leaked token)."""
    return _SECRET_AUTH.sub(r"\1\2***", body)


def parse_event(body: bytes, identity: PortalIdentity) -> ParsedEvent:
    """Authenticate and parse one delivery. Authenticity is checked first, so a forged body is never stored."""
    try:
        text = body.decode("utf-8")
        fields = dict(parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text), max_num_fields=200))
    except (UnicodeDecodeError, ValueError):
        return ParsedEvent(Verdict.FORGED, "not a form-encoded Bitrix24 event")
    token = fields.get("auth[application_token]", "")
    # constant time: the comparison must not tell an attacker how much of a guess was right
    if not token or not hmac.compare_digest(token.encode(), identity.application_token.encode()):
        return ParsedEvent(Verdict.FORGED, "wrong or missing auth[application_token]")
    domain = fields.get("auth[domain]", "").strip().lower()
    if domain != identity.domain.lower():
        return ParsedEvent(Verdict.FOREIGN, f"auth[domain] {domain!r} is not the configured portal {identity.domain!r}")
    member_id = fields.get("auth[member_id]", "").strip()
    if identity.member_id and not hmac.compare_digest(member_id.encode(), identity.member_id.encode()):
        return ParsedEvent(Verdict.FOREIGN, "auth[member_id] is not the portal's")
    event = fields.get("event", "").strip().upper()
    if not event:
        return ParsedEvent(Verdict.MALFORMED, "no `event` field", member_id=member_id)
    entity = EVENT_ENTITIES.get(event)
    if entity is None:
        return ParsedEvent(Verdict.IGNORE, f"{event} is not an event crmbridge reacts to", event=event,
                           member_id=member_id)
    entity_id = _entity_id(event, fields)
    if not entity_id:
        return ParsedEvent(Verdict.MALFORMED, f"{event} without an entity id (data[FIELDS][ID])", event=event,
                           member_id=member_id)
    if not entity_id.isdigit():
        return ParsedEvent(Verdict.MALFORMED, f"{event}: entity id {entity_id[:40]!r} is not a number", event=event,
                           member_id=member_id)
    return ParsedEvent(Verdict.ACCEPT, event=event, entity=entity, entity_id=str(int(entity_id)), member_id=member_id,
                       ts=fields.get("ts", ""))


def _entity_id(event: str, fields: Mapping[str, str]) -> str:
    keys = ["data[FIELDS][ID]"]
    if event.startswith("ONTASK"):
        # a deleted task is named only in FIELDS_BEFORE; the other side is the string `undefined`
        keys = (["data[FIELDS_BEFORE][ID]", "data[FIELDS_AFTER][ID]"] if event == "ONTASKDELETE"
                else ["data[FIELDS_AFTER][ID]", "data[FIELDS_BEFORE][ID]"]) + keys
    for key in keys:
        value = fields.get(key, "").strip()
        if value and value != "undefined":
            return value
    return ""


__all__ = ["BOUND_EVENTS", "DELETE_EVENTS", "EVENT_ENTITIES", "ParsedEvent", "PortalIdentity", "Verdict", "parse_event",
           "portal_domain", "redact_auth"]

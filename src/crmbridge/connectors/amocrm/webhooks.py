"""Pure: amoCRM webhooks (form-encoded, the older v2 field shape) parsed, checked against the account, named.

What a hook looks like (reference §8, D-whfmt): one `application/x-www-form-urlencoded` POST per change,
`{entity}[{action}][{i}][{field}]` with every value a string, e.g. `leads[status][0][id]=10701093&
leads[status][0][status_id]=142&...&account[subdomain]=apfitness&account[id]=17769199`. Actions: add, update,
delete, restore, status, responsible, note. Task hooks name their lead as `element_id` with
`element_type` 2. The CRM hooks carry no signature: the URL's secret path says the sender knows the
secret, the account block says which account it speaks for, and the bridge re-reads what a hook names
from the API instead of trusting its fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from urllib.parse import parse_qsl, urlsplit

from crmbridge.connectors.http import is_loopback

#: hook entity -> what the inbox calls it
ENTITIES = {"leads": "lead", "contacts": "contact", "companies": "company", "tasks": "task"}
#: task hooks: element_type 2 is a lead (1 contact, 3 company, 12 customer)
LEAD_ELEMENT = "2"
_KEY = re.compile(r"^(?P<entity>[a-z_]+)\[(?P<action>[a-z_]+)\]\[(?P<index>\d+)\]\[(?P<field>[a-z_]+)\]")


class HookVerdict(Enum):
    ACCEPT = 200
    IGNORE = 202  # authentic, about nothing the regulation reads (chats, customers, a contact's task)
    FOREIGN = 403  # another account's hook: not stored
    MALFORMED = 400  # unusable: kept as a dead letter


@dataclass(frozen=True)
class HookEvent:
    """One change a hook names: `lead` 17 `status`, `contact` 5 `update`, ..."""

    entity: str
    entity_id: str
    event: str  # "<entity>.<action>", e.g. leads.status, tasks.update (a task hook names its lead)


@dataclass(frozen=True)
class ParsedHook:
    verdict: HookVerdict
    reason: str = ""
    events: tuple[HookEvent, ...] = field(default_factory=tuple)
    account_id: str = ""
    subdomain: str = ""


def expected_subdomain(base_url: str) -> str | None:
    """The subdomain a real account's hooks name (`example` of https://example.amocrm.ru); None on loopback."""
    host = (urlsplit(base_url).hostname or "").lower()
    if not host or is_loopback(host):
        return None
    return host.split(".")[0]


def parse_hook(body: bytes, *, account_id: str | None, subdomain: str | None) -> ParsedHook:
    """Parse one hook; `account_id` / `subdomain` are what the configured account is known by (None = unknown)."""
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError) as exc:
        return ParsedHook(HookVerdict.MALFORMED, f"not a form-encoded body ({type(exc).__name__})")
    values = dict(pairs)
    got_id, got_subdomain = values.get("account[id]", ""), values.get("account[subdomain]", "").lower()
    if not got_id and not got_subdomain:
        return ParsedHook(HookVerdict.MALFORMED, "no account[id] or account[subdomain]: not an amoCRM hook")
    if account_id and got_id and got_id != account_id:
        return ParsedHook(HookVerdict.FOREIGN, f"account {got_id} is not the configured account {account_id}",
                          account_id=got_id, subdomain=got_subdomain)
    if subdomain and got_subdomain and got_subdomain != subdomain:
        return ParsedHook(HookVerdict.FOREIGN, f"account {got_subdomain} is not the configured {subdomain}",
                          account_id=got_id, subdomain=got_subdomain)
    items: dict[tuple[str, str, str], dict[str, str]] = {}
    seen_entities: set[str] = set()
    for key, value in pairs:
        match = _KEY.match(key)
        if match is None:
            continue
        seen_entities.add(match["entity"])
        items.setdefault((match["entity"], match["action"], match["index"]), {})[match["field"]] = value
    events: list[HookEvent] = []
    for (entity, action, _), fields in items.items():
        kind = ENTITIES.get(entity)
        if kind is None:
            continue
        if kind == "task":
            if fields.get("element_type") == LEAD_ELEMENT and (fields.get("element_id") or "").isdigit():
                events.append(HookEvent("lead", fields["element_id"], f"tasks.{action}"))
            continue
        entity_id = fields.get("id", "")
        if not entity_id.isdigit():
            return ParsedHook(HookVerdict.MALFORMED, f"{entity}[{action}] without a numeric id",
                              account_id=got_id, subdomain=got_subdomain)
        events.append(HookEvent(kind, entity_id, f"{entity}.{action}"))
    if events:
        return ParsedHook(HookVerdict.ACCEPT, events=tuple(dict.fromkeys(events)), account_id=got_id,
                          subdomain=got_subdomain)
    if seen_entities:
        return ParsedHook(HookVerdict.IGNORE, f"nothing the regulation reads ({', '.join(sorted(seen_entities))})",
                          account_id=got_id, subdomain=got_subdomain)
    return ParsedHook(HookVerdict.MALFORMED, "no entity in the hook", account_id=got_id, subdomain=got_subdomain)


__all__ = ["HookEvent", "HookVerdict", "ParsedHook", "expected_subdomain", "parse_hook"]

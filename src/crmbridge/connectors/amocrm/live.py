"""The daemon's amoCRM plugin: hooks at /amocrm/hooks/<secret> into the durable inbox, and their processing.

Receiving (`POST /amocrm/hooks/{secret}`): the secret path segment is compared in constant time with
`CRMBRIDGE_AMOCRM_HOOK_SECRET` (wrong: 401, not stored); the body is parsed (webhooks.py) and checked
against the configured account (another account's hook: 401, not stored); a malformed body gets 400 and
is kept as a dead letter; the named changes are committed to the inbox before the 200 goes out (amoCRM
waits 2 s for it and retries later otherwise, reference §8).

Processing (source `amocrm.hook`): the hooks are only triggers. A round re-reads what they name from the
API: client cards by id, then the usual incremental sync (leads, the events feed, tasks: three requests),
and enforces the regulation on the leads they named, through the same planner, audit log and writer
as `crmbridge enforce`. The sync is also the catch-up for hooks that never arrived.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

from crmbridge.live.bridge import LiveBridge, Processor
from crmbridge.live.inbox import InboxEvent, InboxRow, utc_iso

log = logging.getLogger("crmbridge.live")

SOURCE = "amocrm.hook"
ROUTE = "/amocrm/hooks/{secret}"


def register(bridge: LiveBridge) -> None:
    """Plug the amoCRM hooks into the daemon (the route answers 401 until a hook secret is configured)."""
    bridge.add_route(ROUTE, HookReceiver(bridge).handle)  # a method: Starlette calls it with the request
    bridge.add_processor(Processor("amocrm.", lambda rows: process(bridge, rows)))


class HookReceiver:
    """POST /amocrm/hooks/{secret}: authenticate, commit to the inbox, then answer 200."""

    def __init__(self, bridge: LiveBridge) -> None:
        self.bridge = bridge
        self._account_id: str | None = None

    def _known_account_id(self) -> str | None:
        """The account id the first sync recorded (crm_account); hooks must name it."""
        if self._account_id is None:
            from crmbridge.cache.store import open_cache

            cache = open_cache(self.bridge.cache_path)
            try:
                held = cache.account.get()
            finally:
                cache.close()
            if held is not None and held.get("crm") == "amocrm" and held.get("account_id"):
                self._account_id = str(held["account_id"])
        return self._account_id

    async def handle(self, request: Any) -> Any:
        from starlette.requests import ClientDisconnect
        from starlette.responses import PlainTextResponse

        from crmbridge.connectors.amocrm.webhooks import HookVerdict, expected_subdomain, parse_hook
        from crmbridge.live.app import BodyTooLarge, read_body

        settings = self.bridge.settings
        metrics = self.bridge.metrics
        started = time.perf_counter()
        received_at = utc_iso()
        configured = settings.amocrm_hook_secret.get_secret_value() if settings.amocrm_hook_secret else ""
        given = str(request.path_params.get("secret") or "")
        if settings.crm != "amocrm" or not configured or not hmac.compare_digest(given.encode(), configured.encode()):
            metrics.events_rejected.labels(SOURCE, "forged").inc()
            return PlainTextResponse("not authorised\n", status_code=401)
        try:
            body = await read_body(request, settings.event_max_bytes)
        except BodyTooLarge:
            metrics.events_rejected.labels(SOURCE, "too_large").inc()
            return PlainTextResponse(f"hook body over {settings.event_max_bytes} bytes\n", status_code=413)
        except ClientDisconnect:
            return PlainTextResponse("", status_code=400)
        parsed = parse_hook(body, account_id=self._known_account_id(),
                            subdomain=expected_subdomain(settings.amocrm_base_url or ""))
        if parsed.verdict is HookVerdict.FOREIGN:
            metrics.events_rejected.labels(SOURCE, "foreign").inc()
            log.warning("rejected an amoCRM hook of another account: %s", parsed.reason)
            return PlainTextResponse("not authorised\n", status_code=401)
        if parsed.verdict is HookVerdict.MALFORMED:
            metrics.events_rejected.labels(SOURCE, "malformed").inc()
            letter = self.bridge.inbox.reject(SOURCE, f"malformed: {parsed.reason}", body, received_at=received_at)
            return PlainTextResponse(f"malformed hook ({parsed.reason}); kept as dead letter {letter}\n",
                                     status_code=400)
        if parsed.verdict is HookVerdict.IGNORE:
            metrics.events_ignored.labels(SOURCE, "other").inc()
            return PlainTextResponse("ignored\n")
        text = body.decode("utf-8")
        events = [InboxEvent(SOURCE, event.event, event.entity, event.entity_id, text, received_at)
                  for event in parsed.events]
        ids = await self.bridge.inbox.accept_async(events)
        for event in parsed.events:
            metrics.events_received.labels(SOURCE, event.event).inc()
        metrics.ack_latency.observe(time.perf_counter() - started)
        return PlainTextResponse(f"ok {' '.join(map(str, ids))}\n")


def process(bridge: LiveBridge, rows: list[InboxRow]) -> None:
    """Re-read what a round of hooks names and enforce the regulation on those leads (idempotent: the same keys)."""
    from crmbridge.cache import amocrm_rows
    from crmbridge.cache.store import open_cache
    from crmbridge.connectors.amocrm.reader import AmoCRMReader
    from crmbridge.enforce.run import enforce
    from crmbridge.errors import ConfigError
    from crmbridge.mapping.load import load_mappings

    settings = bridge.settings
    client = bridge.client
    if settings.crm != "amocrm" or client is None or getattr(client, "crm", None) != "amocrm":
        raise ConfigError("amoCRM hooks arrived, but this bridge does not serve an amoCRM account",
                          hint="set CRMBRIDGE_CRM=amocrm and CRMBRIDGE_AMOCRM_BASE_URL")
    leads = {int(row.entity_id) for row in rows if row.entity == "lead" and row.entity_id.isdigit()}
    cards = {entity: sorted({int(row.entity_id) for row in rows if row.entity == kind and row.entity_id.isdigit()})
             for entity, kind in (("contacts", "contact"), ("companies", "company"))}
    cache = open_cache(bridge.cache_path)
    try:
        reader = AmoCRMReader(client)
        for entity, ids in cards.items():
            if not ids:
                continue
            records = reader.clients_by_ids(entity, ids) or []
            to_row = amocrm_rows.contact_row if entity == "contacts" else amocrm_rows.company_row
            with cache.atomic():
                cache.deals.upsert_clients(entity, map(to_row, records))
        # a phone added to a contact can settle R6 on every lead of that client
        leads |= cache.deals.deals_of_clients(set(cards["contacts"]), set(cards["companies"]))
        mappings = load_mappings(settings.mappings_dir, crm="amocrm")
        # the incremental sync inside reads the named leads (and whatever else changed), their events and tasks
        report = enforce(client, cache, mappings, deal_ids=sorted(leads), sync=True,
                         max_reverts_per_day=settings.enforce_max_reverts_per_day)
        done = report.execution.done if report.execution is not None else 0
        log.info("amoCRM hooks: %d events -> %d leads re-read and judged, %d actions written", len(rows),
                 len(leads), done)
    finally:
        cache.close()


__all__ = ["HookReceiver", "ROUTE", "SOURCE", "process", "register"]

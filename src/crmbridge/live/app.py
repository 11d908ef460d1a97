"""The daemon's HTTP side (Starlette): POST /bitrix24/events, /livez, /readyz, /metrics, and routes plugins add."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from crmbridge.live.bitrix24_events import PortalIdentity, Verdict, parse_event, redact_auth
from crmbridge.live.inbox import Inbox, InboxEvent, utc_iso
from crmbridge.live.metrics import Metrics

log = logging.getLogger("crmbridge.live")

BITRIX24_SOURCE = "bitrix24.webhook"
MEMBER_ID_STATE = "bitrix24.member_id"


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes before reading them all (Content-Length or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class Readiness:
    """What /readyz checks; `check()` returns the failed checks (empty = ready)."""

    check: Callable[[], list[str]]


class Bitrix24Receiver:
    """POST /bitrix24/events: authenticate, commit to the inbox, then answer 200 (see bitrix24_events.py)."""

    def __init__(self, inbox: Inbox, metrics: Metrics, *, application_token: str | None, domain: str,
                 max_body: int = 65_536) -> None:
        self.inbox = inbox
        self.metrics = metrics
        self.application_token = application_token
        self.domain = domain
        self.max_body = max_body
        # remembered from the OAuth install or the first verified event (live_state), then required
        self.member_id = inbox.get_state(MEMBER_ID_STATE)

    async def __call__(self, request: Request) -> Response:
        started = time.perf_counter()
        received_at = utc_iso()
        try:
            body = await read_body(request, self.max_body)
        except BodyTooLarge:
            self.metrics.events_rejected.labels(BITRIX24_SOURCE, "too_large").inc()
            return PlainTextResponse(f"event body over {self.max_body} bytes\n", status_code=413)
        except ClientDisconnect:
            return PlainTextResponse("", status_code=400)
        if not self.application_token:
            self.metrics.events_rejected.labels(BITRIX24_SOURCE, "not_configured").inc()
            return PlainTextResponse("CRMBRIDGE_BITRIX24_APPLICATION_TOKEN is not set on this bridge\n", status_code=401)
        if self.member_id is None:
            self.member_id = self.inbox.get_state(MEMBER_ID_STATE)  # an install in another process may have set it
        parsed = parse_event(body, PortalIdentity(self.application_token, self.domain, self.member_id))
        if parsed.verdict in (Verdict.FORGED, Verdict.FOREIGN):
            reason = "forged" if parsed.verdict is Verdict.FORGED else "foreign"
            self.metrics.events_rejected.labels(BITRIX24_SOURCE, reason).inc()
            log.warning("rejected a %s event from %s: %s", reason, request.client.host if request.client else "?",
                        parsed.reason)
            return PlainTextResponse("not authorised\n", status_code=401)
        if parsed.verdict is Verdict.MALFORMED:
            self.metrics.events_rejected.labels(BITRIX24_SOURCE, "malformed").inc()
            letter = self.inbox.reject(BITRIX24_SOURCE, f"malformed: {parsed.reason}",
                                       redact_auth(body.decode("utf-8", errors="replace")), received_at=received_at)
            return PlainTextResponse(f"malformed event ({parsed.reason}); kept as dead letter {letter}\n",
                                     status_code=400)
        if self.member_id is None and parsed.member_id:
            self.member_id = self.inbox.set_state(MEMBER_ID_STATE, parsed.member_id, only_if_unset=True)
        if parsed.verdict is Verdict.IGNORE:
            self.metrics.events_ignored.labels(BITRIX24_SOURCE, parsed.event).inc()
            return PlainTextResponse("ignored\n")
        event = InboxEvent(BITRIX24_SOURCE, parsed.event, parsed.entity, parsed.entity_id,
                           redact_auth(body.decode("utf-8")), received_at)
        (inbox_id,) = await self.inbox.accept_async([event])
        self.metrics.events_received.labels(BITRIX24_SOURCE, parsed.event).inc()
        self.metrics.ack_latency.observe(time.perf_counter() - started)
        return PlainTextResponse(f"ok {inbox_id}\n")


def build_app(receiver: Bitrix24Receiver, metrics: Metrics, readiness: Readiness, *,
              extra_routes: Sequence[BaseRoute] = (), accepting: Callable[[], bool] = lambda: True) -> Starlette:
    """The ASGI app. `accepting()` turns False on SIGTERM: new events then get 503 (the portal logs, the sync
    catches up) while the batch in flight finishes."""

    async def bitrix24_events(request: Request) -> Response:
        if not accepting():
            return PlainTextResponse("shutting down\n", status_code=503)
        return await receiver(request)

    async def livez(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        failed = readiness.check()
        if not accepting():
            failed = ["shutting down", *failed]
        if failed:
            return JSONResponse({"ready": False, "failed": failed}, status_code=503)
        return JSONResponse({"ready": True})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    routes: list[BaseRoute] = [
        Route("/bitrix24/events", bitrix24_events, methods=["POST"]),
        Route("/livez", livez, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        *extra_routes,
    ]
    return Starlette(routes=routes)


Endpoint = Callable[[Request], Awaitable[Response]]

__all__ = ["BITRIX24_SOURCE", "Bitrix24Receiver", "BodyTooLarge", "Endpoint", "MEMBER_ID_STATE", "Readiness",
           "build_app", "read_body"]

"""Outgoing webhook events of the sandbox: form-encoded POSTs from queue threads, slightly delayed, never retried.

The body is what Bitrix24 sends an outgoing webhook (D api-reference/events/index.md,
local-integrations/local-webhooks.md): `event` (upper case), `event_handler_id`, `data[...]`, `ts`,
`auth[domain]`, `auth[client_endpoint]`, `auth[server_endpoint]`, `auth[member_id]`,
`auth[application_token]`. CRM events name the record in `data[FIELDS][ID]`; task events in
`data[FIELDS_BEFORE]` / `data[FIELDS_AFTER]`, the missing side being the string `undefined`
(D api-reference/tasks/events-tasks/on-task-add.md, -update.md, -delete.md).

Every delivery is written to `log` (the portal's delivery log): what was sent and the HTTP status it got
(None when the connection failed), so a test can compare it with what the receiver stored.
"""

from __future__ import annotations

import http.client
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlencode, urlsplit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """One line of the delivery log."""

    seq: int  # the order events were emitted in
    event: str
    entity_id: int
    status: int | None  # HTTP status, None when the connection failed or timed out
    sent_at: float  # wall clock when the POST started


def event_data(event: str, entity_id: int) -> dict[str, str]:
    """The `data[...]` fields of one event, flat as they go on the wire."""
    if event.startswith("ONTASK"):
        before = "undefined" if event == "ONTASKADD" else None
        after = "undefined" if event == "ONTASKDELETE" else None
        fields: dict[str, str] = {}
        fields.update({"data[FIELDS_BEFORE]": before} if before else {"data[FIELDS_BEFORE][ID]": str(entity_id)})
        fields.update({"data[FIELDS_AFTER]": after} if after else {"data[FIELDS_AFTER][ID]": str(entity_id)})
        fields["data[IS_ACCESSIBLE_BEFORE]"] = "N" if event == "ONTASKADD" else "undefined"
        fields["data[IS_ACCESSIBLE_AFTER]"] = "N" if event == "ONTASKDELETE" else "undefined"
        return fields
    return {"data[FIELDS][ID]": str(entity_id)}


class EventSender:
    """Delivers events to `url` like the Bitrix24 queue server: one attempt each, from `workers` threads.

    "The queue server will log the failure but will not resend the event" (D api-reference/events/index.md).
    `delay` is the queue's "slight delay": an event goes out no earlier than `delay` seconds after it happened.
    Each worker keeps one keep-alive connection, as a queue server does.
    """

    def __init__(self, url: str, auth: dict[str, str], *, handler_id: str = "1", delay: float = 0.1,
                 timeout: float = 5.0, workers: int = 4, on_result: Callable[[bool], None] | None = None,
                 events: tuple[str, ...] | None = None,
                 auth_for: Callable[[Any], dict[str, str]] | None = None) -> None:
        self.url = url
        self.auth = auth
        #: the auth data of one delivery, when it differs per event (an application's handler gets fresh tokens)
        self.auth_for = auth_for
        self.handler_id = handler_id
        self.delay = delay
        self.timeout = timeout
        self.on_result = on_result
        #: the events this handler is bound to (None = all)
        self.events = frozenset(events) if events is not None else None
        self.log: list[Delivery] = []
        self._log_lock = threading.Lock()
        self._seq = 0
        self._queue: queue.Queue[tuple[int, str, int, float, Any] | None] = queue.Queue()
        self._idle = threading.Condition()
        self._in_flight = 0
        self._threads = [threading.Thread(target=self._run, name=f"sandbox-events-{n}", daemon=True)
                         for n in range(max(1, workers))]
        for thread in self._threads:
            thread.start()

    def emit(self, event: str, entity_id: int, context: Any = None) -> None:
        """Queue one event; `context` goes to `auth_for` (e.g. the user whose change fired it)."""
        if self.events is not None and event not in self.events:
            return
        with self._idle:
            self._seq += 1
            self._in_flight += 1
            seq = self._seq
        self._queue.put((seq, event, entity_id, time.monotonic(), context))

    def payload(self, event: str, entity_id: int, context: Any = None) -> dict[str, Any]:
        body: dict[str, Any] = {"event": event, "event_handler_id": self.handler_id}
        body.update(event_data(event, entity_id))
        body["ts"] = str(int(time.time()))
        auth = self.auth_for(context) if self.auth_for is not None else self.auth
        for key, value in auth.items():
            body[f"auth[{key}]"] = value
        return body

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until every emitted event has been delivered (or failed); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def deliveries(self) -> list[Delivery]:
        with self._log_lock:
            return sorted(self.log, key=lambda delivery: delivery.seq)

    def _run(self) -> None:
        target = urlsplit(self.url)
        path = (target.path or "/") + (f"?{target.query}" if target.query else "")
        conn: http.client.HTTPConnection | None = None
        while True:
            item = self._queue.get()
            if item is None:
                if conn is not None:
                    conn.close()
                return
            seq, event, entity_id, emitted, context = item
            wait = emitted + self.delay - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            data = urlencode(self.payload(event, entity_id, context)).encode()
            sent_at = time.time()
            status: int | None = None
            for _ in range(2):  # a keep-alive connection the server closed meanwhile is reopened once
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port or 80,
                                                          timeout=self.timeout)
                    conn.request("POST", path, body=data, headers={
                        "Content-Type": "application/x-www-form-urlencoded", "User-Agent": "Bitrix24 Webhook Engine"})
                    response = conn.getresponse()
                    response.read()
                    status = response.status
                    break
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                    if conn is not None:
                        conn.close()
                    conn = None
                    if status is None and _sent_nothing(exc):
                        continue
                    log.info("sandbox event %s for %s not delivered: %s", event, entity_id, exc)
                    break
                except Exception as exc:  # noqa: BLE001 - the portal only logs a failed delivery
                    if conn is not None:
                        conn.close()
                    conn = None
                    log.info("sandbox event %s for %s not delivered: %s", event, entity_id, exc)
                    break
            ok = status is not None and 200 <= status < 300
            with self._log_lock:
                self.log.append(Delivery(seq, event, entity_id, status, sent_at))
            if self.on_result is not None:
                self.on_result(ok)
            with self._idle:
                self._in_flight -= 1
                if not self._in_flight:
                    self._idle.notify_all()

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=2)


def _sent_nothing(exc: BaseException) -> bool:
    """A reused keep-alive connection the server had closed fails before the request is read: safe to send again.

    Anything else (a reset after the request went out) counts as one failed delivery, as on the real queue.
    """
    return isinstance(exc, (http.client.RemoteDisconnected, BrokenPipeError))

"""Outgoing webhook events of the sandbox: form-encoded POSTs from a queue thread, slightly delayed, never retried."""

from __future__ import annotations

import logging
import queue
import threading
import time
import urllib.request
from typing import Any, Callable
from urllib.parse import urlencode

log = logging.getLogger(__name__)


class EventSender:
    """Delivers `event=ONCRMDEAL...&data[FIELDS][ID]=..&auth[...]` to `url` like the Bitrix24 queue server.

    One attempt per event: "the queue server will log the failure but will not resend the event"
    (D api-reference/events/index.md). `delay` is the queue's "slight delay" before each delivery.
    """

    def __init__(self, url: str, auth: dict[str, str], *, handler_id: str = "1", delay: float = 0.1,
                 timeout: float = 5.0, on_result: Callable[[bool], None] | None = None) -> None:
        self.url = url
        self.auth = auth
        self.handler_id = handler_id
        self.delay = delay
        self.timeout = timeout
        self.on_result = on_result
        self._queue: queue.Queue[tuple[str, int] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="sandbox-events", daemon=True)
        self._thread.start()

    def emit(self, event: str, entity_id: int) -> None:
        self._queue.put((event, entity_id))

    def payload(self, event: str, entity_id: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "event": event,
            "event_handler_id": self.handler_id,
            "data[FIELDS][ID]": str(entity_id),
            "ts": str(int(time.time())),
        }
        for key, value in self.auth.items():
            body[f"auth[{key}]"] = value
        return body

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            time.sleep(self.delay)
            event, entity_id = item
            data = urlencode(self.payload(event, entity_id)).encode()
            request = urllib.request.Request(
                self.url, data=data, method="POST",
                headers={"Content-Type": "application/x-www-form-urlencoded", "User-Agent": "Bitrix24 Webhook Engine"},
            )
            ok = False
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    ok = 200 <= response.status < 300
            except Exception as exc:  # the portal only logs a failed delivery
                log.info("sandbox event %s for %s not delivered: %s", event, entity_id, exc)
            if self.on_result is not None:
                self.on_result(ok)

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=2)

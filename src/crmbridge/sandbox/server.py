"""The sandbox portal's HTTP side: `SandboxPortal` (auth, limits, faults, batch, envelopes) on a stdlib ThreadingHTTPServer."""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import random
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import urlsplit

from .app import RequestAuth, SandboxApp, current_auth, serving
from .events import Delivery, EventSender
from .limits import LeakyBucket, OperatingTime
from .methods import METHODS, ApiError, Context, MethodResult, build_status_table, build_user_table
from .seed import seed_portal
from .state import PortalState
from .wire import dumps, php_map, php_parse_query, time_block, truthy

log = logging.getLogger(__name__)

MAX_BATCH = 50
NON_LIST_COST = 0.01  # simulated operating seconds of a non-list call

HTML_503 = (
    "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
    "<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
).encode()

#: error texts per dialect. "classic" = RU docs and older EN docs (and the brief);
#: "current" = EN _includes/system-errors.md as of 2026 (INVALID_CREDENTIALS, insufficient_scope as 401).
AUTH_DIALECTS: dict[str, dict[str, tuple[int, str, str]]] = {
    "classic": {
        "auth": (401, "NO_AUTH_FOUND", "Wrong authorization data"),
        "scope": (403, "insufficient_scope", "The request requires higher privileges than provided by the webhook token"),
    },
    "current": {
        "auth": (401, "INVALID_CREDENTIALS", "Invalid request credentials"),
        "scope": (401, "insufficient_scope", "The request requires higher privileges than provided by the webhook token"),
    },
}

_REF_RE = re.compile(r"\$(result_error|result_total|result_next|result_time|result)((?:\[[^\]\[]*\])+)")
_PATH_RE = re.compile(r"^/rest/(?:(\d+)/([^/]+)/)?([A-Za-z0-9_.]+?)(?:\.(json|xml))?/?$")


@dataclass(frozen=True)
class PortalStats:
    """A consistent snapshot of what the portal served (taken under a lock)."""

    requests: int
    calls: dict[str, int]
    query_limit_exceeded: int  # 503 QUERY_LIMIT_EXCEEDED answers
    operation_time_limit: int  # 429 OPERATION_TIME_LIMIT answers, incl. batch commands refused
    operating_seconds: dict[str, float]  # simulated method time charged since start, per method
    faults: dict[str, int]
    events_sent: int
    events_failed: int
    rows: dict[str, int] = field(default_factory=dict)  # list rows returned per method (a page read twice counts twice)

    def rows_for(self, method: str) -> int:
        """Rows a list method returned, over every page and batch command."""
        return self.rows.get(method, 0)

    @property
    def sent_503(self) -> int:
        return self.query_limit_exceeded

    @property
    def sent_429(self) -> int:
        return self.operation_time_limit

    @property
    def requests_total(self) -> int:
        return self.requests

    @property
    def faults_injected(self) -> int:
        return sum(self.faults.values())

    @property
    def operating_total(self) -> float:
        return sum(self.operating_seconds.values())

    def requests_for(self, method: str) -> int:
        """Calls of one method, nested batch commands included."""
        return self.calls.get(method, 0)

    def snapshot(self) -> dict[str, Any]:
        """A plain dict (picklable, JSON-ready) of everything above."""
        return {
            "requests_total": self.requests, "calls": dict(self.calls),
            "query_limit_exceeded": self.query_limit_exceeded, "operation_time_limit": self.operation_time_limit,
            "operating_seconds": dict(self.operating_seconds), "operating_total": self.operating_total,
            "faults": dict(self.faults), "faults_injected": self.faults_injected, "events_sent": self.events_sent, "events_failed": self.events_failed,
            "rows": dict(self.rows),
        }


@dataclass
class _Counters:
    requests: int = 0
    calls: dict[str, int] = field(default_factory=dict)
    query_limit_exceeded: int = 0
    operation_time_limit: int = 0
    operating_seconds: dict[str, float] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    events_sent: int = 0
    events_failed: int = 0
    rows: dict[str, int] = field(default_factory=dict)


#: methods that may answer `false` (not created) instead of an id
_MAY_NOT_CREATE = frozenset({"im.notify.system.add", "im.message.add"})


class _Drop(Exception):
    """Close the connection without an answer."""


class SandboxPortal:
    """A Bitrix24-compatible REST portal on 127.0.0.1 with seeded data (see docs/architecture.md).

    Every knob has the real cloud value as default; `limits=False` turns the bucket and the
    operating-time block off (time is still accounted and reported). `faults` is the probability
    that a request is hit by a network/server fault; a faulted write is either not applied, or
    applied with its answer lost. `not_created` is the probability that a notification or chat message is
    not created and the method answers `false` (im.notify.system.add documents it). `now` pins the portal clock
    (seeded dates are relative to it); `advance(seconds)` moves it on.
    """

    def __init__(
        self,
        deals: int = 2000,
        seed: int = 1,
        latency_ms: float = 0,
        faults: float = 0.0,
        rate: float = 2.0,
        burst: int = 50,
        operating_limit: float = 480.0,
        window_seconds: float = 600,
        count_cost_per_row: float = 21e-6,
        page_cost: float = 0.05,
        row_cost: float = 0.002,
        limits: bool = True,
        events_url: str | None = None,
        application_token: str = "sandbox-app-token",
        webhook_user: int = 1,
        webhook_code: str = "sandboxcode",
        scopes: tuple[str, ...] = ("crm", "task", "im", "user", "department"),
        *,
        now: datetime | float | None = None,
        error_dialect: str = "classic",
        events_delay: float = 0.1,
        events_workers: int = 4,
        slow_seconds: tuple[float, float] = (1.0, 1.5),
        not_created: float = 0.0,
        app_options: dict[str, Any] | None = None,
    ) -> None:
        if error_dialect not in AUTH_DIALECTS:
            raise ValueError(f"error_dialect must be one of {sorted(AUTH_DIALECTS)}")
        self.latency_ms = latency_ms
        self.faults = faults
        #: which faults `faults` injects (None: all of 500, html503, drop, slow and, on writes, applied_drop); a test
        #: seam, e.g. {"applied_drop"}: every failed write is applied and its answer lost
        self.fault_kinds: frozenset[str] | None = None
        self.limits = limits
        self.count_cost_per_row = count_cost_per_row
        self.page_cost = page_cost
        self.row_cost = row_cost
        self.events_url = events_url
        self.application_token = application_token
        self.webhook_user = webhook_user
        self.webhook_code = webhook_code
        self.scopes = tuple(scopes)
        self.error_dialect = error_dialect
        self.slow_seconds = slow_seconds
        self.not_created = not_created
        #: test seam: called with each batch command's method before the portal runs it (crash tests kill the client
        #: there: the portal goes on with the batch, as a real one does when its caller dies)
        self.on_command: Callable[[str], None] | None = None
        self.bucket = LeakyBucket(rate, burst)
        self.operating = OperatingTime(operating_limit, window_seconds)
        self._fault_rng = random.Random(seed * 7919 + 17)  # deterministic for a given seed and request order
        self._fault_lock = threading.Lock()
        self._stats = _Counters()
        self._stats_lock = threading.Lock()

        if now is None:
            now_ts = time.time()
        elif isinstance(now, datetime):
            now_ts = now.timestamp()
        else:
            now_ts = float(now)
        # the portal clock runs from `now` at real speed, so writes after a pinned start stay ordered
        self._clock_offset = now_ts - time.time()
        self.state = PortalState(clock=lambda: time.time() + self._clock_offset)
        # hundreds of thousands of small dicts: cyclic GC passes would cost more than the seeding itself,
        # and freezing keeps a big seeded heap out of later collections (no latency spikes mid-sync)
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            seed_portal(self.state, deals=deals, seed=seed, now=now_ts)
        finally:
            if gc_was_enabled:
                gc.enable()
            if deals >= 20_000:
                gc.freeze()  # only worth it for big portals: frozen objects are never cycle-collected
        self.state.on_event = self._on_event
        self._status_table = build_status_table()
        self._user_table = build_user_table()
        self.member_id = hashlib.md5(f"sandbox-{seed}".encode()).hexdigest()
        #: the local OAuth application installed on this portal (sandbox/app.py): token server, event bindings,
        #: offline queue; `app_options` are SandboxApp's keyword arguments
        self.app = SandboxApp(self, **(app_options or {}))
        self._events_delay = events_delay
        self.app.events_delay = events_delay
        self._events_workers = events_workers
        self._sender: EventSender | None = None
        #: while True every REST request is dropped without an answer (the portal is unreachable);
        #: events still go out (the queue server is another machine)
        self.outage = False
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self, port: int = 0) -> "SandboxPortal":
        """Serve on 127.0.0.1:`port` (0 = any free port) from a background thread."""
        portal = self

        class Handler(_Handler):
            pass

        Handler.portal = portal
        server = _Server(("127.0.0.1", port), Handler)
        self._server = server
        self.port = server.server_address[1]
        if self.events_url:
            self.send_events_to(self.events_url)
        self._thread = threading.Thread(target=server.serve_forever, name="sandbox-portal", daemon=True)
        self._thread.start()
        return self

    def send_events_to(self, url: str | None, *, events: tuple[str, ...] | None = None,
                       application_token: str | None = None) -> None:
        """Point the outgoing webhook at `url` (None: stop sending), as an admin creates one in the portal.

        `events` limits it to those event names (None = all); `application_token` is the token it sends
        (default: the portal's), so a test can play a forged or foreign sender.
        """
        if self.port is None:
            raise RuntimeError("start the sandbox portal first")
        if self._sender is not None:
            self._sender.stop()
            self._sender = None
        self.events_url = url
        if not url:
            return
        self._sender = EventSender(
            url,
            {
                "domain": f"127.0.0.1:{self.port}",
                "client_endpoint": f"http://127.0.0.1:{self.port}/rest/",
                "server_endpoint": "https://oauth.bitrix.info/rest/",
                "member_id": self.member_id,
                "application_token": application_token or self.application_token,
            },
            delay=self._events_delay,
            workers=self._events_workers,
            on_result=self._count_event,
            events=events,
        )

    def deliveries(self) -> list[Delivery]:
        """The outgoing webhook's delivery log: every event sent, with the HTTP status it got."""
        return self._sender.deliveries() if self._sender is not None else []

    def wait_events(self, timeout: float = 30.0) -> bool:
        """Wait until every event emitted so far was delivered (or failed)."""
        return self._sender.wait_idle(timeout) if self._sender is not None else True

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._sender is not None:
            self._sender.stop()
            self._sender = None
        self.app.stop()

    def __enter__(self) -> "SandboxPortal":
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def webhook_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the sandbox portal is not started")
        return f"http://127.0.0.1:{self.port}/rest/{self.webhook_user}/{self.webhook_code}/"

    # --- Python-side API ----------------------------------------------------------------------------

    def update_deal(self, deal_id: int, fields: dict[str, Any], *, user_id: int | None = None) -> None:
        """Change a deal as a portal user would: moves DATE_MODIFY, writes history, fires ONCRMDEALUPDATE.

        Unlike crm.deal.update this may change CATEGORY_ID (history TYPE_ID 5).
        """
        self.state.update_deal(deal_id, fields, user_id=user_id or self.webhook_user, allow_category_change=True)

    def add_deal(self, fields: dict[str, Any], *, user_id: int | None = None) -> int:
        return self.state.add_deal(fields, user_id=user_id or self.webhook_user)

    def delete_deal(self, deal_id: int) -> None:
        self.state.delete_deal(deal_id)

    def add_task(self, fields: dict[str, Any], *, user_id: int | None = None) -> int:
        """A manager creates a task (fields as tasks.task.add takes them); fires ONTASKADD."""
        return self.state.add_task(fields, user_id=user_id or self.webhook_user)

    def update_task(self, task_id: int, fields: dict[str, Any], *, user_id: int | None = None) -> None:
        """A manager edits a task (e.g. STATUS 5 = completed); fires ONTASKUPDATE."""
        self.state.update_task(task_id, fields, user_id=user_id or self.webhook_user)

    def update_client(self, kind: str, client_id: int, fields: dict[str, Any]) -> None:
        """A manager edits a contact or company; fires ONCRMCONTACTUPDATE / ONCRMCOMPANYUPDATE."""
        self.state.update_client(kind, client_id, fields)

    @property
    def stats(self) -> PortalStats:
        with self._stats_lock:
            s = self._stats
            return PortalStats(s.requests, dict(s.calls), s.query_limit_exceeded, s.operation_time_limit,
                               dict(s.operating_seconds), dict(s.faults), s.events_sent, s.events_failed, dict(s.rows))

    # --- internals --------------------------------------------------------------------------------

    def _on_event(self, event: str, entity_id: int) -> None:
        self.app.record(event, entity_id)
        self.app.call_handlers(event, entity_id)
        sender = self._sender
        if sender is not None:
            sender.emit(event, entity_id)

    def _count_event(self, ok: bool) -> None:
        with self._stats_lock:
            if ok:
                self._stats.events_sent += 1
            else:
                self._stats.events_failed += 1

    def _bump(self, attr: str, key: str | None = None, amount: float = 1) -> None:
        with self._stats_lock:
            if key is None:
                setattr(self._stats, attr, getattr(self._stats, attr) + amount)
            else:
                bucket = getattr(self._stats, attr)
                bucket[key] = bucket.get(key, 0) + amount

    def _pick_fault(self, writes: bool) -> str | None:
        if self.faults <= 0:
            return None
        with self._fault_lock:
            if self._fault_rng.random() >= self.faults:
                return None
            kinds = ["500", "html503", "drop", "slow"]
            if writes:
                kinds.append("applied_drop")  # the write happens, the answer is lost
            if self.fault_kinds is not None:
                kinds = [kind for kind in kinds if kind in self.fault_kinds]
                if not kinds:
                    return None  # e.g. only `applied_drop` asked for, and this request writes nothing
            kind = self._fault_rng.choice(kinds)
            slow = self._fault_rng.uniform(*self.slow_seconds)
        self._bump("faults", kind)
        if kind == "slow":
            time.sleep(slow)
        return kind

    def _context(self, method: str = "") -> Context:
        auth = current_auth()
        extra: dict[str, Any] = {"app": self.app, "auth": auth}
        if self.not_created > 0 and method in _MAY_NOT_CREATE:
            with self._fault_lock:
                extra["not_created"] = self._fault_rng.random() < self.not_created
            if extra["not_created"]:
                self._bump("faults", "not_created")
        return Context(self.state, auth.user_id if auth is not None else self.webhook_user, self.scopes,
                       self._status_table, self._user_table, extra)

    def advance(self, seconds: float) -> None:
        """Move the portal's clock on (tests: "a run days later"); its seeded data does not change."""
        self._clock_offset += seconds

    def call(self, method: str, params: dict[str, Any]) -> tuple[MethodResult, dict[str, Any]]:
        """Run one method with scope and operating-time checks; returns the result and its `time` block."""
        started = time.time()
        spec = METHODS.get(method)
        if spec is None:
            raise ApiError(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")
        if spec.scope is not None and spec.scope not in self.scopes:
            raise ApiError(*AUTH_DIALECTS[self.error_dialect]["scope"])
        self._bump("calls", method)
        if self.limits and self.operating.blocked(method):
            self._bump("operation_time_limit")
            raise _OperatingBlocked(self.operating.reset_at(method), self.operating.used(method))
        t0 = time.perf_counter()
        try:
            result = spec.handler(self._context(method), params)
        except ApiError:
            self._charge(method, NON_LIST_COST)
            raise
        except Exception:
            log.exception("sandbox method %s failed", method)
            raise ApiError(500, "INTERNAL_SERVER_ERROR", "Internal server error") from None
        processing = time.perf_counter() - t0
        if result.is_list:
            self._bump("rows", method, result.rows)
            cost = self.page_cost + self.row_cost * result.rows
            cost += self.count_cost_per_row * result.counted
        else:
            cost = NON_LIST_COST
        operating = self._charge(method, cost)
        finished = time.time()
        return result, time_block(started, finished, processing, operating, self.operating.reset_at(method))

    def _charge(self, method: str, cost: float) -> float:
        self._bump("operating_seconds", method, cost)
        return self.operating.add(method, cost)

    def batch(self, params: dict[str, Any]) -> dict[str, Any]:
        """The `batch` method: ≤50 `method?query` commands, `$result[...]` references, halt, PHP-shaped maps."""
        cmd = params.get("cmd", params.get("CMD"))
        if isinstance(cmd, list):
            commands = [(str(i), v) for i, v in enumerate(cmd)]
        elif isinstance(cmd, dict):
            commands = [(str(k), v) for k, v in cmd.items()]
        else:
            commands = []
        if len(commands) > MAX_BATCH:
            raise ApiError(400, "ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded")
        halt = truthy(params.get("halt", params.get("HALT", 0)))
        maps: dict[str, dict[str, Any]] = {"result": {}, "result_error": {}, "result_total": {},
                                           "result_next": {}, "result_time": {}}
        for key, command in commands:
            method, _, query = str(command).partition("?")
            method = _method_name(method)
            sub_params = _resolve(php_parse_query(query), maps)
            try:
                if method == "batch":
                    raise ApiError(405, "ERROR_BATCH_METHOD_NOT_ALLOWED", "Method is not allowed for batch usage")
                if self.on_command is not None:
                    self.on_command(method)
                result, tblock = self.call(method, sub_params)
            except _OperatingBlocked as blocked:
                maps["result_error"][key] = blocked.body()
                if halt:
                    break
                continue
            except ApiError as err:
                maps["result_error"][key] = err.body()
                if halt:
                    break
                continue
            maps["result"][key] = result.result
            if result.is_list:
                maps["result_total"][key] = result.total or 0
                if result.next is not None:
                    maps["result_next"][key] = result.next
            maps["result_time"][key] = tblock
        return {name: php_map(values) for name, values in maps.items()}

    def handle_http(self, method_path: str, query: str, body: bytes, content_type: str) -> tuple[int, str, bytes]:
        """One HTTP request -> (status, content type, body). Raises _Drop to close without an answer."""
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000.0)
        self._bump("requests")
        started = time.time()
        if self.outage:
            raise _Drop()
        match = _PATH_RE.match(method_path)
        params = _parse_params(query, body, content_type)
        method = _method_name(match.group(3)) if match else ""
        writes = _is_write(method, params)
        fault = self._pick_fault(writes)
        if fault == "500":
            return 500, "application/json", dumps({"error": "INTERNAL_SERVER_ERROR", "error_description": "Internal server error"})
        if fault == "html503":
            return 503, "text/html", HTML_503
        if fault == "drop":
            raise _Drop()
        try:
            if match is None:
                raise ApiError(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")
            user, code = match.group(1), match.group(2)
            if user is None:
                # an application's call: /rest/<method> with auth=<access_token> (D settings/oauth/index.md)
                auth = self.app.authenticate(params)
            elif int(user) != self.webhook_user or code != self.webhook_code:
                raise ApiError(*AUTH_DIALECTS[self.error_dialect]["auth"])
            else:
                auth = RequestAuth("webhook", self.webhook_user, None, str(params.get("auth_connector") or ""))
            # the auth data is the request's, not a method parameter; a batch's commands share it
            params.pop("auth", None)
            params.pop("auth_connector", None)
            if self.limits and not self.bucket.admit():
                self._bump("query_limit_exceeded")
                raise ApiError(503, "QUERY_LIMIT_EXCEEDED", "Too many requests")
            with serving(auth):
                if method == "batch":
                    t0 = time.perf_counter()
                    result_payload: dict[str, Any] = {"result": self.batch(params)}
                    finished = time.time()
                    # the outer batch call is not charged: each command counted for its own method
                    result_payload["time"] = time_block(started, finished, time.perf_counter() - t0)
                else:
                    result, tblock = self.call(method, params)
                    result_payload = {"result": result.result}
                    if result.is_list:
                        result_payload["total"] = result.total or 0
                        if result.next is not None:
                            result_payload["next"] = result.next
                    result_payload["time"] = tblock
            status, payload = 200, dumps(result_payload)
        except _OperatingBlocked as blocked:
            status, payload = 429, dumps(blocked.body(with_time=True))
        except ApiError as err:
            status, payload = err.status, dumps(err.body())
        if fault == "applied_drop":
            raise _Drop()
        return status, "application/json", payload


    def handle_oauth(self, path: str, query: str) -> tuple[int, str, bytes, dict[str, str]]:
        """The authorization server (oauth.bitrix.info) and the portal's /oauth/authorize/ page, on the same port.

        Faults hit the token endpoint too: `applied_drop` rotates the pair and loses the answer, the case a
        client's token store must survive.
        """
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000.0)
        self._bump("requests")
        token_call = path.rstrip("/") == "/oauth/token"
        if not token_call and path.rstrip("/") != "/oauth/authorize":
            return 404, "text/html", b"<html><body>Not found</body></html>", {}
        fault = self._pick_fault(token_call) if token_call else None
        if fault == "500":
            return 500, "text/html", b"<html><body>Internal Server Error</body></html>", {}
        if fault == "html503":
            return 503, "text/html", HTML_503, {}
        if fault == "drop":
            raise _Drop()
        answer = self.app.http(path, query)
        if fault == "applied_drop":
            raise _Drop()
        return answer


class _OperatingBlocked(Exception):
    def __init__(self, reset_at: float, operating: float) -> None:
        super().__init__("OPERATION_TIME_LIMIT")
        self.reset_at = reset_at
        self.operating = operating

    def body(self, with_time: bool = False) -> dict[str, Any]:
        payload: dict[str, Any] = {"error": "OPERATION_TIME_LIMIT",
                                   "error_description": "Method is blocked due to operation time limit."}
        if with_time:
            now = time.time()
            # not in the docs' error envelope, but clients need the reset time without another call
            payload["time"] = time_block(now, now, 0.0, self.operating, self.reset_at)
        return payload


def _method_name(raw: str) -> str:
    name = raw.strip().lower()
    for suffix in (".json", ".xml"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _is_write(method: str, params: dict[str, Any]) -> bool:
    if method == "batch":
        cmd = params.get("cmd")
        values = cmd.values() if isinstance(cmd, dict) else cmd if isinstance(cmd, list) else []
        return any(_is_write(_method_name(str(v).partition("?")[0]), {}) for v in values)
    spec = METHODS.get(method)
    return bool(spec and spec.writes)


def _parse_params(query: str, body: bytes, content_type: str) -> dict[str, Any]:
    """GET query string, PHP-style form bodies and JSON bodies, merged as PHP's $_REQUEST would be."""
    params: dict[str, Any] = php_parse_query(query) if query else {}
    if not body:
        return params
    text = body.decode("utf-8", errors="replace")
    if "json" in content_type.lower() or text.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            params.update(data)
        return params
    params.update(php_parse_query(text))
    return params


def _lookup(maps: dict[str, dict[str, Any]], name: str, path: list[str]) -> tuple[bool, Any]:
    node: Any = maps[name]
    for part in path:
        if isinstance(node, dict):
            if part in node:
                node = node[part]
                continue
            return False, None
        if isinstance(node, list):
            try:
                node = node[int(part)]
                continue
            except (ValueError, IndexError):
                return False, None
        return False, None
    return True, node


def _resolve(value: Any, maps: dict[str, dict[str, Any]]) -> Any:
    """Replace `$result[cmd][0][ID]`-style references with earlier commands' values (unresolved -> "")."""
    if isinstance(value, dict):
        return {k: _resolve(v, maps) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, maps) for v in value]
    if not isinstance(value, str) or "$result" not in value:
        return value
    whole = _REF_RE.fullmatch(value)
    if whole:
        found, target = _lookup(maps, whole.group(1), re.findall(r"\[([^\]\[]*)\]", whole.group(2)))
        return target if found else ""

    def sub(m: re.Match[str]) -> str:
        found, target = _lookup(maps, m.group(1), re.findall(r"\[([^\]\[]*)\]", m.group(2)))
        return str(target) if found and not isinstance(target, (dict, list)) else ""

    return _REF_RE.sub(sub, value)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # clients hanging up mid-answer (timeouts, aborted syncs) are normal network life, not server bugs
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: real clients reuse connections
    # headers and body go out in two writes; with Nagle on, a keep-alive client waits ~40 ms per answer
    disable_nagle_algorithm = True
    server_version = "nginx"
    sys_version = ""
    portal: SandboxPortal

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return  # request logs would drown test output

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers: dict[str, str] = {}
        try:
            if parts.path.startswith("/oauth/"):
                status, ctype, payload, headers = self.portal.handle_oauth(parts.path, parts.query)
            else:
                status, ctype, payload = self.portal.handle_http(
                    parts.path, parts.query, body, self.headers.get("Content-Type", ""))
        except _Drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.send_response(status)
        self.send_header("Content-Type", f"{ctype}; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._serve()

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        self._serve()


#: the sandbox's default port: not crmbridge serve's 8024, so both run side by side with their defaults
DEFAULT_PORT = 8030


def serve_forever(
    port: int = DEFAULT_PORT,
    deals: int = 2000,
    seed: int = 1,
    latency_ms: float = 0,
    faults: float = 0.0,
    events_url: str | None = None,
    **options: Any,
) -> None:
    """Run a sandbox portal on 127.0.0.1:`port`, print its webhook URL, block until Ctrl-C."""
    t0 = time.perf_counter()
    portal = SandboxPortal(deals=deals, seed=seed, latency_ms=latency_ms, faults=faults, events_url=events_url, **options)
    portal.start(port)
    try:
        planted = len(portal.state.planted)
        print(f"Sandbox Bitrix24 portal: {deals} deals ({planted} breaking the regulation), seed {seed}, "
              f"seeded in {time.perf_counter() - t0:.1f} s")
        print(f"Webhook URL: {portal.webhook_url}")
        if events_url:
            print(f"Outgoing webhook: every change is POSTed to {events_url}; "
                  f"CRMBRIDGE_BITRIX24_APPLICATION_TOKEN={portal.application_token}")
        else:
            print("Outgoing webhook: none (--events-url http://127.0.0.1:8024/bitrix24/events sends the portal's "
                  f"events to crmbridge serve, with CRMBRIDGE_BITRIX24_APPLICATION_TOKEN={portal.application_token})")
        print(f"OAuth application: CRMBRIDGE_BITRIX24_CLIENT_ID={portal.app.client_id} "
              f"CRMBRIDGE_BITRIX24_CLIENT_SECRET={portal.app.client_secret} "
              f"CRMBRIDGE_BITRIX24_OAUTH_URL={portal.app.oauth_url}; then "
              f"crmbridge connect --portal http://127.0.0.1:{portal.port}", flush=True)
        while True:
            time.sleep(3600)  # sleep, unlike a bare lock wait, is interrupted by Ctrl-C on every platform
    except KeyboardInterrupt:
        pass
    finally:
        portal.stop()

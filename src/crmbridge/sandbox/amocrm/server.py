"""The sandbox amoCRM account over HTTP on 127.0.0.1: v4 routes, HAL, 204, 7 rps with 429, OAuth with rotation, hooks.

What it answers as amoCRM does (reference and the official PHP library): HAL lists with `_page`,
`_links.self/next` and `_embedded.<entity>`, 204 with an empty body when a list or an id finds nothing,
problem+json errors (401, 400 with `validation-errors` per request_id, 404), nginx HTML for 429 and for
the 403 of an account blocked after repeated excess, `/oauth2/access_token` with single-use refresh tokens
("Token has been revoked" on reuse), webhooks form-encoded in the older v2 field shape.
"""

from __future__ import annotations

import gc
import json
import logging
import queue
import random
import secrets
import socket
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlencode, urlsplit

from crmbridge.sandbox.amocrm import catalog as c
from crmbridge.sandbox.amocrm.state import AccountState, ApiError
from crmbridge.sandbox.seed import seed_portal
from crmbridge.sandbox.server import _Server
from crmbridge.sandbox.state import PortalState
from crmbridge.sandbox.wire import php_parse_query

log = logging.getLogger(__name__)

PAGE_MAX = 250
EVENTS_MAX = 100
FIELDS_MAX = 50
WRITE_MAX = 250  # items per add / update request (reference §7)

HTML_429 = (b"<html>\r\n<head><title>429 Too Many Requests</title></head>\r\n<body>\r\n<center><h1>429 Too Many "
            b"Requests</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
HTML_403 = (b"<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body>\r\n<center><h1>403 Forbidden</h1>"
            b"</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
HTML_502 = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
            b"</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
#: the body amoCRM answers to a reused (revoked) refresh token (reference §1, amocrm-api-php #123, #269)
REVOKED = {"hint": "Token has been revoked", "title": "Некорректный запрос",
           "type": "https://developers.amocrm.ru/v3/errors/OAuthProblemJson", "status": 401,
           "detail": "В запросе отсутствует ряд параметров или параметры невалидны"}


class _Drop(Exception):
    """Close the connection without an answer."""


@dataclass(frozen=True)
class AccountStats:
    """What the account served: requests, per route, 429s, the most requests that reached it in any one second
    (refused ones included)."""

    requests: int
    calls: dict[str, int]
    rate_limited: int
    blocked: int
    peak_per_second: int
    faults: dict[str, int]
    hooks_sent: int
    hooks_failed: int
    token_refreshes: int

    def snapshot(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Counters:
    requests: int = 0
    calls: dict[str, int] = field(default_factory=dict)
    rate_limited: int = 0
    blocked: int = 0
    peak_per_second: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    hooks_sent: int = 0
    hooks_failed: int = 0
    token_refreshes: int = 0


class SlidingWindow:
    """The account's 7-per-second limit: a request over `rate` in the last second is refused (429).

    Repeated excess blocks the account (403 for every request, reference §7): more than `block_after`
    refusals within a minute block it for `block_seconds`. `peak` is the most requests that reached the
    account within any one second, refused and blocked ones included (what a client's limiter promises to
    keep at or under `rate`; the admitted ones alone never exceed it by construction).
    """

    def __init__(self, rate: int = 7, *, block_after: int = 30, block_seconds: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.block_after = block_after
        self.block_seconds = block_seconds
        self._clock = clock
        self._admitted: deque[float] = deque()
        self._refused: deque[float] = deque()
        self._arrived: deque[float] = deque()  # every request of the last second, as the account took it
        self._blocked_until = 0.0
        self._lock = threading.Lock()
        self.peak = 0

    def admit(self, enforce: bool = True) -> str:
        """'ok', 'limited' (429) or 'blocked' (403); `enforce` False only counts (an account without limits)."""
        with self._lock:
            now = self._clock()
            while self._arrived and self._arrived[0] <= now - 1.0:
                self._arrived.popleft()
            self._arrived.append(now)
            self.peak = max(self.peak, len(self._arrived))
            if not enforce:
                return "ok"
            if now < self._blocked_until:
                return "blocked"
            while self._admitted and self._admitted[0] <= now - 1.0:
                self._admitted.popleft()
            while self._refused and self._refused[0] <= now - 60.0:
                self._refused.popleft()
            if len(self._admitted) >= self.rate:
                self._refused.append(now)
                if len(self._refused) > self.block_after:
                    self._blocked_until = now + self.block_seconds
                return "limited"
            self._admitted.append(now)
            return "ok"


class HookSender:
    """Delivers webhooks as amoCRM does: one form-encoded POST per change, from a queue thread."""

    def __init__(self, urls: Callable[[], list[str]], *, delay: float = 0.05, timeout: float = 2.0,
                 on_result: Callable[[bool], None] | None = None) -> None:
        self._urls = urls
        self.delay = delay
        self.timeout = timeout  # amoCRM waits 2 s for an answer (reference §8)
        self.on_result = on_result
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="sandbox-amocrm-hooks", daemon=True)
        self._thread.start()

    def emit(self, body: bytes) -> None:
        self._queue.put(body)

    def _run(self) -> None:
        while True:
            body = self._queue.get()
            if body is None:
                return
            time.sleep(self.delay)
            for url in self._urls():
                request = urllib.request.Request(url, data=body, method="POST", headers={
                    "Content-Type": "application/x-www-form-urlencoded", "User-Agent": "amoCRM-Webhooks/3.0"})
                ok = False
                try:
                    with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310 - loopback
                        ok = 100 <= answer.status < 300
                except Exception:  # a hook that fails is counted; amoCRM retries later (not modelled)
                    ok = False
                if self.on_result is not None:
                    self.on_result(ok)

    def stop(self) -> None:
        self._queue.put(None)


def hook_fields(entity: str, action: str, record: Mapping[str, Any]) -> dict[str, str]:
    """One change in the older v2 webhook shape: `leads[status][0][id]=…`, every value a string (reference §8)."""
    prefix = f"{entity}[{action}][0]"
    out: dict[str, str] = {}

    def put(key: str, value: Any) -> None:
        if value is not None:
            out[f"{prefix}[{key}]"] = str(int(value) if isinstance(value, bool) else value)

    put("id", record.get("id"))
    if entity == "leads":
        put("status_id", record.get("status_id"))
        put("pipeline_id", record.get("pipeline_id"))
        if action != "delete":
            put("name", record.get("name"))
            put("price", record.get("price"))
            put("responsible_user_id", record.get("responsible_user_id"))
            put("last_modified", record.get("updated_at"))
            put("modified_user_id", record.get("updated_by"))
            put("created_user_id", record.get("created_by"))
            put("date_create", record.get("created_at"))
            put("created_at", record.get("created_at"))
            put("updated_at", record.get("updated_at"))
            put("account_id", c.ACCOUNT_ID)
        if action == "status":
            put("old_status_id", record.get("old_status_id"))
        if action == "responsible":
            put("old_responsible_user_id", record.get("old_responsible_user_id"))
    else:
        put("name", record.get("name"))
        put("last_modified", record.get("updated_at"))
    for index, item in enumerate(record.get("custom_fields_values") or []):
        put(f"custom_fields][{index}][id", item.get("field_id"))
        put(f"custom_fields][{index}][name", item.get("field_name"))
        for number, value in enumerate(item.get("values") or []):
            put(f"custom_fields][{index}][values][{number}][value", value.get("value"))
            if value.get("enum_id") is not None:
                put(f"custom_fields][{index}][values][{number}][enum", value.get("enum_id"))
    return out


class SandboxAccount:
    """An amoCRM-compatible account on 127.0.0.1, seeded with the Bitrix24 sandbox's deals as leads.

    `faults` is the probability that a request meets a fault (500, HTML 502, dropped, slow; for writes also
    "applied, answer lost"); `limits=False` turns the 7 rps window off; `hooks_url` receives webhooks like a
    URL registered under Settings > Integrations > Web hooks.
    """

    def __init__(self, deals: int = 2000, seed: int = 1, *, latency_ms: float = 0, faults: float = 0.0,
                 rate: int = 7, limits: bool = True, hooks_url: str | None = None,
                 long_lived_token: str = c.LONG_LIVED_TOKEN, client_id: str = c.CLIENT_ID,
                 client_secret: str = c.CLIENT_SECRET, redirect_uri: str = c.REDIRECT_URI,
                 access_ttl: int = 86400, now: datetime | float | None = None,
                 slow_seconds: tuple[float, float] = (1.0, 1.5), block_after: int = 30,
                 delay_ms: tuple[float, float] = (0.0, 0.0)) -> None:
        self.latency_ms = latency_ms
        #: each request waits a random time in this range before the account takes it (delayed on its way: a loaded
        #: machine, a slow network), so requests sent a second apart can reach the account closer together
        self.delay_ms = delay_ms
        self._delay_rng = random.Random(seed * 104729 + 7)
        self.faults = faults
        self.limits = limits
        self.hooks_url = hooks_url
        self.long_lived_token = long_lived_token
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.access_ttl = access_ttl
        self.slow_seconds = slow_seconds
        self.window = SlidingWindow(rate, block_after=block_after)
        self._fault_rng = random.Random(seed * 7907 + 29)
        self._fault_lock = threading.Lock()
        self._stats = _Counters()
        self._stats_lock = threading.Lock()
        self._oauth_lock = threading.Lock()
        self._codes: dict[str, float] = {}  # authorization code -> expiry (wall)
        self._access: dict[str, float] = {}  # access token -> expiry (wall)
        self._refresh: dict[str, str] = {}  # refresh token -> "live" or "used"
        if now is None:
            now_ts = time.time()
        elif isinstance(now, datetime):
            now_ts = now.timestamp()
        else:
            now_ts = float(now)
        offset = now_ts - time.time()
        portal = PortalState(clock=lambda: time.time() + offset)
        collecting = gc.isenabled()
        gc.disable()
        try:
            seed_portal(portal, deals=deals, seed=seed, now=now_ts)
            self.state = AccountState(clock=lambda: time.time() + offset, seed=seed)
            self.state.load_from_portal(portal)
        finally:
            if collecting:
                gc.enable()
        del portal
        self.state.on_hook = self._on_hook
        self._hooks: HookSender | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._list_cache: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        self.port: int | None = None

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self, port: int = 0) -> "SandboxAccount":
        account = self

        class Handler(_Handler):
            pass

        Handler.account = account
        server = _Server(("127.0.0.1", port), Handler)
        self._server = server
        self.port = server.server_address[1]
        self._hooks = HookSender(self._hook_urls, on_result=self._count_hook)
        self._thread = threading.Thread(target=server.serve_forever, name="sandbox-amocrm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._hooks is not None:
            self._hooks.stop()
            self._hooks = None

    def __enter__(self) -> "SandboxAccount":
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the sandbox account is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def stats(self) -> AccountStats:
        with self._stats_lock:
            s = self._stats
            return AccountStats(s.requests, dict(s.calls), s.rate_limited, s.blocked, self.window.peak,
                                dict(s.faults), s.hooks_sent, s.hooks_failed, s.token_refreshes)

    # --- OAuth ------------------------------------------------------------------------------------

    def issue_code(self, ttl: float = 1200.0) -> str:
        """A new authorization code, as the account gives one when an admin installs the integration."""
        code = "def" + secrets.token_hex(24)
        with self._oauth_lock:
            self._codes[code] = time.time() + ttl
        return code

    def _token_pair(self) -> dict[str, Any]:
        access, refresh = "sbx." + secrets.token_urlsafe(32), "sbxr." + secrets.token_urlsafe(32)
        self._access[access] = time.time() + self.access_ttl
        self._refresh[refresh] = "live"
        return {"token_type": "Bearer", "expires_in": self.access_ttl, "server_time": int(time.time()),
                "access_token": access, "refresh_token": refresh}

    def expire_access_tokens(self) -> None:
        """Every access token stops working now (tests: a 401 whatever the client's clock says)."""
        with self._oauth_lock:
            for token in self._access:
                self._access[token] = 0.0

    def _oauth(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._oauth_lock:
            if body.get("client_id") != self.client_id or body.get("client_secret") != self.client_secret:
                return 401, {"hint": "Client authentication failed", "title": "Некорректный запрос",
                             "type": "https://developers.amocrm.ru/v3/errors/OAuthProblemJson", "status": 401,
                             "detail": "В запросе отсутствует ряд параметров или параметры невалидны"}
            grant = body.get("grant_type")
            if grant == "authorization_code":
                code = str(body.get("code") or "")
                expires = self._codes.pop(code, None)
                if expires is None or expires < time.time() or body.get("redirect_uri") != self.redirect_uri:
                    return 400, {"hint": "Authorization code has expired", "title": "Некорректный запрос",
                                 "type": "https://developers.amocrm.ru/v3/errors/OAuthProblemJson", "status": 400,
                                 "detail": "В запросе отсутствует ряд параметров или параметры невалидны"}
                return 200, self._token_pair()
            if grant == "refresh_token":
                token = str(body.get("refresh_token") or "")
                if self._refresh.get(token) != "live":
                    return 401, dict(REVOKED)
                self._refresh[token] = "used"  # single-use: any later use is refused
                with self._stats_lock:
                    self._stats.token_refreshes += 1
                return 200, self._token_pair()
            return 400, {"hint": "Unsupported grant type", "title": "Некорректный запрос", "status": 400,
                         "type": "https://developers.amocrm.ru/v3/errors/OAuthProblemJson",
                         "detail": "В запросе отсутствует ряд параметров или параметры невалидны"}

    def _token_user(self, header: str) -> int | None:
        """The user a bearer token acts as (the admin who installed the integration), None when refused."""
        if not header.startswith("Bearer "):
            return None
        token = header[7:].strip()
        if token == self.long_lived_token:
            return c.USER_IDS[1]
        with self._oauth_lock:
            expires = self._access.get(token)
        return c.USER_IDS[1] if expires is not None and expires > time.time() else None

    # --- hooks ------------------------------------------------------------------------------------

    def _hook_urls(self) -> list[str]:
        urls = [self.hooks_url] if self.hooks_url else []
        with self.state.lock:
            urls += [hook["destination"] for hook in self.state.webhooks if not hook.get("disabled")]
        return urls

    def _on_hook(self, entity: str, action: str, record: dict[str, Any]) -> None:
        if self._hooks is None or not self._hook_urls():
            return
        fields = hook_fields(entity, action, record)
        fields.update({"account[subdomain]": c.SUBDOMAIN, "account[id]": str(c.ACCOUNT_ID),
                       "account[_links][self]": self.base_url if self.port else ""})
        self._hooks.emit(urlencode(fields).encode())

    def _count_hook(self, ok: bool) -> None:
        self._bump("hooks_sent" if ok else "hooks_failed")

    # --- user-side API (tests and demos) ------------------------------------------------------------

    def update_lead(self, lead_id: int, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Change a lead as a manager would in the interface (events, updated_at, hooks)."""
        return self.state.update_lead(lead_id, dict(changes), user=c.USER_IDS[2])

    # --- request handling ---------------------------------------------------------------------------

    def _bump(self, attr: str, key: str | None = None) -> None:
        with self._stats_lock:
            if key is None:
                setattr(self._stats, attr, getattr(self._stats, attr) + 1)
            else:
                bucket = getattr(self._stats, attr)
                bucket[key] = bucket.get(key, 0) + 1

    def _pick_fault(self, writes: bool) -> str | None:
        if self.faults <= 0:
            return None
        with self._fault_lock:
            if self._fault_rng.random() >= self.faults:
                return None
            kinds = ["500", "html502", "drop", "slow"] + (["applied_drop"] if writes else [])
            kind = self._fault_rng.choice(kinds)
            slow = self._fault_rng.uniform(*self.slow_seconds)
        self._bump("faults", kind)
        if kind == "slow":
            time.sleep(slow)
        return kind

    def handle(self, verb: str, path: str, query: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, str, bytes]:
        """One HTTP request -> (status, content type, body); raises _Drop to close without an answer."""
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000.0)
        if self.delay_ms[1] > 0:
            with self._fault_lock:
                delay = self._delay_rng.uniform(*self.delay_ms)
            time.sleep(delay / 1000.0)
        self._bump("requests")
        if path == "/oauth2/access_token" and verb == "POST":
            try:
                payload = json.loads(body.decode("utf-8") or "{}")
            except ValueError:
                payload = {}
            status, answer = self._oauth(payload if isinstance(payload, dict) else {})
            return status, "application/json", _dumps(answer)
        writes = verb in ("POST", "PATCH", "DELETE")
        fault = self._pick_fault(writes)
        if fault == "500":
            return 500, "application/problem+json", _dumps({"title": "Internal Server Error", "status": 500,
                                                             "type": "https://httpstatus.es/500", "detail": ""})
        if fault == "html502":
            return 502, "text/html", HTML_502
        if fault == "drop":
            raise _Drop()
        verdict = self.window.admit(enforce=self.limits)
        if verdict != "ok":
            if verdict == "limited":
                self._bump("rate_limited")
                return 429, "text/html", HTML_429
            if verdict == "blocked":
                self._bump("blocked")
                return 403, "text/html", HTML_403
        user = self._token_user(headers.get("authorization", ""))
        if user is None:
            return 401, "application/problem+json", _dumps({"title": "Unauthorized", "type": "https://httpstatus.es/401",
                                                             "status": 401, "detail": "Неверный логин или пароль"})
        params = php_parse_query(query) if query else {}
        route = _route_name(verb, path)
        self._bump("calls", route)
        try:
            data = json.loads(body.decode("utf-8")) if body else None
        except ValueError:
            return 400, "application/problem+json", _dumps({"title": "Bad Request", "status": 400,
                                                             "type": "https://httpstatus.es/400",
                                                             "detail": "Request body is not a valid JSON"})
        try:
            status, answer = self._dispatch(verb, path, params, data, user)
        except ApiError as err:
            status, answer = err.status, err.body
        if fault == "applied_drop":
            raise _Drop()
        if status == 204:
            return 204, "", b""
        ctype = "application/hal+json" if status < 400 else "application/problem+json"
        return status, ctype, _dumps(answer)

    # --- routes -------------------------------------------------------------------------------------

    def _dispatch(self, verb: str, path: str, params: dict[str, Any], data: Any, user: int) -> tuple[int, Any]:
        parts = [part for part in path.split("/") if part]
        if parts[:2] != ["api", "v4"] or len(parts) < 3:
            raise ApiError(404, "Not Found", "Page not found")
        rest = parts[2:]
        if verb == "GET":
            return self._get(rest, params)
        if verb == "PATCH" and rest == ["leads"]:
            return 200, self._written("leads", self.state.patch_leads(_array(data), user))
        if verb == "PATCH" and len(rest) == 2 and rest[0] == "leads" and rest[1].isdigit():
            item = dict(data or {}) if isinstance(data, dict) else {}
            item["id"] = int(rest[1])
            answered = self.state.patch_leads([item], user)[0]
            answered.pop("request_id", None)
            return 200, dict(answered, _links={"self": {"href": f"{self.base_url}/api/v4/leads/{rest[1]}"}})
        if verb == "POST" and rest == ["tasks"]:
            return 200, self._written("tasks", self.state.add_tasks(_array(data), user))
        if verb == "PATCH" and rest == ["tasks"]:
            return 200, self._written("tasks", self.state.patch_tasks(_array(data)))
        if verb == "PATCH" and len(rest) == 2 and rest[0] == "tasks" and rest[1].isdigit():
            item = dict(data or {}) if isinstance(data, dict) else {}
            item["id"] = int(rest[1])
            answered = self.state.patch_tasks([item])[0]
            answered.pop("request_id", None)
            return 200, answered
        if verb == "POST" and rest == ["leads", "notes"]:
            return 200, self._written("notes", self.state.add_notes("leads", _array(data), user))
        if verb == "POST" and rest == ["webhooks"]:
            return 200, self._subscribe(data, user)
        if verb == "DELETE" and rest == ["webhooks"]:
            destination = (data or {}).get("destination") if isinstance(data, dict) else None
            with self.state.lock:
                self.state.webhooks[:] = [h for h in self.state.webhooks if h["destination"] != destination]
            return 204, None
        raise ApiError(404, "Not Found", f"No route for {verb} {path}")

    def _written(self, key: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        for item in items:
            entity = "leads/notes" if key == "notes" else key
            item["_links"] = {"self": {"href": f"{self.base_url}/api/v4/{entity}/{item['id']}"}}
        return {"_links": {"self": {"href": f"{self.base_url}/api/v4/{key}"}}, "_embedded": {key: items}}

    def _subscribe(self, data: Any, user: int) -> dict[str, Any]:
        if not isinstance(data, dict) or not str(data.get("destination") or "").startswith(("http://", "https://")):
            raise ApiError(400, "Bad Request", "Request validation failed", **{"validation-errors": [
                {"request_id": "0", "errors": [{"code": "NotBlank", "path": "destination",
                                                "detail": "This value should not be blank."}]}]})
        now = self.state.now()
        hook = {"id": self.state.next_id("webhook"), "destination": data["destination"], "created_by": user,
                "created_at": now, "updated_at": now, "sort": int(data.get("sort") or 10), "disabled": False,
                "settings": list(data.get("settings") or [])}
        with self.state.lock:
            self.state.webhooks[:] = [h for h in self.state.webhooks if h["destination"] != hook["destination"]]
            self.state.webhooks.append(hook)
        return hook

    def _get(self, rest: list[str], params: dict[str, Any]) -> tuple[int, Any]:
        state = self.state
        if rest == ["account"]:
            return 200, self._account(params)
        if rest == ["leads"]:
            rows = self._cached(("leads", _key(params)), lambda: _filter_leads(state, params))
            return self._page("leads", rows, params, PAGE_MAX, lambda lead: self._render_lead(lead, params))
        if len(rest) == 2 and rest[0] in ("leads", "contacts", "companies", "tasks") and rest[1].isdigit():
            table = {"leads": state.leads, "contacts": state.contacts, "companies": state.companies,
                     "tasks": state.tasks}[rest[0]]
            with state.lock:
                record = table.get(int(rest[1]))
            if record is None:
                return 204, None  # an unknown id is "no content" too (reference §2)
            if rest[0] == "leads":
                return 200, self._render_lead(record, params)
            return 200, self._render(rest[0], record)
        if rest == ["leads", "pipelines"]:
            return 200, self._pipelines()
        if rest in (["leads", "custom_fields"], ["contacts", "custom_fields"], ["companies", "custom_fields"]):
            fields = {"leads": c.LEAD_FIELDS, "contacts": c.CONTACT_FIELDS, "companies": c.COMPANY_FIELDS}[rest[0]]
            rows = [_render_field(f, rest[0]) for f in fields]
            return self._page("custom_fields", rows, params, FIELDS_MAX, lambda row: row, path=f"{rest[0]}/custom_fields")
        if rest in (["contacts"], ["companies"]):
            table = state.contacts if rest[0] == "contacts" else state.companies
            rows = self._cached((rest[0], _key(params)), lambda: _filter_plain(state, table, params))
            return self._page(rest[0], rows, params, PAGE_MAX, lambda row: self._render(rest[0], row))
        if rest == ["tasks"]:
            rows = self._cached(("tasks", _key(params)), lambda: _filter_tasks(state, params))
            return self._page("tasks", rows, params, PAGE_MAX, lambda row: self._render("tasks", row))
        if rest == ["leads", "notes"]:
            rows = self._cached(("notes", _key(params)), lambda: _filter_notes(state, params))
            return self._page("notes", rows, params, PAGE_MAX, lambda row: self._render("leads/notes", row),
                              path="leads/notes")
        if rest == ["events"]:
            rows = self._cached(("events", _key(params)), lambda: _filter_events(state, params))
            return self._page("events", rows, params, EVENTS_MAX, lambda row: dict(row, _links={"self": {
                "href": f"{self.base_url}/api/v4/events/{row['id']}"}}))
        if rest == ["users"]:
            with state.lock:
                rows = sorted(state.users.values(), key=lambda u: u["id"])
            return self._page("users", rows, params, PAGE_MAX, lambda row: self._render("users", row))
        if rest == ["webhooks"]:
            with state.lock:
                hooks = list(state.webhooks)
            wanted = (params.get("filter") or {}).get("destination") if isinstance(params.get("filter"), dict) else None
            hooks = [h for h in hooks if wanted is None or h["destination"] == wanted]
            if not hooks:
                return 204, None
            return 200, {"_total_items": len(hooks), "_links": {"self": {"href": f"{self.base_url}/api/v4/webhooks"}},
                         "_embedded": {"webhooks": hooks}}
        raise ApiError(404, "Not Found", "Page not found")

    def _cached(self, key: tuple[Any, ...], build: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """Filtered lists are kept per state version: a full sync pages through the same list many times."""
        with self.state.lock:
            version = self.state.version
            full_key = (version, *key)
            rows = self._list_cache.get(full_key)
            if rows is None:
                if len(self._list_cache) > 64:
                    self._list_cache.clear()
                rows = self._list_cache[full_key] = build()
            return rows

    def _page(self, key: str, rows: list[dict[str, Any]], params: Mapping[str, Any], maximum: int,
              render: Callable[[dict[str, Any]], dict[str, Any]], *, path: str | None = None) -> tuple[int, Any]:
        page = max(1, _int(params.get("page"), 1))
        limit = min(maximum, max(1, _int(params.get("limit"), 50)))
        chunk = rows[(page - 1) * limit: page * limit]
        if not chunk:
            return 204, None
        href = f"{self.base_url}/api/v4/{path or key}"
        links: dict[str, Any] = {"self": {"href": f"{href}?page={page}&limit={limit}"}}
        if page * limit < len(rows):
            links["next"] = {"href": f"{href}?page={page + 1}&limit={limit}"}
        if page > 1:
            links["prev"] = {"href": f"{href}?page={page - 1}&limit={limit}"}
        return 200, {"_page": page, "_links": links, "_embedded": {key: [render(row) for row in chunk]}}

    def _render(self, entity: str, record: dict[str, Any]) -> dict[str, Any]:
        out = dict(record)
        out.pop("company_id", None)
        out["_links"] = {"self": {"href": f"{self.base_url}/api/v4/{entity}/{record['id']}"}}
        if entity == "contacts":
            company = record.get("company_id")
            out["_embedded"] = {"tags": [], "companies": [{"id": company}] if company else []}
        elif entity == "companies":
            out["_embedded"] = {"tags": []}
        return out

    def _render_lead(self, lead: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        out = self.state.api_lead(lead, with_contacts="contacts" in str(params.get("with") or "").split(","))
        out["_links"] = {"self": {"href": f"{self.base_url}/api/v4/leads/{lead['id']}"}}
        for key, entity in (("companies", "companies"), ("contacts", "contacts")):
            for item in out["_embedded"].get(key, []):
                item["_links"] = {"self": {"href": f"{self.base_url}/api/v4/{entity}/{item['id']}"}}
        return out

    def _account(self, params: Mapping[str, Any]) -> dict[str, Any]:
        wanted = set(str(params.get("with") or "").split(","))
        account: dict[str, Any] = {
            "id": c.ACCOUNT_ID, "name": "crmbridge sandbox", "subdomain": c.SUBDOMAIN, "created_at": 1577836800,
            "created_by": c.USER_IDS[1], "updated_at": 1577836800, "updated_by": c.USER_IDS[1],
            "current_user_id": c.USER_IDS[1], "country": "RU", "currency": c.CURRENCY, "currency_symbol": "₽",
            "customers_mode": "disabled", "is_unsorted_on": True, "mobile_feature_version": 0,
            "is_loss_reason_enabled": True, "is_helpbot_enabled": False, "is_technical_account": False,
            "contact_name_display_order": 1, "_links": {"self": {"href": f"{self.base_url}/api/v4/account"}},
        }
        embedded: dict[str, Any] = {}
        if "is_api_filter_enabled" in wanted:
            account["is_api_filter_enabled"] = True
        if "users_groups" in wanted:
            embedded["users_groups"] = [{"id": gid, "name": name, "uuid": None} for gid, name in c.GROUP_NAMES.items()]
        if "datetime_settings" in wanted:
            embedded["datetime_settings"] = {"date_pattern": "d.m.Y H:i", "short_date_pattern": "d.m.Y",
                                             "short_time_pattern": "H:i", "date_format": "d.m.Y", "time_format": "H:i:s",
                                             "timezone": c.TIMEZONE, "timezone_offset": "+03:00"}
        if "task_types" in wanted:
            embedded["task_types"] = [{"id": 1, "name": "Связаться", "color": None, "icon_id": None, "code": "FOLLOW_UP"},
                                      {"id": 2, "name": "Встреча", "color": None, "icon_id": None, "code": "MEETING"}]
        if embedded:
            account["_embedded"] = embedded
        return account

    def _pipelines(self) -> dict[str, Any]:
        pipelines = []
        for category, pipeline_id in c.PIPELINE_IDS.items():
            name, sort = c.b24.CATEGORIES[category]
            statuses = [{"id": s.id, "name": s.name, "sort": s.sort, "is_editable": s.is_editable,
                         "pipeline_id": pipeline_id, "color": s.color, "type": s.type, "account_id": c.ACCOUNT_ID,
                         "_links": {"self": {"href": f"{self.base_url}/api/v4/leads/pipelines/{pipeline_id}/statuses/{s.id}"}}}
                        for s in c.STATUSES[pipeline_id]]
            pipelines.append({"id": pipeline_id, "name": name, "sort": sort, "is_main": category == 0,
                              "is_unsorted_on": True, "is_archive": False, "account_id": c.ACCOUNT_ID,
                              "_links": {"self": {"href": f"{self.base_url}/api/v4/leads/pipelines/{pipeline_id}"}},
                              "_embedded": {"statuses": statuses}})
        return {"_total_items": len(pipelines), "_links": {"self": {"href": f"{self.base_url}/api/v4/leads/pipelines"}},
                "_embedded": {"pipelines": pipelines}}


# --- filters ---------------------------------------------------------------------------------------

def _key(params: Mapping[str, Any]) -> str:
    return json.dumps({k: v for k, v in params.items() if k not in ("page", "limit")}, sort_keys=True, default=str)


def _int(value: Any, default: int) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return default


def _ids(value: Any) -> set[int] | None:
    """`filter[id]=5`, `filter[id][]=5&filter[id][]=6`, `filter[id]=5,6` -> {5, 6}."""
    if value is None:
        return None
    items: Iterable[Any] = value.values() if isinstance(value, dict) else value if isinstance(value, list) else \
        str(value).split(",")
    return {int(str(item)) for item in items if str(item).strip().lstrip("-").isdigit()}


def _range(value: Any) -> tuple[int | None, int | None] | None:
    """`filter[x][from]=a&filter[x][to]=b`, `filter[x]=a` (from a on), `filter[x]=a,b` (events, the older form)."""
    if value is None:
        return None
    if isinstance(value, dict):
        return (_int(value["from"], 0) if "from" in value else None, _int(value["to"], 0) if "to" in value else None)
    parts = str(value).split(",")
    return (_int(parts[0], 0), _int(parts[1], 0) if len(parts) > 1 else None)


def _in(value: int | None, bounds: tuple[int | None, int | None] | None) -> bool:
    if bounds is None:
        return True
    low, high = bounds
    if value is None:
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def _order(params: Mapping[str, Any], allowed: tuple[str, ...]) -> tuple[str, bool]:
    order = params.get("order")
    if isinstance(order, dict):
        for key, direction in order.items():
            if key in allowed:
                return key, str(direction).lower() == "desc"
    return "id", False


def _filter_leads(state: AccountState, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    wanted = params.get("filter") if isinstance(params.get("filter"), dict) else {}
    ids = _ids(wanted.get("id"))
    updated, created = _range(wanted.get("updated_at")), _range(wanted.get("created_at"))
    pipelines = _ids(wanted.get("pipeline_id"))
    responsible = _ids(wanted.get("responsible_user_id"))
    statuses = None
    if isinstance(wanted.get("statuses"), (dict, list)):
        items = wanted["statuses"].values() if isinstance(wanted["statuses"], dict) else wanted["statuses"]
        statuses = {(_int(s.get("pipeline_id"), 0), _int(s.get("status_id"), 0)) for s in items if isinstance(s, dict)}
    with state.lock:
        rows = [lead for lead in state.leads.values()
                if (ids is None or lead["id"] in ids) and _in(lead["updated_at"], updated)
                and _in(lead["created_at"], created) and (pipelines is None or lead["pipeline_id"] in pipelines)
                and (responsible is None or lead["responsible_user_id"] in responsible)
                and (statuses is None or (lead["pipeline_id"], lead["status_id"]) in statuses)]
    key, descending = _order(params, ("id", "created_at", "updated_at"))
    rows.sort(key=lambda lead: (lead[key] or 0, lead["id"]), reverse=descending)
    return rows


def _filter_plain(state: AccountState, table: dict[int, dict[str, Any]], params: Mapping[str, Any]) -> list[dict[str, Any]]:
    wanted = params.get("filter") if isinstance(params.get("filter"), dict) else {}
    ids, updated = _ids(wanted.get("id")), _range(wanted.get("updated_at"))
    with state.lock:
        rows = [row for row in table.values() if (ids is None or row["id"] in ids) and _in(row["updated_at"], updated)]
    key, descending = _order(params, ("id", "updated_at"))
    rows.sort(key=lambda row: (row[key] or 0, row["id"]), reverse=descending)
    return rows


def _filter_tasks(state: AccountState, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    wanted = params.get("filter") if isinstance(params.get("filter"), dict) else {}
    ids, updated = _ids(wanted.get("id")), _range(wanted.get("updated_at"))
    entity_type = wanted.get("entity_type")
    entity_ids = _ids(wanted.get("entity_id"))
    completed = wanted.get("is_completed")
    responsible = _ids(wanted.get("responsible_user_id"))
    with state.lock:
        rows = [task for task in state.tasks.values()
                if (ids is None or task["id"] in ids) and _in(task["updated_at"], updated)
                and (entity_type is None or task["entity_type"] == entity_type)
                and (entity_ids is None or task["entity_id"] in entity_ids)
                and (completed is None or bool(_int(completed, 0)) == task["is_completed"])
                and (responsible is None or task["responsible_user_id"] in responsible)]
    key, descending = _order(params, ("id", "created_at", "complete_till"))
    rows.sort(key=lambda task: (task[key] or 0, task["id"]), reverse=descending)
    return rows


def _filter_notes(state: AccountState, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    wanted = params.get("filter") if isinstance(params.get("filter"), dict) else {}
    entity_ids, updated = _ids(wanted.get("entity_id")), _range(wanted.get("updated_at"))
    types = wanted.get("note_type")
    type_set = set(types.values()) if isinstance(types, dict) else set(types) if isinstance(types, list) else \
        set(str(types).split(",")) if types else None
    with state.lock:
        rows = [note for note in state.notes.values()
                if (entity_ids is None or note["entity_id"] in entity_ids) and _in(note["updated_at"], updated)
                and (type_set is None or note["note_type"] in type_set)]
    key, descending = _order(params, ("id", "updated_at"))
    rows.sort(key=lambda note: (note[key] or 0, note["id"]), reverse=descending)
    return rows


def _filter_events(state: AccountState, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    wanted = params.get("filter") if isinstance(params.get("filter"), dict) else {}
    created = _range(wanted.get("created_at"))
    types = wanted.get("type")
    type_set = set(types.values()) if isinstance(types, dict) else set(types) if isinstance(types, list) else \
        set(str(types).split(",")) if types else None
    entities = wanted.get("entity")
    entity_set = set(entities.values()) if isinstance(entities, dict) else set(entities) if isinstance(entities, list) \
        else set(str(entities).split(",")) if entities else None
    entity_ids = _ids(wanted.get("entity_id"))
    if entity_ids is not None and (entity_set is None or len(entity_set) != 1 or len(entity_ids) > 10):
        raise ApiError(400, "Bad Request", "filter[entity_id] needs exactly one filter[entity] and at most 10 ids")
    event_ids = wanted.get("id")
    id_set = set(event_ids.values()) if isinstance(event_ids, dict) else set(event_ids) if isinstance(event_ids, list) \
        else set(str(event_ids).split(",")) if event_ids else None
    with state.lock:
        rows = [event for event in state.events
                if _in(event["created_at"], created) and (type_set is None or event["type"] in type_set)
                and (entity_set is None or event["entity_type"] in entity_set)
                and (entity_ids is None or event["entity_id"] in entity_ids)
                and (id_set is None or event["id"] in id_set)]
    rows.reverse()  # newest first
    return rows


def _render_field(field: c.CustomField, entity: str) -> dict[str, Any]:
    return {"id": field.id, "name": field.name, "type": field.type, "account_id": c.ACCOUNT_ID, "code": field.code,
            "sort": field.sort, "is_api_only": False, "enums": [{"id": eid, "value": label, "sort": 500 + index}
                                                                 for index, (eid, label) in enumerate(field.enums)]
            or None, "group_id": None, "required_statuses": [], "is_deletable": field.code is None,
            "is_predefined": field.code is not None, "entity_type": entity, "remind": None,
            "_links": {"self": {"href": f"/api/v4/{entity}/custom_fields/{field.id}"}}}


def _array(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise ApiError(400, "Bad Request", "Request validation failed", **{"validation-errors": [
            {"request_id": "0", "errors": [{"code": "InvalidType", "path": "", "detail": "This value should be of type array."}]}]})
    if len(data) > WRITE_MAX:
        raise ApiError(400, "Bad Request", f"No more than {WRITE_MAX} items per request")
    return data


def _route_name(verb: str, path: str) -> str:
    parts = ["{id}" if part.isdigit() else part for part in path.split("/") if part]
    return f"{verb} /" + "/".join(parts)


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "nginx"
    sys_version = ""
    account: SandboxAccount

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return

    def date_time_string(self, timestamp: float | None = None) -> str:
        # the Date header is the account's clock: the one its records' timestamps come from (a pinned `now`)
        return formatdate(self.account.state.clock() if timestamp is None else timestamp, usegmt=True)

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {key.lower(): value for key, value in self.headers.items()}
        try:
            status, ctype, payload = self.account.handle(self.command, parts.path, parts.query, body, headers)
        except _Drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.send_response(status)  # adds Date: the account's clock, which the client reads
        if ctype:
            self.send_header("Content-Type", f"{ctype}; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = do_DELETE = _serve  # noqa: N815 - stdlib naming


def serve_forever(port: int = 8031, deals: int = 2000, seed: int = 1, latency_ms: float = 0, faults: float = 0.0,
                  hooks_url: str | None = None, **options: Any) -> None:
    """Run a sandbox account on 127.0.0.1:`port`, print how to connect, block until Ctrl-C."""
    started = time.perf_counter()
    account = SandboxAccount(deals=deals, seed=seed, latency_ms=latency_ms, faults=faults, hooks_url=hooks_url, **options)
    account.start(port)
    try:
        print(f"Sandbox amoCRM account: {deals} leads ({len(account.state.planted)} breaking the regulation), "
              f"seed {seed}, seeded in {time.perf_counter() - started:.1f} s")
        print(f"CRMBRIDGE_CRM=amocrm CRMBRIDGE_AMOCRM_BASE_URL={account.base_url} "
              f"CRMBRIDGE_AMOCRM_LONG_LIVED_TOKEN={account.long_lived_token}")
        print(f"OAuth: client id {account.client_id}, secret {account.client_secret}, redirect URI "
              f"{account.redirect_uri}; authorization code: {account.issue_code(ttl=3600)}", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        account.stop()


__all__ = ["AccountStats", "SandboxAccount", "hook_fields", "serve_forever"]

"""The sandbox's OAuth side: a local application installed on the portal, its authorization server, event bindings and offline queue.

What it follows, and where from:

* Authorization server (D settings/oauth/index.md, auto-renewal.md, error-codes.md): `GET /oauth/authorize/`
  redirects to the app's redirect URI with `code` (lives 30 s), `state`, `domain`, `member_id`, `scope`,
  `server_domain`; `GET /oauth/token/` with `grant_type=authorization_code|refresh_token`, `client_id`,
  `client_secret` and `code` / `refresh_token` answers the documented JSON. Every refresh returns a new
  pair; a used refresh token is refused with `invalid_grant`, as Bitrix24 does (b24jssdk #147: "one-time
  refresh token"). The HTTP statuses of the server's errors are not documented: 401 for invalid_client,
  400 for the others (RFC 6749 5.2); a client must read the `error` code.
* REST calls with `auth=<access_token>` at `/rest/<method>` (D settings/oauth/index.md). An expired token
  gets 401 `expired_token`, an unknown one 401 `NO_AUTH_FOUND` (D _includes/system-errors.md). Whether a
  refresh revokes the previous access token is not documented; `revoke_on_refresh` (default on) makes the
  sandbox the stricter of the two, so clients are tested against it.
* Online handlers (`event.bind` without `event_type=offline`) are called as the queue server calls them
  (D api-reference/events/index.md, _includes/auth-params-in-events.md): a form-encoded POST per event, once,
  never resent, with `auth[access_token]`, `expires_in`, `scope`, `domain`, `server_endpoint`, `status` (L),
  `client_endpoint`, `member_id`, `refresh_token` and the application's `application_token`; the tokens are
  those of the handler's `auth_type` user, else of the user whose change fired the event (fresh ones: a pair
  handed to a handler does not replace the pair the application keeps). `auth_connector` only filters
  offline queues ("intended for offline events"), so the app's own changes reach its online handlers.
* `event.bind / get / unbind`, `event.offline.get / clear / error / list`, `feature.get`, as the official
  docs (D and the RU docs' current pages) and the rest module's `Api\\Event` and `EventOfflineTable` define
  them: app context only (a webhook gets 403 WRONG_AUTH_TYPE), offline binding by an administrator only,
  the queue keeps one unreserved record per MESSAGE_ID = md5(EVENT_NAME|json(EVENT_DATA)) and connector,
  `clear=0` reserves a batch under a 32-character process_id, `auth_connector` splits the queue and a change
  made by the app with the handler's own `auth_connector` is not queued (loop avoidance).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from .events import Delivery, EventSender, event_data
from .methods import METHODS, ApiError, Context, Method, MethodResult
from .wire import fmt_dt, parse_dt, truthy

#: the events a local app may bind (the sandbox fires these; D api-reference/events/index.md lists them)
KNOWN_EVENTS = frozenset({
    "ONCRMDEALADD", "ONCRMDEALUPDATE", "ONCRMDEALDELETE", "ONCRMDEALMOVETOCATEGORY",
    "ONCRMCONTACTADD", "ONCRMCONTACTUPDATE", "ONCRMCONTACTDELETE",
    "ONCRMCOMPANYADD", "ONCRMCOMPANYUPDATE", "ONCRMCOMPANYDELETE",
    "ONCRMACTIVITYADD", "ONCRMACTIVITYUPDATE", "ONCRMACTIVITYDELETE",
    "ONTASKADD", "ONTASKUPDATE", "ONTASKDELETE",
    "ONOFFLINEEVENT", "ONAPPINSTALL", "ONAPPUNINSTALL",
})
#: events that cannot be received offline (`disableOffline` in the rest module's description)
_NO_OFFLINE = frozenset({"ONOFFLINEEVENT"})

CODE_TTL = 30.0  # "The lifetime of the authorization code `code` is 30 seconds"
REFRESH_TTL = 180 * 86400.0  # "refresh_token ... Lifetime — 180 days"
PROCESS_ID_LIFETIME = 2_952_000  # EventOfflineTable: a reserved batch is deleted after about 30 days
LIST_PAGE = 50

_OFFLINE_FIELDS = ("ID", "TIMESTAMP_X", "EVENT_NAME", "MESSAGE_ID")
_LIST_FIELDS = _OFFLINE_FIELDS + ("PROCESS_ID", "ERROR")


def _wrong_auth_type() -> ApiError:
    return ApiError(403, "WRONG_AUTH_TYPE", "Current authorization type is denied for this method")


def _license(feature: str) -> ApiError:
    return ApiError(403, "WRONG_LICENSE", f"This feature is not enabled for the current license: {feature}")


def _argument(description: str) -> ApiError:
    return ApiError(400, "ERROR_ARGUMENT", description)


@dataclass(frozen=True)
class RequestAuth:
    """Who made the request being served: what the rest module calls the server's auth data."""

    kind: str  # "webhook" or "app"
    user_id: int
    client_id: str | None = None
    connector: str = ""  # auth_connector of the request ('' = none)
    admin: bool = True


_current = threading.local()


def current_auth() -> RequestAuth | None:
    """The auth of the REST request this thread serves; None for a change made in the portal's own UI."""
    return getattr(_current, "auth", None)


@contextmanager
def serving(auth: RequestAuth) -> Iterator[None]:
    previous = current_auth()
    _current.auth = auth
    try:
        yield
    finally:
        _current.auth = previous


@dataclass
class Binding:
    event: str
    handler: str  # '' for offline
    auth_type: int
    offline: bool
    connector: str


@dataclass
class OfflineRecord:
    id: int
    timestamp: float
    event: str
    data: Any
    additional: dict[str, Any]
    message_id: str
    connector: str
    process_id: str = ""
    error: int = 0

    def wire(self, *, listing: bool = False) -> dict[str, Any]:
        row = {
            "ID": str(self.id),
            "TIMESTAMP_X": fmt_dt(self.timestamp),
            "EVENT_NAME": self.event,
            "EVENT_DATA": self.data,
            "EVENT_ADDITIONAL": self.additional,
            "MESSAGE_ID": self.message_id,
        }
        if listing:
            row["PROCESS_ID"] = self.process_id
            row["ERROR"] = str(self.error)
        return row


def offline_event_data(event: str, entity_id: int) -> dict[str, Any]:
    """EVENT_DATA of an offline record: "the same data as an online handler gets" (FIELDS.ID; tasks BEFORE/AFTER)."""
    nested: dict[str, Any] = {}
    for flat, value in event_data(event, entity_id).items():
        keys = flat[len("data["):-1].split("][")
        node = nested
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return nested


def message_id(event: str, data: Any) -> str:
    """EventOfflineTable::getMessageId: md5(EVENT_NAME|json(EVENT_DATA)), 32 hex characters."""
    encoded = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("/", "\\/")
    return hashlib.md5(f"{event}|{encoded}".encode()).hexdigest()


@dataclass
class TokenCalls:
    authorization_code: int = 0
    refresh_token: int = 0
    refused: int = 0


class SandboxApp:
    """One local server application installed on the sandbox portal by an administrator.

    `client_id` / `client_secret` are what Bitrix24 shows in the local application's form;
    `redirect_uri` is its handler path (None: the code is shown on a page, as for apps without one).
    """

    def __init__(
        self,
        portal: Any,
        *,
        client_id: str = "local.sandbox0000000.00000000",
        client_secret: str = "sandbox-client-secret",
        redirect_uri: str | None = None,
        access_ttl: float = 3600.0,
        revoke_on_refresh: bool = True,
        admin: bool = True,
        features: dict[str, bool] | None = None,
        user_id: int = 1,
    ) -> None:
        self.portal = portal
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.access_ttl = access_ttl
        self.revoke_on_refresh = revoke_on_refresh
        self.admin = admin
        self.features = {"rest_offline_extended": True, "rest_auth_connector": True, **(features or {})}
        self.user_id = user_id
        self.calls = TokenCalls()
        self.lock = threading.RLock()
        self._codes: dict[str, float] = {}
        self._access: dict[str, float] = {}  # token -> expires at
        self._refresh: dict[str, float] = {}  # valid refresh token -> expires at
        self._used_refresh: set[str] = set()
        self._current_refresh: str | None = None
        self.bindings: list[Binding] = []
        self.offline: dict[int, OfflineRecord] = {}
        self._next_offline = 1
        #: the token an installed application's event handlers receive (auth[application_token]), per install
        self.application_token = secrets.token_hex(16)
        self._senders: dict[str, EventSender] = {}  # online handler URL -> its queue
        self.events_delay = 0.0

    # --- the authorization server -----------------------------------------------------------------

    @property
    def oauth_url(self) -> str:
        """What CRMBRIDGE_BITRIX24_OAUTH_URL points at for this sandbox (oauth.bitrix.info for a real portal)."""
        return f"http://127.0.0.1:{self.portal.port}/"

    @property
    def client_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.portal.port}/rest/"

    def authorization_code(self) -> str:
        """A fresh code, as when the administrator approves the app in the browser (lives 30 s, single use)."""
        code = secrets.token_hex(16)
        with self.lock:
            self._codes[code] = time.time() + CODE_TTL
        return code

    def redirect_params(self, code: str, state: str = "") -> dict[str, str]:
        """What Bitrix24 appends to the redirect URI after a successful authorization."""
        return {"code": code, "state": state, "domain": f"127.0.0.1:{self.portal.port}",
                "member_id": self.portal.member_id, "scope": ",".join(self.portal.scopes),
                "server_domain": f"127.0.0.1:{self.portal.port}"}

    def expire_access_tokens(self) -> None:
        """Every issued access token expires now (an hour passed); refresh tokens stay valid."""
        with self.lock:
            for token in self._access:
                self._access[token] = 0.0

    def revoke(self) -> None:
        """The app was removed or its authorization revoked: every token dies."""
        with self.lock:
            self._access.clear()
            self._refresh.clear()

    @property
    def refresh_token(self) -> str | None:
        """The refresh token the server would accept now (the newest one issued)."""
        return self._current_refresh

    def http(self, path: str, query: str) -> tuple[int, str, bytes, dict[str, str]]:
        """`/oauth/authorize/` and `/oauth/token/` -> (status, content type, body, extra headers)."""
        params = dict(parse_qsl(query, keep_blank_values=True))
        if path.rstrip("/") == "/oauth/authorize":
            return self._authorize_page(params)
        status, body = self.token(params)
        return status, "application/json", json.dumps(body).encode(), {}

    def _authorize_page(self, params: dict[str, str]) -> tuple[int, str, bytes, dict[str, str]]:
        if params.get("client_id") != self.client_id:
            # "If the authorization cannot be completed, Bitrix24 shows the error to the user on its own page"
            return 400, "text/html", b"<html><body>The application is not installed on this Bitrix24.</body></html>", {}
        code = self.authorization_code()
        reply = self.redirect_params(code, params.get("state", ""))
        if not self.redirect_uri:
            page = f"<html><body>Authorization code: <b>{code}</b></body></html>".encode()
            return 200, "text/html", page, {}
        joiner = "&" if urlsplit(self.redirect_uri).query else "?"
        return 302, "text/html", b"", {"Location": f"{self.redirect_uri}{joiner}{urlencode(reply)}"}

    def token(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        grant = params.get("grant_type", "")
        if grant not in ("authorization_code", "refresh_token") or not params.get("client_id"):
            return 400, {"error": "invalid_request", "error_description": "Invalid request"}
        if params.get("client_id") != self.client_id or params.get("client_secret") != self.client_secret:
            return 401, {"error": "invalid_client", "error_description": "Invalid client"}
        now = time.time()
        with self.lock:
            if grant == "authorization_code":
                self.calls.authorization_code += 1
                code = params.get("code", "")
                expires = self._codes.pop(code, None)
                if expires is None or expires < now:
                    self.calls.refused += 1
                    return 400, {"error": "invalid_grant", "error_description": "Invalid authorization code"}
                body = self._issue(now)
                del body["expires"], body["user_id"]  # the code exchange's answer has neither (D index.md)
                return 200, body
            self.calls.refresh_token += 1
            token = params.get("refresh_token", "")
            expires = self._refresh.pop(token, None)
            if expires is None or expires < now:
                self.calls.refused += 1
                reason = "Refresh token has been used" if token in self._used_refresh else "Invalid refresh token"
                return 400, {"error": "invalid_grant", "error_description": reason}
            self._used_refresh.add(token)
            if self.revoke_on_refresh:
                self._access.clear()
            return 200, self._issue(now)

    def _issue(self, now: float) -> dict[str, Any]:
        access, refresh = secrets.token_hex(16), secrets.token_hex(16)
        self._access[access] = now + self.access_ttl
        self._refresh[refresh] = now + REFRESH_TTL
        self._current_refresh = refresh
        return {
            "access_token": access,
            "client_endpoint": self.client_endpoint,
            "domain": f"127.0.0.1:{self.portal.port}",
            "expires": int(now + self.access_ttl),
            "expires_in": int(self.access_ttl),
            "member_id": self.portal.member_id,
            "refresh_token": refresh,
            "scope": ",".join(self.portal.scopes),
            "server_endpoint": self.client_endpoint,
            "status": "L",
            "user_id": self.user_id,
        }

    def authenticate(self, params: dict[str, Any]) -> RequestAuth:
        """The auth data of a REST call made with `auth=<access_token>`; raises the documented 401s."""
        token = params.get("auth") or params.get("AUTH") or ""
        with self.lock:
            expires = self._access.get(str(token))
        if expires is None:
            raise ApiError(401, "NO_AUTH_FOUND", "Wrong authorization data")
        if expires < time.time():
            raise ApiError(401, "expired_token", "The access token provided has expired")
        return RequestAuth("app", self.user_id, self.client_id, str(params.get("auth_connector") or ""), self.admin)

    # --- the offline queue (EventOfflineTable) ------------------------------------------------------

    def record(self, event: str, entity_id: int) -> None:
        """A change happened: queue it for every offline handler of the event (Sender::finalize)."""
        auth = current_auth()
        data = offline_event_data(event, entity_id)
        key = message_id(event, data)
        user = auth.user_id if auth is not None else self.portal.webhook_user
        now = self.portal.state.now()
        with self.lock:
            for binding in self.bindings:
                if not binding.offline or binding.event != event:
                    continue
                if auth is not None and auth.client_id == self.client_id and auth.connector == binding.connector:
                    continue  # the app's own change through this connector: not queued back
                existing = next((r for r in self.offline.values() if r.message_id == key and
                                 r.connector == binding.connector and r.process_id == ""), None)
                if existing is not None:
                    # "A repeated event with the same data updates the unreserved record"
                    existing.timestamp, existing.data, existing.additional = now, data, {"user_id": str(user)}
                    continue
                record = OfflineRecord(self._next_offline, now, event, data, {"user_id": str(user)}, key,
                                       binding.connector)
                self.offline[record.id] = record
                self._next_offline += 1

    def call_handlers(self, event: str, entity_id: int) -> None:
        """A change happened: call every online handler bound to the event (each handler once per event)."""
        auth = current_auth()
        user = auth.user_id if auth is not None else self.portal.webhook_user
        with self.lock:
            handlers: dict[str, int] = {}
            for binding in self.bindings:
                if not binding.offline and binding.event == event:
                    handlers.setdefault(binding.handler, binding.auth_type or user)
            senders = []
            for handler, as_user in handlers.items():
                sender = self._senders.get(handler)
                if sender is None:
                    sender = EventSender(handler, {}, delay=self.events_delay, workers=2, auth_for=self.handler_auth)
                    self._senders[handler] = sender
                senders.append((sender, as_user))
        for sender, as_user in senders:
            sender.emit(event, entity_id, as_user)

    def handler_auth(self, user_id: int) -> dict[str, str]:
        """`auth[...]` of one online handler call: a fresh token pair of `user_id`, the portal and the app."""
        now = time.time()
        access, refresh = secrets.token_hex(16), secrets.token_hex(16)
        with self.lock:
            self._access[access] = now + self.access_ttl
            self._refresh[refresh] = now + REFRESH_TTL
        return {"access_token": access, "expires_in": str(int(self.access_ttl)), "scope": ",".join(self.portal.scopes),
                "domain": f"127.0.0.1:{self.portal.port}", "server_endpoint": self.client_endpoint, "status": "L",
                "client_endpoint": self.client_endpoint, "member_id": self.portal.member_id,
                "refresh_token": refresh, "application_token": self.application_token}

    def handler_deliveries(self, handler: str) -> list[Delivery]:
        """The queue server's log of one online handler: every call made, with the HTTP status it got."""
        sender = self._senders.get(handler)
        return sender.deliveries() if sender is not None else []

    def wait_handlers(self, timeout: float = 30.0) -> bool:
        return all(sender.wait_idle(timeout) for sender in list(self._senders.values()))

    def stop(self) -> None:
        with self.lock:
            senders, self._senders = list(self._senders.values()), {}
        for sender in senders:
            sender.stop()

    def queue(self, connector: str | None = None) -> list[OfflineRecord]:
        """The queue as it stands (tests and the demo), oldest first; `connector` None = every connector."""
        with self.lock:
            return sorted((r for r in self.offline.values() if connector is None or r.connector == connector),
                          key=lambda r: r.id)

    def expire_reservations(self, older_than: float = PROCESS_ID_LIFETIME) -> int:
        """The cleanup agent: reserved batches older than 30 days are deleted (their events are lost)."""
        limit = self.portal.state.now() - older_than
        with self.lock:
            gone = [r.id for r in self.offline.values() if r.process_id and r.timestamp < limit]
            for record_id in gone:
                del self.offline[record_id]
        return len(gone)


# --- the REST methods -------------------------------------------------------------------------------

def _app(ctx: Context) -> tuple[SandboxApp, RequestAuth]:
    app = ctx.extra.get("app")
    auth = ctx.extra.get("auth")
    if app is None or auth is None or auth.kind != "app":
        raise _wrong_auth_type()
    return app, auth


def _admin(auth: RequestAuth, message: str = "Access denied!") -> None:
    if not auth.admin:
        raise ApiError(403, "ACCESS_DENIED", message)


def _connector(app: SandboxApp, auth: RequestAuth) -> str:
    if auth.connector and not app.features.get("rest_auth_connector"):
        raise _license("auth_connector")
    return auth.connector


def _lower(params: dict[str, Any]) -> dict[str, Any]:
    return {str(k).lower(): v for k, v in params.items()}


def _binding_query(ctx: Context, params: dict[str, Any]) -> tuple[SandboxApp, RequestAuth, dict[str, Any], str, str, str]:
    """What event.bind and event.unbind share: the app context, EVENT, EVENT_TYPE and HANDLER, checked."""
    app, auth = _app(ctx)
    query = _lower(params)
    name = str(query.get("event") or "").upper()
    kind = str(query.get("event_type") or "online").lower()
    if not name:
        raise _argument("Argument 'EVENT' is null or empty")
    if kind not in ("online", "offline"):
        raise _argument("Value must be one of {online|offline}")
    return app, auth, query, name, kind, str(query.get("handler") or "")


def event_bind(ctx: Context, params: dict[str, Any]) -> MethodResult:
    app, auth, query, name, kind, handler = _binding_query(ctx, params)
    connector = _connector(app, auth)
    try:
        auth_type = int(query.get("auth_type") or 0)
    except (TypeError, ValueError):
        auth_type = 0
    if kind == "offline":
        _admin(auth, "Access denied! Offline events binding requires administrator access rights")
        handler, auth_type = "", 0
    elif not handler:
        raise _argument("Argument 'HANDLER' is null or empty")
    else:
        parts = urlsplit(handler)
        if parts.scheme not in ("http", "https"):
            raise ApiError(400, "ERROR_UNSUPPORTED_PROTOCOL", "Unsupported handler protocol")
        if not parts.hostname:
            raise ApiError(400, "ERROR_WRONG_HANDLER_URL", "Wrong handler URL")
    if name not in KNOWN_EVENTS:
        raise ApiError(400, "ERROR_EVENT_NOT_FOUND", "Event not found")
    if kind == "offline" and name in _NO_OFFLINE:
        raise _argument("Offline event cannot be registered for this event.")
    with app.lock:
        for binding in app.bindings:
            if (binding.event, binding.handler, binding.connector, binding.auth_type) == (
                    name, handler, connector, auth_type):
                raise ApiError(400, "ERROR_CORE", "Unable to set event handler: Handler already binded")
        app.bindings.append(Binding(name, handler, auth_type, kind == "offline", connector))
    return MethodResult(True)


def event_get(ctx: Context, params: dict[str, Any]) -> MethodResult:
    app, _auth = _app(ctx)
    with app.lock:
        rows: list[dict[str, Any]] = []
        for binding in app.bindings:
            if binding.offline:
                rows.append({"event": binding.event, "connector_id": binding.connector, "offline": 1})
            else:
                rows.append({"event": binding.event, "handler": binding.handler,
                             "auth_type": str(binding.auth_type), "offline": 0})
    return MethodResult(rows)


def event_unbind(ctx: Context, params: dict[str, Any]) -> MethodResult:
    app, auth, query, name, kind, handler = _binding_query(ctx, params)
    if kind == "offline":
        _admin(auth, "Access denied! Offline events unbinding requires administrator access rights")
        handler = ""
    elif not handler:
        raise _argument("Argument 'HANDLER' is null or empty")
    with app.lock:
        keep, count = [], 0
        for binding in app.bindings:
            match = binding.event == name and binding.handler == handler and binding.offline == (kind == "offline")
            if match and kind == "offline":
                match = binding.connector == auth.connector
            elif match and "auth_type" in query:
                match = binding.auth_type == int(query.get("auth_type") or 0)
            if match:
                count += 1
            else:
                keep.append(binding)
        app.bindings[:] = keep
    return MethodResult({"count": count})


def _filter(params: dict[str, Any], allowed: tuple[str, ...]) -> list[tuple[str, str, Any]]:
    raw = params.get("filter")
    if raw in (None, "", []):
        return []
    if not isinstance(raw, dict):
        raise _argument("The filter is not an array.")
    out = []
    for key, value in raw.items():
        key = str(key)
        op = ""
        for candidate in (">=", "<=", "=", ">", "<", "!"):
            if key.startswith(candidate):
                op, key = candidate, key[len(candidate):]
                break
        if op == "!":
            raise _argument(f"Filter operation not allowed: {op}")
        if key.upper() not in allowed:
            raise _argument(f"Filter field not allowed: {key}")
        if isinstance(value, (dict, list)):
            raise _argument(f"The value of an argument '{key}' has an invalid type")
        out.append((op or "=", key.upper(), value))
    return out


def _order(params: dict[str, Any], allowed: tuple[str, ...], default: dict[str, str]) -> list[tuple[str, bool]]:
    raw = params.get("order")
    if raw in (None, "", []):
        raw = default
    if not isinstance(raw, dict):
        raise _argument("The order is not an array.")
    out = []
    for key, direction in raw.items():
        if str(key).upper() not in allowed:
            raise _argument(f"Order field not allowed: {key}")
        if str(direction).upper() not in ("ASC", "DESC"):
            raise _argument("Order direction should be one of {ASC|DESC}")
        out.append((str(key).upper(), str(direction).upper() == "DESC"))
    return out


def _value(record: OfflineRecord, name: str) -> Any:
    return {"ID": record.id, "TIMESTAMP_X": record.timestamp, "EVENT_NAME": record.event,
            "MESSAGE_ID": record.message_id, "PROCESS_ID": record.process_id, "ERROR": record.error}[name]


def _matches(record: OfflineRecord, conditions: list[tuple[str, str, Any]]) -> bool:
    for op, name, wanted in conditions:
        have = _value(record, name)
        if name in ("ID", "ERROR"):
            try:
                wanted = int(wanted)
            except (TypeError, ValueError):
                return False
        elif name == "TIMESTAMP_X":
            parsed = parse_dt(wanted)
            if parsed is None:
                return False
            wanted = parsed.timestamp()
        else:
            wanted = str(wanted)
        ok = {"=": have == wanted, ">": have > wanted, "<": have < wanted,
              ">=": have >= wanted, "<=": have <= wanted}[op]
        if not ok:
            return False
    return True


def _sorted(records: list[OfflineRecord], order: list[tuple[str, bool]]) -> list[OfflineRecord]:
    out = sorted(records, key=lambda r: r.id)
    for name, descending in reversed(order):
        out.sort(key=lambda r, n=name: _value(r, n), reverse=descending)
    return out


def offline_get(ctx: Context, params: dict[str, Any]) -> MethodResult:
    app, auth = _app(ctx)
    _admin(auth)
    query = _lower(params)
    clear = 1 if query.get("clear") in (None, "") else (1 if truthy(query.get("clear")) else 0)
    process_id = str(query["process_id"]).strip() if query.get("process_id") not in (None, "") else None
    if not clear and not app.features.get("rest_offline_extended"):
        raise _license("extended offline events handling")
    try:
        limit = LIST_PAGE if query.get("limit") in (None, "") else int(query["limit"])
    except (TypeError, ValueError):
        limit = 0
    if limit <= 0:
        raise _argument("Value must be positive integer")
    connector = _connector(app, auth)
    conditions = _filter(query, _OFFLINE_FIELDS)
    order = _order(query, _OFFLINE_FIELDS, {"TIMESTAMP_X": "ASC"})
    errors = 1 if str(query.get("error") or "0") == "1" else 0
    with app.lock:
        mine = [r for r in app.offline.values() if r.connector == connector and r.error == errors
                and _matches(r, conditions)]
        return_process_id = not clear
        if process_id is None:
            process_id = secrets.token_hex(16)
            for record in _sorted([r for r in mine if r.process_id == ""], order)[:limit]:
                record.process_id = process_id
        else:
            return_process_id = True
        batch = _sorted([r for r in mine if r.process_id == process_id], order)[:limit]
        events = [r.wire() for r in batch]
        if clear and batch:
            for record_id in [r.id for r in app.offline.values() if r.process_id == process_id and
                              r.connector == connector]:
                del app.offline[record_id]
    return MethodResult({"process_id": process_id if return_process_id else None, "events": events})


def _process_id(query: dict[str, Any]) -> str:
    value = query.get("process_id")
    if value in (None, ""):
        raise _argument("Argument 'PROCESS_ID' is null or empty")
    return str(value).strip()


def _message_ids(value: Any) -> list[str]:
    if isinstance(value, dict):
        value = list(value.values())
    if not isinstance(value, list):
        raise _argument("Value must be array of MESSAGE_ID values")
    out = [str(v).strip() for v in value]
    if any(len(v) != 32 for v in out):
        raise _argument("Value must be array of MESSAGE_ID values")
    return out


def offline_clear(ctx: Context, params: dict[str, Any]) -> MethodResult:
    app, auth = _app(ctx)
    _admin(auth)
    query = _lower(params)
    process_id = _process_id(query)
    connector = _connector(app, auth)
    messages: list[str] | None = None
    ids: list[int] | None = None
    if query.get("message_id") is not None:
        messages = _message_ids(query["message_id"])
    elif query.get("id") is not None:
        raw = query["id"]
        raw = list(raw.values()) if isinstance(raw, dict) else raw
        if not isinstance(raw, list):
            raise _argument("Value must be array of integers")
        try:
            ids = [int(v) for v in raw]
        except (TypeError, ValueError):
            raise _argument("Value must be array of integers") from None
        if any(i <= 0 for i in ids):
            raise _argument("Value must be array of integers")
    with app.lock:
        for record in list(app.offline.values()):
            if record.process_id != process_id or record.connector != connector:
                continue
            if messages is not None and record.message_id not in messages:
                continue
            if ids is not None and record.id not in ids:
                continue
            del app.offline[record.id]
    return MethodResult(True)


def offline_error(ctx: Context, params: dict[str, Any]) -> MethodResult:
    app, auth = _app(ctx)
    _admin(auth)
    query = _lower(params)
    process_id = _process_id(query)
    if query.get("message_id") is None:
        raise _argument("Value must be array of MESSAGE_ID values")
    raw = query["message_id"]
    raw = list(raw.values()) if isinstance(raw, dict) else raw
    if not isinstance(raw, list):
        raise _argument("Value must be array of MESSAGE_ID values")
    messages = [str(v).strip() for v in raw]
    connector = _connector(app, auth)
    with app.lock:
        # EventOfflineTable::markError, statement by statement
        for record in list(app.offline.values()):
            if (record.connector == connector and record.message_id in messages and record.error == 0
                    and record.process_id != process_id):
                del app.offline[record.id]
        for record in app.offline.values():
            if record.connector == connector and record.message_id in messages and record.error == 0:
                record.error, record.process_id = 1, ""
    return MethodResult(True)


def offline_list(ctx: Context, params: dict[str, Any]) -> MethodResult:
    app, auth = _app(ctx)
    _admin(auth)
    query = _lower(params)
    connector = _connector(app, auth)
    conditions = _filter(query, _LIST_FIELDS)
    order = _order(query, _LIST_FIELDS, {"ID": "ASC"})
    try:
        start = max(0, int(query.get("start") or 0))
    except (TypeError, ValueError):
        start = 0
    with app.lock:
        rows = _sorted([r for r in app.offline.values() if r.connector == connector and _matches(r, conditions)],
                       order)
        page = [r.wire(listing=True) for r in rows[start:start + LIST_PAGE]]
    following = start + LIST_PAGE if start + LIST_PAGE < len(rows) else None
    return MethodResult(page, total=len(rows), next=following, is_list=True, rows=len(page))


def feature_get(ctx: Context, params: dict[str, Any]) -> MethodResult:
    code = str(_lower(params).get("code") or "")
    if not code:
        raise ApiError(400, "CODE_EMPTY", "CODE can't be empty")
    app = ctx.extra.get("app")
    enabled = bool(app is not None and app.features.get(code))
    return MethodResult({"value": "Y" if enabled else "N"})


APP_METHODS: dict[str, Method] = {
    "event.bind": Method(None, event_bind, writes=True),
    "event.get": Method(None, event_get),
    "event.unbind": Method(None, event_unbind, writes=True),
    "event.offline.get": Method(None, offline_get, writes=True),
    "event.offline.clear": Method(None, offline_clear, writes=True),
    "event.offline.error": Method(None, offline_error, writes=True),
    "event.offline.list": Method(None, offline_list),
    "feature.get": Method(None, feature_get),
}
METHODS.update(APP_METHODS)

__all__ = ["APP_METHODS", "Binding", "OfflineRecord", "RequestAuth", "SandboxApp", "current_auth", "message_id",
           "offline_event_data", "serving"]

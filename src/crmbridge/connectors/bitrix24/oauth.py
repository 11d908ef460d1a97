"""Bitrix24 as a local OAuth application: the authorization server (code exchange, refresh) and the client's OAuth auth.

The protocol (D settings/oauth/index.md, auto-renewal.md, error-codes.md):

* the admin opens `https://<portal>/oauth/authorize/?client_id=..&state=..`; Bitrix24 sends the browser to the
  app's redirect URI with `code` (lives 30 s), `state`, `domain`, `member_id`, `scope`, `server_domain`;
* `GET <oauth server>/oauth/token/?grant_type=authorization_code&client_id&client_secret&code` and
  `...grant_type=refresh_token...&refresh_token` answer `access_token`, `refresh_token`, `expires_in`
  (`expires` on refresh), `client_endpoint`, `server_endpoint`, `domain`, `member_id`, `scope`, `status`;
  every refresh returns a new refresh token to keep instead of the old one;
* calls go to `client_endpoint + method` with `auth=<access_token>`; `401 expired_token` means refresh and
  repeat. Errors of the server: `invalid_request`, `invalid_client`, `invalid_grant` (re-authorize),
  `invalid_scope` / `insufficient_scope`, `PAYMENT_REQUIRED`.

Tokens live in the cache (connectors/oauth.py: TokenStore), keyed by the portal's `member_id`.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from crmbridge.connectors.http import HttpTransport, RequestsTransport, TransportError, is_loopback, redact
from crmbridge.connectors.oauth import TOKEN_METHOD, OAuthSession, TokenGrant, TokenPair, TokenStore
from crmbridge.errors import (
    AuthError,
    ConfigError,
    CrmRejected,
    CrmUnreachable,
    ReauthorizationRequired,
    TransientCrmError,
)

__all__ = [
    "CRM",
    "DEFAULT_OAUTH_URL",
    "OFFLINE_EVENTS",
    "AuthorizationServer",
    "OAuthAuth",
    "Redirect",
    "grant_from",
    "parse_redirect",
    "validate_oauth_url",
]

log = logging.getLogger("crmbridge.bitrix24.oauth")

CRM = "bitrix24"
DEFAULT_OAUTH_URL = "https://oauth.bitrix.info/"
OAUTH_URL_SETTING = "CRMBRIDGE_BITRIX24_OAUTH_URL"

#: the events crmbridge binds as offline events on connect (issue 9): deals, their tasks and to-dos, clients
OFFLINE_EVENTS: tuple[str, ...] = (
    "ONCRMDEALADD", "ONCRMDEALUPDATE", "ONCRMDEALDELETE",
    "ONTASKADD", "ONTASKUPDATE", "ONTASKDELETE",
    "ONCRMACTIVITYADD", "ONCRMACTIVITYUPDATE",
    "ONCRMCONTACTUPDATE", "ONCRMCOMPANYUPDATE",
)

#: the token answer's fields worth keeping: none of them is a secret
_DETAILS = ("client_endpoint", "server_endpoint", "domain", "member_id", "scope", "status", "user_id")

_SERVER_HINTS = {
    "invalid_client": "check CRMBRIDGE_BITRIX24_CLIENT_ID and CRMBRIDGE_BITRIX24_CLIENT_SECRET (the local "
    "application's form in Bitrix24), and that the application is installed on the portal",
    "invalid_scope": "the application's card in Bitrix24 lacks a permission crmbridge asks for: add crm, task, "
    "im, user there",
    "insufficient_scope": "the application's card in Bitrix24 lacks a permission crmbridge asks for: add crm, "
    "task, im, user there",
    "PAYMENT_REQUIRED": "the application's trial or paid period is over: renew it in Bitrix24",
    "invalid_request": f"check {OAUTH_URL_SETTING} and the application's settings",
}


def _require_secure(url: str, setting: str, what: str) -> str:
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        raise ConfigError(f"{setting} is not a valid URL", hint=f"set it to {what}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(f"{setting} must be an https:// URL", hint=f"set it to {what}")
    if parts.scheme == "http" and not is_loopback(host):
        raise ConfigError(
            f"{setting} uses plain http for {host}: secrets would travel unencrypted",
            hint="use https:// (plain http is accepted only for 127.0.0.1, localhost and ::1)",
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(f"{setting} must be a plain address without credentials, query or fragment",
                          hint=f"set it to {what}")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urlunsplit((parts.scheme, netloc, path, "", ""))


def validate_oauth_url(url: str) -> str:
    """The authorization server's base URL, normalised with a trailing slash (https, or http on loopback)."""
    return _require_secure(url, OAUTH_URL_SETTING, DEFAULT_OAUTH_URL)


def portal_url(url: str) -> str:
    """A portal address as an admin types it (`example.bitrix24.ru`, or any URL on the portal) -> `https://host/`."""
    text = url.strip()
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    base = urlunsplit((parts.scheme, parts.netloc, "/", "", ""))
    return _require_secure(base, "--portal", "your portal's address, e.g. https://example.bitrix24.ru")


def grant_from(body: Mapping[str, Any], now: float) -> TokenGrant:
    """A token answer as the store keeps it; raises TransientCrmError when it lacks the tokens."""
    access = body.get("access_token")
    if not isinstance(access, str) or not access:
        raise TransientCrmError(
            f"{TOKEN_METHOD}: the authorization server answered without an access token",
            method=TOKEN_METHOD, code="NO_TOKEN", description="no access_token in the answer")
    refresh = body.get("refresh_token")
    expires_at: float | None = None
    try:
        if body.get("expires"):
            expires_at = float(body["expires"])
        elif body.get("expires_in"):
            expires_at = now + float(body["expires_in"])
    except (TypeError, ValueError):
        expires_at = None
    details = {key: body[key] for key in _DETAILS if body.get(key) not in (None, "")}
    if "client_endpoint" in details:
        details["client_endpoint"] = client_endpoint(str(details["client_endpoint"]))
    return TokenGrant(access, refresh if isinstance(refresh, str) and refresh else None, expires_at, details)


def client_endpoint(url: str) -> str:
    """The portal's REST address from a token answer: the access token goes there, so https (or loopback)."""
    return _require_secure(url, "client_endpoint", "the https:// REST address of the portal")


class AuthorizationServer:
    """Bitrix24's OAuth server (oauth.bitrix.info): the code exchange and the refresh; one GET each.

    A failed exchange is retried only when no answer came (connection refused, reset, timeout) or
    the server answered 5xx, `attempts` times in all; its errors become the crmbridge exception tree.
    """

    def __init__(
        self,
        oauth_url: str,
        client_id: str,
        client_secret: str,
        *,
        transport: HttpTransport | None = None,
        timeout: tuple[float, float] = (5.0, 30.0),
        attempts: int = 3,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not client_id or not client_secret:
            raise ConfigError(
                "the Bitrix24 application's client id and secret are not set",
                hint="set CRMBRIDGE_BITRIX24_CLIENT_ID and CRMBRIDGE_BITRIX24_CLIENT_SECRET from the local "
                "application's form in Bitrix24",
            )
        self.base = validate_oauth_url(oauth_url)
        self.client_id = client_id
        self._secret = client_secret
        self._transport: HttpTransport = transport if transport is not None else RequestsTransport()
        self._timeout = timeout
        self._attempts = max(1, attempts)
        self._sleep = sleep
        self._clock = clock
        #: requests sent to the server (tests count refreshes with it)
        self.requests = 0

    def __repr__(self) -> str:
        return f"AuthorizationServer({self.base!r}, client_id={self.client_id!r})"

    def authorize_url(self, portal: str, state: str) -> str:
        """Where the admin approves the app: the portal's own /oauth/authorize/ page."""
        return f"{portal_url(portal)}oauth/authorize/?{urlencode({'client_id': self.client_id, 'state': state})}"

    def exchange_code(self, code: str) -> TokenGrant:
        """The first pair, for an authorization code (which lives 30 s: call this at once)."""
        if not code or not code.strip():
            raise ConfigError("the authorization code is empty", hint="copy `code` from the address Bitrix24 sent you to")
        return self._token("authorization_code", code=code.strip())

    def refresh(self, refresh_token: str) -> TokenGrant:
        """A new pair for the stored refresh token (the TokenStore's exchange)."""
        return self._token("refresh_token", refresh_token=refresh_token)

    def _token(self, grant_type: str, **secret: str) -> TokenGrant:
        query = urlencode({"grant_type": grant_type, "client_id": self.client_id, "client_secret": self._secret,
                           **secret})
        url = f"{self.base}oauth/token/?{query}"
        last: TransientCrmError | None = None
        for attempt in range(1, self._attempts + 1):
            if attempt > 1:
                self._sleep(min(4.0, 0.5 * 2 ** (attempt - 2)))
            try:
                return self._once(url, grant_type)
            except TransientCrmError as exc:
                last = exc
                log.warning("bitrix24 %s (%s): attempt %d of %d failed: %s", TOKEN_METHOD, grant_type,
                            attempt, self._attempts, exc)
        assert last is not None
        raise last

    def _once(self, url: str, grant_type: str) -> TokenGrant:
        self.requests += 1
        headers = {"Accept": "application/json", "User-Agent": "crmbridge"}
        try:
            raw = self._transport.request("GET", url, body=None, headers=headers, timeout=self._timeout)
        except TransportError as exc:
            text = redact(str(exc))
            raise CrmUnreachable(
                f"{TOKEN_METHOD}: {text}", method=TOKEN_METHOD, code="TIMEOUT" if exc.timeout else "UNREACHABLE",
                description=text, hint=f"check the network and {OAUTH_URL_SETTING}") from None
        try:
            body = json.loads(raw.content.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            body = None
        if not isinstance(body, dict):
            message = f"{TOKEN_METHOD}: HTTP {raw.status}: the authorization server did not answer JSON"
            if raw.status >= 500 or raw.status in (408, 429):
                raise TransientCrmError(message, method=TOKEN_METHOD, status=raw.status)
            raise CrmRejected(message, method=TOKEN_METHOD, status=raw.status,
                              hint=f"check {OAUTH_URL_SETTING}: it does not answer like oauth.bitrix.info")
        error = body.get("error")
        if error:
            raise self._error(str(error), str(body.get("error_description") or ""), raw.status, grant_type)
        if raw.status >= 500:
            raise TransientCrmError(f"{TOKEN_METHOD}: HTTP {raw.status}", method=TOKEN_METHOD, status=raw.status)
        return grant_from(body, self._clock())

    def _error(self, code: str, description: str, status: int, grant_type: str) -> Exception:
        text = redact(description) or code
        message = f"{TOKEN_METHOD}: {code}: {text}"
        common: dict[str, Any] = {"method": TOKEN_METHOD, "status": status, "code": code, "description": text}
        if code == "invalid_grant":
            if grant_type == "authorization_code":
                return AuthError(message, hint="the code was used already or is older than 30 seconds: "
                                 "authorize again and exchange the new code at once", **common)
            return ReauthorizationRequired(message, hint="an admin must authorize crmbridge again: run "
                                           "`crmbridge connect`", **common)
        if status >= 500:
            return TransientCrmError(message, **common)
        if code in ("invalid_client", "PAYMENT_REQUIRED", "invalid_scope", "insufficient_scope"):
            return AuthError(message, hint=_SERVER_HINTS[code], **common)
        return CrmRejected(message, hint=_SERVER_HINTS.get(code), **common)


class Redirect:
    """What Bitrix24 appended to the redirect URI (or just a code an admin pasted)."""

    def __init__(self, code: str, state: str | None = None, domain: str | None = None,
                 member_id: str | None = None) -> None:
        self.code = code
        self.state = state
        self.domain = domain
        self.member_id = member_id

    def __repr__(self) -> str:
        return f"Redirect(code='***', domain={self.domain!r}, member_id={self.member_id!r})"


def parse_redirect(text: str) -> Redirect:
    """The code out of a pasted redirect address (`...?code=..&state=..&domain=..`) or a bare code."""
    text = text.strip()
    if "code=" not in text:
        if not text or any(ch in text for ch in " /?&="):
            raise ConfigError("that is neither an authorization code nor the address Bitrix24 redirected to",
                              hint="paste the whole address from the browser, or the value of its `code` parameter")
        return Redirect(text)
    query = urlsplit(text).query if "?" in text else text
    params = dict(parse_qsl(query, keep_blank_values=True))
    code = params.get("code", "")
    if not code:
        raise ConfigError("the address has no authorization code", hint="paste the address Bitrix24 redirected to")
    return Redirect(code, params.get("state"), params.get("domain"), params.get("member_id"))


def new_state() -> str:
    return secrets.token_urlsafe(16)


class OAuthAuth:
    """The client's auth for a connected app: `client_endpoint + method`, `auth=<access token>` in every body.

    `connector` is the `auth_connector` source key sent with every request, so the app's own writes are
    not queued back as offline events of that connector (D api-reference/events/offline-events.md). The
    rest module reads it from the request's auth data; a batch's commands share that of the batch.
    """

    def __init__(self, session: OAuthSession, *, connector: str = "") -> None:
        self.session = session
        self.connector = connector
        self._local = threading.local()

    def _pair(self) -> TokenPair:
        pair = self.session.pair()
        self._local.pair = pair
        return pair

    def url_for(self, method: str) -> str:
        pair = getattr(self._local, "pair", None) or self._pair()
        endpoint = pair.details.get("client_endpoint")
        if not endpoint:
            raise ConfigError("the stored Bitrix24 tokens have no client_endpoint", hint="run `crmbridge connect` again")
        return f"{client_endpoint(str(endpoint))}{method}"

    def extra_params(self) -> dict[str, Any]:
        pair = self._pair()
        params: dict[str, Any] = {"auth": pair.access_token}
        if self.connector:
            params["auth_connector"] = self.connector
        return params

    def refresh(self) -> bool:
        failed = getattr(self._local, "pair", None) or self.session.pair()
        self._local.pair = self.session.renew(failed)
        return True

    @property
    def account(self) -> str:
        return self.session.pair().account

    def __repr__(self) -> str:
        endpoint = ""
        try:
            endpoint = str(self.session.pair().details.get("client_endpoint", ""))
        except Exception:  # noqa: BLE001 - a repr never raises
            pass
        return f"OAuthAuth({endpoint!r}, connector={self.connector!r})"


def open_session(cache_path: Any, server: AuthorizationServer) -> OAuthSession:
    """The session of the Bitrix24 app connected in this cache (ConfigError naming `crmbridge connect` if none)."""
    store = TokenStore(cache_path, CRM)
    session = OAuthSession(store, server.refresh)
    session.pair()
    return session

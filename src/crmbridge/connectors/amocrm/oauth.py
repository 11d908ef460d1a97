"""OAuth 2.0 of an amoCRM integration: the code exchange, refresh-token rotation through the shared token store.

amoCRM (reference §1, D-tok, amocrm-api-php AmoCRMOAuth): `POST https://<account>/oauth2/access_token` with a
JSON body {client_id, client_secret, grant_type, code | refresh_token, redirect_uri} answers {token_type,
expires_in, server_time, access_token, refresh_token}. Every refresh returns a new pair and the refresh token
is single-use: reused, it is refused with 401 "Token has been revoked". The pair lives in the cache's token
store (connectors/oauth.py): refreshed single-flight across threads and processes, both tokens committed
before the new access token is used, so every crmbridge process of the account finds the current pair.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from crmbridge.connectors.amocrm.transport import account_host, validate_base_url
from crmbridge.connectors.http import HttpTransport, RequestsTransport, TransportError, redact
from crmbridge.connectors.oauth import OAuthSession, TokenGrant, TokenPair, TokenStore
from crmbridge.errors import ConfigError, CrmRejected, CrmUnreachable, ReauthorizationRequired, TransientCrmError

log = logging.getLogger("crmbridge.amocrm")

CRM = "amocrm"
TOKEN_PATH = "/oauth2/access_token"
#: refresh this long before the expiry the server announced (clocks differ; a 401 refreshes anyway)
EARLY = 60.0
TIMEOUT = (5.0, 20.0)


class AmoCRMAuthorizationServer:
    """The account's token endpoint for one integration (client id, secret, redirect URI)."""

    def __init__(self, base_url: str, client_id: str, client_secret: str, redirect_uri: str, *,
                 transport: HttpTransport | None = None, clock: Callable[[], float] = time.time) -> None:
        self.base_url = validate_base_url(base_url)
        self.client_id = client_id
        self._secret = client_secret
        self.redirect_uri = redirect_uri
        self._transport = transport or RequestsTransport()
        self._clock = clock

    def exchange_code(self, code: str) -> TokenGrant:
        """An authorization code (single-use, minutes long) -> the first pair."""
        return self._token({"grant_type": "authorization_code", "code": code}, code_exchange=True)

    def refresh(self, refresh_token: str) -> TokenGrant:
        """The store's `exchange`: a refresh token -> a new pair; ReauthorizationRequired when it is refused."""
        return self._token({"grant_type": "refresh_token", "refresh_token": refresh_token}, code_exchange=False)

    def _token(self, grant: dict[str, str], *, code_exchange: bool) -> TokenGrant:
        body = json.dumps({"client_id": self.client_id, "client_secret": self._secret, **grant,
                           "redirect_uri": self.redirect_uri}).encode("utf-8")
        what = f"POST {TOKEN_PATH}"
        try:
            raw = self._transport.request("POST", f"{self.base_url}{TOKEN_PATH}", body=body, timeout=TIMEOUT,
                                          headers={"Content-Type": "application/json", "Accept": "application/json"})
        except TransportError as exc:
            text = " ".join(redact(str(exc)).split())
            raise CrmUnreachable(f"{what}: {text}", method=what, code="UNREACHABLE", description=text) from None
        try:
            answer: Any = json.loads(raw.content.decode("utf-8")) if raw.content else {}
        except (UnicodeDecodeError, ValueError):
            answer = {}
        if raw.status >= 500 or raw.status == 429:
            raise TransientCrmError(f"{what}: HTTP {raw.status}", method=what, status=raw.status)
        if raw.status != 200 or not isinstance(answer, dict) or not answer.get("access_token"):
            detail = " ".join(str(answer.get(key) or "") for key in ("hint", "detail")).strip() if isinstance(
                answer, dict) else ""
            detail = redact(detail) or f"HTTP {raw.status}"
            if code_exchange:
                raise CrmRejected(f"{what}: the authorization code was refused: {detail}", method=what,
                                  status=raw.status, code="invalid_grant", description=detail,
                                  hint="codes are single-use and expire within minutes: get a new one (amoCRM > "
                                       "Settings > Integrations > your integration) and check the client id, secret "
                                       "and redirect URI")
            raise ReauthorizationRequired(f"{what}: the refresh token was refused: {detail}", method=what,
                                          status=raw.status, code="invalid_grant", description=detail)
        expires_in = answer.get("expires_in")
        expires_at = self._clock() + float(expires_in) if isinstance(expires_in, (int, float)) else None
        return TokenGrant(str(answer["access_token"]), answer.get("refresh_token"), expires_at,
                          {"token_type": answer.get("token_type"), "server_time": answer.get("server_time"),
                           "base_url": self.base_url})


class AmoOAuthAuth:
    """The client's auth from the token store: the current access token; a 401 renews it (single-flight) once."""

    kind = "oauth"

    def __init__(self, session: OAuthSession, *, clock: Callable[[], float] = time.time) -> None:
        self.session = session
        self._clock = clock
        self._sent: dict[str, TokenPair] = {}

    def token(self) -> str:
        pair = self.session.pair()
        if pair.expires_at is not None and pair.expires_at - EARLY <= self._clock() and pair.status == "active":
            try:
                pair = self.session.renew(pair)  # expired by our clock: the PHP library refreshes first too
            except ReauthorizationRequired as exc:
                log.warning("amocrm: %s; trying the stored access token until amoCRM refuses it", exc)
        self._sent[pair.access_token] = pair
        return pair.access_token

    def refresh(self, rejected: str) -> bool:
        """amoCRM refused `rejected`: renew (or take the pair another process renewed); raises
        ReauthorizationRequired, one clear line, when the refresh token itself is refused."""
        pair = self._sent.get(rejected) or self.session.pair()
        if pair.status == "reauthorize" and pair.access_token == rejected:
            raise ReauthorizationRequired(
                f"amocrm: the stored tokens no longer work ({pair.error or 'the refresh token was refused'})",
                method="oauth/token", code="invalid_grant", description=pair.error,
                hint="an admin must authorize crmbridge again: run `crmbridge connect --crm amocrm --code CODE`")
        renewed = self.session.renew(pair)
        return renewed.access_token != rejected

    def __repr__(self) -> str:
        return f"AmoOAuthAuth({self.session!r})"


def server_from(settings: Any, base_url: str, *, transport: HttpTransport | None = None) -> AmoCRMAuthorizationServer:
    if not (settings.amocrm_client_id and settings.amocrm_client_secret and settings.amocrm_redirect_uri):
        raise ConfigError("the amoCRM integration is not configured",
                          hint="set CRMBRIDGE_AMOCRM_CLIENT_ID, CRMBRIDGE_AMOCRM_CLIENT_SECRET and "
                               "CRMBRIDGE_AMOCRM_REDIRECT_URI (amoCRM > Settings > Integrations > your integration)")
    return AmoCRMAuthorizationServer(base_url, settings.amocrm_client_id,
                                     settings.amocrm_client_secret.get_secret_value(), settings.amocrm_redirect_uri,
                                     transport=transport)


def oauth_auth_from(settings: Any, base_url: str, *, checkpoint: Callable[[str], None] | None = None) -> AmoOAuthAuth:
    """The auth of the configured integration: its tokens in the cache's token store, this account's row."""
    server = server_from(settings, base_url)
    store = TokenStore(settings.cache_path, CRM, account_host(server.base_url), checkpoint=checkpoint)
    return AmoOAuthAuth(OAuthSession(store, server.refresh))


def parse_code(text: str) -> tuple[str, str | None]:
    """`--code`: the code itself, or the whole redirect address (…?code=…&referer=<account>&state=…).
    Returns the code and the account host the redirect named (amoCRM's `referer`), if any."""
    text = text.strip()
    if "?" in text or text.startswith(("http://", "https://")):
        params = dict(parse_qsl(urlsplit(text).query, keep_blank_values=True))
        if not params.get("code"):
            raise ConfigError("the address has no code in it", hint="paste the whole address amoCRM redirected to")
        return params["code"], params.get("referer") or None
    if not text:
        raise ConfigError("the authorization code is empty", hint="pass it with --code")
    return text, None


def connect(settings: Any, code_text: str, *, base_url: str | None = None,
            transport: HttpTransport | None = None) -> TokenPair:
    """Exchange an authorization code and store the pair for the account (replacing an earlier one)."""
    url = validate_base_url(base_url or settings.amocrm_base_url or "")
    code, referer = parse_code(code_text)
    if referer and referer.lower() not in (account_host(url), urlsplit(f"//{referer}").netloc.lower()) and \
            referer.lower().split(":")[0] != account_host(url).split(":")[0]:
        raise ConfigError(f"the code was issued by {referer}, not by {account_host(url)}",
                          hint="authorize on the account CRMBRIDGE_AMOCRM_BASE_URL names, or fix that setting")
    grant = server_from(settings, url, transport=transport).exchange_code(code)
    account = account_host(url)
    store = TokenStore(settings.cache_path, CRM, account)
    other = [name for name in _stored_accounts(store) if name != account]
    if other:
        raise ConfigError(f"this cache is connected to the amoCRM account {other[0]}, not {account}",
                          hint="point CRMBRIDGE_CACHE_PATH at a new file for this account")
    return store.save(account, grant)


def _stored_accounts(store: TokenStore) -> list[str]:
    try:
        any_account = TokenStore(store.path, CRM)
        pair = any_account.current()
    except ConfigError:
        return ["several"]
    return [pair.account] if pair is not None else []


__all__ = ["AmoCRMAuthorizationServer", "AmoOAuthAuth", "connect", "oauth_auth_from", "parse_code", "server_from"]

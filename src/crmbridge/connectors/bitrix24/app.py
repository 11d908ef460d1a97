"""The configured Bitrix24 application: from the settings to its authorization server and the client's OAuth auth."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from crmbridge.config import Settings
from crmbridge.connectors.bitrix24.oauth import CRM as BITRIX24
from crmbridge.connectors.bitrix24.oauth import AuthorizationServer, OAuthAuth
from crmbridge.connectors.oauth import OAuthSession, TokenStore

__all__ = ["authorization_server", "effective_connector", "oauth_auth"]

log = logging.getLogger("crmbridge.bitrix24.oauth")


def authorization_server(settings: Settings) -> AuthorizationServer:
    """The Bitrix24 OAuth server for the configured application (ConfigError when id or secret is missing)."""
    secret = settings.bitrix24_client_secret.get_secret_value() if settings.bitrix24_client_secret else ""
    return AuthorizationServer(settings.bitrix24_oauth_url, settings.bitrix24_client_id or "", secret)


def oauth_auth(settings: Settings) -> OAuthAuth | None:
    """The connected application's auth, or None when no application is configured or connected in this cache."""
    if not settings.bitrix24_oauth_configured or str(settings.cache_path) == ":memory:":
        return None
    if not settings.cache_path.exists():
        return None
    store = TokenStore(settings.cache_path, BITRIX24)
    pair = store.current()
    if pair is None:
        return None
    session = OAuthSession(store, authorization_server(settings).refresh)
    return OAuthAuth(session, connector=effective_connector(settings, pair.details))


def effective_connector(settings: Settings, details: Mapping[str, Any]) -> str:
    """The auth_connector to send: the one the offline handlers were bound with at connect, else the setting's.

    The queue is split by connector, so reading or writing with another one than the binding's would
    miss the events or queue the bridge's own writes back.
    """
    offline = details.get("offline")
    if isinstance(offline, Mapping) and isinstance(offline.get("connector"), str):
        bound = str(offline["connector"])
        if bound != settings.bitrix24_auth_connector:
            log.warning(
                "offline events are bound with auth_connector %r, not %r (CRMBRIDGE_BITRIX24_AUTH_CONNECTOR): "
                "using the bound one; run `crmbridge connect --events-only` to rebind", bound,
                settings.bitrix24_auth_connector)
        return bound
    return settings.bitrix24_auth_connector

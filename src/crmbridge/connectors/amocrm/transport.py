"""amoCRM account URL validation and how requests are authorised (long-lived token now, OAuth through a token source)."""

from __future__ import annotations

from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from crmbridge.connectors.http import is_loopback
from crmbridge.errors import ConfigError

__all__ = ["ACCOUNT_DOMAINS", "BASE_URL_SETTING", "AmoAuth", "LongLivedTokenAuth", "validate_base_url"]

#: the setting named in every account-URL error
BASE_URL_SETTING = "CRMBRIDGE_AMOCRM_BASE_URL"
#: amoCRM and Kommo account domains (reference §1: the account's own subdomain, never www)
ACCOUNT_DOMAINS = (".amocrm.ru", ".amocrm.com", ".kommo.com")

_HINT = f"set {BASE_URL_SETTING} to your account's address, e.g. https://yourcompany.amocrm.ru"


def validate_base_url(url: str) -> str:
    """Check the account URL and return it normalised: `https://<subdomain>.amocrm.ru` (no path, no slash).

    Plain http is accepted only for loopback hosts (the sandbox account): the bearer token would
    otherwise travel in clear text. Other hosts than the amoCRM / Kommo account domains are refused,
    so a typo cannot send the token somewhere else.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"{BASE_URL_SETTING} is empty", hint=_HINT)
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ConfigError(f"{BASE_URL_SETTING} is not a valid URL", hint=_HINT) from None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in ("https", "http") or not host:
        raise ConfigError(f"{BASE_URL_SETTING} must be an https:// URL, got {url.strip()!r}", hint=_HINT)
    loopback = is_loopback(host)
    if scheme == "http" and not loopback:
        raise ConfigError(f"{BASE_URL_SETTING} uses plain http for {host}: the access token would travel unencrypted",
                          hint="use https:// (plain http is accepted only for 127.0.0.1, localhost and ::1)")
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise ConfigError(f"{BASE_URL_SETTING} must be just the account's address, without user, query or fragment",
                          hint=_HINT)
    if parts.path not in ("", "/"):
        raise ConfigError(f"{BASE_URL_SETTING} must be the account's address without a path, got path {parts.path!r}",
                          hint=_HINT)
    if not loopback:
        if host.startswith("www."):
            raise ConfigError(f"{BASE_URL_SETTING} must be your account's own subdomain, not {host}", hint=_HINT)
        if not any(host.endswith(domain) and len(host) > len(domain) for domain in ACCOUNT_DOMAINS):
            raise ConfigError(
                f"{BASE_URL_SETTING}: {host} is not an amoCRM or Kommo account address",
                hint="accounts live at <subdomain>.amocrm.ru, <subdomain>.amocrm.com or <subdomain>.kommo.com",
            )
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    return urlunsplit((scheme, netloc, "", "", ""))


def account_host(base_url: str) -> str:
    """The account's host (with its port where the URL has one): what identifies the account in the cache."""
    return urlsplit(base_url).netloc.lower()


class AmoAuth(Protocol):
    """How amoCRM requests are authorised: a bearer token, renewable for OAuth."""

    kind: str  # "long_lived" or "oauth"

    def token(self) -> str:
        """The access token to send now (an OAuth source refreshes one that expired by the local clock)."""
        ...

    def refresh(self, rejected: str) -> bool:
        """The CRM answered 401 to `rejected`: renew it; True when the request is worth repeating once."""
        ...


class LongLivedTokenAuth:
    """A private integration's long-lived token: nothing to renew; a 401 means it was revoked or expired."""

    kind = "long_lived"

    def __init__(self, token: str) -> None:
        if not token or not token.strip():
            raise ConfigError("CRMBRIDGE_AMOCRM_LONG_LIVED_TOKEN is empty",
                              hint="copy the token from the integration's Keys and scopes tab")
        self._token = token.strip()

    def token(self) -> str:
        return self._token

    def refresh(self, rejected: str) -> bool:
        return False

    def __repr__(self) -> str:
        return "LongLivedTokenAuth(***)"

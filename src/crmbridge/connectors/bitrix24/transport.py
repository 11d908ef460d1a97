"""The HTTP seam of the Bitrix24 client: Transport protocol, requests default, webhook auth, secret redaction."""

from __future__ import annotations

import re
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from crmbridge.connectors.http import RawResponse, RequestsTransport, Transport, TransportError, is_loopback, redact
from crmbridge.errors import ConfigError

__all__ = [
    "DEFAULT_TIMEOUT",
    "WEBHOOK_SETTING",
    "Auth",
    "RawResponse",
    "RequestsTransport",
    "Transport",
    "TransportError",
    "WebhookAuth",
    "redact",
    "validate_webhook_url",
]

#: (connect, read) seconds. The portal cuts a request at 60 s, so the read timeout sits just above it:
#: a shorter one (b24pysdk uses 10 s) abandons requests the portal is still executing and billing.
DEFAULT_TIMEOUT: tuple[float, float] = (5.0, 65.0)

#: the setting named in every webhook-URL error, so the user knows what to fix
WEBHOOK_SETTING = "CRMBRIDGE_BITRIX24_WEBHOOK_URL"

_WEBHOOK_PATH_RE = re.compile(r"^/rest/(?P<user>\d+)/(?P<code>[A-Za-z0-9_-]+)/?$")

def _shown(url: str) -> str:
    """The URL as it may appear in an error: scheme, host and `/rest/<user>/`, every later segment masked.

    Used on URLs that failed validation, where the code's position is not certain, so everything
    past the user id is hidden rather than only what the redaction pattern recognises.
    """
    try:
        parts = urlsplit(url.strip())
        segments = parts.path.split("/")
        port = parts.port
    except ValueError:
        return "<unparseable URL>"
    shown: list[str] = []
    for index, segment in enumerate(segments):
        keep = index <= 1 or (index == 2 and segment.isdigit())
        shown.append(segment if keep or not segment else "***")
    netloc = parts.hostname or ""
    if port is not None:
        netloc = f"{netloc}:{port}"
    return urlunsplit((parts.scheme, netloc, "/".join(shown), "", ""))


def validate_webhook_url(url: str) -> str:
    """Check an inbound-webhook URL and return it normalised (`https://host/rest/<digits>/<code>/`).

    Plain http is accepted only for loopback hosts (the sandbox portal); anything else would send
    the webhook code, which is a password, in clear text. Raises ConfigError naming the setting.
    """
    hint = f"set {WEBHOOK_SETTING} to the inbound webhook URL, e.g. https://yourportal.bitrix24.ru/rest/1/abc123xyz/"
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"{WEBHOOK_SETTING} is empty", hint=hint)
    try:
        parts = urlsplit(url.strip())
        port = parts.port  # raises ValueError on a malformed port
    except ValueError:
        raise ConfigError(f"{WEBHOOK_SETTING} is not a valid URL: {_shown(url)}", hint=hint) from None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in ("https", "http") or not host:
        raise ConfigError(f"{WEBHOOK_SETTING} must be an https:// URL, got {_shown(url)}", hint=hint)
    if scheme == "http" and not is_loopback(host):
        raise ConfigError(
            f"{WEBHOOK_SETTING} uses plain http for {host}: the webhook code would travel unencrypted",
            hint="use https:// (plain http is accepted only for 127.0.0.1, localhost and ::1)",
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{WEBHOOK_SETTING} must not contain a user name or password: {_shown(url)}", hint=hint)
    if parts.query or parts.fragment:
        raise ConfigError(f"{WEBHOOK_SETTING} must not have a query string or fragment: {_shown(url)}", hint=hint)
    match = _WEBHOOK_PATH_RE.match(parts.path)
    if match is None:
        raise ConfigError(
            f"{WEBHOOK_SETTING} must look like https://<portal>/rest/<user id>/<code>/, got {_shown(url)}",
            hint="copy the URL exactly as Bitrix24 shows it under Developer resources > Inbound webhook, "
            "without a method name at the end",
        )
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    return urlunsplit((scheme, netloc, f"/rest/{match['user']}/{match['code']}/", "", ""))


class Auth(Protocol):
    """How requests are authorised: an inbound webhook now, an OAuth app later."""

    def url_for(self, method: str) -> str:
        """The full URL to POST `method` to."""
        ...

    def extra_params(self) -> dict[str, Any]:
        """Parameters added to every request body (OAuth's `auth` token; nothing for a webhook)."""
        ...

    def refresh(self) -> bool:
        """Renew expired credentials; True when the call is worth repeating."""
        ...


class WebhookAuth:
    """Inbound-webhook auth: the secret lives in the URL path, so it is never shown unredacted."""

    def __init__(self, webhook_url: str) -> None:
        self._base = validate_webhook_url(webhook_url)

    def url_for(self, method: str) -> str:
        return f"{self._base}{method}.json"

    def extra_params(self) -> dict[str, Any]:
        return {}

    def refresh(self) -> bool:
        # A webhook has nothing to renew: an auth error means the webhook itself is gone.
        return False

    @property
    def redacted_url(self) -> str:
        return redact(self._base)

    def __repr__(self) -> str:
        return f"WebhookAuth({self.redacted_url!r})"



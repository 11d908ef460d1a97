"""The HTTP seam of the Bitrix24 client: Transport protocol, requests default, webhook auth, secret redaction."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import requests

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

# Secrets that may appear in text we did not write (library exceptions quote the URL): the webhook
# code in `/rest/<user>/<code>` and OAuth tokens in query strings or JSON.
_REDACTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(/rest/\d+/)[^/\s?#\"'<>]+"), r"\1***"),
    (
        re.compile(
            r"((?:\bauth|access_token|refresh_token|client_secret|application_token)(?:\]|%5D)?[\"']?\s*[=:]\s*[\"']?)"
            r"[^&\s\"',}]+"
        ),
        r"\1***",
    ),
    # an OAuth authorization code in a query string (it lives 30 s, but it is still a credential)
    (re.compile(r"([?&]code=)[^&\s\"'#]+"), r"\1***"),
)


def redact(text: str) -> str:
    """Replace webhook codes and tokens in `text` with `***` (e.g. `/rest/1/***/`)."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    if scheme == "http" and not _is_loopback(host):
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


@dataclass(frozen=True)
class RawResponse:
    """An HTTP answer as the client needs it; no parsing has happened yet."""

    status: int
    content: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def content_type(self) -> str:
        for name, value in self.headers.items():
            if name.lower() == "content-type":
                return value
        return ""


_ERRNO_RE = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


def _host(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc or "the portal"


def _reason(exc: BaseException) -> str:
    """The short cause inside requests' nested text ('Connection refused'), never the URL."""
    text = str(exc)
    match = _ERRNO_RE.search(text)
    if match:
        return match.group(1).strip().lower()
    if "Read timed out" in text:
        return "no answer within the read timeout"
    if "RemoteDisconnected" in text or "Connection aborted" in text:
        return "the connection was closed without an answer"
    return type(exc).__name__


class TransportError(OSError):
    """No HTTP answer at all (DNS, refused, reset, timeout). The message is already redacted."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class Transport(Protocol):
    """Sends one POST and returns the raw answer, or raises TransportError when there is none."""

    def post(
        self, url: str, *, body: bytes, headers: Mapping[str, str], timeout: tuple[float, float]
    ) -> RawResponse: ...


class RequestsTransport:
    """The default transport: one pooled requests.Session, no redirects, redacted failures."""

    def __init__(self, session: requests.Session | None = None) -> None:
        self._session = session if session is not None else requests.Session()

    def post(self, url: str, *, body: bytes, headers: Mapping[str, str], timeout: tuple[float, float]) -> RawResponse:
        try:
            # Redirects are not followed: requests would turn a redirected POST into a GET and drop
            # the body, and a redirect could send the secret URL to another host.
            response = self._session.post(url, data=body, headers=dict(headers), timeout=timeout, allow_redirects=False)
        except requests.Timeout as exc:
            raise TransportError(f"{_host(url)} timed out ({_reason(exc)})", timeout=True) from None
        except requests.RequestException as exc:
            # `from None`: the original exception's text contains the webhook URL.
            raise TransportError(f"could not reach {_host(url)} ({_reason(exc)})") from None
        return RawResponse(status=response.status_code, content=response.content, headers=dict(response.headers))

    def close(self) -> None:
        self._session.close()

"""The HTTP seam every connector shares: RawResponse, TransportError, the requests transport, loopback checks."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import requests

__all__ = ["RawResponse", "RequestsTransport", "Transport", "HttpTransport", "TransportError", "is_loopback", "redact"]

# Secrets that may appear in text we did not write (library exceptions quote the URL): the Bitrix24 webhook
# code in `/rest/<user>/<code>`, the amoCRM webhook secret in `/amocrm/hooks/<secret>`, bearer tokens, and
# OAuth tokens and client secrets in query strings or JSON.
_REDACTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(/rest/\d+/)[^/\s?#\"'<>]+"), r"\1***"),
    (re.compile(r"(/amocrm/hooks/)[^/\s?#\"'<>]+"), r"\1***"),
    (re.compile(r"(\bBearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1***"),
    (
        # also the PHP-style keys of event bodies: auth[access_token]=..., auth%5Bapplication_token%5D=...
        re.compile(
            r"((?:\bauth|access_token|refresh_token|client_secret|application_token)(?:\]|%5D)?[\"']?\s*[=:]\s*[\"']?)"
            r"[^&\s\"',}]+"
        ),
        r"\1***",
    ),
    (re.compile(r"([?&]code=)[^&\s\"'#]+"), r"\1***"),  # an OAuth authorization code in a redirect URL
)


def redact(text: str) -> str:
    """Replace webhook codes, hook secrets and tokens in `text` with `***` (e.g. `/rest/1/***/`)."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost: the only hosts a secret may be sent to over plain http (the sandboxes)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class RawResponse:
    """An HTTP answer as a client needs it; no parsing has happened yet."""

    status: int
    content: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str:
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return ""

    @property
    def content_type(self) -> str:
        return self.header("content-type")


_ERRNO_RE = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


def _host(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc or "the CRM"


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
    """Sends one POST and returns the raw answer, or raises TransportError when there is none (Bitrix24)."""

    def post(
        self, url: str, *, body: bytes, headers: Mapping[str, str], timeout: tuple[float, float]
    ) -> RawResponse: ...


class HttpTransport(Protocol):
    """Sends one request of any method (amoCRM speaks GET / POST / PATCH); TransportError when there is no answer."""

    def request(
        self, method: str, url: str, *, body: bytes | None, headers: Mapping[str, str], timeout: tuple[float, float]
    ) -> RawResponse: ...


class RequestsTransport:
    """The default transport: one pooled requests.Session, no redirects, redacted failures."""

    def __init__(self, session: requests.Session | None = None) -> None:
        self._session = session if session is not None else requests.Session()

    def request(
        self, method: str, url: str, *, body: bytes | None, headers: Mapping[str, str], timeout: tuple[float, float]
    ) -> RawResponse:
        try:
            # Redirects are not followed: requests would turn a redirected POST into a GET and drop
            # the body, and a redirect could send a secret (URL or bearer token) to another host.
            response = self._session.request(
                method, url, data=body, headers=dict(headers), timeout=timeout, allow_redirects=False
            )
        except requests.Timeout as exc:
            raise TransportError(f"{_host(url)} timed out ({_reason(exc)})", timeout=True) from None
        except requests.RequestException as exc:
            # `from None`: the original exception's text contains the URL, which may hold a secret.
            raise TransportError(f"could not reach {_host(url)} ({_reason(exc)})") from None
        return RawResponse(status=response.status_code, content=response.content, headers=dict(response.headers))

    def post(self, url: str, *, body: bytes, headers: Mapping[str, str], timeout: tuple[float, float]) -> RawResponse:
        return self.request("POST", url, body=body, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._session.close()

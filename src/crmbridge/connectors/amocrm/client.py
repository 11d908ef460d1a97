"""AmoCRMClient: v4 requests over an HttpTransport, paced by the 7 rps window, retried with tenacity, HAL paging.

Shaped like the Bitrix24 client: one `_send` is exactly one HTTP request (limiter first, counted, parsed
onto the exception tree), `_execute` repeats retryable failures with jittered exponential backoff and
repeats once after a 401 when the auth can refresh. Writes (`idempotent=False`) are repeated only when
amoCRM provably did not run them (429): after a 5xx or a lost answer they may have landed, and only a
look in the CRM can tell (the enforcement executor does that).
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import tenacity

from crmbridge import __version__
from crmbridge.connectors.amocrm.envelope import parse_answer
from crmbridge.connectors.amocrm.limiter import AMOCRM_RATE, RateLimiter, shared_window
from crmbridge.connectors.amocrm.transport import AmoAuth, account_host, validate_base_url
from crmbridge.connectors.bitrix24.encoding import encode_params
from crmbridge.connectors.http import HttpTransport, RequestsTransport, TransportError, redact
from crmbridge.errors import AuthError, AuthExpired, CrmError, CrmRejected, CrmUnreachable, RateLimited

__all__ = ["PAGE_LIMIT", "EVENTS_LIMIT", "FIELDS_LIMIT", "WRITE_BATCH", "AmoCRMClient", "Page"]

#: a number as a whole path segment (a lead's, a task's id): metrics label routes, not records
_ID_SEGMENT = re.compile(r"/\d+(?=/|$)")
log = logging.getLogger("crmbridge.amocrm")

#: rows per page of leads, contacts, companies, tasks, users, notes (reference §2: at most 250)
PAGE_LIMIT = 250
#: events per page (reference §6: at most 100)
EVENTS_LIMIT = 100
#: custom fields per page (reference §4: "up to 50 fields per request")
FIELDS_LIMIT = 50
#: items per write request: the docs allow 250 and recommend at most 50 (reference §2, D-lim)
WRITE_BATCH = 50
#: (connect, read) seconds; the official library uses 5 and 20, a 250-row page may take longer on a busy account
DEFAULT_TIMEOUT: tuple[float, float] = (5.0, 30.0)
#: how long everyone pauses after a 429 before trying again (no Retry-After is documented, reference §7)
HOLD_AFTER_429 = 1.5

_PATH_RE = re.compile(r"^/(?:api/v4|oauth2)/[A-Za-z0-9_/]+$")


@dataclass(frozen=True)
class Page:
    """One page of a HAL list: its number, the embedded records, and whether `_links.next` says there is more."""

    number: int
    items: list[dict[str, Any]]
    has_next: bool


def should_retry(exc: BaseException) -> bool:
    return isinstance(exc, CrmError) and exc.retryable


def refused_before_running(exc: BaseException) -> bool:
    """429: the account did not run the request at all; safe to repeat even a write."""
    return isinstance(exc, RateLimited)


def server_time_of(headers_date: str) -> float | None:
    """The account's clock from an answer's `Date` header (RFC 9110 asks origin servers to send it)."""
    if not headers_date:
        return None
    try:
        return parsedate_to_datetime(headers_date).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


class AmoCRMClient:
    """The transport layer to one amoCRM account (see docs/architecture.md for the contract)."""

    crm = "amocrm"

    def __init__(
        self,
        base_url: str,
        *,
        auth: AmoAuth,
        rate: int = AMOCRM_RATE,
        limiter: RateLimiter | None = None,
        transport: HttpTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        wall: Callable[[], float] = time.time,
        max_attempts: int = 8,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        rng: random.Random | None = None,
        observer: Callable[[str, str], None] | None = None,
        on_call: Callable[[str, str], None] | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.base_url = validate_base_url(base_url)
        self.account = account_host(self.base_url)
        self.auth = auth
        self.limiter: RateLimiter = limiter if limiter is not None else shared_window(self.account, rate)
        self._transport: HttpTransport = transport if transport is not None else RequestsTransport()
        self._owns_transport = transport is None
        self._sleep = sleep
        self._wall = wall
        self._timeout = timeout
        self.max_attempts = max_attempts
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._rng = rng if rng is not None else random.Random()
        self._headers = {"User-Agent": f"crmbridge/{__version__}", "Accept": "application/hal+json, application/json"}
        #: told of every HTTP request: ("GET /api/v4/leads", HTTP status or UNREACHABLE / TIMEOUT); the daemon's
        #: metrics, like Bitrix24Client.observer (ids in a path read as {id}, so a label is a route, not a lead)
        self.observer = observer
        #: (route, "ok" or the error's code) for every request the account answered; one request is one call here
        self.on_call = on_call
        #: HTTP requests sent, retries included
        self.requests_made = 0
        self.retries = 0
        #: the account's clock (unix seconds) as of the last answer, from its Date header
        self.server_time: float | None = None
        #: the account's clock minus ours, as the last answer's Date header showed (one-second steps)
        self.clock_skew: float | None = None

    # -- metrics and lifecycle ---------------------------------------------------------------------
    def operating_wait(self, method: str) -> float:
        """amoCRM has no per-method budget (the Syncer's stream scheduler asks every client)."""
        return 0.0

    def operating_seconds(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        close = getattr(self._transport, "close", None)
        if self._owns_transport and callable(close):
            close()

    def __enter__(self) -> AmoCRMClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AmoCRMClient({self.base_url!r}, auth={self.auth.kind}, requests_made={self.requests_made})"

    # -- one HTTP request --------------------------------------------------------------------------
    def _url(self, path: str, params: Mapping[str, Any] | None) -> str:
        if not _PATH_RE.match(path):
            raise ValueError(f"not an amoCRM API path: {path!r}")
        query = encode_params(params) if params else ""
        return f"{self.base_url}{path}" + (f"?{query}" if query else "")

    def _send(self, verb: str, path: str, params: Mapping[str, Any] | None, body: Any,
              token: str) -> dict[str, Any] | None:
        """Exactly one HTTP request: wait for the window, send, parse, learn the account's clock."""
        url = self._url(path, params)
        data = None if body is None else json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
        headers = dict(self._headers, Authorization=f"Bearer {token}")
        if data is not None:
            headers["Content-Type"] = "application/json"
        what = f"{verb} {path}"
        route = f"{verb} {_ID_SEGMENT.sub('/{id}', path)}"
        ticket = self.limiter.acquire()
        self.requests_made += 1
        try:
            raw = self._transport.request(verb, url, body=data, headers=headers, timeout=self._timeout)
        except TransportError as exc:
            if self.observer is not None:
                self.observer(route, "TIMEOUT" if exc.timeout else "UNREACHABLE")
            text = " ".join(redact(str(exc)).split())
            raise CrmUnreachable(f"{what}: {text}", method=what, code="TIMEOUT" if exc.timeout else "UNREACHABLE",
                                 description=text, hint="check the network and CRMBRIDGE_AMOCRM_BASE_URL") from None
        finally:
            # counted until a second after its answer: the latest the account can have taken it (see limiter.py)
            self.limiter.release(ticket)
        stamp = server_time_of(raw.header("date"))
        if stamp is not None:
            self.server_time = stamp
            self.clock_skew = stamp - self._wall()
        if self.observer is not None:
            self.observer(route, str(raw.status))
        try:
            answer = parse_answer(what, raw)
        except CrmError as exc:
            if self.on_call is not None:
                self.on_call(route, exc.code or str(raw.status))
            if isinstance(exc, RateLimited):
                self.limiter.hold(HOLD_AFTER_429)
            raise
        if self.on_call is not None:
            self.on_call(route, "ok")
        return answer

    def _backoff(self, attempt: int) -> float:
        base = min(self._backoff_max, self._backoff_initial * 2.0 ** max(0, attempt - 1))
        return base / 2 + self._rng.uniform(0, base / 2)

    def _pause(self, seconds: float) -> None:
        if seconds > 0:
            self._sleep(seconds)

    def _log_retry(self, what: str, state: tenacity.RetryCallState) -> None:
        self.retries += 1
        exc = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("amocrm %s: attempt %d of %d failed (%s: %s); retrying in %.1f s", what, state.attempt_number,
                    self.max_attempts, type(exc).__name__, exc, delay)

    def _execute(self, verb: str, path: str, params: Mapping[str, Any] | None = None, body: Any = None, *,
                 idempotent: bool = True) -> dict[str, Any] | None:
        """One logical request: retried on retryable errors; a 401 refreshes the token and repeats once,
        whatever the local clock thinks of its expiry (amoCRM revokes tokens on its own)."""
        what = f"{verb} {path}"

        def attempt() -> dict[str, Any] | None:
            token = self.auth.token()
            try:
                return self._send(verb, path, params, body, token)
            except AuthExpired as exc:
                if self.auth.refresh(token):
                    log.info("amocrm %s: access token refreshed, repeating the request once", what)
                    try:
                        return self._send(verb, path, params, body, self.auth.token())
                    except AuthExpired as again:
                        raise self._auth_error(again) from None
                raise self._auth_error(exc) from None

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_attempts),
            retry=tenacity.retry_if_exception(should_retry if idempotent else refused_before_running),
            wait=lambda state: self._backoff(state.attempt_number),
            sleep=self._pause,
            before_sleep=lambda state: self._log_retry(what, state),
            reraise=True,
        )
        return retrying(attempt)

    def _auth_error(self, exc: CrmError) -> AuthError:
        if self.auth.kind == "long_lived":
            hint = "the long-lived token was revoked or expired: generate a new one (integration > Keys and scopes) " \
                   "and set CRMBRIDGE_AMOCRM_LONG_LIVED_TOKEN"
        else:
            hint = "the OAuth tokens no longer work: run `crmbridge connect --crm amocrm --code CODE` with a new code"
        return AuthError(str(exc.message), method=exc.method, status=exc.status, code=exc.code,
                         description=exc.description, body=exc.body, hint=hint)

    # -- public API ----------------------------------------------------------------------------------
    def get(self, path: str, params: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """GET with retries; None means 204 (nothing found)."""
        return self._execute("GET", path, params)

    def post(self, path: str, body: Any, *, idempotent: bool = False) -> dict[str, Any] | None:
        return self._execute("POST", path, None, body, idempotent=idempotent)

    def patch(self, path: str, body: Any, *, idempotent: bool = False) -> dict[str, Any] | None:
        return self._execute("PATCH", path, None, body, idempotent=idempotent)

    def page(self, path: str, key: str, params: Mapping[str, Any] | None = None, *, number: int = 1,
             limit: int = PAGE_LIMIT) -> Page:
        """One page of a HAL list: `_embedded.<key>`; a 204 is an empty last page."""
        answer = self.get(path, {**dict(params or {}), "page": number, "limit": limit})
        if answer is None:
            return Page(number, [], False)
        embedded = answer.get("_embedded") if isinstance(answer.get("_embedded"), Mapping) else {}
        items = embedded.get(key) if isinstance(embedded, Mapping) else None
        if not isinstance(items, list):
            raise CrmRejected(f"GET {path}: the answer has no _embedded.{key} list", method=f"GET {path}",
                              status=200, code="UNEXPECTED_SHAPE", description=f"no _embedded.{key}")
        links = answer.get("_links") if isinstance(answer.get("_links"), Mapping) else {}
        has_next = isinstance(links, Mapping) and isinstance(links.get("next"), Mapping) and bool(links["next"].get("href"))
        return Page(number, [item for item in items if isinstance(item, dict)], has_next and bool(items))

    def pages(self, path: str, key: str, params: Mapping[str, Any] | None = None, *, start: int = 1,
              limit: int = PAGE_LIMIT, max_pages: int = 100_000) -> Iterator[Page]:
        """Pages from `start` until `_links.next` is absent (there is no total count, reference §2)."""
        number = start
        while number < start + max_pages:
            page = self.page(path, key, params, number=number, limit=limit)
            yield page
            if not page.has_next:
                return
            number += 1
        raise CrmRejected(f"GET {path}: more than {max_pages} pages; the account ignores the page parameter?",
                          method=f"GET {path}", code="PAGINATION_LOOP", description="too many pages")

    def items(self, path: str, key: str, params: Mapping[str, Any] | None = None, *,
              limit: int = PAGE_LIMIT) -> Iterator[dict[str, Any]]:
        for page in self.pages(path, key, params, limit=limit):
            yield from page.items

"""Parsing Bitrix24 success / error / batch envelopes and mapping every error onto the crmbridge exception tree."""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from crmbridge.connectors.bitrix24.transport import WEBHOOK_SETTING, redact
from crmbridge.errors import (
    AuthError,
    AuthExpired,
    BatchCommandError,
    CrmError,
    CrmRejected,
    OperatingTimeExceeded,
    RateLimited,
    ScopeError,
    TransientCrmError,
)

__all__ = [
    "BatchResult",
    "CallResult",
    "classify_error",
    "decode_body",
    "infer_scope",
    "parse_batch",
    "parse_call",
    "reported_reset_at",
]

#: when a 429 names no reset time, assume the oldest one-minute basket of the window expires within a minute
DEFAULT_OPERATING_WAIT = 60.0
_MAX_DESCRIPTION = 300

_SCOPES_BY_PREFIX: tuple[tuple[str, str], ...] = (
    ("crm.", "crm"),
    ("tasks.", "task"),
    ("task.", "task"),
    ("im.", "im"),
    ("user.", "user"),
    ("department.", "department"),
)

_AUTH_HINT = (
    f"check {WEBHOOK_SETTING}: the inbound webhook may have been deleted or expired, "
    "or its user deactivated or lacking rights"
)

_HINTS: dict[str, str] = {
    "OVERLOAD_LIMIT": "REST is blocked for this portal by hand; only Bitrix24 support can lift it",
    "ACCESS_DENIED": "REST needs a commercial Bitrix24 plan, or the webhook's user lacks access to this data",
    "INVALID_REQUEST": "Bitrix24 accepts REST calls over https only",
    "ERROR_METHOD_NOT_FOUND": "check the method name; a method is also hidden when the webhook lacks its scope",
    "PORTAL_DELETED": "the portal is deleted or its public part is closed",
    "ERROR_BATCH_LENGTH_EXCEEDED": "send fewer or shorter commands per batch",
    "ERROR_BATCH_METHOD_NOT_ALLOWED": "call this method outside batch",
}

_AUTH_CODES = frozenset({"NO_AUTH_FOUND", "invalid_token", "INVALID_CREDENTIALS", "user_access_error"})
_TRANSIENT_CODES = frozenset({"INTERNAL_SERVER_ERROR", "ERROR_UNEXPECTED_ANSWER"})
# Codes that would otherwise be classified by a 5xx status but are not worth retrying.
_REJECTED_CODES = frozenset(_HINTS)


@dataclass(frozen=True)
class CallResult:
    """A successful answer: `result` plus the list fields (`total`, `next`) and the portal's `time` block."""

    result: Any
    total: int | None = None
    next: int | None = None
    time: dict[str, Any] = field(default_factory=dict)


@dataclass
class BatchResult:
    """One `batch` answer keyed by command key; failed commands are in `errors`, never dropped."""

    results: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, CrmError] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    nexts: dict[str, int] = field(default_factory=dict)
    times: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the outer request's `time` block (the batch itself is not billed operating time)
    time: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def infer_scope(method: str) -> str | None:
    """The permission scope a method needs, when its name tells (crm.* -> crm, tasks.* -> task, ...)."""
    lowered = method.lower()
    for prefix, scope in _SCOPES_BY_PREFIX:
        if lowered.startswith(prefix):
            return scope
    return None


def _one_line(text: str) -> str:
    """A description fit for a one-line message: no tags (`<br>`) or entities, one line, secrets hidden."""
    text = html.unescape(re.sub(r"<[^>]*>", " ", text))
    text = " ".join(text.split())
    if len(text) > _MAX_DESCRIPTION:
        text = text[: _MAX_DESCRIPTION - 1] + "…"
    return redact(text)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def reported_reset_at(body: Any) -> float | None:
    """`operating_reset_at` as an error body reports it (`time.operating_reset_at`, or top level), if it does."""
    if isinstance(body, Mapping):
        time_block = body.get("time")
        if isinstance(time_block, Mapping):
            found = _number(time_block.get("operating_reset_at"))
            if found is not None:
                return found
        return _number(body.get("operating_reset_at"))
    return None


#: a method's budget frees up within its 10-minute window: a reset time further ahead is a broken answer
MAX_OPERATING_WAIT = 660.0


def _reset_at(body: Any, now: float) -> float:
    found = reported_reset_at(body)
    return min(found, now + MAX_OPERATING_WAIT) if found is not None else now + DEFAULT_OPERATING_WAIT


def operating_hint(method: str, reset_at: float) -> str:
    """What an OPERATION_TIME_LIMIT error tells the user: when the method unblocks (the time actually waited for)."""
    try:
        when = _dt.datetime.fromtimestamp(reset_at, tz=_dt.UTC).strftime("%H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        when = "the end of its 10-minute window"
    return f"{method} used up its operating-time budget; it unblocks at about {when}"


def _message(method: str, status: int | None, code: str, description: str, batch_key: str | None) -> str:
    where = f"{method} [batch {batch_key}]" if batch_key is not None else method
    if status is not None:
        # Keeps the "HTTP 400 : text" shape even when legacy CRM methods send an empty code.
        return f"{where}: HTTP {status} {code}: {description}"
    if code:
        return f"{where}: {code}: {description}"
    return f"{where}: {description}"


def classify_error(
    method: str,
    *,
    status: int | None,
    code: str | None,
    description: str | None,
    now: float,
    body: Any = None,
    batch_key: str | None = None,
) -> CrmError:
    """Map one CRM error onto the exception tree: by the `error` string first, then by HTTP status.

    The status alone is not trusted because the docs and SDKs disagree on it for the same code
    (insufficient_scope is 401 in one, 403 in another). `batch_key` is set for a command inside a
    batch, whose errors carry no status of their own; an otherwise plain rejection becomes a
    BatchCommandError that keeps the key.
    """
    code = (code or "").strip()
    text = _one_line(description or "") or "(no description)"
    message = _message(method, status, code, text, batch_key)
    common: dict[str, Any] = {"method": method, "status": status, "code": code, "description": text, "body": body}

    if code == "QUERY_LIMIT_EXCEEDED":
        return RateLimited(message, **common)
    if code == "OPERATION_TIME_LIMIT":
        reset_at = _reset_at(body, now)
        return OperatingTimeExceeded(message, reset_at=reset_at, hint=operating_hint(method, reset_at), **common)
    if code == "expired_token":
        return AuthExpired(message, hint="the OAuth access token expired and must be refreshed", **common)
    if code in _AUTH_CODES:
        return AuthError(message, hint=_AUTH_HINT, **common)
    if code == "insufficient_scope":
        scope = infer_scope(method)
        if scope is not None:
            message = f"{message} (needs the '{scope}' scope)"
            hint = f"tick the '{scope}' scope on the inbound webhook in Bitrix24 (Developer resources), then retry"
        else:
            hint = "grant the inbound webhook the scope this method belongs to (Developer resources), then retry"
        return ScopeError(message, hint=hint, **common)
    if code in _TRANSIENT_CODES:
        return TransientCrmError(message, **common)
    if code in _REJECTED_CODES:
        if batch_key is not None:
            return BatchCommandError(message, command=batch_key, hint=_HINTS[code], **common)
        return CrmRejected(message, hint=_HINTS[code], **common)

    if status is not None:
        if status >= 500:
            return TransientCrmError(message, **common)
        if status == 429:
            # Bitrix24 uses 429 for nothing but the operating limit, even if the code is missing.
            return OperatingTimeExceeded(message, reset_at=_reset_at(body, now), **common)
        if status == 408:
            return TransientCrmError(message, **common)
        if status == 401:
            return AuthError(message, hint=_AUTH_HINT, **common)
    if batch_key is not None:
        return BatchCommandError(message, command=batch_key, **common)
    return CrmRejected(message, **common)


def decode_body(method: str, status: int, content: bytes, content_type: str, *, now: float) -> Any:
    """The JSON in an HTTP answer, or the error to raise when there is none.

    Non-JSON (typically an HTML page from a proxy or from the limiter, fast_bitrix24 #216) is worth
    retrying, except for a 4xx which means the URL is not a REST endpoint at all: retrying that
    would only repeat the mistake.
    """
    try:
        return json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        pass
    kind = (content_type.split(";")[0].strip() or "unknown type") if content else "empty"
    snippet = _one_line(content[:200].decode("utf-8", errors="replace"))
    description = f"expected JSON, got a {kind} body" + (f": {snippet[:80]}" if snippet else "")
    message = f"{method}: HTTP {status}: {description}"
    common: dict[str, Any] = {"method": method, "status": status, "code": None, "description": description}
    if 400 <= status < 500 and status not in (408, 429):
        raise CrmRejected(
            message, hint=f"check {WEBHOOK_SETTING}: the address does not answer like a Bitrix24 REST API", **common
        )
    if status == 429:
        raise OperatingTimeExceeded(message, reset_at=now + DEFAULT_OPERATING_WAIT, **common)
    raise TransientCrmError(message, **common)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def parse_call(method: str, status: int, content: bytes, content_type: str, *, now: float) -> CallResult:
    """Parse one HTTP answer into a CallResult or raise the classified CrmError."""
    if 300 <= status < 400:
        # Redirects are not followed (see RequestsTransport); retrying would get the same redirect.
        raise CrmRejected(
            f"{method}: HTTP {status}: the portal redirects this request",
            method=method,
            status=status,
            description="redirect",
            hint=f"check {WEBHOOK_SETTING}: the portal may have moved to another address",
        )
    body = decode_body(method, status, content, content_type, now=now)
    if not isinstance(body, Mapping):
        raise TransientCrmError(
            f"{method}: HTTP {status}: the answer is JSON but not an object",
            method=method,
            status=status,
            body=body,
        )
    if "error" in body and ("result" not in body or status >= 400):
        raise classify_error(
            method,
            status=status,
            code=str(body.get("error") or ""),
            description=str(body.get("error_description") or ""),
            now=now,
            body=dict(body),
        )
    if status >= 300 or "result" not in body:
        # An answer without an error code and without a result: judge it by the status alone.
        raise classify_error(
            method,
            status=status,
            code="",
            description="the answer has neither result nor error",
            now=now,
            body=dict(body),
        )
    time_block = body.get("time")
    return CallResult(
        result=body["result"],
        total=_int_or_none(body.get("total")),
        next=_int_or_none(body.get("next")),
        time=dict(time_block) if isinstance(time_block, Mapping) else {},
    )


def _as_map(value: Any) -> dict[str, Any]:
    """A batch map as a dict keyed by command key.

    PHP serialises an empty map as `[]` and a map whose keys happen to be 0..n-1 as a JSON list,
    so list positions are the keys.
    """
    if isinstance(value, Mapping):
        return {str(key): item for key, item in value.items()}
    if isinstance(value, list):
        return {str(index): item for index, item in enumerate(value)}
    return {}


def parse_batch(outer: Any, methods: Mapping[str, str], *, halt: bool, now: float) -> BatchResult:
    """Split a batch's `result` block into per-command results and errors.

    `methods` maps each command key to its method (for messages and scope hints). A command with
    neither result nor error is reported as an error: with `halt` it was skipped after a failure,
    otherwise the portal lost it; either way the caller must not mistake it for an empty answer.
    """
    block = outer.result if isinstance(outer, CallResult) else outer
    if not isinstance(block, Mapping):
        raise TransientCrmError(
            "batch: the answer's result is not a batch result block", method="batch", status=200, body=block
        )
    results = _as_map(block.get("result"))
    raw_errors = _as_map(block.get("result_error"))
    batch = BatchResult(
        totals={k: n for k, v in _as_map(block.get("result_total")).items() if (n := _int_or_none(v)) is not None},
        nexts={k: n for k, v in _as_map(block.get("result_next")).items() if (n := _int_or_none(v)) is not None},
        times={k: dict(v) for k, v in _as_map(block.get("result_time")).items() if isinstance(v, Mapping)},
        time=dict(outer.time) if isinstance(outer, CallResult) else {},
    )
    for key, method in methods.items():
        if key in raw_errors:
            raw = raw_errors[key]
            raw_map = raw if isinstance(raw, Mapping) else {"error": "", "error_description": str(raw)}
            batch.errors[key] = classify_error(
                method,
                status=_int_or_none(raw_map.get("status")),
                code=str(raw_map.get("error") or ""),
                description=str(raw_map.get("error_description") or ""),
                now=now,
                body=dict(raw_map),
                batch_key=key,
            )
        elif key in results:
            batch.results[key] = results[key]
        else:
            why = (
                "not run: the batch halted at an earlier error"
                if halt
                else "the portal returned neither result nor error"
            )
            batch.errors[key] = BatchCommandError(
                f"{method} [batch {key}]: {why}", command=key, method=method, description=why
            )
    return batch

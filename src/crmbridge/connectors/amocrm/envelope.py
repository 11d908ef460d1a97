"""Parsing amoCRM v4 answers: HAL success bodies, 204 = empty, problem+json errors, nginx HTML pages, onto the exception tree.

What the docs say (reference §2, §7, §9; amocrm-api-php AmoCRMApiRequest::parseResponse / checkHttpStatus):
success is 200/201/202 with `application/hal+json`, 204 (no body) means "nothing found", errors are
`application/problem+json` ({title, type, status, detail} and for 400 `validation-errors` per request_id),
429 and the 403 of a blocked account come as nginx HTML, not JSON.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from typing import Any

from crmbridge.connectors.http import RawResponse, redact
from crmbridge.errors import (
    AuthExpired,
    CrmError,
    CrmRejected,
    RateLimited,
    ScopeError,
    TransientCrmError,
)

__all__ = ["ValidationRejected", "classify", "parse_answer"]

_MAX_DESCRIPTION = 300
_BASE_HINT = "check CRMBRIDGE_AMOCRM_BASE_URL"


class ValidationRejected(CrmRejected):
    """400 with `validation-errors`: the account refused named items of an array request (none was written).

    `by_request_id` maps each item's `request_id` to its error text (code, path, detail).
    """

    def __init__(self, message: str, *, by_request_id: dict[str, str], **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.by_request_id = by_request_id


def _one_line(text: str) -> str:
    text = html.unescape(re.sub(r"<[^>]*>", " ", text))
    text = " ".join(text.split())
    if len(text) > _MAX_DESCRIPTION:
        text = text[: _MAX_DESCRIPTION - 1] + "…"
    return redact(text)


def _validation_errors(body: Mapping[str, Any]) -> dict[str, str]:
    """{request_id: "Code at path: detail; ..."} from a 400 body's `validation-errors`."""
    found: dict[str, str] = {}
    for item in body.get("validation-errors") or []:
        if not isinstance(item, Mapping):
            continue
        texts = []
        for error in item.get("errors") or []:
            if isinstance(error, Mapping):
                texts.append(" ".join(part for part in (
                    str(error.get("code") or ""),
                    f"at {error['path']}" if error.get("path") else "",
                    f"— {error['detail']}" if error.get("detail") else "",
                ) if part))
        found[str(item.get("request_id", ""))] = _one_line("; ".join(texts) or "invalid")
    return found


def classify(what: str, status: int, body: Any, *, text: str = "") -> CrmError:
    """One failed answer onto the exception tree. `what` names the request (`GET /api/v4/leads`)."""
    problem = body if isinstance(body, Mapping) else {}
    title = str(problem.get("title") or "")
    detail = str(problem.get("detail") or problem.get("hint") or "")
    description = _one_line(detail or title or text or "(no description)")
    code = title or (str(status) if status else None)
    message = f"{what}: HTTP {status} {title}: {description}" if title else f"{what}: HTTP {status}: {description}"
    common: dict[str, Any] = {"method": what, "status": status, "code": code, "description": description,
                              "body": dict(problem) if problem else (text[:200] or None)}
    if status == 429:
        return RateLimited(message, hint="amoCRM allows 7 requests per second; crmbridge backs off and retries", **common)
    if status == 401:
        return AuthExpired(message, hint="the access token was rejected: it expired or was revoked", **common)
    if status == 402:
        return CrmRejected(message, hint="the amoCRM account's subscription is not paid", **common)
    if status == 403:
        if not problem:
            # nginx HTML: the account or IP is blocked for exceeding the request limit (reference §7)
            return CrmRejected(message, hint="amoCRM blocked this IP or account (too many requests, or IP not "
                                             "allowed); only amoCRM support can lift it", **common)
        return ScopeError(message, hint="the integration's user lacks rights for this (users need an admin)", **common)
    if status == 400 and problem.get("validation-errors"):
        by_request = _validation_errors(problem)
        first = next(iter(by_request.values()), description)
        return ValidationRejected(f"{what}: HTTP 400: {first}", by_request_id=by_request,
                                  **{**common, "code": "validation", "description": first})
    if status >= 500 or status in (408, 0):
        return TransientCrmError(message, **common)
    if 300 <= status < 400:
        return CrmRejected(message, hint=f"{_BASE_HINT}: the account redirects (moved to another address?)", **common)
    if status == 404:
        return CrmRejected(message, hint=f"{_BASE_HINT}: this address does not answer like an amoCRM account", **common)
    return CrmRejected(message, **common)


def parse_answer(what: str, raw: RawResponse) -> dict[str, Any] | None:
    """The JSON object of a successful answer, None for 204 (and an empty 202), else raise the classified error."""
    status = raw.status
    if status == 204 or (status == 202 and not raw.content.strip()):
        return None  # "nothing found" (reference §2): an empty page, not an error
    body: Any = None
    text = ""
    if raw.content:
        try:
            body = json.loads(raw.content.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            text = _one_line(raw.content[:400].decode("utf-8", errors="replace"))
    if status in (200, 201, 202):
        if isinstance(body, Mapping):
            return dict(body)
        if isinstance(body, list):
            return {"_items": body}  # complex create answers a plain array (reference §2)
        kind = (raw.content_type.split(";")[0].strip() or "unknown type") if raw.content else "empty"
        # an HTML page where JSON was expected comes from a proxy or an overloaded front: worth retrying
        raise TransientCrmError(f"{what}: HTTP {status}: expected JSON, got a {kind} body",
                                method=what, status=status, description=f"expected JSON, got {kind}",
                                body=text[:200] or None)
    raise classify(what, status, body, text=text)

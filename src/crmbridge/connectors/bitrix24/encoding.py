"""PHP-style encoding of batch commands (`method?filter[%3EID]=5&select[0]=ID`); `$result[...]` stays literal."""

from __future__ import annotations

import datetime as _dt
import enum
import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import quote_plus

__all__ = ["REFERENCE_RE", "encode_command", "encode_params", "encode_scalar", "is_reference"]

#: A batch back-reference such as `$result[get_user][UF_DEPARTMENT][0]` or `$result[p0][tasks][49][id]`.
#: The portal substitutes these inside the command string, so they must reach it verbatim.
REFERENCE_RE = re.compile(r"\$(?:result|result_error|result_total|result_next|result_time)(?:\[[^\[\]&=]*\])+")


def is_reference(value: object) -> bool:
    """True when `value` is exactly one `$result[...]` reference (nothing before or after it)."""
    return isinstance(value, str) and REFERENCE_RE.fullmatch(value) is not None


def _quote_text(text: str) -> str:
    """URL-encode `text` the way PHP's parse_str decodes it, leaving `$result[...]` references literal."""
    out: list[str] = []
    pos = 0
    for match in REFERENCE_RE.finditer(text):
        out.append(quote_plus(text[pos : match.start()]))
        # Left unencoded so the portal sees and substitutes it; its characters ($, [, ], word chars)
        # cannot break the query string apart.
        out.append(match.group(0))
        pos = match.end()
    out.append(quote_plus(text[pos:]))
    return "".join(out)


def encode_scalar(value: object) -> str:
    """One leaf value as it goes into a command string (already URL-encoded).

    Booleans become `1`/`0`: that is what PHP makes of a JSON `true`/`false`, so a parameter means
    the same in a JSON call and in a batch command (Python's `True` would arrive as the string "True",
    fast_bitrix24 #265). Callers that need CRM-style flags pass "Y"/"N" strings themselves.
    """
    if value is None:
        return ""
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "1" if value else "0"
    if isinstance(value, enum.Enum):
        return encode_scalar(value.value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot send a non-finite number ({value!r}) to Bitrix24")
        return repr(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return quote_plus(value.isoformat())
    if isinstance(value, bytes):
        return _quote_text(value.decode("utf-8"))
    if isinstance(value, str):
        return _quote_text(value)
    raise TypeError(f"cannot encode a {type(value).__name__} into a Bitrix24 batch command")


def _walk(value: Any, key: str, out: list[str]) -> None:
    if isinstance(value, Mapping):
        items: list[tuple[object, Any]] = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = list(enumerate(value))
    else:
        out.append(f"{key}={encode_scalar(value)}")
        return
    if not items:
        # An empty array still has to be present for some methods (the official SDK does the same;
        # e.g. task.item.list wants `ORDER[]=`); PHP reads it as an array, never as a string.
        out.append(f"{key}[]=")
        return
    for inner_key, inner in items:
        # Only the new key segment is encoded: the brackets already in `key` are PHP syntax.
        _walk(inner, f"{key}[{quote_plus(str(inner_key))}]", out)


def encode_params(params: Mapping[str, Any] | None) -> str:
    """Encode parameters PHP-style: `{"filter": {">ID": 5}, "select": ["ID"]}` -> `filter[%3EID]=5&select[0]=ID`.

    Operator prefixes in keys (`>`, `!`, `@`, `%`) are percent-encoded, `+` becomes `%2B`, spaces `+`.
    """
    if not params:
        return ""
    out: list[str] = []
    for key, value in params.items():
        _walk(value, quote_plus(str(key)), out)
    return "&".join(out)


def encode_command(method: str, params: Mapping[str, Any] | None = None) -> str:
    """One `cmd` entry of a batch: `crm.deal.list?filter[%3EID]=5&select[0]=ID`."""
    return f"{method}?{encode_params(params)}"

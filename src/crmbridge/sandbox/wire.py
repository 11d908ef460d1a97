"""Wire format of the sandbox portal: PHP-style query decoding, Bitrix24 value formats, JSON envelopes."""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl

#: The portal's zone: Europe/Moscow has had a fixed +03:00 offset (no DST) since 2014,
#: so a fixed offset is exact and much cheaper than zoneinfo in the seeding hot loop.
PORTAL_TZ = timezone(timedelta(hours=3), "MSK")
PORTAL_OFFSET = "+03:00"

_KEY_RE = re.compile(r"\[([^\]]*)\]")


def php_parse_query(query: str) -> dict[str, Any]:
    """Decode `a[b][0]=x&a[b][]=y&c=z` the way PHP's `parse_str` does (nested dicts, `[]` appends).

    Dicts whose keys are exactly 0..n-1 become lists, because that is what a PHP
    array with those keys means once the portal `json_encode`s it or iterates it.
    """
    root: dict[str, Any] = {}
    for raw_key, value in parse_qsl(query, keep_blank_values=True):
        bracket = raw_key.find("[")
        if bracket <= 0:
            root[raw_key] = value
            continue
        head = raw_key[:bracket]
        parts = _KEY_RE.findall(raw_key[bracket:])
        node: dict[str, Any] = root
        key = head
        for part in parts:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
            if part == "":
                # PHP's `[]`: next integer index after the largest numeric key
                nums = [int(k) for k in node if k.isdigit()]
                part = str(max(nums) + 1 if nums else 0)
            key = part
        node[key] = value
    return _listify(root)


def _listify(value: Any) -> Any:
    if isinstance(value, dict):
        converted = {k: _listify(v) for k, v in value.items()}
        if converted and all(k.isdigit() for k in converted):
            keys = sorted(converted, key=int)
            if [int(k) for k in keys] == list(range(len(keys))):
                return [converted[k] for k in keys]
        return converted
    return value


def php_map(mapping: dict[str, Any]) -> Any:
    """Serialise a keyed result the way PHP's json_encode would: `[]` when empty, a list for keys 0..n-1."""
    if not mapping:
        return []
    keys = list(mapping)
    if all(isinstance(k, str) and k.isdigit() for k in keys) and [int(k) for k in keys] == list(range(len(keys))):
        return [mapping[k] for k in keys]
    return mapping


_OFFSET_SECONDS = 3 * 3600
_DAY_NAMES: dict[int, str] = {}


def _day(day_number: int) -> str:
    # seeding formats ~10 datetimes per deal; caching the calendar part per day makes that cheap
    name = _DAY_NAMES.get(day_number)
    if name is None:
        name = datetime.fromtimestamp(day_number * 86400, timezone.utc).strftime("%Y-%m-%d")
        _DAY_NAMES[day_number] = name
    return name


#: "Thh:mm:ss+03:00" for every second of a day: formatting becomes a lookup (~30 ms to build, once)
_CLOCK: list[str] = [f"T{h:02d}:{m:02d}:{s:02d}{PORTAL_OFFSET}" for h in range(24) for m in range(60) for s in range(60)]


def fmt_dt(ts: float | None) -> str | None:
    """A unix timestamp as Bitrix24 sends a datetime: `YYYY-MM-DDThh:mm:ss+03:00` (portal zone)."""
    if ts is None:
        return None
    day_number, seconds = divmod(int(ts) + _OFFSET_SECONDS, 86400)
    return _day(day_number) + _CLOCK[seconds]


def fmt_date(ts: float | None) -> str:
    """A unix timestamp as a `date` user field value: `YYYY-MM-DD` in the portal zone (empty string when unset)."""
    if ts is None:
        return ""
    return _day((int(ts) + _OFFSET_SECONDS) // 86400)


def fmt_day_dt(ts: float | None) -> str:
    """A standard `date` field (BEGINDATE, CLOSEDATE) as legacy CRM methods send it: midnight with offset."""
    if ts is None:
        return ""
    return f"{fmt_date(ts)}T00:00:00{PORTAL_OFFSET}"


_DT_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%z",
    "%Y-%m-%d %H:%M:%S%z",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
    "%d.%m.%Y %H:%M:%S",
    "%d.%m.%Y",
)


def parse_dt(value: Any) -> datetime | None:
    """Parse what clients send for a date/datetime (ISO with or without offset, `d.m.Y`); naive = portal zone."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=PORTAL_TZ)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=PORTAL_TZ)
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # drop fractional seconds, which strptime's formats above do not cover
    text = re.sub(r"(\d{2}:\d{2}:\d{2})\.\d+", r"\1", text)
    for fmt in _DT_FORMATS:
        try:
            parsed = datetime.strptime(text, fmt)
        except ValueError:
            continue
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=PORTAL_TZ)
    return None


def norm_dt(value: Any) -> str | None:
    """A client datetime normalised to the portal's wire form, so wire strings compare lexicographically."""
    parsed = parse_dt(value)
    if parsed is None:
        return None
    return parsed.astimezone(PORTAL_TZ).isoformat(timespec="seconds")


def norm_date(value: Any) -> str | None:
    """A client date normalised to `YYYY-MM-DD` in the portal zone."""
    parsed = parse_dt(value)
    if parsed is None:
        return None
    return parsed.astimezone(PORTAL_TZ).strftime("%Y-%m-%d")


def num_str(value: float) -> str:
    """A money/double value as legacy CRM sends it (`"19999.99"`)."""
    return f"{value:.2f}"


def dumps(payload: Any) -> bytes:
    """JSON body bytes; compact separators keep 2,500-row batch answers small."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def time_block(start: float, finish: float, processing: float, operating: float | None = None,
               operating_reset_at: float | None = None) -> dict[str, Any]:
    """The `time` object of every answer (D api-reference/data-types.md#time)."""
    block: dict[str, Any] = {
        "start": start,
        "finish": finish,
        "duration": finish - start,
        "processing": processing,
        "date_start": fmt_dt(start),
        "date_finish": fmt_dt(finish),
    }
    if operating_reset_at is not None:
        block["operating_reset_at"] = int(operating_reset_at)
    if operating is not None:
        block["operating"] = operating
    return block


def truthy(value: Any) -> bool:
    """How Bitrix reads a flag a client sent: Y/1/true/True are on, N/0/false/'' are off."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() in {"y", "1", "true", "yes"}
    return bool(value)

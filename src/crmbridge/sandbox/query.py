"""List-method engine of the sandbox: Bitrix24 filter prefixes, ordering, 50-row paging over id-sorted tables."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from .wire import norm_date, norm_dt, truthy

PAGE_SIZE = 50

#: longest first, so `!%=` is not read as `!` + `%=`
_PREFIXES: tuple[str, ...] = ("!%=", "!=%", ">=", "<=", "!@", "!%", "=%", "%=", "!=", ">", "<", "@", "%", "=", "!")

Row = dict[str, Any]
Predicate = Callable[[Row], bool]


@dataclass
class Table:
    """Rows of one entity kept by integer id, with the ids sorted so `>ID` cursors are a bisect, not a scan.

    `types` maps the *row* key to a type: int, float, str, datetime, date, flag (Y/N), bool,
    list (multiple values), multi (PHONE/EMAIL multifields). `key_map` maps the names clients
    use in filter/order/select (UPPER_CASE) to row keys when they differ (tasks are camelCase).
    """

    name: str
    id_key: str = "ID"
    types: dict[str, str] = field(default_factory=dict)
    key_map: dict[str, str] = field(default_factory=dict)
    default_desc: bool = False
    rows: dict[int, Row] = field(default_factory=dict)
    ids: list[int] = field(default_factory=list)

    def insert(self, row_id: int, row: Row) -> None:
        if row_id in self.rows:
            self.rows[row_id] = row
            return
        self.rows[row_id] = row
        if not self.ids or row_id > self.ids[-1]:
            self.ids.append(row_id)  # the common case: new ids are the largest
        else:
            bisect.insort(self.ids, row_id)

    def delete(self, row_id: int) -> None:
        if self.rows.pop(row_id, None) is not None:
            idx = bisect.bisect_left(self.ids, row_id)
            if idx < len(self.ids) and self.ids[idx] == row_id:
                del self.ids[idx]

    def next_id(self) -> int:
        return (self.ids[-1] + 1) if self.ids else 1

    def row_key(self, name: str) -> str:
        """The row key a client-facing field name refers to (case-insensitive for mapped tables)."""
        if name in self.types:
            return name
        mapped = self.key_map.get(name.upper())
        if mapped is not None:
            return mapped
        upper = name.upper()
        if upper in self.types:
            return upper
        return name

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, row_id: int) -> Row:
        return self.rows[int(row_id)]

    def __contains__(self, row_id: object) -> bool:
        return isinstance(row_id, (int, str)) and str(row_id).isdigit() and int(row_id) in self.rows

    def values(self) -> list[Row]:
        """Rows in id order (a snapshot list: safe while the server writes)."""
        return [self.rows[i] for i in list(self.ids)]


@dataclass
class QueryResult:
    rows: list[Row]
    total: int | None  # None when start=-1 turned the COUNT off
    next: int | None
    counted: int  # rows the COUNT had to visit (drives the simulated cost)


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value is False


def _split_key(key: str) -> tuple[str, str]:
    for prefix in _PREFIXES:
        if key.startswith(prefix) and len(key) > len(prefix):
            return prefix, key[len(prefix):]
    return "=", key


def _normaliser(ftype: str) -> Callable[[Any], Any]:
    if ftype in ("int", "float"):
        def num(v: Any) -> Any:
            try:
                return float(v)
            except (TypeError, ValueError):
                return None
        return num
    if ftype == "datetime":
        return norm_dt
    if ftype == "date":
        return norm_date
    if ftype == "flag":
        return lambda v: "Y" if truthy(v) else "N"
    if ftype == "bool":
        return truthy
    return lambda v: None if v is None else str(v).casefold()


def _row_value(ftype: str, raw: Any) -> Any:
    """A row value made comparable with normalised filter values of the same type."""
    if _is_empty(raw) and ftype not in ("bool", "flag"):
        return None
    if ftype in ("int", "float"):
        try:
            return float(raw)
        except (TypeError, ValueError):
            return None
    if ftype == "date":
        return str(raw)[:10]
    if ftype == "bool":
        return bool(raw)
    if ftype == "datetime" or ftype == "flag":
        return raw
    return str(raw).casefold()


def _like(pattern: str, text: str) -> bool:
    """SQL LIKE with `%` wildcards (the `=%`/`%=` operators), case-insensitive like MySQL's default collation."""
    parts = pattern.casefold().split("%")
    if len(parts) == 1:
        return text == parts[0]
    if not text.startswith(parts[0]):
        return False
    pos = len(parts[0])
    for middle in parts[1:-1]:
        found = text.find(middle, pos)
        if found < 0:
            return False
        pos = found + len(middle)
    return text.endswith(parts[-1]) and len(text) - len(parts[-1]) >= pos


def _make_predicate(table: Table, raw_key: str, value: Any) -> Predicate | None:
    prefix, name = _split_key(raw_key)
    key = table.row_key(name)
    ftype = table.types.get(key, "str")
    norm = _normaliser(ftype)
    values = list(value.values()) if isinstance(value, dict) else value

    if ftype in ("list", "multi"):
        def elements(row: Row) -> list[str]:
            raw = row.get(key)
            if not raw:
                return []
            if ftype == "multi":
                return [str(item.get("VALUE", "")).casefold() for item in raw]
            return [str(item).casefold() for item in raw]

        wanted = {str(v).casefold() for v in (values if isinstance(values, list) else [values])}
        if isinstance(values, list) or prefix in ("@", "=", "!@", "!", "!="):
            if not isinstance(values, list) and _is_empty(values):
                empty = prefix in ("=",)
                return (lambda row: not elements(row)) if empty else (lambda row: bool(elements(row)))
            negate = prefix in ("!@", "!", "!=")
            return lambda row: (not wanted.intersection(elements(row))) if negate else bool(wanted.intersection(elements(row)))
        needle = str(values).casefold()
        return lambda row: any(needle in e for e in elements(row))

    if prefix in ("@", "!@") or (isinstance(values, list) and prefix in ("=", "!", "!=")):
        items = values if isinstance(values, list) else [values]
        allowed = {norm(v) for v in items}
        negate = prefix in ("!@", "!", "!=")
        if negate:
            return lambda row: _row_value(ftype, row.get(key)) not in allowed
        return lambda row: _row_value(ftype, row.get(key)) in allowed

    if prefix in ("=", "!", "!=") and _is_empty(values) and ftype not in ("bool", "flag"):
        if prefix == "=":
            return lambda row: _is_empty(row.get(key))
        return lambda row: not _is_empty(row.get(key))

    if prefix in ("%", "!%", "=%", "%=", "!=%", "!%="):
        needle = str(values).casefold()
        if prefix in ("%", "!%"):
            def test(row: Row) -> bool:
                raw = row.get(key)
                return raw is not None and needle in str(raw).casefold()
        else:
            def test(row: Row) -> bool:
                raw = row.get(key)
                return raw is not None and _like(needle, str(raw).casefold())
        if prefix.startswith("!"):
            return lambda row: not test(row)
        return test

    target = norm(values)
    if target is None and ftype in ("int", "float", "datetime", "date"):
        # an unparsable bound (e.g. an unresolved batch reference) is cast to 0 / ignored by the SQL layer
        return None

    if prefix == "=":
        return lambda row: _row_value(ftype, row.get(key)) == target
    if prefix in ("!", "!="):
        return lambda row: _row_value(ftype, row.get(key)) != target

    def compare(op: str) -> Predicate:
        def check(row: Row) -> bool:
            current = _row_value(ftype, row.get(key))
            if current is None:
                return False
            if op == ">":
                return current > target
            if op == ">=":
                return current >= target
            if op == "<":
                return current < target
            return current <= target
        return check

    return compare(prefix)


def _id_range(table: Table, filt: dict[str, Any]) -> tuple[int, int, set[int] | None]:
    """Narrow the id index with bisect for filters on the id field (the O(log n) `>ID` cursor)."""
    lo, hi = 0, len(table.ids)
    only: set[int] | None = None
    id_names = {table.id_key.upper(), table.id_key}
    for raw_key, value in filt.items():
        prefix, name = _split_key(raw_key)
        if name not in id_names and table.row_key(name) != table.id_key:
            continue
        if prefix in ("@", "=") and isinstance(value, (list, dict)):
            vals = value.values() if isinstance(value, dict) else value
            ids = set()
            for v in vals:
                try:
                    ids.add(int(float(v)))
                except (TypeError, ValueError):
                    pass
            only = ids if only is None else only & ids
            continue
        try:
            bound = float(value)
        except (TypeError, ValueError):
            continue
        if prefix == ">":
            lo = max(lo, bisect.bisect_right(table.ids, bound))
        elif prefix == ">=":
            lo = max(lo, bisect.bisect_left(table.ids, bound))
        elif prefix == "<":
            hi = min(hi, bisect.bisect_left(table.ids, bound))
        elif prefix == "<=":
            hi = min(hi, bisect.bisect_right(table.ids, bound))
        elif prefix == "=":
            lo = max(lo, bisect.bisect_left(table.ids, bound))
            hi = min(hi, bisect.bisect_right(table.ids, bound))
    return lo, hi, only


def _sort_key(ftype: str, raw: Any) -> tuple[int, Any]:
    value = _row_value(ftype, raw)
    if value is None:
        return (0, 0)
    return (1, value)


def run_query(
    table: Table,
    filt: dict[str, Any] | None,
    order: dict[str, Any] | None,
    start: int,
    *,
    extra: Iterable[Predicate] = (),
    page_size: int = PAGE_SIZE,
) -> QueryResult:
    """Run a list query: `start=-1` skips the COUNT (no total, no next) as on a real portal."""
    filt = filt if isinstance(filt, dict) else {}
    predicates = [p for p in (_make_predicate(table, k, v) for k, v in filt.items()) if p is not None]
    predicates.extend(extra)
    lo, hi, only = _id_range(table, filt)

    order_items: list[tuple[str, bool]] = []
    if isinstance(order, dict):
        for name, direction in order.items():
            order_items.append((table.row_key(str(name)), str(direction).strip().upper() == "DESC"))
    by_id = not order_items or (len(order_items) == 1 and order_items[0][0] == table.id_key)
    desc = order_items[0][1] if order_items else table.default_desc

    def candidates() -> Iterator[Row]:
        rows = table.rows
        if only is not None:
            # an explicit id list (`@ID`, get_by_ID) never needs a walk over the whole table
            first = table.ids[lo] if lo < len(table.ids) else None
            last = table.ids[hi - 1] if hi > 0 and hi <= len(table.ids) else None
            picked = sorted((i for i in only if i in rows and first is not None and last is not None
                             and first <= i <= last), reverse=desc)
            for row_id in picked:
                yield rows[row_id]
            return
        ids = table.ids
        # index ranges instead of slices: a cursor page must not copy a 500,000-id list
        positions = range(lo, hi) if not desc else range(hi - 1, lo - 1, -1)
        for pos in positions:
            yield rows[ids[pos]]

    def matches(row: Row) -> bool:
        for predicate in predicates:
            if not predicate(row):
                return False
        return True

    no_count = start < 0
    offset = 0 if no_count else start
    if by_id:
        page: list[Row] = []
        total = 0
        for row in candidates():
            if not matches(row):
                continue
            if total >= offset and len(page) < page_size:
                page.append(row)
            total += 1
            if no_count and len(page) >= page_size:
                break
        if no_count:
            return QueryResult(page, None, None, 0)
        nxt = offset + page_size if offset + page_size < total else None
        return QueryResult(page, total, nxt, total)

    matched = [row for row in candidates() if matches(row)]
    # stable multi-key sort: sort by the least significant key first; id ascending breaks ties
    matched.sort(key=lambda r: r.get(table.id_key) if not isinstance(r.get(table.id_key), str) else int(r[table.id_key]))
    for key, is_desc in reversed(order_items):
        ftype = table.types.get(key, "str")
        matched.sort(key=lambda r, k=key, t=ftype: _sort_key(t, r.get(k)), reverse=is_desc)
    total = len(matched)
    page = matched[offset:offset + page_size]
    if no_count:
        return QueryResult(page, None, None, 0)
    nxt = offset + page_size if offset + page_size < total else None
    return QueryResult(page, total, nxt, total)


def parse_start(value: Any) -> int:
    """`start` as sent (string in form bodies); junk reads as 0 like PHP's intval."""
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return 0

"""Unit tests of the sandbox's wire decoding and list engine (no HTTP)."""

from __future__ import annotations

from typing import Any

from crmbridge.sandbox.query import Table, run_query
from crmbridge.sandbox.wire import fmt_dt, norm_dt, php_map, php_parse_query


def test_php_query_decoding() -> None:
    parsed = php_parse_query("filter[%3EID]=5&filter[%40STAGE_ID][]=NEW&filter[%40STAGE_ID][]=WON"
                             "&select[0]=ID&select[1]=UF_*&order[ID]=ASC&fields[PHONE][0][VALUE]=1&start=-1")
    assert parsed == {"filter": {">ID": "5", "@STAGE_ID": ["NEW", "WON"]}, "select": ["ID", "UF_*"],
                      "order": {"ID": "ASC"}, "fields": {"PHONE": [{"VALUE": "1"}]}, "start": "-1"}


def test_php_shaped_maps() -> None:
    assert php_map({}) == []
    assert php_map({"0": "a", "1": "b"}) == ["a", "b"]
    assert php_map({"1": "a", "2": "b"}) == {"1": "a", "2": "b"}


def test_datetimes_on_the_wire() -> None:
    assert fmt_dt(0) == "1970-01-01T03:00:00+03:00"
    assert norm_dt("2026-01-31T21:30:00Z") == "2026-02-01T00:30:00+03:00"
    assert norm_dt("2026-02-01") == "2026-02-01T00:00:00+03:00"
    assert norm_dt("01.02.2026 10:00:00") == "2026-02-01T10:00:00+03:00"


class _CountingRows(dict):  # type: ignore[type-arg]
    """Counts row fetches, to prove a `>ID` cursor page does not walk the table."""

    fetched = 0

    def __getitem__(self, key: Any) -> Any:
        type(self).fetched += 1
        return super().__getitem__(key)


def test_id_cursor_is_a_bisect_not_a_scan() -> None:
    table = Table("deal", types={"ID": "int", "STAGE_ID": "str"})
    rows = _CountingRows()
    for i in range(1, 500_001):
        rows[i] = {"ID": str(i), "STAGE_ID": "NEW" if i % 2 else "WON"}
    table.rows = rows
    table.ids = list(range(1, 500_001))
    _CountingRows.fetched = 0
    page = run_query(table, {">ID": 400_000, "STAGE_ID": "WON"}, {"ID": "ASC"}, -1)
    assert [r["ID"] for r in page.rows][:2] == ["400002", "400004"] and len(page.rows) == 50
    assert page.total is None and page.next is None
    assert _CountingRows.fetched <= 100
    counted = run_query(table, {">ID": 499_900}, {"ID": "ASC"}, 0)
    assert (counted.total, counted.next, counted.counted) == (100, 50, 100)

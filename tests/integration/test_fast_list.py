"""The fast list pattern never reads a page twice (issue 7, item 17).

A chained batch whose page runs short leaves the next command's `$result[...]` reference empty; the portal then
drops the `>ID` filter and that command, and every one after it, reads the list from its start again (44 wasted
page reads of 51 for a 300-row list). The sandbox answers an unresolved reference with an empty value as the portal
does; the client sizes each chain to the rows left.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from crmbridge.connectors.bitrix24.client import Bitrix24Client
from crmbridge.sandbox import SandboxPortal

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("deals", [300, 2_550, 2_600, 5_000])
def test_each_row_is_read_once(make_portal: Callable[..., SandboxPortal], deals: int) -> None:
    portal = make_portal(deals=deals, seed=2, limits=False)
    client = Bitrix24Client(portal.webhook_url, rate=1000, burst=1000)
    rows = list(client.iter_list_fast("crm.deal.list", select=["ID", "TITLE"]))
    assert len(rows) == len({row["ID"] for row in rows}) == deals
    served = portal.stats.rows_for("crm.deal.list")
    assert served == deals, f"{served - deals} rows read twice"
    # the request floor is unchanged: one plain page, then 2,500 rows per batch
    assert client.requests_made == 1 + -(-(deals - 50) // 2500) + (1 if (deals - 50) % 2500 == 0 else 0)


def test_a_short_list_after_a_resumed_cursor(make_portal: Callable[..., SandboxPortal]) -> None:
    portal = make_portal(deals=400, seed=2, limits=False)
    client = Bitrix24Client(portal.webhook_url, rate=1000, burst=1000)
    rows = list(client.iter_list_fast("crm.deal.list", filter={">ID": 120}, select=["ID"]))
    assert [int(row["ID"]) for row in rows] == list(range(121, 401))
    assert portal.stats.rows_for("crm.deal.list") == 280


def test_an_empty_batch_reference_drops_the_filter_as_the_portal_does(make_portal: Callable[..., SandboxPortal]) -> None:
    """What the sandbox does with `$result[...]` pointing past a short page: the reference reads empty and a `>ID`
    filter with an empty value is no filter (observed on a real portal; the batch docs do not say)."""
    portal = make_portal(deals=120, seed=2, limits=False)
    client = Bitrix24Client(portal.webhook_url, rate=1000, burst=1000)
    answer = client.batch({
        "a": ("crm.deal.list", {"order": {"ID": "ASC"}, "filter": {">ID": 100}, "select": ["ID"], "start": -1}),
        "b": ("crm.deal.list", {"order": {"ID": "ASC"}, "filter": {">ID": "$result[a][49][ID]"}, "select": ["ID"],
                                "start": -1}),
    })
    assert len(answer.results["a"]) == 20
    assert [row["ID"] for row in answer.results["b"]][:3] == ["1", "2", "3"]

"""Limits: the leaky bucket (503 QUERY_LIMIT_EXCEEDED) and per-method operating time (429 OPERATION_TIME_LIMIT)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import requests

from crmbridge.sandbox import SandboxPortal

pytestmark = pytest.mark.integration


def test_leaky_bucket_refuses_over_burst_and_counts_a_batch_once(call: Callable[..., requests.Response]) -> None:
    with SandboxPortal(deals=10, rate=2.0, burst=3) as p:
        batch = call(p, "batch", {"cmd": {str(i): "crm.deal.get?id=1" for i in range(20)}})
        assert batch.status_code == 200
        assert [call(p, "profile").status_code for _ in range(2)] == [200, 200]
        refused = call(p, "profile")
        assert refused.status_code == 503
        assert refused.json() == {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"}
        assert p.stats.query_limit_exceeded == 1
        time.sleep(0.6)  # drains one request's worth at 2/s
        assert call(p, "profile").status_code == 200


def test_operating_time_blocks_only_the_spent_method_until_reset(call: Callable[..., requests.Response]) -> None:
    with SandboxPortal(deals=300, rate=1000, burst=1000, operating_limit=0.25, window_seconds=2.0,
                       page_cost=0.1, row_cost=0.0, count_cost_per_row=0.0) as p:
        first = call(p, "crm.deal.list", {"select": ["ID"]}).json()
        assert abs(first["time"]["operating"] - 0.1) < 1e-9
        assert call(p, "crm.deal.list").status_code == 200
        assert call(p, "crm.deal.list").status_code == 200  # 0.3 s > 0.25 s after this call
        blocked = call(p, "crm.deal.list")
        assert blocked.status_code == 429
        body = blocked.json()
        assert body["error"] == "OPERATION_TIME_LIMIT"
        assert body["error_description"] == "Method is blocked due to operation time limit."
        assert time.time() < body["time"]["operating_reset_at"] <= time.time() + 2.5
        assert call(p, "crm.deal.get", {"id": 1}).status_code == 200  # other methods keep working
        assert p.stats.operation_time_limit == 1
        time.sleep(max(0.0, body["time"]["operating_reset_at"] - time.time()) + 0.05)
        # oldest basket expired; the rest of the window may still be over, so wait out the window
        deadline = time.time() + 3
        while call(p, "crm.deal.list").status_code == 429 and time.time() < deadline:
            time.sleep(0.2)
        assert call(p, "crm.deal.get", {"id": 1}).status_code == 200


def test_nested_commands_are_charged_per_method_and_fail_inside_the_batch(call: Callable[..., requests.Response]) -> None:
    with SandboxPortal(deals=300, limits=True, rate=1000, burst=1000, operating_limit=0.25, window_seconds=60,
                       page_cost=0.1, row_cost=0.0, count_cost_per_row=0.0) as p:
        response = call(p, "batch", {"cmd": {f"c{i}": "crm.deal.list?select[0]=ID" for i in range(5)}})
        assert response.status_code == 200
        body = response.json()["result"]
        assert list(body["result"]) == ["c0", "c1", "c2"]
        assert {e["error"] for e in body["result_error"].values()} == {"OPERATION_TIME_LIMIT"}
        assert p.stats.operating_seconds["crm.deal.list"] >= 0.3
        assert "batch" not in p.stats.operating_seconds


def test_count_cost_is_skipped_with_start_minus_one(call: Callable[..., requests.Response]) -> None:
    with SandboxPortal(deals=2000, limits=False, page_cost=0.0, row_cost=0.0, count_cost_per_row=0.001) as p:
        counted = call(p, "crm.deal.list", {"select": ["ID"]}).json()["time"]["operating"]
        assert abs(counted - 2.0) < 1e-6  # 2000 matched rows x 1 ms
        fast = call(p, "crm.deal.get", {"id": 1})
        assert fast.status_code == 200
        before = p.stats.operating_seconds["crm.deal.list"]
        call(p, "crm.deal.list", {"select": ["ID"], "order": {"ID": "ASC"}, "filter": {">ID": 100}, "start": -1})
        assert p.stats.operating_seconds["crm.deal.list"] == before


def test_limits_off_never_refuses(call: Callable[..., requests.Response]) -> None:
    with SandboxPortal(deals=10, limits=False, rate=0.1, burst=1, operating_limit=0.0) as p:
        assert {call(p, "crm.deal.list").status_code for _ in range(5)} == {200}

"""Fault injection: 500s, HTML 503s, dropped connections, slow answers; never a half-applied write."""

from __future__ import annotations

import time

import pytest
import requests

from crmbridge.sandbox import SandboxPortal

pytestmark = pytest.mark.integration


def _post(p: SandboxPortal, method: str, params: dict) -> requests.Response | None:
    try:
        return requests.post(p.webhook_url + method, json=params, timeout=5)
    except requests.ConnectionError:
        return None  # dropped: the client cannot know whether a write happened


def test_faults_are_injected_in_every_flavour() -> None:
    with SandboxPortal(deals=20, limits=False, faults=0.6, seed=11, slow_seconds=(0.05, 0.1)) as p:
        seen: set[str] = set()
        for _ in range(60):
            response = _post(p, "crm.deal.update", {"id": 1, "fields": {"COMMENTS": "x"}})
            if response is None:
                seen.add("dropped")
            elif response.status_code == 500:
                assert response.json()["error"] == "INTERNAL_SERVER_ERROR"
                seen.add("500")
            elif response.status_code == 503:
                assert response.headers["Content-Type"].startswith("text/html") and "nginx" in response.text
                seen.add("html503")
        assert seen == {"dropped", "500", "html503"}
        assert {"500", "html503", "drop", "slow", "applied_drop"} <= set(p.stats.faults)


def test_faulted_writes_are_all_or_nothing_and_retries_converge() -> None:
    with SandboxPortal(deals=30, limits=False, faults=0.4, seed=5, slow_seconds=(0.05, 0.1)) as p:
        ids = list(range(1, 11))
        for round_no in range(12):
            marker = f"round-{round_no}"
            cmd = {f"u{i}": f"crm.deal.update?id={i}&fields[COMMENTS]={marker}" for i in ids}
            while True:  # retry the whole batch until an answer arrives, as an idempotent client would
                before = {i: p.state.deals.rows[i]["COMMENTS"] for i in ids}
                response = _post(p, "batch", {"cmd": cmd})
                after = {i: p.state.deals.rows[i]["COMMENTS"] for i in ids}
                # a request is applied entirely or not at all, even when its answer is lost
                assert set(after.values()) in ({marker}, set(before.values())) or after == before
                if response is not None and response.status_code == 200:
                    break
            assert {p.state.deals.rows[i]["COMMENTS"] for i in ids} == {marker}
        assert p.stats.faults.get("applied_drop", 0) >= 1


def test_stage_move_retried_after_a_lost_answer_writes_history_once() -> None:
    with SandboxPortal(deals=40, limits=False, faults=0.5, seed=2, slow_seconds=(0.05, 0.1)) as p:
        deal_id = next(int(d["ID"]) for d in p.state.deals.rows.values()
                       if d["CLOSED"] == "N" and d["CATEGORY_ID"] == "0")
        before = len(p.state.deal_history(deal_id))
        attempts = 0
        while True:
            attempts += 1
            response = _post(p, "crm.deal.update", {"id": deal_id, "fields": {"STAGE_ID": "LOSE"}})
            if response is not None and response.status_code == 200:
                break
        assert len(p.state.deal_history(deal_id)) == before + 1
        assert p.state.deals.rows[deal_id]["STAGE_ID"] == "LOSE"


def test_slow_answers_and_latency_really_sleep() -> None:
    with SandboxPortal(deals=5, limits=False, latency_ms=150) as p:
        t0 = time.perf_counter()
        assert _post(p, "profile", {}) is not None
        assert time.perf_counter() - t0 >= 0.15

"""Dialect proof: real third-party Bitrix24 clients read the sandbox exactly like a portal."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator

import pytest

from crmbridge.sandbox import SandboxPortal

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def big() -> Iterator[SandboxPortal]:
    # more than one batch of pages for get_all (2,500 rows per batch), limits at their real values
    with SandboxPortal(deals=3100, seed=21, limits=True) as p:
        yield p


def _expected(p: SandboxPortal) -> dict[str, dict]:
    with p.state.lock:
        return {str(i): dict(p.state.deals.rows[i]) for i in p.state.deals.ids}


def test_fast_bitrix24_get_all_reads_every_deal(big: SandboxPortal) -> None:
    fast_bitrix24 = pytest.importorskip("fast_bitrix24")
    logging.getLogger("fast_bitrix24").setLevel(logging.WARNING)
    bitrix = fast_bitrix24.Bitrix(big.webhook_url, ssl=False, verbose=False)
    with pytest.warns(UserWarning):  # fast_bitrix24 warns about selecting everything without a filter
        deals = bitrix.get_all("crm.deal.list", params={"select": ["*", "UF_*"]})
    got = {d["ID"]: d for d in deals}
    assert got == _expected(big)
    users = bitrix.get_all("user.get", params={"ACTIVE": True})
    assert len(users) == 8
    history = bitrix.get_all("crm.stagehistory.list", params={"entityTypeId": 2, "filter": {"OWNER_ID": 7}})
    assert [h["STAGE_ID"] for h in history] == [h["STAGE_ID"] for h in big.state.deal_history(7)]


def test_b24pysdk_as_list_fast_reads_every_deal(big: SandboxPortal, monkeypatch: pytest.MonkeyPatch) -> None:
    b24pysdk = pytest.importorskip("b24pysdk")
    # the package re-exports a function named like the module, so fetch the module itself
    call_method = importlib.import_module("b24pysdk.api.callers.call_method")

    # b24pysdk only builds https://{domain}/rest; the sandbox is plain http on loopback
    monkeypatch.setattr(call_method._MethodCaller, "_base_url",
                        property(lambda self: f"http://{self._domain}/rest"))
    token = b24pysdk.BitrixWebhook(domain=f"127.0.0.1:{big.port}",
                                   webhook_token=f"{big.webhook_user}/{big.webhook_code}")
    client = b24pysdk.Client(token)
    fast = client.crm.deal.list(select=["*", "UF_*"]).as_list_fast().result
    got = {d["ID"]: d for d in fast}
    assert got == _expected(big)
    plain = client.crm.deal.list(select=["ID", "STAGE_ID"], filter={"CATEGORY_ID": 3}).as_list().result
    assert {d["ID"] for d in plain} == {k for k, v in _expected(big).items() if v["CATEGORY_ID"] == "3"}
    tasks = client.tasks.task.list(select=["ID", "UF_CRM_TASK"], filter={"UF_CRM_TASK": "D_10"}).result
    rows = tasks["tasks"] if isinstance(tasks, dict) else tasks
    assert sorted(t["id"] for t in rows) == sorted(t["id"] for t in big.state.deal_tasks(10))
    assert all(t["ufCrmTask"] == ["D_10"] for t in rows)

"""batch: up to 50 commands, `$result[...]` references, halt, errors per command, PHP-shaped maps."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

import pytest
import requests

from crmbridge.sandbox import SandboxPortal

pytestmark = pytest.mark.integration


def test_batch_with_references_and_per_command_errors(portal: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    response = call(portal, "batch", {"halt": 0, "cmd": {
        "first": "crm.deal.list?order[ID]=ASC&select[0]=ID&start=-1",
        "second": "crm.deal.list?" + quote("filter[>ID]") + "=$result[first][49][ID]&order[ID]=ASC&select[0]=ID&start=-1",
        "one": "crm.deal.get?id=$result[second][0][ID]",
        "missing": "crm.deal.get?id=999999",
        "nested": "batch?cmd[x]=scope",
        "paged": "crm.deal.list?select[0]=ID",
    }})
    assert response.status_code == 200
    body = response.json()["result"]
    assert body["result"]["second"][0]["ID"] == "51"
    assert body["result"]["one"]["ID"] == "51"
    assert body["result_error"]["missing"] == {"error": "", "error_description": "Not found"}
    assert body["result_error"]["nested"]["error"] == "ERROR_BATCH_METHOD_NOT_ALLOWED"
    assert body["result_total"] == {"first": 0, "second": 0, "paged": 260}
    assert body["result_next"] == {"paged": 50}
    assert set(body["result_time"]["one"]) >= {"start", "finish", "duration", "operating"}
    assert "operating" not in response.json()["time"]  # the outer batch call is not charged


def test_halt_stops_at_the_first_error(portal: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    body = call(portal, "batch", {"halt": 1, "cmd": {
        "a": "crm.deal.get?id=1", "b": "crm.deal.get?id=0", "c": "crm.deal.get?id=2"}}).json()["result"]
    assert list(body["result"]) == ["a"] and list(body["result_error"]) == ["b"]


def test_empty_maps_come_back_as_lists_and_list_cmds_as_lists(portal: SandboxPortal,
                                                              call: Callable[..., requests.Response]) -> None:
    body = call(portal, "batch", {"cmd": ["crm.deal.get?id=1", "crm.deal.get?id=2"]}).json()["result"]
    assert body["result_error"] == [] and body["result_total"] == [] and body["result_next"] == []
    assert isinstance(body["result"], list) and body["result"][1]["ID"] == "2"


def test_batch_form_encoded_with_double_encoding(portal: SandboxPortal) -> None:
    inner = "crm.deal.list?" + "filter%5B%3EID%5D%3D258%26select%5B0%5D%3DID"
    response = requests.post(portal.webhook_url + "batch", data=f"halt=0&cmd[a]={quote(inner, safe='')}",
                             headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=5)
    # the inner query arrives once-decoded, as a PHP portal would see it
    assert response.status_code == 200


def test_more_than_fifty_commands_is_rejected(portal: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    response = call(portal, "batch", {"cmd": {str(i): "scope" for i in range(51)}})
    assert response.status_code == 400
    assert response.json()["error"] == "ERROR_BATCH_LENGTH_EXCEEDED"


def test_the_client_reports_each_command_of_a_batch_by_its_method(portal: SandboxPortal) -> None:
    from crmbridge.connectors.bitrix24.client import Bitrix24Client

    requests_seen: list[tuple[str, str]] = []
    calls_seen: list[tuple[str, str]] = []
    with Bitrix24Client(portal.webhook_url, rate=100, burst=100, observer=lambda *seen: requests_seen.append(seen),
                        on_call=lambda *seen: calls_seen.append(seen)) as client:
        client.batch({"a": ("crm.deal.get", {"id": 1}), "b": ("crm.deal.get", {"id": 999999}),
                      "c": ("crm.deal.list", {"select": ["ID"], "start": -1})})
        client.call("scope")
    assert requests_seen == [("batch", "200"), ("scope", "200")]
    assert sorted(calls_seen) == [("crm.deal.get", "error"), ("crm.deal.get", "ok"), ("crm.deal.list", "ok"),
                                  ("scope", "ok")]

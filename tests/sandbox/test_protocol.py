"""The sandbox answers like a real portal: envelopes, auth and scope errors, body encodings, paging."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import requests

from crmbridge.sandbox import SandboxPortal

pytestmark = pytest.mark.integration


def test_success_envelope_of_a_list_method(portal: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    body = call(portal, "crm.deal.list", {"order": {"ID": "ASC"}, "select": ["ID", "TITLE"]}).json()
    assert len(body["result"]) == 50
    assert body["total"] == 260
    assert body["next"] == 50
    assert set(body["time"]) == {"start", "finish", "duration", "processing", "date_start", "date_finish",
                                 "operating_reset_at", "operating"}
    assert body["time"]["date_start"].endswith("+03:00")
    assert body["result"][0] == {"ID": "1", "TITLE": portal.state.deals.rows[1]["TITLE"]}


def test_non_list_method_has_no_total_or_next(portal: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    body = call(portal, "crm.deal.get", {"id": 3}).json()
    assert "total" not in body and "next" not in body
    assert body["result"]["ID"] == "3"
    assert body["result"]["OPPORTUNITY"].count(".") == 1  # money as a string with cents


def test_last_page_has_no_next(portal: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    body = call(portal, "crm.deal.list", {"start": 250, "select": ["ID"]}).json()
    assert [r["ID"] for r in body["result"]] == [str(i) for i in range(251, 261)]
    assert body["total"] == 260 and "next" not in body


def test_start_minus_one_turns_the_count_off(portal: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    body = call(portal, "crm.deal.list", {"order": {"ID": "ASC"}, "filter": {">ID": 200}, "select": ["ID"],
                                          "start": -1}).json()
    assert [r["ID"] for r in body["result"]][:2] == ["201", "202"]
    assert len(body["result"]) == 50
    assert body["total"] == 0 and "next" not in body


def test_wire_values_are_strings_flags_and_msk_datetimes(portal: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    deal = call(portal, "crm.deal.list", {"select": ["*", "UF_*"], "filter": {"ID": 5}}).json()["result"][0]
    assert deal["ID"] == "5" and isinstance(deal["ASSIGNED_BY_ID"], str)
    assert deal["CLOSED"] in ("Y", "N") and deal["OPENED"] == "Y"
    assert deal["DATE_CREATE"].endswith("+03:00") and "T" in deal["DATE_CREATE"]
    assert "UF_CRM_1700000119" in deal and "PHONE" not in deal


def test_select_star_excludes_user_fields(portal: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    deal = call(portal, "crm.deal.list", {"select": ["*"], "filter": {"ID": 5}}).json()["result"][0]
    assert "STAGE_ID" in deal and not any(k.startswith("UF_") for k in deal)


def test_wrong_webhook_code_is_401_no_auth_found(portal: SandboxPortal) -> None:
    url = portal.webhook_url.replace("sandboxcode", "wrong") + "crm.deal.list"
    response = requests.post(url, json={}, timeout=5)
    assert response.status_code == 401
    assert response.json() == {"error": "NO_AUTH_FOUND", "error_description": "Wrong authorization data"}
    wrong_user = portal.webhook_url.replace("/rest/1/", "/rest/2/") + "profile"
    assert requests.post(wrong_user, timeout=5).status_code == 401


def test_current_error_dialect_uses_invalid_credentials(call: Callable[..., requests.Response]) -> None:
    with SandboxPortal(deals=5, limits=False, error_dialect="current", scopes=("crm",)) as p:
        bad = requests.post(p.webhook_url.replace("sandboxcode", "x") + "profile", timeout=5)
        assert (bad.status_code, bad.json()["error"]) == (401, "INVALID_CREDENTIALS")
        assert call(p, "user.get").status_code == 401


def test_method_outside_scopes_is_insufficient_scope(call: Callable[..., requests.Response]) -> None:
    with SandboxPortal(deals=5, limits=False, scopes=("crm",)) as p:
        response = call(p, "tasks.task.list")
        assert response.status_code == 403
        assert response.json()["error"] == "insufficient_scope"
        assert call(p, "scope").json()["result"] == ["crm"]


def test_unknown_method_is_404(portal: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    response = call(portal, "crm.deal.frobnicate")
    assert response.status_code == 404
    assert response.json()["error"] == "ERROR_METHOD_NOT_FOUND"


def test_legacy_crm_errors_have_an_empty_code(portal: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    missing = call(portal, "crm.deal.get", {"id": 999999})
    assert (missing.status_code, missing.json()) == (400, {"error": "", "error_description": "Not found"})
    invalid = call(portal, "crm.deal.update", {"id": "abc", "fields": {"TITLE": "x"}})
    assert invalid.status_code == 400 and invalid.json()["error"] == ""
    assert "ID is not defined or invalid" in invalid.json()["error_description"]


def test_tasks_errors_are_error_core(portal: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    response = call(portal, "tasks.task.add", {"fields": {"TITLE": "no one responsible"}})
    assert response.status_code == 400 and response.json()["error"] == "ERROR_CORE"


def test_form_body_with_php_keys(portal: SandboxPortal) -> None:
    response = requests.post(portal.webhook_url + "crm.deal.list.json",
                             data="filter[%3EID]=5&filter[%3C%3DID]=7&select[0]=ID&select[1]=STAGE_ID&order[ID]=DESC",
                             headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=5)
    body = response.json()
    assert [r["ID"] for r in body["result"]] == ["7", "6"]
    assert set(body["result"][0]) == {"ID", "STAGE_ID"}


def test_get_query_string(portal: SandboxPortal) -> None:
    body = requests.get(portal.webhook_url + "crm.deal.list?filter[ID][]=3&filter[ID][]=9&select[]=ID", timeout=5).json()
    assert [r["ID"] for r in body["result"]] == ["3", "9"]


def test_filter_prefixes(portal: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    state = portal.state.deals.rows
    won = call(portal, "crm.deal.list", {"filter": {"STAGE_SEMANTIC_ID": "S"}, "select": ["ID"]}).json()["total"]
    assert won == sum(1 for d in state.values() if d["STAGE_SEMANTIC_ID"] == "S")
    not_won = call(portal, "crm.deal.list", {"filter": {"!STAGE_SEMANTIC_ID": "S"}}).json()["total"]
    assert won + not_won == 260
    in_stages = call(portal, "crm.deal.list", {"filter": {"@STAGE_ID": ["NEW", "C1:NEW"]}}).json()["total"]
    assert in_stages == sum(1 for d in state.values() if d["STAGE_ID"] in ("NEW", "C1:NEW"))
    big = call(portal, "crm.deal.list", {"filter": {">=OPPORTUNITY": 1000000}}).json()["total"]
    assert big == sum(1 for d in state.values() if float(d["OPPORTUNITY"]) >= 1000000)
    like = call(portal, "crm.deal.list", {"filter": {"%TITLE": "заказ"}}).json()["total"]
    assert like == sum(1 for d in state.values() if "заказ" in d["TITLE"].lower())
    recent = call(portal, "crm.deal.list", {"filter": {">=DATE_MODIFY": "2000-01-01"}}).json()["total"]
    assert recent == 260
    empty_uf = call(portal, "crm.deal.list", {"filter": {"UF_CRM_1700000119": ""}}).json()["total"]
    assert empty_uf == sum(1 for d in state.values() if not d["UF_CRM_1700000119"])


def test_order_by_any_field(portal: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    rows = call(portal, "crm.deal.list", {"order": {"OPPORTUNITY": "DESC"}, "select": ["ID", "OPPORTUNITY"]}).json()["result"]
    amounts = [float(r["OPPORTUNITY"]) for r in rows]
    assert amounts == sorted(amounts, reverse=True)
    assert amounts[0] == max(float(d["OPPORTUNITY"]) for d in portal.state.deals.rows.values())


def test_contacts_multifields_only_when_selected(portal: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    plain = call(portal, "crm.contact.list", {"select": ["*"]}).json()["result"][0]
    assert "PHONE" not in plain and "EMAIL" not in plain
    named = call(portal, "crm.contact.list", {"select": ["ID", "PHONE", "EMAIL"], "filter": {"HAS_PHONE": "Y"}}).json()
    assert named["result"][0]["PHONE"][0]["TYPE_ID"] == "PHONE"
    no_way = [c for c in portal.state.contacts.rows.values() if not c["PHONE"] and not c["EMAIL"]]
    assert no_way, "some contacts have neither phone nor e-mail"


def test_reference_methods(portal: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    cats = call(portal, "crm.category.list", {"entityTypeId": 2}).json()
    assert [c["id"] for c in cats["result"]["categories"]] == [0, 1, 2, 3] and cats["total"] == 4
    stages = call(portal, "crm.status.list", {"filter": {"ENTITY_ID": "DEAL_STAGE"}}).json()["result"]
    won = next(s for s in stages if s["STATUS_ID"] == "WON")
    assert won["SEMANTICS"] == "S" and won["EXTRA"]["SEMANTICS"] == "success"
    assert next(s for s in stages if s["STATUS_ID"] == "NEW")["SEMANTICS"] is None
    ufs = call(portal, "crm.deal.userfield.list", {"filter": {"LANG": "ru"}}).json()["result"]
    assert len(ufs) == 21
    reason = next(f for f in ufs if f["FIELD_NAME"] == "UF_CRM_1700000114")
    assert {"ID": "123", "VALUE": "Нет интереса сейчас"}.items() <= reason["LIST"][2].items()
    fields = call(portal, "crm.deal.fields").json()["result"]
    assert fields["CATEGORY_ID"]["isImmutable"] is True and fields["STAGE_ID"]["statusType"] == "DEAL_STAGE"


def test_users(portal: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    everyone = call(portal, "user.get").json()
    assert everyone["total"] == 9
    active = call(portal, "user.get", {"ACTIVE": True}).json()["result"]
    assert [u["ID"] for u in active] == [str(i) for i in range(1, 9)]
    fired = call(portal, "user.get", {"FILTER": {"ACTIVE": False}}).json()["result"]
    assert [(u["ID"], u["ACTIVE"], u["UF_DEPARTMENT"]) for u in fired] == [("9", False, [2])]


def test_stage_history_shape(portal: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    body = call(portal, "crm.stagehistory.list", {"entityTypeId": 2, "order": {"ID": "ASC"},
                                                  "filter": {"OWNER_ID": 1}}).json()
    items = body["result"]["items"]
    assert items[0]["TYPE_ID"] == 1 and isinstance(items[0]["ID"], int) and items[0]["OWNER_ID"] == 1
    assert body["total"] == len(items)
    bad = call(portal, "crm.stagehistory.list", {"entityTypeId": 777})
    assert bad.status_code == 400


def test_tasks_shape(portal: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    plain = call(portal, "tasks.task.list", {"filter": {"UF_CRM_TASK": "D_2"}, "select": ["ID", "TITLE", "STATUS"]}).json()
    assert plain["result"]["tasks"] and "ufCrmTask" not in plain["result"]["tasks"][0]
    with_crm = call(portal, "tasks.task.list", {"filter": {"UF_CRM_TASK": "D_2"},
                                                "select": ["ID", "STATUS", "UF_CRM_TASK"]}).json()["result"]["tasks"]
    assert all(t["ufCrmTask"] == ["D_2"] for t in with_crm)
    assert all(isinstance(t["id"], str) and t["status"] in ("2", "3", "5") for t in with_crm)
    newer = call(portal, "tasks.task.list", {"filter": {">ID": 10}, "order": {"ID": "ASC"}}).json()
    assert newer["result"]["tasks"][0]["id"] == "11"
    missing = call(portal, "tasks.task.get", {"taskId": 10**6}).json()
    assert missing["result"] == []

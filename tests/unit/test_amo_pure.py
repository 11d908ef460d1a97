"""The pure parts of the amoCRM connector: hook parsing, the record adapter, the plan in amoCRM terms, row conversions."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import pytest

from crmbridge.cache import amocrm_rows
from crmbridge.connectors.amocrm.actions import LEADS, NOTES, TASKS, AmoCRMDialect
from crmbridge.connectors.amocrm.webhooks import HookVerdict, expected_subdomain, parse_hook
from crmbridge.enforce.plan import Action, ActionKind
from crmbridge.mapping.load import load_mappings
from crmbridge.mapping.records import amocrm_client, amocrm_lead

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
STATUS_HOOK = ("leads[status][0][id]=10701093&leads[status][0][name]=Deal&leads[status][0][status_id]=142"
               "&leads[status][0][old_status_id]=20067736&leads[status][0][price]=22500"
               "&leads[status][0][responsible_user_id]=2079676&leads[status][0][pipeline_id]=9217056"
               "&leads[status][0][custom_fields][0][id]=66339&leads[status][0][custom_fields][0][values][0][value]=Site"
               "&leads[status][0][custom_fields][0][values][0][enum]=139517&account[subdomain]=apfitness"
               "&account[id]=17769199").encode()


def test_a_status_hook_in_the_older_shape_names_its_lead() -> None:
    parsed = parse_hook(STATUS_HOOK, account_id="17769199", subdomain="apfitness")
    assert parsed.verdict is HookVerdict.ACCEPT
    assert [(e.entity, e.entity_id, e.event) for e in parsed.events] == [("lead", "10701093", "leads.status")]


def test_hooks_of_another_account_are_foreign_and_bodies_without_account_are_malformed() -> None:
    assert parse_hook(STATUS_HOOK, account_id="1", subdomain=None).verdict is HookVerdict.FOREIGN
    assert parse_hook(STATUS_HOOK, account_id=None, subdomain="other").verdict is HookVerdict.FOREIGN
    assert parse_hook(b"leads[status][0][id]=5", account_id=None, subdomain=None).verdict is HookVerdict.MALFORMED
    assert parse_hook(b"\xff\xfe", account_id=None, subdomain=None).verdict is HookVerdict.MALFORMED
    no_id = urlencode({"leads[update][0][name]": "x", "account[id]": "1"}).encode()
    assert parse_hook(no_id, account_id="1", subdomain=None).verdict is HookVerdict.MALFORMED


def test_a_task_hook_names_its_lead_and_other_entities_are_ignored() -> None:
    task = urlencode({"tasks[update][0][id]": "77", "tasks[update][0][element_id]": "12",
                      "tasks[update][0][element_type]": "2", "account[id]": "1"}).encode()
    parsed = parse_hook(task, account_id="1", subdomain=None)
    assert [(e.entity, e.entity_id, e.event) for e in parsed.events] == [("lead", "12", "tasks.update")]
    chat = urlencode({"message[add][0][id]": "x", "account[id]": "1"}).encode()
    assert parse_hook(chat, account_id="1", subdomain=None).verdict is HookVerdict.IGNORE
    assert expected_subdomain("https://Example.amocrm.ru") == "example"
    assert expected_subdomain("http://127.0.0.1:8031") is None


LEAD = {"id": 17, "name": "Test", "price": 25000, "responsible_user_id": 6000003, "status_id": 60000103,
        "pipeline_id": 7000200, "created_at": 1700000000, "updated_at": 1700003600, "closed_at": None,
        "custom_fields_values": [
            {"field_id": 500101, "values": [{"value": "Да", "enum_id": 900101}]},
            {"field_id": 500105, "values": [{"value": 1700000000}]},
            {"field_id": 500120, "values": [{"value": "25"}]}],
        "_embedded": {"contacts": [{"id": 4, "is_main": False}, {"id": 5, "is_main": True}], "companies": [{"id": 9}]}}


def test_a_lead_reads_as_a_deal_record_and_a_row() -> None:
    record = amocrm_lead(UTC, "500120")(LEAD)
    assert (record["ID"], record["CATEGORY_ID"], record["STAGE_ID"], record["ASSIGNED_BY_ID"]) == (
        "17", "7000200", "60000103", "6000003")
    assert record["500101"] == "900101" and record["500105"] == 1700000000 and record["PROBABILITY"] == "25"
    assert (record["CONTACT_ID"], record["COMPANY_ID"], record["CLOSED"]) == ("5", "9", "N")
    row = amocrm_rows.deal_row(LEAD, "now", UTC, "RUB")
    assert (row["id"], row["category_id"], row["stage_id"], row["amount"], row["contact_id"], row["company_id"]) == (
        17, 7000200, "60000103", 25000.0, 5, 9)
    assert row["date_create"] == "2023-11-14T22:13:20+00:00" and row["stage_semantic"] == "P"
    won = amocrm_rows.deal_row({**LEAD, "status_id": 142, "closed_at": 1700007200}, "now", UTC)
    assert (won["stage_semantic"], won["closed"]) == ("S", 1)


def test_a_status_change_event_keeps_where_the_lead_came_from() -> None:
    event = {"id": "01drbfj5a8k9zd60bgg907a6w9", "type": "lead_status_changed", "entity_id": 17,
             "created_at": 1700000000, "value_before": [{"lead_status": {"id": 60000101, "pipeline_id": 7000200}}],
             "value_after": [{"lead_status": {"id": 60000201, "pipeline_id": 7000300}}]}
    row = amocrm_rows.stage_history_row(event, UTC)
    assert (row["type_id"], row["stage_id"], row["category_id"], row["from_stage_id"], row["crm_id"]) == (
        5, "60000201", 7000300, "60000101", "01drbfj5a8k9zd60bgg907a6w9")
    assert row["id"] == amocrm_rows.event_row_id("01drbfj5a8k9zd60bgg907a6w9") and 0 < row["id"] < 2 ** 63
    task = amocrm_rows.task_row({"id": 3, "text": "Подписать договор\nподробности", "is_completed": True,
                                 "entity_type": "leads", "entity_id": 17, "updated_at": 1700000000}, UTC)
    assert (task["title"], task["status"], task["deal_id"]) == ("Подписать договор", 5, 17)
    contact = amocrm_client(UTC)({"id": 5, "first_name": "Ivan", "last_name": "P", "custom_fields_values": [
        {"field_code": "PHONE", "values": [{"value": "+7900"}]}]})
    assert contact["PHONE"] == [{"VALUE": "+7900"}] and contact["EMAIL"] == []


@pytest.fixture(scope="module")
def dialect() -> AmoCRMDialect:
    mappings = load_mappings(MAPPINGS, crm="amocrm")
    return AmoCRMDialect(mappings.regulation, mappings.binding, datetime(2026, 11, 20, 9, tzinfo=UTC))


def action(kind: ActionKind, params: dict, **extra: object) -> Action:
    return Action(f"R1:17:x|{kind.value}", kind, "R1", "17", params, "summary", "reason", **extra)  # type: ignore[arg-type]


def test_the_plan_in_amocrm_terms(dialect: AmoCRMDialect) -> None:
    task = dialect.action(action(ActionKind.CREATE_TASK, {"fields": {
        "TITLE": "Подписать договор", "DESCRIPTION": "Why [crmbridge:abc]", "RESPONSIBLE_ID": 6000003,
        "DEADLINE": "2026-11-23T18:00:00+03:00", "UF_CRM_TASK": ["D_17"]}}))
    assert task is not None and task.method == TASKS
    assert task.params["text"].splitlines()[0] == "Подписать договор" and task.params["entity_type"] == "leads"
    assert task.params["complete_till"] == int(datetime(2026, 11, 23, 15, tzinfo=UTC).timestamp())
    revert = dialect.action(action(ActionKind.REVERT_STAGE, {"id": 17, "fields": {"STAGE_ID": "60000101",
                                                                                  "PROBABILITY": 10}}))
    assert revert is not None and revert.method == LEADS
    assert revert.params == {"id": 17, "status_id": 60000101, "pipeline_id": 7000200,
                             "custom_fields_values": [{"field_id": 500120, "values": [{"value": 10}]}]}
    fields = dialect.action(action(ActionKind.SET_FIELD, {"id": 17, "fields": {"500115": "2027-02-20",
                                                                               "500116": "900131"}}))
    assert fields is not None and fields.params["custom_fields_values"] == [
        {"field_id": 500115, "values": [{"value": int(datetime(2027, 2, 19, 21, tzinfo=UTC).timestamp())}]},
        {"field_id": 500116, "values": [{"enum_id": 900131}]}]
    note = dialect.action(action(ActionKind.COMMENT, {"fields": {"ENTITY_ID": 17, "COMMENT": "why [crmbridge:x]"}}))
    assert note is not None and note.method == NOTES and note.params["note_type"] == "common"
    notice = dialect.action(action(ActionKind.NOTIFY, {"USER_ID": 6000001, "MESSAGE": "R7: late\n"
                                                       "[url=/crm/deal/details/17/]Сделка 17[/url]"},
                                   recipient="6000001"))
    assert notice is not None and notice.method == TASKS and notice.params["responsible_user_id"] == 6000001
    assert "[url=" not in notice.params["text"] and "Сделка 17" in notice.params["text"]
    assert notice.marker in notice.params["text"]


def test_the_sandbox_account_peak_counts_every_request_that_reached_it_in_any_second() -> None:
    from crmbridge.sandbox.amocrm.server import SlidingWindow

    now = [100.0]
    window = SlidingWindow(7, clock=lambda: now[0])
    verdicts = []
    for step in range(9):  # nine requests within 0.8 s: seven taken, two refused, all nine reached it
        now[0] = 100.0 + step * 0.1
        verdicts.append(window.admit())
    assert verdicts == ["ok"] * 7 + ["limited"] * 2 and window.peak == 9
    quiet = SlidingWindow(7, clock=lambda: now[0])
    for step in range(20):  # seven a second, evenly: never more than seven in any one second
        now[0] = 200.0 + step / 7
        assert quiet.admit(enforce=False) == "ok"
    assert quiet.peak == 7

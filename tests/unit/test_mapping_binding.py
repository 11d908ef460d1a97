"""Raw Bitrix24 records + the binding -> Deal: stages, typed fields, history, tasks, clients, time zones."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from crmbridge.mapping.binding import DealMapper, parse_day, parse_moment
from crmbridge.mapping.load import parse_binding
from crmbridge.model import LOST, WON, EntryKind, Outcome, TaskStatus
from regulation_kit import MSK, SPEC
from test_mapping_load import BINDING

MODEL, _ = parse_binding(BINDING, SPEC, "bitrix24.yaml")
MAPPER = DealMapper(SPEC, MODEL)


def raw(**fields) -> dict:
    base = {"ID": "37", "TITLE": "Alpha", "CATEGORY_ID": "0", "STAGE_ID": "PREPARATION", "STAGE_SEMANTIC_ID": "P",
            "OPPORTUNITY": "19999.99", "PROBABILITY": "25", "ASSIGNED_BY_ID": "3", "CLOSED": "N",
            "DATE_CREATE": "2026-11-01T10:00:00+03:00", "DATE_MODIFY": "2026-11-20T10:00:00+03:00"}
    base.update(fields)
    return base


def test_stage_direction_and_core_fields() -> None:
    deal = MAPPER.deal(raw())
    assert (deal.id, deal.direction, deal.stage, deal.crm_stage, deal.outcome) == ("37", "sales", "two", "PREPARATION", Outcome.OPEN)
    assert deal.amount == Decimal("19999.99") and deal.probability == 25 and deal.manager == "3"
    assert deal.created == datetime(2026, 11, 1, 7, 0, tzinfo=timezone.utc)
    assert deal.created.tzinfo is MSK  # every moment in the portal's zone: same instant, fast comparisons


@pytest.mark.parametrize("stage,expected,outcome", [
    ("WON", WON, Outcome.WON), ("LOSE", LOST, Outcome.LOST), ("APOLOGY", None, Outcome.LOST), ("C1:WORK", "y", Outcome.OPEN),
])
def test_final_and_ignored_stages(stage: str, expected, outcome) -> None:
    semantic = {"WON": "S", "LOSE": "F", "APOLOGY": "F"}.get(stage, "P")
    deal = MAPPER.deal(raw(STAGE_ID=stage, STAGE_SEMANTIC_ID=semantic, CATEGORY_ID="1" if stage.startswith("C1") else "0"))
    assert (deal.stage, deal.outcome) == (expected, outcome)


def test_unbound_pipeline_has_no_direction() -> None:
    deal = MAPPER.deal(raw(CATEGORY_ID="7", STAGE_ID="C7:NEW"))
    assert deal.direction is None and deal.stage is None


@pytest.mark.parametrize("crm_value,value,problem", [
    ("", None, None),
    ("0", Decimal(0), None),  # zero is a value (R2 then says it must be > 0); empty is not
    ("150000", Decimal(150000), None),
    ("abc", None, "not a number"),
])
def test_number_fields_keep_empty_and_zero_apart(crm_value: str, value, problem) -> None:
    field = MAPPER.deal(raw(UF_CRM_2=crm_value)).field("budget")
    assert (field.value, field.problem) == (value, problem)


@pytest.mark.parametrize("crm_value,expected", [
    ("2026-01-15", date(2026, 1, 15)),
    ("2026-01-15T00:00:00+03:00", date(2026, 1, 15)),  # the written day, not shifted to UTC
    ("15.01.2026", date(2026, 1, 15)),
])
def test_date_fields(crm_value: str, expected: date) -> None:
    assert MAPPER.deal(raw(UF_CRM_3=crm_value)).field("meeting").value == expected


def test_bad_date_is_a_problem_not_a_crash() -> None:
    field = MAPPER.deal(raw(UF_CRM_3="31.02.2026")).field("meeting")
    assert field.value is None and field.problem == "not a date"


def test_datetime_fields_without_offset_are_portal_time() -> None:
    moment = MAPPER.deal(raw(UF_CRM_11="2026-11-20T10:00:00")).field("first_contact").value
    assert moment == datetime(2026, 11, 20, 7, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("crm_value,option,problem", [("1", "yes", None), ("2", "no", None), ("9", None, "unknown option 9"), ("", None, None)])
def test_enum_options_by_id(crm_value: str, option, problem) -> None:
    field = MAPPER.deal(raw(UF_CRM_1=crm_value)).field("interest")
    assert (field.value, field.problem) == (option, problem)


def test_links_must_look_like_links() -> None:
    assert MAPPER.deal(raw(UF_CRM_4="https://docs.example/tz/1")).field("doc").value == "https://docs.example/tz/1"
    assert MAPPER.deal(raw(UF_CRM_4="see e-mail")).field("doc").problem == "not a link"


def test_history_is_sorted_mapped_and_completed_by_the_deal_itself() -> None:
    rows = [
        {"ID": "2", "TYPE_ID": "2", "OWNER_ID": "37", "CREATED_TIME": "2026-11-03T10:00:00+03:00", "CATEGORY_ID": "0", "STAGE_ID": "PREPARATION"},
        {"ID": "1", "TYPE_ID": "1", "OWNER_ID": "37", "CREATED_TIME": "2026-11-01T10:00:00+03:00", "CATEGORY_ID": "0", "STAGE_ID": "NEW"},
    ]
    deal = MAPPER.deal(raw(STAGE_ID="EXECUTING", MOVED_TIME="2026-11-10T10:00:00+03:00"), rows)
    assert [(entry.stage, entry.kind) for entry in deal.history] == [
        ("one", EntryKind.CREATED), ("two", EntryKind.MOVED), ("three", EntryKind.MOVED)]
    assert deal.history[-1].entered == datetime(2026, 11, 10, 10, 0, tzinfo=MSK)


def test_pipeline_change_keeps_both_directions() -> None:
    rows = [
        {"ID": "1", "TYPE_ID": "1", "CREATED_TIME": "2026-11-01T10:00:00+03:00", "CATEGORY_ID": "1", "STAGE_ID": "C1:NEW"},
        {"ID": "2", "TYPE_ID": "5", "CREATED_TIME": "2026-11-02T10:00:00+03:00", "CATEGORY_ID": "0", "STAGE_ID": "PREPARATION"},
    ]
    deal = MAPPER.deal(raw(), rows)
    assert [(entry.direction, entry.stage, entry.kind) for entry in deal.history] == [
        ("other", "x", EntryKind.CREATED), ("sales", "two", EntryKind.PIPELINE_CHANGED)]


def test_tasks_and_clients() -> None:
    tasks = [{"id": "5", "title": "Do one", "status": "5", "responsibleId": "3", "createdDate": "2026-11-01T10:01:00+03:00",
              "closedDate": "2026-11-02T10:00:00+03:00", "deadline": "2026-11-04T18:00:00+03:00", "ufCrmTask": ["D_37"]},
             {"id": "6", "title": "Call", "status": "3", "responsibleId": "3", "createdDate": "2026-11-02T10:01:00+03:00"}]
    contact = {"ID": "4", "NAME": "Иван", "LAST_NAME": "Петров", "PHONE": [{"VALUE": "+7 900 000-00-00", "VALUE_TYPE": "WORK"}],
               "EMAIL": [{"VALUE": " ", "VALUE_TYPE": "WORK"}]}
    company = {"ID": "8", "TITLE": "ООО Ромашка", "EMAIL": [{"VALUE": "info@romashka.ru"}]}
    deal = MAPPER.deal(raw(), (), tasks, contact, company)
    assert [task.status for task in deal.tasks] == [TaskStatus.COMPLETED, TaskStatus.IN_PROGRESS]
    assert deal.tasks[0].closed - deal.tasks[0].created == timedelta(hours=23, minutes=59)
    assert (deal.contact.name, deal.contact.phones, deal.contact.emails) == ("Иван Петров", ("+7 900 000-00-00",), ())
    assert deal.company.emails == ("info@romashka.ru",) and deal.client_key == "company:8"


@pytest.mark.parametrize("text", ["2026-11-20T10:00:00+03:00", "20.11.2026 10:00:00", "2026-11-20 10:00:00"])
def test_parse_moment_formats(text: str) -> None:
    assert parse_moment(text, MSK) == datetime(2026, 11, 20, 10, 0, tzinfo=MSK)


def test_parse_rejects_garbage() -> None:
    assert parse_moment("soon") is None and parse_day("31.02.2026") is None and parse_moment("") is None


def test_phone_and_email_fields_come_from_the_client_cards() -> None:
    from crmbridge.mapping.load import parse_regulation
    from crmbridge.regulation.compiled import Context, compile_regulation
    from crmbridge.regulation.stages import check_r2
    from regulation_kit import REGULATION, at

    text = REGULATION.replace("  amount: {type: number, label: Amount}",
                              "  amount: {type: number, label: Amount}\n  phone: {type: phone, label: Phone}").replace(
        "requires_to_leave: [meeting]", "requires_to_enter: [phone], requires_to_leave: [meeting]")
    spec, problems = parse_regulation(text, "regulation.yaml")
    assert not problems, problems
    binding, problems = parse_binding(BINDING, spec, "bitrix24.yaml")
    assert not problems, problems  # a phone field needs no CRM field: it is the client's card
    mapper, compiled = DealMapper(spec, binding), compile_regulation(spec)
    fields = {"UF_CRM_1": "1", "UF_CRM_2": "10"}
    with_phone = mapper.deal(raw(**fields), contact={"ID": "4", "PHONE": [{"VALUE": "+7 900"}]})
    without = mapper.deal(raw(**fields), contact={"ID": "5", "EMAIL": [{"VALUE": "a@b.ru"}]})
    context = Context(at("2026-11-20 12:00"), compiled)
    assert with_phone.field("phone").value == "+7 900"
    assert check_r2(with_phone, compiled.directions["sales"], context) == ()
    (violation,) = check_r2(without, compiled.directions["sales"], context)
    assert violation.missing == ("phone",)

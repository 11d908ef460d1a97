"""Setting up on a real portal (issue 7, items 11 and 12): `discover` never binds on a guess, lists what it did not
match and drafts teams and heads as a company has them; `check --live` reads its own comments right, accepts yes/no
fields, says where an unbound field is used and what to do, and points at the draft after `discover`."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmbridge.errors import MappingError
from crmbridge.mapping.binding import DealMapper
from crmbridge.mapping.discover import draft_binding, todo_left
from crmbridge.mapping.load import Mappings, load_mappings, parse_binding
from crmbridge.mapping.portal import PortalField, lint_live
from tests.unit.test_mapping_shipped import MAPPINGS, sandbox_snapshot

PAYMENT_DATE = "UF_CRM_1700000117"


@pytest.fixture(scope="module")
def shipped() -> Mappings:
    return load_mappings(MAPPINGS)


def draft_problems(shipped: Mappings, text: str) -> list[str]:
    return [str(problem) for problem in parse_binding(text, shipped.regulation, "bitrix24.yaml")[1]]


def test_a_field_is_never_bound_on_a_similar_name(shipped: Mappings) -> None:
    """Without a «Дата оплаты» field, «Дата начала» (BEGINDATE) looked like it: every deal would read as paid."""
    snapshot = sandbox_snapshot()
    del snapshot.fields[PAYMENT_DATE]
    text = draft_binding(shipped.regulation, snapshot)
    line = next(line for line in text.splitlines() if line.startswith("  payment_date:"))
    assert line.startswith("  payment_date: TODO_CRM_FIELD  # todo:"), line
    assert "BEGINDATE" not in line.split("#")[0]
    assert todo_left(text) >= 1
    assert any('the CRM field of "payment_date" is still todo' in problem for problem in draft_problems(shipped, text))


def test_a_pipeline_or_stage_only_like_a_direction_is_left_todo_with_the_guess(shipped: Mappings) -> None:
    snapshot = sandbox_snapshot()
    snapshot.pipelines["0"] = "Продажи проектов"  # similar to «Проектные продажи», not the same
    snapshot.stages["1"]["C1:PREPARATION"] = ("Общее коммерческое предложение", "P")  # vs «Общее КП»
    text = draft_binding(shipped.regulation, snapshot)
    assert "direction: todo  # looks like project_sales?" in text
    assert "C1:PREPARATION: todo  # Общее коммерческое предложение" in text
    # the stages of a pipeline only like a direction: that direction's stages suggested, none bound
    assert "      PREPARATION: todo  # Позиционирование — looks like positioning?" in text


def test_portal_fields_it_did_not_bind_are_listed_with_labels_and_types(shipped: Mappings) -> None:
    snapshot = sandbox_snapshot()
    snapshot.fields["UF_CRM_1700000999"] = PortalField("UF_CRM_1700000999", "string", "Источник трафика")
    text = draft_binding(shipped.regulation, snapshot)
    assert "#   UF_CRM_1700000999: «Источник трафика», string" in text


def test_a_direction_without_a_pipeline_demands_no_fields(shipped: Mappings) -> None:
    """Only the B2C pipeline exists: the fields only project sales reads are neither todo nor required."""
    snapshot = sandbox_snapshot()
    for category in ("0", "1", "2"):
        del snapshot.pipelines[category], snapshot.stages[category]
    del snapshot.fields["UF_CRM_1700000106"]  # «Дата презентации»: read only by project sales
    text = draft_binding(shipped.regulation, snapshot)
    assert "presentation_date: TODO" not in text and todo_left(text) == 0
    problems = draft_problems(shipped, text)
    assert not any("presentation_date" in problem for problem in problems), problems
    assert problems == []


def test_a_head_is_not_a_one_person_team(shipped: Mappings) -> None:
    snapshot = sandbox_snapshot()
    snapshot.departments = {"1": "Отдел продаж", "2": "B2B", "3": "B2C"}
    snapshot.heads = {"1": "1", "2": "2"}
    text = draft_binding(shipped.regulation, snapshot)
    teams = text.split("\nteams:", 1)[1].split("\nheads:", 1)[0]
    assert "department_1:" not in teams.split("# Not teams")[0]
    assert "members: [2, 3, 4, 5]" in teams and "members: [6, 7, 8]" in teams
    heads = text.split("\nheads:", 1)[1]
    assert "- user: 1  # Администратор, head of «Отдел продаж»" in heads
    assert "- user: 2  # Ирина Соколова, head of «B2B»" in heads


def test_check_live_reads_discovers_own_stage_comments(shipped: Mappings, tmp_path: Path) -> None:
    """A stage named with brackets, «Предложение (ТКП)», was cut at "(" and reported as renamed."""
    snapshot = sandbox_snapshot()
    snapshot.stages["0"]["EXECUTING"] = ("Предложение (ТКП)", "P")
    text = draft_binding(shipped.regulation, snapshot)
    assert "EXECUTING: proposal  # Предложение (ТКП)" in text
    (tmp_path / "regulation.yaml").write_text((MAPPINGS / "regulation.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "bitrix24.yaml").write_text(text, encoding="utf-8")
    mappings = load_mappings(tmp_path)
    problems = [str(problem) for problem in lint_live(mappings, snapshot, text)]
    assert not any("renamed" in problem for problem in problems), problems
    snapshot.stages["0"]["EXECUTING"] = ("Коммерческое предложение", "P")
    assert any("was renamed on the portal: «Предложение (ТКП)» -> «Коммерческое предложение»" in str(problem)
               for problem in lint_live(mappings, snapshot, text))


def test_a_yes_no_portal_field_binds_to_a_regulated_enum(shipped: Mappings, tmp_path: Path) -> None:
    snapshot = sandbox_snapshot()
    snapshot.fields["UF_CRM_1700000101"] = PortalField("UF_CRM_1700000101", "boolean", "Интерес клиента подтверждён")
    text = draft_binding(shipped.regulation, snapshot)
    assert '"1": yes  # да' in text and '"0": no  # нет' in text
    (tmp_path / "regulation.yaml").write_text((MAPPINGS / "regulation.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "bitrix24.yaml").write_text(text, encoding="utf-8")
    mappings = load_mappings(tmp_path)
    assert [str(problem) for problem in lint_live(mappings, snapshot, text)] == []
    mapper = DealMapper(mappings.regulation, mappings.binding)
    read = {raw: mapper.deal({"ID": "1", "CATEGORY_ID": "0", "STAGE_ID": "NEW", "UF_CRM_1700000101": raw,
                              "DATE_CREATE": "2026-11-02T10:00:00+03:00"}).fields.get("client_interest")
            for raw in ("1", "0", True, False, "Y", "N")}
    assert {raw: value.value for raw, value in read.items()} == {
        "1": "yes", "0": "no", True: "yes", False: "no", "Y": "yes", "N": "no"}
    # a portal whose yes/no field was bound with ids of an enumeration is told what to write
    wrong = text.replace('"1": yes', '"101": yes')
    (tmp_path / "bitrix24.yaml").write_text(wrong, encoding="utf-8")
    problems = [str(problem) for problem in lint_live(load_mappings(tmp_path), snapshot, wrong)]
    assert any("is a yes/no field: its values are 1 and 0" in problem for problem in problems), problems


def test_an_unbound_field_says_where_it_is_used_and_the_two_fixes(shipped: Mappings) -> None:
    text = (MAPPINGS / "bitrix24.yaml").read_text(encoding="utf-8")
    text = "\n".join(line for line in text.splitlines() if not line.startswith("  payment_date:"))
    (problem,) = [p for p in draft_problems(shipped, text) if "payment_date" in p]
    assert 'regulated field "payment_date" is used by the regulation but not bound' in problem
    assert "b2c won" in problem and "R8 paid_field" in problem  # where it is used
    assert "bind it: add `payment_date: UF_CRM_…` under fields:" in problem  # fix one
    assert "drop it from those stages' requirements" in problem and "R8" in problem and "mode: off" in problem  # two


def test_after_discover_check_says_to_rename_the_draft(tmp_path: Path) -> None:
    (tmp_path / "regulation.yaml").write_text((MAPPINGS / "regulation.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "bitrix24.draft.yaml").write_text("crm: bitrix24\n", encoding="utf-8")
    with pytest.raises(MappingError) as raised:
        load_mappings(tmp_path)
    message = str(raised.value)
    assert "bitrix24.draft.yaml" in message and "rename it to bitrix24.yaml" in message
    assert "run `crmbridge discover`" not in message


def test_a_settled_guess_keeps_discovers_note_and_is_not_a_rename(shipped: Mappings, tmp_path: Path) -> None:
    """The admin replaces `todo` and keeps the comment «Общий КП — looks like general_proposal?»: the note is
    discover's, not part of the stage's name, so check --live must not report «Общий КП» as renamed."""
    snapshot = sandbox_snapshot()
    snapshot.stages["1"]["C1:PREPARATION"] = ("Общий КП", "P")
    text = draft_binding(shipped.regulation, snapshot)
    assert "C1:PREPARATION: todo  # Общий КП — looks like general_proposal?" in text
    settled = text.replace("C1:PREPARATION: todo", "C1:PREPARATION: general_proposal")
    (tmp_path / "regulation.yaml").write_text((MAPPINGS / "regulation.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "bitrix24.yaml").write_text(settled, encoding="utf-8")
    assert [str(problem) for problem in lint_live(load_mappings(tmp_path), snapshot, settled)] == []
    snapshot.stages["1"]["C1:PREPARATION"] = ("Индивидуальный КП", "P")  # a real rename is still caught
    assert any("«Общий КП» -> «Индивидуальный КП»" in str(problem)
               for problem in lint_live(load_mappings(tmp_path), snapshot, settled))


def test_crm_names_are_data_in_the_draft(shipped: Mappings, tmp_path: Path) -> None:
    """A pipeline called «B2B постоянные клиенты "VIP": 2» broke the draft's YAML; a line break in a stage name
    started a YAML line of its own. Names round-trip, and white space alone is not a rename."""
    snapshot = sandbox_snapshot()
    snapshot.pipelines["2"] = 'B2B постоянные клиенты "VIP": 2 \\ #1'
    snapshot.stages["0"]["EXECUTING"] = ("Предложение\n(ТКП)  ", "P")
    text = draft_binding(shipped.regulation, snapshot)
    (tmp_path / "regulation.yaml").write_text((MAPPINGS / "regulation.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "bitrix24.yaml").write_text(text, encoding="utf-8")
    mappings = load_mappings(tmp_path)
    assert mappings.binding.pipelines["2"].name == 'B2B постоянные клиенты "VIP": 2 \\ #1'
    assert "EXECUTING: proposal  # Предложение (ТКП)" in text
    assert [str(problem) for problem in lint_live(mappings, snapshot, text)] == []

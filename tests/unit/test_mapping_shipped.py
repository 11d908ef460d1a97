"""The shipped files in mappings/: valid, with editor schemas, and bound exactly to the sandbox portal's seeded ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crmbridge.mapping.discover import draft_binding
from crmbridge.mapping.load import load_mappings, parse_binding
from crmbridge.mapping.portal import PortalField, PortalSnapshot, lint_live
from crmbridge.mapping.schema import json_schemas
from crmbridge.sandbox import catalog

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"


@pytest.fixture(scope="module")
def shipped():
    return load_mappings(MAPPINGS)


def sandbox_snapshot() -> PortalSnapshot:
    """The sandbox portal's structure as its seeding catalogue defines it (no HTTP)."""
    snapshot = PortalSnapshot()
    names = {0: "Проектные продажи", 1: "B2B новые клиенты", 2: "B2B постоянные клиенты", 3: "B2C"}
    for category, stages in catalog.STAGES.items():
        snapshot.pipelines[str(category)] = names[category]
        snapshot.stages[str(category)] = {stage.status_id: (stage.name, stage.semantics) for stage in stages}
    for field in catalog.USER_FIELDS:
        snapshot.fields[field.name] = PortalField(field.name, field.type, field.label,
                                                  {str(option): label for option, label in field.options})
    for user in catalog.USERS:
        snapshot.users[str(user.id)] = (f"{user.name} {user.last_name}".strip(), user.active, (str(user.department),))
    return snapshot


def test_shipped_files_load(shipped) -> None:
    assert list(shipped.regulation.directions) == ["project_sales", "b2b_new", "b2b_regular", "b2c"]
    stages = shipped.regulation.directions["project_sales"].stages
    assert [(stage.name, stage.probability) for stage in stages] == [
        ("Оценка", 10), ("Позиционирование", 25), ("Диагностика", 50), ("Предложение", 75), ("Подписание", 90)]
    assert set(type(shipped.regulation.rules).model_fields) == {f"R{n}" for n in range(1, 12)}


@pytest.mark.parametrize("name,schema", [("regulation.yaml", "regulation.schema.json"), ("bitrix24.yaml", "bitrix24.schema.json")])
def test_files_point_editors_at_their_schema(name: str, schema: str) -> None:
    first = (MAPPINGS / name).read_text(encoding="utf-8").splitlines()[0]
    assert first == f"# yaml-language-server: $schema=./{schema}"


def test_shipped_schemas_are_current() -> None:
    for name, document in json_schemas().items():
        assert json.loads((MAPPINGS / name).read_text(encoding="utf-8")) == document, f"run `crmbridge schema` ({name})"


def test_sandbox_binding_resolves_against_the_seeded_portal(shipped) -> None:
    text = (MAPPINGS / "bitrix24.yaml").read_text(encoding="utf-8")
    assert lint_live(shipped, sandbox_snapshot(), text) == []


def test_every_seeded_stage_and_option_is_bound(shipped) -> None:
    for category, stages in catalog.STAGES.items():
        bound = shipped.binding.pipelines[str(category)].stages
        assert set(bound) == {stage.status_id for stage in stages}
    options = {field.crm_field: set(field.options) for field in shipped.binding.fields.values()}
    for field in catalog.USER_FIELDS:
        assert field.name in options, field.name
        assert options[field.name] == {str(option) for option, _ in field.options}
    assert shipped.binding.teams["b2b"].members == ["2", "3", "4", "5"]
    assert "9" not in {member for team in shipped.binding.teams.values() for member in team.members}


def test_live_check_names_what_is_missing_or_renamed(shipped) -> None:
    snapshot = sandbox_snapshot()
    snapshot.stages["1"]["C1:EXTRA"] = ("Новый этап", "P")
    snapshot.stages["0"]["NEW"] = ("Квалификация", "P")
    del snapshot.stages["3"]["C3:EXECUTING"]
    snapshot.fields["UF_CRM_1700000114"].options.pop("124")
    snapshot.fields["UF_CRM_1700000102"] = PortalField("UF_CRM_1700000102", "string", "Бюджет")
    snapshot.users["3"] = ("Дмитрий Волков", False, ("2",))
    text = (MAPPINGS / "bitrix24.yaml").read_text(encoding="utf-8")
    problems = [str(problem) for problem in lint_live(shipped, snapshot, text)]
    expected = [
        'CRM stage "C1:EXTRA" («Новый этап») of pipeline 1 is not mapped',
        'CRM stage "NEW" was renamed on the portal: «Оценка» -> «Квалификация»',
        'CRM stage "C3:EXECUTING" does not exist in pipeline 3',
        "enum option 124 does not exist in UF_CRM_1700000114",
        'UF_CRM_1700000102 («Бюджет») is string on the portal, "budget_6m" is number',
        "user 3 (Дмитрий Волков) is not active on the portal",
    ]
    for needle in expected:
        assert any(needle in problem for problem in problems), (needle, problems)
    assert all(problem.startswith(str(MAPPINGS / "bitrix24.yaml") + ":") for problem in problems)


def test_discover_drafts_the_sandbox_binding(shipped) -> None:
    text = draft_binding(shipped.regulation, sandbox_snapshot())
    assert text.startswith("# yaml-language-server: $schema=./bitrix24.schema.json")
    assert "# 0 decisions left" in text
    draft, problems = parse_binding(text, shipped.regulation, "draft.yaml")
    assert problems == [] and draft is not None
    for category, pipeline in shipped.binding.pipelines.items():
        assert draft.pipelines[category].direction == pipeline.direction
        assert draft.pipelines[category].stages == pipeline.stages
    for field_id, bound in shipped.binding.fields.items():
        if bound.crm_field.startswith("UF_"):
            assert draft.fields[field_id].crm_field == bound.crm_field, field_id
            assert draft.fields[field_id].options == bound.options, field_id
    assert draft.fields["deal_amount"].crm_field == "OPPORTUNITY"  # standard fields are candidates too
    assert "Нет интереса сейчас" in text  # the CRM's labels are kept as comments


def test_discover_marks_what_it_cannot_match(shipped) -> None:
    snapshot = sandbox_snapshot()
    snapshot.pipelines["5"] = "Тендеры"
    snapshot.stages["5"] = {"C5:NEW": ("Заявка на тендер", "P"), "C5:WON": ("Выигран", "S")}
    text = draft_binding(shipped.regulation, snapshot)
    assert "direction: todo" in text and "C5:NEW: todo  # Заявка на тендер" in text and "C5:WON: won" in text
    _, problems = parse_binding(text, shipped.regulation, "draft.yaml")
    assert any("pipeline 5: the direction is still todo — choose one of: project_sales" in str(p) for p in problems)


@pytest.mark.parametrize("name", sorted(path.name for path in MAPPINGS.glob("*.yaml")))
def test_packaged_defaults_are_the_shipped_mapping_files(name: str) -> None:
    from crmbridge import defaults

    assert defaults.text(name) == (MAPPINGS / name).read_text(encoding="utf-8"), \
        f"copy mappings/{name} to src/crmbridge/defaults/{name}"

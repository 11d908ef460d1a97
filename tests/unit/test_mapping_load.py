"""The loader and linter: every mistake an admin makes is reported as file:line:col: what — fix, all at once."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from crmbridge.errors import MappingError
from crmbridge.mapping.load import load_mappings, parse_binding, parse_regulation
from crmbridge.mapping.schema import parse_duration
from regulation_kit import REGULATION, SPEC

POSITIONED = re.compile(r"^[^:]+:\d+:\d+: .+ — .+$")

MINIMAL = """\
directions:
  sales:
    name: Sales
    stages:
      - id: one
        name: One
        probability: 10
      - id: two
        name: Two
        probability: 50
    won: {name: Won, probability: 100}
    lost: {name: Lost, probability: 0}
"""


def problems_of(text: str) -> list[str]:
    model, problems = parse_regulation(text, "regulation.yaml")
    assert (model is None) == bool(problems)
    rendered = [str(problem) for problem in problems]
    assert all(POSITIONED.match(line) for line in rendered), rendered
    return rendered


def test_minimal_regulation_loads() -> None:
    assert problems_of(MINIMAL) == []


@pytest.mark.parametrize("edit,expected", [
    # duplicate stage id
    (("- id: two", "- id: one"), 'regulation.yaml:8:13: duplicate stage id "one" in direction "sales" (also stage 1, line 5)'),
    # probability out of range
    (("probability: 50", "probability: 120"), 'regulation.yaml:10:22: "probability" is 120, out of range'),
    (("probability: 10", "probability: -1"), 'regulation.yaml:7:22: "probability" is -1, out of range'),
    # probability of the wrong type
    (("probability: 50", "probability: half"), 'regulation.yaml:10:22: "probability" should be a whole number, got "half"'),
    # unknown key with did-you-mean
    (("name: Two", "nmae: Two"), 'regulation.yaml:9:9: unknown key "nmae" — did you mean "name"?'),
    # missing key
    (("    lost: {name: Lost, probability: 0}\n", ""), 'regulation.yaml:2:3: missing key "lost" in "sales"'),
    # duplicate key
    (("        probability: 50\n", "        probability: 50\n        probability: 60\n"),
     'regulation.yaml:11:9: duplicate key "probability" (first at line 10)'),
    # bad id
    (("id: two", "id: Two Stage"), 'regulation.yaml:8:13: "id" is "Two Stage", not a valid id'),
    # YAML syntax
    (("name: Two", "name: [Two"), "regulation.yaml:10:20: YAML syntax error"),
])
def test_each_mistake_is_reported_with_its_position(edit: tuple[str, str], expected: str) -> None:
    text = MINIMAL.replace(*edit, 1)
    assert text != MINIMAL
    found = problems_of(text)
    assert any(line.startswith(expected) for line in found), found


def with_rules(rules: str) -> str:
    return REGULATION.replace("rules:\n  R1:", rules + "\n  R1:", 1)


@pytest.mark.parametrize("rules,expected", [
    ("rules:\n  R3: {create_within: 3 days}",
     '"3 days" is not a duration — write a number with a unit: 90m, 1h, 3d, 2w'),
    ("rules:\n  R3: {create_within: 15}", "the duration 15 has no unit — write e.g. 15m, 15h or 15d"),
    ("rules:\n  R7: {working_hours: sometimes}", '"working_hours" should be true or false, got "sometimes"'),
    ("rules:\n  R5: {months: three}", '"months" should be a list, got "three"'),
    ("rules:\n  R7: {mode: enforced}", '"mode" is "enforced", which is not allowed — did you mean "enforce"?'),
    ("rules:\n  R7: {sla_minutes: 5m}", 'unknown key "sla_minutes"'),
    ("rules:\n  R12: {mode: warn}", 'unknown key "R12" — did you mean "R'),
])
def test_rule_parameters_are_typed(rules: str, expected: str) -> None:
    text = with_rules(rules).replace("\nrules:\n  R1:", "\n  R1:", 1)
    found = problems_of(text)
    assert any(expected in line for line in found), found


def test_stage_task_kind_is_task_or_todo() -> None:
    text = MINIMAL.replace("        probability: 10\n", "        probability: 10\n        task: {title: Call, kind: tod}\n", 1)
    assert problems_of(text) == ['regulation.yaml:8:35: "kind" is "tod", which is not allowed — did you mean "todo"?']
    model, problems = parse_regulation(text.replace("kind: tod", "kind: todo"), "regulation.yaml")
    assert problems == [] and model is not None
    assert model.directions["sales"].stages[0].task.kind == "todo"
    plain, _ = parse_regulation(text.replace(", kind: tod", ""), "regulation.yaml")
    assert plain is not None and plain.directions["sales"].stages[0].task.kind == "task"  # the default


def test_unknown_regulated_field_gets_did_you_mean() -> None:
    found = problems_of(REGULATION.replace("requires_to_leave: [meeting]", "requires_to_leave: [meetng]"))
    assert any('unknown regulated field "meetng" — did you mean "meeting"?' in line for line in found), found


def test_rule_references_are_checked() -> None:
    text = REGULATION.replace("R6: {mode: warn, stages: [two]", "R6: {mode: warn, stages: [tow]").replace(
        "next_contact_field: next_contact", "next_contact_field: next_contac")
    found = problems_of(text)
    assert any('R6.stages: no stage "tow" in any direction — did you mean "two"?' in line for line in found), found
    assert any('R5.next_contact_field: unknown regulated field "next_contac"' in line for line in found), found


def test_direction_override_errors_point_at_the_override() -> None:
    text = REGULATION.replace("R7: {sla: 5m, working_hours: false}", "R7: {sla: soon, slaa: 5m}")
    found = problems_of(text)
    line_of_override = REGULATION.splitlines().index("      R7: {sla: 5m, working_hours: false}") + 1
    assert any(line.startswith(f"regulation.yaml:{line_of_override}:") and "soon" in line for line in found), found
    assert any('unknown parameter "slaa" of R7 — did you mean "sla"?' in line for line in found), found


def test_a_look_back_of_nothing_is_refused_with_the_plain_way_to_push_nothing() -> None:
    text = REGULATION.replace("R7: {sla: 5m, working_hours: false}", "R7: {sla: 5m, working_hours: false, look_back: 0m}")
    found = problems_of(text)
    line_of_override = REGULATION.splitlines().index("      R7: {sla: 5m, working_hours: false}") + 1
    assert any(line.startswith(f"regulation.yaml:{line_of_override}:") and "look_back must be longer than 0m" in line
               and "mode to audit" in line for line in found), found
    assert problems_of(text.replace("look_back: 0m", "look_back: 30d")) == []
    # the same for the stage rules' window on closed deals, in `rules:` itself
    closed = REGULATION.replace("R1: {mode: warn,", "R1: {mode: warn, closed_look_back: 0m,")
    line_of_rule = next(n for n, line in enumerate(REGULATION.splitlines(), 1) if line.startswith("  R1: {mode: warn,"))
    assert any(line.startswith(f"regulation.yaml:{line_of_rule}:") and "closed_look_back must be longer than 0m" in line
               and "mode to audit" in line for line in problems_of(closed)), problems_of(closed)
    assert problems_of(closed.replace("closed_look_back: 0m", "closed_look_back: 30d")) == []


def test_unknown_placeholder_in_a_message() -> None:
    found = problems_of(REGULATION.replace('"{rule} {actual} vs {expected}"', '"{rule} {actaul}"'))
    assert any("R4.message: unknown placeholder {actaul} — did you mean \"actual\"?" in line for line in found), found


def test_all_problems_of_a_file_at_once() -> None:
    text = MINIMAL.replace("probability: 10", "probability: 101").replace("name: Two", "nmae: Two").replace(
        "- id: two", "- id: one")
    found = problems_of(text)
    assert len(found) >= 3
    assert found == sorted(found, key=lambda line: int(line.split(":")[1]))


@pytest.mark.parametrize("text,span", [("3d", timedelta(days=3)), ("1h", timedelta(hours=1)), ("90m", timedelta(minutes=90)),
                                       ("1h30m", timedelta(minutes=90)), ("2w", timedelta(weeks=2))])
def test_durations(text: str, span: timedelta) -> None:
    assert parse_duration(text) == span


@pytest.mark.parametrize("bad", ["3 days", "h", "", "1.5h", "-1d", True, 15, None])
def test_bad_durations(bad) -> None:
    with pytest.raises(ValueError, match=" — "):
        parse_duration(bad)

# ---------------------------------------------------------------- the binding

BINDING = """\
crm: bitrix24
pipelines:
  0:
    direction: sales
    stages:
      NEW: one
      PREPARATION: two
      EXECUTING: three
      FINAL_INVOICE: four
      WON: won
      LOSE: lost
      APOLOGY: ignore
  1:
    direction: other
    stages:
      C1:NEW: x
      C1:WORK: y
      C1:WON: won
      C1:LOSE: lost
fields:
  interest: {crm_field: UF_CRM_1, options: {1: "yes", 2: "no"}}
  budget: UF_CRM_2
  meeting: UF_CRM_3
  doc: UF_CRM_4
  terms: {crm_field: UF_CRM_5, options: {11: prepaid, 12: deferred}}
  reason: {crm_field: UF_CRM_6, options: {21: expensive, 22: not_now}}
  next_contact: UF_CRM_7
  segment: {crm_field: UF_CRM_8, options: {31: hot, 32: warm, 33: sleeping}}
  paid: UF_CRM_9
  due: UF_CRM_10
  first_contact: UF_CRM_11
  amount: OPPORTUNITY
teams:
  b2b: {members: [2, 3], directions: [sales]}
heads:
  - user: 1
"""


def binding_problems(text: str) -> list[str]:
    model, problems = parse_binding(text, SPEC, "bitrix24.yaml")
    rendered = [str(problem) for problem in problems]
    assert (model is None) == bool(rendered)
    assert all(POSITIONED.match(line) for line in rendered), rendered
    return rendered


def test_binding_loads() -> None:
    model, problems = parse_binding(BINDING, SPEC, "bitrix24.yaml")
    assert problems == [] and model is not None
    assert model.pipelines["0"].stages["NEW"] == "one"
    assert model.fields["interest"].options == {"1": "yes", "2": "no"}
    assert model.teams["b2b"].members == ["2", "3"]


@pytest.mark.parametrize("edit,expected", [
    (("      C1:WORK: y\n", "      C1:WORK: y\n      NEW: x\n"), 'bitrix24.yaml:18:7: CRM stage "NEW" belongs to pipeline 0, not 1'),
    (("      C1:WORK: y\n", "      C1:WORK: y\n      NEW: x\n"), 'bitrix24.yaml:18:7: CRM stage "NEW" is mapped twice (also in pipeline 0)'),
    (("      EXECUTING: three\n", "      EXECUTING: three\n      EXECUTING: four\n"), 'bitrix24.yaml:9:7: duplicate key "EXECUTING" (first at line 8)'),
    (("      EXECUTING: three\n", ""), 'bitrix24.yaml:5:5: regulated stage "three" of "sales" has no CRM stage in pipeline 0'),
    (("PREPARATION: two", "PREPARATION: tow"), 'bitrix24.yaml:7:20: "tow" is not a stage of direction "sales" — did you mean "two"?'),
    (("direction: other", "direction: othr"), 'bitrix24.yaml:14:16: unknown direction "othr" — did you mean "other"?'),
    (("  budget: UF_CRM_2", "  budgett: UF_CRM_2"), 'bitrix24.yaml:22:3: unknown regulated field "budgett" — did you mean "budget"?'),
    (("  budget: UF_CRM_2", "  budgett: UF_CRM_2"), 'regulated field "budget" is used by the regulation but not bound'),
    (('{1: "yes", 2: "no"}', '{1: "yes", 2: "nope"}'), 'bitrix24.yaml:21:58: "nope" is not an option of "interest" — did you mean "no"?'),
    (("crm_field: UF_CRM_1,", "crm_field: uf_crm_1,"), 'bitrix24.yaml:21:25: "crm_field" is "uf_crm_1", not a CRM field name — write the CRM field name in capitals'),
    (("  - user: 1\n", "  - usr: 1\n"), 'bitrix24.yaml:36:5: unknown key "usr" — did you mean "user"?'),
])
def test_binding_mistakes(edit: tuple[str, str], expected: str) -> None:
    text = BINDING.replace(*edit, 1)
    assert text != BINDING
    found = binding_problems(text)
    assert any(line.startswith(expected) or expected in line for line in found), found


def test_load_mappings_reports_both_files(tmp_path) -> None:
    (tmp_path / "regulation.yaml").write_text(REGULATION.replace("probability: 25", "probability: 250"), encoding="utf-8")
    (tmp_path / "bitrix24.yaml").write_text(BINDING.replace("  - user: 1", "  - usr: 1"), encoding="utf-8")
    with pytest.raises(MappingError) as raised:
        load_mappings(tmp_path)
    files = {line.split(":")[0].rsplit("/", 1)[-1] for line in raised.value.problems}
    assert files == {"regulation.yaml", "bitrix24.yaml"}
    assert "(and" in str(raised.value)


def test_missing_file_is_one_clear_problem(tmp_path) -> None:
    with pytest.raises(MappingError, match=r"bitrix24.yaml:1:1: file not found — "):
        load_mappings(tmp_path)


@pytest.mark.parametrize("span,units,text", [
    (timedelta(minutes=90), "d h m", "1h30m"), (timedelta(days=3), "d h m", "3d"), (timedelta(0), "d h m", "0m"),
    (timedelta(days=113, hours=6, minutes=5), "дн ч мин", "113 дн 6 ч 5 мин"), (timedelta(seconds=20), "дн ч мин", "0 мин"),
])
def test_durations_are_shown_as_written(span: timedelta, units: str, text: str) -> None:
    from crmbridge.mapping.schema import format_duration

    assert format_duration(span, units) == text
    if units == "d h m":
        assert parse_duration(text) == span


def test_schema_defaults_are_written_like_the_files() -> None:
    from crmbridge.mapping.schema import json_schemas

    rule = json_schemas()["regulation.schema.json"]["$defs"]["R7ResponseTime"]["properties"]["sla"]
    assert rule["default"] == "1h" and rule["pattern"]

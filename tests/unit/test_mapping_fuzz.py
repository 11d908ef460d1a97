"""Property tests: no YAML input crashes the loader, and every problem it reports carries a position."""

from __future__ import annotations

import io
import re

from hypothesis import HealthCheck, given, settings, strategies as st
from ruamel.yaml import YAML

from crmbridge.mapping.load import parse_binding, parse_regulation
from regulation_kit import REGULATION, SPEC

POSITIONED = re.compile(r"^[^:\n]+:\d+:\d+: [^\n]+$")

VOCABULARY = ["version", "directions", "sales", "name", "stages", "id", "probability", "won", "lost", "rules", "R1", "R7",
              "mode", "sla", "fields", "type", "options", "requires_to_leave", "task", "title", "deadline", "calendar",
              "timezone", "pipelines", "0", "direction", "crm_field", "teams", "members", "heads", "user", "segments"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), st.sampled_from(["3d", "1h", "90m", "x", "", "warn", "enum", "yes"]),
                    st.text(max_size=8))
TREES = st.recursive(SCALARS, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.sampled_from(VOCABULARY), children, max_size=5)), max_leaves=25)


def assert_positioned(problems) -> None:
    for problem in problems:
        line = str(problem)
        assert POSITIONED.match(line), line
        assert problem.line >= 1 and problem.column >= 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_any_text_is_reported_not_raised(text: str) -> None:
    model, problems = parse_regulation(text, "regulation.yaml")
    assert model is not None or problems
    assert_positioned(problems)
    binding, problems = parse_binding(text, SPEC, "bitrix24.yaml")
    assert binding is not None or problems
    assert_positioned(problems)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TREES)
def test_any_yaml_structure_is_reported_not_raised(tree) -> None:
    stream = io.StringIO()
    YAML().dump(tree, stream)
    model, problems = parse_regulation(stream.getvalue(), "regulation.yaml")
    assert model is not None or problems
    assert_positioned(problems)
    binding, problems = parse_binding(stream.getvalue(), SPEC, "bitrix24.yaml")
    assert_positioned(problems)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, len(REGULATION) - 1), st.text(min_size=1, max_size=3))
def test_a_damaged_regulation_is_reported_not_raised(offset: int, garbage: str) -> None:
    text = REGULATION[:offset] + garbage + REGULATION[offset + 1:]
    model, problems = parse_regulation(text, "regulation.yaml")
    assert model is not None or problems
    assert_positioned(problems)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_a_damaged_binding_is_reported_not_raised(data) -> None:
    from test_mapping_load import BINDING

    offset = data.draw(st.integers(0, len(BINDING) - 1))
    garbage = data.draw(st.text(min_size=1, max_size=3))
    binding, problems = parse_binding(BINDING[:offset] + garbage + BINDING[offset + 1:], SPEC, "bitrix24.yaml")
    assert binding is not None or problems
    assert_positioned(problems)

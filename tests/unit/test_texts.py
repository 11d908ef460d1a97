"""What people read, in the regulation's language (issue 7, item 14): R4 without a probability, R3 on a lost deal,
an ignored pipeline, the verdict labels of `audit --deal`."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from crmbridge.mapping.binding import DealMapper
from crmbridge.mapping.load import load_mappings, parse_regulation
from crmbridge.model import Verdict
from crmbridge.regulation.evaluate import Evaluator

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def shipped():
    return load_mappings(MAPPINGS)


def deal(shipped, stage: str, category: str = "0", **raw: str):
    record = {"ID": "7", "TITLE": "Поставка", "CATEGORY_ID": category, "STAGE_ID": stage, "ASSIGNED_BY_ID": "3",
              "DATE_CREATE": "2026-11-02T10:00:00+03:00", "DATE_MODIFY": "2026-11-10T10:00:00+03:00", **raw}
    prefix = "" if category == "0" else f"C{category}:"
    history = [{"ID": "1", "TYPE_ID": "1", "CATEGORY_ID": category, "STAGE_ID": f"{prefix}NEW",
                "CREATED_TIME": "2026-11-02T10:00:00+03:00"},
               {"ID": "2", "TYPE_ID": "2", "CATEGORY_ID": category, "STAGE_ID": stage,
                "CREATED_TIME": "2026-11-03T10:00:00+03:00"}]
    return DealMapper(shipped.regulation, shipped.binding).deal(record, history)


def explained(shipped, the_deal) -> dict[str, tuple[Verdict, str]]:
    return {line.rule: (line.verdict, line.reason) for line in Evaluator.of(shipped.regulation, NOW).explain(the_deal)}


def test_r4_without_a_probability_reads_not_set_without_a_percent_sign(shipped) -> None:
    (r4,) = [v for v in Evaluator.of(shipped.regulation, NOW).violations(deal(shipped, "PREPARATION")) if v.rule == "R4"]
    assert "вероятность не указана, а у этапа" in r4.message and "%%" not in r4.message
    assert "не указана%" not in r4.message
    (r4,) = [v for v in Evaluator.of(shipped.regulation, NOW).violations(deal(shipped, "PREPARATION", PROBABILITY="10"))
             if v.rule == "R4"]
    assert "вероятность 10%, а у этапа «Позиционирование» — 25%" in r4.message


def test_an_old_r4_template_with_a_percent_after_actual_still_reads_well() -> None:
    text = (MAPPINGS / "regulation.yaml").read_text(encoding="utf-8").replace(
        "вероятность {actual}, а у этапа", "вероятность {actual}%, а у этапа")
    regulation, problems = parse_regulation(text, "regulation.yaml")
    assert not problems and regulation is not None
    assert "{actual}%" not in regulation.rules.R4.message


def test_r3_on_a_lost_deal_without_tasks_does_not_say_the_task_is_set(shipped) -> None:
    verdict, reason = explained(shipped, deal(shipped, "LOSE"))["R3"]
    assert "задача этапа поставлена" not in reason
    assert reason  # it says why it passes or does not apply


def test_r3_says_the_task_is_set_only_when_it_is(shipped) -> None:
    verdict, reason = explained(shipped, deal(shipped, "PREPARATION"))["R3"]
    assert verdict is Verdict.FAILED and "не поставлена задача" in reason


def test_a_pipeline_bound_as_ignore_is_explained_as_excluded_not_unbound(shipped) -> None:
    binding = shipped.binding.model_copy(update={"pipelines": {
        **shipped.binding.pipelines,
        "3": shipped.binding.pipelines["3"].model_copy(update={"direction": "ignore", "stages": {}})}})
    mapper = DealMapper(shipped.regulation, binding)
    ignored = mapper.deal({"ID": "9", "TITLE": "x", "CATEGORY_ID": "3", "STAGE_ID": "C3:NEW",
                           "DATE_CREATE": "2026-11-02T10:00:00+03:00"})
    unbound = mapper.deal({"ID": "10", "TITLE": "y", "CATEGORY_ID": "8", "STAGE_ID": "C8:NEW",
                           "DATE_CREATE": "2026-11-02T10:00:00+03:00"})
    lines = Evaluator.of(shipped.regulation, NOW).explain(ignored)
    assert "исключена в привязке (ignore)" in lines[0].reason and "не привязана" not in lines[0].reason
    assert "не привязана" in Evaluator.of(shipped.regulation, NOW).explain(unbound)[0].reason


def test_verdict_labels_are_in_the_regulations_language(shipped) -> None:
    words = shipped.regulation.wording.explain
    assert (words.passed, words.failed, words.not_applicable) == ("соблюдено", "нарушено", "не применяется")


def test_a_russian_file_written_before_the_labels_existed_gets_russian_labels() -> None:
    text = (MAPPINGS / "regulation.yaml").read_text(encoding="utf-8")
    for line in ("    passed: соблюдено\n", "    failed: нарушено\n", "    not_applicable: не применяется\n"):
        text = text.replace(line, "")
    regulation, problems = parse_regulation(text, "regulation.yaml")
    assert not problems and regulation is not None
    assert regulation.wording.explain.failed == "нарушено"
    english, _ = parse_regulation(text.replace("wording:", "wording_unused:").split("wording_unused:")[0],
                                  "regulation.yaml")
    assert english is not None and english.wording.explain.failed == "failed"

"""Evaluation as a whole: modes, explanations, impact, and the violations ledger in the cache."""

from __future__ import annotations

import json
import pytest

from crmbridge.cache import rows as cache_rows
from crmbridge.cache.store import open_cache
from crmbridge.mapping.binding import DealMapper
from crmbridge.compliance import record_violations
from crmbridge.mapping.load import parse_binding
from crmbridge.model import Deal, Mode, Verdict
from crmbridge.regulation.compiled import closed_moment, compile_regulation
from crmbridge.regulation.evaluate import Evaluator, beyond_look_back, evaluate, explain, impact
from crmbridge.regulation.ledger import reconcile
from regulation_kit import COMPILED, REGULATION, SPEC, at, deal, entry, regulation, task
from test_mapping_load import BINDING

SKIPPING = deal("three", history=[entry("created", "one", "2026-11-02 10:00"), entry("moved", "three", "2026-11-03 10:00")],
                probability=50, fields={"interest": "yes", "budget": 5},
                tasks=[task("Do one", "2026-11-02 10:01", status="completed", closed="2026-11-03 09:00")])


def test_evaluate_returns_each_broken_rule_with_its_mode() -> None:
    found = evaluate(SKIPPING, COMPILED, at("2026-11-04 12:00"))
    assert sorted((v.rule, v.severity) for v in found) == [
        ("R1", Mode.WARN), ("R2", Mode.WARN), ("R6", Mode.WARN), ("R7", Mode.WARN)]
    r2 = next(v for v in found if v.rule == "R2")
    assert r2.missing == ("meeting",)  # R2 wants two's leave-field: the skipped stage's fields are still required
    assert r2.entry == SKIPPING.history[-1] and r2.direction == "sales" and r2.stage == "three"


def test_a_rule_in_mode_off_is_not_evaluated() -> None:
    quiet = regulation(REGULATION.replace("R1: {mode: warn,", "R1: {mode: off,"))
    assert "R1" not in {v.rule for v in evaluate(SKIPPING, quiet, at("2026-11-04 12:00"))}
    lines = {line.rule: line for line in explain(SKIPPING, quiet, at("2026-11-04 12:00"))}
    assert lines["R1"].verdict is Verdict.NOT_APPLICABLE and "off" in lines["R1"].reason


def test_explain_gives_a_verdict_and_a_reason_for_every_rule() -> None:
    lines = explain(SKIPPING, COMPILED, at("2026-11-04 12:00"))
    assert [line.rule for line in lines] == [f"R{n}" for n in range(1, 12)]
    verdicts = {line.rule: line.verdict for line in lines}
    assert verdicts["R1"] is Verdict.FAILED and verdicts["R4"] is Verdict.PASSED and verdicts["R5"] is Verdict.NOT_APPLICABLE
    assert all(line.reason for line in lines)
    assert lines[0].violations[0].rule == "R1"


def test_deals_of_unbound_pipelines_are_not_judged() -> None:
    stray = deal("one", direction=None, history=[])
    assert evaluate(stray, COMPILED, at("2026-11-04 12:00")) == []
    assert {line.verdict for line in explain(stray, COMPILED, at("2026-11-04 12:00"))} == {Verdict.NOT_APPLICABLE}


def test_impact_counts_deals_per_rule_even_for_rules_that_are_off() -> None:
    quiet = regulation(REGULATION.replace("R1: {mode: warn,", "R1: {mode: off,"))
    clean = deal("one", probability=10, tasks=[task("Do one", "2026-11-02 10:01")],
                 fields={"first_contact": at("2026-11-02 10:20")})
    counts = impact([SKIPPING, clean], quiet, at("2026-11-04 12:00"))
    assert counts["R1"] == {"would_flag": 1, "flagged_now": 0}
    assert counts["R2"] == {"would_flag": 1, "flagged_now": 1}
    assert counts["R4"] == {"would_flag": 0, "flagged_now": 0}


def test_clock_in_any_zone_gives_the_same_answer() -> None:
    from datetime import timezone

    utc = Evaluator.of(COMPILED, at("2026-11-04 12:00").astimezone(timezone.utc)).violations(SKIPPING)
    msk = Evaluator.of(COMPILED, at("2026-11-04 12:00")).violations(SKIPPING)
    assert [(v.rule, v.since, v.key) for v in utc] == [(v.rule, v.since, v.key) for v in msk]

# ---------------------------------------------------------------- the ledger


def test_reconcile_opens_keeps_and_resolves() -> None:
    first = evaluate(SKIPPING, COMPILED, at("2026-11-04 12:00"))
    changes = reconcile({}, first, "t1")
    assert len(changes.opened) == len(first) and not changes.resolved
    open_rows = {row["key"]: {**row, "id": number} for number, row in enumerate(changes.opened, start=1)}
    again = reconcile(open_rows, first[1:], "t2")
    assert again.opened == [] and len(again.refreshed) == len(first) - 1
    assert again.resolved == [open_rows[first[0].key]["id"]]
    # a partial evaluation of other deals does not resolve this deal's rows
    assert reconcile(open_rows, [], "t3", evaluated_deals={"999"}).resolved == []


def raw_deal(deal_id: int, stage: str, **extra) -> dict:
    return {"ID": str(deal_id), "TITLE": f"Deal {deal_id}", "CATEGORY_ID": "0", "STAGE_ID": stage, "STAGE_SEMANTIC_ID": "P",
            "OPPORTUNITY": "1000", "PROBABILITY": "25", "ASSIGNED_BY_ID": "3", "CLOSED": "N", "CONTACT_ID": "4",
            "DATE_CREATE": "2026-11-02T10:00:00+03:00", "DATE_MODIFY": "2026-11-03T10:00:00+03:00",
            "UF_CRM_11": "2026-11-02T10:10:00+03:00", **extra}


def history_row(row_id: int, deal_id: int, stage: str, when: str, type_id: int = 2) -> dict:
    return {"ID": str(row_id), "OWNER_ID": str(deal_id), "TYPE_ID": str(type_id), "CATEGORY_ID": "0", "STAGE_ID": stage,
            "STAGE_SEMANTIC_ID": "P", "CREATED_TIME": when}


@pytest.fixture
def cache():
    store = open_cache(":memory:")
    yield store
    store.close()


def test_violations_are_opened_and_resolved_in_the_cache(cache) -> None:
    binding, _ = parse_binding(BINDING, SPEC, "bitrix24.yaml")
    mapper = DealMapper(SPEC, binding)
    now = "2026-11-04T09:00:00+00:00"
    cache.upsert("deals", [cache_rows.deal_row(raw_deal(1, "EXECUTING"), now)])
    cache.upsert("stage_history", [cache_rows.stage_history_row(history_row(1, 1, "NEW", "2026-11-02T10:00:00+03:00", 1)),
                                   cache_rows.stage_history_row(history_row(2, 1, "EXECUTING", "2026-11-03T10:00:00+03:00"))])
    cache.upsert("contacts", [cache_rows.contact_row({"ID": "4", "NAME": "Ivan", "PHONE": [{"VALUE": "+7"}]})])
    deals = mapper.deals(cache.deals.records())
    assert [(d.id, d.stage, [e.stage for e in d.history], d.contact.phones) for d in deals] == [("1", "three", ["one", "three"], ("+7",))]
    first = Evaluator.of(SPEC, at("2026-11-04 12:00")).violations(deals[0])
    record_violations(cache, first, now)
    rows = cache.query("SELECT rule, deal_id, opened, resolved, missing, details FROM violations ORDER BY rule")
    assert {row["rule"] for row in rows} >= {"R1", "R4"}
    r1 = next(row for row in rows if row["rule"] == "R1")
    assert (r1["deal_id"], r1["opened"], r1["resolved"]) == (1, "2026-11-03T10:00:00+03:00", None)
    assert json.loads(r1["missing"]) == ["two"] and json.loads(r1["details"])["current"] is True

    # the manager moves the deal back to the skipped stage and fixes the probability: R1 and R4 resolve
    cache.upsert("deals", [cache_rows.deal_row(raw_deal(1, "PREPARATION"), now)])
    cache.upsert("stage_history", [cache_rows.stage_history_row(history_row(3, 1, "PREPARATION", "2026-11-04T10:00:00+03:00"))])
    later = Evaluator.of(SPEC, at("2026-11-04 12:30")).violations(mapper.deals(cache.deals.records())[0])
    changes = record_violations(cache, later, "2026-11-04T09:30:00+00:00")
    assert changes.resolved
    resolved = {row["rule"] for row in cache.query("SELECT rule FROM violations WHERE resolved IS NOT NULL")}
    assert {"R1", "R4"} <= resolved
    assert cache.count("violations", "resolved IS NULL") == len({v.key for v in later})


def test_explanations_use_the_regulations_wording() -> None:
    worded = regulation(REGULATION + "wording:\n  explain:\n    not_lost: сделка не провалена\n    rule_off: выключено\n")
    quiet = regulation(REGULATION.replace("R1: {mode: warn,", "R1: {mode: off,") +
                       "wording:\n  explain:\n    rule_off: выключено\n")
    lines = {line.rule: line.reason for line in explain(SKIPPING, worded, at("2026-11-04 12:00"))}
    assert lines["R5"] == "сделка не провалена"
    assert {line.rule: line.reason for line in explain(SKIPPING, quiet, at("2026-11-04 12:00"))}["R1"] == "выключено"


def won_by_skipping(closed: str) -> Deal:
    """Won straight from Two (R1: Three and Four skipped), without payment terms (R2), at 50% (R4), no client (R6)."""
    history = [entry("created", "one", "2026-01-10 10:00"), entry("moved", "two", "2026-01-12 10:00"),
               entry("closed", "won", closed)]
    return deal("won", history=history, probability=50, fields={"interest": "yes", "budget": 5, "meeting": "x"},
                tasks=[task("Do one", "2026-01-10 10:01", status="completed", closed="2026-01-11 09:00")])


def test_a_deal_closed_longer_ago_than_closed_look_back_is_history_an_open_deal_never_is() -> None:
    now = at("2026-11-20 12:00")
    stage_rules = {"R1", "R2", "R4", "R6"}

    def history(the_deal: Deal, compiled=COMPILED) -> set[str]:
        """The stage rules the deal breaks, and those of them too old to push."""
        found = [v for v in evaluate(the_deal, compiled, now) if v.rule in stage_rules]
        assert {v.rule for v in found} == stage_rules
        return {v.rule for v in found if beyond_look_back(v, compiled.directions["sales"], now)}

    assert history(won_by_skipping("2025-06-01 10:00")) == stage_rules  # won a year and a half ago: recorded only
    assert all(v.closed == at("2025-06-01 10:00") for v in evaluate(won_by_skipping("2025-06-01 10:00"), COMPILED, now))
    assert history(won_by_skipping("2026-11-19 10:00")) == set()  # won the same way yesterday: acted on
    assert history(won_by_skipping("2026-11-12 10:00")) == stage_rules  # 8 days ago: beyond the default 7d
    # the window is the rule's (a direction may override it too)
    wider = compile_regulation(regulation(REGULATION.replace("R1: {mode: warn,", "R1: {mode: warn, closed_look_back: 30d,")))
    assert history(won_by_skipping("2026-11-12 10:00"), wider) == stage_rules - {"R1"}
    # an open deal that skipped a stage long ago still breaks R1 now: acted on however old (closed is None)
    skipped_long_ago = deal("three", history=[entry("created", "one", "2025-03-02 10:00"),
                                              entry("moved", "three", "2025-03-03 10:00")], probability=80)
    open_found = [v for v in evaluate(skipped_long_ago, COMPILED, now) if v.rule in stage_rules]
    assert {v.rule for v in open_found} == stage_rules and all(v.closed is None for v in open_found)
    assert not [v for v in open_found if beyond_look_back(v, COMPILED.directions["sales"], now)]


def test_the_closing_of_a_deal_without_its_entry_into_won_is_the_crms_close_date() -> None:
    lost = deal("lost", history=[entry("created", "one", "2025-01-10 10:00")], closed_at="2025-02-01 10:00")
    assert closed_moment(lost) == at("2025-02-01 10:00")
    assert closed_moment(won_by_skipping("2025-06-01 10:00")) == at("2025-06-01 10:00")
    assert closed_moment(SKIPPING) is None

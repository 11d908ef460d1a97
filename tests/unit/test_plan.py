"""Planning (pure): violations of plain-value deals become the right actions, with stable idempotency keys."""

from __future__ import annotations

from datetime import datetime

import pytest
from regulation_kit import LOST, SPEC, WON, at, deal, entry, regulation, task

from crmbridge.enforce.plan import Action, ActionKind, PlanContext, marker_of, plan, same_value
from crmbridge.mapping.schema import BindingSpec
from crmbridge.model import Client, Deal, Mode
from crmbridge.regulation.compiled import compile_regulation
from crmbridge.regulation.evaluate import Evaluator

NOW = "2026-11-20 12:00"

BINDING = BindingSpec.model_validate({
    "pipelines": {"0": {"direction": "sales", "stages": {
        "CRM_one": "one", "CRM_two": "two", "CRM_three": "three", "CRM_four": "four", "CRM_won": "won",
        "CRM_lost": "lost"}},
        "1": {"direction": "other", "stages": {"CRM_x": "x", "CRM_y": "y", "CRM_won": "won", "CRM_lost": "lost"}}},
    "fields": {"segment": {"crm_field": "UF_SEGMENT", "options": {"131": "hot", "132": "warm", "133": "sleeping"}},
               "next_contact": "UF_NEXT", "reason": {"crm_field": "UF_REASON", "options": {"1": "expensive", "2": "not_now"}},
               "paid": "UF_PAID", "due": "UF_DUE", "first_contact": "UF_FIRST"},
    "teams": {"sales": {"members": ["2", "3", "4", "5"], "directions": ["sales", "other"]}},
    "heads": [{"user": "1"}, {"user": "2", "rules": ["R9"]}],
})


def planned(deals: list[Deal], *, modes: dict[str, Mode] | None = None, now: str = NOW, spec=SPEC,
            **context: object) -> list[Action]:
    """Plan with only the named rules acting; every other rule records (audit) and so plans nothing."""
    acting = {rule: Mode.AUDIT for rule in type(SPEC.rules).model_fields} | (modes or {})
    evaluator = Evaluator.of(spec, at(now), override_modes=acting)
    pairs = [(item, evaluator.violations(item)) for item in deals]
    ctx = PlanContext(evaluator.regulation, BINDING, at(now), **context)  # type: ignore[arg-type]
    return plan(pairs, ctx).actions


def kinds(actions: list[Action]) -> list[tuple[str, str]]:
    return sorted((action.rule, action.kind.value) for action in actions)


def skipped_deal(probability: int = 50) -> Deal:
    """Moved from one straight to three (R1), with one's task done and three's fields in order."""
    history = [entry("created", "one", "2026-11-10 10:00"), entry("moved", "three", "2026-11-20 11:50")]
    return deal("three", history=history, probability=probability,
                fields={"interest": "yes", "budget": 100, "meeting": at("2026-12-01 10:00").date()},
                tasks=[task("Do one", "2026-11-10 10:01", status="completed", closed="2026-11-19 10:00")])


def test_audit_mode_plans_nothing() -> None:
    assert planned([skipped_deal(probability=10)]) == []


def test_warn_tells_the_manager_and_does_not_touch_the_deal() -> None:
    actions = planned([skipped_deal()], modes={"R1": Mode.WARN})
    assert kinds(actions) == [("R1", "notify")]
    notice = actions[0]  # a notice: delivered later in the manager's digest (enforce/digest.py)
    assert notice.params["USER_ID"] == 3 and "R1" in notice.params["TEXT"] and notice.params["DEAL"] == 1
    assert notice.params["CLAUSE"] == notice.clause and notice.params["FORM"] == "digest"
    assert notice.method == "digest"


def test_enforce_reverts_a_skipped_stage_with_a_comment_naming_what_and_why() -> None:
    actions = planned([skipped_deal()], modes={"R1": Mode.ENFORCE, "R4": Mode.ENFORCE})
    # back in one, whose task was completed: one open task for it comes with the revert
    assert kinds(actions) == [("R1", "comment"), ("R1", "create_task"), ("R1", "notify"), ("R1", "revert_stage")]
    revert = next(a for a in actions if a.kind is ActionKind.REVERT_STAGE)
    # back to the stage the deal came from, with that stage's probability (R4 is enforce): no second round
    assert revert.params == {"id": 1, "fields": {"STAGE_ID": "CRM_one", "PROBABILITY": 10}}
    comment = next(a for a in actions if a.kind is ActionKind.COMMENT)
    text = comment.params["fields"]["COMMENT"]
    assert comment.params["fields"]["ENTITY_TYPE"] == "deal" and comment.params["fields"]["ENTITY_ID"] == 1
    assert "R1" in text and "Two" in text  # the rule and the skipped stage
    assert comment.marker in text


def test_a_move_back_is_never_reverted() -> None:
    history = [entry("created", "one", "2026-11-01 10:00"), entry("moved", "two", "2026-11-05 10:00"),
               entry("moved", "one", "2026-11-20 11:00")]
    actions = planned([deal("one", history=history, probability=10)], modes={rule: Mode.ENFORCE for rule in ("R1", "R2", "R3")})
    assert not [a for a in actions if a.kind is ActionKind.REVERT_STAGE]


def test_the_same_situation_planned_twice_gives_the_same_keys() -> None:
    first = planned([skipped_deal(probability=10)], modes={"R1": Mode.ENFORCE})
    second = planned([skipped_deal(probability=10)], modes={"R1": Mode.ENFORCE}, now="2026-11-20 12:30")
    assert [a.idempotency_key for a in first] == [a.idempotency_key for a in second]
    assert len({a.idempotency_key for a in first}) == len(first)
    assert all(a.marker == marker_of(a.idempotency_key) for a in first)


def test_loop_guard_escalates_to_the_head_instead_of_reverting_again() -> None:
    actions = planned([skipped_deal()], modes={"R1": Mode.ENFORCE}, reverts_today={"1": 3}, max_reverts_per_day=3)
    assert not [a for a in actions if a.kind is ActionKind.REVERT_STAGE]
    escalations = [a for a in actions if "|escalate:" in a.idempotency_key]
    assert [a.params["USER_ID"] for a in escalations] == [1]  # head 1 covers every rule; head 2 only R9
    assert "3" in escalations[0].params["TEXT"]
    below = planned([skipped_deal()], modes={"R1": Mode.ENFORCE}, reverts_today={"1": 2}, max_reverts_per_day=3)
    assert [a for a in below if a.kind is ActionKind.REVERT_STAGE]


def test_r3_stage_task_is_bound_to_the_deal_with_the_regulations_deadline() -> None:
    history = [entry("created", "one", "2026-11-20 10:00")]
    actions = planned([deal("one", history=history, probability=10)], modes={"R3": Mode.WARN})
    task_action = next(a for a in actions if a.kind is ActionKind.CREATE_TASK)
    fields = task_action.params["fields"]
    assert fields["TITLE"] == "Do one" and fields["RESPONSIBLE_ID"] == 3 and fields["UF_CRM_TASK"] == ["D_1"]
    assert datetime.fromisoformat(fields["DEADLINE"]) == at("2026-11-21 10:00")  # entered + task deadline 1d
    assert task_action.marker in fields["DESCRIPTION"]
    late = planned([deal("one", history=history, probability=10)], modes={"R3": Mode.WARN}, now="2026-11-25 12:00")
    late_task = next(a for a in late if a.kind is ActionKind.CREATE_TASK)
    assert datetime.fromisoformat(late_task.params["fields"]["DEADLINE"]) == at("2026-11-26 12:00")  # never past


def test_r3_task_is_not_set_again_when_the_bridge_moved_the_deal_back() -> None:
    history = [entry("created", "one", "2026-11-10 10:00"), entry("moved", "three", "2026-11-19 10:00"),
               entry("moved", "one", "2026-11-20 10:00")]
    tasks = [task("Do one", "2026-11-10 10:01")]
    actions = planned([deal("one", history=history, tasks=tasks, probability=10)], modes={"R3": Mode.ENFORCE})
    assert not [a for a in actions if a.kind is ActionKind.CREATE_TASK]


def test_r4_enforce_sets_the_stage_probability() -> None:
    actions = planned([deal("two", history=[entry("created", "two", "2026-11-20 10:00")], probability=80)],
                      modes={"R4": Mode.ENFORCE})
    fix = next(a for a in actions if a.kind is ActionKind.SET_FIELD)
    assert fix.rule == "R4" and fix.params == {"id": 1, "fields": {"PROBABILITY": 25}}


def test_r7_reassigns_round_robin_skipping_inactive_and_notifies_both() -> None:
    def lead(deal_id: str) -> Deal:
        return deal("x", direction="other", id=deal_id, history=[entry("created", "x", "2026-11-20 10:00", "other")],
                    probability=20, created="2026-11-20 10:00")
    modes = {"R7": Mode.ENFORCE}
    result = planned([lead("1"), lead("2"), lead("3")], modes=modes, active_users=frozenset({"1", "2", "3", "5"}))
    targets = [a.params["fields"]["ASSIGNED_BY_ID"] for a in result if a.kind is ActionKind.REASSIGN]
    assert targets == [2, 5, 2]  # 3 is the manager, 4 is inactive; the pointer moves on per lead
    first = [a for a in result if a.deal == "1" and a.kind is ActionKind.NOTIFY]
    assert {a.params["USER_ID"] for a in first} >= {3, 2}


def overdue_deal(due: str) -> Deal:
    return deal("four", history=[entry("created", "one", "2026-09-01 10:00"), entry("moved", "two", "2026-09-02 10:00"),
                                 entry("moved", "three", "2026-09-03 10:00"), entry("moved", "four", "2026-09-04 10:00")],
                probability=90, fields={"due": at(due).date(), "doc": "https://x"})


def test_flags_go_to_the_manager_as_a_task_and_to_the_head() -> None:
    actions = planned([overdue_deal("2026-11-16 10:00")], modes={"R9": Mode.WARN})
    r9 = [a for a in actions if a.rule == "R9"]
    assert sorted(a.kind.value for a in r9) == ["create_task", "notify", "notify"]
    assert {a.params["USER_ID"] for a in r9 if a.kind is ActionKind.NOTIFY} == {1, 2}
    assert next(a for a in r9 if a.kind is ActionKind.CREATE_TASK).params["fields"]["RESPONSIBLE_ID"] == 3


def test_breaches_older_than_their_rules_look_back_are_recorded_not_acted_on() -> None:
    acting = {rule: Mode.OFF for rule in type(SPEC.rules).model_fields} | {"R9": Mode.WARN, "R4": Mode.WARN}
    evaluator = Evaluator.of(SPEC, at(NOW), override_modes=acting)
    old = overdue_deal("2026-10-01 10:00")  # overdue since October: the deadline passed 7 weeks ago
    violations = evaluator.violations(old)
    assert {v.rule for v in violations} == {"R9"}  # still a breach: recorded by audit, shown in its report
    result = plan([(old, violations)], PlanContext(evaluator.regulation, BINDING, at(NOW)))
    assert result.actions == [] and result.old_breaches == {"R9": 1}
    # a rule about the deal's state now acts however old the deal is (R4: the probability is wrong today)
    stale_state = _with_probability(old, 10)
    later = plan([(stale_state, evaluator.violations(stale_state))], PlanContext(evaluator.regulation, BINDING, at(NOW)))
    assert {a.rule for a in later.actions} == {"R4"} and later.old_breaches == {"R9": 1}


def test_a_deal_closed_long_ago_is_history_not_reverted_nor_told_one_closed_yesterday_is_reverted() -> None:
    def won_from_two(closed: str) -> Deal:  # R1: Three and Four skipped; R2: no payment terms; R4: 50%
        history = [entry("created", "one", "2025-01-10 10:00"), entry("moved", "two", "2025-01-12 10:00"),
                   entry("closed", "won", closed)]
        return deal("won", history=history, probability=50, fields={"interest": "yes", "budget": 5, "meeting": "x"},
                    tasks=[task("Do one", "2025-01-10 10:01", status="completed", closed="2025-01-11 09:00")])

    acting = {rule: Mode.OFF for rule in type(SPEC.rules).model_fields} | {
        "R1": Mode.ENFORCE, "R2": Mode.ENFORCE, "R3": Mode.ENFORCE, "R4": Mode.ENFORCE, "R6": Mode.WARN}
    evaluator = Evaluator.of(SPEC, at(NOW), override_modes=acting)
    old = won_from_two("2025-06-01 10:00")  # won a year and a half ago through an illegal move
    violations = evaluator.violations(old)
    assert {v.rule for v in violations} == {"R1", "R2", "R4", "R6"}  # recorded: audit shows them
    result = plan([(old, violations)], PlanContext(evaluator.regulation, BINDING, at(NOW)))
    assert result.actions == [] and result.old_breaches == {"R1": 1, "R2": 1, "R4": 1, "R6": 1}
    fresh = won_from_two("2026-11-19 10:00")  # the same illegal move yesterday: moved back, told, tasked
    acted = plan([(fresh, evaluator.violations(fresh))], PlanContext(evaluator.regulation, BINDING, at(NOW)))
    assert {a.kind for a in acted.actions} >= {ActionKind.REVERT_STAGE, ActionKind.NOTIFY, ActionKind.CREATE_TASK}
    assert acted.old_breaches == {}
    # an open deal whose illegal move is as old is still moved back: its state now breaks R1
    open_old = deal("four", history=[entry("created", "one", "2025-01-10 10:00"), entry("moved", "two", "2025-01-12 10:00"),
                                     entry("moved", "four", "2025-06-01 10:00")], probability=90,
                    fields={"interest": "yes", "budget": 5, "meeting": "x"},
                    tasks=[task("Do one", "2025-01-10 10:01", status="completed", closed="2025-01-11 09:00")])
    still = plan([(open_old, evaluator.violations(open_old))], PlanContext(evaluator.regulation, BINDING, at(NOW)))
    assert ActionKind.REVERT_STAGE in {a.kind for a in still.actions} and still.old_breaches == {}


def _with_probability(the_deal: Deal, probability: int) -> Deal:
    from dataclasses import replace

    return replace(the_deal, probability=probability)


def test_tasks_and_notices_of_a_deactivated_manager_go_to_the_deals_team_head() -> None:
    binding = BINDING.model_copy(update={"heads": [BINDING.heads[0], BINDING.heads[1].model_copy(
        update={"directions": ["sales"], "rules": []})]})
    acting = {rule: Mode.AUDIT for rule in type(SPEC.rules).model_fields} | {"R9": Mode.WARN, "R1": Mode.WARN}
    evaluator = Evaluator.of(SPEC, at(NOW), override_modes=acting)
    deals = [overdue_deal("2026-11-16 10:00"), skipped_deal()]  # both managed by 3, who was deactivated
    result = plan([(d, evaluator.violations(d)) for d in deals],
                  PlanContext(evaluator.regulation, binding, at(NOW), active_users=frozenset({"1", "2", "4", "5"})))
    recipients = {a.recipient for a in result.actions}
    assert "3" not in recipients and recipients == {"1", "2"}  # 2 heads the deal's direction; 1 heads sales
    task = next(a for a in result.actions if a.kind is ActionKind.CREATE_TASK)
    assert task.params["fields"]["RESPONSIBLE_ID"] == 2
    assert result.rerouted == {"1": "2"} and any("deactivated" in note for note in result.notes)


def test_a_deactivated_managers_deal_is_reassigned_when_the_regulation_says_so() -> None:
    spec = SPEC.model_copy(update={"enforcement": SPEC.enforcement.model_copy(update={"inactive_manager": "reassign"})})
    result = planned([skipped_deal()], modes={"R1": Mode.ENFORCE}, spec=spec, active_users=frozenset({"1", "2", "4"}))
    handover = next(a for a in result if a.kind is ActionKind.REASSIGN)
    assert handover.params["fields"] == {"ASSIGNED_BY_ID": 2} and handover.idempotency_key == "inactive:1:3|reassign"
    assert {a.recipient for a in result if a.kind is ActionKind.NOTIFY} == {"2"}  # the new manager is told
    assert "3" not in {a.recipient for a in result}


def test_a_reverted_deal_gets_the_task_of_the_stage_it_is_back_in_not_of_the_one_it_left() -> None:
    # one -> three skipping two; three's task is missing (past R3's grace), one's task was completed
    history = [entry("created", "one", "2026-11-10 10:00"), entry("moved", "three", "2026-11-20 11:00")]
    jumped = deal("three", history=history, probability=50,
                  fields={"interest": "yes", "budget": 100, "meeting": at("2026-12-01 10:00").date()},
                  tasks=[task("Do one", "2026-11-10 10:01", status="completed", closed="2026-11-19 10:00")])
    actions = planned([jumped], modes={"R1": Mode.ENFORCE, "R3": Mode.ENFORCE})
    revert = next(a for a in actions if a.kind is ActionKind.REVERT_STAGE)
    tasks = [a for a in actions if a.kind is ActionKind.CREATE_TASK]
    assert [a.params["fields"]["TITLE"] for a in tasks] == ["Do one"]  # back in one: one open task for it
    assert tasks[0].group == revert.group == revert.idempotency_key  # completed with the revert after a crash
    # one's task still open: the deal is back where it has an open task, nothing new
    still_open = _with_tasks(jumped, [task("Do one", "2026-11-10 10:01")])
    assert not [a for a in planned([still_open], modes={"R1": Mode.ENFORCE, "R3": Mode.ENFORCE})
                if a.kind is ActionKind.CREATE_TASK]


def _with_tasks(the_deal: Deal, tasks: list) -> Deal:
    from dataclasses import replace

    return replace(the_deal, tasks=tuple(tasks))


def test_r10_enforce_writes_the_segment_option_of_the_crm() -> None:
    bought = deal(WON, history=[entry("created", "one", "2026-01-01 10:00"), entry("closed", WON, "2026-01-05 10:00")],
                  closed_at="2026-01-05 10:00", probability=100, fields={"terms": "prepaid", "segment": "hot"},
                  contact=Client("7", "contact", "C", ("+1",), ("a@b",)))
    actions = planned([bought], modes={"R10": Mode.ENFORCE}, now="2026-08-01 12:00")
    segment = next(a for a in actions if a.kind is ActionKind.SET_FIELD and a.rule == "R10")
    assert segment.params == {"id": 1, "fields": {"UF_SEGMENT": "133"}}  # sleeping


def test_r5_enforce_sets_a_future_next_contact_date_and_a_follow_up_on_it() -> None:
    lost = deal(LOST, history=[entry("created", "one", "2026-05-01 10:00"), entry("closed", LOST, "2026-06-10 10:00")],
                probability=0, fields={"reason": "not_now"})
    actions = planned([lost], modes={"R5": Mode.ENFORCE})
    date_fix = next(a for a in actions if a.kind is ActionKind.SET_FIELD)
    assert date_fix.params["fields"] == {"UF_NEXT": "2026-12-10"}  # 3 months is past, 6 months is ahead
    follow_up = next(a for a in actions if a.kind is ActionKind.CREATE_TASK)
    assert follow_up.params["fields"]["TITLE"] == "Call back"
    assert follow_up.params["fields"]["DEADLINE"].startswith("2026-12-10T10:00")


def test_notification_keys_do_not_depend_on_who_manages_the_deal_now() -> None:
    first = planned([skipped_deal()], modes={"R1": Mode.WARN})
    moved_on = planned([_with_manager(skipped_deal(), "5")], modes={"R1": Mode.WARN})
    assert [a.idempotency_key for a in first] == [a.idempotency_key for a in moved_on]


def _with_manager(the_deal: Deal, manager: str) -> Deal:
    from dataclasses import replace

    return replace(the_deal, manager=manager)


@pytest.mark.parametrize(("current", "wanted", "same"), [
    ("C1:NEW", "C1:NEW", True), ("50", 50, True), ("50.00", 50, True), ("2026-12-10T00:00:00+03:00", "2026-12-10", True),
    ("", None, True), ("C1:NEW", "C1:WON", False), ("3", 4, False), (["133"], "133", True),
])
def test_same_value_reads_back_what_an_update_wrote(current: object, wanted: object, same: bool) -> None:
    assert same_value(current, wanted) is same


def test_an_unbound_direction_gets_no_actions() -> None:
    spec = regulation()
    evaluator = Evaluator.of(compile_regulation(spec), at(NOW))
    lonely = deal("one", direction=None)
    assert plan([(lonely, evaluator.violations(lonely))], PlanContext(evaluator.regulation, BINDING, at(NOW))).actions == []

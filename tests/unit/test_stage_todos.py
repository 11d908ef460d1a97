"""A stage task the regulation wants as a CRM to-do (`kind: todo`): mapping, R3, planning and the cache."""

from __future__ import annotations

from datetime import datetime

from regulation_kit import REGULATION, at, deal, entry, regulation, task
from test_plan import planned

from crmbridge.cache import rows
from crmbridge.cache.store import open_cache
from crmbridge.enforce.execute import _outcome
from crmbridge.enforce.plan import ActionKind, marker_of
from crmbridge.mapping.binding import DealMapper
from crmbridge.model import TASK, TODO, Mode, Task, TaskStatus
from crmbridge.regulation.compiled import Context, compile_regulation
from crmbridge.regulation.evaluate import RULES
from test_mapping_binding import MODEL

#: stage one's task is a to-do; stage two's stays a task
TODO_SPEC = regulation(REGULATION.replace("task: {title: Do one, must_complete: true}",
                                          "task: {title: Do one, must_complete: true, kind: todo}", 1))
TODO_COMPILED = compile_regulation(TODO_SPEC)
NOW = "2026-11-20 12:00"


def todo(title: str, created: str, *, completed: bool = False, updated: str | None = None) -> Task:
    return Task(id=f"a-{title}", title=title, status=TaskStatus.COMPLETED if completed else TaskStatus.PENDING,
                responsible="3", created=at(created), closed=at(updated or created) if completed else None, kind=TODO)


def r3(the_deal, now: str = NOW):
    return RULES["R3"](the_deal, TODO_COMPILED.directions["sales"], Context(at(now), TODO_COMPILED, None))


def test_the_kind_defaults_to_task() -> None:
    assert regulation().directions["sales"].stages[0].task.kind == TASK
    assert TODO_SPEC.directions["sales"].stages[0].task.kind == TODO
    assert TODO_SPEC.directions["sales"].stages[1].task.kind == TASK


def test_r3_is_satisfied_by_an_open_to_do_of_the_stage() -> None:
    history = [entry("created", "one", "2026-11-20 10:00")]
    assert r3(deal("one", history=history, tasks=[todo("Do one", "2026-11-20 10:02")])) == ()


def test_r3_wants_the_kind_the_regulation_names() -> None:
    history = [entry("created", "one", "2026-11-20 10:00")]
    # a task with the to-do's title is not the stage's to-do ...
    (violation,) = r3(deal("one", history=history, tasks=[task("Do one", "2026-11-20 10:02")]))
    assert violation.missing == ("task:Do one",)
    # ... and a to-do does not stand in for a stage task either
    moved = [entry("created", "one", "2026-11-19 10:00"), entry("moved", "two", "2026-11-20 10:00")]
    done = todo("Do one", "2026-11-19 10:01", completed=True, updated="2026-11-19 18:00")
    (missing_task,) = r3(deal("two", history=moved, tasks=[done, todo("Do two", "2026-11-20 10:01")]))
    assert missing_task.missing == ("task:Do two",)


def test_r3_a_completed_to_do_lets_the_deal_leave_an_open_one_does_not() -> None:
    moved = [entry("created", "one", "2026-11-19 10:00"), entry("moved", "two", "2026-11-20 10:00")]
    done = todo("Do one", "2026-11-19 10:01", completed=True, updated="2026-11-19 18:00")
    assert r3(deal("two", history=moved, tasks=[done, task("Do two", "2026-11-20 10:01")])) == ()
    still_open = todo("Do one", "2026-11-19 10:01")
    (violation,) = r3(deal("two", history=moved, tasks=[still_open, task("Do two", "2026-11-20 10:01")]))
    assert violation.missing == ("task_not_completed:Do one",)


def test_planner_creates_a_to_do_with_the_regulations_deadline_and_a_stable_key() -> None:
    history = [entry("created", "one", "2026-11-20 10:00")]
    actions = planned([deal("one", history=history, probability=10)], modes={"R3": Mode.WARN}, spec=TODO_SPEC)
    assert not [a for a in actions if a.kind is ActionKind.CREATE_TASK]
    (action,) = [a for a in actions if a.kind is ActionKind.CREATE_TODO]
    assert action.method == "crm.activity.todo.add"
    assert action.idempotency_key == f"R3:1:{history[0].key}|stage_todo"
    params = action.params
    assert {key: params[key] for key in ("ownerTypeId", "ownerId", "title", "responsibleId")} == {
        "ownerTypeId": 2, "ownerId": 1, "title": "Do one", "responsibleId": 3}
    assert datetime.fromisoformat(params["deadline"]) == at("2026-11-21 10:00")  # entered + the task's 1d
    assert marker_of(action.idempotency_key) in params["description"]
    later = planned([deal("one", history=history, probability=10)], modes={"R3": Mode.WARN}, spec=TODO_SPEC,
                    now="2026-11-20 13:00")
    assert [a.idempotency_key for a in later if a.kind is ActionKind.CREATE_TODO] == [action.idempotency_key]


def test_planner_sets_no_second_to_do_when_the_bridge_moved_the_deal_back() -> None:
    history = [entry("created", "one", "2026-11-10 10:00"), entry("moved", "three", "2026-11-19 10:00"),
               entry("moved", "one", "2026-11-20 10:00")]
    existing = [todo("Do one", "2026-11-10 10:01")]
    actions = planned([deal("one", history=history, tasks=existing, probability=10)], modes={"R3": Mode.ENFORCE},
                      spec=TODO_SPEC)
    assert not [a for a in actions if a.kind in (ActionKind.CREATE_TODO, ActionKind.CREATE_TASK)]
    # a task of the same title is not the to-do: the to-do is still created
    tasks_only = [task("Do one", "2026-11-10 10:01")]
    again = planned([deal("one", history=history, tasks=tasks_only, probability=10)], modes={"R3": Mode.ENFORCE},
                    spec=TODO_SPEC)
    assert [a.kind for a in again if a.kind is ActionKind.CREATE_TODO] == [ActionKind.CREATE_TODO]


def test_the_answer_of_todo_add_is_kept_with_its_id() -> None:
    assert _outcome(ActionKind.CREATE_TODO, {"id": 999}) == ({"todo_id": "999"}, ["999"])


RAW_TODO = {"ID": "71", "OWNER_TYPE_ID": "2", "OWNER_ID": "37", "TYPE_ID": "6", "PROVIDER_ID": "CRM_TODO",
            "PROVIDER_TYPE_ID": "TODO", "SUBJECT": "Do one", "COMPLETED": "Y", "STATUS": "2", "RESPONSIBLE_ID": "3",
            "DEADLINE": "2026-11-21T10:00:00+03:00", "CREATED": "2026-11-20T10:01:00+03:00",
            "LAST_UPDATED": "2026-11-20T17:00:00+03:00"}


def test_activity_rows_and_their_mapping_to_a_to_do() -> None:
    row = rows.activity_row(RAW_TODO)
    assert (row["id"], row["deal_id"], row["completed"], row["responsible_id"], row["provider_id"]) == (
        71, 37, 1, 3, "CRM_TODO")
    assert rows.activity_row({**RAW_TODO, "OWNER_TYPE_ID": "3"})["deal_id"] is None  # a contact's, not a deal's
    mapped = DealMapper(TODO_SPEC, MODEL).todo(RAW_TODO)
    assert (mapped.kind, mapped.title, mapped.completed, mapped.responsible) == (TODO, "Do one", True, "3")
    assert mapped.closed == at("2026-11-20 17:00")  # completed: closed when last updated
    assert DealMapper(TODO_SPEC, MODEL).todo({**RAW_TODO, "COMPLETED": "N"}).closed is None


def test_cached_to_dos_join_the_deals_tasks() -> None:
    cache = open_cache(":memory:")
    raw_deal = {"ID": "37", "TITLE": "Alpha", "CATEGORY_ID": "0", "STAGE_ID": "NEW", "STAGE_SEMANTIC_ID": "P",
                "ASSIGNED_BY_ID": "3", "CLOSED": "N", "DATE_CREATE": "2026-11-20T10:00:00+03:00"}
    cache.upsert("deals", [rows.deal_row(raw_deal, "2026-11-20T10:00:00+00:00")])
    cache.upsert("activities", [rows.activity_row(RAW_TODO), rows.activity_row({**RAW_TODO, "ID": "72", "OWNER_ID": "38"})])
    (loaded,) = DealMapper(TODO_SPEC, MODEL).deals(cache.deals.records())
    assert [(item.id, item.kind, item.completed) for item in loaded.tasks] == [("71", TODO, True)]
    cache.close()

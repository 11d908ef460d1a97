"""The executor's edge cases against a scripted CRM: lookups that fail, and a one-writer lock broken during a run."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crmbridge.cache import open_cache
from crmbridge.cache.lock import WriterLock
from crmbridge.connectors.bitrix24.envelope import BatchResult
from crmbridge.enforce.audit import AuditLog
from crmbridge.enforce.execute import Executor
from crmbridge.enforce.plan import Action, ActionKind
from crmbridge.errors import LockLost, TransientCrmError

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self, start: datetime = T0) -> None:
        self.moment = start

    def __call__(self) -> datetime:
        return self.moment


class ScriptedCrm:
    """Just enough of Bitrix24Client for the Executor: write batches create tasks; lookups list them, or fail."""

    def __init__(self, *, on_write: Callable[[], None] | None = None) -> None:
        self.requests_made = 0
        self.write_batches = 0
        self.tasks: list[dict[str, Any]] = []
        self.lookups = "answer"  # "answer", "fail_in_place" (the client's answer after its retries), "raise"
        self.on_write = on_write

    def add_task(self, fields: Mapping[str, Any]) -> int:
        self.tasks.append({"id": str(len(self.tasks) + 1), "description": fields["DESCRIPTION"],
                           "ufCrmTask": list(fields["UF_CRM_TASK"])})
        return len(self.tasks)

    def batch(self, commands: Mapping[str, tuple[str, Mapping[str, Any]]], *, halt: bool = False,
              idempotent: bool = True) -> BatchResult:
        self.requests_made += 1
        self.write_batches += 1
        results = {}
        for key, (method, params) in commands.items():
            assert method == "tasks.task.add"
            results[key] = {"task": {"id": self.add_task(params["fields"])}}
        if self.on_write is not None:
            self.on_write()
        return BatchResult(results=results)

    def batch_calls(self, calls: list[tuple[str, Mapping[str, Any]]]) -> list[Any]:
        self.requests_made += 1
        if self.lookups == "raise":
            raise TransientCrmError("batch: HTTP 503 after 8 attempts", method="batch", status=503)
        out: list[Any] = []
        for method, params in calls:
            assert method == "tasks.task.list"
            if self.lookups == "fail_in_place":
                out.append(TransientCrmError("HTTP 500", method=method, status=500, code="INTERNAL_SERVER_ERROR"))
            else:
                wanted = params["filter"]["UF_CRM_TASK"]
                out.append({"tasks": [task for task in self.tasks if wanted in task["ufCrmTask"]]})
        return out


def task_action(deal: int) -> Action:
    key = f"R11:{deal}:2026-11-01|task"
    action = Action(key, ActionKind.CREATE_TASK, "R11", str(deal), {}, "task", "stale deal", recipient="3")
    fields = {"TITLE": "Stale", "DESCRIPTION": f"Stale deal\n{action.marker}", "RESPONSIBLE_ID": 3,
              "UF_CRM_TASK": [f"D_{deal}"]}
    return Action(key, ActionKind.CREATE_TASK, "R11", str(deal), {"fields": fields}, "task", "stale deal",
                  recipient="3")


@pytest.fixture
def audit() -> AuditLog:
    return AuditLog(open_cache(":memory:"))


@pytest.mark.parametrize("failure", ["fail_in_place", "raise"])
def test_an_intent_whose_lookup_fails_is_not_sent_again_in_the_same_run(audit: AuditLog, failure: str) -> None:
    actions = [task_action(deal) for deal in (1, 2, 3)]
    crm = ScriptedCrm()
    # an earlier run was killed after its batch landed and before it recorded the results
    audit.record_intents([(action, action.params) for action in actions], "killed", T0)
    for action in actions:
        crm.add_task(action.params["fields"])
    crm.lookups = failure  # this run cannot look them up: the CRM does not answer the lookups
    executor = Executor(crm, audit, now=Clock(), sleep=lambda seconds: None)
    reconciled = executor.reconcile()
    summary = executor.execute(actions)  # the plan still wants them (run.py: still_to_write keeps intents)
    assert crm.write_batches == 0 and len(crm.tasks) == 3  # nothing sent again: they may have landed (they did)
    assert (summary.sent, summary.unknown) == (0, 3)
    assert (reconciled.found, reconciled.not_found) == (0, 0)
    assert reconciled.unknown == {action.idempotency_key for action in actions}
    assert [row["idempotency_key"] for row in audit.pending()] == [action.idempotency_key for action in actions]
    # a later run, the CRM answering again, finds them by their marker
    crm.lookups = "answer"
    later = Executor(crm, audit, now=Clock(), sleep=lambda seconds: None)
    assert later.reconcile() == (3, 0, frozenset())
    assert later.execute(actions).already_done == 3 and crm.write_batches == 0 and len(crm.tasks) == 3
    assert audit.pending() == []


def test_a_run_whose_lock_was_broken_stops_writing(audit: AuditLog, tmp_path) -> None:
    clock = Clock()
    cache_path = tmp_path / "cache.db"
    lock = WriterLock(cache_path, "enforce", "slow")
    lock.acquire(now=clock())

    def stuck_then_broken() -> None:
        clock.moment += timedelta(minutes=45)
        WriterLock(cache_path, "enforce", "other").acquire(break_lock=True, now=clock())  # `enforce --break-lock`

    crm = ScriptedCrm(on_write=stuck_then_broken)
    executor = Executor(crm, audit, run_id="slow", lock=lock, now=clock, sleep=lambda seconds: None)
    with pytest.raises(LockLost, match="lost its lock to run other"):
        executor.execute([task_action(deal) for deal in range(1, 121)])
    assert crm.write_batches == 1  # the first batch is recorded, the rest is left to the run holding the lock
    assert len(audit.entries(status="done")) == 50
    lock.release()

"""The audit log's own logic: intents and outcomes, the loop guard's counter, `--since` parsing."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from crmbridge.cache import open_cache
from crmbridge.enforce.audit import AuditLog, parse_since
from crmbridge.enforce.plan import Action, ActionKind

MSK = ZoneInfo("Europe/Moscow")


def revert(deal: str, entry: str, target: str) -> Action:
    return Action(f"revert:{deal}:{entry}", ActionKind.REVERT_STAGE, "R1", deal,
                  {"id": int(deal), "fields": {"STAGE_ID": target}}, "move back", "R1: skipped", "R1 clause", ("k",))


@pytest.fixture
def audit() -> AuditLog:
    return AuditLog(open_cache(":memory:"))


def test_an_intent_becomes_done_with_the_ids_the_crm_created(audit: AuditLog) -> None:
    action = Action("R3:1:x|stage_task", ActionKind.CREATE_TASK, "R3", "1", {"fields": {"TITLE": "T"}}, "task", "why",
                    recipient="3")
    now = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    audit.record_intents([(action, action.params)], "run1", now)
    assert [row["idempotency_key"] for row in audit.pending()] == [action.idempotency_key]
    audit.record_intents([(action, action.params)], "run2", now)  # sent again: one row, two attempts
    audit.record_outcomes([(action.idempotency_key, {"task_id": "77"}, ["77"])], [], now)
    (entry,) = audit.entries()
    assert (entry.status, entry.crm_ids, entry.attempts, entry.rule, entry.deal) == ("done", ["77"], 2, "R3", 1)
    assert audit.pending() == []


def test_reverts_today_count_done_reverts_since_local_midnight(audit: AuditLog) -> None:
    now = datetime(2026, 11, 20, 10, 0, tzinfo=MSK)
    yesterday = now - timedelta(hours=11)  # 23:00 the day before, Moscow time
    for action, moment in ((revert("5", "a", "S1"), yesterday), (revert("5", "b", "S1"), now),
                           (revert("5", "c", "S1"), now), (revert("6", "a", "S2"), now)):
        audit.record_intents([(action, action.params)], "run", moment)
        audit.record_outcomes([(action.idempotency_key, True, [])], [], moment)
    pending_only = revert("6", "b", "S2")
    audit.record_intents([(pending_only, pending_only.params)], "run", now)  # not known to have landed
    assert audit.reverts_today(now, MSK) == {"5": 2, "6": 1}
    assert audit.reverted_entries() == {"5": {"a": "S1", "b": "S1", "c": "S1"}, "6": {"a": "S2"}}


def test_log_filters_by_deal_rule_status_and_since(audit: AuditLog) -> None:
    old, new = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 20, tzinfo=UTC)
    first, second = revert("5", "a", "S1"), revert("6", "a", "S2")
    audit.record_intents([(first, first.params)], "run", old)
    audit.record_intents([(second, second.params)], "run", new)
    audit.record_outcomes([], [(second.idempotency_key, "CrmRejected: Not found")], new)
    assert [e.deal for e in audit.entries(deal=5)] == [5]
    assert [e.deal for e in audit.entries(since=datetime(2026, 11, 10, tzinfo=UTC))] == [6]
    assert [e.error for e in audit.entries(status="failed")] == ["CrmRejected: Not found"]
    assert audit.entries(rule="R11") == [] and len(audit.entries(rule="R1")) == 2


def test_since_takes_dates_times_and_spans() -> None:
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("1d", now) == now - timedelta(days=1)
    assert parse_since("2026-11-19", now) == datetime(2026, 11, 19, tzinfo=UTC)
    assert parse_since("2026-11-19T10:00+03:00", now) == datetime(2026, 11, 19, 7, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="--since"):
        parse_since("last tuesday", now)


def test_one_enforce_run_writes_at_a_time(audit: AuditLog) -> None:
    now = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    assert audit.acquire_lock("first", now) is None
    assert audit.acquire_lock("second", now + timedelta(minutes=5)) == f"run first since {now.isoformat()}"
    assert audit.acquire_lock("first", now + timedelta(minutes=5)) is None  # the holder may take it again
    assert audit.acquire_lock("third", now + timedelta(hours=1)) is None  # a dead run's lock is taken over
    audit.release_lock("third")
    assert audit.acquire_lock("second", now + timedelta(hours=1)) is None


def test_two_runs_racing_for_the_lock_one_takes_it_and_the_other_is_told_who_holds_it(tmp_path, monkeypatch) -> None:
    """Two enforce runs on one cache file, each with its own connection: the second asks for the lock between the
    first one's read and its write. It waits for the first one and is told who holds the lock (no SQLITE_BUSY)."""
    path = tmp_path / "cache.db"
    first = AuditLog(open_cache(path))
    now = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    ready, go = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def second_run() -> None:
        second = AuditLog(open_cache(path))  # a connection of its own, in its own thread
        ready.set()
        go.wait(timeout=30)
        try:
            outcome["second"] = second.acquire_lock("second", now)
        except Exception as exc:  # noqa: BLE001 - the test reports it
            outcome["second"] = exc
        finally:
            second.cache.close()

    racer = threading.Thread(target=second_run)
    racer.start()
    assert ready.wait(timeout=30)
    real_query = first.cache.query

    def query_then_race(sql: str, params: object = None) -> list:
        rows = real_query(sql, params)  # type: ignore[arg-type]
        if "enforce_state" in sql and not go.is_set():
            go.set()
            racer.join(timeout=0.5)  # the second run gets every chance to slip in between the read and the write
        return rows

    monkeypatch.setattr(first.cache, "query", query_then_race)
    try:
        assert first.acquire_lock("first", now) is None
        racer.join(timeout=30)
        assert outcome["second"] == f"run first since {now.isoformat()}"
    finally:
        go.set()
        racer.join(timeout=30)
        first.cache.close()

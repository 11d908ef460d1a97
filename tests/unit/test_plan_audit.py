"""The audit log's own logic: intents and outcomes, the loop guard's counter, `--since` parsing."""

from __future__ import annotations

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

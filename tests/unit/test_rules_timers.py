"""Table tests of the timer rules R7 (response time), R8 (payment in 72 h), R9 (receivables), R11 (stale deals)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from crmbridge.mapping.schema import CalendarSpec
from crmbridge.regulation.calendar import WorkingCalendar
from crmbridge.regulation.timers import receivable_reminders
from regulation_kit import LOST, WON, at, deal, entry, run, task

# ---------------------------------------------------------------- R7 (SLA 1h of working time, 09:00-18:00 Moscow)

R7_CASES = [
    # (case, created, first contact or None, now, violated)
    ("waiting within the hour", "2026-11-20 10:00", None, "2026-11-20 10:59", False),
    ("not contacted after the hour", "2026-11-20 10:00", None, "2026-11-20 11:01", True),
    ("created Friday 17:30, Monday 09:29 is still in time", "2026-11-20 17:30", None, "2026-11-23 09:29", False),
    ("created Friday 17:30, Monday 09:31 is late", "2026-11-20 17:30", None, "2026-11-23 09:31", True),
    ("created at night, the clock starts at 09:00", "2026-11-19 23:00", None, "2026-11-20 09:59", False),
    ("a holiday does not count", "2026-11-03 17:30", None, "2026-11-05 09:29", False),
    ("contacted in 40 minutes", "2026-11-20 10:00", "2026-11-20 10:40", "2026-11-21 12:00", False),
    ("contacted after 2 working hours", "2026-11-20 10:00", "2026-11-20 12:00", "2026-11-21 12:00", True),
    ("UTC timestamps compare correctly", "2026-11-20 10:00", "2026-11-20T07:30:00+00:00", "2026-11-21 12:00", False),
]


@pytest.mark.parametrize("case,created,contacted,now,violated", R7_CASES, ids=[case[0] for case in R7_CASES])
def test_r7_response_time(case: str, created: str, contacted: str | None, now: str, violated: bool) -> None:
    fields = {"first_contact": at(contacted)} if contacted else {}
    result = run("R7", deal("one", created=created, fields=fields), now)
    assert (result != ()) is violated
    if violated:
        assert result[0].details["contacted"] is bool(contacted)


def test_r7_direction_override_counts_plain_minutes() -> None:
    history = [entry("created", "x", "2026-11-21 23:00", "other")]
    late = run("R7", deal("x", direction="other", history=history), "2026-11-21 23:06")
    assert late and late[0].details["waited_minutes"] == 6


@pytest.mark.parametrize("stage,reassign", [("one", True), ("two", False), (LOST, False)])
def test_r7_reassigns_only_leads_still_waiting(stage: str, reassign: bool) -> None:
    (violation,) = run("R7", deal(stage), "2026-11-25 12:00")
    assert violation.details["contacted"] is False
    assert violation.details["reassign"] is reassign


def test_r7_messages_show_durations() -> None:
    (violation,) = run("R7", deal("one", created="2026-11-20 10:00"), "2026-11-20 12:30")
    assert violation.values["waited"].span.total_seconds() == 2.5 * 3600
    assert str(violation.values["waited"]) == "2h30m" and f"{violation.values['sla']}" == "1h"

# ---------------------------------------------------------------- R8

AGREED = [entry("created", "one", "2026-11-01 10:00"), entry("moved", "two", "2026-11-02 10:00"),
          entry("moved", "three", "2026-11-03 10:00"), entry("moved", "four", "2026-11-10 10:00")]


@pytest.mark.parametrize("now,paid,expected", [
    ("2026-11-13 09:59", None, ()),
    ("2026-11-13 10:01", None, "violated"),
    ("2026-11-20 10:00", date(2026, 11, 12), ()),
])
def test_r8_payment_within_72_hours(now: str, paid: date | None, expected) -> None:
    result = run("R8", deal("four", history=AGREED, fields={"paid": paid} if paid else {}), now)
    if expected == "violated":
        (violation,) = result
        assert violation.since == at("2026-11-13 10:00") and violation.entry == AGREED[-1]
    else:
        assert result == expected


def test_r8_not_before_agreement() -> None:
    assert run("R8", deal("two", history=AGREED[:2])) is None
    assert run("R8", deal(LOST, history=AGREED + [entry("closed", LOST, "2026-11-11 10:00")])) is None


def test_r8_agreement_can_be_the_won_stage() -> None:
    from regulation_kit import REGULATION, regulation
    from crmbridge.regulation.compiled import Context, compile_regulation
    from crmbridge.regulation.timers import check_r8

    compiled = compile_regulation(regulation(REGULATION.replace("from_stages: [four]", "from_stages: [won]")))
    won = AGREED + [entry("closed", WON, "2026-11-12 10:00")]
    direction = compiled.directions["sales"]
    late = check_r8(deal(WON, history=won), direction, Context(at("2026-11-15 10:01"), compiled))
    assert late and late[0].since == at("2026-11-15 10:00") and late[0].entry == won[-1]
    assert check_r8(deal(WON, history=won), direction, Context(at("2026-11-15 09:59"), compiled)) == ()
    assert check_r8(deal("four", history=AGREED), direction, Context(at("2026-11-20 10:00"), compiled)) is None

# ---------------------------------------------------------------- R9


@pytest.mark.parametrize("stage,fields,now,overdue_days", [
    (WON, {"due": date(2026, 11, 19)}, "2026-11-20 12:00", 1),
    (WON, {"due": date(2026, 11, 20)}, "2026-11-20 23:59", None),
    (WON, {"due": date(2026, 11, 1), "paid": date(2026, 11, 2)}, "2026-11-20 12:00", None),
    ("four", {"due": date(2026, 11, 10)}, "2026-11-20 12:00", 10),
])
def test_r9_overdue(stage: str, fields: dict, now: str, overdue_days: int | None) -> None:
    result = run("R9", deal(stage, fields=fields), now)
    if overdue_days is None:
        assert result == ()
    else:
        (violation,) = result
        assert violation.details["overdue_days"] == overdue_days


def test_r9_not_applicable_without_due_date_or_when_lost() -> None:
    assert run("R9", deal(WON)) is None
    assert run("R9", deal(LOST, fields={"due": date(2026, 1, 1)})) is None


def test_r9_instalment_reminders() -> None:
    assert receivable_reminders(date(2026, 11, 1), date(2026, 12, 1)) == [
        ("middle", date(2026, 11, 16)), ("day_before", date(2026, 11, 30))]
    assert receivable_reminders(date(2026, 11, 1), date(2026, 11, 1)) == []

# ---------------------------------------------------------------- R11


@pytest.mark.parametrize("case,stage,entered,activity,tasks,now,violated", [
    ("fresh", "two", "2026-11-10 10:00", None, [], "2026-11-20 10:00", False),
    ("idle 15 days", "two", "2026-11-01 10:00", None, [], "2026-11-16 11:00", True),
    ("a task revives the deal", "two", "2026-11-01 10:00", None, [task("Call", "2026-11-10 10:00")], "2026-11-20 10:00", False),
    ("last activity counts", "two", "2026-11-01 10:00", "2026-11-12 10:00", [], "2026-11-20 10:00", False),
    ("stage override 3d", "three", "2026-11-10 10:00", None, [], "2026-11-14 10:00", True),
    ("closed deals are not stale", WON, "2026-01-01 10:00", None, [], "2026-11-20 10:00", None),
])
def test_r11_stale(case: str, stage: str, entered: str, activity: str | None, tasks: list, now: str, violated) -> None:
    history = [entry("created", stage, entered)]
    result = run("R11", deal(stage, history=history, last_activity=activity, tasks=tasks), now)
    if violated is None:
        assert result is None
    else:
        assert bool(result) is violated

def test_r11_crmbridges_own_revert_is_no_activity_unless_it_reopened_a_closed_deal() -> None:
    from dataclasses import replace

    # a person skipped from one to three on Nov 1 and nobody touched the deal since; crmbridge moved it back today
    skipped = [entry("created", "one", "2026-10-20 10:00"), entry("moved", "three", "2026-11-01 10:00")]
    moved_back = replace(entry("moved", "one", "2026-11-20 09:00"), by_bridge=True)
    before = run("R11", deal("three", history=skipped), "2026-11-20 08:00")
    after = run("R11", deal("one", history=[*skipped, moved_back]), "2026-11-20 12:00")
    assert before and after and after[0].key == before[0].key  # still stale, the same breach: no second task
    # the same move made by a person is activity: a fresh stage entry
    assert run("R11", deal("one", history=[*skipped, replace(moved_back, by_bridge=False)]), "2026-11-20 12:00") == ()
    # a deal it reopened (moved back from won) starts anew: the revert's notice and stage task ask for the work
    won = [entry("created", "one", "2026-10-20 10:00"), entry("closed", WON, "2026-11-01 10:00")]
    assert run("R11", deal("one", history=[*won, moved_back]), "2026-11-20 12:00") == ()


# ---------------------------------------------------------------- the working calendar


def test_calendar_elapsed_matches_a_day_by_day_count_over_months() -> None:
    calendar = WorkingCalendar(CalendarSpec(holidays=[date(2026, 3, 9), date(2026, 5, 1)]))
    start, end = at("2026-01-05 13:00"), at("2026-07-08 11:30")
    expected = timedelta(0)
    moment = start
    while moment < end:
        step = min(end, moment + timedelta(minutes=30))
        local = moment.astimezone(calendar.zone)
        if calendar.is_working_day(local.date()) and 9 <= local.hour < 18:
            expected += step - moment
        moment = step
    assert calendar.elapsed(start, end) == expected


def test_calendar_add_and_elapsed_agree() -> None:
    calendar = WorkingCalendar(CalendarSpec())
    start = datetime(2026, 11, 20, 14, 0, tzinfo=timezone.utc)  # 17:00 in Moscow, Friday
    deadline = calendar.add(start, timedelta(hours=2))
    assert deadline == at("2026-11-23 10:00")
    assert calendar.elapsed(start, deadline) == timedelta(hours=2)


def test_without_calendar_time_is_plain() -> None:
    calendar = WorkingCalendar(None)
    start = at("2026-11-21 23:00")
    assert calendar.add(start, timedelta(hours=1)) == at("2026-11-22 00:00")

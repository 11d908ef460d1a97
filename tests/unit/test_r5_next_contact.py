"""R5 never plans a next-contact date or a follow-up in the past: the nearest 3/6/9-month option still ahead; a client
postponed longer ago than the last option is history (recorded and shown by audit, not acted on)."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest
from regulation_kit import LOST, MSK, REGULATION, at, deal, entry, regulation
from test_plan import BINDING, planned

from crmbridge.enforce.plan import ActionKind, PlanContext, plan
from crmbridge.model import Mode
from crmbridge.regulation.clients import next_contact_day
from crmbridge.regulation.evaluate import Evaluator, beyond_look_back

NOW = "2026-12-02 12:00"
#: the shipped options: 3, 6 or 9 months after the refusal
SPEC_369 = regulation(REGULATION.replace("months: [3, 6]", "months: [3, 6, 9]"))


@pytest.mark.parametrize(("lost", "expected"), [
    ("2026-10-02 15:00", date(2027, 1, 2)),  # lost 2 months ago: the 3-month date
    ("2026-08-02 15:00", date(2027, 2, 2)),  # lost 4 months ago: 3 months passed, the 6-month date
    ("2026-03-02 15:00", date(2026, 12, 2)),  # lost 9 months ago today: today's 9-month date still counts
    ("2026-03-01 15:00", None),  # the 9-month date was yesterday: every option passed
    ("2026-02-02 15:00", None),  # lost 10 months ago: history
])
def test_the_nearest_option_not_yet_passed(lost: str, expected: date | None) -> None:
    assert next_contact_day(at(lost), [3, 6, 9], at(NOW), MSK) == expected


def test_days_are_counted_in_the_regulations_zone() -> None:
    # 22:30 UTC on 1 March is already 2 March in Moscow: the 9-month date is today there, not yesterday
    lost = datetime(2026, 3, 1, 22, 30, tzinfo=timezone.utc)
    assert next_contact_day(lost, [9, 3, 6], at(NOW), MSK) == date(2026, 12, 2)
    assert next_contact_day(lost, [3, 6, 9], at(NOW), timezone.utc) is None


def postponed(lost: str, deal_id: str = "1") -> object:
    return deal(LOST, history=[entry("created", "one", "2026-01-05 10:00"), entry("closed", LOST, lost)],
                probability=0, fields={"reason": "not_now"}, id=deal_id)


def test_enforce_writes_the_nearest_future_option_and_tasks_the_manager_on_it() -> None:
    actions = planned([postponed("2026-10-02 15:00", "1"), postponed("2026-08-02 15:00", "2")],
                      modes={"R5": Mode.ENFORCE}, now=NOW, spec=SPEC_369)
    writes = {a.deal: a.params["fields"] for a in actions if a.kind is ActionKind.SET_FIELD}
    assert writes == {"1": {"UF_NEXT": "2027-01-02"}, "2": {"UF_NEXT": "2027-02-02"}}
    deadlines = {a.deal: a.params["fields"]["DEADLINE"][:16] for a in actions if a.kind is ActionKind.CREATE_TASK}
    assert deadlines == {"1": "2027-01-02T10:00", "2": "2027-02-02T10:00"}


@pytest.mark.parametrize("mode", [Mode.WARN, Mode.ENFORCE])
def test_a_client_postponed_past_every_option_is_history(mode: Mode) -> None:
    """Lost 10 months ago with no next-contact date: recorded (the violation stands, audit marks it beyond look-back),
    but no field is written, nobody is tasked or told."""
    lost = postponed("2026-02-02 15:00")
    evaluator = Evaluator.of(SPEC_369, at(NOW), override_modes={"R5": mode})
    found = [v for v in evaluator.violations(lost) if v.rule == "R5"]
    assert [v.missing for v in found] == [("next_contact",)]  # the breach itself is still judged (pure, clock-free)
    assert beyond_look_back(found[0], evaluator.regulation.directions["sales"], at(NOW))
    result = plan([(lost, found)], PlanContext(evaluator.regulation, BINDING, at(NOW)))
    assert result.actions == [] and result.old_breaches == {"R5": 1}


def test_a_date_already_set_but_passed_gets_a_follow_up_ahead_not_in_the_past() -> None:
    """The manager set the 3-month date (passed yesterday) and no task: the follow-up is due from now on."""
    lost = deal(LOST, history=[entry("created", "one", "2026-01-05 10:00"), entry("closed", LOST, "2026-09-01 15:00")],
                probability=0, fields={"reason": "not_now", "next_contact": date(2026, 12, 1)})
    actions = planned([lost], modes={"R5": Mode.ENFORCE}, now=NOW, spec=SPEC_369)
    assert not [a for a in actions if a.kind is ActionKind.SET_FIELD]
    (follow_up,) = [a for a in actions if a.kind is ActionKind.CREATE_TASK]
    assert datetime.fromisoformat(follow_up.params["fields"]["DEADLINE"]) > at(NOW)

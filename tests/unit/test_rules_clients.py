"""Table tests of the client rules R5 (postponed clients), R6 (contact data), R10 (segments)."""

from __future__ import annotations

from datetime import date

import pytest

from crmbridge.model import Client
from crmbridge.regulation.clients import add_months, last_purchases
from crmbridge.regulation.compiled import Context
from regulation_kit import COMPILED, LOST, WON, assert_verdict, at, deal, entry, run, task

LOST_ON = [entry("created", "one", "2026-08-01 10:00"), entry("closed", LOST, "2026-08-20 10:00")]

# ---------------------------------------------------------------- R5

R5_CASES = [
    ("lost for another reason", {"reason": "expensive"}, [], None),
    ("postponed, no next-contact date", {"reason": "not_now"}, [], ["next_contact"]),
    ("postponed 3 months with a follow-up task", {"reason": "not_now", "next_contact": date(2026, 11, 20)},
     [task("Call", "2026-08-20 10:05", deadline="2026-11-20 12:00")], []),
    ("postponed 6 months, task a day off is fine", {"reason": "not_now", "next_contact": date(2027, 2, 22)},
     [task("Call", "2026-08-20 10:05", deadline="2027-02-21 12:00")], []),
    ("next contact after 2 months is not a regulated delay", {"reason": "not_now", "next_contact": date(2026, 10, 20)},
     [task("Call", "2026-08-20 10:05", deadline="2026-10-20 12:00")], ["next_contact"]),
    ("no follow-up task", {"reason": "not_now", "next_contact": date(2026, 11, 20)}, [], ["task:Call back"]),
]


@pytest.mark.parametrize("case,fields,tasks,missing", R5_CASES, ids=[case[0] for case in R5_CASES])
def test_r5_postponed(case: str, fields: dict, tasks: list, missing: list | None) -> None:
    violation = assert_verdict(run("R5", deal(LOST, history=LOST_ON, fields=fields, tasks=tasks)), missing)
    if violation is not None:
        assert violation.since == at("2026-08-20 10:00")


def test_r5_not_applicable_to_open_deals() -> None:
    assert run("R5", deal("one", fields={"reason": "not_now"})) is None


def test_add_months_clamps_to_month_end() -> None:
    assert add_months(date(2026, 8, 31), 6) == date(2027, 2, 28)
    assert add_months(date(2026, 11, 15), 3) == date(2027, 2, 15)

# ---------------------------------------------------------------- R6

FULL = Client("5", "contact", "Ivan", ("+7 900",), ("i@x.ru",))
NO_EMAIL = Client("5", "contact", "Ivan", ("+7 900",), ())
COMPANY_EMAIL = Client("8", "company", "LLC", (), ("a@llc.ru",))

R6_CASES = [
    ("before the named stage", "one", NO_EMAIL, None, None),
    ("in the named stage with full data", "two", FULL, None, []),
    ("in the named stage without e-mail", "two", NO_EMAIL, None, ["email"]),
    ("a later stage without e-mail", "four", NO_EMAIL, None, ["email"]),
    ("company card completes the contact", "three", NO_EMAIL, COMPANY_EMAIL, []),
    ("no client at all", "two", None, None, ["phone", "email"]),
    ("won without e-mail", WON, NO_EMAIL, None, ["email"]),
    ("lost deals are not checked", LOST, None, None, None),
]


@pytest.mark.parametrize("case,stage,contact,company,missing", R6_CASES, ids=[case[0] for case in R6_CASES])
def test_r6_contact_data(case: str, stage: str, contact, company, missing: list | None) -> None:
    assert_verdict(run("R6", deal(stage, contact=contact, company=company)), missing)

# ---------------------------------------------------------------- R10

BOUGHT = [entry("created", "one", "2026-01-10 10:00"), entry("closed", WON, "2026-01-20 10:00")]

R10_CASES = [
    # (case, paid date, segment, last task created, now, missing or None)
    ("hot and touched", date(2026, 11, 10), "hot", "2026-11-15 10:00", "2026-11-20 12:00", []),
    ("hot but no touch for over a week", date(2026, 11, 1), "hot", None, "2026-11-20 12:00", ["touch"]),
    ("bought 3.5 months ago, still marked hot", date(2026, 8, 5), "hot", "2026-11-15 10:00", "2026-11-20 12:00", ["segment"]),
    ("between segments nothing is checked", date(2026, 9, 20), None, None, "2026-11-20 12:00", None),
    ("sleeping client marked sleeping", date(2026, 3, 1), "sleeping", None, "2026-11-20 12:00", []),
    ("sleeping client with no segment", date(2026, 3, 1), None, None, "2026-11-20 12:00", ["segment"]),
]


@pytest.mark.parametrize("case,paid,segment,touched,now,missing", R10_CASES, ids=[case[0] for case in R10_CASES])
def test_r10_segments(case: str, paid: date, segment: str | None, touched: str | None, now: str, missing: list | None) -> None:
    fields = {"paid": paid} | ({"segment": segment} if segment else {})
    tasks = [task("Touch", touched)] if touched else []
    assert_verdict(run("R10", deal(WON, history=BOUGHT, fields=fields, tasks=tasks, contact=FULL), now), missing)


def test_r10_only_the_latest_purchase_of_a_client_counts() -> None:
    older = deal(WON, id="1", history=BOUGHT, fields={"paid": date(2026, 3, 1)}, contact=FULL)
    newer = deal(WON, id="2", history=BOUGHT, fields={"paid": date(2026, 11, 10), "segment": "hot"}, contact=FULL,
                 tasks=[task("Touch", "2026-11-18 10:00")])
    purchases = last_purchases([older, newer], Context(at("2026-11-20 12:00"), COMPILED))
    assert purchases["contact:5"][1] == "2"
    assert run("R10", older, purchases=purchases) is None
    assert run("R10", newer, purchases=purchases) == ()


def test_r10_open_deals_are_not_purchases() -> None:
    assert run("R10", deal("two", contact=FULL)) is None

"""Seeded data: deterministic, fast, and exactly the planted regulation violations (no more, no fewer)."""

from __future__ import annotations

import time
from datetime import date, datetime
from typing import Any

from crmbridge.sandbox import SandboxPortal
from crmbridge.sandbox import catalog as c
from crmbridge.sandbox.seed import working_seconds

NOW = 1_780_000_000.0
DAY = 86400.0


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def _date_ts(value: str) -> float:
    return datetime.fromisoformat(value + "T00:00:00+03:00").timestamp()


def _violations(p: SandboxPortal, deal: dict[str, Any], history: list[dict[str, Any]],
                tasks: list[dict[str, Any]]) -> set[str]:
    """An independent reading of the rules listed in crmbridge.sandbox.seed's docstring (R1..R11)."""
    found: set[str] = set()
    stage = c.STAGE_BY_ID[deal["STAGE_ID"]]
    category = int(deal["CATEGORY_ID"])
    process = [s.status_id for s in c.process_stages(category)]
    visited = [h["STAGE_ID"] for h in sorted(history, key=lambda h: h["ID"])]
    proc_visited = [s for s in visited if s in process]
    if proc_visited and proc_visited != process[:len(proc_visited)]:
        found.add("skipped_stage")
    if stage.semantics == "S" and proc_visited != process:
        found.add("skipped_stage")
    # the stages a deal has reached in pipeline order, whatever its history says
    if stage.semantics == "P":
        reached = process[:process.index(deal["STAGE_ID"]) + 1]
    elif stage.semantics == "S":
        reached = process + [deal["STAGE_ID"]]
    else:
        reached = process[:max(process.index(s) for s in proc_visited) + 1] + [deal["STAGE_ID"]]
    required = [n for s in reached for n in c.REQUIRED_BY_STAGE.get(s, ())
                if n not in (c.UF_PAID_DATE, c.UF_PAY_DUE, c.UF_LOSS_REASON, c.UF_SEGMENT)]
    if any(not deal[n] for n in required):
        found.add("required_uf_empty")
    if category == 0 and stage.semantics != "F" and int(deal["PROBABILITY"]) != stage.probability:
        found.add("probability_mismatch")
    if stage.semantics == "F" and deal[c.UF_LOSS_REASON] == "123":
        lost_day = datetime.fromisoformat(deal["MOVED_TIME"]).date()
        nxt = deal[c.UF_NEXT_CONTACT]
        if not nxt:
            found.add("lost_no_next_contact")
        else:
            target = date.fromisoformat(nxt)
            months_ok = any(abs((target - _add_months(lost_day, m)).days) <= 7 for m in (3, 6, 9))
            follow_up = any(t["title"] == c.FOLLOW_UP_TITLE and t["deadline"][:10] == nxt for t in tasks)
            assert months_ok and follow_up, deal["ID"]
    if stage.semantics == "P":
        title = c.STAGE_TASK_TITLES[deal["STAGE_ID"]]
        if not any(t["title"] == title and t["status"] in ("2", "3") for t in tasks):
            found.add("no_stage_task")
        if NOW - _ts(deal["MOVED_TIME"]) > 60 * DAY:
            found.add("stale")
    needs_data = stage.semantics == "S" or (
        stage.semantics == "P" and process.index(deal["STAGE_ID"]) >= process.index(c.CONTACT_DATA_FROM[category]))
    if needs_data:
        cards = [p.state.contacts.rows[int(deal["CONTACT_ID"])]]
        if deal["COMPANY_ID"] != "0":
            cards.append(p.state.companies.rows[int(deal["COMPANY_ID"])])
        if not (any(card["PHONE"] for card in cards) and any(card["EMAIL"] for card in cards)):
            found.add("no_contact_data")
    due, paid = deal[c.UF_PAY_DUE], deal[c.UF_PAID_DATE]
    if stage.semantics != "F" and due and not paid and _date_ts(due) < NOW - DAY:
        found.add("overdue_receivable")
    if stage.semantics == "S" and not paid and NOW - _ts(deal["MOVED_TIME"]) > 72 * 3600:
        found.add("won_no_payment_date")
    if category in c.FIRST_CONTACT_CATEGORIES:
        first = deal[c.UF_FIRST_CONTACT]
        created = _ts(deal["DATE_CREATE"])
        if not first:
            if working_seconds(created, NOW) > 3600:
                found.add("lead_not_contacted")
        elif _ts(first) - created > 3600 and working_seconds(created, _ts(first)) > 3600:
            found.add("lead_not_contacted")
    return found


def _add_months(day: date, months: int) -> date:
    month = day.month - 1 + months
    year, month = day.year + month // 12, month % 12 + 1
    for last in (31, 30, 29, 28):
        try:
            return date(year, month, min(day.day, last))
        except ValueError:
            continue
    raise AssertionError("unreachable")


def test_seed_is_deterministic_and_ids_follow_creation_time() -> None:
    a = SandboxPortal(deals=300, seed=42, now=NOW)
    b = SandboxPortal(deals=300, seed=42, now=NOW)
    assert a.state.deals.rows == b.state.deals.rows
    assert a.state.history.rows == b.state.history.rows
    assert a.state.planted == b.state.planted
    assert SandboxPortal(deals=300, seed=43, now=NOW).state.deals.rows != a.state.deals.rows
    created = [d["DATE_CREATE"] for d in a.state.deals.rows.values()]
    assert created == sorted(created)
    assert min(_ts(x) for x in created) > NOW - 560 * DAY


def test_planted_violations_are_exactly_what_the_data_shows() -> None:
    p = SandboxPortal(deals=1500, seed=9, now=NOW)
    tasks_by_deal: dict[int, list[dict[str, Any]]] = {}
    for task in p.state.tasks.rows.values():
        for binding in task["ufCrmTask"]:
            tasks_by_deal.setdefault(int(binding[2:]), []).append(task)
    history_by_deal: dict[int, list[dict[str, Any]]] = {}
    for row in p.state.history.rows.values():
        history_by_deal.setdefault(row["OWNER_ID"], []).append(row)
    mismatches = []
    for deal_id, deal in p.state.deals.rows.items():
        found = _violations(p, deal, history_by_deal[deal_id], tasks_by_deal.get(deal_id, []))
        planted = set(p.state.planted.get(deal_id, []))
        if found != planted:
            mismatches.append((deal_id, deal["STAGE_ID"], sorted(planted), sorted(found)))
    assert not mismatches, mismatches[:10]
    share = len(p.state.planted) / 1500
    assert 0.25 <= share <= 0.35
    kinds = {k for ks in p.state.planted.values() for k in ks}
    assert kinds == {"skipped_stage", "required_uf_empty", "probability_mismatch", "lost_no_next_contact",
                     "no_stage_task", "stale", "won_no_payment_date", "overdue_receivable", "lead_not_contacted",
                     "no_contact_data"}


def test_history_is_consistent_with_each_deal() -> None:
    p = SandboxPortal(deals=400, seed=4, now=NOW)
    last: dict[int, dict[str, Any]] = {}
    first: dict[int, dict[str, Any]] = {}
    for hid in p.state.history.ids:
        row = p.state.history.rows[hid]
        first.setdefault(row["OWNER_ID"], row)
        last[row["OWNER_ID"]] = row
    for deal_id, deal in p.state.deals.rows.items():
        assert first[deal_id]["TYPE_ID"] == 1 and first[deal_id]["CREATED_TIME"] == deal["DATE_CREATE"]
        assert last[deal_id]["STAGE_ID"] == deal["STAGE_ID"]
        assert last[deal_id]["CREATED_TIME"] == deal["MOVED_TIME"]
        expected = 3 if deal["CLOSED"] == "Y" else (1 if first[deal_id] is last[deal_id] else 2)
        assert last[deal_id]["TYPE_ID"] in ((expected, 5) if deal["STAGE_ID"] == "C2:NEW" else (expected,))
    moved = [h for h in p.state.history.rows.values() if h["TYPE_ID"] == 5]
    assert moved and all((h["CATEGORY_ID"], h["STAGE_ID"]) == (2, "C2:NEW") for h in moved)
    for h in moved:
        assert first[h["OWNER_ID"]]["STAGE_ID"] == "C1:NEW" and first[h["OWNER_ID"]]["CATEGORY_ID"] == 1


def test_users_pipelines_and_fields_match_the_contract() -> None:
    assert [(u.id, u.department, u.active) for u in c.USERS] == [
        (1, 1, True), (2, 2, True), (3, 2, True), (4, 2, True), (5, 2, True),
        (6, 3, True), (7, 3, True), (8, 3, True), (9, 2, False)]
    assert [s.probability for s in c.STAGES[0]] == [10, 25, 50, 75, 90, 100, 0, 0]
    assert [s.status_id for s in c.STAGES[2]] == ["C2:NEW", "C2:FINAL_INVOICE", "C2:WON", "C2:LOSE"]
    assert [f.name for f in c.USER_FIELDS] == [f"UF_CRM_1700000{n}" for n in (*range(101, 120), 131, 132)]  # margin, NPS
    assert dict(c.UF_BY_NAME["UF_CRM_1700000114"].options)[123] == "Нет интереса сейчас"


def test_seeding_ten_thousand_deals() -> None:
    # how fast is a benchmark's question (house rules: no timed assertions; ~0.6 s on a dev box, seconds under load)
    p = SandboxPortal(deals=10_000, seed=1)
    assert len(p.state.deals) == 10_000

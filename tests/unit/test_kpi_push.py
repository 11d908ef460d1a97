"""The monthly KPI message, composed (pure): who gets what, CRM names as data, working hours, the daily cap."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from crmbridge.enforce.plan import ActionKind, marker_of
from crmbridge.kpi.facts import KpiRow
from crmbridge.kpi.inputs import UserInfo
from crmbridge.kpi.push import PushAudience, Shown, compose_push, push_key
from crmbridge.mapping.load import load_mappings
from crmbridge.regulation.compiled import compile_regulation

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
CALENDAR = compile_regulation(load_mappings(MAPPINGS).regulation).calendar
ZONE = ZoneInfo("Europe/Moscow")
MONDAY_11 = datetime(2026, 12, 7, 11, 0, tzinfo=ZONE)  # a working day of the shipped calendar
SHOWN = [Shown("revenue", "Выручка", "money"), Shown("won_deals", "Выигранные сделки", "")]
LABELS = {shown.kpi: shown for shown in [*SHOWN, Shown("calls", "Звонки", "")]}
USERS = {"1": UserInfo("Руководитель", True, ("1",)), "2": UserInfo("Анна", True, ("2",)),
         "3": UserInfo("Уволенный", False, ("2",)), "5": UserInfo("Борис [b]жирный[/b] [url=x]", True, ("3",)),
         "6": UserInfo("Без цифр", True, ("3",))}


def row(scope: str, manager: str | None, kpi: str, fact: float | None, plan: float | None = None,
        direction: str | None = None) -> KpiRow:
    return KpiRow("2026-11", scope, manager, None, direction, kpi, plan, fact,
                  None if plan in (None, 0) or fact is None else fact / plan)  # type: ignore[operator]


ROWS = [
    row("manager", "2", "revenue", 3_200_000, 4_000_000), row("manager", "2", "won_deals", 12, 40),
    row("manager", "2", "calls", 80, 100), row("manager", "2", "revenue", 1_000, direction="b2c"),
    row("manager", "3", "revenue", 500_000), row("manager", "5", "revenue", 0), row("manager", "5", "won_deals", 3),
    row("manager", "6", "revenue", 0), row("manager", "6", "won_deals", 0),
    row("company", None, "revenue", 3_700_000, 9_000_000), row("company", None, "won_deals", 15),
    KpiRow("2026-10", "manager", "2", None, None, "revenue", 9.0, 9.0, 1.0),  # another month
]


def audience(**changes: object) -> PushAudience:
    values: dict[str, object] = dict(period="2026-11", now=MONDAY_11, calendar=CALENDAR, language="ru",
                                     hold_outside_working_hours=True, max_per_person_per_day=6, sent_today={},
                                     users=USERS, heads=frozenset({"1"}), shown=SHOWN, labels=LABELS)
    values.update(changes)
    return PushAudience(**values)  # type: ignore[arg-type]


def test_each_manager_with_figures_gets_one_message_and_each_head_the_table() -> None:
    result = compose_push(ROWS, audience())
    by_user = {action.recipient: action for action in result.messages}
    # the manager who left and the one with nothing to read get nothing; the head gets the table instead
    assert sorted(by_user) == ["1", "2", "5"] and not result.held
    mine = by_user["2"]
    assert mine.kind is ActionKind.MESSAGE and mine.idempotency_key == push_key("2", "2026-11") == "kpi:2:2026-11"
    text = str(mine.params["MESSAGE"])
    assert mine.params["DIALOG_ID"] == "2" and text.endswith(marker_of("kpi:2:2026-11"))
    assert text.startswith("[b]crmbridge: ваш план и факт за 2026-11[/b]")
    assert "• Выручка: 3,2\u00a0млн из 4,0\u00a0млн (80\u00a0%)" in text
    assert "• Звонки: 80 из 100 (80\u00a0%)" in text  # planned for them, though not a headline KPI
    assert "1\u00a0000" not in text and "500" not in text  # one figure per KPI: all directions; not another's
    table = str(by_user["1"].params["MESSAGE"])
    assert by_user["1"].idempotency_key == "kpi-table:1:2026-11"
    assert "Выручка | Выигранные сделки" in table and "• Анна: 3,2\u00a0млн из 4,0\u00a0млн (80\u00a0%) | 12 из 40" in table
    assert "• Уволенный (уволен): 500\u00a0тыс. | —" in table  # the month's figures of one who left, marked
    assert "[b]Итого[/b]: 3,7\u00a0млн из 9,0\u00a0млн (41\u00a0%) | 15" in table


def test_names_from_the_crm_cannot_open_a_tag() -> None:
    table = str(next(a for a in compose_push(ROWS, audience()).messages if a.recipient == "1").params["MESSAGE"])
    assert "Борис ［b］жирный［/b］ ［url=x］" in table and "[url=x]" not in table


def test_outside_working_hours_everything_waits() -> None:
    night = compose_push(ROWS, audience(now=datetime(2026, 12, 7, 22, 0, tzinfo=ZONE)))
    assert night.messages == [] and night.held == {"working_hours": 3}
    sunday = compose_push(ROWS, audience(now=datetime(2026, 12, 6, 11, 0, tzinfo=ZONE)))
    assert sunday.messages == [] and sunday.held == {"working_hours": 3}
    sent = compose_push(ROWS, audience(now=datetime(2026, 12, 7, 22, 0, tzinfo=ZONE), hold_outside_working_hours=False))
    assert len(sent.messages) == 3


def test_the_daily_cap_and_messages_written_already() -> None:
    capped = compose_push(ROWS, audience(max_per_person_per_day=2, sent_today={"2": 2, "5": 1}))
    assert sorted(a.recipient for a in capped.messages) == ["1", "5"] and capped.held == {"daily_cap": 1}
    again = compose_push(ROWS, audience(done=frozenset({"kpi:2:2026-11", "kpi-table:1:2026-11"})))
    assert [a.recipient for a in again.messages] == ["5"] and not again.held


def test_no_managers_no_table() -> None:
    assert compose_push([row("company", None, "revenue", 0)], audience()).messages == []


def test_a_long_table_stays_under_the_message_limit() -> None:
    many = {str(i): UserInfo(f"Менеджер {i} " + "x" * 200, True, ("2",)) for i in range(10, 200)}
    rows = [row("manager", user, "revenue", 1000.0 * int(user), 5000) for user in many]
    (table,) = [a for a in compose_push(rows, audience(users={**USERS, **many})).messages if a.recipient == "1"]
    text = str(table.params["MESSAGE"])
    assert len(text) < 12_000 and "… и ещё " in text and "[b]Итого[/b]" in text

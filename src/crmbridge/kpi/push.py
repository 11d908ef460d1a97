"""The monthly KPI message (pure): each manager's plan and fact of a month, each head of sales' table of managers.

One message per person per period, keyed `kpi:<user>:<period>` (a head's `kpi-table:<user>:<period>`): the
enforcement executor writes it exactly once (enforce/execute.py: the key's marker in the text, looked up after a lost
answer), so a second run, or a figure recomputed since, sends nothing more. Like digests (enforce/digest.py) nothing
goes out outside the regulation's working hours when `notifications.outside_working_hours` is `hold`, and no person
gets more than `notifications.max_per_person_per_day` messages a day: what waits goes out on a later run
(jobs/kpi-push.yaml runs on the first working days of the month). Names from the CRM are data (bb_text).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from crmbridge.enforce.digest import DIGEST_LIMIT, bb_text, message_action
from crmbridge.enforce.plan import Action
from crmbridge.kpi.facts import KpiRow
from crmbridge.kpi.inputs import UserInfo
from crmbridge.kpi.present import fmt_share, fmt_value
from crmbridge.kpi.present import words as report_words
from crmbridge.regulation.calendar import WorkingCalendar

WORDS: Mapping[str, Mapping[str, str]] = {
    "ru": {"mine": "crmbridge: ваш план и факт за {period}", "table": "crmbridge: план и факт менеджеров за {period}",
           "of": "из", "total": "Итого", "more": "… и ещё {count}"},
    "en": {"mine": "crmbridge: your plan and fact for {period}", "table": "crmbridge: managers' plan and fact for {period}",
           "of": "of", "total": "Total", "more": "… and {count} more"},
}


@dataclass(frozen=True)
class Shown:
    """A KPI the messages show: its id, label and unit (kpi.yaml)."""

    kpi: str
    label: str
    unit: str


@dataclass(frozen=True)
class PushAudience:
    """Everything composing needs besides the KPI rows; plain values."""

    period: str  # 2026-11
    now: datetime
    calendar: WorkingCalendar
    language: str
    hold_outside_working_hours: bool
    max_per_person_per_day: int
    sent_today: Mapping[str, int]  # messages a person got today (done or in flight)
    users: Mapping[str, UserInfo]
    heads: frozenset[str]  # heads of sales (binding heads without `directions`): the table instead of their own
    shown: Sequence[Shown]  # the headline KPIs; a manager's message adds every KPI planned for them
    labels: Mapping[str, Shown] = field(default_factory=dict)  # every KPI, for the planned ones
    done: frozenset[str] = frozenset()  # keys of this period's messages written already: not composed again
    channel: str = "chat"
    client_id: str | None = None


@dataclass
class PushComposition:
    messages: list[Action] = field(default_factory=list)
    held: Counter[str] = field(default_factory=Counter)  # why messages wait: working_hours, daily_cap


def push_key(user: str, period: str, *, table: bool = False) -> str:
    """One message per person and period: the same key whatever the figures say by then."""
    return f"{'kpi-table' if table else 'kpi'}:{user}:{period}"


def compose_push(rows: Sequence[KpiRow], audience: PushAudience) -> PushComposition:
    """The messages of the period that may go out now (rows: `session.rows([period])`, all directions)."""
    words = WORDS["ru" if audience.language == "ru" else "en"]
    result = PushComposition()
    managers: dict[str, dict[str, KpiRow]] = {}
    company: dict[str, KpiRow] = {}
    for row in rows:
        if row.period != audience.period or row.direction is not None:
            continue  # all directions together: a person reads one figure per KPI
        if row.scope == "manager" and row.manager_id:
            managers.setdefault(row.manager_id, {})[row.kpi] = row
        elif row.scope == "company":
            company[row.kpi] = row
    wanted: list[tuple[str, bool]] = []  # (user, the table)
    for user in sorted(managers, key=_natural):
        info = audience.users.get(user)
        if user in audience.heads or (info is not None and not info.active):
            continue  # a manager who left reads nothing; a head gets the table
        if any(_has_figure(row) for row in _mine(managers[user], audience)):
            wanted.append((user, False))
    if managers:
        wanted += [(head, True) for head in sorted(audience.heads, key=_natural)
                   if audience.users.get(head) is None or audience.users[head].active]
    wanted = [(user, table) for user, table in wanted
              if push_key(user, audience.period, table=table) not in audience.done]
    if audience.hold_outside_working_hours and not audience.calendar.is_working_time(audience.now):
        result.held["working_hours"] += len(wanted)
        return result
    names = {user: info.name for user, info in audience.users.items()}
    for user, table in wanted:
        if audience.max_per_person_per_day - audience.sent_today.get(user, 0) <= 0:
            result.held["daily_cap"] += 1
            continue
        text = (_table_text(managers, company, audience, words) if table
                else _own_text(_mine(managers[user], audience), audience, words))
        result.messages.append(message_action(
            user, text, push_key(user, audience.period, table=table), "kpi table" if table else "kpi",
            channel=audience.channel, client_id=audience.client_id, user_names=names,
            summary=f"KPI {audience.period}", reason=f"monthly KPI message, {audience.period}"))
    return result


def _mine(rows: Mapping[str, KpiRow], audience: PushAudience) -> list[tuple[Shown, KpiRow]]:
    """A manager's rows to show: the headline KPIs, then the other KPIs planned for them."""
    chosen = [(shown, rows[shown.kpi]) for shown in audience.shown if shown.kpi in rows]
    headline = {shown.kpi for shown in audience.shown}
    chosen += [(audience.labels[kpi], row) for kpi, row in rows.items()
               if kpi not in headline and row.plan is not None and kpi in audience.labels]
    return chosen


def _has_figure(item: tuple[Shown, KpiRow]) -> bool:
    _, row = item
    return row.plan is not None or bool(row.fact)


def _figure(shown: Shown, row: KpiRow | None, audience: PushAudience, words: Mapping[str, str]) -> str:
    if row is None:
        return "—"
    fact = fmt_value(row.fact, shown.unit, audience.language)
    if row.plan is None:
        return fact
    return f"{fact} {words['of']} {fmt_value(row.plan, shown.unit, audience.language)} ({fmt_share(row.share_done)})"


def _own_text(chosen: Sequence[tuple[Shown, KpiRow]], audience: PushAudience, words: Mapping[str, str]) -> str:
    lines = [f"[b]{words['mine'].format(period=audience.period)}[/b]"]
    lines += [f"• {bb_text(shown.label)}: {_figure(shown, row, audience, words)}" for shown, row in chosen]
    return "\n".join(lines)


def _table_text(managers: Mapping[str, Mapping[str, KpiRow]], company: Mapping[str, KpiRow], audience: PushAudience,
                words: Mapping[str, str]) -> str:
    """A line per manager (headline KPIs, plan where there is one), then the company's total."""
    head = [f"[b]{words['table'].format(period=audience.period)}[/b]",
            " | ".join(bb_text(shown.label) for shown in audience.shown)]
    total = f"[b]{words['total']}[/b]: " + " | ".join(_figure(shown, company.get(shown.kpi), audience, words)
                                                      for shown in audience.shown)
    lines: list[str] = []
    ordered = sorted(managers, key=_natural)
    for index, user in enumerate(ordered):
        info = audience.users.get(user)
        name = bb_text(info.name) if info is not None and info.name else f"#{user}"
        if info is not None and not info.active:
            name += f" ({report_words(audience.language)['inactive']})"
        line = f"• {name}: " + " | ".join(_figure(shown, managers[user].get(shown.kpi), audience, words)
                                         for shown in audience.shown)
        if len("\n".join([*head, *lines, line, total])) > DIGEST_LIMIT - 200:  # the marker and "… and N more"
            lines.append(words["more"].format(count=len(ordered) - index))
            break
        lines.append(line)
    return "\n".join([*head, *lines, total])


def _natural(value: str) -> tuple[int, str]:
    return (int(value), "") if re.fullmatch(r"\d+", value) else (1 << 62, value)


__all__ = ["PushAudience", "PushComposition", "Shown", "compose_push", "push_key"]

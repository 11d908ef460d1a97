"""Timer rules: R7 response time, R8 payment within 72 h, R9 overdue receivables, R11 stale deals."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, time, timedelta
from typing import Any, Callable

from crmbridge.mapping.schema import format_duration
from crmbridge.model import EMPTY, LOST, WON, Deal, Outcome, Violation, as_date
from crmbridge.regulation.compiled import CompiledDirection, Context, Span, Text, render, say, violation
from crmbridge.regulation.stages import NOT_APPLICABLE, Why


def _span(span: timedelta, ctx: Context | None = None) -> str:
    return format_duration(span, ctx.regulation.spec.wording.units if ctx is not None else "d h m")


# ---------------------------------------------------------------- time waited, which grows with the clock

Figures = tuple[dict[str, Any], dict[str, Any]]


def _still_waiting_r7(waited: timedelta, ctx: Context) -> Figures:
    """R7's figures of a lead not contacted yet: the message's time waited, and the details' minutes."""
    wording = ctx.regulation.spec.wording
    span = Span(waited, wording.units)
    return ({"waited": span, "missing": Text(render, wording.not_contacted, {"waited": span})},
            {"waited_minutes": int(waited.total_seconds() // 60)})


def _still_waiting_r8(waited: timedelta, ctx: Context) -> Figures:
    """R8's figures of a deal still waiting for payment: the message's time waited, and the details' hours."""
    return ({"waited": Span(waited, ctx.regulation.spec.wording.units)},
            {"waited_hours": int(waited.total_seconds() // 3600)})


#: the rules whose violation shows a time waited up to now: its figures, counted again at another moment by `grown`
GROWING: dict[str, Callable[[timedelta, Context], Figures]] = {"R7": _still_waiting_r7, "R8": _still_waiting_r8}


def grown(found: Violation, ctx: Context) -> Violation:
    """The violation as judging at `ctx.now` would show it: a time waited it shows (R7, R8) counted up to then.

    Only the figures grow: whether it is a violation, and everything else it says, changes at the judgement's horizon
    (a deal's kept judgement is reused until then, with this applied)."""
    if found.grows is None:
        return found
    start, working = found.grows
    values, details = GROWING[found.rule](ctx.regulation.calendar.elapsed(start, ctx.now, working=working), ctx)
    return replace(found, values={**found.values, **values}, details={**found.details, **details})


# ---------------------------------------------------------------- R7


def check_r7(deal: Deal, direction: CompiledDirection, ctx: Context, why: Why = None) -> tuple[Violation, ...] | None:
    """R7 Response time: a lead is contacted within the SLA (working time); a waiting one is reassigned."""
    spec = direction.rules.R7
    created = deal.history[0].entered if deal.history else deal.created
    contacted = deal.fields.get(spec.contact_field)
    contacted = contacted.value if contacted is not None else None
    if type(contacted) is datetime and contacted - created <= spec.sla:
        if why is not None:
            say(ctx, why, "contacted_in_time", waited=_span(contacted - created, ctx), sla=_span(spec.sla, ctx))
        return ()
    calendar = ctx.regulation.calendar
    run = deal.run
    entry = run[0] if run else None
    if contacted is not None:
        moment = contacted if isinstance(contacted, datetime) else datetime.combine(contacted, time.max, calendar.zone)
        if moment - created <= spec.sla:
            if why is not None:
                say(ctx, why, "contacted_in_time", waited=_span(moment - created, ctx), sla=_span(spec.sla, ctx))
            return ()
        waited = calendar.elapsed(created, moment, working=spec.working_hours)
        if waited <= spec.sla:
            if why is not None:
                say(ctx, why, "contacted_in_working_time", waited=_span(waited, ctx), sla=_span(spec.sla, ctx))
            return ()
        wording = ctx.regulation.spec.wording
        late = render(wording.contacted_late, {"waited": Span(waited, wording.units)})
        found = violation("R7", deal, direction, ctx, since=calendar.add(created, spec.sla, working=spec.working_hours),
                          entry=entry, missing=(), values={"missing": late, "sla": Span(spec.sla, wording.units),
                                                           "waited": Span(waited, wording.units)},
                          details={"contacted": True, "reassign": False, "waited_minutes": int(waited.total_seconds() // 60)})
    else:
        deadline = calendar.add(created, spec.sla, working=spec.working_hours)
        if not ctx.reached(deadline):
            if why is not None:
                say(ctx, why, "waiting_contact", deadline=f"{deadline:%Y-%m-%d %H:%M}")
            return ()
        waited = calendar.elapsed(created, ctx.now, working=spec.working_hours)
        # only a lead still waiting in its first stage(s) is worth handing to another manager
        waiting = deal.outcome is Outcome.OPEN and deal.stage in (spec.stages or (direction.first_stage,))
        wording = ctx.regulation.spec.wording
        values, details = _still_waiting_r7(waited, ctx)
        found = violation("R7", deal, direction, ctx, since=deadline, entry=entry, missing=(spec.contact_field,),
                          values={"sla": Span(spec.sla, wording.units), **values},
                          details={"contacted": False, **details, "reassign": spec.reassign and waiting},
                          grows=(created, spec.working_hours))
    if why is not None:
        why.append(found.message)
    return (found,)


# ---------------------------------------------------------------- R8


def check_r8(deal: Deal, direction: CompiledDirection, ctx: Context, why: Why = None) -> tuple[Violation, ...] | None:
    """R8 Payment: from the stage where the client agreed, the deal reaches payment within the limit."""
    spec = direction.rules.R8
    first = direction.from_position.get("R8")
    agreed_when_won = WON in spec.from_stages
    if deal.outcome is Outcome.LOST or (deal.outcome is Outcome.WON and not (agreed_when_won or first is not None)) or (
            deal.outcome is Outcome.OPEN and (first is None or deal.stage not in direction.order
                                              or direction.order[deal.stage] < first)):
        if why is not None:
            say(ctx, why, "not_agreed")
        return NOT_APPLICABLE
    if deal.fields.get(spec.paid_field, EMPTY).value is not None:
        if why is not None:
            say(ctx, why, "paid")
        return ()
    run = deal.run
    agreed_entry = next((entry for entry in run if (first is not None and entry.stage in direction.order
                                                     and direction.order[entry.stage] >= first)
                         or (agreed_when_won and entry.stage == WON)), run[-1] if run else None)
    agreed_at = agreed_entry.entered if agreed_entry is not None else (deal.closed_at or deal.created)
    calendar = ctx.regulation.calendar
    if not (spec.working_hours and calendar.spec) and not ctx.reached(agreed_at + spec.within):
        if why is not None:
            say(ctx, why, "waiting_payment", deadline=f"{agreed_at + spec.within:%Y-%m-%d %H:%M}")
        return ()
    deadline = calendar.add(agreed_at, spec.within, working=spec.working_hours)
    if not ctx.reached(deadline):
        if why is not None:
            say(ctx, why, "waiting_payment", deadline=f"{deadline:%Y-%m-%d %H:%M}")
        return ()
    waited = calendar.elapsed(agreed_at, ctx.now, working=spec.working_hours)
    values, details = _still_waiting_r8(waited, ctx)
    found = violation("R8", deal, direction, ctx, since=deadline, entry=agreed_entry, missing=(spec.paid_field,),
                      values={"within": Span(spec.within, ctx.regulation.spec.wording.units), **values},
                      details={"agreed_at": agreed_at, **details}, grows=(agreed_at, spec.working_hours))
    if why is not None:
        why.append(found.message)
    return (found,)


# ---------------------------------------------------------------- R9


def receivable_reminders(start: date, due: date, *, middle: bool = True, day_before: bool = True) -> list[tuple[str, date]]:
    """R9 instalments: reminder days at the middle of the term and the day before it ends."""
    reminders: list[tuple[str, date]] = []
    if due <= start:
        return reminders
    if middle:
        reminders.append(("middle", start + (due - start) / 2))
    if day_before and due - timedelta(days=1) > start:
        reminders.append(("day_before", due - timedelta(days=1)))
    return reminders


def check_r9(deal: Deal, direction: CompiledDirection, ctx: Context, why: Why = None) -> tuple[Violation, ...] | None:
    """R9 Receivables: a payment past its due date is reported to management."""
    spec = direction.rules.R9
    due_value = deal.fields.get(spec.due_field, EMPTY).value
    if due_value is None or deal.outcome is Outcome.LOST:
        if why is not None:
            say(ctx, why, "no_due" if due_value is None else "lost")
        return NOT_APPLICABLE
    if deal.fields.get(spec.paid_field, EMPTY).value is not None:
        if why is not None:
            say(ctx, why, "paid")
        return ()
    due = as_date(due_value)
    zone = ctx.regulation.calendar.zone
    if not spec.grace and not ctx.day_over(due):
        if why is not None:
            say(ctx, why, "not_due", due=due)
        return ()
    overdue_from = datetime.combine(due + timedelta(days=1), time(), zone) + spec.grace
    if not ctx.reached(overdue_from):
        if why is not None:
            say(ctx, why, "not_due", due=due)
        return ()
    overdue_days = ctx.local_days_since(due)
    found = violation("R9", deal, direction, ctx, since=overdue_from, entry=None, missing=(spec.paid_field,),
                      values={"due": due, "overdue_days": overdue_days},
                      details={"due": due, "overdue_days": overdue_days,
                               "amount": str(deal.amount) if deal.amount is not None else None})
    if why is not None:
        why.append(found.message)
    return (found,)


# ---------------------------------------------------------------- R11


def check_r11(deal: Deal, direction: CompiledDirection, ctx: Context, why: Why = None) -> tuple[Violation, ...] | None:
    """R11 Stale deals: an open deal shows activity on its stage within the allowed time."""
    spec = direction.rules.R11
    if deal.outcome is not Outcome.OPEN or deal.stage not in direction.order:
        if why is not None:
            say(ctx, why, "closed" if deal.outcome is not Outcome.OPEN else "not_regulated")
        return NOT_APPLICABLE
    run = deal.run
    entry = run[-1] if run else None
    if entry is not None and entry.by_bridge and len(run) > 1 and run[-2].stage not in (WON, LOST):
        # crmbridge moving an open deal back is no person's activity: its time in the stage counts from the move a
        # person made (the one reverted), and a breach keeps that entry, so it is not flagged afresh. (A deal it
        # reopened, moved back from won or lost, starts anew: the revert's notice and stage task ask for the work.)
        entry = run[-2]
    entered = entry.entered if entry is not None else deal.created
    last = entered
    if deal.last_activity is not None and deal.last_activity > last:
        last = deal.last_activity
    for task in deal.tasks:
        # a person's work counts, crmbridge's own does not: a task it set is no activity until someone closes it
        for moment in (None if task.by_bridge else task.created, task.closed):
            if moment is not None and moment > last:
                last = moment
    limit = direction.stages[deal.stage].stale_after or spec.stale_after  # type: ignore[union-attr]
    calendar = ctx.regulation.calendar
    if not (spec.working_hours and calendar.spec) and not ctx.reached(last + limit):
        if why is not None:
            say(ctx, why, "active", date=f"{last:%Y-%m-%d}", limit=_span(limit, ctx))
        return ()
    deadline = calendar.add(last, limit, working=spec.working_hours)
    if not ctx.reached(deadline):
        if why is not None:
            say(ctx, why, "active", date=f"{last:%Y-%m-%d}", limit=_span(limit, ctx))
        return ()
    idle_days = ctx.days_since(last)
    found = violation("R11", deal, direction, ctx, since=deadline, entry=entry, missing=("activity",),
                      values={"days": idle_days, "last_activity": last.date()},
                      details={"last_activity": last, "idle_days": idle_days})
    if why is not None:
        why.append(found.message)
    return (found,)

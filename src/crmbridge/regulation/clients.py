"""Client rules: R5 postponed clients, R6 contact data, R10 client segments."""

from __future__ import annotations

import calendar as months_calendar
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any, Iterable

from crmbridge.model import EMPTY, LOST, WON, Deal, Outcome, Violation, as_date
from crmbridge.regulation.compiled import CompiledDirection, Context, Text, joined, render, say, violation
from crmbridge.regulation.stages import NOT_APPLICABLE, Why


_MIDNIGHT = time()


def add_months(day: date, months: int) -> date:
    """The same day `months` later (clamped to the month's end)."""
    month_index = day.month - 1 + months
    year, month = day.year + month_index // 12, month_index % 12 + 1
    return date(year, month, min(day.day, months_calendar.monthrange(year, month)[1]))


def _local_day(moment: datetime, ctx: Context) -> date:
    return moment.astimezone(ctx.regulation.calendar.zone).date()


# ---------------------------------------------------------------- R5


def next_contact_day(lost: datetime, months: Iterable[int], now: datetime, zone: tzinfo) -> date | None:
    """R5: the next-contact date to set for a client postponed at `lost`: the nearest regulated option (3, 6 or 9
    months after the refusal, in the regulation's zone) that is today or later; None when every option has passed
    (the breach is history: recorded, not acted on, see evaluate.beyond_look_back). Never a date in the past: a
    manager tasked for a day long gone, or a next-contact field saying so, helps nobody."""
    lost_day, today = lost.astimezone(zone).date(), now.astimezone(zone).date()
    return next((day for day in sorted(add_months(lost_day, count) for count in months) if day >= today), None)


def check_r5(deal: Deal, direction: CompiledDirection, ctx: Context, why: Why = None) -> tuple[Violation, ...] | None:
    """R5 Postponed client: a next-contact date 3/6/9 months after the refusal, and a follow-up task on it."""
    spec = direction.rules.R5
    if deal.outcome is not Outcome.LOST:
        if why is not None:
            say(ctx, why, "not_lost")
        return NOT_APPLICABLE
    reason = deal.field(spec.reason_field).value
    if reason not in spec.reasons:
        if why is not None:
            say(ctx, why, "not_postponed", reason=reason or "—")
        return NOT_APPLICABLE
    wording = ctx.regulation.spec.wording
    run = deal.run
    entry = run[-1] if run else None
    lost_at = entry.entered if entry is not None and entry.stage == LOST else (deal.closed_at or deal.modified or deal.created)
    lost_day = _local_day(lost_at, ctx)
    next_contact = deal.field(spec.next_contact_field).value
    missing: list[str] = []
    remarks: list[str] = []
    months_text = "/".join(str(months) for months in spec.months)
    if next_contact is None:
        missing.append(spec.next_contact_field)
        remarks.append(f"{ctx.regulation.label(spec.next_contact_field)} ({wording.empty})")
    else:
        next_day = as_date(next_contact)
        tolerance = spec.tolerance
        if not any(abs(next_day - add_months(lost_day, months)) <= tolerance for months in spec.months):
            missing.append(spec.next_contact_field)
            remarks.append(render(wording.next_contact_off, {"months": months_text}))
        follow_up = any(
            task.deadline is not None and abs(_local_day(task.deadline, ctx) - next_day) <= timedelta(days=1)
            for task in deal.tasks)
        if not follow_up:
            missing.append(f"task:{spec.follow_up_task.title}")
            remarks.append(render(wording.follow_up_missing, {"date": next_day.isoformat()}))
    if not missing:
        if why is not None:
            say(ctx, why, "postponed_ok", date=next_contact)
        return ()
    found = violation("R5", deal, direction, ctx, since=lost_at, entry=entry, missing=tuple(missing),
                      values={"missing": "; ".join(remarks), "next_contact": str(next_contact or "—"), "months": months_text},
                      details={"lost_at": lost_at, "next_contact": str(next_contact) if next_contact else None,
                               "follow_up_task": spec.follow_up_task.title})
    if why is not None:
        why.append(found.message)
    return (found,)


# ---------------------------------------------------------------- R6


def check_r6(deal: Deal, direction: CompiledDirection, ctx: Context, why: Why = None) -> tuple[Violation, ...] | None:
    """R6 Contact data: from the named stages on, the client's card has a phone and an e-mail."""
    spec = direction.rules.R6
    from_position = direction.from_position.get("R6")
    if from_position is None or deal.stage is None or deal.stage == LOST:
        if why is not None:
            say(ctx, why, "no_contact_stage" if from_position is None else "not_checked_stage")
        return NOT_APPLICABLE
    if deal.stage != WON and direction.order[deal.stage] < from_position:
        if why is not None:
            say(ctx, why, "contact_later", stage=direction.spec.stages[from_position].name)
        return NOT_APPLICABLE
    contact, company = deal.contact, deal.company
    has_phone = (contact is not None and contact.phones) or (company is not None and company.phones)  # truthy
    has_email = (contact is not None and contact.emails) or (company is not None and company.emails)
    require = spec.require
    missing: list[str] = []
    if "phone" in require and not has_phone:
        missing.append("phone")
    if "email" in require and not has_email:
        missing.append("email")
    if missing:
        wording = ctx.regulation.spec.wording
        if contact is None and company is None:
            remark: Any = wording.no_client
        else:
            remark = Text(joined, [(wording.no_phone if item == "phone" else wording.no_email, {}) for item in missing], ", ")
    else:
        if why is not None:
            say(ctx, why, "contact_ok", items=", ".join(
                ctx.regulation.spec.wording.no_phone if item == "phone" else ctx.regulation.spec.wording.no_email
                for item in spec.require))
        return ()
    run = deal.run
    entry = run[-1] if run else None
    client = contact.name if contact is not None else company.name if company is not None else ""
    found = violation("R6", deal, direction, ctx, since=entry.entered if entry else deal.created, entry=entry,
                      missing=tuple(missing), values={"missing": remark, "client": client},
                      details={"contact": deal.contact.id if deal.contact else None,
                               "company": deal.company.id if deal.company else None})
    if why is not None:
        why.append(found.message)
    return (found,)


# ---------------------------------------------------------------- R10


def purchase_moment(deal: Deal, paid_field: str | None, ctx: Context) -> datetime | None:
    """When the client bought in this deal: the payment date if set, else when the deal was won."""
    if deal.outcome is not Outcome.WON:
        return None
    paid = deal.fields.get(paid_field, EMPTY).value if paid_field else None
    if isinstance(paid, datetime):
        return paid
    if isinstance(paid, date):
        return datetime.combine(paid, _MIDNIGHT, ctx.regulation.calendar.zone)
    if deal.closed_at is not None:
        return deal.closed_at
    run = deal.run
    return run[-1].entered if run else deal.modified


def last_purchases(deals: Iterable[Deal], ctx: Context) -> dict[str, tuple[datetime, str]]:
    """Client key -> (last purchase, deal id): the cross-deal fact R10 needs, computed once per run."""
    found: dict[str, tuple[datetime, str]] = {}
    # it runs over every deal, so the per-direction setting is read once, not per deal
    paid_fields = purchase_fields(ctx)
    won = Outcome.WON
    for deal in deals:
        if deal.outcome is not won or deal.direction not in paid_fields:
            continue  # checked first: most deals are not won, and a client key is a string built on each read
        note_purchase(found, deal, paid_fields, ctx)
    return found


def purchase_fields(ctx: Context) -> dict[str, str | None]:
    """Direction id -> the field R8 and R10 read the payment date from."""
    return {direction_id: direction.rules.R8.paid_field for direction_id, direction in ctx.regulation.directions.items()}


def purchase_of(deal: Deal, paid_fields: dict[str, str | None], ctx: Context) -> tuple[str, datetime] | None:
    """(client key, moment) when a won deal is a purchase of a known client; None otherwise."""
    if deal.outcome is not Outcome.WON or deal.direction not in paid_fields:
        return None
    key = deal.client_key
    if key is None:
        return None
    moment = purchase_moment(deal, paid_fields[deal.direction], ctx)
    return None if moment is None else (key, moment)


def note_purchase(found: dict[str, tuple[Any, str]], deal: Deal, paid_fields: dict[str, str | None],
                  ctx: Context) -> None:
    """Count one deal into `last_purchases` (deals taken in the same order give the same answer)."""
    purchase = purchase_of(deal, paid_fields, ctx)
    if purchase is not None:
        note_latest(found, purchase[0], purchase[1], deal.id)


def note_latest(found: dict[str, tuple[Any, str]], client_key: str, moment: Any, deal_id: str) -> None:
    """Keep the client's latest purchase (moment, deal id); of equal moments the one noted first stays."""
    known = found.get(client_key)
    if known is None or moment > known[0]:
        found[client_key] = (moment, deal_id)


def check_r10(deal: Deal, direction: CompiledDirection, ctx: Context, why: Why = None) -> tuple[Violation, ...] | None:
    """R10 Segments: the client's latest won deal carries the segment its age implies, and touches follow the cadence."""
    spec = direction.rules.R10
    bought = purchase_moment(deal, direction.rules.R8.paid_field, ctx)
    if bought is None or not spec.segments:
        if why is not None:
            say(ctx, why, "not_purchase" if bought is None else "no_segments")
        return NOT_APPLICABLE
    client_key = deal.client_key if ctx.purchases is not None else None
    if client_key is not None:
        latest = ctx.purchases.get(client_key)  # type: ignore[union-attr]
        if latest is not None and latest[1] != deal.id:
            if why is not None:
                say(ctx, why, "bought_later", deal=latest[1])
            return NOT_APPLICABLE
    segment = None
    for item in spec.segments:  # the segment changes when its age reaches an edge (noted for the horizon)
        if ctx.reached(bought + item.after) and (item.before is None or not ctx.reached(bought + item.before)):
            segment = item
            break
    if segment is None:
        if why is not None:
            say(ctx, why, "between_segments", days=ctx.days_since(bought))
        return NOT_APPLICABLE
    wording = ctx.regulation.spec.wording
    missing: list[str] = []
    remarks: list[str] = []
    since = bought + segment.after
    if deal.fields.get(spec.segment_field, EMPTY).value != segment.option:
        missing.append(spec.segment_field)
        remarks.append(render(wording.segment_wrong, {"expected": segment.option}))
    if segment.touch_every is not None:
        last_touch = bought  # the latest of: the purchase, the tasks' creation and closing, the last activity
        for task in deal.tasks:
            if task.created is not None and task.created > last_touch:
                last_touch = task.created
            if task.closed is not None and task.closed > last_touch:
                last_touch = task.closed
        if deal.last_activity is not None and deal.last_activity > last_touch:
            last_touch = deal.last_activity
        if ctx.passed(last_touch + segment.touch_every):
            missing.append("touch")
            remarks.append(render(wording.touch_overdue, {"days": ctx.days_since(last_touch)}))
            since = max(since, last_touch + segment.touch_every)
    if not missing:
        if why is not None:
            say(ctx, why, "segment_ok", segment=segment.option)
        return ()
    found = violation("R10", deal, direction, ctx, since=since, entry=None, missing=tuple(missing),
                      values={"missing": "; ".join(remarks), "segment": str(deal.field(spec.segment_field).value or "—"),
                              "expected": segment.option},
                      details={"expected_segment": segment.option, "bought": bought,
                               "touch_every_days": segment.touch_every.days if segment.touch_every else None})
    if why is not None:
        why.append(found.message)
    return (found,)

"""Shared builders for the regulation tests: a small regulation and deals written as plain values."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from crmbridge.mapping.load import parse_regulation
from crmbridge.model import LOST, WON, Client, Deal, EntryKind, FieldValue, Outcome, StageEntry, Task, TaskStatus, Violation
from crmbridge.regulation.compiled import compile_regulation
from crmbridge.regulation.evaluate import Evaluator

if TYPE_CHECKING:
    from crmbridge.cache.store import Cache

MSK = ZoneInfo("Europe/Moscow")

REGULATION = """
version: 1
language: en
calendar: {timezone: Europe/Moscow, working_hours: "09:00-18:00", working_days: [mon, tue, wed, thu, fri], holidays: [2026-11-04]}
fields:
  interest: {type: enum, options: ["yes", "no"], label: Interest}
  budget: {type: number, label: Budget}
  meeting: {type: date, label: Meeting}
  doc: {type: link, label: Doc}
  terms: {type: enum, options: [prepaid, deferred], label: Terms}
  reason: {type: enum, options: [expensive, not_now], label: Reason}
  next_contact: {type: date, label: Next contact}
  segment: {type: enum, options: [hot, warm, sleeping], label: Segment}
  paid: {type: date, label: Paid}
  due: {type: date, label: Due}
  first_contact: {type: datetime, label: First contact}
  amount: {type: number, label: Amount}
directions:
  sales:
    name: Sales
    stages:
      - {id: one, name: One, probability: 10, requires_to_leave: [{field: interest, equals: "yes"}, budget],
         task: {title: Do one, must_complete: true}}
      - {id: two, name: Two, probability: 25, requires_to_leave: [meeting], task: {title: Do two}}
      - {id: three, name: Three, probability: 50, requires_to_enter: [{field: meeting, future: true}], stale_after: 3d}
      - {id: four, name: Four, probability: 90, requires_to_leave: [doc]}
    won: {name: Won, probability: 100, requires: [terms]}
    lost: {name: Lost, probability: 0, requires: [reason]}
  other:
    name: Other
    stages:
      - {id: x, name: X, probability: 20}
      - {id: y, name: Y, probability: 60}
    won: {name: Paid, probability: 100}
    lost: {name: Refused, probability: 0}
    rules:
      R7: {sla: 5m, working_hours: false}
rules:
  R1: {mode: warn, message: "{rule} {from_stage}->{stage_name} skipped {skipped}"}
  R2: {mode: warn}
  R3: {mode: warn, create_within: 15m}
  R4: {mode: enforce, message: "{rule} {actual} vs {expected}"}
  R5: {mode: warn, reason_field: reason, reasons: [not_now], next_contact_field: next_contact, months: [3, 6], tolerance: 7d,
       follow_up_task: {title: Call back}}
  R6: {mode: warn, stages: [two], require: [phone, email]}
  R7: {mode: warn, sla: 1h, contact_field: first_contact, working_hours: true}
  R8: {mode: warn, from_stages: [four], within: 72h, paid_field: paid}
  R9: {mode: warn, due_field: due, paid_field: paid}
  R10: {mode: audit, segment_field: segment, segments: [{option: hot, before: 31d, touch_every: 7d},
        {option: warm, after: 90d, before: 122d, touch_every: 14d}, {option: sleeping, after: 183d}]}
  R11: {mode: warn, stale_after: 14d}
"""


def regulation(text: str = REGULATION):
    model, problems = parse_regulation(text, "test.yaml")
    assert not problems, [str(problem) for problem in problems]
    return model


SPEC = regulation()
COMPILED = compile_regulation(SPEC)


def at(text: str) -> datetime:
    """'2026-11-20 10:00' in Moscow time."""
    return datetime.fromisoformat(text).replace(tzinfo=MSK) if "+" not in text else datetime.fromisoformat(text)


KINDS = {"created": EntryKind.CREATED, "moved": EntryKind.MOVED, "closed": EntryKind.CLOSED, "pipeline": EntryKind.PIPELINE_CHANGED}


def entry(kind: str, stage: str | None, when: str, direction: str = "sales") -> StageEntry:
    return StageEntry(f"CRM_{stage}", at(when), KINDS[kind], direction, stage)


def value(raw: Any) -> FieldValue:
    if isinstance(raw, FieldValue):
        return raw
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return FieldValue(Decimal(str(raw)), raw)
    return FieldValue(raw, raw)


def task(title: str, created: str, *, status: str = "pending", closed: str | None = None, deadline: str | None = None) -> Task:
    return Task(id=title, title=title, status=TaskStatus(status), responsible="3", created=at(created),
                deadline=at(deadline) if deadline else None, closed=at(closed) if closed else None)


def deal(stage: str | None = "one", *, history: list[StageEntry] | None = None, direction: str | None = "sales",
         fields: dict[str, Any] | None = None, tasks: list[Task] | None = None, probability: int | None = None,
         contact: Client | None = None, company: Client | None = None, created: str = "2026-11-02 10:00",
         last_activity: str | None = None, closed_at: str | None = None, id: str = "1") -> Deal:
    outcome = Outcome.WON if stage == WON else Outcome.LOST if stage == LOST else Outcome.OPEN
    if history is None:
        history = [entry("created", stage, created, direction or "sales")]
    return Deal(id=id, title="Deal", direction=direction, stage=stage, crm_stage=f"CRM_{stage}", outcome=outcome,
                manager="3", created=at(created), last_activity=at(last_activity) if last_activity else None,
                closed_at=at(closed_at) if closed_at else None, probability=probability,
                fields={key: value(raw) for key, raw in (fields or {}).items()}, history=tuple(history),
                tasks=tuple(tasks or ()), contact=contact, company=company)


def run(rule: str, the_deal: Deal, now: str = "2026-11-20 12:00", *, purchases=None):
    """The rule's verdict on the deal: None (not applicable), () (passed) or the violations."""
    from crmbridge.regulation.evaluate import RULES
    from crmbridge.regulation.compiled import Context

    direction = COMPILED.directions[the_deal.direction]
    return RULES[rule](the_deal, direction, Context(at(now), COMPILED, purchases))


__all__ = ["COMPILED", "MSK", "SPEC", "at", "date", "deal", "entry", "regulation", "run", "task", "timedelta", "value",
           "Client", "LOST", "WON", "Evaluator"]


def assert_verdict(result: tuple[Violation, ...] | None, missing: list[str] | None) -> Violation | None:
    """A table row's expectation: None = not applicable, [] = passed, else the one violation's missing items."""
    if missing is None:
        assert result is None
        return None
    if not missing:
        assert result == ()
        return None
    assert result is not None
    (violation,) = result
    assert list(violation.missing) == missing
    return violation


def seeded_cache(path: Path, *, deals: int, seed: int, now: datetime) -> Cache:
    """The seeded sandbox portal as a sync caches it (no HTTP: the sync's own row conversions), opened at `path`."""
    from crmbridge.cache.store import open_cache
    from crmbridge.sandbox.seed import seed_portal
    from crmbridge.sandbox.state import PortalState

    state = PortalState(clock=now.timestamp)
    seed_portal(state, deals=deals, seed=seed, now=now.timestamp())
    cache = open_cache(path)
    with cache.atomic():
        for table, table_rows in state.cache_rows(now.isoformat()).items():
            cache.upsert(table, table_rows)
    return cache

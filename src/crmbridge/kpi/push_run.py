"""The monthly KPI message at the edge: composed from a KPI session, written by the enforcement executor."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from crmbridge.cache.lock import WriterLock
from crmbridge.cache.store import Cache
from crmbridge.enforce.audit import DONE, GIVEN_UP, AuditLog, utc_now
from crmbridge.enforce.execute import MAX_SENDS_TOTAL, ExecutionSummary, Executor
from crmbridge.errors import ConfigError
from crmbridge.kpi.periods import Period
from crmbridge.kpi.present import kpi_label, stage_names
from crmbridge.kpi.push import PushAudience, Shown, compose_push, push_key
from crmbridge.kpi.service import KpiSession
from crmbridge.regulation.compiled import compile_regulation

#: how long a push waits for a running enforcement to finish (they share the outbox and the daily message count)
LOCK_WAIT_SECONDS = 120.0


@dataclass
class PushReport:
    """What `crmbridge kpi push` did; `--json` and the job print it."""

    period: str
    dry_run: bool
    composed: int = 0
    already_sent: int = 0  # people whose message of the period an earlier run wrote
    held: dict[str, int] = field(default_factory=dict)  # why messages wait: working_hours, daily_cap
    recipients: list[str] = field(default_factory=list)
    execution: ExecutionSummary | None = None  # None: a dry run
    texts: dict[str, str] = field(default_factory=dict)  # key -> the message (a dry run shows them)

    def as_dict(self) -> dict[str, Any]:
        return {"period": self.period, "dry_run": self.dry_run, "composed": self.composed,
                "already_sent": self.already_sent, "held": self.held, "recipients": self.recipients,
                "execution": self.execution.as_dict() if self.execution is not None else None}


def push_month(client: Any, cache: Cache, session: KpiSession, period: Period, *,
               now: Callable[[], datetime] = utc_now, channel: str = "chat", client_id: str | None = None,
               dry_run: bool = False, sleep: Callable[[float], None] = time.sleep,
               lock_wait: float = LOCK_WAIT_SECONDS, checkpoint: Callable[[str], None] | None = None) -> PushReport:
    """Each manager's plan and fact of `period` and each head of sales' table, each written once (see kpi/push.py).

    Holds the enforcement writer lock: both write messages through the same outbox and count the same daily cap."""
    if getattr(client, "crm", "bitrix24") != "bitrix24":
        raise ConfigError("the monthly KPI message goes through the Bitrix24 chat; amoCRM has no message API",
                          hint="read the figures with `crmbridge kpi` or `crmbridge report` instead")
    audit = AuditLog(cache)
    run_id = uuid.uuid4().hex[:12]
    lock = WriterLock(cache.path, "enforce", run_id)
    if not dry_run:
        lock.acquire(now=now(), wait=lock_wait)
    try:
        executor = Executor(client, audit, run_id=run_id, lock=None if dry_run else lock, now=now, sleep=sleep,
                            checkpoint=checkpoint)
        if not dry_run:
            # a message of an earlier run killed between its write and the answer: looked up before anything is sent
            executor.reconcile([0])
        moment = now()
        audience = _audience(session, str(period), moment, audit, channel, client_id)
        composition = compose_push(session.rows([period], with_trend=False), audience)
        report = PushReport(str(period), dry_run, len(composition.messages), len(audience.done),
                            dict(composition.held), [action.recipient or "" for action in composition.messages],
                            texts={action.idempotency_key: str(action.params.get("MESSAGE", ""))
                                   for action in composition.messages})
        if not dry_run:
            report.execution = executor.execute(composition.messages)
        return report
    finally:
        lock.release()


def _audience(session: KpiSession, period: str, now: datetime, audit: AuditLog, channel: str,
              client_id: str | None) -> PushAudience:
    regulation = compile_regulation(session.mappings.regulation)
    spec = regulation.spec.notifications
    sent_today, _ = audit.messages_today(now, regulation.calendar.zone)
    heads = frozenset(str(head.user) for head in session.mappings.binding.heads if not head.directions)
    names = stage_names(session.mappings.regulation, regulation.spec.language)
    labels = {kpi: Shown(kpi, kpi_label(session.kpis, kpi, session.data.funnels, names),
                         session.engine.spec_of(kpi).unit or "")
              for kpi in session.engine.kpi_ids()}
    headline = [kpi for kpi in session.kpis.headline if kpi in labels] or [
        kpi for kpi in labels if session.engine.spec_of(kpi).plannable and ":" not in kpi][:4]
    # who got this period's message already: not composed again (nor counted against today's cap)
    users = set(session.data.users) | heads
    keys = [push_key(user, period) for user in users] + [push_key(head, period, table=True) for head in heads]
    rows = audit.rows_for(keys)
    done = frozenset(key for key, row in rows.items() if audit.settled(row, MAX_SENDS_TOTAL) in (DONE, GIVEN_UP))
    return PushAudience(period, now, regulation.calendar, regulation.spec.language,
                        spec.outside_working_hours == "hold", spec.max_per_person_per_day, sent_today,
                        session.data.users, heads, [labels[kpi] for kpi in headline], labels, done, channel, client_id)


__all__ = ["LOCK_WAIT_SECONDS", "PushReport", "push_month"]

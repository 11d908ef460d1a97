"""One enforcement run: sync, reconcile, evaluate, plan, write, re-sync, evaluate again; the shell calls this."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from crmbridge.cache.lock import WriterLock
from crmbridge.cache.store import Cache
from crmbridge.compliance import record_violations
from crmbridge.connectors.bitrix24.client import Bitrix24Client
from crmbridge.connectors.bitrix24.reader import Bitrix24Reader
from crmbridge.connectors.registry import CrmClient, syncer_for
from crmbridge.enforce.audit import AuditLog, utc_now
from crmbridge.enforce.digest import Composition, Delivery, Notice, SummaryFacts, compose
from crmbridge.enforce.execute import (
    MAX_SENDS_TOTAL,
    ExecutionSummary,
    Executor,
    Reconciliation,
    action_of_row,
    lookup_call,
)
from crmbridge.enforce.plan import DEFAULT_MAX_REVERTS_PER_DAY, Action, ActionKind, Plan, PlanContext, plan
from crmbridge.errors import RightsError
from crmbridge.mapping.binding import DealMapper
from crmbridge.mapping.load import Mappings
from crmbridge.model import Deal, Mode, Violation
from crmbridge.regulation.evaluate import Evaluator


@dataclass
class Compliance:
    """How many regulated deals break no rule (rules in mode off do not count)."""

    deals: int = 0
    compliant: int = 0
    violations: int = 0
    by_rule: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.compliant / self.deals if self.deals else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {"deals": self.deals, "compliant": self.compliant, "rate": round(self.rate, 4),
                "violations": self.violations, "by_rule": self.by_rule}


@dataclass
class Evaluation:
    deals: list[Deal]
    violations: dict[str, list[Violation]]
    compliance: Compliance


@dataclass
class EnforceReport:
    """What `crmbridge enforce` did (or, with --dry-run, would do)."""

    dry_run: bool
    started: datetime
    before: Compliance
    plan: Plan
    to_write: list[Action]  # the plan minus what earlier runs already wrote
    execution: ExecutionSummary | None = None
    after: Compliance | None = None
    reconciled_found: int = 0  # intents of an earlier run found in the CRM
    reconciled_unknown: int = 0  # intents of an earlier run not found there: (re)sent by this run
    reconciled_unresolved: int = 0  # intents whose lookup failed: left for a later run, not sent by this one
    cancelled: int = 0
    owed: int = 0  # actions of groups partly landed in an earlier run, completed by this one whatever the plan says
    messages: ExecutionSummary | None = None  # the messages (digests, summaries) this run sent
    composed: int = 0  # messages composed from queued notices (or, dry run, that would be)
    held: dict[str, int] = field(default_factory=dict)  # notices left queued, by why (working_hours, daily_cap, ...)
    sync_requests: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run, "started": self.started.isoformat(),
            "compliance_before": self.before.as_dict(),
            "compliance_after": self.after.as_dict() if self.after else None,
            "planned": len(self.plan.actions), "to_write": len(self.to_write),
            "by_kind": dict(Counter(action.kind.value for action in self.to_write)),
            "by_rule": dict(Counter(action.rule for action in self.to_write)),
            "actions": [action.as_dict() for action in self.to_write],
            "notes": self.plan.notes,
            "execution": self.execution.as_dict() if self.execution else None,
            "owed": self.owed,
            "messages": {"composed": self.composed, "held": self.held,
                         "execution": self.messages.as_dict() if self.messages else None},
            "old_breaches": self.plan.old_breaches, "rerouted": self.plan.rerouted,
            "reconciled": {"found": self.reconciled_found, "unknown": self.reconciled_unknown,
                           "unresolved": self.reconciled_unresolved, "cancelled": self.cancelled},
            "sync_requests": self.sync_requests,
        }


def evaluate(cache: Cache, mappings: Mappings, now: datetime, *, deal_ids: Sequence[int] | None = None,
             modes: Mapping[str, Mode] | None = None, record: bool = True) -> Evaluation:
    """Map and evaluate cached deals (all, or the given ones); with `record`, update the `violations` table."""
    mapper = DealMapper(mappings.regulation, mappings.binding)
    wanted = None if deal_ids is None else {str(deal_id) for deal_id in deal_ids}
    # a few deals (the daemon's worker, --deal) load only themselves and their clients' other deals (R10)
    everyone = mapper.deals(cache.deals.records(None if deal_ids is None else cache.deals.with_client_peers(deal_ids)))
    deals = everyone if wanted is None else [deal for deal in everyone if deal.id in wanted]
    evaluator = Evaluator.of(mappings.regulation, now, deals_for_purchases=everyone, override_modes=modes)
    found: dict[str, list[Violation]] = {}
    compliance = Compliance()
    by_rule: Counter[str] = Counter()
    for deal in deals:
        violations = evaluator.violations(deal)
        if deal.direction in evaluator.regulation.directions:
            compliance.deals += 1
            compliance.compliant += not violations
        if violations:
            found[deal.id] = violations
            by_rule.update(violation.rule for violation in violations)
    compliance.violations = sum(by_rule.values())
    compliance.by_rule = dict(sorted(by_rule.items(), key=lambda item: int(item[0][1:])))
    if record:
        scope = None if deal_ids is None else {str(deal_id) for deal_id in deal_ids}
        record_violations(cache, [v for vs in found.values() for v in vs],
                          now.astimezone(UTC).isoformat(), scope)
    return Evaluation(deals, found, compliance)


def plan_context(cache: Cache, mappings: Mappings, evaluator_regulation: Any, now: datetime, audit: AuditLog,
                 *, max_reverts_per_day: int, portal_url: str = "") -> PlanContext:
    """The plain facts planning needs, read from the cache and the audit log."""
    users = cache.reference.users()
    active = frozenset(str(row["id"]) for row in users if row["active"]) if users else None
    names = cache.reference.user_names()
    return PlanContext(evaluator_regulation, mappings.binding, now, active_users=active,
                       reverts_today=audit.reverts_today(now, evaluator_regulation.calendar.zone),
                       max_reverts_per_day=max_reverts_per_day, rotation=audit.rotation(),
                       reverted_entries=audit.reverted_entries(), user_names=names, portal_url=portal_url)


def delivery_of(audit: AuditLog, context: PlanContext, evaluation: Evaluation, *, channel: str,
                client_id: str | None, digests: bool = True) -> Delivery:
    """What composing messages needs: who heads sales, what each person got today, the summary's facts."""
    heads = frozenset(head.user for head in context.binding.heads if not head.directions)
    sent_today, summaries = audit.messages_today(context.now, context.regulation.calendar.zone)
    managers: Counter[str] = Counter()
    for deal in evaluation.deals:
        found = evaluation.violations.get(deal.id)
        if found and deal.manager:
            managers[deal.manager] += len(found)
    facts = SummaryFacts(evaluation.compliance.by_rule, dict(managers),
                         {head: audit.done_since_summary(head) for head in heads})
    return Delivery(context.regulation, context.now, heads, sent_today, summaries, facts, context.portal_url, channel,
                    client_id, context.user_names, digests)


def lost_messages(audit: AuditLog, now: datetime, unresolved: Iterable[str] = ()) -> list[Action]:
    """Messages earlier runs left as intents (reconcile found them neither done nor unknowable): one looked up and not
    found is cancelled, so its notices go into this run's messages; one that cannot be looked up (the `notify`
    channel) is returned, to go out again exactly as recorded."""
    skip = set(unresolved)
    lost = [action_of_row(row) for row in audit.pending() if row["kind"] == ActionKind.MESSAGE.value
            and row["idempotency_key"] not in skip]
    audit.cancel([action.idempotency_key for action in lost if lookup_call(action) is not None], now,
                 "looked up and not found in the dialog: its notices go into the next message")
    return [action for action in lost if lookup_call(action) is None]


def deliver(executor: Executor | None, audit: AuditLog, delivery: Delivery, *, wanted: Iterable[str],
            evaluated: Iterable[str] | None, again: Sequence[Action] = (), new: Sequence[Action] = (),
            deleted: Iterable[str] = ()) -> tuple[Composition, ExecutionSummary | None]:
    """Compose the queued notices into messages and send them with `again` (see lost_messages); `executor` None:
    only compose, for a dry run, with the plan's `new` notices added.

    Queued notices about breaches gone before they were told are cancelled first, unless their group partly
    landed (a revert's notice is told even after the deal was fixed); `evaluated`: the deals this run judged
    (None: all). Notices about a `deleted` deal (judged, but gone from the CRM) are cancelled in any case: there is
    no card to open and nothing left to do about it."""
    rows = audit.queued()
    scope = None if evaluated is None else set(evaluated)
    wanted_keys = set(wanted)
    removed = set(deleted)
    landed = audit.groups_landed(row["group_key"] for row in rows)
    gone = [row["idempotency_key"] for row in rows
            if row["idempotency_key"] not in wanted_keys and (row["group_key"] not in landed
                                                              or str(row["deal_id"]) in removed)
            and (scope is None or str(row["deal_id"]) in scope)]
    if executor is not None and gone:
        audit.cancel(gone, delivery.now, "no longer needed: the breach was gone (or the deal deleted) before a "
                                         "message told it")
    notices = [Notice.of_row(row, json.loads(row["payload"])) for row in rows if row["idempotency_key"] not in gone]
    recorded = {notice.key for notice in notices}
    notices += [Notice.of_row(_row_of(action), action.params) for action in new
                if action.kind is ActionKind.NOTIFY and action.idempotency_key not in recorded]
    composition = compose(notices, delivery)
    if executor is None:
        return composition, None
    return composition, executor.execute([*again, *composition.messages])


def _row_of(action: Action) -> dict[str, Any]:
    return {"idempotency_key": action.idempotency_key, "deal_id": action.deal, "rule": action.rule,
            "recipient_id": action.recipient, "reason": action.reason}


def still_to_write(actions: Iterable[Action], audit: AuditLog) -> list[Action]:
    """The plan minus what is written already (or failed too often): what a run sends."""
    actions = list(actions)
    rows = audit.rows_for([action.idempotency_key for action in actions])
    return [action for action in actions if audit.settled(rows.get(action.idempotency_key), MAX_SENDS_TOTAL) is None]


def enforce(client: CrmClient, cache: Cache, mappings: Mappings, *, now: Callable[[], datetime] = utc_now,
            dry_run: bool = False, deal_ids: Sequence[int] | None = None, sync: bool = True,
            modes: Mapping[str, Mode] | None = None, max_reverts_per_day: int = DEFAULT_MAX_REVERTS_PER_DAY,
            sleep: Callable[[float], None] = time.sleep, break_lock: bool = False, channel: str = "chat",
            client_id: str | None = None, checkpoint: Callable[[str], None] | None = None,
            allow_non_admin: bool = False) -> EnforceReport:
    """Make the portal follow the regulation; with `dry_run`, show the same plan and write nothing to the CRM.

    One writer at a time (two overlapping scheduled runs would plan the same actions and both write them): the
    lock is an OS lock on a file beside the cache, released when the run ends however it ends (CacheLocked names the
    holder; `break_lock` takes it from a holder the OS cannot see, see cache/lock.py)."""
    started = now()
    audit = AuditLog(cache)
    run_id = uuid.uuid4().hex[:12]
    lock = WriterLock(cache.path, "enforce", run_id)
    if not dry_run:
        lock.acquire(break_lock=break_lock, now=started)
    try:
        requests_before = client.requests_made
        if sync:
            syncer_for(client, cache).run(full=False)
        if not dry_run and not allow_non_admin:
            require_rights(client, cache)
        sync_requests = client.requests_made - requests_before
        executor = Executor(client, audit, run_id=run_id, lock=None if dry_run else lock, now=now, sleep=sleep,
                            checkpoint=checkpoint)
        return _plan_and_write(client, cache, mappings, audit, executor, now=now, dry_run=dry_run, deal_ids=deal_ids,
                               sync=sync, modes=modes, max_reverts_per_day=max_reverts_per_day, started=started,
                               sync_requests=sync_requests, channel=channel, client_id=client_id)
    finally:
        lock.release()


def require_rights(client: CrmClient, cache: Cache) -> None:
    """Refuse to write when the Bitrix24 user the reads run as is not an administrator.

    Reads run with that user's rights: a non-admin sees only the tasks it takes part in, so the stage tasks of other
    managers would look missing, and enforcement would set them again. The sync records `user.admin`; a cache that
    has no answer yet (an older cache, `--no-sync`) asks now.
    """
    if not isinstance(client, Bitrix24Client):
        return
    admin = cache.account.rights()
    if admin is None:
        admin = Bitrix24Reader(client).webhook_admin()
    if admin is False:
        raise RightsError(
            "the webhook's user is not a Bitrix24 administrator (user.admin answered false): its reads show only "
            "the tasks it takes part in, so other managers' stage tasks would look missing; enforcement is refused",
            hint="create the inbound webhook as a portal administrator and put its URL in "
                 "CRMBRIDGE_BITRIX24_WEBHOOK_URL (`crmbridge check --live` says what it sees), or, if this user's role "
                 "sees every deal and task, set CRMBRIDGE_ENFORCE_ALLOW_NON_ADMIN=true")


def _plan_and_write(client: CrmClient, cache: Cache, mappings: Mappings, audit: AuditLog, executor: Executor, *,
                    now: Callable[[], datetime], dry_run: bool, deal_ids: Sequence[int] | None, sync: bool,
                    modes: Mapping[str, Mode] | None, max_reverts_per_day: int, started: datetime,
                    sync_requests: int, channel: str, client_id: str | None) -> EnforceReport:
    reconciled = Reconciliation(0, 0, frozenset())
    if not dry_run:
        # an earlier run killed between a write and its result: look in the CRM before planning anything again;
        # what could not be looked up stays an intent, and the executor does not send it in this run
        reconciled = executor.reconcile(deal_ids)
    moment = now()
    evaluation = evaluate(cache, mappings, moment, deal_ids=deal_ids, modes=modes, record=not dry_run)
    regulation = Evaluator.of(mappings.regulation, moment, override_modes=modes).regulation
    context = plan_context(cache, mappings, regulation, moment, audit, max_reverts_per_day=max_reverts_per_day,
                           portal_url=getattr(client, "portal_url", ""))
    deals = [(deal, evaluation.violations.get(deal.id, [])) for deal in evaluation.deals]
    the_plan = plan(deals, context)
    if getattr(client, "crm", "bitrix24") == "amocrm":
        from crmbridge.connectors.amocrm.actions import AmoCRMDialect

        # the same actions, keys and markers in amoCRM's terms (tasks, lead PATCH items, lead notes)
        the_plan.actions = AmoCRMDialect(mappings.regulation, mappings.binding, moment).translate(the_plan.actions)
    report = EnforceReport(dry_run, started, evaluation.compliance, the_plan, still_to_write(the_plan.actions, audit),
                           reconciled_found=reconciled.found, reconciled_unknown=reconciled.not_found,
                           reconciled_unresolved=len(reconciled.unknown), sync_requests=sync_requests)
    wanted = {action.idempotency_key for action in the_plan.actions}
    # the deals asked about, loaded or not: one deleted on the portal (not loaded) is judged as breaking nothing
    evaluated = None if deal_ids is None else [str(deal_id) for deal_id in deal_ids]
    if dry_run:
        composition, _ = deliver(None, audit, delivery_of(audit, context, evaluation, channel=channel,
                                                          client_id=client_id, digests=deal_ids is None),
                                 wanted=wanted, evaluated=evaluated, new=report.to_write)
        report.composed, report.held = len(composition.messages), dict(composition.held)
        return report
    # a group some of which landed before a crash is completed, even where the plan no longer wants it (the revert
    # landed and the deal is fixed, so its comment is not planned again): the comment is still owed
    planned_keys = {action.idempotency_key for action in report.to_write}
    owed = [action_of_row(row) for row in audit.owed(exclude=reconciled.unknown) if row["idempotency_key"] not in planned_keys]
    report.owed = len(owed)
    report.execution = executor.execute(owed + report.to_write)
    audit.save_rotation(the_plan.rotation)
    # intents of evaluated deals the new plan no longer wants (the violation went away) will not be resent;
    # those reconcile could not look up stay intents: they may have landed, a later run looks for them again
    keep = wanted | reconciled.unknown | {action.idempotency_key for action in owed}
    evaluated_ids = [int(deal_id) for deal_id in evaluated or ()]
    leftovers = [row["idempotency_key"] for row in audit.pending(evaluated_ids if deal_ids is not None else None)
                 if row["idempotency_key"] not in keep and row["kind"] != ActionKind.MESSAGE.value]
    report.cancelled = audit.cancel(leftovers, now())
    again = lost_messages(audit, now(), reconciled.unknown)  # first: a cancelled message frees today's quota
    composition, report.messages = deliver(
        executor, audit, delivery_of(audit, replace(context, now=now()), evaluation, channel=channel,
                                     client_id=client_id, digests=deal_ids is None),
        wanted=wanted, evaluated=evaluated, again=again,
        deleted=set(evaluated or ()) - {deal.id for deal in evaluation.deals})
    report.composed, report.held = len(composition.messages), dict(composition.held)
    if sync and (report.execution.sent or (report.messages is not None and report.messages.sent)):
        before = client.requests_made
        syncer_for(client, cache).run(full=False)
        report.sync_requests += client.requests_made - before
        report.after = evaluate(cache, mappings, now(), modes=modes, record=True).compliance
    else:
        report.after = report.before
    return report


__all__ = ["Compliance", "EnforceReport", "Evaluation", "deliver", "delivery_of", "enforce", "evaluate", "lost_messages",
           "plan_context", "still_to_write"]

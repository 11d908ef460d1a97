"""Planning (pure): the violations of a deal become Actions, by each rule's mode, each with an idempotency key.

`warn` gives tasks and notifications; `enforce` also corrects the CRM (reverts an illegal stage move,
sets the probability / next-contact date / segment, reassigns an unanswered lead). Every action is
keyed by what it fixes (rule, deal, the stage entry it belongs to), so re-planning the same situation
yields the same keys and the executor writes each action once.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from typing import Any

from crmbridge.enforce.portal_text import literal_deal, literal_names, literal_violations
from crmbridge.mapping.schema import BindingSpec, StageTaskSpec, TaskSpec
from crmbridge.model import LOST, TODO, WON, Deal, Mode, StageEntry, Violation
from crmbridge.regulation.clients import next_contact_day
from crmbridge.regulation.compiled import CompiledDirection, CompiledRegulation
from crmbridge.regulation.evaluate import beyond_look_back
from crmbridge.regulation.stages import current_run, previous_regulated, task_in_place

#: rules whose clause reports to management: their violations also notify the head (R7 reassignments,
#: R8 slow payments, R9 overdue receivables, R11 stale deals); the binding's `heads` say who and for what
HEAD_RULES = frozenset({"R7", "R8", "R9", "R11"})
#: rules whose violation is an illegal stage move that `enforce` reverts
REVERT_RULES = frozenset({"R1", "R2", "R3"})
#: deadline of a task that flags a deal (R6, R8, R9, R10 touch, R11)
FLAG_TASK_DEADLINE = timedelta(days=1)
#: reverts of one deal per day before the bridge stops reverting and escalates to the head (loop guard)
DEFAULT_MAX_REVERTS_PER_DAY = 3
#: crm.activity.todo.add ownerTypeId of a deal
DEAL_OWNER_TYPE = 2
#: task titles stay short; messages stay well under im.notify's 60,000-character limit (ATTACH_OVERSIZE)
TITLE_LIMIT = 250
MESSAGE_LIMIT = 4000


class ActionKind(str, enum.Enum):
    """What an action does in the CRM."""

    CREATE_TASK = "create_task"  # tasks.task.add bound to the deal
    CREATE_TODO = "create_todo"  # crm.activity.todo.add on the deal (a stage task the regulation wants as a to-do)
    REVERT_STAGE = "revert_stage"  # crm.deal.update STAGE_ID back to the stage the deal came from
    SET_FIELD = "set_field"  # crm.deal.update of a regulated field (probability, next contact, segment)
    REASSIGN = "reassign"  # crm.deal.update ASSIGNED_BY_ID (R7 round robin)
    COMMENT = "comment"  # crm.timeline.comment.add on the deal
    NOTIFY = "notify"  # a notice for one person about one breach: queued, then delivered in a MESSAGE (digest)
    MESSAGE = "message"  # one message to one person carrying notices: a digest, a single notice, a summary


#: kinds that set deal fields: sending them again is harmless, a lost answer is reconciled by reading the deal
UPDATING = frozenset({ActionKind.REVERT_STAGE, ActionKind.SET_FIELD, ActionKind.REASSIGN})

METHODS: Mapping[ActionKind, str] = {
    ActionKind.CREATE_TASK: "tasks.task.add",
    ActionKind.CREATE_TODO: "crm.activity.todo.add",
    ActionKind.REVERT_STAGE: "crm.deal.update",
    ActionKind.SET_FIELD: "crm.deal.update",
    ActionKind.REASSIGN: "crm.deal.update",
    ActionKind.COMMENT: "crm.timeline.comment.add",
    ActionKind.NOTIFY: "digest",  # not a REST call: a notice waits in the outbox for the message that carries it
    ActionKind.MESSAGE: "im.message.add",  # or im.notify.system.add (the `notify` channel): the action's params say
}

#: the few phrases crmbridge adds to the regulation's own messages, in the regulation's language
WORDING: Mapping[str, Mapping[str, str]] = {
    "ru": {
        "reverted": "crmbridge вернул сделку на этап «{to}» (с этапа «{from_}»).",
        "escalated": "{rules}: сделку «{title}» ({deal}) возвращали {count} раз(а) за сегодня; crmbridge больше не "
                     "откатывает её и передаёт решение руководителю. Ответственный: {manager}.",
        "reassigned": "R7: лид по сделке «{title}» ({deal}) передан от {old} к {new}: с клиентом не связались в срок.",
        "probability": "R4: crmbridge установил вероятность {value}% по этапу «{stage}».",
        "field_set": "{rule}: crmbridge записал «{label}» = {value}.",
        "clause": "Регламент: {clause}",
        "deal": "Сделка",
        "inactive_reassigned": "Ответственный {old} деактивирован: сделка передана {new}.",
    },
    "en": {
        "reverted": "crmbridge moved the deal back to «{to}» (from «{from_}»).",
        "escalated": "{rules}: deal «{title}» ({deal}) was moved back {count} time(s) today; crmbridge stops reverting "
                     "it and hands the decision to the head. Manager: {manager}.",
        "reassigned": "R7: the lead of deal «{title}» ({deal}) went from {old} to {new}: the client was not contacted in time.",
        "probability": "R4: crmbridge set the probability to {value}% for stage «{stage}».",
        "field_set": "{rule}: crmbridge set «{label}» to {value}.",
        "clause": "Regulation: {clause}",
        "deal": "Deal",
        "inactive_reassigned": "Manager {old} is deactivated: the deal went to {new}.",
    },
}


def marker_of(idempotency_key: str) -> str:
    """The text crmbridge puts into what it creates, so a lost answer can be found in the CRM later."""
    return f"[crmbridge:{hashlib.sha1(idempotency_key.encode('utf-8')).hexdigest()[:16]}]"


@dataclass(frozen=True)
class Action:
    """One write to the CRM, explained by the violation(s) it fixes."""

    idempotency_key: str
    kind: ActionKind
    rule: str  # R1..R11; a revert fixing several rules at once lists them ("R1,R2")
    deal: str
    params: Mapping[str, Any]  # the method's parameters exactly as sent
    summary: str  # one line: what the action does
    reason: str  # the violation's message (the regulation's wording)
    clause: str = ""
    violation_keys: tuple[str, ...] = ()
    recipient: str | None = None  # the user a task / notification goes to
    #: actions that belong together and are completed together after a crash, whatever the next plan says: a revert
    #: with its comment and notices, or the actions of one violation (empty: the action is its own group)
    group: str = ""
    #: MESSAGE: the notices it delivers (their keys)
    items: tuple[str, ...] = ()
    #: the CRM request when it is not the Bitrix24 method of the kind (amoCRM: "POST /api/v4/tasks"; a message through
    #: the `notify` channel: im.notify.system.add)
    crm_method: str = ""

    @property
    def method(self) -> str:
        return self.crm_method or METHODS[self.kind]

    @property
    def marker(self) -> str:
        return marker_of(self.idempotency_key)

    def as_dict(self) -> dict[str, Any]:
        return {"idempotency_key": self.idempotency_key, "marker": self.marker, "kind": self.kind.value,
                "rule": self.rule, "deal": self.deal, "method": self.method, "params": dict(self.params),
                "summary": self.summary, "reason": self.reason, "clause": self.clause,
                "violation_keys": list(self.violation_keys), "recipient": self.recipient,
                "group": self.group or self.idempotency_key}


@dataclass(frozen=True)
class PlanContext:
    """What planning needs besides deals and violations; everything is a plain value."""

    regulation: CompiledRegulation
    binding: BindingSpec
    now: datetime
    active_users: frozenset[str] | None = None  # None: every user counts as active
    reverts_today: Mapping[str, int] = field(default_factory=dict)  # deal id -> reverts done today (loop guard)
    max_reverts_per_day: int = DEFAULT_MAX_REVERTS_PER_DAY
    rotation: Mapping[str, int] = field(default_factory=dict)  # team -> next member index (R7 round robin)
    #: deal id -> {key of a stage entry the bridge reverted: the CRM stage it moved the deal back to}
    reverted_entries: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    user_names: Mapping[str, str] = field(default_factory=dict)
    portal_url: str = ""  # https://<portal> : links to deal cards in messages


@dataclass
class Plan:
    """The actions for a set of deals, and the round-robin pointers to save once they are executed."""

    actions: list[Action] = field(default_factory=list)
    rotation: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the planner could not do, and why
    #: breaches older than their rule's look-back window (`look_back`, or of a deal closed before its rule's
    #: `closed_look_back`): recorded in `violations`, not acted on (by rule)
    old_breaches: dict[str, int] = field(default_factory=dict)
    #: deals whose manager is deactivated: deal id -> who gets their tasks and notices instead (or the new manager)
    rerouted: dict[str, str] = field(default_factory=dict)


def plan(deals: Iterable[tuple[Deal, Sequence[Violation]]], context: PlanContext) -> Plan:
    """Actions for every deal with violations, deals in the order given.

    The texts written are BB-code: CRM text enters them literal (titles, names; see portal_text)."""
    result = Plan(rotation=dict(context.rotation))
    planner = _DealPlanner(replace(context, user_names=literal_names(context.user_names)), result)
    for deal, violations in deals:
        if violations:
            planner.deal(literal_deal(deal), literal_violations(violations))
    return result


class _DealPlanner:
    def __init__(self, context: PlanContext, result: Plan) -> None:
        self.ctx = context
        self.result = result
        self.words = WORDING.get(context.regulation.spec.language, WORDING["en"])
        self.zone = context.regulation.calendar.zone
        self.now = context.now.astimezone(self.zone)
        self.did = ""  # what the current deal's revert did, told in each reverted violation's notification
        self.made_by_bridge = False  # the current deal sits in a stage the bridge moved it back to

    # ------------------------------------------------------------ per deal

    def deal(self, deal: Deal, violations: Sequence[Violation]) -> None:
        direction = self.ctx.regulation.directions.get(deal.direction or "")
        if direction is None:
            return
        actions: list[Action] = []
        self.direction = direction
        self.title = deal.title
        self.did = ""
        self.made_by_bridge = self._entry_made_by_bridge(deal)
        acting = []
        for violation in violations:
            if beyond_look_back(violation, direction, self.now):
                # a deadline that passed long ago, or a deal closed long ago (history): recorded (violations, audit),
                # nobody is told or tasked, nothing is corrected
                self.result.old_breaches[violation.rule] = self.result.old_breaches.get(violation.rule, 0) + 1
            else:
                acting.append(violation)
        if not acting:
            return
        self.manager = self._route(deal, acting, actions)
        run = current_run(deal)
        current = run[-1].key if run else None
        reverting = [v for v in acting if v.severity is Mode.ENFORCE and self._reverts(v, current)]
        reverted = self._revert(deal, direction, reverting, actions) if reverting else frozenset()
        revert_group = next((a.idempotency_key for a in actions if a.kind is ActionKind.REVERT_STAGE), "")
        for violation in acting:
            if violation.severity not in (Mode.WARN, Mode.ENFORCE):
                continue
            handler = getattr(self, f"_{violation.rule.lower()}", None)
            if handler is not None:
                handler(deal, direction, violation, actions, reverted)
        seen: set[str] = set()
        for action in actions:
            if action.idempotency_key not in seen:
                seen.add(action.idempotency_key)
                if not action.group:
                    fixes_revert = reverted and reverted.intersection(action.violation_keys)
                    group = revert_group if fixes_revert else (action.violation_keys or (action.idempotency_key,))[0]
                    action = replace(action, group=group)
                self.result.actions.append(action)

    def _route(self, deal: Deal, violations: Sequence[Violation], actions: list[Action]) -> str | None:
        """Who gets the deal's tasks and notices: its manager; for a deactivated manager, as the regulation says, an
        active member of the team the deal is handed to (`reassign`, rules in enforce) or the deal's team head."""
        manager = deal.manager
        active = self.ctx.active_users
        if manager is None or active is None or manager in active:
            return manager
        policy = self.ctx.regulation.spec.enforcement.inactive_manager
        if policy == "reassign" and any(v.severity is Mode.ENFORCE for v in violations):
            new = self._next_in_team(deal)
            if new is not None:
                key = f"inactive:{deal.id}:{manager}|reassign"
                rules = ",".join(sorted({v.rule for v in violations}, key=lambda rule: int(rule[1:])))
                text = self.words["inactive_reassigned"].format(old=self._who(manager), new=self._who(new))
                actions.append(replace(Action(
                    key, ActionKind.REASSIGN, rules, deal.id, {"id": _as_id(deal.id), "fields": {"ASSIGNED_BY_ID": _as_id(new)}},
                    f"reassign {self._who(manager)} (deactivated) → {self._who(new)}", text, "",
                    tuple(v.key for v in violations)), group=key))
                self.result.rerouted[deal.id] = new
                self.result.notes.append(f"deal {deal.id}: manager {self._who(manager)} is deactivated; "
                                         f"reassigned to {self._who(new)}")
                return new
        head = self._team_head(deal)
        self.result.rerouted[deal.id] = head or ""
        self.result.notes.append(f"deal {deal.id}: manager {self._who(manager)} is deactivated; its tasks and notices "
                                 + (f"go to the head {self._who(head)}" if head else "have no active recipient"))
        return head

    def _team_head(self, deal: Deal) -> str | None:
        """The deal's team head: an active head bound to the deal's direction, else an active head of sales."""
        active = self.ctx.active_users
        heads = [head for head in self.ctx.binding.heads if active is None or head.user in active]
        team = next((head.user for head in heads if head.directions and deal.direction in head.directions), None)
        return team or next((head.user for head in heads if not head.directions), None)

    @staticmethod
    def _reverts(violation: Violation, current: str | None) -> bool:
        """An illegal move the deal made to get where it is now (R1 also reports older ones: those only warn)."""
        if violation.entry is None or violation.entry.key != current:
            return False
        if violation.rule == "R3":
            return any(item.startswith("task_not_completed:") for item in violation.missing)
        return violation.rule in REVERT_RULES

    def _entry_made_by_bridge(self, deal: Deal) -> bool:
        """Whether the deal sits in a stage because crmbridge moved it back there (its revert's own entry)."""
        reverts = self.ctx.reverted_entries.get(deal.id)
        if not reverts or len(deal.history) < 2:
            return False
        previous, current = deal.history[-2], deal.history[-1]
        return reverts.get(previous.key) == current.crm_stage

    # ------------------------------------------------------------ building blocks

    def _text(self, *parts: str) -> str:
        return "\n".join(part for part in parts if part)

    @staticmethod
    def _anchor(violation: Violation) -> str:
        """The idempotency key's base: the violation's key (rule, deal, stage entry), except where a new stage
        entry does not make a new problem: R2 names the stage and the missing fields, R6 the client's card and
        what it lacks. A deal the bridge moved back re-enters its stage; it must not be told the same again."""
        missing = ",".join(sorted(violation.missing))
        if violation.rule == "R2":
            return f"R2:{violation.deal}:{violation.stage}:{missing}"
        if violation.rule == "R6":
            client = violation.details.get("company") or violation.details.get("contact") or "none"
            return f"R6:{violation.deal}:{client}:{missing}"
        return violation.key

    def _clause(self, violation: Violation) -> str:
        return self.words["clause"].format(clause=violation.clause) if violation.clause else ""

    def _notify(self, actions: list[Action], violation: Violation, user: str | None, message: str,
                suffix: str = "notify") -> None:
        """A notice for `user`, delivered later in a message (digest); `suffix` names the recipient's role (manager,
        head:<id>, ...), never a user the bridge itself may change."""
        if not user:
            return
        key = f"{self._anchor(violation)}|{suffix}"
        first_rule = violation.rule.split(",")[0]
        spec = getattr(self.direction.rules, first_rule, None)
        form = getattr(spec, "notify", None) or self.ctx.regulation.spec.notifications.form
        notice = {"USER_ID": _as_id(user), "TEXT": message[:MESSAGE_LIMIT], "DEAL": _as_id(violation.deal),
                  "TITLE": self.title[:TITLE_LIMIT], "RULE": first_rule, "CLAUSE": violation.clause,
                  "REMEDY": getattr(spec, "remedy", "") or "", "FORM": form}
        actions.append(Action(key, ActionKind.NOTIFY, violation.rule, violation.deal, notice,
                              f"notice to {self._who(user)}", violation.message, violation.clause, (violation.key,), user))

    def _body(self, violation: Violation, description: str, key: str) -> str:
        """The text of a created task or to-do: what to do, why, the clause, and the marker reconciliation looks for."""
        return self._text(description, violation.message if violation.message not in description else "",
                          self._clause(violation), marker_of(key))

    def _create(self, actions: list[Action], kind: ActionKind, violation: Violation, deal: Deal, user: str | None,
                title: str, description: str, deadline: datetime, suffix: str, key: str | None = None) -> None:
        """A task bound to the deal (tasks.task.add) or a CRM to-do on it (crm.activity.todo.add), for `user`, due at
        `deadline`; its description carries the marker a lost answer is found again by."""
        if not user:
            self.result.notes.append(f"{violation.rule} deal {deal.id}: no responsible user for «{title}»")
            return
        key = key or f"{self._anchor(violation)}|{suffix}"
        body = self._body(violation, description, key)
        due = deadline.astimezone(self.zone)
        stamp = due.isoformat(timespec="seconds")
        if kind is ActionKind.CREATE_TODO:
            params: dict[str, Any] = {"ownerTypeId": DEAL_OWNER_TYPE, "ownerId": _as_id(deal.id), "deadline": stamp,
                                      "title": title[:TITLE_LIMIT], "description": body, "responsibleId": _as_id(user)}
            what = "to-do"
        else:
            params = {"fields": {"TITLE": title[:TITLE_LIMIT], "DESCRIPTION": body, "RESPONSIBLE_ID": _as_id(user),
                                 "DEADLINE": stamp, "UF_CRM_TASK": [f"D_{deal.id}"]}}
            what = "task"
        actions.append(Action(key, kind, violation.rule, deal.id, params,
                              f"{what} «{title[:60]}» to {self._who(user)}, due {due:%Y-%m-%d %H:%M}",
                              violation.message, violation.clause, (violation.key,), user))

    def _flag_task(self, actions: list[Action], violation: Violation, deal: Deal, suffix: str = "task") -> None:
        """A task that flags the deal to its manager: the message is the title, due in a day."""
        user = self.manager or self._first_head(deal, violation.rule)
        self._create(actions, ActionKind.CREATE_TASK, violation, deal, user, violation.message, violation.message,
                     self.now + FLAG_TASK_DEADLINE, suffix)

    def _update(self, actions: list[Action], key: str, kind: ActionKind, rule: str, deal: Deal,
                fields: Mapping[str, Any], summary: str, reason: str, clause: str, violation_keys: tuple[str, ...]) -> None:
        actions.append(Action(key, kind, rule, deal.id, {"id": _as_id(deal.id), "fields": dict(fields)},
                              summary, reason, clause, violation_keys))

    def _heads(self, deal: Deal, rules: Iterable[str]) -> list[str]:
        wanted = set(rules)
        heads: list[str] = []
        active = self.ctx.active_users
        for head in self.ctx.binding.heads:
            if head.directions and deal.direction not in head.directions:
                continue
            if active is not None and head.user not in active:
                continue  # a deactivated head receives nothing
            if head.rules and not wanted & set(head.rules):
                continue
            if head.user not in heads:
                heads.append(head.user)
        return heads

    def _first_head(self, deal: Deal, rule: str) -> str | None:
        heads = self._heads(deal, [rule])
        return heads[0] if heads else None

    def _notify_heads(self, actions: list[Action], deal: Deal, violation: Violation, message: str,
                      suffix: str = "head") -> None:
        if violation.rule not in HEAD_RULES:
            return
        for head in self._heads(deal, [violation.rule]):
            # a head who manages the deal gets the head's copy too: keys never depend on who manages it now
            self._notify(actions, violation, head, message, f"{suffix}:{head}")

    def _who(self, user: str | None) -> str:
        if not user:
            return "—"
        name = self.ctx.user_names.get(user)
        return f"{name} ({user})" if name else user

    def _deadline(self, entered: datetime, span: timedelta) -> datetime:
        """Counted from entering the stage, as the regulation says; never already past when the task is set."""
        due = entered + span
        return due if due > self.now else self.now + span

    def _crm_field(self, field_id: str) -> str | None:
        bound = self.ctx.binding.fields.get(field_id)
        return bound.crm_field if bound is not None else None

    def _crm_option(self, field_id: str, option: str) -> str | None:
        bound = self.ctx.binding.fields.get(field_id)
        if bound is None:
            return None
        return next((crm_id for crm_id, regulated in bound.options.items() if regulated == option), None)

    # ------------------------------------------------------------ reverts (R1, R2, R3) and the loop guard

    def _revert(self, deal: Deal, direction: CompiledDirection, violations: list[Violation],
                actions: list[Action]) -> frozenset[str]:
        """One revert per stage entry, whatever rules it fixes; the keys of the violations it fixes (none: no revert)."""
        run = current_run(deal)
        entry = run[-1] if run else None
        previous = previous_regulated(run) if run else None
        if entry is None or previous is None or entry.stage is None or previous.stage is None \
                or previous.crm_stage == entry.crm_stage or entry.stage == LOST:
            return frozenset()
        forward = entry.stage == WON or (previous.stage in direction.order and entry.stage in direction.order
                                         and direction.order[entry.stage] > direction.order[previous.stage])
        if not forward:
            return frozenset()  # a move back is allowed (R1); requirements of a stage reached backwards are not the move's fault
        rules = ",".join(sorted({v.rule for v in violations}, key=lambda rule: int(rule[1:])))
        key = f"revert:{deal.id}:{entry.key}"
        keys = tuple(v.key for v in violations)
        reasons = "\n".join(v.message for v in violations)
        clauses = "\n".join(dict.fromkeys(v.clause for v in violations if v.clause))
        if self.ctx.reverts_today.get(deal.id, 0) >= self.ctx.max_reverts_per_day:
            self._escalate(deal, entry, violations, rules, actions)
            return frozenset()
        to_name, from_name = direction.stage_name(previous.stage), direction.stage_name(entry.stage)
        fields: dict[str, Any] = {"STAGE_ID": previous.crm_stage}
        if direction.modes["R4"] is Mode.ENFORCE and previous.stage in direction.stages:
            # the stage's probability goes with the move, so the re-read deal does not trip R4 (loop guard)
            fields["PROBABILITY"] = direction.stages[previous.stage].probability
        did = self.words["reverted"].format(to=to_name, from_=from_name)
        self._update(actions, key, ActionKind.REVERT_STAGE, rules, deal, fields,
                     f"move back {entry.crm_stage} → {previous.crm_stage}", reasons, clauses, keys)
        comment_key = key + "|comment"
        comment = self._text(reasons, did, *(self.words["clause"].format(clause=c) for c in clauses.split("\n") if c),
                             marker_of(comment_key))
        actions.append(Action(comment_key, ActionKind.COMMENT, rules, deal.id,
                              {"fields": {"ENTITY_ID": _as_id(deal.id), "ENTITY_TYPE": "deal", "COMMENT": comment}},
                              "timeline comment: why the stage was reverted", reasons, clauses, keys))
        self._task_of_stage_back_in(deal, direction, previous, violations[0], key, actions)
        self.did = did  # each reverted violation's own notification says it
        return frozenset(keys)

    def _task_of_stage_back_in(self, deal: Deal, direction: CompiledDirection, previous: StageEntry,
                               violation: Violation, revert_key: str, actions: list[Action]) -> None:
        """After a revert the deal has exactly one open task for the stage it is back in: the one still open from
        its earlier visit, or a new one set with the revert (same group: completed with it after a crash). R3 then
        finds it for the new entry, so no later run sets another."""
        spec = getattr(direction.stages.get(previous.stage or ""), "task", None)
        if spec is None or self._has_stage_task(deal, spec, previous.stage, self.now):
            return
        user = self.manager if spec.responsible == "manager" else self._first_head(deal, "R3")
        kind = ActionKind.CREATE_TODO if spec.kind == TODO else ActionKind.CREATE_TASK
        self._create(actions, kind, violation, deal, user or self.manager, spec.title,
                     spec.description or spec.title, self.now + spec.deadline, "stage_todo" if spec.kind == TODO
                     else "stage_task", key=f"{revert_key}|stage_task")

    def _escalate(self, deal: Deal, entry: StageEntry, violations: list[Violation], rules: str,
                  actions: list[Action]) -> None:
        count = self.ctx.reverts_today.get(deal.id, 0)
        first = violations[0]
        message = self.words["escalated"].format(rules=rules, title=deal.title, deal=deal.id, count=count,
                                                 manager=self._who(deal.manager))
        reasons = "\n".join(v.message for v in violations)
        escalation = Violation(rules, deal.id, first.severity, first.clause, message, first.since, first.direction,
                               first.stage, entry)
        heads = self._heads(deal, [v.rule for v in violations]) or ([self.manager] if self.manager else [])
        for head in heads:
            self._notify(actions, escalation, head, self._text(message, reasons), suffix=f"escalate:{head}")
        self.result.notes.append(f"{rules} deal {deal.id}: {count} reverts today, escalated instead of reverting")

    # ------------------------------------------------------------ rules

    def _r1(self, deal: Deal, direction: CompiledDirection, violation: Violation, actions: list[Action],
            reverted: frozenset[str]) -> None:
        """R1 skipped stage: the manager is told; enforce also reverted the move (see _revert)."""
        self._notify(actions, violation, self.manager,
                     self._text(violation.message, self.did if violation.key in reverted else ""))

    def _r2(self, deal: Deal, direction: CompiledDirection, violation: Violation, actions: list[Action],
            reverted: frozenset[str]) -> None:
        """R2 required fields: the manager is told which; enforce also reverted the move into the stage.

        Not on a stage the bridge itself moved the deal back to: its revert already told the manager why.
        """
        if violation.key in reverted:
            self._notify(actions, violation, self.manager, self._text(violation.message, self.did))
        elif not self.made_by_bridge:
            self._notify(actions, violation, self.manager, violation.message)

    def _r3(self, deal: Deal, direction: CompiledDirection, violation: Violation, actions: list[Action],
            reverted: frozenset[str]) -> None:
        """R3 stage task: create it on entering the stage; an uncompleted one blocks leaving (enforce reverts)."""
        for item in violation.missing:
            if item.startswith("task:"):
                spec = getattr(direction.stages.get(deal.stage or ""), "task", None)
                if spec is None or violation.entry is None or reverted or self._has_stage_task(deal, spec):
                    continue  # (a deal being moved back out of this stage does not get its task: see _revert)
                user = self.manager if spec.responsible == "manager" else self._first_head(deal, "R3")
                # the regulation says which kind the stage task is; a to-do gets its own key suffix, so
                # switching a stage from task to to-do creates the to-do instead of finding the task "done"
                todo = spec.kind == TODO
                self._create(actions, ActionKind.CREATE_TODO if todo else ActionKind.CREATE_TASK, violation, deal,
                             user or self.manager, spec.title, spec.description or violation.message,
                             self._deadline(violation.entry.entered, spec.deadline),
                             suffix="stage_todo" if todo else "stage_task")
            elif item.startswith("task_not_completed:"):
                self._notify(actions, violation, self.manager,
                             self._text(violation.message, self.did if violation.key in reverted else ""))

    def _has_stage_task(self, deal: Deal, spec: StageTaskSpec, stage: str | None = None,
                        entered: datetime | None = None) -> bool:
        """The stage's task (or to-do, by its kind) covers the deal's visit to the stage (R3's own judgement:
        regulation.stages.task_in_place): set since it entered, or still open from an earlier visit in this run."""
        run = current_run(deal)
        if entered is None:
            if not run:
                return False
            entered = run[-1].entered
        return task_in_place(deal, run, stage or deal.stage or "", entered, spec.title, self.direction.rules.R3.match,
                             spec.kind) is not None

    def _r4(self, deal: Deal, direction: CompiledDirection, violation: Violation, actions: list[Action],
            reverted: frozenset[str]) -> None:
        """R4 probability: enforce sets the stage's probability (a revert already carries it)."""
        if reverted:
            return
        expected = violation.details.get("expected")
        if violation.severity is Mode.ENFORCE and expected is not None:
            stage = direction.stage_name(deal.stage)
            self._update(actions, f"{violation.key}|probability", ActionKind.SET_FIELD, "R4", deal,
                         {"PROBABILITY": expected}, f"probability {violation.details.get('actual')} → {expected}",
                         violation.message, violation.clause, (violation.key,))
            self._notify(actions, violation, self.manager,
                         self._text(violation.message, self.words["probability"].format(value=expected, stage=stage)))
        else:
            self._notify(actions, violation, self.manager, violation.message)

    def _r5(self, deal: Deal, direction: CompiledDirection, violation: Violation, actions: list[Action],
            reverted: frozenset[str]) -> None:
        """R5 postponed client: a follow-up task on the next-contact date; enforce sets a missing date, the nearest of
        the regulated options (3/6/9 months after the refusal) that is not in the past."""
        spec = direction.rules.R5
        next_contact = violation.details.get("next_contact")
        follow_up_missing = any(item.startswith("task:") for item in violation.missing)
        if next_contact is None and violation.severity is Mode.ENFORCE:
            # the nearest option not yet passed (a breach past every option is history: beyond_look_back held it back)
            day = next_contact_day(violation.since, spec.months, self.now, self.zone)
            crm_field = self._crm_field(spec.next_contact_field)
            if day is not None and crm_field:
                label = self.ctx.regulation.label(spec.next_contact_field)
                self._update(actions, f"{violation.key}|next_contact", ActionKind.SET_FIELD, "R5", deal,
                             {crm_field: day.isoformat()}, f"{label} → {day.isoformat()}", violation.message,
                             violation.clause, (violation.key,))
                self._follow_up(actions, violation, deal, day, spec.follow_up_task)
                self._notify(actions, violation, self.manager, self._text(
                    violation.message, self.words["field_set"].format(rule="R5", label=label, value=day.isoformat())))
                return
        if next_contact is not None and follow_up_missing:
            self._follow_up(actions, violation, deal, date.fromisoformat(str(next_contact)[:10]), spec.follow_up_task)
            return
        self._notify(actions, violation, self.manager, violation.message)

    def _follow_up(self, actions: list[Action], violation: Violation, deal: Deal, day: date, spec: TaskSpec) -> None:
        moment = datetime.combine(day, time(10, 0), self.zone)
        self._create(actions, ActionKind.CREATE_TASK, violation, deal, self.manager, spec.title,
                     spec.description or violation.message, moment if moment > self.now else self.now + spec.deadline,
                     suffix="follow_up")

    def _r6(self, deal: Deal, direction: CompiledDirection, violation: Violation, actions: list[Action],
            reverted: frozenset[str]) -> None:
        """R6 contact data: a task to the manager to complete the client's card."""
        self._flag_task(actions, violation, deal)

    def _r7(self, deal: Deal, direction: CompiledDirection, violation: Violation, actions: list[Action],
            reverted: frozenset[str]) -> None:
        """R7 response time: a lead still waiting is reassigned round robin in the team (enforce), both managers
        and the head are told; a lead that was contacted, only late, is told to its manager alone."""
        spec = direction.rules.R7
        waiting = violation.details.get("contacted") is False
        first_stages = set(spec.stages or [direction.first_stage])
        # unanswered: it never left the first stage(s); one the bridge moved back there was worked already
        unanswered = all(entry.stage in first_stages for entry in current_run(deal))
        handed_over = any(action.kind is ActionKind.REASSIGN for action in actions)  # its manager was deactivated
        if (violation.severity is Mode.ENFORCE and spec.reassign and waiting and unanswered and not handed_over
                and violation.details.get("reassign", True)):
            new = self._next_in_team(deal)
            if new is not None:
                message = self.words["reassigned"].format(title=deal.title, deal=deal.id,
                                                          old=self._who(deal.manager), new=self._who(new))
                self._update(actions, f"{violation.key}|reassign", ActionKind.REASSIGN, "R7", deal,
                             {"ASSIGNED_BY_ID": _as_id(new)}, f"reassign {self._who(deal.manager)} → {self._who(new)}",
                             violation.message, violation.clause, (violation.key,))
                self._notify(actions, violation, self.manager, self._text(violation.message, message), "notify_old")
                self._notify(actions, violation, new, self._text(violation.message, message), "notify_new")
                for head in self._heads(deal, ["R7"]):
                    self._notify(actions, violation, head, self._text(violation.message, message), f"head:{head}")
                return
            self.result.notes.append(f"R7 deal {deal.id}: no other active member in the manager's team")
        self._notify(actions, violation, self.manager, violation.message)
        if waiting:
            self._notify_heads(actions, deal, violation, violation.message)

    def _next_in_team(self, deal: Deal) -> str | None:
        for team_id, team in self.ctx.binding.teams.items():
            if team.directions and deal.direction not in team.directions:
                continue
            if deal.manager not in team.members and any(deal.manager in other.members
                                                        for other in self.ctx.binding.teams.values()):
                continue
            active = self.ctx.active_users
            members = team.members
            start = self.result.rotation.get(team_id, 0)
            for step in range(len(members)):
                index = (start + step) % len(members)
                candidate = members[index]
                if candidate != deal.manager and (active is None or candidate in active):
                    self.result.rotation[team_id] = (index + 1) % len(members)
                    return candidate
        return None

    def _flag_with_head(self, deal: Deal, direction: CompiledDirection, violation: Violation, actions: list[Action],
                        reverted: frozenset[str]) -> None:
        """R8 slow payment, R9 overdue receivable, R11 stale deal: a task to the manager, the head is notified."""
        self._flag_task(actions, violation, deal)
        self._notify_heads(actions, deal, violation, violation.message)

    _r8 = _flag_with_head
    _r9 = _flag_with_head
    _r11 = _flag_with_head

    def _r10(self, deal: Deal, direction: CompiledDirection, violation: Violation, actions: list[Action],
             reverted: frozenset[str]) -> None:
        """R10 segments: enforce writes the segment to its field; an overdue touch gets a task."""
        spec = direction.rules.R10
        expected = violation.details.get("expected_segment")
        if spec.segment_field in violation.missing and expected:
            crm_field, option = self._crm_field(spec.segment_field), self._crm_option(spec.segment_field, expected)
            if violation.severity is Mode.ENFORCE and crm_field and option:
                label = self.ctx.regulation.label(spec.segment_field)
                self._update(actions, f"{violation.key}|segment", ActionKind.SET_FIELD, "R10", deal,
                             {crm_field: option}, f"{label} → {expected}", violation.message, violation.clause,
                             (violation.key,))
            else:
                self._notify(actions, violation, self.manager, violation.message)
        if "touch" in violation.missing:
            self._flag_task(actions, violation, deal, suffix="touch")


def _as_id(value: str) -> int | str:
    return int(value) if str(value).isdigit() else value


def same_value(current: Any, wanted: Any) -> bool:
    """Whether a deal field read back from the CRM already holds what an update set (reconciliation)."""
    if current is None or current == "":
        return wanted in (None, "")
    if isinstance(current, list):
        current = current[0] if current else ""
    text, target = str(current).strip(), str(wanted).strip()
    if text == target:
        return True
    try:
        return float(text) == float(target)
    except ValueError:
        return text[:10] == target[:10] and len(target) == 10  # a date written as YYYY-MM-DD, read with a time

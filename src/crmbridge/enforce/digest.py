"""Messages people read (pure): queued notices become one digest per person per run, grouped by rule.

A notice (ActionKind.NOTIFY) is one breach told to one person; it waits in the outbox (`actions`, status `queued`)
until a message carries it. `compose` turns the queued notices into messages (ActionKind.MESSAGE):

* a digest per person: grouped by rule, each rule with its clause and what to do, each deal a link to its card;
  rules whose `notify` is `individual` get a message per notice instead;
* heads of sales (binding heads without `directions`) get one summary a day instead of their reports: open breaches
  by rule and by manager, what crmbridge did since the last summary, the reports listed; an escalation (the loop
  guard hands a deal to the head) needs a decision today and goes in a digest;
* outside the regulation's working hours nothing goes out (`notifications.outside_working_hours: hold`), and no
  person gets more than `notifications.max_per_person_per_day` messages a day: what waits stays queued.

A message is keyed by its recipient and the notices it carries, so composing the same notices again (after a crash)
gives the same message. Through the `chat` channel (im.message.add) a message carries the marker by which a lost
answer is looked up (im.dialog.messages.get); see execute.py and the README on what each channel guarantees.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from crmbridge.enforce.plan import Action, ActionKind, marker_of
from crmbridge.regulation.compiled import CompiledRegulation

#: a digest stays well under the portal's message limits; more notices go into the next message
DIGEST_LIMIT = 12_000
#: notices a summary lists by name (the rest are counted)
SUMMARY_LISTED = 30
CHANNELS = ("chat", "notify")

WORDS: Mapping[str, Mapping[str, str]] = {
    "ru": {
        "digest": "crmbridge: {count} нарушений регламента по вашим сделкам",
        "single": "crmbridge: нарушение регламента",
        "remedy": "Что сделать: {remedy}",
        "deal": "Сделка {deal}",
        "summary": "crmbridge: сводка по регламенту на {date}",
        "open": "Открытых нарушений: {count}",
        "by_rule": "По правилам: {items}",
        "by_manager": "По менеджерам: {items}",
        "did": "crmbridge с прошлой сводки: {items}",
        "reports": "Отчёты по правилам:",
        "more": "… и ещё {count}",
        "kinds": "задач: {create_task}, дел: {create_todo}, возвратов этапа: {revert_stage}, исправлений полей: "
                 "{set_field}, передач сделок: {reassign}, комментариев: {comment}, сообщений: {message}",
    },
    "en": {
        "digest": "crmbridge: {count} regulation breaches in your deals",
        "single": "crmbridge: a regulation breach",
        "remedy": "What to do: {remedy}",
        "deal": "Deal {deal}",
        "summary": "crmbridge: regulation summary for {date}",
        "open": "Open breaches: {count}",
        "by_rule": "By rule: {items}",
        "by_manager": "By manager: {items}",
        "did": "crmbridge since the last summary: {items}",
        "reports": "Reports by rule:",
        "more": "… and {count} more",
        "kinds": "tasks: {create_task}, to-dos: {create_todo}, stage reverts: {revert_stage}, fields corrected: "
                 "{set_field}, deals handed over: {reassign}, comments: {comment}, messages: {message}",
    },
}


@dataclass(frozen=True)
class Notice:
    """A queued notice as the outbox holds it."""

    key: str
    user: str
    deal: str
    title: str
    rule: str
    text: str
    clause: str = ""
    remedy: str = ""
    form: str = "digest"
    escalation: bool = False

    @classmethod
    def of_row(cls, row: Mapping[str, Any], params: Mapping[str, Any]) -> Notice:
        return cls(row["idempotency_key"], str(params.get("USER_ID") or row.get("recipient_id") or ""),
                   str(params.get("DEAL") or row["deal_id"]), str(params.get("TITLE") or ""),
                   str(params.get("RULE") or row["rule"]), str(params.get("TEXT") or row.get("reason") or ""),
                   str(params.get("CLAUSE") or ""), str(params.get("REMEDY") or ""), str(params.get("FORM") or "digest"),
                   "|escalate:" in row["idempotency_key"])


@dataclass(frozen=True)
class SummaryFacts:
    """What a head of sales' summary reports besides the notices: the latest evaluation and crmbridge's writes."""

    open_by_rule: Mapping[str, int] = field(default_factory=dict)
    open_by_manager: Mapping[str, int] = field(default_factory=dict)  # user id -> open breaches
    #: head of sales -> crmbridge's writes by kind since that head's last summary
    done_by_kind: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Delivery:
    """Everything composing needs besides the notices; plain values."""

    regulation: CompiledRegulation
    now: datetime
    heads_of_sales: frozenset[str] = frozenset()
    sent_today: Mapping[str, int] = field(default_factory=dict)  # messages a person got today (done or in flight)
    summary_today: frozenset[str] = frozenset()  # heads of sales whose summary of today exists
    facts: SummaryFacts = field(default_factory=SummaryFacts)
    portal_url: str = ""
    channel: str = "chat"
    client_id: str | None = None
    user_names: Mapping[str, str] = field(default_factory=dict)
    #: False in a run about a few deals (the daemon's reaction to an event): only `individual` notices go out, digests
    #: and summaries wait for the next run over all deals, so an event stream does not become a message stream
    digests: bool = True


@dataclass
class Composition:
    messages: list[Action] = field(default_factory=list)
    held: Counter[str] = field(default_factory=Counter)  # why notices wait: working_hours, daily_cap


def compose(notices: Iterable[Notice], delivery: Delivery) -> Composition:
    """Messages for the queued notices that may go out now; the others stay queued (`held`)."""
    spec = delivery.regulation.spec.notifications
    words = WORDS.get(delivery.regulation.spec.language, WORDS["en"])
    result = Composition()
    by_user: dict[str, list[Notice]] = {}
    for notice in notices:
        by_user.setdefault(notice.user, []).append(notice)
    if spec.outside_working_hours == "hold" and not delivery.regulation.calendar.is_working_time(delivery.now):
        result.held["working_hours"] += sum(len(items) for items in by_user.values())
        return result
    for user, items in sorted(by_user.items(), key=lambda pair: _as_int(pair[0])):
        budget = spec.max_per_person_per_day - delivery.sent_today.get(user, 0)
        if not delivery.digests:
            waiting = [notice for notice in items if notice.form != "individual"]
            if waiting:
                result.held["next_full_run"] += len(waiting)
            items = [notice for notice in items if notice.form == "individual"]
        if delivery.digests and user in delivery.heads_of_sales and spec.head_summary:
            # reports wait for the day's summary; an escalation needs a decision today and goes in a digest
            reports = [notice for notice in items if not notice.escalation]
            items = [notice for notice in items if notice.escalation]
            if reports and (user in delivery.summary_today or budget <= 0):
                result.held["daily_summary" if user in delivery.summary_today else "daily_cap"] += len(reports)
            elif reports:
                budget -= 1
                result.messages.append(_summary(user, reports, delivery, words))
        bundles = [[notice] for notice in items if notice.form == "individual"]
        bundles += _digests([notice for notice in items if notice.form != "individual"], delivery, words)
        for bundle in bundles:
            if budget <= 0:
                result.held["daily_cap"] += len(bundle)
                continue
            budget -= 1
            result.messages.append(_message(user, bundle, _digest_text(bundle, delivery, words), delivery,
                                            f"message:{user}:{_digest_of(bundle)}", "digest"))
    return result


def _digests(items: Sequence[Notice], delivery: Delivery, words: Mapping[str, str]) -> list[list[Notice]]:
    """The notices in as few digests as fit the size limit (usually one)."""
    bundles: list[list[Notice]] = []
    current: list[Notice] = []
    for notice in sorted(items, key=lambda n: (_rule_order(n.rule), _as_int(n.deal), n.key)):
        if current and len(_digest_text([*current, notice], delivery, words)) > DIGEST_LIMIT:
            bundles.append(current)
            current = []
        current.append(notice)
    if current:
        bundles.append(current)
    return bundles


def _digest_text(bundle: Sequence[Notice], delivery: Delivery, words: Mapping[str, str]) -> str:
    lines = [f"[b]{words['digest'].format(count=len(bundle)) if len(bundle) > 1 else words['single']}[/b]"]
    rules: dict[str, list[Notice]] = {}
    for notice in sorted(bundle, key=lambda n: (_rule_order(n.rule), _as_int(n.deal), n.key)):
        rules.setdefault(notice.rule, []).append(notice)
    for rule, items in rules.items():
        lines.append("")
        clause = items[0].clause
        lines.append(f"[b]{bb_text(clause) if clause else rule}[/b]")
        if items[0].remedy:
            lines.append(words["remedy"].format(remedy=bb_text(items[0].remedy)))
        for notice in items:
            lines.append(f"• {_link(notice, delivery, words)}: {bb_text(notice.text)}")
    return "\n".join(lines)


def _summary(user: str, items: Sequence[Notice], delivery: Delivery, words: Mapping[str, str]) -> Action:
    zone = delivery.regulation.calendar.zone
    day = delivery.now.astimezone(zone).date().isoformat()
    facts = delivery.facts
    lines = [f"[b]{words['summary'].format(date=day)}[/b]",
             words["open"].format(count=sum(facts.open_by_rule.values()))]
    if facts.open_by_rule:
        ordered = sorted(facts.open_by_rule.items(), key=lambda pair: _rule_order(pair[0]))
        lines.append(words["by_rule"].format(items=", ".join(f"{rule} {count}" for rule, count in ordered)))
    if facts.open_by_manager:
        top = sorted(facts.open_by_manager.items(), key=lambda pair: (-pair[1], _as_int(pair[0])))[:10]
        lines.append(words["by_manager"].format(
            items=", ".join(f"{bb_text(delivery.user_names.get(who) or who)} {count}" for who, count in top)))
    done = facts.done_by_kind.get(user)
    if done:
        counts = {kind: done.get(kind, 0) for kind in ("create_task", "create_todo", "revert_stage", "set_field",
                                                       "reassign", "comment", "message")}
        lines.append(words["did"].format(items=words["kinds"].format(**counts)))
    lines += ["", f"[b]{words['reports']}[/b]"]
    ordered = sorted(items, key=lambda n: (_rule_order(n.rule), _as_int(n.deal), n.key))
    lines += [f"• {n.rule} {_link(n, delivery, words)}: {bb_text(n.text)}" for n in ordered[:SUMMARY_LISTED]]
    if len(ordered) > SUMMARY_LISTED:
        rest = Counter(n.rule for n in ordered[SUMMARY_LISTED:])
        lines.append(words["more"].format(count=len(ordered) - SUMMARY_LISTED) + " ("
                     + ", ".join(f"{rule} {count}" for rule, count in sorted(rest.items(),
                                                                             key=lambda p: _rule_order(p[0]))) + ")")
    return _message(user, items, "\n".join(lines), delivery, f"summary:{user}:{day}", "summary")


def _message(user: str, bundle: Sequence[Notice], text: str, delivery: Delivery, key: str, form: str) -> Action:
    """The write that delivers `bundle` to `user` through the configured channel, with the marker lookups use."""
    rules = sorted({notice.rule for notice in bundle}, key=_rule_order)
    deals = {notice.deal for notice in bundle}
    return message_action(user, text, key, form, channel=delivery.channel, client_id=delivery.client_id,
                          user_names=delivery.user_names, rule=",".join(rules) or "-",
                          deal=next(iter(deals)) if len(deals) == 1 else "0", summary=f"{len(bundle)} notice(s)",
                          reason="; ".join(rules), items=tuple(notice.key for notice in bundle))


def message_action(user: str, text: str, key: str, form: str, *, channel: str, client_id: str | None,
                   user_names: Mapping[str, str], rule: str = "-", deal: str = "0", summary: str = "",
                   reason: str = "", items: tuple[str, ...] = ()) -> Action:
    """A message (digest, summary, the monthly KPI message) to `user` through `channel`, keyed `key`, its text ending
    in the marker by which a lost answer is looked up (execute.py)."""
    marker = marker_of(key)
    body = f"{text}\n{marker}"
    params: dict[str, Any]
    if channel == "notify":
        params = {"USER_ID": _as_int(user), "MESSAGE": body}
        if client_id:
            # the docs: through a webhook TAG needs CLIENT_ID; then a resend of the same TAG replaces the first one
            params.update({"TAG": "crmbridge|" + marker[11:-1], "SUB_TAG": f"crmbridge|{form}|{user}",
                           "CLIENT_ID": client_id})
    else:
        params = {"DIALOG_ID": str(user), "MESSAGE": body, "SYSTEM": "Y", "URL_PREVIEW": "N"}
    who = user_names.get(user)
    return Action(key, ActionKind.MESSAGE, rule, deal, params,
                  f"{form} to {who + ' (' + user + ')' if who else user}" + (f": {summary}" if summary else ""),
                  reason, "", (), user, group=key, items=items,
                  crm_method="im.notify.system.add" if channel == "notify" else "")


def _link(notice: Notice, delivery: Delivery, words: Mapping[str, str]) -> str:
    label = words["deal"].format(deal=notice.deal)
    return f"[url={delivery.portal_url}/crm/deal/details/{notice.deal}/]{label}[/url]"


def _digest_of(bundle: Sequence[Notice]) -> str:
    return hashlib.sha1("\n".join(sorted(notice.key for notice in bundle)).encode()).hexdigest()[:16]


def bb_text(text: str) -> str:
    """CRM text inside BB-code: square brackets become look-alikes, so a title cannot open or close a tag."""
    return text.replace("[", "［").replace("]", "］")


def _rule_order(rule: str) -> tuple[int, str]:
    head = rule.split(",")[0]
    return (int(head[1:]) if head[1:].isdigit() else 99, rule)


def _as_int(value: str) -> int:
    return int(value) if str(value).isdigit() else 0


__all__ = ["CHANNELS", "Composition", "Delivery", "Notice", "SummaryFacts", "bb_text", "compose", "message_action"]

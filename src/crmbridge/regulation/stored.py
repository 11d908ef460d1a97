"""Deals and violations as compact JSON and back, exactly: what the audit keeps of a judgement between runs (pure).

A moment is kept as microseconds since the epoch plus its zone when that is not the given default one, so a value
read back is the same instant in the same zone (messages and keys print its offset). Values of a field or a
violation's details keep their type (text, number, date, moment); a violation's message placeholders are kept as
the text they render to, which is all a message reads of them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from crmbridge.model import Client, Deal, EntryKind, FieldValue, Mode, Outcome, StageEntry, Task, TaskStatus, Violation
from crmbridge.regulation.compiled import CompiledRegulation, _new_violation, texts

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICRO = timedelta(microseconds=1)
# default=str: what the audit prints of a value nested in a raw CRM value or a list of details (text.json_text too)
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False, default=str).encode
_loads = json.loads


def micros(moment: datetime) -> int:
    """An aware moment as microseconds since 1970 (UTC): exact, and ordered as the moments are."""
    return (moment - _EPOCH) // _MICRO


def _zone_name(zone: tzinfo | None) -> str:
    key = getattr(zone, "key", None)
    return key if isinstance(key, str) else str(zone)


@lru_cache(maxsize=64)
def _zone(name: str) -> tzinfo:
    if name == "UTC":
        return timezone.utc
    if name.startswith("UTC") and len(name) > 3:  # a fixed offset: "UTC+03:00"
        sign = -1 if name[3] == "-" else 1
        hours, _, minutes = name[4:].partition(":")
        return timezone(sign * timedelta(hours=int(hours), minutes=int(minutes or 0)))
    return ZoneInfo(name)


class KeptViolation(Violation):
    """A violation read back from a kept judgement: its message as rendered when it was judged (its horizon vouches
    that it still reads so), not rendered again."""

    __slots__ = ("_message",)

    @property
    def message(self) -> str:
        return self._message  # type: ignore[no-any-return]


class Codec:
    """Encodes and decodes with one default zone (the mapping's): its moments are kept as bare numbers. A violation's
    clause and template are the regulation's (not kept): the regulation it was judged with (the audit's fingerprint)."""

    def __init__(self, zone: tzinfo, regulation: CompiledRegulation) -> None:
        self.zone = zone
        self.zone_name = _zone_name(zone)
        self.regulation = regulation

    # ------------------------------------------------------------ moments and values

    def moment(self, value: datetime | None) -> Any:
        if value is None:
            return None
        name = _zone_name(value.tzinfo)
        return micros(value) if name == self.zone_name else [micros(value), name]

    def to_moment(self, kept: Any) -> datetime | None:
        if kept is None:
            return None
        if type(kept) is int:
            return (_EPOCH + kept * _MICRO).astimezone(self.zone)
        return (_EPOCH + kept[0] * _MICRO).astimezone(_zone(kept[1]))

    def value(self, value: Any) -> Any:
        """A value of any type a field or a detail holds; texts and JSON scalars stay as they are."""
        if value is None or type(value) in (str, int, float, bool):
            return value
        if isinstance(value, datetime):
            return ["t", self.moment(value)]
        if isinstance(value, date):
            return ["d", value.isoformat()]
        if isinstance(value, Decimal):
            return ["n", str(value)]
        if isinstance(value, (Mode, Outcome, EntryKind, TaskStatus)):
            return ["s", value.value]
        return ["j", value]  # a raw CRM value (a list or an object) as JSON

    def to_value(self, kept: Any) -> Any:
        if type(kept) is not list:
            return kept
        tag, payload = kept
        if tag == "t":
            return self.to_moment(payload)
        if tag == "d":
            return date.fromisoformat(payload)
        if tag == "n":
            return Decimal(payload)
        return payload  # "j" as it was; "s" an enum's value (its text is what reads it)

    # ------------------------------------------------------------ deals

    def entry(self, entry: StageEntry) -> list[Any]:
        return [entry.crm_stage, self.moment(entry.entered), entry.kind.value, entry.direction, entry.stage,
                entry.crm_id, entry.by_bridge]

    def to_entry(self, kept: Sequence[Any]) -> StageEntry:
        return StageEntry(kept[0], self.to_moment(kept[1]), EntryKind(kept[2]), kept[3], kept[4], kept[5],  # type: ignore[arg-type]
                          kept[6])

    @staticmethod
    def client(client: Client | None) -> list[Any] | None:
        if client is None:
            return None
        return [client.id, client.kind, client.name, list(client.phones), list(client.emails)]

    @staticmethod
    def to_client(kept: Sequence[Any] | None) -> Client | None:
        if kept is None:
            return None
        return Client(kept[0], kept[1], kept[2], tuple(kept[3]), tuple(kept[4]))

    def deal(self, deal: Deal) -> str:
        moment, value = self.moment, self.value
        return _dumps([
            deal.id, deal.title, deal.direction, deal.stage, deal.crm_stage, deal.outcome.value, deal.manager,
            moment(deal.created), moment(deal.modified), moment(deal.last_activity), moment(deal.closed_at),
            value(deal.amount), deal.probability,
            {name: [value(field.value), value(field.raw), field.problem] for name, field in deal.fields.items()},
            [self.entry(entry) for entry in deal.history],
            [[task.id, task.title, task.status.value, task.responsible, moment(task.created), moment(task.deadline),
              moment(task.closed), task.kind, task.by_bridge] for task in deal.tasks],
            self.client(deal.contact), self.client(deal.company), deal.ignored])

    def to_deal(self, text: str) -> Deal:
        (deal_id, title, direction, stage, crm_stage, outcome, manager, created, modified, last_activity, closed_at,
         amount, probability, fields, history, tasks, contact, company, ignored) = _loads(text)
        to_moment, to_value = self.to_moment, self.to_value
        return Deal(
            deal_id, title, direction, stage, crm_stage, Outcome(outcome), manager, to_moment(created),  # type: ignore[arg-type]
            to_moment(modified), to_moment(last_activity), to_moment(closed_at), to_value(amount), probability,
            {name: FieldValue(to_value(kept), to_value(raw), problem) for name, (kept, raw, problem) in fields.items()},
            tuple(self.to_entry(entry) for entry in history),
            tuple(Task(task_id, task_title, TaskStatus(status), responsible, to_moment(task_created),
                       to_moment(deadline), to_moment(closed), kind, by_bridge=by_bridge)
                  for task_id, task_title, status, responsible, task_created, deadline, closed, kind, by_bridge in tasks),
            self.to_client(contact), self.to_client(company), ignored)

    # ------------------------------------------------------------ violations

    def violations(self, violations: Sequence[Violation]) -> str | None:
        """A deal's violations (None: it has none). One whose figures grow with the clock (`Violation.grows`) keeps
        its placeholders as text, to be rendered again; the others keep their message rendered."""
        if not violations:
            return None
        value = self.value
        return _dumps([
            [v.rule, v.deal, v.severity.value, self.moment(v.since), v.direction, v.stage,
             self.entry(v.entry) if v.entry is not None else None, list(v.missing), v.manager,
             {name: value(item) for name, item in v.details.items()},
             v.message if v.grows is None else {name: str(item) for name, item in v.values.items()},
             None if v.grows is None else [self.moment(v.grows[0]), v.grows[1]], self.moment(v.closed)]
            for v in violations])

    def to_violations(self, text: str | None) -> list[Violation]:
        """The kept violations; those whose figures grow come back with the figures of when they were judged (the
        caller counts them again: `Evaluator.grown`)."""
        if text is None:
            return []
        to_value, to_moment, to_entry, directions = self.to_value, self.to_moment, self.to_entry, self.regulation.directions
        found: list[Violation] = []
        for (rule, deal, severity, since, direction, stage, entry, missing, manager, details, shown, grows,
             closed) in _loads(text):
            clause, template = texts(directions[direction], rule)
            made = _new_violation(rule, deal, Mode(severity), clause, template, to_moment(since), direction,  # type: ignore[arg-type]
                                  stage, to_entry(entry) if entry is not None else None, tuple(missing), manager,
                                  {name: to_value(item) for name, item in details.items()},
                                  _NO_VALUES if grows is None else shown, to_moment(closed),
                                  None if grows is None else (to_moment(grows[0]), grows[1]),
                                  _new=object.__new__ if grows else _new_kept)
            if grows is None:
                _set_message(made, shown)
            found.append(made)
        return found


_NO_VALUES: dict[str, Any] = {}  # the message is kept rendered: nothing to fill in


def rendered(violation: Violation) -> Violation:
    """The violation with its message rendered once: a fresh judgement's violations are read by the ledger, the
    output and the kept judgement alike."""
    if isinstance(violation, KeptViolation):
        return violation
    v = violation
    if v.grows is not None:
        return v  # its message is rendered again with the figures of each moment
    kept = _new_violation(v.rule, v.deal, v.severity, v.clause, v.template, v.since, v.direction, v.stage, v.entry,
                          v.missing, v.manager, v.details, v.values, v.closed, _new=_new_kept)
    _set_message(kept, v.message)
    return kept


def _new_kept(_: type) -> KeptViolation:
    return object.__new__(KeptViolation)


_set_message = KeptViolation.__dict__["_message"].__set__


__all__ = ["Codec", "KeptViolation", "micros", "rendered"]

"""Deals and violations as compact JSON and back, exactly: what the audit keeps of a judgement between runs (pure).

A moment is kept as microseconds since the epoch plus its zone when that is not the given default one, so a value
read back is the same instant in the same zone (messages and keys print its offset). Values of a field or a
violation's details keep their type (text, number, date, moment); a violation's message placeholders are kept as
the text they render to, which is all a message reads of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
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
    """A violation as a kept judgement holds it: what the audit counts and compares (rule, deal, severity, since,
    direction, stage, manager, closed, key, the clause: the regulation's own string) and `text`, the JSON
    `audit --json` prints of it without the clause (UTF-8: Cyrillic takes half the memory of a str), made when it was
    judged (its horizon vouches that it still reads so). Its message, missing items, details and entry are read
    from that text when asked (a row newly opened in the ledger); its template and values are not kept."""

    __slots__ = ("_key", "text")

    def _shown(self) -> dict[str, Any]:
        return _loads(self.text)  # type: ignore[no-any-return]

    @property
    def key(self) -> str:
        return self._key  # type: ignore[no-any-return]

    @property
    def entry_key(self) -> str | None:
        return self._shown()["entry"]  # type: ignore[no-any-return]

    @property
    def message(self) -> str:
        return self._shown()["message"]  # type: ignore[no-any-return]

    @property  # type: ignore[override]
    def missing(self) -> tuple[str, ...]:
        return tuple(self._shown()["missing"])

    @property  # type: ignore[override]
    def details(self) -> dict[str, Any]:
        return self._shown()["details"]  # type: ignore[no-any-return]



_FIELD = {name: Violation.__dict__[name].__set__ for name in Violation.__dataclass_fields__}
_SET_KEY = KeptViolation.__dict__["_key"].__set__
_SET_TEXT = KeptViolation.__dict__["text"].__set__
_MODES = {mode.value: mode for mode in Mode}


def kept_as(violation: Violation, shown: Callable[[Violation], str]) -> Violation:
    """The violation as a kept judgement holds it, `shown` making its text (one whose figures grow with the clock
    stays whole: its message is rendered again at each moment)."""
    if isinstance(violation, KeptViolation) or violation.grows is not None:
        return violation
    return _kept(violation.rule, violation.deal, violation.severity, violation.since, violation.direction,
                 violation.stage, violation.manager, violation.closed, violation.key, shown(violation).encode(),
                 violation.clause)


def _kept(rule: str, deal: str, severity: Mode, since: datetime, direction: str | None, stage: str | None,
          manager: str | None, closed: datetime | None, key: str, text: bytes, clause: str) -> KeptViolation:
    made = object.__new__(KeptViolation)
    field = _FIELD
    field["rule"](made, rule); field["deal"](made, deal); field["severity"](made, severity)  # noqa: E702
    field["since"](made, since); field["direction"](made, direction); field["stage"](made, stage)  # noqa: E702
    field["manager"](made, manager); field["closed"](made, closed); field["grows"](made, None)  # noqa: E702
    field["clause"](made, clause)
    _SET_KEY(made, key)
    _SET_TEXT(made, text)
    return made


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
        """A deal's violations as kept (`kept_as` made them; None: it has none): a JSON list of their fields, then
        on a line each the texts of the kept ones (read without unescaping them out of a JSON string). One whose
        figures grow with the clock (`Violation.grows`) is kept whole, its placeholders as text, to be rendered again."""
        if not violations:
            return None
        moment, value = self.moment, self.value
        heads: list[list[Any]] = []
        texts: list[str] = []
        for v in violations:
            if isinstance(v, KeptViolation):
                heads.append(["k", v.rule, v.deal, v.severity.value, moment(v.since), v.direction, v.stage, v.manager,
                              moment(v.closed), v.key])
                texts.append(v.text.decode())
            else:
                heads.append(["g", v.rule, v.deal, v.severity.value, moment(v.since), v.direction, v.stage,
                              self.entry(v.entry) if v.entry is not None else None, list(v.missing), v.manager,
                              {name: value(item) for name, item in v.details.items()},
                              {name: str(item) for name, item in v.values.items()}, moment(v.closed),
                              [moment(v.grows[0]), v.grows[1]] if v.grows is not None else None])
        return "\n".join([_dumps(heads), *texts])

    def to_violations(self, text: str | None) -> list[Violation]:
        """The kept violations; those whose figures grow come back with the figures of when they were judged (the
        caller counts them again: `Evaluator.grown`)."""
        if text is None:
            return []
        lines = text.split("\n")
        to_moment, modes = self.to_moment, _MODES
        found: list[Violation] = []
        next_text = 1
        for item in _loads(lines[0]):
            if item[0] == "k":
                _, rule, deal, severity, since, direction, stage, manager, closed, key = item
                found.append(_kept(rule, deal, modes[severity], to_moment(since), direction, stage,  # type: ignore[arg-type]
                                   manager, to_moment(closed), key, lines[next_text].encode(),
                                   texts(self.regulation.directions[direction], rule)[0]))  # type: ignore[index]
                next_text += 1
                continue
            _, rule, deal, severity, since, direction, stage, entry, missing, manager, details, values, closed, grows = item
            clause, template = texts(self.regulation.directions[direction], rule)
            found.append(_new_violation(
                rule, deal, modes[severity], clause, template, to_moment(since), direction, stage,  # type: ignore[arg-type]
                self.to_entry(entry) if entry is not None else None, tuple(missing), manager,
                {name: self.to_value(value) for name, value in details.items()}, values, to_moment(closed),
                (to_moment(grows[0]), grows[1]) if grows is not None else None))
        return found


__all__ = ["Codec", "KeptViolation", "kept_as", "micros"]

"""Small typed values of the regulation's vocabulary: deals, stage entries, tasks, clients and violations."""

from __future__ import annotations

import enum
import string
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any, Mapping

#: stage ids every direction has besides its ordered open stages
WON = "won"
LOST = "lost"


class Mode(str, enum.Enum):
    """What crmbridge does when a rule is broken (Kyverno-style audit vs enforce)."""

    OFF = "off"
    AUDIT = "audit"  # record only
    WARN = "warn"  # record, task / notification for people
    ENFORCE = "enforce"  # record and correct the CRM


class Outcome(str, enum.Enum):
    """Where a deal is in its life: still being worked, won or lost."""

    OPEN = "open"
    WON = "won"
    LOST = "lost"


class EntryKind(str, enum.Enum):
    """How a deal came to a stage (Bitrix24 stage history TYPE_ID 1, 2, 3, 5)."""

    CREATED = "created"
    MOVED = "moved"
    CLOSED = "closed"
    PIPELINE_CHANGED = "pipeline_changed"


class TaskStatus(str, enum.Enum):
    """A CRM task's state, reduced to what the regulation cares about."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    DEFERRED = "deferred"
    OTHER = "other"


class Verdict(str, enum.Enum):
    """What one rule says about one deal in an explanation."""

    PASSED = "passed"
    FAILED = "failed"
    NOT_APPLICABLE = "not_applicable"


@dataclass(frozen=True, slots=True)
class StageEntry:
    """One arrival of a deal in a stage: the unit R1..R3 judge and the planner keys its actions on."""

    crm_stage: str  # the CRM's stage id, e.g. "C1:NEW"
    entered: datetime
    kind: EntryKind
    direction: str | None  # regulated direction, None when the pipeline is not bound
    stage: str | None  # regulated stage id, WON, LOST, or None when the CRM stage is ignored
    crm_id: str = ""  # the history row's id in the CRM, for traceability
    by_bridge: bool = False  # crmbridge's own revert moved the deal here (the audit log says so): no person's activity

    @property
    def key(self) -> str:
        """A stable id of this entry, used in idempotency keys."""
        return f"{self.crm_stage}@{self.entered.isoformat()}"


#: kinds of a deal's Task: a Bitrix24 task bound to the deal, or a CRM to-do (universal activity) in its timeline
TASK = "task"
TODO = "todo"


@dataclass(frozen=True, slots=True)
class Task:
    """A CRM task bound to a deal, or a CRM to-do of the deal (`kind`): R3 judges both by one code path."""

    id: str
    title: str
    status: TaskStatus
    responsible: str | None
    created: datetime | None
    deadline: datetime | None = None
    closed: datetime | None = None
    kind: str = TASK  # TASK or TODO; ids are only unique within a kind
    title_key: str = field(default="", compare=False, repr=False)  # the title as stage tasks are matched
    #: crmbridge set it (its marker is in the text): setting it was not a person's activity (R11)
    by_bridge: bool = False

    def __post_init__(self) -> None:
        if not self.title_key:
            object.__setattr__(self, "title_key", " ".join(self.title.split()).casefold())

    @property
    def completed(self) -> bool:
        return self.status is TaskStatus.COMPLETED


@dataclass(frozen=True, slots=True)
class Client:
    """A contact or company card: what R6 and R10 look at."""

    id: str
    kind: str  # "contact" or "company"
    name: str
    phones: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FieldValue:
    """A regulated field of a deal: the parsed value, or why the raw CRM value is not usable."""

    value: Any  # str, Decimal, date, datetime, or the regulated enum option id; None when empty
    raw: Any = None  # the CRM's own value when it is not usable, for messages (not kept for valid values: memory)
    problem: str | None = None  # e.g. "not a date: '31.02.2026'"; None when valid or empty

    @property
    def empty(self) -> bool:
        return self.value is None and self.problem is None

    ok: bool = field(init=False, compare=False, repr=False)  # filled and valid (a number > 0): what R2 wants

    def __post_init__(self) -> None:
        value = self.value
        object.__setattr__(self, "ok", value is not None and self.problem is None
                           and not (type(value) is Decimal and value <= 0))


EMPTY = FieldValue(None)


@dataclass(frozen=True, slots=True)
class Deal:
    """A deal in the regulation's vocabulary, with everything the rules need and nothing CRM-specific."""

    id: str
    title: str
    direction: str | None  # None: the deal's pipeline is not bound; no rule applies
    stage: str | None  # regulated stage id, WON, LOST, or None when its CRM stage is ignored
    crm_stage: str
    outcome: Outcome
    manager: str | None
    created: datetime
    modified: datetime | None = None
    last_activity: datetime | None = None
    closed_at: datetime | None = None
    amount: Decimal | None = None
    probability: int | None = None
    fields: Mapping[str, FieldValue] = field(default_factory=dict)
    history: tuple[StageEntry, ...] = ()  # oldest first
    tasks: tuple[Task, ...] = ()  # tasks and to-dos alike: both are the manager's work on the deal (R5, R10, R11)
    contact: Client | None = None
    company: Client | None = None
    ignored: bool = False  # its pipeline is excluded in the binding (`ignore`), not merely unbound
    #: the entries since the deal last came into its current direction (oldest first): most rules judge
    #: this run, so it is computed once when the deal is built rather than by every rule that asks
    run: tuple[StageEntry, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        history = self.history
        start = len(history)
        while start > 0 and history[start - 1].direction == self.direction:
            start -= 1
            if history[start].kind is EntryKind.PIPELINE_CHANGED:
                break
        object.__setattr__(self, "run", history[start:])

    def field(self, name: str) -> FieldValue:
        return self.fields.get(name, EMPTY)

    @property
    def current_entry(self) -> StageEntry | None:
        """The entry that brought the deal to where it is now (the last one of its current pipeline)."""
        return self.history[-1] if self.history else None

    @property
    def client_key(self) -> str | None:
        """Who the client is, for per-client rules (R10)."""
        if self.company is not None:
            return f"company:{self.company.id}"
        if self.contact is not None:
            return f"contact:{self.contact.id}"
        return None


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule on one deal: what the audit records and the enforcement planner acts on."""

    rule: str  # "R1".."R11"
    deal: str  # deal id
    severity: Mode  # the rule's mode for the deal's direction
    clause: str  # the regulation's text of the rule
    template: str  # the message template from the regulation file
    since: datetime  # when the deal started breaking the rule
    direction: str | None
    stage: str | None  # regulated stage the violation belongs to
    entry: StageEntry | None = None  # the stage entry it belongs to (idempotency)
    missing: tuple[str, ...] = ()  # regulated items missing or wrong (field ids, "task:<title>", ...)
    manager: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    values: Mapping[str, Any] = field(default_factory=dict)  # placeholders of the template
    #: when the deal was won or lost (None: it is open): a closed deal's stage breaches age with its closing
    #: (`closed_look_back`, see regulation.evaluate.beyond_look_back)
    closed: datetime | None = None
    #: (moment, working hours only) a figure of time waited counts from (R7, R8): its message grows with the clock
    #: (`regulation.timers.grown` counts it again at another moment), not its verdict
    grows: tuple[datetime, bool] | None = None

    @property
    def message(self) -> str:
        """What the manager reads: the regulation's template filled in (rendered on demand, it is not free)."""
        values = dict(self.values)
        values.setdefault("rule", self.rule)
        values.setdefault("deal", self.deal)
        values.setdefault("manager", self.manager or "")
        values.setdefault("missing", ", ".join(self.missing))
        values.setdefault("since", self.since.strftime("%Y-%m-%d %H:%M"))
        return fill(self.template, values)

    @property
    def entry_key(self) -> str | None:
        """The key of the stage entry it belongs to (None: none)."""
        return self.entry.key if self.entry is not None else None

    @property
    def key(self) -> str:
        """Stable identity of this violation across runs: rule, deal and the stage entry (or since)."""
        anchor = self.entry.key if self.entry is not None else self.since.isoformat()
        return f"{self.rule}:{self.deal}:{anchor}"


@dataclass(frozen=True, slots=True)
class RuleExplanation:
    """One line of `audit --deal`: a rule's verdict on a deal and why."""

    rule: str
    verdict: Verdict
    reason: str
    violations: tuple[Violation, ...] = ()


@lru_cache(maxsize=1024)
def _template_parts(template: str) -> tuple[tuple[str, str | None, str], ...]:
    """(literal text, placeholder name or None, the placeholder as written) of a message template.

    Only a plain `{name}` is ever filled: a format (`{title:>1500000000}`), a conversion (`{title!r}`), an
    attribute or index (`{title.__class__}`, `{title[0]}`) or a position (`{0}`) is shown as written, never
    evaluated (str.format would allocate the width, or reach into Python objects). `check` reports them.
    """
    parts: list[tuple[str, str | None, str]] = []
    try:
        for literal, name, spec, conversion in string.Formatter().parse(template):
            if name is None:
                parts.append((literal, None, ""))
                continue
            written = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            plain = name if name.isidentifier() and not spec and not conversion else None
            parts.append((literal, plain, written))
    except ValueError:  # a lone brace: the template is shown as written
        return ((template, None, ""),)
    return tuple(parts)


def fill(template: str, values: Mapping[str, Any]) -> str:
    """The template with its `{name}` placeholders filled from `values`; unknown ones stay visible as written."""
    out: list[str] = []
    for literal, name, written in _template_parts(template):
        out.append(literal)
        if name is not None and name in values:
            out.append(str(values[name]))
        else:
            out.append(written)
    return "".join(out)


def as_date(moment: date | datetime) -> date:
    """The calendar date of a value that may be a date or a datetime."""
    return moment.date() if isinstance(moment, datetime) else moment

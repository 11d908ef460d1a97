"""Pydantic models of `mappings/regulation.yaml` and `mappings/bitrix24.yaml`; their JSON Schema drives editors."""

from __future__ import annotations

import re
from datetime import date, timedelta
from functools import cached_property
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from crmbridge.model import LOST, WON, Mode

RULE_IDS: tuple[str, ...] = tuple(f"R{n}" for n in range(1, 12))

_DURATION = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?$", re.ASCII)
#: no regulation's timer or window is longer; longer ones are typos (and overflow date arithmetic)
MAX_DURATION = timedelta(days=3660)
DURATION_PATTERN = r"^(\d+w)?(\d+d)?(\d+h)?(\d+m)?$"


def parse_duration(text: Any) -> timedelta:
    """`3d`, `1h`, `90m`, `2w`, `1h30m` -> timedelta; anything else is a ValueError saying how to write it."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise ValueError(f"expected a duration such as 90m, 1h or 3d, got {_show(text)} — write a number with a unit: m, h, d or w")
    if isinstance(text, int):
        raise ValueError(f"the duration {text} has no unit — write e.g. {text}m, {text}h or {text}d")
    compact = text.strip().replace(" ", "")
    match = _DURATION.match(compact)
    if not compact or match is None:
        raise ValueError(f"{_show(text)} is not a duration — write a number with a unit: 90m, 1h, 3d, 2w (or 1h30m)")
    parts = [part or "0" for part in match.groups()]
    if any(len(part) > 7 for part in parts):
        span = None  # more digits than any timer needs: refused before the arithmetic overflows
    else:
        weeks, days, hours, minutes = (int(part) for part in parts)
        span = timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes)
    if span is None or span > MAX_DURATION:
        raise ValueError(f"{_show(text)} is too long: a duration is at most {MAX_DURATION.days}d (10 years) — "
                         "check the number and its unit")
    return span


def format_duration(span: timedelta, units: str = "d h m") -> str:
    """The inverse of parse_duration (`1h30m`); with other units (`д ч мин`) for messages: `1 ч 30 мин`."""
    minutes = int(span.total_seconds() // 60)
    days, rest = divmod(minutes, 1440)
    hours, minutes = divmod(rest, 60)
    day, hour, minute = (units.split() + ["d", "h", "m"])[:3] if units != "d h m" else ("d", "h", "m")
    parts = [(days, day), (hours, hour), (minutes, minute)]
    if units == "d h m":
        return "".join(f"{count}{unit}" for count, unit in parts if count) or "0m"
    return " ".join(f"{count} {unit}" for count, unit in parts if count) or f"0 {minute}"


def _show(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {"type": "string", "pattern": DURATION_PATTERN, "examples": ["90m", "1h", "3d"],
         "description": "A duration: a number with a unit m (minutes), h (hours), d (days), w (weeks), e.g. 90m, 1h, 3d."}
    ),
]

Id = Annotated[
    str,
    Field(pattern=r"^[a-z][a-z0-9_]*$", description="An id: lower-case latin letters, digits and _ (e.g. client_interest)."),
]
RuleId = Literal["R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9", "R10", "R11"]


def _as_str(value: Any) -> Any:
    """CRM ids may be written as numbers in YAML (`0:`, `- 2`); they are strings in the CRM."""
    if isinstance(value, bool):
        return value
    return str(value) if isinstance(value, int) else value


CrmId = Annotated[str, BeforeValidator(_as_str), Field(min_length=1)]


class Strict(BaseModel):
    """Unknown keys are errors (with did-you-mean), never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- the regulation


FieldType = Literal["text", "number", "date", "datetime", "enum", "link", "phone", "email"]


class FieldSpec(Strict):
    """A regulated field: what it means and what a valid value is."""

    type: FieldType = Field(description="text; number (must be > 0); date; datetime; enum (one of options); link (URL); phone / email (the client's card has one)")
    label: str = Field("", description="The field's name in the admin's language, used in messages.")
    options: list[Id] = Field(default_factory=list, description="For enum: the regulated option ids, bound to CRM option ids in the binding.")

    @model_validator(mode="after")
    def _options_fit_type(self) -> "FieldSpec":
        if self.type == "enum" and not self.options:
            raise ValueError("an enum field needs options — add `options: [yes, no]` (your option ids)")
        if self.type != "enum" and self.options:
            raise ValueError(f"only enum fields have options, this one is {self.type} — remove `options` or set `type: enum`")
        return self


def _requirement(value: Any) -> Any:
    return {"field": value} if isinstance(value, str) else value


class RequirementSpec(Strict):
    """A field that must hold a valid value; written as `field_id` or as a mapping with extra conditions."""

    field: Id
    equals: Id | None = Field(None, description="For enum fields: the option the field must hold (e.g. yes).")
    future: bool = Field(False, description="For dates: the date must not be in the past.")

    @cached_property
    def plain(self) -> bool:
        """Only "filled and valid" is asked, no extra condition."""
        return self.equals is None and not self.future


Requirement = Annotated[RequirementSpec, BeforeValidator(_requirement)]


class TaskSpec(Strict):
    """A formal task the manager must do (R3 stage task, R5 follow-up)."""

    title: str = Field(min_length=1)
    description: str = ""
    deadline: Duration = Field(timedelta(days=1), description="Deadline counted from when the deal entered the stage.")
    responsible: Literal["manager", "head"] = "manager"
    must_complete: bool = Field(False, description="R3: the task must be completed before the deal leaves the stage.")


TaskKind = Literal["task", "todo"]


class StageTaskSpec(TaskSpec):
    """A stage's formal task (R3): a CRM task, or a CRM to-do where the regulation asks for one."""

    kind: TaskKind = Field(
        "task",
        description="task: a task bound to the deal (Bitrix24 tasks.task.add); todo: a to-do in the deal's timeline "
                    "(Bitrix24 crm.activity.todo.add). R3 looks for the stage task among the deal's tasks or its to-dos "
                    "accordingly, and enforcement creates that kind.")


class StageSpec(Strict):
    """One regulated stage of a direction, in order."""

    id: Id
    name: str = Field(min_length=1)
    probability: int = Field(ge=0, le=100, description="Probability of closing, percent (R4).")
    purpose: str = ""
    requires_to_enter: list[Requirement] = Field(default_factory=list, description="R2: fields required to enter this stage.")
    requires_to_leave: list[Requirement] = Field(default_factory=list, description="R2: fields required before leaving this stage.")
    task: StageTaskSpec | None = Field(None, description="R3: the stage's formal task.")
    stale_after: Duration | None = Field(None, description="R11: overrides the rule's stale_after for this stage.")


class FinalStageSpec(Strict):
    """Won or Lost of a direction."""

    name: str = Field(min_length=1)
    probability: int = Field(ge=0, le=100)
    requires: list[Requirement] = Field(default_factory=list, description="R2: fields required to close the deal this way.")
    task: StageTaskSpec | None = None


NotifyForm = Literal["digest", "individual"]


class RuleSpec(Strict):
    """Common to every rule: its mode, the clause it enforces and the manager's message."""

    mode: Mode = Field(Mode.AUDIT, description="off; audit (record only); warn (task / notification); enforce (correct the CRM).")
    clause: str = Field("", description="The regulation's text of the rule, quoted in audits.")
    message: str = Field("", description="What the manager reads; placeholders like {title}, {stage}, {missing}.")
    remedy: str = Field("", description="What to do about a breach, one line; digests show it under the rule's clause.")
    notify: NotifyForm | None = Field(
        None, description="How people are told about this rule's breaches: digest (one message per person per run, "
                          "grouped by rule) or individual (a message per breach); empty = notifications.form.")


def _positive_window(cls: type, window: timedelta, info: ValidationInfo) -> timedelta:
    """A look-back window (`look_back`, `closed_look_back`) is longer than 0m: 0m would silently stop every push of
    the rule, which is what `mode: audit` says, plainly."""
    if window <= timedelta(0):
        raise ValueError(f"{info.field_name} must be longer than 0m — e.g. 7d; to record this rule's breaches without "
                         "pushing any, set its mode to audit")
    return window


class LookBack(RuleSpec):
    """A rule whose breach is a moment in the past (a deadline that passed): old breaches are recorded, not pushed."""

    look_back: Duration = Field(
        timedelta(days=7),
        description="Breaches older than this (counted from when the deadline passed) are recorded and shown in "
                    "`crmbridge audit`, but nobody is notified or tasked about them and nothing is corrected.")

    _window = field_validator("look_back")(_positive_window)


class ClosedLookBack(RuleSpec):
    """A stage rule (R1-R4, R6): on an open deal it acts however old the breach; a won or lost deal closed longer ago
    than `closed_look_back` is history: its breaches are recorded, not pushed."""

    # 7d, like `look_back`: a breach is normally caught within minutes (webhook) or one scheduled run, so the window
    # only matters when enforcement is first switched on or after the bridge was down; a week covers an outage over
    # a long weekend, while reopening a deal won weeks ago would change KPIs and reports people already acted on
    closed_look_back: Duration = Field(
        timedelta(days=7),
        description="A won or lost deal closed longer ago than this (counted from when it was closed): its breaches "
                    "of this rule are recorded and shown in `crmbridge audit`, but the deal is not reverted or "
                    "corrected and nobody is tasked or told. Open deals are acted on however old.")

    _window = field_validator("closed_look_back")(_positive_window)


class R1Order(ClosedLookBack):
    """R1: a deal moves forward one stage at a time."""

    allow_backward: bool = True
    allow_skip: bool = False
    won_from: list[Id] = Field(default_factory=list, description="Stages Won may be reached from; empty = the last stage.")
    lost_from_any: bool = True
    created_in: list[Id] = Field(default_factory=list, description="Stages a deal may be created in besides the first one.")
    pipeline_change_any_stage: bool = Field(True, description="A deal moved into this direction may arrive in any stage.")


class R2RequiredFields(ClosedLookBack):
    """R2: required fields of the stages a deal entered or left."""

    cumulative: bool = Field(True, description="A deal in stage N also needs the leave-fields of stages 1..N-1.")


class R3StageTask(ClosedLookBack):
    """R3: the stage's formal task exists (and is completed before leaving, where required)."""

    create_within: Duration = Field(timedelta(minutes=15), description="Grace after entering a stage before the task must exist.")
    match: Literal["exact", "contains", "any"] = Field(
        "exact", description="How a CRM task is recognised as the stage task: same title, title contains it, or any task.")


class R4Probability(ClosedLookBack):
    """R4: the deal's probability equals its stage's."""

    @field_validator("message")
    @classmethod
    def _actual_carries_its_percent(cls, text: str) -> str:
        # {actual} reads "50%" or "not set" (never "not set%"): templates written as "{actual}%" keep working
        return text.replace("{actual}%", "{actual}")


class R5Postponed(RuleSpec):
    """R5: a postponed client has a next-contact date 3/6/9 months ahead and a follow-up task."""

    reason_field: Id = "loss_reason"
    reasons: list[Id] = Field(default_factory=lambda: ["not_now"])
    next_contact_field: Id = "next_contact_date"
    months: list[Annotated[int, Field(ge=1, le=36)]] = Field(default_factory=lambda: [3, 6, 9])
    tolerance: Duration = timedelta(days=7)
    follow_up_task: TaskSpec = Field(default_factory=lambda: TaskSpec(title="Follow up with the client"))


class R6ContactData(ClosedLookBack):
    """R6: the client's card carries a phone and an e-mail from the named stages on."""

    stages: list[Id] = Field(default_factory=list, description="From these stages on (any direction that has them) contact data is required.")
    require: list[Literal["phone", "email"]] = Field(default_factory=lambda: ["phone", "email"])


class R7ResponseTime(LookBack):
    """R7: an inbound lead is contacted within the SLA."""

    sla: Duration = timedelta(hours=1)
    contact_field: Id = "first_contact_time"
    stages: list[Id] = Field(default_factory=list, description="Stages where the lead waits for contact; empty = the first stage.")
    working_hours: bool = True
    reassign: bool = Field(True, description="enforce: reassign round robin within the manager's team.")


class R8Payment(LookBack):
    """R8: once the client agreed, the deal reaches payment within the limit."""

    from_stages: list[Id] = Field(default_factory=list, description="Stages meaning the client agreed to buy (`won` allowed).")
    within: Duration = timedelta(hours=72)
    paid_field: Id = "payment_date"
    working_hours: bool = False


class R9Receivables(LookBack):
    """R9: overdue payments are reported with their reason; instalment reminders."""

    due_field: Id = "payment_due_date"
    paid_field: Id = "payment_date"
    grace: Duration = timedelta(0)
    remind_middle: bool = True
    remind_day_before: bool = True
    working_hours: bool = False


class SegmentSpec(Strict):
    """R10: a client segment by time since the last purchase, and its touch cadence."""

    option: Id = Field(description="The segment field's option id.")
    after: Duration = Field(timedelta(0), description="Since the last purchase, at least.")
    before: Duration | None = Field(None, description="Since the last purchase, less than; empty = no limit.")
    touch_every: Duration | None = None


class R10Segments(RuleSpec):
    """R10: the client's segment field follows the time since the last purchase, and touches follow its cadence."""

    segment_field: Id = "client_segment"
    segments: list[SegmentSpec] = Field(default_factory=list)
    working_hours: bool = False


class R11Stale(RuleSpec):
    """R11: no deal sits without activity on its stage longer than allowed."""

    stale_after: Duration = timedelta(days=45)
    working_hours: bool = False


class RulesSpec(Strict):
    """R1..R11 with their parameters and modes."""

    R1: R1Order = Field(default_factory=R1Order)
    R2: R2RequiredFields = Field(default_factory=R2RequiredFields)
    R3: R3StageTask = Field(default_factory=R3StageTask)
    R4: R4Probability = Field(default_factory=R4Probability)
    R5: R5Postponed = Field(default_factory=R5Postponed)
    R6: R6ContactData = Field(default_factory=R6ContactData)
    R7: R7ResponseTime = Field(default_factory=R7ResponseTime)
    R8: R8Payment = Field(default_factory=R8Payment)
    R9: R9Receivables = Field(default_factory=R9Receivables)
    R10: R10Segments = Field(default_factory=R10Segments)
    R11: R11Stale = Field(default_factory=R11Stale)


class DirectionSpec(Strict):
    """A direction (sales process): its ordered stages, Won, Lost and rule overrides."""

    name: str = Field(min_length=1)
    stages: list[StageSpec] = Field(min_length=1)
    won: FinalStageSpec
    lost: FinalStageSpec
    rules: dict[RuleId, dict[str, Any]] = Field(
        default_factory=dict, description="Per-direction overrides of rule parameters, e.g. R7: {sla: 5m}."
    )

    @cached_property
    def stage_ids(self) -> tuple[str, ...]:
        return tuple(stage.id for stage in self.stages)


def known_zone(zone: str) -> str:
    """An IANA time zone name zoneinfo knows, else a ValueError with a did-you-mean."""
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        from difflib import get_close_matches

        close = get_close_matches(str(zone), sorted(available_timezones()), n=1)
        hint = f'did you mean "{close[0]}"?' if close else "use an IANA name such as Europe/Moscow"
        raise ValueError(f'unknown time zone "{zone}" — {hint}') from None
    return zone


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOURS = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


class CalendarSpec(Strict):
    """Working hours for timers (R7, and R8..R11 where they say working_hours: true)."""

    timezone: str = "Europe/Moscow"
    working_hours: str = Field("09:00-18:00", pattern=r"^\d\d:\d\d-\d\d:\d\d$")
    working_days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        default_factory=lambda: ["mon", "tue", "wed", "thu", "fri"]
    )
    holidays: list[date] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        return known_zone(zone)

    @field_validator("working_hours")
    @classmethod
    def _hours(cls, text: str) -> str:
        match = _HOURS.match(text)
        if match is None or (int(match[1]), int(match[2])) >= (int(match[3]), int(match[4])):
            raise ValueError(f'"{text}" is not a working day — write start-end in 24h time, e.g. 09:00-18:00')
        return text


_CYRILLIC = re.compile("[А-Яа-яЁё]")
#: Russian defaults of the explanation texts newer than the shipped regulation some admins started from
EXPLAIN_RU = {
    "task_pending": "задачу этапа «{task}» нужно поставить до {deadline}",
    "previous_task_done": "задача предыдущего этапа выполнена",
    "ignored": "воронка сделки исключена в привязке (ignore): правила к ней не применяются (стадия CRM {crm_stage})",
    "passed": "соблюдено",
    "failed": "нарушено",
    "not_applicable": "не применяется",
}


class ExplainWordingSpec(Strict):
    """Why a rule passed or did not apply, as `crmbridge audit --deal` shows it (a failed rule shows its message)."""

    rule_off: str = "the rule is off for this direction"
    not_bound: str = "the deal's pipeline is not bound to a direction (CRM stage {crm_stage})"
    no_history: str = "no stage history in this direction"
    not_regulated: str = "the current CRM stage is not regulated"
    from_other_pipeline: str = "moved here from another pipeline into «{stage}»: any stage is allowed"
    order_kept: str = "every move kept the order: {path}"
    nothing_required: str = "nothing is required in «{stage}»"
    fields_filled: str = "all required fields are filled: {fields}"
    no_stage_task: str = "«{stage}» has no stage task"
    task_set: str = "the stage task is set"
    task_done: str = "the stage task is set and the previous one was completed"
    task_pending: str = "the stage task «{task}» is due by {deadline}"
    previous_task_done: str = "the previous stage's task was completed"
    ignored: str = "the deal's pipeline is excluded in the binding (ignore): no rule applies (CRM stage {crm_stage})"
    probability_ok: str = "probability {expected}% matches the stage"
    not_lost: str = "the deal is not lost"
    not_postponed: str = "the loss reason ({reason}) does not postpone the client"
    postponed_ok: str = "next contact on {date} with a follow-up task"
    no_contact_stage: str = "no stage of this direction requires contact data"
    not_checked_stage: str = "the deal is not in a checked stage"
    contact_later: str = "contact data is required from «{stage}» on"
    contact_ok: str = "the client's card has: {items}"
    contacted_in_time: str = "contacted after {waited} (SLA {sla})"
    contacted_in_working_time: str = "contacted after {waited} of working time (SLA {sla})"
    waiting_contact: str = "not contacted yet; the SLA ends at {deadline}"
    not_agreed: str = "the client has not agreed to buy (or the deal is lost)"
    paid: str = "the payment is recorded"
    waiting_payment: str = "waiting for payment until {deadline}"
    no_due: str = "no payment due date"
    lost: str = "the deal is lost"
    not_due: str = "due on {due}, not overdue yet"
    not_purchase: str = "the deal is not a purchase"
    no_segments: str = "no segments are defined"
    bought_later: str = "the client bought later in deal {deal}"
    between_segments: str = "{days} days since the purchase: between segments, nothing to check"
    segment_ok: str = "segment «{segment}» is set and the client was touched in time"
    closed: str = "the deal is closed"
    active: str = "last activity {date}, within {limit}"
    passed: str = "passed"
    failed: str = "failed"
    not_applicable: str = "not applicable"

    @model_validator(mode="after")
    def _in_the_files_language(self) -> "ExplainWordingSpec":
        """Texts a file written in Russian leaves out (keys added in later versions) default to Russian, not English."""
        if any(_CYRILLIC.search(str(getattr(self, name))) for name in self.model_fields_set):
            for name, text in EXPLAIN_RU.items():
                if name not in self.model_fields_set:
                    object.__setattr__(self, name, text)
        return self


class WordingSpec(Strict):
    """Words crmbridge puts into messages, in the admin's language (the rules' own texts are in `rules:`)."""

    empty: str = "empty"
    not_positive: str = "must be greater than 0"
    zero: str = "is 0, must be greater than 0"
    wrong_option: str = "must be «{expected}»"
    in_past: str = "is in the past"
    not_a_date: str = "is not a valid value"
    no_phone: str = "phone"
    no_email: str = "e-mail"
    no_client: str = "no contact or company"
    task_missing: str = "task «{task}» is not set"
    task_not_completed: str = "task «{task}» was not completed before leaving «{stage}»"
    next_contact_off: str = "the next-contact date is not {months} months after the refusal"
    follow_up_missing: str = "no follow-up task on {date}"
    contacted_late: str = "contacted {waited} after creation"
    segment_wrong: str = "segment should be «{expected}»"
    touch_overdue: str = "no touch for {days} days"
    won_not_from_last: str = "Won may only be reached from «{stage}»"
    not_set: str = "not set"
    not_contacted: str = "no contact yet, waiting {waited}"
    units: str = Field("d h m", description="Days, hours, minutes as durations are shown in messages, e.g. `д ч мин`.")
    explain: ExplainWordingSpec = Field(default_factory=ExplainWordingSpec)


class NotificationsSpec(Strict):
    """How crmbridge tells people about breaches: few messages, at working hours."""

    form: NotifyForm = Field("digest", description="digest: one message per person per run, grouped by rule, each "
                                                   "deal a link to its card; individual: a message per breach. A rule's "
                                                   "own `notify` overrides it.")
    max_per_person_per_day: int = Field(6, ge=1, le=200, description="Messages one person gets a day at most; what is "
                                                                       "left waits for the next day.")
    outside_working_hours: Literal["hold", "send"] = Field(
        "hold", description="hold: messages wait for the calendar's working hours; send: they go at once.")
    head_summary: bool = Field(True, description="Heads of sales (binding heads without `directions`) get one summary "
                                                 "a day (breaches by rule and manager, escalations listed) instead of "
                                                 "a notice per deal.")


class EnforcementSpec(Strict):
    """How enforcement treats people the CRM cannot reach."""

    inactive_manager: Literal["head", "reassign"] = Field(
        "head", description="A deal whose manager is deactivated: head: tasks and notices go to the deal's team head; "
                            "reassign: `enforce` hands the deal round robin to an active member of the manager's team "
                            "(rules in warn route to the head).")


class RegulationSpec(Strict):
    """The company's sales regulation, CRM-neutral: no pipeline, stage, field or user ids of any CRM."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="crmbridge regulation")

    version: Literal[1] = 1
    language: str = "ru"
    calendar: CalendarSpec | None = Field(None, description="Working hours; without it timers count calendar time.")
    fields: dict[Id, FieldSpec] = Field(default_factory=dict)
    directions: dict[Id, DirectionSpec] = Field(min_length=1)
    rules: RulesSpec = Field(default_factory=RulesSpec)
    wording: WordingSpec = Field(default_factory=WordingSpec, description="Words used inside messages, in the admin's language.")
    notifications: NotificationsSpec = Field(default_factory=NotificationsSpec)
    enforcement: EnforcementSpec = Field(default_factory=EnforcementSpec)

    def rules_for(self, direction: str) -> RulesSpec:
        """The rules with the direction's overrides applied."""
        cache = self.__dict__.setdefault("_rules_for", {})
        if direction not in cache:
            overrides = self.directions[direction].rules if direction in self.directions else {}
            if not overrides:
                cache[direction] = self.rules
            else:
                merged = self.rules.model_dump()
                for rule, params in overrides.items():
                    merged[rule] = {**merged[rule], **params}
                cache[direction] = RulesSpec.model_validate(merged)
        return cache[direction]


# ---------------------------------------------------------------- the Bitrix24 binding

IGNORE = "ignore"


class PipelineBinding(Strict):
    """One CRM pipeline (CATEGORY_ID): its direction and what each of its stages means."""

    direction: Id = Field(description="A direction id of the regulation, or `ignore` for an unregulated pipeline.")
    name: str = Field("", description="The pipeline's name in the CRM (informational).")
    stages: dict[str, Id] = Field(
        default_factory=dict,
        description="The CRM's stage (Bitrix24 STAGE_ID, amoCRM status id) -> regulated stage id, won, lost, or ignore. "
                    "Every CRM stage must be listed.",
    )

    @field_validator("stages", mode="before")
    @classmethod
    def _keys_as_text(cls, value: Any) -> Any:
        # amoCRM status ids are numbers in YAML (`142: won`); they are matched as text like Bitrix24's
        if isinstance(value, dict):
            return {_as_str(key): target for key, target in value.items()}
        return value


def _field_binding(value: Any) -> Any:
    return {"crm_field": value} if isinstance(value, str) else value


class FieldBindingSpec(Strict):
    """Where a regulated field lives in the CRM."""

    crm_field: str = Field(pattern=r"^[A-Z][A-Z0-9_]*$", description="e.g. UF_CRM_1700000101 or OPPORTUNITY")
    options: dict[CrmId, Id] = Field(default_factory=dict, description="CRM enum option id -> regulated option id.")

    @field_validator("options", mode="before")
    @classmethod
    def _keys_as_text(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {_as_str(key): option for key, option in value.items()}
        return value


FieldBinding = Annotated[FieldBindingSpec, BeforeValidator(_field_binding)]


class TeamSpec(Strict):
    """Managers who share leads round robin (R7)."""

    members: list[CrmId] = Field(min_length=1)
    directions: list[Id] = Field(default_factory=list, description="Directions the team works; empty = all.")


class HeadSpec(Strict):
    """A head of sales to notify."""

    user: CrmId
    directions: list[Id] = Field(default_factory=list, description="Empty = all directions.")
    rules: list[RuleId] = Field(default_factory=list, description="Empty = all rules.")


class PlansSourceSpec(Strict):
    """A smart process whose items are sales plans (read on sync with crm.item.list)."""

    entity_type_id: int = Field(ge=1, description="The smart process's entityTypeId (crm.type.list), e.g. 1038.")
    manager: str = Field("assignedById", description="The item field holding the manager (a user id).")
    period: str = Field(description="The item field holding the period: text 2026-11 / 2026-Q4, or a date.")
    metric: str = Field(description="The item field holding the metric: a KPI id, or an enum mapped by `metrics`.")
    target: str = Field(description="The item field holding the target figure.")
    direction: str | None = Field(None, description="Optional: the item field holding the direction.")
    metrics: dict[CrmId, Id] = Field(default_factory=dict, description="Enum option id -> KPI id of kpi.yaml.")
    directions: dict[CrmId, Id] = Field(default_factory=dict, description="Enum option id -> direction.")


class BindingSpec(Strict):
    """How one Bitrix24 portal maps onto the regulation."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="crmbridge Bitrix24 binding")

    crm: Literal["bitrix24"] = "bitrix24"
    regulation: str = Field("regulation.yaml", description="The regulation file, relative to this one.")
    timezone: str | None = Field(None, description="The portal's time zone for dates without an offset; default: the regulation's calendar.")
    pipelines: dict[CrmId, PipelineBinding] = Field(min_length=1)
    fields: dict[Id, FieldBinding] = Field(default_factory=dict)
    teams: dict[Id, TeamSpec] = Field(default_factory=dict)
    heads: list[HeadSpec] = Field(default_factory=list)
    plans_source: PlansSourceSpec | None = Field(
        None, description="Plans kept in a Bitrix24 smart process (besides or instead of plans.yaml).")

    @field_validator("pipelines", mode="before")
    @classmethod
    def _keys_as_text(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {_as_str(key): pipeline for key, pipeline in value.items()}
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str | None) -> str | None:
        return None if zone is None else known_zone(zone)


# ---------------------------------------------------------------- the amoCRM binding

#: lead fields that are not custom fields but may hold a regulated value
AMOCRM_STANDARD_FIELDS = ("price", "name")


class AmoFieldBindingSpec(Strict):
    """Where a regulated field lives in amoCRM: a lead custom field by id, or the lead's price or name."""

    crm_field: str = Field(pattern=r"^([1-9][0-9]*|price|name|todo)$",
                           description="A lead custom field id (GET /api/v4/leads/custom_fields), e.g. 500101; "
                                       "or price / name")
    options: dict[CrmId, Id] = Field(default_factory=dict, description="amoCRM enum id -> regulated option id.")

    @field_validator("crm_field", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        return _as_str(value)

    @field_validator("options", mode="before")
    @classmethod
    def _keys_as_text(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {_as_str(key): option for key, option in value.items()}
        return value


def _amo_field_binding(value: Any) -> Any:
    return {"crm_field": value} if isinstance(value, (str, int)) and not isinstance(value, bool) else value


AmoFieldBinding = Annotated[AmoFieldBindingSpec, BeforeValidator(_amo_field_binding)]


class AmoCRMBindingSpec(Strict):
    """How one amoCRM account maps onto the regulation."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="crmbridge amoCRM binding")

    crm: Literal["amocrm"]
    regulation: str = Field("regulation.yaml", description="The regulation file, relative to this one.")
    timezone: str | None = Field(None, description="Dates are read in this zone; default: the regulation's calendar.")
    pipelines: dict[CrmId, PipelineBinding] = Field(
        min_length=1, description="Pipeline id -> its direction and a status id -> stage map (142 won, 143 lost).")
    fields: dict[Id, AmoFieldBinding] = Field(default_factory=dict)
    probability_field: CrmId | None = Field(
        None, description="The lead custom field (id) holding the deal's probability, which R4 checks and sets: "
                          "amoCRM leads have no probability of their own. Without it R4 cannot be judged.")
    teams: dict[Id, TeamSpec] = Field(default_factory=dict)
    heads: list[HeadSpec] = Field(default_factory=list)

    @field_validator("pipelines", mode="before")
    @classmethod
    def _keys_as_text(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {_as_str(key): pipeline for key, pipeline in value.items()}
        return value


#: a binding of either CRM; `crm` tells them apart
AnyBinding = BindingSpec | AmoCRMBindingSpec

REGULATION_SCHEMA_FILE = "regulation.schema.json"
BINDING_SCHEMA_FILE = "bitrix24.schema.json"
AMOCRM_SCHEMA_FILE = "amocrm.schema.json"
#: CRM -> its binding's JSON Schema file
BINDING_SCHEMA_FILES = {"bitrix24": BINDING_SCHEMA_FILE, "amocrm": AMOCRM_SCHEMA_FILE}


_ISO_SPAN = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")


def _durations_as_written(node: Any) -> Any:
    """Pydantic writes timedelta defaults as ISO 8601 (PT1H); editors should show them as the file has them (1h)."""
    if isinstance(node, dict):
        return {key: _durations_as_written(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_durations_as_written(value) for value in node]
    if isinstance(node, str) and len(node) > 1:
        match = _ISO_SPAN.match(node)
        if match:
            days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
            return format_duration(timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds))
    return node


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema, for `crmbridge schema`."""
    return {
        REGULATION_SCHEMA_FILE: _durations_as_written(RegulationSpec.model_json_schema(mode="validation")),
        BINDING_SCHEMA_FILE: _durations_as_written(BindingSpec.model_json_schema(mode="validation")),
        AMOCRM_SCHEMA_FILE: _durations_as_written(AmoCRMBindingSpec.model_json_schema(mode="validation")),
    }


__all__ = [
    "AMOCRM_SCHEMA_FILE", "AMOCRM_STANDARD_FIELDS", "AmoCRMBindingSpec", "AmoFieldBindingSpec", "AnyBinding",
    "BINDING_SCHEMA_FILES", "BINDING_SCHEMA_FILE", "BindingSpec", "CalendarSpec", "DirectionSpec", "EnforcementSpec",
    "FieldBindingSpec", "FieldSpec", "FinalStageSpec", "HeadSpec", "IGNORE", "LOST", "LookBack", "NotificationsSpec",
    "PipelineBinding", "PlansSourceSpec", "REGULATION_SCHEMA_FILE", "RULE_IDS",
    "RegulationSpec", "RequirementSpec", "RulesSpec", "StageSpec", "StageTaskSpec", "TaskKind", "TaskSpec", "TeamSpec",
    "WEEKDAYS", "WON",
    "format_duration", "json_schemas", "parse_duration",
]

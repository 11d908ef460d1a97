"""Pydantic models of `mappings/plans.yaml`, `kpi.yaml` and `motivation.yaml`; their JSON Schema drives editors."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, field_validator, model_validator

from crmbridge.kpi.periods import PERIOD_HELP, Period, PeriodError
from crmbridge.mapping.schema import CrmId, Id, RuleId, Strict

# ---------------------------------------------------------------- plans.yaml


def _period_keys(value: Any) -> Any:
    """YAML reads `2026:` as a number; periods are text."""
    if isinstance(value, dict):
        return {str(key) if isinstance(key, int) and not isinstance(key, bool) else key: item
                for key, item in value.items()}
    return value


def _period_text(value: Any) -> str:
    try:
        return str(Period.parse(value))
    except PeriodError as bad:
        raise ValueError(str(bad)) from None


PeriodText = Annotated[str, BeforeValidator(_period_text),
                       Field(description=f"A period: {PERIOD_HELP}.", examples=["2026-11", "2026-Q4", "2026-H2", "2026"])]
Target = Annotated[float, Field(ge=0, description="The target figure (money in the base currency, or a count).")]
Weights = Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=12, max_length=12,
                    description="12 weights, January to December: a quarter, half-year or year is spread over its "
                                "months in proportion to them.")]


class PlanEntrySpec(Strict):
    """Targets of one manager, department or the company, for one metric (and optionally one direction)."""

    manager: CrmId | None = Field(None, description="The CRM user id of the manager.")
    department: CrmId | None = Field(None, description="The CRM department id (Bitrix24 department.get).")
    company: bool = Field(False, description="true: the company's own figure (checked against the sum of its managers).")
    direction: Id | None = Field(None, description="A direction of the regulation; omitted = all directions.")
    metric: Id = Field(description="A KPI id of kpi.yaml, e.g. revenue, won_deals, new_clients.")
    targets: Annotated[dict[PeriodText, Target], BeforeValidator(_period_keys)] = Field(
        min_length=1, description="Period -> target. Write months, or a quarter / half-year / year to be spread over "
                                  "its months, or both (then they must agree).")
    spread: Id | None = Field(None, description="How a larger period is spread over its months: even, or the name "
                                                "of a profile under `weights:`. Default: the file's `spread`.")

    @model_validator(mode="after")
    def _one_owner(self) -> "PlanEntrySpec":
        owners = [name for name, set_ in (("manager", self.manager is not None),
                                          ("department", self.department is not None),
                                          ("company", self.company)) if set_]
        if len(owners) != 1:
            raise ValueError("a plan belongs to exactly one of manager, department or company: true — "
                             "write `manager: <user id>`, `department: <department id>` or `company: true`"
                             + (f" (this one has {', '.join(owners)})" if owners else ""))
        return self


class PlansSpec(Strict):
    """Sales plans: per manager (and optionally per direction) per metric per period."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="crmbridge plans")

    version: Literal[1] = 1
    spread: Id = Field("even", description="Default spread of quarters, half-years and years: even, or a profile "
                                           "name under `weights:`.")
    weights: dict[Id, Weights] = Field(default_factory=dict, description="Named seasonality profiles.")
    plans: list[PlanEntrySpec] = Field(default_factory=list)


# ---------------------------------------------------------------- kpi.yaml

Source = Literal["deals", "activities", "tasks"]
Aggregate = Literal["count", "sum", "average", "median", "p90", "new_clients", "growth", "conversion",
                    "compliance"]
#: what assigns a record to a period, per source
DATES: dict[str, tuple[str, ...]] = {
    "deals": ("closed", "created"),
    "activities": ("start", "created", "completed"),
    "tasks": ("closed", "deadline", "created"),
}
ActivityKind = Literal["call", "meeting", "email", "todo", "task"]


class WhereSpec(Strict):
    """Which records count; every condition given must hold."""

    outcome: Literal["won", "lost", "open"] | None = Field(None, description="deals: won, lost or still open.")
    kind: list[ActivityKind] = Field(default_factory=list,
                                     description="activities: call, meeting, email, todo (CRM to-do); "
                                                 "tasks: task and/or todo (both when empty).")
    completed: bool | None = Field(None, description="activities / tasks: only completed (true) or open (false) ones.")
    overdue: bool | None = Field(None, description="tasks / to-dos: completed after their deadline, or still open "
                                                   "past it (true).")
    incoming: bool | None = Field(None, description="calls and e-mails: only incoming (true) or outgoing (false).")

    @field_validator("kind", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class KpiSpec(Strict):
    """One KPI, declared over the cache: what counts, how it is dated and how it is aggregated."""

    label: str = Field(min_length=1, description="The KPI's name in reports, in the regulation's language.")
    unit: Literal["money", "count", "percent", "days", "score"] = "count"
    aggregate: Aggregate = Field(description="count, sum, average, median, p90 of records; new_clients (first won "
                                             "deal of a client); growth (of another KPI against an earlier period); "
                                             "conversion (funnel stage to stage per direction); compliance (share of "
                                             "deals without a violation of `rules`).")
    source: Source | None = Field(None, description="deals, activities (calls, meetings, e-mails, to-dos) or tasks.")
    where: WhereSpec = Field(default_factory=WhereSpec)
    date: str | None = Field(None, description="What dates a record into a period: deals: closed (CLOSEDATE) or "
                                               "created; activities: start, created, completed; tasks: closed, "
                                               "deadline, created.")
    value: str | None = Field(None, description="sum / average / median / p90 of: amount (in the base currency), "
                                                "cycle_days (created to closed), or a number field bound in the "
                                                "binding (e.g. margin, nps).")
    of: Id | None = Field(None, description="growth: the KPI whose growth this is.")
    against: Literal["previous", "year_ago"] = Field("previous", description="growth: the previous period of the "
                                                                             "same length, or the same period a year ago.")
    rules: list[RuleId] = Field(default_factory=list, description="compliance: the rules counted; empty = all.")
    cohort: Literal["active", "created"] = Field("active", description="compliance: deals worked on in the period "
                                                                       "(active) or created in it (created).")
    better: Literal["higher", "lower"] = Field("higher", description="lower for e.g. overdue tasks or cycle length.")
    plannable: bool = Field(True, description="false: a plan makes no sense (growth, conversion); shown without plan.")


class KpiFileSpec(Strict):
    """The KPIs crmbridge computes from the cache."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="crmbridge KPIs")

    version: Literal[1] = 1
    base_currency: str | None = Field(None, pattern=r"^[A-Z]{3}$",
                                      description="Money KPIs in this currency; default: the portal's base currency "
                                                  "(crm.currency.list BASE = Y).")
    headline: list[Id] = Field(default_factory=list, description="KPIs shown first (plan vs fact) in `crmbridge kpi`.")
    kpis: dict[Id, KpiSpec] = Field(min_length=1)


# ---------------------------------------------------------------- motivation.yaml


class StepSpec(Strict):
    """A bonus step: from this share of the plan done on."""

    from_share: float = Field(alias="from", ge=0, description="Share of the plan done, e.g. 1.0 = 100 %.")
    amount: float = Field(0, ge=0, description="A fixed bonus.")
    percent_of_base: float = Field(0, ge=0, description="A bonus as a percentage of the base salary.")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class CommissionSpec(Strict):
    """A percentage of the manager's own sales."""

    kpi: Id = Field("revenue", description="The money KPI the percentage is taken of.")
    percent: float = Field(ge=0, le=100)
    cap: float | None = Field(None, ge=0, description="At most this much commission per month.")


class BonusSpec(Strict):
    """A bonus by the share of a KPI's plan done, in steps: the highest step reached pays."""

    kpi: Id = "revenue"
    steps: list[StepSpec] = Field(min_length=1)


class KpiWeightsSpec(Strict):
    """A KPI bonus pool paid by weighted shares done."""

    pool: float = Field(ge=0, description="Paid in full when every weighted KPI is exactly at its plan.")
    weights: dict[Id, Annotated[float, Field(gt=0)]] = Field(min_length=1)
    cap_share: float = Field(1.5, gt=0, description="A KPI's share done counts up to this (1.5 = 150 %).")


class DeductionSpec(Strict):
    """A deduction per regulation breach (violations opened in the month)."""

    per_violation: float = Field(ge=0)
    rules: list[RuleId] = Field(default_factory=list, description="Rules counted; empty = all.")
    max: float | None = Field(None, ge=0, description="At most this much per month.")


class ManagerPaySpec(Strict):
    """Per-manager exceptions."""

    base_salary: float | None = Field(None, ge=0)
    excluded: bool = Field(False, description="true: no payout row for this user (e.g. the head of sales).")


class MotivationSpec(Strict):
    """How pay follows from the KPIs: one payout row per manager per month."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="crmbridge motivation")

    version: Literal[1] = 1
    base_salary: float = Field(0, ge=0, description="Monthly base salary.")
    commission: CommissionSpec | None = None
    bonus: BonusSpec | None = None
    kpi_bonus: KpiWeightsSpec | None = None
    deduction: DeductionSpec | None = None
    cap: float | None = Field(None, ge=0, description="The total (without the base salary) is at most this much.")
    managers: dict[CrmId, ManagerPaySpec] = Field(default_factory=dict, description="CRM user id -> exceptions.")


PLANS_SCHEMA_FILE = "plans.schema.json"
KPI_SCHEMA_FILE = "kpi.schema.json"
MOTIVATION_SCHEMA_FILE = "motivation.schema.json"


def kpi_json_schemas() -> dict[str, dict[str, Any]]:
    return {
        PLANS_SCHEMA_FILE: PlansSpec.model_json_schema(mode="validation"),
        KPI_SCHEMA_FILE: KpiFileSpec.model_json_schema(mode="validation"),
        MOTIVATION_SCHEMA_FILE: MotivationSpec.model_json_schema(mode="validation"),
    }

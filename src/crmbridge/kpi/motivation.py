"""Pure: motivation.yaml + a month's KPI figures -> one payout row per manager with every figure that led to it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from crmbridge.kpi.schema import MotivationSpec


@dataclass(frozen=True)
class ManagerFigures:
    """A manager's month: facts and plans by KPI id, and the regulation breaches opened in it."""

    manager_id: str
    name: str
    active: bool
    facts: Mapping[str, float | None]
    plans: Mapping[str, float | None]
    breaches: int = 0


@dataclass
class Payout:
    """Every figure of one manager's pay, in the order payroll reads them."""

    period: str
    manager_id: str
    name: str
    base_salary: float = 0.0
    commission_kpi: str = ""
    commission_base: float = 0.0
    commission_percent: float = 0.0
    commission: float = 0.0
    bonus_kpi: str = ""
    bonus_plan: float | None = None
    bonus_fact: float | None = None
    bonus_share: float | None = None
    bonus_step: float | None = None
    bonus: float = 0.0
    kpi_score: float | None = None
    kpi_shares: dict[str, float | None] = field(default_factory=dict)
    kpi_bonus: float = 0.0
    breaches: int = 0
    deduction: float = 0.0
    variable_before_cap: float = 0.0
    capped: bool = False
    total: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "period": self.period, "manager_id": self.manager_id, "manager": self.name,
            "base_salary": _money(self.base_salary), "commission_kpi": self.commission_kpi,
            "commission_base": _money(self.commission_base), "commission_percent": self.commission_percent,
            "commission": _money(self.commission), "bonus_kpi": self.bonus_kpi, "bonus_plan": _money(self.bonus_plan),
            "bonus_fact": _money(self.bonus_fact),
            "bonus_share_done": None if self.bonus_share is None else round(self.bonus_share, 4),
            "bonus_step": self.bonus_step, "bonus": _money(self.bonus),
            "kpi_score": None if self.kpi_score is None else round(self.kpi_score, 4),
        }
        for kpi_id, value in self.kpi_shares.items():
            row[f"share_{kpi_id}"] = None if value is None else round(value, 4)
        row.update({"kpi_bonus": _money(self.kpi_bonus), "breaches": self.breaches, "deduction": _money(self.deduction),
                    "variable_before_cap": _money(self.variable_before_cap), "capped": self.capped,
                    "total": _money(self.total), "notes": "; ".join(self.notes)})
        return row


def _money(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def payouts(spec: MotivationSpec, period: str, managers: list[ManagerFigures]) -> list[Payout]:
    return [payout(spec, period, figures) for figures in managers
            if not spec.managers.get(figures.manager_id, _NOT_EXCLUDED).excluded]


class _NotExcluded:
    excluded = False
    base_salary = None


_NOT_EXCLUDED = _NotExcluded()


def payout(spec: MotivationSpec, period: str, figures: ManagerFigures) -> Payout:
    own = spec.managers.get(figures.manager_id)
    result = Payout(period, figures.manager_id, figures.name)
    result.base_salary = own.base_salary if own is not None and own.base_salary is not None else spec.base_salary
    if not figures.active:
        result.notes.append("inactive on the portal: check the base salary for the days worked")
    if spec.commission is not None:
        base = figures.facts.get(spec.commission.kpi) or 0.0
        result.commission_kpi, result.commission_base = spec.commission.kpi, base
        result.commission_percent = spec.commission.percent
        result.commission = base * spec.commission.percent / 100
        if spec.commission.cap is not None and result.commission > spec.commission.cap:
            result.commission = spec.commission.cap
            result.notes.append(f"commission capped at {spec.commission.cap:,.0f}")
    if spec.bonus is not None:
        kpi = spec.bonus.kpi
        plan, fact = figures.plans.get(kpi), figures.facts.get(kpi)
        result.bonus_kpi, result.bonus_plan, result.bonus_fact = kpi, plan, fact
        if plan:
            result.bonus_share = (fact or 0.0) / plan
            reached = [step for step in spec.bonus.steps if result.bonus_share >= step.from_share]
            if reached:
                step = max(reached, key=lambda s: s.from_share)
                result.bonus_step = step.from_share
                result.bonus = step.amount + result.base_salary * step.percent_of_base / 100
        else:
            result.notes.append(f"no {kpi} plan: no bonus by plan share")
    if spec.kpi_bonus is not None:
        weights = spec.kpi_bonus.weights
        score = 0.0
        for kpi_id, weight in weights.items():
            plan, fact = figures.plans.get(kpi_id), figures.facts.get(kpi_id)
            kpi_share = None if not plan else min((fact or 0.0) / plan, spec.kpi_bonus.cap_share)
            result.kpi_shares[kpi_id] = kpi_share
            score += weight * (kpi_share or 0.0)
        result.kpi_score = score / sum(weights.values())
        result.kpi_bonus = spec.kpi_bonus.pool * result.kpi_score
        missing = [kpi_id for kpi_id, value in result.kpi_shares.items() if value is None]
        if missing:
            result.notes.append(f"no plan for {', '.join(missing)}: counted as 0 in the KPI score")
    if spec.deduction is not None:
        result.breaches = figures.breaches
        result.deduction = figures.breaches * spec.deduction.per_violation
        if spec.deduction.max is not None and result.deduction > spec.deduction.max:
            result.deduction = spec.deduction.max
    variable = result.commission + result.bonus + result.kpi_bonus - result.deduction
    result.variable_before_cap = variable
    if spec.cap is not None and variable > spec.cap:
        variable, result.capped = spec.cap, True
    result.total = result.base_salary + max(variable, -result.base_salary)
    return result


PAYOUT_COLUMNS = ["period", "manager_id", "manager", "base_salary", "commission_kpi", "commission_base",
                  "commission_percent", "commission", "bonus_kpi", "bonus_plan", "bonus_fact", "bonus_share_done",
                  "bonus_step", "bonus", "kpi_score"]
PAYOUT_TAIL = ["kpi_bonus", "breaches", "deduction", "variable_before_cap", "capped", "total", "notes"]

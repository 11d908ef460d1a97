"""Pure: how KPI figures read for people (in the regulation's language): numbers, names, words."""

from __future__ import annotations

from typing import Mapping

from crmbridge.kpi.facts import KpiRow
from crmbridge.kpi.inputs import FactData
from crmbridge.kpi.schema import KpiFileSpec

WORDS: dict[str, dict[str, str]] = {
    "ru": {
        "plan_fact": "План и факт", "activity": "Активность", "quality": "Качество и рост", "manager": "Менеджер",
        "department": "Отдел", "company": "Компания", "all": "все направления", "plan": "план", "fact": "факт",
        "done": "выполнено", "trend": "к прошлому периоду", "inactive": "уволен", "no_plan": "нет плана",
        "direction": "Направление", "funnel": "Воронка", "cycle": "Цикл сделки, дней", "compliance": "Соблюдение регламента",
        "sla": "Реакция на лид в срок", "violations": "Открытые нарушения по правилам и менеджерам",
        "rule": "Правило", "total": "Итого", "report": "Отчёт по продажам", "generated": "Сформирован",
        "months12": "за 12 месяцев", "median": "медиана", "p90": "90-й перцентиль", "step": "Этап",
        "stage_conversion": "конверсия", "revenue_trend": "Выручка компании: план и факт по месяцам",
        "by_manager": "План и факт по менеджерам", "million": "млн", "thousand": "тыс.", "days": "дн.",
        "no_data": "нет данных", "plans_from": "Планы", "base_currency": "Валюта",
    },
    "en": {
        "plan_fact": "Plan and fact", "activity": "Activity", "quality": "Quality and growth", "manager": "Manager",
        "department": "Department", "company": "Company", "all": "all directions", "plan": "plan", "fact": "fact",
        "done": "done", "trend": "vs previous period", "inactive": "inactive", "no_plan": "no plan",
        "direction": "Direction", "funnel": "Funnel", "cycle": "Sales cycle, days", "compliance": "Regulation compliance",
        "sla": "Leads contacted in time", "violations": "Open violations by rule and manager",
        "rule": "Rule", "total": "Total", "report": "Sales report", "generated": "Generated",
        "months12": "over 12 months", "median": "median", "p90": "90th percentile", "step": "Step",
        "stage_conversion": "conversion", "revenue_trend": "Company revenue: plan and fact by month",
        "by_manager": "Plan and fact by manager", "million": "M", "thousand": "k", "days": "d",
        "no_data": "no data", "plans_from": "Plans", "base_currency": "Currency",
    },
}


def words(language: str) -> dict[str, str]:
    return WORDS["ru" if language == "ru" else "en"]


def fmt_value(value: float | None, unit: str, language: str = "ru", *, compact: bool = True) -> str:
    """38694000 -> `38,7 млн` / `38.7 M`; percent -> `93,5 %`; days -> `31,5`; a count -> `1 204`."""
    if value is None:
        return "—"
    w = words(language)
    decimal = "," if language == "ru" else "."
    group = "\u00a0" if language == "ru" else ","

    def number(figure: float, digits: int) -> str:
        text = f"{figure:,.{digits}f}".replace(",", "\x00").replace(".", decimal).replace("\x00", group)
        return text

    if unit == "money":
        if compact and abs(value) >= 1_000_000:
            return f"{number(value / 1_000_000, 1)}\u00a0{w['million']}"
        if compact and abs(value) >= 10_000:
            return f"{number(value / 1_000, 0)}\u00a0{w['thousand']}"
        return number(value, 0)
    if unit == "percent":
        return f"{number(value, 1)}\u00a0%"
    if unit in ("days", "score"):
        return number(value, 1)
    return number(value, 0) if float(value).is_integer() else number(value, 1)


def fmt_share(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.0f}\u00a0%"


def fmt_trend(value: float | None) -> str:
    if value is None:
        return ""
    arrow = "↑" if value > 0.5 else "↓" if value < -0.5 else "→"
    return f"{arrow}{abs(value):.0f}%"


def kpi_label(kpis: KpiFileSpec, kpi: str, funnels: Mapping[str, list[str]] | None = None,
              stage_names: Mapping[str, str] | None = None) -> str:
    base, _, step = kpi.partition(":")
    label = kpis.kpis[base].label if base in kpis.kpis else base
    if not step:
        return label
    first, _, second = step.partition("-")
    names = stage_names or {}
    return f"{label}: {names.get(first, first)} → {names.get(second, second)}"


def scope_name(row: KpiRow, data: FactData, language: str) -> str:
    w = words(language)
    if row.scope == "manager":
        user = data.users.get(row.manager_id or "")
        if user is None:
            return f"#{row.manager_id}"
        return f"{user.name}" + ("" if user.active else f" ({w['inactive']})")
    if row.scope == "department":
        department = data.departments.get(row.department_id or "")
        return f"{w['department']}: {department.name if department else row.department_id}"
    return w["company"]


def stage_names(regulation: object, language: str) -> dict[str, str]:
    """Regulated stage id -> its name (won too), over all directions."""
    names: dict[str, str] = {}
    for direction in getattr(regulation, "directions", {}).values():
        for stage in direction.stages:
            names.setdefault(stage.id, stage.name)
        names.setdefault("won", direction.won.name)
    return names

"""Edge of `crmbridge payout`: a month's figures per manager from the KPI session, through motivation.yaml."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from crmbridge.kpi.load import load_motivation
from crmbridge.kpi.motivation import PAYOUT_COLUMNS, PAYOUT_TAIL, ManagerFigures, payouts
from crmbridge.kpi.periods import Period
from crmbridge.kpi.service import KpiSession


def breaches_by_manager(session: KpiSession, period: Period, rules: list[str]) -> Counter[str]:
    """Violation episodes opened in the month, per manager (of the listed rules; all when empty)."""
    counted: Counter[str] = Counter()
    for violation in session.data.violations:
        if rules and violation.rule not in rules:
            continue
        if violation.manager and period.start <= violation.opened < period.end:
            counted[violation.manager] += 1
    return counted


def payout_rows(session: KpiSession, mappings_dir: Path, period: Period) -> tuple[list[dict[str, Any]], list[str]]:
    spec, _ = load_motivation(mappings_dir, session.kpis)
    wanted = {kpi for kpi in (spec.commission.kpi if spec.commission else None,
                              spec.bonus.kpi if spec.bonus else None) if kpi}
    if spec.kpi_bonus is not None:
        wanted |= set(spec.kpi_bonus.weights)
    rows = session.rows([period], direction_filter=None, kpi_filter=wanted, with_trend=False)
    breaches = breaches_by_manager(session, period, list(spec.deduction.rules) if spec.deduction else [])
    figures: dict[str, dict[str, dict[str, float | None]]] = {}
    for row in rows:
        if row.scope != "manager" or row.manager_id is None:
            continue
        entry = figures.setdefault(row.manager_id, {"facts": {}, "plans": {}})
        entry["facts"][row.kpi] = row.fact
        entry["plans"][row.kpi] = row.plan
    managers = []
    for manager_id in sorted(figures, key=lambda text: (len(text), text)):
        user = session.data.users.get(manager_id)
        managers.append(ManagerFigures(manager_id, user.name if user else f"#{manager_id}",
                                       user.active if user else True, figures[manager_id]["facts"],
                                       figures[manager_id]["plans"], breaches.get(manager_id, 0)))
    result = [payout.as_row() for payout in payouts(spec, str(period), managers)]
    share_columns = [f"share_{kpi_id}" for kpi_id in (spec.kpi_bonus.weights if spec.kpi_bonus else {})]
    return result, [*PAYOUT_COLUMNS, *share_columns, *PAYOUT_TAIL]

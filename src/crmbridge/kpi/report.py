"""The HTML report: one self-contained file (inline CSS and SVG, no script, no CDN) that opens offline."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from html import escape
from typing import Iterable

from crmbridge.cache import kpi as store
from crmbridge.cache.store import Cache
from crmbridge.kpi import present, svg
from crmbridge.kpi.facts import KpiRow
from crmbridge.kpi.periods import Period, Span, months_back
from crmbridge.kpi.plans import Owner
from crmbridge.kpi.service import KpiSession, portal_zone

CSS = """
body{font-family:system-ui,Segoe UI,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:14px;margin:16px 0 4px}.muted{color:#666;font-size:12px}
table{border-collapse:collapse;font-size:12px;margin:6px 0}th,td{border:1px solid #dde1e6;padding:3px 7px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f5f8}tr.total td{font-weight:600;background:#fafbfc}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #dde1e6;border-radius:6px;padding:8px 12px;min-width:150px}
.card b{display:block;font-size:18px}.ok{color:#2d8a4a}.warn{color:#c46a12}.bad{color:#c23030}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:12px}@media print{body{margin:0}}
"""


def build_report(session: KpiSession, cache: Cache, period: Period, now: datetime) -> str:
    language = session.mappings.regulation.language
    w = present.words(language)
    kpis = session.kpis.kpis
    months = months_back(period, 12)
    labels = [f"{m.first_month:02d}.{str(m.year)[2:]}" for m in months]
    window = Span(months[0], months[-1])
    engine = session.engine
    plans = session.plans.book
    names = present.stage_names(session.mappings.regulation, language)
    money = lambda value: present.fmt_value(value, "money", language)  # noqa: E731
    sections: list[str] = []

    # --- headline cards: the company in the month
    cards = []
    for kpi in [k for k in (session.kpis.headline or list(kpis)[:4]) if k in kpis] + \
               [k for k in ("compliance", "sla_hit_rate", "conversion") if k in kpis]:
        fact = engine.fact(kpi, period, None, None)
        plan = plans.target(Owner("company"), None, kpi, period) if plans and kpis[kpi].plannable else None
        share = None if not plan or fact is None else fact / plan
        css = "" if share is None else ("ok" if share >= 1 else "warn" if share >= 0.8 else "bad")
        line = present.fmt_value(fact, kpis[kpi].unit, language)
        below = f"{w['plan']} {present.fmt_value(plan, kpis[kpi].unit, language)} · " \
                f"<span class='{css}'>{present.fmt_share(share)}</span>" if plan else "&nbsp;"
        cards.append(f"<div class='card'>{escape(kpis[kpi].label)}<b>{escape(line)}</b>"
                     f"<span class='muted'>{below}</span></div>")
    sections.append(f"<div class='cards'>{''.join(cards)}</div>")

    # --- company revenue by month, plan vs fact
    revenue = "revenue" if "revenue" in kpis else next(iter(kpis))
    facts = [engine.fact(revenue, month, None, None) for month in months]
    targets = [plans.target(Owner("company"), None, revenue, month) if plans else None for month in months]
    sections.append(f"<h2>{escape(w['revenue_trend'])}</h2>" + svg.bar_chart(
        w["revenue_trend"], labels, [svg.Series(w["fact"], facts)], plan=targets, plan_name=w["plan"],
        label=money))

    # --- plan vs fact per manager in the month (table + bars)
    rows = session.rows([period], direction_filter=None, kpi_filter=set(session.kpis.headline or [revenue]),
                        with_trend=True)
    managers = [row for row in rows if row.scope == "manager" and row.kpi == revenue]
    manager_names = [present.scope_name(row, session.data, language) for row in managers]
    sections.append(f"<h2>{escape(w['by_manager'])}, {escape(period.label(language))}</h2>" + svg.plan_fact_bars(
        w["by_manager"], manager_names, [row.fact for row in managers], [row.plan for row in managers],
        fact_name=w["fact"], plan_name=w["plan"], label=money))
    sections.append(_plan_fact_table(session, rows, language))

    # --- funnel per direction over the 12 months
    funnels = []
    for direction_id, stages in session.data.funnels.items():
        counts = engine.funnel(direction_id, window.start, window.end)
        if not any(counts):
            continue
        name = session.mappings.regulation.directions[direction_id].name
        steps = [(names.get(stage, stage), count) for stage, count in zip(stages, counts)]
        funnels.append(f"<h3>{escape(name)}</h3>" + svg.funnel(f"{w['funnel']}: {name}", steps))
    if funnels:
        sections.append(f"<h2>{escape(w['funnel'])} {escape(w['months12'])}</h2>" + "".join(funnels))

    # --- cycle length, compliance and SLA over 12 months
    if "cycle_median" in kpis or "cycle_p90" in kpis:
        lines = [svg.Series(kpis[k].label, [engine.fact(k, m, None, None) for m in months], svg.PALETTE[i])
                 for i, k in enumerate(k for k in ("cycle_median", "cycle_p90") if k in kpis)]
        sections.append(f"<h2>{escape(w['cycle'])}</h2>" + svg.line_chart(w["cycle"], labels, lines))
    quality = [k for k in ("compliance", "sla_hit_rate") if k in kpis]
    if quality:
        lines = [svg.Series(kpis[k].label, [engine.fact(k, m, None, None) for m in months], svg.PALETTE[i + 2])
                 for i, k in enumerate(quality)]
        sections.append(f"<h2>{escape(w['compliance'])} / {escape(w['sla'])}</h2>" + svg.line_chart(
            w["compliance"], labels, lines, maximum=100.0, label=lambda v: f"{v:.0f}%"))

    # --- activity by month (company)
    activity = [k for k in ("calls", "meetings", "emails", "tasks_done", "tasks_overdue") if k in kpis]
    if activity:
        bars = [svg.Series(kpis[k].label, [engine.fact(k, m, None, None) for m in months], svg.PALETTE[i])
                for i, k in enumerate(activity)]
        sections.append(f"<h2>{escape(w['activity'])}</h2>" + svg.bar_chart(w["activity"], labels, bars,
                                                                            label=lambda v: f"{v:.0f}"))

    # --- violations by rule and manager
    sections.append(f"<h2>{escape(w['violations'])}</h2>" + _violations_table(session, cache, language))

    zone = portal_zone(session.mappings)
    sources = ", ".join(session.plans.files) or w["no_plan"]
    head = (f"<h1>{escape(w['report'])}: {escape(period.label(language))}</h1><div class='muted'>"
            f"{escape(w['generated'])} {escape(now.astimezone(zone).strftime('%Y-%m-%d %H:%M'))} · "
            f"{escape(w['base_currency'])}: {escape(session.data.base_currency)} · {escape(w['plans_from'])}: "
            f"{escape(sources)}</div>")
    return (f"<!DOCTYPE html><html lang=\"{escape(language)}\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{escape(w['report'])} {escape(str(period))}</title><style>{CSS}</style></head><body>"
            + head + "".join(sections) + "</body></html>\n")


def _plan_fact_table(session: KpiSession, rows: list[KpiRow], language: str) -> str:
    w = present.words(language)
    kpis = session.kpis.kpis
    order = [k for k in (session.kpis.headline or []) if k in kpis]
    units: dict[tuple[str, str | None, str | None], dict[str, KpiRow]] = {}
    for row in rows:
        units.setdefault((row.scope, row.manager_id, row.department_id), {})[row.kpi] = row
    head = "".join(f"<th>{escape(kpis[k].label)}<br>{escape(w['fact'])}</th><th>{escape(w['plan'])}</th>"
                   f"<th>{escape(w['done'])}</th>" for k in order)
    body = []
    for key, figures in units.items():
        name = present.scope_name(next(iter(figures.values())), session.data, language)
        cells = []
        for kpi in order:
            row = figures.get(kpi)
            unit = kpis[kpi].unit
            if row is None:
                cells.append("<td></td><td></td><td></td>")
                continue
            share = row.share_done
            css = "" if share is None else (" class='ok'" if share >= 1 else " class='warn'" if share >= 0.8
                                            else " class='bad'")
            cells.append(f"<td>{escape(present.fmt_value(row.fact, unit, language))}</td>"
                         f"<td>{escape(present.fmt_value(row.plan, unit, language))}</td>"
                         f"<td{css}>{escape(present.fmt_share(share))}</td>")
        css = " class='total'" if key[0] != "manager" else ""
        body.append(f"<tr{css}><td>{escape(name)}</td>{''.join(cells)}</tr>")
    return f"<table><tr><th>{escape(w['manager'])}</th>{head}</tr>{''.join(body)}</table>"


def _violations_table(session: KpiSession, cache: Cache, language: str) -> str:
    w = present.words(language)
    counts = store.violations_by_rule_and_manager(cache)
    if not counts:
        return f"<p class='muted'>{escape(w['no_data'])}</p>"
    rules = sorted({row["rule"] for row in counts}, key=lambda rule: int(rule[1:]) if rule[1:].isdigit() else 99)
    by_manager: dict[str, dict[str, int]] = defaultdict(dict)
    for row in counts:
        by_manager[str(row["manager_id"] or "—")][row["rule"]] = row["open"]
    maximum = max(row["open"] for row in counts)
    body = []
    for manager, figures in sorted(by_manager.items(), key=lambda item: -sum(item[1].values())):
        user = session.data.users.get(manager)
        name = user.name if user else manager
        cells = []
        for rule in rules:
            count = figures.get(rule, 0)
            shade = int(235 - 120 * count / maximum) if count else 255
            cells.append(f"<td style='background:rgb(255,{shade},{shade})'>{count or ''}</td>")
        body.append(f"<tr><td>{escape(name)}</td>{''.join(cells)}<td>{sum(figures.values())}</td></tr>")
    totals = "".join(f"<td>{sum(f.get(rule, 0) for f in by_manager.values())}</td>" for rule in rules)
    body.append(f"<tr class='total'><td>{escape(w['total'])}</td>{totals}"
                f"<td>{sum(sum(f.values()) for f in by_manager.values())}</td></tr>")
    head = "".join(f"<th>{escape(rule)}</th>" for rule in rules)
    return f"<table><tr><th>{escape(w['manager'])}</th>{head}<th>{escape(w['total'])}</th></tr>{''.join(body)}</table>"


def report_months(period: Period) -> Iterable[Period]:
    return months_back(period, 12)

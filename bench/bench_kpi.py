"""Benchmark: all KPIs for 100,000 deals, 12 managers, 12 months from the cache (goal < 3 s incl. SQL; HTML < 5 s).

The deals, stage history, tasks, calls / meetings / e-mails come from the sandbox seeder (the mix `make demo`
shows), rewritten into a SQLite cache through the sync's own row conversions, with the deals spread over 12
managers and a plans.yaml of 12 managers x 12 months x 3 metrics. Timed, best of --repeat:

  kpi_s     open the session (every SQL read, facts, plans checked and recorded) + every KPI of every scope
            (12 managers, departments, the company) and direction for each of the 12 months, with trends
  report_s  the HTML report of the last month (12-month charts), from an open session
  *_cpu_s   the same in CPU seconds of this process: on a shared machine other work stretches the wall clock

    .venv/bin/python bench/bench_kpi.py                  # 100,000 deals
    .venv/bin/python bench/bench_kpi.py --deals 20000 --repeat 1
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from crmbridge.cache import rows  # noqa: E402
from crmbridge.cache.store import open_cache  # noqa: E402
from crmbridge.kpi.periods import Period, months_back  # noqa: E402
from crmbridge.kpi.report import build_report  # noqa: E402
from crmbridge.kpi.service import open_session  # noqa: E402

MANAGERS = list(range(2, 14))  # 12 managers (users 10..13 join the seeded 2..9)


def build_cache(directory: Path, deals: int, seed: int, now: datetime) -> Path:
    from crmbridge.sandbox import catalog
    from crmbridge.sandbox.seed import seed_portal
    from crmbridge.sandbox.state import PortalState

    state = PortalState(clock=lambda: now.timestamp())
    gc.disable()
    seed_portal(state, deals=deals, seed=seed, now=now.timestamp())
    gc.enable()
    stamp = now.isoformat()
    tables = state.cache_rows(stamp)
    for row in tables["deals"]:
        row["assigned_by_id"] = MANAGERS[row["id"] % len(MANAGERS)]
    tables["communications"] = [{**rows.communication_row(raw), "synced_at": stamp}
                                for raw in state.activities.rows.values()]
    tables["plan_items"] = [rows.plan_item_row(raw, catalog.PLANS_ENTITY_TYPE_ID, stamp)
                            for raw in state.plan_items.rows.values()]
    tables["currencies"] = [rows.currency_row({"CURRENCY": code, "AMOUNT_CNT": count, "AMOUNT": amount,
                                               "BASE": "Y" if code == catalog.BASE_CURRENCY else "N", "SORT": sort})
                            for code, (count, amount, _, sort) in catalog.CURRENCIES.items()]
    users = [rows.user_row({"ID": str(u.id), "NAME": u.name, "LAST_NAME": u.last_name, "ACTIVE": u.active,
                            "UF_DEPARTMENT": [u.department]}) for u in catalog.USERS]
    users += [rows.user_row({"ID": str(i), "NAME": f"Менеджер {i}", "LAST_NAME": "", "ACTIVE": True,
                             "UF_DEPARTMENT": [2 if i % 2 else 3]}) for i in range(10, 14)]
    tables["users"] = users
    tables["departments"] = [rows.department_row({"ID": str(d), "NAME": name, "PARENT": parent, "UF_HEAD": head})
                             for d, (name, parent, head) in catalog.DEPARTMENTS.items()]
    path = directory / "bench.db"
    cache = open_cache(path)
    with cache.atomic():
        for table, table_rows in tables.items():
            cache.upsert(table, table_rows)
    cache.close()
    return path


def write_plans(mappings: Path, months: list[Period]) -> None:
    lines = ["version: 1", "plans:"]
    for manager in MANAGERS:
        for metric, base in (("revenue", 3_000_000), ("won_deals", 40), ("new_clients", 8)):
            targets = ", ".join(f"{month}: {base + manager * 1000 if metric == 'revenue' else base}" for month in months)
            lines.append(f"  - {{manager: {manager}, metric: {metric}, targets: {{{targets}}}}}")
    (mappings / "plans.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    now = datetime(2026, 12, 2, 9, 0, tzinfo=timezone.utc)
    months = months_back(Period.parse("2026-11"), 12)
    report: dict[str, object] = {"deals": args.deals, "managers": len(MANAGERS), "months": len(months)}
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        started = time.perf_counter()
        path = build_cache(directory, args.deals, args.seed, now)
        report["build_cache_s"] = round(time.perf_counter() - started, 1)
        mappings = directory / "mappings"
        shutil.copytree(ROOT / "mappings", mappings)
        write_plans(mappings, months)
        kpi_times, report_times, kpi_cpu, report_cpu = [], [], [], []
        for _ in range(args.repeat):
            cache = open_cache(path)
            started, cpu = time.perf_counter(), time.process_time()
            session = open_session(cache, mappings, now)
            rows_out = session.rows(months)
            kpi_times.append(time.perf_counter() - started)
            kpi_cpu.append(time.process_time() - cpu)
            started, cpu = time.perf_counter(), time.process_time()
            html = build_report(session, cache, months[-1], now)
            report_times.append(time.perf_counter() - started)
            report_cpu.append(time.process_time() - cpu)
            cache.close()
        counts = {"deals": len(session.data.deals), "work": len(session.data.work), "visits": len(session.data.visits)}
        report.update({
            "facts": counts, "kpi_rows": len(rows_out), "kpi_s": round(min(kpi_times), 2),
            "kpi_cpu_s": round(min(kpi_cpu), 2), "report_cpu_s": round(min(report_cpu), 2),
            "kpi_goal_ratio": round(min(kpi_times) / 3.0, 2), "report_s": round(min(report_times), 2),
            "report_goal_ratio": round(min(report_times) / 5.0, 2), "report_kb": round(len(html.encode()) / 1024),
        })
    print(json.dumps(report, ensure_ascii=False))


if __name__ == "__main__":
    main()

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
import hashlib
import json
import math
import re
import random
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from crmbridge.cache import rows  # noqa: E402
from crmbridge.cache.store import open_cache  # noqa: E402
from crmbridge.kpi.periods import Period, months_back  # noqa: E402
from crmbridge.kpi.report import build_report  # noqa: E402
from crmbridge.kpi.service import open_session  # noqa: E402

MANAGERS = list(range(2, 14))  # 12 managers (users 10..13 join the seeded 2..9)


def build_cache(directory: Path, deals: int, seed: int, now: datetime) -> Path:
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
    tables.update(state.kpi_cache_rows(stamp))
    tables["users"] += [rows.user_row({"ID": str(i), "NAME": f"Менеджер {i}", "LAST_NAME": "", "ACTIVE": True,
                                       "UF_DEPARTMENT": [2 if i % 2 else 3]}) for i in range(10, 14)]
    tables["activities"] += todo_rows(tables["deals"], random.Random(seed), stamp)
    shift_offsets(tables["communications"], random.Random(seed + 1))
    path = directory / "bench.db"
    cache = open_cache(path)
    with cache.atomic():
        for table, table_rows in tables.items():
            cache.upsert(table, table_rows)
    record_violations(cache, now)
    cache.close()
    return path


def todo_rows(deals: list[dict], rng: random.Random, stamp: str) -> list[dict]:
    """CRM to-dos on every fourth deal (the seed has none): done on time, done late, open, open and overdue; a few
    written in UTC or without an offset, as another integration might write them."""
    found = []
    for deal in deals[::4]:
        created = datetime.fromisoformat(deal["date_create"])
        deadline = created + timedelta(days=rng.randint(1, 20), hours=rng.randint(0, 23))
        done = rng.random() < 0.7
        closed = deadline + timedelta(hours=rng.randint(-72, 48)) if done else None
        shape = rng.random()
        write = ((lambda moment: moment.astimezone(timezone.utc).isoformat()) if shape < 0.04 else
                 (lambda moment: moment.replace(tzinfo=None).isoformat()) if shape < 0.06 else
                 (lambda moment: moment.isoformat()))
        raw = {"ID": str(5_000_000 + deal["id"]), "OWNER_TYPE_ID": "2", "OWNER_ID": str(deal["id"]),
               "PROVIDER_ID": "CRM_TODO", "SUBJECT": "Перезвонить", "COMPLETED": "Y" if done else "N",
               "RESPONSIBLE_ID": str(deal["assigned_by_id"]), "DEADLINE": write(deadline),
               "CREATED": write(created), "LAST_UPDATED": write(closed or created)}
        found.append({**rows.activity_row(raw), "synced_at": stamp})
    return found


def shift_offsets(communications: list[dict], rng: random.Random) -> None:
    """2 % of calls / meetings / e-mails written in UTC: read through the slow path, not cut in SQL."""
    for row in communications:
        if row["start_time"] and rng.random() < 0.02:
            row["start_time"] = datetime.fromisoformat(row["start_time"]).astimezone(timezone.utc).isoformat()


def record_violations(cache, now: datetime) -> None:
    """The regulation's violations as two audits six weeks apart leave them: some resolved, most still open."""
    from crmbridge.enforce.run import evaluate
    from crmbridge.mapping.load import load_mappings

    mappings = load_mappings(ROOT / "mappings")
    for moment in (now - timedelta(days=42), now):
        gc.disable()
        evaluate(cache, mappings, moment)
        gc.enable()


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
    parser.add_argument("--cache", type=Path, default=None,
                        help="keep the built cache in this folder and reuse it on later runs (same --deals, --seed)")
    parser.add_argument("--once", action="store_true",
                        help="with --cache: open the session and compute the rows once, print nothing (for an outside "
                             "timer such as /usr/bin/time)")
    parser.add_argument("--check", type=Path, default=None,
                        help="every figure, the payout and the report: written to this JSON file when it does not "
                             "exist, else compared with it (a change of the engine must not change its output)")
    args = parser.parse_args()
    now = datetime(2026, 12, 2, 9, 0, tzinfo=timezone.utc)
    months = months_back(Period.parse("2026-11"), 12)
    report: dict[str, object] = {"deals": args.deals, "managers": len(MANAGERS), "months": len(months)}
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        kept = args.cache / f"bench-{args.deals}-{args.seed}" if args.cache else None
        if kept is not None and (kept / "bench.db").exists():
            path = kept / "bench.db"
        else:
            started = time.perf_counter()
            if kept is not None:
                kept.mkdir(parents=True, exist_ok=True)
            path = build_cache(kept or directory, args.deals, args.seed, now)
            report["build_cache_s"] = round(time.perf_counter() - started, 1)
        mappings = directory / "mappings"
        shutil.copytree(ROOT / "mappings", mappings)
        write_plans(mappings, months)
        if args.once:
            cache = open_cache(path)
            open_session(cache, mappings, now).rows(months)
            cache.close()
            return
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
        if args.check is not None:
            cache = open_cache(path)
            report["check"] = check(args.check, outputs(open_session(cache, mappings, now), cache, mappings, months,
                                                        now))
            cache.close()
        report.update({
            "kpi_rows": len(rows_out), "kpi_s": round(min(kpi_times), 2),
            "kpi_cpu_s": round(min(kpi_cpu), 2), "report_cpu_s": round(min(report_cpu), 2),
            "kpi_goal_ratio": round(min(kpi_times) / 3.0, 2), "report_s": round(min(report_times), 2),
            "report_goal_ratio": round(min(report_times) / 5.0, 2), "report_kb": round(len(html.encode()) / 1024),
        })
    print(json.dumps(report, ensure_ascii=False))


def outputs(session, cache, mappings: Path, months: list[Period], now: datetime) -> dict[str, Any]:
    """What users see, at full precision: every KPI row of the 12 months, the payout and the report."""
    from crmbridge.kpi.payroll import payout_rows

    figures = [[row.period, row.scope, row.manager_id, row.department_id, row.direction, row.kpi, row.plan, row.fact,
                row.share_done, row.previous, row.trend] for row in session.rows(months)]
    payout, _ = payout_rows(session, mappings, months[-1])
    html = build_report(session, cache, months[-1], now)
    return {"rows": figures, "payout": payout, "warnings": [*session.data.warnings, *session.plans.warnings],
            "report_sha256": hashlib.sha256(html.encode()).hexdigest(), "report": html}


def check(path: Path, found: dict[str, Any]) -> str:
    """Write the outputs, or compare them with the ones written: floats to 1e-9 relative (summation order)."""
    if not path.exists():
        path.write_text(json.dumps(found, ensure_ascii=False), encoding="utf-8")
        return f"written to {path}"
    expected = json.loads(re.sub(TEMP_FOLDER, "<tmp>", path.read_text(encoding="utf-8")))
    found = json.loads(re.sub(TEMP_FOLDER, "<tmp>", json.dumps(found, ensure_ascii=False)))
    problems: list[str] = []
    for part in ("rows", "payout", "warnings"):
        if not same(expected[part], found[part]):
            old = expected[part] if isinstance(expected[part], list) else [expected[part]]
            new = found[part] if isinstance(found[part], list) else [found[part]]
            differing = [(a, b) for a, b in zip(old, new) if not same(a, b)]
            problems.append(f"{part}: {len(old)} expected, {len(new)} found, first differences {differing[:3]}")
    if expected["report"] != found["report"]:
        path.with_suffix(".found.html").write_text(found["report"], encoding="utf-8")
        problems.append(f"report differs (written to {path.with_suffix('.found.html')})")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        raise SystemExit(1)
    return f"identical to {path} ({len(expected['rows'])} rows, payout, report)"


#: the run's temporary folder (mappings/plans.yaml) as warnings and the report name it
TEMP_FOLDER = r"/tmp/tmp[A-Za-z0-9_]+"


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, (int, float)) or isinstance(b, float) and isinstance(a, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


if __name__ == "__main__":
    main()

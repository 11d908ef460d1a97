"""The plans-and-KPIs part of `crmbridge demo`: the KPI table of the last full month, a snapshot, report.html."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from crmbridge.cache.store import Cache
from crmbridge.commands import common
from crmbridge.kpi.periods import last_full_month
from crmbridge.kpi.report import build_report
from crmbridge.kpi.service import open_session, portal_zone, take_snapshot


def run_demo_kpis(cache: Cache, mappings_dir: Path, report_path: Path, *, crm: str = "bitrix24") -> None:
    from crmbridge.commands.kpi import print_kpi_tables

    now = datetime.now(timezone.utc)
    session = open_session(cache, mappings_dir, now, crm=crm)
    period = last_full_month(now.astimezone(portal_zone(session.mappings)).date())
    common.console.print(f"[bold]Plans and KPIs[/bold] ({', '.join(session.plans.files) or 'no plans'})")
    print_kpi_tables(session, session.rows([period], direction_filter=None), period, None)
    snapshot = take_snapshot(cache, session, period, now)
    common.console.print(f"KPI snapshot {snapshot.period}: {snapshot.written:,} figures written to kpi_snapshots "
                         f"(`crmbridge kpi snapshot` again writes nothing new)")
    report_path.write_text(build_report(session, cache, period, now), encoding="utf-8")
    common.console.print(f"Report: [bold]{report_path.resolve()}[/bold] (one file, opens offline)")

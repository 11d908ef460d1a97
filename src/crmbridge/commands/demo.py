"""`crmbridge demo`: the whole flow against the built-in sandbox portal on loopback, no setup needed."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table

from crmbridge.cache.store import Cache, open_cache
from crmbridge.commands import common
from crmbridge.commands.sync import print_summary, progress_bar
from crmbridge.config import load_settings
from crmbridge.connectors.bitrix24.client import Bitrix24Client
from crmbridge.connectors.bitrix24.reader import Bitrix24Reader
from crmbridge.sync import Syncer


def pipeline_table(cache: Cache) -> Table:
    table = Table(title="Deals per pipeline and stage", title_justify="left")
    for column, justify in (("pipeline", "left"), ("stage", "left"), ("deals", "right"), ("amount", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    rows = cache.query(
        """
        SELECT p.name AS pipeline, COALESCE(s.name, d.stage_id) AS stage, COUNT(*) AS deals,
               ROUND(COALESCE(SUM(d.amount), 0)) AS amount
        FROM deals d
        LEFT JOIN pipelines p ON p.id = d.category_id
        LEFT JOIN stages s ON s.status_id = d.stage_id
        WHERE d.deleted = 0
        GROUP BY d.category_id, d.stage_id
        ORDER BY d.category_id, s.sort
        """
    )
    for row in rows:
        table.add_row(row["pipeline"] or "?", row["stage"] or "?", f"{row['deals']:,}", f"{row['amount']:,.0f}")
    return table


def manager_table(cache: Cache) -> Table:
    table = Table(title="Deals per manager", title_justify="left")
    for column, justify in (("manager", "left"), ("open", "right"), ("won", "right"), ("lost", "right"), ("won amount", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    rows = cache.query(
        """
        SELECT TRIM(COALESCE(u.name, '') || ' ' || COALESCE(u.last_name, '')) AS manager, u.active,
               SUM(d.stage_semantic = 'P') AS open, SUM(d.stage_semantic = 'S') AS won,
               SUM(d.stage_semantic = 'F') AS lost,
               ROUND(COALESCE(SUM(CASE WHEN d.stage_semantic = 'S' THEN d.amount END), 0)) AS won_amount
        FROM deals d LEFT JOIN users u ON u.id = d.assigned_by_id
        WHERE d.deleted = 0
        GROUP BY d.assigned_by_id ORDER BY won_amount DESC
        """
    )
    for row in rows:
        name = (row["manager"] or "?") + ("" if row["active"] else " (inactive)")
        table.add_row(name, str(row["open"]), str(row["won"]), str(row["lost"]), f"{row['won_amount']:,.0f}")
    return table


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        deals: int = typer.Option(2000, help="Deals seeded into the sandbox portal."),
        cache_path: Path = typer.Option(Path("crmbridge-demo.db"), "--cache", help="SQLite file the demo writes."),
        seed: int = typer.Option(1, help="Sandbox seed."),
        report: Path = typer.Option(Path("report.html"), "--report", help="Where the demo writes the HTML report."),
    ) -> None:
        """Start the sandbox portal on loopback, sync it, show what crmbridge sees, then enforce the regulation on it."""
        from crmbridge.sandbox import SandboxPortal

        settings = load_settings()
        portal = SandboxPortal(deals=deals, seed=seed)
        portal.start(port=0)
        try:
            common.console.print(f"[bold]Sandbox portal[/bold] with {deals:,} deals at {portal.webhook_url}")
            if cache_path.exists():
                for suffix in ("", "-wal", "-shm"):
                    Path(str(cache_path) + suffix).unlink(missing_ok=True)
            client = Bitrix24Client(
                portal.webhook_url, rate=settings.bitrix24_rate, burst=settings.bitrix24_burst,
                operating_limit=settings.bitrix24_operating_limit,
            )
            from crmbridge.mapping.load import load_mappings

            mappings = load_mappings(settings.mappings_dir)
            source = mappings.binding.plans_source
            cache = open_cache(cache_path)
            try:
                with progress_bar(sys.stderr.isatty()) as advance:
                    summary = Syncer(Bitrix24Reader(client), cache, progress=advance,
                                     plan_entity_type=source.entity_type_id if source else None).run(full=True)
                print_summary(summary, cache_path)
                common.console.print(pipeline_table(cache))
                common.console.print(manager_table(cache))
                # issue 4: evaluate, show the plan, enforce it on the sandbox, show what changed
                from crmbridge.enforce.demo import run_demo_enforcement

                run_demo_enforcement(client, cache, mappings)
                # issue 10: plans (plans.yaml and the portal's smart process), KPIs, a snapshot and report.html
                from crmbridge.kpi.demo import run_demo_kpis

                run_demo_kpis(cache, settings.mappings_dir, report)
            finally:
                cache.close()
            common.console.print(
                f"The cache is [bold]{cache_path.resolve()}[/bold]: try "
                f"`sqlite3 {cache_path} 'select stage_id, count(*) from deals group by 1'`."
            )
        finally:
            portal.stop()

"""`crmbridge demo`: the whole flow against the built-in sandbox portal on loopback, no setup needed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr

import typer
from rich.table import Table

from crmbridge.cache.store import Cache, open_cache
from crmbridge.commands import common
from crmbridge.commands.sync import print_summary, progress_bar
from crmbridge.config import load_settings
from crmbridge.connectors.bitrix24.client import Bitrix24Client


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
        LEFT JOIN stages s ON s.category_id = d.category_id AND s.status_id = d.stage_id
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
        crm: str = typer.Option("bitrix24", "--crm", help="Which CRM's sandbox to run the flow against: bitrix24 or amocrm."),
        deals: int = typer.Option(2000, help="Deals seeded into the sandbox portal (leads into the amoCRM account)."),
        cache_path: Path = typer.Option(None, "--cache",
                                        help="SQLite file the demo writes (default crmbridge-demo.db, "
                                             "crmbridge-amocrm-demo.db for amoCRM)."),
        seed: int = typer.Option(1, help="Sandbox seed."),
    ) -> None:
        """Start the sandbox CRM on loopback, sync it, show what crmbridge sees, then enforce the regulation on it."""
        if crm not in ("bitrix24", "amocrm"):
            from crmbridge.errors import ConfigError

            raise ConfigError(f"--crm {crm!r}: use bitrix24 or amocrm")
        settings = load_settings()
        path = cache_path or Path("crmbridge-amocrm-demo.db" if crm == "amocrm" else "crmbridge-demo.db")
        if path.exists():
            for suffix in ("", "-wal", "-shm", ".amocrm-rate"):
                Path(str(path) + suffix).unlink(missing_ok=True)
        if crm == "amocrm":
            from crmbridge.sandbox.amocrm import SandboxAccount

            account = SandboxAccount(deals=deals, seed=seed)
            account.start(port=0)
            try:
                common.console.print(f"[bold]Sandbox amoCRM account[/bold] with {deals:,} leads at {account.base_url} "
                                     "(7 requests per second, as amoCRM allows)")
                from crmbridge.connectors.registry import amocrm_client_from

                client: Any = amocrm_client_from(settings.model_copy(update={
                    "crm": "amocrm", "cache_path": path, "amocrm_long_lived_token": SecretStr(account.long_lived_token)}),
                    base_url=account.base_url)
                _flow(client, path, settings, "amocrm")
            finally:
                account.stop()
            return
        from crmbridge.sandbox import SandboxPortal

        portal = SandboxPortal(deals=deals, seed=seed)
        portal.start(port=0)
        try:
            common.console.print(f"[bold]Sandbox portal[/bold] with {deals:,} deals at {portal.webhook_url}")
            client = Bitrix24Client(
                portal.webhook_url, rate=settings.bitrix24_rate, burst=settings.bitrix24_burst,
                operating_limit=settings.bitrix24_operating_limit,
                bucket_level=0.0,  # the sandbox portal was just started here: its bucket is empty
            )
            _flow(client, path, settings, "bitrix24")
        finally:
            portal.stop()


def _flow(client: Any, cache_path: Path, settings: Any, crm: str) -> None:
    """Full sync with a progress bar, the tables, then the enforcement part (plan, enforce, a second run)."""
    from crmbridge.connectors.registry import syncer_for
    from crmbridge.enforce.demo import run_demo_enforcement
    from crmbridge.mapping.load import load_mappings

    cache = open_cache(cache_path)
    try:
        with progress_bar(sys.stderr.isatty()) as advance:
            summary = syncer_for(client, cache, progress=advance).run(full=True)
        print_summary(summary, cache_path)
        common.console.print(pipeline_table(cache))
        common.console.print(manager_table(cache))
        # issue 4: evaluate, show the plan, enforce it on the sandbox, show what changed
        run_demo_enforcement(client, cache, load_mappings(settings.mappings_dir, crm=crm))
    finally:
        cache.close()
    common.console.print(
        f"The cache is [bold]{cache_path.resolve()}[/bold]: try "
        f"`sqlite3 {cache_path} 'select stage_id, count(*) from deals group by 1'`."
    )

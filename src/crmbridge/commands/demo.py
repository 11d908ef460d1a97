"""`crmbridge demo`: the whole flow against the built-in sandbox portal on loopback, no setup needed."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import typer
from rich.table import Table

from crmbridge.cache.store import Cache
from crmbridge.commands import common
from crmbridge.commands.enforce import print_report
from crmbridge.commands.sync import print_summary, progress_bar
from crmbridge.config import load_settings
from crmbridge.connectors.bitrix24.client import Bitrix24Client
from crmbridge.connectors.bitrix24.reader import Bitrix24Reader
from crmbridge.enforce.run import EnforceReport, enforce
from crmbridge.mapping.load import Mappings, load_mappings
from crmbridge.model import Mode
from crmbridge.sync import Syncer


def pipeline_table(cache: Cache) -> Table:
    table = Table(title="Deals per pipeline and stage", title_justify="left")
    for column, justify in (("pipeline", "left"), ("stage", "left"), ("deals", "right"), ("amount", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    rows = cache.deals.per_stage()
    for row in rows:
        table.add_row(row["pipeline"] or "?", row["stage"] or "?", f"{row['deals']:,}", f"{row['amount']:,.0f}")
    return table


def manager_table(cache: Cache) -> Table:
    table = Table(title="Deals per manager", title_justify="left")
    for column, justify in (("manager", "left"), ("open", "right"), ("won", "right"), ("lost", "right"), ("won amount", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    rows = cache.deals.per_manager()
    for row in rows:
        name = (row["manager"] or "?") + ("" if row["active"] else " (inactive)")
        table.add_row(name, str(row["open"]), str(row["won"]), str(row["lost"]), f"{row['won_amount']:,.0f}")
    return table


#: the shipped regulation has R1..R3 in `warn`; the demo turns them to `enforce` so stage reverts show too
DEMO_MODES: Mapping[str, Mode] = {"R1": Mode.ENFORCE, "R2": Mode.ENFORCE, "R3": Mode.ENFORCE}


def run_demo_enforcement(client: Bitrix24Client, cache: Cache, mappings: Mappings, *,
                         modes: Mapping[str, Mode] | None = DEMO_MODES, limit: int = 15) -> tuple[EnforceReport, EnforceReport]:
    """Dry run (the plan), then the real run and a second one that must write nothing; returns both reports.

    The cache must hold a synced portal (the demo's full sync); each run syncs incrementally itself.
    """
    console = common.console
    if modes:
        shown = ", ".join(f"{rule}={mode.value}" for rule, mode in modes.items())
        console.print(f"[bold]Enforcement[/bold] (demo modes: {shown}; the shipped regulation has them in warn)")
    plan = enforce(client, cache, mappings, dry_run=True, modes=modes)
    print_report(plan, limit=limit)
    console.print("[bold]Enforcing on the sandbox portal…[/bold]")
    report = enforce(client, cache, mappings, modes=modes)
    print_report(report, limit=0)
    again = enforce(client, cache, mappings, modes=modes)
    sent = again.execution.sent if again.execution else 0
    console.print(f"Second run: {sent} writes (each action is written once; `crmbridge log` shows them all)")
    return report, again


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        deals: int = typer.Option(2000, help="Deals seeded into the sandbox portal."),
        cache_path: Path = typer.Option(Path("crmbridge-demo.db"), "--cache", help="SQLite file the demo writes."),
        seed: int = typer.Option(1, help="Sandbox seed."),
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
            with common.cache(settings, create=True, path=cache_path) as cache:
                with progress_bar(sys.stderr.isatty()) as advance:
                    summary = Syncer(Bitrix24Reader(client), cache, progress=advance).run(full=True)
                print_summary(summary, cache_path)
                common.console.print(pipeline_table(cache))
                common.console.print(manager_table(cache))
                # evaluate, show the plan, enforce it on the sandbox, show what changed
                run_demo_enforcement(client, cache, load_mappings(settings.mappings_dir))
            common.console.print(
                f"The cache is [bold]{cache_path.resolve()}[/bold]: try "
                f"`sqlite3 {cache_path} 'select stage_id, count(*) from deals group by 1'`."
            )
        finally:
            portal.stop()

"""`crmbridge demo`: the whole flow against the built-in sandbox portal on loopback, no setup needed."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import SecretStr

import typer
from rich.table import Table

from crmbridge.cache.store import Cache
from crmbridge import defaults
from crmbridge.commands import common
from crmbridge.commands.enforce import print_report
from crmbridge.commands.sync import print_summary, progress_bar
from crmbridge.config import load_settings
from crmbridge.connectors.bitrix24.client import Bitrix24Client
from crmbridge.connectors.registry import CrmClient
from crmbridge.enforce.audit import AuditLog
from crmbridge.enforce.run import EnforceReport, enforce
from crmbridge.mapping.load import Mappings
from crmbridge.model import Mode


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


def run_demo_enforcement(client: CrmClient, cache: Cache, mappings: Mappings, *,
                         modes: Mapping[str, Mode] | None = DEMO_MODES, limit: int = 15) -> tuple[EnforceReport, EnforceReport]:
    """Dry run (the plan), then the real run and a second one that must write nothing; returns both reports.

    The cache must hold a synced portal (the demo's full sync); each run syncs incrementally itself.
    """
    console = common.console
    if modes:
        shown = ", ".join(f"{rule}={mode.value}" for rule, mode in modes.items())
        console.print(f"[bold]Enforcement[/bold] (demo modes: {shown}; the shipped regulation has them in warn)")
    # the shipped regulation holds messages outside working hours; the demo shows its digests at any hour
    data = mappings.regulation.model_dump()
    data["notifications"]["outside_working_hours"] = "send"
    mappings = replace(mappings, regulation=type(mappings.regulation).model_validate(data))
    plan = enforce(client, cache, mappings, dry_run=True, modes=modes)
    print_report(plan, limit=limit)
    console.print("[bold]Enforcing on the sandbox…[/bold]")
    report = enforce(client, cache, mappings, modes=modes)
    print_report(report, limit=0)
    again = enforce(client, cache, mappings, modes=modes)
    sent = again.execution.sent if again.execution else 0
    console.print(f"Second run: {sent} writes (each action is written once; `crmbridge log` shows them all)")
    digest = AuditLog(cache).a_digest()
    if digest:
        console.print("[bold]A manager's digest[/bold] (one message per person per run):")
        console.print(digest if len(digest) < 1500 else digest[:1500] + " …", markup=False)
    return report, again


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        crm: str = typer.Option("bitrix24", "--crm", help="Which CRM's sandbox to run the flow against: bitrix24 or amocrm."),
        deals: int = typer.Option(2000, help="Deals seeded into the sandbox portal (leads into the amoCRM account)."),
        cache_path: Path = typer.Option(None, "--cache",
                                        help="SQLite file the demo writes (default crmbridge-demo.db, "
                                             "crmbridge-amocrm-demo.db for amoCRM)."),
        seed: int = typer.Option(1, help="Sandbox seed."),
        report: Path = typer.Option(Path("report.html"), "--report", help="Where the demo writes the HTML report."),
        live: bool = typer.Option(True, "--live/--no-live",
                                  help="Then run the live bridge on loopback and correct a deal as it is moved."),
        mappings_dir: Path = typer.Option(None, "--mappings",
                                          help="Regulation, bindings, plans and KPI files to use (default: the ones "
                                               "shipped with crmbridge, bound to the sandbox's ids)."),
    ) -> None:
        """Start the sandbox CRM on loopback, sync it, show what crmbridge sees, then enforce the regulation on it."""
        if crm not in ("bitrix24", "amocrm"):
            from crmbridge.errors import ConfigError

            raise ConfigError(f"--crm {crm!r}: use bitrix24 or amocrm")
        # the sandbox's ids are those of the shipped bindings: the demo never reads the admin's own mappings/
        with defaults.directory() as shipped:
            _demo(crm, deals, cache_path, seed, live, report, load_settings().model_copy(
                update={"mappings_dir": mappings_dir or shipped}))


def _demo(crm: str, deals: int, cache_path: Path | None, seed: int, live: bool, report: Path, settings: Any) -> None:
    """The flow against the chosen sandbox, with `settings.mappings_dir` pointing at the mapping files to use."""
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
            _flow(client, path, settings, "amocrm", report)
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
        _flow(client, path, settings, "bitrix24", report)
        if live:
            from crmbridge.live.demo import run_live_demo

            run_live_demo(portal, path, settings)
    finally:
        portal.stop()


def _flow(client: Any, cache_path: Path, settings: Any, crm: str, report: Path) -> None:
    """Full sync with a progress bar, the tables, the enforcement part (plan, enforce, a second run), then the
    plans and KPIs of the last full month, a KPI snapshot and the HTML report."""
    from crmbridge.connectors.registry import syncer_for
    from crmbridge.kpi.demo import run_demo_kpis
    from crmbridge.mapping.load import load_mappings

    mappings = load_mappings(settings.mappings_dir, crm=crm)
    source = getattr(mappings.binding, "plans_source", None)
    with common.cache(settings.model_copy(update={"crm": crm}), create=True, path=cache_path) as cache:
        with progress_bar(sys.stderr.isatty()) as advance:
            summary = syncer_for(client, cache, progress=advance,
                                 plan_entity_type=source.entity_type_id if source else None).run(full=True)
        print_summary(summary, cache_path)
        common.console.print(pipeline_table(cache))
        common.console.print(manager_table(cache))
        # evaluate, show the plan, enforce it on the sandbox, show what changed
        run_demo_enforcement(client, cache, mappings)
        # issue 10: plans (the plans file and the portal's smart process), KPIs, a snapshot and report.html
        run_demo_kpis(cache, settings.mappings_dir, report, crm=crm)
    common.console.print(
        f"The cache is [bold]{cache_path.resolve()}[/bold]: try "
        f"`sqlite3 {cache_path} 'select stage_id, count(*) from deals group by 1'`."
    )

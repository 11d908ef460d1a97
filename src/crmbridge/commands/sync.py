"""`crmbridge sync`: read the portal into the local cache, full or incremental, with a progress bar."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from crmbridge.commands import common
from crmbridge.config import Settings
from crmbridge.connectors.registry import syncer_for
from crmbridge.errors import MappingError
from crmbridge.sync import ProgressCallback, SyncSummary

ENTITY_LABELS = {"deals": "deals", "stage_history": "stage history", "tasks": "tasks", "activities": "to-dos",
                 "contacts": "contacts", "companies": "companies", "communications": "calls, e-mails"}


@contextmanager
def progress_bar(enabled: bool) -> Iterator[ProgressCallback | None]:
    """Counts per entity on a terminal; nothing when piped or with --json (scheduled jobs)."""
    if not enabled:
        yield None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description:<14}"),
        BarColumn(bar_width=None),
        TextColumn("{task.completed:>9,} rows"),
        TimeElapsedColumn(),
        console=common.err_console,
        transient=False,
    ) as progress:
        tasks: dict[str, int] = {}

        def advance(entity: str, count: int) -> None:
            if entity not in tasks:
                tasks[entity] = progress.add_task(ENTITY_LABELS.get(entity, entity), total=None)
            progress.advance(tasks[entity], count)

        yield advance


def plans_entity_type(mappings_dir: Path) -> int | None:
    """The smart process holding plans (bitrix24.yaml `plans_source`), if the mapping files load.

    A sync must not depend on the mapping files being right (it is how an admin gets the data to fix them),
    so a broken file only skips the plans, with a warning.
    """
    if not (mappings_dir / "bitrix24.yaml").exists() or getattr(common.settings(), "crm", "bitrix24") != "bitrix24":
        return None
    from crmbridge.mapping.load import load_mappings

    try:
        source = load_mappings(mappings_dir).binding.plans_source
    except MappingError as bad:
        common.err_console.print(common.markup("[yellow]warning[/yellow]: plans in the portal not read: {bad} "
                                               "(run `crmbridge check`)", bad=bad), highlight=False)
        return None
    return source.entity_type_id if source is not None else None


def run_sync(webhook_url: str | None, *, full: bool, show_progress: bool, break_lock: bool = False,
             confirm_deletions: bool = False) -> SyncSummary:
    settings = common.settings()
    client = common.client_from(settings, webhook_url) if webhook_url else common.crm_client(settings)
    guards = {"confirm_deletions": confirm_deletions, "max_deleted_share": settings.sync_max_deleted_share,
              "max_record_bytes": settings.sync_max_record_kb * 1024}
    with progress_bar(show_progress) as advance:
        syncer = syncer_for(client, lambda: common.cache(settings, create=True),
                            overlap=timedelta(minutes=settings.sync_overlap_minutes), progress=advance,
                            refresh=timedelta(minutes=settings.amocrm_refresh_minutes),
                            lock_wait=settings.sync_lock_wait_seconds, break_lock=break_lock,
                            plan_entity_type=plans_entity_type(settings.mappings_dir), **guards)
        return syncer.run(full=full)


def judge_synced(settings: Settings) -> int | None:
    """The deals the sync changed judged for the next audit (`compliance.judge_after_sync`)."""
    from crmbridge.compliance import judge_after_sync

    with common.cache(settings) as cache:
        return judge_after_sync(cache, settings.mappings_dir, settings.crm, datetime.now(timezone.utc))


def print_summary(summary: SyncSummary, cache_path: object) -> None:
    resumed = " (resumed an interrupted full sync)" if summary.resumed else ""
    common.console.print(common.markup(
        f"[green]✓[/green] {summary.mode} sync{resumed}: {summary.deals_read:,} deals read, "
        f"{summary.deals_changed:,} changed, {summary.deals_deleted:,} marked deleted; "
        f"{summary.contacts_read:,} contacts, {summary.companies_read:,} companies, "
        f"{summary.stage_history_read:,} stage changes, {summary.tasks_read:,} tasks, {summary.todos_read:,} to-dos, "
        f"{summary.communications_read:,} calls / meetings / e-mails, {summary.plan_items:,} plan items; "
        f"{summary.http_requests} HTTP requests in {summary.seconds:.1f} s → {{path}}", path=cache_path))


def register(app: typer.Typer) -> None:
    @app.command()
    def sync(
        full: bool = typer.Option(False, "--full", help="Re-read everything and mark deals gone from the portal as deleted."),
        confirm_deletions: bool = typer.Option(
            False, "--confirm-deletions",
            help="Let this full sync remove more than CRMBRIDGE_SYNC_MAX_DELETED_SHARE of the cached deals, tasks or "
                 "to-dos (each still read back by id first)."),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary (for scheduled jobs)."),
        break_lock: bool = typer.Option(False, "--break-lock",
                                        help="Take the sync lock from a run the OS lock cannot see (a cache on a "
                                             "network share); that run stops at its next chunk."),
    ) -> None:
        """Sync the CRM into the local SQLite cache (first run full, then incremental by modification time)."""
        summary = run_sync(None, full=full, show_progress=not as_json and sys.stderr.isatty(), break_lock=break_lock,
                           confirm_deletions=confirm_deletions)
        judged = judge_synced(common.settings())
        if as_json:
            common.print_json(summary.as_dict())
        else:
            print_summary(summary, common.settings().cache_path)
            if judged:
                common.console.print(f"judged {judged:,} changed deals for the next audit")
        if summary.webhook_admin is False:  # on stderr, so a job's --json stays JSON and its log shows why
            common.err_console.print(common.markup("[yellow]warning[/yellow]: {text}", text=common.RIGHTS_WARNING), highlight=False)
        if getattr(summary, "deletions_held", None):
            raise typer.Exit(1)  # the notice said what and how to confirm; a scheduled job sees it failed

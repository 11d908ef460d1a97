"""`crmbridge enforce` (make the portal follow the regulation; --dry-run shows the plan) and `crmbridge log` (the audit)."""

from __future__ import annotations

import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.table import Table

from crmbridge.commands import common
from crmbridge.enforce.audit import STATUSES, AuditLog, parse_since
from crmbridge.enforce.plan import Action
from crmbridge.enforce.run import EnforceReport, enforce
from crmbridge.errors import ConfigError
from crmbridge.mapping.load import load_mappings
from crmbridge.model import Mode

KIND_LABELS = {
    "create_task": "tasks created", "create_todo": "to-dos created", "revert_stage": "stages reverted",
    "set_field": "fields corrected", "reassign": "leads reassigned", "comment": "timeline comments",
    "notify": "notices (into digests)", "message": "messages",
}


def plan_table(actions: list[Action], *, limit: int, title: str) -> Table:
    """The plan as a person reads it: rule, deal, what is done and why."""
    table = Table(title=title, title_justify="left", show_lines=False)
    for column in ("rule", "deal", "action", "why"):
        table.add_column(column, overflow="fold")
    for action in actions[:limit]:
        table.add_row(action.rule, action.deal, f"{action.kind.value}: {action.summary}",
                      action.reason.split("\n")[0][:140])
    if len(actions) > limit:
        table.caption = f"… and {len(actions) - limit:,} more (--limit, or --json for all)"
    return table


def counts_table(actions: list[Action], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    kinds = [kind for kind in KIND_LABELS if any(action.kind.value == kind for action in actions)]
    table.add_column("rule")
    for kind in kinds:
        table.add_column(KIND_LABELS[kind], justify="right")
    counts = Counter((action.rule, action.kind.value) for action in actions)
    rules = sorted({action.rule for action in actions}, key=lambda rule: [int(part[1:]) for part in rule.split(",")])
    for rule in rules:
        table.add_row(rule, *(str(counts[rule, kind] or "") for kind in kinds))
    return table


def print_report(report: EnforceReport, *, limit: int) -> None:
    """The human view of an enforce run (also used by `crmbridge demo`)."""
    console = common.console
    before = report.before
    console.print(f"Compliance: {before.compliant:,} of {before.deals:,} regulated deals follow the regulation "
                  f"({before.rate:.1%}); {before.violations:,} violations")
    if report.reconciled_found or report.reconciled_unknown or report.reconciled_unresolved:
        unresolved = (f", {report.reconciled_unresolved} left for a later run (the CRM lookup failed)"
                      if report.reconciled_unresolved else "")
        console.print(f"Reconciled an interrupted run: {report.reconciled_found} writes found in the CRM, "
                      f"{report.reconciled_unknown} still to (re)send{unresolved}")
    if not report.to_write:
        console.print("[green]✓[/green] nothing to write: every planned action is already in the CRM")
    else:
        verb = "would write" if report.dry_run else "writes"
        console.print(counts_table(report.to_write, f"Plan: crmbridge {verb} {len(report.to_write):,} actions"))
        if limit:
            console.print(plan_table(report.to_write, limit=limit, title="Actions"))
    for note in report.plan.notes[:10]:
        console.print(f"[yellow]note[/yellow]: {note}")
    if len(report.plan.notes) > 10:
        console.print(f"[yellow]note[/yellow]: … and {len(report.plan.notes) - 10} more (--json lists them all)")
    if report.plan.rerouted:
        console.print(f"Deactivated managers: {len(report.plan.rerouted)} deals' tasks and notices go to their heads "
                      "or new managers (see the notes)")
    if report.plan.old_breaches:
        old = ", ".join(f"{rule} {count}" for rule, count in sorted(report.plan.old_breaches.items(),
                                                                   key=lambda item: int(item[0][1:])))
        console.print(f"Older than their rule's look-back window, recorded and not pushed to people: {old}")
    held = ", ".join(f"{count} ({why.replace('_', ' ')})" for why, count in report.held.items())
    verb = "would go" if report.dry_run else "went"
    console.print(f"Messages: {report.composed} {verb} out" + (f"; notices held: {held}" if held else ""))
    if report.dry_run:
        console.print("[bold]--dry-run[/bold]: nothing was written to the CRM or the audit log")
        return
    execution = report.execution
    if execution is not None and execution.sent:
        done = ", ".join(f"{count:,} {KIND_LABELS.get(kind, kind)}" for kind, count in execution.done_by_kind.items())
        console.print(f"[green]✓[/green] written: {done or 'nothing'} — {execution.done:,} done, {execution.failed:,} "
                      f"failed, {execution.found_after_lost_answer:,} found after a lost answer, "
                      f"{execution.unknown:,} left for the next run; {execution.http_requests} HTTP requests "
                      f"in {execution.batches} batches")
        for error in execution.errors[:10]:
            console.print(f"[red]error[/red]: {error}")
    if report.after is not None and report.after is not report.before:
        after = report.after
        console.print(f"Compliance after: {after.compliant:,} of {after.deals:,} ({after.rate:.1%}), "
                      f"was {before.rate:.1%}; {after.violations:,} violations, was {before.violations:,}")


def _modes(values: list[str] | None) -> dict[str, Mode] | None:
    if not values:
        return None
    modes: dict[str, Mode] = {}
    for value in values:
        rule, _, mode = value.partition("=")
        rule = rule.strip().upper()
        if not rule.startswith("R") or not rule[1:].isdigit() or not 1 <= int(rule[1:]) <= 11:
            raise ConfigError(f"--mode {value!r}: the rule must be R1..R11", hint="write e.g. --mode R1=enforce")
        try:
            modes[rule] = Mode(mode.strip().lower())
        except ValueError:
            raise ConfigError(f"--mode {value!r}: the mode must be off, audit, warn or enforce",
                              hint="write e.g. --mode R1=enforce") from None
    return modes


def register(app: typer.Typer) -> None:
    @app.command("enforce")
    def enforce_command(
        dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan; write nothing to the CRM."),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable report (for scheduled jobs)."),
        deal: int = typer.Option(None, "--deal", help="Only this deal."),
        sync: bool = typer.Option(True, "--sync/--no-sync", help="Sync incrementally before and after writing."),
        max_reverts_per_day: int = typer.Option(None, "--max-reverts-per-day", min=0,
                                                help="Loop guard: reverts of one deal per day before escalating to the head "
                                                     "(default CRMBRIDGE_ENFORCE_MAX_REVERTS_PER_DAY, 3)."),
        mode: list[str] = typer.Option(None, "--mode", help="Override a rule's mode for this run, e.g. R1=enforce (repeatable)."),
        limit: int = typer.Option(30, "--limit", min=0, help="Actions listed on the terminal."),
        break_lock: bool = typer.Option(False, "--break-lock",
                                        help="Take the one-writer lock from a run the OS lock cannot see (a cache on a "
                                             "network share); that run stops at its next batch."),
        mappings_dir: Path = typer.Option(None, "--mappings", help="Directory with regulation.yaml and bitrix24.yaml."),
    ) -> None:
        """Make the portal follow the regulation: violations become tasks, notifications and corrections, each written once."""
        settings = common.settings()
        mappings = load_mappings(mappings_dir or settings.mappings_dir, crm=settings.crm)
        overrides = _modes(mode)
        client = common.crm_client(settings)
        with common.cache(settings, create=True) as cache:
            report = enforce(client, cache, mappings, dry_run=dry_run, deal_ids=[deal] if deal is not None else None,
                             sync=sync, modes=overrides, break_lock=break_lock,
                             channel=settings.enforce_notify_channel, client_id=settings.bitrix24_client_id,
                             allow_non_admin=settings.enforce_allow_non_admin,
                             max_reverts_per_day=settings.enforce_max_reverts_per_day
                             if max_reverts_per_day is None else max_reverts_per_day)
        if as_json:
            common.print_json(report.as_dict())
        else:
            print_report(report, limit=limit)
        if report.execution is not None and report.execution.failed:
            raise typer.Exit(1)

    @app.command("log")
    def log_command(
        deal: int = typer.Option(None, "--deal", help="Only this deal."),
        since: str = typer.Option(None, "--since", help="From a date / date-time, or a span back: 90m, 2h, 1d, 2w."),
        rule: str = typer.Option(None, "--rule", help="Only this rule, e.g. R3."),
        status: str = typer.Option(None, "--status", help="intent, queued, done, failed or cancelled."),
        limit: int = typer.Option(100, "--limit", min=1, help="Rows shown (newest first)."),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """The audit log: every action crmbridge wrote (or tried to) — when, rule, deal, what, result, CRM ids, error."""
        settings = common.settings()
        now = datetime.now(UTC)
        try:
            moment = parse_since(since, now) if since else None
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if status is not None and status not in STATUSES:
            raise ConfigError(f"--status {status!r}: use {', '.join(STATUSES)}")
        with common.cache(settings, create=True) as cache:
            entries = AuditLog(cache).entries(deal=deal, since=moment, rule=rule.upper() if rule else None,
                                              status=status, limit=limit)
        if as_json:
            common.print_json([entry.as_dict() for entry in entries])
            return
        if not entries:
            common.console.print("no actions recorded" + (" for these filters" if deal or since or rule or status else ""))
            return
        table = Table(title=f"Audit log ({len(entries)} newest)", title_justify="left")
        for column in ("when (UTC)", "rule", "deal", "action", "status", "CRM ids / error"):
            table.add_column(column, overflow="fold")
        colours = {"done": "green", "failed": "red", "intent": "yellow", "queued": "cyan", "cancelled": "dim"}
        for entry in entries:
            outcome = ", ".join(entry.crm_ids) if entry.status == "done" else (entry.error or "")
            table.add_row(entry.when[:19].replace("T", " "), entry.rule, str(entry.deal),
                          f"{entry.kind}: {entry.summary}", f"[{colours.get(entry.status, 'white')}]{entry.status}[/]",
                          outcome)
        common.console.print(table)
        if sys.stdout.isatty() and len(entries) == limit:
            common.console.print(f"(--limit {limit}; narrow with --deal, --since or --rule)")

"""`crmbridge serve | inbox | jobs`: the daemon, its event inbox and its scheduled jobs."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from crmbridge import logs
from crmbridge.commands import common
from crmbridge.errors import ConfigError, MappingError

log = logging.getLogger("crmbridge.live")


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (put TLS in front of it)."),
        port: int = typer.Option(8024, "--port", help="Port to listen on."),
        no_jobs: bool = typer.Option(False, "--no-jobs", help="Do not run the scheduled jobs (events only)."),
    ) -> None:
        """Run the live bridge: webhook receiver, inbox worker and scheduled jobs in one process."""
        from crmbridge.live.daemon import Daemon

        # a service's log (journald, docker logs) says what it does: start, sync, rounds, jobs, waits, stop
        logs.setup(debug=common.state.debug, crmbridge_level=logging.INFO)
        settings = common.settings()
        daemon = Daemon(settings, host=host, port=port, run_jobs=not no_jobs)
        for line in daemon.startup_notes():
            log.warning("%s", line)
        log.info("crmbridge serve: listening on http://%s:%d (POST /bitrix24/events, /livez, /readyz, /metrics); "
                 "%d scheduled job(s); cache %s", host, port,
                 len(daemon.scheduler.jobs) if daemon.scheduler is not None else 0, settings.cache_path)
        raise typer.Exit(daemon.run())

    inbox_app = typer.Typer(help="The daemon's event inbox: backlog, dead letters, requeue.", no_args_is_help=False,
                            invoke_without_command=True)
    app.add_typer(inbox_app, name="inbox")

    @inbox_app.callback()
    def inbox(
        ctx: typer.Context,
        dead: bool = typer.Option(False, "--dead", help="Show the dead letters instead of the backlog."),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
        limit: int = typer.Option(50, "--limit", help="Rows shown at most."),
    ) -> None:
        """Show the events waiting in the inbox (or, with --dead, the dead letters)."""
        if ctx.invoked_subcommand is not None:
            return
        from crmbridge.live.inbox import Inbox

        settings = common.settings()
        with common.cache(settings):  # a missing cache is a clear error, not a new empty file
            pass
        with Inbox(settings.cache_path) as box:
            stats = box.stats()
            if dead:
                letters = box.dead_letters(limit)
                if as_json:
                    common.print_json({"dead": stats.dead, "letters": [letter.__dict__ for letter in letters]})
                    return
                table = Table(title=f"{stats.dead} dead letter(s)", title_justify="left")
                _columns(table, ("id", "received", "source", "event", "entity", "attempts", "reason"))
                for letter in letters:
                    table.add_row(str(letter.id), _when(letter.received_at), letter.source, escape(letter.event or "-"),
                                  escape(f"{letter.entity or '-'} {letter.entity_id or ''}".strip()),
                                  str(letter.attempts), escape(letter.reason))
                common.console.print(table)
                if letters:
                    common.console.print("requeue with `crmbridge inbox retry ID` or `crmbridge inbox retry --all`")
                return
            rows = box.backlog(limit)
            if as_json:
                common.print_json({"pending": stats.pending, "due": stats.due, "done": stats.done, "dead": stats.dead,
                                   "oldest_pending": stats.oldest_pending,
                                   "events": [{key: value for key, value in row.__dict__.items() if key != "payload"}
                                              for row in rows]})
                return
            table = Table(title=f"{stats.pending} pending ({stats.due} due), {stats.done} processed, "
                                f"{stats.dead} dead letter(s)", title_justify="left")
            _columns(table, ("id", "received", "source", "event", "entity", "attempts", "last error"))
            for row in rows:
                table.add_row(str(row.id), _when(row.received_at), row.source, escape(row.event),
                              escape(f"{row.entity} {row.entity_id}"), str(row.attempts), escape(row.last_error or ""))
            common.console.print(table)

    @inbox_app.command("retry")
    def inbox_retry(
        letter_id: Optional[int] = typer.Argument(None, metavar="ID", help="The dead letter to requeue."),
        all_: bool = typer.Option(False, "--all", help="Requeue every dead letter not requeued yet."),
    ) -> None:
        """Put dead letters back into the inbox (the running daemon picks them up)."""
        from crmbridge.live.inbox import Inbox

        if (letter_id is None) == (not all_):
            raise ConfigError("give a dead letter id or --all", hint="`crmbridge inbox --dead` lists them")
        settings = common.settings()
        with common.cache(settings):  # a missing cache is a clear error, not a new empty file
            pass
        with Inbox(settings.cache_path) as box:
            requeued, problems = box.retry(None if all_ else [letter_id])  # type: ignore[list-item]
        for problem in problems:
            sys.stderr.write(f"crmbridge: {problem}\n")
        common.console.print(f"{requeued} event(s) back in the inbox")
        if problems and not requeued:
            raise typer.Exit(1)

    jobs_app = typer.Typer(help="Scheduled jobs (jobs/*.yaml).", no_args_is_help=True)
    app.add_typer(jobs_app, name="jobs")

    @jobs_app.command("list")
    def jobs_list(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
        """Each job with its schedule, next run and last run."""
        from crmbridge.live.jobs import load_jobs, next_fire
        from crmbridge.mapping.load import load_mappings
        from crmbridge.regulation.calendar import WorkingCalendar

        settings = common.settings()
        jobs = load_jobs(settings.jobs_dir)
        try:
            calendar = WorkingCalendar(load_mappings(settings.mappings_dir).regulation.calendar)
        except MappingError:
            calendar = WorkingCalendar(None)
        last = _last_runs(settings)
        now = datetime.now(UTC)
        rows = []
        for job in jobs:
            upcoming = next_fire(job, now, calendar) if job.spec.enabled else None
            previous = last.get(job.name)
            rows.append({"job": job.name, "run": job.spec.run, "schedule": job.schedule(), "enabled": job.spec.enabled,
                         "timeout": job.spec.timeout,
                         "next_run": upcoming.astimezone(calendar.zone).isoformat(timespec="minutes") if upcoming else None,
                         "last_run": previous})
        if as_json:
            common.print_json(rows)
            return
        if not rows:
            common.console.print(f"no jobs in {settings.jobs_dir}: the daemon only reacts to events")
            return
        table = Table(title=f"Jobs in {escape(str(settings.jobs_dir))} (times in {calendar.zone})",
                      title_justify="left")
        for column in ("job", "runs", "schedule", "next run", "last run"):
            table.add_column(column, no_wrap=column in ("next run", "last run"), overflow="fold")
        for row in rows:
            previous = row["last_run"]
            last_text = "-"
            if previous:
                ran = datetime.fromisoformat(previous["scheduled_for"]).astimezone(calendar.zone)
                last_text = f"{previous['status']} {ran:%Y-%m-%d %H:%M}"
            upcoming = datetime.fromisoformat(row["next_run"]).strftime("%Y-%m-%d %H:%M") if row["next_run"] else None
            table.add_row(escape(row["job"]), escape(row["run"]), row["schedule"], upcoming or "disabled", last_text)
        common.console.print(table)

    @jobs_app.command("run")
    def jobs_run(
        name: str = typer.Argument(..., help="The job (its file name without .yaml)."),
        as_json: bool = typer.Option(False, "--json", help="Print the run's summary as JSON."),
    ) -> None:
        """Run one job now (for cron or a systemd timer); skipped when another process is running it."""
        from crmbridge.live.jobs import JobContext, load_jobs, run_job
        from crmbridge.mapping.load import did_you_mean

        settings = common.settings()
        jobs = {job.name: job for job in load_jobs(settings.jobs_dir)}
        if name not in jobs:
            raise ConfigError(f'there is no job "{name}" in {settings.jobs_dir}',
                              hint=did_you_mean(name, jobs) if jobs else "add a jobs/*.yaml file")
        # the job runs in a child process with its own client of the configured CRM (Bitrix24 or amoCRM)
        run = run_job(jobs[name], JobContext(settings), datetime.now(UTC))
        if as_json:
            common.print_json(run.__dict__)
        else:
            common.console.print(f"job {name}: {run.status} in {run.seconds:.1f} s: "
                                 f"{escape(describe_run(jobs[name].spec.run, run.summary))} (--json: the whole summary)")
        if run.status in ("failed", "timeout"):
            raise typer.Exit(1)

    @jobs_app.command("schema")
    def jobs_schema() -> None:
        """Write job.schema.json into the jobs folder (editors complete and explain the keys)."""
        from crmbridge.live.jobs import JOB_SCHEMA_FILE, job_schema

        settings = common.settings()
        settings.jobs_dir.mkdir(parents=True, exist_ok=True)
        target = settings.jobs_dir / JOB_SCHEMA_FILE
        target.write_text(json.dumps(job_schema(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        common.console.print(f"wrote {target}")


def describe_run(command: str, summary: dict[str, object]) -> str:
    """The figures of a job run a person looks for, in one line (job_runs.summary keeps everything)."""
    s: dict[str, Any] = dict(summary)
    if "error" in s or "reason" in s:
        return str(s.get("error") or s.get("reason"))
    if command.startswith("sync"):
        return (f"{s.get('mode', '')} sync: {s.get('deals_read', 0)} deals read, {s.get('deals_changed', 0)} changed, "
                f"{s.get('deals_deleted', 0)} deleted; {s.get('http_requests', 0)} HTTP requests")
    if command == "enforce":
        execution = s.get("execution") or {}
        messages = s.get("messages") or {}
        held = ", ".join(f"{count} ({why})" for why, count in (messages.get("held") or {}).items())
        before, after = s.get("compliance_before") or {}, s.get("compliance_after") or {}
        return (f"{s.get('to_write', 0)} actions to write, {execution.get('done', 0)} written"
                f"{', ' + str(execution.get('failed')) + ' failed' if execution.get('failed') else ''}; "
                f"messages {messages.get('composed', 0)} sent" + (f", notices held: {held}" if held else "")
                + (f"; compliance {before.get('rate', 0):.1%} -> {after.get('rate', 0):.1%}" if before else ""))
    if command == "kpi snapshot":
        return (f"period {s.get('period')}: {s.get('written', 0)} figures written, {s.get('unchanged', 0)} unchanged, "
                f"{s.get('changed', 0)} changed")
    return json.dumps(s, ensure_ascii=False, default=str)


def _columns(table: Table, names: tuple[str, ...]) -> None:
    """Ids, times and counts never wrap; names fold; the reason (last column) takes the rest of the width."""
    for name in names:
        if name in ("id", "received", "attempts"):
            table.add_column(name, no_wrap=True)
        elif name == names[-1]:
            table.add_column(name, ratio=1, overflow="fold")
        else:
            table.add_column(name, overflow="fold")


def _when(iso: str) -> str:
    return iso[:16].replace("T", " ")


def _last_runs(settings: object) -> dict[str, dict[str, str]]:
    import sqlite3

    path = getattr(settings, "cache_path")
    if not path.exists():
        return {}
    conn = sqlite3.connect(str(path))
    try:
        rows = conn.execute("SELECT job, scheduled_for, status FROM job_runs WHERE id IN "
                            "(SELECT MAX(id) FROM job_runs GROUP BY job)").fetchall()
    except sqlite3.Error:
        return {}
    finally:
        conn.close()
    return {job: {"scheduled_for": when, "status": status} for job, when, status in rows}

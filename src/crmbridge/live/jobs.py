"""Scheduled jobs: `jobs/*.yaml` (validated like the mapping files), their runs in `job_runs`, and the scheduler.

A job file says what to run, when, and for how long at most:

    run: sync                    # sync | sync --full | enforce | kpi snapshot | kpi push (JOB_COMMANDS)
    every: 5m                    # or  cron: "30 2 * * *"  (minute hour day month weekday, the regulation's zone)
    window: working_hours        # optional: only fire times inside the regulation's working hours
    timeout: 10m                 # a longer run is recorded as `timeout` (its work is resumable)

Each fire time runs once per cache: a run is claimed by inserting `job_runs (job, scheduled_for)` (UNIQUE)
while holding an exclusive lock file next to the cache (`<cache>.job-<name>.lock`), so two daemons on one
cache never run the same job, and a job still running is never started again. Fire times missed while the
daemon was down or busy coalesce into one run (the latest); runs never pile up. The triggers are APScheduler's
(`CronTrigger`, `IntervalTrigger`); the loop around them is ours, because a run must know its fire time.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from pydantic import Field, field_validator, model_validator

from crmbridge.cache.store import open_cache
from crmbridge.errors import MappingError
from crmbridge.live.inbox import connect, utc_iso
from crmbridge.mapping.load import Mappings, did_you_mean, validate_document
from crmbridge.mapping.schema import Strict, parse_duration
from crmbridge.mapping.yamlpos import Problem, read_yaml
from crmbridge.regulation.calendar import WorkingCalendar

log = logging.getLogger("crmbridge.jobs")

JOB_SCHEMA_FILE = "job.schema.json"


@dataclass
class JobContext:
    """What a job command gets: the settings, a client factory, the daemon's writer lock, the mappings."""

    settings: Any
    client_factory: Callable[[], Any] | None
    writer_lock: threading.Lock = field(default_factory=threading.Lock)
    mappings: Callable[[], Mappings] | None = None

    def client(self) -> Any:
        if self.client_factory is None:
            from crmbridge.errors import ConfigError

            raise ConfigError("CRMBRIDGE_BITRIX24_WEBHOOK_URL is not set", hint="a job that talks to the portal needs it")
        return self.client_factory()


def job_duration(text: Any) -> timedelta:
    """A job's `every` / `timeout`: the mapping files' durations (90m, 1h, 3d), plus seconds (`30s`) for short intervals."""
    if isinstance(text, str) and text.strip().endswith("s") and text.strip()[:-1].isdigit():
        return timedelta(seconds=int(text.strip()[:-1]))
    return parse_duration(text)


def _sync(full: bool) -> Callable[[JobContext], dict[str, Any]]:
    def run(ctx: JobContext) -> dict[str, Any]:
        from crmbridge.connectors.registry import syncer_for

        cache = open_cache(ctx.settings.cache_path)
        try:
            with ctx.writer_lock:
                return syncer_for(ctx.client(), cache, overlap=timedelta(minutes=ctx.settings.sync_overlap_minutes),
                                  refresh=timedelta(minutes=ctx.settings.amocrm_refresh_minutes),
                                  plan_entity_type=_plans_entity_type(ctx)).run(full=full).as_dict()
        finally:
            cache.close()

    return run


def _plans_entity_type(ctx: JobContext) -> int | None:
    """The smart process holding plans (bitrix24.yaml `plans_source`); broken mapping files only skip the plans."""
    from crmbridge.mapping.load import load_mappings

    if ctx.mappings is None and not (Path(ctx.settings.mappings_dir) / "bitrix24.yaml").exists():
        return None
    try:
        mappings = ctx.mappings() if ctx.mappings is not None else load_mappings(ctx.settings.mappings_dir)
    except MappingError as bad:
        log.warning("plans in the portal not read: %s", bad)
        return None
    source = getattr(mappings.binding, "plans_source", None)  # Bitrix24 only
    return source.entity_type_id if source is not None else None


def _kpi_snapshot(ctx: JobContext) -> dict[str, Any]:
    """The monthly KPI snapshot (issue 10): the last full month into kpi_snapshots, idempotent."""
    from crmbridge.kpi.service import take_snapshot

    def snapshot(cache: Any, session: Any, period: Any, now: datetime) -> dict[str, Any]:
        result = take_snapshot(cache, session, period, now)
        return {"period": result.period, "written": result.written, "unchanged": result.unchanged,
                "changed": len(result.changed)}

    return _last_full_month(ctx, snapshot)


def _kpi_push(ctx: JobContext) -> dict[str, Any]:
    """The monthly KPI message (issue 10, optional): each manager's plan and fact of the last full month and each head
    of sales' table, once per person and month (later runs of the month write nothing)."""
    from crmbridge.kpi.push_run import push_month

    def push(cache: Any, session: Any, period: Any, now: datetime) -> dict[str, Any]:
        return push_month(ctx.client(), cache, session, period, channel=ctx.settings.enforce_notify_channel,
                          client_id=ctx.settings.bitrix24_client_id).as_dict()

    return _last_full_month(ctx, push)


def _last_full_month(ctx: JobContext, work: Callable[[Any, Any, Any, datetime], dict[str, Any]]) -> dict[str, Any]:
    """`work` on a KPI session of the cache and the last full month in the portal's zone, holding the writer lock."""
    from crmbridge.kpi.periods import last_full_month
    from crmbridge.kpi.service import open_session, portal_zone

    now = datetime.now(UTC)
    cache = open_cache(ctx.settings.cache_path)
    try:
        with ctx.writer_lock:
            session = open_session(cache, Path(ctx.settings.mappings_dir), now, crm=getattr(ctx.settings, "crm", None))
            return work(cache, session, last_full_month(now.astimezone(portal_zone(session.mappings)).date()), now)
    finally:
        cache.close()


def _enforce(ctx: JobContext) -> dict[str, Any]:
    from crmbridge.enforce.run import enforce
    from crmbridge.mapping.load import load_mappings

    mappings = ctx.mappings() if ctx.mappings is not None else load_mappings(ctx.settings.mappings_dir,
                                                                             crm=ctx.settings.crm)
    cache = open_cache(ctx.settings.cache_path)
    try:
        with ctx.writer_lock:
            report = enforce(ctx.client(), cache, mappings,
                             max_reverts_per_day=ctx.settings.enforce_max_reverts_per_day,
                             channel=ctx.settings.enforce_notify_channel, client_id=ctx.settings.bitrix24_client_id,
                             allow_non_admin=ctx.settings.enforce_allow_non_admin)
        summary = report.as_dict()
        summary.pop("actions", None)  # the audit log has them; the run's summary stays small
        return summary
    finally:
        cache.close()


#: what a job may run; other parts add theirs (e.g. "kpi snapshot") by inserting into this mapping
JOB_COMMANDS: dict[str, Callable[[JobContext], dict[str, Any]]] = {
    "sync": _sync(full=False),
    "sync --full": _sync(full=True),
    "enforce": _enforce,
    "kpi snapshot": _kpi_snapshot,
    "kpi push": _kpi_push,
}


class JobSpec(Strict):
    """One file in jobs/: what to run, when, and for how long at most."""

    run: str = Field(description="what to run: " + ", ".join(JOB_COMMANDS))
    every: str | None = Field(None, description="an interval: 30s, 5m, 1h, 1d (or give `cron`)")
    cron: str | None = Field(None, description='a cron line: "minute hour day month weekday", the regulation\'s zone')
    window: Literal["always", "working_hours"] = Field(
        "always", description="working_hours: only fire times inside the regulation's working hours and days")
    timeout: str = Field("30m", description="longest run; a longer one is recorded as timeout")
    enabled: bool = Field(True, description="false keeps the file but runs nothing")

    @field_validator("run")
    @classmethod
    def _known(cls, value: str) -> str:
        words = " ".join(str(value).split())
        if words not in JOB_COMMANDS:
            raise ValueError(f'"{value}" is not something a job can run — {did_you_mean(words, JOB_COMMANDS)}'
                             f" (one of: {', '.join(JOB_COMMANDS)})")
        return words

    @field_validator("every", "timeout")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None and job_duration(value) <= timedelta(0):
            raise ValueError(f'"{value}" is not a positive duration — write e.g. 30s, 5m, 1h or 1d')
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            CronTrigger.from_crontab(value, timezone=UTC)
        except ValueError as exc:
            raise ValueError(f'"{value}" is not a cron line ({exc}) — write "minute hour day month weekday", '
                             'e.g. "*/15 * * * *" or "30 2 * * *"') from None
        return value

    @model_validator(mode="after")
    def _one_schedule(self) -> JobSpec:
        if (self.every is None) == (self.cron is None):
            raise ValueError("give exactly one of `every` or `cron` — e.g. every: 5m, or cron: \"30 2 * * *\"")
        return self


@dataclass(frozen=True)
class Job:
    name: str  # the file name without .yaml
    spec: JobSpec
    file: Path

    @property
    def timeout(self) -> timedelta:
        return job_duration(self.spec.timeout)

    def trigger(self, zone: Any) -> BaseTrigger:
        if self.spec.cron is not None:
            return CronTrigger.from_crontab(self.spec.cron, timezone=zone)
        return IntervalTrigger(seconds=job_duration(self.spec.every).total_seconds(), timezone=zone,
                               start_date=datetime(2000, 1, 3, tzinfo=UTC))  # fixed phase: same fire times everywhere

    def schedule(self) -> str:
        when = f"every {self.spec.every}" if self.spec.every else f"cron {self.spec.cron}"
        return when + (" in working hours" if self.spec.window == "working_hours" else "")


def load_jobs(directory: Path | str) -> list[Job]:
    """Every `*.yaml` in the jobs folder (none, or no folder: no jobs); MappingError lists every problem."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    jobs: list[Job] = []
    problems: list[Problem] = []
    for path in sorted(folder.glob("*.yaml")):
        doc = read_yaml(path.read_text(encoding="utf-8"), str(path))
        spec = validate_document(doc, JobSpec)
        problems += doc.problems
        if isinstance(spec, JobSpec):
            jobs.append(Job(path.stem, spec, path))
    if problems:
        raise MappingError([str(problem) for problem in sorted(problems)])
    return jobs


def job_schema() -> dict[str, Any]:
    return JobSpec.model_json_schema(mode="validation")


# ---------------------------------------------------------------- fire times


def next_fire(job: Job, after: datetime, calendar: WorkingCalendar) -> datetime | None:
    """The first fire time after `after` (inside the working-hours window when the job asks for it)."""
    trigger = job.trigger(calendar.zone)
    moment: datetime | None = after
    previous = None
    for _ in range(10_000):
        moment = trigger.get_next_fire_time(previous, moment)  # type: ignore[arg-type]
        if moment is None:
            return None
        if moment > after and _in_window(job, moment, calendar):
            return moment
        previous = moment
        moment = moment + timedelta(microseconds=1)
    return None


def latest_due(job: Job, since: datetime, now: datetime, calendar: WorkingCalendar) -> datetime | None:
    """The latest fire time in (since, now]: missed ones coalesce into it."""
    found = None
    moment = next_fire(job, since, calendar)
    while moment is not None and moment <= now:
        found = moment
        moment = next_fire(job, moment, calendar)
    return found


def _in_window(job: Job, moment: datetime, calendar: WorkingCalendar) -> bool:
    if job.spec.window != "working_hours" or calendar.spec is None:
        return True
    local = moment.astimezone(calendar.zone)
    if not calendar.is_working_day(local.date()):
        return False
    minutes = local.hour * 60 + local.minute
    return calendar.day_start <= minutes < calendar.day_end


# ---------------------------------------------------------------- running one job


@dataclass
class JobRun:
    job: str
    scheduled_for: str
    status: str  # done, failed, timeout, skipped (another run holds it)
    summary: dict[str, Any]
    seconds: float = 0.0


class JobLock:
    """An exclusive lock file per job next to the cache: held for the whole run, released when the process dies."""

    def __init__(self, cache_path: Path, job: str) -> None:
        self.path = Path(f"{cache_path}.job-{job}.lock")
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()}:{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def run_job(job: Job, ctx: JobContext, scheduled_for: datetime, *, metrics: Any = None,
            on_timeout: Callable[[], None] | None = None) -> JobRun:
    """Run one fire time of a job, unless another process runs it or ran it already (then `skipped`)."""
    cache_path = Path(ctx.settings.cache_path)
    open_cache(cache_path).close()  # migrated before job_runs is used
    when = utc_iso(scheduled_for)
    lock = JobLock(cache_path, job.name)
    if not lock.acquire():
        return JobRun(job.name, when, "skipped", {"reason": "another process is running this job"})
    try:
        conn = connect(cache_path)
        try:
            try:
                conn.execute("INSERT INTO job_runs (job, scheduled_for, status, started, host) VALUES (?, ?, ?, ?, ?)",
                             (job.name, when, "running", utc_iso(), f"{socket.gethostname()}:{os.getpid()}"))
                run_id = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
            except sqlite3.IntegrityError:
                return JobRun(job.name, when, "skipped", {"reason": "this fire time already ran"})
            started = time.monotonic()
            outcome: dict[str, Any] = {}

            def work() -> None:
                from crmbridge.live.worker import lower_priority

                lower_priority()
                try:
                    outcome["summary"] = JOB_COMMANDS[job.spec.run](ctx)
                    outcome["status"] = "done"
                except Exception as exc:  # noqa: BLE001 - recorded in job_runs and the metrics
                    outcome["status"] = "failed"
                    outcome["summary"] = {"error": f"{type(exc).__name__}: {exc}"}
                    log.error("job %s failed: %s", job.name, exc)

            thread = threading.Thread(target=work, name=f"job-{job.name}", daemon=True)
            thread.start()
            thread.join(job.timeout.total_seconds())
            if thread.is_alive():
                # Python cannot stop the thread; its work commits chunk by chunk and resumes next time
                _finish(conn, run_id, "timeout", {"error": f"still running after {job.spec.timeout}"})
                if metrics is not None:
                    metrics.job_runs.labels(job.name, "timeout").inc()
                if on_timeout is not None:
                    on_timeout()
                thread.join()  # the lock stays held until it really ends: no second run meanwhile
                status, summary = "timeout", outcome.get("summary", {})
            else:
                status, summary = outcome["status"], outcome["summary"]
                _finish(conn, run_id, status, summary)
                if metrics is not None:
                    metrics.job_runs.labels(job.name, status).inc()
            seconds = time.monotonic() - started
            if metrics is not None:
                metrics.job_duration.labels(job.name).observe(seconds)
                if status == "done":
                    metrics.job_last_success.labels(job.name).set(time.time())
            return JobRun(job.name, when, status, summary, seconds)
        finally:
            conn.close()
    finally:
        lock.release()


def _finish(conn: sqlite3.Connection, run_id: int, status: str, summary: Mapping[str, Any]) -> None:
    conn.execute("UPDATE job_runs SET status = ?, finished = ?, summary = ? WHERE id = ?",
                 (status, utc_iso(), json.dumps(summary, ensure_ascii=False, default=str), run_id))


# ---------------------------------------------------------------- the scheduler


class JobScheduler:
    """Fires due jobs in their own threads; a job still running when it is due again is not started twice."""

    def __init__(self, jobs: list[Job], ctx: JobContext, *, metrics: Any = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.jobs = [job for job in jobs if job.spec.enabled]
        self.ctx = ctx
        self.metrics = metrics
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running: dict[str, threading.Thread] = {}
        self.runs: list[JobRun] = []

    def calendar(self) -> WorkingCalendar:
        try:
            mappings = self.ctx.mappings() if self.ctx.mappings is not None else None
        except MappingError:
            mappings = None
        return WorkingCalendar(mappings.regulation.calendar if mappings is not None else None)

    def start(self) -> None:
        if not self.jobs:
            return
        self._thread = threading.Thread(target=self._loop, name="crmbridge-scheduler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        last_seen = {job.name: self._last_scheduled(job) or self.clock() for job in self.jobs}
        while not self._stop.is_set():
            now = self.clock()
            calendar = self.calendar()
            soonest = now + timedelta(seconds=60)
            for job in self.jobs:
                due = latest_due(job, last_seen[job.name], now, calendar)
                running = self._running.get(job.name)
                if due is not None and not (running and running.is_alive()):
                    last_seen[job.name] = due
                    thread = threading.Thread(target=self._run, args=(job, due), name=f"job-{job.name}", daemon=True)
                    self._running[job.name] = thread
                    thread.start()
                upcoming = next_fire(job, max(now, last_seen[job.name]), calendar)
                if upcoming is not None:
                    soonest = min(soonest, upcoming)
            self._stop.wait(max(0.05, min(60.0, (soonest - self.clock()).total_seconds())))

    def _run(self, job: Job, due: datetime) -> None:
        run = run_job(job, self.ctx, due, metrics=self.metrics)
        self.runs.append(run)
        log.info("job %s (%s): %s in %.1f s", job.name, run.scheduled_for, run.status, run.seconds)

    def _last_scheduled(self, job: Job) -> datetime | None:
        """The newest fire time any process ran: missed fire times since then coalesce into one run."""
        try:
            conn = connect(self.ctx.settings.cache_path)
            try:
                row = conn.execute("SELECT MAX(scheduled_for) FROM job_runs WHERE job = ?", (job.name,)).fetchone()
            finally:
                conn.close()
        except sqlite3.Error:
            return None
        return datetime.fromisoformat(row[0]) if row and row[0] else None

    def shutdown(self, timeout: float = 60.0) -> None:
        """No new runs; wait up to `timeout` for running ones (their work is resumable if cut)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(timeout=max(0.1, deadline - time.monotonic()))
        for thread in list(self._running.values()):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


__all__ = ["JOB_COMMANDS", "JOB_SCHEMA_FILE", "Job", "JobContext", "JobLock", "JobRun", "JobScheduler", "JobSpec",
           "job_schema", "latest_due", "load_jobs", "next_fire", "run_job"]

"""Scheduled jobs: `jobs/*.yaml` (validated like the mapping files), their runs in `job_runs`, and the scheduler.

A job file says what to run, when, and for how long at most:

    run: sync                    # sync | sync --full | enforce | kpi snapshot | kpi push (JOB_COMMANDS)
    every: 5m                    # or  cron: "30 2 * * *"  (minute hour day month weekday, the regulation's zone)
    window: working_hours        # optional: only fire times inside the regulation's working hours
    timeout: 10m                 # then the run stops between two batches (or is killed) and is recorded `timeout`

Each fire time runs once per cache: a run is claimed by inserting `job_runs (job, scheduled_for)` (UNIQUE)
while holding an exclusive lock file next to the cache (`<cache>.job-<name>.lock`), so two daemons on one
cache never run the same job, and a job still running is never started again. Fire times missed while the
daemon was down or busy coalesce into one run (the latest); runs never pile up. The triggers are APScheduler's
(`CronTrigger`, `IntervalTrigger`); the loop around them is ours, because a run must know its fire time.

Each run is a child process (`run_job`), so a timeout is real: the command stops at its next checkpoint (a committed
sync chunk, an enforcement round's committed outcomes) or is killed after a grace period, and its lock goes with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import multiprocessing
import os
import pickle
import socket
import sqlite3
import threading
import time
from collections import Counter
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
from crmbridge.errors import JobCancelled, MappingError
from crmbridge.live.inbox import connect, utc_iso
from crmbridge.mapping.load import Mappings, did_you_mean, read_text, validate_document
from crmbridge.mapping.schema import Strict, parse_duration
from crmbridge.mapping.yamlpos import Problem, read_yaml
from crmbridge.regulation.calendar import WorkingCalendar

log = logging.getLogger("crmbridge.jobs")

JOB_SCHEMA_FILE = "job.schema.json"
#: seconds a job asked to stop (its timeout, the daemon stopping) gets to end its batch before it is killed
CANCEL_GRACE = 30.0
#: seconds a job's child process may take to start (import crmbridge, take its lock) before its timeout counts
CHILD_START_ALLOWANCE = 30.0
#: jobs run in a fresh interpreter: a forked copy of the daemon's threads (HTTP loop, worker) would be unsafe
_SPAWN = multiprocessing.get_context("spawn")


@dataclass
class JobContext:
    """What a job command gets: the settings, a client factory, a lock, the mappings, and a checkpoint to call between
    batches (it raises JobCancelled when the job was asked to stop: its timeout passed, or the daemon stops)."""

    settings: Any
    client_factory: Callable[[], Any] | None = None
    writer_lock: threading.Lock = field(default_factory=threading.Lock)
    mappings: Callable[[], Mappings] | None = None
    checkpoint: Callable[[], None] = lambda: None

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


def _sync(ctx: JobContext, *, full: bool) -> dict[str, Any]:
    from crmbridge.compliance import judge_after_sync
    from crmbridge.connectors.registry import syncer_for

    cache = open_cache(ctx.settings.cache_path)
    try:
        with ctx.writer_lock:
            summary = syncer_for(ctx.client(), cache, overlap=timedelta(minutes=ctx.settings.sync_overlap_minutes),
                                 refresh=timedelta(minutes=ctx.settings.amocrm_refresh_minutes),
                                 plan_entity_type=_plans_entity_type(ctx),
                                 # each committed chunk is a point where a timed-out job stops cleanly
                                 progress=lambda entity, count: ctx.checkpoint()).run(full=full).as_dict()
            # the deals it changed judged for the next audit (which then reads, not judges, them)
            summary["judged"] = judge_after_sync(cache, ctx.settings.mappings_dir, ctx.settings.crm, datetime.now(UTC))
            return summary
    finally:
        cache.close()


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
                          client_id=ctx.settings.bitrix24_client_id,
                          # after a batch's outcomes are committed: a timed-out job stops between two batches
                          checkpoint=lambda step: ctx.checkpoint() if step.endswith("outcomes") else None).as_dict()

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
            period = last_full_month(now.astimezone(portal_zone(session.mappings)).date())
            ctx.checkpoint()  # what follows writes: stop before it, or let it finish
            return work(cache, session, period, now)
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
                             allow_non_admin=ctx.settings.enforce_allow_non_admin,
                             # after a round's outcomes are committed: a timed-out job stops between two rounds
                             checkpoint=lambda step: ctx.checkpoint() if step.endswith("outcomes") else None)
        summary = report.as_dict()
        summary.pop("actions", None)  # the audit log has them; the run's summary stays small
        return summary
    finally:
        cache.close()


#: what a job may run; other parts add theirs (e.g. "kpi snapshot") by inserting into this mapping. A job runs in a
#: child process, which gets the command by reference: give a module-level function (or a partial of one), not a
#: closure (a closure is looked up by its name in the child, so only the ones listed here at import time work)
JOB_COMMANDS: dict[str, Callable[[JobContext], dict[str, Any]]] = {
    "sync": functools.partial(_sync, full=False),
    "sync --full": functools.partial(_sync, full=True),
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
    timeout: str = Field("30m", description="longest run: then the job stops after its current batch (or is killed) "
                                            "and the run is recorded as timeout; the next run goes on from there")
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
    unreadable: list[str] = []  # not UTF-8, too large, a folder or a link loop: `file:line:col` lines already
    for path in sorted(folder.glob("*.yaml")):
        try:
            text = read_text(path)
        except MappingError as bad:
            unreadable += bad.problems
            continue
        doc = read_yaml(text, str(path))
        spec = validate_document(doc, JobSpec)
        problems += doc.problems
        if isinstance(spec, JobSpec):
            jobs.append(Job(path.stem, spec, path))
    if problems or unreadable:
        raise MappingError([*unreadable, *(str(problem) for problem in sorted(problems))])
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
            stop: threading.Event | None = None, grace: float = CANCEL_GRACE) -> JobRun:
    """Run one fire time of a job in a child process, unless another process runs it or ran it already (`skipped`).

    The child takes the job's lock and its `job_runs` row, runs the command and records the outcome. At the
    timeout (or when `stop` is set: the daemon stops) it is told to stop: the command stops between two batches
    (sync chunks, enforcement rounds) and the run is recorded `timeout` (`interrupted`); a child that has not
    stopped `grace` seconds later is killed, which leaves nothing half-written either (every write transaction is
    atomic, a sync resumes from its last chunk, enforcement reconciles its intents), and the lock dies with it.
    """
    cache_path = Path(ctx.settings.cache_path)
    open_cache(cache_path).close()  # migrated before job_runs is used
    when = utc_iso(scheduled_for)
    started = time.monotonic()
    parent, child = _SPAWN.Pipe()
    process = _SPAWN.Process(target=_child_main, name=f"crmbridge-job-{job.name}", daemon=True,
                             args=(job.name, _command_ref(job.spec.run), ctx.settings, when, child,
                                   logging.getLogger("crmbridge").getEffectiveLevel()))
    with ctx.writer_lock:  # the daemon's worker and its jobs never write at the same time
        process.start()
        child.close()
        outcome = _supervise(job, process, parent, started, stop, grace)
    parent.close()
    status, summary = outcome.status, outcome.summary
    if status in ("skipped", "no answer"):
        return JobRun(job.name, when, "skipped" if status == "skipped" else "failed", summary,
                      time.monotonic() - started)
    if outcome.killed and outcome.run_id is not None:
        conn = connect(cache_path)
        try:
            _finish(conn, outcome.run_id, status, summary, only_running=True)
        finally:
            conn.close()
    seconds = time.monotonic() - started
    if metrics is not None:
        metrics.job_runs.labels(job.name, status).inc()
        metrics.job_duration.labels(job.name).observe(seconds)
        if status == "done":
            metrics.job_last_success.labels(job.name).set(time.time())
        for (method, result), count in outcome.requests.items():
            metrics.crm_requests.labels(method=method, status=result).inc(count)
        for (method, result), count in outcome.calls.items():
            metrics.crm_calls.labels(method=method, status=result).inc(count)
    return JobRun(job.name, when, status, summary, seconds)


def _command_ref(run: str) -> Any:
    """What the child gets to find its command: the function itself (by reference), else its name."""
    command = JOB_COMMANDS[run]
    try:
        pickle.dumps(command)
    except (pickle.PicklingError, AttributeError, TypeError):
        return run
    return command


@dataclass
class _Outcome:
    status: str = "no answer"
    summary: dict[str, Any] = field(default_factory=dict)
    run_id: int | None = None
    killed: bool = False
    requests: dict[tuple[str, str], int] = field(default_factory=dict)
    calls: dict[tuple[str, str], int] = field(default_factory=dict)


def _supervise(job: Job, process: Any, conn: Any, started: float, stop: threading.Event | None,
               grace: float) -> _Outcome:
    """Follow the child's messages; at the timeout (or `stop`) ask it to stop, after `grace` more seconds kill it."""
    outcome = _Outcome()
    # the timeout counts from the run's start in the child; a fresh interpreter may take seconds to get there on a
    # loaded machine, which is not the job's time (a child that never starts is still stopped, later)
    deadline = started + job.timeout.total_seconds() + CHILD_START_ALLOWANCE
    asked: str | None = None  # why the child was told to stop: timeout or interrupted
    kill_at = float("inf")
    while True:
        now = time.monotonic()
        if asked is None and (now >= deadline or (stop is not None and stop.is_set())):
            asked = "timeout" if now >= deadline else "interrupted"
            kill_at = now + grace
            log.warning("job %s: %s; asking it to stop after its current batch", job.name,
                        f"still running after {job.spec.timeout}" if asked == "timeout" else "the daemon stops")
            with contextlib.suppress(OSError, ValueError):
                conn.send(("stop", asked))
        if asked is not None and now >= kill_at:
            process.kill()
            process.join(10)
            what = f"still running after {job.spec.timeout}" if asked == "timeout" else "the daemon stopped"
            outcome.killed, outcome.status = True, asked
            outcome.summary = {"error": f"{what}; killed {grace:.0f} s after it was asked to stop (nothing is left "
                                        "half-written: the next run goes on from the last committed batch)"}
            log.error("job %s: %s", job.name, outcome.summary["error"])
            return outcome
        try:
            message = conn.recv() if conn.poll(max(0.0, min(deadline if asked is None else kill_at, now + 0.5) - now)) \
                else None
        except (EOFError, OSError):
            # the child closed its end without a last word: it ended (or was killed from outside)
            process.join(10)
            if outcome.run_id is not None:
                outcome.killed, outcome.status = True, "failed"
            outcome.summary = {"error": f"the job's process ended without an outcome (exit code {process.exitcode})"}
            return outcome
        if message is None:
            continue
        if message[0] == "started":
            outcome.run_id = message[1]
            if asked is None:
                deadline = time.monotonic() + job.timeout.total_seconds()
        elif message[0] == "skipped":
            outcome.status, outcome.summary = "skipped", {"reason": message[1]}
            process.join(10)
            return outcome
        elif message[0] == "finished":
            _, outcome.status, outcome.summary, outcome.requests, outcome.calls = message
            process.join(10)
            return outcome


def _child_main(name: str, command: Any, settings: Any, when: str, conn: Any, level: int) -> None:
    """The job's process: its lock, its `job_runs` row, the command, the outcome (see run_job)."""
    import signal

    from crmbridge import logs
    from crmbridge.live.worker import lower_priority

    logs.setup(crmbridge_level=level)
    lower_priority()
    asked: list[str] = []
    stopping = threading.Event()

    def ask(reason: str) -> None:
        if not asked:
            asked.append(reason)
        stopping.set()

    # systemd stops the whole service (SIGTERM to every process), a terminal sends Ctrl-C to the process group
    signal.signal(signal.SIGTERM, lambda *_: ask("interrupted"))
    signal.signal(signal.SIGINT, lambda *_: ask("interrupted"))

    def listen() -> None:
        try:
            while True:
                message = conn.recv()
                if message and message[0] == "stop":
                    ask(message[1])
        except (EOFError, OSError):
            ask("interrupted")  # the parent is gone: finish the batch and stop, never run on unsupervised

    def checkpoint() -> None:
        if stopping.is_set():
            raise JobCancelled(f"asked to stop ({asked[0] if asked else 'interrupted'})")

    cache_path = Path(settings.cache_path)
    lock = JobLock(cache_path, name)
    if not lock.acquire():
        conn.send(("skipped", "another process is running this job"))
        return
    try:
        db = connect(cache_path)
        try:
            # rows a dead process left `running` (kill -9, power cut): this one holds the lock, so none of them runs
            db.execute("UPDATE job_runs SET status = 'interrupted', finished = ? WHERE job = ? AND status = 'running'",
                       (utc_iso(), name))
            try:
                db.execute("INSERT INTO job_runs (job, scheduled_for, status, started, host) VALUES (?, ?, ?, ?, ?)",
                           (name, when, "running", utc_iso(), f"{socket.gethostname()}:{os.getpid()}"))
                run_id = int(db.execute("SELECT last_insert_rowid()").fetchone()[0])
            except sqlite3.IntegrityError:
                conn.send(("skipped", "this fire time already ran"))
                return
            conn.send(("started", run_id))
            threading.Thread(target=listen, name="job-supervisor", daemon=True).start()
            requests: Counter[tuple[str, str]] = Counter()
            calls: Counter[tuple[str, str]] = Counter()

            def client() -> Any:
                from crmbridge.connectors.registry import client_for

                return client_for(settings, observer=lambda method, result: requests.update([(method, result)]),
                                  on_call=lambda method, result: calls.update([(method, result)]))

            ctx = JobContext(settings, client, checkpoint=checkpoint)
            try:
                checkpoint()
                summary: dict[str, Any] = (JOB_COMMANDS[command] if isinstance(command, str) else command)(ctx)
                status = "done"
            except JobCancelled:
                status = asked[0] if asked else "interrupted"
                summary = {"error": ("stopped after its timeout" if status == "timeout" else "stopped: interrupted")
                           + ", between two batches (the next run goes on from there)"}
                log.warning("job %s: %s", name, summary["error"])
            except Exception as exc:  # noqa: BLE001 - recorded in job_runs and the metrics
                status, summary = "failed", {"error": f"{type(exc).__name__}: {exc}"}
                log.warning("job %s failed: %s", name, exc)
            _finish(db, run_id, status, summary)
            conn.send(("finished", status, summary, dict(requests), dict(calls)))
        finally:
            db.close()
    finally:
        lock.release()


def _finish(conn: sqlite3.Connection, run_id: int, status: str, summary: Mapping[str, Any], *,
            only_running: bool = False) -> None:
    conn.execute("UPDATE job_runs SET status = ?, finished = ?, summary = ? WHERE id = ?"
                 + (" AND status = 'running'" if only_running else ""),
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
        # a job the daemon's stop interrupts is killed in time for the daemon to exit within its stop timeout
        stop_timeout = float(getattr(self.ctx.settings, "stop_timeout_seconds", CANCEL_GRACE))
        try:
            run = run_job(job, self.ctx, due, metrics=self.metrics, stop=self._stop,
                          grace=max(1.0, min(CANCEL_GRACE, stop_timeout - 1.0)))
        except Exception:  # noqa: BLE001 - a scheduler thread must never die silently
            log.exception("job %s (%s) could not be run", job.name, due.isoformat())
            return
        self.runs.append(run)
        log.info("job %s (%s): %s in %.1f s%s", job.name, run.scheduled_for, run.status, run.seconds,
                 f": {run.summary.get('error')}" if run.status not in ("done", "skipped") else "")

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
        """No new runs; running ones are asked to stop after their batch (killed if they do not), waited for up to
        `timeout` (their work is resumable: nothing is left half-written)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(timeout=max(0.1, deadline - time.monotonic()))
        for thread in list(self._running.values()):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


__all__ = ["JOB_COMMANDS", "JOB_SCHEMA_FILE", "Job", "JobContext", "JobLock", "JobRun", "JobScheduler", "JobSpec",
           "job_schema", "latest_due", "load_jobs", "next_fire", "run_job"]

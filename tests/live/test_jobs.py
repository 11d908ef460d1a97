"""jobs/*.yaml: validation with positions, fire times, coalesced misfires, one run per fire time."""

from __future__ import annotations

import os
import subprocess
import sys
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crmbridge.cache.store import open_cache
from crmbridge.errors import MappingError
from crmbridge.live.jobs import (JOB_COMMANDS, Job, JobContext, JobLock, JobSpec, latest_due, load_jobs, next_fire,
                                 run_job)
from crmbridge.mapping.schema import CalendarSpec
from crmbridge.regulation.calendar import WorkingCalendar

from . import job_commands

SHIPPED = Path(__file__).resolve().parents[2] / "jobs"


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_jobs_load() -> None:
    jobs = {job.name: job.spec for job in load_jobs(SHIPPED)}
    assert jobs["sync"].run == "sync" and jobs["sync"].every == "5m"
    assert jobs["full-sync"].run == "sync --full" and jobs["full-sync"].cron
    assert jobs["enforce"].window == "working_hours"


def test_every_problem_has_its_position_and_a_hint(tmp_path: Path) -> None:
    write(tmp_path, "a", "run: sync\nevry: 5m\n")
    write(tmp_path, "b", "run: sinc\nevery: 5m\n")
    write(tmp_path, "c", "run: enforce\ncron: '61 * * * *'\n")
    write(tmp_path, "d", "run: sync\nevery: 5m\ncron: '* * * * *'\n")
    with pytest.raises(MappingError) as caught:
        load_jobs(tmp_path)
    lines = caught.value.problems
    assert lines[0] == f'{tmp_path}/a.yaml:2:1: unknown key "evry" — did you mean "every"? (or remove it)'
    assert lines[1].startswith(f"{tmp_path}/b.yaml:1:6: ") and 'did you mean "sync"' in lines[1]
    assert lines[2].startswith(f"{tmp_path}/c.yaml:2:7: ") and "not a cron line" in lines[2]
    assert lines[3].startswith(f"{tmp_path}/d.yaml:1:1: ") and "exactly one of `every` or `cron`" in lines[3]


def test_a_malformed_jobs_file_is_one_clear_line_from_the_cli(tmp_path: Path) -> None:
    write(tmp_path / "jobs", "sync", "run: sync\nevery: 5 minutes\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("CRMBRIDGE_")}
    env.update({"CRMBRIDGE_JOBS_DIR": str(tmp_path / "jobs"), "CRMBRIDGE_CACHE_PATH": str(tmp_path / "c.db")})
    for command in (["jobs", "list"], ["serve", "--port", "0"]):
        done = subprocess.run([sys.executable, "-m", "crmbridge", *command], env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines() == [
            f'{tmp_path}/jobs/sync.yaml:2:8: "5 minutes" is not a duration — write a number with a unit: 90m, 1h, 3d, 2w '
            "(or 1h30m)"]


CALENDAR = WorkingCalendar(CalendarSpec(timezone="Europe/Moscow", working_hours="09:00-18:00"))


def job(**spec: str) -> Job:
    return Job("j", JobSpec(**spec), Path("j.yaml"))


def test_working_hours_window_and_coalesced_misfires() -> None:
    enforce = job(run="enforce", every="15m", window="working_hours")
    friday_evening = datetime(2026, 11, 6, 17, 50, tzinfo=CALENDAR.zone)
    assert next_fire(enforce, friday_evening, CALENDAR) == datetime(2026, 11, 9, 9, 0, tzinfo=CALENDAR.zone)
    sync = job(run="sync", every="5m")
    # down for an hour: twelve missed fire times are one run, the latest
    since = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
    assert latest_due(sync, since, since + timedelta(minutes=61), CALENDAR) == since + timedelta(minutes=60)
    nightly = job(run="sync --full", cron="30 2 * * *")
    assert next_fire(nightly, since, CALENDAR) == datetime(2026, 11, 3, 2, 30, tzinfo=CALENDAR.zone)


class _Settings:
    """What run_job reads of the settings (a job's child process gets a pickled copy)."""

    def __init__(self, cache: Path) -> None:
        self.cache_path = cache
        self.stop_timeout_seconds = 20


def test_one_fire_time_runs_once_even_when_asked_twice_at_once(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(JOB_COMMANDS, "sync", job_commands.wait_for_file)
    cache = tmp_path / "cache.db"
    spec = job(run="sync", every="5m")
    when = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
    results = []
    first = threading.Thread(target=lambda: results.append(run_job(spec, JobContext(_Settings(cache)), when)))
    first.start()
    wait_until(lambda: Path(f"{cache}.started").exists())
    results.append(run_job(spec, JobContext(_Settings(cache)), when))  # the lock is held: skipped
    Path(f"{cache}.release").write_text("go", encoding="utf-8")
    first.join(60)
    results.append(run_job(spec, JobContext(_Settings(cache)), when))  # already ran: skipped
    assert [run.status for run in results] == ["skipped", "done", "skipped"]
    assert results[0].summary == {"reason": "another process is running this job"}
    assert results[2].summary == {"reason": "this fire time already ran"}


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def job_runs(cache: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(cache) as conn:
        return conn.execute("SELECT job, status, summary FROM job_runs ORDER BY id").fetchall()


def test_a_job_over_its_timeout_stops_between_batches_and_frees_its_lock(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(JOB_COMMANDS, "sync", job_commands.batches)
    cache = tmp_path / "cache.db"
    spec = Job("j", JobSpec(run="sync", every="5m", timeout="2s"), Path("j.yaml"))
    started = time.monotonic()
    run = run_job(spec, JobContext(_Settings(cache)), datetime(2026, 11, 2, 10, 0, tzinfo=UTC), grace=20)
    took = time.monotonic() - started
    assert run.status == "timeout" and "between two batches" in run.summary["error"]
    assert took < 15  # stopped at its next checkpoint, long before the grace ran out
    lines = Path(f"{cache}.batches").read_text(encoding="utf-8").splitlines()
    time.sleep(0.5)
    assert Path(f"{cache}.batches").read_text(encoding="utf-8").splitlines() == lines  # it really stopped
    assert lines == [f"batch {n}" for n in range(len(lines))]  # whole batches only
    assert [(name, status) for name, status, _ in job_runs(cache)] == [("j", "timeout")]
    free = JobLock(cache, "j")
    assert free.acquire()  # the lock went with it
    free.release()


def test_a_job_that_never_reaches_a_checkpoint_is_killed_after_the_grace(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(JOB_COMMANDS, "sync", job_commands.stuck)
    cache = tmp_path / "cache.db"
    spec = Job("j", JobSpec(run="sync", every="5m", timeout="1s"), Path("j.yaml"))
    run = run_job(spec, JobContext(_Settings(cache)), datetime(2026, 11, 2, 10, 0, tzinfo=UTC), grace=1)
    assert run.status == "timeout" and "killed 1 s after it was asked to stop" in run.summary["error"], run.summary
    assert Path(f"{cache}.stuck").exists()  # it was running its command when it was killed
    assert [(name, status) for name, status, _ in job_runs(cache)] == [("j", "timeout")]
    free = JobLock(cache, "j")
    assert free.acquire()
    free.release()
    # the next fire time runs normally; nothing was left `running`
    monkeypatch.setitem(JOB_COMMANDS, "sync", job_commands.wait_for_file)
    Path(f"{cache}.release").write_text("go", encoding="utf-8")
    spec = Job("j", JobSpec(run="sync", every="5m", timeout="1m"), Path("j.yaml"))
    assert run_job(spec, JobContext(_Settings(cache)), datetime(2026, 11, 2, 10, 5, tzinfo=UTC)).status == "done"


def test_a_run_left_running_by_a_dead_process_is_marked_interrupted(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(JOB_COMMANDS, "sync", job_commands.wait_for_file)
    cache = tmp_path / "cache.db"
    open_cache(cache).close()
    with sqlite3.connect(cache) as conn:  # what kill -9 of a daemon mid-run leaves
        conn.execute("INSERT INTO job_runs (job, scheduled_for, status, started, host) VALUES "
                     "('j', '2026-11-02T09:55:00+00:00', 'running', '2026-11-02T09:55:00+00:00', 'gone:1')")
    Path(f"{cache}.release").write_text("go", encoding="utf-8")
    spec = Job("j", JobSpec(run="sync", every="5m"), Path("j.yaml"))
    assert run_job(spec, JobContext(_Settings(cache)), datetime(2026, 11, 2, 10, 0, tzinfo=UTC)).status == "done"
    assert [status for _, status, _ in job_runs(cache)] == ["interrupted", "done"]


def test_stopping_the_scheduler_interrupts_a_running_job(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(JOB_COMMANDS, "sync", job_commands.batches)
    cache = tmp_path / "cache.db"
    spec = Job("j", JobSpec(run="sync", every="5m", timeout="1h"), Path("j.yaml"))
    stop = threading.Event()
    results = []
    worker = threading.Thread(target=lambda: results.append(
        run_job(spec, JobContext(_Settings(cache)), datetime(2026, 11, 2, 10, 0, tzinfo=UTC), stop=stop)))
    worker.start()
    wait_until(lambda: Path(f"{cache}.batches").exists())
    stop.set()
    worker.join(30)
    assert results[0].status == "interrupted"
    assert [(name, status) for name, status, _ in job_runs(cache)] == [("j", "interrupted")]

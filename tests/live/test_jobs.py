"""jobs/*.yaml: validation with positions, fire times, coalesced misfires, one run per fire time."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crmbridge.errors import MappingError
from crmbridge.live.jobs import JOB_COMMANDS, Job, JobContext, JobSpec, latest_due, load_jobs, next_fire, run_job
from crmbridge.mapping.schema import CalendarSpec
from crmbridge.regulation.calendar import WorkingCalendar

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


def test_one_fire_time_runs_once_even_when_asked_twice_at_once(tmp_path: Path, monkeypatch) -> None:
    started = threading.Event()
    release = threading.Event()
    calls: list[int] = []

    def slow(ctx: JobContext) -> dict:
        calls.append(1)
        started.set()
        release.wait(10)
        return {"ok": True}

    monkeypatch.setitem(JOB_COMMANDS, "sync", slow)

    class Settings:
        cache_path = tmp_path / "cache.db"

    spec = job(run="sync", every="5m")
    when = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
    results = []
    first = threading.Thread(target=lambda: results.append(run_job(spec, JobContext(Settings(), None), when)))
    first.start()
    started.wait(10)
    results.append(run_job(spec, JobContext(Settings(), None), when))  # the lock is held: skipped
    release.set()
    first.join()
    results.append(run_job(spec, JobContext(Settings(), None), when))  # already ran: skipped
    assert [run.status for run in results] == ["skipped", "done", "skipped"]
    assert len(calls) == 1

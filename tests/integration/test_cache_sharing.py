"""Readers and writers sharing one cache, as real processes (issue 7, item 7): `sync --full` while `audit` runs,
and two syncs started together."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crmbridge.sandbox import SandboxPortal

pytestmark = pytest.mark.integration

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"


def environment(tmp_path: Path, portal: SandboxPortal, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMBRIDGE_")}
    env.update({"CRMBRIDGE_CACHE_PATH": str(tmp_path / "cache.db"), "CRMBRIDGE_MAPPINGS_DIR": str(MAPPINGS),
                "CRMBRIDGE_BITRIX24_WEBHOOK_URL": portal.webhook_url, "CRMBRIDGE_BITRIX24_RATE": "1000",
                "CRMBRIDGE_BITRIX24_BURST": "1000", **extra})
    return env


def start(tmp_path: Path, portal: SandboxPortal, *args: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "crmbridge", *args], cwd=tmp_path,
                            env=environment(tmp_path, portal, **extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


@pytest.fixture
def portal() -> Iterator[SandboxPortal]:
    # a few ms per request: a full sync takes seconds and commits many chunks while the others run
    sandbox = SandboxPortal(deals=1500, seed=3, limits=False, latency_ms=15)
    sandbox.start(port=0)
    yield sandbox
    sandbox.stop()


def test_sync_full_while_audit_runs_and_records(tmp_path: Path, portal: SandboxPortal) -> None:
    assert finish(start(tmp_path, portal, "sync", "--json"))[0] == 0
    sync = start(tmp_path, portal, "sync", "--full", "--json")
    audits = []
    while sync.poll() is None and len(audits) < 12:
        audits.append(finish(start(tmp_path, portal, "audit", "--json")))
    code, out, err = finish(sync)
    assert code == 0, err
    assert json.loads(out)["mode"] == "full"
    assert len(audits) >= 2  # the audits ran while the sync did
    for audit_code, audit_out, audit_err in audits:
        assert audit_code == 0 and "locked" not in audit_err, audit_err
        assert json.loads(audit_out)["deals"] > 0


def test_two_syncs_started_together_both_finish(tmp_path: Path, portal: SandboxPortal) -> None:
    first, second = start(tmp_path, portal, "sync", "--json"), start(tmp_path, portal, "sync", "--json")
    results = [finish(first), finish(second)]
    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    modes = sorted(json.loads(out)["mode"] for _, out, _ in results)
    assert modes == ["full", "incremental"]  # the second waited for the first, then read what changed since


def test_a_second_sync_that_may_not_wait_names_the_holder_in_one_line(tmp_path: Path, portal: SandboxPortal) -> None:
    first = start(tmp_path, portal, "sync", "--full", "--json")
    lock = tmp_path / "cache.db.sync.lock"
    deadline = time.monotonic() + 60
    while not (lock.exists() and lock.read_text()) and time.monotonic() < deadline:
        time.sleep(0.02)  # the first has the cache
    code, out, err = finish(start(tmp_path, portal, "sync", "--json", CRMBRIDGE_SYNC_LOCK_WAIT_SECONDS="0"))
    assert code != 0
    assert f"another sync run is writing to this cache: run " in err and f"pid {first.pid} " in err, err
    assert len(err.strip().splitlines()) <= 2 and "Traceback" not in err  # the line and its hint
    assert finish(first)[0] == 0

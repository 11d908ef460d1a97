"""`crmbridge enforce` and `crmbridge log` as a scheduled job runs them: a real process, JSON out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crmbridge.cache.lock import WriterLock
from crmbridge.errors import LockLost
from crmbridge.sandbox import SandboxPortal

pytestmark = pytest.mark.integration

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"


def cli(tmp_path: Path, portal: SandboxPortal, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CRMBRIDGE_")}
    environment.update({
        "CRMBRIDGE_CACHE_PATH": str(tmp_path / "cache.db"), "CRMBRIDGE_MAPPINGS_DIR": str(MAPPINGS),
        "CRMBRIDGE_BITRIX24_WEBHOOK_URL": portal.webhook_url, "CRMBRIDGE_BITRIX24_RATE": "1000",
        "CRMBRIDGE_BITRIX24_BURST": "1000",
    })
    return subprocess.run([sys.executable, "-m", "crmbridge", *args], cwd=tmp_path, env=environment,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def portal() -> SandboxPortal:
    sandbox = SandboxPortal(deals=120, seed=5, limits=False)
    sandbox.start(port=0)
    yield sandbox
    sandbox.stop()


def test_enforce_dry_run_then_enforce_then_log(tmp_path: Path, portal: SandboxPortal) -> None:
    assert cli(tmp_path, portal, "sync", "--json").returncode == 0
    dry = cli(tmp_path, portal, "enforce", "--dry-run", "--json", "--mode", "R1=enforce")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] is True and plan["to_write"] > 0 and plan["execution"] is None
    assert portal.stats.calls.get("crm.deal.update", 0) == 0

    real = json.loads(cli(tmp_path, portal, "enforce", "--json", "--mode", "R1=enforce").stdout)
    execution = real["execution"]
    assert execution["done"] + execution["queued"] == plan["to_write"] and execution["failed"] == 0
    assert execution["queued"] == plan["by_kind"]["notify"]  # notices wait for their digest
    assert real["messages"]["composed"] == plan["messages"]["composed"]
    assert [a["idempotency_key"] for a in real["actions"]] == [a["idempotency_key"] for a in plan["actions"]]

    deal = real["actions"][0]["deal"]
    log = cli(tmp_path, portal, "log", "--json", "--deal", deal, "--since", "1h")
    assert log.returncode == 0, log.stderr
    entries = json.loads(log.stdout)
    assert entries and all(str(entry["deal"]) == deal and entry["status"] in ("done", "queued") for entry in entries)
    assert {"when", "rule", "kind", "payload", "result", "crm_ids", "error"} <= set(entries[0])

    human = cli(tmp_path, portal, "log", "--rule", entries[0]["rule"].split(",")[0])
    assert human.returncode == 0 and "Audit log" in human.stdout

    future = cli(tmp_path, portal, "log", "--json", "--since", "2999-01-01")
    assert json.loads(future.stdout) == []
    bad = cli(tmp_path, portal, "log", "--since", "yesterday-ish")
    assert bad.returncode == 2 and "--since" in bad.stderr and "Traceback" not in bad.stderr


def test_a_second_enforce_is_told_who_holds_the_lock_and_break_lock_takes_it(tmp_path: Path, portal: SandboxPortal) -> None:
    assert cli(tmp_path, portal, "sync", "--json").returncode == 0
    holder = WriterLock(tmp_path / "cache.db", "enforce", "scheduled")  # a run still writing, in another process
    holder.acquire()
    refused = cli(tmp_path, portal, "enforce", "--json")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"another enforce run is writing to this cache: run scheduled (pid {os.getpid()}" in refused.stderr
    assert "--break-lock" in refused.stderr
    taken = cli(tmp_path, portal, "enforce", "--json", "--break-lock")
    assert taken.returncode == 0, taken.stderr
    assert json.loads(taken.stdout)["execution"]["failed"] == 0
    with pytest.raises(LockLost, match="lost its lock"):
        holder.heartbeat()  # the old holder learns at its next batch that it must stop writing
    holder.release()

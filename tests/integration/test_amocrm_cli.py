"""The CLI on an amoCRM account (CRMBRIDGE_CRM=amocrm): sync, check --live, discover, audit, and kill -9 resume."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from crmbridge.cache.store import open_cache
from crmbridge.sandbox.amocrm import catalog as amo
from tests.integration.amocrm_kit import assert_cache_equals_account, make_account  # noqa: F401 - fixture

pytestmark = pytest.mark.integration
MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"


def env_for(account: Any, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMBRIDGE_")}
    env.update({"CRMBRIDGE_CRM": "amocrm", "CRMBRIDGE_AMOCRM_BASE_URL": account.base_url,
                "CRMBRIDGE_AMOCRM_LONG_LIVED_TOKEN": amo.LONG_LIVED_TOKEN,
                "CRMBRIDGE_CACHE_PATH": str(tmp_path / "amo.db"), "CRMBRIDGE_MAPPINGS_DIR": str(MAPPINGS), **extra})
    return env


def crmbridge(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crmbridge", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_sync_check_discover_and_audit_on_an_amocrm_account(make_account: Any, tmp_path: Path) -> None:
    account = make_account(deals=300, seed=6)
    env = env_for(account, tmp_path)
    first = crmbridge(env, "sync", "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["mode"] == "full" and json.loads(first.stdout)["deals_read"] == 300
    again = crmbridge(env, "sync", "--json", cwd=tmp_path)
    assert json.loads(again.stdout)["mode"] == "incremental" and json.loads(again.stdout)["http_requests"] <= 3
    live = crmbridge(env, "check", "--live", cwd=tmp_path)
    assert live.returncode == 0, live.stdout + live.stderr
    assert "amocrm.yaml" in live.stdout
    drafts = tmp_path / "drafts"
    drafts.mkdir()
    (drafts / "regulation.yaml").write_text((MAPPINGS / "regulation.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    found = crmbridge({**env, "CRMBRIDGE_MAPPINGS_DIR": str(drafts)}, "discover", cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    draft = (drafts / "amocrm.draft.yaml").read_text(encoding="utf-8")
    assert "crm: amocrm" in draft and "142: won" in draft and "143: lost" in draft
    assert "probability_field: 500120" in draft and "crm_field: 500101" in draft
    audit = crmbridge(env, "audit", "--json", cwd=tmp_path)
    assert audit.returncode == 0, audit.stderr
    report = json.loads(audit.stdout)
    assert report["deals"] == 300
    assert report["judged"] < 30  # the syncs judged the deals they wrote: the audit reads their judgements
    flagged = {str(row["deal"]) for row in report["open"] if row["rule"] != "R10"}
    assert flagged == {str(lead_id) for lead_id in account.state.planted}
    wrong = crmbridge({**env, "CRMBRIDGE_CRM": "bitrix24", "CRMBRIDGE_BITRIX24_WEBHOOK_URL":
                       "http://127.0.0.1:9/rest/1/x/"}, "audit", cwd=tmp_path)
    assert wrong.returncode == 1 and "amoCRM account" in wrong.stderr and "CRMBRIDGE_CRM" in wrong.stderr


def test_a_wrong_token_is_one_line_and_leaves_no_cache(make_account: Any, tmp_path: Path) -> None:
    account = make_account(deals=20, seed=1)
    result = crmbridge(env_for(account, tmp_path, CRMBRIDGE_AMOCRM_LONG_LIVED_TOKEN="wrong"), "sync", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("crmbridge: error:") and "CRMBRIDGE_AMOCRM_LONG_LIVED_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr and "wrong" not in result.stderr
    assert not (tmp_path / "amo.db").exists()
    bad_url = crmbridge(env_for(account, tmp_path, CRMBRIDGE_AMOCRM_BASE_URL="http://evil.example.com"), "sync",
                        cwd=tmp_path)
    assert bad_url.returncode == 2 and "CRMBRIDGE_AMOCRM_BASE_URL" in bad_url.stderr


@pytest.mark.slow
def test_full_sync_killed_midway_resumes_from_its_last_page(make_account: Any, tmp_path: Path) -> None:
    account = make_account(deals=3_000, seed=21, latency_ms=50)
    # no overlap: the lead edited while the sync was down must come from the cursor itself (the read's first start)
    env = env_for(account, tmp_path, CRMBRIDGE_SYNC_OVERLAP_MINUTES="0")
    cache_file = tmp_path / "amo.db"
    command = [sys.executable, "-m", "crmbridge", "sync", "--json"]
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    committed = 0
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with sqlite3.connect(cache_file, timeout=1) as conn:
                row = conn.execute("SELECT last_id FROM sync_state WHERE entity = 'deals'").fetchone()
            committed = row[0] if row and row[0] else 0
        except sqlite3.Error:
            committed = 0
        if committed >= 2:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the sync finished before it could be interrupted"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert 2 <= committed < 12
    time.sleep(1.5)  # the account's clock (Date headers) has one-second steps
    account.update_lead(5, {"name": "edited while the sync was down"})  # on a page committed before the kill
    time.sleep(1.5)
    finished = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    summary = json.loads(finished.stdout)
    assert summary["resumed"] is True
    # it went on from the last committed page (read again once), not from the start
    assert summary["deals_read"] <= 3_000 - (committed - 1) * 250
    cache = open_cache(cache_file)
    try:
        incremental = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert json.loads(incremental.stdout)["mode"] == "incremental"
        assert_cache_equals_account(cache, account)
    finally:
        cache.close()


def test_kpis_on_an_amocrm_account(make_account: Any, tmp_path: Path) -> None:
    """Leads land in the same deals table: the KPIs, plans (plans.amocrm.yaml) and report work on amoCRM too."""
    account = make_account(deals=300, seed=6)
    env = env_for(account, tmp_path)
    assert crmbridge(env, "sync", cwd=tmp_path).returncode == 0
    with open_cache(tmp_path / "amo.db") as cache:  # the account's user groups are the departments
        assert {row["id"]: row["name"] for row in cache.query("SELECT id, name FROM departments")} == amo.GROUP_NAMES
    result = crmbridge(env, "kpi", "--period", "2026", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    company = {row["kpi"]: row for row in rows if row["scope"] == "company" and row["direction"] is None}
    assert company["won_deals"]["fact"] > 0 and company["revenue"]["fact"] > 0
    assert company["profit"]["fact"] > 0  # the margin custom field (500131) read from the leads' raw records
    assert company["revenue"]["plan"] == 186_000_000  # plans.amocrm.yaml: its four managers' 2026 plans
    managers = [row["fact"] for row in rows if row["scope"] == "manager" and row["kpi"] == "revenue"
                and row["direction"] is None]
    assert sum(managers) == pytest.approx(company["revenue"]["fact"], abs=0.05)
    departments = {row["department_id"] for row in rows if row["scope"] == "department"}
    assert departments == set(amo.GROUP_NAMES)
    report = crmbridge(env, "report", "--html", str(tmp_path / "amo.html"), "--period", "2026-11", cwd=tmp_path)
    assert report.returncode == 0 and (tmp_path / "amo.html").stat().st_size > 5_000


def test_check_live_names_a_status_the_account_does_not_have_with_its_line(make_account: Any, tmp_path: Path) -> None:
    account = make_account(deals=30, seed=3, rate=100)
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    for path in MAPPINGS.glob("*.yaml"):
        (mappings / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    binding = (mappings / "amocrm.yaml").read_text(encoding="utf-8")
    (mappings / "amocrm.yaml").write_text(binding.replace("60000002: positioning", "60000092: positioning", 1),
                                          encoding="utf-8")
    line = next(n for n, text in enumerate((mappings / "amocrm.yaml").read_text(encoding="utf-8").splitlines(), 1)
                if "60000092" in text)
    env = env_for(account, tmp_path, CRMBRIDGE_MAPPINGS_DIR=str(mappings))
    assert crmbridge(env, "check", cwd=tmp_path).returncode == 0  # the file itself is well-formed
    live = crmbridge(env, "check", "--live", cwd=tmp_path)
    assert live.returncode == 2, live.stdout + live.stderr  # a mapping error, as on Bitrix24
    assert f'amocrm.yaml:{line}:7: CRM stage "60000092" does not exist in pipeline 7000100' in live.stderr
    assert 'did you mean "60000002"' in live.stderr
    assert 'CRM stage "60000002"' in live.stderr and "is not mapped" in live.stderr  # the status left unbound
    assert "Traceback" not in live.stderr

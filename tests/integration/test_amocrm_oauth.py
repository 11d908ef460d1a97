"""amoCRM OAuth over loopback: code exchange, rotation, a 401 refreshes once, single-flight across processes, kills."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from crmbridge.commands.connect_amocrm import run as connect
from crmbridge.config import load_settings
from crmbridge.connectors.amocrm.client import AmoCRMClient
from crmbridge.connectors.amocrm.limiter import RateWindow
from crmbridge.connectors.amocrm.oauth import oauth_auth_from
from crmbridge.connectors.oauth import TokenStore
from crmbridge.errors import CrmRejected
from crmbridge.sandbox.amocrm import catalog as amo
from tests.integration.amocrm_kit import make_account  # noqa: F401 - fixture

pytestmark = pytest.mark.integration
WORKER = Path(__file__).with_name("amocrm_oauth_worker.py")


def oauth_env(account: Any, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMBRIDGE_")}
    env.update({"CRMBRIDGE_CRM": "amocrm", "CRMBRIDGE_AMOCRM_BASE_URL": account.base_url,
                "CRMBRIDGE_AMOCRM_CLIENT_ID": amo.CLIENT_ID, "CRMBRIDGE_AMOCRM_CLIENT_SECRET": amo.CLIENT_SECRET,
                "CRMBRIDGE_AMOCRM_REDIRECT_URI": amo.REDIRECT_URI, "CRMBRIDGE_CACHE_PATH": str(tmp_path / "amo.db")})
    return env


@pytest.fixture
def connected(make_account: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, dict[str, str]]:
    account = make_account(deals=30, seed=2, rate=100)
    env = oauth_env(account, tmp_path)
    for key, value in env.items():
        if key.startswith("CRMBRIDGE_"):
            monkeypatch.setenv(key, value)
    report = connect(load_settings(), code=account.issue_code(), as_json=True)
    assert report["name"] == "crmbridge sandbox" and report["account"] == f"127.0.0.1:{account.port}"
    return account, env


def worker(env: dict[str, str], account: Any, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(WORKER), account.base_url, *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def answer(process: subprocess.Popen[str]) -> dict[str, Any] | None:
    out, _ = process.communicate(timeout=120)
    return json.loads(out) if out.strip() else None


def stored(env: dict[str, str]) -> Any:
    return TokenStore(env["CRMBRIDGE_CACHE_PATH"], "amocrm").current()


def test_a_used_code_is_refused_and_a_401_refreshes_once(connected: Any) -> None:
    account, env = connected
    with pytest.raises(CrmRejected) as refused:
        connect(load_settings(), code="not-a-code")
    assert "code" in str(refused.value) and amo.CLIENT_SECRET not in str(refused.value)
    before = stored(env)
    account.expire_access_tokens()  # amoCRM refuses the token, whatever our clock thinks of its expiry
    client = AmoCRMClient(account.base_url, auth=oauth_auth_from(load_settings(), account.base_url),
                          limiter=RateWindow(100))
    assert client.get("/api/v4/account")["name"] == "crmbridge sandbox"
    after = stored(env)
    assert after.generation == before.generation + 1 and after.refresh_token != before.refresh_token
    assert account.stats.token_refreshes == 1


def test_a_token_expired_by_our_clock_is_refreshed_before_the_request(make_account: Any, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    account = make_account(deals=10, seed=2, rate=100, access_ttl=30)  # shorter than the client's margin
    for key, value in oauth_env(account, tmp_path).items():
        monkeypatch.setenv(key, value)
    connect(load_settings(), code=account.issue_code())
    refreshed = account.stats.token_refreshes  # connect's own check already met a pair this short-lived
    client = AmoCRMClient(account.base_url, auth=oauth_auth_from(load_settings(), account.base_url),
                          limiter=RateWindow(100))
    client.get("/api/v4/account")
    assert account.stats.token_refreshes == refreshed + 1 and client.requests_made == 1  # no 401 on the way


def test_four_processes_refreshing_at_once_make_one_call_and_lose_no_token(connected: Any) -> None:
    account, env = connected
    account.expire_access_tokens()
    processes = [worker(env, account) for _ in range(4)]
    results = [answer(process) for process in processes]
    assert results == [{"name": "crmbridge sandbox"}] * 4
    assert account.stats.token_refreshes == 1  # single-flight: the other three took the stored new pair
    account.expire_access_tokens()
    assert answer(worker(env, account)) == {"name": "crmbridge sandbox"}  # the stored refresh token still works
    assert account.stats.token_refreshes == 2 and stored(env).status == "active"


def test_killed_before_the_server_was_asked_the_next_process_refreshes(connected: Any) -> None:
    account, env = connected
    account.expire_access_tokens()
    assert answer(worker(env, account, "--kill-at", "recorded")) is None  # killed after recording the refresh
    assert stored(env).refresh_started_at is not None
    assert answer(worker(env, account)) == {"name": "crmbridge sandbox"}
    assert account.stats.token_refreshes == 1 and stored(env).refresh_started_at is None


def test_killed_after_the_new_pair_was_written_the_next_process_uses_it(connected: Any) -> None:
    account, env = connected
    account.expire_access_tokens()
    before = stored(env).generation
    assert answer(worker(env, account, "--kill-at", "written")) is None
    assert stored(env).generation == before + 1
    assert answer(worker(env, account)) == {"name": "crmbridge sandbox"}
    assert account.stats.token_refreshes == 1


def test_killed_between_the_exchange_and_the_write_is_told_in_one_line_and_reconnect_recovers(
        connected: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    account, env = connected
    account.expire_access_tokens()
    before = stored(env)
    assert answer(worker(env, account, "--kill-at", "exchanged")) is None
    # amoCRM rotated the pair, the answer died with the process: the cache still holds the pair it had, whole
    kept = stored(env)
    assert (kept.generation, kept.refresh_token, kept.access_token) == (
        before.generation, before.refresh_token, before.access_token)
    assert kept.refresh_started_at is not None  # the next refresh knows this one's outcome is unknown
    told = answer(worker(env, account))
    # the stored refresh token was used up by the lost exchange: amoCRM refuses it ("Token has been revoked")
    assert told is not None and told["error"] == "ReauthorizationRequired"
    assert "crmbridge connect --crm amocrm" in told["message"] and "cut off" in told["message"]
    assert stored(env).status == "reauthorize"
    again = answer(worker(env, account))  # every later process says the same without asking the server again
    assert again is not None and again["error"] == "ReauthorizationRequired"
    assert account.stats.token_refreshes == 1
    connect(load_settings(), code=account.issue_code())  # an admin authorizes again: service is back
    assert answer(worker(env, account)) == {"name": "crmbridge sandbox"}
    assert stored(env).status == "active"


def test_sync_runs_on_oauth_tokens(connected: Any, tmp_path: Path) -> None:
    account, env = connected
    account.expire_access_tokens()
    result = subprocess.run([sys.executable, "-m", "crmbridge", "sync", "--json"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["deals_read"] == 30
    assert account.stats.token_refreshes == 1


def test_crmbridge_connect_crm_amocrm_code(make_account: Any, tmp_path: Path) -> None:
    account = make_account(deals=10, seed=2, rate=100)
    env = oauth_env(account, tmp_path)
    redirect = f"{amo.REDIRECT_URI}?code={account.issue_code()}&state=x&referer=127.0.0.1:{account.port}"
    result = subprocess.run([sys.executable, "-m", "crmbridge", "connect", "--crm", "amocrm", "--code", redirect,
                             "--json"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["name"] == "crmbridge sandbox"
    reused = subprocess.run([sys.executable, "-m", "crmbridge", "connect", "--crm", "amocrm", "--code", redirect],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert reused.returncode == 1 and reused.stderr.startswith("crmbridge: error:") and "Traceback" not in reused.stderr
    assert "def" not in reused.stderr.split("(")[0]  # the code itself is not echoed

"""The OAuth token store: single-flight refresh across threads and processes, atomic writes, crashes at every step."""

from __future__ import annotations

import json
import logging
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from crmbridge.connectors.oauth import CHECKPOINTS, OAuthSession, TokenGrant, TokenStore
from crmbridge.errors import ConfigError, CrmUnreachable, ReauthorizationRequired
from tests.unit.oauth_worker import FileAuthServer

WORKER = Path(__file__).with_name("oauth_worker.py")


@pytest.fixture
def cache_path(tmp_path: Path) -> Path:
    return tmp_path / "cache.db"


def connected(cache_path: Path, *, access: str = "access-0", refresh: str = "refresh-0") -> TokenStore:
    store = TokenStore(cache_path, "bitrix24")
    store.save("member-1", TokenGrant(access, refresh, time.time() + 3600, {"client_endpoint": "https://x/rest/"}))
    return store


def run_worker(cache_path: Path, server: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(WORKER), str(cache_path), str(server), *args],
        capture_output=True, text=True, timeout=timeout,
    )


def test_save_then_read_keeps_both_tokens_and_hides_them(cache_path: Path) -> None:
    store = connected(cache_path, access="A-secret", refresh="R-secret")
    pair = TokenStore(cache_path, "bitrix24").require()
    assert (pair.account, pair.access_token, pair.refresh_token, pair.generation) == ("member-1", "A-secret", "R-secret", 1)
    assert pair.details == {"client_endpoint": "https://x/rest/"}
    assert "secret" not in repr(pair) and "secret" not in repr(store)
    assert stat.S_IMODE(cache_path.stat().st_mode) == 0o600  # the cache now holds secrets


def test_not_connected_is_one_clear_config_error(cache_path: Path) -> None:
    store = TokenStore(cache_path, "amocrm")
    assert store.current() is None
    with pytest.raises(ConfigError, match="crmbridge connect --crm amocrm"):
        store.require()
    with pytest.raises(ConfigError):
        TokenStore(":memory:", "bitrix24")


def test_refresh_rotates_both_tokens_once(cache_path: Path) -> None:
    store = connected(cache_path)
    calls: list[str] = []

    def exchange(refresh_token: str) -> TokenGrant:
        calls.append(refresh_token)
        return TokenGrant("access-1", "refresh-1", None, {"scope": "crm"})

    pair = store.refresh(1, exchange)
    assert calls == ["refresh-0"]
    assert (pair.access_token, pair.refresh_token, pair.generation) == ("access-1", "refresh-1", 2)
    assert pair.details == {"client_endpoint": "https://x/rest/", "scope": "crm"}  # details merge, never vanish
    assert pair.refresh_started_at is None
    # the caller that still holds generation 1 gets generation 2 without a call
    assert store.refresh(1, exchange).generation == 2 and len(calls) == 1


def test_a_grant_without_a_refresh_token_keeps_the_stored_one(cache_path: Path) -> None:
    store = connected(cache_path)
    pair = store.refresh(1, lambda token: TokenGrant("access-1", None))
    assert (pair.access_token, pair.refresh_token) == ("access-1", "refresh-0")


def test_threads_refreshing_at_once_make_one_call(cache_path: Path) -> None:
    store = connected(cache_path)
    calls: list[str] = []
    started = threading.Barrier(8)

    def exchange(refresh_token: str) -> TokenGrant:
        calls.append(refresh_token)
        time.sleep(0.2)
        return TokenGrant("access-1", "refresh-1")

    results: list[int] = []

    def worker() -> None:
        session = OAuthSession(TokenStore(cache_path, "bitrix24"), exchange)
        failed = session.pair()
        started.wait()
        results.append(session.renew(failed).generation)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == ["refresh-0"]
    assert results == [2] * 8


def test_two_processes_refreshing_at_once_make_one_call(cache_path: Path, tmp_path: Path) -> None:
    connected(cache_path)
    server = tmp_path / "server.json"
    FileAuthServer.create(server, "refresh-0")
    start_at = f"{time.time() + 1.5:.3f}"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(cache_path), str(server), "--generation", "1",
             "--exchange-delay", "0.5", "--start-at", start_at],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    outputs = [json.loads(proc.communicate(timeout=60)[0]) for proc in procs]
    assert FileAuthServer(server).state()["calls"] == 1
    assert outputs[0] == outputs[1] == {"generation": 2, "access": "access-1", "refresh": "refresh-1"}


def test_a_refused_refresh_token_marks_the_account_and_stops_calling(cache_path: Path) -> None:
    store = connected(cache_path)
    calls = 0

    def refuse(refresh_token: str) -> TokenGrant:
        nonlocal calls
        calls += 1
        raise ReauthorizationRequired("x", method="oauth/token", code="invalid_grant", description="Token has been revoked")

    with pytest.raises(ReauthorizationRequired, match="crmbridge connect"):
        store.refresh(1, refuse)
    pair = store.require()
    assert (pair.status, pair.error, pair.access_token) == ("reauthorize", "Token has been revoked", "access-0")
    with pytest.raises(ReauthorizationRequired, match="Token has been revoked"):
        store.refresh(1, refuse)
    assert calls == 1  # every later process learns it from the cache, not from the server
    # connecting again clears it
    store.save("member-1", TokenGrant("access-9", "refresh-9"))
    assert store.require().status == "active"


def test_an_unanswered_refresh_stays_recorded_and_is_retried_with_the_same_token(
    cache_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = connected(cache_path)
    tokens: list[str] = []

    def unreachable(refresh_token: str) -> TokenGrant:
        tokens.append(refresh_token)
        raise CrmUnreachable("oauth/token: no answer", method="oauth/token")

    with pytest.raises(CrmUnreachable):
        store.refresh(1, unreachable)
    pair = store.require()
    assert pair.refresh_started_at is not None and pair.refresh_token == "refresh-0"
    with caplog.at_level(logging.WARNING, logger="crmbridge.oauth"):
        fresh = store.refresh(1, lambda token: (tokens.append(token), TokenGrant("access-1", "refresh-1"))[1])
    assert tokens == ["refresh-0", "refresh-0"]
    assert fresh.generation == 2 and fresh.refresh_started_at is None
    assert "did not finish" in caplog.text
    assert "refresh-0" not in caplog.text and "access-1" not in caplog.text


@pytest.mark.parametrize("point", CHECKPOINTS)
def test_kill_at_every_step_of_a_refresh(point: str, cache_path: Path, tmp_path: Path) -> None:
    """kill -9 at each step, then a second process refreshes: it never loses the newest token it could have."""
    connected(cache_path)
    server = tmp_path / "server.json"
    FileAuthServer.create(server, "refresh-0", strict=True)
    killed = run_worker(cache_path, server, "--kill-at", point)
    assert killed.returncode == -9, killed.stderr
    after = TokenStore(cache_path, "bitrix24").require()
    # what the cache holds is always a pair crmbridge received in full, never half of one
    assert (after.access_token, after.refresh_token) in {("access-0", "refresh-0"), ("access-1", "refresh-1")}
    second = json.loads(run_worker(cache_path, server, "--generation", "1").stdout)
    calls = FileAuthServer(server).state()["calls"]
    if point in ("locked", "recorded"):
        # the refresh token was never sent: the next process uses it, one call in all
        assert second == {"generation": 2, "access": "access-1", "refresh": "refresh-1"} and calls == 1
    elif point == "written":
        # the pair was committed: the next process uses it without a call
        assert second == {"generation": 2, "access": "access-1", "refresh": "refresh-1"} and calls == 1
    else:
        # the server rotated the token and its answer died with the process: a single-use server
        # refuses the stored token; the store says exactly that and stops asking
        assert second["error"] == "ReauthorizationRequired", second
        assert "cut off after the server had rotated" in second["message"]
        assert TokenStore(cache_path, "bitrix24").require().status == "reauthorize"
        assert calls == 2


def test_kill_after_the_exchange_recovers_when_the_server_still_honours_the_token(cache_path: Path, tmp_path: Path) -> None:
    connected(cache_path)
    server = tmp_path / "server.json"
    FileAuthServer.create(server, "refresh-0", strict=False)
    assert run_worker(cache_path, server, "--kill-at", "exchanged").returncode == -9
    second = json.loads(run_worker(cache_path, server, "--generation", "1").stdout)
    assert second == {"generation": 2, "access": "access-2", "refresh": "refresh-2"}
    assert TokenStore(cache_path, "bitrix24").require().refresh_started_at is None

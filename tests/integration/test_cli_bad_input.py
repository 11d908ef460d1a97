"""Bad input gives one clear line naming the setting or the fix, a non-zero exit, and nothing half-written."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from crmbridge.sandbox import SandboxPortal

pytestmark = pytest.mark.integration


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CRMBRIDGE_")}
    environment.update({"CRMBRIDGE_CACHE_PATH": str(tmp_path / "cache.db"), "CRMBRIDGE_BITRIX24_MAX_ATTEMPTS": "2"})
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "crmbridge", *args],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def portal() -> SandboxPortal:
    sandbox = SandboxPortal(deals=50, seed=3)
    sandbox.start(port=0)
    yield sandbox
    sandbox.stop()


def test_missing_webhook_url_names_the_setting(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "sync")
    assert result.returncode == 2
    assert "CRMBRIDGE_BITRIX24_WEBHOOK_URL" in one_line(result)
    assert not (tmp_path / "cache.db").exists()


@pytest.mark.parametrize(
    "url",
    [
        "http://example.bitrix24.ru/rest/1/zz9secret/",  # plain http to a real host
        "https://example.bitrix24.ru/",  # no /rest/<user>/<code>/
        "example.bitrix24.ru/rest/1/zz9secret/",  # no scheme
        "https://example.bitrix24.ru/rest/x/zz9secret/",  # user id must be a number
    ],
)
def test_malformed_or_plain_http_url_is_refused_before_any_request(tmp_path: Path, url: str) -> None:
    result = run_cli(tmp_path, "sync", CRMBRIDGE_BITRIX24_WEBHOOK_URL=url)
    assert result.returncode == 2
    line = one_line(result)
    assert "CRMBRIDGE_BITRIX24_WEBHOOK_URL" in line
    assert "zz9secret" not in line  # the webhook code is a secret
    assert not (tmp_path / "cache.db").exists()


def test_wrong_webhook_code_reports_no_auth_found(tmp_path: Path, portal: SandboxPortal) -> None:
    wrong = portal.webhook_url.replace("/sandboxcode/", "/wrongcode99/")
    result = run_cli(tmp_path, "sync", CRMBRIDGE_BITRIX24_WEBHOOK_URL=wrong)
    assert result.returncode == 1
    line = one_line(result)
    assert "NO_AUTH_FOUND" in line
    assert "wrongcode99" not in line
    assert not (tmp_path / "cache.db").exists()


def test_missing_scope_is_named(tmp_path: Path) -> None:
    sandbox = SandboxPortal(deals=10, seed=3, scopes=("crm", "user"))
    sandbox.start(port=0)
    try:
        result = run_cli(tmp_path, "sync", CRMBRIDGE_BITRIX24_WEBHOOK_URL=sandbox.webhook_url)
    finally:
        sandbox.stop()
    assert result.returncode == 1
    line = one_line(result)
    assert "task" in line and "scope" in line
    assert not (tmp_path / "cache.db").exists()


def test_unreachable_portal_is_one_line_after_bounded_retries(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_cli(tmp_path, "sync", CRMBRIDGE_BITRIX24_WEBHOOK_URL=f"http://127.0.0.1:{port}/rest/1/abc/")
    assert result.returncode == 1
    assert "reach" in one_line(result).lower()
    assert not (tmp_path / "cache.db").exists()


def test_cache_from_a_newer_version_is_refused_untouched(tmp_path: Path, portal: SandboxPortal) -> None:
    cache_file = tmp_path / "cache.db"
    with sqlite3.connect(cache_file) as conn:
        conn.execute("PRAGMA user_version = 999")
    before = cache_file.read_bytes()
    result = run_cli(tmp_path, "sync", CRMBRIDGE_BITRIX24_WEBHOOK_URL=portal.webhook_url)
    assert result.returncode == 1
    assert "newer crmbridge" in one_line(result)
    assert cache_file.read_bytes() == before


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--debug", "sync", CRMBRIDGE_BITRIX24_WEBHOOK_URL="http://example.com/rest/1/abc/")
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_sync_json_summary(tmp_path: Path, portal: SandboxPortal) -> None:
    import json

    result = run_cli(tmp_path, "sync", "--json", CRMBRIDGE_BITRIX24_WEBHOOK_URL=portal.webhook_url)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["mode"] == "full"
    assert summary["deals_read"] == 50
    assert summary["http_requests"] > 0
    assert portal.webhook_url.split("/")[-2] not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["status"], "No such command 'status'"),
        (["log", "--deal", "abc"], "Invalid value for '--deal'"),
        (["sync", "--bogus"], "No such option: --bogus"),
    ],
)
def test_usage_errors_are_a_usage_message_not_a_traceback(tmp_path: Path, args: list[str], expected: str) -> None:
    result = run_cli(tmp_path, *args)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unusable_cache_path_is_one_line(tmp_path: Path, portal: SandboxPortal) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a folder should be")
    result = run_cli(tmp_path, "sync", CRMBRIDGE_BITRIX24_WEBHOOK_URL=portal.webhook_url,
                     CRMBRIDGE_CACHE_PATH=str(blocker / "cache.db"))
    assert result.returncode == 1
    assert "CRMBRIDGE_CACHE_PATH" in one_line(result)


def test_debug_logs_never_show_the_webhook_code(tmp_path: Path, portal: SandboxPortal) -> None:
    result = run_cli(tmp_path, "--debug", "sync", CRMBRIDGE_BITRIX24_WEBHOOK_URL=portal.webhook_url)
    assert result.returncode == 0, result.stderr
    assert "/rest/1/***/" in result.stderr  # urllib3 logged its request lines, redacted
    assert portal.webhook_code not in result.stderr + result.stdout


def test_check_live_against_the_api_leaves_no_cache_behind(tmp_path: Path, portal: SandboxPortal) -> None:
    mappings = Path(__file__).resolve().parents[2] / "mappings"
    result = run_cli(tmp_path, "check", "--live", CRMBRIDGE_BITRIX24_WEBHOOK_URL=portal.webhook_url,
                     CRMBRIDGE_MAPPINGS_DIR=str(mappings))
    assert result.returncode == 0, result.stderr
    assert "checked against the portal's API" in " ".join(result.stdout.split())
    assert not (tmp_path / "cache.db").exists()

"""Nonsense on the command line or in the settings gets one clear line and a non-zero exit, never a traceback,
and is refused instead of accepted."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import CliResult

pytestmark = [pytest.mark.hostile("cli")]


@pytest.fixture
def synced(make_world: Callable[..., Any]) -> Any:
    world = make_world(deals=20)
    assert world.sync().code == 0
    return world


@pytest.mark.integration
@pytest.mark.parametrize("args, names", [
    (("audit", "--deal", "99999999999999999999999"), "--deal"),
    (("audit", "--deal", "-5"), "--deal"),
    (("log", "--deal", "99999999999999999999999"), "--deal"),
    (("enforce", "--dry-run", "--deal", "99999999999999999999999"), "--deal"),
    (("log", "--since", "99999999999d"), "--since"),
    (("log", "--since", "0001-01-01T00:00+05:00"), "--since"),
    (("log", "--since", "9999-12-31T23:59-05:00"), "--since"),
    (("log", "--since", "-3d"), "--since"),
    (("enforce", "--dry-run", "--mode", "R١=enforce"), "--mode"),
    (("enforce", "--dry-run", "--mode", "R1=ENFORCE\x00"), "--mode"),
])
def test_a_nonsense_option_is_one_clear_line(synced: Any, args: tuple[str, ...], names: str) -> None:
    result = synced.run(*args)
    assert result.code == 2, result.err
    assert names in result.one_line()


@pytest.mark.parametrize("args, names", [
    (("sandbox", "--port", "99999"), "--port"),
    (("sandbox", "--port", "-1"), "--port"),
    (("sandbox", "--faults", "2.0"), "--faults"),
    (("sandbox", "--faults", "-1"), "--faults"),
    (("sandbox", "--faults", "nan"), "--faults"),
    (("sandbox", "--deals", "-5"), "--deals"),
    (("sandbox", "--latency-ms", "-100"), "--latency-ms"),
    (("demo", "--deals", "-1"), "--deals"),
])
def test_a_nonsense_sandbox_or_demo_option_is_refused(tmp_path: Path, args: tuple[str, ...], names: str) -> None:
    # in a process of its own: an accepted option starts a server that runs until it is stopped
    try:
        done = subprocess.run([sys.executable, "-m", "crmbridge", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=30, env={**os.environ, "CRMBRIDGE_CACHE_PATH": str(tmp_path / "c.db")})
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(args)} was accepted: it started and kept running")
    result = CliResult(done.returncode, done.stdout, done.stderr, "Traceback" in done.stderr)
    assert result.code == 2, result.err
    assert names in result.one_line()


@pytest.mark.parametrize("setting, value", [
    ("CRMBRIDGE_SYNC_OVERLAP_MINUTES", "99999999999999"),
    ("CRMBRIDGE_SYNC_OVERLAP_MINUTES", "-1"),
    ("CRMBRIDGE_BITRIX24_RATE", "1e-300"),
    ("CRMBRIDGE_BITRIX24_RATE", "inf"),
    ("CRMBRIDGE_BITRIX24_RATE", "nan"),
    ("CRMBRIDGE_BITRIX24_BURST", "99999999999"),
    ("CRMBRIDGE_BITRIX24_OPERATING_LIMIT", "1e300"),
    ("CRMBRIDGE_ENFORCE_MAX_REVERTS_PER_DAY", "99999999999999999999999"),
    ("CRMBRIDGE_BITRIX24_MAX_ATTEMPTS", "0"),
])
def test_a_nonsense_setting_is_one_clear_line(cli: Any, setting: str, value: str) -> None:
    result = cli("sync", env={setting: value, "CRMBRIDGE_BITRIX24_WEBHOOK_URL": "http://127.0.0.1:9/rest/1/x/"})
    assert result.code == 2, result.err
    assert setting in result.one_line()


def test_a_non_utf8_env_file_is_one_clear_line(cli: Any, tmp_path: Path) -> None:
    (tmp_path / ".env").write_bytes(b"CRMBRIDGE_CACHE_PATH=caf\xe9.db\n")
    result = cli("log")
    assert result.code == 2, result.err
    assert ".env" in result.one_line()

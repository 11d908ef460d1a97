"""No answer or record is too big to handle: a huge answer fails its read cleanly (bounded memory, one line),
a huge record is skipped with a warning naming it, and neither reaches the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from crmbridge.sandbox.proxy import huge_answer

from .conftest import World

pytestmark = [pytest.mark.integration, pytest.mark.hostile("sizes")]

# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child would report the test process's own size
PEAK = """
import re, sys
from crmbridge.cli import main
sys.argv = ["crmbridge", *sys.argv[2:]]
try:
    main()
finally:
    status = open("/proc/self/status").read()
    with open(REPORT, "w") as report:
        report.write(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
"""


def run_measured(world: World, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """`crmbridge <args>` in its own process; returns the result and its peak RSS in MB."""
    report = world.folder / "peak.txt"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CRMBRIDGE_")}
    environment.update({**world.env, "CRMBRIDGE_BITRIX24_MAX_ATTEMPTS": "1", **env})
    done = subprocess.run([sys.executable, "-c", PEAK.replace("REPORT", repr(str(report))), "x", *args],
                          cwd=world.folder, env=environment, capture_output=True, text=True, timeout=300)
    return done, int(report.read_text()) // 1024


@pytest.mark.slow
def test_a_300_mb_answer_fails_the_read_in_bounded_memory(make_world: Callable[..., World]) -> None:
    world = make_world(deals=20)
    world.proxy.add(huge_answer("crm.deal.list", 300))
    done, peak = run_measured(world, "sync")
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "MB" in lines[0], lines[0]
    assert peak < 250, f"peak RSS {peak} MB"
    assert world.proxy.streamed_bytes < 120 * 1024 * 1024  # the client stopped reading at its cap


def test_the_answer_cap_is_a_setting(make_world: Callable[..., World]) -> None:
    world = make_world(deals=20)
    world.proxy.add(huge_answer("crm.deal.list", 3))
    result = world.run("sync", CRMBRIDGE_BITRIX24_MAX_ANSWER_MB="1")
    assert result.code == 1
    line = result.one_line()
    assert "CRMBRIDGE_BITRIX24_MAX_ANSWER_MB" in line


def test_a_huge_field_is_skipped_and_named(make_world: Callable[..., World]) -> None:
    world = make_world(deals=30)
    world.portal.update_deal(30, {"TITLE": "t" * (5 * 1024 * 1024)})
    result = world.sync()
    assert result.code == 0, result.err
    said = " ".join((result.out + result.err).split())
    assert "skipped" in said and "deal 30" in said, said
    assert world.count("deals") == 29
    biggest = world.query("SELECT MAX(LENGTH(raw)) AS n FROM deals")[0]["n"]
    assert biggest < 1024 * 1024
    rejected = world.query("SELECT raw FROM rejected_records")
    assert rejected and len(rejected[0]["raw"]) < 1024 * 1024
    assert json.loads(rejected[0]["raw"])  # kept as JSON a person can read

"""`crmbridge demo`: its live part starts the daemon, a deal skips a stage, the correction is printed with its time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_shows_the_live_correction(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CRMBRIDGE_")}
    env["CRMBRIDGE_MAPPINGS_DIR"] = str(ROOT / "mappings")
    done = subprocess.run([sys.executable, "-m", "crmbridge", "demo", "--deals", "300", "--cache",
                           str(tmp_path / "demo.db")], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stdout.split())
    assert re.search(r"crmbridge moved it back to «Презентация» \d+\.\d\d s after the move", out), out[-2000:]
    assert "revert_stage done" in out
    assert "exited with 0" in out

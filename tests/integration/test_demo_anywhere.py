"""`crmbridge demo` from any folder: the mapping files it needs ship inside the package (issue 7, item 14)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("crm", ["bitrix24", "amocrm"])
def test_demo_runs_outside_the_project_folder(tmp_path: Path, crm: str) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CRMBRIDGE_")}
    env["CRMBRIDGE_BITRIX24_RATE"], env["CRMBRIDGE_BITRIX24_BURST"] = "1000", "1000"
    done = subprocess.run([sys.executable, "-m", "crmbridge", "demo", "--crm", crm, "--deals", "80", "--no-live",
                           "--cache", str(tmp_path / "demo.db")], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)  # an empty folder: no mappings/ here
    assert done.returncode == 0, done.stderr + done.stdout[-2000:]
    out = " ".join(done.stdout.split())
    assert "Second run: 0 writes" in out
    assert not (tmp_path / "mappings").exists()  # nothing was written where the admin keeps their files

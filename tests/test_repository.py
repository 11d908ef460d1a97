"""The repository itself: no merge-conflict markers and no caches or secrets in any tracked file."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(rb"^(<{7} |={7}$|>{7} )", re.MULTILINE)


def tracked_files() -> list[Path]:
    try:
        listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / name for name in listing.decode().split("\0") if name]


def test_no_merge_conflict_markers() -> None:
    # several people land on main in parallel: a marker committed by mistake breaks docs or code silently
    offenders = []
    for path in tracked_files():
        if path.is_file() and MARKER.search(path.read_bytes()):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_no_cache_or_env_file_is_tracked() -> None:
    names = [str(path.relative_to(ROOT)) for path in tracked_files()]
    assert [name for name in names if re.search(r"(^|/)\.env$|\.db$|\.sqlite3?$", name)] == []

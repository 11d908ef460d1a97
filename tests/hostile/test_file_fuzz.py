"""Damaged files never crash a command that reads them: each command gets each file it reads empty, random,
truncated, not UTF-8, a folder, or a symlink loop, and answers with one clear line (or positioned problems)."""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crmbridge.sandbox import SandboxPortal

from .conftest import MAPPINGS, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.hostile("file-fuzz")]

POSITIONED = re.compile(r"^[^\n]+:\d+:\d+: ")


def damages() -> dict[str, Callable[[Path], None]]:
    def write(content: bytes) -> Callable[[Path], None]:
        def damage(path: Path) -> None:
            path.unlink(missing_ok=True)
            path.write_bytes(content)
        return damage

    def truncated(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    def folder(path: Path) -> None:
        path.unlink(missing_ok=True)
        path.mkdir()
        (path / "inside").write_text("x")

    def loop(path: Path) -> None:
        path.unlink(missing_ok=True)
        os.symlink(path.name + ".other", path)
        os.symlink(path.name, str(path) + ".other")

    def flipped(path: Path) -> None:
        data = bytearray(path.read_bytes())
        rng = random.Random(len(data))
        for _ in range(max(1, len(data) // 50)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))

    return {
        "empty": write(b""),
        "random bytes": write(random.Random(7).randbytes(4096)),
        "not utf-8": write(b"crm: bitrix24\nname: caf\xe9 \xff\xfe\n"),
        "nul bytes": write(b"\x00" * 1024),
        "truncated": truncated,
        "flipped bytes": flipped,
        "a folder": folder,
        "a symlink loop": loop,
    }


READERS: dict[str, list[tuple[str, ...]]] = {
    "regulation.yaml": [("check",), ("check", "--live"), ("audit",), ("audit", "--deal", "3"),
                        ("enforce", "--dry-run", "--no-sync"), ("discover", "--cache-only", "--out", "d.yaml")],
    "bitrix24.yaml": [("check",), ("check", "--impact"), ("audit", "--json"), ("enforce", "--dry-run", "--no-sync")],
    "cache.db": [("sync",), ("audit",), ("log",), ("check", "--impact"), ("check", "--live"),
                 ("enforce", "--dry-run", "--no-sync"), ("discover", "--cache-only", "--out", "d.yaml")],
    ".env": [("sync",), ("log",), ("audit",), ("check",), ("schema", "--out", "s"), ("enforce", "--dry-run")],
    "kpi.yaml": [("check",), ("kpi", "snapshot"), ("payout",), ("report", "--html", "r.html"), ("plans", "check")],
    "plans.yaml": [("plans", "check"), ("plans", "export"), ("kpi", "snapshot"), ("report", "--html", "r.html")],
    "motivation.yaml": [("check",), ("payout",), ("report", "--html", "r.html")],
    "jobs/sync.yaml": [("jobs", "list"), ("jobs", "run", "sync")],
}
CASES = [(name, args, damage) for name, commands in READERS.items() for args in commands for damage in damages()]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A synced cache, the mappings and a .env; each test damages a copy."""
    folder = tmp_path_factory.mktemp("seeded")
    shutil.copytree(MAPPINGS, folder / "mappings")
    shutil.copytree(MAPPINGS.parent / "jobs", folder / "jobs")
    with SandboxPortal(deals=20, seed=3, limits=False) as portal:
        result = run_cli("sync", cwd=folder, env={"CRMBRIDGE_BITRIX24_WEBHOOK_URL": portal.webhook_url})
        assert result.code == 0, result.err
        (folder / ".env").write_text(f"CRMBRIDGE_BITRIX24_WEBHOOK_URL={portal.webhook_url}\n"
                                     f"CRMBRIDGE_MAPPINGS_DIR=mappings\n", encoding="utf-8")
        yield folder, portal.webhook_url


@pytest.mark.parametrize("name, args, damage", CASES, ids=[f"{n}-{' '.join(a)}-{d}" for n, a, d in CASES])
def test_a_damaged_file_is_one_clear_answer(seeded: tuple[Path, str], tmp_path: Path, name: str,
                                            args: tuple[str, ...], damage: str) -> None:
    source, _ = seeded
    folder = tmp_path / "run"
    shutil.copytree(source, folder, symlinks=True)
    target = folder / name if "/" in name or not name.endswith(".yaml") else folder / "mappings" / name
    damages()[damage](target)
    # the settings come from the (maybe damaged) .env in the folder, as for an admin in their project folder
    env = {"CRMBRIDGE_CACHE_PATH": "cache.db", "CRMBRIDGE_MAPPINGS_DIR": "mappings", "CRMBRIDGE_JOBS_DIR": "jobs"}
    if name == ".env":
        env = {"CRMBRIDGE_CACHE_PATH": "cache.db"}
    result = run_cli(*args, cwd=folder, env=env)
    assert not result.crashed, result.err
    assert "Traceback" not in result.err, result.err
    assert result.code in (0, 1, 2), result.err
    if result.code != 0:
        lines = [line for line in result.err.splitlines() if line.strip()]
        assert lines, "failed without saying why"
        assert len(lines) == 1 or all(POSITIONED.match(line) for line in lines), result.err

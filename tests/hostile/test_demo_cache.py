"""`crmbridge demo --cache FILE` deletes only a demo cache it created itself; anything else stays untouched."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.hostile("demo-cache")]


def files(path: Path) -> dict[str, bytes]:
    return {suffix: Path(str(path) + suffix).read_bytes() for suffix in ("", "-wal", "-shm")
            if Path(str(path) + suffix).exists()}


def test_a_real_cache_is_refused_untouched(make_world: Any, tmp_path: Path) -> None:
    world = make_world(deals=30)
    assert world.sync().code == 0
    real = world.cache_path
    before = files(real)
    result = world.run("demo", "--deals", "10", "--cache", str(real))
    assert result.code != 0
    assert str(real.name) in result.one_line()
    assert files(real) == before


@pytest.mark.parametrize("content", [b"my notes, not a cache\n", b"", b"SQLite format 3\x00" + b"\x00" * 200])
def test_any_other_file_is_refused_untouched(cli: Any, tmp_path: Path, content: bytes) -> None:
    victim = tmp_path / "notes.txt"
    victim.write_bytes(content)
    Path(str(victim) + "-wal").write_bytes(b"someone's wal")
    result = cli("demo", "--deals", "10", "--cache", str(victim))
    assert result.code != 0
    result.one_line()
    assert victim.read_bytes() == content
    assert Path(str(victim) + "-wal").read_bytes() == b"someone's wal"


def test_a_plain_sqlite_database_is_refused_untouched(cli: Any, tmp_path: Path) -> None:
    victim = tmp_path / "app.db"
    with sqlite3.connect(victim) as connection:
        connection.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, secret TEXT)")
        connection.execute("INSERT INTO accounts (secret) VALUES ('keep me')")
    connection.close()
    before = victim.read_bytes()
    result = cli("demo", "--deals", "10", "--cache", str(victim))
    assert result.code != 0
    result.one_line()
    assert victim.read_bytes() == before


def test_a_symlink_is_refused_and_its_target_untouched(cli: Any, tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    link = tmp_path / "demo.db"
    os.symlink(target, link)
    result = cli("demo", "--deals", "10", "--cache", str(link))
    assert result.code != 0
    result.one_line()
    assert target.read_text() == "precious"
    assert link.is_symlink()


@pytest.mark.slow
def test_the_demo_replaces_its_own_cache(cli: Any, tmp_path: Path) -> None:
    own = tmp_path / "crmbridge-demo.db"
    first = cli("demo", "--deals", "20", "--cache", str(own))
    assert first.code == 0, first.err
    second = cli("demo", "--deals", "20", "--cache", str(own))
    assert second.code == 0, second.err

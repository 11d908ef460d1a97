"""Each OS error names its real cause: the port, the --out path, the .env file, the cache's folder; `log` never
creates an empty cache; `enforce` honours CRMBRIDGE_SYNC_OVERLAP_MINUTES."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from crmbridge.sandbox.proxy import Exchange

from .conftest import World

pytestmark = [pytest.mark.hostile("os-errors")]

ROOT = os.geteuid() == 0


def read_only_folder(tmp_path: Path) -> Path:
    """A folder nobody may write to (root writes anywhere but /sys)."""
    if ROOT:
        return Path("/sys")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def test_a_busy_sandbox_port_is_named(cli: Any) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("sandbox", "--port", str(port), "--deals", "5")
    line = result.one_line()
    assert result.code != 0
    assert str(port) in line and "CRMBRIDGE_CACHE_PATH" not in line, line


@pytest.mark.parametrize("where", ["a file", "read-only"])
def test_schema_out_names_the_folder(cli: Any, tmp_path: Path, where: str) -> None:
    if where == "a file":
        out = tmp_path / "taken"
        out.write_text("a file where the folder should be")
    else:
        out = read_only_folder(tmp_path) / "schemas"
    result = cli("schema", "--out", str(out))
    line = result.one_line()
    assert result.code != 0
    assert str(out) in line and "CRMBRIDGE_CACHE_PATH" not in line, line


@pytest.mark.integration
@pytest.mark.parametrize("where", ["a folder", "read-only"])
def test_discover_out_names_the_file(make_world: Callable[..., World], tmp_path: Path, where: str) -> None:
    world = make_world(deals=5)
    if where == "a folder":
        out = tmp_path / "draft-folder"
        out.mkdir()
    else:
        out = read_only_folder(tmp_path) / "draft.yaml"
    result = world.run("discover", "--out", str(out), "--force")
    line = result.one_line()
    assert result.code != 0
    assert str(out) in line and "CRMBRIDGE_CACHE_PATH" not in line, line


@pytest.mark.parametrize("kind", ["unreadable", "a folder"])
def test_an_unreadable_env_file_is_named(cli: Any, tmp_path: Path, kind: str) -> None:
    env = tmp_path / ".env"
    if kind == "a folder":
        env.mkdir()
    elif ROOT:
        os.symlink("/proc/self/mem", env)  # opens, then every read fails (EIO): root reads anything else
    else:
        env.write_text("CRMBRIDGE_CACHE_PATH=x.db\n")
        env.chmod(0)
    result = cli("log")
    line = result.one_line()
    assert result.code != 0
    assert ".env" in line and "CRMBRIDGE_CACHE_PATH" not in line, line


@pytest.mark.integration
def test_a_read_only_cache_folder_is_called_so(make_world: Callable[..., World], tmp_path: Path) -> None:
    world = make_world(deals=5)
    path = read_only_folder(tmp_path) / "cache.db"
    result = world.run("sync", CRMBRIDGE_CACHE_PATH=str(path))
    line = result.one_line()
    assert result.code != 0
    assert "not a crmbridge cache" not in line, line
    assert "writ" in line or "permission" in line.lower(), line


def test_log_without_a_cache_creates_none(cli: Any, tmp_path: Path) -> None:
    result = cli("log")
    assert result.code != 0
    assert "sync" in result.one_line()
    assert not (tmp_path / "cache.db").exists()


@pytest.mark.integration
def test_enforce_honours_the_overlap_setting(make_world: Callable[..., World]) -> None:
    world = make_world(deals=10)
    assert world.sync().code == 0
    cursor = world.query("SELECT cursor FROM sync_state WHERE entity = 'deals'")[0]["cursor"]
    asked = len(world.proxy.requests)
    result = world.run("enforce", "--dry-run", CRMBRIDGE_SYNC_OVERLAP_MINUTES="90")
    assert result.code == 0, result.err
    # the deal list of enforce's sync: a direct call, or a command of the poll's one batch
    lists = [params for method, params in world.proxy.requests[asked:] if method == "crm.deal.list"]
    lists += [params for method, batch in world.proxy.requests[asked:] if method == "batch"
              for called, params in Exchange(method, batch, 0, {}, b"").commands().values() if called == "crm.deal.list"]
    since = [params["filter"][">=DATE_MODIFY"] for params in lists
             if isinstance(params.get("filter"), dict) and ">=DATE_MODIFY" in params["filter"]]
    assert since, lists
    assert datetime.fromisoformat(since[0]) == datetime.fromisoformat(cursor) - timedelta(minutes=90)

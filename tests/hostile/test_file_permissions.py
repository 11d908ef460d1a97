"""The cache (clients' phones and e-mails) and discover's drafts are created readable by their owner only."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import World

pytestmark = [pytest.mark.integration, pytest.mark.hostile("permissions")]


@pytest.fixture(params=[0o022, 0o002, 0o077, 0o027])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_cache_and_its_wal_are_private(make_world: Callable[..., World], umask: int) -> None:
    world = make_world(deals=10)
    assert world.sync().code == 0
    for suffix in ("", "-wal", "-shm"):
        path = Path(str(world.cache_path) + suffix)
        if path.exists():
            assert mode(path) & 0o077 == 0, (suffix, oct(mode(path)))


def test_a_draft_is_private(make_world: Callable[..., World], umask: int) -> None:
    world = make_world(deals=10)
    draft = world.folder / "draft.yaml"
    result = world.run("discover", "--out", str(draft))
    assert result.code == 0, result.err
    assert mode(draft) & 0o077 == 0, oct(mode(draft))

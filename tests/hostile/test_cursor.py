"""A malformed portal clock never becomes a permanent cursor: what is stored is validated, and an unusable
cursor falls back safely (a full read) and says so."""

from __future__ import annotations

from typing import Any

import pytest

from crmbridge.cache.store import open_cache
from crmbridge.sandbox.proxy import clock_of

from .conftest import World

pytestmark = [pytest.mark.integration, pytest.mark.hostile("cursor")]


@pytest.mark.parametrize("clock", [
    "20.11.2026 10:00:00",  # the portal's localised format
    "2026-11-20 10:00",  # no offset: which zone?
    "yesterday",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-12:00",
    12345,
    "",
])
def test_a_malformed_portal_clock_never_blocks_later_runs(make_world: Any, clock: Any) -> None:
    world: World = make_world(deals=40)
    world.proxy.add(clock_of(clock))
    first = world.sync()
    assert first.code == 0, first.err
    world.proxy.clear()
    for args in (("sync",), ("sync", "--json"), ("enforce", "--dry-run", "--json")):
        later = world.run(*args)
        assert later.code == 0, later.err
    stored = {row["entity"]: row["cursor"] for row in world.query("SELECT entity, cursor FROM sync_state")}
    from datetime import datetime

    for entity, cursor in stored.items():
        if cursor is not None:
            assert datetime.fromisoformat(cursor).tzinfo is not None, (entity, cursor)


@pytest.mark.parametrize("cursor", ["20.11.2026 10:00:00", "garbage", "0001-01-01T00:00:00+14:00"])
def test_an_unusable_stored_cursor_falls_back_to_a_full_read_and_says_so(make_world: Any, cursor: str) -> None:
    world: World = make_world(deals=40)
    assert world.sync().code == 0
    cache = open_cache(world.cache_path)
    with cache.atomic():
        cache.db.execute("UPDATE sync_state SET cursor = ?", [cursor])
    cache.close()
    world.portal.update_deal(7, {"TITLE": "changed after the bad cursor"})
    later = world.sync()
    assert later.code == 0, later.err
    assert "cursor" in (later.out + later.err).lower()
    assert world.query("SELECT title FROM deals WHERE id = 7")[0]["title"] == "changed after the bad cursor"
    enforce = world.run("enforce", "--dry-run", "--json")
    assert enforce.code == 0, enforce.err

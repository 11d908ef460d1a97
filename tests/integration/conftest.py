"""Integration fixtures: every test talks real HTTP to a sandbox portal on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crmbridge.cache.store import Cache, open_cache
from crmbridge.connectors.bitrix24.client import Bitrix24Client
from crmbridge.connectors.bitrix24.reader import Bitrix24Reader
from crmbridge.sandbox import SandboxPortal
from crmbridge.sync import Syncer


@pytest.fixture
def make_portal() -> Iterator[Callable[..., SandboxPortal]]:
    portals: list[SandboxPortal] = []

    def start(**options: Any) -> SandboxPortal:
        portal = SandboxPortal(**options)
        portal.start(port=0)
        portals.append(portal)
        return portal

    yield start
    for portal in portals:
        portal.stop()


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[Cache]:
    opened = open_cache(tmp_path / "cache.db")
    yield opened
    opened.close()


def make_syncer(portal: SandboxPortal, cache: Cache, **client_options: Any) -> Syncer:
    client = Bitrix24Client(portal.webhook_url, **client_options)
    return Syncer(Bitrix24Reader(client), cache)

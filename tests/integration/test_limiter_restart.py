"""A restart right after a burst never draws 503 from the portal (issue 7, item 8): the bucket is kept beside the
cache, and a client that knows nothing of it assumes it full."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from crmbridge.connectors.bitrix24.client import Bitrix24Client
from crmbridge.connectors.bitrix24.limiter import BucketFile, bucket_file
from crmbridge.sandbox import SandboxPortal

pytestmark = pytest.mark.integration

RATE, BURST = 5.0, 10


def client(portal: SandboxPortal, **options: object) -> Bitrix24Client:
    return Bitrix24Client(portal.webhook_url, rate=RATE, burst=BURST, max_attempts=1, **options)  # type: ignore[arg-type]


def test_a_process_started_right_after_another_ones_burst_waits_instead_of_drawing_503(
        make_portal: Callable[..., SandboxPortal], tmp_path: Path) -> None:
    portal = make_portal(deals=10, rate=RATE, burst=BURST)
    shared = bucket_file(tmp_path / "cache.db")
    assert isinstance(shared, BucketFile) and shared.path == tmp_path / "cache.db.bitrix24-bucket"
    shared.update(lambda level: (0.0, 0.0), RATE)  # the portal has been idle: its bucket is empty
    first = client(portal, bucket=shared)
    for _ in range(8):  # a burst: the portal's bucket now holds about 8, then the process is gone
        first.call("server.time")
    restarted = client(portal, bucket=bucket_file(tmp_path / "cache.db"))
    for _ in range(8):
        restarted.call("server.time")
    assert portal.stats.sent_503 == 0 and restarted.limiter.waited > 0


def test_a_client_that_knows_nothing_of_the_bucket_assumes_it_full(make_portal: Callable[..., SandboxPortal]) -> None:
    portal = make_portal(deals=10, rate=RATE, burst=BURST)
    burst = client(portal, bucket_level=0.0)  # it knows the portal is idle
    for _ in range(8):
        burst.call("server.time")
    unknowing = client(portal)
    for _ in range(8):
        unknowing.call("server.time")
    assert portal.stats.sent_503 == 0

"""Waits for the portal's limits: bounded whatever reset time a 429 names, announced without --debug when long,
and the announcement says the wait that is really taken."""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from crmbridge.connectors.bitrix24.client import Bitrix24Client
from crmbridge.sandbox.proxy import answer_with

from .conftest import World

pytestmark = [pytest.mark.integration, pytest.mark.hostile("waits")]

LIMIT = {"error": "OPERATION_TIME_LIMIT", "error_description": "Method is blocked due to operation time limit."}
ANNOUNCED = re.compile(r"waiting (\d+) s")


class Told(logging.Handler):
    """What crmbridge tells the person running it (the notice logger the CLI prints without --debug)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def caplog() -> Any:  # noqa: F811 - the notices, wherever a CLI run in this process routed them
    told = Told()
    notices = logging.getLogger("crmbridge.notice")
    notices.addHandler(told)
    yield told
    notices.removeHandler(told)


# the clients below start with an empty request bucket (a client starts with a full one, as after a burst): with
# `sleep` recording instead of sleeping, the bucket would ask for short waits of its own on every request, and
# only the waits for the portal's 429 are measured here


def announced(told: Told) -> list[int]:
    return [int(match.group(1)) for record in told.records if (match := ANNOUNCED.search(record.getMessage()))]


@pytest.mark.parametrize("reset_at", [1e12, 1e20, math.inf, -5.0, "soon", None])
def test_a_429_with_any_reset_time_waits_a_bounded_announced_time(make_world: Callable[..., World],
                                                                   caplog: Any,
                                                                   reset_at: Any) -> None:
    world = make_world(deals=5)
    body = dict(LIMIT)
    if reset_at is not None:
        body["time"] = {"operating_reset_at": reset_at, "operating": 500}
    world.proxy.add(answer_with("crm.deal.list", 429, body, times=1))
    sleeps: list[float] = []
    client = Bitrix24Client(world.proxy.webhook_url, sleep=sleeps.append, max_attempts=3, bucket_level=0.0)
    answer = client.call("crm.deal.list", {"select": ["ID"]})
    assert answer.result
    assert sleeps and max(sleeps) <= 660
    waited = sum(sleeps)
    if waited >= 5:
        said = announced(caplog)
        assert said and abs(sum(said) - waited) <= 2, (said, sleeps)


def test_the_wait_after_a_429_without_a_reset_time_is_the_one_announced(make_world: Callable[..., World],
                                                                        caplog: Any) -> None:
    """The portal said 539 s earlier; the 429 names no time: the wait and its announcement agree."""
    world = make_world(deals=5)
    reset = time.time() + 539

    world.proxy.add(_time_block("crm.deal.list", operating=300.0, reset_at=reset, times=1))
    world.proxy.add(_after_first(answer_with("crm.deal.list", 429, LIMIT, times=1)))
    sleeps: list[float] = []
    client = Bitrix24Client(world.proxy.webhook_url, sleep=sleeps.append, max_attempts=3, bucket_level=0.0)
    client.call("crm.deal.list", {"select": ["ID"]})
    client.call("crm.deal.list", {"select": ["ID"]})
    waited = sum(sleeps)
    assert waited > 60
    said = announced(caplog)
    assert said and abs(sum(said) - waited) <= 2, (said, sleeps)
    assert not any("a minute" in record.getMessage() for record in caplog.records)


def _time_block(method: str, *, operating: float, reset_at: float, times: int) -> Any:
    fired = [0]

    def rule(exchange: Any) -> None:
        if exchange.method != method or fired[0] >= times:
            return
        answer = exchange.json
        if isinstance(answer, dict) and isinstance(answer.get("time"), dict):
            answer["time"].update({"operating": operating, "operating_reset_at": reset_at})
            exchange.json = answer
            fired[0] += 1

    return rule


def _after_first(rule: Any) -> Any:
    seen = [0]

    def later(exchange: Any) -> None:
        seen[0] += 1
        if seen[0] > 1:
            rule(exchange)

    return later


@pytest.mark.slow
def test_a_long_wait_is_shown_without_debug(make_world: Callable[..., World]) -> None:
    world = make_world(deals=5)
    body = dict(LIMIT, time={"operating_reset_at": time.time() + 6, "operating": 500})
    world.proxy.add(answer_with("crm.deal.list", 429, body, times=1))
    result = world.sync()
    assert result.code == 0, result.err
    assert ANNOUNCED.search(result.err), result.err

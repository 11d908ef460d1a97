"""Shared fixtures of the sandbox portal tests: a small seeded portal served on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from crmbridge.sandbox import SandboxPortal


@pytest.fixture(scope="module")
def portal() -> Iterator[SandboxPortal]:
    """A read-mostly portal without limits; tests that write use their own portal."""
    with SandboxPortal(deals=260, seed=7, limits=False) as p:
        yield p


def post(p: SandboxPortal, method: str, params: dict[str, Any] | None = None) -> requests.Response:
    """POST a JSON body to the portal's webhook URL."""
    return requests.post(p.webhook_url + method, json=params or {}, timeout=10)


@pytest.fixture()
def call() -> Callable[..., requests.Response]:
    """The JSON-POST helper as a fixture (the test directory is not a package)."""
    return post

"""Shared fixtures: a sandbox portal on 127.0.0.1, a client for it and a cache in a temp dir."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# never let a developer's real .env or shell settings leak into tests
for _name in list(os.environ):
    if _name.startswith("CRMBRIDGE_"):
        del os.environ[_name]

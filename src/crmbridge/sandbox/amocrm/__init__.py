"""Sandbox amoCRM account: a v4 REST server on 127.0.0.1 seeded with the Bitrix24 sandbox's deals as leads."""

from __future__ import annotations

from .server import AccountStats, SandboxAccount, serve_forever
from .state import AccountState

__all__ = ["AccountState", "AccountStats", "SandboxAccount", "serve_forever"]

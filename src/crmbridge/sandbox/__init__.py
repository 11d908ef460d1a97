"""Sandbox Bitrix24 portal: a REST server on 127.0.0.1 with seeded deals, real limits and fault injection."""

from __future__ import annotations

from .methods import METHODS, ApiError
from .server import PortalStats, SandboxPortal, serve_forever
from .state import PortalState

__all__ = ["METHODS", "ApiError", "PortalState", "PortalStats", "SandboxPortal", "serve_forever"]

"""How other parts plug into the daemon: extra HTTP routes, polled event sources and event processors.

A plugin is a module with `register(bridge: LiveBridge) -> None`, listed in `PLUGIN_MODULES` (a module that
is not installed is skipped, like the CLI's optional command modules). It never edits the daemon:

    def register(bridge: LiveBridge) -> None:
        bridge.add_route("/amocrm/hooks/{secret}", receive_hook)              # Starlette endpoint
        bridge.add_source(EventSource("bitrix24.offline", poll_offline, interval=5.0))
        bridge.add_processor(Processor("amocrm.", process_amocrm_events))
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.routing import BaseRoute, Route

from crmbridge.live.inbox import Inbox, InboxRow
from crmbridge.live.metrics import Metrics

log = logging.getLogger("crmbridge.live")

#: optional plugin modules, each with register(bridge); add yours here
PLUGIN_MODULES: list[str] = [
    "crmbridge.live.offline",  # Bitrix24 offline events (event.offline.get / clear), issue 9 OAuth part
    "crmbridge.connectors.amocrm.live",  # amoCRM hooks at /amocrm/hooks/<secret>, issue 11
]


@dataclass(frozen=True)
class EventSource:
    """Something the daemon polls for events (e.g. Bitrix24's offline queue).

    `poll(inbox)` takes what waits at the source, commits it with `inbox.accept(...)` (durable on return),
    only then acknowledges it at the source, and returns how many events it took. The daemon calls it from
    one thread, again at once while it returns > 0, else after `interval` seconds; an exception is logged
    and retried after a backoff (the source keeps its events meanwhile).
    """

    name: str
    poll: Callable[[Inbox], int]
    interval: float = 5.0


@dataclass(frozen=True)
class Processor:
    """Processes inbox events whose `source` starts with `source_prefix` (e.g. "amocrm.").

    `process(rows)` is called by the worker with the due events of its sources (oldest first, at most a few
    thousand) and must be idempotent: an event is settled only after `process` returns, so after a crash it
    is processed again. Raising `crmbridge.errors.CrmUnreachable` (or another retryable CrmError) postpones
    the events without counting an attempt (the CRM is down); any other exception counts an attempt for each
    of them, and an event that fails `CRMBRIDGE_INBOX_MAX_ATTEMPTS` times goes to the dead letters.
    Bitrix24 events (`bitrix24.*`) are processed by the built-in worker.
    """

    source_prefix: str
    process: Callable[[list[InboxRow]], None]


@dataclass
class LiveBridge:
    """What a plugin gets: the daemon's shared pieces, and the three ways to extend it."""

    settings: Any  # crmbridge.config.Settings
    inbox: Inbox
    metrics: Metrics
    cache_path: Path
    client: Any = None  # the daemon's Bitrix24Client (None when no portal is configured)
    routes: list[BaseRoute] = field(default_factory=list)
    sources: list[EventSource] = field(default_factory=list)
    processors: list[Processor] = field(default_factory=list)

    def add_route(self, path: str, endpoint: Callable[..., Any], methods: Sequence[str] = ("POST",)) -> None:
        """An HTTP route on the daemon's server (Starlette `Route`); commit events with `inbox.accept_async`."""
        self.routes.append(Route(path, endpoint, methods=list(methods)))

    def add_source(self, source: EventSource) -> None:
        self.sources.append(source)

    def add_processor(self, processor: Processor) -> None:
        self.processors.append(processor)

    def processor_for(self, source: str) -> Processor | None:
        for processor in self.processors:
            if source.startswith(processor.source_prefix):
                return processor
        return None


def load_plugins(bridge: LiveBridge, modules: Sequence[str] = PLUGIN_MODULES) -> list[str]:
    """Import each plugin module that exists and let it register; returns the names loaded."""
    loaded = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # not built (yet) in this checkout
            raise
        module.register(bridge)
        loaded.append(name)
        log.info("live plugin %s registered", name)
    return loaded


__all__ = ["EventSource", "LiveBridge", "PLUGIN_MODULES", "Processor", "load_plugins"]

"""The inbox worker: drains events in rounds, re-reads the deals they name, evaluates only those, and acts per rule mode.

One round: claim the due events, coalesce them per deal (`reread.affected`), re-read the affected deals in
batches (`ReReader`), then evaluate, plan and execute exactly as `crmbridge enforce` does, restricted to those
deals (`enforce(..., deal_ids=..., sync=False)`): the same idempotency keys, audit log and one-writer lock,
so the bridge's own writes, echoed back as events, re-read to the same plan and cause no new action.

Failures: the portal unreachable (or a retryable CRM error after the client's retries) postpones the round's
events with a growing backoff, counting no attempt: they wait in the inbox until the portal is back. Any
other error counts an attempt for each event of the round and halves the round, so a poison event ends up
alone and, after `max_attempts`, in the dead letters with its reason.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from crmbridge.cache.store import Cache, open_cache
from crmbridge.connectors.bitrix24.client import Bitrix24Client
from crmbridge.enforce.run import enforce
from crmbridge.errors import CacheLocked, CrmBridgeError, CrmError, LockLost, MappingError, RightsError
from crmbridge.live.bridge import LiveBridge
from crmbridge.live.inbox import Inbox, InboxRow
from crmbridge.live.reread import ReReader, affected
from crmbridge.mapping.load import Mappings, load_mappings

log = logging.getLogger("crmbridge.live.worker")

#: records (deals, tasks, ...) a round takes at most, with all their due events: a burst is worked off in
#: rounds of this size, each record re-read once however many events named it
ROUND_EVENTS = 500
#: wait after the first event of a quiet spell, so a burst (a manager saving several fields) is one round
GATHER_SECONDS = 0.05
#: longest pause between two rounds of a burst
MAX_PAUSE = 2.0
#: events per second above which a round waits for the burst to pass (acknowledgements first) ...
BURST_RATE = 500.0
#: ... but never longer than this (seconds): a steady stream is still worked off
BURST_DEFER = 5.0


class MappingsWatcher:
    """The admin's mapping files, reloaded when they change; a broken edit keeps the last good version."""

    def __init__(self, directory: Path, *, crm: str | None = None) -> None:
        self.directory = Path(directory)
        self.crm = crm
        self._stamp: tuple[tuple[str, int, int], ...] | None = None
        self._mappings: Mappings | None = None
        self.error: str | None = None
        self._lock = threading.Lock()  # the worker, the jobs and /readyz ask from their own threads

    def current(self) -> Mappings:
        with self._lock:
            return self._current()

    def _current(self) -> Mappings:
        stamp = _stamp(self.directory)
        if stamp != self._stamp or self._mappings is None:
            try:
                loaded = self._mappings is not None
                self._mappings = load_mappings(self.directory, crm=self.crm)
                self.error = None
                if loaded:
                    log.info("mapping files changed: reloaded from %s", self.directory)
            except MappingError as exc:
                self.error = f"{exc} ({len(exc.problems)} problem(s); `crmbridge check` lists them)"
                if self._mappings is None:
                    raise
                log.error("mapping files changed but do not load; keeping the last good version: %s", self.error)
            self._stamp = stamp
        return self._mappings


def _stamp(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """Name, mtime and size of every mapping file: an edit (or a file added or removed) changes it."""
    found = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            info = path.stat()
        except OSError:
            continue  # removed meanwhile: the next look sees the folder as it is
        found.append((path.name, info.st_mtime_ns, info.st_size))
    return tuple(found)


@dataclass
class RoundReport:
    events: int = 0
    deals: int = 0
    deleted: int = 0
    http_requests: int = 0
    actions_done: int = 0
    outcome: str = "idle"  # idle, done, postponed, failed
    error: str | None = None
    seconds: float = 0.0
    reaction: list[float] = field(default_factory=list)  # per event: received -> round done (s)


class Worker:
    """Runs rounds until stopped; everything it touches is injected (the daemon builds it)."""

    def __init__(self, bridge: LiveBridge, client: Bitrix24Client | None, mappings: MappingsWatcher, *,
                 writer_lock: threading.Lock, max_reverts_per_day: int = 3, channel: str = "chat",
                 client_id: str | None = None, allow_non_admin: bool = False,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC), round_events: int = ROUND_EVENTS,
                 max_backoff: float = 300.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.bridge = bridge
        self.inbox: Inbox = bridge.inbox
        self.client = client
        self.mappings = mappings
        self.writer_lock = writer_lock
        self.max_reverts_per_day = max_reverts_per_day
        self.channel = channel  # how messages reach people (CRMBRIDGE_ENFORCE_NOTIFY_CHANNEL), as `enforce` sends them
        self.client_id = client_id
        self.allow_non_admin = allow_non_admin
        self.now = now
        self.round_events = round_events
        self.max_backoff = max_backoff
        self.sleep = sleep
        self.wake = threading.Event()
        self._limit = round_events
        self._backoff = 0.0
        self._cache: Cache | None = None
        #: what readiness reports: the last round's failure, if the last round failed
        self.last_error: str | None = None
        self.rounds = 0

    # ------------------------------------------------------------------ loop

    def run(self, stop: threading.Event, *, poll: float = 1.0) -> None:
        """Rounds until `stop` is set; a round in flight is always finished (SIGTERM leaves nothing half-written)."""
        lower_priority()
        try:
            while not stop.is_set():
                if self.wake.wait(poll):
                    self.wake.clear()
                    if GATHER_SECONDS:
                        stop.wait(GATHER_SECONDS)
                self._yield_to_a_burst(stop)
                report = self.round()
                if report.outcome == "done" and report.events:
                    # more may be due: go on, but after a pause as long as the round took, so that under a burst
                    # the worker holds the interpreter at most half the time (acknowledgements stay fast) and
                    # the next round coalesces everything that arrived meanwhile into one re-read per deal
                    stop.wait(min(report.seconds, MAX_PAUSE))
                    self.wake.set()
                elif report.outcome in ("postponed", "failed"):
                    stop.wait(min(self._backoff, 5.0))
        finally:
            self.close()

    def _yield_to_a_burst(self, stop: threading.Event) -> None:
        """While events pour in (over BURST_RATE per second), acknowledging them comes first: the round waits,
        at most BURST_DEFER seconds, and then takes more events of each deal at once."""
        deadline = time.monotonic() + BURST_DEFER
        while not stop.is_set() and time.monotonic() < deadline and self.inbox.arrival_rate() > BURST_RATE:
            stop.wait(0.1)

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    def cache(self) -> Cache:
        if self._cache is None:
            self._cache = open_cache(self.bridge.cache_path)
        return self._cache

    # ------------------------------------------------------------------ one round

    def round(self) -> RoundReport:
        started = time.perf_counter()
        rows = self.inbox.claim_entities(self._limit)
        report = RoundReport(events=len(rows))
        if not rows:
            return report
        by_processor: dict[str, list[InboxRow]] = {}
        for row in rows:
            prefix = "bitrix24." if row.source.startswith("bitrix24.") else None
            processor = None if prefix else self.bridge.processor_for(row.source)
            key = prefix or (processor.source_prefix if processor else "")
            by_processor.setdefault(key, []).append(row)
        for key, group in by_processor.items():
            ids = [row.id for row in group]
            try:
                if key == "bitrix24.":
                    self._bitrix24(group, report)
                elif key:
                    processor = self.bridge.processor_for(group[0].source)
                    assert processor is not None
                    processor.process(group)
                else:
                    raise CrmBridgeError(f"no processor for events of source {group[0].source!r}")
            except Exception as exc:  # noqa: BLE001 - every failure is settled on the events, none is lost
                self._settle_failure(ids, exc, report, records=len({(r.entity, r.entity_id) for r in group}))
                continue
            self.inbox.done(ids)
            self._backoff = 0.0
            self._limit = min(self.round_events, self._limit * 2)
            self.bridge.metrics.events_processed.labels("done").inc(len(ids))
            if report.outcome != "failed" and report.outcome != "postponed":
                report.outcome = "done"
        report.seconds = time.perf_counter() - started
        finished = datetime.now(UTC)
        for row in rows:
            try:
                waited = (finished - datetime.fromisoformat(row.received_at)).total_seconds()
            except ValueError:
                continue
            report.reaction.append(waited)
            if report.outcome == "done":
                self.bridge.metrics.reaction.observe(waited)
        self.rounds += 1
        self.last_error = report.error
        return report

    def _bitrix24(self, rows: list[InboxRow], report: RoundReport) -> None:
        if self.client is None:
            raise CrmBridgeError("no Bitrix24 portal is configured (CRMBRIDGE_BITRIX24_WEBHOOK_URL)")
        mappings = self.mappings.current()
        cache = self.cache()
        with self.writer_lock:  # the daemon's scheduled jobs write to the same cache and portal
            result = ReReader(self.client, cache).run(affected(rows))
            report.deals += len(result.deals)
            report.deleted += len(result.deleted)
            report.http_requests += result.http_requests
            if result.deals or result.deleted:
                # a deleted deal is judged too: it breaks nothing any more, so its violations close and the
                # notices still waiting to tell them are cancelled (not sent about a deal that is gone)
                before = self.client.requests_made
                enforced = enforce(self.client, cache, mappings, now=self.now,
                                   deal_ids=sorted(result.deals | result.deleted), sync=False,
                                   max_reverts_per_day=self.max_reverts_per_day, channel=self.channel,
                                   client_id=self.client_id, allow_non_admin=self.allow_non_admin)
                report.http_requests += self.client.requests_made - before
                if enforced.execution is not None:
                    report.actions_done += enforced.execution.done
        log.info("worker: %d events -> %d deals re-read (%d deleted), %d actions written, %d HTTP requests",
                 len(rows), len(result.deals), len(result.deleted), report.actions_done, report.http_requests)

    def _settle_failure(self, ids: list[int], exc: Exception, report: RoundReport, *, records: int) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        report.error = reason
        if _waits(exc):
            # not these events' fault: the portal is down, limited, or another run holds the writer lock
            self._backoff = min(self.max_backoff, max(1.0, self._backoff * 2))
            self.inbox.postpone(ids, reason, self._backoff)
            report.outcome = "postponed"
            self.bridge.metrics.events_processed.labels("postponed").inc(len(ids))
            log.warning("worker: %d events wait %.0f s: %s", len(ids), self._backoff, reason)
            return
        dead = self.inbox.failed(ids, reason)
        self._backoff = min(self.max_backoff, max(1.0, self._backoff * 2))
        self._limit = max(1, records // 2)  # a poison event's record ends up alone
        report.outcome = "failed"
        self.bridge.metrics.events_processed.labels("failed").inc(len(ids) - dead)
        self.bridge.metrics.events_processed.labels("dead").inc(dead)
        log.error("worker: processing %d events failed (%s); %d went to the dead letters", len(ids), reason, dead,
                  exc_info=not isinstance(exc, CrmBridgeError))


def lower_priority(niceness: int = 10) -> None:
    """Run the calling thread at a lower OS priority (Linux schedules threads one by one): on a busy machine the
    HTTP loop, which acknowledges events, gets the CPU before the worker's and the jobs' background work."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        pass  # not Linux, or not allowed: the default priority serves too


def _waits(exc: Exception) -> bool:
    """Errors that say "not now" rather than "not this event"."""
    if isinstance(exc, CrmError):
        return exc.retryable
    if isinstance(exc, (MappingError, RightsError)):
        return True  # the admin's files are broken, or the webhook's user too narrow: events wait for the fix
    return isinstance(exc, (CacheLocked, LockLost))


__all__ = ["MappingsWatcher", "RoundReport", "Worker"]

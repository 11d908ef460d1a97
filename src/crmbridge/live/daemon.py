"""`crmbridge serve`: the HTTP receiver, the inbox worker, the scheduler and the event sources in one process.

Start: the inbox opens (migrating the cache), plugins register, the HTTP server listens at once. With an
empty cache a full sync runs first; events that arrive meanwhile wait in the inbox, and the worker starts
after it. SIGTERM (or Ctrl-C): the server stops listening and answers the requests it has, the worker
finishes the round in flight (its writes and their audit rows commit), running jobs get
`CRMBRIDGE_STOP_TIMEOUT_SECONDS` to finish, and the process exits 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Generator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn

from crmbridge.cache.store import open_cache
from crmbridge.config import Settings
from crmbridge.connectors.bitrix24.app import oauth_auth
from crmbridge.connectors.bitrix24.client import validate_webhook_url
from crmbridge.connectors.bitrix24.limiter import Limiter, bucket_file
from crmbridge.errors import MappingError
from crmbridge.live.app import Bitrix24Receiver, Readiness, build_app
from crmbridge.live.bitrix24_events import portal_domain
from crmbridge.live.bridge import EventSource, LiveBridge, load_plugins
from crmbridge.live.inbox import Inbox
from crmbridge.live.metrics import Metrics
from crmbridge.live.worker import MappingsWatcher, Worker
from crmbridge.connectors.registry import client_for, syncer_for

log = logging.getLogger("crmbridge.live")

#: live_state key a plugin may set when the portal is known from an OAuth install instead of a webhook URL
DOMAIN_STATE = "bitrix24.domain"


class _Server(uvicorn.Server):
    """uvicorn, but a signal stops the whole daemon and the process then exits 0 (no re-raised SIGTERM)."""

    daemon: Daemon

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def _on_signal(self, sig: int, frame: Any) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.daemon.request_stop(signal.Signals(sig).name)


class Daemon:
    """Wires the parts; `run()` blocks until stopped and returns the exit code."""

    def __init__(self, settings: Settings, *, host: str = "127.0.0.1", port: int = 8024,
                 run_jobs: bool = True) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.stop = threading.Event()
        self.started = False
        self.initial_sync_error: str | None = None
        self.initial_sync_done = threading.Event()
        self.metrics = Metrics(settings.cache_path)
        self.inbox = Inbox(settings.cache_path, max_attempts=settings.inbox_max_attempts,
                           on_commit=lambda count, seconds: self.worker_wake())
        self.amocrm = settings.crm == "amocrm"
        url = settings.bitrix24_webhook_url.get_secret_value() if settings.bitrix24_webhook_url else None
        self.webhook_url = validate_webhook_url(url) if url and not self.amocrm else None
        # A connected OAuth application (`crmbridge connect`) is preferred over the webhook: its writes carry the
        # auth_connector its offline events are bound with, so they are not queued back (live/offline.py).
        self.oauth = None if self.amocrm else oauth_auth(settings)
        # amoCRM (CRMBRIDGE_CRM=amocrm): the account's client; its hooks come through the amoCRM plugin
        self.has_portal = bool(self.webhook_url or self.oauth) or (self.amocrm and bool(settings.amocrm_base_url))
        # one limiter for every client of the daemon: the portal's bucket is one, whoever asks
        self.limiter = Limiter(rate=settings.bitrix24_rate, burst=settings.bitrix24_burst,
                               operating_limit=settings.bitrix24_operating_limit, on_wait=self.metrics.crm_wait,
                               bucket=bucket_file(settings.cache_path))  # shared with cron runs, kept over restarts
        self.writer_lock = threading.Lock()
        self.bridge = LiveBridge(settings, self.inbox, self.metrics, Path(settings.cache_path),
                                 client=self.new_client() if self.has_portal else None)
        self.mappings = MappingsWatcher(settings.mappings_dir, crm=settings.crm)
        self.mappings.current()  # a broken mapping file stops the start with its problems, before anything runs
        self.worker = Worker(self.bridge, self.new_client() if self.has_portal else None, self.mappings,
                             writer_lock=self.writer_lock,
                             max_reverts_per_day=settings.enforce_max_reverts_per_day,
                             channel=settings.enforce_notify_channel, client_id=settings.bitrix24_client_id,
                             allow_non_admin=settings.enforce_allow_non_admin)
        self.scheduler: Any = None
        if run_jobs:
            from crmbridge.live.jobs import JobScheduler, load_jobs

            self.scheduler = JobScheduler(load_jobs(settings.jobs_dir), self.job_context(), metrics=self.metrics)
        load_plugins(self.bridge)
        endpoint = self.webhook_url or (str(self.oauth.session.pair().details.get("client_endpoint") or "")
                                        if self.oauth is not None else "")
        domain = portal_domain(endpoint) if endpoint else (self.inbox.get_state(DOMAIN_STATE) or "")
        self.receiver = Bitrix24Receiver(
            self.inbox, self.metrics,
            application_token=(settings.bitrix24_application_token.get_secret_value()
                               if settings.bitrix24_application_token else None),
            domain=domain, max_body=settings.event_max_bytes)
        self.app = build_app(self.receiver, self.metrics, Readiness(self.readiness), extra_routes=self.bridge.routes)
        self._threads: list[threading.Thread] = []
        self._server: _Server | None = None
        self.stop_reason: str | None = None

    # ------------------------------------------------------------------ pieces

    def new_client(self) -> Any:
        """A client of the configured CRM, paced by the daemon's one limiter, counted in its metrics."""
        return client_for(self.settings, observer=self.metrics.crm_request, on_call=self.metrics.crm_call,
                          limiter=self.limiter)

    def job_context(self) -> Any:
        """What the scheduler hands its jobs: each runs in a child process with its own client of the configured CRM
        (sharing the portal's bucket through the file beside the cache); the writer lock keeps the worker out of the
        cache while a job writes; the mappings give the scheduler the regulation's working hours."""
        from crmbridge.live.jobs import JobContext

        return JobContext(self.settings, writer_lock=self.writer_lock, mappings=lambda: self.mappings.current())

    def worker_wake(self) -> None:
        self.worker.wake.set()

    def request_stop(self, reason: str) -> None:
        """Stop listening, let the round in flight finish, then exit (see the module doc)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            log.warning("crmbridge serve: %s received; finishing the work in flight", reason)
        self.stop.set()
        if self._server is not None:
            self._server.should_exit = True

    def startup_notes(self) -> list[str]:
        """What an operator should know before the first event: settings that leave a part of the bridge idle."""
        notes = []
        if not self.has_portal:
            notes.append("no portal is configured (CRMBRIDGE_BITRIX24_WEBHOOK_URL, or `crmbridge connect`): "
                         "events are kept in the inbox until one is")
        if not self.settings.bitrix24_application_token and not self.amocrm:
            notes.append("CRMBRIDGE_BITRIX24_APPLICATION_TOKEN is not set: every POST /bitrix24/events gets 401"
                         + (" (the offline events of the connected application still come in)"
                            if self.oauth is not None else
                            " (copy the token the portal's outgoing webhook shows, or connect the OAuth application)"))
        if self.scheduler is not None and not any(job.spec.run == "enforce" for job in self.scheduler.jobs):
            notes.append(f"no enabled `run: enforce` job in {self.settings.jobs_dir}: timers (response time, payment, "
                         "stale deals) are not checked, and notices told by digests wait until `crmbridge enforce` "
                         "runs (the worker sends only the rules told `individual`)")
        return notes

    # ------------------------------------------------------------------ readiness

    def readiness(self) -> list[str]:
        failed: list[str] = []
        try:
            conn = sqlite3.connect(str(self.settings.cache_path), timeout=2)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
            finally:
                conn.close()
        except sqlite3.Error as exc:
            failed.append(f"cache not writable: {exc}")
        try:
            stats = self.inbox.stats()
            if stats.oldest_pending:
                lag = (datetime.now(UTC) - datetime.fromisoformat(stats.oldest_pending)).total_seconds()
                if lag > self.settings.ready_max_lag_seconds:
                    failed.append(f"inbox lag {lag:.0f} s over {self.settings.ready_max_lag_seconds} s "
                                  f"({stats.pending} events pending)")
            conn = sqlite3.connect(str(self.settings.cache_path), timeout=2)
            try:
                row = conn.execute("SELECT status, summary FROM sync_runs WHERE status != 'running' "
                                   "ORDER BY id DESC LIMIT 1").fetchone()
            finally:
                conn.close()
            if row is not None and row[0] == "failed":
                failed.append("the last sync failed")
        except sqlite3.Error as exc:
            failed.append(f"cache not readable: {exc}")
        if not self.initial_sync_done.is_set():
            failed.append("the initial full sync is running")
        if self.initial_sync_error:
            failed.append(f"the initial sync failed: {self.initial_sync_error}")
        try:
            self.mappings.current()  # an edit is noticed here too, not only when the next event needs the files
        except (MappingError, OSError):
            pass  # the error is kept on the watcher
        if self.mappings.error:
            failed.append(f"mapping files do not load: {self.mappings.error}")
        if self.worker.last_error:
            failed.append(f"the worker's last round failed: {self.worker.last_error}")
        return failed

    # ------------------------------------------------------------------ run

    def run(self) -> int:
        # the HTTP loop shares the interpreter with the worker and the jobs: hand the GIL over every 1 ms
        # (default 5 ms), so an acknowledgement never waits long behind a worker round's CPU work
        sys.setswitchinterval(0.001)
        config = uvicorn.Config(self.app, host=self.host, port=self.port, workers=1, lifespan="off",
                                access_log=False, log_level="warning", http="httptools",
                                loop="uvloop" if _has_uvloop() else "asyncio", timeout_graceful_shutdown=10)
        server = _Server(config)
        server.daemon = self
        self._server = server
        self._start_thread("crmbridge-start", self._start_work)
        try:
            server.run()
        finally:
            self.request_stop(self.stop_reason or "server stopped")
            self._shutdown()
        return 0

    def _start_thread(self, name: str, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _start_work(self) -> None:
        """Initial sync when the cache is empty, then the worker, the sources and the scheduler."""
        try:
            if self.has_portal and not self.stop.is_set():
                cache = open_cache(self.settings.cache_path)
                try:
                    if cache.syncs.get("deals").cursor is None:
                        log.warning("crmbridge serve: the cache is empty; a full sync runs first "
                                    "(events wait in the inbox meanwhile)")
                        with self.writer_lock:
                            syncer_for(self.new_client(), cache,
                                       overlap=timedelta(minutes=self.settings.sync_overlap_minutes)).run(full=True)
                finally:
                    cache.close()
        except Exception as exc:  # noqa: BLE001 - reported by /readyz; the worker still drains the inbox
            self.initial_sync_error = f"{type(exc).__name__}: {exc}"
            log.error("crmbridge serve: the initial sync failed: %s", self.initial_sync_error)
        finally:
            self.initial_sync_done.set()
        if self.stop.is_set():
            return
        self._start_thread("crmbridge-worker", self.worker.run, self.stop)
        for source in self.bridge.sources:
            self._start_thread(f"crmbridge-source-{source.name}", self._poll_source, source)
        if self.scheduler is not None:
            self.scheduler.start()
        self._start_thread("crmbridge-housekeeping", self._housekeeping)
        self.worker.wake.set()  # events that waited during the start
        self.started = True

    def _poll_source(self, source: EventSource) -> None:
        backoff = 0.0
        while not self.stop.is_set():
            try:
                taken = source.poll(self.inbox)
                backoff = 0.0
                if taken:
                    continue
                self.stop.wait(source.interval)
            except Exception as exc:  # noqa: BLE001 - the source keeps its events; try again later
                backoff = min(300.0, max(source.interval, backoff * 2))
                log.error("event source %s failed (%s); next poll in %.0f s", source.name, exc, backoff)
                self.stop.wait(backoff)

    def _housekeeping(self) -> None:
        minutes = 0
        while not self.stop.wait(60):
            minutes += 1
            try:
                self.inbox.checkpoint()
            except sqlite3.Error as exc:
                log.warning("WAL checkpoint failed: %s", exc)
            if minutes % 60:
                continue
            try:
                pruned = self.inbox.prune(timedelta(days=self.settings.inbox_keep_days))
                if pruned:
                    log.info("inbox: %d processed events older than %d days pruned", pruned,
                             self.settings.inbox_keep_days)
            except sqlite3.Error as exc:
                log.error("inbox pruning failed: %s", exc)

    def _shutdown(self) -> None:
        self.stop.set()
        deadline = time.monotonic() + max(1, self.settings.stop_timeout_seconds)
        if self.scheduler is not None:
            self.scheduler.shutdown(timeout=max(0.0, deadline - time.monotonic()))
        for thread in self._threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
        self.inbox.close()
        log.warning("crmbridge serve: stopped (%s)", self.stop_reason or "done")


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return os.name != "nt"


__all__ = ["DOMAIN_STATE", "Daemon"]

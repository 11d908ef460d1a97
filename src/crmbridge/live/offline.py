"""Bitrix24 offline events as an event source of the daemon: reserve a batch, commit it to the inbox, only then confirm it.

One poll (`OfflinePoller.poll(inbox)`, called by the daemon's source thread):

1. finish what a crash cut off: batches in the journal (`offline_batches`) that were fetched but not
   confirmed are accepted again (the inbox keeps one row per record: `dedupe_key` = ID:MESSAGE_ID) and
   cleared; a reservation whose answer never arrived is found with `event.offline.list` (sorted by
   PROCESS_ID, so reserved records come first) and read back with `event.offline.get {process_id}`;
2. reserve the next batch: the journal row is committed before `event.offline.get {clear: 0}` goes out,
   the records are journaled as soon as they arrive, committed to the inbox (durable on return), records
   that name nothing crmbridge can take go to `event.offline.error` (and to the dead letters), then
   `event.offline.clear {process_id, id}` confirms the rest.

Nothing acknowledged at the portal is missing from the inbox; a crash at any step leaves either a
batch the next poll finishes or one the portal still holds. Two daemons on one cache take turns
(a `flock` on `<cache>.offline.lock`). The bridge's own writes carry the `auth_connector` the events
are bound with, so they are not queued back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from crmbridge.cache.lock import file_lock
from crmbridge.cache.offline import ACCEPTED, FETCHED, FETCHING, OfflineBatches
from crmbridge.connectors.bitrix24.client import Bitrix24Client
from crmbridge.connectors.bitrix24.offline import (
    MAX_BATCH,
    clear_batch,
    describe_record,
    fetch_batch,
    mark_failed,
    reserved_process_ids,
)
from crmbridge.errors import CrmError
from crmbridge.live.inbox import Inbox, InboxEvent, connect, payload_json, utc_iso

__all__ = ["CHECKPOINTS", "SOURCE", "OfflinePoller", "register"]

log = logging.getLogger("crmbridge.live.offline")

SOURCE = "bitrix24.offline"
#: where a poll can be cut off; tests kill the process at each
CHECKPOINTS = ("journaled", "fetched", "stored", "accepted", "cleared")


class OfflinePoller:
    """Reads the offline queue of one Bitrix24 app (one connector) into the inbox; see the module docstring."""

    def __init__(
        self,
        client: Bitrix24Client,
        cache_path: Path | str,
        *,
        connector: str,
        reserve: bool = True,
        batch_size: int = 50,
        scan_every: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        checkpoint: Callable[[str], None] | None = None,
        on_accepted: Callable[[Sequence[InboxEvent]], None] | None = None,
    ) -> None:
        self.client = client
        self.path = Path(cache_path)
        self.connector = connector
        self.reserve = reserve
        self.batch_size = max(1, min(MAX_BATCH, batch_size))
        self.scan_every = scan_every
        self._clock = clock
        self._checkpoint = checkpoint or (lambda name: None)
        self._on_accepted = on_accepted
        # a scan at the first poll finds reservations an earlier process left behind
        self._next_scan = 0.0
        #: counts of this poller's life: polls, records accepted, records reported failed, batches recovered
        self.stats = {"polls": 0, "accepted": 0, "failed": 0, "recovered": 0}

    # --- the daemon's entry point ---------------------------------------------------------------------

    def poll(self, inbox: Inbox) -> int:
        """Take what waits in the offline queue into the inbox; returns how many records it took."""
        with self._turn() as mine:
            if not mine:
                return 0  # another daemon on this cache is polling right now
            self.stats["polls"] += 1
            taken = self._recover(inbox)
            if self.reserve and self._clock() >= self._next_scan:
                taken += self._scan(inbox)
            return taken + self._next(inbox)

    # --- steps --------------------------------------------------------------------------------------

    def _next(self, inbox: Inbox) -> int:
        with self._journal() as journal:
            batch_id = journal.start(self.connector, utc_iso())
        self._checkpoint("journaled")
        try:
            batch = fetch_batch(self.client, limit=self.batch_size, reserve=self.reserve)
        except CrmError:
            # the answer may be lost with the batch reserved: the journal row stays `fetching`, a scan finds it
            self._next_scan = 0.0
            raise
        self._checkpoint("fetched")
        if not batch.events:
            with self._journal() as journal:
                journal.forget(batch_id, utc_iso())
            return 0
        return self._finish(inbox, batch_id, batch.process_id, batch.events)

    def _finish(self, inbox: Inbox, batch_id: int, process_id: str | None,
                records: list[dict[str, Any]], *, journaled: bool = False) -> int:
        if not journaled:
            with self._journal() as journal:
                journal.fetched(batch_id, process_id or "", records)
            self._checkpoint("stored")
        events, failed = self._split(records)
        inbox.accept(events)  # on return the records are on disk: only now may the portal forget them
        for record, reason in failed:
            inbox.reject(SOURCE, f"offline record {record.get('ID')}: {reason}", payload_json(record))
        with self._journal() as journal:
            journal.accepted(batch_id, len(events), {str(r.get("MESSAGE_ID")): why for r, why in failed})
        self._checkpoint("accepted")
        if process_id:
            # marked records leave the batch (the portal keeps them with ERROR=1); the rest is confirmed by id
            mark_failed(self.client, process_id, [str(r["MESSAGE_ID"]) for r, _ in failed if r.get("MESSAGE_ID")])
            bad = {id(r) for r, _ in failed}
            clear_batch(self.client, process_id, [str(r.get("ID")) for r in records if id(r) not in bad])
        self._checkpoint("cleared")
        with self._journal() as journal:
            journal.cleared(batch_id, utc_iso())
        self.stats["accepted"] += len(events)
        self.stats["failed"] += len(failed)
        if events and self._on_accepted is not None:
            self._on_accepted(events)
        if failed:
            log.warning("offline events: %d record(s) reported to the portal as failed: %s", len(failed),
                        "; ".join(f"{r.get('ID')}: {why}" for r, why in failed[:3]))
        return len(events)

    def _split(self, records: list[dict[str, Any]]) -> tuple[list[InboxEvent], list[tuple[dict[str, Any], str]]]:
        """Records as inbox events, and those crmbridge cannot take (with why)."""
        events: list[InboxEvent] = []
        failed: list[tuple[dict[str, Any], str]] = []
        for record in records:
            record_id = str(record.get("ID") or "")
            described = describe_record(record)
            if isinstance(described, str) or not record_id.isdigit():
                failed.append((record, described if isinstance(described, str) else "record without an ID"))
                continue
            event, entity, entity_id = described
            events.append(InboxEvent(SOURCE, event, entity, entity_id, payload_json(record),
                                     dedupe_key=f"{record_id}:{record.get('MESSAGE_ID') or ''}"))
        return events, failed

    def _recover(self, inbox: Inbox) -> int:
        """Finish the batches a crash (or an error) left between the reservation and the confirmation."""
        taken = 0
        with self._journal() as journal:
            rows = journal.open(self.connector)
        for row in rows:
            if row.status == FETCHING:
                self._next_scan = 0.0  # its reservation (if any) is at the portal: the scan finds it
                continue
            if row.status in (FETCHED, ACCEPTED):
                log.warning("offline events: finishing batch %s cut off at %s (%d records)",
                            row.process_id or "(deleted on read)", row.status, len(row.events))
                taken += self._finish(inbox, row.id, row.process_id, row.events, journaled=True)
                self.stats["recovered"] += 1
        return taken

    def _scan(self, inbox: Inbox) -> int:
        """Reservations the portal holds for this connector that no journal row finishes: read back and take them."""
        taken = 0
        for process_id in reserved_process_ids(self.client):
            while True:
                with self._journal() as journal:
                    batch_id = journal.start(self.connector, utc_iso())
                batch = fetch_batch(self.client, limit=MAX_BATCH, process_id=process_id)
                if not batch.events:
                    with self._journal() as journal:
                        journal.forget(batch_id, utc_iso())
                    break
                log.warning("offline events: recovering %d record(s) of a reserved batch whose answer was lost",
                            len(batch.events))
                taken += self._finish(inbox, batch_id, process_id, batch.events)
                self.stats["recovered"] += 1
        with self._journal() as journal:
            for row in journal.open(self.connector):
                if row.status == FETCHING:
                    journal.forget(row.id, utc_iso())  # its reservation, if it made one, was just taken
            journal.prune(utc_iso_days_ago(7))
        self._next_scan = self._clock() + self.scan_every
        return taken

    # --- storage and the one-poller lock -----------------------------------------------------------

    @contextmanager
    def _journal(self) -> Iterator[OfflineBatches]:
        conn = connect(self.path, synchronous="FULL")  # every journal step survives a power cut
        try:
            yield OfflineBatches(conn)
        finally:
            conn.close()

    def _turn(self) -> AbstractContextManager[bool]:
        """This poller's turn: False while another daemon on the same cache is polling."""
        return file_lock(f"{self.path}.offline.lock")


def utc_iso_days_ago(days: int) -> str:
    return utc_iso(datetime.now(UTC) - timedelta(days=days))


def register(bridge: Any) -> None:
    """The daemon's plugin hook: poll the offline queue when a Bitrix24 application is connected with events bound."""
    from crmbridge.connectors.bitrix24.app import oauth_auth
    from crmbridge.connectors.bitrix24.oauth import CRM, OAuthAuth
    from crmbridge.connectors.oauth import TokenStore

    settings = bridge.settings
    if not settings.bitrix24_oauth_configured:
        return
    if not Path(bridge.cache_path).exists() or TokenStore(bridge.cache_path, CRM).current() is None:
        log.warning("offline events: CRMBRIDGE_BITRIX24_CLIENT_ID is set but no application is connected in %s; "
                    "run `crmbridge connect`", bridge.cache_path)
        return
    pair = TokenStore(bridge.cache_path, CRM).require()
    offline = pair.details.get("offline")
    if not isinstance(offline, Mapping) or not offline.get("events"):
        log.warning("offline events: none are bound; run `crmbridge connect --events-only` to bind them")
        return
    client = bridge.client
    if client is None or not isinstance(getattr(client, "auth", None), OAuthAuth):
        auth = oauth_auth(settings)
        if auth is None:
            return
        client = Bitrix24Client(auth=auth, rate=settings.bitrix24_rate, burst=settings.bitrix24_burst,
                                operating_limit=settings.bitrix24_operating_limit,
                                max_attempts=settings.bitrix24_max_attempts)

    def counted(events: Sequence[InboxEvent]) -> None:
        for event in events:
            bridge.metrics.events_received.labels(SOURCE, event.event).inc()

    poller = OfflinePoller(client, bridge.cache_path, connector=str(offline.get("connector") or ""),
                           reserve=bool(offline.get("reserve", True)), on_accepted=counted)
    from crmbridge.live.bridge import EventSource

    bridge.add_source(EventSource(SOURCE, poller.poll, interval=settings.bitrix24_offline_poll_seconds))
    log.info("offline events: polling every %g s (connector %r)", settings.bitrix24_offline_poll_seconds,
             poller.connector)

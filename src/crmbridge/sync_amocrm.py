"""Full, incremental and resumable sync of an amoCRM account into the same cache tables as Bitrix24.

Full: leads, contacts, companies and tasks page by page at 250 (id ascending), the events feed at 100
(bounded by the run's start, so its pages stay put), each page committed with its page number, so a run
killed at any point resumes there. A page re-read on resume and a look-up by id of whatever a full read
did not see keep a deletion that shifted the pages from making a live lead look deleted.
Incremental: leads and tasks by `filter[updated_at][from]`, events by `filter[created_at][from]`, each from
the account's clock at the previous run's start minus the overlap, de-duplicated by id: three requests when
little changed. Metadata (account, pipelines, fields, users) and client cards edited on their own are
re-read when older than their refresh period, on a full sync, and when a lead names an unknown status.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from crmbridge import deletions
from crmbridge.cache import amocrm_rows as rows
from crmbridge.cache.rows import as_int, dumps
from crmbridge.cache.store import Cache
from crmbridge.cache.sync_state import SYNC_LOCK_WAIT, SyncState
from crmbridge.connectors.amocrm.client import Page
from crmbridge.connectors.amocrm.reader import AmoCRMReader, AmoReference
from crmbridge.errors import AuthError, ConfigError
from crmbridge.notices import notice
from crmbridge.sync import ProgressCallback, SyncSummary, utc_now_iso

log = logging.getLogger("crmbridge.amocrm")

#: metadata older than this is re-read by an incremental sync
REFERENCE_EVERY = timedelta(hours=1)
#: contacts and companies edited on their own are looked for this often (leads' own clients come with them)
CLIENTS_EVERY = timedelta(hours=1)
RawRecord = dict[str, Any]


def _stamp(moment: str | None) -> float | None:
    if not moment:
        return None
    try:
        return datetime.fromisoformat(moment).timestamp()
    except ValueError:
        return None


class AmoCRMSyncer:
    """Runs one sync of an amoCRM account; the reader (HTTP) and the cache (SQLite) are injected."""

    def __init__(
        self,
        reader: AmoCRMReader,
        cache: Cache | Callable[[], AbstractContextManager[Cache]],
        *,
        overlap: timedelta = timedelta(minutes=5),
        progress: ProgressCallback | None = None,
        now: Callable[[], str] = utc_now_iso,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        reference_every: timedelta = REFERENCE_EVERY,
        clients_every: timedelta = CLIENTS_EVERY,
        lock_wait: float = SYNC_LOCK_WAIT,
        break_lock: bool = False,
        confirm_deletions: bool = False,
        max_deleted_share: float = deletions.DEFAULT_MAX_SHARE,
    ) -> None:
        self.reader = reader
        # as on Bitrix24: a lead or task leaves the cache only when reading it back by id says it is gone, and
        # more than this share of a table at once waits for `sync --full --confirm-deletions`
        self.confirm_deletions = confirm_deletions
        self.max_deleted_share = max_deleted_share
        self.lock_wait = lock_wait
        self.break_lock = break_lock
        self._cache_or_factory = cache
        self.overlap = overlap
        self.progress = progress or (lambda entity, count: None)
        self.now = now
        self.monotonic = monotonic
        self.wall = wall
        self.reference_every = reference_every
        self.clients_every = clients_every
        self.zone: tzinfo = timezone.utc
        self.currency: str | None = None
        self._started_wall = 0.0

    # --- the run ------------------------------------------------------------------------------

    def run(self, *, full: bool = False) -> SyncSummary:
        started = self.monotonic()
        requests_before = self.reader.client.requests_made
        if isinstance(self._cache_or_factory, Cache):
            self.cache = self._cache_or_factory
            return self._locked_run(full, started, requests_before)
        doomed: Path | None = None
        try:
            # a cache this run opened is this run's to close
            with self._cache_or_factory() as self.cache:
                fresh = self.cache.account.get() is None and self.cache.deals.empty()
                try:
                    return self._locked_run(full, started, requests_before)
                except (AuthError, ConfigError):
                    if fresh:
                        doomed = self.cache.path  # a wrong token or address leaves no empty cache behind
                    raise
        finally:
            if doomed is not None:
                for suffix in ("", "-wal", "-shm"):
                    Path(str(doomed) + suffix).unlink(missing_ok=True)

    def _locked_run(self, full: bool, started: float, requests_before: int) -> SyncSummary:
        """One sync at a time per cache: another one waits `lock_wait` seconds, then says who holds it."""
        with self.cache.syncs.writer(wait=self.lock_wait, break_lock=self.break_lock):
            return self._run(full, started, requests_before)

    def _run_time(self) -> float:
        """The account's clock when this run started: our start time moved by the skew its Date headers show
        (asked after the run's first request; our own clock only if the account never answered)."""
        return self._started_wall + (self.reader.client.clock_skew or 0.0)

    def _run(self, full: bool, started: float, requests_before: int) -> SyncSummary:
        # a second early: the account's Date headers have one-second steps, and a cursor may only err early
        self._started_wall = self.wall() - 1.0
        deals_state = self.cache.syncs.get("deals")
        resuming = deals_state.status == "running" and deals_state.mode == "full"
        mode = "full" if (full or resuming or deals_state.cursor is None) else "incremental"
        summary = SyncSummary(mode=mode, resumed=resuming)
        run_id = self.cache.syncs.start_run(mode, self.now())
        try:
            held = self.cache.account.get()
            if mode == "full" or held is None or self._due("reference", self.reference_every):
                reference = self.reader.reference_data()
                self._write_reference(reference, summary)
                held = self.cache.account.get()
            else:
                self.cache.account.claim("amocrm", self.reader.client.account, self.now())
            self._settle_account(held)
            if mode == "incremental" and held is not None and held.get("filter_enabled") == 0:
                log.warning("amoCRM API filtering is off for this account: an incremental sync re-reads everything")
                mode = summary.mode = "full"
            self._entities(summary, mode == "full")
            self._refresh_reference_if_unknown_statuses(summary)
        except BaseException:
            summary.http_requests = self.reader.client.requests_made - requests_before
            summary.seconds = round(self.monotonic() - started, 3)
            self.cache.syncs.finish_run(run_id, "failed", self.now(), summary.as_dict())
            raise
        summary.http_requests = self.reader.client.requests_made - requests_before
        summary.seconds = round(self.monotonic() - started, 3)
        self.cache.syncs.finish_run(run_id, "done", self.now(), summary.as_dict())
        self.cache.judged.compact_marks()  # one mark per changed deal until the next audit reads them
        return summary

    def _due(self, entity: str, every: timedelta) -> bool:
        finished = _stamp(self.cache.syncs.get(entity).finished_at)
        return finished is None or datetime.now(timezone.utc).timestamp() - finished >= every.total_seconds()

    def _settle_account(self, held: dict[str, Any] | None) -> None:
        self.currency = held.get("currency") if held else None
        name = held.get("timezone") if held else None
        try:
            self.zone = ZoneInfo(name) if name else timezone.utc
        except (ZoneInfoNotFoundError, ValueError):
            self.zone = timezone.utc

    # --- reference lists ------------------------------------------------------------------------

    def _write_reference(self, reference: AmoReference, summary: SyncSummary) -> None:
        account = reference.account
        with self.cache.atomic():
            self.cache.account.claim(
                "amocrm", self.reader.client.account, self.now(), account_id=str(account.get("id")),
                name=account.get("name"), timezone=reference.timezone, currency=account.get("currency"),
                filter_enabled=int(reference.filter_enabled), raw=dumps(account))
            summary.pipelines, summary.stages, summary.deal_fields, summary.users = self.cache.reference.replace(
                map(rows.pipeline_row, reference.pipelines),
                [row for pipeline in reference.pipelines for row in rows.stage_rows(pipeline)],
                map(rows.deal_field_row, reference.lead_fields), map(rows.user_row, reference.users))
            # the user groups name the departments the KPIs and the report group managers by
            summary.departments = self.cache.kpi.replace_departments(map(rows.group_row, reference.groups))
            self._finish_state("reference")

    def _refresh_reference_if_unknown_statuses(self, summary: SyncSummary) -> None:
        """A lead in a status the cache does not know: a pipeline or status was added; re-read the metadata."""
        unknown = self.cache.deals.in_unknown_stages()
        if unknown and self.cache.reference.has_stages() and not summary.pipelines:
            log.info("amocrm: %d leads are in statuses the cache does not know; re-reading pipelines and fields", unknown)
            self._write_reference(self.reader.reference_data(), summary)

    def _finish_state(self, entity: str, **fields: Any) -> None:
        state = self.cache.syncs.get(entity)
        state.status, state.finished_at = "done", self.now()
        for key, value in fields.items():
            setattr(state, key, value)
        self.cache.syncs.save(state)

    # --- the entities, each full (resumable) or incremental by its own state ------------------------

    def _entities(self, summary: SyncSummary, full: bool) -> None:
        """Leads, contacts, companies, the events feed and tasks. Each entity resumes its own interrupted full
        read, even when the leads themselves are read incrementally (a run killed while reading tasks)."""
        for entity in ("deals", "contacts", "companies", "stage_history", "tasks"):
            state = self.cache.syncs.get(entity)
            resuming = state.status == "running" and state.mode == "full"
            if full or resuming or state.cursor is None:
                self._full_entity(entity, state, resuming, summary)
            elif not self._incremental_entity(entity, summary):
                continue  # not looked at in this run: its cursor stays where the last look left it
            self._close_state(entity, self._run_time())

    def _full_entity(self, entity: str, state: SyncState, resuming: bool, summary: SyncSummary) -> None:
        # a resumed read goes on as of when it first started: its cursor (and the events' bound) is that time,
        # so what changed on pages committed before the kill is read by the next incremental run
        started = _stamp(state.run_cursor) if resuming else None
        bound = int(started if started is not None else self._run_time())
        run_cursor = datetime.fromtimestamp(bound, timezone.utc).isoformat()
        if entity == "deals":
            started_at = self._paged(state, resuming, lambda start: self.reader.lead_pages(start=start),
                                     lambda page, st: self._write_leads(page.items, summary, st, page.number),
                                     run_cursor)
            summary.deals_deleted += self._settle_absent_leads(started_at, summary)
        elif entity in ("contacts", "companies"):
            self._paged(state, resuming, lambda start: self.reader.client_pages(entity, start=start),
                        lambda page, st: self._write_clients(entity, page.items, summary, st, page.number), run_cursor)
        elif entity == "stage_history":
            # the feed is read up to the read's start: a fixed set, so a resumed read's pages are where they were
            self._paged(state, resuming, lambda start: self.reader.event_pages(start=start, created_to=bound),
                        lambda page, st: self._write_events(page.items, summary, st, page.number), run_cursor)
        else:
            started_at = self._paged(state, resuming, lambda start: self.reader.task_pages(start=start),
                                     lambda page, st: self._write_tasks(page.items, summary, st, page.number),
                                     run_cursor)
            self._settle_absent_tasks(started_at, summary)

    def _incremental_entity(self, entity: str, summary: SyncSummary) -> bool:
        """What changed since the entity's cursor; False when the entity is not due for a look in this run."""
        since = self._since(entity)
        if entity == "deals":
            for page in self.reader.lead_pages(updated_from=since):
                self._write_leads(page.items, summary, None)
        elif entity in ("contacts", "companies"):
            if not self._due(entity, self.clients_every):
                return False
            for page in self.reader.client_pages(entity, updated_from=since):
                self._write_clients(entity, page.items, summary, None)
        elif entity == "stage_history":
            for page in self.reader.event_pages(created_from=since):
                self._write_events(page.items, summary, None)
        else:
            for page in self.reader.task_pages(updated_from=since):
                self._write_tasks(page.items, summary, None)
        return True

    def _paged(self, state: SyncState, resuming: bool, pages: Callable[[int], Iterator[Page]],
               write: Callable[[Page, SyncState], None], run_cursor: str) -> str:
        """Read an entity page by page, committing each page with its number; returns when the read started."""
        if not resuming:
            state = SyncState(entity=state.entity, mode="full", status="running", cursor=state.cursor,
                              run_cursor=run_cursor, last_id=0, started_at=self.now())
            self.cache.syncs.save(state)
        # resume on the last committed page again: a deletion meanwhile shifts later rows one page back
        for page in pages(max(1, state.last_id or 1)):
            write(page, state)
        return state.started_at or self.now()

    def _close_state(self, entity: str, run_time: float) -> None:
        state = self.cache.syncs.get(entity)
        full = state.status == "running"
        state.mode = "full" if full else "incremental"
        state.cursor = (state.run_cursor if full and state.run_cursor
                        else datetime.fromtimestamp(run_time, timezone.utc).isoformat())
        state.status, state.run_cursor = "done", None
        state.finished_at = self.now()
        self.cache.syncs.save(state)

    def _settle_absent_leads(self, started_at: str, summary: SyncSummary) -> int:
        """Leads a full read did not see: looked up by id; those the account still has come back, the rest are
        marked deleted (beyond the share, only with --confirm-deletions). Without API filtering the look-up
        proves nothing, and nothing is marked."""
        absent = self.cache.deals.not_synced_since(started_at)
        if not absent:
            return 0
        cached = self.cache.deals.count_live()
        read_back = None
        if deletions.worth_reading_back(len(absent), cached, max_share=self.max_deleted_share,
                                        confirmed=self.confirm_deletions):
            found = self.reader.leads_by_ids(absent)
            if found is None:
                log.warning("amocrm: %d cached leads were not in the full read, and the account ignores filter[id]: "
                            "they are left as they are", len(absent))
                return 0
            if found:
                self._write_leads(found, summary, None)
            read_back = deletions.ReadBack(found=found, missing=sorted(
                set(absent) - {as_int(lead.get("id")) for lead in found}))
        verdict = self._verdict("deals", absent, cached, read_back, summary)
        with self.cache.atomic():
            self.cache.deals.mark_deleted_ids(verdict.delete)
        return len(verdict.delete)

    def _settle_absent_tasks(self, started_at: str, summary: SyncSummary) -> None:
        absent = self.cache.deals.linked_not_synced_since("tasks", started_at)
        if not absent:
            return
        cached = self.cache.deals.count_linked("tasks")
        kept: list[RawRecord] = []
        read_back = None
        if deletions.worth_reading_back(len(absent), cached, max_share=self.max_deleted_share,
                                        confirmed=self.confirm_deletions):
            found = self.reader.tasks_by_ids(absent)
            if found is None:
                return
            kept = [task for task in found if task.get("entity_type") == "leads"]
            # a task moved off its lead is gone from the leads as much as a deleted one
            read_back = deletions.ReadBack(found=kept, missing=sorted(
                set(absent) - {as_int(task.get("id")) for task in kept}))
        verdict = self._verdict("tasks", absent, cached, read_back, summary)
        synced_at = self.now()
        with self.cache.atomic():
            self.cache.deals.write_linked("tasks", [{**rows.task_row(task, self.zone), "synced_at": synced_at}
                                                    for task in kept])
            self.cache.deals.delete_linked("tasks", verdict.delete)

    def _verdict(self, entity: str, absent: list[int], cached: int, read_back: deletions.ReadBack | None,
                 summary: SyncSummary) -> deletions.DeletionVerdict:
        """What may leave the cache; held deletions and restored records are told (a notice, the summary)."""
        verdict = deletions.verdict(entity, absent, cached, read_back, max_share=self.max_deleted_share,
                                    confirmed=self.confirm_deletions)
        if verdict.held:
            summary.deletions_held[entity] = len(verdict.held)
        if verdict.warning:
            summary.warnings.append(verdict.warning)
            notice(verdict.warning)
        return verdict

    # --- incremental -------------------------------------------------------------------------------

    def _since(self, entity: str) -> int | None:
        cursor = _stamp(self.cache.syncs.get(entity).cursor)
        return None if cursor is None else int(cursor - self.overlap.total_seconds())

    # --- writing pages -----------------------------------------------------------------------------

    def _write_leads(self, leads: list[RawRecord], summary: SyncSummary, state: SyncState | None,
                     page: int | None = None) -> None:
        """A page of leads (and, in an incremental run, the clients the cache does not have yet), one transaction."""
        if not leads and state is None:
            return
        synced_at = self.now()
        deal_rows = [rows.deal_row(lead, synced_at, self.zone, self.currency) for lead in leads]
        changed = self.cache.deals.changed_ids(deal_rows)
        clients: dict[str, list[RawRecord]] = {"contacts": [], "companies": []}
        if state is None:  # a full run reads every contact and company by itself
            for entity, column in (("contacts", "contact_id"), ("companies", "company_id")):
                wanted = {row[column] for row in deal_rows if row[column]}
                missing = self.cache.deals.missing_clients(entity, wanted)
                if missing:
                    clients[entity] = self.reader.clients_by_ids(entity, missing) or []
        with self.cache.atomic():
            self.cache.deals.upsert(deal_rows, map(rows.contact_row, clients["contacts"]),
                                    map(rows.company_row, clients["companies"]))
            if state is not None and page is not None:
                state.last_id = page
                self.cache.syncs.save(state)
        summary.deals_read += len(deal_rows)
        summary.deals_changed += len(changed)
        summary.contacts_read += len(clients["contacts"])
        summary.companies_read += len(clients["companies"])
        self.progress("deals", len(deal_rows))

    def _write_clients(self, entity: str, records: list[RawRecord], summary: SyncSummary,
                       state: SyncState | None, page: int | None = None) -> None:
        to_row = rows.contact_row if entity == "contacts" else rows.company_row
        with self.cache.atomic():
            self.cache.deals.upsert_clients(entity, map(to_row, records))
            if state is not None and page is not None:
                state.last_id = page
                self.cache.syncs.save(state)
        if entity == "contacts":
            summary.contacts_read += len(records)
        else:
            summary.companies_read += len(records)
        self.progress(entity, len(records))

    def _write_events(self, events: list[RawRecord], summary: SyncSummary, state: SyncState | None,
                      page: int | None = None) -> None:
        history = [rows.stage_history_row(event, self.zone) for event in events
                   if event.get("type") == rows.HISTORY_EVENT]
        # the newest word on each lead's life wins: deleted -> marked, restored -> read again
        life: dict[int, tuple[int, str]] = {}
        for event in events:
            if event.get("type") in rows.LIFE_EVENTS and as_int(event.get("entity_id")) is not None:
                lead_id, at = int(event["entity_id"]), as_int(event.get("created_at")) or 0
                if lead_id not in life or life[lead_id][0] <= at:
                    life[lead_id] = (at, str(event["type"]))
        restored = [lead_id for lead_id, (_, kind) in life.items() if kind == "lead_restored"]
        deleted = [lead_id for lead_id, (_, kind) in life.items() if kind == "lead_deleted"]
        if restored:
            leads = self.reader.leads_by_ids(restored) or []
            if leads:
                self._write_leads(leads, summary, None)
        with self.cache.atomic():
            self.cache.deals.upsert_history(history)
            self.cache.deals.mark_deleted_ids(deleted)
            if state is not None and page is not None:
                state.last_id = page
                self.cache.syncs.save(state)
        summary.stage_history_read += len(history)
        summary.deals_deleted += len(deleted)
        self.progress("stage_history", len(history))

    def _write_tasks(self, tasks: list[RawRecord], summary: SyncSummary, state: SyncState | None,
                     page: int | None = None) -> None:
        synced_at = self.now()
        task_rows = [{**rows.task_row(task, self.zone), "synced_at": synced_at} for task in tasks]
        with self.cache.atomic():
            self.cache.deals.write_linked("tasks", task_rows)
            if state is not None and page is not None:
                state.last_id = page
                self.cache.syncs.save(state)
        summary.tasks_read += sum(1 for row in task_rows if row["deal_id"] is not None)
        self.progress("tasks", len(task_rows))

"""Full, incremental and resumable sync of a Bitrix24 portal into the cache.

A full sync walks every deal by ID and commits each chunk together with its cursor (`last_id`),
so a run killed at any point resumes where its last commit ended. An incremental sync reads what
changed since the portal time the previous run started at (minus an overlap), de-duplicated by id.
The cursor only advances when a run finishes, so an interrupted incremental run simply repeats.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from functools import partial
from itertools import islice
from typing import Any

from crmbridge import deletions
from crmbridge.cache import rows as cache_rows
from crmbridge.cache.rejected import Rejected, plural
from crmbridge.cache.store import Cache
from crmbridge.cache.lock import WriterLock
from crmbridge.cache.sync_state import SYNC_LOCK_WAIT, SyncState
from crmbridge.connectors.bitrix24.client import PAGE_SIZE
from crmbridge.connectors.bitrix24.reader import Bitrix24Reader, FirstPages, RawRecord, stage_entity_id
from crmbridge.notices import notice

#: rows committed per transaction: one HTTP request of the fast list pattern brings up to 2,500
CHUNK_ROWS = 2500

ProgressCallback = Callable[[str, int], None]
#: re-read before the incremental cursor unless CRMBRIDGE_SYNC_OVERLAP_MINUTES says otherwise
DEFAULT_OVERLAP = timedelta(minutes=5)
#: a record larger than this (its JSON) is set aside, not cached (CRMBRIDGE_SYNC_MAX_RECORD_KB)
DEFAULT_MAX_RECORD_BYTES = 1024 * 1024
#: records named in a warning about records set aside (the rest are counted)
NAMED = 3
#: stage-history IDs re-read behind the incremental cursor (one 50-row page costs ~0.15 s of method time)
HISTORY_ID_MARGIN = 40  # < a page (50): an idle poll's history page is never full, so it costs no second request


@dataclass
class SyncSummary:
    """What a sync did; `--json` prints it for scheduled jobs."""

    mode: str = "incremental"
    resumed: bool = False
    deals_read: int = 0
    deals_changed: int = 0
    deals_deleted: int = 0
    contacts_read: int = 0
    companies_read: int = 0
    stage_history_read: int = 0
    tasks_read: int = 0
    todos_read: int = 0
    communications_read: int = 0
    plan_items: int = 0
    users: int = 0
    departments: int | None = None  # None: the webhook lacks the department scope
    currencies: int = 0
    pipelines: int = 0
    stages: int = 0
    deal_fields: int = 0
    http_requests: int = 0
    seconds: float = 0.0
    operating_seconds: dict[str, float] = field(default_factory=dict)
    #: `user.admin` of the user the reads run as (Bitrix24): False means it sees only some tasks; None unknown
    webhook_admin: bool | None = None

    #: records set aside because crmbridge cannot use them (kept raw in rejected_records), per table
    skipped: dict[str, int] = field(default_factory=dict)
    #: records a full read did not see but did not remove (too many at once without --confirm-deletions), per table
    deletions_held: dict[str, int] = field(default_factory=dict)
    #: what the person running the sync should know (also told as notices)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def add_tasks(self, count: int) -> None:
        self.tasks_read += count

    def add_todos(self, count: int) -> None:
        self.todos_read += count

    def add_communications(self, count: int) -> None:
        self.communications_read += count


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def minus_overlap(portal_time: str, overlap: timedelta) -> str:
    """Move a portal timestamp back by the overlap, keeping the portal's own offset."""
    moment = datetime.fromisoformat(portal_time)
    return (moment - overlap).isoformat(timespec="seconds")


def usable_moment(text: Any) -> str | None:
    """`text` when it is a date-time a cursor can be: ISO 8601 with an offset, in a sane year; else None.

    The portal's clock (`time.date_start`) becomes the next cursor, so a malformed one ("20.11.2026 10:00:00",
    a year 1 with +14:00) must never be stored: every later sync would fail on it.
    """
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
        in_utc = moment.astimezone(timezone.utc) if moment.tzinfo is not None else None
    except (ValueError, OverflowError):
        return None
    if in_utc is None or not 1971 <= in_utc.year <= 9000:
        return None
    return text


def then(first: list[RawRecord] | None, rest: Callable[[int], Iterator[RawRecord]]) -> Iterator[RawRecord]:
    """A list whose first page came in the poll's batch: that page, and only if it was full, the rest after its last id."""
    if first is None:
        yield from rest(0)
        return
    yield from first
    if len(first) >= PAGE_SIZE:
        # a row without a usable id (set aside by the sync) does not move the cursor
        ids = [row_id for row in first if isinstance(row, dict)
               and (row_id := cache_rows.as_int(row.get("ID", row.get("id")))) is not None]
        yield from rest(max(ids, default=0))


def chunks(records: Iterable[RawRecord], size: int | None = None) -> Iterator[list[RawRecord]]:
    iterator = iter(records)
    size = size or CHUNK_ROWS
    while chunk := list(islice(iterator, size)):
        yield chunk


class Syncer:
    """Runs one sync; the reader (HTTP) and the cache (SQLite) are injected."""

    def __init__(
        self,
        reader: Bitrix24Reader,
        cache: Cache | Callable[[], AbstractContextManager[Cache]],
        *,
        overlap: timedelta = DEFAULT_OVERLAP,
        progress: ProgressCallback | None = None,
        plan_entity_type: int | None = None,
        now: Callable[[], str] = utc_now_iso,
        monotonic: Callable[[], float] = time.monotonic,
        metadata_max_age: timedelta = timedelta(hours=1),
        lock_wait: float = SYNC_LOCK_WAIT,
        break_lock: bool = False,
        confirm_deletions: bool = False,
        max_deleted_share: float = deletions.DEFAULT_MAX_SHARE,
        max_record_bytes: int | None = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        self.reader = reader
        #: another sync of the same cache: wait this long for it, then say who holds it (CacheLocked)
        self.lock_wait = lock_wait
        self.break_lock = break_lock
        self._lock: WriterLock | None = None
        #: contacts and companies this run has read already (deals of one client fall into many chunks)
        self._clients_read: dict[str, set[int]] = {"contacts": set(), "companies": set()}
        #: an incremental sync re-reads pipelines, stages, fields and users when they are older than this
        #: (or when a deal names a stage or pipeline the cache does not know); a full sync always does
        self.metadata_max_age = metadata_max_age
        # a factory is opened only after the portal answered, so bad input leaves no file behind
        self._cache_or_factory = cache
        self.overlap = overlap
        # the smart process that holds plans (binding `plans_source`), read whole on every sync
        self.plan_entity_type = plan_entity_type
        self.granted: set[str] = set()
        # deletion needs evidence: vanished ids are read back, and a large share waits for a person's word
        self.confirm_deletions = confirm_deletions
        self.max_deleted_share = max_deleted_share
        self.max_record_bytes = max_record_bytes
        self.warnings: list[str] = []
        self.skipped: dict[str, list[Rejected]] = {}
        self._cursors_told: set[str] = set()
        self._with_rejected: set[str] | None = None
        self.progress = progress or (lambda entity, count: None)
        self.now = now
        self.monotonic = monotonic

    def run(self, *, full: bool = False) -> SyncSummary:
        started = self.monotonic()
        requests_before = self.reader.client.requests_made
        self.warnings, self.skipped, self._cursors_told, self._with_rejected = [], {}, set(), None
        if isinstance(self._cache_or_factory, Cache):
            # an open cache (the daemon, scheduled jobs, enforce): an incremental poll asks for the scopes in
            # the same batch as the first pages of every list, so an idle poll is one request
            self.cache = self._cache_or_factory
            return self._locked_run(full, None, started, requests_before)
        # Ask the portal first: a wrong URL, a missing scope or an outage fails before anything is written.
        granted, portal_time = self.reader.check_scopes()
        self.granted = set(granted)
        portal_time = self._portal_clock(portal_time)
        # a cache this run opened is this run's to close
        with self._cache_or_factory() as self.cache:
            return self._locked_run(full, portal_time, started, requests_before)

    def _heartbeat(self) -> None:
        """Still this run's cache? A `sync --break-lock` elsewhere stops this run here (LockLost)."""
        if self._lock is not None:
            self._lock.heartbeat()

    def _locked_run(self, full: bool, portal_time: str | None, started: float, requests_before: int) -> SyncSummary:
        self._clients_read = {"contacts": set(), "companies": set()}
        with self.cache.syncs.writer(wait=self.lock_wait, break_lock=self.break_lock) as self._lock:
            return self._run(full, portal_time, started, requests_before)

    def _run(self, full: bool, portal_time: str | None, started: float, requests_before: int) -> SyncSummary:
        deals_state = self._checked(self.cache.syncs.get("deals"), "deals")
        resuming = deals_state.status == "running" and deals_state.mode == "full"
        mode = "full" if (full or resuming or deals_state.cursor is None) else "incremental"
        summary = SyncSummary(mode=mode, resumed=resuming)
        first: FirstPages | None = None
        if mode == "incremental":
            first = self.reader.first_pages(self._first_page_params(deals_state), with_scope=portal_time is None)
            portal_time = portal_time or first.portal_time
            if first.scopes is not None:
                self.granted = set(first.scopes)
        elif portal_time is None:
            granted, portal_time = self.reader.check_scopes()
            self.granted = set(granted)
        portal_time = self._portal_clock(portal_time)
        pages = first.pages if first is not None else {}
        # one cache, one account: a cache of another portal (or of an amoCRM account) is refused before any write
        self.cache.account.claim("bitrix24", self.reader.client.account, self.now())
        if self.reader.admin is not None:
            # a non-admin sees only the tasks it may: enforcement refuses to act on what it cannot see
            self.cache.account.record_rights(self.reader.admin, self.now())
        # asked in this run, else what the last run that asked found (an incremental run may not ask)
        summary.webhook_admin = self.reader.admin if self.reader.admin is not None else self.cache.account.rights()
        run_id = self.cache.syncs.start_run(mode, self.now())
        try:
            reference_read = mode == "full" or self._metadata_due()
            if reference_read:
                self._sync_reference(summary)
            if mode == "full":
                self._full_deals(deals_state, portal_time, resuming, summary)
            else:
                self._incremental_deals(deals_state, portal_time, summary, pages)
            full_lists = mode == "full"
            self._drain([
                self._stage_history_stream(full=full_lists and not resuming, summary=summary,
                                           first=pages.get("stage_history")),
                self._dated_stream("tasks", "tasks.task.list", full_lists, portal_time, self.reader.iter_tasks,
                                   "changed_since", partial(cache_rows.task_row, binding_asked=True), summary.add_tasks,
                                   pages.get("tasks"), summary=summary),
                self._dated_stream("activities", "crm.activity.list", full_lists, portal_time, self.reader.iter_todos,
                                   "updated_since", cache_rows.activity_row, summary.add_todos,
                                   pages.get("activities"), summary=summary),
                self._dated_stream("communications", "crm.activity.list", full_lists, portal_time,
                                   self.reader.iter_communications, "updated_since", cache_rows.communication_row,
                                   summary.add_communications, pages.get("communications"), deals_only=False,
                                   summary=summary),
            ])
            if not reference_read and self._unknown_structure():
                self._sync_reference(summary)  # a new pipeline or stage appeared: the check needs it now
        except BaseException:
            summary.http_requests = self.reader.client.requests_made - requests_before
            summary.seconds = round(self.monotonic() - started, 3)
            self._tell(summary)
            self.cache.syncs.finish_run(run_id, "failed", self.now(), summary.as_dict())
            raise
        summary.http_requests = self.reader.client.requests_made - requests_before
        summary.seconds = round(self.monotonic() - started, 3)
        summary.operating_seconds = dict(self.reader.client.operating_seconds())
        self._tell(summary)
        self.cache.syncs.finish_run(run_id, "done", self.now(), summary.as_dict())
        self.cache.judged.compact_marks()  # one mark per changed deal until the next audit reads them
        return summary

    # --- what cannot be used, and what the person running the sync should know ------------------------------

    def _warn(self, text: str) -> None:
        self.warnings.append(text)

    def _tell(self, summary: SyncSummary) -> None:
        """Warnings into the summary and onto the screen (notices): records set aside, held deletions, cursors."""
        for entity, records in self.skipped.items():
            summary.skipped[entity] = len(records)
            named = "; ".join(f"{record.label} ({record.reason})" for record in records[:NAMED])
            more = f"; and {len(records) - NAMED:,} more" if len(records) > NAMED else ""
            self.warnings.insert(0, f"skipped {len(records):,} {plural(entity, len(records))} crmbridge cannot use "
                                    f"(kept in the rejected_records table): {named}{more}")
        summary.warnings = list(self.warnings)
        for text in self.warnings:
            notice(text)

    def _portal_clock(self, reported: str | None) -> str:
        """The portal's clock as the next cursor; one that is not a usable date-time is replaced by ours, and said."""
        found = usable_moment(reported)
        if found is not None:
            return found
        if reported is not None:
            self._warn(f"the portal's clock answered {str(reported)[:40]!r}, not a date-time with an offset; "
                       "this computer's clock (UTC) is the next sync's starting point instead")
        return datetime.now(timezone.utc).isoformat(timespec="seconds")

    def _checked(self, state: SyncState, entity: str) -> SyncState:
        """A stored cursor that is not a usable date-time (an older version stored the portal's clock unchecked)
        is dropped: this run reads the entity whole again, and says so."""
        if state.cursor is not None and usable_moment(state.cursor) is None:
            if entity not in self._cursors_told:
                self._cursors_told.add(entity)
                self._warn(f"the stored {entity} cursor {str(state.cursor)[:40]!r} is not a date-time; this sync "
                           f"reads every {ENTITY_WORDS.get(entity, entity)} again instead")
            state.cursor = None
            if state.status != "running":
                state.mode = None
        return state

    def _usable(self, entity: str, records: Iterable[Any], to_row: Callable[[Any], dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows of the records crmbridge can use; the others are kept raw in rejected_records and counted."""
        rows, unusable = cache_rows.usable(records, to_row, max_bytes=self.max_record_bytes)
        if unusable:
            found = [Rejected(entity, cache_rows.record_id_of(raw), reason, raw) for raw, reason in unusable]
            with self.cache.atomic():
                self.cache.rejected.keep(found, self.now())
            self.skipped.setdefault(entity, []).extend(found)
        if rows and entity in self._rejected_entities():
            # read fine now: no longer a rejected record
            key = PRIMARY_KEY_OF.get(entity, "id")
            with self.cache.atomic():
                self.cache.rejected.forget(entity, [row[key] for row in rows])
        return rows

    def _rejected_entities(self) -> set[str]:
        if self._with_rejected is None:
            self._with_rejected = self.cache.rejected.entities()
        return self._with_rejected | set(self.skipped)

    def _settle_vanished(self, entity: str, since: str, summary: SyncSummary) -> int:
        """After a full read: what it did not see is read back by id; only what the portal confirms gone (and not
        too many at once) leaves the cache. Returns how many left."""
        deals_, kpi = self.cache.deals, self.cache.kpi
        if entity == "deals":
            unseen, cached = deals_.not_synced_since(since), deals_.count_live()
        elif entity == "communications":
            unseen, cached = kpi.communications_not_synced_since(since), kpi.count_communications()
        else:
            unseen, cached = deals_.linked_not_synced_since(entity, since), deals_.count_linked(entity)
        seen_unusable = self.cache.rejected.seen_since(entity, since)  # sent, though crmbridge could not use them
        vanished = [record_id for record_id in unseen if record_id not in seen_unusable]
        if not vanished:
            return 0
        read_back = None
        if deletions.worth_reading_back(len(vanished), cached, max_share=self.max_deleted_share,
                                        confirmed=self.confirm_deletions):
            read_back = {"deals": self.reader.deals_by_ids, "tasks": self.reader.tasks_by_ids,
                         "activities": self.reader.todos_by_ids,
                         "communications": self.reader.communications_by_ids}[entity](vanished)
            self._restore(entity, read_back.found, summary)
        verdict = deletions.verdict(entity, vanished, cached, read_back, max_share=self.max_deleted_share,
                                    confirmed=self.confirm_deletions)
        if verdict.held:
            summary.deletions_held[entity] = len(verdict.held)
        if verdict.warning:
            self._warn(verdict.warning)
        with self.cache.atomic():
            if entity == "deals":
                deals_.mark_deleted_ids(verdict.delete)
            elif entity == "communications":
                kpi.delete_communications(verdict.delete)
            else:
                deals_.delete_linked(entity, verdict.delete)
        return len(verdict.delete)

    def _restore(self, entity: str, records: list[RawRecord], summary: SyncSummary) -> None:
        """Records the list missed but the read-back found: written like any other."""
        if not records:
            return
        if entity == "deals":
            for chunk in chunks(records):
                self._write_deals(chunk, summary, state_update=None)
            return
        to_row = {"tasks": partial(cache_rows.task_row, binding_asked=True), "activities": cache_rows.activity_row,
                  "communications": cache_rows.communication_row}[entity]
        synced_at = self.now()
        rows = [{**row, "synced_at": synced_at} for row in self._usable(entity, records, to_row)]
        with self.cache.atomic():
            if entity == "communications":
                self.cache.kpi.write_communications(rows)
            else:
                self.cache.deals.write_linked(entity, rows)


    # --- the first pages of an incremental poll ------------------------------------------------

    def _first_page_params(self, deals_state: SyncState) -> dict[str, dict[str, Any]]:
        """Every list an incremental poll reads, as one page each, to go into one batch request."""
        since = minus_overlap(deals_state.cursor, self.overlap) if deals_state.cursor else None
        lists = {
            "deals": self.reader.list_params("deals", since=since),
            "stage_history": self.reader.list_params(
                "stage_history", after_id=max(0, (self.cache.syncs.get("stage_history").last_id or 0) - HISTORY_ID_MARGIN)),
        }
        for entity in ("tasks", "activities", "communications"):
            state = self._checked(self.cache.syncs.get(entity), entity)
            if state.cursor is not None and not (state.status == "running" and state.mode == "full"):
                lists[entity] = self.reader.list_params(entity, since=minus_overlap(state.cursor, self.overlap))
        if since:
            lists["contacts"] = self.reader.list_params("contacts", since=since)
            lists["companies"] = self.reader.list_params("companies", since=since)
        return lists

    def _metadata_due(self) -> bool:
        state = self.cache.syncs.get("reference")
        if not state.finished_at:
            return True
        try:
            read_at = datetime.fromisoformat(state.finished_at)
        except ValueError:
            return True
        return datetime.now(timezone.utc) - read_at >= self.metadata_max_age

    def _unknown_structure(self) -> bool:
        """A cached deal in a pipeline or stage the cache does not know (added on the portal since the last read)."""
        return self.cache.deals.in_unknown_stages() > 0

    # --- reference lists ----------------------------------------------------------------------

    def _sync_reference(self, summary: SyncSummary) -> None:
        with_departments = "department" in self.granted
        reference = self.reader.reference_data(departments=with_departments)
        plan_items = (list(self.reader.iter_plan_items(self.plan_entity_type))
                      if self.plan_entity_type is not None else None)
        cached = self.cache.reference
        keep = not self.confirm_deletions  # an empty answer is no evidence that a list is gone
        pipelines = self._usable("pipelines", reference.pipelines, cache_rows.pipeline_row)
        categories = set(reference.stages)
        if not pipelines and keep:
            pipelines = cached.cached("pipelines")
            categories |= {row["id"] for row in pipelines}  # the cached pipelines are kept: so are their stages
            if pipelines:
                self._warn(_kept("pipelines"))
        stage_rows: list[dict[str, Any]] = []
        for category_id in sorted(categories):
            entity = stage_entity_id(category_id)
            mine = [raw for raw in reference.stages.get(category_id, [])
                    if not isinstance(raw, dict) or raw.get("ENTITY_ID", entity) == entity]
            rows = self._usable("stages", mine, partial(cache_rows.stage_row, category_id=category_id))
            if not rows and keep:
                # every pipeline has stages: none in the answer is a failed read, not a pipeline without stages
                rows = cached.stages_of(category_id)
                if rows and category_id in reference.stages:
                    self._warn(f"the portal answered no stages for pipeline {category_id}; the cached ones are kept")
            stage_rows.extend(rows)
        fields = self._usable("deal_fields", reference.deal_fields, cache_rows.deal_field_row)
        if not fields and keep:
            fields = cached.cached("deal_fields")
            if fields:
                self._warn(_kept("deal fields"))
        users = self._usable("users", reference.users, cache_rows.user_row)
        with self.cache.atomic():
            # read whole every run, so a stage or field deleted on the portal disappears here too
            # (check --live then names it as missing instead of trusting a stale copy); an empty answer is
            # no evidence of that, and the cached list is kept
            summary.pipelines, summary.stages, summary.deal_fields, summary.users = cached.replace(
                pipelines, stage_rows, fields, users)
            self.cache.syncs.save(SyncState(entity="reference", mode="full", status="done",
                                            finished_at=datetime.now(timezone.utc).isoformat()))
            summary.currencies, summary.departments, summary.plan_items = self.cache.kpi.replace_reference(
                map(cache_rows.currency_row, reference.currencies),
                None if reference.departments is None else map(cache_rows.department_row, reference.departments),
                None if plan_items is None else [cache_rows.plan_item_row(raw, self.plan_entity_type or 0, self.now())
                                                 for raw in plan_items])

    # --- deals --------------------------------------------------------------------------------

    def _full_deals(self, state: SyncState, portal_time: str, resuming: bool, summary: SyncSummary) -> None:
        if not resuming:
            state = SyncState(
                entity="deals", mode="full", status="running", cursor=state.cursor,
                run_cursor=portal_time, last_id=0, started_at=self.now(),
            )
            self.cache.syncs.save(state)
        run_started_at = state.started_at or self.now()
        for chunk in chunks(self.reader.iter_deals(after_id=state.last_id or 0)):
            self._write_deals(chunk, summary, state_update=state)
        # the read finished: deals it did not see are read back by id before any is marked deleted
        summary.deals_deleted = self._settle_vanished("deals", run_started_at, summary)
        with self.cache.atomic():
            state.status, state.mode = "done", "full"
            state.cursor, state.run_cursor = state.run_cursor or portal_time, None
            state.finished_at = self.now()
            self.cache.syncs.save(state)

    def _incremental_deals(self, state: SyncState, portal_time: str, summary: SyncSummary,
                           pages: dict[str, list[RawRecord]]) -> None:
        since = minus_overlap(state.cursor, self.overlap) if state.cursor else None
        records = then(pages.get("deals"), lambda last: self.reader.iter_deals(after_id=last, modified_since=since))
        for chunk in chunks(records):
            self._write_deals(chunk, summary, state_update=None)
        if since:
            self._sync_changed_clients(since, summary, pages)
        state.mode, state.status = "incremental", "done"
        state.cursor, state.finished_at = portal_time, self.now()
        self.cache.syncs.save(state)

    def _write_deals(self, chunk: list[RawRecord], summary: SyncSummary, state_update: SyncState | None) -> None:
        """Deals of one chunk, their contacts and companies, and the resume cursor: one transaction."""
        synced_at = self.now()
        deal_rows = self._usable("deals", chunk, lambda raw: cache_rows.deal_row(raw, synced_at))
        if not deal_rows:
            self.progress("deals", len(chunk))
            return
        changed = self.cache.deals.changed_ids(deal_rows)
        # a full sync re-reads every deal's client (a phone added to a contact does not touch its deals), each once
        # however many chunks name it; an incremental one those of changed deals, plus clients edited on their own
        # (_sync_changed_clients)
        with_clients = deal_rows if state_update is not None else [r for r in deal_rows if r["id"] in changed]
        contact_ids = {r["contact_id"] for r in with_clients if r["contact_id"]} - self._clients_read["contacts"]
        company_ids = {r["company_id"] for r in with_clients if r["company_id"]} - self._clients_read["companies"]
        if state_update is None:
            # an edited client moves its own DATE_MODIFY and comes in with _sync_changed_clients: an incremental
            # sync reads only the clients the cache does not have yet (a deal given a new contact)
            contact_ids = set(self.cache.deals.missing_clients("contacts", contact_ids))
            company_ids = set(self.cache.deals.missing_clients("companies", company_ids))
        # read before the transaction: HTTP inside a write transaction would hold the file locked;
        # contacts and companies go in one batch, and only the companies that just the contacts name in another
        contact_records, company_records = (self.reader.clients(contact_ids, company_ids)
                                            if contact_ids or company_ids else ([], []))
        contacts = self._usable("contacts", contact_records, cache_rows.contact_row)
        more = ({row["company_id"] for row in contacts if row["company_id"]} - company_ids
                - self._clients_read["companies"])
        if state_update is None:
            more = set(self.cache.deals.missing_clients("companies", more))
        if more:
            company_records += self.reader.clients((), more)[1]
        companies = self._usable("companies", company_records, cache_rows.company_row)
        self._clients_read["contacts"] |= contact_ids
        self._clients_read["companies"] |= company_ids | more
        self._heartbeat()
        with self.cache.atomic():
            self.cache.deals.upsert(deal_rows, contacts, companies)
            if state_update is not None:
                state_update.last_id = max(r["id"] for r in deal_rows)
                self.cache.syncs.save(state_update)
        summary.deals_read += len(deal_rows)
        summary.deals_changed += len(changed)
        summary.contacts_read += len(contacts)
        summary.companies_read += len(companies)
        self.progress("deals", len(deal_rows))

    def _sync_changed_clients(self, since: str, summary: SyncSummary, pages: dict[str, list[RawRecord]]) -> None:
        """A contact or company edited without touching its deals (R6 reads its phone / e-mail)."""
        for entity, to_row in (("contacts", cache_rows.contact_row), ("companies", cache_rows.company_row)):
            referenced = self.cache.deals.referenced_clients(entity)
            records = then(pages.get(entity), lambda last, entity=entity: self.reader.iter_changed_clients(
                entity, modified_since=since, after_id=last))
            for chunk in chunks(records):
                client_rows = [row for row in self._usable(entity, chunk, to_row) if row["id"] in referenced]
                with self.cache.atomic():
                    self.cache.deals.upsert_clients(entity, client_rows)
                if entity == "contacts":
                    summary.contacts_read += len(client_rows)
                else:
                    summary.companies_read += len(client_rows)

    # --- stage history, tasks and to-dos --------------------------------------------------------------

    def _stage_history_stream(self, *, full: bool, summary: SyncSummary, first: list[RawRecord] | None = None) -> _Stream:
        """Append-only on the portal: the last ID is a complete cursor, and a full sync re-reads from 0."""
        state = self.cache.syncs.get("stage_history")
        state.status, state.mode = "running", "full" if full else "incremental"
        # IDs are given out when a row is inserted but become visible when its transaction commits,
        # so a row with a lower ID can appear after a higher one: re-read a margin (upserts de-duplicate)
        after_id = 0 if full else max(0, (state.last_id or 0) - HISTORY_ID_MARGIN)

        def write(chunk: list[RawRecord]) -> None:
            history_rows = self._usable("stage_history", chunk, cache_rows.stage_history_row)
            if not history_rows:
                return
            with self.cache.atomic():
                self.cache.deals.upsert_history(history_rows)
                state.last_id = max(r["id"] for r in history_rows)
                self.cache.syncs.save(state)
            summary.stage_history_read += len(history_rows)

        def finish() -> None:
            state.status, state.finished_at = "done", self.now()
            self.cache.syncs.save(state)

        records = (then(first, lambda last: self.reader.iter_stage_history(after_id=last)) if first is not None and not full
                   else self.reader.iter_stage_history(after_id=after_id))
        return _Stream("stage_history", "crm.stagehistory.list", chunks(records), write, finish)

    def _dated_stream(
        self,
        entity: str,
        method: str,
        full: bool,
        portal_time: str,
        read: Callable[..., Iterator[RawRecord]],
        since_arg: str,
        to_row: Callable[[RawRecord], dict[str, Any]],
        count: Callable[[int], None],
        first: list[RawRecord] | None = None,
        *,
        deals_only: bool = True,
        summary: SyncSummary,
    ) -> _Stream:
        """Tasks, to-dos, calls / meetings / e-mails: a full read by ID that resumes after a kill, else what
        changed since the cursor.

        With `deals_only`, only records bound to a deal are kept: the regulation judges deals (R3, R5, R11);
        the activity KPIs count a manager's calls whoever they were with.
        """
        state = self._checked(self.cache.syncs.get(entity), entity)
        resuming = state.status == "running" and state.mode == "full"
        by_id = full or resuming or state.cursor is None
        if by_id:
            if not resuming:
                state = SyncState(entity=entity, mode="full", status="running", cursor=state.cursor,
                                  run_cursor=portal_time, last_id=0, started_at=self.now())
                self.cache.syncs.save(state)
            records = read(after_id=state.last_id or 0)
        else:
            state.mode, state.run_cursor = "incremental", portal_time
            since = minus_overlap(state.cursor or portal_time, self.overlap)
            records = (then(first, lambda last: read(after_id=last, **{since_arg: since})) if first is not None
                       else read(**{since_arg: since}))

        def write(chunk: list[RawRecord]) -> None:
            synced_at = self.now()
            rows = [{**row, "synced_at": synced_at} for row in self._usable(entity, chunk, to_row)]
            if not rows:
                return
            with self.cache.atomic():
                # tasks and to-dos count for their deal (the regulation); calls, meetings and e-mails for their
                # manager whoever they were with (the activity KPIs)
                bound = self.cache.deals.write_linked(entity, rows) if deals_only else self.cache.kpi.write_communications(rows)
                if by_id:
                    state.last_id = max(row["id"] or 0 for row in rows)
                    self.cache.syncs.save(state)
            count(bound)

        def finish() -> None:
            if by_id and state.started_at:
                # a full read saw every record the portal still has: the rest are read back by id, and those the
                # portal confirms gone leave the cache (a stale task would satisfy R3, a lost call skew the KPIs)
                self._settle_vanished(entity, state.started_at, summary)
            with self.cache.atomic():
                state.status, state.cursor, state.run_cursor = "done", state.run_cursor or portal_time, None
                state.finished_at = self.now()
                self.cache.syncs.save(state)

        return _Stream(entity, method, chunks(records), write, finish)

    def _drain(self, streams: list[_Stream]) -> None:
        """Read several lists, switching to another while one method waits for its operating budget.

        Each method has its own 10-minute budget on the portal, so on a big portal the stage history
        can wait for its budget while the tasks use theirs: the sync's floor is the slowest method,
        not the sum of them.
        """
        active = list(streams)
        while active:
            # the first stream whose method may go now; if all must wait, the one that waits least
            stream = min(active, key=lambda candidate: self.reader.client.operating_wait(candidate.method))
            chunk = next(stream.chunks, None)
            if chunk is None:
                stream.finish()
                active.remove(stream)
                continue
            self._heartbeat()
            stream.write(chunk)
            self.progress(stream.entity, len(chunk))


#: how messages name each table's records
ENTITY_WORDS = {"deals": "deal", "tasks": "task", "activities": "to-do", "communications": "call, meeting or e-mail",
                "stage_history": "stage change"}
#: the primary key of tables whose rows are matched against rejected_records
PRIMARY_KEY_OF = {"stages": "status_id", "deal_fields": "field_name"}


def _kept(what: str) -> str:
    return (f"the portal answered no {what}; the cached ones are kept (sync --full --confirm-deletions removes "
            f"them if they really are gone)")


@dataclass
class _Stream:
    """One list being synced chunk by chunk: where its rows go and how its cursor is closed."""

    entity: str
    method: str  # the REST method whose operating budget it spends
    chunks: Iterator[list[RawRecord]]
    write: Callable[[list[RawRecord]], None]
    finish: Callable[[], None]

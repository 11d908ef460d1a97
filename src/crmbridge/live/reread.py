"""The worker's reads: what a round of events names, resolved to deals and re-read in batches into the cache.

`affected(rows)` (pure) sorts a round's events into ids per entity. `ReReader.run` resolves tasks, to-dos and
clients to their deals, then re-reads every affected deal with its stage history, tasks, to-dos, contact and
company: all of it as commands of `batch` requests (50 per request), so a handful of events costs one or
two HTTP requests. Records that a deal no longer has on the portal (a task deleted or unbound, a deal
deleted) leave the cache the same way the sync removes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from crmbridge.cache import rows as cache_rows
from crmbridge.cache.store import Cache
from crmbridge.connectors.bitrix24.client import PAGE_SIZE, Bitrix24Client
from crmbridge.connectors.bitrix24.reader import (
    ACTIVITY_SELECT,
    COMPANY_SELECT,
    CONTACT_SELECT,
    IDS_PER_COMMAND,
    TASK_SELECT,
    TODO_FILTER,
)
from crmbridge.errors import CrmError
from crmbridge.live.bitrix24_events import DELETE_EVENTS
from crmbridge.live.inbox import InboxRow
from crmbridge.sync import HISTORY_ID_MARGIN

RawRecord = dict[str, Any]
#: deals written per transaction
WRITE_GROUP = 100
HISTORY_SELECT = ["ID", "TYPE_ID", "OWNER_ID", "CREATED_TIME", "CATEGORY_ID", "STAGE_SEMANTIC_ID", "STAGE_ID"]


@dataclass
class Affected:
    """Ids a round of events names, per entity; deletions apart (there is nothing to read for them)."""

    deals: set[int] = field(default_factory=set)
    deleted_deals: set[int] = field(default_factory=set)
    tasks: set[int] = field(default_factory=set)
    deleted_tasks: set[int] = field(default_factory=set)
    activities: set[int] = field(default_factory=set)
    deleted_activities: set[int] = field(default_factory=set)
    contacts: set[int] = field(default_factory=set)
    companies: set[int] = field(default_factory=set)


def affected(rows: Iterable[InboxRow]) -> Affected:
    """Coalesce a round's events: ten updates of one deal are one id (pure)."""
    found = Affected()
    for row in rows:
        try:
            entity_id = int(row.entity_id)
        except ValueError:
            continue
        deleted = row.event.upper() in DELETE_EVENTS
        if row.entity == "deal":
            (found.deleted_deals if deleted else found.deals).add(entity_id)
        elif row.entity == "task":
            (found.deleted_tasks if deleted else found.tasks).add(entity_id)
        elif row.entity == "activity":
            (found.deleted_activities if deleted else found.activities).add(entity_id)
        elif row.entity == "contact" and not deleted:
            found.contacts.add(entity_id)
        elif row.entity == "company" and not deleted:
            found.companies.add(entity_id)
    found.deals -= found.deleted_deals
    return found


@dataclass
class ReReadResult:
    deals: set[int]  # deals to evaluate (re-read, still on the portal)
    deleted: set[int]  # deals gone from the portal (marked deleted in the cache)
    http_requests: int


class ReReader:
    """Re-reads what a round of events names; the client (HTTP) and the cache (SQLite) are injected."""

    def __init__(self, client: Bitrix24Client, cache: Cache, *, now: Any = None) -> None:
        self.client = client
        self.cache = cache
        self.now = now or (lambda: datetime.now(UTC).isoformat(timespec="microseconds"))

    def run(self, found: Affected) -> ReReadResult:
        requests_before = self.client.requests_made
        deal_ids = set(found.deals)
        # deleted tasks and to-dos: their deal (known from the cache) must be judged again without them
        deal_ids |= self.cache.deals.deals_of_linked("tasks", found.deleted_tasks)
        deal_ids |= self.cache.deals.deals_of_linked("activities", found.deleted_activities)
        removed_tasks, removed_todos = set(found.deleted_tasks), set(found.deleted_activities)
        # tasks and to-dos name their deal only on the portal (a task may have been bound to another deal):
        # one batch reads them and the clients; their old deal (cached) and new deal are both affected
        clients: dict[str, list[RawRecord]] = {"contacts": [], "companies": []}
        if found.tasks or found.activities or found.contacts or found.companies:
            calls: list[tuple[str, Mapping[str, Any]]] = []
            calls += [("tasks.task.list", {"filter": {"ID": task_id}, "select": TASK_SELECT})
                      for task_id in sorted(found.tasks)]
            calls += [("crm.activity.list", {"filter": {"@ID": chunk}, "select": ACTIVITY_SELECT, "start": -1})
                      for chunk in _chunks(sorted(found.activities))]
            calls += [("crm.contact.list", {"filter": {"@ID": chunk}, "select": CONTACT_SELECT, "start": -1})
                      for chunk in _chunks(sorted(found.contacts))]
            calls += [("crm.company.list", {"filter": {"@ID": chunk}, "select": COMPANY_SELECT, "start": -1})
                      for chunk in _chunks(sorted(found.companies))]
            answers = iter(self._calls(calls))
            for task_id in sorted(found.tasks):
                tasks = _rows(next(answers), "tasks")
                deal_ids |= {deal for task in tasks for deal in cache_rows.bound_deal_ids(
                    task.get("ufCrmTask", task.get("UF_CRM_TASK")))}
                if not tasks:
                    removed_tasks.add(task_id)  # gone, or no longer visible to the webhook's user
            deal_ids |= self.cache.deals.deals_of_linked("tasks", found.tasks)
            for _ in _chunks(sorted(found.activities)):
                for activity in _rows(next(answers)):
                    row = cache_rows.activity_row(activity)
                    if row["deal_id"] is not None:
                        deal_ids.add(row["deal_id"])
            deal_ids |= self.cache.deals.deals_of_linked("activities", found.activities)
            for _ in _chunks(sorted(found.contacts)):
                clients["contacts"] += _rows(next(answers))
            for _ in _chunks(sorted(found.companies)):
                clients["companies"] += _rows(next(answers))
            deal_ids |= self.cache.deals.deals_of_clients(found.contacts, found.companies)
        deal_ids -= found.deleted_deals
        deals, history, tasks, todos, more_clients = self._read_deals(sorted(deal_ids))
        clients["contacts"] += more_clients["contacts"]
        clients["companies"] += more_clients["companies"]
        gone = (deal_ids - {int(raw["ID"]) for raw in deals}) | found.deleted_deals
        self._write(deals, history, tasks, todos, clients, sorted(deal_ids), removed_tasks, removed_todos, gone)
        return ReReadResult(deal_ids - gone, gone, self.client.requests_made - requests_before)

    # ------------------------------------------------------------------ reads

    def _read_deals(self, deal_ids: list[int]) -> tuple[list[RawRecord], list[RawRecord], list[RawRecord],
                                                        list[RawRecord], dict[str, list[RawRecord]]]:
        """The deals with their history, tasks, to-dos and clients: one batch per ~50 deals."""
        if not deal_ids:
            return [], [], [], [], {"contacts": [], "companies": []}
        contact_ids, company_ids = self.cache.deals.clients_of(deal_ids)
        history_after = self._history_cursor(deal_ids)
        calls: list[tuple[str, Mapping[str, Any]]] = []
        for chunk in _chunks(deal_ids):
            calls.append(("crm.deal.list", {"filter": {"@ID": chunk}, "select": ["*", "UF_*"], "start": -1}))
            calls.append(("crm.stagehistory.list", _fast({"entityTypeId": 2}, {"@OWNER_ID": chunk}, HISTORY_SELECT,
                                                         history_after)))
            calls.append(("crm.activity.list", _fast({}, {**TODO_FILTER, "@OWNER_ID": chunk}, ACTIVITY_SELECT, 0)))
        calls += [("tasks.task.list", _fast({}, {"UF_CRM_TASK": f"D_{deal_id}"}, TASK_SELECT, 0)) for deal_id in deal_ids]
        calls += [("crm.contact.list", {"filter": {"@ID": chunk}, "select": CONTACT_SELECT, "start": -1})
                  for chunk in _chunks(sorted(contact_ids))]
        calls += [("crm.company.list", {"filter": {"@ID": chunk}, "select": COMPANY_SELECT, "start": -1})
                  for chunk in _chunks(sorted(company_ids))]
        answers = iter(self._calls(calls))
        deals: list[RawRecord] = []
        history: list[RawRecord] = []
        todos: list[RawRecord] = []
        for chunk in _chunks(deal_ids):
            deals += _rows(next(answers))
            history += self._all_pages("crm.stagehistory.list", _rows(next(answers), "items"), {"entityTypeId": 2},
                                       {"@OWNER_ID": chunk}, HISTORY_SELECT, "items")
            todos += self._all_pages("crm.activity.list", _rows(next(answers)), {}, {**TODO_FILTER, "@OWNER_ID": chunk},
                                     ACTIVITY_SELECT, None)
        tasks: list[RawRecord] = []
        for deal_id in deal_ids:
            tasks += self._all_pages("tasks.task.list", _rows(next(answers), "tasks"), {},
                                     {"UF_CRM_TASK": f"D_{deal_id}"}, TASK_SELECT, "tasks")
        clients: dict[str, list[RawRecord]] = {"contacts": [], "companies": []}
        for _ in _chunks(sorted(contact_ids)):
            clients["contacts"] += _rows(next(answers))
        for _ in _chunks(sorted(company_ids)):
            clients["companies"] += _rows(next(answers))
        # a deal whose client changed (or is new to the cache): its client is read now
        new_contacts = {cid for raw in deals if (cid := cache_rows.as_int(raw.get("CONTACT_ID")))} - contact_ids
        new_companies = {cid for raw in deals if (cid := cache_rows.as_int(raw.get("COMPANY_ID")))} - company_ids
        if new_contacts or new_companies:
            extra = self._calls(
                [("crm.contact.list", {"filter": {"@ID": chunk}, "select": CONTACT_SELECT, "start": -1})
                 for chunk in _chunks(sorted(new_contacts))]
                + [("crm.company.list", {"filter": {"@ID": chunk}, "select": COMPANY_SELECT, "start": -1})
                   for chunk in _chunks(sorted(new_companies))])
            answers = iter(extra)
            for _ in _chunks(sorted(new_contacts)):
                clients["contacts"] += _rows(next(answers))
            for _ in _chunks(sorted(new_companies)):
                clients["companies"] += _rows(next(answers))
        return deals, history, tasks, todos, clients

    def _calls(self, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Any]:
        answers = self.client.batch_calls(calls) if calls else []
        for answer in answers:
            if isinstance(answer, CrmError):
                raise answer
        return answers

    def _all_pages(self, method: str, first: list[RawRecord], params: dict[str, Any], filter_: dict[str, Any],
                   select: list[str], result_key: str | None) -> list[RawRecord]:
        """A full first page means there may be more: the rest by the fast pattern from its last id."""
        if len(first) < PAGE_SIZE:
            return first
        last = max(int(row.get("ID", row.get("id"))) for row in first)
        rest = self.client.iter_list_fast(method, filter={**filter_, ">ID": last}, select=select, id_field="ID",
                                          result_key=result_key, params=params)
        return first + list(rest)

    # ------------------------------------------------------------------ the cache

    def _write(self, deals: list[RawRecord], history: list[RawRecord], tasks: list[RawRecord], todos: list[RawRecord],
               clients: dict[str, list[RawRecord]], deal_ids: list[int], removed_tasks: set[int],
               removed_todos: set[int], gone: set[int]) -> None:
        """Everything of one round in one transaction: the cache never shows half a deal."""
        synced_at = self.now()
        read = {int(raw["ID"]) for raw in deals}
        task_rows = [{**cache_rows.task_row(raw), "synced_at": synced_at} for raw in tasks]
        todo_rows = [{**cache_rows.activity_row(raw), "synced_at": synced_at} for raw in todos]
        kept = {"tasks": {row["id"] for row in task_rows}, "activities": {row["id"] for row in todo_rows}}
        removed = {"tasks": set(removed_tasks), "activities": set(removed_todos)}
        with self.cache.atomic():
            self.cache.deals.upsert_clients("contacts", map(cache_rows.contact_row, clients["contacts"]))
            self.cache.deals.upsert_clients("companies", map(cache_rows.company_row, clients["companies"]))
            self.cache.deals.mark_deleted_ids(sorted(gone))
            for table, rows in (("tasks", task_rows), ("activities", todo_rows)):
                self.cache.deals.delete_linked(table, sorted(removed[table] - kept[table]))
                # bound to several deals: the cache files it under its first one, which may not be re-read here
                self.cache.deals.upsert_linked(
                    table, [row for row in rows if row["deal_id"] is not None and row["deal_id"] not in read])
        # one transaction per group of deals: each deal with its history, tasks and to-dos is whole, and the
        # inbox's writer (acknowledging events meanwhile) never waits long for the file
        by_deal: dict[int, list[RawRecord]] = {}
        for raw in deals:
            by_deal[int(raw["ID"])] = [raw]
        for group in _chunks(sorted(read), WRITE_GROUP):
            wanted = set(group)
            with self.cache.atomic():
                self.cache.deals.upsert([cache_rows.deal_row(by_deal[deal][0], synced_at) for deal in group])
                self.cache.deals.upsert_history([cache_rows.stage_history_row(raw) for raw in history
                                                 if cache_rows.as_int(raw.get("OWNER_ID")) in wanted])
                for table, rows in (("tasks", task_rows), ("activities", todo_rows)):
                    self.cache.deals.upsert_linked(table, [row for row in rows if row["deal_id"] in wanted])
                    # what a re-read deal no longer has on the portal leaves the cache (deleted, unbound)
                    stale = self.cache.deals.linked_ids_of(table, group) - kept[table]
                    self.cache.deals.delete_linked(table, sorted(stale))

    def _history_cursor(self, deal_ids: list[int]) -> int:
        """Re-read history from just below the oldest "newest cached row" of these deals (0: one is new)."""
        newest = self.cache.deals.newest_history_ids(deal_ids)
        if len(newest) < len(deal_ids):
            return 0
        return max(0, min(newest.values()) - HISTORY_ID_MARGIN)


def _fast(params: dict[str, Any], filter_: dict[str, Any], select: list[str], after: int) -> dict[str, Any]:
    """One page of the fast pattern (ID ascending, `>ID` cursor, no COUNT)."""
    return {**params, "filter": {**filter_, ">ID": after}, "order": {"ID": "ASC"}, "select": select, "start": -1}


def _rows(answer: Any, key: str | None = None) -> list[RawRecord]:
    rows = answer.get(key, []) if key is not None and isinstance(answer, Mapping) else answer
    if isinstance(rows, Mapping):
        rows = list(rows.values())
    return list(rows or [])


def _chunks(ids: list[int], size: int = IDS_PER_COMMAND) -> Iterable[list[int]]:
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


__all__ = ["Affected", "ReReadResult", "ReReader", "affected"]

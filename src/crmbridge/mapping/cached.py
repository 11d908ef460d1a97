"""Edge: read cached Bitrix24 records into Deals, and write the evaluation's violations back to the cache."""

from __future__ import annotations

import gc
import json
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from crmbridge.cache.store import Cache
from crmbridge.mapping.binding import DealMapper
from crmbridge.mapping.portal import PortalSnapshot
from crmbridge.model import Deal, Violation
from crmbridge.regulation.ledger import LedgerChanges, reconcile


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cycle collector while building (or judging) many acyclic objects.

    Mapping 100,000 deals allocates millions of small objects; the collector rescans them again and
    again and takes ~60% of the time. Raw records, Deals and Violations form no reference cycles.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _by_id(cache: Cache, table: str, wanted: set[str]) -> dict[str, dict[str, Any]]:
    """Rows of `table` whose id is wanted (only those are decoded)."""
    return {str(row_id): json.loads(raw) for row_id, raw in cache.db.execute(f"SELECT id, raw FROM {table}")
            if str(row_id) in wanted}


def load_deals(cache: Cache, mapper: DealMapper, *, deal_ids: Iterable[int | str] | None = None) -> list[Deal]:
    """Every non-deleted cached deal (or the given ones) with its history, tasks, to-dos, contact and company."""
    with paused_gc():
        return _load_deals(cache, mapper, deal_ids)


def _load_deals(cache: Cache, mapper: DealMapper, deal_ids: Iterable[int | str] | None) -> list[Deal]:
    where, params = "deleted = 0", []
    scope = ""
    if deal_ids is not None:
        ids = [int(deal_id) for deal_id in deal_ids]
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        where += f" AND id IN ({marks})"
        scope = f" AND deal_id IN ({marks})"
        params = ids
    # the deal's own id and clients from the typed columns: the same whichever CRM the raw record came from
    deal_rows = [(str(deal_id), json.loads(raw), str(contact_id or ""), str(company_id or ""))
                 for deal_id, raw, contact_id, company_id in cache.db.execute(
                     f"SELECT id, raw, contact_id, company_id FROM deals WHERE {where} ORDER BY id", params)]
    # history, tasks and to-dos come from the typed columns: decoding their raw JSON would double the load time
    history: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row_id, deal_id, type_id, category_id, stage_id, created, crm_id, from_category, from_stage in cache.db.execute(
            "SELECT id, deal_id, type_id, category_id, stage_id, created_time, crm_id, from_category_id, from_stage_id "
            f"FROM stage_history WHERE deal_id IS NOT NULL{scope} ORDER BY id", params):
        row = {"ID": crm_id or str(row_id), "TYPE_ID": type_id, "CATEGORY_ID": category_id, "STAGE_ID": stage_id,
               "CREATED_TIME": created}
        if from_stage is not None:  # amoCRM: where the lead came from (its first change tells where it was created)
            row["FROM_CATEGORY_ID"], row["FROM_STAGE_ID"] = from_category, from_stage
        history[str(deal_id)].append(row)
    # crmbridge's own tasks and to-dos (the audit log holds their ids; the marker is in their text): setting them
    # was not a person's activity (R11)
    tasks: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for task_id, deal_id, title, status, responsible, deadline, created, closed, own in cache.db.execute(
            "SELECT id, deal_id, title, status, responsible_id, deadline, created_date, closed_date, "
            f"id IN ({_OWN_IDS.format(kinds=_TASK_KINDS)}) OR instr(raw, '{BRIDGE_MARK}') > 0 "
            f"FROM tasks WHERE deal_id IS NOT NULL{scope}", params):
        tasks[str(deal_id)].append({"id": task_id, "title": title or "", "status": status, "responsibleId": responsible,
                                    "deadline": deadline, "createdDate": created, "closedDate": closed,
                                    "byBridge": own})
    todos: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for todo_id, deal_id, subject, completed, responsible, deadline, created, updated, own in cache.db.execute(
            "SELECT id, deal_id, subject, completed, responsible_id, deadline, created, last_updated, "
            f"id IN ({_OWN_IDS.format(kinds=_TODO_KINDS)}) OR instr(raw, '{BRIDGE_MARK}') > 0 "
            f"FROM activities WHERE deal_id IS NOT NULL{scope}", params):
        todos[str(deal_id)].append({"ID": todo_id, "SUBJECT": subject or "", "COMPLETED": "Y" if completed else "N",
                                    "RESPONSIBLE_ID": responsible, "DEADLINE": deadline, "CREATED": created,
                                    "LAST_UPDATED": updated, "byBridge": own})
    contact_ids = {contact_id for _, _, contact_id, _ in deal_rows}
    company_ids = {company_id for _, _, _, company_id in deal_rows}
    contacts = {key: mapper.client(row, "contact") for key, row in _by_id(cache, "contacts", contact_ids).items()}
    companies = {key: mapper.client(row, "company") for key, row in _by_id(cache, "companies", company_ids).items()}
    own = own_users(cache)
    deals = []
    for deal_id, raw, contact_id, company_id in deal_rows:
        deals.append(mapper.deal(raw, history.get(deal_id, ()), tasks.get(deal_id, ()), contacts.get(contact_id),
                                 companies.get(company_id), todos.get(deal_id, ()), own_users=own))
    return deals


#: the start of the marker crmbridge puts into everything it creates (enforce.plan.marker_of)
BRIDGE_MARK = "[crmbridge:"
#: ids of what crmbridge created, by the kinds of its audit log's done actions
_OWN_IDS = ("SELECT CAST(ids.value AS INTEGER) FROM actions, json_each(actions.crm_ids) AS ids "
            "WHERE actions.status = 'done' AND actions.kind IN ({kinds})")
_TASK_KINDS = "'create_task', 'create_todo', 'notify'"  # amoCRM writes to-dos and notices as tasks
_TODO_KINDS = "'create_todo'"


def own_users(cache: Cache) -> frozenset[str]:
    """The users crmbridge writes as: the authors of the cached tasks it created (the webhook's or the application's
    user). Found in the data, so nothing to configure."""
    rows = cache.db.execute(
        "SELECT DISTINCT COALESCE(json_extract(raw, '$.createdBy'), json_extract(raw, '$.created_by')) FROM tasks "
        f"WHERE id IN ({_OWN_IDS.format(kinds=_TASK_KINDS)}) OR instr(raw, '{BRIDGE_MARK}') > 0")
    return frozenset(str(user) for (user,) in rows if user not in (None, ""))


def with_client_peers(cache: Cache, deal_ids: Iterable[int | str]) -> list[int]:
    """The deals plus every cached deal that shares a contact or company with one of them.

    Per-client rules (R10: the client's last purchase) judge a deal against its client's other deals,
    so evaluating a few deals loads their clients' deals too, not the whole cache.
    """
    ids = sorted({int(deal_id) for deal_id in deal_ids})
    found = set(ids)
    for start in range(0, len(ids), 400):
        chunk = ids[start:start + 400]
        marks = ",".join("?" * len(chunk))
        found.update(row_id for (row_id,) in cache.db.execute(
            "SELECT d.id FROM deals d WHERE d.deleted = 0 AND ("
            f"d.contact_id IN (SELECT contact_id FROM deals WHERE id IN ({marks}) AND contact_id IS NOT NULL) OR "
            f"d.company_id IN (SELECT company_id FROM deals WHERE id IN ({marks}) AND company_id IS NOT NULL))",
            [*chunk, *chunk]))
    return sorted(found)


def open_violation_rows(cache: Cache) -> dict[str, dict[str, Any]]:
    return {row["key"]: row for row in cache.query("SELECT * FROM violations WHERE resolved IS NULL")}


def record_violations(cache: Cache, found: Iterable[Violation], now_iso: str,
                      evaluated_deals: set[str] | None = None) -> LedgerChanges:
    """Open new violations, refresh those still found, resolve those gone; one transaction."""
    changes = reconcile(open_violation_rows(cache), found, now_iso, evaluated_deals)
    with cache.atomic():
        if changes.opened:
            cache.db["violations"].insert_all(changes.opened)
        for row in changes.refreshed:
            cache.db.execute("UPDATE violations SET checked = ?, severity = ?, message = ?, missing = ?, details = ? "
                             "WHERE id = ?", [row["checked"], row["severity"], row["message"], row["missing"],
                                              row["details"], row["id"]])
        for start in range(0, len(changes.resolved), 500):
            chunk = changes.resolved[start:start + 500]
            cache.db.execute(f"UPDATE violations SET resolved = ? WHERE id IN ({','.join('?' * len(chunk))})",
                             [now_iso, *chunk])
    return changes


def portal_snapshot(cache: Cache) -> PortalSnapshot:
    """The portal's structure as the last sync cached it."""
    return PortalSnapshot.from_rows(
        cache.query("SELECT id, name, sort FROM pipelines"),
        cache.query("SELECT status_id, category_id, name, sort, semantics FROM stages"),
        cache.query("SELECT field_name, user_type_id, label, options FROM deal_fields"),
        cache.query("SELECT id, name, last_name, active, departments FROM users"),
    )

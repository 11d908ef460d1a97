"""Edge: read cached Bitrix24 records into Deals, and write the evaluation's violations back to the cache."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Iterable

from crmbridge.cache.store import Cache
from crmbridge.mapping.binding import DealMapper
from crmbridge.model import Deal, Violation
from crmbridge.regulation.ledger import LedgerChanges, reconcile


def _by_id(cache: Cache, table: str) -> dict[str, dict[str, Any]]:
    return {str(row_id): json.loads(raw) for row_id, raw in cache.db.execute(f"SELECT id, raw FROM {table}")}


def load_deals(cache: Cache, mapper: DealMapper, *, deal_ids: Iterable[int | str] | None = None) -> list[Deal]:
    """Every non-deleted cached deal (or the given ones) with its history, tasks, contact and company."""
    where, params = "deleted = 0", []
    if deal_ids is not None:
        ids = [int(deal_id) for deal_id in deal_ids]
        if not ids:
            return []
        where += f" AND id IN ({','.join('?' * len(ids))})"
        params = ids
    raws = [json.loads(raw) for (raw,) in cache.db.execute(f"SELECT raw FROM deals WHERE {where} ORDER BY id", params)]
    wanted = {str(raw.get("ID")) for raw in raws}
    history: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for deal_id, raw in cache.db.execute("SELECT deal_id, raw FROM stage_history ORDER BY id"):
        if str(deal_id) in wanted:
            history[str(deal_id)].append(json.loads(raw))
    tasks: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for deal_id, raw in cache.db.execute("SELECT deal_id, raw FROM tasks WHERE deal_id IS NOT NULL"):
        if str(deal_id) in wanted:
            tasks[str(deal_id)].append(json.loads(raw))
    contacts = {key: mapper.client(row, "contact") for key, row in _by_id(cache, "contacts").items()}
    companies = {key: mapper.client(row, "company") for key, row in _by_id(cache, "companies").items()}
    deals = []
    for raw in raws:
        deal_id = str(raw.get("ID"))
        deals.append(mapper.deal(raw, history.get(deal_id, ()), tasks.get(deal_id, ()),
                                 contacts.get(str(raw.get("CONTACT_ID") or "")),
                                 companies.get(str(raw.get("COMPANY_ID") or ""))))
    return deals


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

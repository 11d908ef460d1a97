"""The deals and what hangs off them: `deals`, `contacts`, `companies`, `stage_history`, `tasks`, `activities`."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from crmbridge.cache.actions import ActionsRepository
from crmbridge.cache.tables import Tables

Row = dict[str, Any]
RawRecord = dict[str, Any]

#: tables of records bound to a deal that a sync reads by a dated cursor
LINKED = ("tasks", "activities")
#: the start of the marker crmbridge puts into everything it creates (enforce.plan.marker_of)
BRIDGE_MARK = "[crmbridge:"
#: ids of what crmbridge created, from its audit log's done actions of these kinds
_OWN_IDS = ("SELECT CAST(ids.value AS INTEGER) FROM actions, json_each(actions.crm_ids) AS ids "
            "WHERE actions.status = 'done' AND actions.kind IN ({kinds})")
_OWN_TASK_KINDS = "'create_task', 'create_todo', 'notify'"  # amoCRM writes to-dos and notices as tasks
_OWN_TODO_KINDS = "'create_todo'"
CLIENTS = {"contacts": "contact_id", "companies": "company_id"}
#: a raw record's key SQLite's JSON path can name as it is (the portal's own keys and UF_CRM_* fields)
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_]+$")


class CachedDeal(NamedTuple):
    """A deal's id and clients from the typed columns (the same whichever CRM the raw record came from)."""

    id: str
    raw: RawRecord
    contact: str  # contact id, "" when none
    company: str  # company id, "" when none


@dataclass
class DealRecords:
    """Cached deals with everything the mapping reads, keyed by deal id (str): the input of `DealMapper.deals`.

    History, tasks and to-dos come from the typed columns (decoding their raw JSON would double the load time),
    in the key shapes the portal sends them; deals, contacts and companies are the raw records.
    """

    deals: list[CachedDeal] = field(default_factory=list)
    history: dict[str, list[RawRecord]] = field(default_factory=dict)
    tasks: dict[str, list[RawRecord]] = field(default_factory=dict)
    todos: dict[str, list[RawRecord]] = field(default_factory=dict)
    contacts: dict[str, RawRecord] = field(default_factory=dict)
    companies: dict[str, RawRecord] = field(default_factory=dict)
    #: the users crmbridge writes as (see Deals.own_users): their last timeline activity is not a person's (R11)
    own_users: frozenset[str] = frozenset()
    #: deal id -> {stage entry crmbridge reverted: the CRM stage it moved the deal back to}: that move is its own (R11)
    reverted: dict[str, dict[str, str]] = field(default_factory=dict)


class Deals:
    """Deals, their clients, stage history, tasks and to-dos."""

    def __init__(self, cache: Tables) -> None:
        self.cache = cache

    # --- writes (sync) ----------------------------------------------------------------------

    def changed_ids(self, rows: list[Row]) -> set[int]:
        """Ids among deal rows whose raw record differs from the cached one (new rows, and deals marked
        deleted that show up again, included)."""
        changed = self.cache.changed_ids("deals", rows)
        for chunk in _chunks([row["id"] for row in rows]):
            marks = ",".join("?" * len(chunk))
            changed |= {row["id"] for row in self.cache.query(
                f"SELECT id FROM deals WHERE deleted = 1 AND id IN ({marks})", chunk)}
        return changed

    def upsert(self, deals: Iterable[Row], contacts: Iterable[Row] = (), companies: Iterable[Row] = ()) -> int:
        count = self.cache.upsert("deals", deals)
        self.cache.upsert("contacts", contacts)
        self.cache.upsert("companies", companies)
        return count

    def upsert_clients(self, entity: str, rows: Iterable[Row]) -> int:
        """`contacts` or `companies`."""
        return self.cache.upsert(_client_table(entity), rows)

    def referenced_clients(self, entity: str) -> set[int]:
        """Contact or company ids some cached deal names (a company also counts when a contact names it)."""
        column = CLIENTS[entity]
        ids = {row["ref"] for row in self.cache.query(
            f"SELECT DISTINCT {column} AS ref FROM deals WHERE {column} IS NOT NULL")}
        if entity == "companies":
            ids |= {row["ref"] for row in self.cache.query(
                "SELECT DISTINCT company_id AS ref FROM contacts WHERE company_id IS NOT NULL")}
        return ids

    def not_synced_since(self, since: str) -> list[int]:
        """Ids of live deals the current full read has not written (yet): candidates for deletion."""
        return [row["id"] for row in self.cache.query(
            "SELECT id FROM deals WHERE deleted = 0 AND (synced_at IS NULL OR synced_at < ?)", [since])]

    def count_live(self) -> int:
        """Deals not marked deleted."""
        return self.cache.count("deals", "deleted = 0")

    def count_linked(self, entity: str) -> int:
        """Cached tasks or to-dos."""
        return self.cache.count(_linked(entity))

    def mark_deleted_ids(self, ids: Sequence[int]) -> None:
        """Deals the CRM says are gone (amoCRM's lead_deleted event, a look-up by id that did not find them)."""
        for chunk in _chunks(list(ids)):
            self.cache.db.execute(f"UPDATE deals SET deleted = 1 WHERE id IN ({','.join('?' * len(chunk))})", chunk)

    def mark_deleted(self, not_synced_since: str) -> int:
        """After a full sync: deals the run did not see are gone from the portal."""
        return self.cache.db.execute(
            "UPDATE deals SET deleted = 1 WHERE deleted = 0 AND (synced_at IS NULL OR synced_at < ?)",
            [not_synced_since],
        ).rowcount

    def missing_clients(self, entity: str, ids: Iterable[int]) -> list[int]:
        """Of these contact or company ids, those the cache does not hold, sorted."""
        wanted = sorted(set(ids))
        have: set[int] = set()
        for chunk in _chunks(wanted):
            have |= {row["id"] for row in self.cache.query(
                f"SELECT id FROM {_client_table(entity)} WHERE id IN ({','.join('?' * len(chunk))})", chunk)}
        return [entity_id for entity_id in wanted if entity_id not in have]

    def upsert_history(self, rows: Iterable[Row]) -> int:
        return self.cache.upsert("stage_history", rows)

    def upsert_linked(self, entity: str, rows: Iterable[Row]) -> int:
        """Tasks or to-dos as they are (rows bound to a deal)."""
        return self.cache.upsert(_linked(entity), rows)

    def write_linked(self, entity: str, rows: Sequence[Row]) -> int:
        """Tasks or to-dos read from the portal: those bound to a deal are kept, those unbound since the last
        sync leave the cache (they no longer count for the deal). Returns how many are bound."""
        bound = [row for row in rows if row["deal_id"] is not None]
        self.cache.upsert(_linked(entity), bound)
        self.cache.delete_ids(entity, [row["id"] for row in rows if row["deal_id"] is None])
        return len(bound)

    def linked_not_synced_since(self, entity: str, since: str) -> list[int]:
        """Ids of tasks or to-dos the current full read has not written (yet)."""
        return [row["id"] for row in self.cache.query(
            f"SELECT id FROM {_linked(entity)} WHERE synced_at IS NULL OR synced_at < ?", [since])]

    def delete_linked(self, entity: str, ids: list[int]) -> None:
        self.cache.delete_ids(_linked(entity), ids)

    def delete_linked_not_synced_since(self, entity: str, since: str) -> int:
        """After a full read of tasks or to-dos: rows it did not see are gone from the portal."""
        return self.cache.db.execute(
            f"DELETE FROM {_linked(entity)} WHERE synced_at IS NULL OR synced_at < ?", [since]).rowcount

    # --- reads ------------------------------------------------------------------------------

    def empty(self) -> bool:
        """No deal was ever cached (deleted ones count as cached)."""
        return not self.cache.query("SELECT 1 FROM deals LIMIT 1")

    def in_unknown_stages(self) -> int:
        """Live deals whose pipeline and stage the cached stages do not know (a stage added on the CRM)."""
        return int(self.cache.query(
            "SELECT COUNT(*) AS n FROM deals d LEFT JOIN stages s ON s.category_id = d.category_id "
            "AND s.status_id = d.stage_id WHERE d.deleted = 0 AND s.status_id IS NULL")[0]["n"])

    def records(self, deal_ids: Iterable[int | str] | None = None, *,
                own: tuple[frozenset[str], dict[str, dict[str, str]]] | None = None) -> DealRecords:
        """Every non-deleted cached deal (or the given ones) with its history, tasks, to-dos, contact and company.

        `own`: `own_users()` and `reverted()` when the caller read them already (both scan the file: a caller
        reading many chunks of deals reads them once)."""
        where, scope, params = "deleted = 0", "", []
        if deal_ids is not None:
            params = [int(deal_id) for deal_id in deal_ids]
            if not params:
                return DealRecords()
            marks = ",".join("?" * len(params))
            where += f" AND id IN ({marks})"
            scope = f" AND deal_id IN ({marks})"
        with self.cache.snapshot():  # its several queries see one state of the file
            found = self._records(f"SELECT id, raw, contact_id, company_id FROM deals WHERE {where} ORDER BY id",
                                  params, scope, params, *(own or (self.own_users(), self.reverted())))
            found.contacts = self._clients_by_id("contacts", {deal.contact for deal in found.deals} - {""})
            found.companies = self._clients_by_id("companies", {deal.company for deal in found.deals} - {""})
        return found

    def iter_records(self, chunk: int = 500, keys: Sequence[str] | None = None) -> Iterator[DealRecords]:
        """Every non-deleted cached deal, `chunk` deals at a time in id order (what `records()` returns, streamed:
        memory stays that of one chunk however big the cache is).

        `keys`: only these keys of each raw deal are decoded (SQLite picks them out of the stored JSON; a missing
        key reads as null), not the record's sixty-odd: what the mapping reads, when the caller knows it.
        Each contact and company comes with the first chunk that names it only: a consumer keeps the clients
        it was given (there are far fewer clients than deals, and one client's deals fall into many chunks)."""
        given: dict[str, set[str]] = {"contacts": set(), "companies": set()}
        raw, paths = "raw", []
        if keys is not None and all(_PLAIN_KEY.match(key) for key in keys):
            # several paths give one JSON array of their values; one more path keeps it an array for a single key
            paths = [f'$."{key}"' for key in (*keys, "ID")]
            raw = f"json_extract(raw, {_marks(paths)})"
        else:
            keys = None  # a key a JSON path cannot name plainly: the whole record is decoded
        after = -(2 ** 63)
        # one snapshot for the whole stream: a sync committing while it runs shows in none of its chunks or all
        with self.cache.snapshot():
            own_users, reverted = self.own_users(), self.reverted()
            while True:
                found = self._records(
                    f"SELECT id, {raw}, contact_id, company_id FROM deals WHERE deleted = 0 AND id > ? ORDER BY id "
                    "LIMIT ?", [*paths, after, chunk], " AND deal_id BETWEEN ? AND ?", None, own_users, reverted, keys)
                if not found.deals:
                    return
                after = int(found.deals[-1].id)
                for table, attribute in (("contacts", "contact"), ("companies", "company")):
                    wanted = {getattr(deal, attribute) for deal in found.deals} - {""} - given[table]
                    given[table] |= wanted
                    setattr(found, table, self._clients_by_id(table, wanted))
                yield found

    def _records(self, deals_sql: str, deals_params: Sequence[Any], scope: str, scope_params: Sequence[Any] | None,
                 own_users: frozenset[str], reverted: dict[str, dict[str, str]],
                 keys: Sequence[str] | None = None) -> DealRecords:
        """Deals by `deals_sql` with their history, tasks and to-dos (`scope` narrows those to the deals' ids:
        `scope_params` as given, or None for the first and last id read); clients are the caller's. With `keys`,
        the raw column read is a JSON array of those keys' values."""
        db = self.cache.db
        rows = db.execute(deals_sql, deals_params)
        if keys is None:
            found = DealRecords([CachedDeal(str(deal_id), json.loads(raw), str(contact_id or ""), str(company_id or ""))
                                 for deal_id, raw, contact_id, company_id in rows])
        else:
            found = DealRecords([CachedDeal(str(deal_id), dict(zip(keys, json.loads(values))), str(contact_id or ""),
                                            str(company_id or "")) for deal_id, values, contact_id, company_id in rows])
        found.own_users, found.reverted = own_users, reverted
        if not found.deals:
            return found
        params = scope_params if scope_params is not None else [int(found.deals[0].id), int(found.deals[-1].id)]
        history: dict[str, list[RawRecord]] = defaultdict(list)
        for row_id, deal_id, type_id, category_id, stage_id, created, crm_id, from_category, from_stage in db.execute(
                "SELECT id, deal_id, type_id, category_id, stage_id, created_time, crm_id, from_category_id, "
                f"from_stage_id FROM stage_history WHERE deal_id IS NOT NULL{scope} ORDER BY id", params):
            row = {"ID": crm_id or str(row_id), "TYPE_ID": type_id, "CATEGORY_ID": category_id, "STAGE_ID": stage_id,
                   "CREATED_TIME": created}
            if from_stage is not None:  # amoCRM: where the lead came from (its first change tells where it was created)
                row["FROM_CATEGORY_ID"], row["FROM_STAGE_ID"] = from_category, from_stage
            history[str(deal_id)].append(row)
        # crmbridge's own tasks and to-dos (the audit log holds their ids; the marker is in their text): setting
        # them was not a person's activity (R11)
        tasks: dict[str, list[RawRecord]] = defaultdict(list)
        for task_id, deal_id, title, status, responsible, deadline, created, closed, own in db.execute(
                "SELECT id, deal_id, title, status, responsible_id, deadline, created_date, closed_date, "
                f"id IN ({_OWN_IDS.format(kinds=_OWN_TASK_KINDS)}) OR instr(raw, '{BRIDGE_MARK}') > 0 FROM tasks "
                f"WHERE deal_id IS NOT NULL{scope} ORDER BY id", params):
            tasks[str(deal_id)].append({"id": task_id, "title": title or "", "status": status,
                                        "responsibleId": responsible, "deadline": deadline, "createdDate": created,
                                        "closedDate": closed, "byBridge": own})
        todos: dict[str, list[RawRecord]] = defaultdict(list)
        for todo_id, deal_id, subject, completed, responsible, deadline, created, updated, own in db.execute(
                "SELECT id, deal_id, subject, completed, responsible_id, deadline, created, last_updated, "
                f"id IN ({_OWN_IDS.format(kinds=_OWN_TODO_KINDS)}) OR instr(raw, '{BRIDGE_MARK}') > 0 "
                f"FROM activities WHERE deal_id IS NOT NULL{scope} ORDER BY id", params):
            todos[str(deal_id)].append({"ID": todo_id, "SUBJECT": subject or "", "COMPLETED": "Y" if completed else "N",
                                        "RESPONSIBLE_ID": responsible, "DEADLINE": deadline, "CREATED": created,
                                        "LAST_UPDATED": updated, "byBridge": own})
        found.history, found.tasks, found.todos = history, tasks, todos
        return found

    def reverted(self) -> dict[str, dict[str, str]]:
        """Deal id -> {stage entry crmbridge reverted: the CRM stage it moved the deal back to}: the entries its own
        reverts made, which are no person's activity (R11)."""
        return ActionsRepository(self.cache).reverted_entries()

    def own_users(self) -> frozenset[str]:
        """The users crmbridge writes as: the authors of the cached tasks it created (the webhook's or the
        application's user). Found in the data, so nothing to configure."""
        author = "SELECT DISTINCT COALESCE(json_extract(raw, '$.createdBy'), json_extract(raw, '$.created_by')) FROM tasks"
        # two queries, not one with OR: the second is answered from the partial index tasks_own (migration 17)
        rows = self.cache.db.execute(f"{author} WHERE id IN ({_OWN_IDS.format(kinds=_OWN_TASK_KINDS)}) UNION "
                                     f"{author} WHERE instr(raw, '{BRIDGE_MARK}') > 0")
        return frozenset(str(user) for (user,) in rows if user not in (None, ""))

    def with_client_peers(self, deal_ids: Iterable[int | str]) -> list[int]:
        """The deals plus every cached deal that shares a contact or company with one of them.

        Per-client rules (R10: the client's last purchase) judge a deal against its client's other deals,
        so evaluating a few deals loads their clients' deals too, not the whole cache.
        """
        ids = sorted({int(deal_id) for deal_id in deal_ids})
        found = set(ids)
        for chunk in _chunks(ids, 400):
            marks = ",".join("?" * len(chunk))
            found.update(row["id"] for row in self.cache.query(
                "SELECT d.id FROM deals d WHERE d.deleted = 0 AND ("
                f"d.contact_id IN (SELECT contact_id FROM deals WHERE id IN ({marks}) AND contact_id IS NOT NULL) OR "
                f"d.company_id IN (SELECT company_id FROM deals WHERE id IN ({marks}) AND company_id IS NOT NULL))",
                [*chunk, *chunk]))
        return sorted(found)

    def deals_of_linked(self, entity: str, ids: Iterable[int]) -> set[int]:
        """Deals the cached tasks or to-dos with these ids are bound to."""
        found: set[int] = set()
        for chunk in _chunks(sorted(set(ids))):
            found.update(row["deal_id"] for row in self.cache.query(
                f"SELECT deal_id FROM {_linked(entity)} WHERE deal_id IS NOT NULL AND id IN ({_marks(chunk)})", chunk))
        return found

    def linked_ids_of(self, entity: str, deal_ids: Iterable[int]) -> set[int]:
        """Ids of the cached tasks or to-dos bound to these deals."""
        found: set[int] = set()
        for chunk in _chunks(sorted(set(deal_ids))):
            found.update(row["id"] for row in self.cache.query(
                f"SELECT id FROM {_linked(entity)} WHERE deal_id IN ({_marks(chunk)})", chunk))
        return found

    def deals_of_clients(self, contacts: set[int], companies: set[int]) -> set[int]:
        """Live deals naming one of these contacts or companies, or a contact of one of these companies."""
        found: set[int] = set()
        for column, ids in (("contact_id", contacts), ("company_id", companies)):
            for chunk in _chunks(sorted(ids)):
                found.update(row["id"] for row in self.cache.query(
                    f"SELECT id FROM deals WHERE deleted = 0 AND {column} IN ({_marks(chunk)})", chunk))
        if companies:  # a contact of the company whose deals name only the contact
            for chunk in _chunks(sorted(companies)):
                found.update(row["id"] for row in self.cache.query(
                    "SELECT d.id FROM deals d JOIN contacts c ON c.id = d.contact_id "
                    f"WHERE d.deleted = 0 AND c.company_id IN ({_marks(chunk)})", chunk))
        return found

    def clients_of(self, deal_ids: Iterable[int]) -> tuple[set[int], set[int]]:
        """The contact and company ids these cached deals name."""
        contacts: set[int] = set()
        companies: set[int] = set()
        for chunk in _chunks(list(deal_ids)):
            for row in self.cache.query(f"SELECT contact_id, company_id FROM deals WHERE id IN ({_marks(chunk)})", chunk):
                if row["contact_id"]:
                    contacts.add(int(row["contact_id"]))
                if row["company_id"]:
                    companies.add(int(row["company_id"]))
        return contacts, companies

    def newest_history_ids(self, deal_ids: Iterable[int]) -> dict[int, int]:
        """Deal id -> the highest cached stage-history id of it (deals without history are absent)."""
        newest: dict[int, int] = {}
        for chunk in _chunks(list(deal_ids)):
            for row in self.cache.query(f"SELECT deal_id, MAX(id) AS top FROM stage_history "
                                        f"WHERE deal_id IN ({_marks(chunk)}) GROUP BY deal_id", chunk):
                newest[int(row["deal_id"])] = int(row["top"])
        return newest

    def _clients_by_id(self, table: str, wanted: set[str]) -> dict[str, RawRecord]:
        """Rows of `table` with these ids, looked up by id (a few of many)."""
        ids = sorted(int(client_id) for client_id in wanted if client_id.lstrip("-").isdigit())
        found: dict[str, RawRecord] = {}
        for chunk in _chunks(ids):
            found.update((str(row_id), json.loads(raw)) for row_id, raw in self.cache.db.execute(
                f"SELECT id, raw FROM {_client_table(table)} WHERE id IN ({_marks(chunk)})", chunk))
        return found

    def per_stage(self) -> list[Row]:
        """Deals and their amount per pipeline and stage (pipeline, stage, deals, amount), in the portal's order."""
        return self.cache.query(
            """
            SELECT p.name AS pipeline, COALESCE(s.name, d.stage_id) AS stage, COUNT(*) AS deals,
                   ROUND(COALESCE(SUM(d.amount), 0)) AS amount
            FROM deals d
            LEFT JOIN pipelines p ON p.id = d.category_id
            LEFT JOIN stages s ON s.category_id = d.category_id AND s.status_id = d.stage_id
            WHERE d.deleted = 0
            GROUP BY d.category_id, d.stage_id
            ORDER BY d.category_id, s.sort
            """
        )

    def per_manager(self) -> list[Row]:
        """Open, won and lost deals and the won amount per responsible manager (manager, active, ...)."""
        return self.cache.query(
            """
            SELECT TRIM(COALESCE(u.name, '') || ' ' || COALESCE(u.last_name, '')) AS manager, u.active,
                   SUM(d.stage_semantic = 'P') AS open, SUM(d.stage_semantic = 'S') AS won,
                   SUM(d.stage_semantic = 'F') AS lost,
                   ROUND(COALESCE(SUM(CASE WHEN d.stage_semantic = 'S' THEN d.amount END), 0)) AS won_amount
            FROM deals d LEFT JOIN users u ON u.id = d.assigned_by_id
            WHERE d.deleted = 0
            GROUP BY d.assigned_by_id ORDER BY won_amount DESC
            """
        )


def _client_table(entity: str) -> str:
    if entity not in CLIENTS:
        raise ValueError(f"not a table of clients: {entity}")
    return entity


def _linked(entity: str) -> str:
    if entity not in LINKED:
        raise ValueError(f"not a table of deal-bound records: {entity}")
    return entity


def _marks(chunk: Sequence[Any]) -> str:
    return ",".join("?" * len(chunk))


def _chunks(ids: list[Any], size: int = 500) -> Iterable[list[Any]]:
    """SQLite's parameter limit."""
    for start in range(0, len(ids), size):
        yield ids[start:start + size]

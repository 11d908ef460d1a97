"""The KPIs' SQL: plain rows out of the cache for the pure KPI engine, and the plans / kpi_snapshots tables."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import sqlite_utils

from crmbridge.cache.tables import Tables as Cache

Row = dict[str, Any]


@contextmanager
def read_snapshot(cache: Cache) -> Iterator[None]:
    """Reads in one transaction: they see the file as it was at the first of them (a sync may be writing)."""
    conn = cache.db.conn
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.rollback()  # nothing was written


def side_reader(cache: Cache) -> Cache | None:
    """A second, read-only connection to the cache's file (None for an in-memory cache), to read from in another
    thread: SQLite runs a query without holding Python's lock, so such reads go on beside Python work. The caller
    closes it (`with`); it may be opened in one thread and used in another."""
    if cache.path is None:
        return None
    conn = sqlite3.connect(f"{Path(cache.path).resolve().as_uri()}?mode=ro", uri=True, timeout=30,
                           check_same_thread=False)
    return Cache(sqlite_utils.Database(conn), cache.path)


class Kpi:
    """What the sync writes for the KPIs: calls / meetings / e-mails, currencies, departments, plan items."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    def write_communications(self, rows: Iterable[Row]) -> int:
        """Calls, meetings and e-mails as read (whoever owns them: a deal, a contact, a lead)."""
        return self.cache.upsert("communications", rows)

    def delete_communications_not_synced_since(self, since: str) -> int:
        """After a full read: the ones it did not see are gone from the portal."""
        return self.cache.db.execute(
            "DELETE FROM communications WHERE synced_at IS NULL OR synced_at < ?", [since]).rowcount

    def replace_reference(self, currencies: Iterable[Row], departments: Iterable[Row] | None,
                          plan_items: Iterable[Row] | None) -> tuple[int, int | None, int]:
        """Lists read whole with the reference data; departments None: the webhook lacks their scope (kept as
        they were); plan items None: no smart process is bound."""
        counted = self.cache.replace_all("currencies", currencies)
        found_departments = None if departments is None else self.cache.replace_all("departments", departments)
        found_items = 0 if plan_items is None else self.cache.replace_all("plan_items", plan_items)
        return counted, found_departments, found_items


    def replace_departments(self, departments: Iterable[Row]) -> int:
        """The departments alone (amoCRM's user groups, read with the account)."""
        return self.cache.replace_all("departments", departments)


def _rows(cache: Cache, sql: str, params: Iterable[Any] = ()) -> list[Row]:
    cursor = cache.db.execute(sql, list(params))
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, values)) for values in cursor.fetchall()]


#: a bound field's value in a deal's raw record: Bitrix24 keeps UF_CRM_* at the top level; an amoCRM lead keeps
#: custom fields in custom_fields_values [{field_id, values: [{value}]}]
_FIELD_SQL = {
    "bitrix24": "json_extract(raw, ?)",
    "amocrm": "(SELECT json_extract(cf.value, '$.values[0].value') FROM json_each(raw, '$.custom_fields_values') cf "
              "WHERE CAST(json_extract(cf.value, '$.field_id') AS TEXT) = ?)",
}
_DEAL_COLUMNS = ("id", "category_id", "stage_id", "stage_semantic", "amount", "currency", "assigned_by_id", "contact_id",
                 "company_id", "date_create", "close_date", "closed")


def deal_rows(cache: Cache, suffix: str | None = None) -> list[tuple[Any, ...]]:
    """Non-deleted deals: the columns the KPIs read (kpi/inputs.py DEAL_KEYS); a date written in the portal's fixed
    offset `suffix` comes cut to its date."""
    columns = [_cut(column) if column in ("date_create", "close_date") else column for column in _DEAL_COLUMNS]
    return cache.db.execute(f"SELECT {', '.join(columns)} FROM deals WHERE deleted = 0", [suffix, suffix]).fetchall()


def deal_values(cache: Cache, fields: Mapping[str, str], crm: str = "bitrix24") -> dict[str, dict[int, Any]]:
    """The deals' bound number fields (margin, NPS): field name -> {deal id: value as raw has it}.

    They are in `raw`, whose JSON SQLite parses per field and deal (seconds for a big cache): they are kept in
    `kpi_deal_values` once read, and a deal written again (a trigger, cache/schema.py) drops its values there, so only
    new and changed deals are read out of `raw`. A cache opened read-only reads them all out of `raw` every time."""
    keys = {name: f'$."{crm_field}"' if crm == "bitrix24" else str(crm_field) for name, crm_field in fields.items()}
    try:
        deals = cache.db.execute("SELECT count(*) FROM deals").fetchone()[0]
        for key in sorted(set(keys.values())):
            held = cache.db.execute("SELECT count(*) FROM kpi_deal_values WHERE field = ?", [key]).fetchone()[0]
            if held == deals:
                continue  # a value per deal: the triggers drop those of deals written since
            with cache.atomic():
                # the missing ones are found in an index of the deals (SQLite takes the narrowest), their values in raw
                cache.db.execute(
                    f"INSERT INTO kpi_deal_values (deal_id, field, value) SELECT d.id, ?, {_FIELD_SQL[crm]} "
                    "FROM deals d WHERE d.id IN (SELECT id FROM deals WHERE NOT EXISTS "
                    "(SELECT 1 FROM kpi_deal_values v WHERE v.deal_id = deals.id AND v.field = ?))", [key, key, key])
    except sqlite3.OperationalError as refused:
        if "readonly" not in str(refused):
            raise
        return {name: dict(cache.db.execute(f"SELECT id, {_FIELD_SQL[crm]} FROM deals WHERE deleted = 0", [key]))
                for name, key in keys.items()}
    return {name: dict(cache.db.execute("SELECT deal_id, value FROM kpi_deal_values WHERE field = ?", [key]))
            for name, key in keys.items()}


# ---------------------------------------------------------------- the big tables, grouped in SQL
#
# Calls, meetings, e-mails, to-dos, tasks and stage changes are most of a cache (a year of a 100,000-deal portal is
# about a million rows): the KPIs count them per period (whole months), so SQL groups them by what the KPIs read (kind,
# manager, state, month) and hands each group's deal ids over as one text (their direction is the pure side's
# business: a deal moved between directions counts where it is now).
#
# Only timestamps written 'YYYY-MM-DDTHH:MM:SS+03:00' in the portal's fixed offset are cut into months and compared in
# SQL: their first ten characters are the local date, and two of them compare as the moments they are. Whether a text
# has that shape (a real date, a time Python reads) does not depend on the portal, so an index holds that verdict
# (cache/schema.py) beside the grouped columns in the grouping's order: SQLite then reads the plain rows straight off
# the index, grouping as it goes, and checks only the offset. Any other row (another offset, none, a DST zone's
# portal, garbage) comes out one by one, for Python to convert as it always did; the results are the same.


def _day_shape(column: str) -> str:
    """SQL without parameters (an index holds it): the column is NULL, or 25 characters with a real day of the month in
    them (the month itself is checked once per group, in Python)."""
    head = f"substr({column}, 1, 10)"
    return (f"({column} IS NULL OR (length({column}) = 25 AND substr({column}, 8, 1) = '-' "
            f"AND ((substr({column}, 9, 2) BETWEEN '01' AND '28' AND substr({column}, 10, 1) BETWEEN '0' AND '9') "
            f"OR date(julianday({head})) IS {head})))")


def _moment_shape(column: str) -> str:
    """SQL without parameters: the column is NULL, or 'YYYY-MM-DDTHH:MM:SS' and an offset as Python reads it
    (datetime.fromisoformat). SQLite's julianday checks the digits and the time, but lets a 30 February or 24:00 by."""
    head = f"substr({column}, 1, 10)"
    return (f"({column} IS NULL OR (length({column}) = 25 AND substr({column}, 11, 1) = 'T' "
            f"AND substr({column}, 12, 2) < '24' AND substr({column}, 1, 4) <> '0000' AND julianday({column}) IS NOT NULL "
            f"AND (substr({column}, 9, 2) <= '28' OR date(julianday({head})) IS {head})))")


def _in_offset(column: str) -> str:
    return f"({column} IS NULL OR substr({column}, 20) = :suffix)"


@dataclass(frozen=True)
class WorkSource:
    """A table of calls / meetings / e-mails, to-dos or tasks as the KPIs read it."""

    name: str  # communications, todos, tasks
    table: str
    where: str
    kind: str  # SQL: the kind (a column, or a literal)
    state: str  # the column saying whether it is done (completed flag, task status)
    done: str  # SQL: it is done
    incoming: str  # column or NULL
    dates: Mapping[str, str]  # KPI date (start, created, closed, deadline) -> column
    deadline: str | None = None  # overdue: deadline, and when it was closed
    closing: str | None = None
    #: the per-row columns (cache/kpi.py order, what kpi/inputs.py work_facts reads)
    columns: tuple[str, ...] = ()

    def shape(self, date: str, late: bool) -> str:
        """SQL without parameters: a row's timestamps that `date` (and, `late`, overdue) reads can be cut in SQL."""
        column = self.dates[date]
        if not late or self.deadline is None:
            return _day_shape(column)
        # a moment Python reads has a real day too; the closing moment counts only for a row done
        return (f"({_day_shape(column) + ' AND ' if column != self.deadline else ''}{_moment_shape(self.deadline)} "
                f"AND (NOT ({self.done}) OR {_moment_shape(self.closing or self.deadline)}))")

    def offset(self, date: str, late: bool) -> str:
        """SQL: ... and they are written in the portal's offset (:suffix)."""
        condition = _in_offset(self.dates[date])
        if late and self.deadline is not None:
            condition += f" AND {_in_offset(self.deadline)} AND (NOT ({self.done}) OR {_in_offset(self.closing or '')})"
        return condition

    def dated(self, date: str) -> str:
        """SQL: the row has the date (a closing date only when it is done)."""
        return f"{self.where} AND {self.dates[date]} IS NOT NULL" + (f" AND {self.done}" if date == "closed" else "")


WORK_SOURCES: dict[str, WorkSource] = {
    "communications": WorkSource(
        "communications", "communications", "1", "kind", "completed", "completed = 1", "incoming",
        {"start": "start_time", "created": "created", "closed": "last_updated"},
        columns=("kind", "responsible_id", "deal_id", "completed", "incoming", "start_time", "created",
                 "last_updated")),
    "todos": WorkSource(
        "todos", "activities", "provider_id = 'CRM_TODO'", "'todo'", "completed", "completed = 1", "NULL",
        {"start": "deadline", "created": "created", "closed": "last_updated", "deadline": "deadline"},
        "deadline", "last_updated",
        columns=("responsible_id", "deal_id", "completed", "deadline", "created", "last_updated")),
    "tasks": WorkSource(
        "tasks", "tasks", "1", "'task'", "status", "status IN (4, 5, '4', '5')", "NULL",
        {"start": "deadline", "created": "created_date", "closed": "closed_date", "deadline": "deadline"},
        "deadline", "closed_date",
        columns=("responsible_id", "deal_id", "status", "deadline", "created_date", "closed_date")),
}


class WorkGroup(NamedTuple):
    """Rows of one source alike in everything a KPI reads, in one month of one of their dates."""

    kind: str | None
    responsible_id: Any
    state: Any
    incoming: Any
    month: str  # YYYY-MM
    unbound: int  # rows bound to no deal
    unbound_late: int | None  # how many of those are overdue (None, 0: none, or not asked)
    #: the deal ids of the others, comma-separated (a deal once per row), an overdue row's prefixed "L"
    deal_ids: str | None
    rows: int  # how many rows the group holds


def _late(source: WorkSource, now: tuple[str, bool] | None) -> str:
    """SQL for WorkFact.overdue on rows of the right shape and offset: done after the deadline, or open past it at
    `now`."""
    if now is None or source.deadline is None:
        return "0"
    # `now` in the same fixed offset, to the second; with a fraction of a second, a deadline of that very second
    # is already past
    before_now = "<=" if now[1] else "<"
    return (f"(CASE WHEN {source.deadline} IS NULL THEN 0 WHEN {source.done} THEN "
            f"coalesce({source.closing} > {source.deadline}, 0) ELSE {source.deadline} {before_now} :now END)")


def work_groups(cache: Cache, source: WorkSource, date: str, suffix: str,
                now: tuple[str, bool] | None) -> list[WorkGroup]:
    """The rows of `source` with a `date`, grouped per month of it (the KPIs' periods are whole months), except those
    `work_singles` gives one by one; `now` (in the fixed offset, and whether a fraction of a second was cut off) when
    overdue rows are told apart."""
    column = source.dates[date]
    late = _late(source, now)
    month = f"substr({column}, 1, 7)"
    # grouped in the order of the source's index (cache/schema.py), constants left out: SQLite then groups as it scans
    grouping = ", ".join(term for term in (source.kind, "responsible_id", source.state, source.incoming, month)
                         if not term.startswith("'") and term != "NULL")
    # the lateness of a row is worked out once: its deal id carries it
    ids = "group_concat(deal_id)" if late == "0" else f"group_concat(CASE WHEN {late} THEN 'L' || deal_id ELSE deal_id END)"
    sql = (f"SELECT {source.kind}, responsible_id, {source.state}, {source.incoming}, {month}, "
           f"count(*) - count(deal_id), SUM(CASE WHEN deal_id IS NULL THEN {late} END), {ids}, count(*) "
           f"FROM {source.table} WHERE {source.dated(date)} AND {source.shape(date, now is not None)} = 1 "
           f"AND {source.offset(date, now is not None)} GROUP BY {grouping}")
    return [WorkGroup(*row) for row in cache.db.execute(sql, {"suffix": suffix, "now": now[0] if now else None})]


def work_count(cache: Cache, source: WorkSource, date: str) -> int:
    """The rows `work_groups` would group for `date` if all were plain (a cheap count over the source's index): when
    the groups hold as many, `work_singles` has none."""
    return cache.db.execute(f"SELECT count(*) FROM {source.table} WHERE {source.dated(date)}").fetchone()[0]


def work_singles(cache: Cache, source: WorkSource, date: str, late: bool, suffix: str | None) -> list[tuple[Any, ...]]:
    """The rows with a `date` that `work_groups` leaves out (all of them without a fixed offset, `suffix` None), one by
    one; a timestamp neither `date` nor overdue reads comes out NULL (the rest is in the source's index, read
    instead)."""
    read = {source.dates[date]} | ({source.deadline, source.closing} if late and source.deadline else set())
    columns = ", ".join(column if column not in _DATE_COLUMNS or column in read else "NULL"
                        for column in source.columns)
    if suffix is None:
        return cache.db.execute(f"SELECT {columns} FROM {source.table} WHERE {source.dated(date)}").fetchall()
    shape = source.shape(date, late)
    # the shape from the index: those of another shape, then those of another offset
    return cache.db.execute(
        f"SELECT {columns} FROM {source.table} WHERE {source.dated(date)} AND {shape} = 0 UNION ALL "
        f"SELECT {columns} FROM {source.table} WHERE {source.dated(date)} AND {shape} = 1 "
        f"AND NOT ({source.offset(date, late)})", {"suffix": suffix}).fetchall()


#: the timestamp columns of WORK_SOURCES
_DATE_COLUMNS = frozenset({"start_time", "created", "last_updated", "deadline", "created_date", "closed_date"})


def stage_groups(cache: Cache, suffix: str) -> list[tuple[Any, str, str, str, int]]:
    """(pipeline, CRM stage, month, deal ids comma-separated, rows) of stage changes with plain timestamps."""
    return cache.db.execute(
        "SELECT category_id, stage_id, substr(created_time, 1, 7), group_concat(deal_id), count(*) FROM stage_history "
        f"WHERE deal_id IS NOT NULL AND created_time IS NOT NULL AND {_day_shape('created_time')} = 1 "
        f"AND {_in_offset('created_time')} GROUP BY category_id, stage_id, substr(created_time, 1, 7)",
        {"suffix": suffix}).fetchall()


def stage_count(cache: Cache) -> int:
    """The stage changes `stage_groups` would group if all were plain."""
    return cache.db.execute("SELECT count(*) FROM stage_history WHERE deal_id IS NOT NULL "
                            "AND created_time IS NOT NULL").fetchone()[0]


def stage_history_rows(cache: Cache, suffix: str | None = None) -> list[tuple[Any, ...]]:
    """(deal_id, category_id, stage_id, created_time) of the stage changes `stage_groups` leaves out (all of them
    without a fixed offset, `suffix` None)."""
    sql = ("SELECT deal_id, category_id, stage_id, created_time FROM stage_history "
           "WHERE deal_id IS NOT NULL AND created_time IS NOT NULL")
    if suffix is None:
        return cache.db.execute(sql).fetchall()
    shape = _day_shape("created_time")
    return cache.db.execute(f"{sql} AND {shape} = 0 UNION ALL {sql} AND {shape} = 1 "
                            f"AND NOT {_in_offset('created_time')}", {"suffix": suffix}).fetchall()


def violation_rows(cache: Cache, suffix: str | None = None) -> list[tuple[Any, ...]]:
    """(deal_id, rule, manager_id, opened, resolved); a timestamp in the portal's fixed offset cut to its date."""
    return cache.db.execute(f"SELECT deal_id, rule, manager_id, {_cut('opened')}, {_cut('resolved')} FROM violations",
                            [suffix, suffix]).fetchall()


def _cut(column: str) -> str:
    """SQL: a timestamp in the portal's fixed offset (a positional parameter) cut to its date, any other left whole
    (Python's LocalTime.day reads both alike)."""
    return f"CASE WHEN length({column}) = 25 AND substr({column}, 20) = ? THEN substr({column}, 1, 10) ELSE {column} END"


def deal_ids(cache: Cache) -> set[int]:
    """Every cached deal, deleted or in an ignored pipeline too (a call bound to one is not "unbound")."""
    return {row_id for (row_id,) in cache.db.execute("SELECT id FROM deals")}


def violations_recorded(cache: Cache) -> bool:
    """Whether an audit or enforcement ever recorded violations (compliance is unknown until then)."""
    return cache.db.execute("SELECT 1 FROM violations LIMIT 1").fetchone() is not None


def user_rows(cache: Cache) -> list[Row]:
    return _rows(cache, "SELECT id, name, last_name, active, departments FROM users")


def department_rows(cache: Cache) -> list[Row]:
    return _rows(cache, "SELECT id, name, parent_id, head_id FROM departments")


def currency_rows(cache: Cache) -> list[Row]:
    return _rows(cache, "SELECT currency, amount_cnt, amount, base FROM currencies")


def plan_items(cache: Cache) -> list[tuple[int, dict[str, Any]]]:
    """(entity type id, crm.item record) of the bound smart process, as the last sync read them."""
    return [(entity_type_id, json.loads(raw))
            for entity_type_id, raw in cache.db.execute("SELECT entity_type_id, raw FROM plan_items ORDER BY id")]


def violations_by_rule_and_manager(cache: Cache) -> list[Row]:
    """Open violations counted by rule and manager (the report's last table)."""
    return _rows(cache, "SELECT rule, manager_id, COUNT(*) AS open FROM violations WHERE resolved IS NULL "
                        "GROUP BY rule, manager_id")


# ---------------------------------------------------------------- plans


def replace_plans(cache: Cache, rows: Iterable[Row], loaded_at: str) -> int:
    """The plans in force, with their source: replaced whole every time the plans are read."""
    rows = [{**row, "loaded_at": loaded_at} for row in rows]
    with cache.atomic():
        cache.db.execute("DELETE FROM plans")
        if rows:
            cache.db["plans"].insert_all(rows)
    return len(rows)


def plan_counts(cache: Cache) -> dict[str, int]:
    return {source: count for source, count in cache.db.execute(
        "SELECT source, COUNT(*) FROM plans WHERE written = 1 GROUP BY source")}


# ---------------------------------------------------------------- KPI snapshots

SNAPSHOT_KEY = ("period", "scope", "manager_id", "department_id", "direction", "kpi")


def current_snapshots(cache: Cache, periods: Iterable[str]) -> dict[tuple[Any, ...], Row]:
    """The current (not superseded) snapshot rows of the periods, by their key."""
    periods = list(periods)
    if not periods:
        return {}
    marks = ",".join("?" * len(periods))
    return {tuple(row[key] for key in SNAPSHOT_KEY): row for row in _rows(
        cache, f"SELECT * FROM kpi_snapshots WHERE superseded_at IS NULL AND period IN ({marks})", periods)}


def write_snapshots(cache: Cache, new: Iterable[Row], changed_ids: Iterable[int], computed_at: str) -> None:
    """One transaction: figures that changed are superseded (kept as history), then the new ones inserted."""
    ids = list(changed_ids)
    new = [{**row, "computed_at": computed_at, "superseded_at": None} for row in new]
    with cache.atomic():
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            cache.db.execute(f"UPDATE kpi_snapshots SET superseded_at = ? WHERE id IN ({','.join('?' * len(chunk))})",
                             [computed_at, *chunk])
        if new:
            cache.db["kpi_snapshots"].insert_all(new)


def snapshot_history(cache: Cache, period: str) -> list[Row]:
    return _rows(cache, "SELECT * FROM kpi_snapshots WHERE period = ? ORDER BY id", [period])


def monthly_violations(cache: Cache, rules: Iterable[str]) -> list[Row]:
    """Violation episodes (manager, rule, opened) for the deductions of motivation.yaml."""
    rules = list(rules)
    where = f" WHERE rule IN ({','.join('?' * len(rules))})" if rules else ""
    return _rows(cache, f"SELECT manager_id, rule, opened FROM violations{where}", rules)

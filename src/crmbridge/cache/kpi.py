"""The KPIs' SQL: plain rows out of the cache for the pure KPI engine, and the plans / kpi_snapshots tables."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from crmbridge.cache.tables import Tables as Cache

Row = dict[str, Any]


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


def deal_rows(cache: Cache, fields: Mapping[str, str], crm: str = "bitrix24") -> list[Row]:
    """Non-deleted deals with the typed columns the KPIs read; bound number fields come out of `raw` in SQL
    (json_extract runs in C: decoding 100,000 raw records in Python would cost seconds)."""
    extracted = "".join(f", {_FIELD_SQL[crm]} AS \"field:{name}\"" for name in fields)
    params = [f'$."{crm_field}"' if crm == "bitrix24" else str(crm_field) for crm_field in fields.values()]
    return _rows(cache, "SELECT id, category_id, stage_id, stage_semantic, amount, currency, assigned_by_id, "
                        f"contact_id, company_id, date_create, close_date, closed{extracted} FROM deals WHERE deleted = 0",
                 params)


def stage_history_rows(cache: Cache, suffix: str | None = None) -> list[tuple[Any, ...]]:
    """(deal_id, category_id, stage_id, entered) of every stage change."""
    return cache.db.execute(f"SELECT deal_id, category_id, stage_id, {_day('created_time', suffix)} FROM stage_history "
                            "WHERE deal_id IS NOT NULL").fetchall()


# The big lists come as tuples (column order as selected): a dict per row would cost more than the KPIs.
# With the portal's fixed offset (`suffix`, e.g. +03:00) a timestamp written in it is cut to its date in SQL,
# which is its local date; any other text is returned whole for Python to convert.


def _day(column: str, suffix: str | None) -> str:
    if not suffix:
        return column
    return f"CASE WHEN length({column}) = 25 AND substr({column}, 20) = '{suffix}' THEN substr({column}, 1, 10) " \
           f"ELSE {column} END"


def communication_rows(cache: Cache, suffix: str | None = None) -> list[tuple[Any, ...]]:
    return cache.db.execute(f"SELECT kind, responsible_id, deal_id, completed, incoming, {_day('start_time', suffix)}, "
                            f"{_day('created', suffix)}, {_day('last_updated', suffix)} FROM communications").fetchall()


def todo_rows(cache: Cache) -> list[tuple[Any, ...]]:
    # deadlines and completions are compared as moments (overdue): kept whole
    return cache.db.execute("SELECT responsible_id, deal_id, completed, deadline, created, last_updated FROM activities "
                            "WHERE provider_id = 'CRM_TODO'").fetchall()


def task_rows(cache: Cache) -> list[tuple[Any, ...]]:
    return cache.db.execute("SELECT responsible_id, deal_id, status, deadline, created_date, closed_date "
                            "FROM tasks").fetchall()


def violation_rows(cache: Cache) -> list[Row]:
    return _rows(cache, "SELECT deal_id, rule, manager_id, opened, resolved FROM violations")


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

"""The cache: raw-to-row conversions, migrations, version guard, change detection and deletion marks."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from crmbridge.cache import rows
from crmbridge.cache.schema import SCHEMA_VERSION
from crmbridge.cache.store import open_cache
from crmbridge.cache.sync_state import SyncState
from crmbridge.errors import CacheError

RAW_DEAL = {
    "ID": "410", "TITLE": "New Deal #1", "STAGE_ID": "C1:NEW", "CATEGORY_ID": "1", "STAGE_SEMANTIC_ID": "P",
    "OPPORTUNITY": "1000000.00", "CURRENCY_ID": "RUB", "ASSIGNED_BY_ID": "3", "CONTACT_ID": "84",
    "COMPANY_ID": "", "DATE_CREATE": "2024-08-30T14:29:00+03:00", "DATE_MODIFY": "2024-08-31T10:00:00+03:00",
    "CLOSED": "N", "CLOSEDATE": "2024-09-09T00:00:00+03:00", "PROBABILITY": "", "UF_CRM_1700000104": "Иванов",
}


def test_deal_row_types_the_portal_strings() -> None:
    row = rows.deal_row(RAW_DEAL, "2026-01-01T00:00:00+00:00")
    assert row["id"] == 410 and row["category_id"] == 1 and row["assigned_by_id"] == 3
    assert row["amount"] == 1_000_000.0
    assert row["company_id"] is None  # empty string is "no company", not 0
    assert row["probability"] is None  # empty is not zero
    assert row["closed"] == 0
    assert '"UF_CRM_1700000104":"Иванов"' in row["raw"]


@pytest.mark.parametrize(
    ("value", "expected"), [("0", 0.0), ("0.00", 0.0), ("", None), (None, None), ("abc", None), ("12.5", 12.5)]
)
def test_empty_amount_is_not_zero(value: object, expected: float | None) -> None:
    assert rows.as_float(value) == expected


def test_stage_semantics_from_status_list_rows() -> None:
    assert rows.stage_semantics({"SEMANTICS": "S"}) == "S"
    assert rows.stage_semantics({"SEMANTICS": None, "EXTRA": {"SEMANTICS": "failure"}}) == "F"
    assert rows.stage_semantics({"SEMANTICS": None, "EXTRA": {"SEMANTICS": "process"}}) == "P"


def test_contact_multifields_make_has_phone_and_email() -> None:
    row = rows.contact_row({"ID": "5", "PHONE": [{"VALUE": "+7 900", "VALUE_TYPE": "WORK"}], "EMAIL": [{"VALUE": " "}]})
    assert (row["has_phone"], row["has_email"]) == (1, 0)


def test_task_binding_keeps_the_first_deal() -> None:
    row = rows.task_row({"id": "9", "title": "Позвонить", "status": "5", "ufCrmTask": ["C_7", "D_12", "D_13"]})
    assert (row["id"], row["deal_id"], row["status"]) == (9, 12, 5)
    assert rows.task_row({"id": "10", "ufCrmTask": ["L_1"]})["deal_id"] is None


def test_open_migrates_to_the_current_version_in_wal_mode(tmp_path: Path) -> None:
    cache = open_cache(tmp_path / "c.db")
    assert cache.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert cache.db.journal_mode == "wal"
    assert {"deals", "pipelines", "stages", "users", "contacts", "companies", "stage_history", "tasks",
            "deal_fields", "sync_state"} <= set(cache.db.table_names())
    cache.close()
    # opening again is a no-op
    open_cache(tmp_path / "c.db").close()


def test_newer_cache_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(CacheError, match="newer crmbridge"):
        open_cache(path)


def test_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CacheError, match="not a crmbridge cache"):
        open_cache(path)


def test_changed_ids_and_deleted_marks(tmp_path: Path) -> None:
    cache = open_cache(tmp_path / "c.db")
    first = [rows.deal_row({**RAW_DEAL, "ID": str(i)}, "2026-01-01T00:00:00.000000+00:00") for i in (1, 2, 3)]
    assert cache.deals.changed_ids(first) == {1, 2, 3}
    cache.upsert("deals", first)
    again = [rows.deal_row({**RAW_DEAL, "ID": "1"}, "2026-01-02T00:00:00.000000+00:00"),
             rows.deal_row({**RAW_DEAL, "ID": "2", "TITLE": "renamed"}, "2026-01-02T00:00:00.000000+00:00")]
    assert cache.deals.changed_ids(again) == {2}
    cache.upsert("deals", again)
    assert cache.deals.mark_deleted("2026-01-02T00:00:00.000000+00:00") == 1
    assert cache.query("SELECT id FROM deals WHERE deleted = 1") == [{"id": 3}]
    # a deleted deal that comes back counts as a change
    assert cache.deals.changed_ids([rows.deal_row({**RAW_DEAL, "ID": "3"}, "x")]) == {3}


def test_sync_state_round_trip(tmp_path: Path) -> None:
    cache = open_cache(tmp_path / "c.db")
    assert cache.syncs.get("deals") == SyncState(entity="deals")
    state = SyncState(entity="deals", mode="full", status="running", last_id=2500, started_at="t0")
    cache.syncs.save(state)
    assert cache.syncs.get("deals") == state


def test_replace_all_drops_what_the_portal_no_longer_has(tmp_path: Path) -> None:
    cache = open_cache(tmp_path / "c.db")
    stages = [rows.stage_row({"STATUS_ID": s, "NAME": s, "ENTITY_ID": "DEAL_STAGE"}, 0) for s in ("NEW", "OLD")]
    cache.replace_all("stages", stages)
    cache.replace_all("stages", stages[:1])
    assert [r["status_id"] for r in cache.query("SELECT status_id FROM stages")] == ["NEW"]

"""Readers and writers on one cache file (issue 7, item 7): a writer waits its turn instead of failing."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from crmbridge.cache import rows
from crmbridge.cache.schema import MIGRATIONS, SCHEMA_VERSION
from crmbridge.cache.store import open_cache

RAW = {"ID": "1", "TITLE": "Сделка", "STAGE_ID": "NEW", "CATEGORY_ID": "0", "DATE_CREATE": "2026-11-02T10:00:00+03:00"}


def deal(deal_id: int) -> dict[str, object]:
    return rows.deal_row({**RAW, "ID": str(deal_id)}, "2026-11-20T10:00:00+00:00")


def test_a_transaction_that_reads_before_it_writes_waits_for_another_writer_instead_of_failing(tmp_path: Path) -> None:
    """SQLite's deferred transaction takes a snapshot at its first read; when another connection commits before the
    first write, the write fails at once with "database is locked" (SQLITE_BUSY_SNAPSHOT: no busy timeout helps).
    This is how `sync --full` and `audit` failed each other: every write transaction of the cache reads first
    (sqlite-utils looks at the table, the ledger reads the open rows)."""
    path = tmp_path / "cache.db"
    first = open_cache(path)
    open_cache(path).close()  # created and migrated before the other thread opens it
    errors: list[BaseException] = []

    def other_writer() -> None:
        try:
            with open_cache(path) as second, second.atomic():
                second.deals.upsert([deal(2)])
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    try:
        with first.atomic():
            assert first.deals.empty()  # the first read
            thread = threading.Thread(target=other_writer)
            thread.start()
            thread.join(0.5)  # before: it commits at once; after: it waits for this transaction
            first.deals.upsert([deal(1)])
        thread.join(10)
        assert not thread.is_alive() and errors == []
        assert [row["id"] for row in first.query("SELECT id FROM deals ORDER BY id")] == [1, 2]
    finally:
        first.close()


def test_a_reader_never_blocks_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    writer, reader = open_cache(path), open_cache(path)
    try:
        writer.deals.upsert([deal(1)])
        cursor = reader.db.conn.execute("SELECT id FROM deals")  # a long read (audit) keeps its snapshot open
        reader.db.conn.execute("BEGIN")
        assert reader.deals.empty() is False
        with writer.atomic():
            writer.deals.upsert([deal(2)])
        assert writer.count("deals") == 2 and reader.count("deals") == 1  # the reader still sees its snapshot
        reader.db.conn.rollback()
        cursor.close()
    finally:
        writer.close()
        reader.close()


def test_two_processes_opening_an_old_cache_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0] + "\nPRAGMA user_version = 1;")
    conn.close()
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            open_cache(path).close()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    with open_cache(path) as cache:
        assert cache.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION

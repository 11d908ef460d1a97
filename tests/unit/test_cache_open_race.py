"""Two processes opening one fresh cache at the same moment (issue 7, item 7): the second waits, never fails."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from crmbridge.cache.store import open_cache


def test_opening_a_new_file_waits_while_another_connection_holds_it(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    holder = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # still a rollback-journal file: as another process mid-switch or mid-migration
    holder.execute("CREATE TABLE IF NOT EXISTS other_process (x)")
    release = threading.Timer(0.4, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        cache = open_cache(path)  # SQLite refuses the switch to WAL at once while the lock is held
    finally:
        release.join()
    assert cache.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert cache.db.execute("PRAGMA user_version").fetchone()[0] > 0
    holder.close()

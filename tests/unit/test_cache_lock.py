"""The one-writer lock beside the cache: it dies with its holder (kill -9), names a live one, and can be broken."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crmbridge.cache.lock import WriterLock
from crmbridge.errors import CacheLocked, LockLost

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from crmbridge.cache.lock import WriterLock
    WriterLock(Path(sys.argv[1]), "enforce", "held-by-child").acquire()
    print("held", flush=True)
    time.sleep(60)
""")


def holder_process(cache_path: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(cache_path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_a_holder_killed_with_sigkill_releases_the_lock_at_once(tmp_path: Path) -> None:
    cache_path = tmp_path / "cache.db"
    child = holder_process(cache_path)
    try:
        with pytest.raises(CacheLocked, match=rf"run held-by-child \(pid {child.pid} on {socket.gethostname()}"):
            WriterLock(cache_path, "enforce", "next").acquire()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    lock = WriterLock(cache_path, "enforce", "next")
    lock.acquire()  # no waiting for a lease to expire: the kernel dropped the dead holder's lock
    lock.release()


def test_a_live_holder_is_named_with_its_heartbeat_and_the_way_out(tmp_path: Path) -> None:
    first = WriterLock(tmp_path / "cache.db", "enforce", "first")
    first.acquire(now=T0)
    first.heartbeat(now=T0 + timedelta(minutes=10))
    with pytest.raises(CacheLocked) as refused:
        WriterLock(tmp_path / "cache.db", "enforce", "second").acquire(now=T0 + timedelta(minutes=10, seconds=3))
    message = str(refused.value)
    assert f"run first (pid {os.getpid()} on {socket.gethostname()}, since 2026-11-20T09:00:00" in message
    assert "last heartbeat 3 s ago" in message and "--break-lock" in message
    first.release()
    second = WriterLock(tmp_path / "cache.db", "enforce", "second")
    second.acquire()
    second.release()


def test_break_lock_takes_over_and_the_old_holder_stops_at_its_next_heartbeat(tmp_path: Path) -> None:
    old = WriterLock(tmp_path / "cache.db", "enforce", "old")
    old.acquire(now=T0)
    new = WriterLock(tmp_path / "cache.db", "enforce", "new")
    new.acquire(break_lock=True, now=T0)
    with pytest.raises(LockLost, match="lost its lock to run new"):
        old.heartbeat(now=T0)
    old.release()  # releasing a broken lock leaves the new holder's file alone
    with pytest.raises(CacheLocked, match="run new"):
        WriterLock(tmp_path / "cache.db", "enforce", "third").acquire()
    new.release()


def test_locks_of_other_jobs_and_caches_in_memory_do_not_interfere(tmp_path: Path) -> None:
    with WriterLock(tmp_path / "cache.db", "enforce", "a"), WriterLock(tmp_path / "cache.db", "sync", "b"):
        pass
    with WriterLock(None, "enforce", "a"), WriterLock(None, "enforce", "b"):
        pass  # an in-memory cache has no other writer
    assert (tmp_path / "cache.db.enforce.lock").stat().st_mode & 0o777 == 0o600

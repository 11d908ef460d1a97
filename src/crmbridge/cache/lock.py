"""The one-writer lock of a cache: an OS lock on a file beside it, which dies with its holder (even on kill -9).

The lock is `fcntl.flock` on `<cache>.<name>.lock`; the kernel releases it when the holding process ends however it
ends, so a dead run never blocks the next one. The file's text names the holder (run id, pid, host, since, last
heartbeat) for the message a refused run prints. `break_lock` is the way out where the OS lock cannot be trusted (a
cache on a network share whose server lost track of a client): it replaces the file, and a holder that is in fact
still alive notices at its next heartbeat that the file is no longer its own and stops writing.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from crmbridge.errors import CacheError, CacheLocked, LockLost

try:  # POSIX; flock locks an open file, so two opens in one process exclude each other too
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock: one writer is then the admin's duty
    fcntl = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as its file says."""

    run: str
    pid: int | None
    host: str
    since: str
    heartbeat: str

    def describe(self, now: datetime | None = None) -> str:
        moment = now or datetime.now(UTC)
        beat = ""
        try:
            ago = (moment - datetime.fromisoformat(self.heartbeat)).total_seconds()
            beat = f", last heartbeat {max(0, int(ago))} s ago"
        except ValueError:
            pass
        pid = f"pid {self.pid} " if self.pid else ""
        return f"run {self.run} ({pid}on {self.host or 'an unknown host'}, since {self.since[:19]}{beat})"

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        try:
            data = json.loads(text)
            return cls(str(data["run"]), int(data["pid"]) if data.get("pid") else None, str(data.get("host") or ""),
                       str(data.get("since") or ""), str(data.get("heartbeat") or data.get("since") or ""))
        except (ValueError, KeyError, TypeError):
            return None


class WriterLock:
    """One writer per cache for one job (`name`, e.g. "enforce"). Use `acquire`, `heartbeat` after each unit of
    work, `release` at the end (or as a context manager). A cache in memory has no file and no other writer: no lock."""

    def __init__(self, cache_path: Path | None, name: str, run: str) -> None:
        self.name = name
        self.run = run
        self.path = None if cache_path is None else cache_path.with_name(f"{cache_path.name}.{name}.lock")
        self._fd: int | None = None
        self._since = ""

    # ------------------------------------------------------------ public

    def acquire(self, *, break_lock: bool = False, now: datetime | None = None, wait: float = 0.0) -> None:
        """Take the lock (waiting up to `wait` seconds for its holder to finish) or raise CacheLocked naming the
        holder; `break_lock` takes it from a holder the OS lock cannot see (the old holder stops at its next
        heartbeat)."""
        moment = now or datetime.now(UTC)
        if self.path is None:
            return
        try:
            if break_lock:
                self.path.unlink(missing_ok=True)  # a new file: the old holder's lock is on the old one
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise CacheError(f"cannot open the lock file {self.path}: {exc.strerror or exc}",
                             hint="check CRMBRIDGE_CACHE_PATH and the folder's permissions") from None
        deadline = time.monotonic() + wait
        taken = _os_lock(fd)
        while not taken and time.monotonic() < deadline:
            time.sleep(0.05)
            taken = _os_lock(fd)
        if not taken:
            holder = Holder.parse(_read(fd))
            os.close(fd)
            raise self._held(holder, moment)
        self._fd = fd
        moment = moment if now is not None or not wait else datetime.now(UTC)  # after a wait: when it was taken
        self._since = moment.astimezone(UTC).isoformat(timespec="seconds")
        self._write(moment)

    def heartbeat(self, now: datetime | None = None) -> None:
        """Still ours? Then record that the holder is alive; if the lock was broken, raise LockLost."""
        if self.path is None or self._fd is None:
            return
        moment = now or datetime.now(UTC)
        holder = self._broken_by(self._fd)
        if holder is not None:
            raise LockLost(f"{self.name} run {self.run} lost its lock to {holder}; it stops writing",
                           hint="what it wrote is in the audit log; the run that took the lock goes on from there")
        self._write(moment)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                if self._broken_by(fd) is None:
                    os.ftruncate(fd, 0)  # kept, not unlinked: a process may hold it open to lock it next
            except OSError:
                pass
            os.close(fd)  # closing the last descriptor drops the OS lock

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ------------------------------------------------------------ internals

    def _held(self, holder: Holder | None, now: datetime) -> CacheLocked:
        who = holder.describe(now) if holder is not None else "a process that did not say who it is"
        return CacheLocked(f"another {self.name} run is writing to this cache: {who}", holder,
                        hint=f"wait for it to finish (a run that dies releases the lock at once); if that process is "
                             f"gone and the lock stays (a cache on a network share), run `crmbridge {self.name} "
                             "--break-lock`")

    def _write(self, now: datetime) -> None:
        assert self._fd is not None
        text = json.dumps({"run": self.run, "pid": os.getpid(), "host": socket.gethostname(), "since": self._since,
                           "heartbeat": now.astimezone(UTC).isoformat(timespec="seconds")})
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, text.encode(), 0)

    def _broken_by(self, fd: int) -> str | None:
        """Who took the lock over (the file at the path is not the one `fd` locks); None while it is ours."""
        assert self.path is not None
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return "a run that broke the lock"
        if current.st_ino != os.fstat(fd).st_ino:
            try:
                holder = Holder.parse(self.path.read_text(encoding="utf-8"))
            except OSError:
                holder = None
            return holder.describe() if holder is not None else "a run that broke the lock"
        return None


def _os_lock(fd: int) -> bool:
    if fcntl is None:  # pragma: no cover - see the import
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 4096, 0).decode("utf-8", errors="replace")
    except OSError:
        return ""


@contextmanager
def file_lock(path: Path | str, *, wait: float = 0.0) -> Iterator[bool]:
    """An exclusive `flock` on `path` (created 0600), yielding whether it was taken within `wait` seconds.

    For short critical sections shared by processes (a token refresh, an offline poll): the kernel drops the
    lock when its holder dies, so no stale lock is ever left behind. Without flock (Windows) it yields True.
    """
    if fcntl is None:  # pragma: no cover - see the import
        yield True
        return
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait
        taken = _os_lock(fd)
        while not taken and time.monotonic() < deadline:
            time.sleep(0.02)
            taken = _os_lock(fd)
        try:
            yield taken
        finally:
            if taken:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


__all__ = ["Holder", "WriterLock", "file_lock"]

"""The 7-requests-per-second limit of an amoCRM account, kept across threads (and, with a file, across processes).

amoCRM answers a request over 7 per second with 429, and repeated excess gets the account or IP
blocked with 403 for every request (reference §7), so the client must never send an eighth request
inside any one-second window: a sliding window of send times, not an average rate. A `margin` widens
the window a little, so jitter between our clock and the account's cannot squeeze two windows' worth
into one of theirs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

__all__ = ["AMOCRM_RATE", "FileRateWindow", "RateLimiter", "RateWindow", "shared_window"]

log = logging.getLogger("crmbridge.amocrm")

#: requests per second an account accepts (reference §7, D-lim)
AMOCRM_RATE = 7


class RateLimiter(Protocol):
    """Waits until one more request may go, and holds everyone back after a 429."""

    waited: float

    def acquire(self) -> None: ...

    def hold(self, seconds: float) -> None: ...


class RateWindow:
    """At most `rate` requests in any `window + margin` seconds, for every thread that shares this object."""

    def __init__(self, rate: int = AMOCRM_RATE, *, window: float = 1.0, margin: float = 0.05,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        if rate < 1:
            raise ValueError("rate must be at least 1 request per window")
        self.rate = int(rate)
        self.span = window + margin
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._sent: deque[float] = deque()
        self._held_until = 0.0
        #: seconds this window made callers wait, for the sync summary
        self.waited = 0.0

    def _wait_needed(self, now: float) -> float:
        while self._sent and self._sent[0] <= now - self.span:
            self._sent.popleft()
        if now < self._held_until:
            return self._held_until - now
        if len(self._sent) < self.rate:
            return 0.0
        return self._sent[0] + self.span - now

    def acquire(self) -> None:
        while True:
            with self._lock:
                now = self._clock()
                wait = self._wait_needed(now)
                if wait <= 0:
                    self._sent.append(now)
                    return
            # sleep outside the lock: the others re-check when they wake, in whatever order
            self.waited += wait
            self._sleep(wait)

    def hold(self, seconds: float) -> None:
        """After a 429: nobody sends for `seconds` (the account's own window is full; ours was wrong)."""
        with self._lock:
            self._held_until = max(self._held_until, self._clock() + seconds)

    def sent_in_window(self) -> int:
        with self._lock:
            self._wait_needed(self._clock())
            return len(self._sent)


_SHARED: dict[str, RateWindow] = {}
_SHARED_LOCK = threading.Lock()


def shared_window(account: str, rate: int = AMOCRM_RATE) -> RateWindow:
    """The one window of an account in this process: every client of the same account shares it."""
    with _SHARED_LOCK:
        window = _SHARED.get(account)
        if window is None or window.rate != rate:
            window = _SHARED[account] = RateWindow(rate)
        return window


class FileRateWindow:
    """The same sliding window kept in a small file under an exclusive lock, so that every crmbridge process of
    one account (the daemon, a cron `enforce`, an admin's `sync`) counts against one limit.

    The file holds the wall-clock send times of the last `rate` requests, one per line. POSIX only (fcntl);
    elsewhere it falls back to an in-process window.
    """

    def __init__(self, path: Path | str, rate: int = AMOCRM_RATE, *, window: float = 1.0, margin: float = 0.05,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
        self.path = Path(path)
        self.rate = int(rate)
        self.span = window + margin
        self._clock = clock
        self._sleep = sleep
        self._thread_lock = threading.Lock()
        self.waited = 0.0
        try:
            import fcntl  # noqa: F401
            self._fallback: RateWindow | None = None
        except ImportError:  # pragma: no cover - not POSIX
            self._fallback = RateWindow(rate, window=window, margin=margin)

    def _locked(self, update: Callable[[list[float]], tuple[list[float], float]]) -> float:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            text = os.read(fd, 4096).decode("ascii", errors="ignore")
            times = []
            for line in text.split():
                try:
                    times.append(float(line))
                except ValueError:
                    continue
            times, wait = update(times)
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, "\n".join(f"{t:.6f}" for t in times).encode("ascii"))
            return wait
        finally:
            os.close(fd)  # closing releases the flock

    def acquire(self) -> None:
        if self._fallback is not None:  # pragma: no cover
            self._fallback.acquire()
            return
        while True:
            def take(times: list[float]) -> tuple[list[float], float]:
                now = self._clock()
                held = [t for t in times if t > now + 1e-9]  # a future time is a hold after a 429
                recent = sorted(t for t in times if now - self.span < t <= now + 1e-9)
                if held:
                    return times, max(held) - now
                if len(recent) < self.rate:
                    return (recent + [now])[-self.rate:], 0.0
                return recent, recent[0] + self.span - now

            with self._thread_lock:
                wait = self._locked(take)
            if wait <= 0:
                return
            self.waited += wait
            self._sleep(wait)

    def hold(self, seconds: float) -> None:
        if self._fallback is not None:  # pragma: no cover
            self._fallback.hold(seconds)
            return

        def put(times: list[float]) -> tuple[list[float], float]:
            # a send time in the future blocks everyone until then; the window then starts afresh
            return [t for t in times if t <= self._clock()][-(self.rate - 1):] + [self._clock() + seconds], 0.0

        with self._thread_lock:
            self._locked(put)

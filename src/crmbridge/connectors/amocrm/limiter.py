"""The 7-requests-per-second limit of an amoCRM account, kept across threads (and, with a file, across processes).

amoCRM answers a request over 7 per second with 429, and repeated excess gets the account or IP
blocked with 403 for every request (reference §7), so the client must never have an eighth request
reach the account inside any one-second window.

Counting send times alone cannot promise that: a request delayed on its way (a busy machine, a slow
connection) reaches the account later than it was sent, and the next ones catch up with it. The
window therefore counts each request from when it is sent until one second after its answer came
back (the latest moment the account can have taken it): a new request goes only when fewer than
`rate` requests are in flight or answered within the last second. Whatever the delays, the account
never sees more than `rate` in any second; a sequential client pays its round trip once per `rate`
requests (7 requests per 1 s + latency). A `margin` widens the second a little for clock granularity.
"""

from __future__ import annotations

import itertools
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
#: while waiting for an in-flight request to come back, look again this often
_POLL = 0.005


class RateLimiter(Protocol):
    """Waits until one more request may go (returning its ticket), learns when it came back, holds after a 429."""

    waited: float

    def acquire(self) -> int: ...

    def release(self, ticket: int) -> None: ...

    def hold(self, seconds: float) -> None: ...


class RateWindow:
    """At most `rate` requests in flight or answered within `window + margin` seconds, across this object's threads."""

    def __init__(self, rate: int = AMOCRM_RATE, *, window: float = 1.0, margin: float = 0.02,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        if rate < 1:
            raise ValueError("rate must be at least 1 request per window")
        self.rate = int(rate)
        self.span = window + margin
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._answered: deque[float] = deque()  # when answers came back, oldest first
        self._in_flight: dict[int, float] = {}  # ticket -> when sent
        self._tickets = itertools.count(1)
        self._held_until = 0.0
        #: seconds this window made callers wait, for the sync summary
        self.waited = 0.0

    def _wait_needed(self, now: float) -> float:
        while self._answered and self._answered[0] <= now - self.span:
            self._answered.popleft()
        if now < self._held_until:
            return self._held_until - now
        if len(self._answered) + len(self._in_flight) < self.rate:
            return 0.0
        if self._answered:
            return max(self._answered[0] + self.span - now, _POLL)
        return _POLL  # every slot is a request still on its way: wait for an answer

    def acquire(self) -> int:
        while True:
            with self._lock:
                now = self._clock()
                wait = self._wait_needed(now)
                if wait <= 0:
                    ticket = next(self._tickets)
                    self._in_flight[ticket] = now
                    return ticket
            # sleep outside the lock: the others re-check when they wake, in whatever order
            self.waited += wait
            self._sleep(wait)

    def release(self, ticket: int) -> None:
        """The request's answer came back (or it failed without one): from now it counts for one second."""
        with self._lock:
            if self._in_flight.pop(ticket, None) is not None:
                self._answered.append(self._clock())

    def hold(self, seconds: float) -> None:
        """After a 429: nobody sends for `seconds` (the account's own window is full; ours was wrong)."""
        with self._lock:
            self._held_until = max(self._held_until, self._clock() + seconds)

    def sent_in_window(self) -> int:
        with self._lock:
            self._wait_needed(self._clock())
            return len(self._answered) + len(self._in_flight)


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
    """The same window kept in a small file under an exclusive lock, so that every crmbridge process of one
    account (the daemon, a cron `enforce`, an admin's `sync`) counts against one limit.

    One line per request: `a <time>` once answered, `f <ticket> <bound>` while in flight, where the bound
    (send time + `flight_bound`) stands in for the answer of a process that died mid-request; `h <time>`
    is a hold after a 429. Wall-clock times (every process reads the same clock). POSIX only (fcntl);
    elsewhere an in-process window.
    """

    def __init__(self, path: Path | str, rate: int = AMOCRM_RATE, *, window: float = 1.0, margin: float = 0.02,
                 flight_bound: float = 120.0, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.path = Path(path)
        self.rate = int(rate)
        self.span = window + margin
        self.flight_bound = flight_bound
        self._clock = clock
        self._sleep = sleep
        self._thread_lock = threading.Lock()
        self._prefix = f"{os.getpid()}-{id(self):x}-"
        self._tickets = itertools.count(1)
        self.waited = 0.0
        try:
            import fcntl  # noqa: F401
            self._fallback: RateWindow | None = None
        except ImportError:  # pragma: no cover - not POSIX
            self._fallback = RateWindow(rate, window=window, margin=margin)

    def _locked(self, update: Callable[[list[list[str]]], tuple[list[list[str]], float]]) -> float:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            chunks = []
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
            lines = [line.split() for line in b"".join(chunks).decode("ascii", errors="ignore").splitlines()]
            lines, wait = update([line for line in lines if line])
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, "".join(" ".join(line) + "\n" for line in lines).encode("ascii"))
            return wait
        finally:
            os.close(fd)  # closing releases the flock

    def _live(self, lines: list[list[str]], now: float) -> list[list[str]]:
        """Entries that still count: answers within the span, in-flight requests within their bound, holds."""
        live = []
        for line in lines:
            try:
                if line[0] == "a" and float(line[1]) > now - self.span:
                    live.append(line)
                elif line[0] == "f" and float(line[2]) > now:
                    live.append(line)
                elif line[0] == "h" and float(line[1]) > now:
                    live.append(line)
            except (IndexError, ValueError):
                continue
        return live

    def acquire(self) -> int:
        if self._fallback is not None:  # pragma: no cover
            return self._fallback.acquire()
        ticket = next(self._tickets)
        name = f"{self._prefix}{ticket}"
        while True:
            def take(lines: list[list[str]]) -> tuple[list[list[str]], float]:
                now = self._clock()
                live = self._live(lines, now)
                holds = [float(line[1]) for line in live if line[0] == "h"]
                if holds:
                    return live, max(holds) - now
                counted = [line for line in live if line[0] in ("a", "f")]
                if len(counted) < self.rate:
                    return live + [["f", name, f"{now + self.flight_bound:.6f}"]], 0.0
                answered = sorted(float(line[1]) for line in counted if line[0] == "a")
                return live, max(answered[0] + self.span - now, _POLL) if answered else _POLL

            with self._thread_lock:
                wait = self._locked(take)
            if wait <= 0:
                return ticket
            self.waited += wait
            self._sleep(wait)

    def release(self, ticket: int) -> None:
        if self._fallback is not None:  # pragma: no cover
            self._fallback.release(ticket)
            return
        name = f"{self._prefix}{ticket}"

        def answered(lines: list[list[str]]) -> tuple[list[list[str]], float]:
            now = self._clock()
            out = [["a", f"{now:.6f}"] if line[0] == "f" and line[1:2] == [name] else line for line in lines]
            return self._live(out, now), 0.0

        with self._thread_lock:
            self._locked(answered)

    def hold(self, seconds: float) -> None:
        if self._fallback is not None:  # pragma: no cover
            self._fallback.hold(seconds)
            return

        def put(lines: list[list[str]]) -> tuple[list[list[str]], float]:
            now = self._clock()
            return self._live(lines, now) + [["h", f"{now + seconds:.6f}"]], 0.0

        with self._thread_lock:
            self._locked(put)

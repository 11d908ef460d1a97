"""Client-side model of the portal's limits: the leaky request bucket and each method's operating-time budget."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BucketFile", "Limiter", "OperatingState", "bucket_file"]

log = logging.getLogger("crmbridge.bitrix24")

#: fallback when an answer reports operating seconds but no reset time: the portal's window is made
#: of one-minute baskets, so the oldest one expires within a minute
_DEFAULT_RESET_DELAY = 60.0


@dataclass
class OperatingState:
    """What the portal last said about one method: seconds used in the 10-minute window, and when some are freed."""

    operating: float
    reset_at: float  # wall-clock unix seconds


class BucketFile:
    """The portal's bucket as every crmbridge process of one cache sees it: a small file (`<cache>.bitrix24-bucket`)
    holding the modelled level and when it was last counted, read and written under an exclusive lock.

    A process that starts reads the level the last one left, drained by the time since (a restart right after a
    burst waits instead of drawing 503); processes that overlap (the daemon, a cron `enforce`, an admin's `sync`)
    count against one bucket, as the portal does. POSIX only (fcntl); elsewhere `reserve` keeps no file and the
    limiter starts from a full bucket.
    """

    def __init__(self, path: Path | str, *, wall: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._wall = wall
        self._thread_lock = threading.Lock()
        try:
            import fcntl  # noqa: F401
            self.available = True
        except ImportError:  # pragma: no cover - not POSIX
            self.available = False

    def update(self, change: Callable[[float | None], tuple[float, float]], rate: float) -> float:
        """Under the lock: the level now (the stored one drained since it was stored; None when there is none),
        `change` -> (new level, what to return), the new level stored with the time."""
        import fcntl

        with self._thread_lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                now = self._wall()
                level: float | None = None
                try:
                    stored, at = (float(part) for part in os.read(fd, 256).decode("ascii").split())
                    level = max(0.0, stored - max(0.0, now - at) * rate)
                except ValueError:
                    level = None  # no file yet, or not ours: the caller assumes the worst
                new_level, answer = change(level)
                os.lseek(fd, 0, os.SEEK_SET)
                os.ftruncate(fd, 0)
                os.write(fd, f"{new_level:.6f} {now:.6f}".encode("ascii"))
                return answer
            finally:
                os.close(fd)  # closing releases the flock


def bucket_file(cache_path: Path | str) -> BucketFile | None:
    """The bucket every process of one cache (one portal) shares, beside the cache; None for a cache in memory."""
    if str(cache_path) == ":memory:":
        return None
    return BucketFile(Path(f"{cache_path}.bitrix24-bucket"))


class Limiter:
    """Decides how long to wait before the next request so that a steady workload never hits 503 or 429.

    Leaky bucket (D `limits.md`): each request adds 1 to a counter that drains by `rate` per second;
    over `burst` the portal answers 503 QUERY_LIMIT_EXCEEDED. The model drains by the same rule and
    keeps `safety_margin` slots free for jitter between our clock and the portal's.

    Operating time: every answer carries `time.operating` (the method's seconds in the current 10-minute
    window) and `time.operating_reset_at` (wall clock). Once a method is at `operating_threshold` of
    `operating_limit`, the next call to it waits until `operating_reset_at` instead of running into 429.

    The monotonic clock, the wall clock and sleep are injected, so the arithmetic is tested without sleeping.
    """

    def __init__(
        self,
        *,
        rate: float = 2.0,
        burst: int = 50,
        operating_limit: float = 480.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wall: Callable[[], float] = time.time,
        safety_margin: float = 2.0,
        operating_threshold: float = 0.85,
        reset_pad: float = 1.0,
        max_operating_wait: float = 660.0,
        on_wait: Callable[[str, float], None] | None = None,
        level: float | None = None,
        bucket: BucketFile | None = None,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        if operating_limit <= 0 or not 0 < operating_threshold <= 1:
            raise ValueError("operating_limit must be > 0 and operating_threshold in (0, 1]")
        self.rate = float(rate)
        self.burst = int(burst)
        self.operating_limit = float(operating_limit)
        self.operating_threshold = float(operating_threshold)
        # Never below one slot, or a tiny burst would block forever.
        self.capacity = max(1.0, self.burst - safety_margin)
        self.reset_pad = reset_pad
        # A corrupt or far-future reset time must not park a sync for hours: the window is 10 minutes.
        self.max_operating_wait = max_operating_wait
        self._clock = clock
        self._sleep = sleep
        self._wall = wall
        # What the portal's bucket holds when this process starts is unknown: another process (or this one before
        # a restart) may have just filled it. So the level comes from the shared bucket file, or, without one, the
        # bucket is taken to be full unless the caller knows better (`level`, e.g. 0 for a portal just started).
        self.bucket = bucket if bucket is not None and bucket.available else None
        self._level = float(self.burst if level is None else level)
        self._updated = clock()
        self._operating: dict[str, OperatingState] = {}
        #: total seconds this limiter has slept, for the sync summary
        self.waited = 0.0
        #: told of every pause: ("rate_limit" | "operating_time", seconds); the daemon's metrics listen
        self.on_wait = on_wait
        # one limiter may pace several clients of one portal (the daemon's worker and its jobs share the
        # portal's bucket): the state is read and reserved under the lock, the sleeping happens outside it
        self._lock = threading.RLock()

    # -- leaky bucket -------------------------------------------------------------------------
    def _drain(self) -> None:
        now = self._clock()
        self._level = max(0.0, self._level - (now - self._updated) * self.rate)
        self._updated = now

    @property
    def level(self) -> float:
        """The modelled bucket counter right now."""
        if self.bucket is not None:
            return self.bucket.update(lambda level: (float(self.burst) if level is None else level,) * 2, self.rate)
        self._drain()
        return self._level

    def _wait_for_bucket(self) -> None:
        with self._lock:
            if self.bucket is not None:
                delay = self.bucket.update(self._reserve, self.rate)
            else:
                self._drain()
                level, delay = self._reserve(self._level)
                self._level = level
        if delay > 0:
            log.debug("bitrix24 limiter: bucket full, waiting %.2f s", delay)
            self._pause(delay, "rate_limit")

    def _reserve(self, level: float | None) -> tuple[float, float]:
        """One more request at `level` (None: unknown, taken as full): (the level with it, the wait before it). The slot
        is reserved now: a second thread or process asking meanwhile waits for the next one."""
        current = float(self.burst) if level is None else level
        overflow = current + 1.0 - self.capacity
        return current + 1.0, overflow / self.rate if overflow > 0 else 0.0

    def rate_limited(self) -> None:
        """The portal said 503 QUERY_LIMIT_EXCEEDED: its bucket is full (others share it per IP), so is ours."""
        with self._lock:
            if self.bucket is not None:
                self.bucket.update(lambda level: (max(level or 0.0, float(self.burst)), 0.0), self.rate)
                return
            self._drain()
            self._level = max(self._level, float(self.burst))

    # -- operating time ------------------------------------------------------------------------
    def observe(self, method: str, time_block: Mapping[str, Any] | None) -> None:
        """Record `operating` / `operating_reset_at` of one answer (or one batch command's `result_time`)."""
        if not time_block:
            return
        try:
            operating = float(time_block["operating"])
        except (KeyError, TypeError, ValueError):
            return  # on-premise portals and old versions do not report it: nothing to pace by
        try:
            reset_at = float(time_block["operating_reset_at"])
        except (KeyError, TypeError, ValueError):
            previous = self._operating.get(method)
            reset_at = previous.reset_at if previous else self._wall() + _DEFAULT_RESET_DELAY
        with self._lock:
            self._operating[method] = OperatingState(operating=operating, reset_at=reset_at)

    def block(self, methods: Iterable[str], reset_at: float | None) -> None:
        """The portal said 429 OPERATION_TIME_LIMIT: hold these methods until `reset_at` (wall clock).

        Without a reset time in the error, the method's last reported `operating_reset_at` is used
        if still ahead (a batch's earlier commands report it just before a later one is refused),
        else a minute.
        """
        now = self._wall()
        for method in methods:
            until = reset_at
            if until is None:
                known = self._operating.get(method)
                until = known.reset_at if known is not None and known.reset_at > now else now + _DEFAULT_RESET_DELAY
            self._operating[method] = OperatingState(operating=self.operating_limit, reset_at=until)

    def operating_seconds(self) -> dict[str, float]:
        """Latest operating seconds per method, as last reported by the portal."""
        return {method: state.operating for method, state in self._operating.items()}

    def operating_wait(self, method: str) -> float:
        """Seconds a call of `method` would now wait for its operating budget (0 when it may go)."""
        state = self._operating.get(method)
        if state is None or state.operating < self.operating_threshold * self.operating_limit:
            return 0.0
        remaining = state.reset_at - self._wall()
        if remaining <= 0:
            # The oldest basket has expired; how much that freed only the next answer will tell.
            return 0.0
        return min(remaining + self.reset_pad, self.max_operating_wait)

    def _wait_for_operating(self, method: str) -> None:
        delay = self.operating_wait(method)
        if delay <= 0:
            return
        state = self._operating.get(method) or OperatingState(self.operating_limit, self._wall())
        log.info(
            "bitrix24 limiter: %s has used %.0f of %.0f operating seconds; pausing %.0f s until its budget resets",
            method,
            state.operating,
            self.operating_limit,
            delay,
        )
        self._pause(delay, "operating_time")

    # -- entry point ----------------------------------------------------------------------------
    def acquire(self, methods: Iterable[str] = ()) -> None:
        """Wait until one request that runs `methods` may be sent, then count it in the bucket.

        Operating waits come first: they can be minutes long, and the bucket drains meanwhile.
        """
        for method in dict.fromkeys(methods):
            self._wait_for_operating(method)
        self._wait_for_bucket()

    def _pause(self, seconds: float, kind: str = "rate_limit") -> None:
        if seconds > 0:
            self._sleep(seconds)
            self.waited += seconds
            if self.on_wait is not None:
                self.on_wait(kind, seconds)

"""Server-side Bitrix24 limits of the sandbox: the per-portal leaky bucket and per-method operating time."""

from __future__ import annotations

import threading
import time
from typing import Callable


class LeakyBucket:
    """Each request adds 1; the level drains by `rate` per second; a request over `burst` is refused (503).

    A refused request is not added, as on the portal: a client that backs off drains the bucket.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._level = 0.0
        self._stamp = clock()
        self._lock = threading.Lock()

    def admit(self) -> bool:
        with self._lock:
            now = self._clock()
            self._level = max(0.0, self._level - (now - self._stamp) * self.rate)
            self._stamp = now
            if self._level + 1.0 > self.burst:
                return False
            self._level += 1.0
            return True

    @property
    def level(self) -> float:
        with self._lock:
            now = self._clock()
            return max(0.0, self._level - (now - self._stamp) * self.rate)


class OperatingTime:
    """Per-method execution time in 10 baskets of `window_seconds / 10` each (10 x 1 min on a real portal).

    `blocked(method)` is true once the method's sum in the window exceeds `limit`; the call that pushes
    it over still succeeds, the next one gets 429 OPERATION_TIME_LIMIT until old baskets expire.
    Wall-clock time is used because clients compare `operating_reset_at` with their own clock.
    """

    BASKETS = 10

    def __init__(self, limit: float, window_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self.limit = float(limit)
        self.basket_seconds = float(window_seconds) / self.BASKETS
        self._clock = clock
        self._baskets: dict[str, dict[int, float]] = {}
        self._lock = threading.Lock()

    def _current(self, method: str, now: float) -> dict[int, float]:
        index = int(now // self.basket_seconds)
        baskets = self._baskets.setdefault(method, {})
        oldest_alive = index - self.BASKETS + 1
        for stale in [k for k in baskets if k < oldest_alive]:
            del baskets[stale]
        return baskets

    def used(self, method: str) -> float:
        with self._lock:
            return sum(self._current(method, self._clock()).values())

    def blocked(self, method: str) -> bool:
        return self.used(method) > self.limit

    def add(self, method: str, seconds: float) -> float:
        """Charge `seconds` to the method's current basket; returns the method's total in the window."""
        with self._lock:
            now = self._clock()
            baskets = self._current(method, now)
            index = int(now // self.basket_seconds)
            baskets[index] = baskets.get(index, 0.0) + seconds
            return sum(baskets.values())

    def reset_at(self, method: str) -> float:
        """When the oldest basket holding time for this method expires (unix seconds)."""
        with self._lock:
            now = self._clock()
            baskets = self._current(method, now)
            if not baskets:
                return now + self.basket_seconds * self.BASKETS
            oldest = min(baskets)
            return (oldest + self.BASKETS) * self.basket_seconds

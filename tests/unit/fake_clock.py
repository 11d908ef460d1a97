"""A fake clock for the client and limiter tests: time moves only when code sleeps or a test advances it."""

from __future__ import annotations

WALL0 = 1_700_000_000.0


class FakeClock:
    """Monotonic and wall clocks that only move when `sleep` or `advance` is called."""

    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.t

    def wall(self) -> float:
        return WALL0 + self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds

    def advance(self, seconds: float) -> None:
        self.t += seconds

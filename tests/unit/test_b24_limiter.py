"""Limiter arithmetic: leaky bucket pacing and per-method operating-time pacing, with a fake clock (no sleeping)."""

from __future__ import annotations

import pytest
from fake_clock import WALL0, FakeClock

from crmbridge.connectors.bitrix24.limiter import BucketFile, Limiter



class PortalBucket:
    """The portal's side of the leaky bucket, as D limits.md describes it."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.level, self.updated, self.peak, self.rejected = 0.0, 0.0, 0.0, 0

    def hit(self, now: float) -> None:
        self.level = max(0.0, self.level - (now - self.updated) * self.rate)
        self.updated = now
        if self.level + 1 > self.burst:
            self.rejected += 1
            return
        self.level += 1
        self.peak = max(self.peak, self.level)


def _limiter(clock: FakeClock, **kwargs: float) -> Limiter:
    kwargs.setdefault("level", 0.0)  # a portal left alone: its bucket has drained
    return Limiter(clock=clock.monotonic, sleep=clock.sleep, wall=clock.wall, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("rate", "burst"), [(2.0, 50), (5.0, 250), (2.0, 3)])
@pytest.mark.parametrize("work_time", [0.0, 0.1, 0.45, 1.3])
def test_steady_workload_never_overflows_the_portal_bucket(rate: float, burst: int, work_time: float) -> None:
    clock = FakeClock()
    limiter = _limiter(clock, rate=rate, burst=burst)
    portal = PortalBucket(rate, burst)
    for _ in range(2000):
        limiter.acquire(["crm.deal.get"])
        portal.hit(clock.t)
        clock.advance(work_time)  # the request itself and the caller's work between requests
    assert portal.rejected == 0
    assert portal.peak <= burst
    if work_time == 0.0:
        # A tight loop settles at the drain rate: the whole run took about requests / rate.
        assert clock.t == pytest.approx((2000 - limiter.capacity) / rate, rel=0.02)


def test_burst_is_used_before_any_waiting() -> None:
    clock = FakeClock()
    limiter = _limiter(clock, rate=2.0, burst=50, safety_margin=2.0)
    for _ in range(48):
        limiter.acquire()
    assert clock.sleeps == []
    limiter.acquire()  # the 49th would leave fewer than the 2 safety slots
    assert clock.sleeps == [pytest.approx(0.5)]


def test_rate_limited_fills_the_bucket_so_the_next_request_waits() -> None:
    clock = FakeClock()
    limiter = _limiter(clock, rate=2.0, burst=50, safety_margin=2.0)
    limiter.acquire()
    limiter.rate_limited()
    assert limiter.level == pytest.approx(50.0)
    limiter.acquire()
    # from 50 down to 47 so that one more fits under 48: (50 + 1 - 48) / 2 s
    assert clock.sleeps == [pytest.approx(1.5)]


def test_operating_time_below_threshold_does_not_wait() -> None:
    clock = FakeClock()
    limiter = _limiter(clock, operating_limit=480.0, operating_threshold=0.85)
    limiter.observe("crm.deal.list", {"operating": 400.0, "operating_reset_at": WALL0 + 100})
    limiter.acquire(["crm.deal.list"])
    assert clock.sleeps == []
    assert limiter.operating_seconds() == {"crm.deal.list": 400.0}


def test_operating_time_near_limit_sleeps_until_reset_then_resumes() -> None:
    clock = FakeClock()
    limiter = _limiter(clock, operating_limit=480.0, operating_threshold=0.85)
    limiter.observe("crm.deal.list", {"operating": 420.0, "operating_reset_at": WALL0 + 100})
    limiter.acquire(["crm.deal.list"])
    assert clock.sleeps == [pytest.approx(101.0)]  # until reset, plus a 1 s pad for the portal's rounding
    assert clock.wall() >= WALL0 + 100
    # Only the portal's next answer says how much was freed; until then the method is not held again.
    limiter.acquire(["crm.deal.list"])
    assert len(clock.sleeps) == 1


def test_operating_pacing_is_per_method() -> None:
    clock = FakeClock()
    limiter = _limiter(clock)
    limiter.observe("crm.deal.list", {"operating": 470.0, "operating_reset_at": WALL0 + 30})
    limiter.acquire(["crm.contact.list"])
    assert clock.sleeps == []
    limiter.acquire(["crm.contact.list", "crm.deal.list"])
    assert clock.sleeps == [pytest.approx(31.0)]


def test_block_after_429_waits_until_reset_at() -> None:
    clock = FakeClock()
    limiter = _limiter(clock)
    limiter.block(["tasks.task.list"], WALL0 + 250)
    limiter.acquire(["tasks.task.list"])
    assert clock.sleeps == [pytest.approx(251.0)]


def test_block_without_reset_time_waits_a_minute() -> None:
    clock = FakeClock()
    limiter = _limiter(clock)
    limiter.block(["crm.deal.list"], None)
    limiter.acquire(["crm.deal.list"])
    assert clock.sleeps == [pytest.approx(61.0)]


def test_block_without_reset_time_uses_the_last_reported_reset_if_still_ahead() -> None:
    clock = FakeClock()
    limiter = _limiter(clock)
    limiter.observe("crm.deal.list", {"operating": 300.0, "operating_reset_at": WALL0 + 20})
    limiter.block(["crm.deal.list"], None)
    limiter.acquire(["crm.deal.list"])
    assert clock.sleeps == [pytest.approx(21.0)]
    # once that time has passed, a fresh block without a time falls back to a minute
    limiter.block(["crm.deal.list"], None)
    limiter.acquire(["crm.deal.list"])
    assert clock.sleeps[1] == pytest.approx(61.0)


def test_absurd_reset_time_is_capped() -> None:
    clock = FakeClock()
    limiter = _limiter(clock)
    limiter.block(["crm.deal.list"], WALL0 + 86_400)
    limiter.acquire(["crm.deal.list"])
    assert clock.sleeps == [pytest.approx(660.0)]


def test_answers_without_operating_are_ignored() -> None:
    clock = FakeClock()
    limiter = _limiter(clock)
    limiter.observe("crm.deal.list", {"start": 1.0, "finish": 2.0})
    limiter.observe("crm.deal.list", None)
    assert limiter.operating_seconds() == {}


def test_operating_without_reset_keeps_the_previous_reset_time() -> None:
    clock = FakeClock()
    limiter = _limiter(clock)
    limiter.observe("m.x", {"operating": 10.0, "operating_reset_at": WALL0 + 40})
    limiter.observe("m.x", {"operating": 450.0})
    limiter.acquire(["m.x"])
    assert clock.sleeps == [pytest.approx(41.0)]


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Limiter(rate=0)
    with pytest.raises(ValueError):
        Limiter(operating_threshold=1.5)


def test_without_knowing_the_portal_a_limiter_starts_from_a_full_bucket() -> None:
    clock = FakeClock()
    limiter = Limiter(rate=2.0, burst=50, clock=clock.monotonic, sleep=clock.sleep, wall=clock.wall)
    limiter.acquire()
    # another process (or this one before a restart) may just have filled the portal's bucket: wait as if it had
    assert clock.sleeps == [pytest.approx(1.5)]


def test_a_restarted_limiter_takes_the_bucket_from_the_file_the_last_one_left(tmp_path) -> None:
    clock = FakeClock()
    portal = PortalBucket(2.0, 10)

    def limiter() -> Limiter:
        return Limiter(rate=2.0, burst=10, clock=clock.monotonic, sleep=clock.sleep, wall=clock.wall,
                       bucket=BucketFile(tmp_path / "cache.db.bitrix24-bucket", wall=clock.wall))

    first = limiter()
    for _ in range(8):  # a burst, then the process is killed
        first.acquire()
        portal.hit(clock.t)
    restarted = limiter()
    for _ in range(20):
        restarted.acquire()
        portal.hit(clock.t)
    assert portal.rejected == 0 and portal.peak <= 10
    clock.advance(3600)  # an hour later the bucket has drained: no waiting at all
    before = len(clock.sleeps)
    limiter().acquire()
    assert len(clock.sleeps) == before

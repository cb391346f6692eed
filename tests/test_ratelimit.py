"""The request-rate limit shared by every worker through the database."""

from __future__ import annotations

from typing import Any

import pytest

from django_cio_reliable.outbox import RateLimiter


class Wall:
    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def limited(settings: Any) -> None:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "RATE_LIMIT": 10}


@pytest.mark.django_db
def test_slots_are_spaced_by_the_rate(limited: None) -> None:
    wall = Wall()
    limiter = RateLimiter(wall=wall, sleep=wall.sleep)
    starts = [limiter.reserve() for _ in range(5)]
    assert starts == pytest.approx([wall.now + i * 0.105 for i in range(5)], abs=1e-4)


@pytest.mark.django_db
def test_two_limiters_share_one_budget(limited: None) -> None:
    wall = Wall()
    a = RateLimiter(wall=wall, sleep=wall.sleep)
    b = RateLimiter(wall=wall, sleep=wall.sleep)
    reserved = [a.reserve(), b.reserve(), a.reserve(), b.reserve()]
    starts = sorted(start for start in reserved if start is not None)
    assert len(starts) == 4
    gaps = [round(y - x, 4) for x, y in zip(starts, starts[1:], strict=False)]
    assert gaps == [0.105, 0.105, 0.105]


@pytest.mark.django_db
def test_acquire_waits_for_its_slot_and_never_exceeds_the_rate(limited: None) -> None:
    wall = Wall()
    limiter = RateLimiter(wall=wall, sleep=wall.sleep)
    sent_at = []
    for _ in range(25):
        limiter.acquire()
        sent_at.append(wall.now)
    # In any one-second window at most RATE_LIMIT requests start.
    for start in sent_at:
        assert sum(1 for t in sent_at if start <= t < start + 1.0) <= 10
    assert sent_at[-1] - sent_at[0] == pytest.approx(24 * 0.105, abs=1e-4)


@pytest.mark.django_db
def test_idle_time_is_not_banked(limited: None) -> None:
    wall = Wall()
    limiter = RateLimiter(wall=wall, sleep=wall.sleep)
    limiter.acquire()
    wall.now += 60  # a quiet minute must not allow a burst of 600 afterwards
    for _ in range(3):
        limiter.acquire()
    assert wall.slept[-2:] == pytest.approx([0.105, 0.105], abs=1e-4)


@pytest.mark.django_db
def test_a_request_that_starts_late_takes_a_new_slot(limited: None) -> None:
    """Without this, a worker stalled past its slot sends in the middle of later slots and a
    one-second window sees more than RATE_LIMIT requests."""
    wall = Wall()
    stalled = RateLimiter(wall=wall, sleep=lambda s: wall.sleep(s + 0.05))  # always oversleeps
    prompt = RateLimiter(wall=wall, sleep=wall.sleep)
    sent_at = []
    prompt.acquire()
    sent_at.append(wall.now)
    for _ in range(30):
        stalled.acquire()  # its slot comes later, but it wakes 0.05 s too late
        sent_at.append(wall.now)
        prompt.acquire()
        sent_at.append(wall.now)
    assert stalled.late >= 1
    sent_at.sort()
    for start in sent_at:
        assert sum(1 for t in sent_at if start <= t <= start + 1.0) <= 10


@pytest.mark.django_db
def test_windows_never_exceed_the_limit_with_jittery_workers(limited: None) -> None:
    """Four workers whose wake-ups are late by random amounts under the tolerance."""
    import random

    rng = random.Random(7)
    wall = Wall()
    sent_at: list[float] = []
    workers = [
        RateLimiter(wall=wall, sleep=lambda s: wall.sleep(s + rng.uniform(0, 0.019)))
        for _ in range(4)
    ]
    for i in range(200):
        workers[i % 4].acquire()
        sent_at.append(wall.now)
    sent_at.sort()
    for start in sent_at:
        assert sum(1 for t in sent_at if start <= t <= start + 1.0) <= 10

"""The debounced drain kick, per process and shared through ``CACHE_ALIAS``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import caches

from django_cio_reliable import dispatch


class CountingKicker(dispatch._Kicker):
    """A kicker whose task sends are counted instead of queued."""

    def __init__(self) -> None:
        super().__init__()
        self.kicks = 0

    def _send(self) -> None:
        self.kicks += 1


@pytest.fixture
def kickers() -> Iterator[list[CountingKicker]]:
    made: list[CountingKicker] = []
    yield made
    for kicker in made:
        kicker.reset()


@pytest.fixture
def shared_cache(settings: Any) -> Iterator[None]:
    settings.CACHES = {
        **settings.CACHES,
        "cio-shared": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "cio-test-shared",
        },
    }
    caches["cio-shared"].clear()
    yield
    caches["cio-shared"].clear()


def test_one_process_kicks_once_then_trails(settings: Any, kickers: list[CountingKicker]) -> None:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "KICK_DEBOUNCE": 3600}
    kicker = CountingKicker()
    kickers.append(kicker)
    for _ in range(50):
        kicker.kick()
    assert kicker.kicks == 1
    assert kicker.timer is not None  # one trailing kick for the rest of the burst
    kicker.timer.cancel()
    kicker._trailing()
    assert kicker.kicks == 2


def test_without_a_shared_cache_every_process_kicks(
    settings: Any, kickers: list[CountingKicker]
) -> None:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "KICK_DEBOUNCE": 3600, "CACHE_ALIAS": None}
    kickers.extend(CountingKicker() for _ in range(4))
    for kicker in kickers:
        kicker.kick()
    assert [k.kicks for k in kickers] == [1, 1, 1, 1]


def test_a_shared_cache_makes_one_leading_kick_for_the_deployment(
    settings: Any, shared_cache: None, kickers: list[CountingKicker]
) -> None:
    settings.CIO_RELIABLE = {
        **settings.CIO_RELIABLE,
        "KICK_DEBOUNCE": 3600,
        "CACHE_ALIAS": "cio-shared",
    }
    kickers.extend(CountingKicker() for _ in range(4))  # four web processes
    for kicker in kickers:
        kicker.kick()
    assert [k.kicks for k in kickers] == [1, 0, 0, 0]
    # The others keep a trailing kick: the first drain may have started before their commit.
    for kicker in kickers[1:]:
        assert kicker.timer is not None
        kicker.timer.cancel()
        kicker._trailing()
    assert [k.kicks for k in kickers] == [1, 1, 1, 1]


def test_an_unreachable_shared_cache_kicks_anyway(
    settings: Any, kickers: list[CountingKicker]
) -> None:
    settings.CIO_RELIABLE = {
        **settings.CIO_RELIABLE,
        "KICK_DEBOUNCE": 3600,
        "CACHE_ALIAS": "missing",
    }
    kicker = CountingKicker()
    kickers.append(kicker)
    kicker.kick()
    assert kicker.kicks == 1


@pytest.mark.django_db(transaction=True)
def test_a_raising_receiver_breaks_neither_the_request_nor_the_drain(
    fake_cio: Any, settings: Any
) -> None:
    """A buggy metrics receiver must not fail the committing request, skip the kick or stop
    a drain run halfway (signals are sent with ``send_robust``)."""
    import django_cio_reliable as cio
    from django_cio_reliable import outbox, signals
    from django_cio_reliable.models import Operation

    settings.CIO_RELIABLE = {
        **settings.CIO_RELIABLE,
        "DISPATCH": "task",
        "KICK_DEBOUNCE": 3600,
        "RATE_LIMIT": 10_000,
        "BATCH": False,
    }
    kicked: list[int] = []
    original = dispatch.kicker._send
    dispatch.kicker._send = lambda: kicked.append(1)  # type: ignore[method-assign]
    dispatch.kicker.reset()

    def broken(**kwargs: Any) -> None:
        raise RuntimeError("metrics backend is down")

    for signal in (signals.operation_enqueued, signals.operation_delivered):
        signal.connect(broken, dispatch_uid="broken-receiver")
    try:
        for i in range(3):
            cio.track(f"p{i}", "x")  # autocommit: each commit runs the on-commit callbacks
        assert kicked == [1]
        result = outbox.drain(max_seconds=30, sleep=lambda s: None)
    finally:
        for signal in (signals.operation_enqueued, signals.operation_delivered):
            signal.disconnect(dispatch_uid="broken-receiver")
        dispatch.kicker._send = original  # type: ignore[method-assign]
        dispatch.kicker.reset()
    assert result.delivered == 3
    assert Operation.objects.filter(status=Operation.Status.DELIVERED).count() == 3


@pytest.mark.django_db(transaction=True)
def test_resetting_the_breaker_kicks_a_drain(settings: Any) -> None:
    """Operations held while it was forced open go out at once, not at the next schedule."""
    from django_cio_reliable import breaker

    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "DISPATCH": "task", "KICK_DEBOUNCE": 0}
    kicked: list[int] = []
    original = dispatch.kicker._send
    dispatch.kicker._send = lambda: kicked.append(1)  # type: ignore[method-assign]
    dispatch.kicker.reset()
    breaker.reset()
    try:
        b = breaker.get_breaker()
        b.force("forced_open")
        assert kicked == []
        b.force("auto")
        assert kicked == [1]
        b.force("auto")  # no change, no kick
        assert kicked == [1]
    finally:
        dispatch.kicker._send = original  # type: ignore[method-assign]
        dispatch.kicker.reset()
        breaker.reset()

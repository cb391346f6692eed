"""Test doubles shared by the test modules."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone


class FakeClock:
    """Drives ``django_cio_reliable.clock.now`` (the outbox's and the breaker's clock), so
    retries, leases, pauses and cooldowns pass without sleeping. See the ``fake_clock``
    fixture in ``tests/conftest.py``."""

    def __init__(self) -> None:
        self.current = timezone.now()

    def now(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)

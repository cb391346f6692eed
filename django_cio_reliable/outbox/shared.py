"""Delivery state shared by every worker: the pause (after a 429 or a 401/403) and the request
rate limit, one ``DeliveryState`` row per destination, written in short transactions of their own
and timed by the database's clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from django.db import router, transaction
from django.db.models import Q

from django_cio_reliable import clock
from django_cio_reliable.conf import app_settings
from django_cio_reliable.models import DeliveryState
from django_cio_reliable.outbox.ack import MAX_ERROR_LENGTH

log = logging.getLogger(__name__)

#: The rate limiter's spacing headroom: slots are ``(1 + this) / RATE_LIMIT`` seconds apart.
RATE_HEADROOM = 0.05
#: A request that cannot start within this many seconds of its slot takes a new slot.
RATE_LATE_TOLERANCE = 0.02
#: The longest a request waits for a rate-limit slot (see :meth:`RateLimiter.longest_wait`):
#: a shared slot time further ahead was written from a clock that is off, and is reset.
RATE_MAX_WAIT = 10.0
RATE_MAX_WAIT_SLOTS = 50
#: How many slots one request reserves at most before it sends anyway.
RATE_MAX_RESERVATIONS = 20


def destination() -> str:
    return app_settings.destination


def delivery_state() -> DeliveryState:
    """The shared delivery-state row of the current destination (created on first use)."""
    state: DeliveryState = DeliveryState.objects.get_or_create(destination=destination())[0]
    return state


def paused_until(now: datetime | None = None) -> tuple[datetime | None, str]:
    """When the shared pause ends (``None`` when not paused) and why."""
    current = now or clock.now()
    row = (
        DeliveryState.objects.filter(destination=destination())
        .values_list("paused_until", "pause_reason")
        .first()
    )
    if row is None or row[0] is None or row[0] <= current:
        return None, ""
    return row[0], row[1]


def pause(reason: str, seconds: float, *, error: str = "") -> datetime:
    """Pause every worker for ``seconds`` (never shortening a longer pause already set)."""
    now = clock.now()
    until = now + timedelta(seconds=seconds)
    delivery_state()
    qs = DeliveryState.objects.filter(destination=destination())
    # The longer pause wins both its end and its reason: a short 429 pause must not relabel
    # a credentials pause (``cio_replay --now`` refuses only the latter).
    qs.filter(Q(paused_until__isnull=True) | Q(paused_until__lt=until)).update(
        paused_until=until, pause_reason=reason
    )
    if reason == DeliveryState.PauseReason.AUTH:
        qs.update(auth_failed_at=now, auth_error=error[:MAX_ERROR_LENGTH])
    return max(until, qs.values_list("paused_until", flat=True).first() or until)


def resume(reason: str) -> int:
    """Lift the shared pause if it is one for ``reason`` (an operator's decision); returns
    how many pauses were lifted (0 or 1)."""
    return int(
        DeliveryState.objects.filter(
            destination=destination(), pause_reason=reason, paused_until__isnull=False
        ).update(paused_until=None, pause_reason=DeliveryState.PauseReason.NONE)
    )


def clear_auth_failure() -> None:
    """Forget a credentials failure (after a request was accepted again)."""
    DeliveryState.objects.filter(destination=destination(), auth_failed_at__isnull=False).update(
        auth_failed_at=None, auth_error=""
    )


class RateLimiter:
    """A request-rate limit shared by every worker through the database (GCRA).

    Each request reserves the next free slot in one short transaction and waits for it. Slots
    are ``(1 + RATE_HEADROOM) / RATE_LIMIT`` seconds apart, and a request that could not start
    within ``RATE_LATE_TOLERANCE`` seconds of its slot (a stalled worker, a slow database) gives
    it up and reserves a new one. So the starts of any ``RATE_LIMIT + 1`` consecutive requests
    span more than ``1 + RATE_HEADROOM - RATE_LATE_TOLERANCE`` seconds, and no one-second
    window — on the sender's clock, or on Customer.io's with up to ``RATE_HEADROOM -
    RATE_LATE_TOLERANCE`` seconds of network jitter — sees more than ``RATE_LIMIT`` requests
    from the whole deployment.
    """

    def __init__(
        self,
        *,
        wall: Callable[[], float] = clock.wall,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.clock = wall
        self.sleep = sleep
        self.late = 0

    @staticmethod
    def interval() -> float:
        """Seconds between two slots."""
        return (1.0 + RATE_HEADROOM) / app_settings.RATE_LIMIT

    @classmethod
    def longest_wait(cls) -> float:
        """The longest any request waits for its slot: :data:`RATE_MAX_WAIT` seconds, or
        :data:`RATE_MAX_WAIT_SLOTS` slots when they take longer (a very low ``RATE_LIMIT``)."""
        return max(RATE_MAX_WAIT, RATE_MAX_WAIT_SLOTS * cls.interval())

    def reserve(self, count: int = 1, *, max_wait: float | None = None) -> float | None:
        """Reserve ``count`` request slots; return the time (clock units) the first may start.

        With ``max_wait``, reserve nothing and return ``None`` when the first free slot is more
        than ``max_wait`` seconds away.
        """
        interval = self.interval()
        delivery_state()
        using = router.db_for_write(DeliveryState) or "default"
        with transaction.atomic(using=using):
            row = (
                DeliveryState.objects.using(using)
                .select_for_update()
                .filter(destination=destination())
                .values_list("pk", "rate_tat")
                .get()
            )
            now = self.clock()
            start = max(float(row[1]), now)
            if start - now > self.longest_wait():
                # Set from a clock far ahead of the database's (or by hand): nobody waits for it.
                log.warning(
                    "cio: the shared rate-limit slot was %.0f s ahead; starting again from now",
                    start - now,
                )
                start = now
            if max_wait is not None and start - now > max_wait:
                return None
            DeliveryState.objects.using(using).filter(pk=row[0]).update(
                rate_tat=start + count * interval
            )
        return start

    def acquire(self) -> None:
        """Wait for one request slot; a slot missed by more than the tolerance is replaced."""
        self.try_acquire(None)

    def try_acquire(self, max_wait: float | None) -> bool:
        """Wait for one request slot unless it is more than ``max_wait`` seconds away.

        Returns:
            Whether a slot was taken (always ``True`` when ``max_wait`` is ``None``).
        """
        oversleep = 0.0
        for _ in range(RATE_MAX_RESERVATIONS):
            start = self.reserve(1, max_wait=max_wait)
            if start is None:
                return False
            delay = start - self.clock()
            if delay > 0:
                # Wake early by however much the last sleep overran (a loaded machine).
                self.sleep(max(delay - oversleep, 0.0))
            lateness = self.clock() - start
            if lateness <= RATE_LATE_TOLERANCE:
                return True
            # Started too late: this request would crowd the ones reserved after it.
            self.late += 1
            oversleep += lateness
        log.warning(
            "cio: the rate limiter missed %d slots in a row (this process keeps waking late); "
            "sending anyway",
            RATE_MAX_RESERVATIONS,
        )
        return True

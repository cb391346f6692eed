"""The drain loop: ask the breaker, claim, deliver, until nothing is due, the time is up or
delivery is paused; optionally linger for what becomes due soon."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from django.db import connections

from django_cio_reliable import clock, lifecycle
from django_cio_reliable.breaker import Breaker, get_breaker
from django_cio_reliable.conf import app_settings
from django_cio_reliable.models import Operation
from django_cio_reliable.outbox.deliver import Deliverer, DrainResult, refusal
from django_cio_reliable.outbox.lease import claim
from django_cio_reliable.outbox.shared import RateLimiter, paused_until
from django_cio_reliable.outbox.store import db_for_write
from django_cio_reliable.retry import RetryPolicy
from django_cio_reliable.transport import (
    Transport,
    get_transport,
)

log = logging.getLogger(__name__)

#: Shortest nap of a lingering drain.
LINGER_POLL = 0.25


def drain(
    *,
    max_seconds: float | None = None,
    ids: Iterable[int] | None = None,
    transport: Transport | None = None,
    should_stop: Callable[[], str] | None = None,
    linger: float = 0.0,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    rate_wait: float | None = None,
) -> DrainResult:
    """Deliver due operations until none is left, the time is up, or delivery is paused.

    Args:
        max_seconds: Stop claiming after this long (default ``DRAIN_MAX_SECONDS``, else derived
            from django-q2's task timeout).
        ids: Only these operations (used by inline dispatch).
        transport: The transport to use (default: the per-thread one).
        should_stop: Returns a non-empty reason when the drain must hand back and stop.
        linger: When nothing is due but a retry, the end of a pause or the end of the circuit
            breaker's cooldown is due within this many seconds (and within the time limit),
            wait for it instead of returning.
        monotonic: Monotonic clock for the deadline.
        sleep: Used to wait for rate-limit slots.
        rate_wait: Stop (handing back what is unsent) rather than wait longer than this for a
            rate-limit slot (``None``: wait as long as it takes).
    """
    limit = max_seconds if max_seconds is not None else default_drain_seconds()
    deadline = monotonic() + limit
    stopper = should_stop or (lambda: "")

    def stop_reason() -> str:
        reason = stopper()
        if reason:
            return reason
        return "time limit" if monotonic() >= deadline else ""

    breaker = get_breaker()
    deliverer = Deliverer(
        transport=transport or get_transport(),
        policy=RetryPolicy.from_settings(),
        limiter=RateLimiter(sleep=sleep),
        should_stop=stop_reason,
        breaker=breaker,
        rate_wait=rate_wait,
    )
    total = DrainResult()
    wanted = list(ids) if ids is not None else None
    idle_since: float | None = None
    while True:
        reason = stop_reason()
        if reason:
            total.stopped = reason
            break
        idle_budget = linger - (monotonic() - idle_since) if idle_since is not None else linger
        until, pause_reason = paused_until()
        if until is not None:
            if idle_since is None:
                idle_since = monotonic()
            if _linger(until, idle_budget, deadline, monotonic, sleep):
                continue
            total.paused = pause_reason
            break
        # Ask the breaker before claiming: an open breaker claims nothing and burns nothing.
        permit = breaker.allow()
        if permit is None:
            total.breaker = refusal(breaker)
            if idle_since is None:
                idle_since = monotonic()
            if _linger(_breaker_retry_at(breaker), idle_budget, deadline, monotonic, sleep):
                continue
            break
        total.breaker = ""
        # A half-open probe is one request of one operation.
        size = 1 if permit.is_probe else app_settings.CLAIM_SIZE
        batch = claim(size, ids=wanted)
        if not batch.operations:
            breaker.cancel(permit)
            if idle_since is None:
                idle_since = monotonic()
            if wanted is None and _linger(next_due(), idle_budget, deadline, monotonic, sleep):
                continue
            break
        idle_since = None
        part = deliverer.deliver(batch, permit=permit)
        total.add(part)
        if total.paused or total.stopped:
            break
        if part.breaker:
            # Refused mid-claim: the rest was handed back; ask again at the top.
            continue
        if wanted is not None:
            wanted = [i for i in wanted if i not in {op.pk for op in batch.operations}]
            if not wanted:
                break
    if total.requests and not connections[db_for_write()].in_atomic_block:
        # An idle worker would keep its outcomes to itself until its next call: share them now
        # (one query), so every process's view of the breaker's window counts them.
        breaker.flush()
    return total


def _breaker_retry_at(breaker: Breaker) -> datetime | None:
    """When asking a refusing breaker again may succeed (``None``: not by waiting)."""
    snapshot = breaker.snapshot()
    if snapshot.retry_at is None:
        return None
    if snapshot.state == "half_open":
        # A probe may finish before its lease ends; this process sees that after its cache.
        soon = clock.now() + timedelta(seconds=max(breaker.cache_seconds, LINGER_POLL))
        return min(snapshot.retry_at, soon)
    return snapshot.retry_at


def next_due() -> datetime | None:
    """When the earliest waiting operation becomes due (``None`` when nothing waits)."""
    from django.db.models import Min

    value: datetime | None = Operation.objects.filter(status__in=lifecycle.WAITING).aggregate(
        m=Min("next_attempt_at")
    )["m"]
    return value


def _linger(
    when: datetime | None,
    linger: float,
    deadline: float,
    monotonic: Callable[[], float],
    sleep: Callable[[float], None],
) -> bool:
    """Sleep until ``when`` if it is within ``linger`` seconds and the deadline; say if we did."""
    if when is None or linger <= 0:
        return False
    wait = max((when - clock.now()).total_seconds(), 0.0)
    if wait > linger or monotonic() + wait >= deadline:
        return False
    # At least a short nap: an operation due now may be blocked behind an earlier one of its
    # person, and polling for it must not spin.
    sleep(min(max(wait + 0.01, LINGER_POLL), linger))
    return True


def default_drain_seconds() -> float:
    """How long one drain task may claim: ``DRAIN_MAX_SECONDS`` or django-q2's timeout minus a
    margin for one last request."""
    configured = app_settings.DRAIN_MAX_SECONDS
    if configured is not None:
        return configured
    try:
        from django_q.conf import Conf

        q_timeout = float(Conf.TIMEOUT or 60)
    except Exception:  # pragma: no cover - django_q missing is reported by the checks
        q_timeout = 60.0
    margin = 2 * (app_settings.TIMEOUT + app_settings.CONNECT_TIMEOUT) + 5
    return max(5.0, q_timeout - margin)

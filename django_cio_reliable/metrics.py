"""Per-minute delivery counts for the dashboard: attempts as they happen, not final states.

Every acknowledgement adds to the row of its minute (one ``UPDATE``, an ``INSERT`` for the
first outcome of a minute). A failure to count never fails the acknowledgement it describes.
The rows are pruned with the scheduled purge after :data:`RETAIN_MINUTES`.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import DatabaseError, IntegrityError, router, transaction
from django.db.models import F

from django_cio_reliable import clock
from django_cio_reliable.models import DeliveryMinute

log = logging.getLogger(__name__)

#: How long per-minute counts are kept (the dashboard shows at most 24 hours).
RETAIN_MINUTES = timedelta(days=2)


def minute_of(moment: datetime) -> datetime:
    """``moment`` with its seconds and microseconds zeroed."""
    return moment.replace(second=0, microsecond=0)


def record(
    *, delivered: int = 0, failed: int = 0, dead: int = 0, at: datetime | None = None
) -> None:
    """Add outcomes to the count of their minute.

    Args:
        delivered: Operations acknowledged delivered.
        failed: Failed attempts rescheduled for a retry.
        dead: Operations dead-lettered.
        at: When (default: now).
    """
    if not (delivered or failed or dead):
        return
    minute = minute_of(at or clock.now())
    using = router.db_for_write(DeliveryMinute) or "default"
    changes = {"delivered": delivered, "failed": failed, "dead": dead}
    increments = {name: F(name) + n for name, n in changes.items() if n}
    rows = DeliveryMinute.objects.using(using).filter(minute=minute)
    try:
        # A savepoint inside a caller's transaction (direct mode): a failure here must not
        # break it.
        with transaction.atomic(using=using):
            if rows.update(**increments):
                return
            try:
                with transaction.atomic(using=using):
                    DeliveryMinute.objects.using(using).create(minute=minute, **changes)
            except IntegrityError:
                # Another worker created the row first.
                rows.update(**increments)
    except DatabaseError as exc:
        log.warning("cio: could not count delivery outcomes for the dashboard (%s)", exc)


def per_minute(since: datetime) -> list[tuple[datetime, int, int]]:
    """``(minute, delivered, failed)`` since ``since``; failed includes dead-letterings."""
    rows = (
        DeliveryMinute.objects.filter(minute__gte=minute_of(since))
        .order_by("minute")
        .values_list("minute", "delivered", "failed", "dead")
    )
    return [(minute, delivered, failed + dead) for minute, delivered, failed, dead in rows]


def prune(now: datetime | None = None) -> int:
    """Delete counts older than :data:`RETAIN_MINUTES`; returns how many rows went."""
    cutoff = (now or clock.now()) - RETAIN_MINUTES
    deleted, _ = DeliveryMinute.objects.filter(minute__lt=cutoff).delete()
    return int(deleted)

"""What operators do to the outbox: replay, dead-letter, purge by retention, queue status.
Every status change goes through :mod:`django_cio_reliable.lifecycle`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Q, QuerySet

from django_cio_reliable import clock, lifecycle, metrics
from django_cio_reliable.conf import app_settings
from django_cio_reliable.lifecycle import Status
from django_cio_reliable.models import DeliveryState, IdempotencyKey, Operation
from django_cio_reliable.outbox.ack import redact
from django_cio_reliable.outbox.shared import destination

log = logging.getLogger(__name__)


def replay(
    queryset: QuerySet[Operation], *, reset_attempts: bool = True, delivered: bool = False
) -> int:
    """Requeue the given operations (dead or still open) for immediate delivery.

    Operations currently being sent (a live lease) are skipped, and so are operations whose
    payload was erased (forgotten people, see :func:`django_cio_reliable.privacy.forget`):
    an emptied ``identify`` could recreate a deleted person. Event ids are kept, so a replay
    of an event Customer.io already received is deduplicated by Customer.io. Delivered
    operations are requeued only with ``delivered=True``.
    """
    rows = Operation.objects.filter(pk__in=queryset.values("pk"))
    return int(rows.requeue(clock.now(), reset_attempts=reset_attempts, delivered=delivered))


def mark_dead(queryset: QuerySet[Operation], reason: str) -> int:
    """Dead-letter the given waiting operations with ``reason`` (an operator's decision)."""
    return int(
        Operation.objects.filter(pk__in=queryset.values("pk")).dead_letter(
            clock.now(), redact(reason)
        )
    )


@dataclass
class PurgeResult:
    """What one purge removed."""

    delivered: int = 0
    dead: int = 0
    keys: int = 0
    minutes: int = 0


def _delete_in_batches(qs: QuerySet[Any], batch_size: int) -> int:
    total = 0
    while True:
        ids = list(qs.values_list("pk", flat=True)[:batch_size])
        if not ids:
            return total
        deleted, _ = qs.model.objects.filter(pk__in=ids).delete()
        total += len(ids) if deleted else 0


def purge(now: datetime | None = None) -> PurgeResult:
    """Delete delivered and dead operations past retention and expired idempotency keys.

    Works in batches of ``PURGE_BATCH_SIZE`` rows so no statement holds locks for long. A
    delivered operation guarded by a live idempotency key is kept until the key expires.
    """
    current = now or clock.now()
    size = app_settings.PURGE_BATCH_SIZE
    delivered_cutoff = current - timedelta(seconds=app_settings.RETAIN_DELIVERED)
    keyed_cutoff = current - timedelta(
        seconds=max(app_settings.RETAIN_DELIVERED, app_settings.IDEMPOTENCY_TTL)
    )
    dead_cutoff = current - timedelta(seconds=app_settings.RETAIN_DEAD)
    result = PurgeResult()
    result.keys = _delete_in_batches(IdempotencyKey.objects.filter(expires_at__lte=current), size)
    result.delivered = _delete_in_batches(
        # keyed_cutoff <= delivered_cutoff: one range of the cio_op_delivered index.
        Operation.objects.filter(status=Status.DELIVERED, delivered_at__lt=delivered_cutoff).filter(
            Q(idempotency_key="") | Q(delivered_at__lt=keyed_cutoff)
        ),
        size,
    )
    result.dead = _delete_in_batches(
        Operation.objects.filter(status=Status.DEAD, dead_at__lt=dead_cutoff), size
    )
    result.minutes = metrics.prune(current)
    log.info(
        "cio: purged %d delivered, %d dead operations and %d expired keys",
        result.delivered,
        result.dead,
        result.keys,
    )
    return result


@dataclass
class QueueStatus:
    """Queue depth by status, oldest pending age, and the shared pause."""

    counts: dict[str, int]
    oldest_open_age: float | None
    paused_until: datetime | None
    pause_reason: str
    auth_failed_at: datetime | None


def queue_status(now: datetime | None = None) -> QueueStatus:
    """Counts by status and the age of the oldest open operation."""
    from django.db.models import Count, Min

    current = now or clock.now()
    counts = dict.fromkeys(Status.values, 0)
    for row in Operation.objects.order_by().values("status").annotate(n=Count("id")):
        counts[row["status"]] = row["n"]
    oldest = Operation.objects.filter(status__in=lifecycle.OPEN).aggregate(m=Min("created_at"))["m"]
    state = (
        DeliveryState.objects.filter(destination=destination())
        .values("paused_until", "pause_reason", "auth_failed_at")
        .first()
    )
    paused = state["paused_until"] if state else None
    if paused is not None and paused <= current:
        paused = None
    return QueueStatus(
        counts=counts,
        oldest_open_age=(current - oldest).total_seconds() if oldest else None,
        paused_until=paused,
        pause_reason=(state["pause_reason"] if state and paused else ""),
        auth_failed_at=state["auth_failed_at"] if state else None,
    )

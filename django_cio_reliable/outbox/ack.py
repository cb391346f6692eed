"""Acknowledgements: delivered, rescheduled or dead, each fenced on the lease token, counted
for the dashboard in the same transaction, and announced by signals after commit."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.dispatch import Signal

from django_cio_reliable import clock, metrics, signals
from django_cio_reliable.conf import app_settings
from django_cio_reliable.exceptions import DeliveryError
from django_cio_reliable.lifecycle import Status
from django_cio_reliable.models import Operation
from django_cio_reliable.outbox.store import db_for_write
from django_cio_reliable.retry import RetryPolicy, classify
from django_cio_reliable.validation import json_bytes

if TYPE_CHECKING:
    from django_cio_reliable.outbox.lease import Claim

log = logging.getLogger(__name__)

#: Longest error text stored on an operation.
MAX_ERROR_LENGTH = 1000


def send_on_commit(signal: Signal, **kwargs: Any) -> None:
    """Send ``signal`` once the current transaction commits (at once in autocommit)."""
    transaction.on_commit(
        lambda: signal.send_robust(sender=Operation, **kwargs), using=db_for_write()
    )


def redact(text: str) -> str:
    key = app_settings.API_KEY
    if key:
        text = text.replace(key, "***")
    return text[:MAX_ERROR_LENGTH]


def ack_delivered(claim_: Claim, operations: Sequence[Operation], status_code: int = 200) -> int:
    """Mark ``operations`` delivered, fenced on the lease; returns how many were updated.

    With ``SCRUB_DELIVERED`` (the default) the same update empties the stored payload and sets
    ``payload_erased_at``; kind, ids, event id, timestamps and ``payload_bytes`` are kept. The
    in-memory ``operations`` keep their payload (for the ``operation_delivered`` receivers).
    An operation whose lease was lost (another worker took over, or the person was forgotten
    meanwhile) is left alone and gets no signal.
    """
    if not operations:
        return 0
    now = clock.now()
    ids = [op.pk for op in operations]
    scrub = app_settings.SCRUB_DELIVERED
    sizes = [
        (op.pk, json_bytes(op.payload))
        for op in operations
        if scrub and not op.payload_bytes and op.payload
    ]
    with transaction.atomic(using=db_for_write()):  # one commit for the row and its count
        updated: int = Operation.objects.filter(id__in=ids).deliver(
            claim_.token, now, status_code=status_code, scrub=scrub, sizes=sizes
        )
        metrics.record(delivered=updated, at=now)
    acked = operations
    if updated != len(ids):
        log.warning(
            "cio: %d of %d acknowledgements lost their lease (another worker took over, or "
            "the person was forgotten)",
            len(ids) - updated,
            len(ids),
        )
        done = set(
            Operation.objects.filter(
                id__in=ids, status=Status.DELIVERED, delivered_at=now
            ).values_list("id", flat=True)
        )
        acked = [op for op in operations if op.pk in done]
    for op in acked:
        op.status = Status.DELIVERED
        op.delivered_at = now
        log.info("cio: delivered operation %s (%s, attempt %d)", op.pk, op.kind, op.attempts)
        send_on_commit(signals.operation_delivered, operation=op)
    return updated


def ack_failed(
    claim_: Claim,
    operation: Operation,
    error: DeliveryError,
    *,
    policy: RetryPolicy,
) -> str:
    """Reschedule or dead-letter ``operation`` after ``error``; returns the new status."""
    return ack_failures(claim_, [(operation, error)], policy=policy)[0]


def ack_failures(
    claim_: Claim,
    failures: Sequence[tuple[Operation, DeliveryError]],
    *,
    policy: RetryPolicy,
) -> list[str]:
    """:func:`ack_failed` for each ``(operation, error)``, in one transaction with one count
    for the dashboard; returns the new statuses in order."""
    statuses: list[str] = []
    failed = dead = 0
    now = clock.now()
    with transaction.atomic(using=db_for_write()):
        for operation, error in failures:
            status, updated = _ack_failed(claim_, operation, error, policy=policy, now=now)
            statuses.append(status)
            if updated and status == Status.DEAD:
                dead += 1
            elif updated:
                failed += 1
        metrics.record(failed=failed, dead=dead, at=now)
    return statuses


def _ack_failed(
    claim_: Claim,
    operation: Operation,
    error: DeliveryError,
    *,
    policy: RetryPolicy,
    now: datetime,
) -> tuple[str, bool]:
    """Reschedule or dead-letter one operation; returns its status and whether its lease held."""
    reason = redact(str(error))
    age = (now - operation.created_at).total_seconds()
    fenced = Operation.objects.filter(pk=operation.pk)
    permanent = classify(error) == "dead"
    if permanent or policy.exhausted(operation.attempts, age):
        if not permanent:
            reason = redact(
                f"gave up after {operation.attempts} attempts over {age:.0f}s: {reason}"
            )
        updated = fenced.filter(lease_token=claim_.token).kill(
            now, reason, last_status_code=error.status
        )
        if updated:
            operation.status = Status.DEAD
            operation.last_error = reason
            log.warning(
                "cio: operation %s is dead (%s, status %s, attempt %d)",
                operation.pk,
                error.kind,
                error.status,
                operation.attempts,
            )
            send_on_commit(signals.operation_dead, operation=operation, reason=reason)
        return Status.DEAD, bool(updated)
    next_at = now + timedelta(seconds=policy.backoff(operation.attempts))
    updated = fenced.fail(
        claim_.token, next_attempt_at=next_at, status_code=error.status, error=reason
    )
    if updated:
        operation.status = Status.FAILED
        operation.next_attempt_at = next_at
        log.info(
            "cio: operation %s failed (%s, status %s, attempt %d); next attempt at %s",
            operation.pk,
            error.kind,
            error.status,
            operation.attempts,
            next_at.isoformat(),
        )
        send_on_commit(
            signals.operation_failed, operation=operation, error=error, next_attempt_at=next_at
        )
    return Status.FAILED, bool(updated)

"""``DELIVERY="direct"``: send in the request, store for the drain on any failure.

The operation is stored first (in the caller's transaction), then delivered in the request
through the same path as the drain (:func:`django_cio_reliable.outbox.drain` for this one
operation: claim, send, classify, acknowledge), with at most ``DIRECT_ATTEMPTS`` tries, each
bounded by the configured timeouts. Success marks it delivered; any failure leaves it to the
drain (or dead-letters it for a permanent error).

When:

- **no transaction is open** (autocommit), it is sent before the call returns;
- **a transaction is open** (``transaction.atomic``, ``ATOMIC_REQUESTS``), it is sent right after
  that transaction commits, still in the same thread: nothing the fleet shares (the breaker, the
  rate limit, the dashboard's counts) is ever written inside the caller's transaction, so no
  other request or worker waits for it, and a rolled-back operation is never sent. The
  operation returned is then still ``pending``; it is updated in place once sent.

Unlike the outbox mode, a crash in the middle of the call cannot undo a request that already
reached Customer.io.

While the circuit breaker refuses (open, forced open) the operation is only stored and the call
returns at once, with no request and no query for the breaker. The claim leaves the operation to
the drain, with no request, when an earlier operation of the same person is still open (or, on
PostgreSQL, still being stored by another transaction): sending it now would overtake it. And a
request never waits more than :data:`DIRECT_MAX_RATE_WAIT` seconds for a slot of the shared rate
limit: a web request never queues behind the drain's traffic.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import connections, transaction

from django_cio_reliable import clock, outbox
from django_cio_reliable.breaker import get_breaker
from django_cio_reliable.conf import app_settings
from django_cio_reliable.models import Operation

log = logging.getLogger(__name__)

#: The longest a direct call waits for a slot of the shared rate limit before leaving the
#: operation to the drain.
DIRECT_MAX_RATE_WAIT = 0.25


def send_or_store(
    kind: str,
    customer_id: str,
    payload: dict[str, Any],
    *,
    name: str = "",
    idempotency_key: str | None = None,
    payload_bytes: int = 0,
) -> Operation:
    """Store the operation, try to deliver it now, and leave it to the drain if that fails."""
    operation, created = outbox.enqueue_ex(
        kind,
        customer_id,
        payload,
        name=name,
        idempotency_key=idempotency_key,
        payload_bytes=payload_bytes,
    )
    if not created or get_breaker().refusing():
        return operation
    using = operation._state.db or "default"
    if connections[using].in_atomic_block:
        # Shared state (breaker, rate limit, counts) is never written inside the caller's
        # transaction, and a rolled-back operation must never be sent: deliver after commit.
        transaction.on_commit(lambda: _deliver(operation), using=using)
    else:
        _deliver(operation)
    return operation


def _deliver(operation: Operation) -> None:
    """Deliver one stored, committed operation now: at most ``DIRECT_ATTEMPTS`` tries through
    the drain's path; whatever fails is left to the drain. Updates ``operation`` in place."""
    budget = app_settings.TIMEOUT + app_settings.CONNECT_TIMEOUT + DIRECT_MAX_RATE_WAIT
    try:
        for _ in range(max(1, app_settings.DIRECT_ATTEMPTS)):
            result = outbox.drain(
                ids=[operation.pk], max_seconds=budget, rate_wait=DIRECT_MAX_RATE_WAIT
            )
            operation.refresh_from_db()
            if not result.failed or result.paused or result.breaker or result.stopped:
                break
            # A transient failure: the next try is now, not after the drain's backoff.
            Operation.objects.filter(pk=operation.pk).retry_now(clock.now())
    except Exception:
        # Stored and committed: the drain delivers it. The request never fails because of it.
        log.exception(
            "cio: direct delivery of operation %s failed; left to the drain", operation.pk
        )
        return
    if operation.status != Operation.Status.DELIVERED:
        log.info(
            "cio: direct send of operation %s not delivered (%s); left to the drain",
            operation.pk,
            operation.status,
        )

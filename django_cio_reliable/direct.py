"""``DELIVERY="direct"``: send in the request, store for the drain on any failure.

The operation is stored first (in the caller's transaction), then sent at once with at most
``DIRECT_ATTEMPTS`` tries, each bounded by the configured timeouts. Success marks it delivered;
any failure leaves it to the drain (or dead-letters it for a permanent error). Unlike the
outbox mode, a crash in the middle of the call, or a rollback after it, cannot undo a request
that already reached Customer.io.

Every try goes through the circuit breaker: while it refuses (open, forced open, or half-open
with every probe slot taken) the operation is only stored and the call returns at once, with
no request and, in the closed or open state, no query for the breaker.

Two more cases leave the operation to the drain without a request: an earlier operation of the
same person is still open (sending this one now would overtake it: per-person order), and the
shared rate limit has no free slot within ``DIRECT_MAX_RATE_WAIT`` seconds (a web request
never queues behind the drain's traffic).
"""

from __future__ import annotations

import logging
import secrets
import time
from datetime import timedelta
from typing import Any

from django_cio_reliable import clock, outbox
from django_cio_reliable.breaker import get_breaker, outcome_for
from django_cio_reliable.conf import app_settings
from django_cio_reliable.exceptions import DeliveryError
from django_cio_reliable.models import Operation
from django_cio_reliable.retry import RetryPolicy, classify
from django_cio_reliable.transport import get_transport

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
    if not created:
        return operation
    breaker = get_breaker()
    permit = breaker.allow()
    if permit is None:
        log.debug("cio: breaker refuses; operation %s stored for the drain", operation.pk)
        return operation
    if outbox.paused_until()[0] is not None:
        breaker.cancel(permit)
        return operation
    if Operation.objects.filter(
        person_key=operation.person_key, id__lt=operation.pk, status__in=outbox.OPEN
    ).exists():
        # An earlier operation of this person waits in the outbox: keep their order.
        breaker.cancel(permit)
        log.debug("cio: operation %s waits behind an earlier one of its person", operation.pk)
        return operation
    limiter = outbox.RateLimiter()
    if not limiter.try_acquire(DIRECT_MAX_RATE_WAIT):
        breaker.cancel(permit)
        log.debug("cio: no rate-limit slot soon; operation %s stored for the drain", operation.pk)
        return operation
    now = clock.now()
    token = secrets.token_hex(16)
    lease = timedelta(seconds=app_settings.LEASE_SECONDS)
    claimed = Operation.objects.filter(pk=operation.pk, status=Operation.Status.PENDING).update(
        status=Operation.Status.SENDING, lease_token=token, lease_expires_at=now + lease
    )
    if not claimed:
        breaker.cancel(permit)
        return operation
    claim = outbox.Claim(token=token, operations=[operation])
    transport = get_transport()
    deliverer = outbox.Deliverer(
        transport=transport,
        policy=RetryPolicy.from_settings(),
        limiter=limiter,
        breaker=breaker,
    )
    result = outbox.DrainResult(claimed=1)
    last_error: DeliveryError | None = None
    for attempt in range(1, max(1, app_settings.DIRECT_ATTEMPTS) + 1):
        if permit is None:
            if not limiter.try_acquire(DIRECT_MAX_RATE_WAIT):
                break
            permit = breaker.allow()
            if permit is None:
                # The breaker opened (or is probing) after the first try: leave it to the drain.
                break
        Operation.objects.filter(pk=operation.pk, lease_token=token).update(attempts=attempt)
        operation.attempts = attempt
        started = time.monotonic()
        try:
            transport.send(kind, customer_id, operation.payload)  # type: ignore[arg-type]
        except DeliveryError as error:
            breaker.record(permit, outcome_for(error, time.monotonic() - started))
            permit = None
            last_error = error
            if classify(error) != "retry":
                break
            continue
        except BaseException:
            breaker.cancel(permit)
            raise
        breaker.record(permit, outcome_for(None, time.monotonic() - started))
        outbox.ack_delivered(claim, [operation])
        return operation
    if last_error is not None:
        log.info(
            "cio: direct send of operation %s failed (%s, status %s); left to the drain",
            operation.pk,
            last_error.kind,
            last_error.status,
        )
        deliverer._handle_error(claim, [operation], last_error, result)
        operation.refresh_from_db()
    return operation

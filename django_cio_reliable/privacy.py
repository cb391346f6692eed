"""Forget a person: erase every payload and idempotency key the outbox holds for them.

Customer.io payloads are personal data; the outbox must not become a second, forgotten copy.
:func:`forget` is safe to run while workers drain: open operations of the person are
dead-lettered and erased in one statement, so no worker claims them afterwards. An operation
already in flight (claimed by a worker that holds its payload in memory) may still be sent once;
its stored payload is erased all the same, and :class:`ForgetResult` reports how many there were.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Q

from django_cio_reliable import clock, validation
from django_cio_reliable.idempotency import key_cache
from django_cio_reliable.models import IdempotencyKey, Operation

log = logging.getLogger(__name__)

Status = Operation.Status
FORGOTTEN = "forgotten: payload erased on request"


@dataclass
class ForgetResult:
    """What :func:`forget` removed.

    Attributes:
        cancelled: Open operations that will never be sent (now dead, payload erased).
        in_flight: Operations being sent right now; they may still reach Customer.io once.
        erased: Delivered or dead operations whose stored payload was erased.
        keys: Idempotency keys deleted.
        delete_operation_id: The id of the enqueued Customer.io ``delete``, if one was asked for.
    """

    cancelled: int = 0
    in_flight: int = 0
    erased: int = 0
    keys: int = 0
    delete_operation_id: int | None = None

    @property
    def total(self) -> int:
        """Every operation touched."""
        return self.cancelled + self.in_flight + self.erased


def _person(customer_id: str) -> Q:
    return Q(person_key=f"c:{customer_id}") | Q(person_key=f"a:{customer_id}")


def forget(customer_id: str | int, *, send_delete: bool = False) -> ForgetResult:
    """Erase every stored payload and idempotency key of ``customer_id``.

    Args:
        customer_id: The person's customer id (anonymous operations with the same id are
            erased too).
        send_delete: Also enqueue a Customer.io ``delete`` of the person (stored after the
            erasure, so it is kept and delivered).

    Returns:
        What was removed.

    Raises:
        InvalidOperation: ``customer_id`` is empty or too long.
    """
    cid = validation.customer_id(customer_id)
    now = clock.now()
    result = ForgetResult()
    with transaction.atomic():
        ops = Operation.objects.filter(_person(cid))
        result.cancelled = ops.filter(status__in=[Status.PENDING, Status.FAILED]).update(
            status=Status.DEAD,
            dead_at=now,
            payload={},
            idempotency_key="",
            last_error=FORGOTTEN,
        )
        result.in_flight = ops.filter(status=Status.SENDING).update(payload={}, idempotency_key="")
        result.erased = (
            ops.filter(status__in=[Status.DELIVERED, Status.DEAD])
            .exclude(last_error=FORGOTTEN, dead_at=now)
            .update(payload={}, idempotency_key="")
        )
        keys = list(IdempotencyKey.objects.filter(person_key__in=[f"c:{cid}", f"a:{cid}"]))
        result.keys = IdempotencyKey.objects.filter(pk__in=[k.pk for k in keys]).delete()[0]
        for key in keys:
            key_cache.discard(key.key)
        if send_delete:
            from django_cio_reliable import api

            result.delete_operation_id = api.delete(cid).pk
    log.info(
        "cio: forgot a person: %d cancelled, %d in flight, %d erased, %d keys",
        result.cancelled,
        result.in_flight,
        result.erased,
        result.keys,
    )
    return result

"""Forget a person: erase every payload and idempotency key the outbox holds for them.

Customer.io payloads are personal data; the outbox must not become a second, forgotten copy.
:func:`forget` is safe to run while workers drain. Every open operation of the person —
pending, failed, and also those being sent right now — is dead-lettered as
:data:`FORGOTTEN`, its payload erased and its lease token cleared, so:

- no worker claims it afterwards (it is dead), and a lease expiry cannot bring it back;
- the worker that holds it finds no row with its lease token: its fenced acknowledgement,
  reschedule or hand-back (``ack_delivered``, ``ack_failed``, ``release``, ``hold``) changes
  nothing, so it is never retried;
- replays (``outbox.replay``, ``cio_replay``, the admin actions) skip it: its payload is gone
  and an emptied ``identify`` could recreate a deleted person.

What cannot be taken back is a request already on its way: a worker that claimed an operation
holds its payload in memory and may send it once (at most one operation of a person is in
flight at a time, because of per-person order). :attr:`ForgetResult.in_flight` counts them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Q

from django_cio_reliable import clock, outbox, validation
from django_cio_reliable.idempotency import key_cache
from django_cio_reliable.lifecycle import FORGOTTEN, erased_q
from django_cio_reliable.models import IdempotencyKey, Operation

log = logging.getLogger(__name__)

__all__ = ["FORGOTTEN", "ForgetResult", "erased", "forget"]


def erased() -> Q:
    """Operations whose payload was erased (delivered and scrubbed, or forgotten).

    They are never sent again: replays skip them.
    """
    return erased_q()


@dataclass
class ForgetResult:
    """What :func:`forget` removed.

    Attributes:
        cancelled: Pending or failed operations that will never be sent (now dead, payload
            erased).
        in_flight: Operations a worker was sending; they are ended the same way (dead, payload
            erased, lease revoked) and never retried, but the request already on its way may
            reach Customer.io once.
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

    Open operations (pending, failed, and being sent) are dead-lettered as
    :data:`FORGOTTEN` with their payload erased; delivered and dead ones keep their row
    (kind, operation and event ids, timestamps, size) without the payload. No erased row keeps
    the customer id or the idempotency key. It writes to the database the routers choose
    for :class:`~django_cio_reliable.models.Operation`. Once this returns, no operation of the
    person is sent, except a request a worker had already started (see the module docs).

    Args:
        customer_id: The person's customer id (anonymous operations with the same id are
            erased too).
        send_delete: Also enqueue a Customer.io ``delete`` of the person (stored after the
            erasure, so it is kept and delivered). It goes through the outbox in every
            ``DELIVERY`` mode, and while a request of the person may still be on its way
            (an operation that was being sent) it is held until that request's lease ends,
            so a late ``identify`` cannot recreate the deleted person.

    Returns:
        What was removed.

    Raises:
        InvalidOperation: ``customer_id`` is empty or too long.
    """
    cid = validation.customer_id(customer_id)
    now = clock.now()
    result = ForgetResult()
    # The database the outbox writes to (routers honoured), like every other write of the app.
    using = outbox.db_for_write()
    operations = Operation.objects.using(using)
    with transaction.atomic(using=using):
        result.cancelled, result.in_flight, result.erased, lease_end = operations.filter(
            _person(cid)
        ).forget(now, cid)
        key_rows = IdempotencyKey.objects.using(using).filter(
            person_key__in=[f"c:{cid}", f"a:{cid}"]
        )
        keys = list(key_rows.values_list("key", flat=True))
        result.keys = key_rows.delete()[0]
        for key in keys:
            key_cache.discard(key)
        if send_delete:
            # Stored in the outbox whatever DELIVERY says, and due only once the lease of a
            # request still on its way has ended: a late identify must not recreate the person.
            delete = outbox.enqueue(Operation.Kind.DELETE, cid, {})
            if lease_end is not None:
                operations.filter(pk=delete.pk).postpone(lease_end)
            result.delete_operation_id = delete.pk
    log.info(
        "cio: forgot a person: %d cancelled, %d in flight ended, %d erased, %d keys",
        result.cancelled,
        result.in_flight,
        result.erased,
        result.keys,
    )
    return result

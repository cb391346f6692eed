"""Leases: claim due operations (counting the attempt), renew the lease before each request,
hand back what was not sent.

A claim reads only open rows (partial indexes) and rows by primary key; an operation whose lease
expired unacknowledged with no attempt or age left is dead-lettered instead of claimed again.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connections, transaction
from django.db.models import QuerySet

from django_cio_reliable import clock, metrics, signals
from django_cio_reliable.conf import app_settings
from django_cio_reliable.lifecycle import Status
from django_cio_reliable.models import Operation
from django_cio_reliable.outbox.ack import send_on_commit
from django_cio_reliable.outbox.store import (
    PERSON_LOCK_BUCKETS,
    PERSON_LOCK_SPACE,
    db_for_write,
)
from django_cio_reliable.retry import RetryPolicy

log = logging.getLogger(__name__)

#: Seconds of a lease kept in hand beyond one request's timeouts (see :func:`hold`).
LEASE_RENEW_MARGIN = 5.0


def claimable(now: datetime | None = None) -> QuerySet[Operation]:
    """Due operations with no earlier open operation of the same person, oldest first."""
    claimable: QuerySet[Operation] = Operation.objects.claimable(now or clock.now())
    return claimable


@dataclass
class Claim:
    """Operations claimed by one worker under one lease token.

    ``expires_at`` is when the lease ends unless renewed (``None``: not tracked, never
    renewed); ``lease_seconds`` is how long each renewal extends it.
    """

    token: str
    operations: list[Operation]
    expires_at: datetime | None = None
    lease_seconds: float = 0.0


def claim(
    limit: int,
    *,
    lease_seconds: float | None = None,
    ids: Iterable[int] | None = None,
    now: datetime | None = None,
) -> Claim:
    """Claim up to ``limit`` due operations with a fresh lease; counts one attempt for each.

    In the same short transaction, operations whose lease expired unacknowledged with no
    attempt or age left are dead-lettered first (a poison operation that kills its worker
    must not block its person forever). PostgreSQL (and other back ends with ``SKIP LOCKED``)
    lock the candidate rows so concurrent workers skip each other's, and leave alone a person
    whose operations another transaction is still storing; elsewhere (SQLite) the update is a
    compare-and-set on the status. Every query reads open rows or rows by primary key.
    """
    current = now or clock.now()
    lease = timedelta(seconds=lease_seconds or app_settings.LEASE_SECONDS)
    token = secrets.token_hex(16)
    using = db_for_write()
    rows = Operation.objects.using(using)
    qs = rows.claimable(current)
    if ids is not None:
        qs = qs.filter(id__in=list(ids))
    policy = RetryPolicy.from_settings()
    with transaction.atomic(using=using):
        abandoned = list(
            rows.abandoned(current, max_attempts=policy.max_attempts, max_age=policy.max_age)
        )
        if abandoned:
            _kill_abandoned(abandoned, current, policy, using)
        if connections[using].features.has_select_for_update_skip_locked:
            picked = _lock_due(qs, limit, using)
        else:
            picked = list(qs.values_list("id", flat=True)[:limit])
        if picked:
            # On SQLite the due condition is the compare-and-set against a concurrent claim.
            rows.filter(id__in=picked).due(current).lease(token, current + lease)
        operations = list(rows.filter(id__in=picked, lease_token=token).order_by("id"))
    return Claim(
        token=token,
        operations=operations,
        expires_at=current + lease,
        lease_seconds=lease.total_seconds(),
    )


def _lock_due(qs: QuerySet[Operation], limit: int, using: str) -> list[int]:
    """Lock up to ``limit`` claimable rows (PostgreSQL); returns the ids that may be claimed.

    A person whose operations another transaction is still storing (it holds the shared
    advisory lock of :func:`_hold_person_order`) is skipped until that transaction ends: an
    earlier operation of theirs may be uncommitted. For the others the earlier-open check is
    made again in a new statement (a new snapshot), which sees everything committed before the
    lock test. The test takes the exclusive lock and gives it back at once, so it never makes
    an enqueuer wait.
    """
    candidates = list(
        qs.select_for_update(skip_locked=True, of=("self",)).values_list("id", "person_key")[:limit]
    )
    if not candidates:
        return []
    persons = sorted({pkey for _, pkey in candidates})
    space, mask = PERSON_LOCK_SPACE, PERSON_LOCK_BUCKETS - 1
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT k FROM unnest(%s::text[]) AS k WHERE CASE "
            "WHEN pg_try_advisory_lock(%s, hashtext(k) & %s) "
            "THEN pg_advisory_unlock(%s, hashtext(k) & %s) ELSE false END",
            [persons, space, mask, space, mask],
        )
        free = {row[0] for row in cursor.fetchall()}
    if len(free) < len(persons):
        log.debug(
            "cio: %d people wait for a transaction still storing their operations",
            len(persons) - len(free),
        )
    ready = [pk for pk, pkey in candidates if pkey in free]
    if not ready:
        return []
    return list(qs.filter(id__in=ready).values_list("id", flat=True))


def _kill_abandoned(
    operations: Sequence[Operation], now: datetime, policy: RetryPolicy, using: str
) -> None:
    ids = [op.pk for op in operations]
    killed = Operation.objects.using(using).filter(id__in=ids)
    if not killed.kill_abandoned(now, max_attempts=policy.max_attempts, max_age=policy.max_age):
        return
    done = dict(
        Operation.objects.using(using)
        .filter(id__in=ids, status=Status.DEAD, dead_at=now)
        .values_list("id", "last_error")
    )
    metrics.record(dead=len(done), at=now)
    for op in operations:
        if op.pk in done:
            op.status, op.last_error, op.dead_at = Status.DEAD, done[op.pk], now
            log.warning(
                "cio: operation %s is dead: its lease expired unacknowledged after %d attempts",
                op.pk,
                op.attempts,
            )
            send_on_commit(signals.operation_dead, operation=op, reason=op.last_error)


def request_budget() -> float:
    """The longest one request may take: both timeouts plus a margin for the acknowledgement."""
    return app_settings.TIMEOUT + app_settings.CONNECT_TIMEOUT + LEASE_RENEW_MARGIN


def hold(claim_: Claim, operations: Sequence[Operation]) -> list[Operation]:
    """Renew the lease on ``operations`` before the next request; return those still held.

    Called before every request of a claim (one fenced update). A claim is worked through one
    request at a time, so a slow server can keep a worker busy for longer than its lease: the
    renewal makes the lease outlast the next request. And an operation whose lease is no
    longer this worker's — taken over by another worker after it expired, or ended by
    :func:`django_cio_reliable.privacy.forget` — is dropped unsent: sending it would send it
    twice, or send a forgotten person's data.
    """
    if claim_.expires_at is None or not operations:
        return list(operations)
    expires_at = clock.now() + timedelta(seconds=max(claim_.lease_seconds, request_budget()))
    ids = [op.pk for op in operations]
    renewed = Operation.objects.filter(id__in=ids).renew(claim_.token, expires_at)
    claim_.expires_at = expires_at
    if renewed == len(ids):
        return list(operations)
    held = set(
        Operation.objects.filter(
            id__in=ids, lease_token=claim_.token, status=Status.SENDING
        ).values_list("id", flat=True)
    )
    lost = [op.pk for op in operations if op.pk not in held]
    log.warning(
        "cio: operations %s are no longer leased to this worker (taken over, or forgotten); "
        "not sending them",
        lost,
    )
    return [op for op in operations if op.pk in held]


def release(claim_: Claim, operations: Sequence[Operation], *, at: datetime | None = None) -> int:
    """Hand back claimed but unsent operations without using up their attempt."""
    if not operations:
        return 0
    return int(
        Operation.objects.filter(id__in=[op.pk for op in operations]).release(
            claim_.token, at or clock.now()
        )
    )

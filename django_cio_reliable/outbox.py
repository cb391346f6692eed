"""The durable outbox: enqueue, claim, send, acknowledge, reschedule, dead-letter, replay, purge.

Invariants:

- An operation is stored (in the caller's transaction) before any network I/O.
- A claim happens in a short transaction; the attempt is counted at claim; the lease is a random
  token with an expiry. Sending happens with no transaction open.
- Every acknowledgement is an update fenced on the lease token, so a late worker whose lease
  expired cannot overwrite a newer result.
- Per-person order: an operation is never claimed while an earlier operation of the same person
  is still open (pending, sending or failed).
- The circuit breaker (:mod:`django_cio_reliable.breaker`) is asked before anything is claimed
  and before every request; a refusal hands back what was claimed without using up attempts.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, connections, router, transaction
from django.db.models import Q, QuerySet
from django.dispatch import Signal

from django_cio_reliable import clock, lifecycle, metrics, signals
from django_cio_reliable.breaker import Breaker, Permit, get_breaker, outcome_for
from django_cio_reliable.conf import app_settings
from django_cio_reliable.exceptions import DeliveryError
from django_cio_reliable.idempotency import key_cache, new_event_id
from django_cio_reliable.models import DeliveryState, IdempotencyKey, Operation
from django_cio_reliable.retry import RetryPolicy, classify, pause_seconds
from django_cio_reliable.transport import (
    BATCH_FRAMING_BYTES,
    MAX_BATCH_ITEM_BYTES,
    BatchItem,
    Transport,
    batch_item_bytes,
    get_transport,
)
from django_cio_reliable.validation import json_bytes

log = logging.getLogger(__name__)

Status = Operation.Status
OPEN = lifecycle.OPEN
MAX_ERROR_LENGTH = 1000
#: Shortest nap of a lingering drain.
LINGER_POLL = 0.25
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
#: :attr:`DrainResult.stopped` when no rate-limit slot was free within ``rate_wait``.
NO_RATE_SLOT = "no rate-limit slot soon"
#: Seconds of a lease kept in hand beyond one request's timeouts (see :func:`hold`).
LEASE_RENEW_MARGIN = 5.0


# --------------------------------------------------------------------------- enqueue


def person_key(kind: str, customer_id: str) -> str:
    """The ordering key of an operation: one per customer, one per anonymous id."""
    prefix = "a" if kind == Operation.Kind.TRACK_ANONYMOUS else "c"
    return f"{prefix}:{customer_id}"


def _db_for_write() -> str:
    return router.db_for_write(Operation) or "default"


@dataclass(frozen=True)
class _InsertPlan:
    """The INSERT of one new :class:`Operation` row, compiled once per connection alias.

    ``Model.save()`` compiles the same statement again on every call (most of its cost); the
    plan keeps the SQL and prepares only the values. Text columns take ``str`` values as they
    are on every back end; the others go through their field's ``get_db_prep_save()``.
    """

    sql: str
    attnames: tuple[str, ...]
    text: tuple[tuple[int, Any], ...]
    other: tuple[tuple[int, Any], ...]
    returning: tuple[str, ...]


_insert_plans: dict[tuple[str, str], _InsertPlan | None] = {}


def _insert_plan(operation: Operation, connection: Any) -> _InsertPlan | None:
    """The cached plan for ``connection``, or ``None`` where ``save()`` must be used instead."""
    key = (connection.alias, connection.vendor)
    try:
        return _insert_plans[key]
    except KeyError:
        pass
    from django.db.models import CharField, TextField
    from django.db.models.sql import InsertQuery

    meta = Operation._meta
    fields = [f for f in meta.local_concrete_fields if not f.generated and f is not meta.auto_field]
    returning = list(meta.db_returning_fields)
    plan: _InsertPlan | None = None
    if connection.features.can_return_columns_from_insert:
        query = InsertQuery(Operation)
        query.insert_values(fields, [operation])
        compiler = query.get_compiler(connection=connection)
        compiler.returning_fields = returning
        statements = compiler.as_sql()
        columns = [f.get_col(meta.db_table) for f in returning]
        if (
            len(statements) == 1
            and not compiler.returning_params
            and not compiler.get_converters(columns)
        ):
            is_text = [isinstance(f, CharField | TextField) for f in fields]
            plan = _InsertPlan(
                sql=statements[0][0],
                attnames=tuple(f.attname for f in fields),
                text=tuple((i, f) for i, f in enumerate(fields) if is_text[i]),
                other=tuple((i, f) for i, f in enumerate(fields) if not is_text[i]),
                returning=tuple(f.attname for f in returning),
            )
    _insert_plans[key] = plan
    return plan


def _insert(operation: Operation, using: str) -> None:
    """INSERT ``operation`` (a new row) in the current transaction, like ``save()`` but cheaper.

    Falls back to ``save()`` whenever anyone listens to ``pre_save``/``post_save`` of
    :class:`Operation` (``testing.capture_operations`` does), and on back ends that cannot
    return the new id from the INSERT.
    """
    from django.db.models.signals import post_save, pre_save

    connection = connections[using]
    plan = _insert_plan(operation, connection)
    if plan is None or pre_save.has_listeners(Operation) or post_save.has_listeners(Operation):
        operation.save(using=using, force_insert=True)
        return
    values = operation.__dict__
    params = [values[attname] for attname in plan.attnames]
    for index, model_field in plan.text:
        value = params[index]
        if value is not None and not isinstance(value, str):
            params[index] = model_field.get_db_prep_save(value, connection)
    prepared: dict[tuple[type[Any], int], Any] = {}
    for index, model_field in plan.other:
        value = params[index]
        if value is None and model_field.null:
            continue
        # The same datetime fills three columns: prepare it once.
        memo = (type(model_field), id(value))
        if memo not in prepared:
            prepared[memo] = model_field.get_db_prep_save(value, connection)
        params[index] = prepared[memo]
    with transaction.mark_for_rollback_on_error(using), connection.cursor() as cursor:
        cursor.execute(plan.sql, params)
        row = cursor.fetchone()
    for attname, value in zip(plan.returning, row, strict=True):
        setattr(operation, attname, value)
    operation._state.adding = False
    operation._state.db = using


def enqueue(
    kind: str,
    customer_id: str,
    payload: dict[str, Any],
    *,
    name: str = "",
    idempotency_key: str | None = None,
    payload_bytes: int = 0,
) -> Operation:
    """Store one validated operation in the current transaction and return it.

    With ``idempotency_key``, the first call within ``IDEMPOTENCY_TTL`` stores the operation and
    every later call returns that same operation without storing anything.
    """
    return enqueue_ex(
        kind,
        customer_id,
        payload,
        name=name,
        idempotency_key=idempotency_key,
        payload_bytes=payload_bytes,
    )[0]


def enqueue_ex(
    kind: str,
    customer_id: str,
    payload: dict[str, Any],
    *,
    name: str = "",
    idempotency_key: str | None = None,
    payload_bytes: int = 0,
) -> tuple[Operation, bool]:
    """Like :func:`enqueue`, also telling whether a new operation was stored."""
    if idempotency_key:
        cached = key_cache.get(idempotency_key)
        if cached is not None:
            return cached, False
    now = clock.now()

    def build() -> Operation:
        # Rebuilt for every try of a keyed insert; the key fixes the event id's random part.
        return new_operation(
            kind,
            customer_id,
            payload,
            now=now,
            name=name,
            idempotency_key=idempotency_key or "",
            payload_bytes=payload_bytes,
        )

    using = _db_for_write()
    if not idempotency_key:
        operation = build()
        if connections[using].vendor == "postgresql" and not connections[using].in_atomic_block:
            # The person-order lock lives as long as a transaction: give the INSERT one.
            with transaction.atomic(using=using):
                _hold_person_order(operation.person_key, using=using)
                _insert(operation, using)
        else:
            _hold_person_order(operation.person_key, using=using)
            _insert(operation, using)
        _on_commit_enqueued(operation, None, using)
        return operation, True
    return _enqueue_keyed(idempotency_key, person_key(kind, customer_id), build, now, using)


def new_operation(
    kind: str,
    customer_id: str,
    payload: dict[str, Any],
    *,
    now: datetime,
    name: str = "",
    idempotency_key: str = "",
    payload_bytes: int = 0,
) -> Operation:
    """The unsaved pending :class:`Operation` that :func:`enqueue` stores for these values.

    A ``track`` or ``track_anonymous`` gets its ULID event ``id`` here (its random part derived
    from ``idempotency_key`` when there is one). Bulk inserts that bypass :func:`enqueue`
    (the backfill) build their rows with this too, so both store the same thing.
    """
    if kind in (Operation.Kind.TRACK, Operation.Kind.TRACK_ANONYMOUS):
        payload = {**payload, "id": new_event_id(idempotency_key or None, now=now.timestamp())}
    return Operation(
        kind=kind,
        customer_id=customer_id,
        person_key=person_key(kind, customer_id),
        name=name,
        payload=payload,
        payload_bytes=payload_bytes,
        event_id=str(payload.get("id", "")),
        idempotency_key=idempotency_key,
        status=Status.PENDING,
        next_attempt_at=now,
        created_at=now,
        updated_at=now,
    )


def _enqueue_keyed(
    key: str, pkey: str, build: Callable[[], Operation], now: datetime, using: str
) -> tuple[Operation, bool]:
    ttl = timedelta(seconds=app_settings.IDEMPOTENCY_TTL)
    for _ in range(5):
        existing = (
            IdempotencyKey.objects.using(using)
            .filter(key=key)
            .values_list("pk", "operation_id", "expires_at")
            .first()
        )
        if existing is not None:
            key_pk, operation_id, expires_at = existing
            if expires_at > now and operation_id is not None:
                found = Operation.objects.using(using).filter(pk=operation_id).first()
                if found is not None:
                    return found, False
            # Expired, or its operation is gone: the key may be taken again.
            IdempotencyKey.objects.using(using).filter(pk=key_pk).delete()
        try:
            with transaction.atomic(using=using):
                operation = build()
                _hold_person_order(pkey, using=using)
                _insert(operation, using)
                IdempotencyKey.objects.using(using).create(
                    key=key,
                    person_key=pkey,
                    operation=operation,
                    created_at=now,
                    expires_at=now + ttl,
                )
        except IntegrityError:
            # Another transaction reserved the key first; read its operation.
            continue
        _on_commit_enqueued(operation, key, using)
        return operation, True
    raise RuntimeError(f"could not reserve idempotency key after retries (key hash {hash(key)})")


def _on_commit_enqueued(operation: Operation, key: str | None, using: str) -> None:
    """After commit: remember the key, and announce the operation (``dispatch`` listens)."""

    def committed() -> None:
        if key:
            key_cache.put(key, operation)
        signals.operation_enqueued.send_robust(sender=Operation, operation=operation)

    transaction.on_commit(committed, using=using)


# --------------------------------------------------------------------------- shared state


def _destination() -> str:
    return app_settings.destination


def delivery_state() -> DeliveryState:
    """The shared delivery-state row of the current destination (created on first use)."""
    state: DeliveryState = DeliveryState.objects.get_or_create(destination=_destination())[0]
    return state


def paused_until(now: datetime | None = None) -> tuple[datetime | None, str]:
    """When the shared pause ends (``None`` when not paused) and why."""
    current = now or clock.now()
    row = (
        DeliveryState.objects.filter(destination=_destination())
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
    qs = DeliveryState.objects.filter(destination=_destination())
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
            destination=_destination(), pause_reason=reason, paused_until__isnull=False
        ).update(paused_until=None, pause_reason=DeliveryState.PauseReason.NONE)
    )


def clear_auth_failure() -> None:
    """Forget a credentials failure (after a request was accepted again)."""
    DeliveryState.objects.filter(destination=_destination(), auth_failed_at__isnull=False).update(
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
                .filter(destination=_destination())
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


# --------------------------------------------------------------------------- claim


#: Namespace of the PostgreSQL advisory locks that order a person's operations (see
#: :func:`_hold_person_order` and :func:`claim`).
PERSON_LOCK_SPACE = 0x43494F  # "CIO"


def store_many(operations: Sequence[Operation], using: str) -> None:
    """Store operations built by :func:`new_operation` in one ``INSERT`` (the backfill), each
    announced after commit like one stored by :func:`enqueue`."""
    with transaction.atomic(using=using):
        _hold_person_order(*sorted({op.person_key for op in operations}), using=using)
        Operation.objects.using(using).bulk_create(operations)
    for operation in operations:
        _on_commit_enqueued(operation, None, using)


def _hold_person_order(*pkeys: str, using: str) -> None:
    """On PostgreSQL, mark the current transaction as one that stores operations of ``pkeys``.

    A shared advisory lock, held until the transaction ends: enqueuers never wait for each other,
    but a claim (which asks for the exclusive lock without waiting) knows that an operation of
    this person may still be uncommitted and leaves the person alone until it commits or rolls
    back. Without it a later operation committed first could be sent before an earlier one
    (guarantee 3). Other databases need nothing: SQLite has one writer at a time, so a person's
    operations commit in id order.
    """
    connection = connections[using]
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock_shared(%s, hashtext(k)) FROM unnest(%s::text[]) AS k",
            [PERSON_LOCK_SPACE, list(pkeys)],
        )


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
    using = _db_for_write()
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
    an enqueuer wait (direct mode claims inside the caller's transaction).
    """
    candidates = list(
        qs.select_for_update(skip_locked=True, of=("self",)).values_list("id", "person_key")[:limit]
    )
    if not candidates:
        return []
    persons = sorted({pkey for _, pkey in candidates})
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT k FROM unnest(%s::text[]) AS k WHERE CASE "
            "WHEN pg_try_advisory_lock(%s, hashtext(k)) "
            "THEN pg_advisory_unlock(%s, hashtext(k)) ELSE false END",
            [persons, PERSON_LOCK_SPACE, PERSON_LOCK_SPACE],
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
            _send_on_commit(signals.operation_dead, operation=op, reason=op.last_error)


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


# --------------------------------------------------------------------------- acknowledge


def _send_on_commit(signal: Signal, **kwargs: Any) -> None:
    """Send ``signal`` once the current transaction commits (at once in autocommit)."""
    transaction.on_commit(
        lambda: signal.send_robust(sender=Operation, **kwargs), using=_db_for_write()
    )


def _redact(text: str) -> str:
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
    with transaction.atomic(using=_db_for_write()):  # one commit for the row and its count
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
        _send_on_commit(signals.operation_delivered, operation=op)
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
    with transaction.atomic(using=_db_for_write()):
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
    reason = _redact(str(error))
    age = (now - operation.created_at).total_seconds()
    fenced = Operation.objects.filter(pk=operation.pk)
    permanent = classify(error) == "dead"
    if permanent or policy.exhausted(operation.attempts, age):
        if not permanent:
            reason = _redact(
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
            _send_on_commit(signals.operation_dead, operation=operation, reason=reason)
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
        _send_on_commit(
            signals.operation_failed, operation=operation, error=error, next_attempt_at=next_at
        )
    return Status.FAILED, bool(updated)


# --------------------------------------------------------------------------- deliver


@dataclass
class DrainResult:
    """What one drain run did.

    ``breaker`` is set when the circuit breaker refused a request and the run stopped (or
    handed back) because of it: ``"open"``, ``"half_open"`` (every probe slot taken) or
    ``"forced_open"``; empty otherwise. ``lost_lease`` counts operations this worker dropped
    unsent because another worker had taken over their lease.
    """

    claimed: int = 0
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    released: int = 0
    requests: int = 0
    lost_lease: int = 0
    paused: str = ""
    stopped: str = ""
    breaker: str = ""
    errors: list[str] = field(default_factory=list)

    def add(self, other: DrainResult) -> None:
        """Accumulate ``other`` into this result."""
        for name in (
            "claimed",
            "delivered",
            "failed",
            "dead",
            "released",
            "requests",
            "lost_lease",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.paused = other.paused or self.paused
        self.stopped = other.stopped or self.stopped
        self.breaker = other.breaker or self.breaker
        self.errors.extend(other.errors)


def _refusal(breaker: Breaker) -> str:
    """How a breaker that just refused a call is reported in :attr:`DrainResult.breaker`."""
    snapshot = breaker.snapshot()
    if snapshot.mode == "forced_open":
        return "forced_open"
    return snapshot.state if snapshot.state != "closed" else "open"


@dataclass
class Deliverer:
    """Sends claimed operations and records every outcome (in the outbox and the breaker).

    Every HTTP request takes a permit from the circuit breaker first and reports its outcome
    to it; a half-open probe is one request of one operation.
    """

    transport: Transport
    policy: RetryPolicy
    limiter: RateLimiter
    should_stop: Callable[[], str] = field(default=lambda: "")
    breaker: Breaker = field(default_factory=get_breaker)
    #: The longest a request waits for its rate-limit slot before the rest is handed back
    #: (``None``: as long as it takes).
    rate_wait: float | None = None

    def _batches(self, operations: Sequence[Operation]) -> list[list[Operation]]:
        """Group operations into requests: batches within the caps, oversized ones alone."""
        if not app_settings.BATCH:
            return [[op] for op in operations]
        size_cap = max(1, app_settings.BATCH_SIZE)
        # The request is the items, a comma between two, and the framing around them.
        byte_cap = app_settings.BATCH_MAX_BYTES - BATCH_FRAMING_BYTES
        groups: list[list[Operation]] = []
        current: list[Operation] = []
        current_bytes = 0
        for op in operations:
            item_bytes = batch_item_bytes(op.kind, op.customer_id, op.payload)  # type: ignore[arg-type]
            if item_bytes > MAX_BATCH_ITEM_BYTES or item_bytes > byte_cap:
                groups.append([op])  # sent alone, through v1 (see _fits_batch)
                continue
            separator = 1 if current else 0
            if current and (
                len(current) >= size_cap or current_bytes + separator + item_bytes > byte_cap
            ):
                groups.append(current)
                current, current_bytes, separator = [], 0, 0
            current.append(op)
            current_bytes += separator + item_bytes
        if current:
            groups.append(current)
        return groups

    def deliver(self, claim_: Claim, permit: Permit | None = None) -> DrainResult:
        """Send every operation of ``claim_``; unsent ones are handed back when stopping.

        Args:
            claim_: The claimed operations.
            permit: A breaker permit already taken for the first request (the drain takes one
                before it claims); every other request asks the breaker itself.

        Returns:
            What was done. When the breaker refuses a request, the operations not sent yet
            are handed back (no attempt used) and ``breaker`` says why.
        """
        result = DrainResult(claimed=len(claim_.operations))
        groups = self._batches(claim_.operations)
        index = 0
        while index < len(groups):
            group = groups[index]
            remaining = [op for g in groups[index:] for op in g]
            until, reason = paused_until()
            stop = self.should_stop()
            if until is not None or stop:
                self.breaker.cancel(permit)
                result.released += release(claim_, remaining, at=until)
                result.paused = reason
                result.stopped = stop
                return result
            if not self.limiter.try_acquire(self.rate_wait):
                self.breaker.cancel(permit)
                result.released += release(claim_, remaining)
                result.stopped = NO_RATE_SLOT
                return result
            if permit is None:
                permit = self.breaker.allow()
            if permit is None:
                result.released += release(claim_, remaining)
                result.breaker = _refusal(self.breaker)
                return result
            held = hold(claim_, remaining)
            if len(held) != len(remaining):
                kept = {op.pk for op in held}
                result.lost_lease += len(remaining) - len(held)
                groups[index:] = [
                    g for g in ([op for op in g if op.pk in kept] for g in groups[index:]) if g
                ]
                if index >= len(groups):
                    self.breaker.cancel(permit)
                    return result
                group = groups[index]
            if permit.is_probe and len(group) > 1:
                # A probe is one request of one operation: the rest waits for the verdict.
                groups[index : index + 1] = [group[:1], group[1:]]
                group = groups[index]
            result.requests += 1
            outcome = self._send_group(claim_, group, result, permit)
            permit = None
            if outcome in ("paused", "refused"):
                rest = [op for g in groups[index + 1 :] for op in g]
                result.released += release(
                    claim_, rest, at=paused_until()[0] if outcome == "paused" else None
                )
                return result
            index += 1
        return result

    def _send_group(
        self, claim_: Claim, group: list[Operation], result: DrainResult, permit: Permit
    ) -> str:
        """Send one request; returns ``ok``, ``paused`` or ``refused`` (by the breaker)."""
        if len(group) == 1 and not (app_settings.BATCH and _fits_batch(group[0])):
            return self._send_single(claim_, group[0], result, permit)
        items = [BatchItem(op.kind, op.customer_id, op.payload) for op in group]  # type: ignore[arg-type]
        started = time.monotonic()
        try:
            outcomes = self.transport.send_batch(items)
        except DeliveryError as error:
            self.breaker.record(permit, outcome_for(error, time.monotonic() - started))
            if error.kind == "permanent":
                # The whole request was refused: find the bad operations one at a time.
                log.warning(
                    "cio: batch of %d refused (status %s); sending one by one",
                    len(group),
                    error.status,
                )
                for position, op in enumerate(group):
                    # Each of these is a request of its own: it honours the deadline and takes
                    # its own rate-limit slot.
                    stop = self.should_stop()
                    if stop or not self.limiter.try_acquire(self.rate_wait):
                        result.stopped = stop or NO_RATE_SLOT
                        result.released += release(claim_, group[position:])
                        return "refused"
                    if not hold(claim_, [op]):
                        result.lost_lease += 1
                        continue
                    single = self._send_single(claim_, op, result, None)
                    if single in ("paused", "refused"):
                        first_unsent = position + 1 if single == "paused" else position
                        rest = group[first_unsent:]
                        at = paused_until()[0] if single == "paused" else None
                        result.released += release(claim_, rest, at=at)
                        return single
                return "ok"
            return self._handle_error(claim_, group, error, result)
        except BaseException:
            self.breaker.cancel(permit)
            raise
        self.breaker.record(permit, outcome_for(None, time.monotonic() - started))
        delivered = [op for op, err in zip(group, outcomes, strict=True) if err is None]
        result.delivered += len(delivered)
        ack_delivered(claim_, delivered)
        self._record_failures(
            claim_, [(op, err) for op, err in zip(group, outcomes, strict=True) if err], result
        )
        if delivered:
            clear_auth_failure()
        return "ok"

    def _send_single(
        self, claim_: Claim, op: Operation, result: DrainResult, permit: Permit | None
    ) -> str:
        """Send one operation alone; without a ``permit``, ask the breaker for one first."""
        if permit is None:
            permit = self.breaker.allow()
            if permit is None:
                result.breaker = _refusal(self.breaker)
                return "refused"
            result.requests += 1
        started = time.monotonic()
        try:
            self.transport.send(op.kind, op.customer_id, op.payload)  # type: ignore[arg-type]
        except DeliveryError as error:
            self.breaker.record(permit, outcome_for(error, time.monotonic() - started))
            return self._handle_error(claim_, [op], error, result)
        except BaseException:
            self.breaker.cancel(permit)
            raise
        self.breaker.record(permit, outcome_for(None, time.monotonic() - started))
        result.delivered += 1
        ack_delivered(claim_, [op])
        clear_auth_failure()
        return "ok"

    def _handle_error(
        self, claim_: Claim, group: list[Operation], error: DeliveryError, result: DrainResult
    ) -> str:
        action = classify(error)
        if action in ("pause_rate_limited", "pause_auth"):
            reason = (
                DeliveryState.PauseReason.AUTH
                if action == "pause_auth"
                else DeliveryState.PauseReason.RATE_LIMITED
            )
            until = pause(reason, pause_seconds(error), error=_redact(error.reason))
            if action == "pause_auth":
                log.error(
                    "cio: Customer.io rejected the credentials (status %s); delivery paused "
                    "until %s. Check CIO_RELIABLE SITE_ID/API_KEY.",
                    error.status,
                    until.isoformat(),
                )
            else:
                log.warning(
                    "cio: rate limited (429); every worker pauses until %s", until.isoformat()
                )
            result.released += release(claim_, group, at=until)
            result.paused = reason
            return "paused"
        self._record_failures(claim_, [(op, error) for op in group], result)
        return "ok"

    def _record_failures(
        self,
        claim_: Claim,
        failures: Sequence[tuple[Operation, DeliveryError]],
        result: DrainResult,
    ) -> None:
        if not failures:
            return
        for status in ack_failures(claim_, failures, policy=self.policy):
            if status == Status.DEAD:
                result.dead += 1
            else:
                result.failed += 1


def _fits_batch(op: Operation) -> bool:
    """Whether ``op`` may go through ``/api/v2/batch``: within the 32 KB item limit, and a
    batch of it alone within ``BATCH_MAX_BYTES``; otherwise it goes alone through v1."""
    item_bytes = batch_item_bytes(op.kind, op.customer_id, op.payload)  # type: ignore[arg-type]
    return item_bytes <= min(
        MAX_BATCH_ITEM_BYTES, app_settings.BATCH_MAX_BYTES - BATCH_FRAMING_BYTES
    )


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
            total.breaker = _refusal(breaker)
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
    if total.requests and not connections[_db_for_write()].in_atomic_block:
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


# --------------------------------------------------------------------------- replay and purge


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
            clock.now(), _redact(reason)
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
        Operation.objects.filter(status=Status.DELIVERED).filter(
            Q(idempotency_key="", delivered_at__lt=delivered_cutoff)
            | Q(delivered_at__lt=keyed_cutoff)
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


# --------------------------------------------------------------------------- status


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
    oldest = Operation.objects.filter(status__in=OPEN).aggregate(m=Min("created_at"))["m"]
    state = (
        DeliveryState.objects.filter(destination=_destination())
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


__all__ = [
    "Claim",
    "DrainResult",
    "RateLimiter",
    "claim",
    "drain",
    "enqueue",
    "purge",
    "queue_status",
    "release",
    "replay",
]

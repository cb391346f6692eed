"""Enqueue: store an operation in the caller's transaction, before any network I/O.

Only the caller's rows are written here (the operation and its idempotency key): nothing the
fleet shares. On PostgreSQL the transaction also holds a shared advisory lock per person, so a
claim knows an earlier operation of that person may still be uncommitted (guarantee 3).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, connections, router, transaction

from django_cio_reliable import clock, signals
from django_cio_reliable.conf import app_settings
from django_cio_reliable.exceptions import IdempotencyConflict
from django_cio_reliable.idempotency import key_cache, key_hash, new_event_id, scope_key
from django_cio_reliable.lifecycle import Status
from django_cio_reliable.models import IdempotencyKey, Operation

log = logging.getLogger(__name__)

#: Namespace of the PostgreSQL advisory locks that order a person's operations.
PERSON_LOCK_SPACE = 0x43494F  # "CIO"
#: People share this many advisory locks (a hash of the person key picks one): a transaction
#: that stores operations of 50,000 people holds at most this many locks, well within
#: PostgreSQL's lock table (``max_locks_per_transaction`` × ``max_connections``, 6,400 by
#: default), and a claim skips only the people of the buckets still being written.
PERSON_LOCK_BUCKETS = 256


def person_key(kind: str, customer_id: str) -> str:
    """The ordering key of an operation: one per customer, one per anonymous id."""
    prefix = "a" if kind == Operation.Kind.TRACK_ANONYMOUS else "c"
    return f"{prefix}:{customer_id}"


def db_for_write() -> str:
    """The database the routers choose for writing operations (``"default"`` without one)."""
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
    every later call for the same kind and person returns that same operation without storing
    anything (keys are scoped: another person's or another kind's is another key).
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
    pkey = person_key(kind, customer_id)
    scoped = scope_key(kind, pkey, idempotency_key) if idempotency_key else ""
    if scoped:
        cached = key_cache.get(scoped)
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

    using = db_for_write()
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
    return _enqueue_keyed(scoped, idempotency_key, pkey, build, now, using)


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
    from the scoped ``idempotency_key`` when there is one, so two people's events under one key
    get different ids). Bulk inserts that bypass :func:`enqueue` (the backfill) build their rows
    with this too, so both store the same thing.
    """
    pkey = person_key(kind, customer_id)
    if kind in (Operation.Kind.TRACK, Operation.Kind.TRACK_ANONYMOUS):
        scoped = scope_key(kind, pkey, idempotency_key) if idempotency_key else None
        payload = {**payload, "id": new_event_id(scoped, now=now.timestamp())}
    return Operation(
        kind=kind,
        customer_id=customer_id,
        person_key=pkey,
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
    key: str, given: str, pkey: str, build: Callable[[], Operation], now: datetime, using: str
) -> tuple[Operation, bool]:
    """Store the operation under the scoped ``key``, or return the one already stored under it.

    ``given`` is the key as the caller gave it (only its hash is ever shown).
    """
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
            # Another transaction reserved the key first; read its operation. In a snapshot
            # older than that transaction's commit (REPEATABLE READ) it stays invisible.
            continue
        _on_commit_enqueued(operation, key, using)
        return operation, True
    raise IdempotencyConflict(key_hash(given))


def _on_commit_enqueued(operation: Operation, key: str | None, using: str) -> None:
    """After commit: remember the key, and announce the operation (``dispatch`` listens)."""

    def committed() -> None:
        if key:
            key_cache.put(key, operation)
        signals.operation_enqueued.send_robust(sender=Operation, operation=operation)

    transaction.on_commit(committed, using=using)


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

    A shared advisory lock (one of :data:`PERSON_LOCK_BUCKETS`), held until the transaction
    ends: enqueuers never wait for each other, but a claim (which asks for the exclusive lock
    without waiting) knows that an operation of this person may still be uncommitted and leaves
    the person alone until it commits or rolls back. Without it a later operation committed
    first could be sent before an earlier one (guarantee 3). Other databases need nothing:
    SQLite has one writer at a time, so a person's operations commit in id order.
    """
    connection = connections[using]
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock_shared(%s, b) FROM "
            "(SELECT DISTINCT hashtext(k) & %s AS b FROM unnest(%s::text[]) AS k) AS buckets",
            [PERSON_LOCK_SPACE, PERSON_LOCK_BUCKETS - 1, list(pkeys)],
        )

"""The backfill: identify the existing rows of a model (``manage.py cio_backfill``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.db import connections, models, router, transaction
from django.db.models.signals import post_save

from django_cio_reliable import clock, validation
from django_cio_reliable.exceptions import InvalidOperation
from django_cio_reliable.hooks.registry import Hook, M, OnInvalid, registered

if TYPE_CHECKING:
    from django.db.models import QuerySet

log = logging.getLogger(__name__)


@dataclass
class BackfillResult:
    """What :func:`identify_queryset` did (also passed to its ``progress`` callback).

    Attributes:
        model: The model's label.
        total: Rows selected (counted first when a ``progress`` callback is given), or ``None``.
        processed: Rows read so far.
        identified: Identify operations stored (with ``dry_run``: that would be stored).
        skipped: Rows whose customer id was ``None``.
        invalid: Rows skipped because their operation was invalid (``on_invalid="skip"``).
        chunks: Chunks committed.
        last_pk: The primary key of the last row of the last committed chunk; pass it as
            ``start_after`` to resume.
        dry_run: Nothing was stored.
        seconds: Elapsed time.
    """

    model: str
    total: int | None = None
    processed: int = 0
    identified: int = 0
    skipped: int = 0
    invalid: int = 0
    chunks: int = 0
    last_pk: Any = None
    dry_run: bool = False
    seconds: float = 0.0


class BackfillAborted(Exception):
    """A backfill stopped at a row whose operation is invalid (``on_invalid="raise"``).

    The chunk holding the row was rolled back; every earlier chunk is stored.

    Attributes:
        error: The :class:`~django_cio_reliable.exceptions.InvalidOperation`.
        pk: The primary key of the row.
        result: What was stored before it (``result.last_pk`` is where to resume).
    """

    def __init__(self, error: InvalidOperation, *, pk: Any, result: BackfillResult) -> None:
        self.error = error
        self.pk = pk
        self.result = result
        super().__init__(
            f"{result.model} pk={pk!r}: invalid {error.field} ({error}); "
            f"{result.identified} operations were stored before it; resume with "
            f"start_after={result.last_pk!r}"
        )


def _store_identifies(batch: Sequence[tuple[str, dict[str, Any]]], using: str) -> None:
    """Store one identify per ``(customer id, payload)`` in one ``INSERT`` per batch of rows.

    The rows are what :func:`outbox.enqueue` stores for an identify without a key, and every
    one is announced after commit the same way (``operation_enqueued``, then dispatch).
    """
    # Not at module level: they import the models (see the package docstring).
    from django_cio_reliable import outbox
    from django_cio_reliable.models import Operation

    if (
        not connections[using].features.can_return_rows_from_bulk_insert
        # bulk_create sends no post_save: whoever listens for new operations (such as
        # testing.capture_operations) would miss these rows.
        or post_save.has_listeners(Operation)
    ):
        for person, payload in batch:  # one by one
            outbox.enqueue(
                "identify", person, payload, payload_bytes=validation.json_bytes(payload)
            )
        return
    now = clock.now()
    operations = [
        outbox.new_operation(
            Operation.Kind.IDENTIFY,
            person,
            payload,
            now=now,
            payload_bytes=validation.json_bytes(payload),
        )
        for person, payload in batch
    ]
    outbox.store_many(operations, using)


def identify_hook_for(model: type[models.Model], hook: Hook | str | None = None) -> Hook:
    """The ``identify_on_save`` hook to backfill ``model`` with.

    Args:
        model: The model.
        hook: A hook, its ``dispatch_uid``, or ``None`` for the one identify hook of ``model``.

    Raises:
        ImproperlyConfigured: No such hook, or several and none chosen.
    """
    if isinstance(hook, Hook):
        return hook
    candidates = [
        h for h in registered() if h.kind == "identify_on_save" and issubclass(model, h.model)
    ]
    if hook is not None:
        for candidate in candidates:
            if candidate.dispatch_uid == hook:
                return candidate
        raise ImproperlyConfigured(
            f"no identify_on_save hook {hook!r} on {model._meta.label}; registered: "
            + (", ".join(repr(h.dispatch_uid) for h in candidates) or "none")
        )
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ImproperlyConfigured(
            f"no identify_on_save hook is registered for {model._meta.label}: register one or "
            "pass customer_id (and attributes)"
        )
    raise ImproperlyConfigured(
        f"{model._meta.label} has {len(candidates)} identify_on_save hooks; choose one: "
        + ", ".join(repr(h.dispatch_uid) for h in candidates)
    )


def identify_queryset(
    queryset: QuerySet[M],
    *,
    customer_id: Callable[[M], str | int | None] | None = None,
    attributes: Callable[[M], Mapping[str, Any] | None] | None = None,
    hook: Hook | str | None = None,
    chunk_size: int = 1000,
    progress: Callable[[BackfillResult], None] | None = None,
    on_invalid: OnInvalid | None = None,
    start_after: Any = None,
    dry_run: bool = False,
) -> BackfillResult:
    """Identify every row of ``queryset``: the backfill for rows no signal reported.

    ``bulk_create``, ``QuerySet.update`` and raw SQL send no model signals, so hooks never see
    those rows. This walks ``queryset`` in primary-key order, ``chunk_size`` rows at a time
    (keyset pagination: constant memory, no long-lived cursor), and stores one ``identify`` per
    row, one transaction per chunk. Operations always go to the outbox (whatever ``DELIVERY``
    says) and carry no idempotency key. Paused hooks do not affect it.

    Args:
        queryset: Model instances to identify (not sliced; its ordering is replaced by ``pk``).
        customer_id: The person's id from a row (``None`` skips the row). Default: the
            model's registered identify hook.
        attributes: The attributes from a row. Default: the hook's.
        hook: The identify hook (or its ``dispatch_uid``) whose callables to use, when the
            model has several.
        chunk_size: Rows per query and per transaction.
        progress: Called with the running :class:`BackfillResult` after each chunk (and once
            before the first); ``total`` is counted first when it is given.
        on_invalid: ``"raise"`` stops at the first invalid row (:class:`BackfillAborted`);
            ``"skip"`` logs and counts it. Default: the hook's, else ``"raise"``.
        start_after: Resume after this primary key (``BackfillResult.last_pk``).
        dry_run: Build and validate every operation, store nothing.

    Returns:
        What was done.

    Raises:
        BackfillAborted: A row's operation is invalid and ``on_invalid`` is ``"raise"``.
        ImproperlyConfigured: No callables given and no single identify hook registered.
        ValueError: ``chunk_size`` is below 1, or ``queryset`` is sliced.
    """
    from django_cio_reliable.models import Operation  # see _store_identifies

    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    if queryset.query.is_sliced:
        raise ValueError("identify_queryset() needs an unsliced queryset")
    model = queryset.model
    if customer_id is None:
        chosen = identify_hook_for(model, hook)
        customer_id = chosen.customer_id
        if attributes is None:
            attributes = chosen.attributes
        if on_invalid is None:
            on_invalid = chosen.on_invalid
    elif hook is not None:
        raise TypeError("pass either hook or customer_id, not both")
    policy: OnInvalid = on_invalid or "raise"
    result = BackfillResult(model=str(model._meta.label), dry_run=dry_run, last_pk=start_after)
    started = time.monotonic()
    base = queryset.order_by("pk")
    if start_after is not None:
        base = base.filter(pk__gt=start_after)
    if progress is not None:
        result.total = base.count()
        progress(result)
    using = router.db_for_write(Operation) or "default"
    if not dry_run and transaction.get_connection(using).in_atomic_block:
        log.warning(
            "cio: backfill of %s runs inside a transaction: nothing is committed (or dispatched) "
            "before it ends, and memory grows with every row",
            result.model,
        )
    while True:
        page = base if result.last_pk is None else base.filter(pk__gt=result.last_pk)
        rows = list(page[:chunk_size])
        if not rows:
            break
        batch: list[tuple[str, dict[str, Any]]] = []
        skipped = invalid = 0
        for row in rows:
            try:
                cid = customer_id(row)
                if cid is None:
                    skipped += 1
                    continue
                person = validation.customer_id(cid)
                attrs = validation.attributes(attributes(row) if attributes else None)
            except InvalidOperation as error:
                if policy == "raise":
                    result.seconds = time.monotonic() - started
                    raise BackfillAborted(error, pk=row.pk, result=result) from error
                invalid += 1
                log.warning(
                    "cio: backfill skipped %s pk=%s: invalid %s (limit %s, actual %s)",
                    result.model,
                    row.pk,
                    error.field,
                    error.limit,
                    error.actual,
                )
                continue
            batch.append((person, {"attributes": attrs}))
        if batch and not dry_run:
            with transaction.atomic(using=using):
                _store_identifies(batch, using)
        result.processed += len(rows)
        result.identified += len(batch)
        result.skipped += skipped
        result.invalid += invalid
        result.chunks += 1
        result.last_pk = rows[-1].pk
        result.seconds = time.monotonic() - started
        del rows, batch
        if progress is not None:
            progress(result)
        if result.chunks % 10 == 0:
            log.info(
                "cio: backfill of %s: %d rows, %d identified",
                result.model,
                result.processed,
                result.identified,
            )
    result.seconds = time.monotonic() - started
    log.info(
        "cio: backfill of %s done: %d rows, %d identified, %d skipped, %d invalid%s",
        result.model,
        result.processed,
        result.identified,
        result.skipped,
        result.invalid,
        " (dry run)" if dry_run else "",
    )
    return result

"""The public calls: ``identify``, ``track``, ``track_anonymous`` and ``delete``.

Each validates its input (:class:`~django_cio_reliable.exceptions.InvalidOperation` at the call
site, nothing stored), stores one operation in the caller's database transaction and returns it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django_cio_reliable import clock, validation
from django_cio_reliable.conf import app_settings
from django_cio_reliable.idempotency import DERIVE, _Derive, derive_key, validate_key

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    from django_cio_reliable.models import Operation
    from django_cio_reliable.privacy import ForgetResult

#: Window of content-derived keys (``idempotency_key=DERIVE``), in seconds.
DERIVED_KEY_WINDOW = 300.0


def _event_time(timestamp: object) -> int:
    """The event's time: the caller's, else now (database time), in whole Unix seconds.

    Stamped at the call, not at delivery: an event stored during an outage reaches
    Customer.io with the time it happened, however late it is sent.
    """
    given = validation.timestamp(timestamp)
    return int(clock.now().timestamp()) if given is None else given


def _store(
    kind: str,
    customer_id: str,
    payload: dict[str, Any],
    *,
    name: str = "",
    idempotency_key: str | _Derive | None,
    size: int | None = None,
) -> Operation:
    from django_cio_reliable import outbox

    key: str | None = None
    if isinstance(idempotency_key, _Derive):
        person = outbox.person_key(kind, customer_id)
        key = derive_key(kind, person, payload, window=DERIVED_KEY_WINDOW)
    elif idempotency_key is not None:
        key = validate_key(idempotency_key)
    if size is None:
        size = validation.json_bytes(payload)
    if app_settings.DELIVERY == "direct":
        from django_cio_reliable import direct

        return direct.send_or_store(
            kind, customer_id, payload, name=name, idempotency_key=key, payload_bytes=size
        )
    return outbox.enqueue(
        kind, customer_id, payload, name=name, idempotency_key=key, payload_bytes=size
    )


def identify(
    customer_id: str | int,
    attributes: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | _Derive | None = None,
) -> Operation:
    """Create or update a person in Customer.io.

    Args:
        customer_id: The person's id (at most 150 bytes).
        attributes: Attributes to set (at most 300; names up to 150 bytes, values up to 1000).
        idempotency_key: One operation per key, person and kind within ``IDEMPOTENCY_TTL``;
            ``DERIVE`` derives it from the content and a 5-minute window.

    Returns:
        The stored :class:`~django_cio_reliable.models.Operation`.

    Raises:
        InvalidOperation: The input breaks a Customer.io limit; nothing was stored.
        IdempotencyConflict: With a key, inside a ``REPEATABLE READ`` transaction that
            cannot see the operation a concurrent transaction stored under it; retry the
            transaction.
    """
    cid = validation.customer_id(customer_id)
    attrs = validation.attributes(attributes)
    return _store("identify", cid, {"attributes": attrs}, idempotency_key=idempotency_key)


def track(
    customer_id: str | int,
    name: str,
    data: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | _Derive | None = None,
    timestamp: int | datetime | None = None,
) -> Operation:
    """Record an event for a person.

    The operation carries a ULID event ``id`` minted now and reused by every retry and replay,
    so Customer.io deduplicates a re-send.

    Args:
        customer_id: The person's id (at most 150 bytes).
        name: The event name (at most 100 bytes).
        data: Event data (at most 100,000 bytes as JSON).
        idempotency_key: One operation per key, person and kind within ``IDEMPOTENCY_TTL``;
            ``DERIVE`` derives it from the content and a 5-minute window.
        timestamp: When the event happened (Unix seconds or a datetime); default: now, the
            time of this call (not of the delivery, which may be much later). Customer.io
            records the event at this time; an event more than 72 hours old when it arrives
            is recorded but does not trigger campaigns.

    Returns:
        The stored :class:`~django_cio_reliable.models.Operation`.

    Raises:
        InvalidOperation: The input breaks a Customer.io limit; nothing was stored.
        IdempotencyConflict: With a key, inside a ``REPEATABLE READ`` transaction that
            cannot see the operation a concurrent transaction stored under it; retry the
            transaction.
    """
    cid = validation.customer_id(customer_id)
    event = validation.event_name(name)
    values, data_size = validation.event_data_sized(data)
    payload: dict[str, Any] = {"name": event, "data": values}
    payload["timestamp"] = _event_time(timestamp)
    size = validation.json_bytes_known(payload, {"data": data_size})
    return _store("track", cid, payload, name=event, idempotency_key=idempotency_key, size=size)


def track_anonymous(
    anonymous_id: str | int,
    name: str,
    data: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | _Derive | None = None,
    timestamp: int | datetime | None = None,
) -> Operation:
    """Record an event for a visitor who is not identified yet.

    Args:
        anonymous_id: The visitor's anonymous id (at most 150 bytes).
        name: The event name (at most 100 bytes).
        data: Event data (at most 100,000 bytes as JSON).
        idempotency_key: As for :func:`track`.
        timestamp: As for :func:`track`.

    Returns:
        The stored :class:`~django_cio_reliable.models.Operation`.

    Raises:
        InvalidOperation: The input breaks a Customer.io limit; nothing was stored.
        IdempotencyConflict: With a key, inside a ``REPEATABLE READ`` transaction that
            cannot see the operation a concurrent transaction stored under it; retry the
            transaction.
    """
    aid = validation.customer_id(anonymous_id, field="anonymous_id")
    event = validation.event_name(name)
    values, data_size = validation.event_data_sized(data)
    payload: dict[str, Any] = {"anonymous_id": aid, "name": event, "data": values}
    payload["timestamp"] = _event_time(timestamp)
    size = validation.json_bytes_known(payload, {"data": data_size})
    return _store(
        "track_anonymous", aid, payload, name=event, idempotency_key=idempotency_key, size=size
    )


def delete(customer_id: str | int, *, idempotency_key: str | _Derive | None = None) -> Operation:
    """Delete a person from Customer.io.

    Args:
        customer_id: The person's id.
        idempotency_key: As for :func:`identify`.

    Returns:
        The stored :class:`~django_cio_reliable.models.Operation`.

    Raises:
        InvalidOperation: The customer id is empty or too long; nothing was stored.
        IdempotencyConflict: With a key, inside a ``REPEATABLE READ`` transaction that
            cannot see the operation a concurrent transaction stored under it; retry the
            transaction.
    """
    cid = validation.customer_id(customer_id)
    return _store("delete", cid, {}, idempotency_key=idempotency_key)


def forget(customer_id: str | int, *, send_delete: bool = False) -> ForgetResult:
    """Erase every stored payload and idempotency key of a person.

    Open operations of the person are cancelled (dead, payload erased); an operation already
    being sent may still reach Customer.io once. See :mod:`django_cio_reliable.privacy`.

    Args:
        customer_id: The person's id.
        send_delete: Also enqueue a Customer.io ``delete`` of the person.

    Returns:
        What was removed.
    """
    from django_cio_reliable.privacy import forget as forget_person

    return forget_person(customer_id, send_delete=send_delete)


__all__ = ["DERIVE", "delete", "forget", "identify", "track", "track_anonymous"]

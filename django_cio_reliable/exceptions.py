"""Exceptions raised by django-cio-reliable."""

from __future__ import annotations

from typing import Literal

DeliveryErrorKind = Literal["transient", "rate_limited", "auth", "permanent", "timeout", "network"]


class InvalidOperation(ValueError):
    """An operation Customer.io would reject; raised at the call site, nothing is stored.

    Attributes:
        field: The offending field, e.g. ``"attributes.email"`` or ``"customer_id"``.
        limit: The documented limit, as text (``"150 bytes"``), or ``None``.
        actual: What was found (``"151 bytes"``), or ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        field: str,
        limit: str | None = None,
        actual: str | None = None,
    ) -> None:
        super().__init__(message)
        self.field = field
        self.limit = limit
        self.actual = actual


class IdempotencyConflict(RuntimeError):
    """Another transaction holds the idempotency key, and this one cannot see its operation.

    Raised by a keyed call made inside a ``REPEATABLE READ`` or ``SERIALIZABLE`` transaction
    when a concurrent transaction committed an operation under the same key after this
    transaction's snapshot was taken: the key is taken, but the operation that holds it is
    invisible here, so neither a new operation nor the existing one can be returned. Nothing
    was stored. Retry the whole transaction (as for a serialization failure): the retry sees
    the winner's operation and returns it.

    Attributes:
        key_hash: A short, stable SHA-256 hash of the key as given (never the key itself).
    """

    def __init__(self, key_hash: str) -> None:
        super().__init__(
            f"idempotency key {key_hash} (a SHA-256 prefix) was reserved by a concurrent "
            "transaction that this transaction's snapshot cannot see; retry the transaction"
        )
        self.key_hash = key_hash


class DeliveryError(Exception):
    """A request to Customer.io failed.

    The message never contains the request payload or the API key.

    Attributes:
        kind: ``transient``, ``rate_limited``, ``auth``, ``permanent``, ``timeout`` or
            ``network``.
        status: The HTTP status code, or ``None`` when no response arrived.
        retry_after: Seconds to wait before the next request, from ``Retry-After``.
        reason: A short, redacted description (the server's error message at most).
    """

    def __init__(
        self,
        kind: DeliveryErrorKind,
        reason: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.kind: DeliveryErrorKind = kind
        self.status = status
        self.retry_after = retry_after
        self.reason = reason
        shown = "no response" if status is None else f"HTTP {status}"
        text = f"{kind} ({shown}): {reason}"
        if retry_after is not None:
            text += f" [retry after {retry_after:g}s]"
        super().__init__(text)

    @property
    def is_transient(self) -> bool:
        """Whether retrying later may succeed (everything but ``permanent`` and ``auth``)."""
        return self.kind in ("transient", "rate_limited", "timeout", "network")

    def __repr__(self) -> str:
        return (
            f"DeliveryError(kind={self.kind!r}, status={self.status!r}, "
            f"retry_after={self.retry_after!r}, reason={self.reason!r})"
        )

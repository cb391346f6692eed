"""Assertions on the operations your code enqueues, for your own tests.

::

    import django_cio_reliable as cio

    def test_signup_identifies_and_tracks(client):
        with cio.testing.capture_operations() as ops:
            client.post("/signup/", {"email": "ada@example.com"})

        ops.assert_enqueued_once("identify", customer_id=1, attributes={"email": "ada@example.com"})
        ops.assert_enqueued_once("track", customer_id=1, name="signed_up")
        ops.assert_not_enqueued("delete")

Nothing is sent: the helper only reads the ``Operation`` rows stored while the block ran (by any
thread). Rows of a transaction that rolled back are gone, so they are not reported. See
``docs/hooks.md``.

This module imports no model at import time (``django_cio_reliable.testing`` must import
without Django settings).
"""

from __future__ import annotations

import copy
import itertools
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

from django_cio_reliable import validation
from django_cio_reliable.exceptions import InvalidOperation

if TYPE_CHECKING:
    from django_cio_reliable.models import Operation

#: The operation kinds a matcher accepts.
KINDS: Final = ("identify", "track", "track_anonymous", "delete")

_uids = itertools.count()
_IN_CHUNK: Final = 500


def _normalised(value: Any) -> Any:
    """``value`` as it would be stored (``Decimal`` → number, ``datetime`` → Unix seconds...)."""
    try:
        return validation.json_safe(value, field="expected")
    except InvalidOperation:
        return value


class CapturedOperations:
    """The operations stored while a :func:`capture_operations` block runs.

    Every query reads the rows again, so statuses are current and rows rolled back since are
    left out. Matchers:

    - ``kind``: ``"identify"``, ``"track"``, ``"track_anonymous"``, ``"delete"``, or ``None``
      (any).
    - ``customer_id``: compared as a string (``1`` matches ``"1"``); for ``track_anonymous``
      it is the anonymous id.
    - ``name``: the event name.
    - ``attributes`` / ``data``: a subset: every given key must be stored with an equal value
      (values are normalised the way the app stores them, so a ``Decimal`` or a ``datetime``
      matches its stored number).
    - ``idempotency_key``: the key the operation was stored under.

    The payload matchers compare the payload as it was stored at enqueue: a row delivered since
    (whose stored payload ``SCRUB_DELIVERED`` emptied) is shown with the captured payload.
    """

    def __init__(self) -> None:
        self._seen: dict[int, tuple[Any, ...]] = {}
        self._payloads: dict[int, Any] = {}
        self._lock = threading.Lock()

    def _record(self, operation: Operation) -> None:
        with self._lock:
            self._seen[operation.pk] = _fingerprint(operation)
            self._payloads[operation.pk] = copy.deepcopy(operation.payload)

    @property
    def operations(self) -> list[Operation]:
        """The captured operations that still exist, oldest first."""
        from django_cio_reliable.models import Operation

        with self._lock:
            seen = dict(self._seen)
            payloads = dict(self._payloads)
        ids = list(seen)
        found: dict[int, Operation] = {}
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            for op in Operation.objects.filter(pk__in=chunk):
                # A rolled-back row's id can be given to a later row (SQLite): not ours.
                if _fingerprint(op) == seen[op.pk]:
                    if op.payload_erased_at is not None and op.status == op.Status.DELIVERED:
                        op.payload = payloads[op.pk]  # scrubbed after delivery
                    found[op.pk] = op
        return [found[pk] for pk in sorted(found)]

    def __len__(self) -> int:
        return len(self.operations)

    def __iter__(self) -> Iterator[Operation]:
        return iter(self.operations)

    def clear(self) -> None:
        """Forget what was captured so far (later operations are still captured)."""
        with self._lock:
            self._seen.clear()
            self._payloads.clear()

    def filter(
        self,
        kind: str | None = None,
        *,
        customer_id: str | int | None = None,
        name: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> list[Operation]:
        """The captured operations that match every given matcher.

        Raises:
            ValueError: ``kind`` is not an operation kind (a typo would match nothing).
        """
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown operation kind {kind!r}; choose from {', '.join(KINDS)}")
        expected_attributes = _normalised(dict(attributes)) if attributes is not None else None
        expected_data = _normalised(dict(data)) if data is not None else None
        matches: list[Operation] = []
        for op in self.operations:
            if kind is not None and op.kind != kind:
                continue
            if customer_id is not None and op.customer_id != str(customer_id):
                continue
            if name is not None and op.name != name:
                continue
            if idempotency_key is not None and op.idempotency_key != idempotency_key:
                continue
            payload = op.payload if isinstance(op.payload, dict) else {}
            if expected_attributes is not None and not _contains(
                payload.get("attributes"), expected_attributes
            ):
                continue
            if expected_data is not None and not _contains(payload.get("data"), expected_data):
                continue
            matches.append(op)
        return matches

    def assert_enqueued(
        self,
        kind: str | None = None,
        *,
        count: int | None = None,
        customer_id: str | int | None = None,
        name: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> list[Operation]:
        """Assert that matching operations were stored: at least one, or exactly ``count``.

        Returns:
            The matching operations, oldest first.

        Raises:
            AssertionError: Listing what was captured instead.
        """
        criteria = {
            "customer_id": customer_id,
            "name": name,
            "attributes": attributes,
            "data": data,
            "idempotency_key": idempotency_key,
        }
        matches = self.filter(kind, **criteria)  # type: ignore[arg-type]
        if (count is None and not matches) or (count is not None and len(matches) != count):
            wanted = "at least 1" if count is None else f"exactly {count}"
            raise AssertionError(
                f"expected {wanted} {kind or 'operation'} matching "
                f"{_describe_criteria(criteria)}; found {len(matches)}.\n{self._report()}"
            )
        return matches

    def assert_enqueued_once(
        self,
        kind: str | None = None,
        *,
        customer_id: str | int | None = None,
        name: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Operation:
        """Assert that exactly one matching operation was stored, and return it.

        Raises:
            AssertionError: Listing what was captured instead.
        """
        (operation,) = self.assert_enqueued(
            kind,
            count=1,
            customer_id=customer_id,
            name=name,
            attributes=attributes,
            data=data,
            idempotency_key=idempotency_key,
        )
        return operation

    def assert_not_enqueued(
        self,
        kind: str | None = None,
        *,
        customer_id: str | int | None = None,
        name: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        """Assert that no matching operation was stored.

        Raises:
            AssertionError: Listing the matching operations.
        """
        self.assert_enqueued(
            kind,
            count=0,
            customer_id=customer_id,
            name=name,
            attributes=attributes,
            data=data,
            idempotency_key=idempotency_key,
        )

    def assert_nothing_enqueued(self) -> None:
        """Assert that no operation at all was stored.

        Raises:
            AssertionError: Listing what was captured.
        """
        if self.operations:
            raise AssertionError(f"expected no operation.\n{self._report()}")

    def _report(self) -> str:
        operations = self.operations
        if not operations:
            return "Captured: nothing."
        lines = [f"Captured {len(operations)}:"]
        lines.extend(f"  {_describe(op)}" for op in operations)
        return "\n".join(lines)

    def __repr__(self) -> str:
        with self._lock:
            count = len(self._seen)
        return f"<CapturedOperations: {count} captured>"


def _fingerprint(op: Operation) -> tuple[Any, ...]:
    return (op.kind, op.customer_id, op.name, op.created_at, op.event_id)


def _contains(actual: object, expected: Mapping[str, Any]) -> bool:
    if not isinstance(actual, dict):
        return not expected
    return all(key in actual and actual[key] == value for key, value in expected.items())


def _describe_criteria(criteria: Mapping[str, Any]) -> str:
    given = [f"{key}={value!r}" for key, value in criteria.items() if value is not None]
    return ", ".join(given) or "anything"


def _describe(op: Operation) -> str:
    payload = op.payload if isinstance(op.payload, dict) else {}
    body = payload.get("attributes") if op.kind == "identify" else payload.get("data")
    name = f" {op.name!r}" if op.name else ""
    key = f" key={op.idempotency_key!r}" if op.idempotency_key else ""
    shown = f" {body!r}" if body else ""
    return f"#{op.pk} {op.kind}{name} customer_id={op.customer_id!r}{shown}{key} ({op.status})"


@contextmanager
def capture_operations() -> Iterator[CapturedOperations]:
    """Capture the operations stored while the block runs (by any thread).

    Usable with Django's ``TestCase`` and pytest-django's ``db`` fixture: the rows are read in
    the test's transaction, no commit is needed. The capture stays readable after the block.

    Yields:
        A :class:`CapturedOperations`.
    """
    from django.db.models.signals import post_save

    from django_cio_reliable.models import Operation

    captured = CapturedOperations()
    uid = f"django_cio_reliable.testing.capture:{next(_uids)}"

    def receiver(
        sender: type[Operation], instance: Operation, created: bool, **kwargs: Any
    ) -> None:
        if created:
            captured._record(instance)

    post_save.connect(receiver, sender=Operation, weak=False, dispatch_uid=uid)
    try:
        yield captured
    finally:
        post_save.disconnect(sender=Operation, dispatch_uid=uid)


__all__ = ["CapturedOperations", "capture_operations"]

"""What :class:`~django_cio_reliable.testing.FakeCustomerIO` records: requests and receipts."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

ReceiptKind = Literal["identify", "track", "track_anonymous", "delete"]
"""The kind of an accepted operation."""

ApiVersion = Literal["v1", "v2"]
"""Which Track API carried an operation: the v1 endpoints or ``/api/v2/batch``."""

RequestOutcome = Literal["in_flight", "answered", "reset", "dropped"]
"""What became of a request.

``in_flight``: still being handled (held, delayed or hanging). ``answered``: a response was
written. ``reset``: the connection was reset (TCP RST) with no response. ``dropped``: the
connection was closed with no response (after a hang, or when the server stopped).
"""


@dataclass(frozen=True)
class ReceivedRequest:
    """One HTTP request to a Track API path, as the fake server saw it.

    A request is recorded as soon as its body has been read, with ``outcome="in_flight"``
    and ``status=None``; the record is completed just before the response is written, so a
    client that has its response can always find the finished record.

    Attributes:
        index: Position of this request since the last :meth:`FakeCustomerIO.reset`, from 0.
        method: The HTTP method, e.g. ``"PUT"``.
        path: The raw request path, query string included.
        status: The status code answered, or ``None`` if no response was (or is yet) written.
        body: The parsed JSON body, or ``None`` if it was empty or not valid JSON.
        headers: The request headers, except ``Authorization`` (never recorded).
        received_at: ``time.monotonic()`` when the request arrived.
        connection_id: Which TCP connection carried it (equal ids mean keep-alive reuse).
        outcome: See :data:`RequestOutcome`.
        fault: The fault applied to this request (``"fail_next"``, ``"outage"``,
            ``"random_hang"`` …), or ``None``.
    """

    index: int
    method: str
    path: str
    status: int | None
    body: Any
    headers: dict[str, str]
    received_at: float
    connection_id: int
    outcome: RequestOutcome = "in_flight"
    fault: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of this record."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReceivedRequest:
        """Rebuild a record from :meth:`to_dict` output (e.g. from the control endpoint)."""
        return cls(
            index=int(data["index"]),
            method=str(data["method"]),
            path=str(data["path"]),
            status=None if data["status"] is None else int(data["status"]),
            body=data["body"],
            headers=dict(data["headers"]),
            received_at=float(data["received_at"]),
            connection_id=int(data["connection_id"]),
            outcome=cast(RequestOutcome, data["outcome"]),
            fault=data.get("fault"),
        )


@dataclass(frozen=True)
class Receipt:
    """One operation the fake server accepted.

    Every valid identify, track, anonymous track and delete produces a receipt, through v1 or
    inside a v2 batch. Events carrying an ``id`` already seen are deduplicated the way
    Customer.io does it: the request succeeds, a receipt is recorded with ``applied=False``,
    and nothing is applied twice.

    Attributes:
        kind: ``"identify"``, ``"track"``, ``"track_anonymous"`` or ``"delete"``.
        customer_id: The person's identifier (the anonymous id for anonymous events, or
            ``None`` for an anonymous event sent without one).
        name: The event name, or ``None`` for identify/delete.
        event_id: The event's deduplication ``id`` (a ULID), or ``None``.
        attributes: Person attributes (identify) or event data (track); empty for delete.
        via: ``"v1"`` or ``"v2"``.
        applied: ``False`` when this was a duplicate of an event id already received.
        timestamp: The event ``timestamp`` sent (Unix seconds), or ``None``.
        request_index: :attr:`ReceivedRequest.index` of the request that carried it.
        batch_index: Position inside the v2 batch, or ``None`` for v1.
        received_at: ``time.monotonic()`` when the carrying request arrived.
    """

    kind: ReceiptKind
    customer_id: str | None
    name: str | None
    event_id: str | None
    attributes: dict[str, Any]
    via: ApiVersion
    applied: bool
    timestamp: int | None = None
    request_index: int = -1
    batch_index: int | None = None
    received_at: float = 0.0

    @property
    def data(self) -> dict[str, Any]:
        """The event data of a track receipt (an alias of :attr:`attributes`)."""
        return self.attributes

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of this receipt."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Receipt:
        """Rebuild a receipt from :meth:`to_dict` output (e.g. from the control endpoint)."""
        return cls(
            kind=cast(ReceiptKind, data["kind"]),
            customer_id=data["customer_id"],
            name=data["name"],
            event_id=data["event_id"],
            attributes=dict(data["attributes"]),
            via=cast(ApiVersion, data["via"]),
            applied=bool(data["applied"]),
            timestamp=data.get("timestamp"),
            request_index=int(data.get("request_index", -1)),
            batch_index=data.get("batch_index"),
            received_at=float(data.get("received_at", 0.0)),
        )


ScriptedFaultKind = Literal["status", "hang", "reset", "trickle"]


@dataclass(frozen=True)
class ScriptedFault:
    """A fault queued for the next ``remaining`` API requests.

    Queued faults are consumed in the order they were scripted: ``fail_next(2)`` then
    ``reset_next(1)`` fails two requests, then resets the third.

    Attributes:
        kind: ``"status"`` (answer ``status``), ``"hang"`` (wait ``seconds``, then drop the
            connection, or answer normally if ``apply``), ``"reset"`` (TCP reset) or
            ``"trickle"`` (answer normally, one byte every ``seconds``).
        source: The method that scripted it (``"fail_next"``, ``"outage_requests"``,
            ``"hang_next"``, ``"reset_next"``, ``"trickle_next"``).
        remaining: How many more requests it applies to.
        status: The status code answered (``kind="status"``).
        retry_after: The ``Retry-After`` header value sent with it, or ``None``.
        body: The response body text, or ``None`` for Customer.io's error shape.
        seconds: How long a hang lasts; for a trickle, the wait before each byte.
        apply: Whether the request is processed (and its operations recorded and applied)
            before the fault hits — "the server did the work but the client never heard".
        headers: For a trickle: whether the status line and headers are trickled too, not
            only the body.
    """

    kind: ScriptedFaultKind
    source: str
    remaining: int
    status: int | None = None
    retry_after: str | None = None
    body: str | None = None
    seconds: float = 0.0
    apply: bool = False
    headers: bool = False


@dataclass(frozen=True)
class OutageWindow:
    """Every API request is answered ``status`` until the clock reaches ``until``.

    Attributes:
        until: The end of the window, on the server's clock (``time.monotonic`` by default).
        status: The status code answered during the window.
        retry_after: The ``Retry-After`` header value sent, or ``None``.
        remaining: Seconds left in the window when the snapshot was taken.
    """

    until: float
    status: int = 503
    retry_after: str | None = None
    remaining: float = 0.0


@dataclass(frozen=True)
class RandomFaults:
    """Seeded random faults for soak tests: each API request rolls once.

    With probability ``error_rate`` it is answered ``error_status``; with
    ``rate_limit_rate`` 429 with ``Retry-After``; with ``hang_rate`` it hangs
    ``hang_seconds`` and is dropped; with ``reset_rate`` its connection is reset.
    """

    seed: int
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    hang_rate: float = 0.0
    reset_rate: float = 0.0
    hang_seconds: float = 5.0
    retry_after: str | None = "1"
    error_status: int = 503


@dataclass(frozen=True)
class BatchRejection:
    """Valid items of ``/api/v2/batch`` requests that are reported failed in a 207 anyway.

    Attributes:
        description: What is rejected (``"indexes [0, 2]"``, ``"customer_ids ['42']"``,
            ``"predicate"``).
        indexes: The batch positions rejected, when given as indexes.
        reason: The ``reason`` reported for each rejected item.
        field: The ``field`` reported.
        message: The ``message`` reported.
        remaining: How many more batch requests it applies to (``None``: until cleared).
    """

    description: str
    indexes: tuple[int, ...] | None
    reason: str = "invalid"
    field: str = ""
    message: str = "rejected by FakeCustomerIO"
    remaining: int | None = None


@dataclass(frozen=True)
class FaultsSnapshot:
    """The faults in force at one moment (see :attr:`FakeCustomerIO.faults`)."""

    latency: float = 0.0
    holding: bool = False
    held: int = 0
    scripted: tuple[ScriptedFault, ...] = ()
    outage: OutageWindow | None = None
    random: RandomFaults | None = None
    batch_rejections: tuple[BatchRejection, ...] = field(default_factory=tuple)

    @property
    def active(self) -> bool:
        """Whether any fault (latency and holding included) is in force."""
        return bool(
            self.latency
            or self.holding
            or self.scripted
            or self.outage
            or self.random
            or self.batch_rejections
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of this snapshot."""
        data = dataclasses.asdict(self)
        data["active"] = self.active
        return data

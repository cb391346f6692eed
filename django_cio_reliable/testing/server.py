"""FakeCustomerIO: a real HTTP server that speaks Customer.io's Track API, with faults.

Standard library only, so it runs wherever Python does.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import dataclasses
import hmac
import io
import json
import logging
import math
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from types import TracebackType
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from django_cio_reliable.testing import trackapi
from django_cio_reliable.testing.control import handle_control
from django_cio_reliable.testing.records import (
    BatchRejection,
    FaultsSnapshot,
    OutageWindow,
    RandomFaults,
    Receipt,
    ReceivedRequest,
    ScriptedFault,
)
from django_cio_reliable.testing.replies import (
    OUTCOMES,
    Reply,
    error_reply,
    json_reply,
    phrase,
)

logger = logging.getLogger(__name__)

RetryAfter = int | str | datetime | None
"""A ``Retry-After`` value: delta seconds, an HTTP-date string, or a datetime to format."""

ResponseBody = Mapping[str, Any] | str | bytes | None
"""A scripted response body: a JSON object, raw text, raw bytes, or ``None`` (Customer.io's
``{"meta": {"error": ...}}`` shape)."""

BatchItemPredicate = Callable[[int, Mapping[str, Any]], bool]
"""Called with ``(batch_index, operation)``; return ``True`` to reject the item."""

CONTROL_PREFIX = "/__fake__/"
MAX_REQUEST_BYTES = 16 * 1024 * 1024
REGION_URLS = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}


def format_retry_after(value: RetryAfter | float) -> str | None:
    """Render a ``Retry-After`` header value.

    Args:
        value: Delta seconds (a float is rounded up to whole seconds, as HTTP requires),
            an HTTP-date string (sent verbatim), a timezone-aware datetime (formatted as an
            HTTP-date), or ``None``.

    Returns:
        The header value, or ``None`` for no header.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("retry_after must be seconds, an HTTP-date string or a datetime")
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("retry_after datetime must be timezone-aware")
        return format_datetime(value, usegmt=True)
    if isinstance(value, (int, float)):
        if value < 0 or math.isnan(value) or math.isinf(value):
            raise ValueError("retry_after seconds must be a finite number >= 0")
        return str(math.ceil(value))
    if isinstance(value, str):
        return value
    raise TypeError("retry_after must be seconds, an HTTP-date string or a datetime")


def _check_count(n: int, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be an integer >= 1")
    return n


def _check_seconds(seconds: float, name: str = "seconds") -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"{name} must be a number")
    if seconds < 0 or math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"{name} must be a finite number >= 0")
    return float(seconds)


def _check_status(status: int) -> int:
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError("status must be an HTTP status code (100-599)")
    return status


def _check_rate(rate: float, name: str) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"{name} must be a number between 0 and 1")
    return float(rate)


@dataclass(frozen=True)
class _Body:
    data: bytes
    content_type: str
    text: str | None


def _prepare_body(body: ResponseBody) -> _Body | None:
    if body is None:
        return None
    if isinstance(body, bytes):
        return _Body(body, "application/octet-stream", body.decode("utf-8", "replace"))
    if isinstance(body, str):
        return _Body(body.encode("utf-8"), "text/plain; charset=utf-8", body)
    if isinstance(body, Mapping):
        text = json.dumps(dict(body), separators=(",", ":"))
        return _Body(text.encode("utf-8"), "application/json", text)
    raise TypeError("body must be a JSON object (mapping), str, bytes or None")


@dataclass(frozen=True)
class _Fault:
    """What to do to one request instead of (or after) answering it normally."""

    label: str
    kind: Literal["status", "hang", "reset", "trickle"]
    status: int = 503
    retry_after: str | None = None
    body: _Body | None = None
    seconds: float = 0.0
    apply: bool = False
    headers: bool = False

    def reply(self) -> Reply:
        headers = [("Retry-After", self.retry_after)] if self.retry_after is not None else []
        if self.body is None:
            return error_reply(self.status, phrase(self.status), headers)
        return Reply(self.status, self.body.data, headers, self.body.content_type)


@dataclass
class _Queued:
    fault: _Fault
    remaining: int


@dataclass
class _Rejection:
    public: BatchRejection
    predicate: BatchItemPredicate


class FakeCustomerIO:
    """A fake Customer.io Track API server for tests, demos and soak runs.

    It listens on 127.0.0.1 (a free port by default), checks HTTP Basic auth, paths, methods
    and payloads like Customer.io, records every request and every accepted operation,
    deduplicates events by ``id``, and can be told to misbehave.

    Example::

        with FakeCustomerIO(site_id="site", api_key="key") as fake:
            settings.CIO_RELIABLE = {..., "TRACK_URL": fake.url}
            fake.fail_next(2, status=503, retry_after=1)
            ...
            assert [r.name for r in fake.applied()] == ["order_placed"]

    All accessors are thread-safe and return copies.

    Args:
        site_id: The Basic auth user name the server accepts.
        api_key: The Basic auth password the server accepts. It is never recorded,
            logged, shown in ``repr()`` or served by the control endpoint.
        host: The address to bind (keep the default: loopback only).
        port: The port to bind; 0 picks a free one.
        region: ``"us"`` or ``"eu"``: what ``GET /api/v1/accounts/region`` reports.
        clock: The clock outage windows are measured on (inject one to test time-based
            outages without sleeping).
        require_ulid_event_ids: Refuse event ``id`` values that are not ULIDs (400).
    """

    def __init__(
        self,
        site_id: str = "site",
        api_key: str = "key",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        region: str = "us",
        clock: Callable[[], float] = time.monotonic,
        require_ulid_event_ids: bool = True,
    ) -> None:
        if region not in REGION_URLS:
            raise ValueError(f"region must be one of {sorted(REGION_URLS)}")
        self.site_id = site_id
        self._credentials = base64.b64encode(f"{site_id}:{api_key}".encode()).decode("ascii")
        self.host = host
        self._requested_port = port
        self.region = region
        self.clock = clock
        self.require_ulid_event_ids = require_ulid_event_ids

        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._bound_port: int | None = None

        self._cond = threading.Condition(threading.RLock())
        self._stopping = False
        self._generation = 0  # bumped by reset(): in-flight requests of older ones are void
        self._fault_epoch = 0  # bumped by clear_faults(): ends hangs, latency and holds
        self._requests: list[ReceivedRequest] = []
        self._receipts: list[Receipt] = []
        self._seen_event_ids: set[str] = set()
        self._people: dict[str, dict[str, Any]] = {}
        self._init_faults()

    def _init_faults(self) -> None:
        self._latency = 0.0
        self._holding = False
        self._held = 0
        self._queue: list[_Queued] = []
        self._outage: tuple[float, _Fault] | None = None
        self._random: tuple[RandomFaults, random.Random] | None = None
        self._rejections: list[_Rejection] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeCustomerIO:
        """Start serving in a daemon thread; returns ``self``.

        After :meth:`stop`, ``start()`` binds the same port again, so a stop/start pair
        simulates Customer.io being unreachable for a while.
        """
        if self._httpd is not None:
            return self
        port = self._bound_port if self._bound_port is not None else self._requested_port
        httpd = _Server((self.host, port), self)
        self._bound_port = httpd.server_address[1]
        with self._cond:
            self._stopping = False
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"FakeCustomerIO:{self._bound_port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; returns promptly even with requests held or hanging.

        Held and hanging requests are dropped (their connections closed without a response),
        idle keep-alive connections are closed. Records are kept.
        """
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        httpd.shutdown()
        httpd.close_all_connections()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> FakeCustomerIO:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server is accepting connections."""
        return self._httpd is not None

    @property
    def port(self) -> int:
        """The bound port (available once started)."""
        if self._bound_port is None:
            raise RuntimeError("FakeCustomerIO has not been started")
        return self._bound_port

    @property
    def url(self) -> str:
        """The base URL, e.g. ``"http://127.0.0.1:54321"`` (use it as ``TRACK_URL``)."""
        return f"http://{self.host}:{self.port}"

    def __repr__(self) -> str:
        where = self.url if self._bound_port is not None else "not started"
        return f"<FakeCustomerIO {where} site_id={self.site_id!r}>"

    # ------------------------------------------------------------------ records

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every API request since the last :meth:`reset`, in arrival order."""
        with self._cond:
            return copy.deepcopy(self._requests)

    @property
    def receipts(self) -> list[Receipt]:
        """Every accepted operation since the last :meth:`reset`, duplicates included."""
        with self._cond:
            return copy.deepcopy(self._receipts)

    @property
    def request_count(self) -> int:
        """How many API requests arrived since the last :meth:`reset`."""
        with self._cond:
            return len(self._requests)

    def applied(self) -> list[Receipt]:
        """The operations actually applied: receipts minus duplicate event ids."""
        with self._cond:
            return copy.deepcopy([r for r in self._receipts if r.applied])

    def duplicates(self) -> list[Receipt]:
        """Receipts of events whose ``id`` had already been received (not applied again)."""
        with self._cond:
            return copy.deepcopy([r for r in self._receipts if not r.applied])

    def events_by_id(self) -> dict[str, list[Receipt]]:
        """Receipts of events that carried an ``id``, grouped by that id, in arrival order."""
        grouped: dict[str, list[Receipt]] = {}
        with self._cond:
            for receipt in self._receipts:
                if receipt.event_id is not None:
                    grouped.setdefault(receipt.event_id, []).append(receipt)
            return copy.deepcopy(grouped)

    def people(self) -> dict[str, dict[str, Any]]:
        """The people as Customer.io would hold them: identify upserts, delete removes."""
        with self._cond:
            return copy.deepcopy(self._people)

    def stats(self) -> dict[str, Any]:
        """Counts, as served by ``GET /__fake__/stats``."""
        with self._cond:
            by_status = Counter(
                "in_flight"
                if r.outcome == "in_flight"
                else (str(r.status) if r.status is not None else "no_response")
                for r in self._requests
            )
            return {
                "requests": len(self._requests),
                "receipts": len(self._receipts),
                "applied": sum(1 for r in self._receipts if r.applied),
                "duplicates": sum(1 for r in self._receipts if not r.applied),
                "people": len(self._people),
                "held": self._held,
                "by_status": dict(sorted(by_status.items())),
                "by_outcome": dict(sorted(Counter(r.outcome for r in self._requests).items())),
                "by_kind": dict(sorted(Counter(r.kind for r in self._receipts).items())),
            }

    def wait_for_receipts(self, count: int, timeout: float = 5.0) -> list[Receipt]:
        """Block until at least ``count`` receipts exist; return them.

        Raises:
            TimeoutError: If they do not arrive within ``timeout`` seconds.
        """
        self._wait_until(lambda: len(self._receipts) >= count, timeout, f"{count} receipts")
        return self.receipts

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[ReceivedRequest]:
        """Block until at least ``count`` API requests arrived; return them.

        Raises:
            TimeoutError: If they do not arrive within ``timeout`` seconds.
        """
        self._wait_until(lambda: len(self._requests) >= count, timeout, f"{count} requests")
        return self.requests

    def wait_for_held(self, count: int = 1, timeout: float = 5.0) -> None:
        """Block until at least ``count`` requests are held by :meth:`hold`.

        Raises:
            TimeoutError: If they are not within ``timeout`` seconds.
        """
        self._wait_until(lambda: self._held >= count, timeout, f"{count} held requests")

    def _wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"FakeCustomerIO: timed out waiting for {what}")
                self._cond.wait(remaining)

    # ------------------------------------------------------------------ faults

    @property
    def faults(self) -> FaultsSnapshot:
        """The faults in force now."""
        with self._cond:
            outage = None
            if self._outage is not None:
                until, fault = self._outage
                remaining = until - self.clock()
                if remaining > 0:
                    outage = OutageWindow(until, fault.status, fault.retry_after, remaining)
            return FaultsSnapshot(
                latency=self._latency,
                holding=self._holding,
                held=self._held,
                scripted=tuple(
                    ScriptedFault(
                        kind=q.fault.kind,
                        source=q.fault.label,
                        remaining=q.remaining,
                        status=q.fault.status if q.fault.kind == "status" else None,
                        retry_after=q.fault.retry_after,
                        body=q.fault.body.text if q.fault.body else None,
                        seconds=q.fault.seconds,
                        apply=q.fault.apply,
                        headers=q.fault.headers,
                    )
                    for q in self._queue
                ),
                outage=outage,
                random=self._random[0] if self._random else None,
                batch_rejections=tuple(r.public for r in self._rejections),
            )

    def _enqueue(self, fault: _Fault, n: int) -> None:
        with self._cond:
            self._queue.append(_Queued(fault, _check_count(n)))

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        retry_after: RetryAfter = None,
        body: ResponseBody = None,
        *,
        apply: bool = False,
    ) -> None:
        """Answer the next ``n`` API requests with ``status``.

        Args:
            n: How many requests.
            status: The status code (e.g. 500, 503, 429, 400, 401).
            retry_after: A ``Retry-After`` header: delta seconds, an HTTP-date string, or a
                datetime; ``None`` for none.
            body: The response body; ``None`` gives ``{"meta": {"error": "<reason>"}}``.
            apply: Process the request first (its operations are recorded and applied),
                then answer ``status`` anyway.
        """
        fault = _Fault(
            "fail_next",
            "status",
            status=_check_status(status),
            retry_after=format_retry_after(retry_after),
            body=_prepare_body(body),
            apply=bool(apply),
        )
        self._enqueue(fault, n)

    def outage_requests(self, n: int, status: int = 503, retry_after: RetryAfter = None) -> None:
        """An outage lasting the next ``n`` API requests: each is answered ``status``."""
        fault = _Fault(
            "outage_requests",
            "status",
            status=_check_status(status),
            retry_after=format_retry_after(retry_after),
        )
        self._enqueue(fault, n)

    def hang_next(self, n: int = 1, seconds: float = 30.0, *, apply: bool = False) -> None:
        """Make the next ``n`` API requests hang for ``seconds`` (past the client timeout).

        When the hang ends the connection is closed with no response — or, with
        ``apply=True``, the request is processed and answered normally (the client has
        usually given up by then: the "delivered but never acknowledged" case).
        Hangs end early on :meth:`clear_faults`, :meth:`reset` and :meth:`stop`.
        """
        fault = _Fault("hang_next", "hang", seconds=_check_seconds(seconds), apply=bool(apply))
        self._enqueue(fault, n)

    def reset_next(self, n: int = 1, *, apply: bool = False) -> None:
        """Reset the connection of the next ``n`` API requests (TCP RST, no response).

        With ``apply=True`` the request is processed before the reset.
        """
        self._enqueue(_Fault("reset_next", "reset", apply=bool(apply)), n)

    def trickle_next(self, n: int = 1, interval: float = 0.5, *, headers: bool = True) -> None:
        """Answer the next ``n`` API requests normally, but one byte every ``interval`` seconds.

        The request is processed as usual (its operations are applied); only its answer is
        slow: with ``headers=True`` the status line and headers are trickled too, with
        ``headers=False`` they are sent at once and only the body is trickled (an
        ``interval`` longer than the client's timeout: a server that hangs after its
        headers). Every byte waits ``interval`` first, so a per-read timeout longer than
        ``interval`` never fires. The rest is sent at once on :meth:`clear_faults`,
        :meth:`reset` and :meth:`stop`.
        """
        fault = _Fault(
            "trickle_next",
            "trickle",
            seconds=_check_seconds(interval, "interval"),
            headers=bool(headers),
        )
        self._enqueue(fault, n)

    def set_latency(self, seconds: float) -> None:
        """Delay every API request by ``seconds`` before it is handled (0 turns it off)."""
        value = _check_seconds(seconds)
        with self._cond:
            self._latency = value

    def outage(self, seconds: float, status: int = 503, retry_after: RetryAfter = None) -> None:
        """Answer every API request ``status`` for the next ``seconds`` (on :attr:`clock`).

        The window takes precedence over queued faults, which wait for it to end.
        """
        fault = _Fault(
            "outage",
            "status",
            status=_check_status(status),
            retry_after=format_retry_after(retry_after),
        )
        duration = _check_seconds(seconds)
        with self._cond:
            self._outage = (self.clock() + duration, fault)

    def random_faults(
        self,
        seed: int,
        error_rate: float = 0.0,
        rate_limit_rate: float = 0.0,
        hang_rate: float = 0.0,
        reset_rate: float = 0.0,
        hang_seconds: float = 5.0,
        retry_after: RetryAfter = 1,
        error_status: int = 503,
    ) -> None:
        """Inject seeded random faults into API requests (for soak tests).

        Each request that no other fault hits rolls once: with probability ``error_rate`` it
        is answered ``error_status``; ``rate_limit_rate``: 429 with ``Retry-After``;
        ``hang_rate``: it hangs ``hang_seconds`` and is dropped; ``reset_rate``: its
        connection is reset. The rates must add up to at most 1. Calling again replaces
        the previous setting; all rates 0 turns it off.
        """
        rates = (
            _check_rate(error_rate, "error_rate"),
            _check_rate(rate_limit_rate, "rate_limit_rate"),
            _check_rate(hang_rate, "hang_rate"),
            _check_rate(reset_rate, "reset_rate"),
        )
        if sum(rates) > 1.0 + 1e-9:
            raise ValueError("the fault rates must add up to at most 1")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError("seed must be an integer")
        config = RandomFaults(
            seed=seed,
            error_rate=rates[0],
            rate_limit_rate=rates[1],
            hang_rate=rates[2],
            reset_rate=rates[3],
            hang_seconds=_check_seconds(hang_seconds, "hang_seconds"),
            retry_after=format_retry_after(retry_after),
            error_status=_check_status(error_status),
        )
        with self._cond:
            if sum(rates) == 0:
                self._random = None
            else:
                # A deterministic stream for reproducible soaks, not cryptography.
                self._random = (config, random.Random(seed))  # noqa: S311

    def reject_batch_items(
        self,
        items: BatchItemPredicate | Iterable[int],
        *,
        reason: str = "invalid",
        field: str = "",
        message: str = "rejected by FakeCustomerIO",
        count: int | None = None,
        description: str | None = None,
    ) -> None:
        """Report chosen items of ``/api/v2/batch`` requests as failed (207), even if valid.

        Rejected items are not applied and get no receipt; the other valid items are.

        Args:
            items: Batch positions to reject, or a predicate called with
                ``(batch_index, operation_dict)``.
            reason: The ``reason`` reported for each rejected item.
            field: The ``field`` reported.
            message: The ``message`` reported.
            count: How many batch requests this applies to; ``None`` until cleared.
            description: How :attr:`faults` describes it (defaults to the indexes).
        """
        if count is not None:
            _check_count(count, "count")
        indexes: tuple[int, ...] | None
        if callable(items):
            predicate: BatchItemPredicate = items
            indexes = None
            text = description or "predicate"
        else:
            indexes = tuple(sorted({int(i) for i in items}))
            chosen = frozenset(indexes)

            def predicate(index: int, op: Mapping[str, Any]) -> bool:
                return index in chosen

            text = description or f"indexes {list(indexes)}"
        public = BatchRejection(text, indexes, reason, field, message, count)
        with self._cond:
            self._rejections.append(_Rejection(public, predicate))

    def hold(self) -> None:
        """Block API requests inside the server until :meth:`release` (or stop/clear/reset).

        Used to kill a client while its request is in flight: hold, send, wait for
        :meth:`wait_for_held`, kill the client, release. Released requests are then
        processed normally.
        """
        with self._cond:
            self._holding = True

    def release(self) -> None:
        """Let held requests (and later ones) through."""
        with self._cond:
            self._holding = False
            self._cond.notify_all()

    @property
    def held_count(self) -> int:
        """How many requests are held right now."""
        with self._cond:
            return self._held

    def clear_faults(self) -> None:
        """Remove every fault: queued ones, latency, outage, random faults, batch rejections.

        Held requests are released and hanging ones end now.
        """
        with self._cond:
            self._init_faults()
            self._fault_epoch += 1
            self._cond.notify_all()

    def reset(self) -> None:
        """Clear records, faults and the event-id deduplication memory.

        Requests still in flight from before the reset are dropped without being recorded.
        """
        with self._cond:
            self._init_faults()
            self._fault_epoch += 1
            self._generation += 1
            self._requests = []
            self._receipts = []
            self._seen_event_ids = set()
            self._people = {}
            self._cond.notify_all()

    # ------------------------------------------------------------------ request handling

    def _sleep(self, seconds: float, epoch: int) -> bool:
        """Sleep; return ``False`` if cut short by stop or a fault reset."""
        deadline = time.monotonic() + seconds
        with self._cond:
            while True:
                if self._stopping or self._fault_epoch != epoch:
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return True
                self._cond.wait(remaining)

    def _wait_while_held(self) -> None:
        with self._cond:
            if not self._holding:
                return
            epoch = self._fault_epoch
            self._held += 1
            self._cond.notify_all()
            try:
                while self._holding and not self._stopping and self._fault_epoch == epoch:
                    self._cond.wait()
            finally:
                self._held -= 1
                self._cond.notify_all()

    def _pick_fault(self) -> _Fault | None:
        with self._cond:
            if self._outage is not None:
                until, fault = self._outage
                if self.clock() < until:
                    return fault
                self._outage = None
            if self._queue:
                head = self._queue[0]
                head.remaining -= 1
                if head.remaining <= 0:
                    self._queue.pop(0)
                return head.fault
            if self._random is not None:
                config, rng = self._random
                roll = rng.random()
                if roll < config.error_rate:
                    return _Fault("random_error", "status", status=config.error_status)
                roll -= config.error_rate
                if roll < config.rate_limit_rate:
                    return _Fault("random_rate_limit", "status", 429, config.retry_after)
                roll -= config.rate_limit_rate
                if roll < config.hang_rate:
                    return _Fault("random_hang", "hang", seconds=config.hang_seconds)
                roll -= config.hang_rate
                if roll < config.reset_rate:
                    return _Fault("random_reset", "reset")
            return None

    def _handle_api(
        self,
        method: str,
        raw_path: str,
        headers: dict[str, str],
        authorization: str,
        body: bytes,
        connection_id: int,
    ) -> Reply:
        parsed: Any = None
        if body:
            try:
                parsed = trackapi.loads(body)
            except trackapi.TrackAPIError:
                parsed = None
        with self._cond:
            generation = self._generation
            index = len(self._requests)
            self._requests.append(
                ReceivedRequest(
                    index=index,
                    method=method,
                    path=raw_path,
                    status=None,
                    body=parsed,
                    headers=headers,
                    received_at=time.monotonic(),
                    connection_id=connection_id,
                )
            )
            self._cond.notify_all()

        def finish(reply: Reply, fault: _Fault | None = None) -> Reply:
            with self._cond:
                if generation != self._generation:
                    return Reply(action="drop")
                self._requests[index] = dataclasses.replace(
                    self._requests[index],
                    status=reply.status if reply.action == "answer" else None,
                    outcome=OUTCOMES[reply.action],
                    fault=fault.label if fault is not None else None,
                )
                self._cond.notify_all()
            return reply

        def process() -> Reply:
            return self._process(method, raw_path, authorization, body, index, generation)

        self._wait_while_held()
        if self._stopping or generation != self._generation:
            return finish(Reply(action="drop"))
        with self._cond:
            latency = self._latency
            epoch = self._fault_epoch  # clear_faults() from now on cuts sleeps short
        if latency:
            self._sleep(latency, epoch)
            if self._stopping:
                return finish(Reply(action="drop"))

        fault = self._pick_fault()
        if fault is None:
            return finish(process())
        if fault.kind == "hang":
            completed = self._sleep(fault.seconds, epoch)
            if fault.apply and completed:
                return finish(process(), fault)
            return finish(Reply(action="drop"), fault)
        if fault.kind == "trickle":
            reply = dataclasses.replace(
                process(),
                trickle=lambda: self._sleep(fault.seconds, epoch),
                trickle_head=fault.headers,
            )
            return finish(reply, fault)
        if fault.apply:
            process()
        if fault.kind == "reset":
            return finish(Reply(action="reset"), fault)
        return finish(fault.reply(), fault)

    def _authorized(self, authorization: str) -> bool:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "basic" or not token:
            return False
        try:
            token = base64.b64encode(base64.b64decode(token.strip(), validate=True)).decode()
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(token.encode(), self._credentials.encode())

    def _process(
        self,
        method: str,
        raw_path: str,
        authorization: str,
        body: bytes,
        request_index: int,
        generation: int,
    ) -> Reply:
        segments = urlsplit(raw_path).path.split("/")[1:]
        route = _route(segments)
        if route is None:
            return error_reply(404, "not found")
        name, allowed, customer_id = route
        if method not in allowed:
            return error_reply(405, "method not allowed", [("Allow", ", ".join(allowed))])
        if not self._authorized(authorization):
            return error_reply(401, "Unauthorized request")
        if name == "region":
            return json_reply(
                200,
                {"url": REGION_URLS[self.region], "data_center": self.region, "environment_id": 1},
            )
        if name == "batch" and len(body) > trackapi.MAX_BATCH_BYTES:
            return error_reply(
                413,
                f"request cannot be larger than {trackapi.MAX_BATCH_BYTES} bytes "
                f"(got {len(body)} bytes)",
            )
        try:
            payload = trackapi.loads(body) if body.strip() else None
            if name == "batch":
                return self._process_batch(payload, request_index, generation)
            if name == "customer" and method == "PUT":
                op = trackapi.parse_identify(customer_id, payload)
            elif name == "customer":
                op = trackapi.parse_delete(customer_id)
            elif name == "events":
                op = trackapi.parse_track(
                    customer_id, payload, require_ulid=self.require_ulid_event_ids
                )
            else:
                op = trackapi.parse_track_anonymous(
                    payload, require_ulid=self.require_ulid_event_ids
                )
        except trackapi.TrackAPIError as exc:
            return error_reply(400, exc.message)
        with self._cond:
            if generation == self._generation:
                self._apply(op, "v1", request_index, None)
        return json_reply(200, {})

    def _process_batch(self, payload: Any, request_index: int, generation: int) -> Reply:
        ops = trackapi.parse_batch(payload)
        errors: list[dict[str, Any]] = []
        valid: list[tuple[int, trackapi.Operation]] = []
        for position, raw in enumerate(ops):
            try:
                valid.append(
                    (
                        position,
                        trackapi.parse_batch_operation(
                            raw, require_ulid=self.require_ulid_event_ids
                        ),
                    )
                )
            except trackapi.TrackAPIError as exc:
                errors.append(
                    {
                        "batch_index": position,
                        "reason": exc.reason,
                        "field": exc.field,
                        "message": exc.message,
                    }
                )
        with self._cond:
            rejections = list(self._rejections)
            for rejection in rejections:
                remaining = rejection.public.remaining
                if remaining is not None:
                    if remaining <= 1:
                        self._rejections.remove(rejection)
                    else:
                        rejection.public = dataclasses.replace(
                            rejection.public, remaining=remaining - 1
                        )
        accepted: list[tuple[int, trackapi.Operation]] = []
        for position, op in valid:
            rejected_by = next(
                (r for r in rejections if r.predicate(position, ops[position])), None
            )
            if rejected_by is None:
                accepted.append((position, op))
            else:
                errors.append(
                    {
                        "batch_index": position,
                        "reason": rejected_by.public.reason,
                        "field": rejected_by.public.field,
                        "message": rejected_by.public.message,
                    }
                )
        with self._cond:
            if generation == self._generation:
                for position, op in accepted:
                    self._apply(op, "v2", request_index, position)
        if errors:
            errors.sort(key=lambda e: int(e["batch_index"]))
            return json_reply(207, {"errors": errors})
        return json_reply(200, {})

    def _apply(
        self,
        op: trackapi.Operation,
        via: Literal["v1", "v2"],
        request_index: int,
        position: int | None,
    ) -> None:
        """Record (and apply) one operation; the caller holds the lock."""
        applied = True
        if op.event_id is not None:
            applied = op.event_id not in self._seen_event_ids
            self._seen_event_ids.add(op.event_id)
        if op.kind == "identify" and op.customer_id is not None:
            self._people.setdefault(op.customer_id, {}).update(copy.deepcopy(op.attributes))
        elif op.kind == "delete" and op.customer_id is not None:
            self._people.pop(op.customer_id, None)
        self._receipts.append(
            Receipt(
                kind=op.kind,
                customer_id=op.customer_id,
                name=op.name,
                event_id=op.event_id,
                attributes=copy.deepcopy(op.attributes),
                via=via,
                applied=applied,
                timestamp=op.timestamp,
                request_index=request_index,
                batch_index=position,
                received_at=self._requests[request_index].received_at,
            )
        )
        self._cond.notify_all()

    def _handle_control(self, method: str, raw_path: str, body: bytes) -> Reply:
        return handle_control(self, method, urlsplit(raw_path).path, body)


_Route = tuple[str, tuple[str, ...], str]


def _route(segments: list[str]) -> _Route | None:
    """Map path segments to ``(route name, allowed methods, customer id)``."""
    if len(segments) < 3 or segments[0] != "api":
        return None
    version, rest = segments[1], segments[2:]
    if version == "v1":
        if rest[0] == "customers" and len(rest) == 2:
            return ("customer", ("PUT", "DELETE"), unquote(rest[1]))
        if rest[0] == "customers" and len(rest) == 3 and rest[2] == "events":
            return ("events", ("POST",), unquote(rest[1]))
        if rest == ["events"]:
            return ("anonymous", ("POST",), "")
        if rest == ["accounts", "region"]:
            return ("region", ("GET",), "")
    if version == "v2" and rest == ["batch"]:
        return ("batch", ("POST",), "")
    return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeCustomerIO/1.0"
    server: _Server

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without NODELAY, Nagle's algorithm
        # and the client's delayed ACK add ~40 ms to every keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connection_id = self.server.register(self.connection)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self._send(error_reply(411, "chunked request bodies are not supported"))
            return None
        try:
            length = int(self.headers.get("Content-Length", "0") or "0")
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._send(error_reply(400, "invalid Content-Length"))
            return None
        if length > MAX_REQUEST_BYTES:
            self.close_connection = True
            self._send(error_reply(413, f"request cannot be larger than {MAX_REQUEST_BYTES} bytes"))
            return None
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        body = self._read_body()
        if body is None:
            return
        fake = self.server.fake
        if self.path.startswith(CONTROL_PREFIX):
            self._send(fake._handle_control(self.command, self.path, body))
            return
        headers = {
            key: value
            for key, value in self.headers.items()
            if key.lower() not in ("authorization", "proxy-authorization")
        }
        authorization = self.headers.get("Authorization", "")
        reply = fake._handle_api(
            self.command, self.path, headers, authorization, body, self.connection_id
        )
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        if reply.action == "reset":
            self.close_connection = True
            try:
                # Linger 0: close() sends RST instead of FIN, so the client sees a reset.
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()
            except OSError:
                pass
            return
        if reply.action == "drop":
            self.close_connection = True
            return
        wfile = self.wfile
        rendered = io.BytesIO()
        if reply.trickle is not None:
            self.wfile = rendered  # render the whole answer, then send it byte by byte
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for key, value in reply.headers:
                self.send_header(key, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(reply.body)
            if reply.trickle is not None:
                data = rendered.getvalue()
                at_once = 0 if reply.trickle_head else len(data) - len(reply.body)
                self._trickle(wfile, data, at_once, reply.trickle)
            wfile.flush()
        except OSError:
            self.close_connection = True
        finally:
            self.wfile = wfile

    @staticmethod
    def _trickle(
        out: io.BufferedIOBase, data: bytes, at_once: int, wait: Callable[[], bool]
    ) -> None:
        """Write ``data[:at_once]`` now, then one byte per ``wait()`` (the rest if it fails)."""
        out.write(data[:at_once])
        for position in range(at_once, len(data)):
            if not wait():
                out.write(data[position:])
                return
            out.write(data[position : position + 1])

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Paths carry customer ids; log the method and status only.
        logger.debug("FakeCustomerIO %s -> %s", self.command, code)

    def log_message(self, format: str, *args: Any) -> None:
        # The stdlib's arguments can quote the request line (and so a customer id).
        logger.debug("FakeCustomerIO: %s", format)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for idle keep-alive connections

    def __init__(self, address: tuple[str, int], fake: FakeCustomerIO) -> None:
        self.fake = fake
        self._connections: dict[socket.socket, int] = {}
        self._next_connection_id = 0
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind() does a reverse DNS lookup (getfqdn) that can be slow.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def register(self, connection: socket.socket) -> int:
        with self._connections_lock:
            self._next_connection_id += 1
            self._connections[connection] = self._next_connection_id
            return self._next_connection_id

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.pop(request, None)
        super().shutdown_request(request)

    def close_all_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("FakeCustomerIO: error handling a request", exc_info=True)

"""The only code that talks HTTP: Customer.io's Track API, with no hidden behaviour.

Built on the ``customerio`` package (3.x): its URL builders, event builder and datetime
sanitiser are reused, but four of its behaviours are switched off because they break the
outbox's guarantees:

* it retries POSTs on 5xx and sleeps on ``Retry-After`` inside the calling thread (a drain
  worker would stall, and the retry policy would be applied twice) — here every request is
  sent exactly once: both ``http://`` and ``https://`` adapters carry ``Retry(total=0)``;
* it puts the request payload (PII) in its exception text — here every failure is a
  :class:`~django_cio_reliable.exceptions.DeliveryError` whose reason is the server's own
  message at most, with the API key and the payload's values redacted;
* it only builds ``https://`` URLs — here ``TRACK_URL`` may be ``http://127.0.0.1:PORT``;
* it leaves the ids ``.`` and ``..`` as dot segments, which requests and urllib3 then remove
  (``track("..")`` would become ``POST /api/v1/events``) — here every id is one
  percent-encoded path segment (:func:`path_segment`) and the path goes out as built.

Anonymous events are sent only with ``POST /api/v1/events``: they have no ``/api/v2/batch``
form (:func:`batch_item`). A 207 batch answer marks an item delivered only when it says so
unambiguously (:meth:`Transport.send_batch`). Log lines name operations by their outbox id,
never by a customer or anonymous id.

Redirects are never followed (a 3xx is a transient error), connect and read timeouts are
separate, every call is over by ``connect_timeout + read_timeout`` whatever the server does
(one deadline for connect, headers and body), and at most ``MAX_ERROR_BODY_BYTES`` of an
error body is read.

See ``docs/transport.md``.
"""

from __future__ import annotations

import base64
import contextlib
import heapq
import http
import http.client
import itertools
import json
import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime
from importlib import metadata
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import requests
import requests.utils
import urllib3
import urllib3.connection
import urllib3.exceptions
from customerio import CustomerIO
from customerio.client_base import TCPKeepAliveHTTPAdapter
from urllib3.util.retry import Retry

from django_cio_reliable import conf
from django_cio_reliable.exceptions import DeliveryError, DeliveryErrorKind

logger = logging.getLogger(__name__)

Kind = Literal["identify", "track", "track_anonymous", "delete"]
"""The four operations the outbox stores and the transport sends."""

KINDS: Final[tuple[Kind, ...]] = ("identify", "track", "track_anonymous", "delete")

#: Customer.io: "Your batch request must be smaller than 500kb. Each of the requests within
#: the batch must also be 32kb or smaller." The unit is not defined; decimal kilobytes are the
#: smaller reading, so staying under them is safe whichever one Customer.io enforces.
MAX_BATCH_REQUEST_BYTES: Final = 500 * 1000
MAX_BATCH_ITEM_BYTES: Final = 32 * 1000

#: The longest ``Retry-After`` honoured, in seconds; longer values are clamped to it.
MAX_RETRY_AFTER: Final = 3600.0
#: The longest ``DeliveryError.reason`` (longer ones are cut and end with "...").
MAX_REASON_CHARS: Final = 300
#: How much of a successful response is read (a 207's per-item errors, the region probe).
MAX_RESULT_BODY_BYTES: Final = 1024 * 1024

_REDACTED: Final = "***"
_CHUNK_BYTES: Final = 16 * 1024
_BATCH_PREFIX: Final = b'{"batch":['
_BATCH_SUFFIX: Final = b"]}"
#: Bytes a batch request adds around its items (``{"batch":[`` and ``]}``).
BATCH_FRAMING_BYTES: Final = len(_BATCH_PREFIX) + len(_BATCH_SUFFIX)
_DELTA_SECONDS_RE: Final = re.compile(r"[0-9]+(?:\.[0-9]+)?")
# Secrets are redacted down to fragments this long (a server may echo part of a key).
_MIN_SECRET_FRAGMENT: Final = 8
# Payload strings shorter than this are not redacted (they would clobber ordinary words).
_MIN_VALUE_CHARS: Final = 3
# Numbers are redacted when their text is at least this long (phone numbers, not sizes).
_MIN_NUMBER_CHARS: Final = 6
# Values shorter than this are redacted only as whole words ("pro", not inside "problem").
_WHOLE_WORD_BELOW: Final = 6
# A value longer than this is also redacted where only its beginning was echoed.
_VALUE_PREFIX_CHARS: Final = 24


def _user_agent() -> str:
    try:
        ours = metadata.version("django-cio-reliable")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
        ours = "dev"
    try:
        theirs = metadata.version("customerio")
    except metadata.PackageNotFoundError:  # pragma: no cover
        theirs = "unknown"
    return f"django-cio-reliable/{ours} (customerio-python/{theirs})"


_USER_AGENT: Final = _user_agent()


# --------------------------------------------------------------------------- pure helpers


def classify_status(status: int) -> DeliveryErrorKind:
    """Classify an HTTP status that is not a success.

    The rule: 429 is ``rate_limited``; 401 and 403 are ``auth``; 408 and 425 are
    ``transient``; every other 4xx is ``permanent``; everything else — 5xx, an unexpected
    3xx redirect (never followed), and any status outside 400–499 — is ``transient``.

    Args:
        status: The HTTP status code.

    Returns:
        The :class:`DeliveryError` kind.
    """
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth"
    if status in (408, 425):
        return "transient"
    if 400 <= status <= 499:
        return "permanent"
    return "transient"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Parse a ``Retry-After`` header into seconds to wait.

    The rule:

    * delta seconds (``"120"``, also a decimal such as ``"1.5"``) → that many seconds;
    * an HTTP-date → the seconds from ``now`` until then; a date in the past → ``0.0``;
    * the result is clamped to :data:`MAX_RETRY_AFTER` (a huge number such as
      ``"99999999999999999999"`` gives 3600.0);
    * anything else → ``None``: absent or blank, negative (``"-1"``), signs, exponents
      (``"1e309"``), ``nan``/``inf``, values over 200 characters and other garbage.

    The result is always ``None`` or a finite float in ``[0, MAX_RETRY_AFTER]``.

    Args:
        value: The header value, or ``None``.
        now: The current Unix time (default ``time.time()``), for HTTP-dates.

    Returns:
        Seconds to wait, or ``None`` when the header is absent or unusable.
    """
    if value is None:
        return None
    text = value.strip()
    if not text or len(text) > 200:
        return None
    if _DELTA_SECONDS_RE.fullmatch(text):
        seconds = float(text)
        if math.isnan(seconds):  # pragma: no cover - the pattern admits no nan
            return None
        return min(seconds, MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    try:
        target = when.timestamp()
    except (OverflowError, OSError, ValueError):  # pragma: no cover - platform limits
        return None
    current = time.time() if now is None else now
    delta = target - current
    if math.isnan(delta):
        return None
    return min(max(delta, 0.0), MAX_RETRY_AFTER)


#: A path that is already fully percent-encoded: RFC 3986 ``pchar``s, ``/`` and ``%XX``.
_ENCODED_PATH_RE: Final = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*")


def path_segment(value: str) -> str:
    """Percent-encode ``value`` as exactly one URL path segment.

    Every character but RFC 3986's unreserved ones (``A-Z a-z 0-9 - . _ ~``) is encoded as
    UTF-8 ``%XX`` (so ``/ ? # %``, spaces and non-ASCII are), like the ``customerio``
    package's ``quote(id, safe="")``; in addition an id made only of dots (``.``, ``..``,
    ``...``) has every dot encoded (``%2E``, ``%2E%2E``): as a plain segment it would be a
    *dot segment*, which URL normalisation (requests, urllib3, proxies, servers) removes,
    sending the request to another path. Other dots cannot form a dot segment and are kept.

    Examples: ``"."`` → ``"%2E"``, ``".."`` → ``"%2E%2E"``, ``"a/b"`` → ``"a%2Fb"``,
    ``"zoë"`` → ``"zo%C3%AB"``, ``"alice@example.com"`` → ``"alice%40example.com"``.
    """
    if value and value.strip(".") == "":
        return "%2E" * len(value)
    return quote(value, safe="")


def _dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON, the exact bytes the transport sends."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


# A client used only for its pure builders (``_build_event``, ``_sanitize``); it never sends.
_BUILDER: Final[Any] = CustomerIO(site_id="", api_key="")


def _event_body(
    name: str, data: Mapping[str, Any] | None, event_id: str | None, timestamp: int | None
) -> dict[str, Any]:
    if data is not None and not isinstance(data, Mapping):
        raise TypeError("event data must be a JSON object")
    body: dict[str, Any] = _BUILDER._build_event(name, data, id=event_id, timestamp=timestamp)
    return body


def _sanitize(data: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise TypeError("attributes must be a JSON object")
    result: dict[str, Any] = _BUILDER._sanitize(data)
    return result


def _person(customer_id: str) -> dict[str, Any]:
    return {"type": "person", "identifiers": {"id": customer_id}}


def batch_item(kind: Kind, customer_id: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """Return the ``/api/v2/batch`` operation for one stored operation.

    Shapes (Customer.io's v2 ``person`` entity)::

        identify:  {"type": "person", "identifiers": {"id": cid},
                    "action": "identify", "attributes": {...}}
        track:     {"type": "person", "identifiers": {"id": cid}, "action": "event",
                    "name": ..., "attributes": {...data}, "id"?: ULID, "timestamp"?: int}
        delete:    {"type": "person", "identifiers": {"id": cid}, "action": "delete"}

    ``track_anonymous`` has no v2 form: Customer.io's Track API description allows only
    ``id``, ``email``, ``phone`` or ``cio_id`` as a person's identifiers (no
    ``anonymous_id``), so anonymous events are sent one at a time with
    ``POST /api/v1/events`` (:meth:`Transport.track_anonymous`) and never batched.

    Args:
        kind: The operation kind: ``identify``, ``track`` or ``delete``.
        customer_id: The customer id.
        payload: The stored payload (see :class:`Transport`).

    Returns:
        A JSON-safe dict.

    Raises:
        ValueError: If ``kind`` is ``track_anonymous`` or unknown, or a ``track`` payload
            has no event name.
    """
    if kind == "track_anonymous":
        raise ValueError("anonymous events have no batch form; send them with POST /api/v1/events")
    if kind not in KINDS:
        raise ValueError(f"unknown operation kind: {kind!r}")
    op = _person(customer_id)
    if kind == "identify":
        op["action"] = "identify"
        op["attributes"] = _sanitize(payload.get("attributes") or {})
    elif kind == "delete":
        op["action"] = "delete"
    else:
        name = payload.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError("a track payload needs a non-empty event name")
        event = _event_body(name, payload.get("data"), payload.get("id"), payload.get("timestamp"))
        op["action"] = "event"
        op["name"] = event["name"]
        op["attributes"] = event["data"]
        if "id" in event:
            op["id"] = event["id"]
        if "timestamp" in event:
            op["timestamp"] = event["timestamp"]
    return op


def batchable(kind: str) -> bool:
    """Whether operations of ``kind`` may go through ``/api/v2/batch`` (all but anonymous
    events, which only ``POST /api/v1/events`` accepts)."""
    return kind in KINDS and kind != "track_anonymous"


def batch_item_bytes(kind: Kind, customer_id: str, payload: Mapping[str, Any]) -> int:
    """Return the serialised size of :func:`batch_item`, exactly as it is sent.

    An operation with no batch form (``track_anonymous``), or a payload that cannot be
    serialised (or is not a valid operation), counts as ``MAX_BATCH_ITEM_BYTES + 1``, so that
    it is sent alone through v1 (where an unsendable one fails with a permanent
    :class:`DeliveryError` instead of breaking a whole batch).
    """
    try:
        return len(_dumps(batch_item(kind, customer_id, payload)))
    except (TypeError, ValueError):
        return MAX_BATCH_ITEM_BYTES + 1


@dataclass(frozen=True)
class BatchItem:
    """One stored operation to send in ``/api/v2/batch``.

    ``operation_id`` (the outbox's ``Operation`` primary key, when there is one) is what log
    lines name the item by; the customer id is never logged.
    """

    kind: Kind
    customer_id: str
    payload: Mapping[str, Any]
    operation_id: int | None = None


def _operation_text(operation_id: int | None) -> str:
    """How log lines name an operation: by its outbox id, never by its customer id."""
    return "operation -" if operation_id is None else f"operation {operation_id}"


def _operations_text(items: Sequence[BatchItem]) -> str:
    """``"operations 7, 8, 9"`` (at most 20 shown), or ``""`` when no item has an id."""
    ids = [str(item.operation_id) for item in items if item.operation_id is not None]
    if not ids:
        return ""
    shown = ", ".join(ids[:20]) + (", ..." if len(ids) > 20 else "")
    return f"operation {shown}" if len(ids) == 1 else f"operations {shown}"


def _batch_subject(items: Sequence[BatchItem]) -> str:
    """``"batch of 3 (operations 7, 8, 9)"``: what a batch request's log lines call it."""
    operations = _operations_text(items)
    return f"batch of {len(items)} ({operations})" if operations else f"batch of {len(items)}"


# --------------------------------------------------------------------------- redaction


def _leaves(value: Any, out: set[str], depth: int = 0) -> None:
    if depth > 32:
        return
    if isinstance(value, str):
        if len(value) >= _MIN_VALUE_CHARS:
            out.add(value)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, (int, float)):
        text = repr(value)
        if len(text) >= _MIN_NUMBER_CHARS:
            out.add(text)
    elif isinstance(value, Mapping):
        for item in value.values():
            _leaves(item, out, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _leaves(item, out, depth + 1)


def _payload_values(kind: str, payload: Mapping[str, Any]) -> set[str]:
    """The values (PII) of a stored payload: attributes or event data."""
    values: set[str] = set()
    if kind == "identify":
        _leaves(payload.get("attributes"), values)
    else:
        _leaves(payload.get("data"), values)
    return values


class _Redactor:
    """Removes secrets and payload values from text that came from the server."""

    def __init__(self, secrets: Iterable[str], values: Iterable[str] = ()) -> None:
        fragments: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            smallest = min(_MIN_SECRET_FRAGMENT, len(secret))
            for size in range(smallest, len(secret) + 1):
                for start in range(len(secret) - size + 1):
                    fragments.add(secret[start : start + size])
        self._secrets = sorted(fragments, key=len, reverse=True)
        variants: set[str] = set()
        for value in values:
            variants.add(value)
            escaped = json.dumps(value)[1:-1]
            if escaped != value and len(escaped) >= _MIN_VALUE_CHARS:
                variants.add(escaped)
        self._values = sorted(variants, key=len, reverse=True)

    def with_values(self, values: Iterable[str]) -> _Redactor:
        clone = _Redactor(())
        clone._secrets = self._secrets
        clone._values = _Redactor((), values)._values
        return clone

    def __call__(self, text: str) -> str:
        for fragment in self._secrets:
            if fragment in text:
                text = text.replace(fragment, _REDACTED)
        for value in self._values:
            if value not in text:
                if len(value) > _VALUE_PREFIX_CHARS:
                    text = _redact_prefix(text, value)
            elif len(value) < _WHOLE_WORD_BELOW:
                pattern = r"(?<!\w)" + re.escape(value) + r"(?!\w)"
                text = re.sub(pattern, _REDACTED, text)
            else:
                text = text.replace(value, _REDACTED)
        return text


def _redact_prefix(text: str, value: str) -> str:
    """Redact places where ``value`` was echoed cut short (its first characters at least)."""
    head = value[:_VALUE_PREFIX_CHARS]
    start = text.find(head)
    while start != -1:
        end = start + len(head)
        while end < len(text) and end - start < len(value) and text[end] == value[end - start]:
            end += 1
        text = text[:start] + _REDACTED + text[end:]
        start = text.find(head, start + len(_REDACTED))
    return text


def _shorten(text: str, limit: int = MAX_REASON_CHARS) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    return text[: limit - 3].rstrip() + "..."


def _clean_reason(text: str, redact: _Redactor) -> str:
    # Redact before cutting (a cut could leave half a key); redact again after.
    return redact(_shorten(redact(text[: MAX_REASON_CHARS * 4])))


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP status {status}"


def _server_message(body: bytes) -> str | None:
    """The error message in Customer.io's JSON error shapes, or ``None``.

    Shapes: ``{"meta": {"error": "..."}}``, ``{"meta": {"errors": ["...", ...]}}`` (v1) and
    ``{"errors": [{"reason", "field", "message"}]}`` (v2). Other bodies are never echoed:
    a plain-text or HTML body may quote the request.
    """
    if not body:
        return None
    try:
        data = json.loads(body.decode("utf-8", errors="replace"))
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    meta = data.get("meta")
    if isinstance(meta, dict):
        error = meta.get("error")
        if isinstance(error, str) and error.strip():
            return error
        errors = meta.get("errors")
        if isinstance(errors, list):
            texts = [_error_text(e) for e in errors[:20]]
            joined = "; ".join(t for t in texts if t)
            if joined:
                return joined
    errors = data.get("errors")
    if isinstance(errors, list):
        texts = [_error_text(e) for e in errors[:20]]
        joined = "; ".join(t for t in texts if t)
        if joined:
            return joined
    return None


def _error_text(error: Any) -> str:
    if isinstance(error, str):
        return error
    if isinstance(error, dict):
        message = error.get("message")
        field = error.get("field")
        reason = error.get("reason")
        parts = [str(message)] if isinstance(message, str) and message else []
        details = [
            f"{label} {value}"
            for label, value in (("field", field), ("reason", reason))
            if isinstance(value, str) and value
        ]
        if details:
            parts.append(f"({', '.join(details)})")
        return " ".join(parts)
    return ""


# --------------------------------------------------------------------------- one deadline per call


class _Deadline:
    """When one call must be over, and the connections it has used so far."""

    __slots__ = ("at", "connections", "done", "expired")

    def __init__(self, at: float) -> None:
        self.at = at
        self.connections: list[urllib3.connection.HTTPConnection] = []
        self.done = False
        self.expired = False

    def passed(self) -> bool:
        return self.expired or time.monotonic() >= self.at


def _cut(connection: urllib3.connection.HTTPConnection) -> None:
    """Shut the connection's socket down: a read or write blocked on it returns at once."""
    sock = connection.sock
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            # The plain socket's shutdown: ssl.SSLSocket's own would also drop its TLS object
            # under the thread that is reading from it.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watchdog:
    """One daemon thread that cuts the connections of every call still running at its deadline.

    requests' read timeout bounds each read, not the answer: a server sending a byte now and
    then holds a call for ever. So each call starts a deadline here; the connections urllib3
    opens or reuses for it attach themselves (from the calling thread); when the deadline
    passes before the call has finished, their sockets are shut down, the blocked read returns,
    and the call fails as a ``timeout``. Nothing is ever cut after :meth:`finish`.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        # Also run in a forked child: the thread is gone there, and the lock may be held.
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Deadline]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._local = threading.local()

    def start(self, seconds: float) -> _Deadline:
        """Start this thread's call, which must be over in ``seconds``."""
        deadline = _Deadline(time.monotonic() + seconds)
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="cio-transport-deadlines", daemon=True
                )
                self._thread.start()
            heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
            if self._heap[0][2] is deadline:
                self._cond.notify()
        self._local.deadline = deadline
        return deadline

    def finish(self, deadline: _Deadline) -> None:
        """End this thread's call: its connections are no longer watched."""
        self._local.deadline = None
        with self._cond:
            deadline.done = True
            deadline.connections.clear()

    def attach(self, connection: urllib3.connection.HTTPConnection) -> None:
        """Put ``connection`` under the deadline of this thread's call, if one is running."""
        deadline: _Deadline | None = getattr(self._local, "deadline", None)
        if deadline is None:
            return
        with self._cond:
            if connection not in deadline.connections:
                deadline.connections.append(connection)
            if deadline.expired:
                _cut(connection)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    deadline = heapq.heappop(self._heap)[2]
                    if not deadline.done:
                        deadline.expired = True
                        for connection in deadline.connections:
                            _cut(connection)
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


_watchdog = _Watchdog()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_watchdog._reset)


class _HTTPConnection(urllib3.connection.HTTPConnection):
    """A connection that puts itself under the deadline of the call that opens or reuses it."""

    def connect(self) -> None:
        _watchdog.attach(self)  # before the TLS handshake, which reads from the server too
        super().connect()

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watchdog.attach(self)
        super().request(*args, **kwargs)


class _HTTPSConnection(_HTTPConnection, urllib3.connection.HTTPSConnection):
    """The same, over TLS."""


class _HTTPConnectionPool(urllib3.HTTPConnectionPool):
    """A pool of :class:`_HTTPConnection`."""

    ConnectionCls = _HTTPConnection


class _HTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    """A pool of :class:`_HTTPSConnection`."""

    ConnectionCls = _HTTPSConnection


_POOL_CLASSES: Final[dict[str, type[urllib3.HTTPConnectionPool]]] = {
    "http": _HTTPConnectionPool,
    "https": _HTTPSConnectionPool,
}


class _Adapter(TCPKeepAliveHTTPAdapter):  # type: ignore[misc]  # customerio ships no type hints
    """customerio's keep-alive adapter, with connections that obey the call's deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOL_CLASSES

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> urllib3.PoolManager:
        manager: urllib3.PoolManager = super().proxy_manager_for(proxy, **kwargs)
        if isinstance(manager, urllib3.ProxyManager):  # a SOCKS manager has its own pools
            manager.pool_classes_by_scheme = _POOL_CLASSES
        return manager


# --------------------------------------------------------------------------- HTTP client


class _NoRedirectSession(requests.Session):
    """A session that never follows a redirect, nor reads a redirect's body to prepare one.

    ``allow_redirects=False`` alone is not enough: requests still reads the whole body of a
    3xx answer (to compute ``Response.next``) before returning it.
    """

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        return None

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
        """Prepare ``request``, keeping its path byte for byte when it is already encoded.

        requests re-quotes every URL: it decodes percent-encoded unreserved characters
        (``%2E`` becomes ``.``) and urllib3 then removes the dot segments that this creates,
        so ``/customers/%2E%2E/events`` would go out as ``/events``. A path that is already
        fully percent-encoded (as every path the transport builds is) cannot be improved by
        re-quoting, only changed in meaning, so it is put back as it was.
        """
        prepared = super().prepare_request(request)
        url = request.url
        if isinstance(url, str) and isinstance(prepared.url, str):
            wanted = urlsplit(url).path
            got = urlsplit(prepared.url)
            if wanted != got.path and _ENCODED_PATH_RE.fullmatch(wanted):
                prepared.url = urlunsplit(got._replace(path=wanted))
        return prepared


def _no_retries() -> Retry:
    return Retry(
        total=0,
        connect=0,
        read=0,
        redirect=0,
        status=0,
        other=0,
        allowed_methods=None,
        status_forcelist=(),
        backoff_factor=0,
        raise_on_redirect=False,
        raise_on_status=False,
        respect_retry_after_header=False,
    )


class _Client(CustomerIO):  # type: ignore[misc]  # customerio ships no type hints
    """``customerio.CustomerIO`` with its retries, sleeps and https-only URLs switched off.

    Its URL builders are used unchanged; :meth:`send_request` is replaced, so even the
    package's own methods (``client.identify(...)``) send once and raise
    :class:`DeliveryError`.
    """

    _current_session: requests.Session | None

    def __init__(self, transport: Transport, origin: str, host: str, port: int) -> None:
        self._transport = transport
        self._origin = origin
        super().__init__(
            site_id=transport.site_id,
            api_key=transport._api_key,
            host=host,
            port=port,
            url_prefix="/api/v1",
            retries=0,
            timeout=(transport.connect_timeout, transport.read_timeout),
            backoff_factor=0,
            use_connection_pooling=True,
        )
        self._session_lock = threading.Lock()

    def setup_base_url(self) -> None:
        # The package always builds https://host[:port]; keep the configured scheme and path.
        self.base_url = f"{self._origin}/{self.url_prefix.strip('/')}"

    def _url_encode(self, id: Any) -> str:  # noqa: A002 - the package's parameter name
        # The package's quote(id, safe="") leaves "." and ".." as dot segments.
        return path_segment(str(id))

    @property
    def batch_url(self) -> str:
        return f"{self._origin}/api/v2/batch"

    @property
    def region_url(self) -> str:
        return f"{self.base_url}/accounts/region"

    @property
    def http(self) -> requests.Session:
        with self._session_lock:
            session = self._current_session
            if session is None:
                session = self._current_session = self._build_session()
            return session

    def _build_session(self) -> requests.Session:
        session = _NoRedirectSession()
        session.headers["User-Agent"] = _USER_AGENT
        # Error bodies are read only partly; a compressed one could inflate past the cap.
        session.headers["Accept-Encoding"] = "identity"
        session.auth = (self.site_id, self.api_key)
        adapter = _Adapter(max_retries=_no_retries())
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return session

    def send_request(self, method: str, url: str, data: Mapping[str, Any]) -> None:
        body = None if method in ("GET", "DELETE") and not data else _dumps(self._sanitize(data))
        self._transport._call(method, url, body, what="request", operation_id=None, values=set())

    def batch(self, operations: list[dict[str, Any]]) -> None:
        if not operations:
            raise ValueError("operations cannot be empty in batch")
        self.send_request("POST", self.batch_url, {"batch": operations})

    def __repr__(self) -> str:
        return f"<_Client {self._origin}>"


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes
    complete: bool


def _read_body(response: requests.Response, cap: int, deadline: float) -> tuple[bytes, bool]:
    """Read at most ``cap`` bytes of the body; ``complete`` is False if the cap cut it.

    Raises:
        TimeoutError: If ``deadline`` (``time.monotonic()``) passed before the end.
        Exception: Any of :data:`_HTTP_ERRORS`, if a read failed.
    """
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=_CHUNK_BYTES):
        room = cap - size
        if len(chunk) > room:
            chunks.append(chunk[:room])
            return b"".join(chunks), False
        chunks.append(chunk)
        size += len(chunk)
        if time.monotonic() >= deadline:
            break
    # Also after the loop: a body read until the connection closes ends quietly when cut.
    if time.monotonic() >= deadline:
        raise TimeoutError("deadline passed while reading the body")
    return b"".join(chunks), True


_HTTP_ERRORS: Final = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)


_POOL_PREFIX: Final = re.compile(r"^\w*Connection(?:Pool)?\([^)]*\):\s*")


def _describe(exc: BaseException) -> str:
    """``"ClassName: text"`` of the root cause, without urllib3's pool/URL preamble."""
    inner = exc
    for _ in range(5):
        cause: BaseException | None = None
        if isinstance(inner, urllib3.exceptions.MaxRetryError):
            cause = inner.reason
        elif isinstance(inner, requests.RequestException) and inner.args:
            first = inner.args[0]
            cause = first if isinstance(first, BaseException) else None
        if cause is None:
            break
        inner = cause
    text = _POOL_PREFIX.sub("", str(inner))
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__


def _is_timeout(exc: BaseException) -> bool:
    """Whether a requests/urllib3 failure was a connect or read timeout (at any depth)."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        # urllib3 derives "connection refused" from ConnectTimeoutError for old callers.
        if isinstance(current, urllib3.exceptions.NewConnectionError):
            continue
        if isinstance(current, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)):
            return True
        stack.extend(arg for arg in current.args if isinstance(arg, BaseException))
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            stack.append(reason)
        stack.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return False


# --------------------------------------------------------------------------- the transport


class Transport:
    """Sends operations to Customer.io's Track API, once each, and explains every failure.

    Every method returns normally on a 2xx answer and raises :class:`DeliveryError`
    otherwise: ``kind`` from :func:`classify_status` (``timeout`` and ``network`` when no
    answer arrived), ``status``, ``retry_after`` from the ``Retry-After`` header of any
    response, and a short ``reason`` with no payload value and no key.

    Stored payload formats (what :meth:`send` and :class:`BatchItem` take)::

        identify:         {"attributes": {...}}
        track:            {"name": str, "data": {...}, "id": "<ULID>", "timestamp"?: int}
        track_anonymous:  {"anonymous_id": str, "name": str, "data": {...}, "id": "<ULID>",
                           "timestamp"?: int}
        delete:           {}

    A transport owns one HTTP session; use :func:`get_transport` for one per thread and
    process. It is safe to share between threads, but not across ``fork()``.

    Args:
        site_id: The Track API site id (the Basic auth user name).
        api_key: The Track API key (the Basic auth password); never shown or logged.
        base_url: The origin, e.g. ``https://track.customer.io`` or ``http://127.0.0.1:8765``
            (an optional path prefix is kept).
        connect_timeout: Seconds to wait for the TCP/TLS connection.
        read_timeout: Seconds to wait for each read from the server. Whatever the server
            does, a call is over within ``connect_timeout + read_timeout`` (a ``timeout``).
        max_error_body_bytes: The most of an error response body that is read.

    Raises:
        ValueError: If ``base_url`` is not an http(s) URL with a host and no credentials,
            or a timeout or the body cap is not a positive number.
    """

    def __init__(
        self,
        *,
        site_id: str,
        api_key: str,
        base_url: str,
        connect_timeout: float,
        read_timeout: float,
        max_error_body_bytes: int = 65536,
    ) -> None:
        for label, timeout in (
            ("connect_timeout", connect_timeout),
            ("read_timeout", read_timeout),
        ):
            if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
                raise ValueError(f"{label} must be a positive number of seconds")
        if isinstance(max_error_body_bytes, bool) or not isinstance(max_error_body_bytes, int):
            raise ValueError("max_error_body_bytes must be an integer")
        if max_error_body_bytes < 1:
            raise ValueError("max_error_body_bytes must be at least 1")
        parts = urlsplit(base_url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("base_url must not carry credentials (auth is a header)")
        if parts.query or parts.fragment:
            raise ValueError("base_url must not have a query string or fragment")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValueError("base_url has an invalid port") from None
        netloc = parts.netloc
        # The path prefix is encoded once here (as requests would), so that every URL built on
        # it is fully encoded and sent exactly as built (see _NoRedirectSession).
        prefix = requests.utils.requote_uri(parts.path.rstrip("/"))
        origin = f"{parts.scheme}://{netloc}{prefix}"

        self.site_id = site_id
        self._api_key = api_key
        self.base_url = origin
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.max_error_body_bytes = max_error_body_bytes
        basic = base64.b64encode(f"{site_id}:{api_key}".encode()).decode("ascii")
        self._redactor = _Redactor([api_key, basic, site_id if len(site_id) >= 4 else ""])
        self._client = _Client(self, origin, parts.hostname, port)

    @classmethod
    def from_settings(cls) -> Transport:
        """Build a transport from ``CIO_RELIABLE`` (credentials, region or ``TRACK_URL``)."""
        settings = conf.app_settings
        return cls(
            site_id=settings.SITE_ID,
            api_key=settings.API_KEY,
            base_url=settings.base_url,
            connect_timeout=settings.CONNECT_TIMEOUT,
            read_timeout=settings.TIMEOUT,
            max_error_body_bytes=settings.MAX_ERROR_BODY_BYTES,
        )

    def __repr__(self) -> str:
        return f"<Transport {self.base_url} site_id={self.site_id!r}>"

    def __enter__(self) -> Transport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP session and its pooled connections (a later call reopens one)."""
        with self._client._session_lock:
            self._client.close()

    # ------------------------------------------------------------------ v1 operations

    def identify(
        self,
        customer_id: str,
        attributes: Mapping[str, Any],
        *,
        operation_id: int | None = None,
    ) -> None:
        """Create or update a person (``PUT /api/v1/customers/{id}``).

        Args:
            customer_id: The person; sent as one percent-encoded path segment
                (:func:`path_segment`).
            attributes: The person's attributes.
            operation_id: The outbox operation this request delivers; log lines name it
                (never the customer id).

        Raises:
            DeliveryError: On any failure.
        """
        self._require_id(customer_id, "customer id")
        body = self._encode(lambda: _sanitize(attributes))
        url = self._client.get_customer_query_string(customer_id)
        values = _payload_values("identify", {"attributes": attributes})
        self._call("PUT", url, body, what="identify", operation_id=operation_id, values=values)

    def track(
        self,
        customer_id: str,
        name: str,
        data: Mapping[str, Any] | None = None,
        *,
        event_id: str | None = None,
        timestamp: int | None = None,
        operation_id: int | None = None,
    ) -> None:
        """Send an event of a person (``POST /api/v1/customers/{id}/events``).

        Args:
            customer_id: The person; sent as one percent-encoded path segment
                (:func:`path_segment`).
            name: The event name.
            data: The event data.
            event_id: The event's ULID; Customer.io deduplicates re-sends by it.
            timestamp: When the event happened (Unix seconds); default: now.
            operation_id: The outbox operation this request delivers (for the logs).

        Raises:
            DeliveryError: On any failure.
        """
        self._require_id(customer_id, "customer id")
        self._require_id(name, "event name")
        body = self._encode(lambda: _event_body(name, data, event_id, timestamp))
        url = self._client.get_event_query_string(customer_id)
        values = _payload_values("track", {"data": data})
        self._call("POST", url, body, what="track", operation_id=operation_id, values=values)

    def track_anonymous(
        self,
        anonymous_id: str,
        name: str,
        data: Mapping[str, Any] | None = None,
        *,
        event_id: str | None = None,
        timestamp: int | None = None,
        operation_id: int | None = None,
    ) -> None:
        """Send an event of an unidentified visitor (``POST /api/v1/events``).

        This is the only way anonymous events are sent: they have no ``/api/v2/batch`` form
        (see :func:`batch_item`).

        Args:
            anonymous_id: The visitor's anonymous id (omitted from the request when empty).
            name: The event name.
            data: The event data.
            event_id: The event's ULID; Customer.io deduplicates re-sends by it.
            timestamp: When the event happened (Unix seconds); default: now.
            operation_id: The outbox operation this request delivers (for the logs).

        Raises:
            DeliveryError: On any failure.
        """
        self._require_id(name, "event name")

        def event() -> dict[str, Any]:
            body = _event_body(name, data, event_id, timestamp)
            if anonymous_id:
                body["anonymous_id"] = anonymous_id
            return body

        body = self._encode(event)
        url = self._client.get_events_query_string()
        values = _payload_values("track_anonymous", {"data": data})
        self._call(
            "POST", url, body, what="track_anonymous", operation_id=operation_id, values=values
        )

    def delete(self, customer_id: str, *, operation_id: int | None = None) -> None:
        """Delete a person (``DELETE /api/v1/customers/{id}``).

        Args:
            customer_id: The person; sent as one percent-encoded path segment
                (:func:`path_segment`).
            operation_id: The outbox operation this request delivers (for the logs).

        Raises:
            DeliveryError: On any failure.
        """
        self._require_id(customer_id, "customer id")
        url = self._client.get_customer_query_string(customer_id)
        self._call("DELETE", url, None, what="delete", operation_id=operation_id, values=set())

    def send(
        self,
        kind: Kind,
        customer_id: str,
        payload: Mapping[str, Any],
        *,
        operation_id: int | None = None,
    ) -> None:
        """Send one stored operation with its v1 call.

        Args:
            kind: ``identify``, ``track``, ``track_anonymous`` or ``delete``.
            customer_id: The person (the anonymous id for ``track_anonymous``).
            payload: The stored payload (see the class docstring).
            operation_id: The outbox operation being delivered; log lines name it instead of
                the customer id.

        Raises:
            DeliveryError: On any failure; a payload that cannot be sent at all (unknown
                kind, no event name, not JSON-serialisable) is ``permanent``.
        """
        if kind == "identify":
            self.identify(customer_id, payload.get("attributes") or {}, operation_id=operation_id)
        elif kind == "delete":
            self.delete(customer_id, operation_id=operation_id)
        elif kind in ("track", "track_anonymous"):
            name = payload.get("name")
            if not isinstance(name, str) or not name:
                raise DeliveryError("permanent", "stored track payload has no event name")
            data = payload.get("data")
            event_id = payload.get("id")
            timestamp = payload.get("timestamp")
            if kind == "track":
                self.track(
                    customer_id,
                    name,
                    data,
                    event_id=event_id,
                    timestamp=timestamp,
                    operation_id=operation_id,
                )
            else:
                anonymous_id = payload.get("anonymous_id") or customer_id
                self.track_anonymous(
                    str(anonymous_id),
                    name,
                    data,
                    event_id=event_id,
                    timestamp=timestamp,
                    operation_id=operation_id,
                )
        else:
            raise DeliveryError("permanent", f"unknown operation kind {str(kind)[:40]!r}")

    # ------------------------------------------------------------------ v2 batch

    def send_batch(self, items: Sequence[BatchItem]) -> list[DeliveryError | None]:
        """Send operations in one ``POST /api/v2/batch``; return one outcome per item.

        Outcomes, in the order of ``items``: ``None`` for an operation the answer accepted
        unambiguously (a 2xx other than 207, or a 207 whose every error names one item by a
        valid integer ``batch_index`` and does not name this one); a ``permanent``
        :class:`DeliveryError` (``status=400``) for one that a 207 answer rejected by its
        index; a ``transient`` :class:`DeliveryError` (``status=207``) for every other item
        of a 207 answer that is ambiguous (an error entry that names no single item, or an
        empty ``errors`` list): whether it was accepted is unknown, so it is sent again
        (identify is an upsert, events carry their ``id``, delete is idempotent). An empty
        ``items`` sends nothing.

        Raises:
            DeliveryError: For the whole request: any non-2xx answer, no answer, a 207 whose
                body cannot be read (``transient``), an operation that has no batch form
                (``track_anonymous``) or cannot be serialised, or a request over
                :data:`MAX_BATCH_REQUEST_BYTES` (``permanent``: send the operations one at a
                time instead).
        """
        if not items:
            return []
        encoded: list[bytes] = []
        for position, item in enumerate(items):
            if not batchable(item.kind):
                raise DeliveryError(
                    "permanent",
                    f"batch operation {position} ({str(item.kind)[:40]}) has no batch form; "
                    "anonymous events are sent with POST /api/v1/events",
                )
            try:
                encoded.append(_dumps(batch_item(item.kind, item.customer_id, item.payload)))
            except (TypeError, ValueError) as exc:
                raise DeliveryError(
                    "permanent",
                    f"batch operation {position} cannot be sent ({type(exc).__name__})",
                ) from None
        body = _BATCH_PREFIX + b",".join(encoded) + _BATCH_SUFFIX
        if len(body) > MAX_BATCH_REQUEST_BYTES:
            raise DeliveryError(
                "permanent",
                f"batch request is {len(body)} bytes, over the "
                f"{MAX_BATCH_REQUEST_BYTES}-byte limit",
            )
        reply = self._call(
            "POST",
            self._client.batch_url,
            body,
            what=_batch_subject(items),
            operation_id=None,
            values=set(),
        )
        outcomes: list[DeliveryError | None] = [None] * len(items)
        if reply.status != 207:
            return outcomes
        return self._batch_outcomes(reply, items, outcomes)

    def _batch_outcomes(
        self, reply: _Reply, items: Sequence[BatchItem], outcomes: list[DeliveryError | None]
    ) -> list[DeliveryError | None]:
        """Turn a 207 answer into one outcome per item (see :meth:`send_batch`).

        An item counts as delivered only when the answer says so unambiguously: every error
        entry names exactly one item by an integer ``batch_index`` within the batch, and
        there is at least one entry. Named items are ``permanent`` rejections; when any entry
        cannot be attributed (index missing, ``"0"``, ``0.0``, ``true``, out of range, not an
        object) or the list is empty, every item not named is a ``transient`` failure.
        """
        errors: Any = None
        if reply.complete:
            try:
                data = json.loads(reply.body.decode("utf-8"))
            except ValueError:
                data = None
            if isinstance(data, dict):
                errors = data.get("errors")
        if not isinstance(errors, list):
            logger.warning(
                "cio transport: 207 answer to %s is unreadable; treating the whole batch as failed",
                _batch_subject(items),
            )
            raise DeliveryError(
                "transient",
                "unreadable 207 batch response (per-operation results unknown)",
                status=207,
            )
        reasons: dict[int, list[str]] = {}
        unattributed = 0
        for entry in errors:
            index = entry.get("batch_index") if isinstance(entry, dict) else None
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(items):
                unattributed += 1
                continue
            reasons.setdefault(index, []).append(_error_text(entry) or "rejected")
        for index, texts in reasons.items():
            item = items[index]
            redact = self._redactor.with_values(_payload_values(item.kind, item.payload))
            reason = _clean_reason("rejected in batch (207): " + "; ".join(texts), redact)
            outcomes[index] = DeliveryError("permanent", reason, status=400)
            logger.info(
                "cio transport: batch operation %d (%s, %s) rejected",
                index,
                item.kind,
                _operation_text(item.operation_id),
            )
        if unattributed or not errors:
            if unattributed:
                why = (
                    f"{unattributed} of its {len(errors)} error entries name no single "
                    "operation (batch_index missing, not an integer, or out of range)"
                )
            else:
                why = "it lists no errors"
            reason = (
                f"ambiguous 207 batch answer: {why}; whether this operation was accepted is unknown"
            )
            unknown = [index for index in range(len(items)) if index not in reasons]
            for index in unknown:
                outcomes[index] = DeliveryError("transient", reason, status=207)
            logger.warning(
                "cio transport: ambiguous 207 answer to %s (%s); %d of its operations will "
                "be sent again",
                _batch_subject(items),
                "unattributable error entries" if unattributed else "no errors listed",
                len(unknown),
            )
        return outcomes

    # ------------------------------------------------------------------ credentials

    def check_credentials(self) -> dict[str, Any]:
        """Check the site id and API key with ``GET /api/v1/accounts/region``.

        Touches no person. Returns the answer, e.g.
        ``{"url": "https://track.customer.io", "data_center": "us", "environment_id": 1}``.

        Raises:
            DeliveryError: ``auth`` on 401/403; otherwise as for any request (a 2xx whose
                body is not a JSON object is ``transient``).
        """
        reply = self._call(
            "GET", self._client.region_url, None, what="region", operation_id=None, values=set()
        )
        try:
            data = json.loads(reply.body.decode("utf-8")) if reply.complete else None
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise DeliveryError(
                "transient", "unreadable answer from the region endpoint", status=reply.status
            )
        return data

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _require_id(value: str, label: str) -> None:
        if not isinstance(value, str) or not value:
            raise DeliveryError("permanent", f"empty {label}")

    @staticmethod
    def _encode(build: Callable[[], Mapping[str, Any]]) -> bytes:
        """Build and serialise a request body; a payload that cannot be sent is permanent."""
        try:
            return _dumps(build())
        except (TypeError, ValueError, AttributeError) as exc:
            raise DeliveryError(
                "permanent", f"payload is not JSON-serialisable ({type(exc).__name__})"
            ) from None

    def _call(
        self,
        method: str,
        url: str,
        body: bytes | None,
        *,
        what: str,
        operation_id: int | None,
        values: set[str],
    ) -> _Reply:
        """Send one request, once; return a 2xx reply or raise :class:`DeliveryError`.

        Log lines name the request by ``what`` and ``operation_id``: never by the customer
        id, which is in the URL and may be an e-mail address.
        """
        subject = what if operation_id is None else f"{what} of {_operation_text(operation_id)}"
        redact = self._redactor.with_values(values) if values else self._redactor
        headers = {"Content-Type": "application/json"} if body is not None else {}
        started = time.monotonic()
        limit = self.connect_timeout + self.read_timeout
        deadline = _watchdog.start(limit)
        try:
            response = self._client.http.request(
                method,
                url,
                data=body,
                headers=headers,
                timeout=(self.connect_timeout, self.read_timeout),
                allow_redirects=False,
                stream=True,
            )
            try:
                status = response.status_code
                success = 200 <= status <= 299
                cap = (
                    max(self.max_error_body_bytes, MAX_RESULT_BODY_BYTES)
                    if success
                    else (self.max_error_body_bytes)
                )
                try:
                    data, complete = _read_body(response, cap, deadline.at)
                except _HTTP_ERRORS:
                    if success:  # a 2xx counts once it is whole (a 207's results are in it)
                        raise
                    data, complete = b"", False  # the status says it all; the body is a reason
                reply = _Reply(status, dict(response.headers), data, complete)
            finally:
                response.close()  # a partly read response closes its connection
        except _HTTP_ERRORS as exc:
            passed = deadline.passed()
            kind: DeliveryErrorKind = "timeout" if passed or _is_timeout(exc) else "network"
            if passed:
                reason = (
                    f"timed out: no complete answer within {limit:g} s (connect + read timeout)"
                )
            else:
                reason = _clean_reason(_describe(exc), redact)
            logger.info(
                "cio transport: %s failed after %.0f ms: %s (%s)",
                subject,
                (time.monotonic() - started) * 1000,
                kind,
                type(exc).__name__,
            )
            raise DeliveryError(kind, reason) from None
        finally:
            _watchdog.finish(deadline)
        elapsed_ms = (time.monotonic() - started) * 1000
        if success:
            logger.debug("cio transport: %s -> HTTP %d in %.0f ms", subject, status, elapsed_ms)
            return reply
        error = self._http_error(reply, redact)
        logger.info(
            "cio transport: %s -> HTTP %d in %.0f ms: %s",
            subject,
            status,
            elapsed_ms,
            error.kind,
        )
        raise error

    def _http_error(self, reply: _Reply, redact: _Redactor) -> DeliveryError:
        status = reply.status
        headers = {key.lower(): value for key, value in reply.headers.items()}
        retry_after = parse_retry_after(headers.get("retry-after"))
        if 300 <= status <= 399:
            target = urlsplit(headers.get("location", ""))
            elsewhere = bool(target.netloc) and target.netloc != urlsplit(self.base_url).netloc
            where = " to another host" if elsewhere else ""
            reason = f"unexpected redirect{where} (not followed)"
        else:
            message = _server_message(reply.body)
            reason = _clean_reason(message, redact) if message else _phrase(status)
        return DeliveryError(
            classify_status(status), reason, status=status, retry_after=retry_after
        )


# --------------------------------------------------------------------------- per-thread cache

_local = threading.local()
_generation_lock = threading.Lock()
_generation = 0


def _settings_key() -> tuple[Any, ...]:
    settings = conf.app_settings
    return (
        settings.SITE_ID,
        settings.API_KEY,
        settings.base_url,
        settings.CONNECT_TIMEOUT,
        settings.TIMEOUT,
        settings.MAX_ERROR_BODY_BYTES,
    )


def get_transport() -> Transport:
    """Return this thread's transport, built from the current settings.

    One transport (one HTTP session) per thread and per process: a forked child never
    reuses its parent's connections (the process id is checked on every call). The cached
    transport is dropped when ``CIO_RELIABLE`` changes (``conf.on_reset``) or when the
    settings it was built from differ from the current ones.
    """
    pid = os.getpid()
    key = _settings_key()
    cached: tuple[int, int, tuple[Any, ...], Transport] | None = getattr(_local, "entry", None)
    if cached is not None:
        cached_pid, generation, cached_key, transport = cached
        if cached_pid == pid and generation == _generation and cached_key == key:
            return transport
        if cached_pid == pid:
            # Ours (this thread, this process): close its connections. A parent's session
            # inherited through fork() is left alone, the parent still uses those sockets.
            transport.close()
        _local.entry = None
    transport = Transport.from_settings()
    _local.entry = (pid, _generation, key, transport)
    return transport


def reset_transports() -> None:
    """Make every thread build a new transport on its next :func:`get_transport`."""
    global _generation
    with _generation_lock:
        _generation += 1


conf.on_reset(reset_transports)


__all__ = [
    "KINDS",
    "MAX_BATCH_ITEM_BYTES",
    "MAX_BATCH_REQUEST_BYTES",
    "MAX_REASON_CHARS",
    "MAX_RESULT_BODY_BYTES",
    "MAX_RETRY_AFTER",
    "BatchItem",
    "Kind",
    "Transport",
    "batch_item",
    "batch_item_bytes",
    "batchable",
    "classify_status",
    "get_transport",
    "parse_retry_after",
    "path_segment",
    "reset_transports",
]

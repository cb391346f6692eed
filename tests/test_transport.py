"""The transport: the only code that talks HTTP.

Two servers drive it: the real ``FakeCustomerIO`` (through the ``fake_cio`` fixture) for the
Track API's behaviour, and a tiny scriptable stdlib server defined here for what the fake
cannot express (huge or stalled error bodies, redirects to another host, malformed 207
answers, odd ``Retry-After`` values, a server that echoes the request and the credentials).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
import urllib3.exceptions
from hypothesis import given, settings
from hypothesis import strategies as st
from requests.adapters import HTTPAdapter

from django_cio_reliable import conf
from django_cio_reliable import transport as transport_module
from django_cio_reliable.exceptions import DeliveryError
from django_cio_reliable.testing import FakeCustomerIO
from django_cio_reliable.transport import (
    MAX_BATCH_ITEM_BYTES,
    MAX_BATCH_REQUEST_BYTES,
    MAX_REASON_CHARS,
    MAX_RETRY_AFTER,
    BatchItem,
    Transport,
    batch_item,
    batch_item_bytes,
    classify_status,
    get_transport,
    parse_retry_after,
)
from tests.conftest import API_KEY, SITE_ID

EVENT_ID = "01HZX3K9T1V8Q2W4E6R8T0Y2V4"
EVENT_ID_2 = "01HZX3K9T1V8Q2W4E6R8T0Y2V5"
BASIC_TOKEN = base64.b64encode(f"{SITE_ID}:{API_KEY}".encode()).decode()
SECRET_EMAIL = "jane.secret@example.org"
SECRET_PHONE = 14155552671
SECRET_BIO = "Lives at 42 Hidden Lane, Springfield; favourite colour teal; pin 9931."


# --------------------------------------------------------------------------- a scriptable server


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Responder = Callable[[BaseHTTPRequestHandler, Seen], None]


class _ScriptHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    script: ScriptServer


class _ScriptHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ScriptHTTPServer

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = Seen(self.command, self.path, dict(self.headers.items()), body)
        self.server.script.next_responder(seen)(self, seen)

    do_GET = _handle
    do_POST = _handle
    do_PUT = _handle
    do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class ScriptServer:
    """Answers each request with the next scripted responder (default: 200 ``{}``)."""

    seen: list[Seen] = field(default_factory=list)
    queue: list[Responder] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    httpd: _ScriptHTTPServer | None = None

    def __enter__(self) -> ScriptServer:
        httpd = _ScriptHTTPServer(("127.0.0.1", 0), _ScriptHandler)
        httpd.script = self
        threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        self.httpd = httpd
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.httpd is not None
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        assert self.httpd is not None
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def then(self, *responders: Responder) -> ScriptServer:
        with self.lock:
            self.queue.extend(responders)
        return self

    def next_responder(self, seen: Seen) -> Responder:
        with self.lock:
            self.seen.append(seen)
            return self.queue.pop(0) if self.queue else reply(200, {})


def reply(
    status: int,
    body: bytes | dict[str, Any] | list[Any] = b"",
    headers: Sequence[tuple[str, str]] = (),
) -> Responder:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()

    def respond(handler: BaseHTTPRequestHandler, seen: Seen) -> None:
        handler.send_response(status)
        for key, value in headers:
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return respond


def huge_body(
    status: int, total: int, *, hold: threading.Event | None = None, location: str | None = None
) -> Responder:
    """Announce ``total`` bytes of JSON error body; write them all, or 1 MB then wait."""

    def respond(handler: BaseHTTPRequestHandler, seen: Seen) -> None:
        handler.send_response(status)
        if location is not None:
            handler.send_header("Location", location)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(total))
        handler.end_headers()
        chunk = b'{"meta":{"error":"' + b"x" * (64 * 1024 - 18)
        written = 0
        limit = 1024 * 1024 if hold is not None else total
        try:
            while written < limit:
                part = chunk[: limit - written]
                handler.wfile.write(part)
                written += len(part)
            handler.wfile.flush()
            if hold is not None:
                hold.wait(10)
        except OSError:
            pass
        handler.close_connection = True

    return respond


def echo_everything(status: int = 400) -> Responder:
    """A hostile server: its error message quotes the request body and the credentials."""

    def respond(handler: BaseHTTPRequestHandler, seen: Seen) -> None:
        authorization = seen.headers.get("Authorization", "")
        decoded = base64.b64decode(authorization.split(" ", 1)[1]).decode()
        message = (
            f"invalid request {seen.body.decode()} with {authorization} ({decoded}); "
            f"prefix {SECRET_BIO[:30]}"
        )
        reply(status, {"meta": {"error": message}})(handler, seen)

    return respond


def make_transport(url: str, **overrides: Any) -> Transport:
    options: dict[str, Any] = {
        "site_id": SITE_ID,
        "api_key": API_KEY,
        "base_url": url,
        "connect_timeout": 0.5,
        "read_timeout": 0.4,
    }
    options.update(overrides)
    return Transport(**options)


@pytest.fixture
def script() -> Iterator[ScriptServer]:
    with ScriptServer() as server:
        yield server


@pytest.fixture
def over_fake(fake_cio: FakeCustomerIO) -> Iterator[Transport]:
    with make_transport(fake_cio.url) as transport:
        yield transport


def secrets_absent(error: DeliveryError, *extra: str) -> None:
    texts = [str(error), repr(error), error.reason, *map(str, error.args)]
    forbidden = [API_KEY, BASIC_TOKEN, SECRET_EMAIL, str(SECRET_PHONE), SECRET_BIO[:20], *extra]
    for text in texts:
        for secret in forbidden:
            assert secret not in text, (secret, text)


# --------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (429, "rate_limited"),
        (401, "auth"),
        (403, "auth"),
        (408, "transient"),
        (425, "transient"),
        (500, "transient"),
        (502, "transient"),
        (503, "transient"),
        (504, "transient"),
        (301, "transient"),
        (302, "transient"),
        (307, "transient"),
        (308, "transient"),
        (400, "permanent"),
        (404, "permanent"),
        (413, "permanent"),
        (422, "permanent"),
    ],
)
def test_classify_status(status: int, kind: str) -> None:
    assert classify_status(status) == kind


@given(st.integers(min_value=100, max_value=999))
def test_classify_status_follows_the_documented_rule(status: int) -> None:
    kind = classify_status(status)
    if status == 429:
        assert kind == "rate_limited"
    elif status in (401, 403):
        assert kind == "auth"
    elif 400 <= status <= 499 and status not in (408, 425):
        assert kind == "permanent"
    else:
        assert kind == "transient"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("0", 0.0),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("3600", 3600.0),
        ("3601", MAX_RETRY_AFTER),
        ("99999999999999999999999", MAX_RETRY_AFTER),
        ("-1", None),
        ("+5", None),
        ("1e309", None),
        ("1e3", None),
        ("nan", None),
        ("NaN", None),
        ("inf", None),
        ("Infinity", None),
        ("soon", None),
        ("12 seconds", None),
        ("\u0663", None),  # an Arabic-Indic digit: not HTTP's DIGIT
        ("9" * 201, None),
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
        ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),
        ("Mon, 32 Foo 2020 99:99:99 GMT", None),
    ],
)
def test_parse_retry_after_examples(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=1_700_000_000.0) == expected


def test_parse_retry_after_http_date_in_the_future() -> None:
    now = 1_700_000_000.0
    when = datetime.fromtimestamp(now + 90, tz=timezone.utc)
    assert parse_retry_after(format_datetime(when, usegmt=True), now=now) == 90.0
    far = datetime.fromtimestamp(now + 10 * 86400, tz=timezone.utc)
    assert parse_retry_after(format_datetime(far, usegmt=True), now=now) == MAX_RETRY_AFTER
    # now is Tue, 14 Nov 2023 22:13:20 GMT. The obsolete RFC 850 and asctime forms are
    # accepted too, and a zone-less date is read as UTC.
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:20 -0000", now=now) == 0.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:15:20 +0000", now=now) == 120.0
    assert parse_retry_after("Tuesday, 14-Nov-23 22:14:20 GMT", now=now) == 60.0
    assert parse_retry_after("Tue Nov 14 22:14:20 2023", now=now) == 60.0


def test_parse_retry_after_defaults_now_to_the_clock() -> None:
    when = datetime.now(timezone.utc) + timedelta(seconds=100)
    value = parse_retry_after(format_datetime(when, usegmt=True))
    assert value is not None
    assert 95 <= value <= 100


@settings(max_examples=300)
@given(st.text(max_size=60))
def test_parse_retry_after_is_always_safe(text: str) -> None:
    value = parse_retry_after(text, now=1_700_000_000.0)
    assert value is None or (math.isfinite(value) and 0.0 <= value <= MAX_RETRY_AFTER)


@given(st.integers(min_value=0, max_value=10**30))
def test_parse_retry_after_delta_seconds_are_clamped(seconds: int) -> None:
    assert parse_retry_after(str(seconds)) == min(float(seconds), MAX_RETRY_AFTER)


@given(st.integers(max_value=-1))
def test_parse_retry_after_negative_numbers_are_ignored(seconds: int) -> None:
    assert parse_retry_after(str(seconds)) is None


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_parse_retry_after_any_float_text_is_safe(number: float) -> None:
    value = parse_retry_after(repr(number))
    assert value is None or (math.isfinite(value) and 0.0 <= value <= MAX_RETRY_AFTER)
    text = repr(number)
    if math.isfinite(number) and not text.startswith("-") and "e" not in text:
        assert value == pytest.approx(min(number, MAX_RETRY_AFTER))


@given(
    when=st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(2200, 1, 1),
        timezones=st.just(timezone.utc),
    ).map(lambda d: d.replace(microsecond=0)),
    now=st.floats(min_value=0, max_value=7_000_000_000),
)
def test_parse_retry_after_http_dates(when: datetime, now: float) -> None:
    value = parse_retry_after(format_datetime(when, usegmt=True), now=now)
    expected = min(max(when.timestamp() - now, 0.0), MAX_RETRY_AFTER)
    assert value == pytest.approx(expected, abs=1e-6)


def test_batch_item_shapes() -> None:
    assert batch_item("identify", "42", {"attributes": {"email": "a@example.com"}}) == {
        "type": "person",
        "identifiers": {"id": "42"},
        "action": "identify",
        "attributes": {"email": "a@example.com"},
    }
    assert batch_item(
        "track", "42", {"name": "paid", "data": {"total": 3}, "id": EVENT_ID, "timestamp": 1700}
    ) == {
        "type": "person",
        "identifiers": {"id": "42"},
        "action": "event",
        "name": "paid",
        "attributes": {"total": 3},
        "id": EVENT_ID,
        "timestamp": 1700,
    }
    # Anonymous events have no v2 form (Customer.io's v2 person identifiers are id, email,
    # phone or cio_id): they only go through POST /api/v1/events.
    with pytest.raises(ValueError, match="anonymous"):
        batch_item(
            "track_anonymous",
            "anon-1",
            {"anonymous_id": "anon-1", "name": "viewed", "data": {}, "id": EVENT_ID},
        )
    assert batch_item("delete", "42", {}) == {
        "type": "person",
        "identifiers": {"id": "42"},
        "action": "delete",
    }


def test_batch_item_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="unknown operation kind"):
        batch_item("merge", "42", {})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="event name"):
        batch_item("track", "42", {"data": {}})


def test_batch_item_bytes_is_the_compact_utf8_size() -> None:
    payload = {"name": "café", "data": {"note": "naïve ☃"}, "id": EVENT_ID}
    expected = json.dumps(
        batch_item("track", "42", payload), separators=(",", ":"), ensure_ascii=False
    ).encode()
    assert batch_item_bytes("track", "42", payload) == len(expected)


def test_batch_item_bytes_sends_unserialisable_payloads_alone() -> None:
    bad = {"name": "x", "data": {"ratio": float("inf")}}
    assert batch_item_bytes("track", "42", bad) > MAX_BATCH_ITEM_BYTES
    assert batch_item_bytes("bogus", "42", {}) > MAX_BATCH_ITEM_BYTES  # type: ignore[arg-type]


def test_batch_caps_are_the_conservative_reading_of_customer_ios_docs() -> None:
    assert MAX_BATCH_REQUEST_BYTES == 500_000
    assert MAX_BATCH_ITEM_BYTES == 32_000


# --------------------------------------------------------------------------- construction, URLs


def test_repr_and_str_never_show_the_key() -> None:
    transport = make_transport("https://track.customer.io")
    for text in (repr(transport), str(transport), repr(transport._client)):
        assert API_KEY not in text
        assert BASIC_TOKEN not in text
    assert "track.customer.io" in repr(transport)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://track.customer.io",
        "track.customer.io",
        "http://",
        f"https://{SITE_ID}:{API_KEY}@track.customer.io",
        "https://track.customer.io/?x=1",
        "https://track.customer.io:99999",
    ],
)
def test_bad_base_urls_are_refused_without_echoing_secrets(url: str) -> None:
    with pytest.raises(ValueError) as info:
        make_transport(url)
    assert API_KEY not in str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [
        {"connect_timeout": 0},
        {"read_timeout": -1},
        {"read_timeout": float("nan")},
        {"connect_timeout": float("inf")},
        {"max_error_body_bytes": 0},
        {"max_error_body_bytes": 1.5},
    ],
)
def test_bad_limits_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make_transport("https://track.customer.io", **overrides)


def test_urls_follow_region_and_track_url(settings: Any) -> None:
    base = {"SITE_ID": SITE_ID, "API_KEY": API_KEY}
    settings.CIO_RELIABLE = {**base, "REGION": "eu"}
    client = Transport.from_settings()._client
    assert client.get_customer_query_string("a b/c") == (
        "https://track-eu.customer.io/api/v1/customers/a%20b%2Fc"
    )
    assert client.batch_url == "https://track-eu.customer.io/api/v2/batch"
    settings.CIO_RELIABLE = {**base, "REGION": "us"}
    client = Transport.from_settings()._client
    assert client.get_event_query_string("42") == (
        "https://track.customer.io/api/v1/customers/42/events"
    )
    assert client.region_url == "https://track.customer.io/api/v1/accounts/region"
    settings.CIO_RELIABLE = {**base, "TRACK_URL": "http://127.0.0.1:8765/"}
    client = Transport.from_settings()._client
    assert client.get_events_query_string() == "http://127.0.0.1:8765/api/v1/events"
    assert client.batch_url == "http://127.0.0.1:8765/api/v2/batch"
    settings.CIO_RELIABLE = {**base, "TRACK_URL": "http://proxy.internal:8080/cio"}
    client = Transport.from_settings()._client
    assert (
        client.get_customer_query_string("7") == "http://proxy.internal:8080/cio/api/v1/customers/7"
    )


def test_from_settings_reads_timeouts_and_caps(settings: Any) -> None:
    settings.CIO_RELIABLE = {
        "SITE_ID": "s",
        "API_KEY": "k",
        "TIMEOUT": 2.5,
        "CONNECT_TIMEOUT": 0.75,
        "MAX_ERROR_BODY_BYTES": 1234,
    }
    transport = Transport.from_settings()
    assert (transport.connect_timeout, transport.read_timeout) == (0.75, 2.5)
    assert transport.max_error_body_bytes == 1234
    assert transport.site_id == "s"


def test_session_has_no_retries_and_no_redirects() -> None:
    session = make_transport("https://track.customer.io")._client.http
    for prefix in ("http://", "https://"):
        adapter = session.adapters[prefix]
        assert isinstance(adapter, HTTPAdapter)
        retries = adapter.max_retries
        assert retries.total == 0
        assert retries.respect_retry_after_header is False
        assert not retries.status_forcelist
    assert session.get_redirect_target(requests.Response()) is None
    assert session.auth == (SITE_ID, API_KEY)


# --------------------------------------------------------------------------- against FakeCustomerIO


def test_each_v1_call_arrives_with_path_auth_and_body(
    fake_cio: FakeCustomerIO, over_fake: Transport
) -> None:
    over_fake.identify("user 1", {"email": "a@example.com", "plan": "pro"})
    over_fake.track(
        "user 1", "order_placed", {"total": 42}, event_id=EVENT_ID, timestamp=1700000000
    )
    over_fake.track_anonymous("anon-9", "page_viewed", {"path": "/"}, event_id=EVENT_ID_2)
    over_fake.delete("user 1")

    requests_ = fake_cio.requests
    assert [(r.method, r.path, r.status) for r in requests_] == [
        ("PUT", "/api/v1/customers/user%201", 200),
        ("POST", "/api/v1/customers/user%201/events", 200),
        ("POST", "/api/v1/events", 200),
        ("DELETE", "/api/v1/customers/user%201", 200),
    ]
    assert requests_[0].body == {"email": "a@example.com", "plan": "pro"}
    assert requests_[1].body == {
        "name": "order_placed",
        "data": {"total": 42},
        "id": EVENT_ID,
        "timestamp": 1700000000,
    }
    assert requests_[2].body == {
        "name": "page_viewed",
        "data": {"path": "/"},
        "id": EVENT_ID_2,
        "anonymous_id": "anon-9",
    }
    assert requests_[3].body is None
    assert requests_[0].headers["Content-Type"] == "application/json"
    assert requests_[0].headers["User-Agent"].startswith("django-cio-reliable/")
    assert "Authorization" not in requests_[0].headers  # the fake never records it...
    # ...but it checked it: every request was accepted, so Basic site:key was sent.
    receipts = fake_cio.receipts
    assert [(r.kind, r.customer_id, r.name, r.event_id, r.via) for r in receipts] == [
        ("identify", "user 1", None, None, "v1"),
        ("track", "user 1", "order_placed", EVENT_ID, "v1"),
        ("track_anonymous", "anon-9", "page_viewed", EVENT_ID_2, "v1"),
        ("delete", "user 1", None, None, "v1"),
    ]


def test_send_dispatches_stored_operations(fake_cio: FakeCustomerIO, over_fake: Transport) -> None:
    over_fake.send("identify", "7", {"attributes": {"plan": "pro"}})
    over_fake.send("track", "7", {"name": "paid", "data": {"n": 1}, "id": EVENT_ID, "timestamp": 5})
    over_fake.send(
        "track_anonymous",
        "anon-7",
        {"anonymous_id": "anon-7", "name": "seen", "data": {}, "id": EVENT_ID_2},
    )
    over_fake.send("delete", "7", {})
    receipts = fake_cio.receipts
    assert [(r.kind, r.customer_id, r.event_id, r.timestamp) for r in receipts] == [
        ("identify", "7", None, None),
        ("track", "7", EVENT_ID, 5),
        ("track_anonymous", "anon-7", EVENT_ID_2, None),
        ("delete", "7", None, None),
    ]
    assert fake_cio.people() == {}


def test_resending_an_event_is_deduplicated_by_its_id(
    fake_cio: FakeCustomerIO, over_fake: Transport
) -> None:
    for _ in range(2):
        over_fake.send("track", "7", {"name": "paid", "data": {}, "id": EVENT_ID})
    assert len(fake_cio.applied()) == 1
    assert len(fake_cio.duplicates()) == 1


def test_unsendable_operations_are_permanent_and_never_sent(
    fake_cio: FakeCustomerIO, over_fake: Transport
) -> None:
    cases: list[tuple[Any, str, dict[str, Any]]] = [
        ("merge", "7", {}),
        ("track", "7", {"data": {}}),
        ("track", "", {"name": "x"}),
        ("identify", "", {"attributes": {}}),
        ("track", "7", {"name": "x", "data": {"ratio": float("inf")}}),
        ("identify", "7", {"attributes": {"obj": object()}}),
        ("identify", "7", {"attributes": ["not", "an", "object"]}),
        ("track", "7", {"name": "x", "data": "not an object"}),
        ("track_anonymous", "a", {"name": "x", "data": [1, 2]}),
    ]
    for kind, customer_id, payload in cases:
        with pytest.raises(DeliveryError) as info:
            over_fake.send(kind, customer_id, payload)
        assert info.value.kind == "permanent"
        assert info.value.status is None
    assert fake_cio.request_count == 0


def test_a_batch_arrives_as_v2_person_operations(
    fake_cio: FakeCustomerIO, over_fake: Transport
) -> None:
    items = [
        BatchItem("identify", "1", {"attributes": {"email": "one@example.com"}}),
        BatchItem("track", "1", {"name": "paid", "data": {"total": 3}, "id": EVENT_ID}),
        BatchItem("track", "3", {"name": "seen", "data": {}, "id": EVENT_ID_2}),
        BatchItem("delete", "2", {}),
    ]
    assert over_fake.send_batch(items) == [None, None, None, None]
    (request,) = fake_cio.requests
    assert (request.method, request.path, request.status) == ("POST", "/api/v2/batch", 200)
    assert request.body == {"batch": [batch_item(i.kind, i.customer_id, i.payload) for i in items]}
    assert [
        (r.kind, r.customer_id, r.event_id, r.via, r.batch_index) for r in fake_cio.receipts
    ] == [
        ("identify", "1", None, "v2", 0),
        ("track", "1", EVENT_ID, "v2", 1),
        ("track", "3", EVENT_ID_2, "v2", 2),
        ("delete", "2", None, "v2", 3),
    ]


def test_a_207_gives_per_item_outcomes(fake_cio: FakeCustomerIO, over_fake: Transport) -> None:
    fake_cio.reject_batch_items([1, 3], field="attributes.plan", message="plan is not allowed")
    items = [BatchItem("identify", str(n), {"attributes": {"plan": "pro"}}) for n in range(4)]
    outcomes = over_fake.send_batch(items)
    assert outcomes[0] is None and outcomes[2] is None
    for error in (outcomes[1], outcomes[3]):
        assert isinstance(error, DeliveryError)
        assert error.kind == "permanent"
        assert error.status == 400
        assert "plan is not allowed" in error.reason
        assert "attributes.plan" in error.reason
    assert sorted(r.customer_id or "" for r in fake_cio.applied()) == ["0", "2"]
    assert fake_cio.request_count == 1


def test_an_invalid_batch_item_is_reported_by_the_real_validation(
    fake_cio: FakeCustomerIO, over_fake: Transport
) -> None:
    too_long = "x" * 1001
    outcomes = over_fake.send_batch(
        [
            BatchItem("identify", "1", {"attributes": {"bio": too_long}}),
            BatchItem("identify", "2", {"attributes": {"bio": "ok"}}),
        ]
    )
    assert outcomes[1] is None
    error = outcomes[0]
    assert isinstance(error, DeliveryError)
    assert "1000 bytes" in error.reason
    assert too_long[:30] not in error.reason


def test_empty_and_oversized_batches_send_nothing(
    fake_cio: FakeCustomerIO, over_fake: Transport
) -> None:
    assert over_fake.send_batch([]) == []
    big = {"attributes": {f"a{n}": "v" * 900 for n in range(30)}}
    items = [BatchItem("identify", str(n), big) for n in range(20)]
    with pytest.raises(DeliveryError) as info:
        over_fake.send_batch(items)
    assert info.value.kind == "permanent"
    assert str(MAX_BATCH_REQUEST_BYTES) in info.value.reason
    with pytest.raises(DeliveryError) as info:
        over_fake.send_batch([BatchItem("track", "1", {"name": "x", "data": {"r": math.inf}})])
    assert info.value.kind == "permanent"
    assert fake_cio.request_count == 0


def test_rate_limited_with_retry_after(fake_cio: FakeCustomerIO, over_fake: Transport) -> None:
    fake_cio.fail_next(1, status=429, retry_after=30)
    started = time.monotonic()
    with pytest.raises(DeliveryError) as info:
        over_fake.track("1", "paid", {}, event_id=EVENT_ID)
    assert time.monotonic() - started < 1.0  # no sleeping on Retry-After
    assert (info.value.kind, info.value.status, info.value.retry_after) == (
        "rate_limited",
        429,
        30.0,
    )
    assert fake_cio.request_count == 1


def test_retry_after_as_an_http_date(fake_cio: FakeCustomerIO, over_fake: Transport) -> None:
    fake_cio.fail_next(
        1, status=503, retry_after=datetime.now(timezone.utc) + timedelta(seconds=120)
    )
    with pytest.raises(DeliveryError) as info:
        over_fake.delete("1")
    assert info.value.retry_after is not None
    assert 110 <= info.value.retry_after <= 120


def test_wrong_credentials_are_auth_errors(fake_cio: FakeCustomerIO) -> None:
    with make_transport(fake_cio.url, api_key="not-the-key") as transport:
        with pytest.raises(DeliveryError) as info:
            transport.identify("1", {"plan": "pro"})
        assert (info.value.kind, info.value.status) == ("auth", 401)
        assert info.value.reason == "Unauthorized request"
        with pytest.raises(DeliveryError) as info:
            transport.check_credentials()
        assert info.value.kind == "auth"
    fake_cio.fail_next(1, status=403)
    with make_transport(fake_cio.url) as transport, pytest.raises(DeliveryError) as info:
        transport.check_credentials()
    assert (info.value.kind, info.value.status) == ("auth", 403)


def test_check_credentials_returns_the_region(
    fake_cio: FakeCustomerIO, over_fake: Transport
) -> None:
    answer = over_fake.check_credentials()
    assert answer["data_center"] == "us"
    (request,) = fake_cio.requests
    assert (request.method, request.path) == ("GET", "/api/v1/accounts/region")
    assert fake_cio.receipts == []


def test_a_400_is_permanent_with_the_servers_message(
    fake_cio: FakeCustomerIO, over_fake: Transport
) -> None:
    with pytest.raises(DeliveryError) as info:
        over_fake.identify("1", {f"attr{n}": n for n in range(301)})
    assert (info.value.kind, info.value.status) == ("permanent", 400)
    assert "cannot identify more than 300 attributes" in info.value.reason
    assert not info.value.is_transient


def test_a_503_is_transient_and_not_retried(fake_cio: FakeCustomerIO, over_fake: Transport) -> None:
    fake_cio.fail_next(1, status=503, retry_after=2)
    started = time.monotonic()
    with pytest.raises(DeliveryError) as info:
        over_fake.track("1", "paid", {}, event_id=EVENT_ID)
    assert time.monotonic() - started < 1.0
    assert (info.value.kind, info.value.status, info.value.retry_after) == ("transient", 503, 2.0)
    assert fake_cio.request_count == 1
    assert fake_cio.receipts == []
    over_fake.track("1", "paid", {}, event_id=EVENT_ID)  # the next call goes through
    assert fake_cio.request_count == 2


@pytest.mark.parametrize("status", [500, 502, 504])
def test_batch_5xx_is_one_error_for_the_request(
    fake_cio: FakeCustomerIO, over_fake: Transport, status: int
) -> None:
    fake_cio.fail_next(1, status=status)
    with pytest.raises(DeliveryError) as info:
        over_fake.send_batch([BatchItem("delete", "1", {}), BatchItem("delete", "2", {})])
    assert (info.value.kind, info.value.status) == ("transient", status)
    assert fake_cio.request_count == 1


def test_the_packages_own_methods_are_made_safe_too(
    fake_cio: FakeCustomerIO, over_fake: Transport
) -> None:
    fake_cio.fail_next(1, status=500)
    with pytest.raises(DeliveryError) as info:
        over_fake._client.identify("1", email=SECRET_EMAIL)
    assert info.value.kind == "transient"
    assert fake_cio.request_count == 1
    secrets_absent(info.value)


def test_a_hang_past_the_read_timeout_is_a_timeout(
    fake_cio: FakeCustomerIO, over_fake: Transport
) -> None:
    fake_cio.hang_next(1, seconds=5)
    started = time.monotonic()
    with pytest.raises(DeliveryError) as info:
        over_fake.delete("1")
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 2.0
    assert (info.value.kind, info.value.status) == ("timeout", None)
    assert "timed out" in info.value.reason.lower()
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert fake_cio.request_count == 1


def test_a_connection_reset_is_a_network_error(
    fake_cio: FakeCustomerIO, over_fake: Transport
) -> None:
    fake_cio.reset_next(1)
    with pytest.raises(DeliveryError) as info:
        over_fake.identify("1", {"plan": "pro"})
    assert (info.value.kind, info.value.status) == ("network", None)
    assert info.value.reason.startswith("ProtocolError")
    assert fake_cio.request_count == 1  # urllib3 would have retried a reset by default
    over_fake.identify("1", {"plan": "pro"})  # a fresh connection afterwards
    assert fake_cio.request_count == 2


def test_a_closed_port_is_a_network_error() -> None:
    server = ScriptServer().__enter__()
    url = server.url
    server.__exit__()
    with pytest.raises(DeliveryError) as info:
        make_transport(url).delete("1")
    assert info.value.kind == "network"
    assert "Connection refused" in info.value.reason or "NewConnectionError" in info.value.reason


def _max_retry(reason: Exception) -> requests.ConnectionError:
    """What requests raises when urllib3 (with no retries left) gives up on ``reason``."""
    return requests.ConnectionError(
        urllib3.exceptions.MaxRetryError(None, "/x", reason)  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("exc", "kind", "prefix"),
    [
        (requests.ConnectTimeout("connect timed out"), "timeout", "ConnectTimeout"),
        (requests.ReadTimeout("read timed out"), "timeout", "ReadTimeout"),
        (
            _max_retry(urllib3.exceptions.ReadTimeoutError(None, "/x", "Read timed out.")),  # type: ignore[arg-type]
            "timeout",
            "ReadTimeoutError: ",
        ),
        (requests.ConnectionError("refused"), "network", "ConnectionError: refused"),
        (
            _max_retry(urllib3.exceptions.NewConnectionError(None, "refused")),  # type: ignore[arg-type]
            "network",
            "NewConnectionError",
        ),
        (requests.exceptions.ChunkedEncodingError("broken"), "network", "ChunkedEncodingError"),
        (requests.exceptions.SSLError("bad certificate"), "network", "SSLError"),
        (ConnectionResetError(104, "reset"), "network", "ConnectionResetError"),
        (urllib3.exceptions.ProtocolError("aborted"), "network", "ProtocolError"),
    ],
)
def test_transport_exceptions_are_classified(
    monkeypatch: pytest.MonkeyPatch, exc: BaseException, kind: str, prefix: str
) -> None:
    transport = make_transport("http://127.0.0.1:9")
    session = transport._client.http

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise exc

    monkeypatch.setattr(session, "request", boom)
    with pytest.raises(DeliveryError) as info:
        transport.track("1", "paid", {"email": SECRET_EMAIL})
    assert info.value.kind == kind
    assert info.value.status is None
    assert info.value.reason.startswith(prefix)
    secrets_absent(info.value)


# --------------------------------------------------------------------------- secrets and PII


def _secret_payload() -> dict[str, Any]:
    return {"email": SECRET_EMAIL, "phone": SECRET_PHONE, "bio": SECRET_BIO, "plan": "pro"}


def test_errors_never_contain_the_key_or_payload_even_when_echoed(
    script: ScriptServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="django_cio_reliable")
    transport = make_transport(script.url)
    script.then(*(echo_everything(status) for status in (400, 500, 429, 400)))
    errors: list[DeliveryError] = []
    calls: list[Callable[[], None]] = [
        lambda: transport.identify("1", _secret_payload()),
        lambda: transport.track("1", "paid", _secret_payload(), event_id=EVENT_ID),
        lambda: transport.track_anonymous("anon", "seen", {"nested": [_secret_payload()]}),
        lambda: transport.send("identify", "1", {"attributes": _secret_payload()}),
    ]
    for call in calls:
        with pytest.raises(DeliveryError) as info:
            call()
        errors.append(info.value)
    # The server really did echo everything: the raw bodies would have leaked it.
    assert SECRET_EMAIL.encode() in script.seen[0].body
    for error in errors:
        secrets_absent(error)
        assert "invalid request" in error.reason  # the server's message, redacted
        assert len(error.reason) <= MAX_REASON_CHARS
    for record in caplog.records:
        text = record.getMessage()
        for secret in (API_KEY, BASIC_TOKEN, SECRET_EMAIL, str(SECRET_PHONE), SECRET_BIO[:20]):
            assert secret not in text


def test_errors_from_the_fake_never_contain_the_key_or_payload(
    fake_cio: FakeCustomerIO, over_fake: Transport
) -> None:
    echo = f"key {API_KEY} site {SITE_ID} email {SECRET_EMAIL} phone {SECRET_PHONE}"
    fake_cio.fail_next(1, status=400, body={"meta": {"error": echo}})
    with pytest.raises(DeliveryError) as info:
        over_fake.identify("1", _secret_payload())
    secrets_absent(info.value, SITE_ID)
    assert info.value.reason.startswith("key ***")
    fake_cio.fail_next(1, status=400, body={"meta": {"errors": [echo, "second problem"]}})
    with pytest.raises(DeliveryError) as info:
        over_fake.identify("1", _secret_payload())
    secrets_absent(info.value)
    assert "second problem" in info.value.reason
    # A key echoed only in part is still removed.
    fake_cio.fail_next(1, status=401, body={"meta": {"error": f"bad key {API_KEY[:12]}..."}})
    with pytest.raises(DeliveryError) as info:
        over_fake.delete("1")
    assert API_KEY[:12] not in info.value.reason


def test_batch_item_reasons_are_redacted(fake_cio: FakeCustomerIO, over_fake: Transport) -> None:
    fake_cio.reject_batch_items(
        [0], field="attributes.email", message=f"bad {SECRET_EMAIL} {API_KEY}"
    )
    (error,) = over_fake.send_batch([BatchItem("identify", "1", {"attributes": _secret_payload()})])
    assert isinstance(error, DeliveryError)
    secrets_absent(error)
    assert "attributes.email" in error.reason


def test_non_json_error_bodies_are_never_echoed(script: ScriptServer) -> None:
    page = f"<html>upstream error for {SECRET_EMAIL} / {API_KEY}</html>".encode()
    script.then(reply(502, page, [("Content-Type", "text/html")]))
    with pytest.raises(DeliveryError) as info:
        make_transport(script.url).identify("1", _secret_payload())
    assert (info.value.kind, info.value.reason) == ("transient", "Bad Gateway")


def test_long_server_messages_are_cut(script: ScriptServer) -> None:
    script.then(reply(400, {"meta": {"error": "word " * 1000}}))
    with pytest.raises(DeliveryError) as info:
        make_transport(script.url).delete("1")
    assert len(info.value.reason) <= MAX_REASON_CHARS
    assert info.value.reason.endswith("...")


def test_v2_error_shape_is_understood(script: ScriptServer) -> None:
    script.then(
        reply(400, {"errors": [{"reason": "invalid", "field": "batch", "message": "empty"}]})
    )
    with pytest.raises(DeliveryError) as info:
        make_transport(script.url).send_batch([BatchItem("delete", "1", {})])
    assert info.value.reason == "empty (field batch, reason invalid)"
    assert info.value.kind == "permanent"


# --------------------------------------------------------------------------- the scriptable server


def test_the_wire_format(script: ScriptServer) -> None:
    transport = make_transport(script.url)
    items = [
        BatchItem("identify", "1", {"attributes": {"name": "Zoë"}}),
        BatchItem("track", "1", {"name": "paid", "data": {"total": 1.5}, "id": EVENT_ID}),
    ]
    transport.send_batch(items)
    transport.delete("1")
    batch, delete = script.seen
    assert batch.headers["Authorization"] == f"Basic {BASIC_TOKEN}"
    assert batch.headers["Content-Type"] == "application/json"
    assert batch.headers["Accept-Encoding"] == "identity"
    sizes = [batch_item_bytes(i.kind, i.customer_id, i.payload) for i in items]
    assert len(batch.body) == len(b'{"batch":[]}') + sum(sizes) + len(items) - 1
    assert "Zoë".encode() in batch.body  # UTF-8, not \u escapes: sizes are what is sent
    assert delete.method == "DELETE" and delete.body == b""
    assert "Content-Type" not in delete.headers


def test_a_10_mb_error_body_is_not_read_whole(
    script: ScriptServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[tuple[int, bool]] = []
    original = transport_module._read_body

    def spy(response: requests.Response, cap: int, deadline: float) -> tuple[bytes, bool]:
        data, complete = original(response, cap, deadline)
        reads.append((len(data), complete))
        return data, complete

    monkeypatch.setattr(transport_module, "_read_body", spy)
    script.then(huge_body(500, 10 * 1024 * 1024))
    transport = make_transport(script.url, max_error_body_bytes=4096, read_timeout=5)
    started = time.monotonic()
    with pytest.raises(DeliveryError) as info:
        transport.identify("1", {"plan": "pro"})
    assert time.monotonic() - started < 2.0
    assert reads == [(4096, False)]
    assert (info.value.kind, info.value.status, info.value.reason) == (
        "transient",
        500,
        "Internal Server Error",
    )


def test_a_stalled_error_body_is_not_waited_for(script: ScriptServer) -> None:
    # 10 MB announced, 1 MB sent, then silence: reading it whole would block for the
    # whole read timeout (5 s); reading the first 64 KB returns at once.
    hold = threading.Event()
    script.then(huge_body(503, 10 * 1024 * 1024, hold=hold))
    transport = make_transport(script.url, read_timeout=5)
    started = time.monotonic()
    try:
        with pytest.raises(DeliveryError) as info:
            transport.track("1", "paid", {})
        assert time.monotonic() - started < 2.5
    finally:
        hold.set()
    assert (info.value.kind, info.value.status) == ("transient", 503)


def test_redirects_are_errors_and_never_followed(script: ScriptServer) -> None:
    with ScriptServer() as elsewhere:
        script.then(
            reply(307, b"", [("Location", f"{elsewhere.url}/api/v1/customers/1")]),
            reply(301, b"", [("Location", "/api/v1/customers/2")]),
        )
        transport = make_transport(script.url)
        with pytest.raises(DeliveryError) as info:
            transport.identify("1", {"plan": "pro"})
        assert (info.value.kind, info.value.status) == ("transient", 307)
        assert info.value.reason == "unexpected redirect to another host (not followed)"
        with pytest.raises(DeliveryError) as info:
            transport.track("1", "paid", {})
        assert info.value.reason == "unexpected redirect (not followed)"
        assert elsewhere.seen == []
        assert len(script.seen) == 2


def test_a_redirects_body_is_not_read(script: ScriptServer) -> None:
    # requests reads a whole 3xx body to prepare the next hop unless told not to.
    hold = threading.Event()
    script.then(huge_body(302, 10 * 1024 * 1024, hold=hold, location="http://elsewhere.invalid/"))
    transport = make_transport(script.url, read_timeout=5)
    started = time.monotonic()
    try:
        with pytest.raises(DeliveryError) as info:
            transport.delete("1")
        assert time.monotonic() - started < 2.5
    finally:
        hold.set()
    assert (info.value.kind, info.value.status) == ("transient", 302)
    assert "another host" in info.value.reason


def test_a_207_with_bad_indexes_makes_the_unnamed_items_transient(
    script: ScriptServer, caplog: pytest.LogCaptureFixture
) -> None:
    # An item is delivered only when the answer says so unambiguously: entries that name no
    # single item leave every item not named unknown, so those are sent again.
    caplog.set_level(logging.WARNING, logger="django_cio_reliable")
    errors: list[Any] = [
        {"batch_index": 7, "reason": "invalid", "message": "out of range"},
        {"batch_index": -1, "message": "negative"},
        {"batch_index": "1", "message": "a string"},
        {"batch_index": True, "message": "a boolean"},
        {"message": "no index"},
        "not an object",
        None,
        {"batch_index": 1, "reason": "invalid", "field": "name", "message": "bad name"},
        {"batch_index": 1, "reason": "required", "field": "id", "message": "no id"},
    ]
    script.then(reply(207, {"errors": errors}))
    items = [BatchItem("delete", "1", {}), BatchItem("delete", "2", {})]
    outcomes = make_transport(script.url).send_batch(items)
    unknown = outcomes[0]
    assert isinstance(unknown, DeliveryError)
    assert (unknown.kind, unknown.status) == ("transient", 207)
    assert unknown.reason.startswith("ambiguous 207 batch answer: 7 of its 9 error entries")
    error = outcomes[1]
    assert isinstance(error, DeliveryError)
    assert (error.kind, error.status) == ("permanent", 400)
    assert error.reason == (
        "rejected in batch (207): bad name (field name, reason invalid); "
        "no id (field id, reason required)"
    )
    assert sum("ambiguous" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", b'{"errors": "nope"}', b"", b'{"meta": {}}'],
)
def test_an_unreadable_207_fails_the_whole_batch_transiently(
    script: ScriptServer, body: bytes
) -> None:
    script.then(reply(207, body))
    with pytest.raises(DeliveryError) as info:
        make_transport(script.url).send_batch([BatchItem("delete", "1", {})])
    assert (info.value.kind, info.value.status) == ("transient", 207)


def test_a_207_without_errors_is_ambiguous_and_a_202_accepts_everything(
    script: ScriptServer,
) -> None:
    # A 207 ("some failed") that names no failure contradicts itself: nothing is known.
    script.then(reply(207, {"errors": []}), reply(202, b""))
    transport = make_transport(script.url)
    [unknown] = transport.send_batch([BatchItem("delete", "1", {})])
    assert isinstance(unknown, DeliveryError)
    assert (unknown.kind, unknown.status) == ("transient", 207)
    assert "lists no errors" in unknown.reason
    assert transport.send_batch([BatchItem("delete", "1", {})]) == [None]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("-1", None),
        ("1e309", None),
        ("garbage", None),
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
        ("86400", MAX_RETRY_AFTER),
        ("15", 15.0),
    ],
)
def test_retry_after_on_the_wire(script: ScriptServer, header: str, expected: float | None) -> None:
    script.then(reply(503, b"", [("Retry-After", header)]))
    with pytest.raises(DeliveryError) as info:
        make_transport(script.url).delete("1")
    assert info.value.retry_after == expected


def test_check_credentials_refuses_an_unreadable_answer(script: ScriptServer) -> None:
    script.then(reply(200, b"<html>"))
    with pytest.raises(DeliveryError) as info:
        make_transport(script.url).check_credentials()
    assert info.value.kind == "transient"


def test_keep_alive_reuses_one_connection(fake_cio: FakeCustomerIO, over_fake: Transport) -> None:
    for n in range(3):
        over_fake.delete(str(n))
    assert len({r.connection_id for r in fake_cio.requests}) == 1


# --------------------------------------------------------------------------- per thread and process


def test_get_transport_is_cached_per_thread(fake_cio: FakeCustomerIO) -> None:
    main = get_transport()
    assert get_transport() is main
    assert main.base_url == fake_cio.url
    others: list[Transport] = []
    threads = [threading.Thread(target=lambda: others.append(get_transport())) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(t) for t in [main, *others]}) == 4
    assert len({id(t._client.http) for t in [main, *others]}) == 4


def test_get_transport_follows_settings_changes(settings: Any, fake_cio: FakeCustomerIO) -> None:
    first = get_transport()
    session = first._client.http
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "TIMEOUT": 1.25}
    second = get_transport()
    assert second is not first
    assert second.read_timeout == 1.25
    assert first._client._current_session is None and session is not None  # closed
    conf.reset()
    assert get_transport() is not second


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_builds_its_own_session(fake_cio: FakeCustomerIO) -> None:
    parent = get_transport()
    parent.identify("parent-1", {"n": 1})
    parent_connection = fake_cio.requests[-1].connection_id
    parent_session = id(parent._client.http)
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads (the fake's).
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            child = get_transport()
            fresh = child is not parent and id(child._client.http) != parent_session
            child.identify("child-1", {"n": 2})
            os.write(write_end, b"fresh" if fresh else b"shared")
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    message = os.read(read_end, 100)
    os.close(read_end)
    assert os.waitstatus_to_exitcode(status) == 0
    assert message == b"fresh"
    parent.identify("parent-2", {"n": 3})
    by_path = {r.path: r.connection_id for r in fake_cio.requests}
    assert by_path["/api/v1/customers/child-1"] != parent_connection
    assert by_path["/api/v1/customers/parent-2"] == parent_connection
    assert get_transport() is parent

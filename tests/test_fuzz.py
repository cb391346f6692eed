"""Hostile input: the public API and the transport's response parsing, fuzzed with hypothesis.

Every API call either stores one operation and returns it, or raises ``InvalidOperation`` and
stores nothing. Whatever Customer.io (or something in between) answers, the transport raises
nothing but ``DeliveryError`` and no operation is left stuck.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import django_cio_reliable as cio
from django_cio_reliable import outbox
from django_cio_reliable.exceptions import DeliveryError, InvalidOperation
from django_cio_reliable.models import DeliveryState, IdempotencyKey, Operation
from django_cio_reliable.testing import FakeCustomerIO
from django_cio_reliable.transport import (
    MAX_RETRY_AFTER,
    BatchItem,
    Transport,
    _Reply,
    _server_message,
    get_transport,
    parse_retry_after,
)

pytestmark = pytest.mark.django_db

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FUZZ_HTTP = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def no_send(no_kick: FakeCustomerIO, settings: Any) -> None:
    settings.CIO_RELIABLE = {
        **settings.CIO_RELIABLE,
        "RATE_LIMIT": 100_000,
        "BREAKER_CONSECUTIVE_FAILURES": 0,
        "BREAKER_MINIMUM_CALLS": 100_000,
    }


# --------------------------------------------------------------------------- the public API

hostile_ids = st.one_of(
    st.text(max_size=200),
    st.integers(),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True),
    st.binary(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.sampled_from(["id\x00", "\x00", "a\ud800"]),  # NUL: PostgreSQL cannot store it
)
plain_ids = st.one_of(st.text(min_size=1, max_size=30), st.integers(min_value=0, max_value=10**12))
ids = st.one_of(plain_ids, plain_ids, hostile_ids)
names = st.one_of(
    st.text(min_size=1, max_size=30),
    st.text(max_size=130),
    st.integers(),
    st.none(),
    st.binary(max_size=5),
    st.just("order\x00placed"),
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=60),
    st.binary(max_size=10),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.datetimes(),
    st.datetimes(timezones=st.just(timezone.utc)),
    st.sampled_from([object(), {1, 2}, Decimal("1e400"), "x" * 1100, 10**400, "v\x00", "\ud800"]),
)
keys = st.one_of(st.text(max_size=160), st.integers(), st.booleans(), st.none(), st.just("k\x00"))
nested = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(keys, children, max_size=4),
    ),
    max_leaves=12,
)
safe = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=40)),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=20), children, max_size=3)
    ),
    max_leaves=8,
)
data = st.one_of(
    st.dictionaries(st.text(min_size=1, max_size=20), safe, max_size=5),
    st.dictionaries(st.text(min_size=1, max_size=20), safe, max_size=5),
    st.none(),
    st.dictionaries(keys, nested, max_size=6),
    nested,
)
idempotency_keys = st.one_of(
    st.none(),
    st.none(),
    st.text(max_size=300),
    st.integers(),
    st.just(cio.DERIVE),
    st.sampled_from(["key\x00", "key\ud800"]),
)


def _counts() -> tuple[int, int]:
    return Operation.objects.count(), IdempotencyKey.objects.count()


@FUZZ
@given(
    call=st.sampled_from(["identify", "track", "track_anonymous", "delete"]),
    customer=ids,
    name=names,
    body=data,
    key=idempotency_keys,
)
def test_every_api_call_stores_one_operation_or_refuses_cleanly(
    no_send: None, call: str, customer: Any, name: Any, body: Any, key: Any
) -> None:
    before = _counts()
    try:
        if call == "identify":
            op = cio.identify(customer, body, idempotency_key=key)
        elif call == "track":
            op = cio.track(customer, name, body, idempotency_key=key)
        elif call == "track_anonymous":
            op = cio.track_anonymous(customer, name, body, idempotency_key=key)
        else:
            op = cio.delete(customer, idempotency_key=key)
    except InvalidOperation as exc:
        event("refused")
        assert exc.field  # it names what was wrong
        assert _counts() == before
        return
    event("stored")
    stored = Operation.objects.get(pk=op.pk)
    assert stored.kind == call
    assert stored.status == Operation.Status.PENDING
    json.dumps(stored.payload, allow_nan=False)  # strict JSON, as it will be sent
    assert Operation.objects.count() in (before[0], before[0] + 1)  # a key may reuse one


# --------------------------------------------------------------------------- response parsing

items = [
    BatchItem("identify", "fuzz-1", {"attributes": {"email": "a@example.com"}}),
    BatchItem("track", "fuzz-2", {"name": "x", "data": {}, "id": "01HZZZZZZZZZZZZZZZZZZZZZZZ"}),
    BatchItem("delete", "fuzz-3", {}),
]
json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30)
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=15,
)
error_entries = st.fixed_dictionaries(
    {},
    optional={
        "batch_index": st.one_of(
            st.integers(min_value=-(2**70), max_value=2**70), st.text(max_size=3), st.booleans()
        ),
        "reason": json_values,
        "field": json_values,
        "message": json_values,
    },
)
shaped_bodies = st.one_of(
    st.builds(lambda e: {"errors": e}, st.lists(st.one_of(error_entries, json_values), max_size=6)),
    st.builds(lambda e: {"meta": {"errors": e}}, st.lists(json_values, max_size=4)),
    st.builds(lambda e: {"meta": {"error": e}}, json_values),
    json_values,
)
bodies = st.one_of(
    st.binary(max_size=300),
    shaped_bodies.map(lambda v: json.dumps(v).encode()),
    st.just(b'{"errors": [{"batch_index": 1e309}]}'),
    st.just(b"\xff\xfe{not json"),
)
retry_afters = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.sampled_from(
        ["-1", "1e309", "Thu, 01 Jan 1970 00:00:00 GMT", "nan", "inf", "99999999999999999999"]
    ),
)


@pytest.fixture
def transport(no_send: None) -> Transport:
    return get_transport()


@FUZZ
@given(body=bodies, complete=st.booleans())
def test_207_bodies_yield_one_outcome_per_item_or_a_delivery_error(
    transport: Transport, body: bytes, complete: bool
) -> None:
    reply = _Reply(status=207, headers={}, body=body, complete=complete)
    try:
        outcomes = transport._batch_outcomes(reply, items, [None] * len(items))
    except DeliveryError as error:
        assert error.kind == "transient"
        return
    assert len(outcomes) == len(items)
    # The oracle: an item is rejected when an entry names it by an integer index; the others
    # are accepted only when every entry names one item and there is at least one entry.
    errors = json.loads(body.decode("utf-8"))["errors"]
    named = {
        e["batch_index"]
        for e in errors
        if isinstance(e, dict)
        and type(e.get("batch_index")) is int
        and 0 <= e["batch_index"] < len(items)
    }
    unambiguous = bool(errors) and all(
        isinstance(e, dict) and type(e.get("batch_index")) is int and e["batch_index"] in named
        for e in errors
    )
    for index, outcome in enumerate(outcomes):
        if index in named:
            assert outcome is not None
            assert (outcome.kind, outcome.status) == ("permanent", 400)
        elif unambiguous:
            assert outcome is None
        else:
            assert outcome is not None
            assert (outcome.kind, outcome.status) == ("transient", 207)


@FUZZ
@given(
    status=st.integers(min_value=300, max_value=599),
    body=bodies,
    retry_after=retry_afters,
    location=st.one_of(st.none(), st.text(max_size=40), st.just("https://evil.example/x")),
)
def test_error_answers_always_become_a_delivery_error(
    transport: Transport, status: int, body: bytes, retry_after: str | None, location: str | None
) -> None:
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    if location is not None:
        headers["Location"] = location
    reply = _Reply(status=status, headers=headers, body=body, complete=True)
    error = transport._http_error(reply, transport._redactor)
    assert isinstance(error, DeliveryError)
    assert error.status == status
    assert len(error.reason) <= 1000
    assert error.retry_after is None or 0 <= error.retry_after <= MAX_RETRY_AFTER
    message = _server_message(body)
    assert message is None or isinstance(message, str)


@FUZZ
@given(value=retry_afters)
def test_retry_after_is_none_or_a_bounded_finite_number(value: str | None) -> None:
    seconds = parse_retry_after(value)
    assert seconds is None or (math.isfinite(seconds) and 0 <= seconds <= MAX_RETRY_AFTER)


def test_a_huge_error_body_is_cut(transport: Transport) -> None:
    body = json.dumps({"meta": {"error": "x" * 10_000_000}}).encode()
    error = transport._http_error(_Reply(400, {}, body, complete=True), transport._redactor)
    assert error.kind == "permanent"
    assert len(error.reason) <= 1000


@pytest.fixture
def server(fake_cio: FakeCustomerIO, no_send: None) -> Iterator[FakeCustomerIO]:
    yield fake_cio
    fake_cio.clear_faults()


@FUZZ_HTTP
@given(
    status=st.sampled_from([207, 301, 302, 400, 404, 408, 413, 422, 429, 500, 502, 503]),
    body=bodies,
    retry_after=retry_afters,
)
def test_no_answer_leaves_an_operation_stuck(
    server: FakeCustomerIO, status: int, body: bytes, retry_after: str | None
) -> None:
    Operation.objects.all().delete()
    server.clear_faults()
    ops = [cio.identify(f"fuzz-{i}", {"n": i}) for i in range(3)]
    server.fail_next(1, status=status, retry_after=retry_after, body=body)

    result = outbox.drain(max_seconds=10, sleep=lambda s: None)

    assert not result.errors
    rows = Operation.objects.filter(pk__in=[op.pk for op in ops])
    for row in rows:
        assert row.status != Operation.Status.SENDING, row
        assert row.lease_token == ""
        if row.status in (Operation.Status.PENDING, Operation.Status.FAILED):
            assert row.next_attempt_at is not None
    DeliveryState.objects.all().delete()  # lift any pause for the next example

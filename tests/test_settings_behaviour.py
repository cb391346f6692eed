"""Settings change behaviour: each test fails if the setting it names were ignored.

(The system checks of their types and ranges are in ``test_checks.py``.) Everything runs
against a real FakeCustomerIO with a fake clock: no sleeps.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

import django_cio_reliable as cio
from django_cio_reliable import breaker, outbox, signals, tasks
from django_cio_reliable.breaker import Breaker, get_breaker
from django_cio_reliable.breaker.core import Outcome
from django_cio_reliable.exceptions import DeliveryError
from django_cio_reliable.models import Operation
from django_cio_reliable.testing import FakeCustomerIO
from django_cio_reliable.testing.records import ReceivedRequest
from django_cio_reliable.transport import (
    MAX_BATCH_ITEM_BYTES,
    batch_item_bytes,
    get_transport,
)
from tests.conftest import API_KEY
from tests.fakes import FakeClock

#: Most tests need real commits: acknowledgements and the idempotency cache act on commit.
tx = pytest.mark.django_db(transaction=True)
db = pytest.mark.django_db

Status = Operation.Status
FAIL = Outcome.failure(0.01)
OK = Outcome.success(0.01)
BATCH_PATH = "/api/v2/batch"


class FakeMonotonic:
    """A monotonic clock for ``outbox.drain(monotonic=...)``, advanced by the test."""

    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


@pytest.fixture(autouse=True)
def _fresh_breaker() -> Iterator[None]:
    """No breaker cached in this process from another test (or left for the next one)."""
    breaker.reset()
    yield
    breaker.reset()


@pytest.fixture
def outbox_mode(no_kick: FakeCustomerIO, settings: Any) -> FakeCustomerIO:
    """Outbox delivery with no automatic dispatch: tests drain explicitly."""
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "RATE_LIMIT": 10_000}
    return no_kick


def configure(settings: Any, **values: Any) -> None:
    """Merge ``values`` into ``CIO_RELIABLE`` (which resets everything built from it)."""
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, **values}


def drain(**kwargs: Any) -> outbox.DrainResult:
    options: dict[str, Any] = {"max_seconds": 30, "sleep": lambda s: None, **kwargs}
    return outbox.drain(**options)


def api_requests(server: FakeCustomerIO) -> list[ReceivedRequest]:
    return [r for r in server.requests if r.path.startswith("/api/")]


def batch_sizes(server: FakeCustomerIO) -> list[int]:
    return [len(r.body["batch"]) for r in api_requests(server) if r.path == BATCH_PATH]


def content_length(request: ReceivedRequest) -> int:
    [value] = [v for k, v in request.headers.items() if k.lower() == "content-length"]
    return int(value)


def item_bytes(op: Operation) -> int:
    return batch_item_bytes(op.kind, op.customer_id, op.payload)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- batching


@tx
@pytest.mark.parametrize(("size", "expected"), [(3, [3, 3, 1]), (7, [7]), (1, [1] * 7)])
def test_batch_size_caps_operations_per_request(
    outbox_mode: FakeCustomerIO, settings: Any, size: int, expected: list[int]
) -> None:
    configure(settings, BATCH_SIZE=size)
    ops = [cio.track(f"p{i}", "x") for i in range(7)]
    assert drain().delivered == 7
    assert batch_sizes(outbox_mode) == expected
    assert {r.path for r in api_requests(outbox_mode)} == {BATCH_PATH}
    sent = [op["id"] for r in api_requests(outbox_mode) for op in r.body["batch"]]
    assert sent == [op.event_id for op in ops]


@tx
def test_batch_max_bytes_caps_the_bytes_of_a_request(
    outbox_mode: FakeCustomerIO, settings: Any
) -> None:
    ops = [cio.track(f"p{i}", "x", {"note": "n" * 100}) for i in range(6)]
    sizes = {item_bytes(op) for op in ops}
    [size] = sizes  # same length ids and ULIDs: every operation is the same size
    # Room for two operations and the request's framing, not for three.
    cap = 2 * size + 40
    assert cap < 3 * size
    configure(settings, BATCH_MAX_BYTES=cap)
    assert drain().delivered == 6
    requests = api_requests(outbox_mode)
    assert batch_sizes(outbox_mode) == [2, 2, 2]
    assert all(content_length(r) <= cap for r in requests)


@tx
def test_batch_max_bytes_counts_the_request_framing(
    outbox_mode: FakeCustomerIO, settings: Any
) -> None:
    ops = [cio.track(f"p{i}", "x", {"note": "n" * 100}) for i in range(4)]
    [size] = {item_bytes(op) for op in ops}
    cap = 2 * (size + 1)  # what _batches lets two operations take, framing not counted
    configure(settings, BATCH_MAX_BYTES=cap)
    assert drain().delivered == 4
    lengths = [content_length(r) for r in api_requests(outbox_mode)]
    assert max(lengths) <= cap, (cap, lengths)


@tx
def test_an_operation_over_batch_max_bytes_never_makes_a_bigger_request(
    outbox_mode: FakeCustomerIO, settings: Any
) -> None:
    configure(settings, BATCH_MAX_BYTES=1000)
    big = cio.track("big", "x", {"note": "n" * 2000})
    assert 1000 < item_bytes(big) <= MAX_BATCH_ITEM_BYTES
    assert drain().delivered == 1
    lengths = [content_length(r) for r in api_requests(outbox_mode) if r.path == BATCH_PATH]
    assert all(length <= 1000 for length in lengths), lengths


@tx
def test_an_operation_over_the_batch_item_limit_goes_alone_through_v1(
    outbox_mode: FakeCustomerIO,
) -> None:
    before = cio.track("a", "small")
    big = cio.track("b", "large", {"blob": "x" * 40_000})
    after = cio.track("c", "small")
    assert item_bytes(big) > MAX_BATCH_ITEM_BYTES
    assert drain().delivered == 3
    requests = api_requests(outbox_mode)
    v1 = [r for r in requests if r.path != BATCH_PATH]
    assert [r.path for r in v1] == ["/api/v1/customers/b/events"]
    assert v1[0].body["id"] == big.event_id
    in_batches = [op["id"] for r in requests if r.path == BATCH_PATH for op in r.body["batch"]]
    assert sorted(in_batches) == sorted([before.event_id, after.event_id])
    assert {r.via for r in outbox_mode.receipts if r.event_id == big.event_id} == {"v1"}


@tx
@pytest.mark.parametrize("batch", [True, False])
def test_batch_false_sends_v1_requests_only(
    outbox_mode: FakeCustomerIO, settings: Any, batch: bool
) -> None:
    configure(settings, BATCH=batch)
    cio.identify("u1", {"plan": "pro"})
    cio.track("u2", "x")
    cio.track_anonymous("anon", "y")
    assert drain().delivered == 3
    paths = sorted(r.path for r in api_requests(outbox_mode))
    if batch:
        # The anonymous event has no batch form: it goes alone through v1 even so.
        assert paths == ["/api/v1/events", BATCH_PATH]
    else:
        assert paths == [
            "/api/v1/customers/u1",
            "/api/v1/customers/u2/events",
            "/api/v1/events",
        ]
    via = {r.customer_id: r.via for r in outbox_mode.receipts}
    assert via == {"u1": "v2" if batch else "v1", "u2": "v2" if batch else "v1", "anon": "v1"}


# --------------------------------------------------------------------------- drain time


def advance_on_delivery(monotonic: FakeMonotonic, seconds: float) -> Callable[..., None]:
    def receiver(sender: Any, **kwargs: Any) -> None:
        monotonic.value += seconds

    return receiver


@tx
@pytest.mark.parametrize(("limit", "delivered"), [(10, 3), (100, 10)])
def test_drain_max_seconds_stops_claiming_and_burns_no_attempt(
    outbox_mode: FakeCustomerIO, settings: Any, limit: float, delivered: int
) -> None:
    # Each request "takes" 4 s: deliveries start at 0, 4, 8, 12 … s into the drain.
    configure(settings, DRAIN_MAX_SECONDS=limit, BATCH=False)
    ops = [cio.track(f"p{i}", "x") for i in range(10)]
    monotonic = FakeMonotonic()
    receiver = advance_on_delivery(monotonic, 4.0)
    signals.operation_delivered.connect(receiver)
    try:
        result = outbox.drain(monotonic=monotonic, sleep=lambda s: None)
    finally:
        signals.operation_delivered.disconnect(receiver)
    assert result.delivered == delivered
    assert len(api_requests(outbox_mode)) == delivered
    rows = list(Operation.objects.filter(pk__in=[op.pk for op in ops]).order_by("pk"))
    assert [row.status for row in rows[:delivered]] == [Status.DELIVERED] * delivered
    for row in rows[delivered:]:
        assert row.status == Status.PENDING
        assert row.attempts == 0
        assert row.lease_token == ""
    if delivered < len(ops):
        assert result.stopped == "time limit"
        assert result.released == len(ops) - delivered


@db
def test_default_drain_seconds_comes_from_drain_max_seconds_or_the_q_cluster_timeout(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django_q.conf import Conf

    margin = 2 * (10.0 + 3.05) + 5  # two requests' timeouts and 5 s
    monkeypatch.setattr(Conf, "TIMEOUT", 100)
    assert outbox.default_drain_seconds() == pytest.approx(100 - margin)
    monkeypatch.setattr(Conf, "TIMEOUT", 600)
    assert outbox.default_drain_seconds() == pytest.approx(600 - margin)
    configure(settings, TIMEOUT=20, CONNECT_TIMEOUT=5)
    assert outbox.default_drain_seconds() == pytest.approx(600 - (2 * 25 + 5))
    configure(settings, DRAIN_MAX_SECONDS=42)
    assert outbox.default_drain_seconds() == 42


@tx
@pytest.mark.parametrize(("q_timeout", "delivered"), [(40, 3), (1000, 10)])
def test_an_unset_drain_max_seconds_stops_the_drain_at_the_q_cluster_timeout(
    outbox_mode: FakeCustomerIO,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    q_timeout: int,
    delivered: int,
) -> None:
    from django_q.conf import Conf

    # Q_CLUSTER timeout 40 s leaves 40 - (2 * (10 + 3.05) + 5) = 8.9 s to claim in.
    monkeypatch.setattr(Conf, "TIMEOUT", q_timeout)
    configure(settings, DRAIN_MAX_SECONDS=None, BATCH=False)
    for i in range(10):
        cio.track(f"p{i}", "x")
    monotonic = FakeMonotonic()
    receiver = advance_on_delivery(monotonic, 4.0)
    signals.operation_delivered.connect(receiver)
    try:
        result = outbox.drain(monotonic=monotonic, sleep=lambda s: None)
    finally:
        signals.operation_delivered.disconnect(receiver)
    assert result.delivered == delivered
    assert Operation.objects.filter(status=Status.PENDING, attempts=0).count() == 10 - delivered


@tx
@pytest.mark.parametrize(("linger", "delivered"), [(5.0, 1), (0.0, 0)])
def test_drain_linger_makes_the_drain_task_wait_for_a_retry_due_soon(
    outbox_mode: FakeCustomerIO,
    fake_clock: FakeClock,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    linger: float,
    delivered: int,
) -> None:
    # The retry is due within 2 s (full jitter, capped at RETRY_CAP).
    configure(settings, DRAIN_LINGER=linger, RETRY_BASE=2, RETRY_CAP=2)
    naps: list[float] = []

    def nap(seconds: float) -> None:
        naps.append(seconds)
        fake_clock.advance(seconds)

    # The task drains with the real sleep: hand it the fake one.
    monkeypatch.setattr(outbox, "drain", functools.partial(outbox.drain, sleep=nap))
    op = cio.track(1, "x")
    outbox_mode.fail_next(1, status=503)
    summary = tasks.drain(max_seconds=30)
    assert summary["failed"] == 1
    assert summary["delivered"] == delivered
    op.refresh_from_db()
    if delivered:
        assert naps and sum(naps) <= linger
        assert op.status == Status.DELIVERED
    else:
        assert naps == []
        assert op.status == Status.FAILED


# --------------------------------------------------------------------------- idempotency


@tx
@pytest.mark.parametrize(("cache_size", "queries"), [(0, True), (10, False)])
def test_idempotency_cache_size_zero_answers_repeats_from_the_database(
    outbox_mode: FakeCustomerIO, settings: Any, cache_size: int, queries: bool
) -> None:
    configure(settings, IDEMPOTENCY_CACHE_SIZE=cache_size)
    key = f"settings-order-{cache_size}"
    first = cio.track(7, "order_placed", idempotency_key=key)
    with CaptureQueriesContext(connection) as captured:
        again = cio.track(7, "order_placed", idempotency_key=key)
    assert again.pk == first.pk
    assert Operation.objects.count() == 1
    if queries:
        assert any("idempotency" in q["sql"].lower() for q in captured.captured_queries)
    else:
        assert captured.captured_queries == []


# --------------------------------------------------------------------------- purge


def _aged(status: str, age: float, now: datetime, person: str) -> Operation:
    op = cio.track(person, "x")
    at = now - timedelta(seconds=age)
    if status == Status.DELIVERED:
        Operation.objects.filter(pk=op.pk).update(status=status, delivered_at=at)
    else:
        Operation.objects.filter(pk=op.pk).update(status=status, dead_at=at)
    return op


def _operation_deletes(captured: CaptureQueriesContext) -> int:
    table = Operation._meta.db_table
    return sum(
        1
        for q in captured.captured_queries
        if q["sql"].lstrip().upper().startswith("DELETE") and table in q["sql"]
    )


@tx
def test_retain_delivered_and_retain_dead_decide_what_purge_deletes(
    outbox_mode: FakeCustomerIO, fake_clock: FakeClock, settings: Any
) -> None:
    configure(settings, RETAIN_DELIVERED=100, RETAIN_DEAD=1000)
    now = fake_clock.now()
    old_delivered = _aged(Status.DELIVERED, 150, now, "a")
    young_delivered = _aged(Status.DELIVERED, 50, now, "b")
    old_dead = _aged(Status.DEAD, 1500, now, "c")
    young_dead = _aged(Status.DEAD, 500, now, "d")  # older than RETAIN_DELIVERED: kept
    pending = cio.track("e", "x")
    result = outbox.purge(now=now)
    assert (result.delivered, result.dead) == (1, 1)
    left = set(Operation.objects.values_list("pk", flat=True))
    assert left == {young_delivered.pk, young_dead.pk, pending.pk}
    assert old_delivered.pk not in left and old_dead.pk not in left
    # Longer retention keeps both of what is left; shorter deletes them.
    configure(settings, RETAIN_DELIVERED=10, RETAIN_DEAD=10)
    result = outbox.purge(now=now)
    assert (result.delivered, result.dead) == (1, 1)
    assert set(Operation.objects.values_list("pk", flat=True)) == {pending.pk}


@tx
@pytest.mark.parametrize(("batch_size", "deletes"), [(2, 3), (1, 5), (1000, 1)])
def test_purge_batch_size_is_the_rows_per_delete_statement(
    outbox_mode: FakeCustomerIO, fake_clock: FakeClock, settings: Any, batch_size: int, deletes: int
) -> None:
    configure(settings, PURGE_BATCH_SIZE=batch_size, RETAIN_DELIVERED=100)
    now = fake_clock.now()
    for i in range(5):
        _aged(Status.DELIVERED, 200, now, f"p{i}")
    with CaptureQueriesContext(connection) as captured:
        result = outbox.purge(now=now)
    assert result.delivered == 5
    assert not Operation.objects.exists()
    assert _operation_deletes(captured) == deletes


# --------------------------------------------------------------------------- the breaker


def _record(b: Breaker, outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        permit = b.allow()
        assert permit is not None
        b.record(permit, outcome)


def _rate_only(settings: Any, **values: Any) -> None:
    """Only the failure-rate trigger: the consecutive-failure one off."""
    configure(settings, BREAKER_CONSECUTIVE_FAILURES=0, **values)


@db
@pytest.mark.parametrize(("threshold", "state"), [(0.3, "open"), (0.5, "closed")])
def test_failure_rate_threshold_decides_whether_40_percent_opens_it(
    fake_clock: FakeClock, settings: Any, threshold: float, state: str
) -> None:
    _rate_only(settings, BREAKER_FAILURE_RATE_THRESHOLD=threshold, BREAKER_MINIMUM_CALLS=10)
    b = get_breaker()
    _record(b, [FAIL if i % 3 == 0 else OK for i in range(10)])  # 4 of 10 failed
    b.flush()
    snapshot = b.snapshot(fresh=True)
    assert snapshot.state == state
    if state == "closed":
        assert (snapshot.calls, snapshot.failures) == (10, 4)
    assert (b.allow() is None) == (state == "open")


@db
@pytest.mark.parametrize(("minimum", "state"), [(10, "open"), (11, "closed")])
def test_minimum_calls_must_be_in_the_window_before_a_rate_opens_it(
    fake_clock: FakeClock, settings: Any, minimum: int, state: str
) -> None:
    _rate_only(settings, BREAKER_FAILURE_RATE_THRESHOLD=0.5, BREAKER_MINIMUM_CALLS=minimum)
    b = get_breaker()
    _record(b, [FAIL] * 6 + [OK] * 4)  # 60% of 10 calls
    b.flush()
    assert b.snapshot(fresh=True).state == state


@db
@pytest.mark.parametrize(("window", "calls", "state"), [(10, 4, "closed"), (60, 10, "open")])
def test_outcomes_older_than_the_window_no_longer_count(
    fake_clock: FakeClock, settings: Any, window: float, calls: int, state: str
) -> None:
    _rate_only(
        settings,
        BREAKER_FAILURE_RATE_THRESHOLD=0.5,
        BREAKER_MINIMUM_CALLS=10,
        BREAKER_WINDOW_SECONDS=window,
    )
    b = get_breaker()
    _record(b, [FAIL] * 6)
    b.flush()
    fake_clock.advance(20)
    _record(b, [OK] * 4)
    b.flush()
    snapshot = b.snapshot(fresh=True)
    assert snapshot.state == state
    if state == "closed":
        assert (snapshot.calls, snapshot.failures) == (calls, 0)


@db
@pytest.mark.parametrize(
    ("multiplier", "maximum", "cooldowns"),
    [(3.0, 1000.0, [90.0, 270.0]), (1.0, 1000.0, [30.0, 30.0]), (3.0, 100.0, [90.0, 100.0])],
)
def test_a_failed_probe_grows_the_cooldown_by_the_multiplier_up_to_the_max(
    fake_clock: FakeClock,
    settings: Any,
    multiplier: float,
    maximum: float,
    cooldowns: list[float],
) -> None:
    configure(
        settings,
        BREAKER_CONSECUTIVE_FAILURES=5,
        BREAKER_RESET_TIMEOUT=30,
        BREAKER_RESET_TIMEOUT_MULTIPLIER=multiplier,
        BREAKER_RESET_TIMEOUT_MAX=maximum,
    )
    b = get_breaker()
    _record(b, [FAIL] * 5)
    assert b.snapshot().state == "open"
    assert b.snapshot().cooldown == 30
    wait = 30.0
    for expected in cooldowns:
        fake_clock.advance(wait)
        probe = b.allow()
        assert probe is not None and probe.is_probe
        b.record(probe, FAIL)
        snapshot = b.snapshot()
        assert snapshot.state == "open"
        assert snapshot.cooldown == pytest.approx(expected)
        assert snapshot.retry_at == fake_clock.now() + timedelta(seconds=expected)
        fake_clock.advance(expected - 1)
        assert b.allow() is None
        wait = 1.0


# --------------------------------------------------------------------------- credentials


@db
def test_api_key_env_names_the_variable_the_key_is_read_from(
    fake_cio: FakeCustomerIO, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIO_API_KEY", "not-the-key")  # the default variable: not read
    monkeypatch.setenv("MY_APP_CIO_KEY", API_KEY)
    configure(settings, API_KEY="", API_KEY_ENV="MY_APP_CIO_KEY")
    get_transport().send("identify", "u1", {"attributes": {"plan": "pro"}})
    [receipt] = fake_cio.receipts
    assert (receipt.kind, receipt.customer_id) == ("identify", "u1")
    assert fake_cio.requests[-1].status == 200


@db
def test_without_api_key_env_variable_the_request_is_unauthorised(
    fake_cio: FakeCustomerIO, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIO_API_KEY", API_KEY)  # the default variable holds the right key …
    monkeypatch.delenv("MY_APP_CIO_KEY", raising=False)
    configure(settings, API_KEY="", API_KEY_ENV="MY_APP_CIO_KEY")  # … but another one is named
    with pytest.raises(DeliveryError) as info:
        get_transport().send("identify", "u1", {"attributes": {"plan": "pro"}})
    assert info.value.kind == "auth"
    assert fake_cio.receipts == []
    assert fake_cio.requests[-1].status == 401
    # The default name reads CIO_API_KEY.
    configure(settings, API_KEY_ENV="CIO_API_KEY")
    get_transport().send("identify", "u1", {"attributes": {"plan": "pro"}})
    assert len(fake_cio.receipts) == 1

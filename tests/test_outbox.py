"""The outbox against a real FakeCustomerIO: enqueue, claim, deliver, retry, dead letters."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction

import django_cio_reliable as cio
from django_cio_reliable import outbox, signals
from django_cio_reliable.models import DeliveryState, IdempotencyKey, Operation
from django_cio_reliable.testing import FakeCustomerIO
from tests.fakes import FakeClock

pytestmark = pytest.mark.django_db(transaction=True)

Status = Operation.Status


@pytest.fixture
def outbox_mode(fake_cio: FakeCustomerIO, settings: Any) -> Iterator[FakeCustomerIO]:
    """Outbox delivery with no automatic dispatch: tests drain explicitly."""
    settings.CIO_RELIABLE = {
        **settings.CIO_RELIABLE,
        "DISPATCH": "task",
        "KICK_DEBOUNCE": 3600,
        "RATE_LIMIT": 10_000,
    }
    from django_cio_reliable import dispatch

    sent: list[int] = []
    original = dispatch.kicker._send
    dispatch.kicker._send = lambda: sent.append(1)  # type: ignore[method-assign]
    try:
        yield fake_cio
    finally:
        dispatch.kicker._send = original  # type: ignore[method-assign]


def drain() -> outbox.DrainResult:
    return outbox.drain(max_seconds=30, sleep=lambda s: None)


def test_rollback_stores_and_sends_nothing(outbox_mode: FakeCustomerIO) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        cio.track(1, "order_placed", {"total": 42})
        raise RuntimeError("rollback")
    assert Operation.objects.count() == 0
    drain()
    assert outbox_mode.requests == []


def test_commit_delivers(outbox_mode: FakeCustomerIO) -> None:
    with transaction.atomic():
        op = cio.track(1, "order_placed", {"total": 42})
    assert op.status == Status.PENDING
    assert len(op.event_id) == 26
    result = drain()
    assert result.delivered == 1
    op.refresh_from_db()
    assert op.status == Status.DELIVERED
    assert op.attempts == 1
    [receipt] = outbox_mode.receipts
    assert receipt.kind == "track"
    assert receipt.event_id == op.event_id
    assert receipt.customer_id == "1"


def test_inline_dispatch_delivers_after_commit(fake_cio: FakeCustomerIO, settings: Any) -> None:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "DISPATCH": "inline"}
    with transaction.atomic():
        op = cio.identify("u1", {"email": "a@example.com"})
        assert fake_cio.requests == []
    op.refresh_from_db()
    assert op.status == Status.DELIVERED
    assert [r.kind for r in fake_cio.receipts] == ["identify"]


def test_every_kind_is_delivered(outbox_mode: FakeCustomerIO, settings: Any) -> None:
    for batch in (True, False):
        outbox_mode.reset()
        settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "BATCH": batch}
        cio.identify("u1", {"plan": "pro"})
        cio.track("u1", "signed_up", {"via": "web"}, timestamp=1_700_000_000)
        cio.track_anonymous("anon-1", "page_viewed", {"path": "/"})
        cio.delete("u1")
        assert drain().delivered == 4
        person = [r.kind for r in outbox_mode.receipts if r.customer_id == "u1"]
        assert person == ["identify", "track", "delete"]
        assert [r.kind for r in outbox_mode.receipts if r.customer_id == "anon-1"] == [
            "track_anonymous"
        ]
        # Anonymous events have no /api/v2/batch form: always v1 (docs/transport.md).
        via = {r.customer_id: r.via for r in outbox_mode.receipts}
        assert via == {"u1": "v2" if batch else "v1", "anon-1": "v1"}


def test_idempotency_key_yields_one_operation(outbox_mode: FakeCustomerIO) -> None:
    first = cio.track(7, "order_placed", {"total": 1}, idempotency_key="order-7")
    second = cio.track(7, "order_placed", {"total": 1}, idempotency_key="order-7")
    assert first.pk == second.pk
    assert Operation.objects.count() == 1
    assert IdempotencyKey.objects.get().operation_id == first.pk
    drain()
    third = cio.track(7, "order_placed", {"total": 1}, idempotency_key="order-7")
    assert third.pk == first.pk
    drain()
    assert len(outbox_mode.receipts) == 1


def test_idempotency_cache_answers_without_a_query(
    outbox_mode: FakeCustomerIO, django_assert_num_queries: Any
) -> None:
    first = cio.track(7, "order_placed", idempotency_key="order-7b")
    with django_assert_num_queries(0):
        again = cio.track(7, "order_placed", idempotency_key="order-7b")
    assert again.pk == first.pk


def test_rolled_back_key_is_free_again(outbox_mode: FakeCustomerIO) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        cio.track(1, "x", idempotency_key="k-rollback")
        raise RuntimeError
    op = cio.track(1, "x", idempotency_key="k-rollback")
    assert Operation.objects.get().pk == op.pk


def test_expired_key_is_taken_again(outbox_mode: FakeCustomerIO, fake_clock: FakeClock) -> None:
    from django_cio_reliable.idempotency import key_cache

    first = cio.track(1, "x", idempotency_key="k-exp")
    key_cache.clear()
    fake_clock.advance(11 * 24 * 3600)
    second = cio.track(1, "x", idempotency_key="k-exp")
    assert second.pk != first.pk
    assert second.event_id != first.event_id


def test_event_id_derived_from_key_is_stable_in_its_random_part(
    outbox_mode: FakeCustomerIO,
) -> None:
    a = cio.track(1, "x", idempotency_key="same-key")
    Operation.objects.all().delete()
    IdempotencyKey.objects.all().delete()
    from django_cio_reliable.idempotency import key_cache

    key_cache.clear()
    b = cio.track(1, "x", idempotency_key="same-key")
    assert a.event_id[10:] == b.event_id[10:]


def test_derived_keys_are_opt_in(outbox_mode: FakeCustomerIO) -> None:
    cio.track_anonymous("a", "page_viewed", {"path": "/"})
    cio.track_anonymous("a", "page_viewed", {"path": "/"})
    assert Operation.objects.count() == 2
    cio.track_anonymous("b", "page_viewed", {"path": "/"}, idempotency_key=cio.DERIVE)
    cio.track_anonymous("b", "page_viewed", {"path": "/"}, idempotency_key=cio.DERIVE)
    assert Operation.objects.filter(customer_id="b").count() == 1


def test_invalid_input_stores_nothing(outbox_mode: FakeCustomerIO) -> None:
    with pytest.raises(cio.InvalidOperation) as excinfo:
        cio.track("x" * 151, "e")
    assert "customer_id" in str(excinfo.value)
    with pytest.raises(cio.InvalidOperation):
        cio.track(1, "")
    with pytest.raises(cio.InvalidOperation):
        cio.identify(1, {"a": float("nan")})
    with pytest.raises(cio.InvalidOperation):
        cio.track(1, "e", idempotency_key="")
    assert Operation.objects.count() == 0
    assert IdempotencyKey.objects.count() == 0


def test_per_person_order_holds_through_failures(
    outbox_mode: FakeCustomerIO, fake_clock: FakeClock
) -> None:
    first = cio.track("p", "first")
    second = cio.track("p", "second")
    other = cio.track("q", "other")
    outbox_mode.fail_next(1, status=503)
    result = drain()
    # "first" failed; "second" must wait for it; "q" is independent.
    assert result.failed >= 1
    first.refresh_from_db()
    second.refresh_from_db()
    other.refresh_from_db()
    assert second.status == Status.PENDING
    delivered = [r.name for r in outbox_mode.receipts]
    assert "second" not in delivered
    fake_clock.advance(3600)
    drain()
    drain()
    names = [r.name for r in outbox_mode.receipts if r.customer_id == "p"]
    assert names == ["first", "second"]


def test_claim_counts_the_attempt_and_leases(outbox_mode: FakeCustomerIO) -> None:
    op = cio.track(1, "x")
    claimed = outbox.claim(10)
    assert [o.pk for o in claimed.operations] == [op.pk]
    op.refresh_from_db()
    assert op.status == Status.SENDING
    assert op.attempts == 1
    assert op.lease_token == claimed.token
    # A second worker gets nothing while the lease is live.
    assert outbox.claim(10).operations == []


def test_expired_lease_is_taken_over_and_late_ack_is_fenced(
    outbox_mode: FakeCustomerIO, fake_clock: FakeClock
) -> None:
    op = cio.track(1, "x")
    first = outbox.claim(10, lease_seconds=60)
    fake_clock.advance(61)
    second = outbox.claim(10, lease_seconds=60)
    assert [o.pk for o in second.operations] == [op.pk]
    # The late worker's acknowledgement must not overwrite the new lease holder's state.
    assert outbox.ack_delivered(first, first.operations) == 0
    op.refresh_from_db()
    assert op.status == Status.SENDING
    assert op.lease_token == second.token
    assert op.attempts == 2
    assert outbox.ack_delivered(second, second.operations) == 1


def test_hold_renews_the_lease_and_drops_what_is_no_longer_leased(
    outbox_mode: FakeCustomerIO, fake_clock: FakeClock
) -> None:
    ops = [cio.identify(f"p{i}", {"n": i}) for i in range(4)]
    first = outbox.claim(10, lease_seconds=60)
    fake_clock.advance(50)
    assert outbox.hold(first, first.operations) == first.operations
    renewed = Operation.objects.get(pk=ops[0].pk).lease_expires_at
    assert renewed == fake_clock.now() + timedelta(seconds=60)
    assert first.expires_at == renewed
    # The lease ran out on one operation and another worker took it over; another one was
    # ended by forget() (dead, lease cleared).
    fake_clock.advance(61)
    Operation.objects.filter(pk=ops[1].pk).update(lease_token="someone-else")
    Operation.objects.filter(pk=ops[2].pk).update(status=Status.DEAD, lease_token="")
    held = outbox.hold(first, first.operations)
    assert [op.pk for op in held] == [ops[0].pk, ops[3].pk]


def test_a_slow_claim_keeps_its_lease_and_sends_each_operation_once(
    outbox_mode: FakeCustomerIO, fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each request takes longer than the lease; a second worker claiming between requests
    must find nothing, and every operation is sent once."""
    settings_ = {"LEASE_SECONDS": 20.0, "TIMEOUT": 5.0, "CONNECT_TIMEOUT": 1.0, "BATCH": False}
    from django.conf import settings

    monkeypatch.setattr(
        settings, "CIO_RELIABLE", {**settings.CIO_RELIABLE, **settings_}, raising=True
    )
    for i in range(5):
        cio.identify(f"p{i}", {"n": i})
    stolen: list[int] = []
    original_send = outbox.Deliverer._send_single

    def slow_send(self: outbox.Deliverer, *args: Any, **kwargs: Any) -> str:
        fake_clock.advance(15)  # the server takes 15 s to answer
        stolen.extend(op.pk for op in outbox.claim(10).operations)
        return original_send(self, *args, **kwargs)

    monkeypatch.setattr(outbox.Deliverer, "_send_single", slow_send)
    result = drain()
    assert stolen == []
    assert result.delivered == 5
    assert result.lost_lease == 0
    assert len(outbox_mode.receipts) == 5


def test_rate_limited_pauses_everyone_without_burning_attempts(
    outbox_mode: FakeCustomerIO, fake_clock: FakeClock
) -> None:
    ops = [cio.track(i, "x") for i in range(3)]
    outbox_mode.fail_next(1, status=429, retry_after=30)
    result = drain()
    assert result.paused == "rate_limited"
    assert result.delivered == 0
    for op in ops:
        op.refresh_from_db()
        assert op.attempts == 0
        assert op.status == Status.PENDING
    until, reason = outbox.paused_until()
    assert reason == "rate_limited"
    assert until is not None
    assert 29 <= (until - fake_clock.now()).total_seconds() <= 31
    # While paused, a drain claims nothing and sends nothing.
    before = len(outbox_mode.requests)
    assert drain().claimed == 0
    assert len(outbox_mode.requests) == before
    fake_clock.advance(31)
    assert drain().delivered == 3


def test_auth_failure_pauses_and_alerts(
    outbox_mode: FakeCustomerIO, fake_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    ops = [cio.track(i, "x") for i in range(3)]
    outbox_mode.fail_next(1, status=401)
    with caplog.at_level("ERROR", logger="django_cio_reliable"):
        result = drain()
    assert result.paused == "auth"
    assert any("credentials" in r.getMessage() for r in caplog.records)
    state = DeliveryState.objects.get()
    assert state.auth_failed_at is not None
    for op in ops:
        op.refresh_from_db()
        assert op.status == Status.PENDING
        assert op.attempts == 0
    assert not Operation.objects.filter(status=Status.DEAD).exists()
    fake_clock.advance(61)
    assert drain().delivered == 3
    state.refresh_from_db()
    assert state.auth_failed_at is None


def test_permanent_error_dead_letters_one_while_the_rest_flow(
    outbox_mode: FakeCustomerIO, settings: Any
) -> None:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "BATCH": False}
    ops = [cio.track(i, "x") for i in range(3)]
    outbox_mode.fail_next(1, status=400, body={"meta": {"error": "bad attribute"}})
    result = drain()
    assert result.dead == 1
    assert result.delivered == 2
    dead = Operation.objects.get(status=Status.DEAD)
    assert dead.pk == ops[0].pk
    assert "bad attribute" in dead.last_error
    assert dead.last_status_code == 400


def test_partial_batch_dead_letters_only_the_bad_ones(outbox_mode: FakeCustomerIO) -> None:
    ops = [cio.track(i, "x") for i in range(5)]
    outbox_mode.reject_batch_items([1, 3])
    result = drain()
    assert result.delivered == 3
    assert result.dead == 2
    dead = set(Operation.objects.filter(status=Status.DEAD).values_list("pk", flat=True))
    assert dead == {ops[1].pk, ops[3].pk}


def test_transient_errors_retry_then_die(
    outbox_mode: FakeCustomerIO, fake_clock: FakeClock, settings: Any
) -> None:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "MAX_ATTEMPTS": 3}
    op = cio.track(1, "x")
    outbox_mode.fail_next(10, status=503)
    for _ in range(3):
        drain()
        fake_clock.advance(3600)
    op.refresh_from_db()
    assert op.status == Status.DEAD
    assert op.attempts == 3
    assert "gave up after 3 attempts" in op.last_error


def test_max_age_dead_letters(
    outbox_mode: FakeCustomerIO, fake_clock: FakeClock, settings: Any
) -> None:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "MAX_AGE": 600}
    op = cio.track(1, "x")
    fake_clock.advance(601)
    outbox_mode.fail_next(1, status=503)
    drain()
    op.refresh_from_db()
    assert op.status == Status.DEAD


def test_five_minute_outage_ends_delivered_in_per_person_order(
    outbox_mode: FakeCustomerIO, fake_clock: FakeClock, settings: Any
) -> None:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "RETRY_BASE": 1, "RETRY_CAP": 60}
    expected: dict[str, list[str]] = {}
    outbox_mode.fail_next(10_000, status=503)
    for step in range(30):
        person = f"p{step % 5}"
        name = f"e{step}"
        cio.track(person, name)
        expected.setdefault(person, []).append(name)
        drain()
        fake_clock.advance(10)  # 30 steps x 10 s = 5 minutes of outage
    assert not Operation.objects.filter(status=Status.DELIVERED).exists()
    outbox_mode.clear_faults()
    for _ in range(40):
        fake_clock.advance(60)
        drain()
        if not Operation.objects.exclude(status=Status.DELIVERED).exists():
            break
    assert Operation.objects.filter(status=Status.DELIVERED).count() == 30
    applied = [r for r in outbox_mode.receipts if r.applied]
    for person, names in expected.items():
        assert [r.name for r in applied if r.customer_id == person] == names
    assert not Operation.objects.filter(status=Status.DEAD).exists()


def test_signals_are_sent_after_commit(outbox_mode: FakeCustomerIO) -> None:
    seen: list[str] = []

    def on_enqueued(sender: Any, operation: Operation, **kwargs: Any) -> None:
        seen.append(f"enqueued:{operation.pk}")

    def on_delivered(sender: Any, operation: Operation, **kwargs: Any) -> None:
        seen.append(f"delivered:{operation.pk}")

    signals.operation_enqueued.connect(on_enqueued)
    signals.operation_delivered.connect(on_delivered)
    try:
        with transaction.atomic():
            op = cio.track(1, "x")
            assert seen == []
        assert seen == [f"enqueued:{op.pk}"]
        drain()
        assert seen == [f"enqueued:{op.pk}", f"delivered:{op.pk}"]
    finally:
        signals.operation_enqueued.disconnect(on_enqueued)
        signals.operation_delivered.disconnect(on_delivered)


def test_replay_reuses_event_id(outbox_mode: FakeCustomerIO, settings: Any) -> None:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "BATCH": False}
    op = cio.track(1, "x")
    outbox_mode.fail_next(1, status=400)
    drain()
    op.refresh_from_db()
    assert op.status == Status.DEAD
    assert outbox.replay(Operation.objects.filter(pk=op.pk)) == 1
    drain()
    op.refresh_from_db()
    assert op.status == Status.DELIVERED
    assert outbox_mode.receipts[-1].event_id == op.event_id


def test_purge_respects_retention_and_live_keys(
    outbox_mode: FakeCustomerIO, fake_clock: FakeClock
) -> None:
    plain = cio.track(1, "x")
    keyed = cio.track(2, "x", idempotency_key="keep-me")
    dead = cio.track(3, "x")
    outbox_mode.reject_batch_items([2])
    drain()
    dead.refresh_from_db()
    assert dead.status == Status.DEAD
    fake_clock.advance(8 * 24 * 3600)
    result = outbox.purge(now=fake_clock.now())
    assert result.delivered == 1
    assert not Operation.objects.filter(pk=plain.pk).exists()
    assert Operation.objects.filter(pk=keyed.pk).exists()
    fake_clock.advance(23 * 24 * 3600)
    result = outbox.purge(now=fake_clock.now())
    assert result.dead == 1
    assert result.keys == 1
    assert not Operation.objects.exists()


def test_sigterm_hand_back_returns_claims_without_burning_attempts(
    outbox_mode: FakeCustomerIO, settings: Any
) -> None:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "BATCH": False}
    ops = [cio.track(i, "x") for i in range(5)]
    calls = {"n": 0}

    def stop_after_two() -> str:
        calls["n"] += 1
        return "SIGTERM" if calls["n"] > 3 else ""

    result = outbox.drain(max_seconds=30, should_stop=stop_after_two, sleep=lambda s: None)
    assert result.delivered == 2
    assert result.released == 3
    assert result.stopped == "SIGTERM"
    statuses = {op.pk: Operation.objects.get(pk=op.pk) for op in ops}
    assert sum(1 for o in statuses.values() if o.status == Status.DELIVERED) == 2
    for o in statuses.values():
        if o.status != Status.DELIVERED:
            assert o.status == Status.PENDING
            assert o.attempts == 0
            assert o.lease_token == ""


def test_whole_batch_refused_falls_back_to_single_sends(outbox_mode: FakeCustomerIO) -> None:
    ops = [cio.track(i, "x") for i in range(3)]
    outbox_mode.fail_next(1, status=400)
    result = drain()
    assert result.delivered == 3
    assert [r.via for r in outbox_mode.receipts] == ["v1", "v1", "v1"]
    assert {r.event_id for r in outbox_mode.receipts} == {op.event_id for op in ops}


def test_queue_status(outbox_mode: FakeCustomerIO) -> None:
    cio.track(1, "x")
    cio.track(2, "x")
    status = outbox.queue_status()
    assert status.counts["pending"] == 2
    assert status.oldest_open_age is not None


def test_linger_waits_for_a_retry_due_soon(
    outbox_mode: FakeCustomerIO, fake_clock: FakeClock, settings: Any
) -> None:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "RETRY_BASE": 1, "RETRY_CAP": 2}
    op = cio.track(1, "x")
    outbox_mode.fail_next(1, status=503)
    naps: list[float] = []

    def nap(seconds: float) -> None:
        naps.append(seconds)
        fake_clock.advance(seconds)

    result = outbox.drain(max_seconds=30, linger=5, sleep=nap)
    assert result.failed == 1
    assert result.delivered == 1
    assert naps and sum(naps) <= 5
    op.refresh_from_db()
    assert op.status == Status.DELIVERED


def test_linger_gives_up_on_work_due_later(
    outbox_mode: FakeCustomerIO, fake_clock: FakeClock, settings: Any
) -> None:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "RETRY_BASE": 100, "RETRY_CAP": 100}
    cio.track(1, "x")
    outbox_mode.fail_next(1, status=503)
    naps: list[float] = []
    for _ in range(5):
        # The backoff is random in [0, 100]: retry until it lands beyond the linger window.
        Operation.objects.update(status=Status.PENDING, next_attempt_at=fake_clock.now())
        outbox_mode.fail_next(1, status=503)
        outbox.drain(max_seconds=30, linger=0.5, sleep=naps.append)
        op = Operation.objects.get()
        if (op.next_attempt_at - fake_clock.now()).total_seconds() > 0.5:
            break
    naps.clear()
    result = outbox.drain(max_seconds=30, linger=0.5, sleep=naps.append)
    assert result.claimed == 0
    assert naps == []


def test_linger_polling_is_bounded_when_work_is_blocked(
    outbox_mode: FakeCustomerIO, fake_clock: FakeClock
) -> None:
    cio.track("p", "first")
    cio.track("p", "second")
    held = outbox.claim(1)  # "first" is in flight elsewhere; "second" is blocked behind it
    assert len(held.operations) == 1
    naps: list[float] = []
    ticks = iter(range(1000))
    result = outbox.drain(
        max_seconds=30,
        linger=1.0,
        sleep=naps.append,
        monotonic=lambda: next(ticks) * 0.25,
    )
    assert result.claimed == 0
    assert 1 <= len(naps) <= 8


def _stored(op: Operation) -> dict[str, Any]:
    from django.forms.models import model_to_dict

    row = model_to_dict(Operation.objects.get(pk=op.pk))
    for volatile in ("id", "event_id", "payload"):
        row.pop(volatile)
    payload = dict(Operation.objects.get(pk=op.pk).payload)
    payload.pop("id", None)
    row["payload_without_id"] = payload
    return row


@pytest.mark.parametrize(
    ("kind", "args"),
    [
        ("identify", ("p", {"email": "a@example.com", "n": 1.5, "tags": ["x"]})),
        ("track", ("p", "order_placed", {"total": 42, "nested": {"a": [1, 2]}})),
        ("track_anonymous", ("anon-1", "page_viewed", {"path": "/"})),
        ("delete", ("p",)),
    ],
)
def test_the_fast_insert_stores_the_same_row_as_save(
    outbox_mode: FakeCustomerIO, fake_clock: FakeClock, kind: str, args: tuple[Any, ...]
) -> None:
    """enqueue compiles its INSERT once; it must store exactly what ``Model.save()`` does
    (``save()`` is used whenever someone listens to post_save, e.g. capture_operations)."""
    from django.db.models.signals import post_save

    call = getattr(cio, kind)
    assert not post_save.has_listeners(Operation)  # so the first call takes the fast path
    fast = call(*args)
    assert any(plan is not None for plan in outbox.store._insert_plans.values())
    uid = "test-force-save-path"
    post_save.connect(lambda **kw: None, sender=Operation, weak=False, dispatch_uid=uid)
    try:
        slow = call(*args)
    finally:
        post_save.disconnect(sender=Operation, dispatch_uid=uid)
    assert _stored(fast) == _stored(slow)
    assert fast.pk != slow.pk
    # The in-memory objects returned agree with their rows too.
    for op in (fast, slow):
        assert op.created_at == Operation.objects.get(pk=op.pk).created_at


def test_the_single_send_fallback_honours_the_drain_deadline(
    outbox_mode: FakeCustomerIO,
) -> None:
    """After a whole batch is refused, each single send is a request of its own: once the
    drain must stop (its deadline, a SIGTERM), the rest is handed back unsent, attempt kept."""
    ops = [cio.track(i, "x") for i in range(4)]
    outbox_mode.fail_next(1, status=400)

    def stop_after_one_single() -> str:
        return "time limit" if len(outbox_mode.requests) >= 2 else ""

    result = outbox.drain(max_seconds=30, should_stop=stop_after_one_single, sleep=lambda s: None)
    assert len(outbox_mode.requests) == 2  # the refused batch, then one single send
    assert (result.delivered, result.released, result.stopped) == (1, 3, "time limit")
    left = Operation.objects.filter(pk__in=[op.pk for op in ops]).exclude(status=Status.DELIVERED)
    assert sorted((o.status, o.attempts) for o in left) == [(Status.PENDING, 0)] * 3

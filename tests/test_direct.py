"""``DELIVERY="direct"`` against a real FakeCustomerIO: send now, store for the drain otherwise."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction

import django_cio_reliable as cio
from django_cio_reliable import clock, outbox
from django_cio_reliable.models import DeliveryState, Operation
from django_cio_reliable.testing import FakeCustomerIO

pytestmark = pytest.mark.django_db(transaction=True)

Status = Operation.Status


def drain() -> outbox.DrainResult:
    return outbox.drain(max_seconds=30, sleep=lambda s: None)


def test_success_is_delivered_in_the_call(direct: FakeCustomerIO) -> None:
    op = cio.identify("p", {"plan": "pro"})
    assert op.status == Status.DELIVERED
    op.refresh_from_db()
    assert (op.status, op.attempts) == (Status.DELIVERED, 1)
    assert direct.people() == {"p": {"plan": "pro"}}


def test_a_transient_failure_retries_then_stores_for_the_drain(direct: FakeCustomerIO) -> None:
    direct.fail_next(2, status=503)
    op = cio.track("p", "signed_up")
    op.refresh_from_db()
    assert (op.status, op.attempts, op.last_status_code) == (Status.FAILED, 2, 503)
    assert len(direct.requests) == 2
    Operation.objects.filter(pk=op.pk).update(next_attempt_at=clock.now())
    assert drain().delivered == 1
    assert len(direct.events_by_id()) == 1


def test_a_permanent_failure_dead_letters_at_once(direct: FakeCustomerIO) -> None:
    direct.fail_next(1, status=400)
    op = cio.track("p", "signed_up")
    op.refresh_from_db()
    assert (op.status, op.attempts) == (Status.DEAD, 1)
    assert len(direct.requests) == 1


def test_a_later_operation_never_overtakes_an_earlier_stored_one(direct: FakeCustomerIO) -> None:
    """Without the per-person check, "pro" is sent at once and the drain later sends "free"
    over it: Customer.io would end with stale data."""
    direct.fail_next(2, status=503)
    first = cio.identify("p", {"plan": "free"})
    first.refresh_from_db()
    assert first.status == Status.FAILED
    requests_before = len(direct.requests)
    second = cio.identify("p", {"plan": "pro"})
    assert len(direct.requests) == requests_before  # left to the drain, behind the first
    second.refresh_from_db()
    assert (second.status, second.attempts) == (Status.PENDING, 0)
    # Another person is not held up.
    assert cio.identify("q", {"plan": "pro"}).status == Status.DELIVERED
    Operation.objects.filter(pk=first.pk).update(next_attempt_at=clock.now())
    while drain().delivered:
        pass
    assert direct.people()["p"] == {"plan": "pro"}
    assert Operation.objects.exclude(status=Status.DELIVERED).count() == 0


def test_no_rate_slot_soon_stores_for_the_drain_without_waiting(
    direct: FakeCustomerIO, settings: Any
) -> None:
    """The drain reserved the shared rate limit far ahead: a web request must not queue."""
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "RATE_LIMIT": 1}
    outbox.delivery_state()
    DeliveryState.objects.update(rate_tat=clock.wall() + 30)
    slept: list[float] = []
    limiter = outbox.RateLimiter(sleep=slept.append)
    assert limiter.try_acquire(0.25) is False
    op = cio.track("p", "x")
    assert direct.requests == []
    op.refresh_from_db()
    assert (op.status, op.attempts) == (Status.PENDING, 0)
    assert slept == []


def test_inside_a_transaction_it_sends_after_commit_and_a_rollback_sends_nothing(
    direct: FakeCustomerIO,
) -> None:
    """Nothing shared is written inside the caller's transaction: the send waits for commit."""
    with pytest.raises(RuntimeError), transaction.atomic():
        cio.identify("p", {"plan": "pro"})
        raise RuntimeError("the view failed after the call")
    assert Operation.objects.count() == 0
    assert direct.requests == []

    with transaction.atomic():
        op = cio.identify("p", {"plan": "pro"})
        assert (op.status, direct.requests) == (Status.PENDING, [])
    assert op.status == Status.DELIVERED  # updated in place after the commit
    assert direct.people() == {"p": {"plan": "pro"}}


def test_captured_operations_match_their_payload_after_delivery_scrubbed_it(
    direct: FakeCustomerIO,
) -> None:
    with cio.testing.capture_operations() as ops:
        cio.identify("p", {"plan": "pro"})
    (op,) = ops.operations
    stored = Operation.objects.get(pk=op.pk)
    assert (stored.status, stored.payload) == (Status.DELIVERED, {})  # SCRUB_DELIVERED
    ops.assert_enqueued_once("identify", customer_id="p", attributes={"plan": "pro"})


def test_failed_attempts_stay_on_the_dashboard_after_the_retry_delivered(
    direct: FakeCustomerIO,
) -> None:
    """The chart counts attempts as they happen: an outage does not vanish once healed."""
    from django_cio_reliable import dashboard

    direct.fail_next(2, status=503)
    op = cio.track("p", "signed_up")  # two failed tries in the request
    Operation.objects.filter(pk=op.pk).update(next_attempt_at=clock.now())
    assert drain().delivered == 1
    buckets, _ = dashboard.collect_throughput(hours=1)
    # Every failed attempt counts, the in-request tries too: direct mode acknowledges through
    # the drain's path.
    assert sum(b.failed for b in buckets) == 2
    assert sum(b.delivered for b in buckets) == 1


def test_a_failing_delivery_never_fails_the_caller(
    direct: FakeCustomerIO, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever breaks while sending (here the database), the operation is stored and the
    request goes on: in autocommit and after a commit alike."""
    from django.db import DatabaseError

    def broken(**kwargs: Any) -> outbox.DrainResult:
        raise DatabaseError("connection lost")

    monkeypatch.setattr(outbox, "drain", broken)
    first = cio.track("p", "x")
    with transaction.atomic():
        second = cio.track("q", "x")
    assert sorted(Operation.objects.values_list("pk", "status")) == [
        (first.pk, Status.PENDING),
        (second.pk, Status.PENDING),
    ]
    assert direct.requests == []
    assert caplog.text.count("left to the drain") == 2

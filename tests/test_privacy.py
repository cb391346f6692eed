"""Forget a person: payloads and keys erased, open operations never sent."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.checks import run_checks
from django.core.management import call_command
from django.core.management.base import CommandError

import django_cio_reliable as cio
from django_cio_reliable import outbox, signals
from django_cio_reliable.conf import app_settings
from django_cio_reliable.exceptions import DeliveryError
from django_cio_reliable.models import IdempotencyKey, Operation
from django_cio_reliable.privacy import FORGOTTEN, forget
from django_cio_reliable.retry import RetryPolicy
from django_cio_reliable.testing import FakeCustomerIO
from django_cio_reliable.transport import get_transport
from django_cio_reliable.validation import json_bytes
from tests.fakes import FakeClock

pytestmark = pytest.mark.django_db(transaction=True)
Status = Operation.Status


def drain() -> outbox.DrainResult:
    return outbox.drain(max_seconds=30, sleep=lambda s: None)


def test_forget_cancels_open_erases_delivered_and_deletes_keys(no_kick: FakeCustomerIO) -> None:
    delivered = cio.identify("alice", {"email": "alice@example.com"}, idempotency_key="a-1")
    drain()
    pending = cio.track("alice", "order_placed", {"total": 42}, idempotency_key="a-2")
    anon = cio.track_anonymous("alice", "page_viewed", {"path": "/secret"})
    other = cio.track("bob", "order_placed", {"total": 1}, idempotency_key="b-1")

    result = cio.forget("alice")

    assert (result.cancelled, result.in_flight, result.erased, result.keys) == (2, 0, 1, 2)
    for op in (delivered, pending, anon):
        op.refresh_from_db()
        assert op.payload == {}
        assert op.idempotency_key == ""
        assert (op.customer_id, op.person_key) == ("", "")
    pending.refresh_from_db()
    assert pending.status == Status.DEAD
    assert pending.last_error == FORGOTTEN
    assert list(IdempotencyKey.objects.values_list("operation_id", flat=True)) == [other.pk]
    assert not Operation.objects.filter(customer_id="alice").exists()
    other.refresh_from_db()
    assert other.payload["data"] == {"total": 1}

    before = {r.event_id for r in no_kick.receipts}
    drain()
    sent = [r for r in no_kick.receipts if r.event_id not in before]
    assert [r.customer_id for r in sent] == ["bob"]
    assert "alice@example.com" not in str(list(Operation.objects.values_list("payload", flat=True)))


def sent_for(server: FakeCustomerIO, customer_id: str) -> list[str]:
    """Kinds of the requests of ``customer_id`` that Customer.io (the fake) applied."""
    return [r.kind for r in server.receipts if r.customer_id == customer_id]


def assert_forgotten(op: Operation) -> None:
    op.refresh_from_db()
    assert op.status == Status.DEAD
    assert op.payload == {}
    assert op.last_error == FORGOTTEN
    assert op.lease_token == ""
    assert op.lease_expires_at is None
    assert op.payload_erased_at is not None


def test_forget_ends_in_flight_operations_for_good(
    no_kick: FakeCustomerIO, fake_clock: FakeClock
) -> None:
    op = cio.track("carol", "x", {"secret": "s3cr3t"})
    held = outbox.claim(10)
    assert [o.pk for o in held.operations] == [op.pk]

    result = forget("carol")

    assert result.in_flight == 1
    assert_forgotten(op)
    # The worker that holds the claim finds no row with its lease token any more: whatever it
    # does next (acknowledge, reschedule, hand back, renew) changes nothing.
    error = DeliveryError("transient", "503 from Customer.io", status=503)
    outbox.ack_failed(held, held.operations[0], error, policy=RetryPolicy.from_settings())
    assert_forgotten(op)
    assert outbox.release(held, held.operations) == 0
    fake_clock.advance(app_settings.LEASE_SECONDS)  # near the end of the lease: hold renews
    assert outbox.hold(held, held.operations) == []
    assert outbox.ack_delivered(held, held.operations) == 0
    assert_forgotten(op)
    # Nor does the lease expire into a retry, or a replay bring it back.
    fake_clock.advance(10 * app_settings.LEASE_SECONDS)
    assert outbox.replay(Operation.objects.filter(pk=op.pk)) == 0
    drain()
    assert_forgotten(op)
    assert sent_for(no_kick, "carol") == []


def test_forget_after_a_claim_stops_the_worker_before_its_next_request(
    no_kick: FakeCustomerIO, fake_clock: FakeClock
) -> None:
    op = cio.identify("dora", {"email": "dora@example.com"})
    later = cio.track("dora", "y", {"n": 1})
    held = outbox.claim(10)
    assert [o.pk for o in held.operations] == [op.pk]  # per-person order: one in flight

    forget("dora")
    # The worker goes on with the claim it holds in memory: the lease check before the
    # request finds the operation ended, so nothing is sent.
    result = outbox.Deliverer(
        transport=get_transport(),
        policy=RetryPolicy.from_settings(),
        limiter=outbox.RateLimiter(sleep=lambda s: None),
    ).deliver(held)

    assert result.lost_lease == 1
    assert sent_for(no_kick, "dora") == []
    assert_forgotten(op)
    assert_forgotten(later)
    fake_clock.advance(10 * app_settings.LEASE_SECONDS)
    drain()
    assert sent_for(no_kick, "dora") == []
    assert Operation.objects.filter(customer_id="dora").exclude(payload={}).count() == 0


def test_forget_lets_at_most_the_request_in_flight_through(
    no_kick: FakeCustomerIO, fake_clock: FakeClock
) -> None:
    op = cio.identify("dora", {"email": "dora@example.com"})
    later = cio.track("dora", "y", {"n": 1})
    held = outbox.claim(10)
    transport = get_transport()

    class ForgetWhileSending:
        """forget() runs while the request is on its way to Customer.io."""

        def __getattr__(self, name: str) -> Any:
            return getattr(transport, name)

        def send(self, *args: Any, **kwargs: Any) -> Any:
            forget("dora")
            return transport.send(*args, **kwargs)

        def send_batch(self, *args: Any, **kwargs: Any) -> Any:
            forget("dora")
            return transport.send_batch(*args, **kwargs)

    outbox.Deliverer(
        transport=ForgetWhileSending(),  # type: ignore[arg-type]
        policy=RetryPolicy.from_settings(),
        limiter=outbox.RateLimiter(sleep=lambda s: None),
    ).deliver(held)

    # That one request reached Customer.io, but its acknowledgement is fenced out and the row
    # stays forgotten; nothing else of the person is ever sent.
    assert sent_for(no_kick, "dora") == ["identify"]
    assert_forgotten(op)
    assert_forgotten(later)
    fake_clock.advance(10 * app_settings.LEASE_SECONDS)
    drain()
    assert sent_for(no_kick, "dora") == ["identify"]
    assert Operation.objects.filter(customer_id="dora").exclude(payload={}).count() == 0


def test_forgotten_operations_are_never_replayed(no_kick: FakeCustomerIO) -> None:
    dead = cio.identify("erin", {"email": "erin@example.com"})
    Operation.objects.filter(pk=dead.pk).update(status=Status.DEAD, last_error="400: bad")
    pending = cio.track("erin", "z")

    result = forget("erin")

    assert (result.cancelled, result.erased) == (1, 1)
    assert outbox.replay(Operation.objects.all()) == 0
    dead.refresh_from_db()
    assert dead.status == Status.DEAD
    assert dead.last_error == "400: bad"  # the operator still sees why it died
    assert dead.payload_erased_at is not None
    assert_forgotten(pending)
    drain()
    assert sent_for(no_kick, "erin") == []


# --------------------------------------------------------------------------- SCRUB_DELIVERED


def test_delivered_payload_is_scrubbed_keeping_the_facts(no_kick: FakeCustomerIO) -> None:
    seen: list[dict[str, Any]] = []

    def receiver(sender: Any, operation: Operation, **kwargs: Any) -> None:
        seen.append(operation.payload)

    signals.operation_delivered.connect(receiver)
    try:
        track = cio.track("fay", "order_placed", {"email": "fay@example.com"})
        identify = cio.identify("fay", {"email": "fay@example.com"})
        drain()
    finally:
        signals.operation_delivered.disconnect(receiver)

    for op, size in ((track, track.payload_bytes), (identify, identify.payload_bytes)):
        row = Operation.objects.get(pk=op.pk)
        assert row.status == Status.DELIVERED
        assert row.payload == {}
        assert row.payload_erased_at == row.delivered_at
        assert size > 0
        assert row.payload_bytes == size
        assert (row.kind, row.customer_id, row.name, row.event_id, row.created_at) == (
            op.kind,
            op.customer_id,
            op.name,
            op.event_id,
            op.created_at,
        )
    assert Operation.objects.get(pk=track.pk).event_id == track.event_id != ""
    # Receivers still get the payload that was sent (in memory, not stored).
    assert [p.get("data", p.get("attributes")) for p in seen] == [{"email": "fay@example.com"}] * 2
    assert "fay@example.com" not in str(list(Operation.objects.values_list("payload", flat=True)))


def test_scrubbing_records_a_missing_size(no_kick: FakeCustomerIO) -> None:
    op = cio.track("gil", "x", {"k": "v" * 50})
    Operation.objects.filter(pk=op.pk).update(payload_bytes=0)
    stored = json_bytes(Operation.objects.get(pk=op.pk).payload)
    drain()
    row = Operation.objects.get(pk=op.pk)
    assert row.payload == {}
    assert row.payload_bytes == stored > 50


def test_scrubbing_also_applies_to_direct_delivery(no_kick: FakeCustomerIO, settings: Any) -> None:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "DELIVERY": "direct"}
    op = cio.identify("hal", {"email": "hal@example.com"})
    row = Operation.objects.get(pk=op.pk)
    assert (row.status, row.payload) == (Status.DELIVERED, {})
    assert sent_for(no_kick, "hal") == ["identify"]


def test_dead_operations_keep_their_payload_until_replayed(
    no_kick: FakeCustomerIO, settings: Any
) -> None:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "BATCH": False}
    op = cio.track("ivy", "x", {"k": "v"})
    no_kick.fail_next(1, status=400)
    drain()
    row = Operation.objects.get(pk=op.pk)
    assert row.status == Status.DEAD
    assert row.payload["data"] == {"k": "v"}
    assert row.payload_erased_at is None

    assert outbox.replay(Operation.objects.filter(pk=op.pk)) == 1
    drain()
    row = Operation.objects.get(pk=op.pk)
    assert (row.status, row.payload) == (Status.DELIVERED, {})
    assert [r.event_id for r in no_kick.receipts] == [op.event_id]


def test_scrub_delivered_off_keeps_payloads(no_kick: FakeCustomerIO, settings: Any) -> None:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "SCRUB_DELIVERED": False}
    op = cio.track("jo", "x", {"k": "v"})
    drain()
    row = Operation.objects.get(pk=op.pk)
    assert row.status == Status.DELIVERED
    assert row.payload["data"] == {"k": "v"}
    assert row.payload_erased_at is None


def test_scrub_delivered_is_type_checked(settings: Any) -> None:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "SCRUB_DELIVERED": "yes"}
    problems = [m for m in run_checks() if m.id == "cio_reliable.E003"]
    assert len(problems) == 1
    assert "SCRUB_DELIVERED" in problems[0].msg
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "SCRUB_DELIVERED": False}
    assert not [m for m in run_checks() if "SCRUB_DELIVERED" in m.msg]


def test_forget_then_same_key_enqueues_again(no_kick: FakeCustomerIO) -> None:
    first = cio.track("dave", "x", idempotency_key="d-1")
    forget("dave")
    second = cio.track("dave", "x", idempotency_key="d-1")
    assert second.pk != first.pk


def test_forget_with_send_delete(no_kick: FakeCustomerIO) -> None:
    cio.identify("erin", {"email": "erin@example.com"})
    result = forget("erin", send_delete=True)
    assert result.delete_operation_id is not None
    delete = Operation.objects.get(pk=result.delete_operation_id)
    assert delete.kind == "delete"
    assert delete.status == Status.PENDING
    drain()
    assert [r.kind for r in no_kick.receipts] == ["delete"]


def test_cio_forget_command(no_kick: FakeCustomerIO) -> None:
    cio.track("frank", "x")
    out = StringIO()
    call_command("cio_forget", "frank", "--send-delete", stdout=out)
    text = out.getvalue()
    assert "cancelled=1" in text
    assert "enqueued delete operation" in text
    with pytest.raises(CommandError) as excinfo:
        call_command("cio_forget", "x" * 200, stdout=StringIO())
    assert "150 bytes" in str(excinfo.value)
    assert excinfo.value.returncode == 2


def test_cio_forget_command_reports_in_flight(no_kick: FakeCustomerIO) -> None:
    cio.track("gwen", "x")
    outbox.claim(10)
    out = StringIO()
    call_command("cio_forget", "gwen", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "cancelled=0 in_flight=1 erased=0 keys=0"
    assert "may reach Customer.io once; they are never retried" in lines[1]

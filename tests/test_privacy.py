"""Forget a person: payloads and keys erased, open operations never sent."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

import django_cio_reliable as cio
from django_cio_reliable import outbox
from django_cio_reliable.models import IdempotencyKey, Operation
from django_cio_reliable.privacy import FORGOTTEN, forget
from django_cio_reliable.testing import FakeCustomerIO

pytestmark = pytest.mark.django_db(transaction=True)
Status = Operation.Status


@pytest.fixture
def no_kick(
    fake_cio: FakeCustomerIO, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> FakeCustomerIO:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "DISPATCH": "task", "KICK_DEBOUNCE": 3600}
    from django_cio_reliable import dispatch

    monkeypatch.setattr(dispatch.kicker, "_send", lambda: None)
    return fake_cio


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
    pending.refresh_from_db()
    assert pending.status == Status.DEAD
    assert pending.last_error == FORGOTTEN
    assert set(IdempotencyKey.objects.values_list("key", flat=True)) == {"b-1"}
    other.refresh_from_db()
    assert other.payload["data"] == {"total": 1}

    before = {r.event_id for r in no_kick.receipts}
    drain()
    sent = [r for r in no_kick.receipts if r.event_id not in before]
    assert [r.customer_id for r in sent] == ["bob"]
    assert "alice@example.com" not in str(list(Operation.objects.values_list("payload", flat=True)))


def test_forget_reports_in_flight_operations(no_kick: FakeCustomerIO) -> None:
    cio.track("carol", "x", {"secret": "s3cr3t"})
    held = outbox.claim(10)
    result = forget("carol")
    assert result.in_flight == 1
    assert Operation.objects.get().payload == {}
    # The in-flight worker's acknowledgement still lands (it holds the payload in memory).
    assert outbox.ack_delivered(held, held.operations) == 1


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

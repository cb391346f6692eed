"""Input and identity edges (issue [T2 2/5]): NUL characters, lone surrogates in keys,
idempotency keys scoped by person and kind, a key raced at REPEATABLE READ, the event's real
time, and ``forget`` leaving no customer id behind.

Each test here failed on the code before the fix; the NUL, surrogate and race tests also run on
PostgreSQL (``tox -e pg``), where NUL is what used to doom the caller's transaction.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection, connections, transaction

import django_cio_reliable as cio
from django_cio_reliable import hooks, outbox
from django_cio_reliable.exceptions import IdempotencyConflict, InvalidOperation
from django_cio_reliable.models import IdempotencyKey, Operation
from django_cio_reliable.testing import FakeCustomerIO
from tests.fakes import FakeClock
from tests.hookapp.models import Customer
from tests.test_concurrency import postgres_only

NUL = "a\x00b"


def drain() -> outbox.DrainResult:
    return outbox.drain(max_seconds=30, sleep=lambda s: None)


# --------------------------------------------------------------------------- NUL characters

NUL_CALLS: list[tuple[str, Callable[[], Any], str]] = [
    ("customer id", lambda: cio.identify(NUL, {}), "customer_id"),
    ("anonymous id", lambda: cio.track_anonymous(NUL, "viewed"), "anonymous_id"),
    ("event name", lambda: cio.track("u1", NUL), "name"),
    ("attribute name", lambda: cio.identify("u1", {NUL: 1}), "attributes"),
    ("attribute value", lambda: cio.identify("u1", {"bio": NUL}), 'attributes["bio"]'),
    ("nested attribute value", lambda: cio.identify("u1", {"p": {"x": [NUL]}}), 'attributes["p"]'),
    ("data key", lambda: cio.track("u1", "e", {NUL: 1}), "data"),
    ("data value", lambda: cio.track("u1", "e", {"k": NUL}), "data.k"),
    ("nested data key", lambda: cio.track("u1", "e", {"a": [{"b": {NUL: 1}}]}), "data.a[0].b"),
    ("nested data value", lambda: cio.track("u1", "e", {"a": {"b": [1, NUL]}}), "data.a.b[1]"),
    ("delete", lambda: cio.delete(NUL), "customer_id"),
    ("forget", lambda: cio.forget(NUL), "customer_id"),
    ("idempotency key", lambda: cio.track("u1", "e", idempotency_key=NUL), "idempotency_key"),
]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("what", "call", "field"), NUL_CALLS, ids=[c[0] for c in NUL_CALLS])
def test_a_nul_character_is_refused_and_the_callers_transaction_stays_usable(
    no_kick: FakeCustomerIO, what: str, call: Callable[[], Any], field: str
) -> None:
    with transaction.atomic():
        kept = cio.identify("kept", {"plan": "pro"})
        with pytest.raises(InvalidOperation) as refused:
            call()
        # On PostgreSQL the insert used to raise DataError and doom this block.
        Customer.objects.create(email="after@example.com")
    assert refused.value.field.startswith(field)
    assert refused.value.limit == "no NUL characters"
    assert refused.value.actual == "NUL character"
    assert "\x00" not in str(refused.value)
    assert list(Operation.objects.values_list("pk", flat=True)) == [kept.pk]
    assert Customer.objects.filter(email="after@example.com").exists()


@pytest.mark.django_db(transaction=True)
def test_a_skipping_hook_with_a_nul_value_keeps_the_business_save(no_kick: FakeCustomerIO) -> None:
    hooks.unregister_all()
    try:
        cio.hooks.identify_on_save(
            Customer,
            customer_id=lambda c: c.pk,
            attributes=lambda c: {"email": c.email, "note": NUL},
            on_invalid="skip",
        )
        with transaction.atomic():
            customer = Customer.objects.create(email="ada@example.com")
    finally:
        hooks.unregister_all()
    assert Customer.objects.filter(pk=customer.pk).exists()
    assert Operation.objects.count() == 0


# --------------------------------------------------------------------------- surrogates in keys


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("key", ["\ud800", "order-\udfff-1"])
def test_a_lone_surrogate_in_an_idempotency_key_is_an_invalid_operation(
    no_kick: FakeCustomerIO, key: str
) -> None:
    with transaction.atomic():
        with pytest.raises(InvalidOperation) as refused:
            cio.track("u1", "order_placed", idempotency_key=key)
        Customer.objects.create(email="after@example.com")  # still usable
    assert refused.value.field == "idempotency_key"
    assert refused.value.actual == "lone surrogate"
    assert Operation.objects.count() == 0
    assert IdempotencyKey.objects.count() == 0


# --------------------------------------------------------------------------- key scope


@pytest.mark.django_db(transaction=True)
def test_one_key_for_two_people_stores_and_delivers_both(no_kick: FakeCustomerIO) -> None:
    alice = cio.track("alice", "welcome", {"n": 1}, idempotency_key="welcome")
    bob = cio.track("bob", "welcome", {"n": 2}, idempotency_key="welcome")
    again = cio.track("bob", "welcome", {"n": 3}, idempotency_key="welcome")  # from the cache
    assert alice.pk != bob.pk
    assert again.pk == bob.pk
    assert bob.customer_id == "bob"
    assert alice.event_id != bob.event_id
    assert Operation.objects.count() == 2
    drain()
    received = {(r.customer_id, r.data["n"]) for r in no_kick.receipts if r.applied}
    assert received == {("alice", 1), ("bob", 2)}


@pytest.mark.django_db(transaction=True)
def test_one_key_for_two_kinds_of_one_person_stores_both(
    no_kick: FakeCustomerIO, settings: Any
) -> None:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "IDEMPOTENCY_CACHE_SIZE": 0}
    first = cio.identify("alice", {"plan": "pro"}, idempotency_key="k")
    second = cio.track("alice", "upgraded", idempotency_key="k")
    anonymous = cio.track_anonymous("alice", "upgraded", idempotency_key="k")
    repeat = cio.track("alice", "upgraded", idempotency_key="k")  # from the database
    assert len({first.pk, second.pk, anonymous.pk}) == 3
    assert (second.kind, repeat.pk) == ("track", second.pk)
    assert IdempotencyKey.objects.count() == 3
    # The stored key holds no customer id in clear; the operation keeps the key as given.
    assert not IdempotencyKey.objects.filter(key__contains="alice").exists()
    assert Operation.objects.get(pk=second.pk).idempotency_key == "k"


# --------------------------------------------------------------------------- the race


@pytest.mark.django_db(transaction=True)
@postgres_only
@pytest.mark.postgres
@pytest.mark.concurrency
def test_a_key_raced_at_repeatable_read_raises_a_documented_error(
    no_kick: FakeCustomerIO, settings: Any
) -> None:
    # A cache shared by the two callers would hide the race: they stand for two processes.
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "IDEMPOTENCY_CACHE_SIZE": 0}
    winner: list[Operation] = []

    def other_process() -> None:
        try:
            winner.append(cio.track("alice", "welcome", idempotency_key="welcome-1"))
        finally:
            connections.close_all()

    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        assert Operation.objects.count() == 0  # the snapshot is taken here
        thread = threading.Thread(target=other_process)
        thread.start()
        thread.join(timeout=30)
        assert winner, "the other caller did not store its operation"
        with pytest.raises(IdempotencyConflict) as raced:
            cio.track("alice", "welcome", idempotency_key="welcome-1")
        assert Operation.objects.count() == 0  # nothing stored, the block still usable
    expected = hashlib.sha256(b"welcome-1").hexdigest()[:12]
    assert raced.value.key_hash == expected
    assert expected in str(raced.value)
    assert "welcome-1" not in str(raced.value)
    assert isinstance(raced.value, RuntimeError)  # caught where the old error was
    # The retry the error asks for sees the winner and returns it.
    assert cio.track("alice", "welcome", idempotency_key="welcome-1").pk == winner[0].pk


# --------------------------------------------------------------------------- the event's time


@pytest.fixture
def backlog(no_kick: FakeCustomerIO, fake_clock: FakeClock) -> Iterator[tuple[int, int]]:
    """Two events stored during an outage, one stamped by the caller; delivered 10 min later."""
    stored_at = int(fake_clock.now().timestamp())
    cio.track("alice", "order_placed", {"total": 1})
    cio.track_anonymous("anon-1", "page_viewed", {"path": "/"})
    cio.track("alice", "order_placed", {"total": 2}, timestamp=1_700_000_000)
    fake_clock.advance(600)
    yield stored_at, 1_700_000_000


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("batch", [True, False], ids=["v2-batch", "v1"])
def test_events_carry_the_time_of_the_call_not_of_the_delivery(
    backlog: tuple[int, int], no_kick: FakeCustomerIO, settings: Any, batch: bool
) -> None:
    stored_at, explicit = backlog
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "BATCH": batch}
    drain()
    times = sorted((r.kind, r.data.get("total"), r.timestamp) for r in no_kick.receipts)
    assert times == [
        ("track", 1, stored_at),
        ("track", 2, explicit),  # the caller's time wins
        ("track_anonymous", None, stored_at),
    ]


@pytest.mark.django_db
def test_a_derived_key_ignores_the_stamped_time(no_kick: FakeCustomerIO) -> None:
    first = cio.track("alice", "viewed", {"p": 1}, idempotency_key=cio.DERIVE)
    second = cio.track("alice", "viewed", {"p": 1}, idempotency_key=cio.DERIVE)
    assert first.pk == second.pk


# --------------------------------------------------------------------------- forget


class OutboxElsewhere:
    """Routes the app's writes to a database other than the one Django defaults to."""

    def __init__(self, alias: str) -> None:
        self.alias = alias

    def db_for_write(self, model: type[Any], **hints: Any) -> str | None:
        return self.alias if model._meta.app_label == "django_cio_reliable" else None

    def db_for_read(self, model: type[Any], **hints: Any) -> str | None:
        return self.db_for_write(model)


@pytest.mark.django_db(transaction=True)
def test_forget_honours_the_router_and_leaves_no_customer_id(
    no_kick: FakeCustomerIO, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = cio.identify("alice@example.com", {"plan": "pro"}, idempotency_key="a-1")
    drain()
    # A server's error text (kept from an earlier failed attempt) may echo the id.
    echoed = "transient (HTTP 503): no person alice@example.com yet"
    Operation.objects.filter(pk=first.pk).update(last_error=echoed)
    cio.track("alice@example.com", "order_placed", idempotency_key="a-2")
    # Every ORM call without ``using`` goes to "default"; the router sends the app's to "outbox".
    settings.DATABASE_ROUTERS = [OutboxElsewhere("outbox")]
    from django.db import router

    monkeypatch.setattr(router, "_routers", [OutboxElsewhere("outbox")])
    # A second connection to the test database under another alias.
    default = connections["default"]
    connections["outbox"] = type(default)(dict(default.settings_dict), alias="outbox")
    used: list[str] = []
    real_atomic = transaction.atomic

    def spy_atomic(using: Any = None, savepoint: bool = True, durable: bool = False) -> Any:
        used.append(using if isinstance(using, str) else "default")
        return real_atomic(using, savepoint, durable)

    monkeypatch.setattr(transaction, "atomic", spy_atomic)
    try:
        result = cio.forget("alice@example.com")
    finally:
        connections["outbox"].close()
        del connections["outbox"]
    assert used and set(used) == {"outbox"}
    assert (result.cancelled, result.erased, result.keys) == (1, 1, 2)
    operations = Operation.objects.using("default")
    rows = list(operations.values_list("customer_id", "person_key", "idempotency_key"))
    assert rows == [("", "", ""), ("", "", "")]
    assert not IdempotencyKey.objects.using("default").exists()
    assert "alice" not in str(list(operations.values()))

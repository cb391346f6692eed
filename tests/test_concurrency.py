"""Guarantees 2 and 3 with real threads and processes racing on one database.

- The same idempotency key used at the same instant by 8 threads and 4 processes yields one
  operation and one delivery.
- Several drain worker processes share one outbox (SKIP LOCKED on PostgreSQL, compare-and-set
  on SQLite): every operation is received exactly once and each person's operations arrive in
  the order they were created.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, transaction

import django_cio_reliable as cio
from django_cio_reliable import dispatch, outbox
from django_cio_reliable.idempotency import scope_key
from django_cio_reliable.models import IdempotencyKey, Operation
from django_cio_reliable.testing import FakeCustomerIO
from tests import procs

pytestmark = [pytest.mark.concurrency, pytest.mark.django_db(transaction=True)]

ON_POSTGRES = os.environ.get("CIO_TEST_DB", "sqlite") == "postgres"
postgres_only = pytest.mark.skipif(
    not ON_POSTGRES, reason="PostgreSQL only: run with CIO_TEST_DB=postgres (tox -e pg)"
)

THREADS = 8
PROCESSES = 4
#: Fast, fault-free draining: the rate limit is not what these tests measure.
FAST = {"RATE_LIMIT": 100_000, "BATCH": True, "BATCH_SIZE": 50, "CLAIM_SIZE": 50}


@pytest.fixture
def children(tmp_path: Path) -> Iterator[procs.Children]:
    with procs.Children(tmp_path) as spawned:
        yield spawned


@pytest.fixture
def start_line(tmp_path: Path) -> procs.StartLine:
    return procs.StartLine(tmp_path)


def test_same_key_from_racing_threads_and_processes_is_one_operation(
    fake_cio: FakeCustomerIO,
    settings: Any,
    children: procs.Children,
    start_line: procs.StartLine,
) -> None:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "DISPATCH": "inline", **FAST}
    workers = [
        children.spawn("track", "--caller", f"process-{i}", *start_line.args(f"p{i}"), name=f"p{i}")
        for i in range(PROCESSES)
    ]
    barrier = threading.Barrier(THREADS + 1)
    returned: list[int] = []
    errors: list[BaseException] = []

    def caller(index: int) -> None:
        try:
            connection.ensure_connection()
            barrier.wait(timeout=60)
            # Half of them as a view would, inside the request's transaction; half in
            # autocommit (on SQLite, IMMEDIATE transactions serialise the first half).
            with transaction.atomic() if index % 2 else contextlib.nullcontext():
                operation = cio.track(
                    "42", "order_placed", {"caller": f"thread-{index}"}, idempotency_key="same"
                )
            returned.append(operation.pk)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    start_line.wait_ready(workers)
    start_line.open()
    barrier.wait(timeout=60)
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    for worker in workers:
        assert worker.wait(timeout=60) == 0, worker.describe()
        returned.append(worker.result()["id"])

    operations = list(Operation.objects.all())
    assert len(operations) == 1, operations
    operation = operations[0]
    assert returned == [operation.pk] * (THREADS + PROCESSES)
    [key] = IdempotencyKey.objects.all()
    assert (key.key, key.operation_id) == (scope_key("track", "c:42", "same"), operation.pk)
    assert operation.idempotency_key == "same"

    outbox.drain(max_seconds=30)
    operation.refresh_from_db()
    assert operation.status == Operation.Status.DELIVERED
    assert operation.attempts == 1
    [receipt] = fake_cio.receipts
    assert (receipt.customer_id, receipt.name, receipt.event_id) == (
        "42",
        "order_placed",
        operation.event_id,
    )
    assert len(fake_cio.requests) == 1


def run_drain_workers(
    fake: FakeCustomerIO,
    children: procs.Children,
    start_line: procs.StartLine,
    *,
    workers: int,
    operations: int,
    people: int,
    timeout: float,
) -> list[dict[str, Any]]:
    """Bulk-insert ``operations``, race ``workers`` drain processes on them, check everything.

    Returns the workers' results.
    """
    # Each person's operations scattered over the id range: every claim mixes people, and
    # claims that run in parallel share people, so any ordering mistake shows.
    created = procs.bulk_track(operations, people, shuffle=operations)
    spawned = [
        children.spawn(
            "drain",
            "--timeout",
            str(timeout),
            *start_line.args(f"w{i}"),
            name=f"w{i}",
            overrides=FAST,
        )
        for i in range(workers)
    ]
    start_line.wait_ready(spawned)
    started = time.monotonic()
    start_line.open()
    for worker in spawned:
        assert worker.wait(timeout=timeout + 30) == 0, children.describe()
    elapsed = time.monotonic() - started
    results = [worker.result() for worker in spawned]
    print(f"{workers} workers drained {operations} operations in {elapsed:.1f}s: {results}")

    # Every operation delivered, each claimed exactly once (the attempt is counted at claim).
    assert Operation.objects.exclude(status=Operation.Status.DELIVERED).count() == 0
    assert Operation.objects.exclude(attempts=1).count() == 0
    assert sum(r["delivered"] for r in results) == operations
    # The workers really shared the work.
    assert all(r["delivered"] > 0 for r in results), results

    # The server received each operation exactly once: no duplicate at all, not even deduped.
    receipts = fake.receipts
    assert len(receipts) == operations
    assert fake.duplicates() == []
    assert sorted(r.event_id or "" for r in receipts) == sorted(op.event_id for op in created)

    # Per-person order: each customer's operations arrived in creation order.
    expected = {str(p): list(range(len(range(p, operations, people)))) for p in range(people)}
    assert procs.sequences_by_person(receipts) == expected
    return results


def test_two_drain_workers_on_sqlite_or_postgres_deliver_each_operation_once(
    fake_cio: FakeCustomerIO, children: procs.Children, start_line: procs.StartLine
) -> None:
    run_drain_workers(
        fake_cio, children, start_line, workers=2, operations=2_000, people=200, timeout=60
    )


@pytest.mark.slow
@pytest.mark.postgres
@postgres_only
def test_four_drain_workers_deliver_20000_operations_exactly_once_on_postgres(
    fake_cio: FakeCustomerIO, children: procs.Children, start_line: procs.StartLine
) -> None:
    assert connection.vendor == "postgresql"
    assert connection.features.has_select_for_update_skip_locked
    run_drain_workers(
        fake_cio, children, start_line, workers=4, operations=20_000, people=2_000, timeout=150
    )


def test_a_claim_that_outlives_its_lease_is_not_sent_twice(
    fake_cio: FakeCustomerIO,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    children: procs.Children,
    start_line: procs.StartLine,
) -> None:
    """A slow server (no crash, no error) must not make two live workers send one operation.

    One claim holds ``CLAIM_SIZE`` operations but its lease covers about one request; with v1
    calls at 0.4 s each, the claim is still being worked through when its lease expires, and
    the other worker claims the same operations again.
    """
    overrides = {
        "LEASE_SECONDS": 2.0,
        "TIMEOUT": 1.0,
        "CONNECT_TIMEOUT": 0.5,
        "BATCH": False,
        "CLAIM_SIZE": 10,
        "RATE_LIMIT": 10_000,
    }
    # Stored here, delivered only by the two workers: two identifies of each person.
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "DISPATCH": "task"}
    monkeypatch.setattr(dispatch.kicker, "_send", lambda: None)
    people = 10
    for version in (1, 2):
        for person in range(people):
            cio.identify(f"p{person}", {"version": version})
    fake_cio.set_latency(0.4)
    workers = [
        children.spawn(
            "drain", "--timeout", "60", *start_line.args(f"w{i}"), name=f"w{i}", overrides=overrides
        )
        for i in range(2)
    ]
    start_line.wait_ready(workers)
    start_line.open()
    for worker in workers:
        assert worker.wait(timeout=75) == 0, children.describe()

    assert Operation.objects.exclude(status=Operation.Status.DELIVERED).count() == 0
    # Each person ends with the attributes of their latest identify ...
    assert fake_cio.people() == {f"p{p}": {"version": 2} for p in range(people)}
    # ... and each operation was sent once: nothing crashed, so nothing had to be re-sent.
    assert len(fake_cio.receipts) == 2 * people


@pytest.mark.postgres
@postgres_only
@pytest.mark.django_db(transaction=True)
def test_claim_query_skips_delivered_rows_through_the_open_index() -> None:
    """Delivered rows are kept for RETAIN_DELIVERED and far outnumber the open ones: the claim
    must not walk them (it did, 50,000 filtered rows for each claim)."""
    from django.db import connection
    from django.utils import timezone

    from django_cio_reliable import outbox

    now = timezone.now()
    common = {"kind": "identify", "payload": {}, "next_attempt_at": now, "created_at": now}
    Operation.objects.bulk_create(
        [
            Operation(customer_id=f"c{i}", person_key=f"c:c{i}", status="delivered", **common)
            for i in range(20_000)
        ],
        batch_size=5_000,
    )
    Operation.objects.bulk_create(
        [
            Operation(customer_id=f"p{i}", person_key=f"c:p{i}", status="pending", **common)
            for i in range(500)
        ]
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE django_cio_reliable_operation")
    plan = outbox.claimable(now).values_list("id", flat=True)[:100].explain()
    assert "cio_op_open" in plan, plan

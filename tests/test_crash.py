"""Guarantee 1 (and 2) against real drain workers killed with SIGKILL or stopped with SIGTERM.

A killed worker leaves its claimed operations ``sending`` under a lease; once the lease expires
another worker delivers them. A request the dead worker had sent is re-sent with the same event
id, and FakeCustomerIO (like Customer.io) deduplicates it: nothing is lost, nothing applied twice.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from django_cio_reliable import outbox
from django_cio_reliable.models import Operation
from django_cio_reliable.testing import FakeCustomerIO, Receipt
from tests import procs

pytestmark = [pytest.mark.crash, pytest.mark.django_db(transaction=True)]

Status = Operation.Status
LEASE_SECONDS = 2.0
#: Short leases so a dead worker's claims come back within the test; the system check
#: requires LEASE_SECONDS > TIMEOUT + CONNECT_TIMEOUT.
CRASH_SETTINGS: dict[str, Any] = {
    "LEASE_SECONDS": LEASE_SECONDS,
    "TIMEOUT": 1.0,
    "CONNECT_TIMEOUT": 0.5,
    "RATE_LIMIT": 10_000,
    "RETRY_BASE": 0.05,
    "RETRY_CAP": 0.5,
}


@pytest.fixture
def children(tmp_path: Path) -> Iterator[procs.Children]:
    with procs.Children(tmp_path) as spawned:
        yield spawned


def monotonic_of(moment: Any) -> float:
    """A wall-clock datetime as a ``time.monotonic()`` reading of this process."""
    return float(moment.timestamp()) - time.time() + time.monotonic()


def assert_nothing_lost_nothing_applied_twice(
    fake: FakeCustomerIO, created: list[Operation]
) -> list[Receipt]:
    """Every operation delivered; every event applied exactly once, in per-person order.

    Returns the duplicate receipts (re-sends that the server's event-id dedupe caught).
    """
    assert Operation.objects.exclude(status=Status.DELIVERED).count() == 0
    event_ids = sorted(op.event_id for op in created)
    applied = fake.applied()
    assert sorted(r.event_id or "" for r in applied) == event_ids
    duplicates = fake.duplicates()
    assert all(not r.applied for r in duplicates)
    assert {r.event_id for r in duplicates} <= set(event_ids)
    assert len(fake.receipts) == len(applied) + len(duplicates)
    for person, seqs in procs.sequences_by_person(applied).items():
        assert seqs == sorted(seqs), f"customer {person} applied out of order: {seqs}"
    return duplicates


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "v1"])
def test_worker_killed_mid_batch_loses_nothing_and_resend_is_deduplicated(
    fake_cio: FakeCustomerIO, children: procs.Children, batch: bool
) -> None:
    overrides = {**CRASH_SETTINGS, "BATCH": batch, "BATCH_SIZE": 5, "CLAIM_SIZE": 15}
    created = procs.bulk_track(40, people=20)  # two operations per person
    fake_cio.hold()
    victim = children.spawn("drain", "--timeout", "30", name="victim", overrides=overrides)
    fake_cio.wait_for_held(1, timeout=30)
    leased = list(
        Operation.objects.filter(status=Status.SENDING).values_list("pk", "lease_expires_at")
    )
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=10) == -signal.SIGKILL
    fake_cio.release()

    # The held request reaches the server after its client died: applied, never acknowledged.
    in_flight = 5 if batch else 1
    fake_cio.wait_for_receipts(in_flight, timeout=10)
    time.sleep(0.2)  # nothing else may arrive
    assert len(fake_cio.receipts) == in_flight
    assert len(fake_cio.requests) == 1
    sent_by_victim = {r.event_id for r in fake_cio.receipts}
    assert len(leased) == 15
    assert Operation.objects.filter(status=Status.SENDING).count() == 15
    assert Operation.objects.filter(status=Status.DELIVERED).count() == 0
    lease_end = max(monotonic_of(expires) for _, expires in leased)

    rescuer = children.spawn("drain", "--timeout", "30", name="rescuer", overrides=overrides)
    assert rescuer.wait(timeout=45) == 0, children.describe()

    duplicates = assert_nothing_lost_nothing_applied_twice(fake_cio, created)
    # Exactly the victim's in-flight request was sent again, and deduplicated.
    assert {r.event_id for r in duplicates} == sent_by_victim
    assert len(duplicates) == in_flight
    # ... only after the victim's lease had expired (a live lease is never taken over).
    assert min(r.received_at for r in duplicates) >= lease_end - 0.05
    # The victim's claim used up one attempt of each operation it held.
    attempts = dict(Operation.objects.values_list("pk", "attempts"))
    assert all(attempts[pk] == 2 for pk, _ in leased)
    assert all(attempts[op.pk] == 1 for op in created if op.pk not in dict(leased))


def test_workers_killed_at_random_points_lose_nothing(
    fake_cio: FakeCustomerIO, children: procs.Children, tmp_path: Path
) -> None:
    seed = random.randrange(1 << 30)
    print(f"random seed {seed}")
    rng = random.Random(seed)
    overrides = {**CRASH_SETTINGS, "BATCH": True, "BATCH_SIZE": 4, "CLAIM_SIZE": 12}
    created = procs.bulk_track(400, people=100)
    fake_cio.set_latency(0.005)
    rounds: list[tuple[str, int, int]] = []
    for index, point in enumerate(["claim", "send", "ack", "timer"] * 2):
        after = rng.randint(1, 3)
        name = f"round{index}-{point}"
        if point == "timer":
            line = procs.StartLine(tmp_path / name)
            line.directory.mkdir()
            worker = children.spawn(
                "drain", "--timeout", "30", *line.args(name), name=name, overrides=overrides
            )
            line.wait_ready([worker])
            line.open()
            time.sleep(rng.uniform(0.0, 0.4))
            worker.kill()
            returncode = worker.wait(timeout=10)
        else:
            worker = children.spawn(
                "drain",
                "--timeout",
                "30",
                "--die-at",
                point,
                "--die-after",
                str(after),
                name=name,
                overrides=overrides,
            )
            returncode = worker.wait(timeout=30)
            assert returncode == -signal.SIGKILL, worker.describe()
        rounds.append((point, after, returncode))
        if point in ("send", "ack"):
            # The request was answered but never acknowledged: still leased, not delivered.
            assert Operation.objects.filter(status=Status.SENDING).exists()
    print(f"rounds (point, after, returncode): {rounds}")

    final = children.spawn("drain", "--timeout", "60", name="final", overrides=overrides)
    assert final.wait(timeout=75) == 0, children.describe()

    duplicates = assert_nothing_lost_nothing_applied_twice(fake_cio, created)
    # The crashes mattered: operations were claimed again, and answered requests re-sent.
    assert Operation.objects.filter(attempts__gt=1).exists()
    assert duplicates, "no request of a killed worker was re-sent"


def test_sigterm_hands_back_unsent_claims(
    fake_cio: FakeCustomerIO, children: procs.Children
) -> None:
    overrides = {"BATCH": True, "BATCH_SIZE": 5, "CLAIM_SIZE": 20, "RATE_LIMIT": 10_000}
    created = procs.bulk_track(20, people=20)
    fake_cio.hold()
    worker = children.spawn("task-drain", "--max-seconds", "30", name="task", overrides=overrides)
    fake_cio.wait_for_held(1, timeout=30)
    assert Operation.objects.filter(status=Status.SENDING, attempts=1).count() == 20
    worker.send_signal(signal.SIGTERM)
    time.sleep(0.3)  # the handler runs at once; the request stays held until released
    assert worker.alive()
    fake_cio.release()
    released_at = time.monotonic()
    # tasks.drain hands back, then lets the SIGTERM terminate the process as asked.
    assert worker.wait(timeout=15) == -signal.SIGTERM, worker.describe()
    assert time.monotonic() - released_at < 5

    # The batch that was in flight was delivered; the 15 claimed but unsent ones came back
    # pending with their attempt refunded and no lease.
    delivered = Operation.objects.filter(status=Status.DELIVERED)
    assert delivered.count() == 5
    assert set(delivered.values_list("attempts", flat=True)) == {1}
    handed_back = Operation.objects.exclude(status=Status.DELIVERED)
    assert handed_back.count() == 15
    assert list(
        handed_back.order_by().values_list("status", "attempts", "lease_token").distinct()
    ) == [(Status.PENDING, 0, "")]
    assert not handed_back.filter(lease_expires_at__isnull=False).exists()
    assert len(fake_cio.receipts) == 5

    # Nothing was lost: the next drain delivers the rest, each operation once.
    assert outbox.drain(max_seconds=30).delivered == 15
    assert fake_cio.duplicates() == []
    assert sorted(r.event_id or "" for r in fake_cio.receipts) == sorted(
        op.event_id for op in created
    )

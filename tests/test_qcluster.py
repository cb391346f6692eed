"""Dispatch through a real django-q2 cluster (``manage.py qcluster``, ORM broker, test database).

- ``DISPATCH="task"``: a commit in this process kicks a drain task; the cluster delivers it
  within a few seconds.
- The drain schedule that ``migrate`` creates (once, however often ``migrate`` runs) delivers
  operations nobody kicked.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone
from django_q.models import OrmQ, Schedule, Task

import django_cio_reliable as cio
from django_cio_reliable import dispatch, outbox
from django_cio_reliable.models import Operation
from django_cio_reliable.testing import FakeCustomerIO
from tests import procs

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

#: Poll the ORM broker often; one worker is plenty (and the machine has two cores).
CLUSTER = {"poll": 0.1, "workers": 1}
KICK_TASK_NAME = "cio-drain-kick"
DELIVERY_BUDGET = 5.0


@pytest.fixture
def children(tmp_path: Path) -> Iterator[procs.Children]:
    with procs.Children(tmp_path) as spawned:
        yield spawned


@pytest.fixture
def task_dispatch(fake_cio: FakeCustomerIO, settings: Any) -> Iterator[FakeCustomerIO]:
    """``DISPATCH="task"`` in this process: commits kick a real ``async_task`` (ORM broker).

    One kick per commit phase: the debounce is huge and the kicker is reset between phases, so
    no trailing kick is left to fire from a timer thread after the test.
    """
    settings.CIO_RELIABLE = {
        **settings.CIO_RELIABLE,
        "DISPATCH": "task",
        "KICK_DEBOUNCE": 3600,
        "RATE_LIMIT": 10_000,
    }
    dispatch.kicker.reset()
    try:
        yield fake_cio
    finally:
        dispatch.kicker.reset()


def start_cluster(children: procs.Children, **q_cluster: Any) -> procs.Child:
    return children.spawn("manage", "qcluster", name="qcluster", q_cluster={**CLUSTER, **q_cluster})


def stop_cluster(cluster: procs.Child) -> None:
    assert cluster.alive(), f"the cluster died\n{cluster.describe()}"
    cluster.stop(timeout=10)


def test_migrate_twice_leaves_one_drain_and_one_purge_schedule(settings: Any) -> None:
    Schedule.objects.all().delete()
    call_command("migrate", verbosity=0, interactive=False)
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "DRAIN_SCHEDULE_MINUTES": 5}
    call_command("migrate", verbosity=0, interactive=False)
    assert sorted(Schedule.objects.values_list("name", "func")) == sorted(
        [
            (dispatch.DRAIN_SCHEDULE_NAME, dispatch.DRAIN_TASK),
            (dispatch.PURGE_SCHEDULE_NAME, dispatch.PURGE_TASK),
        ]
    )
    drain = Schedule.objects.get(name=dispatch.DRAIN_SCHEDULE_NAME)
    assert (drain.schedule_type, drain.minutes, drain.repeats) == (Schedule.MINUTES, 5, -1)
    purge = Schedule.objects.get(name=dispatch.PURGE_SCHEDULE_NAME)
    assert (purge.schedule_type, purge.repeats) == (Schedule.HOURLY, -1)


def test_cluster_delivers_within_seconds_of_commit(
    task_dispatch: FakeCustomerIO, children: procs.Children
) -> None:
    fake = task_dispatch
    # Only kicks may deliver here: no schedule, and the cluster's scheduler is off anyway.
    Schedule.objects.all().delete()
    cluster = start_cluster(children, scheduler=False)
    try:
        # Warm-up: the first commit is delivered once the cluster is up.
        with transaction.atomic():
            first = cio.track("1", "signed_up")
        assert Operation.objects.get(pk=first.pk).status == Operation.Status.PENDING
        fake.wait_for_receipts(1, timeout=60)
        # Let that drain task finish, so only the next kick can deliver what comes next.
        procs.wait_until(
            lambda: Task.objects.filter(name=KICK_TASK_NAME, success=True).count() == 1,
            30,
            "the first kicked drain task to finish",
        )

        dispatch.kicker.reset()
        with transaction.atomic():
            ops = [cio.track(str(i), "order_placed", {"total": i}) for i in range(5)]
            ops.append(cio.identify("1", {"plan": "pro"}))
            assert fake.request_count == 1  # nothing is sent before the commit
        committed = time.monotonic()
        receipts = fake.wait_for_receipts(7, timeout=30)
        latency = max(r.received_at for r in receipts) - committed
        print(f"delivered {len(ops)} operations {latency:.2f}s after commit")
        assert latency < DELIVERY_BUDGET

        procs.wait_until(
            lambda: not Operation.objects.exclude(status=Operation.Status.DELIVERED).exists(),
            10,
            "every operation marked delivered",
        )
        assert fake.duplicates() == []
        assert sorted(r.event_id or "" for r in receipts if r.kind == "track") == sorted(
            op.event_id for op in [first, *ops] if op.kind == "track"
        )
        # Delivered by the drain task that the commit kicked: one kick per commit.
        procs.wait_until(
            lambda: Task.objects.filter(name=KICK_TASK_NAME, success=True).count() == 2,
            10,
            "the second kicked drain task to be saved as successful",
        )
        procs.wait_until(lambda: not OrmQ.objects.exists(), 10, "the broker queue to empty")
        tasks = Task.objects.filter(func=dispatch.DRAIN_TASK).order_by("started")
        assert [task.result["delivered"] for task in tasks] == [1, len(ops)]
    finally:
        stop_cluster(cluster)


def test_schedule_alone_drains_missed_operations(
    task_dispatch: FakeCustomerIO, children: procs.Children
) -> None:
    fake = task_dispatch
    call_command("migrate", verbosity=0, interactive=False)
    # Operations nobody kicked (as if the process that stored them died before its kick).
    created = procs.bulk_track(30, people=10)
    assert not OrmQ.objects.exists()
    now = timezone.now()
    Schedule.objects.filter(name=dispatch.DRAIN_SCHEDULE_NAME).update(
        next_run=now - timedelta(seconds=1)
    )
    Schedule.objects.filter(name=dispatch.PURGE_SCHEDULE_NAME).update(
        next_run=now + timedelta(hours=1)
    )
    # django-q2 runs its scheduler every 30 s of guard cycles; a 30 s cycle runs it at once.
    cluster = start_cluster(children, guard_cycle=30)
    try:
        receipts = fake.wait_for_receipts(30, timeout=60)
        assert sorted(r.event_id or "" for r in receipts) == sorted(op.event_id for op in created)
        procs.wait_until(
            lambda: not Operation.objects.exclude(status=Operation.Status.DELIVERED).exists(),
            10,
            "every operation marked delivered",
        )
        drain = Schedule.objects.get(name=dispatch.DRAIN_SCHEDULE_NAME)
        assert drain.next_run > now
        procs.wait_until(
            lambda: Task.objects.filter(group=dispatch.DRAIN_SCHEDULE_NAME, success=True).exists(),
            10,
            "the scheduled drain task to be saved as successful",
        )
        assert not Task.objects.filter(name=KICK_TASK_NAME).exists()
        assert fake.duplicates() == []
    finally:
        stop_cluster(cluster)


def test_sigterm_to_the_cluster_hands_back_unsent_claims(
    task_dispatch: FakeCustomerIO, children: procs.Children
) -> None:
    fake = task_dispatch
    Schedule.objects.all().delete()
    overrides = {"BATCH": True, "BATCH_SIZE": 5, "CLAIM_SIZE": 20, "TIMEOUT": 10.0}
    cluster = children.spawn(
        "manage", "qcluster", name="qcluster", overrides=overrides, q_cluster=CLUSTER
    )
    try:
        fake.hold()
        with transaction.atomic():
            ops = [cio.track(str(i), "order_placed", {"n": i}) for i in range(20)]
        fake.wait_for_held(1, timeout=60)  # a worker's drain task sent its first batch
        # Stop the whole cluster the way a service manager does: SIGTERM to every process.
        os.killpg(cluster.pid, signal.SIGTERM)
        time.sleep(0.3)
        fake.release()

        def settled() -> bool:
            return not Operation.objects.filter(status=Operation.Status.SENDING).exists()

        procs.wait_until(settled, 15, "the drain task to hand back its claims")
        delivered = Operation.objects.filter(status=Operation.Status.DELIVERED)
        assert delivered.count() == 5
        handed_back = Operation.objects.exclude(status=Operation.Status.DELIVERED)
        assert list(
            handed_back.order_by().values_list("status", "attempts", "lease_token").distinct()
        ) == [(Operation.Status.PENDING, 0, "")]
        assert len(fake.receipts) == 5
    finally:
        # django-q2 1.11's main process never exits after a SIGTERM to the whole group (its
        # sentinel dies at once and the main process blocks); a service manager would SIGKILL
        # it after its grace period, and so do we.
        cluster.kill()

    assert outbox.drain(max_seconds=30).delivered == 15
    assert fake.duplicates() == []
    assert sorted(r.event_id or "" for r in fake.receipts) == sorted(op.event_id for op in ops)

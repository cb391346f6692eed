"""Coordination state shared by the fleet (DESIGN.md, core invariants 3 and 4).

Invariant 3: the caller's transaction holds only the caller's rows. The breaker row, the
rate-limit row and the dashboard's per-minute counts are written outside any transaction the
caller opened, and no Python lock is held across a database write or an HTTP call. Broken, on
PostgreSQL:

- ``DELIVERY="direct"`` inside ``transaction.atomic()`` (a view under ``ATOMIC_REQUESTS``)
  deadlocked: one request's ``Breaker.allow()`` wrote the breaker row in its transaction, a
  second request took ``Breaker._lock`` and waited in its ``UPDATE`` for that row lock, and the
  first request's ``Breaker.record()`` then waited for ``Breaker._lock`` — forever (PostgreSQL's
  deadlock detector cannot see a Python lock). The first call to a new destination (after
  ``SITE_ID`` is rotated) did the same with ``_load()``'s ``get_or_create``.
- A direct call held the fleet-wide rate-limit row (``SELECT … FOR UPDATE``) and the dashboard's
  minute row until its caller committed: every drain worker and every other request waited for
  the slowest open request.

Invariant 4: time shared between hosts is the database's time, and every wait computed from
shared state is clamped. Broken on every database: one reservation from a host whose clock ran
an hour ahead made a correctly-clocked worker sleep an hour.

The threaded tests are bounded: the threads are daemons joined with a timeout, every thread's
connection has a PostgreSQL ``lock_timeout`` (so stuck threads end eventually and the test
database can be dropped), and a thread still stuck after :data:`DEADLINE` fails the test.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection, transaction

import django_cio_reliable as cio
from django_cio_reliable import breaker, metrics, outbox
from django_cio_reliable.conf import app_settings
from django_cio_reliable.models import BreakerState, DeliveryState, Operation
from django_cio_reliable.testing import FakeCustomerIO

pytestmark = pytest.mark.django_db(transaction=True)

ON_POSTGRES = os.environ.get("CIO_TEST_DB", "sqlite") == "postgres"
postgres_only = pytest.mark.skipif(
    not ON_POSTGRES, reason="PostgreSQL only: run with CIO_TEST_DB=postgres (tox -e pg)"
)

Status = Operation.Status

#: Seconds every thread of a test has to finish; still running after that = stuck.
DEADLINE = 20.0
#: PostgreSQL ``lock_timeout`` of the threads' connections: longer than :data:`DEADLINE` (a lock
#: wait is never what ends a passing test), short enough that stuck threads end, roll back and
#: let the test database be flushed and dropped.
LOCK_TIMEOUT_SECONDS = 25
#: How long a request of test 2 keeps its transaction open after its direct call returned.
HOLD = 3.0
#: What another worker may wait meanwhile (a few queries, no waiting for that commit).
MAX_WAIT = 1.5


@pytest.fixture
def direct(direct: FakeCustomerIO, settings: Any) -> FakeCustomerIO:
    """The shared direct mode, with a breaker cache that expires between calls: every call
    past the first reads (and merges into) the shared breaker row."""
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "BREAKER_CACHE_SECONDS": 0.05}
    return direct


class Callers:
    """Daemon threads, each on its own database connection (with a ``lock_timeout``).

    A thread's exception is collected in :attr:`errors` (never left unhandled); :meth:`stop`
    asks the threads that check :attr:`stopping` not to start another call.
    """

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.errors: list[tuple[str, BaseException]] = []
        self.stopping = threading.Event()

    def start(self, name: str, work: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                connection.ensure_connection()
                if connection.vendor == "postgresql":
                    with connection.cursor() as cursor:
                        cursor.execute(f"SET lock_timeout = '{LOCK_TIMEOUT_SECONDS}s'")
                work()
            except BaseException as exc:  # reported by the test
                self.errors.append((name, exc))
            finally:
                connection.close()

        thread = threading.Thread(target=run, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()
        return thread

    def stuck_after(self, seconds: float) -> list[str]:
        """Join every thread within ``seconds`` in all; the names of those still running."""
        deadline = time.monotonic() + seconds
        for thread in self.threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        return [thread.name for thread in self.threads if thread.is_alive()]

    def assert_no_deadlock(self, what: str) -> None:
        """Fail if a thread is still running after :data:`DEADLINE` seconds.

        Before failing, give the stuck threads time to end (their ``lock_timeout`` breaks the
        cycle) so the test database can be flushed and dropped.
        """
        stuck = self.stuck_after(DEADLINE)
        if not stuck:
            return
        self.stopping.set()
        self.stuck_after(LOCK_TIMEOUT_SECONDS + 15)
        pytest.fail(
            f"deadlock: {len(stuck)} threads stuck after {DEADLINE:.0f} s ({', '.join(stuck)}) "
            f"in {what}; errors after the lock_timeout broke it: {self.described_errors()}",
            pytrace=False,
        )

    def described_errors(self) -> list[str]:
        return [f"{name}: {type(exc).__name__}: {exc}".strip() for name, exc in self.errors]


# --------------------------------------------------------------------------- 1. deadlock


THREADS = 5
CALLS = 3
LATENCY = 1.0


@pytest.mark.concurrency
@pytest.mark.postgres
@postgres_only
def test_direct_calls_in_open_transactions_never_deadlock_on_the_shared_breaker(
    direct: FakeCustomerIO,
) -> None:
    """Several requests, each ``with transaction.atomic(): cio.track(...)`` against a server
    answering in a second, each making several calls: every call returns.

    Without invariant 3, a request's ``Breaker.allow()`` merges the process's collected outcomes
    into the breaker row inside its transaction (a row lock held until it commits); another
    request's ``allow()`` takes ``Breaker._lock`` and waits in its ``UPDATE`` for that row; the
    first request's ``record()`` then waits for ``Breaker._lock``.
    """
    # The breaker and delivery-state rows exist and this process has an outcome to merge.
    assert cio.track("warm", "warmed_up").pk is not None
    direct.set_latency(LATENCY)
    callers = Callers()
    barrier = threading.Barrier(THREADS)

    def request(index: int) -> Callable[[], None]:
        def work() -> None:
            barrier.wait(timeout=10)
            # Staggered: some allow() while others are waiting for Customer.io.
            time.sleep(index * 0.2)
            for call in range(CALLS):
                if callers.stopping.is_set():
                    return
                with transaction.atomic():  # a view under ATOMIC_REQUESTS
                    cio.track(f"t{index}-{call}", "order_placed", {"call": call})

        return work

    started = time.monotonic()
    for index in range(THREADS):
        callers.start(f"request-{index}", request(index))
    callers.assert_no_deadlock("transaction.atomic() + cio.track() in DELIVERY='direct'")
    elapsed = time.monotonic() - started
    assert callers.described_errors() == []
    print(f"{THREADS} requests x {CALLS} direct calls in {elapsed:.1f} s")
    tracked = Operation.objects.exclude(customer_id="warm")
    assert tracked.count() == THREADS * CALLS
    assert tracked.exclude(status=Status.DELIVERED).count() == 0


@pytest.mark.concurrency
@pytest.mark.postgres
@postgres_only
def test_the_first_calls_to_a_new_destination_in_open_transactions_never_deadlock(
    direct: FakeCustomerIO, settings: Any
) -> None:
    """``SITE_ID`` rotated: no breaker row exists for the new destination yet.

    Without invariant 3, the first request's ``allow()`` inserts the row (``get_or_create`` in
    ``_load()``) inside its transaction; the next request, holding ``Breaker._lock``, does not
    see it and blocks in its own ``INSERT`` on the unique destination until the first commits;
    the first request's ``record()`` waits for ``Breaker._lock``.
    """
    with FakeCustomerIO(site_id="rotated-site", api_key="rotated-api-key-0123456789") as rotated:
        settings.CIO_RELIABLE = {
            **settings.CIO_RELIABLE,
            "SITE_ID": "rotated-site",
            "API_KEY": "rotated-api-key-0123456789",
            "TRACK_URL": rotated.url,
        }
        breaker.reset()
        assert not BreakerState.objects.filter(destination=app_settings.destination).exists()
        assert not DeliveryState.objects.filter(destination=app_settings.destination).exists()
        rotated.set_latency(1.5)
        callers = Callers()

        def request(index: int) -> Callable[[], None]:
            def work() -> None:
                with transaction.atomic():
                    cio.track(f"n{index}", "order_placed", {"index": index})

            return work

        callers.start("first-request", request(0))
        time.sleep(0.5)  # the first request is waiting for Customer.io
        callers.start("second-request", request(1))
        time.sleep(0.3)
        callers.start("third-request", request(2))
        callers.assert_no_deadlock("the first direct calls to a new destination")
        assert callers.described_errors() == []
        assert Operation.objects.count() == 3
        assert Operation.objects.exclude(status=Status.DELIVERED).count() == 0
        assert len(rotated.receipts) == 3


# --------------------------------------------------------------------------- 2. row locks


def _probe_reserve(fake: FakeCustomerIO, request: pytest.FixtureRequest) -> Callable[[], None]:
    def probe() -> None:
        assert outbox.RateLimiter(sleep=lambda seconds: None).reserve() is not None

    return probe


def _probe_drain(fake: FakeCustomerIO, request: pytest.FixtureRequest) -> Callable[[], None]:
    other = outbox.enqueue(
        Operation.Kind.TRACK, "drained", {"name": "order_placed", "data": {}}, name="order_placed"
    )

    def probe() -> None:
        result = outbox.drain(ids=[other.pk], max_seconds=10, sleep=lambda seconds: None)
        assert result.delivered == 1

    return probe


def _probe_direct_call(fake: FakeCustomerIO, request: pytest.FixtureRequest) -> Callable[[], None]:
    def probe() -> None:
        with transaction.atomic():
            operation = cio.track("other-request", "order_placed", {})
        operation.refresh_from_db()
        assert operation.status == Status.DELIVERED

    return probe


def _probe_dashboard_count(
    fake: FakeCustomerIO, request: pytest.FixtureRequest
) -> Callable[[], None]:
    # One frozen clock: both acknowledgements count in the same minute's row.
    request.getfixturevalue("fake_clock")

    def probe() -> None:
        metrics.record(delivered=1)

    return probe


@pytest.mark.concurrency
@pytest.mark.postgres
@postgres_only
@pytest.mark.parametrize(
    "make_probe",
    [
        pytest.param(_probe_reserve, id="rate_limiter_reserve"),
        pytest.param(_probe_drain, id="drain_of_another_operation"),
        pytest.param(_probe_direct_call, id="direct_call_in_its_own_transaction"),
        pytest.param(_probe_dashboard_count, id="dashboard_minute_count"),
    ],
)
def test_an_open_request_transaction_does_not_hold_fleet_wide_rows(
    direct: FakeCustomerIO,
    request: pytest.FixtureRequest,
    make_probe: Callable[[FakeCustomerIO, pytest.FixtureRequest], Callable[[], None]],
) -> None:
    """A request made a direct call and keeps its transaction open for :data:`HOLD` seconds
    (a slow view under ``ATOMIC_REQUESTS``): the rest of the fleet does not wait for it.

    Without invariant 3, ``RateLimiter.reserve()`` locks the shared ``DeliveryState`` row
    (``SELECT … FOR UPDATE``) and the acknowledgement updates the ``DeliveryMinute`` row inside
    the caller's transaction: both stay locked until the caller commits.
    """
    probe = make_probe(direct, request)
    callers = Callers()
    sent = threading.Event()
    release = threading.Event()
    held: list[Operation] = []

    def slow_view() -> None:
        with transaction.atomic():
            held.append(cio.track("slow-view", "order_placed", {}))
            sent.set()
            release.wait(HOLD)  # the rest of the view

    callers.start("slow-view", slow_view)
    try:
        assert sent.wait(15), callers.described_errors()
        started = time.monotonic()
        probe()
        waited = time.monotonic() - started
    finally:
        release.set()
        callers.assert_no_deadlock("a request holding its transaction open")
    assert callers.described_errors() == []
    assert waited < MAX_WAIT, (
        f"waited {waited:.1f} s for a request's open transaction (held {HOLD:.0f} s after its "
        f"direct call): fleet-wide state was written inside the caller's transaction"
    )
    # The held request's operation went out (during its call, or once it committed).
    held[0].refresh_from_db()
    assert held[0].status == Status.DELIVERED


# --------------------------------------------------------------------------- 3. clock skew


#: The longest any wait computed from shared rate-limit state may be.
MAX_SHARED_WAIT = 60.0


@pytest.mark.parametrize("take", ["acquire", "try_acquire"])
def test_a_host_clock_an_hour_ahead_cannot_make_other_workers_wait_an_hour(
    settings: Any, take: str
) -> None:
    """One reservation from a host whose clock runs an hour ahead, then a worker with a correct
    clock takes a slot: it must not be told to sleep for an hour.

    The fix must (invariant 4) use the database's time for the timestamps shared between hosts
    (the rate limiter's theoretical arrival time), and clamp every wait computed from shared
    state to a documented maximum (at most :data:`MAX_SHARED_WAIT` here). The sleeps are
    recorded, never slept.
    """
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "RATE_LIMIT": 10}
    ahead = outbox.RateLimiter(wall=lambda: time.time() + 3600, sleep=lambda seconds: None)
    ahead.reserve()
    slept: list[float] = []
    correct = outbox.RateLimiter(sleep=slept.append)
    if take == "acquire":
        correct.acquire()
    else:
        assert correct.try_acquire(None) is True
    assert sum(slept) <= MAX_SHARED_WAIT, (
        f"a correctly-clocked worker was told to sleep {sum(slept):.0f} s ({slept}) because "
        f"another host's clock runs an hour ahead"
    )

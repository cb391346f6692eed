"""The circuit breaker shared by real processes, on SQLite and on PostgreSQL.

- One process trips the breaker; another, which had the closed state cached, sees it open
  within ``BREAKER_CACHE_SECONDS``.
- Several processes race for half-open probe slots: at no instant do more than
  ``BREAKER_HALF_OPEN_MAX_CALLS`` of them hold one, and exactly one of them turned the breaker
  half-open.

The children are ``python -m tests.test_breaker_processes <command>`` (see :func:`main`), started
with the environment :mod:`tests.procs` builds (the test database, this test's
``CIO_RELIABLE``) and its start line; each prints one ``CIO-RESULT`` JSON line. Nothing at
module level may need Django's app registry: a child imports this module before setting up.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from tests import procs

ON_POSTGRES = os.environ.get("CIO_TEST_DB", "sqlite") == "postgres"
postgres_only = pytest.mark.skipif(
    not ON_POSTGRES, reason="PostgreSQL only: run with CIO_TEST_DB=postgres (tox -e pg)"
)

#: How much later than the cache period a watcher may notice a trip (a poll, a query, a slow CI).
SLACK = 0.5
#: Processes racing for probe slots, and the slots.
PROBERS = 6
PROBE_SLOTS = 2


# --------------------------------------------------------------------------- parent side


class BreakerChildren(procs.Children):
    """:class:`tests.procs.Children` running this module's child commands."""

    def spawn_breaker(
        self, command: str, *args: str, name: str, overrides: Mapping[str, Any]
    ) -> procs.Child:
        stdout_path = self.workdir / f"{name}.out"
        stderr_path = self.workdir / f"{name}.err"
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.test_breaker_processes", command, *args],
                cwd=procs.ROOT,
                env=procs.child_env(overrides=overrides),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        child = procs.Child(name, process, stdout_path, stderr_path)
        self.spawned.append(child)
        return child


@pytest.fixture
def children(tmp_path: Path) -> Iterator[BreakerChildren]:
    spawned = BreakerChildren(tmp_path)
    try:
        yield spawned
    finally:
        spawned.close()


@pytest.fixture
def start_line(tmp_path: Path) -> procs.StartLine:
    return procs.StartLine(tmp_path)


def finish(children: Sequence[procs.Child], timeout: float = 60.0) -> list[dict[str, Any]]:
    results = []
    for child in children:
        code = child.wait(timeout)
        assert code == 0, child.describe()
        results.append(child.result())
    return results


def see_trip_within_the_cache_period(
    settings: Any, children: BreakerChildren, start_line: procs.StartLine
) -> None:
    cache = 1.0
    overrides = {"BREAKER_CACHE_SECONDS": cache, "BREAKER_RESET_TIMEOUT": 300}
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, **overrides}
    watcher = children.spawn_breaker(
        "watch", "--timeout", "20", *start_line.args("watcher"), name="watcher", overrides=overrides
    )
    tripper = children.spawn_breaker(
        "trip", *start_line.args("tripper"), name="tripper", overrides=overrides
    )
    from django_cio_reliable.models import BreakerEvent, BreakerState

    start_line.wait_ready([watcher, tripper])
    start_line.open()
    watched, tripped = finish([watcher, tripper])

    assert tripped["state"] == "open", children.describe()
    assert watched["saw_open"], children.describe()
    # The watcher had "closed" cached before the trip and noticed it within its cache period.
    assert watched["first_closed_at"] < tripped["tripped_at"]
    delay = watched["saw_open_at"] - tripped["tripped_at"]
    assert delay <= cache + SLACK, (delay, children.describe())
    row = BreakerState.objects.get()
    assert (row.state, row.mode) == ("open", "auto")
    assert [(e.from_state, e.to_state) for e in BreakerEvent.objects.all()] == [("closed", "open")]


def probes_never_exceed_the_limit(
    settings: Any, children: BreakerChildren, start_line: procs.StartLine
) -> None:
    from django_cio_reliable.breaker import Breaker
    from django_cio_reliable.breaker.core import Outcome
    from django_cio_reliable.models import BreakerEvent, BreakerState

    overrides = {
        "BREAKER_CACHE_SECONDS": 0,
        "BREAKER_RESET_TIMEOUT": 0.2,
        "BREAKER_RESET_TIMEOUT_MAX": 0.2,
        "BREAKER_HALF_OPEN_MAX_CALLS": PROBE_SLOTS,
        # Never closes during the run: every grant below is a probe.
        "BREAKER_SUCCESS_THRESHOLD": 1_000_000,
    }
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, **overrides}
    probers = [
        children.spawn_breaker(
            "probe",
            "--seconds",
            "2.5",
            "--hold",
            "0.03",
            *start_line.args(f"p{i}"),
            name=f"p{i}",
            overrides=overrides,
        )
        for i in range(PROBERS)
    ]
    start_line.wait_ready(probers)
    parent = Breaker.from_settings()
    for _ in range(5):
        permit = parent.allow()
        assert permit is not None
        parent.record(permit, Outcome.failure(0.01))
    assert parent.snapshot().state == "open"
    time.sleep(0.25)  # the cooldown ends: the children race to turn it half-open and probe
    start_line.open()
    results = finish(probers)

    intervals = sorted(
        (start, end, result["pid"]) for result in results for start, end in result["held"]
    )
    assert len(intervals) >= 2 * PROBE_SLOTS, children.describe()
    assert sum(result["refused"] for result in results) > 0, "no contention: test too weak"
    assert sum(result["ordinary"] for result in results) == 0
    most = max_overlap([(start, end) for start, end, _ in intervals])
    assert most <= PROBE_SLOTS, (most, intervals)
    transitions = [(e.from_state, e.to_state) for e in BreakerEvent.objects.order_by("id")]
    assert transitions == [("closed", "open"), ("open", "half_open")]
    assert BreakerState.objects.get().state == "half_open"


def max_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    """The largest number of ``(start, end)`` intervals that hold at one instant."""
    points = [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals]
    points.sort(key=lambda point: (point[0], point[1]))  # an end before a start at a tie
    current = most = 0
    for _, step in points:
        current += step
        most = max(most, current)
    return most


def test_max_overlap() -> None:
    assert max_overlap([]) == 0
    assert max_overlap([(0, 1), (1, 2)]) == 1
    assert max_overlap([(0, 3), (1, 2), (1.5, 4)]) == 3


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
def test_other_process_sees_the_trip_within_the_cache_period(
    fake_cio: Any, settings: Any, children: BreakerChildren, start_line: procs.StartLine
) -> None:
    see_trip_within_the_cache_period(settings, children, start_line)


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
def test_concurrent_probes_from_several_processes_never_exceed_the_limit(
    fake_cio: Any, settings: Any, children: BreakerChildren, start_line: procs.StartLine
) -> None:
    probes_never_exceed_the_limit(settings, children, start_line)


@pytest.mark.concurrency
@pytest.mark.postgres
@postgres_only
@pytest.mark.django_db(transaction=True)
def test_other_process_sees_the_trip_within_the_cache_period_on_postgres(
    fake_cio: Any, settings: Any, children: BreakerChildren, start_line: procs.StartLine
) -> None:
    assert connection.vendor == "postgresql"
    see_trip_within_the_cache_period(settings, children, start_line)


@pytest.mark.concurrency
@pytest.mark.postgres
@postgres_only
@pytest.mark.django_db(transaction=True)
def test_concurrent_probes_never_exceed_the_limit_on_postgres(
    fake_cio: Any, settings: Any, children: BreakerChildren, start_line: procs.StartLine
) -> None:
    assert connection.vendor == "postgresql"
    probes_never_exceed_the_limit(settings, children, start_line)


# --------------------------------------------------------------------------- child side


def _ready(args: argparse.Namespace) -> None:
    procs.setup_django()
    from django.db import connection as child_connection

    child_connection.ensure_connection()


def cmd_trip(args: argparse.Namespace) -> int:
    """Warm the cache, wait for the start, then record failures until this process trips it."""
    _ready(args)
    from django_cio_reliable.breaker import get_breaker
    from django_cio_reliable.breaker.core import Outcome

    breaker = get_breaker()
    breaker.allow()
    procs.await_start(args.ready, args.go)
    time.sleep(0.2)  # let the watcher settle on its cached "closed"
    for _ in range(breaker.machine.config.consecutive_failures):
        permit = breaker.allow()
        assert permit is not None
        breaker.record(permit, Outcome.failure(0.01))
    procs.emit({"tripped_at": time.time(), "state": breaker.snapshot().state})
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    """Poll ``allow()`` (answered from the cache) until it refuses; say when."""
    _ready(args)
    from django_cio_reliable.breaker import get_breaker

    breaker = get_breaker()
    procs.await_start(args.ready, args.go)
    deadline = time.monotonic() + args.timeout
    first_closed_at = None
    while time.monotonic() < deadline:
        if breaker.allow() is None:
            procs.emit(
                {"saw_open": True, "saw_open_at": time.time(), "first_closed_at": first_closed_at}
            )
            return 0
        if first_closed_at is None:
            first_closed_at = time.time()
        time.sleep(0.002)
    procs.emit({"saw_open": False, "first_closed_at": first_closed_at})
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    """For ``--seconds``, take probe slots whenever one is free, hold each ``--hold`` seconds,
    report success; print the intervals it held them (between grant and report)."""
    _ready(args)
    from django_cio_reliable.breaker import get_breaker
    from django_cio_reliable.breaker.core import Outcome

    breaker = get_breaker()
    procs.await_start(args.ready, args.go)
    deadline = time.monotonic() + args.seconds
    held: list[tuple[float, float]] = []
    refused = ordinary = 0
    while time.monotonic() < deadline:
        permit = breaker.allow()
        if permit is None:
            refused += 1
            time.sleep(0.002)
            continue
        if not permit.is_probe:
            ordinary += 1
            continue
        start = time.time()
        time.sleep(args.hold)
        end = time.time()
        held.append((start, end))
        breaker.record(permit, Outcome.success(args.hold))
    procs.emit({"pid": os.getpid(), "held": held, "refused": refused, "ordinary": ordinary})
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m tests.test_breaker_processes")
    commands = root.add_subparsers(dest="command", required=True)

    def start_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--ready")
        sub.add_argument("--go")

    trip = commands.add_parser("trip")
    start_options(trip)
    trip.set_defaults(handler=cmd_trip)
    watch = commands.add_parser("watch")
    watch.add_argument("--timeout", type=float, default=20.0)
    start_options(watch)
    watch.set_defaults(handler=cmd_watch)
    probe = commands.add_parser("probe")
    probe.add_argument("--seconds", type=float, default=2.0)
    probe.add_argument("--hold", type=float, default=0.03)
    start_options(probe)
    probe.set_defaults(handler=cmd_probe)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())

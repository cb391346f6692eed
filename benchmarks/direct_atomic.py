"""``DELIVERY="direct"`` under ``ATOMIC_REQUESTS``: the latency of a web request's ``track()``
when 8 requests run at once, each inside its own ``transaction.atomic()``, against
FakeCustomerIO answering in 1.5 s; the baseline is the same 8 threads with
``DELIVERY="outbox"`` (only the enqueue), measured in the same run.

Every thread is bounded: threads start new calls only during the first half of ``--budget``
seconds, and the measurement ends at ``--budget`` whatever happens. A thread still inside a
call then is *stuck* (reported as "stuck: N of 8"; it has been in that call for at least half
the budget). Each database connection gets ``statement_timeout`` and ``lock_timeout``
(``--db-timeout``, 20 s) on PostgreSQL, so a wait for a row lock ends with an error rather
than never; a call that raised is counted (its time included in the percentiles) and its
exception named in the note. The threads are daemons, and when one is stuck the process writes
its rows and leaves with ``os._exit`` so that it always ends.

The documented bound of a direct call is computed from the settings in force:
``(CONNECT_TIMEOUT + TIMEOUT) × DIRECT_ATTEMPTS`` plus the rate-limit wait allowed before
each attempt (``DIRECT_MAX_RATE_WAIT`` each); the third row counts the calls that took longer,
stuck calls included.

Usage: ``python -m benchmarks.direct_atomic [--db postgres|sqlite] [--threads 8] [--calls 10]
[--latency 1.5] [--budget 60] [--db-timeout 20] [--quick|--smoke] [--pg-name NAME]
[--json F]``. ``--smoke``: 2 threads, 3 calls each, 50 ms, a 30 s budget.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/direct_atomic.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

SECTION = "direct-atomic"
#: The rate-limit wait of a direct call before each attempt, when the library does not say.
FALLBACK_RATE_WAIT = 0.25


@dataclass
class Outcome:
    """What one mode's threads did."""

    mode: str
    threads: int
    planned: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    #: The first message of each error type, and where in the library it was raised.
    error_details: dict[str, str] = field(default_factory=dict)
    #: Seconds each stuck thread had been inside its call when the budget ran out.
    stuck: list[float] = field(default_factory=list)
    #: Where each stuck thread was waiting (its innermost library frame and innermost frame).
    stuck_where: list[str] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return len(self.latencies)

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile of the finished calls (``None`` if none finished)."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "threads": self.threads,
            "planned": self.planned,
            "finished": self.finished,
            "seconds": self.seconds,
            "latencies": self.latencies,
            "errors": self.errors,
            "error_details": self.error_details,
            "stuck_seconds": self.stuck,
            "stuck_where": self.stuck_where,
            "p50": self.percentile(50),
            "p99": self.percentile(99),
        }


def set_db_timeouts(milliseconds: int) -> None:
    """Give every new PostgreSQL connection ``statement_timeout`` and ``lock_timeout``."""
    from django.db.backends.signals import connection_created

    def receiver(sender: Any, connection: Any, **kwargs: Any) -> None:
        if connection.vendor != "postgresql":
            return
        with connection.cursor() as cursor:
            cursor.execute(f"SET statement_timeout = {int(milliseconds)}")
            cursor.execute(f"SET lock_timeout = {int(milliseconds)}")

    connection_created.connect(receiver, weak=False, dispatch_uid="cio-bench-direct-timeouts")


def documented_bound() -> tuple[float, str]:
    """The longest a direct call may block, from the settings in force, and how it is made."""
    from django_cio_reliable import conf, direct
    from django_cio_reliable.conf import app_settings

    attempts = max(1, app_settings.DIRECT_ATTEMPTS)
    if "DIRECT_MAX_RATE_WAIT" in conf.DEFAULTS:
        rate_wait = float(app_settings.get("DIRECT_MAX_RATE_WAIT"))
    else:
        rate_wait = float(getattr(direct, "DIRECT_MAX_RATE_WAIT", FALLBACK_RATE_WAIT))
    connect, read = app_settings.CONNECT_TIMEOUT, app_settings.TIMEOUT
    bound = (connect + read) * attempts + rate_wait * attempts
    how = (
        f"(CONNECT_TIMEOUT {connect:g} + TIMEOUT {read:g}) × DIRECT_ATTEMPTS {attempts} "
        f"+ {attempts} × {rate_wait:g} s rate-limit wait = {bound:.2f} s"
    )
    return bound, how


def error_detail(exc: BaseException) -> str:
    """The exception's first line and the innermost library frame that raised it."""
    frames = [
        f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"
        for frame in traceback.extract_tb(exc.__traceback__)
        if "django_cio_reliable" in frame.filename
    ]
    message = " ".join(str(exc).split())[:200]
    return f"{message} (in {frames[-1]})" if frames else message


def run_mode(mode: str, threads: int, calls: int, budget: float) -> Outcome:
    """``threads`` threads, each making up to ``calls`` ``track()`` calls in ``atomic()``."""
    import django_cio_reliable as cio

    outcome = Outcome(mode=mode, threads=threads, planned=threads * calls)
    lock = threading.Lock()
    in_call: list[float | None] = [None] * threads
    barrier = threading.Barrier(threads + 1)
    window = {"stop_new": math.inf}

    def work(index: int) -> None:
        from django.db import connection, transaction

        try:
            barrier.wait(60)
            for n in range(calls):
                if time.monotonic() >= window["stop_new"]:
                    break
                started = time.monotonic()
                in_call[index] = started
                error = detail = ""
                try:
                    with transaction.atomic():
                        cio.track(f"{mode}-{index}-{n}", "order_placed", {"total": 42, "call": n})
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    error, detail = type(exc).__name__, error_detail(exc)
                elapsed = time.monotonic() - started
                in_call[index] = None
                with lock:
                    outcome.latencies.append(elapsed)
                    if error:
                        outcome.errors[error] = outcome.errors.get(error, 0) + 1
                        outcome.error_details.setdefault(error, detail)
        finally:
            connection.close()

    workers = [
        threading.Thread(target=work, args=(i,), name=f"{mode}-{i}", daemon=True)
        for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    started = time.monotonic()
    window["stop_new"] = started + budget / 2
    barrier.wait(60)
    hard_stop = started + budget
    for worker in workers:
        worker.join(max(0.0, hard_stop - time.monotonic()))
    now = time.monotonic()
    outcome.seconds = now - started
    frames = sys._current_frames()
    for index, worker in enumerate(workers):
        if worker.is_alive():
            since = in_call[index]
            outcome.stuck.append(now - since if since is not None else 0.0)
            frame = frames.get(worker.ident or -1)
            outcome.stuck_where.append(waiting_at(frame) if frame is not None else "?")
    return outcome


def waiting_at(frame: FrameType) -> str:
    """The innermost library frame of a stack, and the innermost frame (what it waits on)."""
    stack = traceback.extract_stack(frame)
    ours = [f for f in stack if "django_cio_reliable" in f.filename]
    last = stack[-1]
    innermost = f"{Path(last.filename).name}:{last.lineno} {last.name}"
    if not ours:
        return innermost
    mine = f"{Path(ours[-1].filename).name}:{ours[-1].lineno} {ours[-1].name}"
    return mine if mine == innermost else f"{mine} → {innermost}"


def outcome_counts(mode: str) -> dict[str, int]:
    """Operations of ``mode``'s calls by status (delivered in the request or left to the drain)."""
    from django.db import DatabaseError
    from django.db.models import Count

    from django_cio_reliable.models import Operation

    try:
        return {
            str(row["status"]): int(row["n"])
            for row in Operation.objects.filter(customer_id__startswith=f"{mode}-")
            .values("status")
            .annotate(n=Count("id"))
        }
    except DatabaseError as exc:
        return {f"unknown ({type(exc).__name__})": 0}


def describe(outcome: Outcome, statuses: dict[str, int]) -> str:
    parts = [
        f"{outcome.finished} of {outcome.planned} calls finished in {outcome.seconds:.1f} s",
        f"stuck: {len(outcome.stuck)} of {outcome.threads}",
    ]
    if outcome.stuck:
        parts.append(
            "stuck calls in progress for " + ", ".join(f"{s:.0f} s" for s in outcome.stuck)
        )
        places: dict[str, int] = {}
        for where in outcome.stuck_where:
            places[where] = places.get(where, 0) + 1
        parts.append(
            "stuck waiting in: " + ", ".join(f"{w} × {n}" for w, n in sorted(places.items()))
        )
    not_started = outcome.planned - outcome.finished - len(outcome.stuck)
    if not_started:
        parts.append(f"{not_started} calls not started (budget: new calls in its first half)")
    if outcome.errors:
        parts.append(
            "calls that raised (time included): "
            + ", ".join(
                f"{name} × {n}: {outcome.error_details.get(name, '')}"
                for name, n in sorted(outcome.errors.items())
            )
        )
    if statuses:
        parts.append(
            "operations by status: " + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
        )
    return "; ".join(parts)


def latency_row(
    label: str, value: float | None, baseline_label: str, baseline: float | None, note: str
) -> common.Row:
    ratio = value / baseline if value is not None and baseline else None
    return common.Row(
        section=SECTION,
        label=label,
        value=value,
        unit="s",
        baseline_label=baseline_label,
        baseline=baseline * 1e6 if baseline is not None else None,
        baseline_unit="µs",
        ratio=ratio,
        ratio_label="× the outbox enqueue",
        note=note,
    )


def build_rows(
    direct: Outcome,
    outbox: Outcome,
    *,
    db_label: str,
    latency: float,
    bound: float,
    how: str,
    notes: Sequence[str],
) -> list[common.Row]:
    head = (
        f"direct mode in transaction.atomic(), {direct.threads} threads, {db_label}, "
        f"{latency * 1000:,.0f} ms"
    )
    base = f'DELIVERY="outbox" (enqueue only), {outbox.threads} threads'
    rows = [
        latency_row(
            f"{head}: p50 latency",
            direct.percentile(50),
            f"{base}: p50",
            outbox.percentile(50),
            notes[0],
        ),
        latency_row(
            f"{head}: p99 latency",
            direct.percentile(99),
            f"{base}: p99",
            outbox.percentile(99),
            notes[1],
        ),
    ]
    over = sum(1 for s in direct.latencies if s > bound) + sum(1 for s in direct.stuck if s > bound)
    made = direct.finished + len(direct.stuck)
    raised = sum(direct.errors.values())
    rows.append(
        common.Row(
            section=SECTION,
            label=(
                f"{head}: calls over the documented bound of {bound:.2f} s "
                f"(stuck: {len(direct.stuck)} of {direct.threads}; raised: {raised})"
            ),
            value=float(over),
            unit="calls",
            baseline_label=f"calls made; bound = {how}",
            baseline=float(made),
            baseline_unit="calls",
            ratio=over / made if made else None,
            ratio_label="× the calls made",
            goal="0 over the bound, none stuck, none raised",
            met=over == 0 and not direct.stuck and not raised,
            runs=1,
            note=(
                f"over the bound: {over} ({sum(1 for s in direct.stuck if s > bound)} of them "
                f"stuck at the end of the budget); slowest finished call "
                f"{max(direct.latencies, default=0.0):.2f} s; {notes[2]}"
            ),
        )
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="postgres")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--calls", type=int, default=None, help="calls per thread")
    parser.add_argument("--latency", type=float, default=None, help="FakeCustomerIO, seconds")
    parser.add_argument("--budget", type=float, default=None, help="seconds per mode, hard")
    parser.add_argument(
        "--db-timeout", type=float, default=None, help="statement/lock timeout, seconds"
    )
    parser.add_argument("--runs", type=int, default=1, help="ignored: one run")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument(
        "--pg-name", default=None, help="the PostgreSQL database (dropped and created)"
    )
    parser.add_argument("--json", help="write the rows here (for run.py)")
    args = parser.parse_args(argv)
    size = "smoke" if args.smoke else "quick" if args.quick else "full"
    threads = args.threads or {"smoke": 2, "quick": 8, "full": 8}[size]
    calls = args.calls or {"smoke": 3, "quick": 5, "full": 10}[size]
    latency = args.latency if args.latency is not None else (0.05 if args.smoke else 1.5)
    budget = args.budget or {"smoke": 30.0, "quick": 60.0, "full": 60.0}[size]
    db_timeout = args.db_timeout or (5.0 if args.smoke else 20.0)
    pg_name = args.pg_name or common.pg_database("cio_bench_direct_atomic")

    server = common.fake_server(latency)
    base_settings = common.library_settings(server.url, DELIVERY="outbox")
    common.configure(args.db, pg_name=pg_name, cio=base_settings)
    common.silence_kicks()
    set_db_timeouts(int(db_timeout * 1000))

    from django.conf import settings
    from django.db import connection, transaction
    from django.test import override_settings

    import django_cio_reliable as cio

    db_label = "SQLite file" if args.db == "sqlite" else "PostgreSQL"
    meta: dict[str, Any] = {
        "db": args.db,
        "threads": threads,
        "calls_per_thread": calls,
        "latency": latency,
        "budget": budget,
        "db_timeout": db_timeout,
    }
    # Warm up in this thread: tables, the breaker and delivery-state rows, the transport.
    with transaction.atomic():
        cio.track("warm-outbox", "order_placed", {"total": 42})
    outbox = run_mode("outbox", threads, calls, budget)
    print(f"outbox: {outbox.to_dict()['p50']} s p50, {outbox.finished} calls", flush=True)
    with override_settings(CIO_RELIABLE={**settings.CIO_RELIABLE, "DELIVERY": "direct"}):
        bound, how = documented_bound()
        with transaction.atomic():
            cio.track("warm-direct", "order_placed", {"total": 42})
        direct = run_mode("direct", threads, calls, budget)
    print(
        f"direct: p50 {direct.percentile(50)} s, p99 {direct.percentile(99)} s, "
        f"{direct.finished} calls, stuck {len(direct.stuck)}",
        flush=True,
    )
    statuses = {mode: outcome_counts(mode) for mode in ("outbox", "direct")}
    server.stop()
    meta.update(
        {
            "bound": bound,
            "bound_how": how,
            "outbox": outbox.to_dict(),
            "direct": direct.to_dict(),
            "statuses": statuses,
            "server_requests": len(server.requests),
        }
    )
    direct_note = describe(direct, statuses["direct"])
    outbox_note = "baseline: " + describe(outbox, statuses["outbox"])
    rows = build_rows(
        direct,
        outbox,
        db_label=db_label,
        latency=latency,
        bound=bound,
        how=how,
        notes=(
            f"{direct_note}; {outbox_note}",
            f"p99 = nearest rank over the finished calls; {direct_note}",
            f"database statement/lock timeout {db_timeout:g} s",
        ),
    )
    for row in rows:
        value = "-" if row.value is None else f"{row.value:.3f}"
        print(f"{row.label}: {value} {row.unit}; {row.note}")
    common.write_rows(args.json, rows, meta)
    stuck = bool(direct.stuck or outbox.stuck)
    if args.db == "postgres":
        if not stuck:
            connection.close()
        # Ends the stuck threads' sessions too (their transactions and row locks).
        common.drop_pg_database(pg_name)
    if stuck:
        # Stuck daemon threads may hold locks the interpreter's shutdown would wait for;
        # os._exit skips the atexit hook that removes the SQLite file, so do it here.
        sqlite_path = os.environ.get("CIO_BENCH_SQLITE")
        if args.db == "sqlite" and sqlite_path:
            for suffix in ("", "-journal", "-wal", "-shm"):
                Path(sqlite_path + suffix).unlink(missing_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

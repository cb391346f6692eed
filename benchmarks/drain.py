"""Drain throughput of one worker against FakeCustomerIO at 30 ms, batching on and off, as ratios
to a plain loop of ``customerio`` calls measured in the same run.

The backlog is inserted with ``bulk_create`` before the clock starts (one customer per
operation); the figure is operations delivered per second by ``outbox.drain()`` in this process.
``RATE_LIMIT`` is the default 100 requests/s: one worker at 30 ms makes at most ~33 requests/s,
so the limit does not bind, but its shared-row reservation is paid on every request.

Usage: ``python -m benchmarks.drain [--db sqlite|postgres] [--runs 3] [--quick|--smoke]
[--json F]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/drain.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402
from benchmarks.enqueue import direct_client  # noqa: E402

SECTION = "drain"


def plain_customerio_loop(server: Any, count: int) -> float:
    """Operations per second of one blocking ``customerio`` call per event (no library)."""
    client = direct_client(server)
    client.track(customer_id="plain-warm", name="order_placed", data={"total": 42})
    started = time.perf_counter()
    for i in range(count):
        client.track(customer_id=f"plain-{i}", name="order_placed", data={"total": 42})
    return count / (time.perf_counter() - started)


def outbox_drain(count: int, *, batch: bool) -> float:
    """Operations per second of ``outbox.drain()`` over a backlog of ``count``."""
    from django.test import override_settings

    from django_cio_reliable import outbox
    from django_cio_reliable.conf import app_settings

    common.reset_outbox()
    common.bulk_pending(count, people=count)
    common.vacuum_analyze()
    with override_settings(CIO_RELIABLE={**app_settings_dict(), "BATCH": batch}):
        assert app_settings.BATCH is batch
        started = time.perf_counter()
        result = outbox.drain(max_seconds=3600)
        elapsed = time.perf_counter() - started
    if result.delivered != count:
        raise RuntimeError(f"delivered {result.delivered} of {count}: {result}")
    return count / elapsed


def app_settings_dict() -> dict[str, Any]:
    from django.conf import settings

    value: dict[str, Any] = dict(settings.CIO_RELIABLE)
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--latency", type=float, default=common.LATENCY)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument("--batched", type=int, default=None, help="backlog, batching on")
    parser.add_argument("--single", type=int, default=None, help="backlog, batching off")
    parser.add_argument("--plain", type=int, default=None, help="calls of the plain loop")
    parser.add_argument("--json", help="write the rows here (for run.py)")
    args = parser.parse_args(argv)
    size = "smoke" if args.smoke else "quick" if args.quick else "full"
    batched_n = args.batched or {"smoke": 200, "quick": 1000, "full": 3000}[size]
    single_n = args.single or {"smoke": 10, "quick": 60, "full": 150}[size]
    plain_n = args.plain or {"smoke": 10, "quick": 40, "full": 100}[size]

    server = common.fake_server(args.latency)
    common.configure(args.db, cio=common.library_settings(server.url, RATE_LIMIT=100))
    common.silence_kicks()
    try:
        plain, plain_runs = common.repeat(args.runs, lambda: plain_customerio_loop(server, plain_n))
        batched, batched_runs = common.repeat(
            args.runs, lambda: outbox_drain(batched_n, batch=True)
        )
        single, single_runs = common.repeat(args.runs, lambda: outbox_drain(single_n, batch=False))
    finally:
        server.stop()
    db_label = "SQLite file" if args.db == "sqlite" else "PostgreSQL"
    latency = f"{args.latency * 1000:.0f} ms"
    baseline = f"plain customerio loop, {latency}"
    rows = [
        common.rate_row(
            SECTION,
            f"drain, 1 worker, {db_label}, {latency}, batching on",
            batched,
            baseline,
            plain,
            goal=50,
            runs=args.runs,
            note=f"{batched_n} operations, BATCH_SIZE 100",
        ),
        common.rate_row(
            SECTION,
            f"drain, 1 worker, {db_label}, {latency}, batching off",
            single,
            baseline,
            plain,
            runs=args.runs,
            note=f"{single_n} operations, one request each",
        ),
    ]
    print(f"{'plain customerio loop (baseline)':<52} {plain:>10.1f} op/s")
    for row in rows:
        print(f"{row.label:<52} {row.value or 0:>10.1f} op/s {row.ratio or 0:>8.1f}×")
    common.write_rows(
        args.json,
        rows,
        {
            "db": args.db,
            "plain_runs": plain_runs,
            "batched_runs": batched_runs,
            "single_runs": single_runs,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Drain throughput and enqueue cost against FakeCustomerIO, as ratios to a plain
``customerio`` loop measured in the same run.

Usage: ``python benchmarks/drain.py [--db sqlite|postgres] [--latency 0.03] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def setup(db: str) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
    os.environ["CIO_BENCH_DB"] = db
    if db == "postgres":
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute("DROP DATABASE IF EXISTS cio_bench")
            conn.execute("CREATE DATABASE cio_bench")
    else:
        path = Path(tempfile.gettempdir()) / f"cio_bench_{os.getpid()}.sqlite3"
        os.environ["CIO_BENCH_SQLITE"] = str(path)
        path.unlink(missing_ok=True)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def median_rate(runs: int, fn: Callable[[], tuple[int, float]]) -> float:
    rates = []
    for _ in range(runs):
        count, seconds = fn()
        rates.append(count / seconds)
    return statistics.median(rates)


def plain_customerio_loop(server: Any, count: int) -> tuple[int, float]:
    """What an app does without this library: one blocking ``customerio`` call per event."""
    from customerio import CustomerIO

    client = CustomerIO(site_id=server.site_id, api_key="bench-api-key", retries=0)
    client.base_url = f"{server.url}/api/v1"  # the package builds https URLs only
    started = time.perf_counter()
    for i in range(count):
        client.track(customer_id=f"plain-{i}", name="order_placed", data={"total": 42})
    return count, time.perf_counter() - started


def outbox_drain(server: Any, count: int, *, batch: bool) -> tuple[int, float]:
    from django.test import override_settings

    import django_cio_reliable as cio
    from django_cio_reliable import outbox
    from django_cio_reliable.models import IdempotencyKey, Operation

    Operation.objects.all().delete()
    IdempotencyKey.objects.all().delete()
    overrides = {
        "SITE_ID": server.site_id,
        "API_KEY": "bench-api-key",
        "TRACK_URL": server.url,
        "BATCH": batch,
        "DISPATCH": "task",
        "KICK_DEBOUNCE": 3600,
        "RATE_LIMIT": 100,
        "CLAIM_SIZE": 500,
    }
    with override_settings(CIO_RELIABLE=overrides):
        from django_cio_reliable import dispatch

        dispatch.kicker._send = lambda: None  # type: ignore[method-assign]
        for i in range(count):
            cio.track(f"c{i}", "order_placed", {"total": 42})
        started = time.perf_counter()
        result = outbox.drain(max_seconds=3600)
        elapsed = time.perf_counter() - started
    if result.delivered != count:
        raise RuntimeError(f"delivered {result.delivered} of {count}")
    return count, elapsed


def enqueue_cost(count: int) -> float:
    """Seconds per ``track()`` inside a transaction (median of chunks)."""
    from django.db import transaction

    import django_cio_reliable as cio

    samples = []
    for chunk in range(5):
        started = time.perf_counter()
        for i in range(count // 5):
            with transaction.atomic():
                cio.track(f"e{chunk}-{i}", "order_placed", {"total": 42})
        samples.append((time.perf_counter() - started) / (count // 5))
    return statistics.median(samples)


def direct_call_cost(server: Any, count: int) -> float:
    _, seconds = plain_customerio_loop(server, count)
    return seconds / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--latency", type=float, default=0.03)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batched", type=int, default=3000)
    parser.add_argument("--single", type=int, default=150)
    parser.add_argument("--plain", type=int, default=100)
    args = parser.parse_args(argv)
    setup(args.db)
    from django.test import override_settings

    from django_cio_reliable.testing import FakeCustomerIO

    with FakeCustomerIO(site_id="bench-site", api_key="bench-api-key") as server:
        server.set_latency(args.latency)
        plain = median_rate(args.runs, lambda: plain_customerio_loop(server, args.plain))
        batched = median_rate(args.runs, lambda: outbox_drain(server, args.batched, batch=True))
        single = median_rate(args.runs, lambda: outbox_drain(server, args.single, batch=False))
        server.set_latency(0.0)
        with override_settings(
            CIO_RELIABLE={
                "SITE_ID": "bench-site",
                "API_KEY": "bench-api-key",
                "TRACK_URL": server.url,
                "KICK_DEBOUNCE": 3600,
            }
        ):
            from django_cio_reliable import dispatch

            dispatch.kicker._send = lambda: None  # type: ignore[method-assign]
            enqueue = enqueue_cost(1000)
        direct0 = direct_call_cost(server, 300)
        server.set_latency(0.03)
        direct30 = direct_call_cost(server, 50)
    print(f"database: {args.db}; latency {args.latency * 1000:.0f} ms; median of {args.runs}")
    print(f"{'measure':<44} {'value':>14} {'ratio':>10}")
    print(f"{'plain customerio loop (baseline)':<44} {plain:>10.1f} op/s {1.0:>9.1f}x")
    print(
        f"{'outbox drain, 1 worker, batching on':<44} {batched:>10.1f} op/s "
        f"{batched / plain:>9.1f}x"
    )
    print(
        f"{'outbox drain, 1 worker, batching off':<44} {single:>10.1f} op/s {single / plain:>9.1f}x"
    )
    print(f"{'track() in a transaction':<44} {enqueue * 1e6:>10.0f} µs")
    print(
        f"{'direct customerio call, 0 ms':<44} {direct0 * 1e6:>10.0f} µs {direct0 / enqueue:>9.1f}x"
    )
    print(
        f"{'direct customerio call, 30 ms':<44} {direct30 * 1e6:>10.0f} µs "
        f"{direct30 / enqueue:>9.1f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

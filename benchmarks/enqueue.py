"""Enqueue cost and idempotency keys, against one direct ``customerio`` call measured in this run.

- ``track()`` *marginal*: one call inside a transaction the application already has (the
  transaction is opened before and committed after the timed calls: what a view that already
  writes to the database pays on top).
- ``track()`` *with its own transaction*: ``with transaction.atomic(): track()``, the commit
  included (on SQLite with its default rollback journal the commit fsyncs; on PostgreSQL the
  WAL flush of ``synchronous_commit=on``).
- Baselines: one ``customerio`` package call (``CustomerIO.track``, connection reused) to
  FakeCustomerIO at 0 ms and at 30 ms simulated latency.
- Idempotency: ``track(..., idempotency_key=new)`` vs the same key again (in-process cache hit)
  and again after the cache was cleared (the key row is read from the database).

- Where the marginal cost goes (raw figures, for RESULTS.md): the same row stored with a bare
  ``Operation.save()``; the same INSERT straight through the DB-API driver (no Django: the
  floor of any one-row-per-call outbox); a ``SELECT 1`` through the driver (on PostgreSQL, one
  network round trip); and a cProfile of ``track()`` grouped by component.

Dispatch is real: ``DISPATCH="task"`` with the default ``KICK_DEBOUNCE`` of 1 s, so the
after-commit kick queues at most one django-q2 task per second (amortised in the figures).

Usage: ``python -m benchmarks.enqueue --db sqlite|postgres [--runs 5] [--quick|--smoke]
[--json F]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/enqueue.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

SECTION = "enqueue"


def direct_client(server: Any) -> Any:
    """What an application without this library uses: the ``customerio`` package client."""
    from customerio import CustomerIO

    client = CustomerIO(site_id=common.SITE_ID, api_key=common.API_KEY)
    client.base_url = f"{server.url}/api/v1"  # the package builds https URLs only
    return client


def direct_call_cost(server: Any, count: int, tag: str) -> float:
    """Seconds per direct ``customerio`` track call."""
    client = direct_client(server)
    client.track(customer_id=f"warm-{tag}", name="order_placed", data={"total": 42})
    started = time.perf_counter()
    for i in range(count):
        client.track(customer_id=f"direct-{tag}-{i}", name="order_placed", data={"total": 42})
    return (time.perf_counter() - started) / count


def marginal_cost(count: int, tag: str) -> float:
    """Seconds per ``track()`` inside one open transaction (its commit not timed)."""
    from django.db import transaction

    import django_cio_reliable as cio

    with transaction.atomic():
        started = time.perf_counter()
        for i in range(count):
            cio.track(f"m-{tag}-{i}", "order_placed", {"total": 42})
        elapsed = time.perf_counter() - started
    return elapsed / count


def orm_insert_cost(count: int, tag: str) -> float:
    """Seconds per bare ``Operation.save()`` of the same row inside an open transaction: what
    storing the row the plain Django way costs (``track()`` uses a precompiled INSERT)."""
    from django.db import transaction
    from django.utils import timezone

    from django_cio_reliable.idempotency import new_event_id
    from django_cio_reliable.models import Operation

    with transaction.atomic():
        started = time.perf_counter()
        for i in range(count):
            now = timezone.now()
            event_id = new_event_id()
            Operation(
                kind="track",
                customer_id=f"o-{tag}-{i}",
                person_key=f"c:o-{tag}-{i}",
                name="order_placed",
                payload={"name": "order_placed", "data": {"total": 42}, "id": event_id},
                payload_bytes=40,
                event_id=event_id,
                status="pending",
                next_attempt_at=now,
                created_at=now,
            ).save()
        elapsed = time.perf_counter() - started
    return elapsed / count


def driver_insert_cost(count: int, tag: str) -> float:
    """Seconds per INSERT of the same row straight through the DB-API driver, no Django at all:
    the floor of any outbox that stores one row per call on this database."""
    from django.db import connection, transaction
    from django.db.models.sql import InsertQuery

    from django_cio_reliable.idempotency import new_event_id
    from django_cio_reliable.models import Operation

    meta = Operation._meta
    fields = [f for f in meta.local_concrete_fields if f is not meta.auto_field]
    sample = _sample_operation(f"d-{tag}", new_event_id())
    query = InsertQuery(Operation)
    query.insert_values(fields, [sample])
    compiler = query.get_compiler(connection=connection)
    compiler.returning_fields = [meta.pk]
    sql, prepared = compiler.as_sql()[0]
    if connection.vendor == "sqlite":
        sql = sql.replace("%s", "?")
    params = list(prepared)
    varying = [i for i, f in enumerate(fields) if f.attname in ("customer_id", "person_key")]
    with transaction.atomic():
        connection.ensure_connection()
        raw = connection.connection.cursor()
        started = time.perf_counter()
        for i in range(count):
            for index in varying:
                params[index] = f"{prepared[index]}-{i}"
            raw.execute(sql, params)
            raw.fetchone()
        elapsed = time.perf_counter() - started
        raw.close()
    return elapsed / count


def round_trip_cost(count: int) -> float:
    """Seconds per ``SELECT 1`` through the DB-API driver (PostgreSQL: one network round trip)."""
    from django.db import connection

    connection.ensure_connection()
    raw = connection.connection.cursor()
    started = time.perf_counter()
    for _ in range(count):
        raw.execute("SELECT 1")
        raw.fetchone()
    elapsed = time.perf_counter() - started
    raw.close()
    return elapsed / count


def _sample_operation(customer: str, event_id: str) -> Any:
    from django.utils import timezone

    from django_cio_reliable.models import Operation

    now = timezone.now()
    return Operation(
        kind="track",
        customer_id=customer,
        person_key=f"c:{customer}",
        name="order_placed",
        payload={"name": "order_placed", "data": {"total": 42}, "id": event_id},
        payload_bytes=40,
        event_id=event_id,
        status="pending",
        next_attempt_at=now,
        created_at=now,
        updated_at=now,
    )


#: How the enqueue profile's self time is grouped; first match wins ("file:line(function)").
PROFILE_COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "database driver: the INSERT itself (sqlite3 / psycopg, incl. waiting for PostgreSQL)",
        ("sqlite3", "SQLiteCursorWrapper", "psycopg", "fetchone", "method 'execute'"),
    ),
    ("Django: cursor wrapper, placeholder conversion", ("django/db/backends", "django/db/utils")),
    ("Django: Operation() instance", ("django/db/models/base.py",)),
    ("Django: field value preparation", ("django/db/models/fields",)),
    ("Django: transaction.on_commit", ("django/db/transaction",)),
    ("Django: other", ("django/",)),
    ("JSON encoding", ("json/",)),
    ("library: validation", ("django_cio_reliable/validation.py",)),
    (
        "library: enqueue (api, outbox, ULID)",
        ("django_cio_reliable/",),
    ),
)


def profile_track(count: int) -> dict[str, Any]:
    """cProfile of ``count`` ``track()`` calls inside one transaction, self time by component."""
    import cProfile
    import pstats

    from django.db import transaction

    import django_cio_reliable as cio

    profiler = cProfile.Profile()
    with transaction.atomic():
        profiler.enable()
        for i in range(count):
            cio.track(f"p-{i}", "order_placed", {"total": 42})
        profiler.disable()
    stats = pstats.Stats(profiler)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    groups: dict[str, float] = {}
    top: list[tuple[float, str]] = []
    total = 0.0
    for (filename, line, name), (_cc, _nc, tottime, _cum, _callers) in raw.items():
        total += tottime
        where = f"{filename}:{line}({name})"
        label = "other (interpreter, stdlib)"
        for component, fragments in PROFILE_COMPONENTS:
            if any(f in where for f in fragments):
                label = component
                break
        groups[label] = groups.get(label, 0.0) + tottime
        short = where.replace(str(common.ROOT) + "/", "").split("site-packages/")[-1]
        top.append((tottime, short))
    top.sort(reverse=True)
    return {
        "calls": count,
        "total_us_per_call": total / count * 1e6,
        "components_us_per_call": sorted(
            ((k, v / count * 1e6) for k, v in groups.items()), key=lambda kv: -kv[1]
        ),
        "top": [(round(t / count * 1e6, 2), f) for t, f in top[:10]],
    }


def own_transaction_cost(count: int, tag: str) -> float:
    """Seconds per ``with transaction.atomic(): track()`` (commit included)."""
    from django.db import transaction

    import django_cio_reliable as cio

    started = time.perf_counter()
    for i in range(count):
        with transaction.atomic():
            cio.track(f"t-{tag}-{i}", "order_placed", {"total": 42})
    return (time.perf_counter() - started) / count


def keyed_costs(count: int, tag: str) -> tuple[float, float, float]:
    """Seconds per keyed ``track()``: new key, repeated key (cache hit), repeated (DB read).

    Each inside an open transaction, like :func:`marginal_cost`.
    """
    from django.db import transaction

    import django_cio_reliable as cio
    from django_cio_reliable.idempotency import key_cache

    keys = [f"order-{tag}-{i}" for i in range(count)]

    def run(label: str) -> float:
        with transaction.atomic():
            started = time.perf_counter()
            for i, key in enumerate(keys):
                cio.track(f"k-{tag}-{i}", "order_placed", {"total": 42}, idempotency_key=key)
            elapsed = time.perf_counter() - started
        return elapsed / count

    new = run("new")
    hit = run("cache")
    key_cache.clear()
    db_hit = run("db")
    return new, hit, db_hit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument("--json", help="write the rows here (for run.py)")
    args = parser.parse_args(argv)
    scale = 0.05 if args.smoke else 0.4 if args.quick else 1.0
    marginal_n = int(1000 * scale)
    own_n = int(500 * scale)
    direct0_n = int(300 * scale)
    direct30_n = 5 if args.smoke else max(10, int(30 * scale))
    keyed_n = int(500 * scale)
    profile_n = int(2000 * scale)

    server = common.fake_server()
    common.configure(args.db, cio=common.library_settings(server.url, KICK_DEBOUNCE=1.0))
    db_label = "SQLite file" if args.db == "sqlite" else "PostgreSQL"
    try:
        # Warm up: connections, prepared paths, the transport of the first kick.
        marginal_cost(50, "warm")
        own_transaction_cost(20, "warm")
        margin: list[float] = []
        own: list[float] = []
        direct0: list[float] = []
        direct30: list[float] = []
        keyed: list[tuple[float, float, float]] = []
        orm: list[float] = []
        driver: list[float] = []
        trip: list[float] = []
        for run in range(args.runs):
            server.set_latency(0.0)
            direct0.append(direct_call_cost(server, direct0_n, f"{run}"))
            margin.append(marginal_cost(marginal_n, f"{run}"))
            orm.append(orm_insert_cost(marginal_n, f"{run}"))
            driver.append(driver_insert_cost(marginal_n, f"{run}"))
            trip.append(round_trip_cost(marginal_n))
            own.append(own_transaction_cost(own_n, f"{run}"))
            keyed.append(keyed_costs(keyed_n, f"{run}"))
            server.set_latency(common.LATENCY)
            direct30.append(direct_call_cost(server, direct30_n, f"{run}"))
        profile = profile_track(profile_n)
    finally:
        server.stop()
        if args.db == "postgres":
            from django.db import connection

            connection.close()
            common.drop_pg_database(common.pg_database("cio_bench"))

    us = 1e6
    m, o = common.median(margin) * us, common.median(own) * us
    d0, d30 = common.median(direct0) * us, common.median(direct30) * us
    new = common.median(k[0] for k in keyed) * us
    hit = common.median(k[1] for k in keyed) * us
    db_hit = common.median(k[2] for k in keyed) * us
    runs = args.runs
    base0 = "one direct customerio call, 0 ms"
    base30 = "one direct customerio call, 30 ms"
    rows = [
        common.cost_row(
            SECTION,
            f"track(), {db_label}: marginal, inside the app's transaction",
            m,
            base0,
            d0,
            goal=5,
            runs=runs,
            note="commit not included (the app commits anyway)",
        ),
        common.cost_row(
            SECTION,
            f"track(), {db_label}: marginal, inside the app's transaction",
            m,
            base30,
            d30,
            goal=100,
            runs=runs,
        ),
        common.cost_row(
            SECTION,
            f"track(), {db_label}: own transaction incl. commit",
            o,
            base0,
            d0,
            goal=5,
            runs=runs,
            note="atomic() + INSERT + COMMIT",
        ),
        common.cost_row(
            SECTION,
            f"track(), {db_label}: own transaction incl. commit",
            o,
            base30,
            d30,
            goal=100,
            runs=runs,
        ),
        common.cost_row(
            "idempotency",
            f"track(key=…), {db_label}: repeated key, in-process cache hit",
            hit,
            "the same call with a new key",
            new,
            runs=runs,
            note="no query",
        ),
        common.cost_row(
            "idempotency",
            f"track(key=…), {db_label}: repeated key, read from the database",
            db_hit,
            "the same call with a new key",
            new,
            runs=runs,
            note="key made by another process (cache cleared): 2 SELECTs",
        ),
    ]
    for row in rows:
        print(
            f"{row.label:<62} {row.value or 0:>9.1f} {row.unit}  vs {row.baseline_label:<36} "
            f"{row.baseline or 0:>9.1f} {row.unit}  {row.ratio or 0:>7.1f}{row.ratio_label}"
        )
    common.write_rows(
        args.json,
        rows,
        {
            "db": args.db,
            "orm_insert_us": common.median(orm) * us,
            "driver_insert_us": common.median(driver) * us,
            "round_trip_us": common.median(trip) * us,
            "commit_us": o - m,
            "profile": profile,
            "samples_us": {
                "marginal": [x * us for x in margin],
                "own_transaction": [x * us for x in own],
                "direct_0ms": [x * us for x in direct0],
                "direct_30ms": [x * us for x in direct30],
                "keyed_new_hit_db": [[v * us for v in k] for k in keyed],
            },
            "calls": {
                "marginal": marginal_n,
                "own_transaction": own_n,
                "direct_0ms": direct0_n,
                "direct_30ms": direct30_n,
                "keyed": keyed_n,
            },
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

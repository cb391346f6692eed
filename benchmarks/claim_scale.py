"""Does the claim's cost follow the work or the history? ``outbox.claim(200)`` with 1,000
delivered rows in the table against the same claim with 1,000,000 (design invariant 7).

Each figure is the median of ``--runs`` timed claims. A run puts 200 due pending operations in
place (``bulk_create``, 200 people who also have delivered history), times
``outbox.claim(200)``, checks that it claimed all 200 and deletes them, then (PostgreSQL)
``VACUUM (INDEX_CLEANUP ON)`` clears their dead versions out of the table and its indexes, so
every run starts from the same table. The claim with nothing due (no open row at all) is timed
the same way. The delivered history is made by one ``INSERT … SELECT`` over ``generate_series``
(a recursive CTE on SQLite), then ``VACUUM ANALYZE`` (and a ``CHECKPOINT``). The small table is
measured first, then grown to the big one in place, then emptied and refilled to the small size
and measured again: the baseline is the median of both small passes, so a machine that gets
busier or quieter during the section does not tilt the ratio. On PostgreSQL every statement of
one claim is also replayed under ``EXPLAIN (ANALYZE, BUFFERS)`` at both sizes (plans in the
JSON's meta; buffers, time and sequential scans in the row's note).

The ratio is big ÷ small (smaller is better; the goal is ≤ 1.5×). Sizes: full 1 k vs 1 M on
PostgreSQL (1 k vs 100 k on SQLite), ``--quick`` 1 k vs 200 k (50 k), ``--smoke`` 1 k vs 5 k.

Usage: ``python -m benchmarks.claim_scale [--db sqlite|postgres] [--runs 25] [--quick|--smoke]
[--small N] [--big N] [--pg-name NAME] [--json F]``.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/claim_scale.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

SECTION = "claim-scale"
#: Operations claimed per claim (the library's default ``CLAIM_SIZE``).
CLAIM = 200
#: People of the delivered history; the pending operations belong to the first ``CLAIM``.
PEOPLE = 10_000
GOAL = 1.5

#: SQL for the columns of a delivered row; ``{n}`` is the series value (1, 2, …).
#: Columns not listed get their model default (NOT NULL) or NULL.
_PG_COLUMNS = {
    "kind": "'track'",
    "customer_id": "'b' || ({n} %% {people})",
    "person_key": "'c:b' || ({n} %% {people})",
    "name": "'bench_event'",
    "payload": "'{{}}'::jsonb",
    "payload_bytes": "60",
    "event_id": "lpad(({n} + {offset})::text, 26, '0')",
    "idempotency_key": "''",
    "status": "'delivered'",
    "attempts": "1",
    "next_attempt_at": "%(then)s::timestamptz + {n} * interval '1 millisecond'",
    "lease_token": "''",
    "lease_expires_at": "NULL",
    "last_status_code": "200",
    "last_error": "''",
    "created_at": "%(then)s::timestamptz + {n} * interval '1 millisecond'",
    "updated_at": "%(then)s::timestamptz + {n} * interval '1 millisecond'",
    "delivered_at": "%(then)s::timestamptz + {n} * interval '1 millisecond'",
    "payload_erased_at": "%(then)s::timestamptz + {n} * interval '1 millisecond'",
}
_SQLITE_COLUMNS = {
    **_PG_COLUMNS,
    "payload": "'{{}}'",
    "event_id": "printf('%%026d', {n} + {offset})",
    "next_attempt_at": "%(then)s",
    "created_at": "%(then)s",
    "updated_at": "%(then)s",
    "delivered_at": "%(then)s",
    "payload_erased_at": "%(then)s",
}


def fill_delivered(count: int, offset: int) -> float:
    """Insert ``count`` delivered rows with one ``INSERT … SELECT``; return the seconds taken."""
    from django.db import connection, transaction

    from django_cio_reliable.models import Operation

    postgres = connection.vendor == "postgresql"
    known = _PG_COLUMNS if postgres else _SQLITE_COLUMNS
    then = datetime.now(timezone.utc) - timedelta(days=3)
    params: dict[str, Any] = {
        "then": then if postgres else then.replace(tzinfo=None).isoformat(sep=" "),
    }
    columns: list[str] = []
    values: list[str] = []
    for field in Operation._meta.concrete_fields:
        column = field.column
        if field.primary_key or column is None:
            continue
        if column in known:
            expression = known[column].format(n="n", people=PEOPLE, offset=offset)
        elif field.null:
            continue
        elif field.has_default():
            # A column added to the model since this was written: its default, as the ORM
            # would store it.
            name = f"default_{len(params)}"
            params[name] = field.get_db_prep_save(field.get_default(), connection)
            expression = f"%({name})s"
        else:
            raise RuntimeError(f"no value for the NOT NULL column {column!r}")
        columns.append(connection.ops.quote_name(column))
        values.append(expression)
    table = connection.ops.quote_name(Operation._meta.db_table)
    if postgres:
        sql = (
            f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(values)} "  # noqa: S608
            f"FROM generate_series({offset + 1}, {offset + count}) AS s(n)"
        )
    else:
        sql = (
            f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608
            f"WITH RECURSIVE s(n) AS (SELECT {offset + 1} UNION ALL SELECT n + 1 FROM s "
            f"WHERE n < {offset + count}) SELECT {', '.join(values)} FROM s"
        )
    started = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)
    return time.perf_counter() - started


def analyze() -> float:
    """``VACUUM ANALYZE`` the outbox table (``ANALYZE`` on SQLite); return the seconds taken."""
    from django.db import DatabaseError, connection

    from django_cio_reliable.models import Operation

    started = time.perf_counter()
    with connection.cursor() as cursor:
        table = connection.ops.quote_name(Operation._meta.db_table)
        if connection.vendor == "postgresql":
            cursor.execute(f"VACUUM ANALYZE {table}")
            # Write the fill's dirty pages out now rather than during the timed claims.
            with contextlib.suppress(DatabaseError):  # needs superuser or pg_checkpoint
                cursor.execute("CHECKPOINT")
        else:
            cursor.execute(f"ANALYZE {table}")
    return time.perf_counter() - started


def remove_open() -> None:
    """Delete every open operation (what the runs put in place), untimed."""
    from django.db import connection

    from django_cio_reliable.models import Operation

    table = connection.ops.quote_name(Operation._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {table} WHERE status IN ('pending', 'sending', 'failed')"  # noqa: S608
        )


def vacuum_between_runs() -> None:
    """``VACUUM (INDEX_CLEANUP ON)`` on PostgreSQL, untimed, so every run starts equal.

    A run leaves dead versions of its 200 rows (inserted, claimed, deleted) and their entries
    in the indexes, the partial ``cio_op_open`` included; left there, they pile up run after
    run and a claim that walks that index pays for all of them. A plain ``VACUUM`` may skip the
    indexes when few heap pages have dead rows (it would on the big table, not on the small
    one), hence ``INDEX_CLEANUP ON``.
    """
    from django.db import connection

    from django_cio_reliable.models import Operation

    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        table = connection.ops.quote_name(Operation._meta.db_table)
        cursor.execute(f"VACUUM (INDEX_CLEANUP ON) {table}")


#: CPU seconds of each timed claim since the last :func:`measure` started: this process's plus
#: its PostgreSQL backend's (``/proc``, clock-tick resolution: read as a sum over many claims).
#: Unlike the wall time, it does not grow when other work on the machine takes the cores.
_cpu_samples: list[float] = []


def timed_claim(expected: int) -> float:
    """Seconds of one ``outbox.claim(CLAIM)``; it must claim ``expected`` operations."""
    from django_cio_reliable import outbox

    backend = common.backend_pid()
    cpu = time.process_time() + (common.process_cpu_seconds(backend) if backend else 0.0)
    started = time.perf_counter()
    claimed = outbox.claim(CLAIM)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() + (common.process_cpu_seconds(backend) if backend else 0.0) - cpu
    _cpu_samples.append(cpu)
    if len(claimed.operations) != expected:
        raise RuntimeError(f"claimed {len(claimed.operations)} operations, expected {expected}")
    return elapsed


def claim_due() -> float:
    """One run: 200 due pending operations in place, the claim timed, then removed."""
    common.bulk_pending(CLAIM, people=CLAIM, name="claim_scale")
    try:
        return timed_claim(CLAIM)
    finally:
        remove_open()
        vacuum_between_runs()


def claim_nothing() -> float:
    return timed_claim(0)


def explain_claim(pending: bool) -> dict[str, Any]:
    """Every statement of one claim, replayed in order under ``EXPLAIN (ANALYZE, BUFFERS)``.

    PostgreSQL only. The claim runs once in a rolled-back transaction to capture its SQL (with
    its values), then the statements are replayed in the same order in another rolled-back
    transaction, each under ``EXPLAIN (ANALYZE, BUFFERS)``: nothing stays claimed. Returns,
    per statement, its start, execution time, shared buffers, the indexes its plan names and
    whether it has a sequential scan, and the totals.
    """
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from django_cio_reliable import outbox

    if connection.vendor != "postgresql":
        return {}
    if pending:
        common.bulk_pending(CLAIM, people=CLAIM, name="claim_scale")
    statements: list[dict[str, Any]] = []
    try:
        with transaction.atomic():
            with CaptureQueriesContext(connection) as queries:
                outbox.claim(CLAIM)
            transaction.set_rollback(True)
        sqls = [
            q["sql"]
            for q in queries.captured_queries
            if q["sql"].lstrip().split(" ", 1)[0].upper() in ("SELECT", "UPDATE", "WITH")
        ]
        with transaction.atomic(), connection.cursor() as cursor:
            for sql in sqls:
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
                plan = "\n".join(str(row[0]) for row in cursor.fetchall())
                buffers = re.search(r"Buffers: shared hit=(\d+)(?: read=(\d+))?", plan)
                executed = re.search(r"Execution Time: ([\d.]+) ms", plan)
                statements.append(
                    {
                        "sql": " ".join(sql.split())[:120],
                        "plan": plan,
                        "indexes": sorted(set(re.findall(r"using (\w+)", plan))),
                        "seq_scan": "Seq Scan" in plan,
                        "buffers": (int(buffers.group(1)) + int(buffers.group(2) or 0))
                        if buffers
                        else 0,
                        "execution_ms": float(executed.group(1)) if executed else 0.0,
                    }
                )
            transaction.set_rollback(True)
    finally:
        remove_open()
        vacuum_between_runs()
    return {
        "statements": statements,
        "buffers": sum(st["buffers"] for st in statements),
        "execution_ms": sum(st["execution_ms"] for st in statements),
        "seq_scans": sum(1 for st in statements if st["seq_scan"]),
        "indexes": sorted({index for st in statements for index in st["indexes"]}),
    }


def measure(runs: int, fn: Callable[[], float]) -> tuple[float, list[float], float]:
    """Median seconds of ``runs`` calls of ``fn`` after a warm-up, the samples, mean CPU."""
    fn()  # warm-up: plans, caches
    _cpu_samples.clear()
    median, samples = common.repeat(runs, fn)
    return median, samples, sum(_cpu_samples) / max(1, len(_cpu_samples))


def scale_row(
    label: str,
    big: float,
    small: float,
    small_rows: int,
    runs: int,
    note: str,
) -> common.Row:
    ratio = big / small if small else None
    return common.Row(
        section=SECTION,
        label=label,
        value=big * 1e6,
        unit="µs",
        baseline_label=f"the same claim with {small_rows:,} delivered rows",
        baseline=small * 1e6,
        baseline_unit="µs",
        ratio=ratio,
        ratio_label=f"× the {small_rows:,}-row time",
        goal=f"≤ {GOAL:g}×",
        met=None if ratio is None else ratio <= GOAL,
        runs=runs,
        note=note,
    )


def cpu_note(small: float, big: float, small_n: int, big_n: int) -> str:
    ratio = f" ({big / small:.2f}×)" if small else ""
    return (
        f"; CPU per claim (this process + its database backend, mean): {big * 1e6:,.0f} µs with "
        f"{big_n:,} rows vs {small * 1e6:,.0f} µs with {small_n:,}{ratio}"
    )


def explain_note(small: dict[str, Any], big: dict[str, Any], small_n: int, big_n: int) -> str:
    if not small or not big:
        return ""

    def one(plan: dict[str, Any], n: int) -> str:
        scans = plan.get("seq_scans", 0)
        return (
            f"{n:,} rows: {plan.get('buffers', 0):,} buffers, "
            f"{plan.get('execution_ms', 0.0):.1f} ms, "
            + (f"{scans} sequential scan(s)" if scans else "no sequential scan")
        )

    count = len(big.get("statements", []))
    return (
        f"; EXPLAIN ANALYZE of its {count} statements: {one(small, small_n)}; "
        f"{one(big, big_n)}; indexes used: {', '.join(big.get('indexes', [])) or 'none'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="postgres")
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument("--small", type=int, default=1000, help="delivered rows, baseline")
    parser.add_argument("--big", type=int, default=None, help="delivered rows, figure")
    parser.add_argument(
        "--pg-name", default=None, help="the PostgreSQL database (dropped and created)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL database")
    parser.add_argument("--json", help="write the rows here (for run.py)")
    args = parser.parse_args(argv)
    size = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes = {
        "postgres": {"smoke": 5000, "quick": 200_000, "full": 1_000_000},
        "sqlite": {"smoke": 5000, "quick": 50_000, "full": 100_000},
    }
    small_n = args.small
    big_n = args.big or sizes[args.db][size]
    if big_n <= small_n:
        parser.error("--big must be larger than --small")
    pg_name = args.pg_name or common.pg_database("cio_bench_claim_scale")
    empty_runs = args.runs if args.smoke else max(args.runs, 51)

    started = time.monotonic()
    server = common.fake_server(0.0)
    common.configure(
        args.db, pg_name=pg_name, cio=common.library_settings(server.url, CLAIM_SIZE=CLAIM)
    )
    common.silence_kicks()
    meta: dict[str, Any] = {"db": args.db, "small": small_n, "big": big_n}
    figures: dict[int, dict[str, Any]] = {}
    try:
        # small, big, then small again (emptied and refilled): the baseline is the median of
        # both small passes, so a machine that gets busier or quieter during the section
        # does not tilt the ratio.
        have = 0
        for step, n in enumerate((small_n, big_n, small_n)):
            if n < have:
                common.reset_outbox()
                have = 0
            meta[f"fill_seconds_{step}"] = fill_delivered(n - have, have)
            have = n
            meta[f"analyze_seconds_{step}"] = analyze()
            print(
                f"{n:,} delivered rows: filled in {meta[f'fill_seconds_{step}']:.1f} s, "
                f"analysed in {meta[f'analyze_seconds_{step}']:.1f} s",
                flush=True,
            )
            nothing, nothing_runs, nothing_cpu = measure(empty_runs, claim_nothing)
            due, due_runs, due_cpu = measure(args.runs, claim_due)
            figure = figures.setdefault(
                n, {"nothing_runs": [], "due_runs": [], "nothing_cpu": [], "due_cpu": []}
            )
            figure["nothing_runs"] += nothing_runs
            figure["due_runs"] += due_runs
            figure["nothing_cpu"].append(nothing_cpu)
            figure["due_cpu"].append(due_cpu)
            if "explain_due" not in figure:
                figure["explain_due"] = explain_claim(True)
                figure["explain_nothing"] = explain_claim(False)
            print(
                f"  claim({CLAIM}) of {CLAIM} due: {due * 1e6:,.0f} µs; "
                f"nothing due: {nothing * 1e6:,.0f} µs",
                flush=True,
            )
        for figure in figures.values():
            figure["due"] = common.median(figure["due_runs"])
            figure["nothing"] = common.median(figure["nothing_runs"])
            figure["due_cpu_mean"] = sum(figure["due_cpu"]) / len(figure["due_cpu"])
            figure["nothing_cpu_mean"] = sum(figure["nothing_cpu"]) / len(figure["nothing_cpu"])
    finally:
        server.stop()
        if args.db == "postgres" and not args.keep:
            from django.db import connection

            connection.close()
            common.drop_pg_database(pg_name)
    meta["figures"] = {str(k): v for k, v in figures.items()}
    meta["seconds"] = time.monotonic() - started
    db_label = "SQLite file" if args.db == "sqlite" else "PostgreSQL"
    small, big = figures[small_n], figures[big_n]
    people = f"{CLAIM} people who each have delivered history"
    rows = [
        scale_row(
            f"claim({CLAIM}) of {CLAIM} due, {big_n:,} delivered rows, {db_label}",
            big["due"],
            small["due"],
            small_n,
            args.runs,
            f"{CLAIM} pending operations of {people}, put in place before each run and "
            "deleted"
            + (" (and the table vacuumed)" if args.db == "postgres" else "")
            + f" after; the whole outbox.claim({CLAIM}) call timed; "
            f"baseline: median of a "
            f"{small_n:,}-row pass before and one after the big one"
            + cpu_note(small["due_cpu_mean"], big["due_cpu_mean"], small_n, big_n)
            + explain_note(small["explain_due"], big["explain_due"], small_n, big_n),
        ),
        scale_row(
            f"claim({CLAIM}) with nothing due, {big_n:,} delivered rows, {db_label}",
            big["nothing"],
            small["nothing"],
            small_n,
            empty_runs,
            "no open operation at all (an idle worker's poll)"
            + cpu_note(small["nothing_cpu_mean"], big["nothing_cpu_mean"], small_n, big_n)
            + explain_note(small["explain_nothing"], big["explain_nothing"], small_n, big_n),
        ),
    ]
    for row in rows:
        print(
            f"{row.label:<64} {row.value or 0:>10,.0f} µs  baseline {row.baseline or 0:>10,.0f} µs"
            f"  {row.ratio or 0:.2f}×"
        )
    print(f"section: {meta['seconds']:.0f} s")
    common.write_rows(args.json, rows, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())

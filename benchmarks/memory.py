"""Peak RSS growth of one process draining a large backlog (and backfilling, when available).

The backlog is inserted by this process with ``bulk_create``; a child process
(``python -m benchmarks.child memory-drain``) warms up (modules, HTTP session, claim query),
resets its peak RSS (``/proc/self/clear_refs``), then drains every operation and reports
``VmHWM - VmRSS(before)`` from ``/proc/self/status``, plus RSS samples along the way (flat =
no growth with the number of operations). FakeCustomerIO answers at 0 ms and the rate limit
does not bind (memory does not depend on either; it makes the run short).

Baseline: another child that only loads the same pending operations into a list (what any
code holding the backlog in memory would pay).

Usage: ``python -m benchmarks.memory [--operations 200000] [--quick|--smoke] [--json F]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/memory.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import backfill, common  # noqa: E402

SECTION = "memory"
PG_NAME = common.pg_database("cio_bench_memory")
GOAL_MB = 50.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--operations", type=int, default=None)
    parser.add_argument("--rows", type=int, default=None, help="rows of the backfill")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument("--json", help="write the rows here (for run.py)")
    args = parser.parse_args(argv)
    size = "smoke" if args.smoke else "quick" if args.quick else "full"
    count = args.operations or {"smoke": 2000, "quick": 50_000, "full": 200_000}[size]
    backfill_rows = args.rows or {"smoke": 500, "quick": 10_000, "full": 50_000}[size]

    server = common.fake_server(0.0)
    cio = common.library_settings(server.url, RATE_LIMIT=common.UNBOUND_RATE, CLAIM_SIZE=500)
    env = common.configure("postgres", pg_name=PG_NAME, cio=cio)
    workdir = Path(tempfile.mkdtemp(prefix="cio-bench-memory-"))
    meta: dict[str, Any] = {"operations": count}
    rows: list[common.Row] = []
    try:
        started = time.monotonic()
        common.bulk_pending(count, people=count // 10)
        common.vacuum_analyze()
        meta["fill_seconds"] = time.monotonic() - started
        from django.db import connection

        connection.close()
        load = common.spawn(
            "memory-load", [sys.executable, "-m", "benchmarks.child", "memory-load"], workdir, env
        )
        load.process.wait(600)
        loaded = load.result()
        meta["load"] = loaded
        drain = common.spawn(
            "memory-drain",
            [sys.executable, "-m", "benchmarks.child", "memory-drain"],
            workdir,
            env,
        )
        drain.process.wait(3600)
        drained = drain.result()
        meta["drain"] = drained
        growth_mb = (drained["hwm_kb"] - drained["rss_before_kb"]) / 1024
        load_mb = (loaded["hwm_kb"] - loaded["rss_before_kb"]) / 1024
        samples = drained["samples"]
        half = [rss for done, rss in samples if done >= count // 2]
        late_growth = (max(half) - min(half)) / 1024 if half else 0.0
        row = common.cost_row(
            SECTION,
            f"peak RSS growth draining {count:,} operations (1 process)",
            growth_mb,
            f"loading the {count:,} pending rows into a list",
            load_mb,
            unit="MB",
            note=(
                f"RSS {drained['rss_before_kb'] / 1024:.0f} MB before; "
                f"{late_growth:.1f} MB change over the second half; "
                f"{drained['delivered']:,} delivered in {drained['seconds']:.0f} s"
            ),
        )
        row.goal = f"< {GOAL_MB:g} MB"
        row.met = growth_mb < GOAL_MB and drained["delivered"] == count
        rows.append(row)
        rows.append(backfill.measure(workdir, env, backfill_rows, meta))
    finally:
        server.stop()
        from django.db import connection

        connection.close()
        common.drop_pg_database(PG_NAME)
    for row in rows:
        print(
            f"{row.label:<60} {row.value if row.value is not None else '-'} {row.unit}  {row.note}"
        )
    common.write_rows(args.json, rows, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())

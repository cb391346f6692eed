"""The breaker rows of the table, from ``benchmarks/breaker_overhead.py``.

That script (written with the circuit breaker; not rewritten here) measures a call through a
closed breaker (``allow()`` + call + ``record()``) against a bare call, and the queries made per
1,000 calls in a tight loop and paced at 100 calls/s. This adapter runs it on PostgreSQL and
turns its JSON into rows. Its times are the best of ``--repeat`` timing runs (``timeit``), not
a median. While the script does not exist, the rows say "pending".

Usage: ``python -m benchmarks.breaker_rows [--quick|--smoke] [--db sqlite|postgres] [--json F]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks import common

SECTION = "breaker"
SCRIPT = Path(__file__).resolve().parent / "breaker_overhead.py"
NAIVE_QUERIES = 1000.0


def pending(reason: str) -> list[common.Row]:
    return [
        common.Row(
            section=SECTION,
            label="closed breaker: overhead per call",
            value=None,
            unit="µs",
            goal="≤ 5 µs",
            note=f"pending: {reason}",
        ),
        common.Row(
            section=SECTION,
            label="closed breaker: queries per 1,000 calls",
            value=None,
            unit="queries",
            goal="no query per call",
            note=f"pending: {reason}",
        ),
    ]


def rows_from(figures: dict[str, float], repeat: int) -> list[common.Row]:
    overhead = figures["overhead_us"]
    bare = figures["bare_us"]
    guarded = figures["guarded_us"]
    rows = [
        common.Row(
            section=SECTION,
            label="closed breaker: overhead per call (allow + call + record − bare call)",
            value=overhead,
            unit="µs",
            baseline_label="bare call (an empty function)",
            baseline=bare,
            baseline_unit="µs",
            ratio=guarded / bare if bare else None,
            ratio_label="× the bare call's time",
            goal="≤ 5 µs",
            met=overhead <= 5.0,
            runs=repeat,
            note=(
                f"best of {repeat} timing runs; allow() alone {figures['allow_us']:.2f} µs, "
                f"refused by an open breaker {figures['refused_us']:.2f} µs"
            ),
        )
    ]
    for key, label in (
        ("queries_per_1000_paced", "paced at 100 calls/s (the default RATE_LIMIT)"),
        ("queries_per_1000_tight", "tight loop"),
    ):
        value = figures[key]
        rows.append(
            common.Row(
                section=SECTION,
                label=f"closed breaker: queries per 1,000 calls, {label}",
                value=value,
                unit="queries",
                baseline_label="one query per call (a breaker read from the database each time)",
                baseline=NAIVE_QUERIES,
                baseline_unit="queries",
                ratio=NAIVE_QUERIES / value if value else None,
                ratio_label="× fewer",
                goal="no query per call (< 1,000)",
                met=value < NAIVE_QUERIES,
                note="outcomes are merged into the shared row about once a second",
            )
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="timing runs of the script")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="postgres")
    parser.add_argument("--json", help="write the rows here (for run.py)")
    args = parser.parse_args(argv)
    meta: dict[str, object] = {}
    if not SCRIPT.exists():
        rows = pending("benchmarks/breaker_overhead.py does not exist yet")
    else:
        out = Path(tempfile.mkdtemp(prefix="cio-bench-breaker-")) / "breaker.json"
        argv_ = [sys.executable, "-m", "benchmarks.breaker_overhead", "--db", args.db]
        argv_ += ["--json", str(out)]
        if args.smoke:
            repeat = 1
            argv_ += ["--number", "2000", "--repeat", "1", "--tight-calls", "2000"]
            argv_ += ["--paced-seconds", "1"]
        else:
            repeat = 3 if args.quick else max(args.runs, 3)
            argv_ += ["--quick"] if args.quick else ["--repeat", str(repeat)]
        completed = subprocess.run(argv_, cwd=common.ROOT, env=common.child_env(), check=False)
        if completed.returncode != 0 or not out.exists():
            rows = pending(f"benchmarks/breaker_overhead.py exited {completed.returncode}")
        else:
            figures = json.loads(out.read_text())
            meta = {"breaker_overhead": figures}
            rows = rows_from(figures, repeat)
        if args.db == "postgres":
            common.drop_pg_database(common.pg_database("cio_bench_breaker"))
    for row in rows:
        value = "pending" if row.value is None else f"{row.value:.2f} {row.unit}"
        print(f"{row.label}: {value} {row.note}")
    common.write_rows(args.json, rows, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())

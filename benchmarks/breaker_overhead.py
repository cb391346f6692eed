"""Closed-state cost of the circuit breaker: time per call against a bare call, queries per
1,000 calls.

Usage::

    python -m benchmarks.breaker_overhead [--db sqlite|postgres] [--quick] [--json FILE]

What it measures, in one process on a fresh database (real clock, default settings, so the
breaker's cache expires every ``BREAKER_CACHE_SECONDS`` = 1 s during the run):

- ``bare``: a call of an empty function (the baseline of the same run);
- ``guarded``: the same call made through the breaker, ``allow()`` + call + ``record(success)``
  — the drain and direct mode do exactly this around every request; the overhead is
  ``guarded - bare``. Outcomes are merged into the shared row when the cache expires (or every
  ``FLUSH_EVERY`` outcomes), so their cost is included, amortised;
- ``allow``: ``allow()`` alone (the check direct mode and inline dispatch make first);
- ``refused``: ``allow()`` of an open breaker (what a call costs while Customer.io is down);
- queries per 1,000 calls, counted with ``CaptureQueriesContext``: in a tight loop (calls as
  fast as the CPU allows) and paced at 100 calls per second (the default ``RATE_LIMIT``), where
  each cache period merges about 100 outcomes.

Times are the best of ``--repeat`` runs of ``--number`` calls (``timeit``), in microseconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/breaker_overhead.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402


def bare() -> None:
    """The call being guarded: nothing at all."""


def best_per_call(func: Callable[[], object], number: int, repeat: int) -> float:
    """Best time per call in microseconds over ``repeat`` runs of ``number`` calls."""
    timer = timeit.Timer(func)
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e6


def queries_per_1000(run: Callable[[], int]) -> tuple[float, int, int]:
    """Run ``run`` (which returns how many calls it made) counting queries; per 1,000 calls."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as context:
        calls = run()
    queries = len(context.captured_queries)
    return queries / calls * 1000, queries, calls


def measure(number: int, repeat: int, tight_calls: int, paced_seconds: float) -> dict[str, Any]:
    from django_cio_reliable.breaker import Breaker
    from django_cio_reliable.breaker.core import Outcome

    breaker = Breaker.from_settings()
    success = Outcome.success(0.001)
    breaker.allow()  # create and cache the row

    def guarded() -> None:
        permit = breaker.allow()
        if permit is not None:
            bare()
            breaker.record(permit, success)

    def allow_only() -> None:
        breaker.allow()

    results: dict[str, Any] = {"number": number, "repeat": repeat}
    results["bare_us"] = best_per_call(bare, number, repeat)
    results["guarded_us"] = best_per_call(guarded, number, repeat)
    results["allow_us"] = best_per_call(allow_only, number, repeat)
    results["overhead_us"] = results["guarded_us"] - results["bare_us"]
    breaker.flush()

    def tight(func: Callable[[], None]) -> Callable[[], int]:
        def run() -> int:
            for _ in range(tight_calls):
                func()
            breaker.flush()  # count the merge of the last outcomes too
            return tight_calls

        return run

    started = time.monotonic()
    per_1000, queries, calls = queries_per_1000(tight(guarded))
    results["tight_seconds"] = round(time.monotonic() - started, 3)
    results["queries_per_1000_tight"] = per_1000
    results["queries_tight"] = queries
    results["calls_tight"] = calls
    per_1000, queries, calls = queries_per_1000(tight(allow_only))
    results["queries_per_1000_tight_allow"] = per_1000

    def paced() -> int:
        interval = 1 / 100
        deadline = time.monotonic() + paced_seconds
        calls = 0
        next_at = time.monotonic()
        while time.monotonic() < deadline:
            guarded()
            calls += 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        breaker.flush()
        return calls

    per_1000, queries, calls = queries_per_1000(paced)
    results["queries_per_1000_paced"] = per_1000
    results["queries_paced"] = queries
    results["calls_paced"] = calls

    opener = Breaker.from_settings()
    for _ in range(opener.machine.config.consecutive_failures):
        permit = opener.allow()
        if permit is not None:
            opener.record(permit, Outcome.failure(0.001))
    breaker.invalidate()
    assert breaker.allow() is None, "the breaker should be open"
    results["refused_us"] = best_per_call(allow_only, number, repeat)
    return results


def report(results: dict[str, Any]) -> str:
    r = results
    return "\n".join(
        [
            f"bare call                          {r['bare_us']:8.3f} µs",
            f"call through a closed breaker      {r['guarded_us']:8.3f} µs  "
            f"(allow + call + record; overhead {r['overhead_us']:.3f} µs per call)",
            f"closed allow() alone               {r['allow_us']:8.3f} µs",
            f"open allow() (refused)             {r['refused_us']:8.3f} µs",
            f"queries per 1,000 calls, tight     {r['queries_per_1000_tight']:8.2f}     "
            f"({r['queries_tight']} for {r['calls_tight']:,} calls in {r['tight_seconds']} s)",
            f"  allow() alone, tight             {r['queries_per_1000_tight_allow']:8.2f}",
            f"queries per 1,000 calls, 100/s     {r['queries_per_1000_paced']:8.2f}     "
            f"({r['queries_paced']} for {r['calls_paced']:,} calls)",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--number", type=int, default=100_000, help="calls per timing run")
    parser.add_argument("--repeat", type=int, default=5, help="timing runs (the best counts)")
    parser.add_argument("--tight-calls", type=int, default=100_000)
    parser.add_argument("--paced-seconds", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true", help="fewer calls, 2 s paced")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.number, args.repeat, args.tight_calls, args.paced_seconds = 20_000, 3, 20_000, 2.0
    common.configure(args.db, pg_name=common.pg_database("cio_bench_breaker"))
    results = measure(args.number, args.repeat, args.tight_calls, args.paced_seconds)
    results["db"] = args.db
    results["python"] = sys.version.split()[0]
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

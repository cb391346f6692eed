"""Drain worker processes on PostgreSQL: scaling over 1, 2 and 4 processes, backlog recovery
under the default rate limit, and the rate limit holding against many eager workers.

Every worker is a real process (``python -m benchmarks.child drain``) that sets itself up, waits
at a start line, then drains until no operation is open. The clock runs from the start signal
to the last worker's finish. FakeCustomerIO runs in this process (its CPU is on the same
machine: see the ``cpu`` figures in the JSON).

- scaling: backlog inserted with ``bulk_create`` (one operation per customer), 30 ms latency,
  ``RATE_LIMIT`` 1,000,000/s so the limit never binds (this measures the workers, not the
  limiter); ratio against one worker of the same run.
- backlog recovery: 100,000 operations over 10,000 customers (10 each, kept in order), default
  ``RATE_LIMIT`` of 100 requests/s, 30 ms latency, 8 worker processes (a django-q2 cluster
  after an outage) and ``BATCH_SIZE`` 10, so that the limit, not the latency, is the
  bottleneck: 100 requests/s need about 6 requests in flight at 30 ms plus the claim,
  acknowledgement and slot of each, and 10 operations a request keep the drain's CPU
  (~1,000 operations/s) within a 2-core machine that also runs PostgreSQL and
  FakeCustomerIO. With the default ``BATCH_SIZE`` of 100 the workers would need 10,000
  operations/s to reach the limit, far more CPU than such a machine has (see the scaling
  rows); with 20 the drain was CPU-bound at ~45 requests/s here. Reported: the time, and the
  most requests the server received in any sliding 1 s window (must never exceed the limit).
  Baseline: a plain ``customerio`` loop's rate, measured here over a few operations,
  extrapolated to the backlog.
- rate limit: 4 workers, batching off, 0 ms latency (each worker alone could make ~1000
  requests/s), default ``RATE_LIMIT`` 100/s; the most requests FakeCustomerIO received in any
  1-second window.
- profile: one more single-worker run under cProfile, self time grouped by component.

Usage: ``python -m benchmarks.workers [--runs 3] [--quick|--smoke] [--backlog-workers 8]
[--backlog-batch 10] [--json F]``.
"""

from __future__ import annotations

import argparse
import os
import pstats
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/workers.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402
from benchmarks.drain import plain_customerio_loop  # noqa: E402

SECTION = "workers"
PG_NAME = common.pg_database("cio_bench_workers")


def run_workers(
    workdir: Path,
    server: Any,
    count: int,
    workers: int,
    *,
    cio: dict[str, Any],
    people: int | None = None,
    max_seconds: float = 3600.0,
    profile: str | None = None,
    fill: bool = True,
    record_slots: bool = False,
) -> dict[str, Any]:
    """Insert a backlog, run ``workers`` drain processes from one start line, collect figures."""
    if fill:
        common.reset_outbox()
        common.bulk_pending(count, people=people or count)
        common.vacuum_analyze()
    env = common.bench_env("postgres", pg_name=PG_NAME, cio=cio)
    line = common.StartLine(workdir)
    children = []
    for index in range(workers):
        name = f"w{workers}-{index}-{time.monotonic_ns()}"
        argv = [sys.executable, "-m", "benchmarks.child", "drain", *line.args(name)]
        argv += ["--max-seconds", str(max_seconds)]
        if profile and index == 0:
            argv += ["--profile", profile]
        if record_slots:
            argv += ["--record-slots"]
        children.append(common.spawn(name, argv, workdir, env))
    try:
        line.wait_ready(children)
        requests_before = server.request_count
        busy0, total0 = common.cpu_times()
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        started = line.open()
        for child in children:
            child.process.wait(max_seconds + 120)
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        busy1, total1 = common.cpu_times()
        waited = time.monotonic() - started
        results = [child.result() for child in children]
    finally:
        for child in children:
            child.kill()
    ended = max(r["ended"] for r in results)
    elapsed = ended - started
    delivered = sum(r["delivered"] for r in results)
    times = [r.received_at for r in server.requests[requests_before:]]
    window = [t for t in times if started <= t <= ended]
    slots = [s for r in results for s in r["slots"]]
    wakes = [w for r in results for w in r["wakes"]]
    worker_cpu = sum(r["cpu_seconds"] for r in results)
    db_cpu = sum(r["db_cpu_seconds"] for r in results)
    server_cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    stack_cpu = worker_cpu + db_cpu + server_cpu
    cpus = os.cpu_count() or 1
    return {
        "workers": workers,
        "operations": count,
        "delivered": delivered,
        "finished": all(r["finished"] for r in results),
        "seconds": elapsed,
        "rate": delivered / elapsed if elapsed > 0 else 0.0,
        "requests": len(window),
        "max_requests_in_1s": common.max_in_window(window),
        "mean_request_rate": len(window) / elapsed if elapsed > 0 else 0.0,
        "median_requests_per_s": median_per_second(window, started, ended),
        "max_slots_in_1s": common.max_in_window(slots),
        "max_wakes_in_1s": common.max_in_window(wakes),
        "cpu_cores_busy": (busy1 - busy0) / waited if waited > 0 else 0.0,
        "cpu_cores": os.cpu_count(),
        "machine_busy_fraction": (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0,
        "worker_cpu_seconds": [r["cpu_seconds"] for r in results],
        "db_cpu_seconds": [r["db_cpu_seconds"] for r in results],
        "server_cpu_seconds": server_cpu,
        "stack_cpu_seconds": stack_cpu,
        "stack_cores": stack_cpu / elapsed if elapsed > 0 else 0.0,
        "cpu_ms_per_1000_ops": stack_cpu / delivered * 1e6 if delivered else 0.0,
        "cpu_ceiling_ops": cpus * delivered / stack_cpu if stack_cpu > 0 else 0.0,
        "per_worker": [
            {k: v for k, v in r.items() if k not in ("slots", "wakes")} for r in results
        ],
    }


#: How the profile's self time is grouped; first match wins (by "file:line(function)" fragment).
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("waiting for the HTTP answer (socket recv: 30 ms latency + server)", ("recv_into",)),
    ("waiting for PostgreSQL (psycopg wait)", ("psycopg/connection.py:479(wait)", "(wait)")),
    ("PostgreSQL driver (psycopg), CPU", ("psycopg",)),
    ("Django ORM / SQL compiler", ("django/db", "django/utils", "django/dispatch")),
    (
        "HTTP client (requests, urllib3, http.client, socket), CPU",
        (
            "requests/",
            "urllib3",
            "http/client",
            "socket",
            "ssl",
            "selectors",
            "email/",
        ),
    ),
    ("JSON", ("json/",)),
    ("django_cio_reliable (library code)", ("django_cio_reliable",)),
    ("customerio package", ("customerio",)),
    ("sleeping (rate limit, polls)", ("time.sleep", "select", "poll")),
)


def summarise_profile(path: str, top: int = 12) -> dict[str, Any]:
    """Self time of a cProfile dump grouped into :data:`COMPONENTS`, and the top functions."""
    stats = pstats.Stats(path)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    groups: dict[str, float] = {}
    functions: list[tuple[float, str]] = []
    total = 0.0
    for (filename, line, name), (_cc, _nc, tottime, _cum, _callers) in raw.items():
        total += tottime
        where = f"{filename}:{line}({name})"
        label = "other (interpreter, stdlib)"
        for component, fragments in COMPONENTS:
            if any(f in where for f in fragments):
                label = component
                break
        groups[label] = groups.get(label, 0.0) + tottime
        short = where.replace(str(common.ROOT) + "/", "")
        short = short.split("site-packages/")[-1]
        functions.append((tottime, short))
    functions.sort(reverse=True)
    return {
        "total_seconds": total,
        "components": sorted(groups.items(), key=lambda kv: -kv[1]),
        "top": [(round(t, 3), f) for t, f in functions[:top]],
    }


def median_per_second(times: Sequence[float], start: float, end: float) -> float:
    """The median number of ``times`` in the whole seconds ``[start + k, start + k + 1)``."""
    seconds = int(end - start)
    if seconds < 1:
        return float(len(times))
    counts = [0] * seconds
    for value in times:
        index = int(value - start)
        if 0 <= index < seconds:
            counts[index] += 1
    return common.median(counts)


#: What ``--parts`` can select.
PARTS = ("scaling", "profile", "backlog", "rate")
#: Worker processes of the backlog run: a django-q2 cluster's worth, enough requests in flight
#: for the limit to bind at 30 ms.
BACKLOG_WORKERS = 8
#: ``BATCH_SIZE`` of the backlog run: 100 requests/s of 10 operations fit a 2-core machine's CPU.
BACKLOG_BATCH = 10
#: The backlog's median requests per second must reach this share of the limiter's sustained
#: rate for the row to call the limit binding.
BINDING_SHARE = 0.9


def sustained_rate() -> float:
    """The most requests per second the limiter lets through for long at the default limit."""
    from django_cio_reliable import outbox

    headroom = float(getattr(outbox.shared, "RATE_HEADROOM", 0.0))
    return common.DEFAULT_RATE / (1.0 + headroom)


def backlog_rows(
    backlog: dict[str, Any], count: int, plain: float, plain_n: int
) -> list[common.Row]:
    """The two backlog rows: time to drain, and the most requests the server saw in 1 s."""
    workers, batch = backlog["workers"], backlog["batch_size"]
    plain_seconds = count / min(plain, common.DEFAULT_RATE)
    time_row = common.cost_row(
        "backlog",
        f"backlog of {count:,} ops: time to drain, {workers} workers, BATCH_SIZE {batch}, "
        "RATE_LIMIT 100/s, 30 ms",
        backlog["seconds"],
        f"plain customerio loop, 1 process: {plain:.0f} op/s measured over {plain_n} "
        f"operations, extrapolated to {count:,}",
        plain_seconds,
        unit="s",
        note=(
            f"{backlog['delivered']:,} delivered in {backlog['requests']:,} requests, mean "
            f"{backlog['mean_request_rate']:.1f} requests/s"
        ),
    )
    time_row.ratio_label = "× faster"
    if not backlog["finished"] or backlog["delivered"] != count:
        time_row.note += f"; NOT FINISHED: {backlog['delivered']} of {count}"
    observed = float(backlog["max_requests_in_1s"])
    bound = backlog["limit_bound"]
    window_row = common.Row(
        section="backlog",
        label=f"backlog of {count:,} ops: max requests at the server in any 1 s window",
        value=observed,
        unit="req",
        baseline_label="RATE_LIMIT",
        baseline=common.DEFAULT_RATE,
        baseline_unit="req/s",
        ratio=observed / common.DEFAULT_RATE,
        ratio_label="× the limit",
        goal="≤ 1.0 of the limit",
        met=observed <= common.DEFAULT_RATE,
        note=(
            f"median {backlog['median_requests_per_s']:.0f} requests per second (mean "
            f"{backlog['mean_request_rate']:.1f}/s over {backlog['seconds']:.1f} s, ramp-up and "
            "tail included); the limiter lets at most "
            f"{backlog['sustained_rate']:.1f}/s through for long, so the limit "
            + ("binds" if bound else "did NOT bind (workers or CPU were the bottleneck)")
            + f"; slots reserved: max {backlog['max_slots_in_1s']} in any 1 s"
        ),
    )
    window_row.extra = {
        "max_requests_in_1s": backlog["max_requests_in_1s"],
        "limit_held": observed <= common.DEFAULT_RATE,
        "limit_bound": bound,
    }
    return [time_row, window_row]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument("--scaling-ops", type=int, default=None)
    parser.add_argument("--backlog", type=int, default=None)
    parser.add_argument("--backlog-workers", type=int, default=None)
    parser.add_argument("--backlog-batch", type=int, default=BACKLOG_BATCH)
    parser.add_argument("--rate-seconds", type=float, default=None)
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help="comma-separated parts to run: " + ",".join(PARTS),
    )
    parser.add_argument("--json", help="write the rows here (for run.py)")
    args = parser.parse_args(argv)
    size = "smoke" if args.smoke else "quick" if args.quick else "full"
    scaling_n = args.scaling_ops or {"smoke": 300, "quick": 4000, "full": 12000}[size]
    backlog_n = args.backlog or {"smoke": 2000, "quick": 20_000, "full": 100_000}[size]
    backlog_workers = args.backlog_workers or (4 if args.smoke else BACKLOG_WORKERS)
    backlog_batch = args.backlog_batch
    rate_seconds = args.rate_seconds or {"smoke": 2.0, "quick": 5.0, "full": 10.0}[size]
    plain_n = {"smoke": 5, "quick": 40, "full": 100}[size]
    cpus = os.cpu_count() or 1
    parts = {part.strip() for part in args.parts.split(",") if part.strip()}
    if parts - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(parts - set(PARTS)))}")

    server = common.fake_server(common.LATENCY)
    fast = common.library_settings(server.url, RATE_LIMIT=common.UNBOUND_RATE, BATCH=True)
    common.configure("postgres", pg_name=PG_NAME, cio=fast)
    workdir = Path(tempfile.mkdtemp(prefix="cio-bench-workers-"))
    meta: dict[str, Any] = {"workdir": str(workdir)}
    rows: list[common.Row] = []
    try:
        if "scaling" in parts:
            # Scaling: 1, 2, 4 workers, latency 30 ms, limit not binding.
            scaling: dict[int, list[dict[str, Any]]] = {1: [], 2: [], 4: []}
            for _ in range(args.runs):
                for workers in (1, 2, 4):
                    run = run_workers(workdir, server, scaling_n, workers, cio=fast)
                    scaling[workers].append(run)
            for workers, runs in scaling.items():
                print(
                    f"{workers} worker(s): "
                    + ", ".join(
                        f"{r['rate']:.0f} op/s ({r['cpu_cores_busy']:.2f} cores)" for r in runs
                    )
                )
            meta["scaling"] = scaling
            one = common.median(r["rate"] for r in scaling[1])
            for workers in (1, 2, 4):
                rate = common.median(r["rate"] for r in scaling[workers])
                busy = common.median(r["cpu_cores_busy"] for r in scaling[workers])
                stack = common.median(r["stack_cores"] for r in scaling[workers])
                ceiling = common.median(r["cpu_ceiling_ops"] for r in scaling[workers])
                row = common.rate_row(
                    SECTION,
                    f"drain, {workers} worker process{'es' if workers > 1 else ''}, "
                    "PostgreSQL, 30 ms",
                    rate,
                    "1 worker process (same run)",
                    one,
                    goal=3 if workers == 4 else None,
                    runs=args.runs,
                    note=(
                        f"{scaling_n} ops; limit not binding; workers + their PostgreSQL "
                        f"backends + FakeCustomerIO used {stack:.2f} of {cpus} cores "
                        f"(machine: {busy:.2f})"
                    ),
                )
                row.extra = {
                    "cpu_cores_busy": busy,
                    "stack_cores": stack,
                    "cpu_ceiling_ops": ceiling,
                }
                rows.append(row)

        if "profile" in parts:
            # Where one worker's time goes.
            profile_path = str(workdir / "worker.prof")
            profiled = run_workers(workdir, server, scaling_n, 1, cio=fast, profile=profile_path)
            meta["profile"] = summarise_profile(profile_path)
            keep = ("seconds", "rate", "worker_cpu_seconds", "db_cpu_seconds", "server_cpu_seconds")
            meta["profile"].update({k: profiled[k] for k in keep})

        if "backlog" in parts:
            # Backlog recovery under the default rate limit, which binds.
            server.set_latency(common.LATENCY)
            plain = plain_customerio_loop(server, plain_n)
            limited = {**fast, "RATE_LIMIT": common.DEFAULT_RATE, "BATCH_SIZE": backlog_batch}
            common.reset_outbox()
            fill_started = time.monotonic()
            common.bulk_pending(backlog_n, people=backlog_n // 10)
            common.vacuum_analyze()
            meta["backlog_fill_seconds"] = time.monotonic() - fill_started
            backlog = run_workers(
                workdir,
                server,
                backlog_n,
                backlog_workers,
                cio=limited,
                people=backlog_n // 10,
                fill=False,
                record_slots=True,
            )
            sustained = sustained_rate()
            backlog.update(
                batch_size=backlog_batch,
                plain_operations=plain_n,
                plain_rate=plain,
                sustained_rate=sustained,
                limit_bound=backlog["median_requests_per_s"] >= BINDING_SHARE * sustained,
            )
            meta["backlog"] = backlog
            rows += backlog_rows(backlog, backlog_n, plain, plain_n)

        if "rate" in parts:
            # The limit holds against 4 eager workers (batching off, 0 ms).
            server.set_latency(0.0)
            eager = {**fast, "RATE_LIMIT": common.DEFAULT_RATE, "BATCH": False}
            count = int(common.DEFAULT_RATE * rate_seconds * 3)
            held = run_workers(
                workdir,
                server,
                count,
                4,
                cio=eager,
                max_seconds=rate_seconds,
                people=count,
                record_slots=True,
            )
            meta["rate_limit"] = held
            observed = float(held["max_requests_in_1s"])
            rows.append(
                common.Row(
                    section="rate limit",
                    label=(
                        "max requests in any 1 s: 4 workers, batching off, 0 ms, RATE_LIMIT 100/s"
                    ),
                    value=observed,
                    unit="req",
                    baseline_label="RATE_LIMIT",
                    baseline=common.DEFAULT_RATE,
                    baseline_unit="req/s",
                    ratio=observed / common.DEFAULT_RATE,
                    ratio_label="× the limit",
                    goal="≤ 1.0 of the limit",
                    met=observed <= common.DEFAULT_RATE,
                    note=(
                        f"{held['requests']} requests in {held['seconds']:.1f} s "
                        f"(mean {held['mean_request_rate']:.1f}/s); slots reserved by the limiter: "
                        f"max {held['max_slots_in_1s']} in any 1 s, workers woken: "
                        f"max {held['max_wakes_in_1s']}"
                    ),
                )
            )
            rows[-1].extra = {
                "backlog_max_requests_in_1s": meta.get("backlog", {}).get("max_requests_in_1s")
            }
    finally:
        server.stop()
        from django.db import connection

        connection.close()
        common.drop_pg_database(PG_NAME)
    for row in rows:
        print(
            f"{row.label:<70} {row.value or 0:>10.1f} {row.unit} "
            f"{row.ratio or 0:>7.2f}{row.ratio_label}  {row.note}"
        )
    if "profile" in meta:
        print("profile of one worker (self time):")
        for component, seconds in meta["profile"]["components"]:
            print(f"  {component:<60} {seconds:>7.2f} s")
    common.write_rows(args.json, rows, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())

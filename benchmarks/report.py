"""Render ``benchmarks/RESULTS.md`` from the rows and raw figures of one ``make bench`` run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from benchmarks.common import Row


def _find(rows: Sequence[Row], section: str, *fragments: str) -> list[Row]:
    return [r for r in rows if r.section == section and all(f in r.label for f in fragments)]


def _meta(results: Mapping[str, Mapping[str, Any]], name: str) -> dict[str, Any]:
    value: dict[str, Any] = dict(results.get(name, {}).get("meta", {}))
    return value


def _state(row: Row) -> str:
    if row.met is None:
        return "pending" if row.value is None else "no goal"
    return "**met**" if row.met else "**missed**"


def _enqueue_goals(rows: Sequence[Row], results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = []
    for db, name in (("SQLite file", "enqueue-sqlite"), ("PostgreSQL", "enqueue-postgres")):
        found = _find(rows, "enqueue", db)
        if not found:
            continue
        meta = _meta(results, name)
        parts = [
            f"{r.label.split(': ', 1)[1]} vs {r.baseline_label.split(', ')[-1]}: "
            f"{r.ratio:.1f}× ({_state(r)})"
            for r in found
            if r.ratio is not None
        ]
        lines.append(f"- enqueue on {db} (goal ≥ 5× at 0 ms, ≥ 100× at 30 ms): " + "; ".join(parts))
        lines += _enqueue_why(db, found, meta)
    return lines


def _enqueue_why(db: str, found: Sequence[Row], meta: Mapping[str, Any]) -> list[str]:
    marginal = next(
        (r for r in found if "marginal" in r.label and r.baseline_label.endswith(", 0 ms")), None
    )
    if marginal is None or not marginal.value or not marginal.baseline:
        return []
    value, direct0 = marginal.value, marginal.baseline
    direct30 = next(
        (r.baseline for r in found if r.baseline_label.endswith(", 30 ms") and r.baseline), None
    )
    driver = meta.get("driver_insert_us")
    orm = meta.get("orm_insert_us")
    trip = meta.get("round_trip_us")
    commit = float(meta.get("commit_us", 0.0))
    target = direct0 / 5
    out: list[str] = []
    if driver:
        split = (
            f"of the {value:.0f} µs marginal cost, {driver:.0f} µs is the INSERT of the row "
            "straight through the database driver with no Django at all (measured alone in the "
            "same run: the floor of any outbox that stores one row per call)"
        )
        if db == "PostgreSQL" and trip:
            split += f", of which one round trip to PostgreSQL (`SELECT 1`) is {trip:.0f} µs"
        split += (
            f"; Django's cursor and the `Operation()` instance, and the library's validation, "
            f"ULID and on-commit hook make the other {max(0.0, value - driver):.0f} µs (profile "
            'under "Where the time goes").'
        )
        if orm:
            split += (
                f" Storing the same row with a plain `Operation.save()` costs {orm:.0f} µs: "
                "`track()` uses an INSERT compiled once per connection instead."
            )
        if marginal.met:
            out.append(f"  - {split}")
        elif driver > target:
            out.append(
                f"  - why: the 0 ms goal needs ≤ {target:.0f} µs a call (1/5 of the "
                f"{direct0:.0f} µs loopback call), less than the database's INSERT alone "
                f"({driver:.0f} µs). Not reachable while every call stores its row in the "
                f"caller's transaction before returning (guarantee 1); {split}"
            )
        else:
            out.append(
                f"  - why: the 0 ms goal needs ≤ {target:.0f} µs a call; the INSERT alone is "
                f"{driver:.0f} µs, which leaves {target - driver:.0f} µs for everything else "
                f"(Django's cursor and model instance, validation, ULID, on-commit hook: "
                f"{max(0.0, value - driver):.0f} µs here). Out of reach through the ORM on this "
                f"machine; {split}"
            )
    if commit:
        own_goal = []
        if commit > target:
            own_goal.append(f"more than the 0 ms goal's {target:.0f} µs by itself")
        if direct30 and commit > direct30 / 100:
            own_goal.append(f"more than the 30 ms goal's {direct30 / 100:.0f} µs")
        journal = (
            "SQLite's rollback journal fsyncs the file at each commit"
            if db == "SQLite file"
            else "PostgreSQL flushes its WAL at each commit, synchronous_commit=on"
        )
        out.append(
            f"  - own transaction: committing adds {commit:.0f} µs ({journal})"
            + (f", {' and '.join(own_goal)}" if own_goal else "")
            + ". A view that writes to the database pays that commit anyway; the marginal "
            "rows are what `track()` adds to it."
        )
    out.append(
        "  - the 0 ms baseline is a call to a server on the same machine that answers in under "
        "a millisecond; against a real Customer.io round trip (tens of ms) the 30 ms rows are "
        "the meaningful ones."
    )
    return out


def _scaling_reason(four: Row, one: Row | None, results: Mapping[str, Mapping[str, Any]]) -> str:
    scaling: dict[str, list[dict[str, Any]]] = _meta(results, "workers").get("scaling", {})

    def median_run(key: str) -> dict[str, Any]:
        runs = sorted(scaling.get(key, []), key=lambda r: r["rate"])
        return runs[len(runs) // 2] if runs else {}

    run1, run4 = median_run("1"), median_run("4")
    if not run1 or not run4 or one is None or not one.value:
        return "CPU (no per-process figures in this run)."
    ncpu = run4.get("cpu_cores", 0)
    cpu1, cpu4 = run1["cpu_ms_per_1000_ops"], run4["cpu_ms_per_1000_ops"]
    need = 3 * one.value * cpu4 / 1e6  # ms per 1,000 ops = µs per op
    other = max(0.0, run4["cpu_cores_busy"] - run4["stack_cores"])

    def cycle(run: dict[str, Any]) -> float:
        """Milliseconds between two requests of one worker."""
        per_request = run["delivered"] / max(1, run["requests"])
        return float(run["workers"] * per_request / run["rate"] * 1000) if run["rate"] else 0.0

    commit = _meta(results, "enqueue-postgres").get("commit_us")
    commit_text = f", ~{commit:.0f} µs of WAL flush each here" if commit else ""
    head = (
        f"one worker delivers {one.value:,.0f} op/s mostly waiting (30 ms per request), the "
        f"stack (worker, its PostgreSQL backend, FakeCustomerIO) using {run1['stack_cores']:.2f} "
        f"cores. Waiting overlaps across workers, CPU does not: 3× that rate at the CPU cost "
        f"measured with 4 workers ({cpu4:.0f} ms per 1,000 operations, up from {cpu1:.0f} with "
        f"one) needs {need:.2f} cores for the stack"
    )
    if need > ncpu - other:
        body = (
            f", more than the machine had ({ncpu} cores, {other:.2f} of them busy with other "
            f"work during the run): CPU-bound. With 4 workers the stack used "
            f"{run4['stack_cores']:.2f} cores and the machine {run4['cpu_cores_busy']:.2f}."
        )
    else:
        body = (
            f"; the machine had {ncpu - other:.2f} free, so the CPU was not exhausted, but at "
            f"{run4['cpu_cores_busy'] / ncpu:.0%} busy every step of every worker queues for a "
            f"core, and for PostgreSQL's commits (each claim, acknowledgement and rate-limit slot "
            f"is a committed transaction{commit_text}): a worker's cycle grew from one "
            f"100-operation request every {cycle(run1):.0f} ms alone to one every "
            f"{cycle(run4):.0f} ms with four."
        )
    return (
        head
        + body
        + " With more cores, or Customer.io and PostgreSQL on other machines, the same workers "
        "scale further."
    )


def _goal_lines(rows: Sequence[Row], results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = _enqueue_goals(rows, results)
    for row in _find(rows, "drain", "batching on"):
        lines.append(
            f"- drain with batching ≥ 50× the plain loop at 30 ms: {row.ratio or 0:.0f}× "
            f"({_state(row)})."
        )
    four = _find(rows, "workers", "4 worker")
    one = _find(rows, "workers", "1 worker")
    if four:
        row = four[0]
        lines.append(
            f"- 4 workers ≥ 3× one worker on PostgreSQL: {row.ratio or 0:.2f}× ({_state(row)})."
        )
        if row.met is False:
            lines.append("  - why: " + _scaling_reason(row, one[0] if one else None, results))
    for row in _find(rows, "backlog"):
        if "time to drain" in row.label:
            lines.append(
                f"- backlog: {row.label}: {row.value or 0:.1f} s ({row.ratio or 0:.0f}× faster "
                f"than {row.baseline_label}: {row.baseline or 0:,.0f} s)."
            )
        else:
            lines.append(
                f"- backlog, the limit is never exceeded: max {row.value or 0:.0f} requests at "
                f"the server in any 1 s window against a limit of 100 ({_state(row)}); "
                + (
                    "the limit binds."
                    if row.extra.get("limit_bound")
                    else "**the limit did not bind** in this run (see the note)."
                )
            )
    for row in _find(rows, "rate limit"):
        lines.append(
            f"- the rate limit is never exceeded: max {row.value or 0:.0f} requests in any 1 s "
            f"window against a limit of 100 ({_state(row)})."
        )
        meta = _meta(results, "workers").get("rate_limit", {})
        if row.met is False and meta:
            lines.append(
                f"  - why: slots reserved by the limiter: max {meta.get('max_slots_in_1s')} in "
                f"any 1 s; workers woken after their slot: max {meta.get('max_wakes_in_1s')}; "
                f"requests received by the server: max {meta.get('max_requests_in_1s')}. A "
                "request reaches the server some time after its slot (scheduling, the HTTP "
                "client), and on a loaded machine that delay varies: without headroom in the "
                "limiter two requests of adjacent slots can arrive closer than the slot "
                "spacing, and a sliding 1 s window at the server holds more requests than "
                "slots (see docs/benchmarks.md)."
            )
    for row in _find(rows, "breaker"):
        lines.append(f"- {row.label} (goal {row.goal}): {_state(row)}. {row.note}")
    for row in _find(rows, "memory"):
        value = f"{row.value:.1f} MB" if row.value is not None else "–"
        lines.append(
            f"- {row.label}: {value} (goal {row.goal or 'none'}: {_state(row)}). {row.note}"
        )
    for row in _find(rows, "claim-scale"):
        lines.append(
            f"- the claim's cost follows the work, not the history (goal {row.goal}): "
            f"{row.label}: {row.value or 0:,.0f} µs against {row.baseline or 0:,.0f} µs with "
            f"the small table, {row.ratio or 0:.2f}× ({_state(row)})."
        )
    for row in _find(rows, "direct-atomic", "documented bound"):
        lines.append(
            f"- direct mode inside the caller's transaction, concurrent requests: {row.label}: "
            f"{row.value or 0:.0f} ({row.goal}: {_state(row)})."
        )
    return lines


def _profile_lines(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    meta = _meta(results, "workers")
    lines: list[str] = []
    scaling = meta.get("scaling", {})
    if scaling:
        lines.append(
            "CPU per run of the drain workers (30 ms latency; median run; CPU seconds measured "
            "per process: the workers, their PostgreSQL backends, and this benchmark's process, "
            "which runs FakeCustomerIO):"
        )
        lines.append("")
        lines.append(
            "| workers | op/s (each run) | worker CPU s | PostgreSQL backend CPU s | "
            "FakeCustomerIO CPU s | CPU ms per 1,000 ops | cores used by the stack | "
            "machine cores busy (all work) |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        for workers, runs in scaling.items():
            rates = ", ".join(f"{r['rate']:.0f}" for r in runs)
            mid = sorted(runs, key=lambda r: r["rate"])[len(runs) // 2]
            lines.append(
                f"| {workers} | {rates} | {sum(mid['worker_cpu_seconds']):.1f} | "
                f"{sum(mid['db_cpu_seconds']):.1f} | {mid['server_cpu_seconds']:.1f} | "
                f"{mid['cpu_ms_per_1000_ops']:.0f} | {mid['stack_cores']:.2f} of "
                f"{mid['cpu_cores']} | {mid['cpu_cores_busy']:.2f} |"
            )
        lines.append("")
    profile = meta.get("profile")
    if profile:
        cpu = sum(profile.get("worker_cpu_seconds", [0.0]))
        db = sum(profile.get("db_cpu_seconds", [0.0]))
        lines.append(
            f"One drain worker under cProfile: {profile['total_seconds']:.1f} s of wall time in "
            f"its functions, of which the process used {cpu:.1f} s of CPU (its PostgreSQL "
            f"backend {db:.1f} s, FakeCustomerIO {profile.get('server_cpu_seconds', 0.0):.1f} s). "
            "Self time by component (the two 'waiting' lines are blocking I/O, not CPU):"
        )
        lines.append("")
        lines.append("| component | seconds | share |")
        lines.append("|---|---|---|")
        total = profile["total_seconds"] or 1.0
        for component, seconds in profile["components"]:
            lines.append(f"| {component} | {seconds:.2f} | {seconds / total:.0%} |")
        lines.append("")
        lines.append("Top functions by self time:")
        lines.append("")
        for seconds, where in profile["top"]:
            lines.append(f"- {seconds:.3f} s `{where}`")
        lines.append("")
    rate = meta.get("rate_limit")
    backlog = meta.get("backlog")
    if rate:
        lines.append(
            "Rate limiter, 4 eager workers (batching off, 0 ms): "
            f"{rate['requests']} requests in {rate['seconds']:.1f} s; in any 1 s window: "
            f"max {rate['max_slots_in_1s']} slots reserved, max {rate['max_wakes_in_1s']} "
            f"workers woken, max {rate['max_requests_in_1s']} requests received by the server."
        )
    if backlog:
        bound = backlog.get("limit_bound")
        per_worker = backlog["seconds"] / max(1, backlog["requests"] / backlog["workers"]) * 1000
        lines.append(
            f"Backlog run: {backlog['delivered']:,} delivered in {backlog['seconds']:.1f} s with "
            f"{backlog['workers']} workers and BATCH_SIZE {backlog.get('batch_size', 100)}, "
            f"{backlog['requests']:,} requests (mean {backlog['mean_request_rate']:.1f}/s, max "
            f"{backlog['max_requests_in_1s']} in any 1 s at the server, max "
            f"{backlog['max_slots_in_1s']} slots reserved in any 1 s); each worker sent one "
            f"request every {per_worker:.0f} ms. "
            + (
                "The limit bound: the workers could send more, the limiter held them to "
                f"{backlog.get('sustained_rate', 100.0):.1f} requests/s."
                if bound
                else "The limit did NOT bind: the CPU was the bottleneck. The machine's "
                f"{backlog.get('cpu_cores', '?')} cores were "
                f"{backlog.get('machine_busy_fraction', 0.0):.0%} busy during the run, "
                f"{backlog.get('stack_cores', 0.0):.2f} cores of it the stack's (workers, "
                "their PostgreSQL backends, FakeCustomerIO) and the rest other work on the "
                f"machine; at {backlog.get('cpu_ms_per_1000_ops', 0.0):.0f} ms of CPU per "
                "1,000 operations (each 10-operation request pays a claim share, a lease "
                "renewal, a rate-limit slot and an acknowledgement, each a committed "
                "PostgreSQL transaction) the stack needs about "
                f"{_cores_for_limit(backlog):.1f} cores to keep up with the limit."
            )
            + f" Filling it with bulk_create took {meta.get('backlog_fill_seconds', 0):.0f} s "
            "(not counted)."
        )
    lines += _enqueue_profile_lines(results)
    return lines


def _cores_for_limit(backlog: Mapping[str, Any]) -> float:
    """Cores the drain stack needs to send at the limiter's sustained rate."""
    per_op = float(backlog.get("cpu_ms_per_1000_ops", 0.0)) / 1e6  # seconds per operation
    ops = float(backlog.get("sustained_rate", 95.2)) * float(backlog.get("batch_size", 10))
    return per_op * ops


def _enqueue_profile_lines(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines: list[str] = []
    for db, name in (("SQLite file", "enqueue-sqlite"), ("PostgreSQL", "enqueue-postgres")):
        meta = _meta(results, name)
        profile = meta.get("profile")
        if not profile:
            continue
        if not lines:
            lines += [
                "",
                "Where a `track()` call's time goes (marginal, inside the app's transaction; "
                "cProfile self time per call, grouped: profiling inflates the Python parts "
                "against the C parts, so read the shares, and the measured figures above for "
                "the totals):",
                "",
            ]
        lines.append(
            f"{db}: {profile['calls']:,} calls, {profile['total_us_per_call']:.0f} µs a call "
            f"under the profiler (driver INSERT alone, unprofiled: "
            f"{meta.get('driver_insert_us', 0):.0f} µs; plain `Operation.save()`, unprofiled: "
            f"{meta.get('orm_insert_us', 0):.0f} µs)."
        )
        lines += ["", "| component | µs per call (profiled) | share |", "|---|---|---|"]
        total = profile["total_us_per_call"] or 1.0
        for component, us in profile["components_us_per_call"]:
            lines.append(f"| {component} | {us:.1f} | {us / total:.0%} |")
        lines += ["", "Top functions by self time (µs per call, profiled):", ""]
        lines += [f"- {us:.1f} µs `{where}`" for us, where in profile["top"]]
        lines.append("")
    return lines


def render(
    *,
    rows: Sequence[Row],
    results: Mapping[str, Mapping[str, Any]],
    facts: Mapping[str, Any],
    command: str,
    quick: bool,
    total_seconds: float,
    when: datetime,
    table: str,
) -> str:
    """The whole ``RESULTS.md``."""
    out = [
        "# Benchmark results",
        "",
        f"Generated by `make bench` — exact command: `{command}` — on "
        f"{when.strftime('%Y-%m-%d %H:%M UTC')}, in {total_seconds:.0f} s."
        + (" **Quick run: smaller sizes, one run per figure.**" if quick else ""),
        "How to run and what each row means: [docs/benchmarks.md](../docs/benchmarks.md).",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPUs | {facts.get('cpu_count')} × {facts.get('cpu_model')} |",
        f"| memory | {facts.get('memory_gb')} GB |",
        f"| load average (1, 5, 15 min) | {facts.get('load_before')} before, "
        f"{facts.get('load_after')} after (other work on the machine skews the figures) |",
        f"| OS | {facts.get('platform')} |",
        f"| Python | {facts.get('python')} |",
        f"| Django | {facts.get('Django')} |",
        f"| django-q2 | {facts.get('django-q2')} |",
        f"| customerio | {facts.get('customerio')} |",
        f"| psycopg | {facts.get('psycopg')} |",
        f"| SQLite | {facts.get('sqlite')} (a file in the temp directory, rollback journal) |",
        f"| PostgreSQL | {facts.get('postgresql')} on 127.0.0.1 (synchronous_commit="
        f"{facts.get('postgresql_synchronous_commit', '?')}) |",
        "| Customer.io | FakeCustomerIO (`django_cio_reliable.testing`) on 127.0.0.1, in the "
        "benchmark's own process |",
        "",
        "## Results",
        "",
        "Each figure is the median of *runs* runs; its baseline is measured in the same run "
        "against the same server. *ratio* is oriented so that bigger is better for the library: "
        "baseline ÷ figure for costs (× cheaper), figure ÷ baseline for throughputs (× faster).",
        "",
        table,
        "",
    ]
    notes = [r for r in rows if r.note]
    if notes:
        out += ["Notes per row:", ""]
        out += [f"- *{r.label}*: {r.note}" for r in notes]
        out.append("")
    errors = {name: data["error"] for name, data in results.items() if data.get("error")}
    if errors:
        out += ["Sections that did not run:", ""]
        out += [f"- {name}: {error}" for name, error in errors.items()]
        out.append("")
    out += ["## Goals", ""]
    out += _goal_lines(rows, results)
    out += ["", "## Where the time goes", ""]
    out += _profile_lines(results)
    out.append("")
    return "\n".join(out)

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
        marginal = next((r for r in found if "marginal" in r.label), None)
        if marginal and marginal.value and meta.get("orm_insert_us"):
            orm = float(meta["orm_insert_us"])
            commit = float(meta.get("commit_us", 0.0))
            lines.append(
                f"  - why: of the {marginal.value:.0f} µs marginal cost, {orm:.0f} µs is Django's "
                f"own `Operation.save()` of the row (measured alone in the same run); the library "
                f"adds {max(0.0, marginal.value - orm):.0f} µs (validation, ULID, JSON size, "
                f"on-commit hook). Committing a transaction of its own adds {commit:.0f} µs "
                "(the fsync of the commit). The 0 ms baseline is a call to a server on the same "
                "machine that answers in under a millisecond; against a real Customer.io round "
                "trip (tens of ms) the 30 ms rows are the meaningful ones."
            )
    return lines


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
        limit_held = row.extra.get("limit_held")
        lines.append(
            f"- backlog: {row.label}: {row.value or 0:.1f} s ({row.ratio or 0:.0f}× faster than "
            f"the plain loop); max requests observed in any 1 s window: "
            f"{row.extra.get('max_requests_in_1s')} ({'within' if limit_held else 'ABOVE'} the "
            "limit of 100)."
        )
    for row in _find(rows, "rate limit"):
        lines.append(
            f"- the rate limit is never exceeded: max {row.value or 0:.0f} requests in any 1 s "
            f"window against a limit of 100 ({_state(row)})."
        )
        meta = _meta(results, "workers").get("rate_limit", {})
        if row.met is False and meta:
            lines.append(
                f"  - why: the limiter's slots are exact (max {meta.get('max_slots_in_1s')} slots "
                f"in any 1 s), but a worker wakes after its slot (max "
                f"{meta.get('max_wakes_in_1s')} wake-ups in any 1 s) and its request reaches the "
                "server later still; on a loaded 2-core machine two requests of adjacent slots "
                "can arrive well under 10 ms apart, so a sliding 1 s window at the server holds "
                "1–2 more requests than slots. The limiter keeps no headroom for that delay "
                "(see docs/benchmarks.md)."
            )
    for row in _find(rows, "breaker"):
        lines.append(f"- {row.label} (goal {row.goal}): {_state(row)}. {row.note}")
    for row in _find(rows, "memory"):
        value = f"{row.value:.1f} MB" if row.value is not None else "–"
        lines.append(
            f"- {row.label}: {value} (goal {row.goal or 'none'}: {_state(row)}). {row.note}"
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
        lines.append(
            f"Backlog run: {backlog['delivered']:,} delivered in {backlog['seconds']:.1f} s with "
            f"{backlog['workers']} workers, {backlog['requests']} requests (mean "
            f"{backlog['mean_request_rate']:.1f}/s, max {backlog['max_requests_in_1s']} in any "
            f"1 s). The limit did not bind: each worker sends one 100-operation request per "
            f"{backlog['seconds'] / max(1, backlog['requests'] / backlog['workers']) * 1000:.0f}"
            " ms (30 ms of latency plus the claim, the acknowledgement and the rate-limit slot "
            "in the database), far below 100 requests/s together. Filling it with "
            f"bulk_create took {meta.get('backlog_fill_seconds', 0):.0f} s (not counted)."
        )
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

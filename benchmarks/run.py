"""``make bench``: every benchmark section, one table, and ``benchmarks/RESULTS.md``.

Each section runs in its own process with its own database (``python -m benchmarks.<section>``)
and writes its rows as JSON; this script collects them, prints one table and writes the results
file with the machine's facts and the exact command. Every row is a figure and the baseline it
is compared with, measured in the same run, and their ratio.

Usage: ``python -m benchmarks.run [--quick|--smoke] [--no-postgres] [--runs N]
[--only enqueue,drain,…] [--output F]``.

``--smoke`` (what ``tests/test_benchmarks.py`` runs) uses tiny sizes and one run, and writes its
results file to a temp directory unless ``--output`` is given: it proves the suite runs, its
figures mean nothing. ``--no-postgres`` skips the sections that need PostgreSQL (the breaker
and claim-scale sections run on SQLite instead, claim-scale with a smaller big table).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/run.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "RESULTS.md"


@dataclass(frozen=True)
class Section:
    name: str
    module: str
    args: tuple[str, ...] = ()
    postgres: bool = False
    runs_flag: bool = True
    #: Arguments that run a PostgreSQL section on SQLite instead (``--no-postgres``).
    sqlite_args: tuple[str, ...] | None = None


SECTIONS: tuple[Section, ...] = (
    Section("enqueue-sqlite", "benchmarks.enqueue", ("--db", "sqlite")),
    Section("enqueue-postgres", "benchmarks.enqueue", ("--db", "postgres"), postgres=True),
    Section("drain", "benchmarks.drain", ("--db", "sqlite")),
    Section(
        "breaker",
        "benchmarks.breaker_rows",
        ("--db", "postgres"),
        postgres=True,
        sqlite_args=("--db", "sqlite"),
    ),
    Section("workers", "benchmarks.workers", postgres=True),
    Section("memory", "benchmarks.memory", postgres=True, runs_flag=False),
    Section(
        "claim-scale",
        "benchmarks.claim_scale",
        ("--db", "postgres"),
        postgres=True,
        sqlite_args=("--db", "sqlite"),
    ),
    Section(
        "direct-atomic",
        "benchmarks.direct_atomic",
        ("--db", "postgres"),
        postgres=True,
        runs_flag=False,
    ),
    Section("linecount", "benchmarks.linecount", runs_flag=False),
)

#: Display order of the sections in the table.
ORDER = (
    "enqueue",
    "idempotency",
    "drain",
    "claim-scale",
    "workers",
    "backlog",
    "rate limit",
    "breaker",
    "direct-atomic",
    "memory",
    "linecount",
)


def run_section(
    section: Section, args: argparse.Namespace, workdir: Path, *, on_sqlite: bool = False
) -> dict[str, Any]:
    out = workdir / f"{section.name}.json"
    section_args = section.sqlite_args if on_sqlite and section.sqlite_args else section.args
    argv = [sys.executable, "-m", section.module, *section_args, "--json", str(out)]
    if args.smoke:
        argv.append("--smoke")
    elif args.quick:
        argv.append("--quick")
    if section.runs_flag and args.runs:
        argv += ["--runs", str(args.runs)]
    print(f"\n=== {section.name}: {' '.join(argv[1:])}", flush=True)
    started = time.monotonic()
    completed = subprocess.run(argv, cwd=common.ROOT, env=common.child_env(), check=False)
    seconds = time.monotonic() - started
    print(f"=== {section.name}: {seconds:.0f} s, exit {completed.returncode}", flush=True)
    if completed.returncode != 0 or not out.exists():
        return {"rows": [], "meta": {}, "error": f"exit status {completed.returncode}"}
    data: dict[str, Any] = json.loads(out.read_text())
    data["seconds"] = seconds
    return data


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "–"
    if unit in ("µs", "s", "MB") and value < 100:
        text = f"{value:,.1f}" if value >= 10 or unit != "µs" else f"{value:,.2f}"
    else:
        text = f"{value:,.0f}"
    return f"{text} {unit}"


def fmt_ratio(row: common.Row) -> str:
    if row.ratio is None:
        return "–"
    digits = 2 if row.ratio < 10 else 1 if row.ratio < 1000 else 0
    return f"{row.ratio:,.{digits}f}{row.ratio_label.replace('× ', '× ')}"


def verdict(row: common.Row) -> str:
    if row.met is None:
        return "pending" if row.value is None else ""
    return "met" if row.met else "MISSED"


def table(rows: Sequence[common.Row]) -> list[list[str]]:
    header = ["section", "measure", "value", "baseline (same run)", "ratio", "goal", "", "runs"]
    lines = [header]
    for row in rows:
        baseline = (
            f"{row.baseline_label}: {fmt(row.baseline, row.baseline_unit or row.unit)}"
            if row.baseline_label
            else ""
        )
        lines.append(
            [
                row.section,
                row.label,
                fmt(row.value, row.unit),
                baseline,
                fmt_ratio(row),
                row.goal,
                verdict(row),
                str(row.runs),
            ]
        )
    return lines


def print_table(rows: Sequence[common.Row]) -> None:
    lines = table(rows)
    widths = [min(max(len(line[i]) for line in lines), 80) for i in range(len(lines[0]))]
    for index, line in enumerate(lines):
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
        if index == 0:
            print("  ".join("-" * w for w in widths))


def markdown_table(rows: Sequence[common.Row]) -> str:
    lines = table(rows)
    out = ["| " + " | ".join(lines[0]) + " |", "|" + "---|" * len(lines[0])]
    for line in lines[1:]:
        out.append("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |")
    return "\n".join(out)


def sort_rows(rows: list[common.Row]) -> list[common.Row]:
    def key(row: common.Row) -> int:
        return ORDER.index(row.section) if row.section in ORDER else len(ORDER)

    return sorted(rows, key=key)


def write_results(
    output: Path,
    *,
    results: dict[str, dict[str, Any]],
    facts: dict[str, Any],
    command: str,
    quick: bool,
    total: float,
    when: datetime,
) -> list[common.Row]:
    from benchmarks import report

    rows = sort_rows(
        [common.Row.from_dict(r) for data in results.values() for r in data.get("rows", [])]
    )
    output.write_text(
        report.render(
            rows=rows,
            results=results,
            facts=facts,
            command=command,
            quick=quick,
            total_seconds=total,
            when=when,
            table=markdown_table(rows),
        )
    )
    return rows


def render_only(raw: Path, output: Path) -> int:
    """Rewrite the results file from the ``results.json`` a run left in its temp directory."""
    data = json.loads(raw.read_text())
    rows = write_results(
        output,
        results=data["results"],
        facts=data["facts"],
        command=data["command"],
        quick=bool(data.get("quick")),
        total=float(data["seconds"]),
        when=datetime.fromisoformat(data["when"]),
    )
    print_table(rows)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one run each")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes, one run each, results in a temp directory (the smoke test)",
    )
    parser.add_argument(
        "--no-postgres",
        action="store_true",
        help="skip the sections that need PostgreSQL (breaker and claim-scale run on SQLite)",
    )
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (median)")
    parser.add_argument(
        "--only", default="", help="comma-separated sections: " + ",".join(s.name for s in SECTIONS)
    )
    parser.add_argument(
        "--output", default=None, help=f"the results file (default {DEFAULT_OUTPUT})"
    )
    parser.add_argument(
        "--render",
        metavar="RESULTS_JSON",
        help="only rewrite the results file from the raw figures of an earlier run",
    )
    args = parser.parse_args(argv)
    if args.render:
        return render_only(Path(args.render), Path(args.output or DEFAULT_OUTPUT))
    if (args.quick or args.smoke) and args.runs is None:
        args.runs = 1
    wanted = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = wanted - {s.name for s in SECTIONS}
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    command = "python -m benchmarks.run" + (
        " " + shlex.join(argv if argv is not None else sys.argv[1:])
        if (argv if argv is not None else sys.argv[1:])
        else ""
    )
    started = time.monotonic()
    facts = common.machine_facts()
    workdir = Path(tempfile.mkdtemp(prefix="cio-bench-"))
    output = Path(args.output) if args.output else DEFAULT_OUTPUT
    if args.smoke and not args.output:
        output = workdir / "RESULTS.md"
    if args.no_postgres:
        facts["postgresql"] = "not used (--no-postgres)"
    pg_ok = not args.no_postgres and not str(facts.get("postgresql", "")).startswith("unreachable")
    results: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    for section in SECTIONS:
        if wanted and section.name not in wanted:
            continue
        if section.postgres and not pg_ok:
            if section.sqlite_args is not None and args.no_postgres:
                results[section.name] = run_section(section, args, workdir, on_sqlite=True)
                continue
            if args.no_postgres:
                skipped.append(section.name)
                print(f"\n=== {section.name}: skipped (--no-postgres)")
                continue
            results[section.name] = {"rows": [], "meta": {}, "error": "PostgreSQL unreachable"}
            print(f"\n=== {section.name}: skipped, PostgreSQL unreachable ({facts['postgresql']})")
            continue
        results[section.name] = run_section(section, args, workdir)
    facts["skipped_sections"] = skipped
    total = time.monotonic() - started
    facts["load_after"] = common.load_average()
    when = datetime.now(timezone.utc)
    rows = write_results(
        output,
        results=results,
        facts=facts,
        command=command,
        quick=args.quick or args.smoke,
        total=total,
        when=when,
    )
    print()
    print_table(rows)
    failed = {name: data["error"] for name, data in results.items() if data.get("error")}
    for name, error in failed.items():
        print(f"section {name} failed: {error}")
    raw = workdir / "results.json"
    raw.write_text(
        json.dumps(
            {
                "facts": facts,
                "command": command,
                "quick": args.quick or args.smoke,
                "when": when.isoformat(),
                "results": results,
                "seconds": total,
            },
            indent=1,
            default=str,
        )
    )
    print(f"\ntotal {total:.0f} s; results in {output} (raw figures: {raw})")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

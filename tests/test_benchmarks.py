"""The benchmark suite (``make bench``) in its smallest mode, so that it cannot rot.

``python -m benchmarks.run --smoke`` runs every section with tiny sizes and one run each and
writes its results file to a temp path (never ``benchmarks/RESULTS.md``); this test checks that
every section ran and that the table has each section's rows. Its figures mean nothing. On
SQLite (the default env) the sections that need PostgreSQL are skipped (``--no-postgres``; the
breaker and claim-scale sections run on SQLite instead); with ``CIO_TEST_DB=postgres`` every
section runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import common

ROOT = Path(__file__).resolve().parent.parent
ON_POSTGRES = os.environ.get("CIO_TEST_DB", "sqlite") == "postgres"

#: Rows each section must produce (``section`` column, a fragment of the ``measure`` column).
EXPECTED_SQLITE = {
    "enqueue": (
        "track(), SQLite file: marginal, inside the app's transaction",
        "track(), SQLite file: own transaction incl. commit",
    ),
    "idempotency": ("repeated key, in-process cache hit", "repeated key, read from the database"),
    "drain": ("batching on", "batching off"),
    "breaker": (
        "overhead per call",
        "queries per 1,000 calls, paced",
        "queries per 1,000 calls, tight",
    ),
    # On SQLite with --no-postgres, on PostgreSQL otherwise.
    "claim-scale": ("claim(200) of 200 due", "claim(200) with nothing due"),
    "linecount": ("library size, non-blank lines", "library size, total lines"),
}
EXPECTED_POSTGRES = {
    "enqueue": ("track(), PostgreSQL: marginal", "track(), PostgreSQL: own transaction"),
    "workers": ("1 worker process", "2 worker processes", "4 worker processes"),
    "backlog": ("time to drain", "max requests at the server in any 1 s window"),
    "rate limit": ("max requests in any 1 s",),
    "memory": ("draining", "backfilling"),
    "claim-scale": ("delivered rows, PostgreSQL",),
    "direct-atomic": ("p50 latency", "p99 latency", "calls over the documented bound"),
}


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of the results table's body rows."""
    rows = []
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| section") and line.count("|") >= 9:
            rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], str]:
    output = tmp_path_factory.mktemp("bench") / "RESULTS.md"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["CIO_BENCH_PG_SUFFIX"] = f"_smoke_{os.getpid()}"
    env.pop("PYTEST_CURRENT_TEST", None)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    command = [sys.executable, "-m", "benchmarks.run", "--smoke", "--output", str(output)]
    if not ON_POSTGRES:
        command.append("--no-postgres")
    completed = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    return completed, output.read_text()


def test_smoke_run_writes_every_sections_rows(
    smoke: tuple[subprocess.CompletedProcess[str], str],
) -> None:
    completed, markdown = smoke
    expected = dict(EXPECTED_SQLITE)
    if ON_POSTGRES:
        for section, fragments in EXPECTED_POSTGRES.items():
            expected[section] = expected.get(section, ()) + fragments
    rows = table_rows(markdown)
    assert rows, markdown
    for section, fragments in expected.items():
        labels = [row[1] for row in rows if row[0] == section]
        assert labels, f"no {section} rows in\n{markdown}"
        for fragment in fragments:
            assert any(fragment in label for label in labels), (section, fragment, labels)
    # Every row has a figure and its baseline (a section that failed leaves "–" or none).
    for row in rows:
        assert row[2] not in ("", "–"), row
        assert row[3], row
    assert "Sections that did not run" not in markdown
    assert "failed" not in completed.stdout.splitlines()[-1]
    assert "## Goals" in markdown and "## Machine" in markdown


def test_smoke_run_leaves_the_real_results_alone(
    smoke: tuple[subprocess.CompletedProcess[str], str],
) -> None:
    completed, _ = smoke
    assert str(ROOT / "benchmarks" / "RESULTS.md") not in completed.stdout


def test_max_in_window_is_a_sliding_window() -> None:
    # 101 requests 10 ms apart span exactly 1 s: a half-open 1 s window holds 100 of them.
    assert common.max_in_window([i * 0.01 for i in range(101)]) == 100
    # Spacing just under 10 ms puts 101 in one window, wherever the window starts.
    assert common.max_in_window([0.5 + i * 0.0099 for i in range(101)]) == 101
    # A burst straddling a whole-second boundary is seen (fixed 1 s bins would split it).
    burst = [0.9 + i * 0.002 for i in range(100)]
    assert common.max_in_window([0.0, *burst, 3.0]) == 100
    assert common.max_in_window([]) == 0

"""`make demo` cannot rot: its quick story runs end to end (as a subprocess; the tests never
import the example project)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_demo_story_runs_and_loses_nothing() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "example_project" / "demo.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "nothing lost, nothing sent twice" in result.stdout
    lines = result.stdout.splitlines()
    header = next(
        i for i, line in enumerate(lines) if line.split()[:2] == ["accepted", "delivered"]
    )
    accepted, delivered, unique, duplicates, lost, dead = (
        int(v) for v in lines[header + 1].split()
    )
    assert accepted == delivered == unique > 0
    assert (duplicates, lost, dead) == (0, 0, 0)

"""`make demo` cannot rot: its quick story runs end to end, once, as a subprocess (the tests never
import the example project), and these tests check what it reports — not only the final table.

With headless Chromium present the same run ends with a screenshot of the admin dashboard
(``--screenshot``), written to ``$CIO_SCREENSHOT_DIR/demo-dashboard.png`` (default: the
system temporary directory). Without Chromium that test is skipped locally and fails when
``CI`` is set, like ``tests/test_browser.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "example_project" / "demo.py"
CHROMIUM = "/usr/bin/chromium"
#: A rough bound that the quick story finished (it takes about 20-30 s); not a benchmark.
FINISHES_WITHIN = 150

pytestmark = pytest.mark.slow


def chromedriver() -> str | None:
    for candidate in (shutil.which("chromedriver"), "/usr/bin/chromedriver"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def browser_missing() -> list[str]:
    missing = [] if os.access(CHROMIUM, os.X_OK) else [CHROMIUM]
    return missing if chromedriver() else [*missing, "chromedriver"]


def ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@dataclass
class DemoRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    report: dict[str, Any]
    screenshot: Path | None

    def output(self) -> str:
        return self.stdout[-4000:] + "\n--- stderr ---\n" + self.stderr[-3000:]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    out = tmp_path_factory.mktemp("demo")
    report = out / "report.json"
    command = [sys.executable, str(DEMO), "--quick", "--report", str(report)]
    screenshot = None
    if not browser_missing():
        directory = Path(os.environ.get("CIO_SCREENSHOT_DIR", tempfile.gettempdir()))
        screenshot = directory / "demo-dashboard.png"
        screenshot.unlink(missing_ok=True)
        command += ["--screenshot", str(screenshot)]
    started = time.monotonic()
    result = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=FINISHES_WITHIN + 60,
        check=False,
    )
    return DemoRun(
        result.returncode,
        result.stdout,
        result.stderr,
        time.monotonic() - started,
        json.loads(report.read_text()) if report.exists() else {},
        screenshot,
    )


def summary_row(stdout: str) -> dict[str, int]:
    lines = stdout.splitlines()
    header = next(
        i for i, line in enumerate(lines) if line.split()[:2] == ["accepted", "delivered"]
    )
    return dict(
        zip(lines[header].split(), (int(v) for v in lines[header + 1].split()), strict=True)
    )


def test_quick_demo_succeeds_within_a_rough_bound(demo: DemoRun) -> None:
    assert demo.returncode == 0, demo.output()
    assert demo.seconds < FINISHES_WITHIN, demo.output()
    assert "nothing lost, nothing sent twice, per-person order kept" in demo.stdout
    assert demo.report["ok"] is True
    failed = [c["what"] for c in demo.report["checks"] if not c["ok"]]
    assert failed == []
    assert len(demo.report["checks"]) >= 25


def test_nothing_lost_or_duplicated(demo: DemoRun) -> None:
    row = summary_row(demo.stdout)
    assert row["accepted"] == row["delivered"] == row["unique"] > 20, row
    assert (row["duplicates"], row["lost"], row["dead"]) == (0, 0, 0), row
    assert demo.report["unknown"] == 0
    assert demo.report["out_of_order"] == []


def test_the_breaker_opened_probed_and_closed(demo: DemoRun) -> None:
    transitions = demo.report["transitions"]
    opened = transitions.index("closed->open")
    assert "open->half_open" in transitions[opened:]
    assert transitions[-1] == "half_open->closed"
    # The outage was visible on both health endpoints, with the codes each promises.
    outage = demo.report["health"]["outage"]
    assert (outage["health"], outage["health_cio"]) == (500, 200)
    assert "breaker open" in outage["health_cio_body"]
    # Web requests were not held up by Customer.io (each failing call took 300 ms).
    assert demo.report["latency_ms"]["outage"]["median"] < 300


def test_kill_switch_refuses_replay_with_exit_code_3(demo: DemoRun) -> None:
    assert "forced open: nothing sent" in demo.stdout
    refused = demo.stdout.split("cio_replay --status pending --all --now", 1)[1]
    assert "Refusing --now" in refused.split("(exit code", 1)[0]
    assert refused.split("(exit code ", 1)[1].startswith("3)")


def test_dead_letters_appeared_and_were_replayed(demo: DemoRun) -> None:
    assert demo.report["dead_letters"] == 3
    assert demo.report["replayed"] == 3
    assert demo.report["health"]["dead_letters"]["health_cio"] == 200
    assert "3 operations would be replayed" in demo.stdout
    assert "delivered=1 dead=0 failed=0 skipped=0" in demo.stdout
    assert "delivered=2 dead=0 failed=0 skipped=0" in demo.stdout
    assert summary_row(demo.stdout)["dead"] == 0


def test_demo_prints_the_superuser_and_urls(demo: DemoRun) -> None:
    assert "/admin/django_cio_reliable/operation/dashboard/" in demo.stdout
    assert "log in as   demo / " in demo.stdout
    assert "http://127.0.0.1:" in demo.stdout


def test_demo_dashboard_screenshot(demo: DemoRun) -> None:
    missing = browser_missing()
    if missing:
        reason = (
            f"{' and '.join(missing)} not found: install Debian's chromium and chromium-driver "
            "(apt-get install chromium chromium-driver; make test does it on CI)"
        )
        if ci():
            pytest.fail(f"CI is set but the demo's screenshot cannot be taken: {reason}")
        pytest.skip(reason)
    assert demo.screenshot is not None
    assert demo.report.get("screenshot") == str(demo.screenshot.resolve()), demo.output()
    data = demo.screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 20_000  # a rendered page, not a blank one

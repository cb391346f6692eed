"""The dashboard in a real browser: headless Debian Chromium driven by Selenium.

Needs ``/usr/bin/chromium`` and ``chromedriver`` (Debian packages ``chromium`` and
``chromium-driver``; ``make test`` installs them on CI). Without them the test is skipped
locally and fails when ``CI`` is set, so CI can never pass without running it.

A screenshot of the dashboard is written to ``$CIO_SCREENSHOT_DIR/dashboard.png`` (default:
the system temporary directory).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.staticfiles.testing import StaticLiveServerTestCase
from django.utils import timezone

from django_cio_reliable import breaker
from django_cio_reliable.models import BreakerEvent, Operation

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1900",
)
PASSWORD = "browser-test-pw"  # noqa: S105


def chromedriver() -> str | None:
    for candidate in (shutil.which("chromedriver"), "/usr/bin/chromedriver"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_browser() -> str:
    """The chromedriver path; skip (locally) or fail (on CI) when the browser is missing."""
    driver = chromedriver()
    missing = [
        name
        for name, present in ((CHROMIUM, os.access(CHROMIUM, os.X_OK)), ("chromedriver", driver))
        if not present
    ]
    if missing:
        reason = (
            f"{' and '.join(missing)} not found: install Debian's chromium and chromium-driver "
            "(apt-get install chromium chromium-driver; make test does it on CI)"
        )
        if ci():
            pytest.fail(f"CI is set but the browser test cannot run: {reason}")
        pytest.skip(reason)
    assert driver is not None
    return driver


def screenshot_path() -> Path:
    return Path(os.environ.get("CIO_SCREENSHOT_DIR", tempfile.gettempdir())) / "dashboard.png"


def seed() -> None:
    """Three hours of traffic, a few failures and dead letters, and a breaker transition."""
    now = timezone.now()
    rows: list[Operation] = []
    for minute in range(180):
        moment = now - timedelta(minutes=minute, seconds=10)
        # A smooth daily-ish wave with a dip during the "incident" 40-60 minutes ago.
        delivered = round(6 + 4 * math.sin(minute / 17)) if not 40 <= minute <= 60 else 1
        for i in range(delivered):
            rows.append(
                Operation(
                    kind="track",
                    customer_id=f"user-{minute}-{i}",
                    person_key=f"c:user-{minute}-{i}",
                    name="order_placed",
                    payload={"name": "order_placed"},
                    status="delivered",
                    next_attempt_at=moment,
                    created_at=moment,
                    delivered_at=moment,
                    last_status_code=200,
                )
            )
        if 40 <= minute <= 60 and minute % 2 == 0:
            rows.append(
                Operation(
                    kind="identify",
                    customer_id=f"late-{minute}",
                    person_key=f"c:late-{minute}",
                    payload={},
                    status="dead",
                    attempts=25,
                    next_attempt_at=moment,
                    created_at=moment,
                    dead_at=moment,
                    last_status_code=503,
                    last_error="gave up after 25 attempts over 259200s: transient (HTTP 503): "
                    "service unavailable",
                )
            )
    for i in range(4):
        rows.append(
            Operation(
                kind="identify",
                customer_id=f"bad-{i}@example.com",
                person_key=f"c:bad-{i}@example.com",
                payload={},
                status="dead",
                attempts=1,
                next_attempt_at=now,
                created_at=now,
                dead_at=now - timedelta(minutes=5),
                last_status_code=400,
                last_error=(
                    f"permanent (HTTP 400): attribute 'email' invalid for bad-{i}@example.com"
                ),
            )
        )
    for i in range(12):
        rows.append(
            Operation(
                kind="track",
                customer_id=f"waiting-{i}",
                person_key=f"c:waiting-{i}",
                name="page_viewed",
                payload={"name": "page_viewed"},
                status="pending" if i % 3 else "failed",
                next_attempt_at=now,
                created_at=now - timedelta(seconds=30 * i),
            )
        )
    Operation.objects.bulk_create(rows)
    breaker.get_breaker().force("forced_closed", reason="load test")
    breaker.get_breaker().force("auto", reason="done")


class DashboardBrowserTest(StaticLiveServerTestCase):
    """Log in, open the dashboard, see the chart, force the breaker open."""

    driver: Any
    profile: str

    @classmethod
    def setUpClass(cls) -> None:
        driver_path = require_browser()
        super().setUpClass()
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        cls.profile = tempfile.mkdtemp(prefix="cio-chromium-")
        options.add_argument(f"--user-data-dir={cls.profile}")
        try:
            cls.driver = webdriver.Chrome(
                service=Service(executable_path=driver_path), options=options
            )
        except Exception:
            super().tearDownClass()
            shutil.rmtree(cls.profile, ignore_errors=True)
            raise
        cls.driver.implicitly_wait(0)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.driver.quit()
        shutil.rmtree(cls.profile, ignore_errors=True)
        super().tearDownClass()

    def setUp(self) -> None:
        breaker.reset()
        get_user_model().objects.create_superuser("operator", "operator@example.com", PASSWORD)

    def tearDown(self) -> None:
        breaker.reset()

    def wait_for(self, css: str) -> Any:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, 15).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, css))
        )

    def test_dashboard_chart_and_force_open(self) -> None:
        from selenium.webdriver.common.by import By

        seed()
        driver = self.driver
        driver.get(f"{self.live_server_url}/admin/login/?next=/admin/")
        driver.find_element(By.NAME, "username").send_keys("operator")
        driver.find_element(By.NAME, "password").send_keys(PASSWORD)
        driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        # The admin index links the dashboard.
        link = self.wait_for("#cio-dashboard-link a")
        driver.save_screenshot(str(screenshot_path().with_name("admin-index.png")))
        link.click()

        chart = self.wait_for("svg#cio-throughput-chart")
        assert chart.get_attribute("data-buckets") == "180"
        assert driver.find_elements(By.CSS_SELECTOR, "svg#cio-throughput-chart polyline")
        size = chart.size
        assert size["width"] > 400 and size["height"] > 150, size
        state = driver.find_element(By.ID, "cio-breaker-state")
        assert state.get_attribute("data-state") == "closed"
        assert state.get_attribute("data-mode") == "auto"
        backlog = driver.find_element(By.ID, "cio-open-total").text
        assert backlog == "12"
        errors = driver.find_element(By.ID, "cio-errors").text
        assert "permanent (HTTP 400): attribute … invalid for <customer>" in errors
        assert "@example.com" not in errors
        driver.save_screenshot(str(screenshot_path()))

        driver.find_element(By.NAME, "reason").send_keys("browser test incident")
        driver.find_element(By.ID, "cio-force-forced_open").click()
        self.wait_for('#cio-breaker-state[data-mode="forced_open"]')
        state = driver.find_element(By.ID, "cio-breaker-state")
        assert state.get_attribute("data-state") == "open"
        assert state.text == "open"
        assert "forced open" in driver.find_element(By.ID, "cio-breaker-mode").text
        assert "browser test incident" in driver.find_element(By.ID, "cio-breaker-events").text
        assert driver.current_url.endswith("/admin/django_cio_reliable/operation/dashboard/")
        event = BreakerEvent.objects.order_by("-id").first()
        assert event is not None
        assert (event.to_mode, event.username) == ("forced_open", "operator")
        assert breaker.get_breaker().snapshot(fresh=True).mode == "forced_open"
        driver.save_screenshot(str(screenshot_path().with_name("dashboard-forced-open.png")))

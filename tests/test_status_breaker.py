"""``manage.py cio_status`` reports the circuit breaker and can fail on it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from django_cio_reliable import breaker
from django_cio_reliable.breaker import get_breaker
from django_cio_reliable.breaker.core import Outcome
from tests.fakes import FakeClock

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_breaker() -> Iterator[None]:
    breaker.reset()
    yield
    breaker.reset()


def status(*args: str) -> str:
    out = StringIO()
    call_command("cio_status", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_closed_breaker_is_reported_and_passes() -> None:
    out = status("--fail-on-breaker")
    assert "Circuit breaker: closed\n" in out
    data = json.loads(status("--json"))
    assert data["breaker"]["state"] == "closed"
    assert data["breaker"]["mode"] == "auto"
    assert data["breaker"]["open_since"] is None


def test_forced_open_breaker_is_reported_and_fails_the_check() -> None:
    get_breaker().force("forced_open", reason="incident 42")
    out = StringIO()
    with pytest.raises(CommandError, match=r"circuit breaker is open \(forced_open\)") as info:
        call_command("cio_status", "--fail-on-breaker", stdout=out, stderr=StringIO())
    assert info.value.returncode == 1
    assert "Circuit breaker: open (forced open)" in out.getvalue()
    data = json.loads(status("--json"))
    assert (data["breaker"]["state"], data["breaker"]["mode"]) == ("open", "forced_open")
    assert data["ok"] is True  # no --fail-on-breaker: reported, not failed


def test_the_window_shows_this_process_calls_and_the_failures_that_opened_it(
    fake_clock: FakeClock,
) -> None:
    b = get_breaker()
    for _ in range(2):
        permit = b.allow()
        assert permit is not None
        b.record(permit, Outcome.success(0.01))
    report = json.loads(status("--json"))["breaker"]
    assert (report["state"], report["calls_in_window"]) == ("closed", 2)
    for _ in range(5):
        permit = b.allow()
        assert permit is not None
        b.record(permit, Outcome.failure(0.01))
    report = json.loads(status("--json"))["breaker"]
    assert (report["state"], report["calls_in_window"]) == ("open", 7)
    assert report["failure_rate"] == round(5 / 7, 3)
    assert "Circuit breaker: open" in status()

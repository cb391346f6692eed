"""Shared fixtures: a real FakeCustomerIO server and settings pointing at it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings as django_settings

from django_cio_reliable.testing import FakeCustomerIO
from tests.fakes import FakeClock

SITE_ID = "test-site"
API_KEY = "test-api-key-0123456789"


@pytest.fixture(scope="session")
def fake_cio_server() -> Iterator[FakeCustomerIO]:
    """One FakeCustomerIO for the whole session; ``fake_cio`` resets it for every test."""
    with FakeCustomerIO(site_id=SITE_ID, api_key=API_KEY) as server:
        yield server


@pytest.fixture
def fake_cio(fake_cio_server: FakeCustomerIO, settings: Any) -> Iterator[FakeCustomerIO]:
    """A clean FakeCustomerIO, with ``CIO_RELIABLE["TRACK_URL"]`` pointing at it."""
    fake_cio_server.reset()
    settings.CIO_RELIABLE = {**django_settings.CIO_RELIABLE, "TRACK_URL": fake_cio_server.url}
    yield fake_cio_server
    fake_cio_server.reset()


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """``django_cio_reliable.clock.now`` under the test's control (no sleeping)."""
    from django_cio_reliable import clock

    fake = FakeClock()
    monkeypatch.setattr(clock, "now", fake.now)
    return fake


@pytest.fixture
def no_kick(
    fake_cio: FakeCustomerIO, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> FakeCustomerIO:
    """Operations are stored and wait for the test to drain them (no task kick, no thread)."""
    from django_cio_reliable import dispatch

    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "DISPATCH": "task", "KICK_DEBOUNCE": 3600}
    monkeypatch.setattr(dispatch.kicker, "_send", lambda: None)
    return fake_cio


@pytest.fixture
def direct(no_kick: FakeCustomerIO, settings: Any) -> Iterator[FakeCustomerIO]:
    """Direct delivery, one operation a request, no automatic kick: tests drain what is left."""
    from django_cio_reliable import breaker

    settings.CIO_RELIABLE = {
        **settings.CIO_RELIABLE,
        "DELIVERY": "direct",
        "RATE_LIMIT": 10_000,
        "DIRECT_ATTEMPTS": 2,
        "BATCH": False,
    }
    breaker.reset()
    yield no_kick
    breaker.reset()

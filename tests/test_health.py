"""The django-health-check plugin, through the real health endpoints (see tests/urls.py).

- ``/health/``: django-health-check's own ``HealthCheckView`` (500 on any failure, warnings
  included, as 4.x does).
- ``/health/cio/``: :class:`django_cio_reliable.views.HealthView` (200 when only warnings fail).
- ``/health/cio-strict/``: the same view with low thresholds and the credentials probe.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from health_check.exceptions import ServiceUnavailable, ServiceWarning

from django_cio_reliable import breaker, clock, health
from django_cio_reliable.breaker.core import Outcome
from django_cio_reliable.health import CustomerIOHealth, Facts, ProbeResult, assess, raise_for
from django_cio_reliable.models import DeliveryState, Operation
from django_cio_reliable.testing import FakeCustomerIO
from django_cio_reliable.views import only_warnings
from tests.conftest import API_KEY

pytestmark = pytest.mark.django_db

CUSTOMER = "customer-7f3a-secret"
EMAIL = "pii-person@example.com"
FORMATS = ("json", "text", "html", "atom", "rss", "openmetrics")


@pytest.fixture(autouse=True)
def _fresh_state() -> Iterator[None]:
    breaker.reset()
    health.reset_probe_cache()
    yield
    breaker.reset()
    health.reset_probe_cache()


def store(status: str = "pending", *, age: float = 0.0, **fields: Any) -> Operation:
    now = timezone.now()
    values: dict[str, Any] = {
        "kind": "track",
        "customer_id": CUSTOMER,
        "person_key": f"c:{CUSTOMER}",
        "name": "order_placed",
        "payload": {"name": "order_placed", "data": {"email": EMAIL}},
        "status": status,
        "next_attempt_at": now,
        "created_at": now - timedelta(seconds=age),
        # An error text that (wrongly) carried the key and the person must never be echoed.
        "last_error": f"permanent (HTTP 400): {CUSTOMER} {EMAIL} {API_KEY}",
    }
    if status == "dead":
        values["dead_at"] = now
    values.update(fields)
    op: Operation = Operation.objects.create(**values)
    return op


def get(client: Client, url: str, fmt: str = "json") -> tuple[int, str]:
    response = client.get(url, {"format": fmt} if fmt != "html" else {}, HTTP_ACCEPT="text/html")
    return response.status_code, response.content.decode()


def message(client: Client, url: str) -> tuple[int, str]:
    status, body = get(client, url)
    data = json.loads(body)
    assert list(data) == ["CustomerIOHealth()"]
    return status, data["CustomerIOHealth()"]


def assert_no_secrets(client: Client, *urls: str) -> None:
    for url in urls:
        for fmt in FORMATS:
            _status, body = get(client, url, fmt)
            for secret in (API_KEY, CUSTOMER, EMAIL, "test-site"):
                assert secret not in body, (url, fmt, secret)


def trip_breaker() -> None:
    """Five failures in a row open the breaker (BREAKER_CONSECUTIVE_FAILURES)."""
    current = breaker.get_breaker()
    for _ in range(5):
        permit = current.allow()
        assert permit is not None
        current.record(permit, Outcome.failure(0.01))
    assert current.snapshot(fresh=True).state == "open"


def shift_clock(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    real = clock.now
    monkeypatch.setattr(clock, "now", lambda: real() + timedelta(seconds=seconds))


# --------------------------------------------------------------------------- states


def test_healthy(client: Client) -> None:
    store("delivered", delivered_at=timezone.now())
    for url in ("/health/", "/health/cio/"):
        assert message(client, url) == (200, "OK")
    status, body = get(client, "/health/cio/", "html")
    assert status == 200
    assert "CustomerIOHealth()" in body and "<p>OK</p>" in body


def test_warning_answers_200_on_our_view_and_500_on_the_stock_view(client: Client) -> None:
    store("dead")
    status, text = message(client, "/health/cio/")
    assert status == 200
    assert text.startswith("Warning: 1 dead letter in the last 1d 0h")
    assert message(client, "/health/")[0] == 500
    html_status, html = get(client, "/health/cio/", "html")
    assert html_status == 200 and "Warning: 1 dead letter" in html
    assert_no_secrets(client, "/health/", "/health/cio/")


def test_backlog_warning_and_unavailable_thresholds_per_view(
    client: Client, fake_cio: FakeCustomerIO
) -> None:
    store()
    store()
    status, text = message(client, "/health/cio-strict/")
    assert status == 200
    assert text == "Warning: backlog of 2 open operations (warning at 2)"
    # Default thresholds: 2 open operations is healthy.
    assert message(client, "/health/cio/") == (200, "OK")
    store()
    store()
    status, text = message(client, "/health/cio-strict/")
    assert status == 500
    assert text == "Unavailable: backlog of 4 open operations (unavailable at 4)"


def test_oldest_pending_thresholds(client: Client) -> None:
    store(age=700)
    status, text = message(client, "/health/cio/")
    assert status == 200
    assert text.startswith("Warning: oldest open operation is 11m")
    assert "(warning after 10m 00s)" in text
    store(age=3700, status="failed")
    status, text = message(client, "/health/cio/")
    assert status == 500
    assert text.startswith("Unavailable: oldest open operation is 1h 01m old")
    for url in ("/health/", "/health/cio/"):
        assert get(client, url, "html")[0] == 500
        assert get(client, url, "text")[0] == 500
    assert_no_secrets(client, "/health/cio/")


def test_breaker_half_open_warns_and_long_open_is_unavailable(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    trip_breaker()
    status, text = message(client, "/health/cio/")
    assert (status, text) == (200, "Warning: breaker open for 0s")
    # After the 30 s cooldown a call is admitted as a probe: half-open.
    shift_clock(monkeypatch, 31)
    assert breaker.get_breaker().allow() is not None
    assert breaker.get_breaker().snapshot(fresh=True).state == "half_open"
    status, text = message(client, "/health/cio/")
    assert (status, text) == (200, "Warning: breaker half-open for 31s")
    assert message(client, "/health/")[0] == 500
    # Away from closed longer than open_unavailable_after (300 s).
    shift_clock(monkeypatch, 400)
    status, text = message(client, "/health/cio/")
    assert status == 500
    assert text.startswith("Unavailable: breaker half-open, away from closed for 7m")
    assert "(unavailable after 5m 00s)" in text
    assert_no_secrets(client, "/health/cio/")


def test_breaker_forced_open_warns(client: Client) -> None:
    breaker.get_breaker().force("forced_open", reason="incident")
    status, text = message(client, "/health/cio/")
    assert status == 200
    assert text == "Warning: breaker forced open by an operator: nothing is being sent"
    breaker.get_breaker().force("disabled")
    assert message(client, "/health/cio/") == (200, "OK")


def test_credentials_failure_is_unavailable(client: Client) -> None:
    DeliveryState.objects.create(
        destination="https://track.customer.io#test-site",
        paused_until=timezone.now() + timedelta(minutes=5),
        pause_reason="auth",
        auth_failed_at=datetime(2024, 5, 1, 12, 0, tzinfo=dt_timezone.utc),
        auth_error=f"HTTP 401: bad key {API_KEY}",
    )
    status, text = message(client, "/health/cio/")
    assert status == 500
    assert text == (
        "Unavailable: Customer.io rejected the credentials at 2024-05-01T12:00:00+00:00; "
        "delivery is paused until they are fixed"
    )
    assert_no_secrets(client, "/health/", "/health/cio/")


def test_rate_limit_pause_warns(client: Client) -> None:
    DeliveryState.objects.create(
        destination="https://track.customer.io#test-site",
        paused_until=timezone.now() + timedelta(minutes=1),
        pause_reason="rate_limited",
    )
    status, text = message(client, "/health/cio/")
    assert status == 200
    assert text.startswith("Warning: rate limited by Customer.io; every worker waits until ")


def test_every_problem_is_listed_unavailable_first(client: Client) -> None:
    store("dead")
    store(age=4000)
    status, text = message(client, "/health/cio/")
    assert status == 500
    assert text.startswith("Unavailable: oldest open operation is 1h 06m old")
    assert text.endswith(
        "; 1 dead letter in the last 1d 0h (replay them from the admin or with "
        "manage.py cio_replay)"
    )


# --------------------------------------------------------------------------- probe


def test_probe_checks_credentials_at_most_once_a_minute(
    client: Client, fake_cio: FakeCustomerIO
) -> None:
    assert message(client, "/health/cio-strict/") == (200, "OK")
    assert message(client, "/health/cio-strict/") == (200, "OK")
    paths = [request.path for request in fake_cio.requests]
    # One probe, of the region endpoint only: no person was touched.
    assert paths == ["/api/v1/accounts/region"]


def test_probe_reports_rejected_credentials(
    client: Client, fake_cio: FakeCustomerIO, settings: Any
) -> None:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "API_KEY": "wrong-key-123456"}
    status, text = message(client, "/health/cio-strict/")
    assert status == 500
    assert text == "Unavailable: Customer.io rejected the credentials (HTTP 401) in the probe"
    assert [r.path for r in fake_cio.requests] == ["/api/v1/accounts/region"]
    for fmt in FORMATS:
        body = get(client, "/health/cio-strict/", fmt)[1]
        assert "wrong-key-123456" not in body


def test_probe_network_failure_is_a_warning(client: Client, fake_cio: FakeCustomerIO) -> None:
    fake_cio.fail_next(1, status=503)
    status, text = message(client, "/health/cio-strict/")
    assert status == 200
    assert text == "Warning: credentials probe failed: transient (HTTP 503)"


def test_probe_is_rate_limited_per_process() -> None:
    calls: list[int] = []
    now = [1000.0]

    def probe() -> ProbeResult:
        calls.append(1)
        return ProbeResult(ok=len(calls) == 1)

    def ask() -> ProbeResult | None:
        return health.probe_credentials(60, monotonic=lambda: now[0], probe=probe)

    assert ask() == ProbeResult(ok=True)
    now[0] += 59
    assert ask() == ProbeResult(ok=True)
    now[0] += 2
    assert ask() == ProbeResult(ok=False)
    assert len(calls) == 2


def test_probe_is_off_by_default() -> None:
    assert CustomerIOHealth().probe_credentials is False


# --------------------------------------------------------------------------- pure parts


def test_assess_thresholds_can_be_turned_off() -> None:
    facts = Facts(backlog=10**6, oldest_open_age=10**6, dead_recent=10**6)
    quiet = CustomerIOHealth(
        backlog_warning=None,
        oldest_pending_warning=None,
        oldest_pending_unavailable=None,
        dead_warning=None,
    )
    assert assess(facts, quiet) == []
    assert {p.level for p in assess(facts, CustomerIOHealth())} == {"warning", "unavailable"}


def test_assess_forced_open_can_count_as_unavailable() -> None:
    facts = Facts(breaker_state="open", breaker_mode="forced_open")
    assert [p.level for p in assess(facts, CustomerIOHealth())] == ["warning"]
    strict = CustomerIOHealth(forced_open_unavailable=True)
    assert [p.level for p in assess(facts, strict)] == ["unavailable"]


def test_assess_ignores_the_breaker_in_manual_closed_modes() -> None:
    for mode in ("forced_closed", "disabled"):
        facts = Facts(breaker_state="open", breaker_mode=mode, open_for=10**5)
        assert assess(facts, CustomerIOHealth()) == []


def test_assess_a_credentials_failure_the_probe_no_longer_sees_is_a_warning() -> None:
    failed_at = datetime(2024, 5, 1, 12, 0, tzinfo=dt_timezone.utc)
    facts = Facts(auth_failed_at=failed_at)
    assert [p.level for p in assess(facts, CustomerIOHealth())] == ["unavailable"]
    fixed = Facts(auth_failed_at=failed_at, probe=ProbeResult(ok=True))
    assert assess(fixed, CustomerIOHealth()) == [
        health.Problem(
            "warning",
            "Customer.io rejected the credentials at 2024-05-01T12:00:00+00:00; the probe "
            "accepts them now",
        )
    ]
    still = Facts(auth_failed_at=failed_at, probe=ProbeResult(ok=False, kind="auth", status=403))
    assert [p.message for p in assess(still, CustomerIOHealth())] == [
        "Customer.io rejected the credentials (HTTP 403) in the probe"
    ]


def test_raise_for() -> None:
    raise_for([])
    with pytest.raises(ServiceWarning, match="a; b"):
        raise_for([health.Problem("warning", "a"), health.Problem("warning", "b")])
    with pytest.raises(ServiceUnavailable, match="^Unavailable: b; a$"):
        raise_for([health.Problem("warning", "a"), health.Problem("unavailable", "b")])


def test_repr_and_labels_carry_no_thresholds_or_destination() -> None:
    check = CustomerIOHealth(backlog_warning=5)
    assert repr(check) == "CustomerIOHealth()"
    assert check.labels == {"check": "CustomerIOHealth"}


class _Result:
    def __init__(self, error: Exception | None) -> None:
        self.error = error


def test_only_warnings() -> None:
    assert not only_warnings([])
    assert not only_warnings([_Result(None)])
    assert only_warnings([_Result(None), _Result(ServiceWarning("x"))])
    assert not only_warnings([_Result(ServiceWarning("x")), _Result(ServiceUnavailable("y"))])

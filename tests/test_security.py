"""No secret leaks: after a run with faults, the API key is nowhere, payloads are in no log line.

One drain against the real ``FakeCustomerIO`` (with a distinctive key, read from the
environment) meets a 500, a 429 with ``Retry-After``, a 401, a 400 whose body echoes the
request (key and payload included), a plain-text 502 quoting it, and a 207 partial batch. Then
every place an operator or an attacker could look is scanned.
"""

from __future__ import annotations

import base64
import json
import logging
import traceback
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from django.apps import apps
from django.contrib import admin
from django.core import serializers
from django.core.checks import run_checks
from django.core.management import call_command
from django.test import Client

import django_cio_reliable as cio
from django_cio_reliable import breaker, outbox, signals
from django_cio_reliable.conf import app_settings
from django_cio_reliable.exceptions import DeliveryError
from django_cio_reliable.models import Operation
from django_cio_reliable.testing import FakeCustomerIO
from django_cio_reliable.transport import get_transport, reset_transports
from tests.fakes import FakeClock

pytestmark = pytest.mark.django_db

SITE_ID = "sec-site-4711"
KEY = "cioKEY-9f8e7d6c5b4a-do-not-leak"
KEY_ENV = "CIO_SECURITY_TEST_API_KEY"
#: The Authorization header value: as telling as the key itself.
BASIC = base64.b64encode(f"{SITE_ID}:{KEY}".encode()).decode()
#: Distinctive payload values (personal data) that must never reach a log line.
EMAIL = "pii-7c1d@leak.example"
NOTE = "pii-note-Zq81-never-logged"
PAYLOAD_VALUES = (EMAIL, NOTE)


@pytest.fixture(scope="module")
def secret_server() -> Iterator[FakeCustomerIO]:
    with FakeCustomerIO(site_id=SITE_ID, api_key=KEY) as server:
        yield server


@pytest.fixture
def server(
    secret_server: FakeCustomerIO,
    no_kick: FakeCustomerIO,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[FakeCustomerIO]:
    """``secret_server`` as the destination, the key only in the environment."""
    secret_server.reset()
    monkeypatch.setenv(KEY_ENV, KEY)
    settings.CIO_RELIABLE = {
        **settings.CIO_RELIABLE,
        "SITE_ID": SITE_ID,
        "API_KEY": "",
        "API_KEY_ENV": KEY_ENV,
        "TRACK_URL": secret_server.url,
        "RATE_LIMIT": 10_000,
        "BATCH": True,
        # Every fault reaches the transport: the breaker must not stop the run early.
        "BREAKER_CONSECUTIVE_FAILURES": 0,
        "BREAKER_MINIMUM_CALLS": 1000,
    }
    reset_transports()
    breaker.reset()
    yield secret_server
    secret_server.reset()
    breaker.reset()
    reset_transports()


class Scan:
    """Collects texts by where they came from; :meth:`leaks` names the places that leak."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def add(self, where: str, text: object) -> None:
        self.texts.append((where, text if isinstance(text, str) else repr(text)))

    def leaks(self, *needles: str) -> list[str]:
        return [
            f"{where}: …{text[max(0, text.find(n) - 60) : text.find(n) + 60]}…"
            for where, text in self.texts
            for n in needles
            if n in text
        ]


def echo_body(request: dict[str, Any]) -> bytes:
    """A 400 body that quotes the request, credentials included (a badly behaved proxy)."""
    return json.dumps(
        {
            "meta": {
                "error": f"invalid request {json.dumps(request)} "
                f"(Authorization: Basic {BASIC}; api_key={KEY})"
            }
        }
    ).encode()


def exception_texts(exc: BaseException) -> list[str]:
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc))]


def test_scan_finds_what_it_looks_for() -> None:
    scan = Scan()
    scan.add("a log line", f"auth=Basic {BASIC}")
    scan.add("clean", "nothing here")
    assert scan.leaks(KEY, BASIC) == [f"a log line: …auth=Basic {BASIC}…"]


def test_the_api_key_and_payloads_leak_nowhere_after_a_run_with_faults(
    server: FakeCustomerIO,
    fake_clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    admin_client: Client,
    settings: Any,
) -> None:
    caplog.set_level(logging.DEBUG, logger="django_cio_reliable")
    assert app_settings.API_KEY == KEY  # read from the environment
    scan = Scan()
    errors: list[Any] = []

    def on_failed(sender: Any, error: DeliveryError, **kwargs: Any) -> None:
        errors.append(error)

    def on_dead(sender: Any, reason: str, **kwargs: Any) -> None:
        errors.append(reason)

    signals.operation_failed.connect(on_failed)
    signals.operation_dead.connect(on_dead)
    try:
        attributes = {"email": EMAIL, "note": NOTE}
        for i in range(4):
            cio.identify(f"sec-{i}", attributes, idempotency_key=f"sec-key-{i}")
            cio.track(f"sec-{i}", "order_placed", {"email": EMAIL, "note": NOTE})
        cio.track_anonymous("anon-sec", "page_viewed", {"note": NOTE})
        request = {"type": "person", "action": "identify", "attributes": attributes}
        server.fail_next(1, 500)
        server.fail_next(1, 429, retry_after=7)
        server.fail_next(1, 401, body=echo_body(request))
        server.fail_next(1, 400, body=echo_body(request))
        server.fail_next(1, 502, body=f"<html>upstream said {request} {KEY} {BASIC}</html>")
        server.reject_batch_items([0, 2], message=f"bad value {EMAIL} for {KEY}", count=2)
        for _ in range(15):
            outbox.drain(max_seconds=30, sleep=lambda s: None)
            fake_clock.advance(3600)

        # The transport's own exceptions, raised straight at a caller.
        transport = get_transport()
        for status, body in ((400, echo_body(request)), (401, echo_body(request)), (503, None)):
            server.fail_next(1, status, body=body)
            with pytest.raises(DeliveryError) as raised:
                transport.send("identify", "sec-direct", {"attributes": attributes})
            errors.append(raised.value)
        server.reset_next(1)
        with pytest.raises(DeliveryError) as raised:
            transport.send("identify", "sec-direct", {"attributes": attributes})
        errors.append(raised.value)
        server.fail_next(1, 401, body=echo_body(request))
        with pytest.raises(DeliveryError) as raised:
            transport.check_credentials()
        errors.append(raised.value)
    finally:
        signals.operation_failed.disconnect(on_failed)
        signals.operation_dead.disconnect(on_dead)

    # The run did meet every fault, authenticated with the key, and got things delivered.
    assert server.request_count >= 10
    statuses = set(Operation.objects.values_list("status", flat=True))
    assert "delivered" in statuses
    assert "dead" in statuses
    assert {e.status for e in errors if isinstance(e, DeliveryError)} >= {400, 401, 503}

    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    log_lines = [formatter.format(r) for r in caplog.records if r.name.startswith("django_cio")]
    assert len(log_lines) > 20
    for line in log_lines:
        scan.add("log", line)
    for error in errors:
        for text in exception_texts(error) if isinstance(error, BaseException) else [error]:
            scan.add("exception", text)

    transport = get_transport()
    for name, obj in (
        ("conf", app_settings),
        ("transport", transport),
        ("client", transport._client),
        ("breaker", breaker.get_breaker()),
        ("snapshot", breaker.get_breaker().snapshot(fresh=True)),
    ):
        scan.add(f"repr({name})", repr(obj))
        scan.add(f"str({name})", str(obj))

    for model in apps.get_app_config("django_cio_reliable").get_models():
        rows = model._default_manager.all()
        scan.add(f"rows of {model.__name__}", serializers.serialize("json", rows))
        for obj in rows:
            scan.add(f"repr({model.__name__})", repr(obj))
            scan.add(f"str({model.__name__})", str(obj))

    pages = ["/admin/", "/admin/django_cio_reliable/", "/admin/django_cio_reliable/operation/"]
    pages.append("/admin/django_cio_reliable/operation/dashboard/")
    for model in apps.get_app_config("django_cio_reliable").get_models():
        if not admin.site.is_registered(model):
            continue
        base = f"/admin/django_cio_reliable/{model._meta.model_name}/"
        pages.append(base)
        for pk in model._default_manager.values_list("pk", flat=True):
            pages.append(f"{base}{pk}/change/")
            if issubclass(model, Operation):
                pages.append(f"{base}{pk}/payload/")
    for page in pages:
        response = admin_client.get(page)
        assert response.status_code == 200, page
        scan.add(f"admin {page}", response.content.decode())

    health = Client()
    for url in ("/health/", "/health/cio/", "/health/cio-strict/"):
        for accept in ("text/html", "application/json"):
            response = health.get(url, HTTP_ACCEPT=accept)
            scan.add(f"health {url} {accept}", response.content.decode())
            scan.add(f"health {url} headers", str(response.headers))

    for args in ((), ("--json",)):
        out, err = StringIO(), StringIO()
        call_command("cio_status", *args, stdout=out, stderr=err)
        scan.add(f"cio_status {args}", out.getvalue() + err.getvalue())

    base_settings = dict(settings.CIO_RELIABLE)
    for variant in (
        {},
        {"API_KEY": KEY, "SITE_ID": ""},
        {"API_KEY": KEY, "API_KEYS": KEY, "TRACK_URL": f"https://{SITE_ID}:{KEY}@track.example/"},
        {"API_KEY": KEY, "TRACK_URL": f"http://127.0.0.1:1/?key={KEY}"},
        {"API_KEY": KEY.encode()},
        {"API_KEY": [KEY], "API_KEY_ENV": ""},
    ):
        settings.CIO_RELIABLE = {**base_settings, **variant}
        for message in run_checks():
            scan.add(f"check {message.id} with {sorted(variant)}", str(message))
            scan.add(f"check {message.id} hint", str(message.hint))
    settings.CIO_RELIABLE = base_settings

    assert scan.leaks(KEY, BASIC) == []
    payload_in_logs = [line for line in log_lines for value in PAYLOAD_VALUES if value in line]
    assert payload_in_logs == []
    # The payloads are stored (and shown to admins with view_payload) — the scan saw them.
    assert scan.leaks(NOTE)

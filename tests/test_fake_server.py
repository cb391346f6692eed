"""FakeCustomerIO, tested through real HTTP with ``requests``."""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import requests

from django_cio_reliable.testing import (
    FakeCustomerIO,
    FakeCustomerIOClient,
    Receipt,
    ReceivedRequest,
    format_retry_after,
)
from tests.conftest import API_KEY, SITE_ID

AUTH = (SITE_ID, API_KEY)
REPO_ROOT = Path(__file__).resolve().parents[1]
CLI_ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


def ulid(n: int) -> str:
    """A valid ULID (Crockford base32, 26 characters) derived from ``n``."""
    return f"01HZ{n:022d}"


def identify(fake: FakeCustomerIO, cid: str = "42", **attributes: Any) -> requests.Response:
    return requests.put(f"{fake.url}/api/v1/customers/{cid}", json=attributes, auth=AUTH, timeout=5)


def track(
    fake: FakeCustomerIO, cid: str = "42", name: str = "order_placed", **extra: Any
) -> requests.Response:
    body = {"name": name, "data": {"total": 42}, **extra}
    return requests.post(
        f"{fake.url}/api/v1/customers/{cid}/events", json=body, auth=AUTH, timeout=5
    )


def batch(fake: FakeCustomerIO, ops: list[Any], **kwargs: Any) -> requests.Response:
    return requests.post(
        f"{fake.url}/api/v2/batch", json={"batch": ops}, auth=AUTH, timeout=5, **kwargs
    )


def person_event(cid: str, name: str = "viewed", event_id: str | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "type": "person",
        "identifiers": {"id": cid},
        "action": "event",
        "name": name,
        "attributes": {"page": "/"},
    }
    if event_id is not None:
        op["id"] = event_id
    return op


@pytest.fixture
def own_fake() -> Iterator[FakeCustomerIO]:
    """A private server, for tests that stop it or need other constructor arguments."""
    with FakeCustomerIO(site_id=SITE_ID, api_key=API_KEY) as server:
        yield server


# --------------------------------------------------------------------------- endpoints


def test_identify_records_receipt_and_upserts_person(fake_cio: FakeCustomerIO) -> None:
    assert identify(fake_cio, email="a@example.com", plan="free").status_code == 200
    response = identify(fake_cio, plan="pro")

    assert response.status_code == 200
    assert response.json() == {}
    assert fake_cio.people() == {"42": {"email": "a@example.com", "plan": "pro"}}
    [first, second] = fake_cio.receipts
    assert (first.kind, first.customer_id, first.via, first.applied) == (
        "identify",
        "42",
        "v1",
        True,
    )
    assert second.attributes == {"plan": "pro"}
    assert second.request_index == 1


def test_track_records_name_data_id_and_timestamp(fake_cio: FakeCustomerIO) -> None:
    response = track(fake_cio, id=ulid(1), timestamp=1_700_000_000)

    assert response.status_code == 200
    [receipt] = fake_cio.receipts
    assert receipt.kind == "track"
    assert receipt.customer_id == "42"
    assert receipt.name == "order_placed"
    assert receipt.data == {"total": 42}
    assert receipt.event_id == ulid(1)
    assert receipt.timestamp == 1_700_000_000
    assert receipt.batch_index is None


def test_anonymous_track_with_and_without_anonymous_id(fake_cio: FakeCustomerIO) -> None:
    url = f"{fake_cio.url}/api/v1/events"
    with_id = {"name": "page_viewed", "data": {"p": 1}, "anonymous_id": "anon-1"}
    assert requests.post(url, json=with_id, auth=AUTH, timeout=5).status_code == 200
    without = {"name": "page_viewed"}
    assert requests.post(url, json=without, auth=AUTH, timeout=5).status_code == 200

    first, second = fake_cio.receipts
    assert (first.kind, first.customer_id, first.data) == ("track_anonymous", "anon-1", {"p": 1})
    assert (second.customer_id, second.data) == (None, {})


def test_delete_removes_person(fake_cio: FakeCustomerIO) -> None:
    identify(fake_cio, email="a@example.com")
    response = requests.delete(f"{fake_cio.url}/api/v1/customers/42", auth=AUTH, timeout=5)

    assert response.status_code == 200
    assert fake_cio.people() == {}
    assert [r.kind for r in fake_cio.receipts] == ["identify", "delete"]


def test_customer_id_in_path_is_url_decoded(fake_cio: FakeCustomerIO) -> None:
    assert identify(fake_cio, "a%2Fb%20c%40d").status_code == 200

    assert fake_cio.receipts[0].customer_id == "a/b c@d"


def test_region_endpoint(fake_cio: FakeCustomerIO) -> None:
    response = requests.get(f"{fake_cio.url}/api/v1/accounts/region", auth=AUTH, timeout=5)

    assert response.status_code == 200
    assert response.json() == {
        "url": "https://track.customer.io",
        "data_center": "us",
        "environment_id": 1,
    }
    assert fake_cio.receipts == []


def test_region_endpoint_eu() -> None:
    with FakeCustomerIO(SITE_ID, API_KEY, region="eu") as fake:
        response = requests.get(f"{fake.url}/api/v1/accounts/region", auth=AUTH, timeout=5)
    assert response.json()["url"] == "https://track-eu.customer.io"


def test_batch_all_valid_answers_200_and_applies_every_kind(fake_cio: FakeCustomerIO) -> None:
    ops = [
        {
            "type": "person",
            "identifiers": {"id": "1"},
            "action": "identify",
            "attributes": {"a": 1},
        },
        {**person_event("1", "clicked", ulid(7)), "timestamp": 1_700_000_000},
        {"type": "person", "anonymous_id": "anon", "action": "event", "name": "seen"},
        {
            "type": "person",
            "identifiers": {"anonymous_id": "anon2"},
            "action": "event",
            "name": "seen",
        },
        {"type": "person", "identifiers": {"email": "x@example.com"}, "action": "delete"},
    ]
    response = batch(fake_cio, ops)

    assert response.status_code == 200
    receipts = fake_cio.receipts
    assert [(r.kind, r.customer_id, r.batch_index) for r in receipts] == [
        ("identify", "1", 0),
        ("track", "1", 1),
        ("track_anonymous", "anon", 2),
        ("track_anonymous", "anon2", 3),
        ("delete", "x@example.com", 4),
    ]
    assert receipts[1].data == {"page": "/"}
    assert receipts[1].event_id == ulid(7)
    assert receipts[1].timestamp == 1_700_000_000
    assert {r.via for r in receipts} == {"v2"}


# --------------------------------------------------------------------------- auth and records


@pytest.mark.parametrize(
    "auth",
    [None, (SITE_ID, "wrong-key"), ("other-site", API_KEY), (SITE_ID, API_KEY + "x")],
    ids=["missing", "wrong-key", "wrong-site", "longer-key"],
)
def test_bad_credentials_answer_401(fake_cio: FakeCustomerIO, auth: tuple[str, str] | None) -> None:
    response = requests.put(
        f"{fake_cio.url}/api/v1/customers/42", json={"a": 1}, auth=auth, timeout=5
    )

    assert response.status_code == 401
    assert response.json() == {"meta": {"error": "Unauthorized request"}}
    assert fake_cio.receipts == []
    assert fake_cio.requests[0].status == 401


@pytest.mark.parametrize("header", ["Bearer abc", "Basic !!!notbase64", "Basic", ""])
def test_malformed_authorization_answers_401(fake_cio: FakeCustomerIO, header: str) -> None:
    response = requests.get(
        f"{fake_cio.url}/api/v1/accounts/region", headers={"Authorization": header}, timeout=5
    )
    assert response.status_code == 401


def test_records_hold_request_details_but_never_the_api_key(fake_cio: FakeCustomerIO) -> None:
    track(fake_cio, id=ulid(1))
    requests.put(f"{fake_cio.url}/api/v1/customers/1", json={}, auth=(SITE_ID, "bad"), timeout=5)

    [ok, denied] = fake_cio.requests
    assert ok.method == "POST"
    assert ok.path == "/api/v1/customers/42/events"
    assert ok.status == 200
    assert ok.outcome == "answered"
    assert ok.body == {"name": "order_placed", "data": {"total": 42}, "id": ulid(1)}
    assert ok.headers["Content-Type"] == "application/json"
    assert not any(key.lower() == "authorization" for key in ok.headers)
    assert denied.status == 401
    assert ok.received_at <= denied.received_at
    client = FakeCustomerIOClient(fake_cio.url)
    outputs = [
        repr(fake_cio),
        repr(fake_cio.requests),
        repr(fake_cio.receipts),
        json.dumps(fake_cio.stats()),
        json.dumps(fake_cio.faults.to_dict()),
        json.dumps(client.stats()),
        repr(client.requests()),
        repr(client.receipts()),
        json.dumps(client.faults()),
    ]
    for text in outputs:
        assert API_KEY not in text
        assert "Basic " not in text


def test_logs_never_carry_the_key_or_customer_ids(
    fake_cio: FakeCustomerIO, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="django_cio_reliable.testing"):
        identify(fake_cio, "secret-person-7", email="x@example.com")
        requests.put(f"{fake_cio.url}/nope", auth=(SITE_ID, API_KEY), timeout=5)

    assert "PUT -> 200" in caplog.text
    assert API_KEY not in caplog.text
    assert "secret-person-7" not in caplog.text
    assert "x@example.com" not in caplog.text


def test_accessors_return_copies(fake_cio: FakeCustomerIO) -> None:
    identify(fake_cio, email="a@example.com")
    fake_cio.receipts[0].attributes["email"] = "changed"
    fake_cio.requests[0].body["email"] = "changed"
    fake_cio.people()["42"]["email"] = "changed"

    assert fake_cio.receipts[0].attributes == {"email": "a@example.com"}
    assert fake_cio.requests[0].body == {"email": "a@example.com"}
    assert fake_cio.people() == {"42": {"email": "a@example.com"}}


# --------------------------------------------------------------------------- validation


def _big(n: int) -> str:
    return "x" * n


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("PUT", "/api/v1/customers/" + _big(151), {}, 400, "cannot be longer than 150 bytes"),
        ("PUT", "/api/v1/customers/" + "é" * 76, {}, 400, "(got 152 bytes)"),
        ("PUT", "/api/v1/customers/", {}, 400, "cannot be an empty string"),
        ("PUT", "/api/v1/customers/1", {_big(151): 1}, 400, "attribute name cannot be longer"),
        ("PUT", "/api/v1/customers/1", {"a": _big(1001)}, 400, "value for attribute 'a'"),
        ("PUT", "/api/v1/customers/1", {"a": [_big(999)]}, 400, "value for attribute 'a'"),
        (
            "PUT",
            "/api/v1/customers/1",
            {f"k{i}": i for i in range(301)},
            400,
            "more than 300 attributes",
        ),
        ("PUT", "/api/v1/customers/1", [1, 2], 400, "must be a JSON object"),
        ("POST", "/api/v1/customers/1/events", {"data": {}}, 400, "event name must not be blank"),
        ("POST", "/api/v1/customers/1/events", {"name": ""}, 400, "must not be blank"),
        ("POST", "/api/v1/customers/1/events", {"name": _big(101)}, 400, "longer than 100 bytes"),
        ("POST", "/api/v1/customers/1/events", {"name": 5}, 400, "must be a string"),
        ("POST", "/api/v1/customers/1/events", {"name": "n", "data": ""}, 400, "must be a hash"),
        (
            "POST",
            "/api/v1/customers/1/events",
            {"name": "n", "data": {"blob": _big(100_000)}},
            400,
            "event data cannot be longer than 100000 bytes",
        ),
        ("POST", "/api/v1/customers/1/events", {"name": "n", "id": "nope"}, 400, "valid ULID"),
        ("POST", "/api/v1/customers/1/events", {"name": "n", "id": 7}, 400, "id must be"),
        (
            "POST",
            "/api/v1/customers/1/events",
            {"name": "n", "timestamp": "yesterday"},
            400,
            "valid unix timestamp",
        ),
        ("POST", "/api/v1/events", {"name": "n", "anonymous_id": 1.5}, 400, "anonymous_id"),
        ("POST", "/api/v2/batch", {"ops": []}, 400, "batch must be an array"),
        ("POST", "/api/v2/batch", {"batch": []}, 400, "batch must not be empty"),
        ("GET", "/api/v1/nothing", None, 404, "not found"),
        ("GET", "/", None, 404, "not found"),
        ("PUT", "/api/v1/customers/1/events/x", {}, 404, "not found"),
        ("POST", "/api/v1/customers/1", {}, 405, "method not allowed"),
        ("GET", "/api/v1/customers/1/events", None, 405, "method not allowed"),
        ("PATCH", "/api/v2/batch", {}, 405, "method not allowed"),
        ("POST", "/api/v1/accounts/region", {}, 405, "method not allowed"),
    ],
)
def test_invalid_requests_are_refused_like_customer_io(
    fake_cio: FakeCustomerIO,
    method: str,
    path: str,
    body: Any,
    status: int,
    message: str,
) -> None:
    response = requests.request(method, fake_cio.url + path, json=body, auth=AUTH, timeout=5)

    assert response.status_code == status
    assert message in response.json()["meta"]["error"]
    assert fake_cio.receipts == []


def test_limits_are_inclusive(fake_cio: FakeCustomerIO) -> None:
    assert identify(fake_cio, "x" * 150, **{_big(150): _big(1000)}).status_code == 200
    assert identify(fake_cio, "1", **{f"k{i}": i for i in range(300)}).status_code == 200
    assert track(fake_cio, name=_big(100)).status_code == 200
    blob = {"b": _big(100_000 - len('{"b":""}'))}
    response = requests.post(
        f"{fake_cio.url}/api/v1/customers/1/events",
        json={"name": "n", "data": blob},
        auth=AUTH,
        timeout=5,
    )
    assert response.status_code == 200
    assert len(fake_cio.receipts) == 4


def test_405_names_the_allowed_methods(fake_cio: FakeCustomerIO) -> None:
    response = requests.post(f"{fake_cio.url}/api/v1/customers/1", json={}, auth=AUTH, timeout=5)
    assert response.headers["Allow"] == "PUT, DELETE"


@pytest.mark.parametrize(
    "body", [b"{not json", b'{"name": NaN}', b"\xff\xfe", b'{"name": Infinity}']
)
def test_bodies_that_are_not_strict_json_answer_400(fake_cio: FakeCustomerIO, body: bytes) -> None:
    response = requests.post(
        f"{fake_cio.url}/api/v1/customers/1/events",
        data=body,
        headers={"Content-Type": "application/json"},
        auth=AUTH,
        timeout=5,
    )

    assert response.status_code == 400
    assert response.json() == {"meta": {"error": "request body is not valid JSON"}}
    assert fake_cio.requests[0].body is None


def test_non_ulid_event_ids_can_be_allowed() -> None:
    with FakeCustomerIO(SITE_ID, API_KEY, require_ulid_event_ids=False) as fake:
        assert track(fake, id="order-7").status_code == 200
        assert fake.receipts[0].event_id == "order-7"


# --------------------------------------------------------------------------- v2 batch


def test_batch_partial_failure_answers_207_and_applies_valid_items(
    fake_cio: FakeCustomerIO,
) -> None:
    ops = [
        person_event("1", "ok"),
        {"type": "person", "identifiers": {"id": "2"}, "action": "event"},
        "not an object",
        {"type": "object", "identifiers": {"id": "3"}, "action": "identify"},
        {"type": "person", "identifiers": {"id": "4"}, "action": "merge"},
        {"type": "person", "action": "identify", "attributes": {}},
        {
            "type": "person",
            "identifiers": {"id": "5"},
            "action": "identify",
            "attributes": {"a": 1},
        },
        {**person_event("6"), "attributes": {"blob": _big(33 * 1024)}},
        {"type": "person", "identifiers": {"id": "7", "email": "x@y"}, "action": "delete"},
    ]
    response = batch(fake_cio, ops)

    assert response.status_code == 207
    errors = response.json()["errors"]
    assert [e["batch_index"] for e in errors] == [1, 2, 3, 4, 5, 7, 8]
    assert errors[0] == {
        "batch_index": 1,
        "reason": "required",
        "field": "name",
        "message": "event name must not be blank",
    }
    assert errors[4]["field"] == "identifiers"
    assert "larger than 32768 bytes" in errors[5]["message"]
    assert all(set(e) == {"batch_index", "reason", "field", "message"} for e in errors)
    assert [(r.customer_id, r.batch_index) for r in fake_cio.receipts] == [("1", 0), ("5", 6)]


def test_batch_over_500_kib_answers_413(fake_cio: FakeCustomerIO) -> None:
    ops = [{**person_event(str(i)), "attributes": {"blob": _big(30 * 1024)}} for i in range(17)]
    response = batch(fake_cio, ops)

    assert response.status_code == 413
    assert "cannot be larger than 512000 bytes" in response.json()["meta"]["error"]
    assert fake_cio.receipts == []


def test_batch_just_under_500_kib_is_accepted(fake_cio: FakeCustomerIO) -> None:
    ops = [{**person_event(str(i)), "attributes": {"blob": _big(30 * 1024)}} for i in range(16)]
    assert batch(fake_cio, ops).status_code == 200
    assert len(fake_cio.receipts) == 16


# --------------------------------------------------------------------------- deduplication


def test_repeated_event_id_is_accepted_but_not_applied_again(fake_cio: FakeCustomerIO) -> None:
    assert track(fake_cio, id=ulid(1)).status_code == 200
    assert track(fake_cio, id=ulid(1)).status_code == 200
    assert batch(fake_cio, [person_event("42", "order_placed", ulid(1))]).status_code == 200
    assert track(fake_cio, id=ulid(2)).status_code == 200
    assert track(fake_cio).status_code == 200
    assert track(fake_cio).status_code == 200

    assert [r.applied for r in fake_cio.receipts] == [True, False, False, True, True, True]
    assert len(fake_cio.applied()) == 4
    assert [(r.event_id, r.via) for r in fake_cio.duplicates()] == [
        (ulid(1), "v1"),
        (ulid(1), "v2"),
    ]
    by_id = fake_cio.events_by_id()
    assert set(by_id) == {ulid(1), ulid(2)}
    assert [r.applied for r in by_id[ulid(1)]] == [True, False, False]
    assert fake_cio.stats()["duplicates"] == 2


def test_duplicate_inside_one_batch(fake_cio: FakeCustomerIO) -> None:
    batch(fake_cio, [person_event("1", event_id=ulid(3)), person_event("1", event_id=ulid(3))])
    assert [r.applied for r in fake_cio.receipts] == [True, False]


def test_reset_forgets_records_and_dedupe_memory(fake_cio: FakeCustomerIO) -> None:
    track(fake_cio, id=ulid(1))
    fake_cio.fail_next(5)
    fake_cio.reset()

    assert fake_cio.requests == []
    assert fake_cio.receipts == []
    assert fake_cio.request_count == 0
    assert not fake_cio.faults.active
    assert track(fake_cio, id=ulid(1)).status_code == 200
    assert fake_cio.receipts[0].applied is True
    assert fake_cio.requests[0].index == 0


# --------------------------------------------------------------------------- faults


def test_fail_next_answers_status_for_exactly_n_requests(fake_cio: FakeCustomerIO) -> None:
    fake_cio.fail_next(2, status=503, retry_after=7)

    first, second, third = (identify(fake_cio) for _ in range(3))

    assert (first.status_code, second.status_code, third.status_code) == (503, 503, 200)
    assert first.headers["Retry-After"] == "7"
    assert first.json() == {"meta": {"error": "Service Unavailable"}}
    assert len(fake_cio.receipts) == 1
    assert [r.fault for r in fake_cio.requests] == ["fail_next", "fail_next", None]


def test_fail_next_with_http_date_and_custom_body(fake_cio: FakeCustomerIO) -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    fake_cio.fail_next(1, status=429, retry_after=when, body={"meta": {"error": "slow down"}})
    fake_cio.fail_next(1, status=502, retry_after="Wed, 21 Oct 2015 07:28:00 GMT", body="<html>")

    limited = identify(fake_cio)
    gateway = identify(fake_cio)

    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "Wed, 02 Jan 2030 03:04:05 GMT"
    assert limited.json() == {"meta": {"error": "slow down"}}
    assert gateway.status_code == 502
    assert gateway.headers["Retry-After"] == "Wed, 21 Oct 2015 07:28:00 GMT"
    assert gateway.text == "<html>"
    assert gateway.headers["Content-Type"].startswith("text/plain")


def test_fail_next_with_apply_processes_the_request_first(fake_cio: FakeCustomerIO) -> None:
    fake_cio.fail_next(1, status=500, apply=True)

    assert track(fake_cio, id=ulid(1)).status_code == 500
    assert track(fake_cio, id=ulid(1)).status_code == 200

    assert [r.applied for r in fake_cio.receipts] == [True, False]


def test_faults_are_consumed_in_the_order_scripted(fake_cio: FakeCustomerIO) -> None:
    fake_cio.fail_next(1, status=500)
    fake_cio.outage_requests(2, status=502, retry_after=3)

    statuses = [identify(fake_cio).status_code for _ in range(4)]

    assert statuses == [500, 502, 502, 200]
    assert [r.fault for r in fake_cio.requests] == [
        "fail_next",
        "outage_requests",
        "outage_requests",
        None,
    ]


def test_latency_delays_every_api_request(fake_cio: FakeCustomerIO) -> None:
    fake_cio.set_latency(0.15)
    started = time.monotonic()
    assert identify(fake_cio).status_code == 200
    delayed = time.monotonic() - started

    fake_cio.set_latency(0)
    started = time.monotonic()
    identify(fake_cio)
    undelayed = time.monotonic() - started

    assert delayed >= 0.15
    assert undelayed < 0.15


def test_hang_outlasts_the_client_timeout(fake_cio: FakeCustomerIO) -> None:
    fake_cio.hang_next(1, seconds=5)

    started = time.monotonic()
    with pytest.raises(requests.Timeout):
        requests.put(f"{fake_cio.url}/api/v1/customers/1", json={}, auth=AUTH, timeout=0.2)
    assert time.monotonic() - started < 2
    assert fake_cio.requests[0].outcome == "in_flight"
    assert identify(fake_cio).status_code == 200
    assert fake_cio.receipts[0].customer_id == "42"


def test_hang_that_ends_before_the_client_gives_up_drops_the_connection(
    fake_cio: FakeCustomerIO,
) -> None:
    fake_cio.hang_next(1, seconds=0.05)

    with pytest.raises(requests.ConnectionError):
        identify(fake_cio)

    assert fake_cio.requests[0].outcome == "dropped"
    assert fake_cio.requests[0].fault == "hang_next"
    assert fake_cio.receipts == []


def test_hang_with_apply_processes_after_the_hang(fake_cio: FakeCustomerIO) -> None:
    fake_cio.hang_next(1, seconds=0.3, apply=True)

    with pytest.raises(requests.Timeout):
        requests.post(
            f"{fake_cio.url}/api/v1/customers/42/events",
            json={"name": "n", "id": ulid(1)},
            auth=AUTH,
            timeout=0.05,
        )
    assert fake_cio.receipts == []
    [receipt] = fake_cio.wait_for_receipts(1, timeout=3)
    assert receipt.event_id == ulid(1)
    assert track(fake_cio, id=ulid(1)).status_code == 200
    assert fake_cio.duplicates()[0].event_id == ulid(1)


def test_clear_faults_ends_a_hang_now(fake_cio: FakeCustomerIO) -> None:
    fake_cio.hang_next(1, seconds=30)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            identify(fake_cio)
        except requests.ConnectionError as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    fake_cio.wait_for_requests(1)
    started = time.monotonic()
    fake_cio.clear_faults()
    thread.join(timeout=5)

    assert time.monotonic() - started < 2
    assert len(errors) == 1


def test_reset_next_resets_the_connection(fake_cio: FakeCustomerIO) -> None:
    fake_cio.reset_next(1)

    with pytest.raises(requests.ConnectionError, match="reset by peer"):
        identify(fake_cio)

    assert fake_cio.requests[0].outcome == "reset"
    assert fake_cio.requests[0].status is None
    assert fake_cio.receipts == []
    assert identify(fake_cio).status_code == 200


def test_reset_next_with_apply_applies_then_resets(fake_cio: FakeCustomerIO) -> None:
    fake_cio.reset_next(1, apply=True)

    with pytest.raises(requests.ConnectionError):
        track(fake_cio, id=ulid(4))
    track(fake_cio, id=ulid(4))

    assert [r.applied for r in fake_cio.receipts] == [True, False]


def test_trickle_next_sends_the_whole_answer_one_byte_at_a_time(fake_cio: FakeCustomerIO) -> None:
    fake_cio.trickle_next(1, interval=0.05, headers=True)
    token = base64.b64encode(f"{SITE_ID}:{API_KEY}".encode()).decode()
    with socket.create_connection(("127.0.0.1", fake_cio.port), timeout=5) as sock:
        sock.sendall(
            b"PUT /api/v1/customers/42 HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Basic {token}\r\nContent-Length: 2\r\n\r\n{{}}".encode()
        )
        time.sleep(0.3)
        early = sock.recv(4096)
        fake_cio.clear_faults()  # the rest comes at once
        answer = early
        while not answer.endswith(b"\r\n\r\n{}"):
            answer += sock.recv(4096)

    assert 1 <= len(early) <= 8 and b"HTTP/1.1"[: len(early)] == early
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    [record] = fake_cio.requests
    assert (record.status, record.outcome, record.fault) == (200, "answered", "trickle_next")
    assert [r.customer_id for r in fake_cio.receipts] == ["42"]  # processed as usual


def test_trickle_next_without_headers_trickles_only_the_body(fake_cio: FakeCustomerIO) -> None:
    fake_cio.trickle_next(2, interval=0.2, headers=False)

    for _ in range(2):
        started = time.monotonic()
        with requests.put(
            f"{fake_cio.url}/api/v1/customers/1", json={}, auth=AUTH, timeout=5, stream=True
        ) as response:
            headers_after = time.monotonic() - started
            assert response.status_code == 200
            assert response.json() == {}  # two bytes, 0.2 s each
        assert headers_after < 0.15
        assert time.monotonic() - started >= 0.38
    assert identify(fake_cio).status_code == 200
    assert [r.fault for r in fake_cio.requests] == ["trickle_next", "trickle_next", None]


def test_trickle_next_is_scriptable_remotely(fake_cio: FakeCustomerIO) -> None:
    client = FakeCustomerIOClient(fake_cio.url)

    client.trickle_next(2, interval=0.01, headers=False)

    [scripted] = client.faults()["scripted"]
    assert {k: scripted[k] for k in ("kind", "source", "remaining", "seconds", "headers")} == {
        "kind": "trickle",
        "source": "trickle_next",
        "remaining": 2,
        "seconds": 0.01,
        "headers": False,
    }
    assert identify(fake_cio).status_code == 200
    assert fake_cio.faults.scripted[0].remaining == 1


def test_outage_window_by_time_with_an_injected_clock() -> None:
    now = [1000.0]
    with FakeCustomerIO(SITE_ID, API_KEY, clock=lambda: now[0]) as fake:
        fake.outage(30, status=503, retry_after=30)
        fake.fail_next(1, status=418)

        during = identify(fake)
        now[0] += 29.9
        still = identify(fake)
        assert fake.faults.outage is not None
        now[0] += 0.2
        queued = identify(fake)
        after = identify(fake)

    assert (during.status_code, still.status_code) == (503, 503)
    assert during.headers["Retry-After"] == "30"
    assert queued.status_code == 418
    assert after.status_code == 200
    assert [r.fault for r in fake.requests] == ["outage", "outage", "fail_next", None]


def test_outage_window_by_time_with_the_real_clock(fake_cio: FakeCustomerIO) -> None:
    fake_cio.outage(0.2, status=500)
    assert identify(fake_cio).status_code == 500
    time.sleep(0.25)
    assert identify(fake_cio).status_code == 200


def test_outage_by_request_count(fake_cio: FakeCustomerIO) -> None:
    fake_cio.outage_requests(3, status=503)
    statuses = [identify(fake_cio).status_code for _ in range(4)]
    assert statuses == [503, 503, 503, 200]


def _random_run(fake: FakeCustomerIO, seed: int, count: int) -> list[str]:
    fake.random_faults(
        seed,
        error_rate=0.2,
        rate_limit_rate=0.2,
        hang_rate=0.1,
        reset_rate=0.1,
        hang_seconds=0.01,
        retry_after=2,
    )
    results = []
    for _ in range(count):
        try:
            response = identify(fake)
        except requests.ConnectionError:
            results.append("error")
        else:
            if response.status_code == 429:
                assert response.headers["Retry-After"] == "2"
            results.append(str(response.status_code))
    return results


def test_random_faults_are_seeded_and_cover_every_kind(fake_cio: FakeCustomerIO) -> None:
    first = _random_run(fake_cio, seed=7, count=40)
    faults = [r.fault for r in fake_cio.requests]
    fake_cio.reset()
    second = _random_run(fake_cio, seed=7, count=40)

    assert first == second
    assert faults == [r.fault for r in fake_cio.requests]
    assert {"random_error", "random_rate_limit", "random_hang", "random_reset", None} == set(faults)
    assert {"200", "503", "429", "error"} == set(first)
    fake_cio.random_faults(7)
    assert fake_cio.faults.random is None


def test_reject_batch_items_by_index(fake_cio: FakeCustomerIO) -> None:
    fake_cio.reject_batch_items([1], message="nope", count=1)

    response = batch(fake_cio, [person_event("1"), person_event("2"), person_event("3")])
    again = batch(fake_cio, [person_event("1"), person_event("2")])

    assert response.status_code == 207
    assert response.json() == {
        "errors": [{"batch_index": 1, "reason": "invalid", "field": "", "message": "nope"}]
    }
    assert again.status_code == 200
    assert [r.customer_id for r in fake_cio.receipts] == ["1", "3", "1", "2"]


def test_reject_batch_items_by_predicate_until_cleared(fake_cio: FakeCustomerIO) -> None:
    fake_cio.reject_batch_items(lambda index, op: op.get("name") == "bad", reason="blocked")

    for _ in range(2):
        response = batch(fake_cio, [person_event("1", "bad"), person_event("1", "good")])
        assert response.status_code == 207
        assert response.json()["errors"][0]["reason"] == "blocked"
    fake_cio.clear_faults()
    assert batch(fake_cio, [person_event("1", "bad")]).status_code == 200
    assert [r.name for r in fake_cio.receipts] == ["good", "good", "bad"]


def test_hold_blocks_requests_until_release(fake_cio: FakeCustomerIO) -> None:
    fake_cio.hold()
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(identify(fake_cio, str(i)).status_code))
        for i in range(3)
    ]
    for thread in threads:
        thread.start()

    fake_cio.wait_for_held(3)
    assert fake_cio.held_count == 3
    assert fake_cio.receipts == []
    assert FakeCustomerIOClient(fake_cio.url).stats()["held"] == 3
    fake_cio.release()
    for thread in threads:
        thread.join(timeout=5)

    assert results == [200, 200, 200]
    assert sorted(r.customer_id or "" for r in fake_cio.receipts) == ["0", "1", "2"]


def test_held_request_whose_client_died_is_still_applied(fake_cio: FakeCustomerIO) -> None:
    fake_cio.hold()
    with socket.create_connection(("127.0.0.1", fake_cio.port)) as sock:
        body = json.dumps({"name": "n", "id": ulid(9)}).encode()
        token = base64.b64encode(f"{SITE_ID}:{API_KEY}".encode()).decode()
        sock.sendall(
            b"POST /api/v1/customers/1/events HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Basic {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        fake_cio.wait_for_held(1)
    fake_cio.release()

    [receipt] = fake_cio.wait_for_receipts(1)
    assert receipt.event_id == ulid(9)


def test_faults_never_touch_the_control_endpoint(fake_cio: FakeCustomerIO) -> None:
    fake_cio.fail_next(1, status=500)
    fake_cio.set_latency(1)
    fake_cio.hold()
    client = FakeCustomerIOClient(fake_cio.url, timeout=0.5)

    stats = client.stats()

    assert stats["requests"] == 0
    assert len(fake_cio.faults.scripted) == 1
    fake_cio.clear_faults()
    assert identify(fake_cio).status_code == 200


def test_clear_faults_removes_everything_but_keeps_records(fake_cio: FakeCustomerIO) -> None:
    identify(fake_cio)
    fake_cio.fail_next(3)
    fake_cio.set_latency(0.5)
    fake_cio.outage(60)
    fake_cio.random_faults(1, error_rate=1.0)
    fake_cio.reject_batch_items([0])
    fake_cio.hold()
    assert fake_cio.faults.active

    fake_cio.clear_faults()

    assert not fake_cio.faults.active
    assert len(fake_cio.receipts) == 1
    assert identify(fake_cio).status_code == 200


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda f: f.fail_next(0), ValueError),
        (lambda f: f.fail_next(1, status=99), ValueError),
        (lambda f: f.fail_next(1, retry_after=-1), ValueError),
        (lambda f: f.fail_next(1, retry_after=datetime(2030, 1, 1)), ValueError),
        (lambda f: f.hang_next(1, seconds=-1), ValueError),
        (lambda f: f.trickle_next(1, interval=-1), ValueError),
        (lambda f: f.trickle_next(0), ValueError),
        (lambda f: f.set_latency(float("nan")), ValueError),
        (lambda f: f.random_faults(1, error_rate=0.6, reset_rate=0.6), ValueError),
        (lambda f: f.random_faults(1, hang_rate=2), ValueError),
        (lambda f: f.reject_batch_items([0], count=0), ValueError),
        (lambda f: f.fail_next(1, body=3), TypeError),
    ],
)
def test_bad_fault_arguments_raise(fake_cio: FakeCustomerIO, call: Any, error: type) -> None:
    with pytest.raises(error):
        call(fake_cio)
    assert not fake_cio.faults.scripted


def test_format_retry_after() -> None:
    assert format_retry_after(None) is None
    assert format_retry_after(5) == "5"
    assert format_retry_after(0.2) == "1"
    assert format_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == "Wed, 21 Oct 2015 07:28:00 GMT"
    when = datetime(2015, 10, 21, 7, 28, tzinfo=timezone.utc)
    assert format_retry_after(when) == "Wed, 21 Oct 2015 07:28:00 GMT"


# --------------------------------------------------------------------------- control endpoint


def test_control_stats_receipts_and_requests(fake_cio: FakeCustomerIO) -> None:
    identify(fake_cio)
    track(fake_cio, id=ulid(1))
    track(fake_cio, id=ulid(1))
    requests.put(f"{fake_cio.url}/api/v1/customers/1", json={}, timeout=5)

    stats = requests.get(f"{fake_cio.url}/__fake__/stats", timeout=5).json()
    receipts = requests.get(f"{fake_cio.url}/__fake__/receipts", timeout=5).json()["receipts"]
    recorded = requests.get(f"{fake_cio.url}/__fake__/requests", timeout=5).json()["requests"]
    people = requests.get(f"{fake_cio.url}/__fake__/people", timeout=5).json()

    assert stats["requests"] == 4
    assert stats["receipts"] == 3
    assert stats["applied"] == 2
    assert stats["duplicates"] == 1
    assert stats["by_status"] == {"200": 3, "401": 1}
    assert stats["by_kind"] == {"identify": 1, "track": 2}
    assert [Receipt.from_dict(r) for r in receipts] == fake_cio.receipts
    assert [ReceivedRequest.from_dict(r) for r in recorded] == fake_cio.requests
    assert people == {"people": {"42": {}}}


def test_control_fault_specs(fake_cio: FakeCustomerIO) -> None:
    url = f"{fake_cio.url}/__fake__/faults"
    spec = {"fault": "fail_next", "n": 1, "status": 429, "retry_after": 9}
    answer = requests.post(url, json=spec, timeout=5)

    assert answer.status_code == 200
    assert answer.json()["faults"]["scripted"][0]["status"] == 429
    response = identify(fake_cio)
    assert (response.status_code, response.headers["Retry-After"]) == (429, "9")
    assert requests.get(url, timeout=5).json()["active"] is False


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([1], "JSON object"),
        ({"fault": "explode"}, "fault must be one of"),
        ({"fault": "fail_next", "n": "2"}, "n must be an integer"),
        ({"fault": "fail_next", "colour": 1}, "takes no argument 'colour'"),
        ({"fault": "fail_next", "n": 0}, "n must be an integer >= 1"),
        ({"fault": "trickle_next", "headers": "yes"}, "headers must be true or false"),
        ({"fault": "trickle_next", "interval": -1}, "interval must be a finite number"),
        ({"fault": "outage"}, "outage:"),
        ({"fault": "reject_batch_items"}, "exactly one of indexes, customer_ids"),
        ({"fault": "random_faults", "seed": 1, "error_rate": 3}, "between 0 and 1"),
    ],
)
def test_control_refuses_bad_fault_specs(fake_cio: FakeCustomerIO, spec: Any, message: str) -> None:
    response = requests.post(f"{fake_cio.url}/__fake__/faults", json=spec, timeout=5)

    assert response.status_code == 400
    assert message in response.json()["meta"]["error"]
    assert not fake_cio.faults.active


def test_control_unknown_path_and_wrong_method(fake_cio: FakeCustomerIO) -> None:
    assert requests.get(f"{fake_cio.url}/__fake__/nothing", timeout=5).status_code == 404
    wrong = requests.get(f"{fake_cio.url}/__fake__/reset", timeout=5)
    assert (wrong.status_code, wrong.headers["Allow"]) == (405, "POST")
    assert requests.post(f"{fake_cio.url}/__fake__/stats", timeout=5).status_code == 405


def test_control_reset_and_release(fake_cio: FakeCustomerIO) -> None:
    identify(fake_cio)
    assert requests.post(f"{fake_cio.url}/__fake__/reset", timeout=5).json() == {"ok": True}
    assert fake_cio.receipts == []

    fake_cio.hold()
    thread = threading.Thread(target=lambda: identify(fake_cio))
    thread.start()
    fake_cio.wait_for_held(1)
    assert requests.post(f"{fake_cio.url}/__fake__/release", timeout=5).status_code == 200
    thread.join(timeout=5)
    assert len(fake_cio.receipts) == 1


def test_client_helper_drives_every_fault(fake_cio: FakeCustomerIO) -> None:
    client = FakeCustomerIOClient(fake_cio.url)

    client.fail_next(1, status=500, retry_after="Wed, 21 Oct 2015 07:28:00 GMT", body={"x": 1})
    client.outage_requests(1, status=502)
    client.hang_next(1, seconds=0.01)
    client.reset_next(1)
    assert [f["source"] for f in client.faults()["scripted"]] == [
        "fail_next",
        "outage_requests",
        "hang_next",
        "reset_next",
    ]
    failed = identify(fake_cio)
    assert (failed.status_code, failed.json()) == (500, {"x": 1})
    assert identify(fake_cio).status_code == 502
    for _ in range(2):
        with pytest.raises(requests.ConnectionError):
            identify(fake_cio)

    client.set_latency(0.01)
    client.outage(60, status=503, retry_after=5)
    client.random_faults(3, error_rate=0.5)
    client.reject_batch_items(customer_ids=["2"])
    client.reject_batch_items([0], count=1)
    faults = client.faults()
    assert faults["latency"] == 0.01
    assert faults["outage"]["status"] == 503
    assert faults["random"]["seed"] == 3
    assert [r["description"] for r in faults["batch_rejections"]] == [
        "customer_ids ['2']",
        "indexes [0]",
    ]
    client.hold()
    assert client.faults()["holding"] is True
    client.release()
    client.clear_faults()
    assert client.faults()["active"] is False

    client.reject_batch_items(customer_ids=["2"])
    response = batch(fake_cio, [person_event("1"), person_event("2")])
    assert [e["batch_index"] for e in response.json()["errors"]] == [1]
    assert [r.customer_id for r in client.applied()] == ["1"]
    assert [r.customer_id for r in client.wait_for_receipts(1)] == ["1"]
    assert client.people() == {}
    assert [r.status for r in client.requests()][-1] == 207

    client.reset()
    assert client.stats()["requests"] == 0
    with pytest.raises(ValueError, match="HTTP 400"):
        client.fail_next(0)
    with pytest.raises(TimeoutError):
        client.wait_for_receipts(1, timeout=0.1)


# --------------------------------------------------------------------------- server behaviour


def test_keep_alive_reuses_one_connection_even_after_errors(fake_cio: FakeCustomerIO) -> None:
    with requests.Session() as session:
        session.auth = AUTH
        session.put(f"{fake_cio.url}/api/v1/customers/1", json={})
        session.put(f"{fake_cio.url}/api/v1/customers/1", data=b"{bad")
        session.get(f"{fake_cio.url}/api/nothing")
        session.put(f"{fake_cio.url}/api/v1/customers/1", json={}, auth=("x", "y"))
        session.put(f"{fake_cio.url}/api/v1/customers/2", json={})

    recorded = fake_cio.requests
    assert [r.status for r in recorded] == [200, 400, 404, 401, 200]
    assert len({r.connection_id for r in recorded}) == 1


def test_concurrent_requests_are_served_in_parallel(fake_cio: FakeCustomerIO) -> None:
    fake_cio.set_latency(0.3)
    threads = [threading.Thread(target=identify, args=(fake_cio, str(i))) for i in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)

    assert time.monotonic() - started < 0.9
    assert len(fake_cio.receipts) == 4


def test_port_zero_picks_a_free_port_and_url_matches(own_fake: FakeCustomerIO) -> None:
    assert own_fake.port > 0
    assert own_fake.url == f"http://127.0.0.1:{own_fake.port}"
    assert own_fake.running
    assert "test-site" in repr(own_fake)


def test_port_and_url_need_a_started_server() -> None:
    fake = FakeCustomerIO()
    with pytest.raises(RuntimeError):
        _ = fake.url
    assert "not started" in repr(fake)
    fake.stop()


def test_stop_returns_promptly_with_requests_hanging_and_held(own_fake: FakeCustomerIO) -> None:
    errors: list[BaseException] = []

    def call(cid: str) -> None:
        try:
            identify(own_fake, cid)
        except requests.RequestException as exc:
            errors.append(exc)

    with requests.Session() as idle:
        # An idle keep-alive connection must not keep stop() waiting either.
        idle.get(f"{own_fake.url}/api/v1/accounts/region", auth=AUTH)
        own_fake.hang_next(1, seconds=30)
        hanging = threading.Thread(target=call, args=("1",))
        hanging.start()
        own_fake.wait_for_requests(2)
        own_fake.hold()
        held = threading.Thread(target=call, args=("2",))
        held.start()
        own_fake.wait_for_held(1)

        started = time.monotonic()
        own_fake.stop()
        elapsed = time.monotonic() - started
    hanging.join(timeout=5)
    held.join(timeout=5)

    assert elapsed < 1.5
    assert len(errors) == 2
    assert own_fake.receipts == []
    assert [r.outcome for r in own_fake.requests] == ["answered", "dropped", "dropped"]
    assert not own_fake.running


def test_stopped_server_refuses_connections_and_restarts_on_the_same_port(
    own_fake: FakeCustomerIO,
) -> None:
    url = own_fake.url
    own_fake.stop()
    with pytest.raises(requests.ConnectionError):
        identify(own_fake)

    own_fake.start()

    assert own_fake.url == url
    assert identify(own_fake).status_code == 200


def test_context_manager_starts_and_stops() -> None:
    with FakeCustomerIO() as fake:
        assert requests.get(f"{fake.url}/__fake__/stats", timeout=5).status_code == 200
        port = fake.port
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_chunked_bodies_are_refused(fake_cio: FakeCustomerIO) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"{}"

    response = requests.put(
        f"{fake_cio.url}/api/v1/customers/1", data=chunks(), auth=AUTH, timeout=5
    )
    assert response.status_code == 411


def test_works_with_the_customerio_package(fake_cio: FakeCustomerIO) -> None:
    from customerio import CustomerIO

    client = CustomerIO(SITE_ID, API_KEY, host="127.0.0.1", port=fake_cio.port, retries=0)
    client.base_url = f"{fake_cio.url}/api/v1"
    client.identify("7", email="a@example.com")
    client.track("7", "signed_up", {"plan": "pro"}, id=ulid(5))
    client.track_anonymous("anon", "viewed", {})
    client.delete("7")
    client.close()

    assert [(r.kind, r.customer_id) for r in fake_cio.receipts] == [
        ("identify", "7"),
        ("track", "7"),
        ("track_anonymous", "anon"),
        ("delete", "7"),
    ]


# --------------------------------------------------------------------------- CLI


def test_cli_prints_url_serves_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "django_cio_reliable.testing",
            "--port",
            "0",
            "--site-id",
            "cli-site",
            "--api-key",
            "cli-secret-key",
            "--latency",
            "0.01",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CLI_ENV,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        response = requests.put(
            f"{url}/api/v1/customers/1", json={}, auth=("cli-site", "cli-secret-key"), timeout=5
        )
        assert response.status_code == 200
        client = FakeCustomerIOClient(url)
        assert client.stats()["applied"] == 1
        assert client.faults()["latency"] == 0.01
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=10)

    assert process.returncode == 0
    assert "1 applied" in stderr
    assert "cli-secret-key" not in stdout + stderr


def test_cli_reports_a_port_in_use(own_fake: FakeCustomerIO) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "django_cio_reliable.testing", "--port", str(own_fake.port)],
        capture_output=True,
        text=True,
        timeout=20,
        env=CLI_ENV,
        check=False,
    )
    assert result.returncode == 1
    assert "cannot listen" in result.stderr

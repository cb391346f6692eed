"""Transport edge cases: ids in v1 paths, anonymous events, ambiguous 207 answers, log privacy.

* Every customer id reaches its own v1 URL, byte for byte: ids made of dots (``.``, ``..``)
  are percent-encoded so that no dot-segment removal (requests, urllib3, a proxy, the server)
  can move the request to another path; ``/ ? # %``, spaces and non-ASCII are encoded too.
* Anonymous events never go through ``/api/v2/batch`` (Customer.io's v2 ``person``
  identifiers are ``id``, ``email``, ``phone`` or ``cio_id`` only): they are sent one at a
  time with ``POST /api/v1/events``, also when ``BATCH`` is on.
* A 207 marks an item delivered only when the answer says so unambiguously.
* Log lines name operations by their id, never by a customer or anonymous id.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

import django_cio_reliable as cio
from django_cio_reliable import outbox
from django_cio_reliable.exceptions import DeliveryError
from django_cio_reliable.models import Operation
from django_cio_reliable.testing import FakeCustomerIO
from django_cio_reliable.transport import BatchItem, Transport, _Reply, batch_item
from tests.conftest import API_KEY, SITE_ID
from tests.fakes import FakeClock

Status = Operation.Status
EVENT_ID = "01HZX3K9T1V8Q2W4E6R8T0Y2V4"
EVENT_ID_2 = "01HZX3K9T1V8Q2W4E6R8T0Y2V5"

#: Customer ids and the exact path segment each must arrive as.
ENCODED_IDS: list[tuple[str, str]] = [
    (".", "%2E"),
    ("..", "%2E%2E"),
    ("...", "%2E%2E%2E"),
    ("/", "%2F"),
    ("a/b", "a%2Fb"),
    ("../x", "..%2Fx"),
    ("q?x=1", "q%3Fx%3D1"),
    ("h#frag", "h%23frag"),
    ("100%", "100%25"),
    ("%2E%2E", "%252E%252E"),
    ("two words", "two%20words"),
    ("zoë", "zo%C3%AB"),
    ("名前", "%E5%90%8D%E5%89%8D"),
    ("alice@example.com", "alice%40example.com"),
    ("a.b", "a.b"),
]


def make_transport(url: str) -> Transport:
    return Transport(
        site_id=SITE_ID, api_key=API_KEY, base_url=url, connect_timeout=0.5, read_timeout=2.0
    )


@pytest.fixture
def over_fake(fake_cio: FakeCustomerIO) -> Iterator[Transport]:
    with make_transport(fake_cio.url) as transport:
        yield transport


@pytest.fixture
def outbox_mode(no_kick: FakeCustomerIO, settings: Any) -> FakeCustomerIO:
    """Outbox delivery, no automatic dispatch (tests drain), a breaker that never opens."""
    settings.CIO_RELIABLE = {
        **settings.CIO_RELIABLE,
        "RATE_LIMIT": 10_000,
        "BREAKER_CONSECUTIVE_FAILURES": 0,
        "BREAKER_MINIMUM_CALLS": 100_000,
    }
    return no_kick


def drain() -> outbox.DrainResult:
    return outbox.drain(max_seconds=30, sleep=lambda s: None)


def set_batch(settings: Any, batch: bool) -> None:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "BATCH": batch}


# --------------------------------------------------------------------------- 1. ids in v1 paths


@pytest.mark.parametrize(("customer_id", "segment"), ENCODED_IDS)
def test_every_id_reaches_its_own_v1_url(
    fake_cio: FakeCustomerIO, over_fake: Transport, customer_id: str, segment: str
) -> None:
    over_fake.identify(customer_id, {"plan": "pro"})
    assert fake_cio.people() == {customer_id: {"plan": "pro"}}
    over_fake.track(customer_id, "paid", {"n": 1}, event_id=EVENT_ID)
    over_fake.delete(customer_id)

    assert [(r.method, r.path, r.status) for r in fake_cio.requests] == [
        ("PUT", f"/api/v1/customers/{segment}", 200),
        ("POST", f"/api/v1/customers/{segment}/events", 200),
        ("DELETE", f"/api/v1/customers/{segment}", 200),
    ]
    assert [(r.kind, r.customer_id) for r in fake_cio.receipts] == [
        ("identify", customer_id),
        ("track", customer_id),
        ("delete", customer_id),
    ]
    assert fake_cio.people() == {}


@pytest.mark.parametrize(("customer_id", "segment"), ENCODED_IDS[:3])
def test_the_url_builders_encode_dot_ids(customer_id: str, segment: str) -> None:
    client = make_transport("https://track.customer.io")._client
    base = "https://track.customer.io/api/v1/customers"
    assert client.get_customer_query_string(customer_id) == f"{base}/{segment}"
    assert client.get_event_query_string(customer_id) == f"{base}/{segment}/events"


def test_the_packages_own_methods_reach_the_right_url_too(
    fake_cio: FakeCustomerIO, over_fake: Transport
) -> None:
    over_fake._client.identify("..", plan="pro")
    over_fake._client.track(".", "paid", {"n": 1})
    assert [(r.method, r.path) for r in fake_cio.requests] == [
        ("PUT", "/api/v1/customers/%2E%2E"),
        ("POST", "/api/v1/customers/%2E/events"),
    ]
    assert [(r.kind, r.customer_id) for r in fake_cio.receipts] == [
        ("identify", ".."),
        ("track", "."),
    ]


def test_dot_ids_survive_an_http_proxy(
    fake_cio: FakeCustomerIO, over_fake: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", fake_cio.url)  # the fake answers proxied requests itself
    over_fake.track("..", "paid", event_id=EVENT_ID)
    over_fake.delete(".")
    assert [r.path for r in fake_cio.requests] == [
        f"{fake_cio.url}/api/v1/customers/%2E%2E/events",
        f"{fake_cio.url}/api/v1/customers/%2E",
    ]
    assert [(r.kind, r.customer_id) for r in fake_cio.receipts] == [
        ("track", ".."),
        ("delete", "."),
    ]


def test_a_path_prefix_in_track_url_keeps_the_encoding(fake_cio: FakeCustomerIO) -> None:
    # The fake serves no prefix, so it answers 404, but the path it saw is what matters.
    with make_transport(f"{fake_cio.url}/my proxy/") as transport, pytest.raises(DeliveryError):
        transport.delete("..")
    assert fake_cio.requests[0].path == "/my%20proxy/api/v1/customers/%2E%2E"


@pytest.mark.django_db(transaction=True)
def test_v1_delivery_through_the_outbox_lands_on_the_right_person(
    outbox_mode: FakeCustomerIO, settings: Any
) -> None:
    set_batch(settings, False)
    ids = [customer_id for customer_id, _ in ENCODED_IDS]
    ops = [cio.identify(customer_id, {"n": n}) for n, customer_id in enumerate(ids)]
    ops += [cio.track(customer_id, "paid", {"n": n}) for n, customer_id in enumerate(ids)]
    for _ in range(3):
        drain()

    assert {op.pk: Operation.objects.get(pk=op.pk).status for op in ops} == {
        op.pk: Status.DELIVERED for op in ops
    }
    assert outbox_mode.people() == {customer_id: {"n": n} for n, customer_id in enumerate(ids)}
    for n, customer_id in enumerate(ids):
        mine = [r for r in outbox_mode.receipts if r.customer_id == customer_id]
        assert [(r.kind, r.via) for r in mine] == [("identify", "v1"), ("track", "v1")]
        assert mine[1].attributes == {"n": n}
    assert not [r for r in outbox_mode.receipts if r.kind == "track_anonymous"]


@pytest.mark.django_db(transaction=True)
def test_a_split_batch_sends_dot_ids_to_their_own_urls(
    outbox_mode: FakeCustomerIO, settings: Any
) -> None:
    set_batch(settings, True)
    cio.track(".", "paid", {"n": 1})
    cio.track("..", "paid", {"n": 2})
    outbox_mode.fail_next(1, status=400)  # the batch is refused: sent one by one through v1
    drain()
    assert [r.path for r in outbox_mode.requests] == [
        "/api/v2/batch",
        "/api/v1/customers/%2E/events",
        "/api/v1/customers/%2E%2E/events",
    ]
    assert [(r.kind, r.customer_id, r.via) for r in outbox_mode.receipts] == [
        ("track", ".", "v1"),
        ("track", "..", "v1"),
    ]


# --------------------------------------------------------------------------- 2. anonymous events


def test_batch_item_refuses_anonymous_events() -> None:
    with pytest.raises(ValueError, match="anonymous"):
        batch_item("track_anonymous", "anon-1", {"anonymous_id": "anon-1", "name": "seen"})


def test_send_batch_refuses_anonymous_events_and_sends_nothing(
    fake_cio: FakeCustomerIO, over_fake: Transport
) -> None:
    items = [
        BatchItem("delete", "1", {}),
        BatchItem("track_anonymous", "anon-1", {"anonymous_id": "anon-1", "name": "seen"}),
    ]
    with pytest.raises(DeliveryError) as info:
        over_fake.send_batch(items)
    assert info.value.kind == "permanent"
    assert "anonymous" in info.value.reason
    assert fake_cio.request_count == 0


@pytest.mark.django_db(transaction=True)
def test_anonymous_events_go_through_v1_one_at_a_time_even_when_batching(
    outbox_mode: FakeCustomerIO, settings: Any
) -> None:
    set_batch(settings, True)
    cio.identify("u1", {"plan": "pro"})
    first = cio.track_anonymous("anon-1", "page_viewed", {"path": "/a"})
    cio.track_anonymous("anon-2", "page_viewed", {"path": "/b"})
    cio.identify("u2", {"plan": "free"})
    second = cio.track_anonymous("anon-1", "page_viewed", {"path": "/c"})
    cio.track("u1", "paid", {"n": 1})
    for _ in range(3):
        drain()

    assert Operation.objects.exclude(status=Status.DELIVERED).count() == 0
    for request in outbox_mode.requests:
        if request.path == "/api/v2/batch":
            for operation in request.body["batch"]:
                assert set(operation["identifiers"]) <= {"id", "email", "cio_id"}
                assert "anonymous_id" not in operation
    anonymous = [r for r in outbox_mode.requests if r.path == "/api/v1/events"]
    assert len(anonymous) == 3
    assert all(r.body["name"] == "page_viewed" for r in anonymous)
    # Per-person order: anon-1's events arrive in the order they were created.
    anon_1 = [r for r in outbox_mode.receipts if r.customer_id == "anon-1"]
    assert [(r.event_id, r.via) for r in anon_1] == [
        (first.event_id, "v1"),
        (second.event_id, "v1"),
    ]
    people = [r for r in outbox_mode.receipts if r.kind != "track_anonymous"]
    assert {r.via for r in people} == {"v2"}
    assert [r.kind for r in people if r.customer_id == "u1"] == ["identify", "track"]


@pytest.mark.django_db(transaction=True)
def test_a_failed_anonymous_event_is_retried_alone(
    outbox_mode: FakeCustomerIO, settings: Any, fake_clock: FakeClock
) -> None:
    set_batch(settings, True)
    anonymous = cio.track_anonymous("anon-1", "page_viewed", {"path": "/a"})
    person = cio.identify("u1", {"plan": "pro"})
    outbox_mode.fail_next(1, status=503)  # the anonymous event goes first, alone
    drain()
    anonymous.refresh_from_db()
    person.refresh_from_db()
    assert (anonymous.status, person.status) == (Status.FAILED, Status.DELIVERED)
    fake_clock.advance(3600)
    drain()
    anonymous.refresh_from_db()
    assert anonymous.status == Status.DELIVERED
    assert [(r.kind, r.via) for r in outbox_mode.receipts] == [
        ("identify", "v2"),
        ("track_anonymous", "v1"),
    ]


# --------------------------------------------------------------------------- 3. ambiguous 207s

ITEMS = [
    BatchItem("identify", "i-0", {"attributes": {"plan": "pro"}}),
    BatchItem("track", "i-1", {"name": "paid", "data": {}, "id": EVENT_ID}),
    BatchItem("delete", "i-2", {}),
]


def outcomes_for(body: dict[str, Any]) -> list[DeliveryError | None]:
    import json

    transport = make_transport("http://127.0.0.1:9")
    reply = _Reply(status=207, headers={}, body=json.dumps(body).encode(), complete=True)
    return transport._batch_outcomes(reply, ITEMS, [None] * len(ITEMS))


def assert_ambiguous(outcome: DeliveryError | None) -> None:
    assert isinstance(outcome, DeliveryError)
    assert (outcome.kind, outcome.status) == ("transient", 207)
    assert "ambiguous" in outcome.reason


@pytest.mark.parametrize(
    "entry",
    [
        {"batch_index": "0", "message": "a string index"},
        {"batch_index": 0.0, "message": "a float index"},
        {"batch_index": 1.5, "message": "a fraction"},
        {"batch_index": True, "message": "a boolean"},
        {"batch_index": None, "message": "null"},
        {"message": "no index"},
        {"batch_index": 3, "message": "out of range"},
        {"batch_index": -1, "message": "negative"},
        "not an object",
        None,
    ],
)
def test_an_unattributable_207_error_fails_every_item_transiently(entry: Any) -> None:
    outcomes = outcomes_for({"errors": [entry]})
    for outcome in outcomes:
        assert_ambiguous(outcome)


def test_a_207_with_no_errors_is_ambiguous() -> None:
    for outcome in outcomes_for({"errors": []}):
        assert_ambiguous(outcome)


def test_named_items_stay_permanent_and_the_rest_are_transient_when_ambiguous() -> None:
    outcomes = outcomes_for(
        {
            "errors": [
                {"batch_index": 1, "reason": "invalid", "field": "name", "message": "bad"},
                {"batch_index": "0", "message": "which one?"},
            ]
        }
    )
    assert_ambiguous(outcomes[0])
    rejected = outcomes[1]
    assert isinstance(rejected, DeliveryError)
    assert (rejected.kind, rejected.status) == ("permanent", 400)
    assert rejected.reason == "rejected in batch (207): bad (field name, reason invalid)"
    assert_ambiguous(outcomes[2])


def test_an_unambiguous_207_still_accepts_the_unnamed_items() -> None:
    outcomes = outcomes_for({"errors": [{"batch_index": 2, "message": "bad"}]})
    assert outcomes[:2] == [None, None]
    assert isinstance(outcomes[2], DeliveryError)
    assert outcomes[2].kind == "permanent"


@pytest.mark.django_db(transaction=True)
def test_an_ambiguous_207_is_retried_and_deduplicated_by_event_id(
    outbox_mode: FakeCustomerIO, settings: Any, fake_clock: FakeClock
) -> None:
    set_batch(settings, True)
    ops = [cio.track(f"p{n}", "paid", {"n": n}) for n in range(3)]
    # Customer.io applied the batch but its 207 answer names an item by a string index.
    outbox_mode.fail_next(
        1, status=207, body={"errors": [{"batch_index": "1", "message": "bad"}]}, apply=True
    )
    result = drain()
    assert (result.delivered, result.failed, result.dead) == (0, 3, 0)
    for op in ops:
        op.refresh_from_db()
        assert op.status == Status.FAILED
        assert "ambiguous" in op.last_error
    fake_clock.advance(3600)
    result = drain()
    assert result.delivered == 3
    assert Operation.objects.filter(status=Status.DELIVERED).count() == 3
    # Sent twice, applied once: the re-send carried the same event ids.
    assert len(outbox_mode.applied()) == 3
    assert len(outbox_mode.duplicates()) == 3


# --------------------------------------------------------------------------- 4. logs


def transport_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "django_cio_reliable.transport"]


def our_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    texts: list[str] = []
    for record in caplog.records:
        if record.name.startswith("django_cio_reliable"):
            texts.append(record.getMessage())
            texts.append(record.exc_text or "")
    return texts


def test_direct_calls_log_the_operation_id_not_the_customer_id(
    fake_cio: FakeCustomerIO, over_fake: Transport, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="django_cio_reliable")
    over_fake.identify("alice@example.com", {"plan": "pro"}, operation_id=41)
    fake_cio.fail_next(1, status=400)
    with pytest.raises(DeliveryError):
        over_fake.track("alice@example.com", "paid", operation_id=42)
    fake_cio.fail_next(1, status=503)
    with pytest.raises(DeliveryError):
        over_fake.track_anonymous("anon-alice@example.com", "seen", operation_id=43)
    over_fake.delete("alice@example.com")  # no operation id: still works, still no id logged
    fake_cio.reject_batch_items([0], count=1)
    over_fake.send_batch(
        [
            BatchItem("delete", "alice@example.com", {}, operation_id=44),
            BatchItem("delete", "bob@example.com", {}, operation_id=45),
        ]
    )
    messages = [r.getMessage() for r in transport_records(caplog)]
    assert len(messages) >= 6
    for text in our_messages(caplog):
        for secret in ("alice", "bob", "example.com", "example%2Ecom"):
            assert secret not in text, text
    for operation_id in (41, 42, 43, 44):
        assert any(f"operation {operation_id}" in text for text in messages), operation_id


@pytest.mark.django_db(transaction=True)
def test_no_delivery_log_line_contains_a_customer_or_anonymous_id(
    outbox_mode: FakeCustomerIO,
    settings: Any,
    caplog: pytest.LogCaptureFixture,
    fake_clock: FakeClock,  # frozen: what failed is not due again within this test
) -> None:
    caplog.set_level(logging.DEBUG, logger="django_cio_reliable")
    ids = ["alice@example.com", "bob@example.com", "carol@example.com", "dave@example.com"]
    anonymous_id = "anon-erin@example.com"

    set_batch(settings, False)
    delivered = cio.identify(ids[0], {"plan": "pro"})  # success, v1
    drain()
    rejected = cio.identify(ids[1], {"plan": "pro"})  # 4xx, v1
    outbox_mode.fail_next(1, status=400)
    drain()
    unavailable = cio.identify(ids[2], {"plan": "pro"})  # 5xx, v1
    outbox_mode.fail_next(1, status=503)
    drain()

    set_batch(settings, True)
    in_batch = [cio.identify(ids[3], {"plan": "pro"}), cio.track(ids[0], "paid", {"n": 1})]
    anonymous = cio.track_anonymous(anonymous_id, "seen", {"path": "/"})
    outbox_mode.reject_batch_items(  # 207 rejection
        lambda index, operation: operation["identifiers"] == {"id": ids[3]}, count=1
    )
    drain()
    failed_batch = cio.identify("frank@example.com", {"plan": "pro"})  # 5xx, batch
    cio.identify("grace@example.com", {"plan": "pro"})
    outbox_mode.fail_next(1, status=503)
    drain()

    statuses = {
        op.pk: Operation.objects.get(pk=op.pk).status
        for op in (delivered, rejected, unavailable, *in_batch, anonymous, failed_batch)
    }
    assert statuses == {
        delivered.pk: Status.DELIVERED,
        rejected.pk: Status.DEAD,
        unavailable.pk: Status.FAILED,
        in_batch[0].pk: Status.DEAD,
        in_batch[1].pk: Status.DELIVERED,
        anonymous.pk: Status.DELIVERED,
        failed_batch.pk: Status.FAILED,
    }

    forbidden = [*ids, anonymous_id, "frank@example.com", "grace@example.com"]
    forbidden += [text.replace("@", "%40") for text in forbidden]
    forbidden += ["alice", "bob", "carol", "dave", "erin", "frank", "grace"]
    for text in our_messages(caplog):
        for secret in forbidden:
            assert secret not in text, text
    messages = [r.getMessage() for r in transport_records(caplog)]
    for op in (delivered, rejected, unavailable, in_batch[0], anonymous):
        assert any(f"operation {op.pk}" in text for text in messages), (op.pk, messages)

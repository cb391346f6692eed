"""One deadline per HTTP call: ``CONNECT_TIMEOUT + TIMEOUT`` bounds connect, headers and body.

``requests``' read timeout applies to each read, so a server that sends one byte now and then
never trips it; these tests make ``FakeCustomerIO`` do exactly that (``trickle_next``) and
check that every call the transport makes still ends, as a ``timeout``, by its deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from django_cio_reliable.exceptions import DeliveryError
from django_cio_reliable.testing import FakeCustomerIO
from django_cio_reliable.transport import BatchItem, Transport
from tests.conftest import API_KEY, SITE_ID

CONNECT_TIMEOUT = 0.3
READ_TIMEOUT = 0.6
DEADLINE = CONNECT_TIMEOUT + READ_TIMEOUT
#: Scheduling slack on a loaded machine: a correctness bound, not a performance assertion.
MARGIN = 1.0
#: Well under READ_TIMEOUT, so the per-read timeout never fires on a trickle.
TRICKLE = 0.1
EVENT_ID = "01HZX3K9T1V8Q2W4E6R8T0Y2V4"

Call = Callable[[Transport], Any]

CALLS: dict[str, Call] = {
    "identify": lambda t: t.identify("42", {"plan": "pro"}),
    "track": lambda t: t.track("42", "paid", {"total": 1}, event_id=EVENT_ID),
    "track_anonymous": lambda t: t.track_anonymous("anon-1", "viewed", {"page": "/"}),
    "delete": lambda t: t.delete("42"),
    "send": lambda t: t.send("identify", "42", {"attributes": {"plan": "pro"}}),
    "send_batch": lambda t: t.send_batch(
        [BatchItem("identify", "42", {"attributes": {"plan": "pro"}}), BatchItem("delete", "7", {})]
    ),
    "check_credentials": lambda t: t.check_credentials(),
    "customerio_package_method": lambda t: t._client.identify("42", plan="pro"),
}


@pytest.fixture
def transport(fake_cio: FakeCustomerIO, settings: Any) -> Iterator[Transport]:
    """A transport built from ``CIO_RELIABLE`` with short timeouts, pointing at the fake."""
    settings.CIO_RELIABLE = {
        **settings.CIO_RELIABLE,
        "CONNECT_TIMEOUT": CONNECT_TIMEOUT,
        "TIMEOUT": READ_TIMEOUT,
    }
    with Transport.from_settings() as built:
        assert (built.connect_timeout, built.read_timeout) == (CONNECT_TIMEOUT, READ_TIMEOUT)
        yield built


def timed_failure(call: Callable[[], Any]) -> tuple[DeliveryError, float]:
    started = time.monotonic()
    with pytest.raises(DeliveryError) as info:
        call()
    return info.value, time.monotonic() - started


def assert_deadline_timeout(error: DeliveryError, elapsed: float) -> None:
    assert error.kind == "timeout", error
    assert "timed out" in error.reason.lower()
    assert elapsed < DEADLINE + MARGIN, elapsed


@pytest.mark.parametrize("name", list(CALLS))
def test_trickled_headers_cannot_hold_any_call_past_its_deadline(
    fake_cio: FakeCustomerIO, transport: Transport, name: str
) -> None:
    fake_cio.trickle_next(1, interval=TRICKLE, headers=True)

    error, elapsed = timed_failure(lambda: CALLS[name](transport))

    assert_deadline_timeout(error, elapsed)
    assert error.status is None
    # It was the deadline that ended it: no single read waited READ_TIMEOUT.
    assert elapsed >= DEADLINE - 0.05, elapsed
    assert fake_cio.requests[0].fault == "trickle_next"


def test_a_timed_out_connection_is_closed_not_reused(
    fake_cio: FakeCustomerIO, transport: Transport
) -> None:
    transport.delete("1")
    fake_cio.trickle_next(1, interval=TRICKLE, headers=True)
    assert_deadline_timeout(*timed_failure(lambda: transport.delete("2")))

    transport.delete("3")

    first, trickled, after = (r.connection_id for r in fake_cio.requests)
    assert trickled == first  # the pooled connection carried the slow request...
    assert after != trickled  # ...and was closed by the deadline, not returned to the pool


def test_a_trickled_body_is_cut_at_the_deadline(
    fake_cio: FakeCustomerIO, transport: Transport
) -> None:
    # The region answer is ~75 bytes: ~7.5 s at one byte every 0.1 s.
    fake_cio.trickle_next(1, interval=TRICKLE, headers=False)

    error, elapsed = timed_failure(transport.check_credentials)

    assert_deadline_timeout(error, elapsed)
    assert elapsed >= DEADLINE - 0.05, elapsed


def test_a_trickled_207_batch_body_is_cut_at_the_deadline(
    fake_cio: FakeCustomerIO, transport: Transport
) -> None:
    fake_cio.reject_batch_items([0])
    fake_cio.trickle_next(1, interval=TRICKLE, headers=False)
    items = [BatchItem("delete", "1", {}), BatchItem("delete", "2", {})]

    error, elapsed = timed_failure(lambda: transport.send_batch(items))

    assert_deadline_timeout(error, elapsed)
    assert fake_cio.requests[0].status == 207


@pytest.mark.parametrize("name", ["identify", "send_batch"])
def test_a_server_that_hangs_after_its_headers_times_out(
    fake_cio: FakeCustomerIO, transport: Transport, name: str
) -> None:
    # Status line and headers at once, then the first body byte only after 30 s.
    fake_cio.trickle_next(1, interval=30, headers=False)

    error, elapsed = timed_failure(lambda: CALLS[name](transport))

    assert_deadline_timeout(error, elapsed)
    assert fake_cio.requests[0].status == 200


def test_calls_through_an_http_proxy_obey_the_deadline_too(
    fake_cio: FakeCustomerIO, transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", fake_cio.url)  # the fake answers proxied requests itself
    fake_cio.trickle_next(1, interval=TRICKLE, headers=True)

    error, elapsed = timed_failure(lambda: transport.delete("1"))

    assert_deadline_timeout(error, elapsed)
    assert fake_cio.requests[0].path == f"{fake_cio.url}/api/v1/customers/1"  # via the proxy


def test_an_error_status_with_a_trickled_body_keeps_its_meaning(
    fake_cio: FakeCustomerIO, settings: Any
) -> None:
    # A non-2xx answer already says what happened (here: the credentials are wrong); its body
    # only adds a reason, so a slow body ends at the deadline without changing the outcome.
    fake_cio.trickle_next(1, interval=TRICKLE, headers=False)
    wrong = Transport(
        site_id=SITE_ID,
        api_key=API_KEY + "-wrong",
        base_url=fake_cio.url,
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
    )

    with wrong:
        error, elapsed = timed_failure(lambda: wrong.delete("1"))

    assert (error.kind, error.status) == ("auth", 401)
    assert elapsed < DEADLINE + MARGIN, elapsed


def test_a_finished_call_leaves_its_pooled_connection_alone(
    fake_cio: FakeCustomerIO, transport: Transport
) -> None:
    transport.delete("1")
    time.sleep(DEADLINE + 0.2)  # the first call's deadline passes while its socket is idle

    transport.delete("2")

    assert len({r.connection_id for r in fake_cio.requests}) == 1


def test_each_thread_only_loses_its_own_slow_call(fake_cio: FakeCustomerIO) -> None:
    slow_results: list[tuple[DeliveryError, float]] = []
    fast_errors: list[BaseException] = []
    fast_calls = 0
    stop = threading.Event()

    def build(url: str) -> Transport:
        return Transport(
            site_id=SITE_ID,
            api_key=API_KEY,
            base_url=url,
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
        )

    def slow(url: str) -> None:
        with build(url) as own:
            slow_results.append(timed_failure(lambda: own.delete("slow")))

    def fast() -> None:
        nonlocal fast_calls
        with build(fake_cio.url) as own:
            while not stop.is_set():
                try:
                    own.delete("fast")
                    fast_calls += 1
                except DeliveryError as exc:  # pragma: no cover - the failure we look for
                    fast_errors.append(exc)

    with FakeCustomerIO(site_id=SITE_ID, api_key=API_KEY) as slow_server:
        slow_server.trickle_next(3, interval=TRICKLE, headers=True)
        threads = [threading.Thread(target=slow, args=(slow_server.url,)) for _ in range(3)]
        threads += [threading.Thread(target=fast) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads[:3]:
            thread.join(timeout=DEADLINE + MARGIN + 2)
        stop.set()
        for thread in threads[3:]:
            thread.join(timeout=5)

    assert len(slow_results) == 3
    for error, elapsed in slow_results:
        assert_deadline_timeout(error, elapsed)
    assert fast_errors == []
    assert fast_calls > 0

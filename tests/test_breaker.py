"""The shared circuit breaker: its row, cache and compare-and-set, and its wiring into the
drain, direct mode, inline dispatch and ``cio_replay --now`` — against a real FakeCustomerIO,
with a fake clock (no sleeps)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

import django_cio_reliable as cio
from django_cio_reliable import breaker, outbox, signals
from django_cio_reliable.breaker import Breaker, Permit, get_breaker, outcome_for
from django_cio_reliable.breaker.core import BreakerConfig, Outcome
from django_cio_reliable.conf import app_settings
from django_cio_reliable.exceptions import DeliveryError
from django_cio_reliable.models import BreakerEvent, BreakerState, Operation
from django_cio_reliable.retry import RetryPolicy
from django_cio_reliable.testing import FakeCustomerIO
from django_cio_reliable.transport import get_transport
from tests.fakes import FakeClock

#: Most tests run in a rolled-back transaction; those that need a real commit (signals sent
#: on commit, racing threads with their own connections, inline dispatch) are transactional.
db = pytest.mark.django_db
tx = pytest.mark.django_db(transaction=True)

Status = Operation.Status
FAIL = Outcome.failure(0.01)
OK = Outcome.success(0.01)
DESTINATION = "http://breaker.test#site"


@pytest.fixture(autouse=True)
def _fresh_breaker() -> Iterator[None]:
    """Every test starts (and leaves) with no cached breaker in this process."""
    breaker.reset()
    yield
    breaker.reset()


@pytest.fixture
def server(no_kick: FakeCustomerIO, settings: Any) -> FakeCustomerIO:
    """Outbox delivery, one operation a request, no automatic dispatch: tests drain."""
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "RATE_LIMIT": 10_000, "BATCH": False}
    return no_kick


def drain(**kwargs: Any) -> outbox.DrainResult:
    options: dict[str, Any] = {"max_seconds": 30, "sleep": lambda s: None, **kwargs}
    return outbox.drain(**options)


def events() -> list[tuple[str, str]]:
    return [(e.from_state, e.to_state) for e in BreakerEvent.objects.order_by("created_at", "id")]


def make(cache_seconds: float = 1.0, **config: Any) -> Breaker:
    """A breaker on a private destination, as another process would have it."""
    return Breaker(DESTINATION, BreakerConfig(**config), cache_seconds=cache_seconds)


def trip(b: Breaker, failures: int = 5) -> None:
    for _ in range(failures):
        permit = b.allow()
        assert permit is not None
        b.record(permit, FAIL)


# --------------------------------------------------------------------------- outcomes


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (None, "success"),
        (DeliveryError("transient", "503", status=503), "failure"),
        (DeliveryError("transient", "500", status=500), "failure"),
        (DeliveryError("timeout", "read timed out"), "failure"),
        (DeliveryError("network", "connection reset"), "failure"),
        (DeliveryError("rate_limited", "429", status=429, retry_after=5), "failure"),
        (DeliveryError("permanent", "bad email", status=400), "ignored"),
        (DeliveryError("auth", "401", status=401), "ignored"),
        (DeliveryError("auth", "403", status=403), "ignored"),
    ],
)
def test_what_counts(error: DeliveryError | None, kind: str) -> None:
    outcome = outcome_for(error, 0.25)
    assert outcome.kind == kind
    assert outcome.duration == 0.25


def test_outcome_duration_is_never_negative() -> None:
    assert outcome_for(None, -1.0).duration == 0.0
    assert outcome_for(None, float("nan")).duration == 0.0


# --------------------------------------------------------------------------- the row and cache


@tx
def test_five_failures_open_it_with_one_event_and_a_signal_after_commit(
    fake_clock: FakeClock,
) -> None:
    b = make()
    received: list[dict[str, Any]] = []

    def on_change(sender: Any, **kwargs: Any) -> None:
        received.append({"sender": sender, **kwargs})

    signals.breaker_state_changed.connect(on_change)
    try:
        with transaction.atomic():
            trip(b, 4)
            assert b.snapshot().state == "closed"
            permit = b.allow()
            assert permit is not None
            b.record(permit, FAIL)
            assert b.snapshot().state == "open"
            assert received == []
        assert len(received) == 1
    finally:
        signals.breaker_state_changed.disconnect(on_change)
    [signal] = received
    assert signal["sender"] is BreakerState
    assert signal["destination"] == DESTINATION
    assert (signal["old_state"], signal["new_state"]) == ("closed", "open")
    assert signal["reason"] == "5 consecutive failures"
    assert signal["user"] is None
    row = BreakerState.objects.get(destination=DESTINATION)
    assert (row.state, row.mode) == ("open", "auto")
    assert row.opened_at == fake_clock.now()
    assert row.open_since == fake_clock.now()
    assert row.version == row.data["version"] >= 1
    [event] = BreakerEvent.objects.all()
    assert (event.from_state, event.to_state, event.reason) == (
        "closed",
        "open",
        "5 consecutive failures",
    )
    assert b.allow() is None


@db
def test_closed_allow_costs_no_query_while_the_cache_is_fresh(
    fake_clock: FakeClock, django_assert_num_queries: Any
) -> None:
    b = make()
    assert b.allow() is not None  # reads (and creates) the row
    with django_assert_num_queries(0):
        for _ in range(1000):
            permit = b.allow()
            assert permit is not None
            assert not permit.is_probe
    fake_clock.advance(1.0)
    with django_assert_num_queries(1):
        assert b.allow() is not None


@db
def test_closed_outcomes_are_merged_periodically_not_written_one_by_one(
    fake_clock: FakeClock, django_assert_num_queries: Any
) -> None:
    b = make()
    b.allow()
    version = BreakerState.objects.get().version
    with django_assert_num_queries(0):
        for _ in range(50):
            permit = b.allow()
            assert permit is not None
            b.record(permit, OK)
        for _ in range(3):
            permit = b.allow()
            assert permit is not None
            b.record(permit, FAIL)
    assert b.snapshot().pending_outcomes == 53
    assert BreakerState.objects.get().version == version
    fake_clock.advance(1.0)
    with django_assert_num_queries(2):  # read, compare-and-set
        assert b.allow() is not None
    row = BreakerState.objects.get()
    assert row.version > version
    assert sum(bucket[1] for bucket in row.data["buckets"]) == 53
    assert row.data["consecutive_failures"] == 3
    assert b.snapshot().pending_outcomes == 0


@db
def test_outcomes_are_merged_after_flush_every(fake_clock: FakeClock) -> None:
    b = make()
    b.allow()
    for _ in range(breaker.FLUSH_EVERY):
        permit = b.allow()
        assert permit is not None
        b.record(permit, OK)
    assert b.snapshot().pending_outcomes == 0
    assert BreakerState.objects.get().data["buckets"][0][1] == breaker.FLUSH_EVERY


@db
def test_failures_of_two_processes_add_up(fake_clock: FakeClock) -> None:
    first, second = make(), make()
    trip(first, 3)
    trip(second, 2)  # neither trips alone: both only collected
    assert BreakerState.objects.get().state == "closed"
    first.flush()
    second.flush()
    assert BreakerState.objects.get().state == "open"
    assert events() == [("closed", "open")]


@db
def test_ignored_outcomes_count_for_nothing(fake_clock: FakeClock) -> None:
    b = make()
    for _ in range(20):
        permit = b.allow()
        assert permit is not None
        b.record(permit, Outcome.ignored(0.01))
    b.flush()
    assert b.snapshot(fresh=True).calls == 0
    assert b.snapshot().state == "closed"


@db
def test_failure_rate_over_the_window_opens_it(fake_clock: FakeClock) -> None:
    b = make(minimum_calls=10, failure_rate_threshold=0.5, consecutive_failures=0)
    for index in range(10):
        permit = b.allow()
        assert permit is not None
        b.record(permit, FAIL if index % 2 else OK)
    # Merged (and so detected) when the cache expires, at the latest.
    fake_clock.advance(1)
    assert b.allow() is None
    assert b.snapshot().state == "open"
    [event] = BreakerEvent.objects.all()
    assert event.reason.startswith("failure rate 50%")


@db
def test_open_refuses_from_the_cache_and_probes_after_the_cooldown(
    fake_clock: FakeClock, django_assert_num_queries: Any
) -> None:
    b = make(reset_timeout=30)
    trip(b)
    with django_assert_num_queries(0):
        assert b.allow() is None
        assert b.refusing()
    fake_clock.advance(29)
    assert b.allow() is None
    fake_clock.advance(1)
    probe = b.allow()
    assert probe is not None and probe.is_probe
    assert b.snapshot().state == "half_open"
    assert b.snapshot().probes_in_flight == 1
    # One probe at a time (HALF_OPEN_MAX_CALLS = 1), also for another process.
    assert b.allow() is None
    assert make().allow() is None
    assert events() == [("closed", "open"), ("open", "half_open")]


@db
def test_three_probe_successes_close_it(fake_clock: FakeClock) -> None:
    b = make(reset_timeout=30, success_threshold=3)
    trip(b)
    fake_clock.advance(30)
    for _ in range(3):
        probe = b.allow()
        assert probe is not None and probe.is_probe
        b.record(probe, OK)
    assert b.snapshot().state == "closed"
    permit = b.allow()
    assert permit is not None and not permit.is_probe
    assert events() == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    assert BreakerState.objects.get().open_since is None


@db
def test_a_failed_probe_reopens_with_a_longer_cooldown(fake_clock: FakeClock) -> None:
    b = make(reset_timeout=30, reset_timeout_multiplier=2, reset_timeout_max=100)
    trip(b)
    first_open = BreakerState.objects.get().open_since
    fake_clock.advance(30)
    probe = b.allow()
    assert probe is not None
    b.record(probe, FAIL)
    snapshot = b.snapshot()
    assert snapshot.state == "open"
    assert snapshot.cooldown == 60
    assert snapshot.retry_at == fake_clock.now() + timedelta(seconds=60)
    assert snapshot.open_since == first_open  # kept through the re-open
    fake_clock.advance(59)
    assert b.allow() is None
    fake_clock.advance(1)
    assert b.allow() is not None


@db
def test_a_lost_probe_frees_its_slot_when_its_lease_expires(fake_clock: FakeClock) -> None:
    b = make(reset_timeout=30, probe_lease_seconds=15)
    trip(b)
    fake_clock.advance(30)
    lost = b.allow()
    assert lost is not None and lost.is_probe
    fake_clock.advance(14)
    assert b.allow() is None
    fake_clock.advance(1.5)
    other = make()
    probe = other.allow()
    assert probe is not None and probe.is_probe
    # The late report of the lost probe changes nothing.
    b.record(lost, OK)
    assert b.snapshot(fresh=True).half_open_successes == 0


@db
def test_cancel_frees_a_probe_slot_at_once(fake_clock: FakeClock) -> None:
    b = make(reset_timeout=30)
    trip(b)
    fake_clock.advance(30)
    probe = b.allow()
    assert probe is not None
    b.cancel(probe)
    assert b.snapshot().probes_in_flight == 0
    assert b.allow() is not None


@db
def test_another_process_sees_the_trip_after_its_cache_period(fake_clock: FakeClock) -> None:
    tripper, watcher = make(), make()
    assert watcher.allow() is not None
    trip(tripper)
    fake_clock.advance(0.5)
    assert watcher.allow() is not None  # still trusting its cache
    fake_clock.advance(0.5)
    assert watcher.allow() is None


@db
def test_zero_cache_reads_every_time(fake_clock: FakeClock, django_assert_num_queries: Any) -> None:
    b = make(cache_seconds=0)
    b.allow()
    with django_assert_num_queries(3):
        for _ in range(3):
            b.allow()


@db
def test_a_clock_going_back_makes_the_cache_stale(fake_clock: FakeClock) -> None:
    tripper, watcher = make(), make()
    watcher.allow()
    trip(tripper)
    fake_clock.advance(-10)
    assert watcher.allow() is None


# --------------------------------------------------------------------------- compare-and-set


def _race(
    monkeypatch: pytest.MonkeyPatch, contenders: list[Breaker], action: Callable[[Breaker], Any]
) -> list[Any]:
    """Run ``action`` on each breaker in its own thread, every thread reading the row before
    any writes it (a barrier after the first read), like processes racing."""
    barrier = threading.Barrier(len(contenders))
    original = Breaker._load
    first_read: set[int] = set()

    def load(self: Breaker) -> Any:
        row = original(self)
        if id(self) not in first_read:
            first_read.add(id(self))
            barrier.wait(timeout=10)
        return row

    monkeypatch.setattr(Breaker, "_load", load)
    results: list[Any] = [None] * len(contenders)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = action(contenders[index])
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(contenders))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    monkeypatch.setattr(Breaker, "_load", original)
    assert not errors, errors
    return results


@tx
def test_two_processes_racing_for_the_probe_slot_one_wins(
    fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = make(reset_timeout=30)
    trip(setup)
    fake_clock.advance(30)
    contenders = [make(reset_timeout=30), make(reset_timeout=30)]

    permits = _race(monkeypatch, contenders, lambda b: b.allow())

    granted = [p for p in permits if p is not None]
    assert len(granted) == 1
    assert isinstance(granted[0], Permit) and granted[0].is_probe
    assert events() == [("closed", "open"), ("open", "half_open")]
    row = BreakerState.objects.get()
    assert [probe[0] for probe in row.data["probes"]] == [granted[0].probe_id]


@tx
def test_two_processes_racing_to_trip_it_make_one_transition(
    fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    contenders = [make(), make()]
    for b in contenders:
        b.allow()
        for _ in range(4):
            permit = b.allow()
            assert permit is not None
            b.record(permit, FAIL)
    # Each has 4 failures collected; merged in either order they make 8 in a row: one trip.
    _race(monkeypatch, contenders, lambda b: b.flush())

    assert events() == [("closed", "open")]
    assert BreakerState.objects.get().state == "open"


@tx
def test_two_operators_forcing_at_once_record_each_change_once(
    fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    contenders = [make(), make()]
    for b in contenders:
        b.allow()

    transitions = _race(monkeypatch, contenders, lambda b: b.force("forced_open"))

    assert sum(t is not None for t in transitions) == 1
    assert events() == [("closed", "open")]


# --------------------------------------------------------------------------- operators


@db
def test_force_open_records_the_user_and_refuses_everyone(fake_clock: FakeClock) -> None:
    user = get_user_model().objects.create_user("ops")
    b, other = make(), make()
    other.allow()

    transition = b.force("forced_open", user=user, reason="incident 42")

    assert transition is not None
    assert (transition.from_state, transition.to_state) == ("closed", "open")
    event = BreakerEvent.objects.get()
    assert (event.from_mode, event.to_mode) == ("auto", "forced_open")
    assert event.user == user
    assert event.username == "ops"
    assert event.reason == "forced open: incident 42"
    assert b.allow() is None
    fake_clock.advance(1)
    assert other.allow() is None
    assert other.snapshot().retry_at is None  # only an operator reopens it
    fake_clock.advance(3600)
    assert other.allow() is None
    assert b.force("forced_open", user=user) is None  # already: no event
    assert b.force("auto", user=user) is not None
    assert b.allow() is not None
    assert [e.to_mode for e in BreakerEvent.objects.order_by("id")] == ["forced_open", "auto"]


@db
def test_force_closed_and_disabled_count_but_never_trip(fake_clock: FakeClock) -> None:
    for mode in ("forced_closed", "disabled"):
        b = make()
        b.force(mode)
        trip(b, 20)
        b.flush()
        snapshot = b.snapshot(fresh=True)
        assert (snapshot.state, snapshot.mode) == ("closed", mode)
        assert snapshot.failures == 20
        b.force("auto")


@db
def test_reset_closes_an_open_breaker(fake_clock: FakeClock) -> None:
    b = make()
    trip(b)
    transition = b.force("auto", reason="fixed")
    assert transition is not None
    assert transition.reason == "reset"
    last = BreakerEvent.objects.order_by("id").last()
    assert last is not None
    assert last.reason == "reset: fixed"
    assert b.allow() is not None


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        make().force("off")


@db
def test_events_keep_the_username_when_the_user_is_deleted(fake_clock: FakeClock) -> None:
    user = get_user_model().objects.create_user("gone")
    make().force("forced_open", user=user)
    user.delete()
    event = BreakerEvent.objects.get()
    assert event.user is None
    assert event.username == "gone"


@db
def test_recent_events_newest_first(fake_clock: FakeClock, settings: Any) -> None:
    b = get_breaker()
    for mode in ("forced_open", "auto", "disabled", "auto"):
        fake_clock.advance(1)
        b.force(mode)
    recent = list(breaker.recent_events(3))
    assert [e.to_mode for e in recent] == ["auto", "disabled", "auto"]
    assert list(breaker.recent_events(10, destination="elsewhere")) == []


@db
def test_snapshot_describes_the_breaker(fake_clock: FakeClock) -> None:
    b = make(reset_timeout=30, half_open_max_calls=2, success_threshold=3)
    for outcome in (OK, OK, FAIL):
        permit = b.allow()
        assert permit is not None
        b.record(permit, outcome)
    assert b.snapshot().pending_outcomes == 3
    assert b.snapshot().calls == 3  # not merged yet, but counted
    snapshot = b.snapshot(fresh=True)
    assert snapshot.state == "closed"
    assert (snapshot.calls, snapshot.failures, snapshot.consecutive_failures) == (3, 1, 1)
    assert snapshot.failure_rate == pytest.approx(1 / 3)
    assert snapshot.pending_outcomes == 0
    assert snapshot.label == "closed"
    trip(b, 4)
    snapshot = b.snapshot(fresh=True)
    assert snapshot.state == "open"
    assert snapshot.opened_at == fake_clock.now()
    assert snapshot.retry_at == fake_clock.now() + timedelta(seconds=30)
    assert snapshot.probe_limit == 2
    assert snapshot.success_threshold == 3
    assert snapshot.updated_at == fake_clock.now()
    assert snapshot.version == BreakerState.objects.get().version
    fake_clock.advance(30)
    assert b.allow() is not None
    assert b.allow() is not None
    snapshot = b.snapshot()
    assert (snapshot.state, snapshot.probes_in_flight) == ("half_open", 2)
    assert snapshot.retry_at == fake_clock.now() + timedelta(seconds=15)
    b.force("forced_open")
    assert b.snapshot().label == "forced_open"


def call(b: Breaker, outcome: Outcome = OK) -> None:
    permit = b.allow()
    assert permit is not None
    b.record(permit, outcome)


@db
def test_snapshot_counts_outcomes_not_merged_yet_at_once(
    fake_clock: FakeClock, django_assert_num_queries: Any
) -> None:
    b = make()
    for _ in range(7):
        call(b)
    with django_assert_num_queries(0):  # from the cache: no flush, no read
        snapshot = b.snapshot()
    assert snapshot.pending_outcomes == 7
    assert (snapshot.calls, snapshot.failures, snapshot.failure_rate) == (7, 0, 0.0)
    call(b, FAIL)
    snapshot = b.snapshot()
    assert (snapshot.calls, snapshot.failures, snapshot.consecutive_failures) == (8, 1, 1)
    assert BreakerState.objects.get().data["buckets"] == []  # still only collected


@db
def test_calls_seconds_apart_inside_the_window_are_all_counted(fake_clock: FakeClock) -> None:
    b = make()
    seen = []
    for _ in range(3):
        call(b)
        seen.append(b.snapshot().calls)
        fake_clock.advance(4)
    assert seen == [1, 2, 3]
    assert b.snapshot(fresh=True).calls == 3


@db
def test_snapshot_after_opening_shows_the_calls_that_opened_it(fake_clock: FakeClock) -> None:
    b = make()
    call(b)
    call(b)
    trip(b, 5)
    for snapshot in (b.snapshot(), b.snapshot(fresh=True)):
        assert snapshot.state == "open"
        assert (snapshot.calls, snapshot.failures) == (7, 5)
        assert snapshot.failure_rate == pytest.approx(5 / 7)
    fake_clock.advance(61)  # they age out of the window like any call
    assert b.snapshot().calls == 0


@db
def test_another_process_counts_what_one_merged_even_after_it_opened(
    fake_clock: FakeClock,
) -> None:
    first, second = make(), make()
    for _ in range(3):
        call(first)
    first.flush()
    call(second)
    call(second)  # collected, not merged
    assert second.snapshot().calls == 5  # the row's 3 and its own 2
    assert first.snapshot(fresh=True).calls == 3
    second.flush()
    assert first.snapshot(fresh=True).calls == 5
    trip(second, 5)  # merged at once: it opens
    snapshot = first.snapshot(fresh=True)
    assert snapshot.state == "open"
    assert (snapshot.calls, snapshot.failures, snapshot.failure_rate) == (10, 5, 0.5)


@db
def test_an_unreadable_row_starts_again_from_closed(fake_clock: FakeClock) -> None:
    BreakerState.objects.create(destination=DESTINATION, data={"state": "bogus"}, version=7)
    b = make()
    assert b.allow() is not None
    trip(b)
    assert BreakerState.objects.get().version > 7


# --------------------------------------------------------------------------- settings


@db
def test_get_breaker_is_per_process_and_rebuilt_when_settings_change(settings: Any) -> None:
    first = get_breaker()
    assert get_breaker() is first
    settings.CIO_RELIABLE = {
        **settings.CIO_RELIABLE,
        "BREAKER_CONSECUTIVE_FAILURES": 2,
        "BREAKER_RESET_TIMEOUT": 12.5,
        "BREAKER_RESET_TIMEOUT_MAX": 50,
        "BREAKER_HALF_OPEN_MAX_CALLS": 3,
        "BREAKER_CACHE_SECONDS": 0.25,
    }
    second = get_breaker()
    assert second is not first
    config = second.machine.config
    assert config.consecutive_failures == 2
    assert config.reset_timeout == 12.5
    assert config.reset_timeout_max == 50
    assert config.half_open_max_calls == 3
    assert second.cache_seconds == 0.25
    assert second.destination == app_settings.destination


def test_defaults_and_derived_probe_lease(settings: Any) -> None:
    config = breaker.config_from_settings()
    assert config.consecutive_failures == 5
    assert config.reset_timeout == 30
    assert config.success_threshold == 3
    assert config.probe_lease_seconds == pytest.approx(10 + 3.05 + 5)
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "BREAKER_PROBE_LEASE_SECONDS": 40}
    assert breaker.config_from_settings().probe_lease_seconds == 40


def test_invalid_settings_fall_back_to_the_defaults(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.CIO_RELIABLE = {
        **settings.CIO_RELIABLE,
        "BREAKER_RESET_TIMEOUT": 100,
        "BREAKER_RESET_TIMEOUT_MAX": 10,
        "BREAKER_CACHE_SECONDS": "soon",
    }
    with caplog.at_level("ERROR", logger="django_cio_reliable"):
        config = breaker.config_from_settings()
    assert config.reset_timeout == 30
    assert "invalid breaker settings" in caplog.text
    assert breaker.cache_seconds_from_settings() == 1.0


# --------------------------------------------------------------------------- the drain


@db
def test_five_failures_open_it_and_the_drain_stops_claiming(
    server: FakeCustomerIO, fake_clock: FakeClock
) -> None:
    ops = [cio.track(f"p{i}", "x") for i in range(10)]
    server.fail_next(100, status=503)

    result = drain()

    assert len(server.requests) == 5
    assert result.failed == 5
    assert result.released == 5
    assert result.breaker == "open"
    statuses = {op.pk: Operation.objects.get(pk=op.pk) for op in ops}
    failed = [o for o in statuses.values() if o.status == Status.FAILED]
    untouched = [o for o in statuses.values() if o.status == Status.PENDING]
    assert len(failed) == 5 and all(o.attempts == 1 for o in failed)
    assert len(untouched) == 5 and all(o.attempts == 0 for o in untouched)

    # While open, a drain claims nothing, sends nothing and burns no attempt.
    fake_clock.advance(10)
    again = drain()
    assert (again.claimed, again.requests, again.breaker) == (0, 0, "open")
    assert len(server.requests) == 5
    assert sum(Operation.objects.values_list("attempts", flat=True)) == 5


@db
def test_after_the_cooldown_one_probe_then_three_successes_close_it(
    server: FakeCustomerIO, fake_clock: FakeClock
) -> None:
    for i in range(10):
        cio.track(f"p{i}", "x")
    server.fail_next(5, status=503)
    drain()
    assert len(server.requests) == 5

    # Cooldown over, Customer.io still down: exactly one probe goes out, and it fails.
    fake_clock.advance(30)
    server.fail_next(1, status=503)
    probing = drain()
    assert len(server.requests) == 6
    assert (probing.requests, probing.claimed, probing.breaker) == (1, 1, "open")
    assert get_breaker().snapshot().cooldown == 60  # grown by the multiplier

    # Back up: three one-operation probes close it, then the rest flows.
    fake_clock.advance(60)
    result = drain()
    assert result.breaker == ""
    assert not Operation.objects.exclude(status=Status.DELIVERED).exists()
    assert all("/api/v1/" in r.path for r in server.requests)  # one operation a request
    assert events() == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


@db
def test_a_probe_is_one_operation_even_when_batching(
    server: FakeCustomerIO, fake_clock: FakeClock, settings: Any
) -> None:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "BATCH": True}
    for i in range(20):
        cio.track(f"p{i}", "x")
    trip(get_breaker())
    fake_clock.advance(30)

    result = drain()

    assert result.delivered == 20
    sizes = [len(r.body["batch"]) if "/api/v2/batch" in r.path else 1 for r in server.requests]
    assert sizes[:3] == [1, 1, 1]
    assert sizes[3] == 17


@db
def test_probe_group_is_split_mid_claim(server: FakeCustomerIO, fake_clock: FakeClock) -> None:
    # A claim taken while closed meets a half-open breaker: only one operation goes as a probe.
    for i in range(4):
        cio.track(f"p{i}", "x")
    claimed = outbox.claim(10)
    b = get_breaker()
    trip(b)
    fake_clock.advance(30)
    deliverer = outbox.Deliverer(
        transport=get_transport(),
        policy=RetryPolicy.from_settings(),
        limiter=outbox.RateLimiter(sleep=lambda s: None),
        breaker=b,
    )
    server.fail_next(1, status=503)

    result = deliverer.deliver(claimed)

    assert result.requests == 1
    assert result.failed == 1
    assert result.released == 3
    assert result.breaker == "open"


@db
def test_refused_mid_claim_hands_the_rest_back_without_burning_attempts(
    server: FakeCustomerIO, fake_clock: FakeClock
) -> None:
    ops = [cio.track(f"p{i}", "x") for i in range(6)]
    b = get_breaker()
    original = outbox.Deliverer._send_group
    sent: list[int] = []

    def send_then_kill_switch(self: outbox.Deliverer, *args: Any, **kwargs: Any) -> str:
        answer = original(self, *args, **kwargs)
        sent.append(1)
        if len(sent) == 2:
            Breaker.from_settings().force("forced_open", reason="kill switch")
            b.invalidate()  # this process notices at its next cache refresh
        return answer

    outbox.Deliverer._send_group = send_then_kill_switch  # type: ignore[method-assign]
    try:
        result = drain()
    finally:
        outbox.Deliverer._send_group = original  # type: ignore[method-assign]

    assert (result.delivered, result.released, result.breaker) == (2, 4, "forced_open")
    for op in ops:
        op.refresh_from_db()
    assert sorted(op.status for op in ops) == ["delivered"] * 2 + ["pending"] * 4
    assert all(op.attempts == 0 for op in ops if op.status == Status.PENDING)


@db
def test_lingering_drain_waits_for_the_end_of_the_cooldown(
    server: FakeCustomerIO, fake_clock: FakeClock
) -> None:
    cio.track("p", "x")
    b = get_breaker()
    trip(b)
    fake_clock.advance(25)
    naps: list[float] = []

    def nap(seconds: float) -> None:
        naps.append(seconds)
        fake_clock.advance(seconds)

    result = outbox.drain(max_seconds=60, linger=10, sleep=nap, monotonic=lambda: sum(naps))

    assert result.delivered == 1
    assert naps and 5 <= sum(naps) <= 6
    # A cooldown ending beyond the linger budget is not waited for.
    b.force("auto")
    trip(b)
    cio.track("q", "x")
    naps.clear()
    result = outbox.drain(max_seconds=60, linger=10, sleep=nap, monotonic=lambda: sum(naps))
    assert (result.claimed, result.breaker, naps) == (0, "open", [])


@db
def test_payload_errors_and_credentials_never_trip_it(
    server: FakeCustomerIO, fake_clock: FakeClock
) -> None:
    for i in range(8):
        cio.track(f"p{i}", "x")
    server.fail_next(8, status=400)
    result = drain()
    assert result.dead == 8
    assert get_breaker().snapshot().state == "closed"
    cio.track("q", "x")
    server.fail_next(1, status=401)
    assert drain().paused == "auth"
    b = get_breaker()
    b.flush()
    snapshot = b.snapshot(fresh=True)
    assert (snapshot.state, snapshot.calls) == ("closed", 0)


@db
def test_slow_calls_open_it_when_configured(server: FakeCustomerIO, settings: Any) -> None:
    settings.CIO_RELIABLE = {
        **settings.CIO_RELIABLE,
        "BREAKER_SLOW_CALL_SECONDS": 0.05,
        "BREAKER_SLOW_CALL_RATE_THRESHOLD": 0.5,
        "BREAKER_MINIMUM_CALLS": 4,
    }
    for i in range(6):
        cio.track(f"p{i}", "x")
    server.set_latency(0.08)

    result = drain()

    assert result.delivered == 4
    assert result.breaker == "open"
    assert BreakerEvent.objects.get().reason.startswith("slow-call rate 100%")


# --------------------------------------------------------------------------- other paths


@tx
def test_direct_mode_with_an_open_breaker_stores_and_sends_nothing(
    server: FakeCustomerIO, fake_clock: FakeClock, settings: Any
) -> None:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "DELIVERY": "direct"}
    delivered = cio.track("p", "first")
    assert delivered.status == Status.DELIVERED
    trip(get_breaker())
    before = len(server.requests)

    with CaptureQueriesContext(connection) as queries:
        op = cio.track("p", "second")

    assert len(server.requests) == before
    op.refresh_from_db()
    assert (op.status, op.attempts) == (Status.PENDING, 0)
    assert not any("cio_reliable_breakerstate" in q["sql"] for q in queries.captured_queries)
    fake_clock.advance(30)
    assert drain().delivered == 1


@tx
def test_direct_mode_failures_count_and_open_it(
    server: FakeCustomerIO, fake_clock: FakeClock, settings: Any
) -> None:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "DELIVERY": "direct", "DIRECT_ATTEMPTS": 2}
    server.fail_next(100, status=503)
    first = cio.track("p1", "x")  # two failed tries
    second = cio.track("p2", "x")  # two more
    third = cio.track("p3", "x")  # one: the fifth failure opens it, no second try
    fourth = cio.track("p4", "x")  # refused at once
    assert len(server.requests) == 5
    for op, attempts in ((first, 2), (second, 2), (third, 1), (fourth, 0)):
        op.refresh_from_db()
        assert op.attempts == attempts
    assert get_breaker().snapshot().state == "open"


@tx
def test_inline_dispatch_with_an_open_breaker_leaves_it_to_the_drain(
    fake_cio: FakeCustomerIO, fake_clock: FakeClock, settings: Any
) -> None:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "DISPATCH": "inline"}
    get_breaker().force("forced_open")
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        op = cio.track("p", "x")
    assert fake_cio.requests == []
    op.refresh_from_db()
    assert (op.status, op.attempts) == (Status.PENDING, 0)
    # Nothing after the commit: no claim, no pause lookup, no breaker read.
    sql = [q["sql"] for q in queries.captured_queries]
    assert not any(s.startswith("UPDATE") for s in sql)
    assert not any("deliverystate" in s or "breakerstate" in s for s in sql)
    get_breaker().force("auto")
    with transaction.atomic():
        other = cio.track("q", "y")
    other.refresh_from_db()
    assert other.status == Status.DELIVERED


@db
def test_force_open_stops_delivery_and_is_recorded_with_the_user(
    server: FakeCustomerIO, fake_clock: FakeClock
) -> None:
    admin = get_user_model().objects.create_superuser("admin", password=None)
    cio.track("p", "x")
    get_breaker().force("forced_open", user=admin, reason="incident")

    result = drain()

    assert (result.claimed, result.breaker) == (0, "forced_open")
    assert server.requests == []
    event = BreakerEvent.objects.get()
    assert (event.user, event.to_mode) == (admin, "forced_open")
    get_breaker().force("auto", user=admin)
    assert drain().delivered == 1


# --------------------------------------------------------------------------- cio_replay --now


def replay(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("cio_replay", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def dead_ops(count: int) -> list[Operation]:
    ops = [cio.track(f"d{i}", "x") for i in range(count)]
    Operation.objects.update(status=Status.DEAD, attempts=3)
    return ops


@db
def test_replay_now_refuses_while_open(server: FakeCustomerIO, fake_clock: FakeClock) -> None:
    dead_ops(2)
    trip(get_breaker())

    with pytest.raises(CommandError) as excinfo:
        replay("--now")

    assert excinfo.value.returncode == 3
    assert "circuit breaker is open" in str(excinfo.value)
    assert server.requests == []
    assert Operation.objects.filter(status=Status.DEAD).count() == 2
    # Plain requeueing (no --now) is not refused: the workers deliver once it closes.
    assert replay()[0].startswith("Requeued 2 of 2")


@db
def test_replay_now_refuses_while_forced_open(
    server: FakeCustomerIO, fake_clock: FakeClock
) -> None:
    dead_ops(1)
    get_breaker().force("forced_open")
    fake_clock.advance(3600)
    with pytest.raises(CommandError, match="forced open by an operator"):
        replay("--now")


@db
def test_replay_now_force_resets_the_breaker_and_delivers(
    server: FakeCustomerIO, fake_clock: FakeClock
) -> None:
    dead_ops(3)
    trip(get_breaker())

    out, err = replay("--now", "--force")

    assert "reset the circuit breaker" in err
    assert "delivered=3" in out
    event = BreakerEvent.objects.order_by("id").last()
    assert event is not None
    assert (event.to_state, event.to_mode) == ("closed", "auto")
    assert "cio_replay" in event.reason


@db
def test_replay_now_is_not_refused_once_the_cooldown_is_over(
    server: FakeCustomerIO, fake_clock: FakeClock
) -> None:
    dead_ops(4)
    trip(get_breaker())
    fake_clock.advance(30)
    from django_cio_reliable.management.commands import cio_replay

    assert cio_replay._refuse_reason() is None
    out, _ = replay("--now")
    assert "delivered=4" in out
    assert get_breaker().snapshot().state == "closed"


@db
def test_replay_now_stops_when_the_breaker_opens(
    server: FakeCustomerIO, fake_clock: FakeClock
) -> None:
    dead_ops(8)
    server.fail_next(100, status=503)

    with pytest.raises(CommandError) as excinfo:
        replay("--now")

    assert excinfo.value.returncode == 1
    assert "circuit breaker is open" in str(excinfo.value)
    assert len(server.requests) == 5
    assert Operation.objects.filter(status=Status.PENDING, attempts=0).count() == 3

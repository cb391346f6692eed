"""The pure circuit-breaker state machine, driven by a fake clock (plain floats, no sleeps)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_cio_reliable.breaker.core import (
    COUNTER_CAP,
    MODES,
    STATES,
    BreakerConfig,
    BreakerMachine,
    BreakerState,
    Decision,
    Mode,
    Outcome,
    Transition,
)

T0 = 1_000.0
FAIL = Outcome.failure(0.1)
OK = Outcome.success(0.1)
IGNORED = Outcome.ignored(0.1)


def json_round_trip(state: BreakerState) -> BreakerState:
    return BreakerState.from_dict(json.loads(json.dumps(state.to_dict(), allow_nan=False)))


def record_all(
    machine: BreakerMachine, state: BreakerState, outcomes: list[Outcome], start: float
) -> tuple[BreakerState, list[Transition]]:
    """Record ``outcomes`` one a second from ``start``; return the state and the transitions."""
    transitions: list[Transition] = []
    for offset, outcome in enumerate(outcomes):
        state, transition = machine.record(state, outcome, start + offset)
        if transition is not None:
            transitions.append(transition)
    return state, transitions


def open_breaker(machine: BreakerMachine, now: float = T0) -> BreakerState:
    state, transitions = record_all(machine, BreakerState(), [FAIL] * 5, now - 4)
    assert state.state == "open"
    assert len(transitions) == 1
    return state


def half_open(machine: BreakerMachine, state: BreakerState) -> tuple[BreakerState, float]:
    due = machine.retry_at(state)
    assert due is not None
    decision = machine.decide(state, due)
    assert decision.state.state == "half_open"
    return decision.state, due


# -- configuration ------------------------------------------------------------------------


def test_config_defaults_match_the_brief() -> None:
    config = BreakerConfig()
    assert config.failure_rate_threshold == 0.5
    assert config.window_seconds == 60
    assert config.minimum_calls == 10
    assert config.consecutive_failures == 5
    assert config.slow_call_seconds == 5.0
    assert config.slow_call_rate_threshold == 1.0
    assert not config.slow_call_trigger_enabled
    assert config.reset_timeout == 30
    assert config.reset_timeout_multiplier == 1.0
    assert config.reset_timeout_max == 600
    assert config.half_open_max_calls == 1
    assert config.probe_lease_seconds == 15
    assert config.success_threshold == 3
    assert config.bucket_seconds == 3.0


@pytest.mark.parametrize(
    ("field", "value", "limit"),
    [
        ("failure_rate_threshold", 0, "> 0 and <= 1"),
        ("failure_rate_threshold", 1.5, "> 0 and <= 1"),
        ("failure_rate_threshold", math.nan, "finite"),
        ("failure_rate_threshold", "0.5", "number"),
        ("window_seconds", 0, "> 0"),
        ("window_seconds", math.inf, "finite"),
        ("window_buckets", 0, ">= 1"),
        ("window_buckets", 1001, "<= 1000"),
        ("window_buckets", 2.0, "integer"),
        ("minimum_calls", 0, ">= 1"),
        ("minimum_calls", True, "integer"),
        ("consecutive_failures", -1, ">= 0"),
        ("slow_call_seconds", -1.0, "> 0"),
        ("slow_call_rate_threshold", 0.0, "> 0 and <= 1"),
        ("slow_call_rate_threshold", 1.01, "> 0 and <= 1"),
        ("reset_timeout", 0, "> 0"),
        ("reset_timeout_multiplier", 0.5, ">= 1"),
        ("reset_timeout_max", 10, ">= reset_timeout"),
        ("half_open_max_calls", 0, ">= 1"),
        ("probe_lease_seconds", 0, "> 0"),
        ("success_threshold", 0, ">= 1"),
    ],
)
def test_config_refuses_bad_values_naming_field_and_limit(
    field: str, value: Any, limit: str
) -> None:
    with pytest.raises(ValueError, match=field) as info:
        BreakerConfig(**{field: value})
    assert limit in str(info.value)


def test_consecutive_failures_zero_is_allowed_and_disables() -> None:
    machine = BreakerMachine(BreakerConfig(consecutive_failures=0))
    state, transitions = record_all(machine, BreakerState(), [FAIL] * 9, T0)
    assert state.state == "closed"
    assert transitions == []


# -- the brief's scenario -----------------------------------------------------------------


def test_brief_scenario_five_failures_open_30s_probe_three_successes_close() -> None:
    machine = BreakerMachine()
    state = BreakerState()

    state, transitions = record_all(machine, state, [FAIL] * 4, T0)
    assert state.state == "closed"
    assert state.consecutive_failures == 4
    assert transitions == []
    assert machine.decide(state, T0 + 4).allowed

    state, transition = machine.record(state, FAIL, T0 + 4)
    assert state.state == "open"
    assert state.opened_at == T0 + 4
    assert transition == Transition("closed", "open", "5 consecutive failures", T0 + 4)

    # Refused while open, with the time it will admit a probe.
    for now in (T0 + 4, T0 + 20, T0 + 33.999):
        decision = machine.decide(state, now)
        assert not decision.allowed
        assert decision.state is state
        assert decision.transition is None
        assert decision.retry_at == T0 + 34
    assert machine.retry_at(state) == T0 + 34
    assert machine.cooldown(state) == 30

    # 30 s after it opened, a probe is allowed.
    decision = machine.decide(state, T0 + 34)
    assert decision.allowed
    assert decision.probe_required
    assert decision.state.state == "half_open"
    assert decision.state.version == state.version + 1
    assert decision.transition is not None
    assert (decision.transition.from_state, decision.transition.to_state) == ("open", "half_open")
    assert decision.transition.reason.startswith("cooldown elapsed")
    state = decision.state

    # Three successful probes close it.
    for index in range(3):
        now = T0 + 35 + index
        decision = machine.decide(state, now)
        assert decision.allowed and decision.probe_required
        state, granted = machine.acquire_probe(decision.state, now, f"probe-{index}")
        assert granted
        state, transition = machine.record(state, Outcome.success(0.2), now + 0.2, f"probe-{index}")
        if index < 2:
            assert transition is None
            assert state.state == "half_open"
            assert state.half_open_successes == index + 1
    assert transition is not None
    assert transition.to_state == "closed"
    assert transition.reason == "3 successes in half-open"
    assert state == replace(BreakerState(), version=state.version)

    decision = machine.decide(state, T0 + 40)
    assert decision.allowed and not decision.probe_required


def test_probe_failure_reopens_with_growing_capped_cooldown() -> None:
    machine = BreakerMachine(
        BreakerConfig(reset_timeout=30, reset_timeout_multiplier=2.0, reset_timeout_max=100)
    )
    state = open_breaker(machine)
    cooldowns = [machine.cooldown(state)]
    for index in range(4):
        state, now = half_open(machine, state)
        state, granted = machine.acquire_probe(state, now, f"p{index}")
        assert granted
        state, transition = machine.record(state, FAIL, now + 1, f"p{index}")
        assert transition is not None
        assert (transition.from_state, transition.to_state) == ("half_open", "open")
        assert transition.reason == "probe failed"
        assert state.opened_at == now + 1
        assert state.reopen_count == index + 1
        assert machine.retry_at(state) == now + 1 + machine.cooldown(state)
        cooldowns.append(machine.cooldown(state))
    assert cooldowns == [30, 60, 100, 100, 100]

    # Closing resets the growth.
    state, now = half_open(machine, state)
    for _ in range(3):
        state, _ = machine.acquire_probe(state, now, "ok")
        state, _ = machine.record(state, OK, now, "ok")
        now += 1
    assert state.state == "closed"
    assert state.reopen_count == 0
    state = open_breaker(machine, now + 10)
    assert machine.cooldown(state) == 30


def test_constant_cooldown_without_multiplier() -> None:
    machine = BreakerMachine()
    state = open_breaker(machine)
    for _ in range(3):
        state, now = half_open(machine, state)
        state, _ = machine.acquire_probe(state, now, "p")
        state, _ = machine.record(state, FAIL, now, "p")
        assert machine.cooldown(state) == 30


def test_cooldown_does_not_overflow() -> None:
    machine = BreakerMachine(BreakerConfig(reset_timeout_multiplier=10.0, reset_timeout_max=900))
    state = BreakerState(state="open", opened_at=T0, reopen_count=COUNTER_CAP)
    assert machine.cooldown(state) == 900
    assert machine.retry_at(state) == T0 + 900


# -- closed → open triggers ---------------------------------------------------------------


def test_failure_rate_respects_minimum_calls() -> None:
    machine = BreakerMachine(BreakerConfig(consecutive_failures=0, minimum_calls=10))
    state, transitions = record_all(machine, BreakerState(), [FAIL] * 9, T0)
    assert state.state == "closed"
    assert transitions == []
    assert machine.window(state, T0 + 9).calls == 9

    state, transition = machine.record(state, FAIL, T0 + 9)
    assert state.state == "open"
    assert transition is not None
    assert transition.reason == "failure rate 100% over 10 calls in 60s"


def test_consecutive_failures_trip_below_minimum_calls() -> None:
    machine = BreakerMachine(BreakerConfig(consecutive_failures=5, minimum_calls=10))
    _, transitions = record_all(machine, BreakerState(), [FAIL] * 9, T0)
    assert [t.reason for t in transitions] == ["5 consecutive failures"]


def test_failure_rate_threshold_is_inclusive_and_mixed() -> None:
    machine = BreakerMachine(BreakerConfig(consecutive_failures=0, failure_rate_threshold=0.6))
    outcomes = [OK, FAIL, FAIL, OK, FAIL, OK, FAIL, OK, FAIL, OK, FAIL, FAIL]
    state, transitions = record_all(machine, BreakerState(), outcomes, T0)
    # 10th call: 5/10 = 50% < 60%; 11th: 6/11 = 55%; 12th: 7/12 = 58%: still closed.
    assert state.state == "closed"
    state, transition = machine.record(state, FAIL, T0 + 12)  # 8/13 = 62%
    assert transition is not None
    assert transition.reason == "failure rate 62% over 13 calls in 60s"


def test_successes_reset_consecutive_failures_and_ignored_does_not() -> None:
    machine = BreakerMachine()
    outcomes = [FAIL] * 4 + [IGNORED] + [OK] + [FAIL] * 4
    state, transitions = record_all(machine, BreakerState(), outcomes, T0)
    assert transitions == []
    assert state.consecutive_failures == 4
    state, transition = machine.record(state, IGNORED, T0 + 20)
    assert transition is None
    assert state.consecutive_failures == 4
    _, transition = machine.record(state, FAIL, T0 + 21)
    assert transition is not None
    assert transition.reason == "5 consecutive failures"


def test_window_slides_old_failures_age_out() -> None:
    config = BreakerConfig(consecutive_failures=0, minimum_calls=10, window_seconds=60)
    machine = BreakerMachine(config)
    # 9 failures in the 3-second bucket [999, 1002).
    state = BreakerState()
    for _ in range(9):
        state, transition = machine.record(state, FAIL, T0)
        assert transition is None
    assert machine.window(state, T0).calls == 9
    # Still inside the window 50 s later: a 10th failure trips it.
    tripped, transition = machine.record(state, FAIL, T0 + 50)
    assert transition is not None and tripped.state == "open"
    # 61 s later that bucket has aged out: the 10th failure is alone in the window.
    assert machine.window(state, T0 + 61).calls == 0
    state, transition = machine.record(state, FAIL, T0 + 61)
    assert transition is None
    assert state.state == "closed"
    assert machine.window(state, T0 + 61).calls == 1
    assert len(state.buckets) == 1


def test_window_edges_follow_bucket_boundaries() -> None:
    machine = BreakerMachine(BreakerConfig(window_seconds=60, window_buckets=20))
    state, _ = machine.record(BreakerState(), FAIL, 3.5)  # bucket [3, 6)
    assert state.buckets == ((3.0, 1, 1, 0),)
    # The window is the last 20 buckets, the current one included.
    assert machine.window(state, 62.9).calls == 1  # buckets [3, 63)
    assert machine.window(state, 63.0).calls == 0  # buckets [6, 66)


def test_window_stays_bounded_over_a_long_run() -> None:
    machine = BreakerMachine(BreakerConfig(consecutive_failures=0, failure_rate_threshold=1.0))
    state = BreakerState()
    for step in range(3_000):
        outcome = FAIL if step % 3 == 0 else OK
        state, transition = machine.record(state, outcome, T0 + step * 0.7)
        assert transition is None
        assert len(state.buckets) <= 20
    stats = machine.window(state, T0 + 2_999 * 0.7)
    assert 57 / 0.7 <= stats.calls <= 60 / 0.7 + 1
    assert len(json.dumps(state.to_dict())) < 1_000


def test_state_written_with_a_finer_window_is_cut_to_this_window() -> None:
    finer = BreakerMachine(BreakerConfig(window_buckets=40, consecutive_failures=0))
    state = BreakerState()
    for step in range(40):
        state, _ = finer.record(state, OK, step * 1.5)
    assert len(state.buckets) == 40
    machine = BreakerMachine(BreakerConfig(window_buckets=20, consecutive_failures=0))
    state, _ = machine.record(state, OK, 59.0)
    assert len(state.buckets) == 20
    assert json_round_trip(state) == state


def test_clock_behind_another_process_counts_into_the_newest_bucket() -> None:
    machine = BreakerMachine(BreakerConfig(consecutive_failures=0))
    state, _ = machine.record(BreakerState(), OK, T0 + 10)
    state, _ = machine.record(state, FAIL, T0)  # this process's clock is 10 s behind
    assert len(state.buckets) == 1
    assert state.buckets[0][1:] == (2, 1, 0)
    assert machine.window(state, T0).calls == 2


def test_opening_keeps_the_calls_that_opened_it_in_the_window() -> None:
    machine = BreakerMachine()
    state, _ = record_all(machine, BreakerState(), [OK, OK], T0 - 6)
    state, transitions = record_all(machine, state, [FAIL] * 5, T0 - 4)
    assert state.state == "open"
    assert [t.reason for t in transitions] == ["5 consecutive failures"]
    stats = machine.window(state, T0)
    assert (stats.calls, stats.failures) == (7, 5)
    assert stats.failure_rate == pytest.approx(5 / 7)
    # Kept through half-open (probes do not count in it), aged out like any call...
    probing, now = half_open(machine, state)
    assert machine.window(probing, now).calls == 7
    assert machine.window(probing, T0 + 61).calls == 0
    # ... and cleared when the breaker closes again.
    for index in range(3):
        probing, _ = machine.acquire_probe(probing, now, f"p{index}")
        probing, _ = machine.record(probing, OK, now, f"p{index}")
    assert probing.state == "closed"
    assert probing.buckets == ()


def test_a_rate_trip_and_forcing_open_keep_the_window() -> None:
    machine = BreakerMachine(BreakerConfig(consecutive_failures=0, minimum_calls=10))
    state, transitions = record_all(machine, BreakerState(), [OK, FAIL] * 5, T0)
    assert [t.reason for t in transitions] == ["failure rate 50% over 10 calls in 60s"]
    stats = machine.window(state, T0 + 9)
    assert (stats.calls, stats.failures, stats.failure_rate) == (10, 5, 0.5)
    closed, _ = record_all(machine, BreakerState(), [OK, FAIL, FAIL], T0)
    forced, _ = machine.force(closed, "forced_open", T0 + 3)
    assert machine.window(forced, T0 + 3) == machine.window(closed, T0 + 3)


def test_slow_calls_trip_when_enabled() -> None:
    config = BreakerConfig(
        consecutive_failures=0,
        minimum_calls=4,
        slow_call_seconds=1.0,
        slow_call_rate_threshold=0.75,
    )
    machine = BreakerMachine(config)
    slow = Outcome.success(1.5)
    exactly = Outcome.success(1.0)  # not slower than the threshold
    state, transitions = record_all(machine, BreakerState(), [slow, exactly, slow], T0)
    assert transitions == []
    assert machine.window(state, T0 + 3).slow == 2
    state, transition = machine.record(state, slow, T0 + 3)
    assert transition is not None
    assert transition.reason == "slow-call rate 75% over 4 calls in 60s (slower than 1s)"


def test_slow_calls_never_trip_by_default_and_failures_are_not_slow() -> None:
    machine = BreakerMachine(BreakerConfig(consecutive_failures=0))
    state, transitions = record_all(machine, BreakerState(), [Outcome.success(60.0)] * 50, T0)
    assert transitions == []
    assert machine.window(state, T0 + 50).slow == 50
    state, _ = machine.record(BreakerState(), Outcome.failure(60.0), T0)
    assert machine.window(state, T0).slow == 0


def test_slow_probe_reopens_when_slow_trigger_enabled() -> None:
    config = BreakerConfig(slow_call_seconds=1.0, slow_call_rate_threshold=0.5)
    machine = BreakerMachine(config)
    state, now = half_open(machine, open_breaker(machine))
    state, _ = machine.acquire_probe(state, now, "p")
    state, transition = machine.record(state, Outcome.success(2.0), now + 2, "p")
    assert state.state == "open"
    assert transition is not None and transition.reason == "probe slow (2s > 1s)"

    default = BreakerMachine()
    state, now = half_open(default, open_breaker(default))
    state, _ = default.acquire_probe(state, now, "p")
    state, _ = default.record(state, Outcome.success(14.0), now + 14, "p")
    assert state.half_open_successes == 1


# -- half-open probes ---------------------------------------------------------------------


def test_half_open_never_admits_more_than_max_probes() -> None:
    machine = BreakerMachine(BreakerConfig(half_open_max_calls=2, probe_lease_seconds=15))
    state, now = half_open(machine, open_breaker(machine))
    state, first = machine.acquire_probe(state, now, "a")
    state, second = machine.acquire_probe(state, now + 1, "b")
    after, third = machine.acquire_probe(state, now + 2, "c")
    assert (first, second, third) == (True, True, False)
    assert after is state
    decision = machine.decide(state, now + 2)
    assert not decision.allowed
    assert decision.probe_required
    assert decision.retry_at == now + 15  # when the oldest lease expires

    # A finished probe frees its slot.
    state, transition = machine.record(state, OK, now + 3, "a")
    assert transition is None
    assert machine.decide(state, now + 3).allowed
    state, granted = machine.acquire_probe(state, now + 3, "c")
    assert granted
    assert [probe_id for probe_id, _ in state.probes] == ["b", "c"]


def test_lost_probe_lease_expires_and_frees_its_slot() -> None:
    machine = BreakerMachine(BreakerConfig(probe_lease_seconds=15))
    state, now = half_open(machine, open_breaker(machine))
    state, granted = machine.acquire_probe(state, now, "hung")
    assert granted
    assert not machine.decide(state, now + 14.9).allowed
    _, granted = machine.acquire_probe(state, now + 14.9, "other")
    assert not granted

    assert machine.decide(state, now + 15).allowed
    # Its report after the lease ran out counts for nothing, even while still stored.
    for outcome in (OK, FAIL, IGNORED):
        assert machine.record(state, outcome, now + 15, "hung") == (state, None)
    state, granted = machine.acquire_probe(state, now + 15, "other")
    assert granted
    assert state.probes == (("other", now + 30),)

    # The hung probe finally reports: its lease is gone, so it counts for nothing.
    later, transition = machine.record(state, FAIL, now + 16, "hung")
    assert later is state
    assert transition is None


def test_reacquiring_a_live_lease_renews_it() -> None:
    machine = BreakerMachine()
    state, now = half_open(machine, open_breaker(machine))
    state, _ = machine.acquire_probe(state, now, "p")
    state, granted = machine.acquire_probe(state, now + 10, "p")
    assert granted
    assert state.probes == (("p", now + 25),)


def test_acquire_probe_only_in_half_open_auto() -> None:
    machine = BreakerMachine()
    closed = BreakerState()
    assert machine.acquire_probe(closed, T0, "p") == (closed, False)
    opened = open_breaker(machine)
    # Even after the cooldown: decide() makes the open → half-open transition, not this.
    assert machine.acquire_probe(opened, T0 + 1_000, "p") == (opened, False)
    with pytest.raises(ValueError, match="probe_id"):
        machine.acquire_probe(opened, T0, "")


def test_ignored_probe_frees_the_slot_without_counting() -> None:
    machine = BreakerMachine()
    state, now = half_open(machine, open_breaker(machine))
    state, _ = machine.acquire_probe(state, now, "p")
    state, transition = machine.record(state, IGNORED, now + 1, "p")
    assert transition is None
    assert state.state == "half_open"
    assert state.half_open_successes == 0
    assert state.probes == ()
    assert machine.decide(state, now + 1).allowed


# -- ignored and late outcomes ------------------------------------------------------------


def test_ignored_outcomes_count_as_neither_and_change_nothing_while_closed() -> None:
    machine = BreakerMachine(BreakerConfig(consecutive_failures=2, minimum_calls=1))
    state = BreakerState()
    for index in range(100):
        after, transition = machine.record(state, IGNORED, T0 + index)
        assert after is state
        assert transition is None
    assert machine.window(state, T0 + 100).calls == 0


def test_late_outcomes_while_open_are_ignored() -> None:
    machine = BreakerMachine()
    state = open_breaker(machine)
    for outcome in (OK, FAIL, IGNORED, Outcome.success(100.0)):
        for probe_id in (None, "stale-probe"):
            after, transition = machine.record(state, outcome, T0 + 5, probe_id)
            assert after is state
            assert transition is None
    # In particular a late failure does not push the cooldown back.
    assert machine.retry_at(state) == T0 + 30


def test_non_probe_outcomes_while_half_open_are_ignored() -> None:
    machine = BreakerMachine()
    state, now = half_open(machine, open_breaker(machine))
    state, _ = machine.acquire_probe(state, now, "p")
    for outcome in (OK, FAIL, IGNORED):
        for probe_id in (None, "unknown"):
            after, transition = machine.record(state, outcome, now + 1, probe_id)
            assert after is state
            assert transition is None


def test_probe_outcome_after_reopen_is_ignored_and_while_closed_is_counted() -> None:
    machine = BreakerMachine(BreakerConfig(half_open_max_calls=2))
    state, now = half_open(machine, open_breaker(machine))
    state, _ = machine.acquire_probe(state, now, "a")
    state, _ = machine.acquire_probe(state, now, "b")
    state, _ = machine.record(state, FAIL, now + 1, "a")
    assert state.state == "open"
    after, transition = machine.record(state, OK, now + 2, "b")
    assert after is state and transition is None

    machine = BreakerMachine(BreakerConfig(half_open_max_calls=2, success_threshold=1))
    state, now = half_open(machine, open_breaker(machine))
    state, _ = machine.acquire_probe(state, now, "a")
    state, _ = machine.acquire_probe(state, now, "b")
    state, _ = machine.record(state, OK, now + 1, "a")
    assert state.state == "closed"
    state, _ = machine.record(state, FAIL, now + 2, "b")
    assert state.state == "closed"
    assert state.consecutive_failures == 1
    assert machine.window(state, now + 2).failures == 1


# -- forced modes -------------------------------------------------------------------------


def test_forced_open_refuses_everything_until_auto() -> None:
    machine = BreakerMachine()
    state, transition = machine.force(BreakerState(), "forced_open", T0)
    assert transition == Transition("closed", "open", "forced open", T0, "auto", "forced_open")
    assert (state.state, state.mode, state.opened_at) == ("open", "forced_open", T0)
    for now in (T0, T0 + 30, T0 + 10_000):
        decision = machine.decide(state, now)
        assert decision == Decision(allowed=False, probe_required=False, state=state)
    assert machine.retry_at(state) is None
    assert machine.record(state, FAIL, T0 + 1) == (state, None)
    assert machine.record(state, OK, T0 + 1, "p") == (state, None)
    assert machine.acquire_probe(state, T0 + 1, "p") == (state, False)
    assert machine.force(state, "forced_open", T0 + 2) == (state, None)

    state, transition = machine.force(state, "auto", T0 + 3)
    assert transition is not None
    assert transition.reason == "automatic mode restored"
    assert (transition.from_mode, transition.to_mode) == ("forced_open", "auto")
    assert state == replace(BreakerState(), version=state.version)


@pytest.mark.parametrize("mode", ["forced_closed", "disabled"])
def test_forced_closed_and_disabled_allow_everything_and_never_trip(mode: Mode) -> None:
    machine = BreakerMachine()
    opened = open_breaker(machine)
    state, transition = machine.force(opened, mode, T0 + 1)
    assert transition is not None
    assert (transition.from_state, transition.to_state, transition.to_mode) == (
        "open",
        "closed",
        mode,
    )
    assert state.opened_at is None
    state, transitions = record_all(machine, state, [FAIL] * 100, T0 + 2)
    assert transitions == []
    assert state.state == "closed"
    assert state.consecutive_failures == 100
    assert machine.window(state, T0 + 101).failures >= 50
    assert machine.decide(state, T0 + 102).allowed
    assert not machine.decide(state, T0 + 102).probe_required
    assert machine.force(state, mode, T0 + 103) == (state, None)

    state, transition = machine.force(state, "auto", T0 + 104)
    assert transition is not None
    assert state.consecutive_failures == 0
    assert state.buckets == ()


def test_forcing_auto_on_an_auto_breaker_resets_it() -> None:
    machine = BreakerMachine()
    state, transition = machine.force(open_breaker(machine), "auto", T0 + 1)
    assert transition is not None
    assert (transition.from_state, transition.to_state, transition.reason) == (
        "open",
        "closed",
        "reset",
    )
    # A closed breaker's counters are cleared without a transition; a clean one is unchanged.
    dirty, _ = machine.record(BreakerState(), FAIL, T0)
    cleared, transition = machine.force(dirty, "auto", T0)
    assert transition is None
    assert cleared.version == dirty.version + 1
    assert cleared.consecutive_failures == 0
    assert machine.force(cleared, "auto", T0) == (cleared, None)


def test_force_refuses_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        BreakerMachine().force(BreakerState(), "sideways", T0)  # type: ignore[arg-type]


# -- version ------------------------------------------------------------------------------


def test_version_increments_on_every_change_and_only_on_change() -> None:
    machine = BreakerMachine()
    state = BreakerState()
    assert state.version == 0
    decision = machine.decide(state, T0)
    assert decision.state is state
    state, _ = machine.record(state, OK, T0)
    assert state.version == 1
    state, _ = machine.record(state, FAIL, T0)
    assert state.version == 2
    same, _ = machine.record(state, IGNORED, T0)
    assert same is state
    state = open_breaker(machine)
    assert state.version == 5
    assert machine.decide(state, T0 + 1).state.version == 5
    state, now = half_open(machine, state)
    assert state.version == 6
    state, _ = machine.acquire_probe(state, now, "p")
    assert state.version == 7
    state, _ = machine.record(state, OK, now, "p")
    assert state.version == 8


# -- serialisation ------------------------------------------------------------------------


def test_json_round_trip_of_every_kind_of_state() -> None:
    machine = BreakerMachine(BreakerConfig(half_open_max_calls=3))
    closed, _ = record_all(machine, BreakerState(), [OK, FAIL, Outcome.success(9.0)], T0)
    opened = open_breaker(machine)
    probing, now = half_open(machine, opened)
    probing, _ = machine.acquire_probe(probing, now, "a")
    probing, _ = machine.acquire_probe(probing, now + 0.1, "b")
    probing, _ = machine.record(probing, OK, now + 0.2, "a")
    forced, _ = machine.force(opened, "forced_open", T0 + 0.123456789)
    for state in (BreakerState(), closed, opened, probing, forced):
        data = state.to_dict()
        assert json.loads(json.dumps(data)) == data
        assert json_round_trip(state) == state
    assert closed.to_dict()["buckets"] == [[999.0, 2, 1, 0], [1002.0, 1, 0, 1]]
    assert probing.to_dict()["probes"] == [["b", now + 15.1]]


def test_from_dict_tolerates_unknown_and_missing_keys() -> None:
    assert BreakerState.from_dict({}) == BreakerState()
    state = BreakerState.from_dict(
        {"state": "open", "opened_at": 12, "version": 7, "future_field": [1, 2], "note": None}
    )
    assert state == BreakerState(state="open", opened_at=12.0, version=7)
    assert isinstance(state.opened_at, float)


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        "closed",
        {"state": "ajar"},
        {"state": None},
        {"mode": "manual"},
        {"state": "open"},  # open without opened_at
        {"opened_at": 5.0},  # closed with opened_at
        {"state": "open", "opened_at": "yesterday"},
        {"state": "open", "opened_at": math.nan},
        {"reopen_count": -1},
        {"reopen_count": True},
        {"reopen_count": 1.5},
        {"consecutive_failures": "3"},
        {"consecutive_failures": COUNTER_CAP + 1},
        {"half_open_successes": 1},  # outside half-open
        {"version": -1},
        {"version": None},
        {"mode": "forced_open"},  # forced open but closed
        {"mode": "disabled", "state": "open", "opened_at": 1.0},
        {"probes": [["p", 1.0]]},  # probes outside half-open
        {"state": "half_open", "opened_at": 1.0, "probes": "p"},
        {"state": "half_open", "opened_at": 1.0, "probes": [["p"]]},
        {"state": "half_open", "opened_at": 1.0, "probes": [["", 1.0]]},
        {"state": "half_open", "opened_at": 1.0, "probes": [[3, 1.0]]},
        {"state": "half_open", "opened_at": 1.0, "probes": [["p", 1.0], ["p", 2.0]]},
        {"state": "half_open", "opened_at": 1.0, "probes": [["p" * 201, 1.0]]},
        {"buckets": {"0": [1, 1, 0]}},
        {"buckets": [[0.0, 1, 1]]},
        {"buckets": [[0.0, 1, 2, 0]]},  # more failures than calls
        {"buckets": [[0.0, 2, 1, 2]]},  # failures + slow > calls
        {"buckets": [[3.0, 1, 0, 0], [0.0, 1, 0, 0]]},  # not increasing
        {"buckets": [[math.inf, 1, 0, 0]]},
        {"buckets": [[0.0, -1, 0, 0]]},
        {"buckets": [[0.0, 1, 0, 0]] * 1001},
    ],
)
def test_from_dict_refuses_garbage(data: Any) -> None:
    with pytest.raises(ValueError):
        BreakerState.from_dict(data)


def test_outcome_and_clock_validation() -> None:
    with pytest.raises(ValueError, match="duration"):
        Outcome.success(-1.0)
    with pytest.raises(ValueError, match="duration"):
        Outcome.failure(math.nan)
    with pytest.raises(ValueError, match="kind"):
        Outcome("maybe")  # type: ignore[arg-type]
    machine = BreakerMachine()
    for bad in (math.nan, math.inf, 1e13):
        with pytest.raises(ValueError, match="now"):
            machine.decide(BreakerState(), bad)
        with pytest.raises(ValueError, match="now"):
            machine.record(BreakerState(), OK, bad)


# -- merging collected outcomes -----------------------------------------------------------

KINDS = {
    "ok": Outcome.success(0.01),
    "slow": Outcome.success(9.0),
    "fail": Outcome.failure(0.01),
    "ignored": Outcome.ignored(0.01),
}


def _strip(state: BreakerState) -> BreakerState:
    return replace(state, version=0)


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.lists(st.sampled_from(sorted(KINDS)), max_size=30),
    outcomes=st.lists(
        st.tuples(
            st.sampled_from(["ok", "ok", "ok", "ok", "slow", "fail", "ignored"]),
            st.sampled_from([0.0, 0.0, 0.01, 0.3, 1.7, 4.0, 25.0]),
        ),
        max_size=80,
    ),
    minimum_calls=st.integers(1, 15),
    consecutive=st.integers(0, 6),
    slow_threshold=st.sampled_from([1.0, 0.5, 0.3]),
    rate=st.sampled_from([0.2, 0.5, 1.0]),
)
def test_record_many_equals_recording_one_by_one(
    prefix: list[str],
    outcomes: list[tuple[str, float]],
    minimum_calls: int,
    consecutive: int,
    slow_threshold: float,
    rate: float,
) -> None:
    config = BreakerConfig(
        window_seconds=20,
        window_buckets=5,
        minimum_calls=minimum_calls,
        consecutive_failures=consecutive,
        slow_call_seconds=1.0,
        slow_call_rate_threshold=slow_threshold,
        failure_rate_threshold=rate,
    )
    machine = BreakerMachine(config)
    state = BreakerState()
    now = 1_000.0
    for kind in prefix:  # some history in the window, maybe open already
        state, _ = machine.record(state, KINDS[kind], now)
        now += 0.7
    timed = []
    for kind, step in outcomes:
        now += step
        timed.append((KINDS[kind], now))

    expected, transitions = state, []
    for outcome, at in timed:
        expected, transition = machine.record(expected, outcome, at)
        if transition is not None:
            transitions.append(transition)
    merged, merged_transitions = machine.record_many(state, timed)

    assert _strip(merged) == _strip(expected)
    assert merged_transitions == transitions
    assert (merged.version == state.version) == (expected.version == state.version)


# -- properties ---------------------------------------------------------------------------

configs = st.builds(
    BreakerConfig,
    failure_rate_threshold=st.sampled_from([0.25, 0.5, 1.0]),
    window_seconds=st.sampled_from([1.0, 10.0, 60.0]),
    window_buckets=st.integers(1, 12),
    minimum_calls=st.integers(1, 6),
    consecutive_failures=st.integers(0, 4),
    slow_call_seconds=st.just(1.0),
    slow_call_rate_threshold=st.sampled_from([0.5, 1.0]),
    reset_timeout=st.sampled_from([1.0, 5.0]),
    reset_timeout_multiplier=st.sampled_from([1.0, 2.0, 3.5]),
    reset_timeout_max=st.just(40.0),
    half_open_max_calls=st.integers(1, 3),
    probe_lease_seconds=st.sampled_from([0.5, 3.0, 20.0]),
    success_threshold=st.integers(1, 3),
)
outcomes = st.builds(
    Outcome,
    kind=st.sampled_from(["failure", "failure", "success", "success", "ignored"]),
    duration=st.sampled_from([0.0, 0.5, 2.0]),
)
deltas = st.one_of(
    st.sampled_from([0.0, 0.0, 0.25, 1.0, 3.0]),
    st.floats(-2.0, 50.0, allow_nan=False),
    st.just(500.0),
)
operations = st.sampled_from(
    ["decide"] * 6 + ["acquire"] * 3 + ["burst"] * 2 + ["record"] * 8 + ["probe"] * 6 + ["force"]
)
modes = st.sampled_from(MODES)


def check_invariants(machine: BreakerMachine, state: BreakerState, latest: float) -> None:
    """Invariants of every reachable state; ``latest`` is the latest clock reading so far."""
    config = machine.config
    assert state.state in STATES
    assert len(state.probes) <= config.half_open_max_calls
    assert len({probe_id for probe_id, _ in state.probes}) == len(state.probes)
    assert all(expiry <= latest + config.probe_lease_seconds for _, expiry in state.probes)
    if state.state != "half_open":
        assert state.probes == ()
        assert state.half_open_successes == 0
    assert state.half_open_successes < config.success_threshold
    assert len(state.buckets) <= config.window_buckets
    assert (state.opened_at is None) == (state.state == "closed")
    if state.mode == "auto" and state.state == "closed" and config.consecutive_failures:
        assert state.consecutive_failures < config.consecutive_failures
    for value in (state.reopen_count, state.consecutive_failures, state.half_open_successes):
        assert 0 <= value <= COUNTER_CAP
    # Size bound independent of history (the version's digits aside).
    data = state.to_dict()
    data["version"] = 0
    assert len(json.dumps(data)) <= 400 + 60 * config.window_buckets + 40 * (
        config.half_open_max_calls
    )
    assert json_round_trip(state) == state
    assert machine.cooldown(state) <= config.reset_timeout_max


def check_step(
    old: BreakerState, new: BreakerState, transition: Transition | None, now: float
) -> None:
    """One call's contract: version + 1 exactly on change; a transition exactly on a move."""
    changed = replace(new, version=old.version) != old
    assert new.version == old.version + int(changed)
    if not changed:
        assert new is old
    moved = (new.state, new.mode) != (old.state, old.mode)
    assert (transition is not None) == moved
    if transition is not None:
        assert (transition.from_state, transition.to_state) == (old.state, new.state)
        assert (transition.from_mode, transition.to_mode) == (old.mode, new.mode)
        assert transition.at == now
        assert transition.reason


@settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    config=configs,
    start=st.floats(0.0, 1e9),
    length=st.integers(0, 60),
    data=st.data(),
)
def test_random_sequences_keep_invariants(
    config: BreakerConfig, start: float, length: int, data: st.DataObject
) -> None:
    machine = BreakerMachine(config)
    state = BreakerState()
    now = latest = start
    issued = 0

    def decide() -> Decision:
        nonlocal state
        old = state
        decision = machine.decide(old, now)
        check_step(old, decision.state, decision.transition, now)
        state = decision.state
        if old.mode == "forced_open":
            assert not decision.allowed and decision.retry_at is None
        if old.mode in ("forced_closed", "disabled"):
            assert decision.allowed and not decision.probe_required
        if old.mode == "auto" and old.state == "closed":
            assert decision.allowed and state is old
        if old.state == "open" and old.mode == "auto":
            due = machine.retry_at(old)
            assert due is not None
            assert (state.state == "half_open") == (now >= due)
            if now < due:
                assert decision.retry_at == due and not decision.allowed
        if decision.allowed and decision.probe_required:
            live = [probe for probe in state.probes if probe[1] > now]
            assert len(live) < config.half_open_max_calls
        if state.state != old.state:
            assert (old.state, state.state) == ("open", "half_open")
        return decision

    def acquire(probe_id: str) -> bool:
        nonlocal state
        old = state
        state, granted = machine.acquire_probe(old, now, probe_id)
        check_step(old, state, None, now)
        if granted:
            assert state.state == "half_open"
            assert (probe_id, now + config.probe_lease_seconds) in state.probes
        return granted

    def record(outcome: Outcome, probe_id: str | None) -> None:
        nonlocal state
        old = state
        live = any(pid == probe_id and expiry > now for pid, expiry in old.probes)
        state, transition = machine.record(old, outcome, now, probe_id)
        check_step(old, state, transition, now)
        if outcome.kind == "ignored":
            assert state.state == old.state
            assert state.consecutive_failures == old.consecutive_failures
            assert state.buckets == old.buckets
            assert state.half_open_successes == old.half_open_successes
        if old.state == "open" or (old.state == "half_open" and not live):
            assert state is old
        if old.state == "half_open" and live:
            assert all(pid != probe_id for pid, _ in state.probes)
            if outcome.kind == "failure":
                assert state.state == "open"
                assert state.reopen_count == old.reopen_count + 1
                assert machine.cooldown(state) >= machine.cooldown(old)
            if outcome.kind == "success" and not config.slow_call_trigger_enabled:
                successes = old.half_open_successes + 1
                if successes >= config.success_threshold:
                    assert state.state == "closed" and state.reopen_count == 0
                else:
                    assert state.half_open_successes == successes
        if state.mode == "auto" and state.state == "closed" and old.state == "closed":
            stats = machine.window(state, now)
            if stats.calls >= config.minimum_calls:
                assert stats.failure_rate < config.failure_rate_threshold
                if config.slow_call_trigger_enabled:
                    assert stats.slow_rate < config.slow_call_rate_threshold

    def force(mode: Mode) -> None:
        nonlocal state
        old = state
        state, transition = machine.force(old, mode, now)
        check_step(old, state, transition, now)
        assert state.mode == mode
        if mode == "auto":
            assert state.state == "closed" and state.buckets == ()

    for _ in range(length):
        now += data.draw(deltas)
        latest = max(latest, now)
        operation = data.draw(operations)
        if operation == "decide":
            decide()
        elif operation == "probe":
            # What a caller does: decide, take a slot if needed, call, report with its id
            # (now, or later through "record" while other probes start meanwhile).
            decision = decide()
            if decision.allowed and decision.probe_required:
                issued += 1
                probe_id = f"p{issued}"
                if acquire(probe_id) and data.draw(st.booleans()):
                    record(data.draw(outcomes), probe_id)
        elif operation == "burst":
            # Several callers race for probe slots at the same instant.
            free = config.half_open_max_calls - sum(1 for _, exp in state.probes if exp > now)
            probing = state.state == "half_open" and state.mode == "auto"
            callers = data.draw(st.integers(1, 4))
            granted = 0
            for _ in range(callers):
                issued += 1
                granted += acquire(f"p{issued}")
            # Exactly the free slots are handed out: never more, and a free slot is never refused.
            assert granted == (min(callers, free) if probing else 0)
            assert sum(1 for _, exp in state.probes if exp > now) <= config.half_open_max_calls
        elif operation == "acquire":
            issued += 1
            acquire(data.draw(st.sampled_from([f"p{issued}", f"p{issued - 1}"])))
        elif operation == "record":
            # Mostly the id of a stored probe (live or not), sometimes none or a stranger's.
            known = [probe_id for probe_id, _ in state.probes]
            record(data.draw(outcomes), data.draw(st.sampled_from([*known, *known, None, "zz"])))
        else:
            force(data.draw(modes))
        check_invariants(machine, state, latest)


@settings(max_examples=50, deadline=None, database=None)
@given(
    failures=st.integers(0, 4),
    config=st.builds(BreakerConfig, success_threshold=st.integers(1, 4)),
)
def test_a_probe_is_admitted_exactly_when_the_cooldown_elapses(
    failures: int, config: BreakerConfig
) -> None:
    machine = BreakerMachine(config)
    state = open_breaker(machine)
    for index in range(failures):  # grow the cooldown
        state, now = half_open(machine, state)
        state, _ = machine.acquire_probe(state, now, f"p{index}")
        state, _ = machine.record(state, FAIL, now, f"p{index}")
    due = machine.retry_at(state)
    assert due is not None
    assert not machine.decide(state, math.nextafter(due, -math.inf)).allowed
    assert machine.decide(state, due).allowed

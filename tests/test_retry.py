"""The pure retry policy: full jitter, give-up rules, classification."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from django_cio_reliable.exceptions import DeliveryError
from django_cio_reliable.retry import (
    AUTH_PAUSE_SECONDS,
    DEFAULT_RATE_LIMIT_PAUSE,
    MAX_PAUSE_SECONDS,
    RetryPolicy,
    classify,
    pause_seconds,
)


def test_ceiling_doubles_up_to_the_cap() -> None:
    policy = RetryPolicy(base=1, cap=30, max_attempts=10, max_age=100)
    assert [policy.ceiling(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert policy.ceiling(10_000) == 30


@settings(max_examples=200, deadline=None)
@given(attempt=st.integers(min_value=1, max_value=200), seed=st.integers())
def test_full_jitter_stays_within_zero_and_the_ceiling(attempt: int, seed: int) -> None:
    policy = RetryPolicy(base=0.5, cap=600, max_attempts=25, max_age=3600)
    delay = policy.backoff(attempt, random.Random(seed))
    assert 0 <= delay <= policy.ceiling(attempt)


def test_full_jitter_spreads_over_the_whole_range() -> None:
    policy = RetryPolicy(base=1, cap=1000)
    rng = random.Random(42)
    delays = [policy.backoff(5, rng) for _ in range(2000)]
    # random(0, 16): the lower and the upper quarter must both be hit (not a fixed delay).
    assert min(delays) < 4
    assert max(delays) > 12


def test_exhausted_by_attempts_or_age() -> None:
    policy = RetryPolicy(base=1, cap=10, max_attempts=3, max_age=60)
    assert not policy.exhausted(2, 59)
    assert policy.exhausted(3, 0)
    assert policy.exhausted(0, 60)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"base": 0}, "base"),
        ({"cap": 0.1}, "cap"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_age": 0}, "max_age"),
    ],
)
def test_invalid_policy_names_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "action"),
    [
        ("transient", "retry"),
        ("timeout", "retry"),
        ("network", "retry"),
        ("rate_limited", "pause_rate_limited"),
        ("auth", "pause_auth"),
        ("permanent", "dead"),
    ],
)
def test_classify(kind: str, action: str) -> None:
    assert classify(DeliveryError(kind, "x")) == action  # type: ignore[arg-type]


def test_pause_seconds_is_clamped() -> None:
    assert pause_seconds(DeliveryError("rate_limited", "x", retry_after=12)) == 12
    assert pause_seconds(DeliveryError("rate_limited", "x")) == DEFAULT_RATE_LIMIT_PAUSE
    assert pause_seconds(DeliveryError("rate_limited", "x", retry_after=-1)) == (
        DEFAULT_RATE_LIMIT_PAUSE
    )
    assert pause_seconds(DeliveryError("rate_limited", "x", retry_after=float("nan"))) == (
        DEFAULT_RATE_LIMIT_PAUSE
    )
    assert pause_seconds(DeliveryError("rate_limited", "x", retry_after=1e309)) == (
        MAX_PAUSE_SECONDS
    )
    assert pause_seconds(DeliveryError("auth", "x", status=401)) == AUTH_PAUSE_SECONDS


def test_policy_from_settings(settings: object) -> None:
    settings.CIO_RELIABLE = {"RETRY_BASE": 2, "RETRY_CAP": 8, "MAX_ATTEMPTS": 4, "MAX_AGE": 9}  # type: ignore[attr-defined]
    assert RetryPolicy.from_settings() == RetryPolicy(base=2, cap=8, max_attempts=4, max_age=9)

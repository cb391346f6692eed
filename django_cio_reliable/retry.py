"""Retry policy: full-jitter backoff, give-up rules and error classification.

Pure: no clock, no settings, no I/O. Callers pass the attempt number, the operation's age
and a random source; :meth:`RetryPolicy.from_settings` builds the policy from ``CIO_RELIABLE``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from django_cio_reliable.exceptions import DeliveryError

Action = Literal["retry", "pause_rate_limited", "pause_auth", "dead"]

#: Retry-After values above this are clamped (a hostile or broken server cannot park us).
MAX_PAUSE_SECONDS = 3600.0
#: Pause used after a 429 that carries no usable Retry-After.
DEFAULT_RATE_LIMIT_PAUSE = 1.0
#: Pause used after a 401/403: delivery waits this long before trying the credentials again.
AUTH_PAUSE_SECONDS = 60.0


@dataclass(frozen=True)
class RetryPolicy:
    """When and how often a failed operation is tried again.

    Attributes:
        base: Backoff base in seconds.
        cap: Largest backoff in seconds.
        max_attempts: Attempts after which an operation is dead-lettered.
        max_age: Seconds after creation after which an operation is dead-lettered.
    """

    base: float = 1.0
    cap: float = 900.0
    max_attempts: int = 25
    max_age: float = 3 * 24 * 3600.0

    def __post_init__(self) -> None:
        if self.base <= 0:
            raise ValueError(f"base must be > 0, got {self.base}")
        if self.cap < self.base:
            raise ValueError(f"cap must be >= base ({self.base}), got {self.cap}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.max_age <= 0:
            raise ValueError(f"max_age must be > 0, got {self.max_age}")

    @classmethod
    def from_settings(cls) -> RetryPolicy:
        """Build the policy from ``CIO_RELIABLE``."""
        from django_cio_reliable.conf import app_settings

        return cls(
            base=app_settings.RETRY_BASE,
            cap=app_settings.RETRY_CAP,
            max_attempts=app_settings.MAX_ATTEMPTS,
            max_age=app_settings.MAX_AGE,
        )

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the backoff after ``attempt`` failed attempts (1-based)."""
        exponent = max(0, attempt - 1)
        if exponent >= 64:
            return self.cap
        return float(min(self.cap, self.base * (2**exponent)))

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full jitter: ``random(0, min(cap, base * 2 ** (attempt - 1)))`` seconds."""
        source = rng if rng is not None else _random
        return source.uniform(0.0, self.ceiling(attempt))

    def exhausted(self, attempts: int, age: float) -> bool:
        """Whether an operation with ``attempts`` made and ``age`` seconds must die now."""
        return attempts >= self.max_attempts or age >= self.max_age


_random = random.SystemRandom()


def classify(error: DeliveryError) -> Action:
    """What the drain does with an operation that failed with ``error``."""
    if error.kind == "rate_limited":
        return "pause_rate_limited"
    if error.kind == "auth":
        return "pause_auth"
    if error.kind == "permanent":
        return "dead"
    return "retry"


def pause_seconds(error: DeliveryError) -> float:
    """How long every worker pauses after ``error`` (429 or 401/403), clamped."""
    if error.kind == "auth":
        return AUTH_PAUSE_SECONDS
    value = error.retry_after
    if value is None or value != value or value < 0:
        return DEFAULT_RATE_LIMIT_PAUSE
    return min(float(value), MAX_PAUSE_SECONDS)

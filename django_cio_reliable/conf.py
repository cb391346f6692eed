"""Settings for django-cio-reliable.

Everything is read from one ``CIO_RELIABLE`` dict in the Django settings, on every access,
so ``override_settings`` works in tests. Every default lives in :data:`DEFAULTS`. Values are
not validated here: the system checks in :mod:`django_cio_reliable.checks` do that once at
start-up, with stable ids.

Objects built from settings (HTTP clients, caches, limiters) register a reset callback with
:func:`on_reset`; a ``setting_changed`` receiver calls them when ``CIO_RELIABLE`` changes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Final, Literal, cast

from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.dispatch import receiver

SETTING_NAME: Final = "CIO_RELIABLE"

REGION_HOSTS: Final[dict[str, str]] = {
    "us": "https://track.customer.io",
    "eu": "https://track-eu.customer.io",
}

#: Every setting and its default. Durations are in seconds.
DEFAULTS: Final[dict[str, Any]] = {
    # Credentials and destination.
    "SITE_ID": "",
    "API_KEY": "",
    "API_KEY_ENV": "CIO_API_KEY",
    "REGION": "us",
    "TRACK_URL": None,
    # Delivery modes.
    "DELIVERY": "outbox",
    "DISPATCH": "task",
    # HTTP.
    "TIMEOUT": 10.0,
    "CONNECT_TIMEOUT": 3.05,
    "MAX_ERROR_BODY_BYTES": 65536,
    # Retries.
    "MAX_ATTEMPTS": 25,
    "MAX_AGE": 3 * 24 * 3600,
    "RETRY_BASE": 1.0,
    "RETRY_CAP": 15 * 60,
    "DIRECT_ATTEMPTS": 2,
    # Rate limit for the whole deployment, requests per second.
    "RATE_LIMIT": 100.0,
    # Draining.
    "BATCH": True,
    "BATCH_SIZE": 100,
    "BATCH_MAX_BYTES": 450_000,
    "CLAIM_SIZE": 200,
    "LEASE_SECONDS": 120,
    "DRAIN_MAX_SECONDS": None,
    "DRAIN_SCHEDULE_MINUTES": 1,
    "KICK_DEBOUNCE": 1.0,
    "DRAIN_LINGER": 10.0,
    # Idempotency.
    "IDEMPOTENCY_TTL": 10 * 24 * 3600,
    "IDEMPOTENCY_CACHE_SIZE": 10_000,
    "REPLAY_WINDOW": 7 * 24 * 3600,
    # Retention.
    "RETAIN_DELIVERED": 7 * 24 * 3600,
    "RETAIN_DEAD": 30 * 24 * 3600,
    "SCRUB_DELIVERED": True,
    "PURGE_BATCH_SIZE": 1000,
    # Shared state (breaker cache, rate limiter, pauses).
    "CACHE_ALIAS": None,
    # Model hooks declared in settings (docs/hooks.md).
    "HOOKS": [],
    # Circuit breaker: one per destination, shared by every process (docs/breaker.md).
    "BREAKER_FAILURE_RATE_THRESHOLD": 0.5,
    "BREAKER_WINDOW_SECONDS": 60.0,
    "BREAKER_MINIMUM_CALLS": 10,
    "BREAKER_CONSECUTIVE_FAILURES": 5,
    "BREAKER_SLOW_CALL_SECONDS": 5.0,
    "BREAKER_SLOW_CALL_RATE_THRESHOLD": 1.0,
    "BREAKER_RESET_TIMEOUT": 30.0,
    "BREAKER_RESET_TIMEOUT_MULTIPLIER": 2.0,
    "BREAKER_RESET_TIMEOUT_MAX": 300.0,
    "BREAKER_HALF_OPEN_MAX_CALLS": 1,
    "BREAKER_PROBE_LEASE_SECONDS": None,
    "BREAKER_SUCCESS_THRESHOLD": 3,
    "BREAKER_CACHE_SECONDS": 1.0,
}

#: Seconds added to ``TIMEOUT + CONNECT_TIMEOUT`` for the default probe lease of the breaker.
PROBE_LEASE_MARGIN: Final = 5.0

Delivery = Literal["outbox", "direct"]
Dispatch = Literal["task", "inline"]

_reset_callbacks: list[Callable[[], None]] = []


def on_reset(callback: Callable[[], None]) -> Callable[[], None]:
    """Register ``callback`` to run whenever ``CIO_RELIABLE`` changes.

    Usable as a decorator; returns ``callback`` unchanged.
    """
    _reset_callbacks.append(callback)
    return callback


def reset() -> None:
    """Drop everything that was built from settings."""
    for callback in list(_reset_callbacks):
        callback()


@receiver(setting_changed)
def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTING_NAME:
        reset()


def user_settings() -> dict[str, Any]:
    """Return the user's ``CIO_RELIABLE`` dict (empty when it is not set)."""
    value = getattr(django_settings, SETTING_NAME, None)
    if value is None:
        return {}
    if not isinstance(value, dict):
        return {}
    return value


class Settings:
    """Typed, live view of ``CIO_RELIABLE``; use the module-level :data:`app_settings`."""

    def get(self, name: str) -> Any:
        """Return a setting by name, falling back to its default."""
        if name not in DEFAULTS:
            raise AttributeError(f"unknown django-cio-reliable setting {name!r}")
        return user_settings().get(name, DEFAULTS[name])

    @property
    def SITE_ID(self) -> str:
        return str(self.get("SITE_ID") or "")

    @property
    def API_KEY(self) -> str:
        key = self.get("API_KEY")
        if not key:
            env_name = self.get("API_KEY_ENV")
            if env_name:
                key = os.environ.get(str(env_name), "")
        return str(key or "")

    @property
    def REGION(self) -> str:
        return str(self.get("REGION")).lower()

    @property
    def TRACK_URL(self) -> str | None:
        value = self.get("TRACK_URL")
        return str(value).rstrip("/") if value else None

    @property
    def base_url(self) -> str:
        """The Track API origin: ``TRACK_URL`` when set, else the region's host."""
        return self.TRACK_URL or REGION_HOSTS.get(self.REGION, REGION_HOSTS["us"])

    @property
    def destination(self) -> str:
        """A stable name for where operations go (one breaker per destination)."""
        return f"{self.base_url}#{self.SITE_ID}"

    @property
    def DELIVERY(self) -> Delivery:
        return cast(Delivery, self.get("DELIVERY"))

    @property
    def DISPATCH(self) -> Dispatch:
        return cast(Dispatch, self.get("DISPATCH"))

    @property
    def TIMEOUT(self) -> float:
        return float(self.get("TIMEOUT"))

    @property
    def CONNECT_TIMEOUT(self) -> float:
        return float(self.get("CONNECT_TIMEOUT"))

    @property
    def MAX_ERROR_BODY_BYTES(self) -> int:
        return int(self.get("MAX_ERROR_BODY_BYTES"))

    @property
    def MAX_ATTEMPTS(self) -> int:
        return int(self.get("MAX_ATTEMPTS"))

    @property
    def MAX_AGE(self) -> float:
        return float(self.get("MAX_AGE"))

    @property
    def RETRY_BASE(self) -> float:
        return float(self.get("RETRY_BASE"))

    @property
    def RETRY_CAP(self) -> float:
        return float(self.get("RETRY_CAP"))

    @property
    def DIRECT_ATTEMPTS(self) -> int:
        return int(self.get("DIRECT_ATTEMPTS"))

    @property
    def RATE_LIMIT(self) -> float:
        return float(self.get("RATE_LIMIT"))

    @property
    def BATCH(self) -> bool:
        return bool(self.get("BATCH"))

    @property
    def BATCH_SIZE(self) -> int:
        return int(self.get("BATCH_SIZE"))

    @property
    def BATCH_MAX_BYTES(self) -> int:
        return int(self.get("BATCH_MAX_BYTES"))

    @property
    def CLAIM_SIZE(self) -> int:
        return int(self.get("CLAIM_SIZE"))

    @property
    def LEASE_SECONDS(self) -> float:
        return float(self.get("LEASE_SECONDS"))

    @property
    def DRAIN_MAX_SECONDS(self) -> float | None:
        value = self.get("DRAIN_MAX_SECONDS")
        return None if value is None else float(value)

    @property
    def DRAIN_SCHEDULE_MINUTES(self) -> int:
        return int(self.get("DRAIN_SCHEDULE_MINUTES"))

    @property
    def KICK_DEBOUNCE(self) -> float:
        return float(self.get("KICK_DEBOUNCE"))

    @property
    def DRAIN_LINGER(self) -> float:
        return float(self.get("DRAIN_LINGER"))

    @property
    def IDEMPOTENCY_TTL(self) -> float:
        return float(self.get("IDEMPOTENCY_TTL"))

    @property
    def IDEMPOTENCY_CACHE_SIZE(self) -> int:
        return int(self.get("IDEMPOTENCY_CACHE_SIZE"))

    @property
    def REPLAY_WINDOW(self) -> float:
        return float(self.get("REPLAY_WINDOW"))

    @property
    def RETAIN_DELIVERED(self) -> float:
        return float(self.get("RETAIN_DELIVERED"))

    @property
    def RETAIN_DEAD(self) -> float:
        return float(self.get("RETAIN_DEAD"))

    @property
    def SCRUB_DELIVERED(self) -> bool:
        """Whether a delivered operation's stored payload is emptied when it is acknowledged."""
        return bool(self.get("SCRUB_DELIVERED"))

    @property
    def PURGE_BATCH_SIZE(self) -> int:
        return int(self.get("PURGE_BATCH_SIZE"))

    @property
    def CACHE_ALIAS(self) -> str | None:
        value = self.get("CACHE_ALIAS")
        return None if value is None else str(value)

    @property
    def HOOKS(self) -> list[Any]:
        """The hook definitions (dicts); a value that is not a list reads as none."""
        value = self.get("HOOKS")
        return list(value) if isinstance(value, (list, tuple)) else []

    @property
    def BREAKER_FAILURE_RATE_THRESHOLD(self) -> float:
        return float(self.get("BREAKER_FAILURE_RATE_THRESHOLD"))

    @property
    def BREAKER_WINDOW_SECONDS(self) -> float:
        return float(self.get("BREAKER_WINDOW_SECONDS"))

    @property
    def BREAKER_MINIMUM_CALLS(self) -> int:
        return int(self.get("BREAKER_MINIMUM_CALLS"))

    @property
    def BREAKER_CONSECUTIVE_FAILURES(self) -> int:
        return int(self.get("BREAKER_CONSECUTIVE_FAILURES"))

    @property
    def BREAKER_SLOW_CALL_SECONDS(self) -> float:
        return float(self.get("BREAKER_SLOW_CALL_SECONDS"))

    @property
    def BREAKER_SLOW_CALL_RATE_THRESHOLD(self) -> float:
        return float(self.get("BREAKER_SLOW_CALL_RATE_THRESHOLD"))

    @property
    def BREAKER_RESET_TIMEOUT(self) -> float:
        return float(self.get("BREAKER_RESET_TIMEOUT"))

    @property
    def BREAKER_RESET_TIMEOUT_MULTIPLIER(self) -> float:
        return float(self.get("BREAKER_RESET_TIMEOUT_MULTIPLIER"))

    @property
    def BREAKER_RESET_TIMEOUT_MAX(self) -> float:
        return float(self.get("BREAKER_RESET_TIMEOUT_MAX"))

    @property
    def BREAKER_HALF_OPEN_MAX_CALLS(self) -> int:
        return int(self.get("BREAKER_HALF_OPEN_MAX_CALLS"))

    @property
    def BREAKER_PROBE_LEASE_SECONDS(self) -> float:
        """The probe lease; ``None`` (default) derives it from the request timeouts."""
        value = self.get("BREAKER_PROBE_LEASE_SECONDS")
        if value is None:
            return self.TIMEOUT + self.CONNECT_TIMEOUT + PROBE_LEASE_MARGIN
        return float(value)

    @property
    def BREAKER_SUCCESS_THRESHOLD(self) -> int:
        return int(self.get("BREAKER_SUCCESS_THRESHOLD"))

    @property
    def BREAKER_CACHE_SECONDS(self) -> float:
        return float(self.get("BREAKER_CACHE_SECONDS"))

    def __repr__(self) -> str:
        return f"<django-cio-reliable settings site_id={self.SITE_ID!r} region={self.REGION!r}>"


app_settings: Final = Settings()

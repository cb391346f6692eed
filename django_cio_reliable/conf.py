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
from typing import Any, Final, Generic, Literal, TypeVar, cast

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
    # A cache shared by every process, for the drain-kick debounce.
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
    """Register ``callback`` to run whenever ``CIO_RELIABLE`` changes (usable as a decorator)."""
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


def user_settings() -> dict[str, Any] | None:
    """The user's ``CIO_RELIABLE`` (``{}`` when unset), or ``None`` when it is not a dict."""
    value = getattr(django_settings, SETTING_NAME, None)
    if value is None:
        return {}
    return value if isinstance(value, dict) else None


_T = TypeVar("_T")


class _Setting(Generic[_T]):
    """A read-only :class:`Settings` attribute: its setting (or default) through ``convert``."""

    def __init__(self, convert: Callable[[Any], _T]) -> None:
        self.convert = convert

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Settings, owner: object = None) -> _T:
        return self.convert(instance.get(self.name))

    def __set__(self, instance: Settings, value: object) -> None:
        raise AttributeError(f"{self.name} is read from CIO_RELIABLE on every access")


class Settings:
    """Typed, live view of ``CIO_RELIABLE``; use the module-level :data:`app_settings`."""

    def get(self, name: str) -> Any:
        """Return a setting by name, falling back to its default."""
        if name not in DEFAULTS:
            raise AttributeError(f"unknown django-cio-reliable setting {name!r}")
        return (user_settings() or {}).get(name, DEFAULTS[name])

    SITE_ID = _Setting(lambda value: str(value or ""))
    REGION = _Setting(lambda value: str(value).lower())
    TRACK_URL = _Setting(lambda value: str(value).rstrip("/") if value else None)
    DELIVERY = _Setting(lambda value: cast(Delivery, value))
    DISPATCH = _Setting(lambda value: cast(Dispatch, value))
    TIMEOUT = _Setting(float)
    CONNECT_TIMEOUT = _Setting(float)
    MAX_ERROR_BODY_BYTES = _Setting(int)
    MAX_ATTEMPTS = _Setting(int)
    MAX_AGE = _Setting(float)
    RETRY_BASE = _Setting(float)
    RETRY_CAP = _Setting(float)
    DIRECT_ATTEMPTS = _Setting(int)
    RATE_LIMIT = _Setting(float)
    BATCH = _Setting(bool)
    BATCH_SIZE = _Setting(int)
    BATCH_MAX_BYTES = _Setting(int)
    CLAIM_SIZE = _Setting(int)
    LEASE_SECONDS = _Setting(float)
    DRAIN_MAX_SECONDS = _Setting(lambda value: None if value is None else float(value))
    DRAIN_SCHEDULE_MINUTES = _Setting(int)
    KICK_DEBOUNCE = _Setting(float)
    DRAIN_LINGER = _Setting(float)
    IDEMPOTENCY_TTL = _Setting(float)
    IDEMPOTENCY_CACHE_SIZE = _Setting(int)
    REPLAY_WINDOW = _Setting(float)
    RETAIN_DELIVERED = _Setting(float)
    RETAIN_DEAD = _Setting(float)
    #: Whether a delivered operation's stored payload is emptied when it is acknowledged.
    SCRUB_DELIVERED = _Setting(bool)
    PURGE_BATCH_SIZE = _Setting(int)
    CACHE_ALIAS = _Setting(lambda value: None if value is None else str(value))
    #: The hook definitions (dicts); a value that is not a list reads as none.
    HOOKS = _Setting(lambda value: list(value) if isinstance(value, (list, tuple)) else [])
    BREAKER_FAILURE_RATE_THRESHOLD = _Setting(float)
    BREAKER_WINDOW_SECONDS = _Setting(float)
    BREAKER_MINIMUM_CALLS = _Setting(int)
    BREAKER_CONSECUTIVE_FAILURES = _Setting(int)
    BREAKER_SLOW_CALL_SECONDS = _Setting(float)
    BREAKER_SLOW_CALL_RATE_THRESHOLD = _Setting(float)
    BREAKER_RESET_TIMEOUT = _Setting(float)
    BREAKER_RESET_TIMEOUT_MULTIPLIER = _Setting(float)
    BREAKER_RESET_TIMEOUT_MAX = _Setting(float)
    BREAKER_HALF_OPEN_MAX_CALLS = _Setting(int)
    BREAKER_SUCCESS_THRESHOLD = _Setting(int)
    BREAKER_CACHE_SECONDS = _Setting(float)

    @property
    def API_KEY(self) -> str:
        key, env_name = self.get("API_KEY"), self.get("API_KEY_ENV")
        if not key and env_name:
            key = os.environ.get(str(env_name), "")
        return str(key or "")

    @property
    def BREAKER_PROBE_LEASE_SECONDS(self) -> float:
        """The probe lease; ``None`` (default) derives it from the request timeouts."""
        value = self.get("BREAKER_PROBE_LEASE_SECONDS")
        if value is None:
            return self.TIMEOUT + self.CONNECT_TIMEOUT + PROBE_LEASE_MARGIN
        return float(value)

    @property
    def base_url(self) -> str:
        """The Track API origin: ``TRACK_URL`` when set, else the region's host."""
        return self.TRACK_URL or REGION_HOSTS.get(self.REGION, REGION_HOSTS["us"])

    @property
    def destination(self) -> str:
        """A stable name for where operations go (one breaker per destination)."""
        return f"{self.base_url}#{self.SITE_ID}"

    def __repr__(self) -> str:
        return f"<django-cio-reliable settings site_id={self.SITE_ID!r} region={self.REGION!r}>"


app_settings: Final = Settings()

"""The breaker's settings: ``CIO_RELIABLE``'s ``BREAKER_*`` values as a :class:`BreakerConfig`.

A typo in a setting never stops delivery: an unusable value (which ``manage.py check`` reports)
falls back to its default, with an error logged.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from django_cio_reliable.breaker.core import COUNTER_CAP, MAX_PROBES, BreakerConfig
from django_cio_reliable.conf import DEFAULTS, PROBE_LEASE_MARGIN, app_settings

log = logging.getLogger(__name__)

#: The setting behind each :class:`BreakerConfig` field.
_SETTINGS = {
    "failure_rate_threshold": "BREAKER_FAILURE_RATE_THRESHOLD",
    "window_seconds": "BREAKER_WINDOW_SECONDS",
    "minimum_calls": "BREAKER_MINIMUM_CALLS",
    "consecutive_failures": "BREAKER_CONSECUTIVE_FAILURES",
    "slow_call_seconds": "BREAKER_SLOW_CALL_SECONDS",
    "slow_call_rate_threshold": "BREAKER_SLOW_CALL_RATE_THRESHOLD",
    "reset_timeout": "BREAKER_RESET_TIMEOUT",
    "reset_timeout_multiplier": "BREAKER_RESET_TIMEOUT_MULTIPLIER",
    "reset_timeout_max": "BREAKER_RESET_TIMEOUT_MAX",
    "half_open_max_calls": "BREAKER_HALF_OPEN_MAX_CALLS",
    "probe_lease_seconds": "BREAKER_PROBE_LEASE_SECONDS",
    "success_threshold": "BREAKER_SUCCESS_THRESHOLD",
}
#: Counts larger than the core accepts mean "never": they are capped, not refused.
_CAPS = {
    "minimum_calls": COUNTER_CAP,
    "consecutive_failures": COUNTER_CAP,
    "half_open_max_calls": MAX_PROBES,
    "success_threshold": COUNTER_CAP,
}


def _default(field: str) -> Any:
    if field == "probe_lease_seconds":
        return float(DEFAULTS["TIMEOUT"]) + float(DEFAULTS["CONNECT_TIMEOUT"]) + PROBE_LEASE_MARGIN
    return DEFAULTS[_SETTINGS[field]]


def config_from_settings() -> BreakerConfig:
    """The :class:`~django_cio_reliable.breaker.core.BreakerConfig` of ``CIO_RELIABLE``.

    Each unreadable value falls back to its default; if the values together are still invalid
    (e.g. ``BREAKER_RESET_TIMEOUT_MAX`` below ``BREAKER_RESET_TIMEOUT``), every one does.
    """
    values: dict[str, Any] = {}
    for field, setting in _SETTINGS.items():
        try:
            value = getattr(app_settings, setting)
            values[field] = min(value, _CAPS[field]) if field in _CAPS else value
        except (TypeError, ValueError, OverflowError):
            values[field] = _default(field)
    try:
        return BreakerConfig(**values)
    except (TypeError, ValueError) as exc:
        log.error(
            "cio: invalid breaker settings (%s); using the defaults (run manage.py check)", exc
        )
    return BreakerConfig(**{field: _default(field) for field in _SETTINGS})


def cache_seconds_from_settings() -> float:
    """``BREAKER_CACHE_SECONDS``, or its default when the value is unusable."""
    try:
        value = app_settings.BREAKER_CACHE_SECONDS
    except (TypeError, ValueError, OverflowError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        return float(DEFAULTS["BREAKER_CACHE_SECONDS"])
    return value

"""The circuit breaker shared by every process (docs/breaker.md).

- :mod:`~django_cio_reliable.breaker.core`: the rules, a pure state machine with the clock
  passed in.
- :mod:`~django_cio_reliable.breaker.config`: ``CIO_RELIABLE``'s ``BREAKER_*`` settings as a
  ``BreakerConfig``.
- :mod:`~django_cio_reliable.breaker.store`: :class:`Breaker`, whose state lives in one
  ``BreakerState`` row per destination, changed by compare-and-set and read through a local
  cache; :func:`get_breaker` is this process's breaker of the configured destination.

Which outcomes count is :func:`outcome_for`: network errors, timeouts, 5xx, 408/425 and 429 are
failures; a 4xx caused by the payload, and 401/403, are neither.
"""

from django_cio_reliable.breaker.config import cache_seconds_from_settings, config_from_settings
from django_cio_reliable.breaker.core import MODES, STATES, Mode, State, outcome_for
from django_cio_reliable.breaker.store import (
    FLUSH_EVERY,
    Breaker,
    BreakerConflict,
    Permit,
    Snapshot,
    get_breaker,
    recent_events,
    reset,
)

__all__ = [
    "FLUSH_EVERY",
    "MODES",
    "STATES",
    "Breaker",
    "BreakerConflict",
    "Mode",
    "Permit",
    "Snapshot",
    "State",
    "cache_seconds_from_settings",
    "config_from_settings",
    "get_breaker",
    "outcome_for",
    "recent_events",
    "reset",
]

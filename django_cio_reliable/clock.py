"""The clock of the outbox, in one place so tests can drive it without sleeping.

Every time this app stores for other hosts to read (leases, retry times, pauses, the rate
limiter's slots, the breaker's cooldown) is the **database's** time: a host whose own clock is
off would otherwise steal live leases, or make every other worker wait. On PostgreSQL each
process measures its offset to the server's clock (``clock_timestamp()``, halfway through the
round trip) at most every :data:`SYNC_SECONDS`, outside any transaction, and adds it to its own
clock; SQLite lives on one host, whose clock is the database's.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime, timezone

log = logging.getLogger(__name__)

#: How often a process measures its clock's offset to the database's.
SYNC_SECONDS = 60.0
#: A measured offset larger than this is logged as a warning (this host's clock is off).
WARN_OFFSET_SECONDS = 1.0

_offset = 0.0
_synced_at = -math.inf


def now() -> datetime:
    """The database's current time, timezone-aware (UTC)."""
    return datetime.fromtimestamp(wall(), tz=timezone.utc)


def wall() -> float:
    """The database's current time in Unix seconds: this host's clock plus its offset."""
    if time.monotonic() - _synced_at >= SYNC_SECONDS:
        _sync()
    return time.time() + _offset


def offset() -> float:
    """Seconds this host's clock is behind the database's (negative: ahead), as last measured."""
    return _offset


def _sync() -> None:
    """Measure the offset to the database's clock (PostgreSQL, outside any transaction)."""
    global _offset, _synced_at
    try:
        from django.apps import apps
        from django.db import connections, router

        model = apps.get_model("django_cio_reliable", "Operation")
        connection = connections[router.db_for_write(model) or "default"]
        if connection.vendor != "postgresql":
            _synced_at = time.monotonic()
            return
        if connection.in_atomic_block:
            return  # a transaction's snapshot is no place for it: measured at the next call
        before = time.time()
        with connection.cursor() as cursor:
            cursor.execute("SELECT extract(epoch from clock_timestamp())")
            server = float(cursor.fetchone()[0])
        after = time.time()
    except Exception as exc:  # the database may be down: keep the last offset, try later
        log.debug("cio: could not read the database's clock (%s)", exc)
        _synced_at = time.monotonic()
        return
    _offset = server - (before + after) / 2
    _synced_at = time.monotonic()
    if abs(_offset) > WARN_OFFSET_SECONDS:
        log.warning(
            "cio: this host's clock is %.1f s %s the database's; using the database's time",
            abs(_offset),
            "behind" if _offset > 0 else "ahead of",
        )


def human_duration(seconds: float) -> str:
    """``seconds`` as a short human-readable duration, e.g. ``3d 4h``, ``2h 05m``, ``42s``."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"

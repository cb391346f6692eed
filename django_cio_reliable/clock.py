"""The wall clock of the outbox, in one place so tests can drive it without sleeping."""

from __future__ import annotations

import time
from datetime import datetime

from django.utils import timezone


def now() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return timezone.now()


def wall() -> float:
    """The current Unix time in seconds."""
    return time.time()


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

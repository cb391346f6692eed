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

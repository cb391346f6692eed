"""django-q2 entry points. Thin: they call into :mod:`django_cio_reliable.outbox`."""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)


def drain(max_seconds: float | None = None) -> dict[str, Any]:
    """Deliver due operations; stop early and hand back unsent claims on SIGTERM.

    Returns a summary dict (django-q2 stores it as the task result).
    """
    from django_cio_reliable import outbox
    from django_cio_reliable.conf import app_settings

    stopping: list[str] = []
    previous: Any = None
    in_main = threading.current_thread() is threading.main_thread()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stopping.append("SIGTERM")

    if in_main:
        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        result = outbox.drain(
            max_seconds=max_seconds,
            should_stop=lambda: stopping[0] if stopping else "",
            linger=app_settings.DRAIN_LINGER,
        )
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    summary = {
        "claimed": result.claimed,
        "delivered": result.delivered,
        "failed": result.failed,
        "dead": result.dead,
        "released": result.released,
        "requests": result.requests,
        "paused": result.paused,
        "stopped": result.stopped,
    }
    log.info("cio: drain finished %s", summary)
    if stopping and in_main:
        # Unsent claims were handed back; now let the termination proceed as asked.
        os.kill(os.getpid(), signal.SIGTERM)
    return summary


def purge() -> dict[str, int]:
    """Delete operations and idempotency keys past their retention."""
    from django_cio_reliable import outbox

    result = outbox.purge()
    return {"delivered": result.delivered, "dead": result.dead, "keys": result.keys}

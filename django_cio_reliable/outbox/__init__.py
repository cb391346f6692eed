"""The durable outbox: every operation is stored before any network I/O and leaves it only as
delivered, or as dead with a reason an operator can read and replay.

==================  ==========================================================================
``store``           store in the caller's transaction (the caller's rows only)
``lease``           claim what is due (counting the attempt), renew, hand back
``deliver``         the one send path: send → classify → acknowledge, breaker and rate limit
``ack``             delivered / rescheduled / dead, fenced on the lease token
``runner``          the drain loop the workers, direct mode, inline dispatch and replays run
``shared``          the pause and the rate limit every worker honours (database time)
``maintenance``     replay, dead-letter, purge, queue status
==================  ==========================================================================

Status changes are made only through :mod:`django_cio_reliable.lifecycle`.
"""

from __future__ import annotations

from django_cio_reliable.outbox.ack import ack_delivered, ack_failed, ack_failures
from django_cio_reliable.outbox.deliver import Deliverer, DrainResult
from django_cio_reliable.outbox.lease import Claim, claim, claimable, hold, release
from django_cio_reliable.outbox.maintenance import (
    PurgeResult,
    QueueStatus,
    mark_dead,
    purge,
    queue_status,
    replay,
)
from django_cio_reliable.outbox.runner import default_drain_seconds, drain, next_due
from django_cio_reliable.outbox.shared import (
    RateLimiter,
    clear_auth_failure,
    delivery_state,
    pause,
    paused_until,
    resume,
)
from django_cio_reliable.outbox.store import (
    db_for_write,
    enqueue,
    enqueue_ex,
    new_operation,
    person_key,
    store_many,
)

__all__ = [
    "Claim",
    "Deliverer",
    "DrainResult",
    "PurgeResult",
    "QueueStatus",
    "RateLimiter",
    "ack_delivered",
    "ack_failed",
    "ack_failures",
    "claim",
    "claimable",
    "clear_auth_failure",
    "db_for_write",
    "default_drain_seconds",
    "delivery_state",
    "drain",
    "enqueue",
    "enqueue_ex",
    "hold",
    "mark_dead",
    "new_operation",
    "next_due",
    "pause",
    "paused_until",
    "person_key",
    "purge",
    "queue_status",
    "release",
    "replay",
    "resume",
    "store_many",
]

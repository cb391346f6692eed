"""Get committed operations delivered within about a second.

- ``DISPATCH="task"`` (default): after commit, kick a django-q2 task that drains the outbox.
  Kicks are debounced per process (at most one every ``KICK_DEBOUNCE`` seconds, with one
  trailing kick so the last commit of a burst is not left waiting for the schedule). With
  ``CACHE_ALIAS`` naming a shared cache, the leading kick is debounced for the whole
  deployment: only the first process to commit in a window kicks at once; the others keep
  their trailing kick, so a commit is never left waiting for the schedule.
- ``DISPATCH="inline"``: after commit, deliver the transaction's operations in the committing
  thread. Simple, but the request waits for Customer.io — except while the circuit breaker
  refuses calls: then the committed operations are left to the drain at once, with no query.

Whatever is missed (a process that died before its kick, a kick lost with a broker) is drained by
the django-q2 schedule that :func:`ensure_schedules` creates after ``migrate``.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from django.dispatch import receiver

from django_cio_reliable import lifecycle, outbox, signals
from django_cio_reliable.breaker import get_breaker
from django_cio_reliable.conf import app_settings, on_reset

if TYPE_CHECKING:
    from django_cio_reliable.models import Operation

log = logging.getLogger(__name__)

DRAIN_TASK = "django_cio_reliable.tasks.drain"
PURGE_TASK = "django_cio_reliable.tasks.purge"
DRAIN_SCHEDULE_NAME = "django_cio_reliable: drain the outbox"
PURGE_SCHEDULE_NAME = "django_cio_reliable: purge old operations"


class _Kicker:
    """Debounced django-q2 task kicks, one state per process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.last = float("-inf")
        self.timer: threading.Timer | None = None
        self.sent = 0

    def _check_fork(self) -> None:
        if self.pid != os.getpid():
            self.pid = os.getpid()
            self.last = float("-inf")
            self.timer = None

    def kick(self) -> None:
        debounce = app_settings.KICK_DEBOUNCE
        with self.lock:
            self._check_fork()
            wait = self.last + debounce - time.monotonic()
            if wait <= 0:
                self.last = time.monotonic()
        # The shared cache is asked outside the lock: no Python lock is held over I/O.
        if wait <= 0 and _first_in_shared_window(debounce):
            self._send()
            return
        with self.lock:
            if self.timer is None:
                # One trailing kick: at the end of this window, or a whole window on when
                # another process kicked moments ago (its drain may have started before this
                # commit).
                self.timer = threading.Timer(min(max(wait, 0) or debounce, 3600.0), self._trailing)
                self.timer.daemon = True
                self.timer.start()

    def _trailing(self) -> None:
        with self.lock:
            self.timer = None
            self.last = time.monotonic()
        self._send()

    def _send(self) -> None:
        try:
            from django_q.tasks import async_task

            async_task(DRAIN_TASK, task_name="cio-drain-kick", group="django_cio_reliable")
            self.sent += 1
        except Exception as exc:
            # The operation is stored; the schedule will drain it. Never fail the request.
            log.warning("cio: could not kick the drain task (%s); the schedule will", exc)

    def reset(self) -> None:
        with self.lock:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = None
            self.last = float("-inf")


#: The shared-cache key of the deployment-wide kick debounce.
KICK_CACHE_KEY = "django_cio_reliable:drain-kick"


def _first_in_shared_window(debounce: float) -> bool:
    """Whether this process is the first of the deployment to kick in this debounce window.

    Always ``True`` without ``CACHE_ALIAS``, or when the cache cannot be reached (a kick too
    many is harmless; a kick too few leaves operations waiting for the schedule).
    """
    alias = app_settings.CACHE_ALIAS
    if alias is None:
        return True
    try:
        from django.core.cache import caches

        timeout = max(1, math.ceil(debounce))  # whole seconds: memcached wants an int
        return bool(caches[alias].add(KICK_CACHE_KEY, os.getpid(), timeout=timeout))
    except Exception as exc:
        log.warning("cio: the shared kick debounce is unavailable (%s); kicking anyway", exc)
        return True


kicker = _Kicker()
on_reset(kicker.reset)

_inline = threading.local()


@receiver(signals.operation_enqueued, dispatch_uid="django_cio_reliable.dispatch.enqueued")
def _enqueued(sender: Any, operation: Operation, **kwargs: Any) -> None:
    operation_committed(operation)


@receiver(signals.breaker_state_changed, dispatch_uid="django_cio_reliable.dispatch.breaker")
def _breaker_changed(sender: Any, new_state: str, new_mode: str, **kwargs: Any) -> None:
    if new_state != "open" and new_mode != "forced_open":
        # Calls are admitted again (a reset, a forced close, a cooldown over): start a drain
        # now instead of waiting for the next commit or the schedule.
        kick_drain()


def operation_committed(operation: Operation) -> None:
    """Called once the transaction that stored ``operation`` committed."""
    if operation.status not in lifecycle.WAITING:
        return
    if app_settings.DISPATCH == "inline":
        _deliver_inline(operation.pk)
    else:
        kicker.kick()


def kick_drain() -> None:
    """Start a drain soon (a debounced task kick with ``DISPATCH="task"``; nothing inline:
    the drain schedule delivers what an inline send could not)."""
    if app_settings.DISPATCH == "task":
        kicker.kick()


def _deliver_inline(operation_id: int) -> None:
    if get_breaker().refusing():
        # Open breaker: stored and committed; the drain delivers it once the breaker lets it.
        return
    pending: list[int] = getattr(_inline, "pending", None) or []
    pending.append(operation_id)
    _inline.pending = pending
    if getattr(_inline, "running", False):
        return
    _inline.running = True
    try:
        while _inline.pending:
            ids, _inline.pending = _inline.pending, []
            try:
                outbox.drain(ids=ids, max_seconds=app_settings.TIMEOUT * 2 + 5)
            except Exception:
                # Stored and committed: the schedule delivers it later. Never fail the request.
                log.exception("cio: inline delivery failed; the drain schedule will retry")
    finally:
        _inline.running = False


def ensure_schedules(**kwargs: Any) -> None:
    """Create or update the django-q2 schedules (idempotent; connected to ``post_migrate``)."""
    try:
        from django_q.models import Schedule
    except Exception:  # pragma: no cover - reported by the checks
        return
    using = kwargs.get("using") or "default"
    minutes = max(1, app_settings.DRAIN_SCHEDULE_MINUTES)
    Schedule.objects.using(using).update_or_create(
        name=DRAIN_SCHEDULE_NAME,
        defaults={
            "func": DRAIN_TASK,
            "schedule_type": Schedule.MINUTES,
            "minutes": minutes,
            "repeats": -1,
        },
    )
    Schedule.objects.using(using).update_or_create(
        name=PURGE_SCHEDULE_NAME,
        defaults={"func": PURGE_TASK, "schedule_type": Schedule.HOURLY, "repeats": -1},
    )

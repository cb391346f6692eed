"""A django-health-check 4.x plugin: is Customer.io delivery healthy? (docs/health.md)

A check raises one exception, so its message lists every condition found, the unavailable ones
first. The output never contains the API key or personal data: messages are built from counts,
durations, states and fixed texts only (never from a server's error text or a customer id).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

from asgiref.sync import sync_to_async
from django.db.models import Min
from health_check.base import HealthCheck
from health_check.exceptions import ServiceUnavailable, ServiceWarning

from django_cio_reliable import breaker, clock, lifecycle, outbox
from django_cio_reliable.clock import human_duration
from django_cio_reliable.conf import app_settings, on_reset
from django_cio_reliable.exceptions import DeliveryError
from django_cio_reliable.models import DeliveryState, Operation
from django_cio_reliable.transport import get_transport

log = logging.getLogger(__name__)

Level = Literal["warning", "unavailable"]


@dataclasses.dataclass(frozen=True)
class Problem:
    """One condition the health check found.

    Attributes:
        level: ``"warning"`` or ``"unavailable"``.
        message: What is wrong, with no key and no personal data.
    """

    level: Level
    message: str


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """The outcome of one credentials probe (``GET /api/v1/accounts/region``).

    Attributes:
        ok: Customer.io accepted the credentials.
        kind: The :class:`~django_cio_reliable.exceptions.DeliveryError` kind when not ok.
        status: The HTTP status when not ok (``None`` without a response).
    """

    ok: bool
    kind: str = ""
    status: int | None = None


@dataclasses.dataclass(frozen=True)
class Facts:
    """What the health check measured; :func:`assess` judges it.

    Attributes:
        breaker_state: ``closed``, ``open`` or ``half_open`` (``None`` when unknown).
        breaker_mode: ``auto``, ``forced_open``, ``forced_closed`` or ``disabled``.
        open_for: Seconds since the breaker left the closed state, while it is not closed.
        backlog: Open operations (pending, sending or failed).
        oldest_open_age: Age in seconds of the oldest open operation.
        dead_recent: Operations dead-lettered within the dead-letter window.
        paused_until: When the shared pause ends, while paused.
        pause_reason: ``rate_limited`` or ``auth`` while paused.
        auth_failed_at: When Customer.io last rejected the credentials (cleared by a success).
        probe: The latest credentials probe, when probing is on.
    """

    breaker_state: str | None = None
    breaker_mode: str | None = None
    open_for: float | None = None
    backlog: int = 0
    oldest_open_age: float | None = None
    dead_recent: int = 0
    paused_until: datetime.datetime | None = None
    pause_reason: str = ""
    auth_failed_at: datetime.datetime | None = None
    probe: ProbeResult | None = None


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass
class CustomerIOHealth(HealthCheck):  # type: ignore[misc]
    """Health of Customer.io delivery: breaker, backlog, oldest open operation, dead letters.

    Every threshold can be turned off with ``None``. Durations are in seconds.

    Args:
        backlog_warning: Open operations (pending, sending, failed) at or above which the
            check warns.
        backlog_unavailable: Open operations at or above which the service is unavailable.
        oldest_pending_warning: Age of the oldest open operation that makes the check warn.
        oldest_pending_unavailable: Age of the oldest open operation that makes the service
            unavailable.
        open_unavailable_after: How long the breaker may stay away from closed (open or
            half-open, in automatic mode) before the service is unavailable; shorter is a
            warning.
        dead_warning: Dead letters within ``dead_window`` at or above which the check warns.
        dead_window: How far back dead letters count (``None``: every dead letter kept).
        forced_open_unavailable: Treat a breaker forced open by an operator as unavailable
            (default: a warning, it is deliberate).
        probe_credentials: Also check the credentials with ``GET /api/v1/accounts/region``
            (touches no person). Off by default.
        probe_interval: At most one probe per this many seconds per process; in between the
            last result is reported.
    """

    backlog_warning: int | None = dataclasses.field(default=1000, repr=False)
    backlog_unavailable: int | None = dataclasses.field(default=None, repr=False)
    oldest_pending_warning: float | None = dataclasses.field(default=600.0, repr=False)
    oldest_pending_unavailable: float | None = dataclasses.field(default=3600.0, repr=False)
    open_unavailable_after: float | None = dataclasses.field(default=300.0, repr=False)
    dead_warning: int | None = dataclasses.field(default=1, repr=False)
    dead_window: float | None = dataclasses.field(default=86400.0, repr=False)
    forced_open_unavailable: bool = dataclasses.field(default=False, repr=False)
    probe_credentials: bool = dataclasses.field(default=False, repr=False)
    probe_interval: float = dataclasses.field(default=60.0, repr=False)

    #: Budget of the whole check (the probe uses the transport's own, shorter timeouts).
    timeout = datetime.timedelta(seconds=20)

    async def run(self) -> None:
        """Measure, judge and raise the most severe exception (nothing when healthy).

        Raises:
            ServiceUnavailable: At least one condition makes delivery unavailable.
            ServiceWarning: Only warnings were found.
        """
        facts = await sync_to_async(self.measure, thread_sensitive=True)()
        if self.probe_credentials:
            probe = await sync_to_async(probe_credentials, thread_sensitive=False)(
                self.probe_interval
            )
            facts = dataclasses.replace(facts, probe=probe)
        raise_for(assess(facts, self))

    def measure(self, now: datetime.datetime | None = None) -> Facts:
        """Read the breaker, the outbox and the shared delivery state (a few small queries)."""
        current = now or clock.now()
        # Not outbox.queue_status(): it counts every status, the delivered history included.
        open_ops = Operation.objects.filter(status__in=lifecycle.OPEN)
        backlog = open_ops.count()
        oldest = open_ops.aggregate(m=Min("created_at"))["m"] if backlog else None
        dead = Operation.objects.filter(status=lifecycle.Status.DEAD)
        if self.dead_window is not None:
            dead = dead.filter(dead_at__gte=current - datetime.timedelta(seconds=self.dead_window))
        paused_until, pause_reason = outbox.paused_until(current)
        delivery = DeliveryState.objects.filter(destination=app_settings.destination)
        snapshot = breaker.get_breaker().snapshot(fresh=True)
        open_for = None
        if snapshot.state != "closed":
            since = snapshot.open_since or snapshot.opened_at
            open_for = max(0.0, (current - since).total_seconds()) if since else 0.0
        return Facts(
            breaker_state=snapshot.state,
            breaker_mode=snapshot.mode,
            open_for=open_for,
            backlog=backlog,
            oldest_open_age=(current - oldest).total_seconds() if oldest else None,
            dead_recent=dead.count() if self.dead_warning is not None else 0,
            paused_until=paused_until,
            pause_reason=pause_reason,
            auth_failed_at=delivery.values_list("auth_failed_at", flat=True).first(),
        )


def _reached(
    value: float | None, unavailable: float | None, warning: float | None
) -> tuple[Level, float] | None:
    """The level ``value`` reaches and the threshold it reaches (``None``: neither)."""
    if value is None:
        return None
    if unavailable is not None and value >= unavailable:
        return "unavailable", unavailable
    if warning is not None and value >= warning:
        return "warning", warning
    return None


def assess(facts: Facts, check: CustomerIOHealth) -> list[Problem]:
    """Judge ``facts`` against the thresholds of ``check``; returns every problem found."""
    problems: list[Problem] = []

    def add(level: Level, message: str) -> None:
        problems.append(Problem(level, message))

    mode, state = facts.breaker_mode, facts.breaker_state
    if mode == "forced_open":
        add(
            "unavailable" if check.forced_open_unavailable else "warning",
            "breaker forced open by an operator: nothing is being sent",
        )
    elif mode == "auto" and state in ("open", "half_open"):
        label = "half-open" if state == "half_open" else "open"
        open_for = facts.open_for or 0.0
        limit = check.open_unavailable_after
        if limit is not None and open_for >= limit:
            add(
                "unavailable",
                f"breaker {label}, away from closed for {human_duration(open_for)} "
                f"(unavailable after {human_duration(limit)})",
            )
        else:
            add("warning", f"breaker {label} for {human_duration(open_for)}")

    probe = facts.probe
    answer = f"HTTP {probe.status}" if probe is not None and probe.status else "no response"
    if probe is not None and not probe.ok and probe.kind == "auth":
        add("unavailable", f"Customer.io rejected the credentials ({answer}) in the probe")
    elif facts.auth_failed_at is not None and probe is not None and probe.ok:
        # Stale: fixed since, but no delivery has succeeded yet to clear it.
        add(
            "warning",
            f"Customer.io rejected the credentials at {_iso(facts.auth_failed_at)}; the probe "
            "accepts them now",
        )
    elif facts.auth_failed_at is not None:
        add(
            "unavailable",
            f"Customer.io rejected the credentials at {_iso(facts.auth_failed_at)}; "
            "delivery is paused until they are fixed",
        )
    if probe is not None and not probe.ok and probe.kind != "auth":
        add("warning", f"credentials probe failed: {probe.kind} ({answer})")

    if facts.paused_until is not None and facts.pause_reason == "rate_limited":
        add(
            "warning",
            f"rate limited by Customer.io; every worker waits until {_iso(facts.paused_until)}",
        )

    reached = _reached(facts.backlog, check.backlog_unavailable, check.backlog_warning)
    if reached is not None:
        level, limit = reached
        add(level, f"backlog of {_count(facts.backlog, 'open operation')} ({level} at {limit:,})")

    age = facts.oldest_open_age
    reached = _reached(age, check.oldest_pending_unavailable, check.oldest_pending_warning)
    if reached is not None and age is not None:
        level, limit = reached
        add(
            level,
            f"oldest open operation is {human_duration(age)} old "
            f"({level} after {human_duration(limit)})",
        )

    if check.dead_warning is not None and facts.dead_recent >= check.dead_warning:
        window = (
            f" in the last {human_duration(check.dead_window)}"
            if check.dead_window is not None
            else ""
        )
        add(
            "warning",
            f"{_count(facts.dead_recent, 'dead letter')}{window} (replay them from the admin "
            "or with manage.py cio_replay)",
        )
    return problems


def raise_for(problems: list[Problem]) -> None:
    """Raise the exception ``problems`` call for (none when the list is empty).

    Raises:
        ServiceUnavailable: Any problem is ``unavailable``; the message lists all of them.
        ServiceWarning: Only warnings.
    """
    if not problems:
        return
    ordered = sorted(problems, key=lambda p: p.level != "unavailable")
    message = "; ".join(p.message for p in ordered)
    if ordered[0].level == "unavailable":
        raise ServiceUnavailable(message)
    raise ServiceWarning(message)


#: The latest probe per destination in this process: ``(monotonic time, result)``.
_probes: dict[str, tuple[float, ProbeResult | None]] = {}
_probes_lock = threading.Lock()


def reset_probe_cache() -> None:
    """Forget every cached probe result (tests; also done when ``CIO_RELIABLE`` changes)."""
    with _probes_lock:
        _probes.clear()


on_reset(reset_probe_cache)


def _run_probe() -> ProbeResult:
    try:
        get_transport().check_credentials()
    except DeliveryError as error:
        log.warning("cio: credentials probe failed (%s, status %s)", error.kind, error.status)
        return ProbeResult(ok=False, kind=error.kind, status=error.status)
    return ProbeResult(ok=True)


def probe_credentials(
    interval: float = 60.0,
    *,
    monotonic: Callable[[], float] = time.monotonic,
    probe: Callable[[], ProbeResult] = _run_probe,
) -> ProbeResult | None:
    """Check the credentials, at most once per ``interval`` seconds in this process.

    Between probes the latest result is returned; while the first probe of a destination is
    in flight in another thread, ``None`` (unknown) is.
    """
    key = app_settings.destination
    now = monotonic()
    with _probes_lock:
        entry = _probes.get(key)
        if entry is not None and now - entry[0] < interval:
            return entry[1]
        # Reserve the slot first so concurrent health requests do not all probe.
        _probes[key] = (now, entry[1] if entry is not None else None)
    result = probe()
    with _probes_lock:
        _probes[key] = (now, result)
    return result

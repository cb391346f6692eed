"""The shared breaker: one ``BreakerState`` row per destination, cached by each process.

- **Compare-and-set.** Every change is ``UPDATE … WHERE destination = %s AND version = %s``; a
  process that loses the race reads the row again and re-applies its change, so two processes
  can never both win a transition (or both take the last half-open probe slot).
- **A local cache of about a second** (``BREAKER_CACHE_SECONDS``). While it is fresh,
  :meth:`Breaker.allow` answers from memory. Closed-state outcomes are collected and merged into
  the row when the cache expires, after :data:`FLUSH_EVERY` outcomes, or at once when they would
  trip the breaker on their own.
- **No Python lock is held over the database**: the lock only guards this process's cache and
  collected outcomes; the compare-and-set orders the writers.
- **Time** is the database's (:mod:`django_cio_reliable.clock`, Unix seconds).
- **Every transition** is stored as a :class:`~django_cio_reliable.models.BreakerEvent` in the
  same transaction as the row update, and sent as
  :data:`~django_cio_reliable.signals.breaker_state_changed` after commit.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from django.db import router, transaction
from django.db.models import QuerySet

from django_cio_reliable import clock, signals
from django_cio_reliable.breaker import core
from django_cio_reliable.breaker.config import cache_seconds_from_settings, config_from_settings
from django_cio_reliable.conf import app_settings, on_reset
from django_cio_reliable.models import BreakerEvent
from django_cio_reliable.models import BreakerState as BreakerStateRow

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser

    AnyUser = AbstractBaseUser | AnonymousUser

log = logging.getLogger(__name__)

#: Closed-state outcomes a process collects at most before it merges them into the shared row
#: (normally it merges when its cache expires, about once a second).
FLUSH_EVERY: Final = 10_000
#: Compare-and-set attempts before a change is given up (other processes kept winning).
CAS_ATTEMPTS: Final = 20
#: Longest reason stored on an event.
MAX_REASON_LENGTH: Final = 500

_R = TypeVar("_R")


class BreakerConflict(RuntimeError):
    """Other processes kept changing the breaker; the change was not made. Try again."""


@dataclass(frozen=True)
class _Changed(Generic[_R]):
    """What a change function returns: the new state, its transitions, a result for the caller."""

    state: core.BreakerState
    transitions: tuple[core.Transition, ...]
    result: _R


@dataclass(frozen=True)
class _Row:
    state: core.BreakerState
    open_since: datetime | None
    updated_at: datetime | None


_default_now = clock.now


def _now() -> float:
    """The breaker clock: Unix seconds of :func:`django_cio_reliable.clock.now`.

    :func:`~django_cio_reliable.clock.wall` gives the same reading without building a datetime
    (the closed-state check is made on every call); a replaced ``clock.now`` (a test's fake
    clock) is honoured.
    """
    if clock.now is _default_now:
        return clock.wall()
    return clock.now().timestamp()


def _datetime(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc)


class Permit:
    """Leave to make one request, from :meth:`Breaker.allow`; report it with
    :meth:`Breaker.record` (or hand it back unused with :meth:`Breaker.cancel`).

    Attributes:
        probe_id: The half-open probe slot this permit holds, or ``None`` for an ordinary call.
        issued_at: The breaker clock (Unix seconds) when it was issued.
    """

    __slots__ = ("issued_at", "probe_id")

    def __init__(self, probe_id: str | None, issued_at: float) -> None:
        self.probe_id = probe_id
        self.issued_at = issued_at

    @property
    def is_probe(self) -> bool:
        """Whether this permit is a half-open probe (one request that tests Customer.io)."""
        return self.probe_id is not None

    def __repr__(self) -> str:
        kind = f"probe {self.probe_id}" if self.probe_id else "call"
        return f"<Permit {kind}>"


@dataclass(frozen=True)
class Snapshot:
    """What a breaker looks like to this process, for the admin, health check and commands.

    Attributes:
        destination: The destination (base URL and site id) the breaker guards.
        state: ``closed``, ``open`` or ``half_open``.
        mode: ``auto``, ``forced_open``, ``forced_closed`` or ``disabled``.
        version: The compare-and-set version of the shared row.
        opened_at: When it last opened (``None`` while closed); a failed probe re-opens it.
        open_since: When it left the closed state (kept through half-open and re-opens);
            ``None`` while closed.
        retry_at: When a call may be admitted again: the end of the cooldown while open, the
            earliest probe lease expiry while half-open with every slot taken; ``None`` when
            calls are admitted now, or when only an operator can close it (forced open).
        cooldown: The current cooldown in seconds (grows with each failed probe).
        calls: Successes and failures in the sliding window: those merged into the shared
            row (by every process) plus this process's pending outcomes; the calls that
            opened the breaker stay in it while open.
        failures: Failures in the window.
        slow_calls: Slow successes in the window.
        failure_rate: ``failures / calls`` (``0.0`` for an empty window).
        slow_rate: ``slow_calls / calls``.
        consecutive_failures: Failures in a row while closed.
        half_open_successes: Probe successes in the current half-open period.
        probes_in_flight: Live probe leases.
        probe_limit: ``BREAKER_HALF_OPEN_MAX_CALLS``.
        success_threshold: ``BREAKER_SUCCESS_THRESHOLD``.
        pending_outcomes: Outcomes of this process not merged into the shared row yet
            (included in the counts above; ``snapshot(fresh=True)`` writes them first).
        updated_at: When the shared row last changed.
        read_at: When this process last read (or wrote) the shared row.
    """

    destination: str
    state: core.State
    mode: core.Mode
    version: int
    opened_at: datetime | None
    open_since: datetime | None
    retry_at: datetime | None
    cooldown: float
    calls: int
    failures: int
    slow_calls: int
    failure_rate: float
    slow_rate: float
    consecutive_failures: int
    half_open_successes: int
    probes_in_flight: int
    probe_limit: int
    success_threshold: int
    pending_outcomes: int
    updated_at: datetime | None
    read_at: datetime | None

    @property
    def label(self) -> str:
        """``forced_open``, ``forced_closed`` or ``disabled`` for a manual mode, else the state."""
        return self.state if self.mode == "auto" else self.mode


class Breaker:
    """The circuit breaker of one destination, as seen by one process.

    Every process (and every :class:`Breaker` instance) shares the state through the database;
    an instance only caches it. Thread-safe.

    Args:
        destination: What the breaker guards (``app_settings.destination``).
        config: Thresholds and timings.
        cache_seconds: How long the cached state is trusted.
        using: The database alias (default: the router's choice for ``BreakerState``).
    """

    def __init__(
        self,
        destination: str,
        config: core.BreakerConfig | None = None,
        *,
        cache_seconds: float = 1.0,
        using: str | None = None,
    ) -> None:
        self.destination = destination
        self.machine = core.BreakerMachine(config or core.BreakerConfig())
        self.cache_seconds = cache_seconds
        self.using = using or router.db_for_write(BreakerStateRow) or "default"
        self._lock = threading.RLock()
        # (row, read_at, retry_at): replaced as a whole so lock-free readers see one version.
        self._cache: tuple[_Row, float, float | None] | None = None
        # This process's estimate of the shared state with its own failures (and slow calls)
        # applied, to merge at once when they alone would trip it.
        self._local: core.BreakerState | None = None
        self._streak_broken = False
        self._pending: list[tuple[core.Outcome, float]] = []

    @classmethod
    def from_settings(cls, destination: str | None = None) -> Breaker:
        """A breaker configured from ``CIO_RELIABLE`` (for the configured destination)."""
        return cls(
            destination or app_settings.destination,
            config_from_settings(),
            cache_seconds=cache_seconds_from_settings(),
        )

    def __repr__(self) -> str:
        cache = self._cache
        state = cache[0].state if cache else None
        shown = f"{state.state}/{state.mode} v{state.version}" if state else "unread"
        return f"<Breaker {self._host()} {shown}>"

    # ------------------------------------------------------------------ calls

    def allow(self) -> Permit | None:
        """Ask to make one request now.

        Answers from the cached state while it is fresh (no query): a closed breaker admits,
        an open one before its cooldown ends and a forced-open one refuse. Otherwise reads the
        shared row; an open breaker whose cooldown has elapsed turns half-open, and a free
        probe slot is taken by compare-and-set.

        Returns:
            A :class:`Permit` (report its outcome with :meth:`record`), or ``None`` when the
            call must not be made (store the operation and leave it to the drain).
        """
        now = _now()
        cache = self._cache
        if cache is not None and 0.0 <= now - cache[1] < self.cache_seconds:
            if cache[0].state.state == "closed":
                return Permit(None, now)
            if self._refuses(cache, now):
                return None
        return self._mutate(self._admit, fallback=self._admit_from_cache)

    def record(self, permit: Permit, outcome: core.Outcome) -> None:
        """Report how the request made under ``permit`` ended.

        A probe's outcome is written to the shared row at once (it may close or re-open the
        breaker). Other outcomes are collected and merged periodically; they are written at
        once when they would trip the breaker on their own.

        Args:
            permit: The permit the request was made under.
            outcome: Success, failure or ignored, with the request's duration
                (see :func:`outcome_for`).
        """
        if permit.probe_id is not None:
            probe_id = permit.probe_id

            def probe_done(state: core.BreakerState, now: float) -> _Changed[None]:
                new, transition = self.machine.record(state, outcome, now, probe_id)
                return _Changed(new, (transition,) if transition else (), None)

            self._mutate(probe_done, fallback=_none)
            return
        if outcome.kind == "ignored":
            return
        with self._lock:
            cache = self._cache
            row = cache[0] if cache is not None else None
            if row is None or row.state.state != "closed":
                return  # open: the outcome describes the past; half-open: only probes count
            now = _now()
            self._pending.append((outcome, now))
            flush = len(self._pending) >= FLUSH_EVERY
            config = self.machine.config
            if outcome.kind == "success" and not (
                config.slow_call_trigger_enabled and outcome.duration > config.slow_call_seconds
            ):
                # A plain success cannot trip it: only note that it broke a failure streak.
                self._streak_broken = True
            else:
                # Would this process's own outcomes trip it? Then merge now, not in a second.
                # (Plain successes are left out of this estimate: it errs towards merging.)
                local = self._local or row.state
                if self._streak_broken and local.consecutive_failures:
                    local = replace(local, consecutive_failures=0)
                self._streak_broken = False
                local, transition = self.machine.record(local, outcome, now)
                self._local = local
                flush = flush or transition is not None
        if flush:
            self.flush()

    def cancel(self, permit: Permit | None) -> None:
        """Hand back a permit that was not used (frees its probe slot at once)."""
        if permit is not None and permit.probe_id is not None:
            self.record(permit, core.Outcome.ignored())

    def flush(self) -> None:
        """Merge this process's collected outcomes into the shared row now."""
        if self._pending:
            self._mutate(_unchanged, fallback=_none)

    def refusing(self) -> bool:
        """Whether the cached state (if fresh) refuses calls right now. Never queries."""
        now = _now()
        cache = self._cache
        if cache is None or not 0.0 <= now - cache[1] < self.cache_seconds:
            return False
        return self._refuses(cache, now)

    # ------------------------------------------------------------------ operators

    def force(
        self, mode: str, *, user: AnyUser | None = None, reason: str = ""
    ) -> core.Transition | None:
        """Switch the mode for every process (an operator's action), recorded as an event.

        - ``forced_open``: refuse every call (a kill switch during an incident).
        - ``forced_closed``: admit every call; outcomes are counted but never trip it.
        - ``disabled``: metrics only (like ``forced_closed``).
        - ``auto``: automatic again, reset to closed with every counter cleared (also the
          "reset" of an automatic breaker).

        Args:
            mode: The new mode.
            user: Who did it (stored on the event and sent with the signal).
            reason: Why, appended to the event's reason.

        Returns:
            The transition, or ``None`` when the state and mode did not change (e.g. forcing
            the mode the breaker is already in).

        Raises:
            ValueError: ``mode`` is not one of :data:`MODES`.
            BreakerConflict: Other processes kept changing the breaker (very unlikely).
        """
        target = next((known for known in core.MODES if known == mode), None)
        if target is None:
            raise ValueError(f"mode must be one of {', '.join(core.MODES)}, got {mode!r}")

        def change(state: core.BreakerState, now: float) -> _Changed[core.Transition | None]:
            new, transition = self.machine.force(state, target, now)
            return _Changed(new, (transition,) if transition else (), transition)

        return self._mutate(change, user=user, note=reason)

    def snapshot(self, fresh: bool = False) -> Snapshot:
        """The breaker's state, from the cache unless it is stale or ``fresh`` is set.

        The window counts include this process's collected outcomes at once, merged or not
        (working them in is done in memory: no query while the cache is fresh).

        Args:
            fresh: Read the shared row now (merging this process's collected outcomes first).

        Returns:
            The :class:`Snapshot`.
        """
        now = _now()
        cache = self._cache
        if fresh or cache is None or not 0.0 <= now - cache[1] < self.cache_seconds:
            self._mutate(_unchanged, fallback=_none)
        with self._lock:
            cache = self._cache
            pending = list(self._pending)
        if cache is None:  # pragma: no cover - _mutate always leaves a cache
            cache = (_Row(core.BreakerState(), None, None), -math.inf, None)
        row, read_at = cache[0], cache[1]
        machine = self.machine
        # This process's unmerged outcomes count too (in memory only; nothing is written).
        merged = machine.record_many(row.state, pending)[0] if pending else row.state
        stats = machine.window(merged, now)
        live = [expiry for _, expiry in row.state.probes if expiry > now]
        retry_at = machine.retry_at(row.state)
        if row.state.state == "half_open" and len(live) >= machine.config.half_open_max_calls:
            retry_at = min(live)
        return Snapshot(
            destination=self.destination,
            state=row.state.state,
            mode=row.state.mode,
            version=row.state.version,
            opened_at=_datetime(row.state.opened_at),
            open_since=row.open_since,
            retry_at=_datetime(retry_at),
            cooldown=machine.cooldown(row.state),
            calls=stats.calls,
            failures=stats.failures,
            slow_calls=stats.slow,
            failure_rate=stats.failure_rate,
            slow_rate=stats.slow_rate,
            consecutive_failures=merged.consecutive_failures,
            half_open_successes=row.state.half_open_successes,
            probes_in_flight=len(live),
            probe_limit=machine.config.half_open_max_calls,
            success_threshold=machine.config.success_threshold,
            pending_outcomes=len(pending),
            updated_at=row.updated_at,
            read_at=_datetime(read_at) if math.isfinite(read_at) else None,
        )

    def invalidate(self) -> None:
        """Forget the cached state (the next call reads the shared row). Keeps the outcomes."""
        with self._lock:
            cache = self._cache
            if cache is not None:
                self._cache = (cache[0], -math.inf, cache[2])

    # ------------------------------------------------------------------ internals

    def _refuses(self, cache: tuple[_Row, float, float | None], now: float) -> bool:
        """Whether the cached ``(row, read_at, retry_at)`` refuses a call at ``now``."""
        state = cache[0].state
        if state.state == "closed":
            return False
        if state.mode == "forced_open":
            return True
        if state.state == "open":
            return cache[2] is not None and now < cache[2]
        return self._probes_full(state, now)

    def _probes_full(self, state: core.BreakerState, now: float) -> bool:
        live = sum(1 for _, expiry in state.probes if expiry > now)
        return live >= self.machine.config.half_open_max_calls

    def _admit(self, state: core.BreakerState, now: float) -> _Changed[Permit | None]:
        decision = self.machine.decide(state, now)
        transitions = (decision.transition,) if decision.transition else ()
        if not decision.allowed:
            return _Changed(decision.state, transitions, None)
        if not decision.probe_required:
            return _Changed(decision.state, transitions, Permit(None, now))
        probe_id = uuid.uuid4().hex
        new, granted = self.machine.acquire_probe(decision.state, now, probe_id)
        return _Changed(new, transitions, Permit(probe_id, now) if granted else None)

    def _admit_from_cache(self) -> Permit | None:
        cache = self._cache
        if cache is not None and cache[0].state.state == "closed":
            return Permit(None, _now())
        return None

    def _load(self) -> _Row:
        """Read the shared row (creating it on first use)."""
        manager = BreakerStateRow.objects.using(self.using)
        found = (
            manager.filter(destination=self.destination)
            .values_list("data", "version", "open_since", "updated_at")
            .first()
        )
        if found is None:
            initial = core.BreakerState()
            row, _ = manager.get_or_create(
                destination=self.destination,
                defaults={
                    "data": initial.to_dict(),
                    "state": initial.state,
                    "mode": initial.mode,
                    "version": initial.version,
                },
            )
            found = (row.data, row.version, row.open_since, row.updated_at)
        data, version, open_since, updated_at = found
        try:
            state = core.BreakerState.from_dict(data)
        except ValueError as exc:
            log.error(
                "cio: breaker state of %s is unreadable (%s); starting again from closed",
                self._host(),
                exc,
            )
            state = core.BreakerState()
        if state.version != version:
            state = replace(state, version=version)
        return _Row(state, open_since, updated_at)

    def _remember(self, row: _Row, now: float) -> None:
        """Cache ``row`` (the outcomes merged into it already taken out of the pending ones)."""
        with self._lock:
            self._local = row.state
            self._streak_broken = False
            self._cache = (row, now, self.machine.retry_at(row.state))

    def _mutate(
        self,
        change: Callable[[core.BreakerState, float], _Changed[_R]],
        *,
        fallback: Callable[[], _R] | None = None,
        user: AnyUser | None = None,
        note: str = "",
    ) -> _R:
        """Read the row, merge the collected outcomes, apply ``change``, compare-and-set.

        Retries with a fresh read when another process changed the row meanwhile. ``change``
        decides from the state it is given; its result is returned only once the state it
        produced is stored (a probe slot is granted only if its write won). After
        :data:`CAS_ATTEMPTS` lost races, returns ``fallback()`` (or raises
        :class:`BreakerConflict` without one).
        """
        # Take this process's collected outcomes out, so no other thread merges them too; no
        # lock is held over the database (the compare-and-set orders the writers).
        with self._lock:
            merged, self._pending = self._pending, []
        try:
            for _ in range(CAS_ATTEMPTS):
                now = _now()
                row = self._load()
                state, automatic = self.machine.record_many(row.state, merged)
                changed = change(state, now)
                stored: _Row | None = row
                if changed.state.version != row.state.version:
                    stored = self._write(
                        row,
                        changed.state,
                        [(t, None, "") for t in automatic]
                        + [(t, user, note) for t in changed.transitions],
                        now,
                    )
                if stored is not None:
                    merged = []
                    self._remember(stored, now)
                    return changed.result
            log.warning(
                "cio: breaker of %s: gave up a change after %d compare-and-set conflicts",
                self._host(),
                CAS_ATTEMPTS,
            )
            self.invalidate()
        finally:
            if merged:  # not stored: give them back, in order, for the next merge
                with self._lock:
                    self._pending[:0] = merged
        if fallback is None:
            raise BreakerConflict(
                f"the breaker changed {CAS_ATTEMPTS} times while this change was being made"
            )
        return fallback()

    def _write(
        self,
        old: _Row,
        new: core.BreakerState,
        transitions: list[tuple[core.Transition, AnyUser | None, str]],
        now: float,
    ) -> _Row | None:
        """Store ``new`` if the row still has ``old``'s version; record ``transitions``."""
        moment = datetime.fromtimestamp(now, tz=timezone.utc)
        if new.state == "closed":
            open_since = None
        elif old.state.state == "closed" or old.open_since is None:
            open_since = moment
        else:
            open_since = old.open_since
        fields = {
            "data": new.to_dict(),
            "state": new.state,
            "mode": new.mode,
            "version": new.version,
            "opened_at": _datetime(new.opened_at),
            "open_since": open_since,
            "updated_at": moment,
        }
        rows = BreakerStateRow.objects.using(self.using).filter(
            destination=self.destination, version=old.state.version
        )
        if not transitions:
            return _Row(new, open_since, moment) if rows.update(**fields) else None
        with transaction.atomic(using=self.using):
            if not rows.update(**fields):
                return None
            events = BreakerEvent.objects.using(self.using).bulk_create(
                [
                    BreakerEvent(
                        destination=self.destination,
                        from_state=t.from_state,
                        to_state=t.to_state,
                        from_mode=t.from_mode,
                        to_mode=t.to_mode,
                        reason=(f"{t.reason}: {note}" if note else t.reason)[:MAX_REASON_LENGTH],
                        user=_stored_user(user),
                        username=user.get_username()[:150] if user is not None else "",
                        created_at=moment,
                    )
                    for t, user, note in transitions
                ]
            )
        for (transition, user, _), event in zip(transitions, events, strict=True):
            self._announce(transition, event, user)
        return _Row(new, open_since, moment)

    def _announce(
        self, transition: core.Transition, event: BreakerEvent, user: AnyUser | None
    ) -> None:
        log.log(
            logging.WARNING if transition.to_state != "closed" else logging.INFO,
            "cio: circuit breaker of %s: %s/%s -> %s/%s (%s)",
            self._host(),
            transition.from_state,
            transition.from_mode,
            transition.to_state,
            transition.to_mode,
            event.reason,
        )

        def send() -> None:
            signals.breaker_state_changed.send_robust(
                sender=BreakerStateRow,
                destination=self.destination,
                old_state=transition.from_state,
                new_state=transition.to_state,
                old_mode=transition.from_mode,
                new_mode=transition.to_mode,
                reason=event.reason,
                user=user,
                event=event,
            )

        transaction.on_commit(send, using=self.using)

    def _host(self) -> str:
        return self.destination.split("#", 1)[0]


def _stored_user(user: AnyUser | None) -> Any:
    """The user to store on an event: a saved user, else ``None`` (anonymous, unsaved)."""
    if user is None or user.pk is None or not user.is_authenticated:
        return None
    return user


def _unchanged(state: core.BreakerState, now: float) -> _Changed[None]:
    return _Changed(state, (), None)


def _none() -> None:
    return None


# --------------------------------------------------------------------------- per process

_registry_lock = threading.Lock()
_current: tuple[int, Breaker] | None = None


def get_breaker() -> Breaker:
    """The breaker of the configured destination in this process (built on first use).

    Rebuilt when ``CIO_RELIABLE`` changes and after a fork.
    """
    global _current
    current = _current
    if current is not None and current[0] == os.getpid():
        return current[1]
    with _registry_lock:
        current = _current
        if current is None or current[0] != os.getpid():
            current = (os.getpid(), Breaker.from_settings())
            _current = current
        return current[1]


@on_reset
def reset() -> None:
    """Forget this process's breaker (``CIO_RELIABLE`` changed); the next call builds a new one.

    Outcomes it had not merged yet are dropped: they are advisory, and the destination they
    were measured against may be another one now.
    """
    global _current
    with _registry_lock:
        _current = None


def recent_events(limit: int = 50, *, destination: str | None = None) -> QuerySet[BreakerEvent]:
    """The latest breaker transitions of a destination, newest first.

    Args:
        limit: How many.
        destination: Default: the configured destination.

    Returns:
        A sliced queryset of :class:`~django_cio_reliable.models.BreakerEvent`.
    """
    events: QuerySet[BreakerEvent] = BreakerEvent.objects.filter(
        destination=destination or app_settings.destination
    ).order_by("-created_at", "-id")[: max(0, limit)]
    return events

"""The breaker's rules: a pure state machine with the clock passed in.

Nothing here touches the database, the cache, settings or the network, and nothing sleeps.
Every operation of :class:`BreakerMachine` takes an immutable, JSON-serialisable
:class:`BreakerState` and ``now`` (float seconds of one clock shared by every process) and
returns the next state. A changed state carries ``version + 1``; an unchanged one is the very
same object, so storage can compare-and-set on ``version`` and skip writing when nothing changed.

- closed → open when, after a counted outcome, ``consecutive_failures`` failures happened in a
  row, or the failure rate (or, if enabled, the slow-call rate) over the sliding window reaches
  its threshold with at least ``minimum_calls`` calls in it.
- open → half-open in :meth:`BreakerMachine.decide` once the cooldown has elapsed.
- half-open admits at most ``half_open_max_calls`` probes, each a lease expiring after
  ``probe_lease_seconds``; ``success_threshold`` probe successes close it, one probe failure
  reopens it with a cooldown grown by ``reset_timeout_multiplier``.
- Late outcomes never corrupt the state: while open every outcome is ignored; while half-open
  only a probe whose lease is still live counts.
- The window keeps the calls that opened the breaker until they age out; it starts empty again
  when the breaker closes from half-open or is reset (``force(..., "auto")``).
- ``ignored`` outcomes (a 4xx caused by the payload) count as neither success nor failure; in
  half-open they free the probe's slot.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from django_cio_reliable.exceptions import DeliveryError

State = Literal["closed", "open", "half_open"]
Mode = Literal["auto", "forced_open", "forced_closed", "disabled"]
OutcomeKind = Literal["success", "failure", "ignored"]

#: A probe lease: ``(probe_id, lease_expiry)``.
Probe = tuple[str, float]
#: A window bucket: ``(bucket_start, calls, failures, slow)``.
Bucket = tuple[float, int, int, int]

STATES: tuple[State, ...] = ("closed", "open", "half_open")
MODES: tuple[Mode, ...] = ("auto", "forced_open", "forced_closed", "disabled")
OUTCOME_KINDS: tuple[OutcomeKind, ...] = ("success", "failure", "ignored")

#: Counters saturate here, so a stored state never grows without bound.
COUNTER_CAP = 2**31 - 1
#: Most buckets a window may be split into.
MAX_WINDOW_BUCKETS = 1000
#: Most probes half-open may admit at once.
MAX_PROBES = 1000
#: Longest probe id accepted.
MAX_PROBE_ID_LENGTH = 200
#: Largest clock reading accepted (seconds; both monotonic and Unix clocks are far below).
MAX_CLOCK = 1e12


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


def _integer(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return value


def _counter(name: str, value: object) -> int:
    number = _integer(name, value)
    if not 0 <= number <= COUNTER_CAP:
        raise ValueError(f"{name} must be >= 0 and <= {COUNTER_CAP}, got {number}")
    return number


def _tuples(name: str, value: object, size: int) -> list[tuple[Any, ...]]:
    """``value``, a list of lists of ``size`` items each (as JSON gives them), as tuples."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name}s must be a list, got {type(value).__name__}")
    for item in value:
        if not isinstance(item, (list, tuple)) or len(item) != size:
            raise ValueError(f"a {name} must be a list of {size} items, got {item!r}")
    return [tuple(item) for item in value]


def _check_now(now: object) -> float:
    value = _number("now", now)
    if abs(value) > MAX_CLOCK:
        raise ValueError(f"now must be a clock reading in seconds (<= {MAX_CLOCK:g}), got {now!r}")
    return value


def _check_probe_id(probe_id: object) -> str:
    if not isinstance(probe_id, str) or not 0 < len(probe_id) <= MAX_PROBE_ID_LENGTH:
        raise ValueError(
            f"probe_id must be a string of 1 to {MAX_PROBE_ID_LENGTH} characters, got {probe_id!r}"
        )
    return probe_id


@dataclass(frozen=True)
class BreakerConfig:
    """Thresholds and timings of a circuit breaker.

    Attributes:
        failure_rate_threshold: Failure rate (``0 < x <= 1``) over the window that opens the
            breaker.
        window_seconds: Length of the sliding window the rates are measured over.
        window_buckets: Number of fixed time buckets the window is split into; the window
            slides one bucket (``window_seconds / window_buckets``) at a time.
        minimum_calls: Calls the window must hold before a rate can open the breaker.
        consecutive_failures: Failures in a row that open the breaker; ``0`` disables.
        slow_call_seconds: A success that took longer than this is a slow call.
        slow_call_rate_threshold: Slow-call rate over the window that opens the breaker;
            ``1.0`` (the default) disables the slow-call trigger.
        reset_timeout: Cooldown before an open breaker turns half-open.
        reset_timeout_multiplier: Each consecutive re-open from half-open multiplies the
            cooldown by this (``1.0``: constant cooldown).
        reset_timeout_max: Upper bound of the grown cooldown.
        half_open_max_calls: Probes admitted at once in half-open.
        probe_lease_seconds: A probe that has not reported back within this is lost and its
            slot is free again. Keep it longer than the call timeout.
        success_threshold: Probe successes in half-open that close the breaker.
    """

    failure_rate_threshold: float = 0.5
    window_seconds: float = 60.0
    window_buckets: int = 20
    minimum_calls: int = 10
    consecutive_failures: int = 5
    slow_call_seconds: float = 5.0
    slow_call_rate_threshold: float = 1.0
    reset_timeout: float = 30.0
    reset_timeout_multiplier: float = 1.0
    reset_timeout_max: float = 600.0
    half_open_max_calls: int = 1
    probe_lease_seconds: float = 15.0
    success_threshold: int = 3

    def __post_init__(self) -> None:
        for name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            if not 0 < _number(name, getattr(self, name)) <= 1:
                raise ValueError(f"{name} must be > 0 and <= 1, got {getattr(self, name)!r}")
        for name in ("window_seconds", "slow_call_seconds", "reset_timeout", "probe_lease_seconds"):
            if _number(name, getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.window_seconds < 0.001:
            raise ValueError(f"window_seconds must be >= 0.001, got {self.window_seconds!r}")
        for name, low, high in (
            ("window_buckets", 1, MAX_WINDOW_BUCKETS),
            ("minimum_calls", 1, COUNTER_CAP),
            ("consecutive_failures", 0, COUNTER_CAP),
            ("half_open_max_calls", 1, MAX_PROBES),
            ("success_threshold", 1, COUNTER_CAP),
        ):
            if not low <= _integer(name, getattr(self, name)) <= high:
                raise ValueError(
                    f"{name} must be >= {low} and <= {high}, got {getattr(self, name)}"
                )
        if _number("reset_timeout_multiplier", self.reset_timeout_multiplier) < 1:
            raise ValueError(
                f"reset_timeout_multiplier must be >= 1, got {self.reset_timeout_multiplier!r}"
            )
        if _number("reset_timeout_max", self.reset_timeout_max) < self.reset_timeout:
            raise ValueError(
                f"reset_timeout_max must be >= reset_timeout ({self.reset_timeout!r}), "
                f"got {self.reset_timeout_max!r}"
            )

    @property
    def bucket_seconds(self) -> float:
        """Width of one window bucket in seconds."""
        return self.window_seconds / self.window_buckets

    @property
    def slow_call_trigger_enabled(self) -> bool:
        """Whether a slow-call rate can open the breaker."""
        return self.slow_call_rate_threshold < 1.0


@dataclass(frozen=True)
class BreakerState:
    """The whole state of one breaker: small, immutable and JSON-serialisable.

    Attributes:
        state: ``closed``, ``open`` or ``half_open``.
        mode: ``auto``, ``forced_open``, ``forced_closed`` or ``disabled``.
        opened_at: When the breaker last opened; ``None`` exactly when it is closed.
        reopen_count: Consecutive re-opens from half-open since it last closed (grows the
            cooldown).
        consecutive_failures: Failures in a row while closed.
        half_open_successes: Probe successes in the current half-open period.
        probes: Live (or not yet cleaned up) probe leases, ``(probe_id, lease_expiry)``.
        buckets: The sliding window, ``(bucket_start, calls, failures, slow)``, oldest first.
        version: Incremented on every change; the compare-and-set token.
    """

    state: State = "closed"
    mode: Mode = "auto"
    opened_at: float | None = None
    reopen_count: int = 0
    consecutive_failures: int = 0
    half_open_successes: int = 0
    probes: tuple[Probe, ...] = ()
    buckets: tuple[Bucket, ...] = ()
    version: int = 0

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}, got {self.state!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "forced_open" and self.state != "open":
            raise ValueError(f"state must be open in mode forced_open, got {self.state!r}")
        if self.mode in ("forced_closed", "disabled") and self.state != "closed":
            raise ValueError(f"state must be closed in mode {self.mode}, got {self.state!r}")
        if self.state == "closed":
            if self.opened_at is not None:
                raise ValueError(f"opened_at must be null when closed, got {self.opened_at!r}")
        else:
            _number("opened_at", self.opened_at)
        _counter("reopen_count", self.reopen_count)
        _counter("consecutive_failures", self.consecutive_failures)
        _counter("half_open_successes", self.half_open_successes)
        if _integer("version", self.version) < 0:
            raise ValueError(f"version must be >= 0, got {self.version}")
        if self.state != "half_open" and (self.probes or self.half_open_successes):
            raise ValueError("probes and half_open_successes must be empty unless half-open")
        if len(self.probes) > MAX_PROBES:
            raise ValueError(f"probes must hold at most {MAX_PROBES} leases")
        seen: set[str] = set()
        for probe in self.probes:
            if not isinstance(probe, tuple) or len(probe) != 2:
                raise ValueError(f"a probe must be (probe_id, lease_expiry), got {probe!r}")
            probe_id = _check_probe_id(probe[0])
            _number("probe lease_expiry", probe[1])
            if probe_id in seen:
                raise ValueError(f"probe ids must be unique, got {probe_id!r} twice")
            seen.add(probe_id)
        if len(self.buckets) > MAX_WINDOW_BUCKETS:
            raise ValueError(f"buckets must hold at most {MAX_WINDOW_BUCKETS} entries")
        previous = -math.inf
        for bucket in self.buckets:
            if not isinstance(bucket, tuple) or len(bucket) != 4:
                raise ValueError(f"a bucket must be (start, calls, failures, slow), got {bucket!r}")
            start = _number("bucket start", bucket[0])
            calls = _counter("bucket calls", bucket[1])
            if _counter("bucket failures", bucket[2]) + _counter("bucket slow", bucket[3]) > calls:
                raise ValueError(f"bucket failures + slow must be <= calls, got {bucket!r}")
            if start <= previous:
                raise ValueError("bucket starts must be strictly increasing")
            previous = start

    def to_dict(self) -> dict[str, Any]:
        """The state as JSON-serialisable builtins (lists, not tuples)."""
        return {
            **asdict(self),
            "probes": [list(probe) for probe in self.probes],
            "buckets": [list(bucket) for bucket in self.buckets],
        }

    @classmethod
    def from_dict(cls, data: object) -> BreakerState:
        """Rebuild a state from :meth:`to_dict` output (typically after a JSON round-trip).

        Unknown keys are ignored and missing keys take their defaults, so rows written by
        an older or newer version still load.

        Args:
            data: A mapping as produced by :meth:`to_dict`.

        Returns:
            The state.

        Raises:
            ValueError: ``data`` is not a valid breaker state.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"breaker state must be a mapping, got {type(data).__name__}")
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        if values.get("opened_at") is not None:
            values["opened_at"] = _number("opened_at", values["opened_at"])
        values["probes"] = tuple(
            (probe_id, _number("probe lease_expiry", expiry))
            for probe_id, expiry in _tuples("probe", values.get("probes", ()), 2)
        )
        values["buckets"] = tuple(
            (_number("bucket start", start), *counts)
            for start, *counts in _tuples("bucket", values.get("buckets", ()), 4)
        )
        return cls(**values)


@dataclass(frozen=True)
class Outcome:
    """What a call through the breaker ended with.

    Attributes:
        kind: ``success``; ``failure`` (network error, timeout, 5xx, 429); or ``ignored`` (a
            4xx caused by the payload: neither success nor failure, but it frees a probe slot).
        duration: How long the call took, in seconds.
    """

    kind: OutcomeKind
    duration: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in OUTCOME_KINDS:
            raise ValueError(f"kind must be one of {', '.join(OUTCOME_KINDS)}, got {self.kind!r}")
        if _number("duration", self.duration) < 0:
            raise ValueError(f"duration must be >= 0, got {self.duration!r}")

    @classmethod
    def success(cls, duration: float = 0.0) -> Outcome:
        """A call Customer.io accepted, which took ``duration`` seconds."""
        return cls("success", duration)

    @classmethod
    def failure(cls, duration: float = 0.0) -> Outcome:
        """A network error, timeout, 5xx or 429, after ``duration`` seconds."""
        return cls("failure", duration)

    @classmethod
    def ignored(cls, duration: float = 0.0) -> Outcome:
        """A 4xx caused by the payload: says nothing about Customer.io's health."""
        return cls("ignored", duration)


def outcome_for(error: DeliveryError | None, duration: float) -> Outcome:
    """The breaker outcome of a request that took ``duration`` seconds.

    Args:
        error: The delivery error it ended with; ``None`` for a success (a 207 partial batch
            included: Customer.io answered).
        duration: Seconds the request took.

    Returns:
        ``success``; ``failure`` for network errors, timeouts, 5xx, 408/425 and 429; ``ignored``
        for a permanent 4xx (the payload's fault) and for 401/403 (a credentials problem is not
        an outage, and the credentials pause already stops every worker).
    """
    duration = max(0.0, duration) if math.isfinite(duration) else 0.0
    if error is None:
        return Outcome.success(duration)
    if error.kind in ("permanent", "auth"):
        return Outcome.ignored(duration)
    return Outcome.failure(duration)


@dataclass(frozen=True)
class Transition:
    """A change of ``state`` or ``mode``, to be stored as an event and signalled.

    Attributes:
        from_state: The state before.
        to_state: The state after.
        reason: Why, for humans: ``"5 consecutive failures"``, ``"probe failed"``, ...
        at: The clock reading (``now``) of the change.
        from_mode: The mode before.
        to_mode: The mode after.
    """

    from_state: State
    to_state: State
    reason: str
    at: float
    from_mode: Mode = "auto"
    to_mode: Mode = "auto"


@dataclass(frozen=True)
class Decision:
    """Whether a call may go ahead now.

    Attributes:
        allowed: The call may go ahead. In half-open this means a probe slot is free right
            now; the caller must still win it with :meth:`BreakerMachine.acquire_probe`.
        probe_required: The breaker is half-open: the call needs a probe slot.
        state: The state to persist (differs from the input only when open turned half-open).
        transition: The open → half-open transition, if this decision made it.
        retry_at: When refused, the earliest time a call may be admitted; ``None`` when
            allowed or when only an operator can reopen the gate (forced open).
    """

    allowed: bool
    probe_required: bool
    state: BreakerState
    transition: Transition | None = None
    retry_at: float | None = None


@dataclass(frozen=True)
class WindowStats:
    """Counts over the sliding window at a given time.

    Attributes:
        calls: Successes and failures in the window.
        failures: Failures in the window.
        slow: Successes slower than ``slow_call_seconds`` in the window.
    """

    calls: int
    failures: int
    slow: int

    @property
    def failure_rate(self) -> float:
        """``failures / calls``, or ``0.0`` for an empty window."""
        return self.failures / self.calls if self.calls else 0.0

    @property
    def slow_rate(self) -> float:
        """``slow / calls``, or ``0.0`` for an empty window."""
        return self.slow / self.calls if self.calls else 0.0


def _evolve(current: BreakerState, /, **changes: Any) -> BreakerState:
    """``current`` with ``changes`` and ``version + 1``, or ``current`` if nothing changed."""
    candidate = replace(current, **changes)
    if candidate == current:
        return current
    return replace(candidate, version=current.version + 1)


def _transition(old: BreakerState, new: BreakerState, reason: str, now: float) -> Transition | None:
    if old.state == new.state and old.mode == new.mode:
        return None
    return Transition(old.state, new.state, reason, now, old.mode, new.mode)


def _add_successes(state: BreakerState, count: int) -> BreakerState:
    """``state`` with ``count`` more plain successes in its newest window bucket."""
    *older, (start, calls, failures, slow) = state.buckets
    newest = (start, min(calls + count, COUNTER_CAP), failures, slow)
    return replace(state, buckets=(*older, newest), version=state.version + 1)


#: Closing (from half-open, or a reset) clears every counter and the window.
_CLOSED: dict[str, Any] = {
    "state": "closed",
    "opened_at": None,
    "reopen_count": 0,
    "consecutive_failures": 0,
    "half_open_successes": 0,
    "probes": (),
    "buckets": (),
}
#: A forced mode keeps the window; it clears the probes and the grown cooldown.
_FORCED: dict[str, Any] = {"reopen_count": 0, "half_open_successes": 0, "probes": ()}
_FORCE_REASONS: dict[Mode, str] = {
    "forced_open": "forced open",
    "forced_closed": "forced closed",
    "disabled": "disabled (metrics only)",
}


@dataclass(frozen=True)
class BreakerMachine:
    """The pure transition functions of a breaker with a given :class:`BreakerConfig`.

    Every method takes the current :class:`BreakerState` and returns the next one; none
    mutates anything. A caller persists the returned state when its ``version`` differs.

    Attributes:
        config: Thresholds and timings.
    """

    config: BreakerConfig = field(default_factory=BreakerConfig)

    def cooldown(self, state: BreakerState) -> float:
        """Seconds an open breaker waits before it turns half-open.

        ``reset_timeout * reset_timeout_multiplier ** reopen_count``, capped at
        ``reset_timeout_max``.
        """
        config = self.config
        count = state.reopen_count
        if count == 0 or config.reset_timeout_multiplier == 1:
            return min(config.reset_timeout, config.reset_timeout_max)
        try:
            value = config.reset_timeout * config.reset_timeout_multiplier**count
        except OverflowError:
            value = math.inf
        return min(value, config.reset_timeout_max)

    def retry_at(self, state: BreakerState) -> float | None:
        """When an open breaker will admit a probe: ``opened_at + cooldown``.

        ``None`` when the breaker is not open (calls are admitted now) or is forced open (only
        an operator can reopen it).
        """
        if state.mode != "auto" or state.state != "open" or state.opened_at is None:
            return None
        return state.opened_at + self.cooldown(state)

    def window(self, state: BreakerState, now: float) -> WindowStats:
        """Counts over the sliding window at ``now`` (aged-out buckets excluded)."""
        now = _check_now(now)
        calls = failures = slow = 0
        for _, bucket_calls, bucket_failures, bucket_slow in self._live_buckets(state, now):
            calls += bucket_calls
            failures += bucket_failures
            slow += bucket_slow
        return WindowStats(calls, failures, slow)

    def decide(self, state: BreakerState, now: float) -> Decision:
        """Whether a call may go ahead at ``now``.

        An open breaker whose cooldown has elapsed turns half-open here (the returned state
        has a new version and the decision carries the transition). Nothing else changes:
        a closed breaker's decision returns the very same state object.

        Args:
            state: The breaker state.
            now: The clock reading.

        Returns:
            The decision, with the state to persist.
        """
        now = _check_now(now)
        if state.mode == "forced_open":
            return Decision(allowed=False, probe_required=False, state=state)
        if state.mode != "auto" or state.state == "closed":
            return Decision(allowed=True, probe_required=False, state=state)
        transition: Transition | None = None
        if state.state == "open":
            due = self.retry_at(state)
            if due is not None and now < due:
                return Decision(allowed=False, probe_required=False, state=state, retry_at=due)
            new = _evolve(state, state="half_open", probes=(), half_open_successes=0)
            reason = f"cooldown elapsed ({self.cooldown(state):g}s)"
            transition = _transition(state, new, reason, now)
            state = new
        live = [expiry for _, expiry in state.probes if expiry > now]
        if len(live) < self.config.half_open_max_calls:
            return Decision(allowed=True, probe_required=True, state=state, transition=transition)
        return Decision(False, True, state, transition, retry_at=min(live))

    def acquire_probe(
        self, state: BreakerState, now: float, probe_id: str
    ) -> tuple[BreakerState, bool]:
        """Take a half-open probe slot for ``probe_id``, as a lease until ``now + lease``.

        Expired leases are freed first; there are never more than ``half_open_max_calls``
        leases. Acquiring again with a live lease's id renews that lease. Only a half-open
        breaker in ``auto`` mode grants probes: call :meth:`decide` first (it turns an open
        breaker half-open when its cooldown has elapsed).

        Args:
            state: The breaker state.
            now: The clock reading.
            probe_id: A unique id for this call, reported back to :meth:`record`.

        Returns:
            ``(new_state, granted)``.
        """
        now = _check_now(now)
        probe_id = _check_probe_id(probe_id)
        if state.mode != "auto" or state.state != "half_open":
            return state, False
        expiry = now + self.config.probe_lease_seconds
        live = tuple(probe for probe in state.probes if probe[1] > now)
        if any(live_id == probe_id for live_id, _ in live):
            renewed = tuple(
                (live_id, expiry if live_id == probe_id else live_expiry)
                for live_id, live_expiry in live
            )
            return _evolve(state, probes=renewed), True
        if len(live) >= self.config.half_open_max_calls:
            return state, False
        return _evolve(state, probes=(*live, (probe_id, expiry))), True

    def record(
        self,
        state: BreakerState,
        outcome: Outcome,
        now: float,
        probe_id: str | None = None,
    ) -> tuple[BreakerState, Transition | None]:
        """Account for the outcome of a call that ended at ``now``.

        Closed (and forced closed / disabled): successes and failures are counted in the
        window; in ``auto`` mode they may open the breaker. Open (and forced open): every
        outcome is ignored, it describes the past. Half-open: only the outcome of a probe
        whose lease is live at ``now`` counts; anything else is a late report and ignored.

        Args:
            state: The breaker state.
            outcome: How the call ended.
            now: The clock reading.
            probe_id: The id the call acquired its probe slot with, if it was a probe.

        Returns:
            ``(new_state, transition)``; ``transition`` is ``None`` unless the state changed.
        """
        now = _check_now(now)
        if state.mode == "forced_open" or state.state == "open":
            return state, None
        if state.state == "half_open":
            return self._record_probe(state, outcome, now, probe_id)
        if outcome.kind == "ignored":
            return state, None
        counted = self._count(state, outcome, now)
        reason = self._trip_reason(counted, now) if state.mode == "auto" else None
        if reason is None:
            return counted, None
        # The window keeps the calls that opened the breaker, this one included (they age out).
        opened = _evolve(
            state, state="open", opened_at=now, consecutive_failures=0, buckets=counted.buckets
        )
        return opened, _transition(state, opened, reason, now)

    def record_many(
        self, state: BreakerState, outcomes: Iterable[tuple[Outcome, float]]
    ) -> tuple[BreakerState, list[Transition]]:
        """Account for ``(outcome, now)`` pairs in order: the same as :meth:`record` one by one.

        A run of plain successes within one window bucket is counted in bulk, except three
        that go through :meth:`record` so it still makes every decision: the first (it may
        age buckets out of the window), the one that brings the window to ``minimum_calls``
        (where a rate may trip it; more successes in the bucket only lower the rates) and the
        last. That makes merging a second of one process's outcomes a few core calls.

        Returns:
            ``(new_state, transitions)``.
        """
        transitions: list[Transition] = []

        def one(state: BreakerState, outcome: Outcome, at: float) -> BreakerState:
            new, transition = self.record(state, outcome, at)
            if transition is not None:
                transitions.append(transition)
            return new

        def successes(state: BreakerState, run: Sequence[tuple[Outcome, float]]) -> BreakerState:
            state = one(state, *run[0])
            rest = run[1:]
            if state.state == "closed" and len(rest) > 1:
                crossing = self.config.minimum_calls - self.window(state, rest[0][1]).calls - 1
                if 0 <= crossing < len(rest) - 1:
                    if crossing:
                        state = _add_successes(state, crossing)
                    state = one(state, *rest[crossing])
                    rest = rest[crossing + 1 :]
            if state.state == "closed" and len(rest) > 1:
                state = _add_successes(state, len(rest) - 1)
            return one(state, *rest[-1]) if rest else state

        run: list[tuple[Outcome, float]] = []
        for outcome, at in outcomes:
            if outcome.kind == "success" and outcome.duration <= self.config.slow_call_seconds:
                if run and self._index(at) != self._index(run[0][1]):
                    state, run = successes(state, run), []  # a run stays in one bucket
                run.append((outcome, at))
                continue
            if run:
                state, run = successes(state, run), []
            state = one(state, outcome, at)
        return (successes(state, run) if run else state), transitions

    def force(
        self, state: BreakerState, mode: Mode, now: float
    ) -> tuple[BreakerState, Transition | None]:
        """Switch the breaker's mode (an operator's action).

        - ``forced_open``: every call is refused until the mode changes (the window keeps
          the calls made before).
        - ``forced_closed``: every call is allowed; outcomes are counted but never trip it.
        - ``disabled``: metrics only, like ``forced_closed``.
        - ``auto``: automatic again, reset to closed with every counter cleared (also the
          "reset" of an automatic breaker).

        Forcing the mode the breaker is already in changes nothing (except ``auto``, which
        always clears the counters).

        Args:
            state: The breaker state.
            mode: The new mode.
            now: The clock reading.

        Returns:
            ``(new_state, transition)``; ``transition`` is ``None`` unless ``state`` or
            ``mode`` changed.

        Raises:
            ValueError: ``mode`` is not a known mode.
        """
        now = _check_now(now)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "auto":
            new = _evolve(state, mode=mode, **_CLOSED)
            reason = "reset" if state.mode == "auto" else "automatic mode restored"
            return new, _transition(state, new, reason, now)
        if state.mode == mode:
            return state, None
        if mode == "forced_open":
            new = _evolve(
                state, state="open", mode=mode, opened_at=now, consecutive_failures=0, **_FORCED
            )
        else:
            new = _evolve(state, state="closed", mode=mode, opened_at=None, **_FORCED)
        return new, _transition(state, new, _FORCE_REASONS[mode], now)

    # -- internals -------------------------------------------------------------------------

    def _index(self, when: float) -> int:
        return math.floor(when / self.config.bucket_seconds)

    def _live_buckets(self, state: BreakerState, now: float) -> tuple[Bucket, ...]:
        """The buckets still inside the window at ``now``.

        Buckets ahead of ``now`` (written by a process whose clock runs ahead) are kept.
        """
        width = self.config.bucket_seconds
        oldest = self._index(now) - self.config.window_buckets + 1
        kept = tuple(bucket for bucket in state.buckets if round(bucket[0] / width) >= oldest)
        return kept[-self.config.window_buckets :]

    def _count(self, state: BreakerState, outcome: Outcome, now: float) -> BreakerState:
        failed = outcome.kind == "failure"
        slow = not failed and outcome.duration > self.config.slow_call_seconds
        buckets = list(self._live_buckets(state, now))
        current = self._index(now)
        width = self.config.bucket_seconds
        if buckets and round(buckets[-1][0] / width) >= current:
            # The current bucket, or (clock behind another process's) the newest one.
            start, calls, failures, slow_calls = buckets[-1]
            if calls < COUNTER_CAP:
                buckets[-1] = (start, calls + 1, failures + failed, slow_calls + slow)
        else:
            buckets.append((current * width, 1, int(failed), int(slow)))
            del buckets[: -self.config.window_buckets]
        consecutive = min(state.consecutive_failures + 1, COUNTER_CAP) if failed else 0
        return _evolve(state, buckets=tuple(buckets), consecutive_failures=consecutive)

    def _trip_reason(self, state: BreakerState, now: float) -> str | None:
        config = self.config
        count = state.consecutive_failures
        if config.consecutive_failures and count >= config.consecutive_failures:
            return f"{count} consecutive failure{'s' if count != 1 else ''}"
        stats = self.window(state, now)
        if stats.calls < config.minimum_calls:
            return None
        span = f"over {stats.calls} calls in {config.window_seconds:g}s"
        if stats.failure_rate >= config.failure_rate_threshold:
            return f"failure rate {stats.failure_rate:.0%} {span}"
        if config.slow_call_trigger_enabled and stats.slow_rate >= config.slow_call_rate_threshold:
            slower = f"slower than {config.slow_call_seconds:g}s"
            return f"slow-call rate {stats.slow_rate:.0%} {span} ({slower})"
        return None

    def _record_probe(
        self, state: BreakerState, outcome: Outcome, now: float, probe_id: str | None
    ) -> tuple[BreakerState, Transition | None]:
        if probe_id is None or not any(
            live_id == probe_id and expiry > now for live_id, expiry in state.probes
        ):
            return state, None
        others = tuple(probe for probe in state.probes if probe[0] != probe_id)
        if outcome.kind == "ignored":
            return _evolve(state, probes=others), None
        config = self.config
        slow_probe = (
            outcome.kind == "success"
            and config.slow_call_trigger_enabled
            and outcome.duration > config.slow_call_seconds
        )
        if outcome.kind == "failure" or slow_probe:
            reopened = _evolve(
                state,
                state="open",
                opened_at=now,
                reopen_count=min(state.reopen_count + 1, COUNTER_CAP),
                half_open_successes=0,
                probes=(),
            )
            reason = (
                f"probe slow ({outcome.duration:g}s > {config.slow_call_seconds:g}s)"
                if slow_probe
                else "probe failed"
            )
            return reopened, _transition(state, reopened, reason, now)
        successes = state.half_open_successes + 1
        if successes < config.success_threshold:
            return _evolve(state, probes=others, half_open_successes=successes), None
        closed = _evolve(state, **_CLOSED)
        reason = f"{successes} success{'es' if successes != 1 else ''} in half-open"
        return closed, _transition(state, closed, reason, now)

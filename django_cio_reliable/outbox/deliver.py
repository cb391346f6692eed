"""The one send path: a :class:`Deliverer` sends a claim's operations (batched where
``/api/v2/batch`` allows), asks the breaker and the rate limit before every request, classifies
every outcome and acknowledges it. The drain, direct mode, inline dispatch, ``cio_replay --now``
and the admin's *replay now* all deliver through it (via :func:`~.runner.drain`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from django_cio_reliable.breaker import Breaker, Permit, get_breaker, outcome_for
from django_cio_reliable.conf import app_settings
from django_cio_reliable.exceptions import DeliveryError
from django_cio_reliable.lifecycle import Status
from django_cio_reliable.models import DeliveryState, Operation
from django_cio_reliable.outbox.ack import ack_delivered, ack_failures, redact
from django_cio_reliable.outbox.lease import Claim, hold, release
from django_cio_reliable.outbox.shared import RateLimiter, clear_auth_failure, pause, paused_until
from django_cio_reliable.retry import RetryPolicy, classify, pause_seconds
from django_cio_reliable.transport import (
    BATCH_FRAMING_BYTES,
    MAX_BATCH_ITEM_BYTES,
    BatchItem,
    Transport,
    batch_item_bytes,
    batchable,
)

log = logging.getLogger(__name__)

#: :attr:`DrainResult.stopped` when no rate-limit slot was free within ``rate_wait``.
NO_RATE_SLOT = "no rate-limit slot soon"


@dataclass
class DrainResult:
    """What one drain run did.

    ``breaker`` is set when the circuit breaker refused a request and the run stopped (or
    handed back) because of it: ``"open"``, ``"half_open"`` (every probe slot taken) or
    ``"forced_open"``; empty otherwise. ``lost_lease`` counts operations this worker dropped
    unsent because another worker had taken over their lease.
    """

    claimed: int = 0
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    released: int = 0
    requests: int = 0
    lost_lease: int = 0
    paused: str = ""
    stopped: str = ""
    breaker: str = ""
    errors: list[str] = field(default_factory=list)

    def add(self, other: DrainResult) -> None:
        """Accumulate ``other`` into this result."""
        for name in (
            "claimed",
            "delivered",
            "failed",
            "dead",
            "released",
            "requests",
            "lost_lease",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.paused = other.paused or self.paused
        self.stopped = other.stopped or self.stopped
        self.breaker = other.breaker or self.breaker
        self.errors.extend(other.errors)


def refusal(breaker: Breaker) -> str:
    """How a breaker that just refused a call is reported in :attr:`DrainResult.breaker`."""
    snapshot = breaker.snapshot()
    if snapshot.mode == "forced_open":
        return "forced_open"
    return snapshot.state if snapshot.state != "closed" else "open"


@dataclass
class Deliverer:
    """Sends claimed operations and records every outcome (in the outbox and the breaker).

    Every HTTP request takes a permit from the circuit breaker first and reports its outcome
    to it; a half-open probe is one request of one operation.
    """

    transport: Transport
    policy: RetryPolicy
    limiter: RateLimiter
    should_stop: Callable[[], str] = field(default=lambda: "")
    breaker: Breaker = field(default_factory=get_breaker)
    #: The longest a request waits for its rate-limit slot before the rest is handed back
    #: (``None``: as long as it takes).
    rate_wait: float | None = None

    def _batches(self, operations: Sequence[Operation]) -> list[list[Operation]]:
        """Group operations into requests: batches within the caps; oversized ones and
        anonymous events (which have no batch form) alone, in claim order.

        A claim holds at most one operation of a person (the first open one), so taking an
        operation out of a batch never reorders a person's operations.
        """
        if not app_settings.BATCH:
            return [[op] for op in operations]
        size_cap = max(1, app_settings.BATCH_SIZE)
        # The request is the items, a comma between two, and the framing around them.
        byte_cap = app_settings.BATCH_MAX_BYTES - BATCH_FRAMING_BYTES
        groups: list[list[Operation]] = []
        current: list[Operation] = []
        current_bytes = 0
        for op in operations:
            if not batchable(op.kind):
                groups.append([op])  # an anonymous event: alone, through v1 (see _fits_batch)
                continue
            item_bytes = batch_item_bytes(op.kind, op.customer_id, op.payload)  # type: ignore[arg-type]
            if item_bytes > MAX_BATCH_ITEM_BYTES or item_bytes > byte_cap:
                groups.append([op])  # sent alone, through v1 (see _fits_batch)
                continue
            separator = 1 if current else 0
            if current and (
                len(current) >= size_cap or current_bytes + separator + item_bytes > byte_cap
            ):
                groups.append(current)
                current, current_bytes, separator = [], 0, 0
            current.append(op)
            current_bytes += separator + item_bytes
        if current:
            groups.append(current)
        return groups

    def deliver(self, claim_: Claim, permit: Permit | None = None) -> DrainResult:
        """Send every operation of ``claim_``; unsent ones are handed back when stopping.

        Args:
            claim_: The claimed operations.
            permit: A breaker permit already taken for the first request (the drain takes one
                before it claims); every other request asks the breaker itself.

        Returns:
            What was done. When the breaker refuses a request, the operations not sent yet
            are handed back (no attempt used) and ``breaker`` says why.
        """
        result = DrainResult(claimed=len(claim_.operations))
        groups = self._batches(claim_.operations)
        index = 0
        while index < len(groups):
            group = groups[index]
            remaining = [op for g in groups[index:] for op in g]
            until, reason = paused_until()
            stop = self.should_stop()
            if until is not None or stop:
                self.breaker.cancel(permit)
                result.released += release(claim_, remaining, at=until)
                result.paused = reason
                result.stopped = stop
                return result
            if not self.limiter.try_acquire(self.rate_wait):
                self.breaker.cancel(permit)
                result.released += release(claim_, remaining)
                result.stopped = NO_RATE_SLOT
                return result
            if permit is None:
                permit = self.breaker.allow()
            if permit is None:
                result.released += release(claim_, remaining)
                result.breaker = refusal(self.breaker)
                return result
            held = hold(claim_, remaining)
            if len(held) != len(remaining):
                kept = {op.pk for op in held}
                result.lost_lease += len(remaining) - len(held)
                groups[index:] = [
                    g for g in ([op for op in g if op.pk in kept] for g in groups[index:]) if g
                ]
                if index >= len(groups):
                    self.breaker.cancel(permit)
                    return result
                group = groups[index]
            if permit.is_probe and len(group) > 1:
                # A probe is one request of one operation: the rest waits for the verdict.
                groups[index : index + 1] = [group[:1], group[1:]]
                group = groups[index]
            result.requests += 1
            outcome = self._send_group(claim_, group, result, permit)
            permit = None
            if outcome in ("paused", "refused"):
                rest = [op for g in groups[index + 1 :] for op in g]
                result.released += release(
                    claim_, rest, at=paused_until()[0] if outcome == "paused" else None
                )
                return result
            index += 1
        return result

    def _send_group(
        self, claim_: Claim, group: list[Operation], result: DrainResult, permit: Permit
    ) -> str:
        """Send one request; returns ``ok``, ``paused`` or ``refused`` (by the breaker)."""
        if len(group) == 1 and not (app_settings.BATCH and _fits_batch(group[0])):
            return self._send_single(claim_, group[0], result, permit)
        items = [
            BatchItem(
                op.kind,  # type: ignore[arg-type]
                op.customer_id,
                op.payload,
                operation_id=op.pk,
            )
            for op in group
        ]
        started = time.monotonic()
        try:
            outcomes = self.transport.send_batch(items)
        except DeliveryError as error:
            self.breaker.record(permit, outcome_for(error, time.monotonic() - started))
            if error.kind == "permanent":
                # The whole request was refused: find the bad operations one at a time.
                log.warning(
                    "cio: batch of %d refused (status %s); sending one by one",
                    len(group),
                    error.status,
                )
                for position, op in enumerate(group):
                    # Each of these is a request of its own: it honours the deadline and takes
                    # its own rate-limit slot.
                    stop = self.should_stop()
                    if stop or not self.limiter.try_acquire(self.rate_wait):
                        result.stopped = stop or NO_RATE_SLOT
                        result.released += release(claim_, group[position:])
                        return "refused"
                    if not hold(claim_, [op]):
                        result.lost_lease += 1
                        continue
                    single = self._send_single(claim_, op, result, None)
                    if single in ("paused", "refused"):
                        first_unsent = position + 1 if single == "paused" else position
                        rest = group[first_unsent:]
                        at = paused_until()[0] if single == "paused" else None
                        result.released += release(claim_, rest, at=at)
                        return single
                return "ok"
            return self._handle_error(claim_, group, error, result)
        except BaseException:
            self.breaker.cancel(permit)
            raise
        self.breaker.record(permit, outcome_for(None, time.monotonic() - started))
        delivered = [op for op, err in zip(group, outcomes, strict=True) if err is None]
        result.delivered += len(delivered)
        ack_delivered(claim_, delivered)
        self._record_failures(
            claim_, [(op, err) for op, err in zip(group, outcomes, strict=True) if err], result
        )
        if delivered:
            clear_auth_failure()
        return "ok"

    def _send_single(
        self, claim_: Claim, op: Operation, result: DrainResult, permit: Permit | None
    ) -> str:
        """Send one operation alone; without a ``permit``, ask the breaker for one first."""
        if permit is None:
            permit = self.breaker.allow()
            if permit is None:
                result.breaker = refusal(self.breaker)
                return "refused"
            result.requests += 1
        started = time.monotonic()
        try:
            self.transport.send(
                op.kind,  # type: ignore[arg-type]
                op.customer_id,
                op.payload,
                operation_id=op.pk,
            )
        except DeliveryError as error:
            self.breaker.record(permit, outcome_for(error, time.monotonic() - started))
            return self._handle_error(claim_, [op], error, result)
        except BaseException:
            self.breaker.cancel(permit)
            raise
        self.breaker.record(permit, outcome_for(None, time.monotonic() - started))
        result.delivered += 1
        ack_delivered(claim_, [op])
        clear_auth_failure()
        return "ok"

    def _handle_error(
        self, claim_: Claim, group: list[Operation], error: DeliveryError, result: DrainResult
    ) -> str:
        action = classify(error)
        if action in ("pause_rate_limited", "pause_auth"):
            reason = (
                DeliveryState.PauseReason.AUTH
                if action == "pause_auth"
                else DeliveryState.PauseReason.RATE_LIMITED
            )
            until = pause(reason, pause_seconds(error), error=redact(error.reason))
            if action == "pause_auth":
                log.error(
                    "cio: Customer.io rejected the credentials (status %s); delivery paused "
                    "until %s. Check CIO_RELIABLE SITE_ID/API_KEY.",
                    error.status,
                    until.isoformat(),
                )
            else:
                log.warning(
                    "cio: rate limited (429); every worker pauses until %s", until.isoformat()
                )
            result.released += release(claim_, group, at=until)
            result.paused = reason
            return "paused"
        self._record_failures(claim_, [(op, error) for op in group], result)
        return "ok"

    def _record_failures(
        self,
        claim_: Claim,
        failures: Sequence[tuple[Operation, DeliveryError]],
        result: DrainResult,
    ) -> None:
        if not failures:
            return
        for status in ack_failures(claim_, failures, policy=self.policy):
            if status == Status.DEAD:
                result.dead += 1
            else:
                result.failed += 1


def _fits_batch(op: Operation) -> bool:
    """Whether ``op`` may go through ``/api/v2/batch``: not an anonymous event (those go
    through ``POST /api/v1/events`` only), within the 32 KB item limit, and a batch of it
    alone within ``BATCH_MAX_BYTES``; otherwise it goes alone through v1."""
    if not batchable(op.kind):
        return False
    item_bytes = batch_item_bytes(op.kind, op.customer_id, op.payload)  # type: ignore[arg-type]
    return item_bytes <= min(
        MAX_BATCH_ITEM_BYTES, app_settings.BATCH_MAX_BYTES - BATCH_FRAMING_BYTES
    )

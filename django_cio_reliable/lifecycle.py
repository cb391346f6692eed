"""The lifecycle of an :class:`~django_cio_reliable.models.Operation`: its states, and the only
code that changes them.

::

    pending ──claim──▶ sending ──delivered──▶ delivered
       ▲                 │  │
       │   release       │  └──failed──▶ failed ──(due)──claim──▶ sending …
       └─────────────────┘  └──dead────▶ dead (permanent error, attempts or age used up,
                                               an abandoned lease out of attempts, forgotten)
    dead / failed / pending / delivered ──requeue (replay)──▶ pending

:class:`OperationQuerySet` is ``Operation.objects``; its transition methods are the only writers
of ``status`` anywhere in the app (the drain, direct mode, replays, ``forget``, the admin and the
commands all call them). Every transition of a leased operation is fenced on the lease token, so
a worker whose lease was taken over (or ended by ``forget``) changes nothing. The sets of statuses
are defined here, once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from django.db import models
from django.db.models import Case, Exists, F, OuterRef, Q, Value, When
from django.db.models.functions import Cast, Coalesce, Concat, Replace

if TYPE_CHECKING:
    from django_cio_reliable.models import Operation  # noqa: F401 (the QuerySet's model)


class Status(models.TextChoices):
    """Where an operation is in its lifecycle."""

    PENDING = "pending"
    SENDING = "sending"
    FAILED = "failed"
    DELIVERED = "delivered"
    DEAD = "dead"


#: Waiting for a (first or next) attempt.
WAITING: tuple[str, ...] = (Status.PENDING, Status.FAILED)
#: Still to be delivered: waiting, or being sent. The partial indexes use exactly this set.
OPEN: tuple[str, ...] = (Status.PENDING, Status.SENDING, Status.FAILED)
#: What a replay may requeue (delivered ones only when asked for explicitly).
REPLAYABLE: tuple[str, ...] = (Status.DEAD, *OPEN)
#: ``last_error`` of an operation ended by ``forget``.
FORGOTTEN = "forgotten: payload erased on request"


class OperationQuerySet(models.QuerySet["Operation"]):
    """``Operation.objects``: lookups by state, and every state transition."""

    # ------------------------------------------------------------------ lookups

    def due(self, now: datetime) -> OperationQuerySet:
        """Open operations whose attempt is due: waiting and due, or leased and expired."""
        # ``status__in=OPEN`` is implied but spelt out: it is the condition of the partial
        # indexes, which lets a scan skip the delivered history.
        return cast(
            "OperationQuerySet",
            self.filter(status__in=OPEN).filter(
                Q(status__in=WAITING, next_attempt_at__lte=now)
                | Q(status=Status.SENDING, lease_expires_at__lt=now)
            ),
        )

    def claimable(self, now: datetime) -> OperationQuerySet:
        """Due operations with no earlier open operation of the same person, oldest first."""
        earlier_open = self.model._default_manager.filter(
            person_key=OuterRef("person_key"), id__lt=OuterRef("id"), status__in=OPEN
        )
        return cast("OperationQuerySet", self.due(now).filter(~Exists(earlier_open)).order_by("id"))

    def abandoned(self, now: datetime, *, max_attempts: int, max_age: float) -> OperationQuerySet:
        """Leased operations whose lease expired unacknowledged and that may not be tried
        again: their attempts (counted at claim) or their age are used up."""
        return cast(
            "OperationQuerySet",
            self.filter(status=Status.SENDING, lease_expires_at__lt=now).filter(
                Q(attempts__gte=max_attempts) | Q(created_at__lte=now - timedelta(seconds=max_age))
            ),
        )

    # ------------------------------------------------------------------ transitions

    def lease(self, token: str, until: datetime) -> int:
        """Claim: ``sending`` under ``token`` until ``until``, one attempt counted.

        The caller selects due rows (and locks them where the database can); the attempt is
        counted here, so a worker killed mid-attempt still uses it up.
        """
        return int(
            self.update(
                status=Status.SENDING,
                lease_token=token,
                lease_expires_at=until,
                attempts=F("attempts") + 1,
            )
        )

    def renew(self, token: str, until: datetime) -> int:
        """Extend the lease of the operations still held under ``token``."""
        return int(
            self.filter(lease_token=token, status=Status.SENDING).update(lease_expires_at=until)
        )

    def release(self, token: str, at: datetime) -> int:
        """Hand back claimed but unsent operations, giving back the attempt their claim took."""
        return int(
            self.filter(lease_token=token).update(
                status=Case(
                    When(attempts__lte=1, then=Value(Status.PENDING)), default=Value(Status.FAILED)
                ),
                attempts=F("attempts") - 1,
                lease_token="",
                lease_expires_at=None,
                next_attempt_at=at,
            )
        )

    def deliver(
        self,
        token: str,
        now: datetime,
        *,
        status_code: int,
        scrub: bool,
        sizes: Sequence[tuple[int, int]] = (),
    ) -> int:
        """``delivered``, fenced on ``token``.

        Args:
            token: The lease the operations are held under.
            now: The acknowledgement time.
            status_code: The HTTP status of the accepted request.
            scrub: Also empty the payload (``SCRUB_DELIVERED``).
            sizes: ``(pk, bytes)`` for erased payloads whose size was not stored yet.
        """
        updates: dict[str, Any] = {
            "status": Status.DELIVERED,
            "delivered_at": now,
            "lease_token": "",
            "lease_expires_at": None,
            "last_status_code": status_code,
            "last_error": "",
        }
        if scrub:
            updates.update(payload={}, payload_erased_at=now)
            if sizes:
                updates["payload_bytes"] = Case(
                    *(When(pk=pk, then=Value(size)) for pk, size in sizes),
                    default=F("payload_bytes"),
                    output_field=models.PositiveIntegerField(),
                )
        return int(self.filter(lease_token=token).update(**updates))

    def fail(
        self, token: str, *, next_attempt_at: datetime, status_code: int | None, error: str
    ) -> int:
        """``failed`` (retried at ``next_attempt_at``), fenced on ``token``."""
        return int(
            self.filter(lease_token=token).update(
                status=Status.FAILED,
                next_attempt_at=next_attempt_at,
                lease_token="",
                lease_expires_at=None,
                last_status_code=status_code,
                last_error=error,
            )
        )

    def kill(self, now: datetime, reason: str | models.Expression, **fields: Any) -> int:
        """``dead`` with ``reason`` and ``fields`` (callers fence it: on the lease, or on the
        state)."""
        return int(
            self.update(
                status=Status.DEAD,
                dead_at=now,
                lease_token="",
                lease_expires_at=None,
                last_error=reason,
                **fields,
            )
        )

    def kill_abandoned(self, now: datetime, *, max_attempts: int, max_age: float) -> int:
        """Dead-letter the :meth:`abandoned` ones (a poison operation that keeps killing its
        worker must not block its person forever)."""
        reason = Concat(
            Value("gave up after "),
            Cast("attempts", models.CharField()),
            Value(
                " attempts: the last attempt was never acknowledged (the worker died or hung "
                "past its lease) and the attempts or the age allowed are used up"
            ),
            output_field=models.TextField(),
        )
        return int(
            self.abandoned(now, max_attempts=max_attempts, max_age=max_age).kill(
                now, reason, last_status_code=None
            )
        )

    def dead_letter(self, now: datetime, reason: str) -> int:
        """An operator's decision: ``dead`` for those still waiting (not those being sent)."""
        return int(self.filter(status__in=WAITING).kill(now, reason))

    def requeue(self, now: datetime, *, reset_attempts: bool, delivered: bool = False) -> int:
        """Replay: ``pending`` and due now, event ids kept.

        Operations with a live lease (being sent) are skipped, and so are erased ones: an
        emptied ``identify`` could recreate a deleted person. Delivered ones only with
        ``delivered=True``.
        """
        statuses = (*REPLAYABLE, Status.DELIVERED) if delivered else REPLAYABLE
        updates: dict[str, Any] = {
            "status": Status.PENDING,
            "next_attempt_at": now,
            "dead_at": None,
            "delivered_at": None,
            "lease_token": "",
            "lease_expires_at": None,
        }
        if reset_attempts:
            updates["attempts"] = 0
        return int(
            self.filter(status__in=statuses)
            .exclude(status=Status.SENDING, lease_expires_at__gte=now)
            .exclude(erased_q())
            .update(**updates)
        )

    def retry_now(self, now: datetime) -> int:
        """Failed operations: due at ``now`` instead of after their backoff (direct mode's
        next in-request try)."""
        return int(self.filter(status=Status.FAILED).update(next_attempt_at=now))

    def postpone(self, until: datetime) -> int:
        """Waiting operations: not before ``until``."""
        return int(
            self.filter(status__in=WAITING, next_attempt_at__lt=until).update(next_attempt_at=until)
        )

    def forget(self, now: datetime, person: str = "") -> tuple[int, int, int, datetime | None]:
        """End every operation of these rows and erase their payloads (``forget``).

        Open ones become ``dead`` as :data:`FORGOTTEN` with their lease revoked (a worker
        holding one changes nothing afterwards); delivered and dead ones keep their row
        without the payload. Every row loses its customer id and idempotency key too, and
        ``person`` (the customer id) is cut out of the error texts a server may have echoed it
        into.

        Returns:
            ``(cancelled, in_flight, erased, lease_end)``: waiting operations ended, operations
            being sent ended, closed operations erased, and when the last live lease of an
            operation being sent would have ended (its request may still be on its way until
            then).
        """
        erase: dict[str, Any] = {
            "payload": {},
            "idempotency_key": "",
            "customer_id": "",
            "person_key": "",
        }
        sending = self.filter(status=Status.SENDING)
        lease_end = sending.filter(lease_expires_at__gt=now).aggregate(
            end=models.Max("lease_expires_at")
        )["end"]
        # Open ones first: one acknowledged delivered meanwhile is erased below.
        cancelled = self.filter(status__in=WAITING).kill(
            now, FORGOTTEN, payload_erased_at=now, **erase
        )
        in_flight = sending.kill(now, FORGOTTEN, payload_erased_at=now, **erase)
        if person:
            # A server's error text may echo the person's id: cut it out, keep the reason.
            erase["last_error"] = Replace("last_error", Value(person), Value("[redacted]"))
        erased = (
            self.filter(status__in=(Status.DELIVERED, Status.DEAD))
            .exclude(last_error=FORGOTTEN, dead_at=now)
            .update(
                **erase,
                payload_erased_at=Coalesce(
                    "payload_erased_at", Value(now), output_field=models.DateTimeField()
                ),
            )
        )
        return cancelled, in_flight, erased, lease_end


def erased_q() -> Q:
    """Operations whose payload was erased (delivered and scrubbed, or forgotten)."""
    return Q(payload_erased_at__isnull=False) | Q(last_error=FORGOTTEN)

"""Models: the outbox of operations and the idempotency keys that guard it."""

from __future__ import annotations

from typing import Any, ClassVar

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from django_cio_reliable import lifecycle


class Operation(models.Model):
    """One Customer.io call, stored before any network I/O and kept until it is delivered or dead.

    ``payload`` is the JSON body that will be sent (never a pickle). ``person_key`` groups the
    operations whose order must be kept: the operations of one customer (or one anonymous id)
    are delivered in ``id`` order. Once delivered (with ``SCRUB_DELIVERED``) or forgotten
    (:func:`django_cio_reliable.privacy.forget`) the payload is emptied and
    ``payload_erased_at`` set; ``payload_bytes`` keeps its size.
    """

    class Kind(models.TextChoices):
        IDENTIFY = "identify"
        TRACK = "track"
        TRACK_ANONYMOUS = "track_anonymous"
        DELETE = "delete"

    Status = lifecycle.Status
    #: Statuses of an operation that still has to be delivered.
    OPEN_STATUSES = lifecycle.OPEN

    objects = lifecycle.OperationQuerySet.as_manager()

    id = models.BigAutoField(primary_key=True)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    customer_id = models.CharField(
        max_length=255, db_index=True, help_text=_("Customer id, or the anonymous id.")
    )
    person_key = models.CharField(max_length=300, help_text=_("Ordering key: one per person."))
    name = models.CharField(max_length=255, blank=True, help_text=_("Event name (track)."))
    payload: models.JSONField[Any, Any] = models.JSONField(default=dict, blank=True)
    payload_bytes = models.PositiveIntegerField(
        default=0, help_text=_("Size of the payload as JSON, kept after the payload is erased.")
    )
    event_id = models.CharField(max_length=26, blank=True, db_index=True)
    idempotency_key = models.CharField(max_length=255, blank=True, db_index=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    lease_token = models.CharField(max_length=32, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField(auto_now=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    dead_at = models.DateTimeField(null=True, blank=True)
    payload_erased_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text=_(
            "When the stored payload was erased (delivered with SCRUB_DELIVERED, or the "
            "person was forgotten). An erased operation is never sent again."
        ),
    )

    class Meta:
        verbose_name = _("operation")
        verbose_name_plural = _("operations")
        ordering = ("-id",)
        indexes = (
            models.Index(fields=("status", "next_attempt_at"), name="cio_op_due"),
            models.Index(fields=("person_key", "id"), name="cio_op_person"),
            models.Index(fields=("status", "created_at"), name="cio_op_status_created"),
            models.Index(fields=("status", "updated_at"), name="cio_op_status_updated"),
            # The claim walks open rows in id order and asks, per row, whether an earlier
            # open row of the same person exists: both only ever look at open rows, which
            # are few next to the delivered ones kept for RETAIN_DELIVERED.
            models.Index(
                fields=("id",),
                name="cio_op_open",
                condition=models.Q(status__in=lifecycle.OPEN),
            ),
            models.Index(
                fields=("person_key", "id"),
                name="cio_op_person_open",
                condition=models.Q(status__in=lifecycle.OPEN),
            ),
            # The purge reads the oldest closed rows past retention, and nothing else.
            models.Index(
                fields=("delivered_at",),
                name="cio_op_delivered",
                condition=models.Q(status=lifecycle.Status.DELIVERED),
            ),
            models.Index(
                fields=("dead_at",),
                name="cio_op_dead",
                condition=models.Q(status=lifecycle.Status.DEAD),
            ),
        )
        permissions = (
            ("view_payload", _("Can view operation payloads")),
            ("replay_operation", _("Can replay and requeue operations")),
        )

    def __str__(self) -> str:
        label = f"{self.kind} {self.name}".strip() if self.name else self.kind
        return f"#{self.pk} {label} ({self.status})"

    def __repr__(self) -> str:
        return (
            f"<Operation id={self.pk} kind={self.kind} status={self.status} "
            f"attempts={self.attempts} event_id={self.event_id!r}>"
        )


Status = lifecycle.Status


class IdempotencyKey(models.Model):
    """A reserved idempotency key: the same key within its TTL yields the same operation."""

    key = models.CharField(max_length=255, unique=True)
    person_key = models.CharField(max_length=300, blank=True, db_index=True)
    operation = models.ForeignKey(
        Operation, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name = _("idempotency key")
        verbose_name_plural = _("idempotency keys")
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return self.key


class DeliveryState(models.Model):
    """Delivery state shared by every process, one row per destination.

    Holds the pause every worker honours after a 429 or a 401/403, and the shared request-rate
    limiter (a GCRA "theoretical arrival time", in Unix seconds).
    """

    class PauseReason(models.TextChoices):
        NONE = ""
        RATE_LIMITED = "rate_limited"
        AUTH = "auth"

    destination = models.CharField(max_length=300, unique=True)
    paused_until = models.DateTimeField(null=True, blank=True)
    pause_reason = models.CharField(
        max_length=20, choices=PauseReason.choices, blank=True, default=""
    )
    auth_failed_at = models.DateTimeField(null=True, blank=True)
    auth_error = models.TextField(blank=True)
    rate_tat = models.FloatField(default=0.0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("delivery state")
        verbose_name_plural = _("delivery states")

    def __str__(self) -> str:
        return self.destination.split("#", 1)[0]


class DeadLetterManager(models.Manager["DeadLetter"]):
    """Only dead operations."""

    def get_queryset(self) -> models.QuerySet[DeadLetter]:
        dead: models.QuerySet[DeadLetter] = super().get_queryset().filter(status=Status.DEAD)
        return dead


class DeadLetter(Operation):
    """Dead operations, for the admin's "Dead letters" page (a proxy of :class:`Operation`)."""

    objects: ClassVar[DeadLetterManager] = DeadLetterManager()

    class Meta:
        proxy = True
        verbose_name = _("dead letter")
        verbose_name_plural = _("dead letters")


class BreakerState(models.Model):
    """The circuit breaker of one destination, shared by every process.

    ``data`` holds the whole state of :class:`django_cio_reliable.breaker.core.BreakerState`
    as JSON; the other columns repeat parts of it for the admin and the health check. The row
    is only ever changed by a compare-and-set on ``version`` (see
    :mod:`django_cio_reliable.breaker.store`): never edit it by hand, use ``Breaker.force()``.
    """

    class State(models.TextChoices):
        CLOSED = "closed", _("closed")
        OPEN = "open", _("open")
        HALF_OPEN = "half_open", _("half-open")

    class Mode(models.TextChoices):
        AUTO = "auto", _("automatic")
        FORCED_OPEN = "forced_open", _("forced open")
        FORCED_CLOSED = "forced_closed", _("forced closed")
        DISABLED = "disabled", _("disabled (metrics only)")

    destination = models.CharField(max_length=300, unique=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.CLOSED)
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.AUTO)
    version = models.PositiveBigIntegerField(default=0)
    data: models.JSONField[Any, Any] = models.JSONField(default=dict, blank=True)
    opened_at = models.DateTimeField(
        null=True, blank=True, help_text=_("When the breaker last opened (null while closed).")
    )
    open_since = models.DateTimeField(
        null=True,
        blank=True,
        help_text=_("When it left the closed state (kept through re-opens)."),
    )
    updated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("breaker state")
        verbose_name_plural = _("breaker states")
        permissions = (
            ("force_breaker", _("Can force the circuit breaker open, closed or disabled")),
        )

    def __str__(self) -> str:
        return f"{self.destination.split('#', 1)[0]}: {self.state} ({self.mode})"


class BreakerEvent(models.Model):
    """One transition of a circuit breaker (state or mode), kept for operators."""

    destination = models.CharField(max_length=300)
    from_state = models.CharField(max_length=16, choices=BreakerState.State.choices)
    to_state = models.CharField(max_length=16, choices=BreakerState.State.choices)
    from_mode = models.CharField(max_length=16, choices=BreakerState.Mode.choices)
    to_mode = models.CharField(max_length=16, choices=BreakerState.Mode.choices)
    reason = models.CharField(max_length=500, blank=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    username = models.CharField(
        max_length=150, blank=True, help_text=_("Who forced it (kept if the user is deleted).")
    )
    created_at = models.DateTimeField()

    class Meta:
        verbose_name = _("breaker event")
        verbose_name_plural = _("breaker events")
        ordering = ("-created_at", "-id")
        indexes = (
            models.Index(fields=("destination", "created_at"), name="cio_breaker_event_dest"),
        )

    def __str__(self) -> str:
        return f"{self.from_state} → {self.to_state}: {self.reason}"


class DeliveryMinute(models.Model):
    """Delivery outcomes counted per minute, for the dashboard's throughput chart.

    One row per minute in which anything was acknowledged. Attempts are counted when they
    happen, so an outage's failures stay on the chart after the operations were delivered.
    """

    minute = models.DateTimeField(unique=True, help_text=_("The minute (UTC, seconds zeroed)."))
    delivered = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(
        default=0, help_text=_("Failed attempts that were rescheduled.")
    )
    dead = models.PositiveIntegerField(default=0, help_text=_("Operations dead-lettered."))

    class Meta:
        verbose_name = _("delivery minute")
        verbose_name_plural = _("delivery minutes")
        ordering = ("-minute",)

    def __str__(self) -> str:
        return f"{self.minute:%Y-%m-%d %H:%M}: {self.delivered} delivered, {self.failed} failed"

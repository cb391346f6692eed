"""Models: the outbox of operations and the idempotency keys that guard it."""

from __future__ import annotations

from typing import Any, ClassVar

from django.db import models
from django.utils.translation import gettext_lazy as _


class Operation(models.Model):
    """One Customer.io call, stored before any network I/O and kept until it is delivered or dead.

    ``payload`` is the JSON body that will be sent (never a pickle). ``person_key`` groups the
    operations whose order must be kept: the operations of one customer (or one anonymous id)
    are delivered in ``id`` order.
    """

    class Kind(models.TextChoices):
        IDENTIFY = "identify"
        TRACK = "track"
        TRACK_ANONYMOUS = "track_anonymous"
        DELETE = "delete"

    class Status(models.TextChoices):
        PENDING = "pending"
        SENDING = "sending"
        FAILED = "failed"
        DELIVERED = "delivered"
        DEAD = "dead"

    #: Statuses of an operation that still has to be delivered.
    OPEN_STATUSES = (Status.PENDING, Status.SENDING, Status.FAILED)

    id = models.BigAutoField(primary_key=True)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    customer_id = models.CharField(
        max_length=255, db_index=True, help_text=_("Customer id, or the anonymous id.")
    )
    person_key = models.CharField(max_length=300, help_text=_("Ordering key: one per person."))
    name = models.CharField(max_length=255, blank=True, help_text=_("Event name (track)."))
    payload: models.JSONField[Any, Any] = models.JSONField(default=dict, blank=True)
    payload_bytes = models.PositiveIntegerField(default=0)
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

    class Meta:
        verbose_name = _("operation")
        verbose_name_plural = _("operations")
        ordering = ("-id",)
        indexes = (
            models.Index(fields=("status", "next_attempt_at"), name="cio_op_due"),
            models.Index(fields=("person_key", "id"), name="cio_op_person"),
            models.Index(fields=("status", "created_at"), name="cio_op_status_created"),
            models.Index(fields=("status", "updated_at"), name="cio_op_status_updated"),
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
        dead: models.QuerySet[DeadLetter] = (
            super().get_queryset().filter(status=Operation.Status.DEAD)
        )
        return dead


class DeadLetter(Operation):
    """Dead operations, for the admin's "Dead letters" page (a proxy of :class:`Operation`)."""

    objects: ClassVar[DeadLetterManager] = DeadLetterManager()

    class Meta:
        proxy = True
        verbose_name = _("dead letter")
        verbose_name_plural = _("dead letters")

"""The Django admin (docs/admin.md): read-only pages whose rows change only through actions and
buttons that call into :mod:`django_cio_reliable.outbox` and :mod:`django_cio_reliable.breaker`.

The dashboard link is added by wrapping the default admin site's index template when the project
has not set one; a project with its own index template can
``{% include "admin/django_cio_reliable/dashboard_link.html" %}``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db import connections
from django.db.models import QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
    JsonResponse,
)
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme

from django_cio_reliable import breaker, clock, dispatch, lifecycle, outbox, views
from django_cio_reliable.models import (
    BreakerEvent,
    BreakerState,
    DeadLetter,
    DeliveryState,
    IdempotencyKey,
    Operation,
)
from django_cio_reliable.privacy import erased

if TYPE_CHECKING:
    OperationBase = admin.ModelAdmin[Operation]
    IdempotencyKeyBase = admin.ModelAdmin[IdempotencyKey]
    DeliveryStateBase = admin.ModelAdmin[DeliveryState]
    BreakerStateBase = admin.ModelAdmin[BreakerState]
    BreakerEventBase = admin.ModelAdmin[BreakerEvent]
else:
    OperationBase = IdempotencyKeyBase = DeliveryStateBase = admin.ModelAdmin
    BreakerStateBase = BreakerEventBase = admin.ModelAdmin

log = logging.getLogger(__name__)

#: Permissions, as ``app_label.codename``.
VIEW_PAYLOAD = "django_cio_reliable.view_payload"
REPLAY = "django_cio_reliable.replay_operation"

#: "Replay now" delivers at most this many operations in the request; more: use "requeue".
REPLAY_NOW_LIMIT = 100
#: "Replay now" stops sending after this many seconds and leaves the rest to the worker.
REPLAY_NOW_SECONDS = 20.0
#: Longest reason accepted by "mark dead" and the breaker buttons.
MAX_REASON = 400
#: Characters of ``last_error`` shown in the lists.
ERROR_PREVIEW = 80

#: What the force buttons say once done.
FORCE_MESSAGES = {
    "forced_open": "Breaker forced open: nothing is sent until someone resets it.",
    "forced_closed": "Breaker forced closed: every call is let through.",
    "disabled": "Breaker disabled: outcomes are only counted.",
    "auto": "Breaker reset: automatic again, closed, counters cleared.",
}

#: The actions gated by :data:`REPLAY` (a POST naming one without it is a 403).
GATED_ACTIONS = frozenset({"replay_now", "requeue", "mark_dead"})


def _plural(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def breaker_blocks() -> str:
    """Why the breaker lets nothing through right now (empty when it may admit a call)."""
    snapshot = breaker.get_breaker().snapshot(fresh=True)
    if snapshot.mode == "forced_open":
        return "the breaker is forced open"
    # An open breaker has a retry time only in automatic mode.
    if snapshot.state == "open" and snapshot.retry_at and snapshot.retry_at > clock.now():
        return "the breaker is open"
    return ""


class ReadOnlyMixin:
    """No adding, changing or deleting from the admin: rows change through actions and buttons
    only (retention purges old rows; ``cio_forget`` erases a person)."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Nobody adds, changes or deletes rows by hand."""
        return False

    has_change_permission = has_delete_permission = has_add_permission


class DestinationMixin:
    """The ``destination_host`` column of the per-destination rows."""

    @admin.display(description="destination")
    def destination_host(self, obj: DeliveryState | BreakerState | BreakerEvent) -> str:
        """The Track API origin (without the site id)."""
        return obj.destination.split("#", 1)[0]


class OperationAdmin(ReadOnlyMixin, OperationBase):
    """Operations: read-only, filterable, with replay / requeue / mark-dead actions."""

    list_display: tuple[str, ...] = (
        "id",
        "kind",
        "name",
        "customer_id",
        "status",
        "attempts",
        "last_status_code",
        "error_preview",
        "created_at",
        "next_attempt_at",
    )
    list_display_links = ("id",)
    list_filter: ClassVar[tuple[str, ...]] = ("status", "kind", "last_status_code")
    search_fields = ("=customer_id", "=event_id")
    search_help_text = "Exact customer id (or anonymous id), or exact event id."
    ordering = ("-id",)
    show_full_result_count = False
    actions: tuple[str, ...] = ("replay_now", "requeue", "mark_dead")
    #: Whether this admin routes the dashboard (only the operations admin does).
    routes_dashboard = True

    BASE_FIELDS: Sequence[str] = (
        "id",
        "kind",
        "name",
        "customer_id",
        "event_id",
        "idempotency_key",
        "status",
        "attempts",
        "next_attempt_at",
        "lease_expires_at",
        "last_status_code",
        "last_error",
        "created_at",
        "updated_at",
        "delivered_at",
        "dead_at",
        "payload_erased_at",
    )

    def get_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        """The payload only for users allowed to see it; its size for the others."""
        payload = "payload_json" if request.user.has_perm(VIEW_PAYLOAD) else "payload_size"
        return (*self.BASE_FIELDS, payload)

    get_readonly_fields = get_fields  # everything is read-only

    @admin.display(description="last error")
    def error_preview(self, obj: Operation) -> str:
        """The start of ``last_error`` (escaped by the admin)."""
        text = obj.last_error or ""
        return text if len(text) <= ERROR_PREVIEW else text[: ERROR_PREVIEW - 1] + "…"

    @admin.display(description="payload")
    def payload_json(self, obj: Operation) -> str:
        """The payload as indented JSON (escaped), with a link to the raw JSON."""
        if obj.payload_erased_at is not None:
            return self.payload_size(obj)
        text = json.dumps(obj.payload, indent=2, sort_keys=True, ensure_ascii=False)
        url = reverse(
            f"admin:{obj._meta.app_label}_{self.opts.model_name}_payload",
            args=[obj.pk],
            current_app=self.admin_site.name,
        )
        return format_html('<pre class="cio-payload">{}</pre><a href="{}">raw JSON</a>', text, url)

    @admin.display(description="payload")
    def payload_size(self, obj: Operation) -> str:
        """How big the payload is, for users who may not see it."""
        size = obj.payload_bytes or len(json.dumps(obj.payload, separators=(",", ":")).encode())
        if obj.payload_erased_at is not None:
            return f"{size:,} bytes (erased: delivered and scrubbed, or the person was forgotten)"
        return (
            f"{size:,} bytes (hidden: seeing payloads needs the "
            "“Can view operation payloads” permission)"
        )

    def get_urls(self) -> list[URLPattern]:
        """Add the payload view, and the dashboard on the operations admin."""
        view, name = self.admin_site.admin_view, f"{self.opts.app_label}_{self.opts.model_name}"
        urls = [path("<path:object_id>/payload/", view(self.payload_view), name=f"{name}_payload")]
        if self.routes_dashboard:
            urls.append(path("dashboard/", view(self.dashboard_view), name=f"{name}_dashboard"))
        return urls + super().get_urls()

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        """The delivery dashboard (see :func:`django_cio_reliable.views.dashboard_view`)."""
        return views.dashboard_view(request, admin_site=self.admin_site)

    def payload_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """One operation's payload as JSON; 403 without ``view_payload``."""
        if not (self.has_view_permission(request) and request.user.has_perm(VIEW_PAYLOAD)):
            raise PermissionDenied
        obj = self.get_object(request, object_id)
        if obj is None:
            raise Http404("no such operation")
        response = JsonResponse(
            obj.payload,
            safe=False,
            json_dumps_params={"indent": 2, "sort_keys": True, "ensure_ascii": False},
        )
        response["Cache-Control"] = "private, no-store"
        response["X-Content-Type-Options"] = "nosniff"
        return response

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """The list; a POST naming a gated action without the permission is a 403."""
        action = request.POST.get("action", "") if request.method == "POST" else ""
        if action in GATED_ACTIONS and not self.has_replay_permission(request):
            raise PermissionDenied
        return super().changelist_view(request, extra_context=extra_context)

    # Exempt from ATOMIC_REQUESTS on every database: *replay now* delivers, and the breaker,
    # rate-limit and count rows are never written inside a request's transaction (no other
    # request or worker may wait for it).
    changelist_view._non_atomic_requests = set(connections.settings)  # type: ignore[attr-defined]

    def has_replay_permission(self, request: HttpRequest) -> bool:
        """Whether the user may replay, requeue and dead-letter operations."""
        return bool(request.user.has_perm(REPLAY))

    @staticmethod
    def _ids(queryset: QuerySet[Any], limit: int | None = None) -> list[int]:
        ids = queryset.order_by("pk").values_list("pk", flat=True)
        return list(ids[:limit] if limit is not None else ids)

    @admin.action(
        description="Replay now: requeue and deliver the selected operations",
        permissions=["replay"],
    )
    def replay_now(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        """Requeue the selection and deliver it in this request (breaker- and pause-aware)."""
        ids = self._ids(queryset, REPLAY_NOW_LIMIT + 1)
        if len(ids) > REPLAY_NOW_LIMIT:
            self.message_user(
                request,
                f"Replay now handles at most {REPLAY_NOW_LIMIT} operations at a time; use "
                "“Requeue” for more (the worker delivers them) or manage.py cio_replay --now.",
                messages.ERROR,
            )
            return
        requeued = outbox.replay(Operation.objects.filter(pk__in=ids))
        log.info("cio: %d operations requeued for replay by %s", requeued, request.user)
        if not requeued:
            self.message_user(
                request,
                "Nothing to replay: the selected operations are delivered, being sent, or "
                "their payload was erased (a forgotten person).",
                messages.WARNING,
            )
            return
        blocked = breaker_blocks()
        until, reason = outbox.paused_until()
        if blocked or until is not None:
            why = blocked or (
                "Customer.io rejected the credentials"
                if reason == DeliveryState.PauseReason.AUTH
                else "delivery is paused after a 429"
            )
            dispatch.kick_drain()
            self.message_user(
                request,
                f"Requeued {_plural(requeued, 'operation')} but sent nothing: {why}. The worker "
                "delivers them once delivery resumes.",
                messages.WARNING,
            )
            return
        result = outbox.drain(ids=ids, max_seconds=REPLAY_NOW_SECONDS)
        outcome = Counter(Operation.objects.filter(pk__in=ids).values_list("status", flat=True))
        waiting = outcome["pending"] + outcome["sending"]
        text = (
            f"Requeued {_plural(requeued, 'operation')}: {outcome['delivered']} delivered, "
            f"{outcome['failed']} failed (will be retried), {outcome['dead']} dead"
        )
        if waiting:
            text += f", {waiting} left for the worker"
            if result.breaker:
                text += f" (the breaker is {result.breaker.replace('_', ' ')})"
            dispatch.kick_drain()
        level = messages.SUCCESS if outcome["delivered"] == len(ids) else messages.WARNING
        self.message_user(request, text + ".", level)

    @admin.action(
        description="Requeue the selected operations (the worker delivers them)",
        permissions=["replay"],
    )
    def requeue(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        """Requeue the selection for immediate delivery by the worker."""
        ids = self._ids(queryset)
        wiped = Operation.objects.filter(erased(), pk__in=ids).count()
        requeued = outbox.replay(Operation.objects.filter(pk__in=ids))
        log.info("cio: %d operations requeued by %s", requeued, request.user)
        if requeued:
            dispatch.kick_drain()
        skipped = len(ids) - requeued
        text = f"Requeued {_plural(requeued, 'operation')}."
        if skipped > 0:
            text += f" Skipped {skipped} (delivered or being sent"
            text += f"; {wiped} with their payload erased)." if wiped else ")."
        self.message_user(request, text, messages.SUCCESS if requeued else messages.WARNING)

    @admin.action(
        description="Mark the selected operations dead (after confirmation)", permissions=["replay"]
    )
    def mark_dead(self, request: HttpRequest, queryset: QuerySet[Any]) -> TemplateResponse | None:
        """Dead-letter open operations, with a reason, after a confirmation page."""
        if request.POST.get("post") == "yes":
            reason = (request.POST.get("reason") or "").strip()[:MAX_REASON]
            text = f"marked dead in the admin by {request.user.get_username()}"
            if reason:
                text = f"{reason} ({text})"
            count = outbox.mark_dead(queryset, text)
            log.info("cio: %d operations marked dead by %s", count, request.user)
            skipped = queryset.count() - count
            message = f"Marked {_plural(count, 'operation')} dead."
            if skipped > 0:
                message += f" Skipped {skipped} (only pending and failed operations can be)."
            self.message_user(request, message, messages.SUCCESS if count else messages.WARNING)
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Mark operations dead?",
            "subtitle": None,
            "opts": self.opts,
            "queryset": queryset,
            "selected": self._ids(queryset),
            "eligible": queryset.filter(status__in=lifecycle.WAITING).count(),
            "total": queryset.count(),
            "preview": list(queryset.order_by("pk")[:20]),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "max_reason": MAX_REASON,
            "media": self.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(
            request, "admin/django_cio_reliable/mark_dead_confirmation.html", context
        )


class DeadLetterAdmin(OperationAdmin):
    """Dead operations only, with bulk replay."""

    list_display = (
        "id",
        "kind",
        "name",
        "customer_id",
        "attempts",
        "last_status_code",
        "error_preview",
        "created_at",
        "dead_at",
    )
    list_filter = ("kind", "last_status_code")
    actions = ("replay_now", "requeue")
    routes_dashboard = False


class IdempotencyKeyAdmin(ReadOnlyMixin, IdempotencyKeyBase):
    """Reserved idempotency keys (read-only)."""

    list_display = ("key", "operation_link", "created_at", "expires_at", "live")
    fields = readonly_fields = list_display
    search_fields = ("=key",)
    search_help_text = "Exact idempotency key."
    ordering = ("-created_at",)
    show_full_result_count = False

    @admin.display(description="operation")
    def operation_link(self, obj: IdempotencyKey) -> str:
        """A link to the operation the key guards."""
        if obj.operation_id is None:
            return "—"
        url = reverse(
            "admin:django_cio_reliable_operation_change",
            args=[obj.operation_id],
            current_app=self.admin_site.name,
        )
        return format_html('<a href="{}">#{}</a>', url, obj.operation_id)

    @admin.display(description="live", boolean=True)
    def live(self, obj: IdempotencyKey) -> bool:
        """Whether the key still guards against duplicates."""
        return bool(obj.expires_at > clock.now())


class DeliveryStateAdmin(DestinationMixin, ReadOnlyMixin, DeliveryStateBase):
    """The shared pause (429, credentials) per destination (read-only)."""

    list_display = (
        "destination_host",
        "paused_until",
        "pause_reason",
        "auth_failed_at",
        "updated_at",
    )
    fields = (
        "destination_host",
        "paused_until",
        "pause_reason",
        "auth_failed_at",
        "auth_error",
        "updated_at",
    )
    readonly_fields = fields


class BreakerStateAdmin(DestinationMixin, ReadOnlyMixin, BreakerStateBase):
    """The circuit breaker per destination, with force buttons."""

    list_display = (
        "destination_host",
        "state",
        "mode",
        "opened_at",
        "open_since",
        "updated_at",
        "version",
    )
    fields = readonly_fields = list_display
    change_list_template = "admin/django_cio_reliable/breakerstate/change_list.html"

    def get_urls(self) -> list[URLPattern]:
        """Add the force endpoint."""
        name = f"{self.opts.app_label}_{self.opts.model_name}_force"
        return [
            path("force/", self.admin_site.admin_view(self.force_view), name=name),
            *super().get_urls(),
        ]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """The rows, with the live breaker panel and its buttons on top."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {"breaker": views.breaker_panel(request), **(extra_context or {})}
        return super().changelist_view(request, extra_context=context)

    def force_view(self, request: HttpRequest) -> HttpResponseBase:
        """POST ``mode`` (and an optional ``reason``): force the breaker, record who did it."""
        if not request.user.has_perm(views.BREAKER_PERMISSION):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        mode = request.POST.get("mode", "")
        if mode not in FORCE_MESSAGES:
            self.message_user(request, "Unknown breaker mode.", messages.ERROR)
        else:
            reason = (request.POST.get("reason") or "").strip()[:MAX_REASON]
            user = request.user if isinstance(request.user, AbstractBaseUser) else None
            breaker.get_breaker().force(mode, user=user, reason=reason or "set in the admin")
            log.warning("cio: breaker set to %s by %s in the admin", mode, request.user)
            self.message_user(request, FORCE_MESSAGES[mode], messages.SUCCESS)
        target = request.POST.get("next", "")
        if not url_has_allowed_host_and_scheme(
            target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ):
            target = reverse(
                "admin:django_cio_reliable_breakerstate_changelist",
                current_app=self.admin_site.name,
            )
        return HttpResponseRedirect(target)


class BreakerEventAdmin(DestinationMixin, ReadOnlyMixin, BreakerEventBase):
    """Every breaker transition, with who forced it (read-only)."""

    list_display = (
        "created_at",
        "destination_host",
        "from_state",
        "to_state",
        "from_mode",
        "to_mode",
        "reason",
        "username",
    )
    fields = readonly_fields = list_display
    list_filter = ("to_state", "to_mode")
    ordering = ("-created_at", "-id")
    show_full_result_count = False


admin.site.register(Operation, OperationAdmin)
admin.site.register(DeadLetter, DeadLetterAdmin)
admin.site.register(IdempotencyKey, IdempotencyKeyAdmin)
admin.site.register(DeliveryState, DeliveryStateAdmin)
admin.site.register(BreakerState, BreakerStateAdmin)
admin.site.register(BreakerEvent, BreakerEventAdmin)

#: The index template that adds the dashboard link to the default admin site's index.
INDEX_TEMPLATE = "admin/django_cio_reliable/index.html"
if admin.site.index_template is None:
    admin.site.index_template = INDEX_TEMPLATE

__all__: Sequence[str] = (
    "BreakerEventAdmin",
    "BreakerStateAdmin",
    "DeadLetterAdmin",
    "DeliveryStateAdmin",
    "IdempotencyKeyAdmin",
    "OperationAdmin",
)

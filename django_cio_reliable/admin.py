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
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import FieldDoesNotExist, PermissionDenied
from django.db import connections
from django.db.models import F, Field, Model, QuerySet
from django.db.models.constants import LOOKUP_SEP
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

#: The fields that hold payload data: without :data:`VIEW_PAYLOAD` no lookup, list filter,
#: search field or column ordering may reach them (each would answer guesses about the hidden
#: values through the number or the order of the rows listed). ``last_error`` is not one of
#: them: it is stored with every payload value cut out and shown in full to the same users;
#: nor is ``payload_bytes``, the size that everyone is shown.
PAYLOAD_FIELDS: frozenset[object] = frozenset({Operation._meta.get_field("payload")})


def _plural(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def reaches_payload(model: type[Model], path: object) -> bool:
    """Whether a lookup, search field, list filter or ordering of ``model`` reads a payload.

    Args:
        model: The model the path starts from (relations are followed).
        path: A lookup (``payload__attributes__email__startswith``), a search field (``=`` /
            ``^`` / ``@`` prefixes allowed), an ordering (``-`` / ``?`` prefixes allowed), a
            model field, or an expression (``F("payload__email")``, ``KT(...)``, an
            ``OrderBy``), whose every field reference is checked.

    Returns:
        True when any part of it is one of :data:`PAYLOAD_FIELDS`.
    """
    if isinstance(path, Field):
        return path in PAYLOAD_FIELDS
    if isinstance(path, F):
        return reaches_payload(model, getattr(path, "name", ""))
    if not isinstance(path, str):
        sources = getattr(path, "get_source_expressions", None)
        return callable(sources) and any(reaches_payload(model, part) for part in sources())
    opts = model._meta
    for part in path.lstrip("-?=^@").split(LOOKUP_SEP):
        try:
            field = opts.get_field(part)
        except FieldDoesNotExist:
            return False  # ``pk``, an annotation, or a transform: Django resolves it
        if field in PAYLOAD_FIELDS:
            return True
        path_infos = getattr(field, "path_infos", None)
        if not path_infos:
            return False  # a plain column: the other parts are transforms and lookups
        opts = path_infos[-1].to_opts
    return False


class PayloadPrivateChangeList(ChangeList):
    """A change list whose columns do not order by payloads for users without
    :data:`VIEW_PAYLOAD` (``?o=`` naming such a column is ignored, like an unsortable one)."""

    def __init__(self, request: HttpRequest, *args: Any, **kwargs: Any) -> None:
        # Set before the base class builds the queryset (and reads the ordering).
        self.payload_allowed = bool(request.user.has_perm(VIEW_PAYLOAD))
        super().__init__(request, *args, **kwargs)

    def get_ordering_field(self, field_name: Any) -> Any:
        """The column's ordering, or None when it reads a payload the user may not see."""
        order_field = super().get_ordering_field(field_name)
        if order_field is None or self.payload_allowed:
            return order_field
        return None if reaches_payload(self.model, order_field) else order_field


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
    search_fields: ClassVar[tuple[str, ...]] = ("=customer_id", "=event_id")
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
        payload = "payload_json" if self.has_payload_permission(request) else "payload_size"
        return (*self.BASE_FIELDS, payload)

    get_readonly_fields = get_fields  # everything is read-only

    # ------------------------------------------------------------------ payload privacy
    # Without ``view_payload`` nothing in a query string may reach a payload: a lookup on one
    # is refused (Django's DisallowedModelAdminLookup: a 400), search fields and list filters
    # on one are dropped, and a column ordered by one does not order. Otherwise the number or
    # the order of the rows listed would tell whether a guess about a hidden value is right.

    def has_payload_permission(self, request: HttpRequest) -> bool:
        """Whether the user may see payloads (and so filter, search and order by them)."""
        return bool(request.user.has_perm(VIEW_PAYLOAD))

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest) -> bool:
        """Refuse lookups that read a payload to users who may not see payloads.

        Args:
            lookup: The query string parameter (``payload__attributes__email__startswith``).
            value: Its value.
            request: The request; its user needs :data:`VIEW_PAYLOAD` for payload lookups.

        Returns:
            False for a payload lookup without the permission (the admin then answers 400 and
            logs to ``django.security.DisallowedModelAdminLookup``); otherwise Django's answer.
        """
        if reaches_payload(self.model, lookup) and not self.has_payload_permission(request):
            return False
        return super().lookup_allowed(lookup, value, request)

    def get_search_fields(self, request: HttpRequest) -> tuple[str, ...]:
        """The search fields, less those reading a payload for users who may not see it."""
        fields = tuple(super().get_search_fields(request))
        if self.has_payload_permission(request):
            return fields
        return tuple(field for field in fields if not reaches_payload(self.model, field))

    def get_list_filter(self, request: HttpRequest) -> tuple[Any, ...]:
        """The list filters, less those on a payload for users who may not see it."""
        filters = tuple(super().get_list_filter(request))
        if self.has_payload_permission(request):
            return filters
        return tuple(item for item in filters if not self._filter_reads_payload(item))

    def _filter_reads_payload(self, item: Any) -> bool:
        if isinstance(item, (list, tuple)):
            item = item[0]  # (field or path, filter class)
        elif isinstance(item, type):
            item = getattr(item, "parameter_name", None)  # a SimpleListFilter
        return reaches_payload(self.model, item)

    def get_sortable_by(self, request: HttpRequest) -> tuple[Any, ...]:
        """The sortable columns, less those ordered by a payload for users who may not see
        it (:class:`PayloadPrivateChangeList` ignores ``?o=`` on them as well)."""
        columns = tuple(super().get_sortable_by(request))
        if self.has_payload_permission(request):
            return columns
        return tuple(
            name for name in columns if not reaches_payload(self.model, self._column_ordering(name))
        )

    def _column_ordering(self, name: Any) -> Any:
        """What a ``list_display`` column orders by (as ``ChangeList.get_ordering_field``)."""
        if not isinstance(name, str):
            attr = name
        else:
            try:
                return self.model._meta.get_field(name)
            except FieldDoesNotExist:
                attr = getattr(self, name, getattr(self.model, name, None))
                if attr is None:
                    return name if LOOKUP_SEP in name else None
        if isinstance(attr, property):
            attr = attr.fget
        return getattr(attr, "admin_order_field", None)

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        """The change list that keeps payload columns from ordering without the permission."""
        return PayloadPrivateChangeList

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
        if not (self.has_view_permission(request) and self.has_payload_permission(request)):
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
    # Stored keys are hashes scoped by person and kind: search by the key as it was passed.
    search_fields = ("=operation__idempotency_key",)
    search_help_text = "Exact idempotency key, as passed to the call."
    ordering = ("-created_at",)
    show_full_result_count = False

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest) -> bool:
        """No lookups on the person key: it is not shown here, and filtering on it would let
        a user who may only see keys test guesses of customer ids."""
        if lookup.split(LOOKUP_SEP, 1)[0] == "person_key":
            return False
        return super().lookup_allowed(lookup, value, request)

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

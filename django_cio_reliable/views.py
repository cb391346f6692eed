"""Views: the health endpoint that answers 200 on warnings (docs/health.md), and the admin
dashboard, which :mod:`django_cio_reliable.admin` routes under the operations admin."""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from health_check.exceptions import ServiceWarning
from health_check.views import HealthCheckView

from django_cio_reliable import breaker, clock, dashboard, lifecycle, outbox
from django_cio_reliable.dashboard import human_duration

if TYPE_CHECKING:
    from django.contrib.admin import AdminSite

#: Who may open the dashboard.
DASHBOARD_PERMISSION = "django_cio_reliable.view_operation"
#: Who may force the breaker open, closed, disabled, or reset it (a dedicated permission, not
#: Django's generic ``change_breakerstate``).
BREAKER_PERMISSION = "django_cio_reliable.force_breaker"
#: The force buttons: ``(mode, label, css class)``.
FORCE_BUTTONS: tuple[tuple[str, str, str], ...] = (
    ("forced_open", "Force open", "cio-danger"),
    ("forced_closed", "Force closed", ""),
    ("disabled", "Disable (metrics only)", ""),
    ("auto", "Reset to automatic", "cio-default"),
)


class HealthView(HealthCheckView):  # type: ignore[misc]
    """django-health-check's view, answering 200 when the only failures are warnings.

    django-health-check 4.x answers 500 for a ``ServiceWarning`` too, which makes a load
    balancer drop a node that is merely degraded; the body is unchanged.

    Attributes:
        checks: The checks to run (default: only
            :class:`~django_cio_reliable.health.CustomerIOHealth`); the same format as
            ``HealthCheckView.checks``, so thresholds are passed as
            ``(check, {"backlog_warning": 5000})``.
        warnings_fail: Set to ``True`` to get django-health-check's behaviour back (500 on
            a warning).
    """

    checks = ("django_cio_reliable.health.CustomerIOHealth",)
    warnings_fail = False

    async def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        """Run the checks; turn a 500 caused by warnings alone into a 200."""
        response: HttpResponse = await super().get(request, *args, **kwargs)
        if response.status_code == 500 and not self.warnings_fail and only_warnings(self.results):
            response.status_code = 200
        return response


def only_warnings(results: Any) -> bool:
    """Whether at least one result failed and every failure is a ``ServiceWarning``."""
    errors = [result.error for result in results if result.error is not None]
    return bool(errors) and all(isinstance(error, ServiceWarning) for error in errors)


def _when(moment: datetime | None) -> str:
    return "—" if moment is None else timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S")


def breaker_facts(snapshot: breaker.Snapshot) -> list[tuple[str, str]]:
    """The rows of the breaker panel, as ``(label, text)``."""
    open_for = (clock.now() - snapshot.open_since).total_seconds() if snapshot.open_since else None
    return [
        ("opened at", _when(snapshot.opened_at)),
        ("away from closed for", human_duration(open_for)),
        ("next call admitted at", _when(snapshot.retry_at)),
        ("cooldown", human_duration(snapshot.cooldown)),
        (
            "window",
            f"{snapshot.calls} calls, {snapshot.failures} failures "
            f"({snapshot.failure_rate:.0%}), {snapshot.slow_calls} slow",
        ),
        ("consecutive failures", str(snapshot.consecutive_failures)),
        ("probes in flight", f"{snapshot.probes_in_flight} of {snapshot.probe_limit}"),
        ("half-open successes", f"{snapshot.half_open_successes} of {snapshot.success_threshold}"),
        ("version", str(snapshot.version)),
        ("updated at", _when(snapshot.updated_at)),
    ]


def breaker_panel(request: HttpRequest) -> dict[str, Any]:
    """Template context for the breaker panel (state, transitions, force buttons)."""
    snapshot = breaker.get_breaker().snapshot(fresh=True)
    return {
        "snapshot": snapshot,
        "state": str(snapshot.state),
        "mode": str(snapshot.mode),
        "facts": breaker_facts(snapshot),
        "events": list(breaker.recent_events(10)),
        "can_force": request.user.has_perm(BREAKER_PERMISSION),
        "force_url": reverse(
            "admin:django_cio_reliable_breakerstate_force", current_app=_current_app(request)
        ),
        "next_url": request.get_full_path(),
        "modes": FORCE_BUTTONS,
    }


def _current_app(request: HttpRequest) -> str | None:
    return getattr(request, "current_app", None)


def dashboard_view(request: HttpRequest, *, admin_site: AdminSite) -> HttpResponse:
    """The delivery dashboard: breaker, backlog, throughput chart, top error reasons.

    Needs the ``django_cio_reliable.view_operation`` permission (403 otherwise); the force
    buttons need ``django_cio_reliable.force_breaker``.
    """
    if not request.user.has_perm(DASHBOARD_PERMISSION):
        raise PermissionDenied
    hours = dashboard.parse_hours(request.GET.get("hours"))
    buckets, minutes = dashboard.collect_throughput(hours=hours)
    status = outbox.queue_status()
    url = partial(reverse, current_app=_current_app(request))
    context = {
        **admin_site.each_context(request),
        "title": "Customer.io delivery",
        "subtitle": None,
        "hours": hours,
        "windows": dashboard.WINDOW_HOURS,
        "bucket_minutes": minutes,
        "chart": dashboard.render_chart_svg(buckets, bucket_minutes=minutes),
        "delivered_total": sum(b.delivered for b in buckets),
        "failed_total": sum(b.failed for b in buckets),
        "counts": [(name, status.counts[name]) for name in lifecycle.Status.values],
        "open_total": sum(status.counts[name] for name in lifecycle.OPEN),
        "oldest_open_age": human_duration(status.oldest_open_age),
        "paused_until": status.paused_until,
        "pause_reason": status.pause_reason,
        "auth_failed_at": status.auth_failed_at,
        "errors": dashboard.collect_top_errors(limit=10),
        "breaker": breaker_panel(request),
        "changelist_url": url("admin:django_cio_reliable_operation_changelist"),
        "dead_letters_url": url("admin:django_cio_reliable_deadletter_changelist"),
        "breaker_url": url("admin:django_cio_reliable_breakerstate_changelist"),
    }
    request.current_app = admin_site.name
    return TemplateResponse(request, "admin/django_cio_reliable/dashboard.html", context)

"""Views: the health endpoint that answers 200 on warnings, and the admin dashboard.

Route the health view in your URLconf (or ``include("django_cio_reliable.urls")``)::

    from django_cio_reliable.views import HealthView

    urlpatterns = [path("health/cio/", HealthView.as_view(), name="cio_health")]

The dashboard is an admin view; :mod:`django_cio_reliable.admin` routes it under the
operations admin (``admin:django_cio_reliable_operation_dashboard``).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from health_check.exceptions import ServiceWarning
from health_check.views import HealthCheckView

from django_cio_reliable import breaker, clock, dashboard, lifecycle, outbox
from django_cio_reliable.breaker import Snapshot
from django_cio_reliable.dashboard import human_duration

if TYPE_CHECKING:
    from django.contrib.admin import AdminSite

#: Who may open the dashboard.
DASHBOARD_PERMISSION = "django_cio_reliable.view_operation"
#: Who may force the breaker open, closed, disabled, or reset it (a dedicated permission, not
#: Django's generic ``change_breakerstate``).
BREAKER_PERMISSION = "django_cio_reliable.force_breaker"
#: Statuses in the order the dashboard lists them.
STATUSES = tuple(lifecycle.Status.values)
OPEN_STATUSES = lifecycle.OPEN


class HealthView(HealthCheckView):  # type: ignore[misc]
    """django-health-check's view, answering 200 when the only failures are warnings.

    django-health-check 4.x answers 500 as soon as any check raises, a ``ServiceWarning``
    included, which makes a load balancer drop a node that is merely degraded. This view
    answers 500 only when at least one check raised something other than a warning (e.g.
    ``ServiceUnavailable``); the body is unchanged (every warning is still listed).

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


# --------------------------------------------------------------------------- dashboard


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S")


def breaker_facts(snapshot: Snapshot) -> list[tuple[str, str]]:
    """The rows of the breaker panel, as ``(label, text)``."""
    now = clock.now()
    facts = [
        ("opened at", _when(snapshot.opened_at)),
        (
            "away from closed for",
            human_duration((now - snapshot.open_since).total_seconds())
            if snapshot.open_since
            else "—",
        ),
        ("next call admitted at", _when(snapshot.retry_at)),
        ("cooldown", human_duration(snapshot.cooldown)),
        (
            "window",
            f"{snapshot.calls} calls, {snapshot.failures} failures "
            f"({snapshot.failure_rate:.0%}), {snapshot.slow_calls} slow",
        ),
        ("consecutive failures", str(snapshot.consecutive_failures)),
        ("probes in flight", f"{snapshot.probes_in_flight} of {snapshot.probe_limit}"),
        (
            "half-open successes",
            f"{snapshot.half_open_successes} of {snapshot.success_threshold}",
        ),
        ("version", str(snapshot.version)),
        ("updated at", _when(snapshot.updated_at)),
    ]
    return facts


def breaker_panel(request: HttpRequest, *, next_url: str = "") -> dict[str, Any]:
    """Template context for the breaker panel (state, transitions, force buttons)."""
    snapshot = breaker.get_breaker().snapshot(fresh=True)
    events = list(breaker.recent_events(10))
    return {
        "snapshot": snapshot,
        "state": str(snapshot.state),
        "mode": str(snapshot.mode),
        "facts": breaker_facts(snapshot),
        "events": events,
        "can_force": request.user.has_perm(BREAKER_PERMISSION),
        "force_url": reverse(
            "admin:django_cio_reliable_breakerstate_force", current_app=_current_app(request)
        ),
        "next_url": next_url or request.get_full_path(),
        "modes": FORCE_BUTTONS,
    }


#: The force buttons: ``(mode, label, css class)``.
FORCE_BUTTONS: tuple[tuple[str, str, str], ...] = (
    ("forced_open", "Force open", "cio-danger"),
    ("forced_closed", "Force closed", ""),
    ("disabled", "Disable (metrics only)", ""),
    ("auto", "Reset to automatic", "cio-default"),
)


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
    counts = [(name, int(status.counts.get(name, 0))) for name in STATUSES]
    app = _current_app(request)
    changelist = reverse("admin:django_cio_reliable_operation_changelist", current_app=app)
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
        "counts": counts,
        "open_total": sum(n for name, n in counts if name in OPEN_STATUSES),
        "oldest_open_age": human_duration(status.oldest_open_age)
        if status.oldest_open_age is not None
        else None,
        "paused_until": status.paused_until,
        "pause_reason": status.pause_reason,
        "auth_failed_at": status.auth_failed_at,
        "errors": dashboard.collect_top_errors(limit=10),
        "breaker": breaker_panel(request),
        "changelist_url": changelist,
        "dead_letters_url": reverse(
            "admin:django_cio_reliable_deadletter_changelist", current_app=app
        ),
        "breaker_url": reverse(
            "admin:django_cio_reliable_breakerstate_changelist", current_app=app
        ),
    }
    request.current_app = admin_site.name
    return TemplateResponse(request, "admin/django_cio_reliable/dashboard.html", context)

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from health_check.views import HealthCheckView

from django_cio_reliable.views import HealthView

urlpatterns = [
    path("admin/", admin.site.urls),
    # django-health-check's own view: 500 on a warning (4.x behaviour).
    path(
        "health/",
        HealthCheckView.as_view(checks=["django_cio_reliable.health.CustomerIOHealth"]),
        name="health",
    ),
    # Ours: 200 when only warnings fail.
    path("health/cio/", include("django_cio_reliable.urls")),
    # Ours with custom thresholds and the credentials probe.
    path(
        "health/cio-strict/",
        HealthView.as_view(
            checks=[
                (
                    "django_cio_reliable.health.CustomerIOHealth",
                    {
                        "backlog_warning": 2,
                        "backlog_unavailable": 4,
                        "oldest_pending_warning": 60,
                        "oldest_pending_unavailable": 120,
                        "open_unavailable_after": 30,
                        "dead_warning": None,
                        "probe_credentials": True,
                        "probe_interval": 60,
                    },
                )
            ]
        ),
        name="health_strict",
    ),
]

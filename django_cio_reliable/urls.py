"""Optional URLconf: the Customer.io health endpoint that answers 200 on warnings.

``path("health/cio/", include("django_cio_reliable.urls"))`` routes
:class:`~django_cio_reliable.views.HealthView` (URL name ``django_cio_reliable:health``).
For other thresholds route the view yourself: ``HealthView.as_view(checks=[(check, {...})])``.
"""

from __future__ import annotations

from django.urls import path

from django_cio_reliable.views import HealthView

app_name = "django_cio_reliable"

urlpatterns = [
    path("", HealthView.as_view(), name="health"),
]

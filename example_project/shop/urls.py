from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from health_check.views import HealthCheckView

from shop import views

urlpatterns = [
    path("", views.index),
    path("admin/", admin.site.urls),
    # django-health-check's own view: every check, 500 as soon as one fails (warnings too).
    path(
        "health/",
        HealthCheckView.as_view(
            checks=["health_check.Database", "django_cio_reliable.health.CustomerIOHealth"]
        ),
        name="health",
    ),
    # The app's HealthView: Customer.io only, 200 when only warnings fail (for load balancers).
    path("health/cio/", include("django_cio_reliable.urls")),
    path("signup/", views.signup),
    path("users/<int:user_id>/", views.profile),
    path("orders/", views.place_order),
    path("orders/<int:order_id>/status/", views.order_status),
]

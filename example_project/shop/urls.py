from __future__ import annotations

from django.contrib import admin
from django.urls import path

from shop import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("signup/", views.signup),
    path("orders/", views.place_order),
]

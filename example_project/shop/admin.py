from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import admin

from shop.models import Order

if TYPE_CHECKING:
    OrderAdminBase = admin.ModelAdmin[Order]
else:
    OrderAdminBase = admin.ModelAdmin


@admin.register(Order)
class OrderAdmin(OrderAdminBase):
    list_display = ("id", "user", "total", "coupon", "status", "created_at")
    list_filter = ("status",)

from __future__ import annotations

from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "shop"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The order hooks, declared in code (the user hook is in settings: CIO_RELIABLE["HOOKS"]).
        from django_cio_reliable import hooks
        from shop import cio
        from shop.models import Order

        hooks.track_on_create(
            Order,
            "order_placed",
            customer_id=cio.order_user_id,
            data=cio.order_placed_data,
            idempotency_key=cio.order_placed_key,
        )
        hooks.track_on_change(
            Order,
            "status",
            "order_status_changed",
            customer_id=cio.order_user_id,
            data=cio.order_status_data,
            idempotency_key=cio.order_status_key,
        )

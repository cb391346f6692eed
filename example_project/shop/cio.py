"""What the shop tells Customer.io: the callables of its model hooks.

The user hook is declared in settings (``CIO_RELIABLE["HOOKS"]``, dotted paths to the functions
below); the order hooks in code (:meth:`shop.apps.ShopConfig.ready`). Both run in the save's
transaction: an order that rolls back never reaches Customer.io.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractUser

    from shop.models import Order


def user_id(user: AbstractUser) -> int | None:
    """Customers are identified by their primary key; staff accounts are not customers."""
    return None if user.is_staff else user.pk


def user_attributes(user: AbstractUser) -> dict[str, Any]:
    return {"email": user.email, "first_name": user.first_name, "username": user.username}


def order_user_id(order: Order) -> int:
    return order.user_id


def order_placed_data(order: Order) -> dict[str, Any]:
    data: dict[str, Any] = {"order": order.pk, "total": order.total}
    if order.coupon:
        data["coupon"] = order.coupon
    return data


def order_placed_key(order: Order) -> str:
    return f"order-{order.pk}-placed"


def order_status_data(order: Order, old: str, new: str) -> dict[str, Any]:
    return {"order": order.pk, "from": old, "to": new}


def order_status_key(order: Order, old: str, new: str) -> str:
    return f"order-{order.pk}-{new}"

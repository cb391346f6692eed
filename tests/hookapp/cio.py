"""Hook callables named by dotted path in the ``CIO_RELIABLE["HOOKS"]`` tests."""

from __future__ import annotations

from typing import Any

from tests.hookapp.models import Customer, Order

#: Not callable: a HOOKS entry naming it is refused by the checks.
NOT_CALLABLE = 42


def customer_id(customer: Customer) -> int:
    return customer.pk


def customer_attributes(customer: Customer) -> dict[str, Any]:
    return {"email": customer.email, "first_name": customer.first_name, "plan": customer.plan}


def order_customer_id(order: Order) -> int | None:
    return order.customer_id


def order_data(order: Order) -> dict[str, Any]:
    return {"total": order.total, "status": order.status}


def order_placed_key(order: Order) -> str:
    return f"order-{order.pk}-placed"


def status_change(order: Order, old: Any, new: Any) -> dict[str, Any]:
    return {"from": old, "to": new, "total": order.total}

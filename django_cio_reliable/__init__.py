"""django-cio-reliable: deliver Customer.io identify/track calls reliably from Django.

Usage::

    import django_cio_reliable as cio

    cio.identify(user.pk, {"email": user.email})
    cio.track(user.pk, "order_placed", {"total": 42}, idempotency_key=f"order-{order.pk}")
"""

from __future__ import annotations

from django_cio_reliable.api import DERIVE, delete, forget, identify, track, track_anonymous
from django_cio_reliable.exceptions import DeliveryError, InvalidOperation

__version__ = "0.1.0.dev0"

__all__ = [
    "DERIVE",
    "DeliveryError",
    "InvalidOperation",
    "__version__",
    "delete",
    "forget",
    "identify",
    "track",
    "track_anonymous",
]

"""django-cio-reliable: deliver Customer.io identify/track calls reliably from Django.

Usage::

    import django_cio_reliable as cio

    cio.identify(user.pk, {"email": user.email})
    cio.track(user.pk, "order_placed", {"total": 42}, idempotency_key=f"order-{order.pk}")
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from django_cio_reliable import hooks
from django_cio_reliable.api import DERIVE, delete, forget, identify, track, track_anonymous
from django_cio_reliable.exceptions import DeliveryError, IdempotencyConflict, InvalidOperation

if TYPE_CHECKING:
    from django_cio_reliable import testing as testing

__version__ = "0.1.0.dev0"


def __getattr__(name: str) -> ModuleType:
    # ``cio.testing`` without importing the fake server with the package.
    if name == "testing":
        import importlib

        return importlib.import_module("django_cio_reliable.testing")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DERIVE",
    "DeliveryError",
    "IdempotencyConflict",
    "InvalidOperation",
    "__version__",
    "delete",
    "forget",
    "hooks",
    "identify",
    "track",
    "track_anonymous",
]

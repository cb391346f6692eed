"""django-cio-reliable: deliver Customer.io identify/track calls reliably from Django."""

from __future__ import annotations

from django_cio_reliable.exceptions import DeliveryError, InvalidOperation

__version__ = "0.1.0.dev0"

__all__ = ["DeliveryError", "InvalidOperation", "__version__"]

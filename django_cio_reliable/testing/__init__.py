"""Test doubles for django-cio-reliable users: a fake Customer.io Track API server.

``FakeCustomerIO`` is a real HTTP server on 127.0.0.1 that speaks Customer.io's Track API
(v1 identify/track/anonymous/delete, ``/api/v2/batch``, the region probe), checks auth and
payloads like Customer.io, deduplicates events by ``id``, records everything, and misbehaves
on request. ``FakeCustomerIOClient`` drives one running in another process. Standard library
only. See ``docs/testing.md``. ``capture_operations()`` asserts which operations your code
enqueued (``docs/hooks.md``).
"""

from __future__ import annotations

from django_cio_reliable.testing.assertions import CapturedOperations, capture_operations
from django_cio_reliable.testing.client import FakeCustomerIOClient
from django_cio_reliable.testing.records import (
    ApiVersion,
    BatchRejection,
    FaultsSnapshot,
    OutageWindow,
    RandomFaults,
    Receipt,
    ReceiptKind,
    ReceivedRequest,
    RequestOutcome,
    ScriptedFault,
)
from django_cio_reliable.testing.server import FakeCustomerIO, format_retry_after

__all__ = [
    "ApiVersion",
    "BatchRejection",
    "CapturedOperations",
    "FakeCustomerIO",
    "FakeCustomerIOClient",
    "FaultsSnapshot",
    "OutageWindow",
    "RandomFaults",
    "ReceiptKind",
    "ReceivedRequest",
    "Receipt",
    "RequestOutcome",
    "ScriptedFault",
    "capture_operations",
    "format_retry_after",
]

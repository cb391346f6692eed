"""HTTP replies as FakeCustomerIO builds them (internal)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal

from django_cio_reliable.testing.records import RequestOutcome

Action = Literal["answer", "reset", "drop"]
OUTCOMES: dict[Action, RequestOutcome] = {
    "answer": "answered",
    "reset": "reset",
    "drop": "dropped",
}


@dataclass
class Reply:
    """What to do with one request: answer it, reset the connection, or drop it."""

    status: int = 200
    body: bytes = b"{}"
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"
    action: Action = "answer"
    #: For a trickled answer: waits before each byte; ``False`` sends the rest at once.
    trickle: Callable[[], bool] | None = None
    #: Whether the status line and headers are trickled too (not only the body).
    trickle_head: bool = False


def json_reply(status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> Reply:
    """Answer ``status`` with ``payload`` as JSON."""
    body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    return Reply(status=status, body=body, headers=headers or [])


def error_reply(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Reply:
    """Answer ``status`` with Customer.io's error shape ``{"meta": {"error": message}}``."""
    return json_reply(status, {"meta": {"error": message}}, headers)


def phrase(status: int) -> str:
    """The reason phrase of a status code (``"Service Unavailable"``)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"

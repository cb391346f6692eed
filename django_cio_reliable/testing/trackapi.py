"""Customer.io Track API payload checks, as FakeCustomerIO applies them.

The limits are Customer.io's documented ones. Where Customer.io's documentation leaves a
measurement open, the fake takes the lenient reading, so that it never rejects what the real
service would accept: a string attribute value is measured as its UTF-8 bytes (without the
JSON quotes), any other value as its compact JSON serialisation; event data is measured as
compact JSON; batch sizes are in KiB (500 KiB a request, 32 KiB an operation).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django_cio_reliable.testing.records import ReceiptKind

MAX_CUSTOMER_ID_BYTES = 150
MAX_ATTRIBUTE_NAME_BYTES = 150
MAX_ATTRIBUTE_VALUE_BYTES = 1000
MAX_ATTRIBUTES = 300
MAX_EVENT_NAME_BYTES = 100
MAX_EVENT_DATA_BYTES = 100_000
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_OPERATION_BYTES = 32 * 1024

_ULID_RE = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$", re.IGNORECASE)
_PERSON_IDENTIFIERS = ("id", "email", "cio_id")


class TrackAPIError(ValueError):
    """A payload Customer.io would refuse.

    Attributes:
        field: The offending field (``""`` when the whole payload is at fault).
        reason: A short machine-readable reason (``"required"`` or ``"invalid"``), as in
            Customer.io's v2 batch errors.
    """

    def __init__(self, message: str, *, field: str = "", reason: str = "invalid") -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class Operation:
    """One valid operation extracted from a request."""

    kind: ReceiptKind
    customer_id: str | None
    name: str | None = None
    event_id: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    timestamp: int | None = None


def _reject_constant(value: str) -> Any:
    raise ValueError(f"{value} is not valid JSON")


def loads(body: bytes) -> Any:
    """Parse a request body as strict JSON (``NaN`` and ``Infinity`` are refused).

    Raises:
        TrackAPIError: If the body is not UTF-8 JSON.
    """
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError):
        raise TrackAPIError("request body is not valid JSON") from None


def json_size(value: Any) -> int:
    """Bytes of the compact UTF-8 JSON serialisation of ``value``."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return len(text.encode("utf-8"))


def _byte_len(text: str) -> int:
    return len(text.encode("utf-8"))


def check_customer_id(value: Any, *, field: str = "id") -> str:
    """Return a valid customer identifier or raise :class:`TrackAPIError`."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TrackAPIError(f"{field} attribute must be a string value", field=field)
    text = str(value)
    if not text:
        raise TrackAPIError(f"{field} attribute cannot be an empty string", field=field)
    if _byte_len(text) > MAX_CUSTOMER_ID_BYTES:
        raise TrackAPIError(
            f"{field} cannot be longer than {MAX_CUSTOMER_ID_BYTES} bytes "
            f"(got {_byte_len(text)} bytes)",
            field=field,
        )
    return text


def check_attributes(value: Any, *, field: str = "attributes") -> dict[str, Any]:
    """Check person attributes against Customer.io's identify limits."""
    if not isinstance(value, dict):
        raise TrackAPIError(f"{field} must be a hash", field=field)
    if len(value) > MAX_ATTRIBUTES:
        raise TrackAPIError(
            f"cannot identify more than {MAX_ATTRIBUTES} attributes in one request "
            f"(got {len(value)})",
            field=field,
        )
    for name, attribute in value.items():
        if _byte_len(name) > MAX_ATTRIBUTE_NAME_BYTES:
            raise TrackAPIError(
                f"attribute name cannot be longer than {MAX_ATTRIBUTE_NAME_BYTES} bytes "
                f"(got {_byte_len(name)} bytes)",
                field=field,
            )
        size = _byte_len(attribute) if isinstance(attribute, str) else json_size(attribute)
        if size > MAX_ATTRIBUTE_VALUE_BYTES:
            raise TrackAPIError(
                f"value for attribute '{name}' cannot be longer than "
                f"{MAX_ATTRIBUTE_VALUE_BYTES} bytes (got {size} bytes)",
                field=f"{field}.{name}",
            )
    return value


def check_event_name(value: Any, *, field: str = "name") -> str:
    """Return a valid event name or raise :class:`TrackAPIError`."""
    if value is None or value == "":
        raise TrackAPIError("event name must not be blank", field=field, reason="required")
    if not isinstance(value, str):
        raise TrackAPIError("event name must be a string", field=field)
    if _byte_len(value) > MAX_EVENT_NAME_BYTES:
        raise TrackAPIError(
            f"event name cannot be longer than {MAX_EVENT_NAME_BYTES} bytes "
            f"(got {_byte_len(value)} bytes)",
            field=field,
        )
    return value


def check_event_data(value: Any, *, field: str = "data") -> dict[str, Any]:
    """Return valid event data (``None`` becomes ``{}``) or raise :class:`TrackAPIError`."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TrackAPIError('event data must be a hash (send "data":{})', field=field)
    size = json_size(value)
    if size > MAX_EVENT_DATA_BYTES:
        raise TrackAPIError(
            f"event data cannot be longer than {MAX_EVENT_DATA_BYTES} bytes (got {size} bytes)",
            field=field,
        )
    return value


def check_event_id(value: Any, *, require_ulid: bool) -> str | None:
    """Return the event's deduplication id (``None`` if absent)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise TrackAPIError("id must be a non-empty string", field="id")
    if require_ulid and not _ULID_RE.match(value):
        raise TrackAPIError("id must be a valid ULID", field="id")
    return value


def check_timestamp(value: Any) -> int | None:
    """Return the event's Unix timestamp (``None`` if absent)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TrackAPIError("timestamp must be a valid unix timestamp", field="timestamp")
    return value


def _object_body(body: Any) -> dict[str, Any]:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise TrackAPIError("request body must be a JSON object")
    return body


def _event(
    kind: ReceiptKind,
    customer_id: str | None,
    body: Mapping[str, Any],
    *,
    data_field: str,
    require_ulid: bool,
) -> Operation:
    return Operation(
        kind=kind,
        customer_id=customer_id,
        name=check_event_name(body.get("name")),
        attributes=check_event_data(body.get(data_field), field=data_field),
        event_id=check_event_id(body.get("id"), require_ulid=require_ulid),
        timestamp=check_timestamp(body.get("timestamp")),
    )


def parse_identify(customer_id: str, body: Any) -> Operation:
    """``PUT /api/v1/customers/{id}``: the body is the attributes to upsert."""
    attributes = check_attributes(_object_body(body), field="attributes")
    return Operation(
        kind="identify", customer_id=check_customer_id(customer_id), attributes=attributes
    )


def parse_delete(customer_id: str) -> Operation:
    """``DELETE /api/v1/customers/{id}``."""
    return Operation(kind="delete", customer_id=check_customer_id(customer_id))


def parse_track(customer_id: str, body: Any, *, require_ulid: bool) -> Operation:
    """``POST /api/v1/customers/{id}/events``: ``{"name", "data"?, "id"?, "timestamp"?}``."""
    cid = check_customer_id(customer_id)
    return _event("track", cid, _object_body(body), data_field="data", require_ulid=require_ulid)


def parse_track_anonymous(body: Any, *, require_ulid: bool) -> Operation:
    """``POST /api/v1/events``: ``{"name", "data"?, "anonymous_id"?, "id"?, "timestamp"?}``."""
    payload = _object_body(body)
    anonymous_id = payload.get("anonymous_id")
    if anonymous_id == "":
        anonymous_id = None
    if anonymous_id is not None:
        anonymous_id = check_customer_id(anonymous_id, field="anonymous_id")
    return _event(
        "track_anonymous", anonymous_id, payload, data_field="data", require_ulid=require_ulid
    )


def parse_batch(body: Any) -> list[Any]:
    """``POST /api/v2/batch``: return the list of operations in ``{"batch": [...]}``."""
    payload = _object_body(body)
    batch = payload.get("batch")
    if not isinstance(batch, list):
        raise TrackAPIError("batch must be an array of operations", field="batch")
    if not batch:
        raise TrackAPIError("batch must not be empty", field="batch", reason="required")
    return batch


def _person_identifier(op: Mapping[str, Any]) -> str:
    identifiers = op.get("identifiers")
    if identifiers is None:
        raise TrackAPIError("identifiers are required", field="identifiers", reason="required")
    if not isinstance(identifiers, dict):
        raise TrackAPIError("identifiers must be an object", field="identifiers")
    present = [key for key in _PERSON_IDENTIFIERS if key in identifiers]
    if len(present) != 1:
        raise TrackAPIError(
            "identifiers must hold exactly one of id, email, cio_id", field="identifiers"
        )
    key = present[0]
    return check_customer_id(identifiers[key], field=f"identifiers.{key}")


def _anonymous_identifier(op: Mapping[str, Any]) -> str | None:
    if "anonymous_id" in op:
        return check_customer_id(op["anonymous_id"], field="anonymous_id")
    identifiers = op.get("identifiers")
    if isinstance(identifiers, dict) and set(identifiers) == {"anonymous_id"}:
        return check_customer_id(identifiers["anonymous_id"], field="identifiers.anonymous_id")
    return None


def parse_batch_operation(op: Any, *, require_ulid: bool) -> Operation:
    """Check one v2 batch operation (a ``"person"`` entity: identify, event or delete)."""
    if not isinstance(op, dict):
        raise TrackAPIError("operation must be an object")
    size = json_size(op)
    if size > MAX_BATCH_OPERATION_BYTES:
        raise TrackAPIError(
            f"operation cannot be larger than {MAX_BATCH_OPERATION_BYTES} bytes (got {size} bytes)"
        )
    entity_type = op.get("type")
    if entity_type is None:
        raise TrackAPIError("type is required", field="type", reason="required")
    if entity_type != "person":
        raise TrackAPIError(
            f"type {entity_type!r} is not supported by FakeCustomerIO (only 'person')",
            field="type",
        )
    action = op.get("action")
    if action is None:
        raise TrackAPIError("action is required", field="action", reason="required")
    if action == "identify":
        customer_id = _person_identifier(op)
        attributes = check_attributes(op.get("attributes", {}), field="attributes")
        return Operation(kind="identify", customer_id=customer_id, attributes=attributes)
    if action == "delete":
        return Operation(kind="delete", customer_id=_person_identifier(op))
    if action == "event":
        anonymous_id = _anonymous_identifier(op)
        if anonymous_id is not None:
            return _event(
                "track_anonymous",
                anonymous_id,
                op,
                data_field="attributes",
                require_ulid=require_ulid,
            )
        return _event(
            "track",
            _person_identifier(op),
            op,
            data_field="attributes",
            require_ulid=require_ulid,
        )
    raise TrackAPIError(
        f"action {action!r} is not supported by FakeCustomerIO (identify, event and delete are)",
        field="action",
    )

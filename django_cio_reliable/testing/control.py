"""The control endpoint of FakeCustomerIO (``/__fake__/``): no auth, no faults.

It lets another process — a demo, a soak test, a shell with ``curl`` — read what the fake
received and script its faults. ``POST /__fake__/faults`` takes one JSON object naming the
fault and its arguments, the same as the Python methods::

    {"fault": "fail_next", "n": 2, "status": 503, "retry_after": 5}
    {"fault": "reject_batch_items", "customer_ids": ["42"]}
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from django_cio_reliable.testing import trackapi
from django_cio_reliable.testing.replies import Reply, error_reply, json_reply

if TYPE_CHECKING:
    from django_cio_reliable.testing.server import FakeCustomerIO


class ControlError(ValueError):
    """A control request that cannot be carried out (answered 400)."""


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ControlError("must be an integer")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ControlError("must be a number")
    return float(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ControlError("must be true or false")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ControlError("must be a string")
    return value


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else check(value)


def _retry_after(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    raise ControlError("must be seconds or an HTTP-date string")


def _body(value: Any) -> Any:
    if value is None or isinstance(value, (str, dict)):
        return value
    raise ControlError("must be a JSON object, a string or null")


def _int_list(value: Any) -> list[int]:
    if not isinstance(value, list):
        raise ControlError("must be a list of integers")
    return [_int(item) for item in value]


def _str_list(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise ControlError("must be a list of strings")
    return [_str(item) for item in value]


_Params = dict[str, Callable[[Any], Any]]

FAULT_PARAMETERS: dict[str, _Params] = {
    "fail_next": {
        "n": _int,
        "status": _int,
        "retry_after": _retry_after,
        "body": _body,
        "apply": _bool,
    },
    "outage_requests": {"n": _int, "status": _int, "retry_after": _retry_after},
    "hang_next": {"n": _int, "seconds": _number, "apply": _bool},
    "reset_next": {"n": _int, "apply": _bool},
    "trickle_next": {"n": _int, "interval": _number, "headers": _bool},
    "set_latency": {"seconds": _number},
    "outage": {"seconds": _number, "status": _int, "retry_after": _retry_after},
    "random_faults": {
        "seed": _int,
        "error_rate": _number,
        "rate_limit_rate": _number,
        "hang_rate": _number,
        "reset_rate": _number,
        "hang_seconds": _number,
        "retry_after": _retry_after,
        "error_status": _int,
    },
    "reject_batch_items": {
        "indexes": _int_list,
        "customer_ids": _str_list,
        "reason": _str,
        "field": _str,
        "message": _str,
        "count": _optional(_int),
    },
    "hold": {},
    "release": {},
    "clear_faults": {},
    "reset": {},
}
"""Every fault the control endpoint accepts, with the arguments each takes."""


def _operation_ids(op: Mapping[str, Any]) -> set[str]:
    ids: set[str] = set()
    identifiers = op.get("identifiers")
    if isinstance(identifiers, dict):
        ids.update(str(v) for v in identifiers.values() if isinstance(v, (str, int)))
    anonymous_id = op.get("anonymous_id")
    if isinstance(anonymous_id, (str, int)):
        ids.add(str(anonymous_id))
    return ids


def apply_fault_spec(fake: FakeCustomerIO, spec: Any) -> None:
    """Carry out one ``POST /__fake__/faults`` request body.

    Raises:
        ControlError: If the spec names an unknown fault or has bad arguments.
    """
    if not isinstance(spec, dict):
        raise ControlError('the body must be a JSON object like {"fault": "fail_next", "n": 1}')
    name = spec.get("fault")
    if not isinstance(name, str) or name not in FAULT_PARAMETERS:
        raise ControlError(f"fault must be one of {sorted(FAULT_PARAMETERS)}")
    params = FAULT_PARAMETERS[name]
    kwargs: dict[str, Any] = {}
    for key, value in spec.items():
        if key == "fault":
            continue
        if key not in params:
            raise ControlError(f"{name} takes no argument {key!r} (it takes {sorted(params)})")
        try:
            kwargs[key] = params[key](value)
        except ControlError as exc:
            raise ControlError(f"{name}: {key} {exc}") from None
    if name == "reject_batch_items":
        indexes = kwargs.pop("indexes", None)
        customer_ids = kwargs.pop("customer_ids", None)
        if (indexes is None) == (customer_ids is None):
            raise ControlError("reject_batch_items takes exactly one of indexes, customer_ids")
        if customer_ids is not None:
            wanted = frozenset(customer_ids)

            def by_customer(index: int, op: Mapping[str, Any]) -> bool:
                return bool(_operation_ids(op) & wanted)

            kwargs["description"] = f"customer_ids {sorted(wanted)}"
            fake.reject_batch_items(by_customer, **kwargs)
            return
        fake.reject_batch_items(indexes, **kwargs)
        return
    try:
        getattr(fake, name)(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ControlError(f"{name}: {exc}") from None


def handle_control(fake: FakeCustomerIO, method: str, path: str, body: bytes) -> Reply:
    """Answer one request under ``/__fake__/``."""
    routes: dict[str, tuple[str, Callable[[], Any]]] = {
        "/__fake__/stats": ("GET", fake.stats),
        "/__fake__/receipts": ("GET", lambda: {"receipts": [r.to_dict() for r in fake.receipts]}),
        "/__fake__/requests": ("GET", lambda: {"requests": [r.to_dict() for r in fake.requests]}),
        "/__fake__/people": ("GET", lambda: {"people": fake.people()}),
        "/__fake__/faults": ("GET", lambda: fake.faults.to_dict()),
        "/__fake__/reset": ("POST", fake.reset),
        "/__fake__/release": ("POST", fake.release),
        "/__fake__/hold": ("POST", fake.hold),
        "/__fake__/clear_faults": ("POST", fake.clear_faults),
    }
    path = path.rstrip("/")
    if path == "/__fake__/faults" and method == "POST":
        try:
            spec = trackapi.loads(body) if body.strip() else None
            apply_fault_spec(fake, spec)
        except (ControlError, trackapi.TrackAPIError) as exc:
            return error_reply(400, str(exc))
        return json_reply(200, {"ok": True, "faults": fake.faults.to_dict()})
    if path not in routes:
        return error_reply(404, "not found")
    allowed, action = routes[path]
    if path == "/__fake__/faults":
        allowed = "GET, POST"
    if method not in allowed.split(", "):
        return error_reply(405, "method not allowed", [("Allow", allowed)])
    result = action()
    return json_reply(200, {"ok": True} if result is None else result)


def dumps(value: Any) -> bytes:
    """Serialise a control request body."""
    return json.dumps(value, separators=(",", ":")).encode("utf-8")

"""Customer.io's documented limits, checked at the call site.

Every public call of the app passes its input through this module before anything is stored.
Values are normalised to plain JSON types (``dict`` with ``str`` keys, ``list``, ``str``, ``int``,
``float``, ``bool``, ``None``) by the rules in ``docs/validation.md``; anything Customer.io would
reject, and anything that has no faithful JSON form, raises
:class:`~django_cio_reliable.exceptions.InvalidOperation` naming the field, the limit and the
actual size. Messages never contain the values themselves (they may be personal data), only
field paths, type names and sizes.

The module is pure: no database, no app settings. Only a naive ``datetime`` reads Django's
``TIME_ZONE``.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal
from enum import Enum
from typing import Any, Final, NoReturn

from django.utils import timezone
from django.utils.functional import Promise

from django_cio_reliable.exceptions import InvalidOperation

__all__ = [
    "ATTRIBUTE_NAME_MAX_BYTES",
    "ATTRIBUTE_VALUE_MAX_BYTES",
    "CUSTOMER_ID_MAX_BYTES",
    "EVENT_DATA_MAX_BYTES",
    "EVENT_NAME_MAX_BYTES",
    "LIMITS",
    "MAX_ATTRIBUTES",
    "MAX_DEPTH",
    "TIMESTAMP_MAX",
    "TIMESTAMP_MIN",
    "Limits",
    "attributes",
    "customer_id",
    "event_data",
    "event_data_sized",
    "event_name",
    "json_bytes",
    "json_bytes_known",
    "json_safe",
    "timestamp",
]

CUSTOMER_ID_MAX_BYTES: Final = 150
ATTRIBUTE_NAME_MAX_BYTES: Final = 150
ATTRIBUTE_VALUE_MAX_BYTES: Final = 1000
MAX_ATTRIBUTES: Final = 300
EVENT_NAME_MAX_BYTES: Final = 100
EVENT_DATA_MAX_BYTES: Final = 100_000
#: Containers nested deeper than this are refused (this also stops reference cycles).
MAX_DEPTH: Final = 32
#: Event timestamps are Unix seconds in ``[TIMESTAMP_MIN, TIMESTAMP_MAX]``:
#: after 1970-01-01T00:00:00Z and before 2100-01-01T00:00:00Z.
TIMESTAMP_MIN: Final = 1
TIMESTAMP_MAX: Final = 4_102_444_799

#: Integers must fit a signed 64-bit integer to be sent as JSON numbers.
INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**63 - 1


@dataclass(frozen=True)
class Limits:
    """Customer.io's limits and this module's own bounds, in one frozen object."""

    CUSTOMER_ID_MAX_BYTES: int = CUSTOMER_ID_MAX_BYTES
    ATTRIBUTE_NAME_MAX_BYTES: int = ATTRIBUTE_NAME_MAX_BYTES
    ATTRIBUTE_VALUE_MAX_BYTES: int = ATTRIBUTE_VALUE_MAX_BYTES
    MAX_ATTRIBUTES: int = MAX_ATTRIBUTES
    EVENT_NAME_MAX_BYTES: int = EVENT_NAME_MAX_BYTES
    EVENT_DATA_MAX_BYTES: int = EVENT_DATA_MAX_BYTES
    MAX_DEPTH: int = MAX_DEPTH
    TIMESTAMP_MIN: int = TIMESTAMP_MIN
    TIMESTAMP_MAX: int = TIMESTAMP_MAX


LIMITS: Final = Limits()

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=dt_timezone.utc)
_EPOCH_DATE: Final = date(1970, 1, 1)
_ONE_SECOND: Final = timedelta(seconds=1)
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: Longest key shown in a field path; longer ones are cut (the path is for humans).
_PATH_KEY_CHARS: Final = 40
#: Timestamps above this are almost certainly milliseconds (it is the year 5138 in seconds).
_MILLISECONDS_HINT: Final = 100_000_000_000

Segment = str | int


class _Refusal(Exception):
    """A refusal found deep inside a value; the path is collected while unwinding.

    Each container level adds its key while the exception passes through it, so no path is
    built for values that are accepted.
    """

    def __init__(
        self,
        problem: str,
        *,
        limit: str | None = None,
        actual: str | None = None,
        too_deep: object = None,
    ) -> None:
        super().__init__(problem)
        self.problem = problem
        self.limit = limit
        self.actual = actual
        # Innermost first; reversed when the public exception is built.
        self.segments: list[Segment] = []
        self.containers: list[object] = [] if too_deep is None else [too_deep]

    def unwind(self, container: object, segment: Segment) -> None:
        self.segments.append(segment)
        if self.containers:
            self.containers.append(container)

    def public(self, field: str, *, quote_first: bool = False) -> InvalidOperation:
        segments = self.segments[::-1]
        path = _path(field, segments, quote_first=quote_first)
        if self.containers:
            cycle = _find_cycle(self.containers[::-1])
            if cycle is not None:
                first, again = cycle
                path = _path(field, segments[:again], quote_first=quote_first)
                ancestor = _path(field, segments[:first], quote_first=quote_first)
                return InvalidOperation(
                    f"{path} refers back to {ancestor} (a reference cycle); "
                    "Customer.io needs a tree of values",
                    field=path,
                    limit=f"{MAX_DEPTH} levels",
                    actual="a reference cycle",
                )
        return InvalidOperation(
            f"{path} {self.problem}", field=path, limit=self.limit, actual=self.actual
        )


def _find_cycle(containers: list[object]) -> tuple[int, int] | None:
    """The depths (0 = root) of the first container met twice on one path, if any."""
    for again, container in enumerate(containers):
        for first in range(again):
            if containers[first] is container:
                return first, again
    return None


def _path(field: str, segments: list[Segment], *, quote_first: bool = False) -> str:
    parts = [field]
    for index, segment in enumerate(segments):
        if isinstance(segment, int):
            parts.append(f"[{segment}]")
        # Attribute names (quote_first) are shown as attributes["name"] whatever they look like.
        elif (
            len(segment) <= _PATH_KEY_CHARS
            and _IDENTIFIER.match(segment)
            and not (quote_first and index == 0)
        ):
            parts.append("." + segment)
        else:
            cut = segment if len(segment) <= _PATH_KEY_CHARS else segment[:_PATH_KEY_CHARS] + "…"
            parts.append("[" + json.dumps(cut, ensure_ascii=False) + "]")
    return "".join(parts)


def _type_name(value: object) -> str:
    if isinstance(value, Promise):  # not lazy.<locals>.__proxy__
        return "django.utils.functional.Promise"
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def _utf8_size(text: str) -> int:
    """Byte length of ``text`` in UTF-8; ``_Refusal`` for a NUL character or a lone surrogate."""
    if "\x00" in text:
        raise _Refusal(
            "contains a NUL character (\\x00), which PostgreSQL cannot store in text or JSON; "
            "it is refused on every database",
            limit="no NUL characters",
            actual="NUL character",
        )
    if text.isascii():  # O(1) in CPython
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise _Refusal(
            "is not valid Unicode text (it contains a lone surrogate) and cannot be sent as UTF-8",
            limit="valid UTF-8",
            actual="lone surrogate",
        ) from None


def _size_refusal(size: int | str, limit: int, what: str = "") -> _Refusal:
    return _Refusal(
        f"{what}is {size} bytes; Customer.io's limit is {limit} bytes",
        limit=f"{limit} bytes",
        actual=f"{size} bytes",
    )


def _unix_seconds(value: datetime) -> int:
    """Whole Unix seconds (rounded down); naive values are in Django's default time zone."""
    if timezone.is_naive(value):
        value = timezone.make_aware(value, timezone.get_default_timezone())
    return (value - _EPOCH) // _ONE_SECOND


def _check_int(value: int) -> int:
    if INT_MIN <= value <= INT_MAX:
        return value
    raise _Refusal(
        "is an integer outside the signed 64-bit range that JSON consumers keep exactly; "
        "send it as a string",
        limit="signed 64-bit integer",
        actual=f"{value.bit_length() + 1}-bit signed integer",
    )


def _check_float(value: float) -> float:
    if math.isfinite(value):
        return value
    text = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    raise _Refusal(
        f"is {text}; only finite numbers can be sent to Customer.io",
        limit="a finite number",
        actual=text,
    )


def _decimal(value: Decimal) -> int | float:
    if not value.is_finite():
        text = "NaN" if value.is_nan() else ("Infinity" if value > 0 else "-Infinity")
        raise _Refusal(
            f"is Decimal {text}; only finite numbers can be sent to Customer.io",
            limit="a finite number",
            actual=f"Decimal {text}",
        )
    if value == value.to_integral_value():
        if value.adjusted() >= 19:  # |value| >= 10**19: refuse before building a huge int
            raise _Refusal(
                "is an integral Decimal outside the signed 64-bit range that JSON consumers "
                "keep exactly; send it as a string",
                limit="signed 64-bit integer",
                actual=f"about 10**{value.adjusted()}",
            )
        return _check_int(int(value))
    return _check_float(float(value))


def _key(key: object) -> str:
    """A mapping key as plain ``str``; other keys are refused, never stringified."""
    if type(key) is str:
        text = key
    elif isinstance(key, str):
        text = str.__str__(key)
    else:
        raise _Refusal(
            f"has a key of type {_type_name(key)}; keys must be str "
            "(convert them with str() if that is what you mean)",
            actual=f"{_type_name(key)} key",
        )
    try:
        _utf8_size(text)
    except _Refusal as err:
        err.problem = "has a key that " + err.problem
        raise
    return text


def _check_depth(value: object, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _Refusal(
            f"is nested more than {MAX_DEPTH} levels deep",
            limit=f"{MAX_DEPTH} levels",
            actual=f"more than {MAX_DEPTH} levels",
            too_deep=value,
        )


def _mapping(value: Mapping[Any, Any], depth: int) -> dict[str, Any]:
    _check_depth(value, depth)
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = _key(key)
        try:
            out[name] = _normalise(item, depth + 1)
        except _Refusal as err:
            err.unwind(value, name)
            raise
    if len(out) != len(value):
        raise _Refusal(
            "has keys that are equal once converted to plain str",
            actual="duplicate keys",
        )
    return out


def _sequence(value: list[Any] | tuple[Any, ...], depth: int) -> list[Any]:
    _check_depth(value, depth)
    out: list[Any] = []
    for index, item in enumerate(value):
        try:
            out.append(_normalise(item, depth + 1))
        except _Refusal as err:
            err.unwind(value, index)
            raise
    return out


def _normalise(value: object, depth: int) -> Any:
    # Exact types first: they are nearly all values, and the checks are cheap.
    kind = type(value)
    if kind is str:
        _utf8_size(value)  # type: ignore[arg-type]
        return value
    if value is None or kind is bool:
        return value
    if kind is int:
        return _check_int(value)  # type: ignore[arg-type]
    if kind is float:
        return _check_float(value)  # type: ignore[arg-type]
    if kind is dict:
        return _mapping(value, depth)  # type: ignore[arg-type]
    if kind is list or kind is tuple:
        return _sequence(value, depth)  # type: ignore[arg-type]
    return _convert(value, depth)


def _convert(value: object, depth: int) -> Any:
    """Everything that is not already a plain JSON type."""
    # str/int/float subclasses first: Django's TextChoices/IntegerChoices, StrEnum, IntEnum,
    # SafeString... become their plain value.
    if isinstance(value, str):
        return _normalise(str.__str__(value), depth)
    if isinstance(value, int):  # bool is an exact type, handled before
        return _check_int(int.__int__(value))
    if isinstance(value, float):
        return _check_float(float.__float__(value))
    if isinstance(value, Enum):
        raise _Refusal(
            f"is an Enum member ({_type_name(value)}); pass its .value or .name explicitly",
            actual=_type_name(value),
        )
    if isinstance(value, datetime):
        return _unix_seconds(value)
    if isinstance(value, date):
        return (value - _EPOCH_DATE).days * 86_400
    if isinstance(value, Decimal):
        return _decimal(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Promise):
        # A lazy translation, evaluated in the language active at enqueue time.
        return _normalise(str(value), depth)
    if isinstance(value, Mapping):
        return _mapping(value, depth)
    if isinstance(value, list | tuple):
        return _sequence(value, depth)
    raise _Refusal(_not_serialisable(value), actual=_type_name(value))


def _not_serialisable(value: object) -> str:
    name = _type_name(value)
    if isinstance(value, set | frozenset):
        hint = "convert it to a (sorted) list"
    elif isinstance(value, bytes | bytearray | memoryview):
        hint = "decode it to str (or base64-encode it) first"
    elif isinstance(value, timedelta):
        hint = "send its total_seconds() or a string"
    else:
        hint = "convert it to str, a number, a list or a dict first"
    return f"is of type {name}, which is not JSON-serialisable; {hint}"


def _check_text(text: str, what: str, max_bytes: int, prefix: str = "") -> None:
    """Refuse ``text`` when it is empty, whitespace only or over ``max_bytes`` of UTF-8."""
    size = _utf8_size(text)
    if not text.strip():
        actual = "empty" if not text else "whitespace only"
        raise _Refusal(
            f"{prefix}is {actual}; Customer.io needs a non-empty {what}",
            limit="non-empty",
            actual=actual,
        )
    if size > max_bytes:
        raise _size_refusal(size, max_bytes, prefix)


def _text(value: str, field: str, what: str, *, max_bytes: int) -> str:
    """A non-empty name or id of at most ``max_bytes`` UTF-8 bytes, as plain ``str``."""
    if type(value) is not str:
        value = str.__str__(value)
    try:
        _check_text(value, what, max_bytes)
    except _Refusal as err:
        raise err.public(field) from None
    return value


def _wrong_type(field: str, value: object, expected: str) -> NoReturn:
    raise InvalidOperation(
        f"{field} is of type {_type_name(value)}; it must be {expected}",
        field=field,
        actual=_type_name(value),
    )


def customer_id(value: object, *, field: str = "customer_id") -> str:
    """Validate a customer (or anonymous) id and return it as ``str``.

    Args:
        value: A ``str`` (subclasses become plain ``str``), an ``int`` (not ``bool``) or a
            ``UUID``. Nothing is stripped; an empty or whitespace-only id is refused.
        field: The name used in error messages.

    Returns:
        The id as plain ``str``, at most 150 bytes of UTF-8.

    Raises:
        InvalidOperation: The id is of another type, empty, or longer than 150 bytes.
    """
    if isinstance(value, bool):
        _wrong_type(field, value, "str or int")
    if isinstance(value, int):
        number = int.__int__(value)
        if number.bit_length() > 4 * CUSTOMER_ID_MAX_BYTES:  # > 150 digits; skip str()
            too_long = f"more than {CUSTOMER_ID_MAX_BYTES}"
            raise _size_refusal(too_long, CUSTOMER_ID_MAX_BYTES).public(field)
        text = str(number)
    elif isinstance(value, uuid.UUID):
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        _wrong_type(field, value, "str or int")
    return _text(text, field, "id", max_bytes=CUSTOMER_ID_MAX_BYTES)


def event_name(value: object, *, field: str = "name") -> str:
    """Validate an event name and return it as plain ``str``.

    Lazy translations are refused: an event name must not change with the active language.

    Args:
        value: A ``str`` (subclasses such as ``TextChoices`` members become plain ``str``).
        field: The name used in error messages.

    Returns:
        The name, non-empty and at most 100 bytes of UTF-8.

    Raises:
        InvalidOperation: The name is not a ``str``, is empty or whitespace only, or is longer
            than 100 bytes.
    """
    if not isinstance(value, str):
        _wrong_type(field, value, "str")
    return _text(value, field, "event name", max_bytes=EVENT_NAME_MAX_BYTES)


def attributes(value: Mapping[str, Any] | None, *, field: str = "attributes") -> dict[str, Any]:
    """Validate and normalise the attributes of an ``identify`` call.

    Args:
        value: Attribute names to values; ``None`` means no attributes. Values are normalised
            by :func:`json_safe`.
        field: The name used in error messages, e.g. ``attributes["plan"]``.

    Returns:
        A new ``dict`` of plain JSON values.

    Raises:
        InvalidOperation: More than 300 attributes; a name that is not a ``str``, is empty or
            longer than 150 bytes; a value that cannot be normalised or whose size (UTF-8 bytes
            for a string, compact JSON otherwise) is over 1000 bytes.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        _wrong_type(field, value, "a mapping (dict) of attribute names to values")
    if len(value) > MAX_ATTRIBUTES:
        raise InvalidOperation(
            f"{field} has {len(value)} attributes; Customer.io's limit is {MAX_ATTRIBUTES} "
            "attributes",
            field=field,
            limit=f"{MAX_ATTRIBUTES} attributes",
            actual=f"{len(value)} attributes",
        )
    out: dict[str, Any] = {}
    for key, item in value.items():
        try:
            name = _key(key)
        except _Refusal as err:
            raise err.public(field) from None
        try:
            _check_text(name, "attribute name", ATTRIBUTE_NAME_MAX_BYTES, "has a name that ")
            normalised = _normalise(item, 2)
            kind = type(normalised)
            if kind is str:
                size = _utf8_size(normalised)
            elif kind is dict or kind is list:
                size = json_bytes(normalised)
            else:  # a number, a bool or None: at most 24 bytes
                size = 0
            if size > ATTRIBUTE_VALUE_MAX_BYTES:
                raise _size_refusal(size, ATTRIBUTE_VALUE_MAX_BYTES)
        except _Refusal as err:
            err.unwind(value, name)
            raise err.public(field, quote_first=True) from None
        if name in out:
            raise InvalidOperation(
                f"{field} has the attribute name {json.dumps(name, ensure_ascii=False)} twice "
                "once converted to plain str",
                field=field,
                actual="duplicate attribute names",
            )
        out[name] = normalised
    return out


def event_data(value: Mapping[str, Any] | None, *, field: str = "data") -> dict[str, Any]:
    """Validate and normalise the data of a ``track`` call.

    Args:
        value: The event's data; ``None`` means no data. Normalised by :func:`json_safe`.
        field: The name used in error messages, e.g. ``data.items[3].price``.

    Returns:
        A new ``dict`` of plain JSON values, at most 100,000 bytes as compact UTF-8 JSON.

    Raises:
        InvalidOperation: A value cannot be normalised, or the whole is over 100,000 bytes.
    """
    return event_data_sized(value, field=field)[0]


def event_data_sized(
    value: Mapping[str, Any] | None, *, field: str = "data"
) -> tuple[dict[str, Any], int]:
    """Like :func:`event_data`, also returning its size (:func:`json_bytes`), measured once.

    Raises:
        InvalidOperation: As :func:`event_data`.
    """
    if value is None:
        return {}, 2
    if not isinstance(value, Mapping):
        _wrong_type(field, value, "a mapping (dict)")
    normalised: dict[str, Any] = json_safe(value, field=field)
    size = json_bytes(normalised)
    if size > EVENT_DATA_MAX_BYTES:
        # Only on refusal: name the biggest top-level key to point at the culprit.
        biggest = max(normalised, key=lambda key: json_bytes(normalised[key]))
        where = _path(field, [biggest])
        raise InvalidOperation(
            f"{field} is {size} bytes; Customer.io's limit is {EVENT_DATA_MAX_BYTES} bytes "
            f"(the largest part is {where}, {json_bytes(normalised[biggest])} bytes)",
            field=field,
            limit=f"{EVENT_DATA_MAX_BYTES} bytes",
            actual=f"{size} bytes",
        )
    return normalised, size


def timestamp(value: object, *, field: str = "timestamp") -> int | None:
    """Validate an event timestamp and return it as Unix seconds.

    Args:
        value: ``None`` (Customer.io uses the time it receives the event), an ``int`` of Unix
            seconds, a ``float`` without a fraction, or a ``datetime`` (aware, or naive in
            Django's default time zone; fractions of a second are dropped).
        field: The name used in error messages.

    Returns:
        ``None`` or whole Unix seconds after 1970-01-01 and before 2100-01-01 (UTC).

    Raises:
        InvalidOperation: Another type (``bool``, ``str``, ``date``...), a float with a fraction,
            or a time outside that range (milliseconds are the usual mistake).
    """
    if value is None:
        return None
    if isinstance(value, bool):
        _wrong_type(field, value, "an int of Unix seconds or a datetime")
    if isinstance(value, int):
        seconds = int.__int__(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidOperation(
                f"{field} is {value}; pass whole Unix seconds",
                field=field,
                limit="whole seconds",
                actual=str(value),
            )
        if not value.is_integer():
            raise InvalidOperation(
                f"{field} is a float with a fraction; pass whole Unix seconds, "
                "e.g. int(time.time())",
                field=field,
                limit="whole seconds",
                actual="float with a fraction",
            )
        seconds = int(value)
    elif isinstance(value, datetime):
        seconds = _unix_seconds(value)
    else:
        _wrong_type(field, value, "an int of Unix seconds or a datetime")
    if not TIMESTAMP_MIN <= seconds <= TIMESTAMP_MAX:
        millis = _MILLISECONDS_HINT < seconds <= TIMESTAMP_MAX * 1000
        hint = "; it looks like milliseconds, pass seconds" if millis else ""
        shown = str(seconds) if seconds.bit_length() <= 64 else f"a {seconds.bit_length()}-bit int"
        raise InvalidOperation(
            f"{field} is {shown}, outside {TIMESTAMP_MIN}..{TIMESTAMP_MAX} Unix seconds "
            f"(1970-01-01 to 2099-12-31 UTC){hint}",
            field=field,
            limit=f"{TIMESTAMP_MIN}..{TIMESTAMP_MAX}",
            actual=shown,
        )
    return seconds


def json_safe(value: object, *, field: str) -> Any:
    """Normalise ``value`` to plain JSON types, recursively.

    The rules (``docs/validation.md`` has them all): ``datetime`` → Unix seconds, ``date`` →
    Unix seconds of its midnight UTC, ``Decimal`` → ``int`` when integral else ``float``,
    ``UUID`` and lazy strings → ``str``, ``str``/``int``/``float`` subclasses → the plain type,
    tuples → lists, other mappings → ``dict``. Refused: NaN and infinities, integers outside
    the signed 64-bit range, non-``str`` keys, plain ``Enum`` members, sets, bytes, other
    objects, strings with lone surrogates, and nesting deeper than 32 containers (which also
    catches reference cycles).

    Args:
        value: Anything.
        field: The name of ``value`` in error messages; nested paths are appended to it.

    Returns:
        A new structure of ``dict`` (``str`` keys), ``list``, ``str``, ``int``, ``float``,
        ``bool`` and ``None``. Normalising it again returns an equal structure.

    Raises:
        InvalidOperation: Naming the path of the first value that cannot be normalised.
    """
    try:
        return _normalise(value, 1)
    except _Refusal as err:
        raise err.public(field) from None


def json_bytes_known(value: Mapping[str, Any], known: Mapping[str, int]) -> int:
    """``json_bytes(value)``, given the :func:`json_bytes` of some top-level values (``known``).

    Only the rest is serialised again: a large event's data is encoded once, not twice.
    """
    # Each known value stands in as 0 (one byte) in a small skeleton, then is added back.
    skeleton = {key: 0 if key in known else item for key, item in value.items()}
    return json_bytes(skeleton) + sum(size - 1 for key, size in known.items() if key in value)


def json_bytes(value: Any) -> int:
    """The size of ``value`` as compact JSON in UTF-8, the way Customer.io's limits count it.

    Args:
        value: A normalised value (the output of :func:`json_safe` or the functions above).

    Returns:
        The number of bytes of ``json.dumps(value, separators=(",", ":"),
        ensure_ascii=False)`` encoded as UTF-8.

    Raises:
        TypeError: ``value`` contains something that is not a plain JSON type.
        ValueError: ``value`` contains NaN or an infinity.
    """
    text = _ENCODER.encode(value)
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8"))

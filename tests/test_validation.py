"""Customer.io's limits and the JSON normalisation rules (``django_cio_reliable.validation``)."""

from __future__ import annotations

import calendar
import enum
import json
import math
import random
import timeit
import uuid
from collections import OrderedDict, namedtuple
from collections.abc import Callable, Iterator, Mapping
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.db import models
from django.utils import timezone as django_timezone
from django.utils.functional import lazystr
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy, override
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_cio_reliable import validation
from django_cio_reliable.exceptions import InvalidOperation

UTC = timezone.utc
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# 1, 2, 3 and 4 bytes in UTF-8.
CHARS = ["a", "Z", "7", "é", "ß", "中", "€", "😀", "𝄞"]


def utf8(text: str) -> int:
    return len(text.encode("utf-8"))


def compact(value: Any) -> int:
    """The size of ``value`` as Customer.io counts it, computed independently of the module."""
    return utf8(json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False))


def refused(call: Callable[..., Any], *args: Any, **kwargs: Any) -> InvalidOperation:
    with pytest.raises(InvalidOperation) as info:
        call(*args, **kwargs)
    return info.value


def assert_size_refusal(err: InvalidOperation, field: str, limit: int, actual: int) -> None:
    assert err.field == field
    assert err.limit == f"{limit} bytes"
    assert err.actual == f"{actual} bytes"
    assert f"{actual} bytes" in str(err)
    assert f"limit is {limit} bytes" in str(err)
    assert str(err).startswith(field)


def plain_json_types(value: Any) -> Iterator[Any]:
    """Every node of ``value``; fails on anything that is not an exact plain JSON type."""
    yield value
    if type(value) is dict:
        for key, item in value.items():
            assert type(key) is str
            yield from plain_json_types(item)
    elif type(value) is list:
        for item in value:
            yield from plain_json_types(item)
    else:
        assert value is None or type(value) in (str, int, float, bool), type(value)
        if type(value) is float:
            assert math.isfinite(value)


class Plan(models.TextChoices):
    PRO = "pro", "Pro"


class Tier(models.IntegerChoices):  # type: ignore[metaclass]  # django-stubs vs mypy
    GOLD = 3, "Gold"


class Colour(enum.Enum):
    RED = "red"


class Size(enum.IntEnum):
    BIG = 9


class Shade(str, enum.Enum):
    DARK = "dark"


Point = namedtuple("Point", "x y")


class DuplicateKeys(Mapping[str, Any]):
    """A mapping whose items repeat a key (as two keys equal after conversion would)."""

    def __getitem__(self, key: str) -> Any:
        return 1

    def __iter__(self) -> Iterator[str]:
        return iter(["a", "a"])

    def __len__(self) -> int:
        return 2


# --- limits -------------------------------------------------------------------------------


def test_limits_are_customer_ios() -> None:
    limits = validation.LIMITS
    assert limits.CUSTOMER_ID_MAX_BYTES == validation.CUSTOMER_ID_MAX_BYTES == 150
    assert limits.ATTRIBUTE_NAME_MAX_BYTES == validation.ATTRIBUTE_NAME_MAX_BYTES == 150
    assert limits.ATTRIBUTE_VALUE_MAX_BYTES == validation.ATTRIBUTE_VALUE_MAX_BYTES == 1000
    assert limits.MAX_ATTRIBUTES == validation.MAX_ATTRIBUTES == 300
    assert limits.EVENT_NAME_MAX_BYTES == validation.EVENT_NAME_MAX_BYTES == 100
    assert limits.EVENT_DATA_MAX_BYTES == validation.EVENT_DATA_MAX_BYTES == 100_000
    assert limits.MAX_DEPTH == 32
    with pytest.raises(AttributeError):
        limits.MAX_ATTRIBUTES = 1  # type: ignore[misc]


# --- customer ids -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ok", "over"),
    [
        ("x" * 150, "x" * 151),
        ("é" * 75, "é" * 76),  # 2 bytes each: 76 characters are 152 bytes
        ("中" * 50, "中" * 51),  # 3 bytes each
        ("😀" * 37 + "ab", "😀" * 38),  # 4 bytes each: 148 + 2, and 152
    ],
)
def test_customer_id_limit_counts_utf8_bytes(ok: str, over: str) -> None:
    assert validation.customer_id(ok) == ok
    err = refused(validation.customer_id, over)
    assert_size_refusal(err, "customer_id", 150, utf8(over))


def test_customer_id_message() -> None:
    err = refused(validation.customer_id, "x" * 151)
    assert str(err) == "customer_id is 151 bytes; Customer.io's limit is 150 bytes"
    assert isinstance(err, ValueError)


def test_customer_id_field_name_is_configurable() -> None:
    err = refused(validation.customer_id, "", field="anonymous_id")
    assert err.field == "anonymous_id"
    assert str(err).startswith("anonymous_id is empty")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (42, "42"),
        (0, "0"),
        (-7, "-7"),
        (2**64, "18446744073709551616"),
        (Tier.GOLD, "3"),
        (Size.BIG, "9"),
        (Plan.PRO, "pro"),
        (SafeString("u-1"), "u-1"),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (" padded ", " padded "),  # nothing is stripped
    ],
)
def test_customer_id_conversions(value: object, expected: str) -> None:
    result = validation.customer_id(value)
    assert result == expected
    assert type(result) is str


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (None, "NoneType"),
        (True, "bool"),
        (False, "bool"),
        (1.0, "float"),
        (b"u-1", "bytes"),
        (Decimal(1), "decimal.Decimal"),
        (object(), "object"),
        (["u"], "list"),
        (Colour.RED, "tests.test_validation.Colour"),
        (lazystr("u"), "django.utils.functional.Promise"),
    ],
)
def test_customer_id_refuses_other_types(value: object, type_name: str) -> None:
    err = refused(validation.customer_id, value)
    assert err.field == "customer_id"
    assert err.actual == type_name
    assert "must be str or int" in str(err)


@pytest.mark.parametrize("value", ["", " ", "\t\n", "\u3000"])
def test_customer_id_refuses_empty_and_whitespace(value: str) -> None:
    err = refused(validation.customer_id, value)
    assert err.limit == "non-empty"
    assert err.actual == ("empty" if value == "" else "whitespace only")


def test_customer_id_refuses_huge_int_without_formatting_it() -> None:
    err = refused(validation.customer_id, 10**10_000)  # over Python's int->str digit limit
    assert err.field == "customer_id"
    assert err.limit == "150 bytes"
    assert validation.customer_id(10**149) == "1" + "0" * 149
    assert refused(validation.customer_id, 10**150).actual == "151 bytes"


def test_customer_id_refuses_lone_surrogate() -> None:
    err = refused(validation.customer_id, "user-\ud800")
    assert err.actual == "lone surrogate"


# --- event names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ok", "over"),
    [("e" * 100, "e" * 101), ("é" * 50, "é" * 51), ("😀" * 25, "😀" * 25 + "x")],
)
def test_event_name_limit_counts_utf8_bytes(ok: str, over: str) -> None:
    assert validation.event_name(ok) == ok
    err = refused(validation.event_name, over)
    assert_size_refusal(err, "name", 100, utf8(over))


def test_event_name_message() -> None:
    err = refused(validation.event_name, "e" * 101)
    assert str(err) == "name is 101 bytes; Customer.io's limit is 100 bytes"


@pytest.mark.parametrize("value", ["", "  ", "\n"])
def test_event_name_refuses_empty(value: str) -> None:
    assert refused(validation.event_name, value).limit == "non-empty"


@pytest.mark.parametrize("value", [None, 5, True, b"x", gettext_lazy("Yes")])
def test_event_name_refuses_other_types(value: object) -> None:
    # A lazy translation would change the event name with the active language.
    err = refused(validation.event_name, value, field="event")
    assert err.field == "event"
    assert "must be str" in str(err)


def test_event_name_str_subclass_becomes_plain_str() -> None:
    assert type(validation.event_name(Plan.PRO)) is str
    assert type(validation.event_name(Shade.DARK)) is str
    assert validation.event_name(Shade.DARK) == "dark"


# --- attributes -------------------------------------------------------------------------------


def test_attributes_none_and_empty() -> None:
    assert validation.attributes(None) == {}
    assert validation.attributes({}) == {}


def test_attributes_returns_a_new_normalised_dict() -> None:
    source = {"plan": Plan.PRO, "tags": ("a", "b"), "signed_up": date(2020, 1, 1)}
    result = validation.attributes(source)
    assert result == {"plan": "pro", "tags": ["a", "b"], "signed_up": 1577836800}
    assert result is not source
    assert source["tags"] == ("a", "b")


@pytest.mark.parametrize("value", [["a"], "plan", 3, ("a", 1)])
def test_attributes_must_be_a_mapping(value: Any) -> None:
    err = refused(validation.attributes, value)
    assert err.field == "attributes"


def test_attribute_count_limit() -> None:
    exactly = {f"a{i}": i for i in range(300)}
    assert validation.attributes(exactly) == exactly
    err = refused(validation.attributes, {f"a{i}": i for i in range(301)})
    assert str(err) == "attributes has 301 attributes; Customer.io's limit is 300 attributes"
    assert (err.field, err.limit, err.actual) == ("attributes", "300 attributes", "301 attributes")


@pytest.mark.parametrize(
    ("ok", "over"),
    [("n" * 150, "n" * 151), ("é" * 75, "é" * 76), ("𝄞" * 37 + "xy", "𝄞" * 38)],
)
def test_attribute_name_limit_counts_utf8_bytes(ok: str, over: str) -> None:
    assert validation.attributes({ok: 1}) == {ok: 1}
    err = refused(validation.attributes, {over: 1})
    assert err.limit == "150 bytes"
    assert err.actual == f"{utf8(over)} bytes"
    assert err.field.startswith('attributes["')
    assert f"has a name that is {utf8(over)} bytes; Customer.io's limit is 150 bytes" in str(err)


@pytest.mark.parametrize("name", ["", " ", "\t"])
def test_attribute_name_must_not_be_empty(name: str) -> None:
    err = refused(validation.attributes, {name: 1})
    assert err.limit == "non-empty"
    assert err.field == f"attributes[{json.dumps(name)}]"


@pytest.mark.parametrize(
    ("key", "type_name"),
    [
        (1, "int"),
        (None, "NoneType"),
        (("a",), "tuple"),
        (b"a", "bytes"),
        (gettext_lazy("Yes"), "django.utils.functional.Promise"),
    ],
)
def test_attribute_names_must_be_str(key: Any, type_name: str) -> None:
    err = refused(validation.attributes, {key: 1})
    assert err.field == "attributes"
    assert err.actual == f"{type_name} key"


def test_attribute_name_str_subclass_becomes_plain_str() -> None:
    source: dict[Any, int] = {Plan.PRO: 1}
    result = validation.attributes(source)
    assert result == {"pro": 1}
    assert [type(key) for key in result] == [str]


def test_attribute_names_equal_after_conversion_are_refused() -> None:
    err = refused(validation.attributes, DuplicateKeys())
    assert "twice" in str(err)


@pytest.mark.parametrize(
    ("ok", "over"),
    [
        ("v" * 1000, "v" * 1001),
        ("é" * 500, "é" * 501),
        ("中" * 333 + "v", "中" * 334),
        ("😀" * 250, "😀" * 250 + "v"),
    ],
)
def test_attribute_string_value_limit_is_utf8_bytes(ok: str, over: str) -> None:
    assert validation.attributes({"plan": ok}) == {"plan": ok}
    err = refused(validation.attributes, {"plan": over})
    assert_size_refusal(err, 'attributes["plan"]', 1000, utf8(over))


def test_attribute_value_message() -> None:
    err = refused(validation.attributes, {"plan": "v" * 1001})
    assert str(err) == 'attributes["plan"] is 1001 bytes; Customer.io\'s limit is 1000 bytes'


def test_attribute_string_value_is_measured_without_json_escapes() -> None:
    # 1000 quotes are 1000 bytes of text (2002 bytes as JSON); the rule counts the text.
    assert validation.attributes({"q": '"' * 1000}) == {"q": '"' * 1000}


def test_attribute_structured_value_limit_is_its_compact_json() -> None:
    ok = {"k": "x" * 992}  # {"k":"…"} is 8 bytes around the text
    over = {"k": "x" * 993}
    assert compact(ok) == 1000
    assert validation.attributes({"address": ok}) == {"address": ok}
    err = refused(validation.attributes, {"address": over})
    assert_size_refusal(err, 'attributes["address"]', 1000, 1001)
    items = ["é" * 497]  # ["…"] is 4 bytes around 994 bytes of text
    assert compact(items) == 998
    assert validation.attributes({"l": items}) == {"l": items}
    assert refused(validation.attributes, {"l": ["é" * 499]}).actual == "1002 bytes"


def test_attribute_value_conversion_errors_name_the_path() -> None:
    err = refused(validation.attributes, {"address": {"lines": ["a", {1, 2}]}})
    assert err.field == 'attributes["address"].lines[1]'
    assert str(err).startswith('attributes["address"].lines[1] is of type set')
    err = refused(validation.attributes, {"first name": math.nan})
    assert err.field == 'attributes["first name"]'


def test_attribute_error_messages_never_contain_values() -> None:
    # Keys appear in paths; values (personal data) never do.
    secret = "s3cret-personal-data"
    bad_values: list[dict[str, Any]] = [
        {"email": secret * 100},
        {"email": [secret, math.inf]},
        {"x": {"y": secret, "z": b""}},
        {"x": secret + "\ud800"},
        {secret[:5]: {"n": Decimal("1e30"), "s": secret}},
    ]
    for bad in bad_values:
        err = refused(validation.attributes, bad)
        assert secret not in str(err)


# --- event data -------------------------------------------------------------------------------


def test_event_data_none_and_empty() -> None:
    assert validation.event_data(None) == {}
    assert validation.event_data({}) == {}


@pytest.mark.parametrize("value", [["a"], "x", 1])
def test_event_data_must_be_a_mapping(value: Any) -> None:
    assert refused(validation.event_data, value).field == "data"


@pytest.mark.parametrize(
    ("ok", "over"),
    [
        ({"k": "x" * 99_992}, {"k": "x" * 99_993}),
        ({"k": "é" * 49_996}, {"k": "é" * 49_996 + "x"}),
        ({"k": "😀" * 24_998}, {"k": "😀" * 24_998 + "x"}),
        ({"a": ["x" * 49_991], "b": ["x" * 49_990]}, {"a": ["x" * 49_991], "b": ["x" * 49_991]}),
    ],
)
def test_event_data_limit_is_compact_utf8_json(ok: dict[str, Any], over: dict[str, Any]) -> None:
    assert compact(ok) == 100_000
    assert validation.event_data(ok) == ok
    err = refused(validation.event_data, over)
    assert_size_refusal(err, "data", 100_000, 100_001)


def test_event_data_message_names_the_largest_part() -> None:
    err = refused(validation.event_data, {"small": 1, "items": ["x" * 100_000]})
    assert str(err) == (
        "data is 100024 bytes; Customer.io's limit is 100000 bytes "
        "(the largest part is data.items, 100004 bytes)"
    )


def test_event_data_conversion_error_path() -> None:
    data = {"items": [{"price": 1}, {"price": 2}, {"price": 3}, {"price": Decimal("NaN")}]}
    err = refused(validation.event_data, data, field="data")
    assert err.field == "data.items[3].price"
    assert str(err) == (
        "data.items[3].price is Decimal NaN; only finite numbers can be sent to Customer.io"
    )
    assert (err.limit, err.actual) == ("a finite number", "Decimal NaN")


def test_event_data_is_normalised() -> None:
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    data = {"at": when, "total": Decimal("42.50"), "qty": Decimal("2"), "ids": (1, 2)}
    assert validation.event_data(data) == {
        "at": 1714564800,
        "total": 42.5,
        "qty": 2,
        "ids": [1, 2],
    }


# --- json_safe: conversions -------------------------------------------------------------------


def normalised(value: Any) -> Any:
    return validation.json_safe(value, field="data")


def refusal(value: Any) -> InvalidOperation:
    return refused(validation.json_safe, value, field="data")


def test_plain_json_is_returned_equal_but_copied() -> None:
    value = {"a": [1, 2.5, "x", None, True, {"b": []}]}
    result = normalised(value)
    assert result == value
    assert result is not value
    assert result["a"] is not value["a"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime(2020, 1, 1, tzinfo=UTC), 1577836800),
        (datetime(2020, 1, 1, 1, tzinfo=timezone(timedelta(hours=1))), 1577836800),
        (datetime(2020, 1, 1, tzinfo=ZoneInfo("America/New_York")), 1577854800),
        (datetime(2020, 1, 1, 0, 0, 0, 999_999, tzinfo=UTC), 1577836800),  # rounded down
        (datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC), -1),  # down, not to zero
        (date(2020, 1, 1), 1577836800),  # midnight UTC
        (date(1969, 12, 31), -86400),
    ],
)
def test_datetimes_and_dates_become_unix_seconds(value: Any, expected: int) -> None:
    result = normalised(value)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize("use_tz", [True, False])
def test_naive_datetimes_are_in_the_default_time_zone(settings: Any, use_tz: bool) -> None:
    settings.USE_TZ = use_tz
    settings.TIME_ZONE = "America/New_York"
    naive = datetime(2020, 1, 1)
    assert normalised(naive) == 1577854800  # 05:00 UTC
    # The time zone activated for the current request does not change the meaning.
    with django_timezone.override(ZoneInfo("Asia/Tokyo")):
        assert normalised(naive) == 1577854800
    assert validation.timestamp(naive) == 1577854800


def test_dates_are_midnight_utc_whatever_the_time_zone(settings: Any) -> None:
    settings.TIME_ZONE = "Pacific/Auckland"
    assert normalised(date(2020, 1, 1)) == 1577836800


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Decimal("3"), 3),
        (Decimal("3.000"), 3),
        (Decimal("-0"), 0),
        (Decimal("1E+3"), 1000),
        (Decimal("9223372036854775807"), 2**63 - 1),
        (Decimal("2.50"), 2.5),
        (Decimal("-0.1"), -0.1),
        (Decimal("1E-400"), 0.0),
    ],
)
def test_decimals_become_int_when_integral_else_float(value: Decimal, expected: Any) -> None:
    result = normalised(value)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("value", "actual"),
    [
        (Decimal("NaN"), "Decimal NaN"),
        (Decimal("sNaN"), "Decimal NaN"),
        (Decimal("Infinity"), "Decimal Infinity"),
        (Decimal("-Infinity"), "Decimal -Infinity"),
        (float("nan"), "NaN"),
        (float("inf"), "Infinity"),
        (float("-inf"), "-Infinity"),
    ],
)
def test_non_finite_numbers_are_refused(value: Any, actual: str) -> None:
    err = refusal({"x": value})
    assert err.field == "data.x"
    assert err.actual == actual
    assert err.limit == "a finite number"


def test_decimal_too_precise_for_a_float_is_refused_when_it_overflows() -> None:
    assert refusal(Decimal("1" + "0" * 400 + ".5")).actual == "Infinity"


@pytest.mark.parametrize("value", [2**63 - 1, -(2**63), 0, -0.0, 1e308, 5e-324])
def test_numbers_in_range_are_kept(value: Any) -> None:
    result = normalised(value)
    assert result == value
    assert type(result) is type(value)


@pytest.mark.parametrize(
    "value", [2**63, -(2**63) - 1, 10**400, Decimal("9223372036854775808"), Decimal("1E+30")]
)
def test_integers_outside_64_bits_are_refused(value: Any) -> None:
    err = refusal({"n": value})
    assert err.field == "data.n"
    assert err.limit == "signed 64-bit integer"
    assert "send it as a string" in str(err)


def test_integers_too_long_for_str_are_refused_cleanly() -> None:
    assert refusal({"n": 10**5000}).actual == "16611-bit signed integer"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (uuid.UUID(int=255), "00000000-0000-0000-0000-0000000000ff"),
        (Plan.PRO, "pro"),
        (Shade.DARK, "dark"),
        (SafeString("<b>"), "<b>"),
        (lazystr("lazy"), "lazy"),
        (Tier.GOLD, 3),
        (Size.BIG, 9),
        (True, True),
        (None, None),
    ],
)
def test_scalar_conversions(value: Any, expected: Any) -> None:
    result = normalised(value)
    assert result == expected
    assert type(result) is type(expected)


def test_lazy_translations_are_evaluated_in_the_active_language() -> None:
    with override("fr"):
        result = normalised({"label": gettext_lazy("Yes")})
    assert result == {"label": "Oui"}
    assert type(result["label"]) is str


def test_float_subclass_becomes_float() -> None:
    class Money(float):
        pass

    result = normalised(Money(2.5))
    assert type(result) is float


def test_plain_enums_are_refused() -> None:
    err = refusal({"colour": Colour.RED})
    assert err.field == "data.colour"
    assert ".value" in str(err)


def test_containers_become_dicts_and_lists() -> None:
    value = {
        "t": (1, (2, 3)),
        "p": Point(1, 2),
        "o": OrderedDict([("b", 1), ("a", 2)]),
        "m": MappingProxyType({"k": "v"}),
    }
    result = normalised(value)
    assert result == {"t": [1, [2, 3]], "p": [1, 2], "o": {"b": 1, "a": 2}, "m": {"k": "v"}}
    assert list(result["o"]) == ["b", "a"]  # order kept
    list(plain_json_types(result))


@pytest.mark.parametrize(
    ("value", "type_name", "hint"),
    [
        ({1, 2}, "set", "list"),
        (frozenset(), "frozenset", "list"),
        (b"x", "bytes", "decode"),
        (bytearray(b"x"), "bytearray", "decode"),
        (memoryview(b"x"), "memoryview", "decode"),
        (timedelta(seconds=3), "datetime.timedelta", "total_seconds"),
        (time(12, 0), "datetime.time", "convert"),
        (1j, "complex", "convert"),
        (range(3), "range", "convert"),
        (iter([1]), "list_iterator", "convert"),
        (object(), "object", "convert"),
    ],
)
def test_unserialisable_values_are_refused_with_their_path(
    value: Any, type_name: str, hint: str
) -> None:
    err = refusal({"items": [0, {"price": value}]})
    assert err.field == "data.items[1].price"
    assert err.actual == type_name
    assert str(err).startswith(f"data.items[1].price is of type {type_name}, ")
    assert hint in str(err)


@pytest.mark.parametrize(
    ("key", "type_name"), [(1, "int"), (2.5, "float"), (None, "NoneType"), (True, "bool")]
)
def test_non_str_keys_are_refused_not_stringified(key: Any, type_name: str) -> None:
    err = refusal({"outer": {key: 1}})
    assert err.field == "data.outer"
    assert err.actual == f"{type_name} key"
    assert "keys must be str" in str(err)


def test_str_subclass_keys_become_plain_str() -> None:
    result = normalised({Plan.PRO: 1, SafeString("s"): 2})
    assert result == {"pro": 1, "s": 2}
    assert all(type(key) is str for key in result)


def test_keys_equal_after_conversion_are_refused() -> None:
    err = refusal({"inner": DuplicateKeys()})
    assert err.field == "data.inner"
    assert err.actual == "duplicate keys"


def test_lone_surrogates_are_refused() -> None:
    assert refusal({"a": "x\udfff"}).field == "data.a"
    err = refusal({"a": {"k\ud800": 1}})
    assert err.field == "data.a"
    assert "has a key that is not valid Unicode text" in str(err)


def test_path_formatting() -> None:
    assert refusal({"first name": {1}}).field == 'data["first name"]'
    assert refusal({"é": {1}}).field == 'data["é"]'
    assert refusal({"_ok9": {1}}).field == "data._ok9"
    assert refusal({"9lives": {1}}).field == 'data["9lives"]'
    assert refusal({'q"uote': {1}}).field == 'data["q\\"uote"]'
    assert refusal({"k" * 100: {1}}).field == 'data["' + "k" * 40 + '…"]'
    assert refusal([[{1}]]).field == "data[0][0]"


def nested_lists(levels: int) -> list[Any]:
    value: list[Any] = [1]
    for _ in range(levels - 1):
        value = [value]
    return value


def nested_dicts(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"n": value}
    return value


def test_depth_limit() -> None:
    assert normalised(nested_lists(32)) == nested_lists(32)
    assert normalised(nested_dicts(32)) == nested_dicts(32)
    err = refusal(nested_lists(33))
    assert err.field == "data" + "[0]" * 32
    assert (err.limit, err.actual) == ("32 levels", "more than 32 levels")
    assert "nested more than 32 levels deep" in str(err)
    assert refusal(nested_dicts(33)).field == "data" + ".n" * 32


def test_depth_limit_counts_the_attributes_and_data_mappings() -> None:
    assert validation.event_data(nested_dicts(32)) == nested_dicts(32)
    refused(validation.event_data, nested_dicts(33))
    assert validation.attributes({"a": nested_dicts(31)}) == {"a": nested_dicts(31)}
    err = refused(validation.attributes, {"a": nested_dicts(32)})
    assert err.field == 'attributes["a"]' + ".n" * 31


def test_reference_cycles_are_refused_not_recursed() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    err = refusal(loop)
    assert err.field == "data[1]"
    assert str(err).startswith("data[1] refers back to data (a reference cycle)")
    assert err.actual == "a reference cycle"

    tree: dict[str, Any] = {"a": {"b": {}}}
    tree["a"]["b"]["c"] = tree["a"]
    err = refused(validation.event_data, tree)
    assert str(err).startswith("data.a.b.c refers back to data.a (a reference cycle)")

    mutual: dict[str, Any] = {}
    mutual["x"] = [{"back": mutual}]
    assert refused(validation.attributes, mutual).field == 'attributes["x"][0].back'


def test_shared_references_that_are_not_cycles_are_fine() -> None:
    shared = [1, 2]
    assert normalised({"a": shared, "b": shared}) == {"a": [1, 2], "b": [1, 2]}


# --- timestamps -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (1, 1),
        (1_700_000_000, 1_700_000_000),
        (4_102_444_799, 4_102_444_799),  # 2099-12-31T23:59:59Z
        (1_700_000_000.0, 1_700_000_000),
        (Size.BIG, 9),
        (datetime(2024, 5, 1, 12, 0, 0, 999_999, tzinfo=UTC), 1714564800),
        (datetime(2099, 12, 31, 23, 59, 59, tzinfo=UTC), 4_102_444_799),
    ],
)
def test_timestamp_accepted(value: Any, expected: int | None) -> None:
    result = validation.timestamp(value)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    "value",
    [0, -1, 4_102_444_800, datetime(2100, 1, 1, tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC)],
)
def test_timestamp_out_of_range(value: Any) -> None:
    err = refused(validation.timestamp, value)
    assert err.field == "timestamp"
    assert err.limit == "1..4102444799"
    assert "milliseconds" not in str(err)


def test_timestamp_in_milliseconds_gets_a_hint() -> None:
    err = refused(validation.timestamp, 1_700_000_000_000)
    assert str(err) == (
        "timestamp is 1700000000000, outside 1..4102444799 Unix seconds "
        "(1970-01-01 to 2099-12-31 UTC); it looks like milliseconds, pass seconds"
    )
    assert err.actual == "1700000000000"


def test_timestamp_huge_int() -> None:
    assert refused(validation.timestamp, 10**5000).actual == "a 16610-bit int"


@pytest.mark.parametrize(
    ("value", "actual"),
    [
        (True, "bool"),
        ("1700000000", "str"),
        (date(2024, 1, 1), "datetime.date"),
        (Decimal(1_700_000_000), "decimal.Decimal"),
        (1_700_000_000.5, "float with a fraction"),
        (math.nan, "nan"),
        (math.inf, "inf"),
    ],
)
def test_timestamp_refused_types(value: Any, actual: str) -> None:
    err = refused(validation.timestamp, value, field="ts")
    assert err.field == "ts"
    assert err.actual == actual


# --- json_bytes -------------------------------------------------------------------------------


def test_json_bytes_is_compact_utf8() -> None:
    assert validation.json_bytes({"a": [1, 2]}) == len('{"a":[1,2]}')
    assert validation.json_bytes({"a": "é"}) == 10
    assert validation.json_bytes("😀") == 6
    assert validation.json_bytes("\n") == 4  # escapes count
    with pytest.raises(ValueError):
        validation.json_bytes(math.nan)
    with pytest.raises(TypeError):
        validation.json_bytes({1, 2})


# --- properties -------------------------------------------------------------------------------

#: Text the rules accept: any character but NUL and lone surrogates (each has its own poison
#: below).
stored_chars = st.characters(exclude_characters="\x00", exclude_categories=["Cs"])


def texts(max_size: int) -> st.SearchStrategy[str]:
    return st.text(stored_chars, max_size=max_size)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=validation.INT_MIN, max_value=validation.INT_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts(20)
)
json_like = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(texts(8), children, max_size=4)
    ),
    max_leaves=25,
)

fixed_offsets = st.builds(
    timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))
)
convertible_scalars = (
    json_scalars
    | st.datetimes(timezones=fixed_offsets)
    | st.datetimes()  # naive: the test settings' TIME_ZONE is UTC
    | st.dates()
    | st.decimals(allow_nan=False, allow_infinity=False, min_value=-(10**12), max_value=10**12)
    | st.uuids()
    | st.sampled_from([Plan.PRO, Tier.GOLD, Size.BIG, Shade.DARK, SafeString("s")])
    | texts(5).map(lazystr)
)
convertible = st.recursive(
    convertible_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(texts(8), children, max_size=4)
        | st.dictionaries(texts(8), children, max_size=4).map(OrderedDict)
    ),
    max_leaves=25,
)

poison = st.sampled_from(
    [
        math.nan,
        math.inf,
        -math.inf,
        Decimal("NaN"),
        Decimal("-Infinity"),
        2**63,
        -(2**63) - 1,
        {1},
        b"x",
        object(),
        Colour.RED,
        1j,
        "\ud800",
        "a\x00b",
    ]
)


def is_poisoned(value: Any) -> bool:
    """Independent oracle: does ``value`` contain anything the rules refuse?"""
    if isinstance(value, float) and not math.isfinite(value):
        return True
    if isinstance(value, Decimal) and not value.is_finite():
        return True
    if type(value) is int and not -(2**63) <= value < 2**63:
        return True
    if isinstance(value, set | bytes | complex | Colour) or type(value) is object:
        return True
    if isinstance(value, str) and any("\ud800" <= char <= "\udfff" for char in value):
        return True
    if isinstance(value, str) and "\x00" in value:
        return True
    if isinstance(value, dict):
        return any(is_poisoned(key) or is_poisoned(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return any(is_poisoned(item) for item in value)
    return False


maybe_poisoned = st.recursive(
    json_scalars | poison,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(texts(8), children, max_size=4)
    ),
    max_leaves=20,
)


@PROPERTY
@given(json_like)
def test_plain_json_is_unchanged_and_round_trips(value: Any) -> None:
    result = normalised(value)
    assert result == value
    text = json.dumps(result, allow_nan=False)
    assert json.loads(text) == result
    assert validation.json_bytes(result) == compact(value)


@PROPERTY
@given(convertible)
def test_convertible_values_normalise_to_plain_json_idempotently(value: Any) -> None:
    result = normalised(value)
    list(plain_json_types(result))
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    assert normalised(result) == result
    assert normalised(value) == result  # deterministic


@PROPERTY
@given(maybe_poisoned)
def test_refused_iff_something_is_unrepresentable(value: Any) -> None:
    try:
        result = normalised(value)
    except InvalidOperation as err:
        assert is_poisoned(value)
        assert err.field.startswith("data")
        return
    assert not is_poisoned(value)
    list(plain_json_types(result))  # never NaN or an infinity


@st.composite
def text_of_about(draw: st.DrawFn, size: int, spread: int = 6) -> str:
    """A string of mixed 1–4-byte characters whose UTF-8 size lands near ``size``."""
    target = draw(st.integers(min_value=max(1, size - spread), max_value=size + spread))
    rng = random.Random(draw(st.integers(min_value=0, max_value=2**32)))
    weights = draw(st.sampled_from([(1, 0, 0, 0), (1, 1, 1, 1), (0, 1, 0, 0), (0, 0, 1, 1)]))
    pools = [["a", "Z", " "], ["é", "ß"], ["中", "€"], ["😀", "𝄞"]]
    chars: list[str] = []
    total = 0
    while total < target:
        pool = rng.choices(pools, weights=weights)[0]
        char = rng.choice(pool)
        chars.append(char)
        total += utf8(char)
    return "".join(chars)


@PROPERTY
@given(text_of_about(150))
def test_customer_id_refused_iff_over_150_bytes(value: str) -> None:
    acceptable = utf8(value) <= 150 and value.strip() != ""
    try:
        result = validation.customer_id(value)
    except InvalidOperation as err:
        assert not acceptable
        if value.strip():
            assert_size_refusal(err, "customer_id", 150, utf8(value))
        return
    assert acceptable
    assert result == value


@PROPERTY
@given(text_of_about(100))
def test_event_name_refused_iff_over_100_bytes(value: str) -> None:
    acceptable = utf8(value) <= 100 and value.strip() != ""
    try:
        assert validation.event_name(value) == value
    except InvalidOperation as err:
        assert not acceptable
        if value.strip():
            assert_size_refusal(err, "name", 100, utf8(value))
        return
    assert acceptable


@PROPERTY
@given(text_of_about(150), text_of_about(1000, spread=8), st.booleans())
def test_attribute_refused_iff_name_or_value_over_the_limit(
    name: str, text: str, structured: bool
) -> None:
    value: Any = [text[:-2]] if structured else text
    size = compact(value) if structured else utf8(value)
    acceptable = name.strip() != "" and utf8(name) <= 150 and size <= 1000
    try:
        result = validation.attributes({name: value, "other": 1})
    except InvalidOperation as err:
        assert not acceptable
        assert err.field.startswith("attributes[")
        return
    assert acceptable
    assert result == {name: value, "other": 1}


@PROPERTY
@given(st.integers(min_value=290, max_value=310))
def test_attribute_count_refused_iff_over_300(count: int) -> None:
    value = {f"attr_{i}": i for i in range(count)}
    try:
        assert validation.attributes(value) == value
    except InvalidOperation as err:
        assert count > 300
        assert err.actual == f"{count} attributes"
        return
    assert count <= 300


@settings(PROPERTY, max_examples=60)
@given(
    st.integers(min_value=0, max_value=40),
    st.integers(min_value=0, max_value=40),
    st.integers(min_value=-10, max_value=10),
    st.dictionaries(texts(8), json_like, max_size=3),
)
def test_event_data_refused_iff_over_100000_bytes(
    two_byte: int, four_byte: int, offset: int, extra: dict[str, Any]
) -> None:
    filler = 100_000 - 8 - 2 * two_byte - 4 * four_byte + offset
    data = {**extra, "k": "x" * filler + "é" * two_byte + "😀" * four_byte}
    size = compact(data)
    try:
        result = validation.event_data(data)
    except InvalidOperation as err:
        assert size > 100_000
        assert_size_refusal(err, "data", 100_000, size)
        return
    assert size <= 100_000
    assert result == data


@PROPERTY
@given(st.integers(min_value=-(10**15), max_value=10**15) | st.sampled_from([0, 1, 4102444799]))
def test_int_timestamp_accepted_iff_in_range(value: int) -> None:
    try:
        assert validation.timestamp(value) == value
    except InvalidOperation:
        assert not 1 <= value <= 4_102_444_799
        return
    assert 1 <= value <= 4_102_444_799


@PROPERTY
@given(
    st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=fixed_offsets
    )
)
def test_datetime_timestamp_is_whole_utc_seconds(value: datetime) -> None:
    expected = calendar.timegm(value.astimezone(UTC).timetuple())
    try:
        assert validation.timestamp(value) == expected
    except InvalidOperation:
        assert not 1 <= expected <= 4_102_444_799
        return
    assert 1 <= expected <= 4_102_444_799


def test_normalising_typical_payload_is_fast() -> None:
    # A guard against accidental quadratic behaviour, with a generous bound.
    rng = random.Random(1)
    data = {f"k{i}": {"n": rng.random(), "s": "x" * 50, "l": list(range(10))} for i in range(300)}
    seconds = timeit.timeit(lambda: validation.event_data(data), number=20) / 20
    assert seconds < 0.05

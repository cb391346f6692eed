"""Event ids (ULIDs), key validation and content-derived keys."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from django_cio_reliable.exceptions import InvalidOperation
from django_cio_reliable.idempotency import (
    DERIVE,
    derive_key,
    encode_ulid,
    new_event_id,
    validate_key,
)

ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")


def test_ulid_known_value() -> None:
    assert encode_ulid(0, 0) == "0" * 26
    assert encode_ulid(2**48 - 1, 2**80 - 1) == "7" + "Z" * 25


@settings(max_examples=200, deadline=None)
@given(ms=st.integers(min_value=0, max_value=2**48 - 1), rand=st.integers(0, 2**80 - 1))
def test_ulid_shape_and_time_order(ms: int, rand: int) -> None:
    value = encode_ulid(ms, rand)
    assert ULID.match(value)
    if ms + 1 < 2**48:
        assert value < encode_ulid(ms + 1, 0)


def test_ulid_range_checked() -> None:
    with pytest.raises(ValueError):
        encode_ulid(2**48, 0)


def test_new_event_ids_are_unique_and_key_derived_ones_share_randomness() -> None:
    ids = {new_event_id() for _ in range(1000)}
    assert len(ids) == 1000
    a = new_event_id("order-1", now=1_700_000_000)
    b = new_event_id("order-1", now=1_700_000_999)
    c = new_event_id("order-2", now=1_700_000_000)
    assert a[10:] == b[10:]
    assert a[:10] != b[:10]
    assert a[10:] != c[10:]
    assert ULID.match(a)


def test_validate_key() -> None:
    assert validate_key("k") == "k"
    with pytest.raises(InvalidOperation, match="idempotency_key"):
        validate_key("")
    with pytest.raises(InvalidOperation, match="255"):
        validate_key("x" * 256)
    with pytest.raises(InvalidOperation, match="string"):
        validate_key(42)


def test_derived_keys_share_a_window_only() -> None:
    payload = {"name": "page_viewed", "data": {"path": "/"}, "id": "IGNORED"}
    k1 = derive_key("track", "c:1", payload, window=300, now=1000)
    k2 = derive_key("track", "c:1", {**payload, "id": "OTHER"}, window=300, now=1100)
    k3 = derive_key("track", "c:1", payload, window=300, now=1300)
    k4 = derive_key("track", "c:2", payload, window=300, now=1000)
    assert k1 == k2
    assert k1 != k3
    assert k1 != k4
    assert repr(DERIVE) == "DERIVE"

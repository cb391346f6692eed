"""Idempotency keys and event ids.

- An explicit ``idempotency_key`` yields one operation per key, person and kind within
  ``IDEMPOTENCY_TTL`` (:func:`scope_key`): the scoped key is reserved by a unique
  :class:`~django_cio_reliable.models.IdempotencyKey` row inserted in the same transaction as
  the operation, so two processes racing with one key get one operation.
- A ``cachetools`` TTL cache answers repeats in-process without a query. It is filled only after
  the reserving transaction commits, so a rolled-back operation is never answered from it.
- Content-derived keys are opt-in (:data:`DERIVE`): two identical ``page_viewed`` events are
  usually two page views, so deriving keys from content by default would drop real events.
- Every ``track`` carries a ULID event id minted at enqueue, reused by every retry and replay; with
  an idempotency key its random part is derived from the key.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
import time
from collections.abc import Mapping
from enum import Enum
from typing import TYPE_CHECKING, Any, Final

from cachetools import TTLCache

from django_cio_reliable import conf, validation
from django_cio_reliable.exceptions import InvalidOperation

if TYPE_CHECKING:
    from django_cio_reliable.models import Operation

KEY_MAX_LENGTH: Final = 255
_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_PAIRS: Final = tuple(a + b for a in _CROCKFORD for b in _CROCKFORD)
_PAIR_SHIFTS: Final = tuple(range(120, -10, -10))
_RANDOM_MASK: Final = (1 << 80) - 1


class _Derive(Enum):
    """Sentinel type of :data:`DERIVE` (an enum: one instance, kept by copy and pickle)."""

    DERIVE = "DERIVE"

    def __repr__(self) -> str:
        return "DERIVE"


#: Pass as ``idempotency_key`` to derive the key from the operation's content and time window.
DERIVE: Final = _Derive.DERIVE


def encode_ulid(timestamp_ms: int, randomness: int) -> str:
    """Encode a 48-bit millisecond timestamp and 80 random bits as a 26-character ULID."""
    if not 0 <= timestamp_ms < 2**48:
        raise ValueError("ULID timestamp out of range")
    value = (timestamp_ms << 80) | (randomness & _RANDOM_MASK)
    # 130 bits, ten at a time: two characters per lookup.
    return "".join([_CROCKFORD_PAIRS[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])


def new_event_id(key: str | None = None, *, now: float | None = None) -> str:
    """Mint a ULID event id; its random part comes from ``key`` when one is given."""
    timestamp_ms = int((time.time() if now is None else now) * 1000)
    if key is None:
        randomness = int.from_bytes(os.urandom(10), "big")
    else:
        digest = hashlib.sha256(b"cio-event-id\0" + key.encode("utf-8")).digest()
        randomness = int.from_bytes(digest[:10], "big")
    return encode_ulid(timestamp_ms, randomness)


def validate_key(value: object, *, field: str = "idempotency_key") -> str:
    """Check an explicit idempotency key: a non-empty string of at most 255 characters.

    It must also be storable as it is on every database: no NUL character and no lone
    surrogate (which has no UTF-8 form).
    """
    if not isinstance(value, str):
        raise InvalidOperation(
            f"{field} must be a string, got {type(value).__name__}", field=field, limit="str"
        )
    value = str.__str__(value)
    if not value.strip():
        raise InvalidOperation(f"{field} must not be empty", field=field, limit="non-empty")
    # Stored as text like every other string: the same refusals (NUL, lone surrogates).
    validation.json_safe(value, field=field)
    if len(value) > KEY_MAX_LENGTH:
        raise InvalidOperation(
            f"{field} is {len(value)} characters; the limit is {KEY_MAX_LENGTH}",
            field=field,
            limit=f"{KEY_MAX_LENGTH} characters",
            actual=f"{len(value)} characters",
        )
    return value


def scope_key(kind: str, person_key: str, key: str) -> str:
    """The stored form of ``key`` for one kind of operation of one person.

    Keys are scoped: Alice's ``"welcome"`` and Bob's ``"welcome"`` are two keys, and so are an
    ``identify`` and a ``track`` under one key. The scoped key is a SHA-256 of the three, so it
    fits the key column whatever the lengths, and holds no customer id in clear.
    """
    text = f"{kind}\0{person_key}\0{key}"
    return "k1:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def key_hash(key: str) -> str:
    """A short, stable hash of ``key`` to name it in messages and logs (never the key itself)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


def derive_key(
    kind: str,
    person_key: str,
    payload: Mapping[str, Any],
    *,
    window: float,
    now: float | None = None,
) -> str:
    """A key derived from the operation's content and the ``window``-second slot it falls in.

    Two identical operations in the same slot share the key; across a slot boundary they do
    not, so the window bounds, but does not guarantee, deduplication of accidental repeats.
    """
    current = time.time() if now is None else now
    slot = int(current // window) if window > 0 else 0
    content = {k: v for k, v in payload.items() if k not in ("id", "timestamp")}
    canonical = json.dumps(
        [kind, person_key, content], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"derived:{slot}:{digest}"


class KeyCache:
    """In-process TTL cache from idempotency key to its operation, safe across threads and forks.

    It holds a snapshot of the operation as it was enqueued, so a repeat returns without a query.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._cache: TTLCache[str, Operation] | None = None

    def _get_cache(self) -> TTLCache[str, Operation] | None:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._cache = None
        if self._cache is None:
            size = conf.app_settings.IDEMPOTENCY_CACHE_SIZE
            if size <= 0:
                return None
            # Shorter than the key's TTL: an entry never outlives the row it stands for.
            ttl = max(1.0, min(conf.app_settings.IDEMPOTENCY_TTL, 3600.0))
            self._cache = TTLCache(maxsize=size, ttl=ttl)
        return self._cache

    def get(self, key: str) -> Operation | None:
        """A copy of the operation reserved under ``key``, if this process has seen it."""
        with self._lock:
            cache = self._get_cache()
            found = None if cache is None else cache.get(key)
        return None if found is None else copy.copy(found)

    def put(self, key: str, operation: Operation) -> None:
        """Remember ``key`` → ``operation`` (call only after the reservation committed)."""
        with self._lock:
            cache = self._get_cache()
            if cache is not None:
                cache[key] = copy.copy(operation)

    def discard(self, key: str) -> None:
        """Forget ``key``."""
        with self._lock:
            cache = self._get_cache()
            if cache is not None:
                cache.pop(key, None)

    def clear(self) -> None:
        """Forget everything (also rebuilds the cache from settings on next use)."""
        with self._lock:
            self._cache = None


key_cache: Final = KeyCache()
conf.on_reset(key_cache.clear)

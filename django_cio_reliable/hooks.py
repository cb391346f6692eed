"""Declarative model hooks: identify, track and delete from Django's model signals.

Declared once, in code (usually in an ``AppConfig.ready()``) or in ``CIO_RELIABLE["HOOKS"]``::

    import django_cio_reliable as cio

    cio.hooks.identify_on_save(
        User,
        customer_id=lambda u: u.pk,
        attributes=lambda u: {"email": u.email, "first_name": u.first_name},
        fields=["email", "first_name"],
    )
    cio.hooks.track_on_create(
        Order,
        "order_placed",
        customer_id=lambda o: o.user_id,
        data=lambda o: {"total": o.total},
        idempotency_key=lambda o: f"order-{o.pk}-placed",
    )
    cio.hooks.track_on_change(
        Order, "status", "order_status_changed",
        customer_id=lambda o: o.user_id,
        data=lambda o, old, new: {"from": old, "to": new},
    )
    cio.hooks.delete_on_delete(User, customer_id=lambda u: u.pk)

Hooks run in ``post_save`` / ``post_delete`` receivers, so the operation is stored in the same
database transaction as the save. Change detection keeps a snapshot of the watched fields on
each instance (taken when it is loaded, refreshed after each save and by ``refresh_from_db``);
a field with no trustworthy snapshot (deferred when loaded, or an instance built by hand) is read
from the database in ``pre_save``. See ``docs/hooks.md``.

This module imports no model at import time: ``django_cio_reliable`` imports it before the app
registry is ready.
"""

from __future__ import annotations

import copy
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ContextDecorator
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as dt_time
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar, cast

from django.apps import apps
from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured, ValidationError
from django.db import models, router, transaction
from django.db.models.signals import ModelSignal, post_delete, post_init, post_save, pre_save
from django.utils.module_loading import import_string

from django_cio_reliable import api, validation
from django_cio_reliable.conf import app_settings, on_reset
from django_cio_reliable.exceptions import InvalidOperation
from django_cio_reliable.idempotency import _Derive

if TYPE_CHECKING:
    from types import TracebackType

    from django.db.models import QuerySet

log = logging.getLogger(__name__)

HookKind = Literal["identify_on_save", "track_on_create", "track_on_change", "delete_on_delete"]
OnInvalid = Literal["raise", "skip"]
HookSource = Literal["code", "settings"]

#: Every hook kind, in the order the docs list them.
KINDS: Final[tuple[HookKind, ...]] = (
    "identify_on_save",
    "track_on_create",
    "track_on_change",
    "delete_on_delete",
)
#: What a hook does with an ``InvalidOperation``: re-raise it (the save fails) or log and skip.
ON_INVALID: Final[tuple[OnInvalid, ...]] = ("raise", "skip")

#: The instance attribute that holds the snapshot of the watched fields.
SNAPSHOT_ATTR: Final = "_cio_reliable_snapshot"

M = TypeVar("M", bound=models.Model)

_MISSING: Final = object()
_IMMUTABLE: Final = (
    str,
    int,
    float,
    bool,
    type(None),
    bytes,
    Decimal,
    datetime,
    date,
    dt_time,
    timedelta,
    uuid.UUID,
)


@dataclass(frozen=True, eq=False)
class Hook:
    """One registered model hook (read-only; built by :func:`identify_on_save` and friends).

    Attributes:
        kind: ``identify_on_save``, ``track_on_create``, ``track_on_change`` or
            ``delete_on_delete``.
        model: The model class the hook is registered on (its proxy models fire it too).
        customer_id: ``customer_id(instance)``; returning ``None`` skips the hook for that
            instance (e.g. a guest order).
        dispatch_uid: The hook's identity; registering another hook with the same uid replaces
            this one.
        name: The event name (track kinds).
        field: The watched field (``track_on_change``).
        fields: The watched fields of ``identify_on_save`` (``None``: every concrete field).
        attributes: ``attributes(instance)`` (``identify_on_save``).
        data: ``data(instance)``, or ``data(instance, old, new)`` for ``track_on_change``.
        idempotency_key: A callable taking the same arguments as ``data`` (``instance`` for
            the other kinds), or ``DERIVE``, or ``None``.
        timestamp: ``timestamp(instance)`` for the track kinds: when the event happened.
        on_invalid: ``"raise"`` (default) re-raises ``InvalidOperation`` out of the save;
            ``"skip"`` logs it (never the payload) and stores nothing.
        source: ``"code"`` or ``"settings"`` (``CIO_RELIABLE["HOOKS"]``).
        watched: The attnames whose change fires the hook.
    """

    kind: HookKind
    model: type[models.Model]
    customer_id: Callable[[Any], Any]
    dispatch_uid: str
    name: str = ""
    field: str = ""
    fields: tuple[str, ...] | None = None
    attributes: Callable[[Any], Any] | None = None
    data: Callable[..., Any] | None = None
    idempotency_key: Callable[..., Any] | _Derive | None = None
    timestamp: Callable[[Any], Any] | None = None
    on_invalid: OnInvalid = "raise"
    source: HookSource = "code"
    watched: frozenset[str] = frozenset()

    @property
    def label(self) -> str:
        """The model's label, e.g. ``"auth.User"``."""
        return str(self.model._meta.label)

    def __repr__(self) -> str:
        return f"<Hook {self.dispatch_uid!r} ({self.source})>"


# --------------------------------------------------------------------------- pausing

_pause_depth: ContextVar[int] = ContextVar("django_cio_reliable_hooks_paused", default=0)


class paused(ContextDecorator):
    """Switch every model hook off for a block, in this thread (or asyncio task) only.

    Usable as a context manager or a decorator; blocks nest. Saves inside the block store no
    operation; the change snapshots are still kept up to date, so a change made while paused is
    not reported by a later save. :func:`identify_queryset` ignores it.

    Example::

        with cio.hooks.paused():
            user.save()  # no identify

        @cio.hooks.paused()
        def import_legacy_orders(): ...
    """

    def __enter__(self) -> paused:
        _pause_depth.set(_pause_depth.get() + 1)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _pause_depth.set(max(0, _pause_depth.get() - 1))


def is_paused() -> bool:
    """Whether hooks are paused in the current thread (or asyncio task)."""
    return _pause_depth.get() > 0


# --------------------------------------------------------------------------- the registry

_lock = threading.RLock()
_hooks: dict[str, Hook] = {}
#: Per sender class (a hooked model and its proxies): the hooks fired by post_save / post_delete.
_save_hooks: dict[type[models.Model], tuple[Hook, ...]] = {}
_delete_hooks: dict[type[models.Model], tuple[Hook, ...]] = {}
#: Per sender class: the attnames whose snapshot is kept.
_tracked: dict[type[models.Model], frozenset[str]] = {}
#: Per sender class: attname -> field, and field name -> attname.
_fields: dict[type[models.Model], dict[str, models.Field[Any, Any]]] = {}
_attnames: dict[type[models.Model], dict[str, str]] = {}
_connected: set[tuple[str, type[models.Model]]] = set()
#: Concrete models whose ``refresh_from_db`` is wrapped, and what their class dict held before.
_patched: dict[type[models.Model], Any] = {}

_SIGNALS: Final[dict[str, ModelSignal]] = {
    "post_init": post_init,
    "pre_save": pre_save,
    "post_save": post_save,
    "post_delete": post_delete,
}


def _default_uid(kind: HookKind, model: type[models.Model], name: str, field_name: str) -> str:
    parts = [kind, str(model._meta.label_lower)]
    if kind == "track_on_change":
        parts.append(field_name)
    if name:
        parts.append(name)
    return ":".join(parts)


def _concrete_field(model: type[models.Model], name: str) -> models.Field[Any, Any]:
    """The concrete field ``name`` (a field name or an attname) of ``model``.

    Raises:
        ImproperlyConfigured: ``model`` has no such concrete field.
    """
    for candidate in model._meta.concrete_fields:
        if name in (candidate.name, candidate.attname):
            return candidate
    try:
        found = model._meta.get_field(name)
    except FieldDoesNotExist:
        raise ImproperlyConfigured(f"{model._meta.label} has no field {name!r}") from None
    raise ImproperlyConfigured(
        f"{model._meta.label}.{found.name} is not a concrete field (a many-to-many or reverse "
        "relation does not change on save)"
    )


def _check_model(model: object) -> type[models.Model]:
    if not (
        isinstance(model, type)
        and issubclass(model, models.Model)
        and getattr(model, "_meta", None) is not None
    ):
        raise ImproperlyConfigured(f"a hook needs a model class, not {type(model).__name__}")
    if model._meta.abstract:
        raise ImproperlyConfigured(f"{model.__name__} is abstract: hook a concrete model")
    if model._meta.swapped:
        raise ImproperlyConfigured(
            f"{model._meta.label} is swapped for {model._meta.swapped}: hook that model"
        )
    return model


def _check_callable(value: object, key: str, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not callable(value):
        raise ImproperlyConfigured(f"{key} must be callable, not {type(value).__name__}")


def _build(
    kind: HookKind,
    model: object,
    *,
    customer_id: Callable[[Any], Any],
    name: str = "",
    field_name: str = "",
    fields: Sequence[str] | None = None,
    attributes: Callable[[Any], Any] | None = None,
    data: Callable[..., Any] | None = None,
    idempotency_key: Callable[..., Any] | _Derive | None = None,
    timestamp: Callable[[Any], Any] | None = None,
    on_invalid: str = "raise",
    dispatch_uid: str | None = None,
    source: HookSource = "code",
) -> Hook:
    cls = _check_model(model)
    _check_callable(customer_id, "customer_id", optional=False)
    _check_callable(attributes, "attributes")
    _check_callable(data, "data")
    _check_callable(timestamp, "timestamp")
    if not isinstance(idempotency_key, _Derive):
        _check_callable(idempotency_key, "idempotency_key")
    if on_invalid not in ON_INVALID:
        raise ImproperlyConfigured(f"on_invalid must be 'raise' or 'skip', not {on_invalid!r}")
    if kind in ("track_on_create", "track_on_change"):
        validation.event_name(name)
    watched: frozenset[str] = frozenset()
    watched_names: tuple[str, ...] | None = None
    if kind == "identify_on_save":
        if fields is None:
            watched = frozenset(f.attname for f in cls._meta.concrete_fields)
        else:
            if isinstance(fields, str) or not fields:
                raise ImproperlyConfigured(
                    "fields must be a non-empty list of field names (None watches every field)"
                )
            watched_names = tuple(fields)
            watched = frozenset(_concrete_field(cls, f).attname for f in watched_names)
    elif kind == "track_on_change":
        watched = frozenset({_concrete_field(cls, field_name).attname})
    if dispatch_uid is not None and (not isinstance(dispatch_uid, str) or not dispatch_uid):
        raise ImproperlyConfigured("dispatch_uid must be a non-empty string")
    return Hook(
        kind=kind,
        model=cls,
        customer_id=customer_id,
        dispatch_uid=dispatch_uid or _default_uid(kind, cls, name, field_name),
        name=name,
        field=field_name,
        fields=watched_names,
        attributes=attributes,
        data=data,
        idempotency_key=idempotency_key,
        timestamp=timestamp,
        on_invalid=on_invalid,
        source=source,
        watched=watched,
    )


def _register(hook: Hook) -> Hook:
    """Register a built hook, replacing any hook with the same ``dispatch_uid``.

    Args:
        hook: The hook.

    Returns:
        ``hook``.
    """
    with _lock:
        previous = _hooks.pop(hook.dispatch_uid, None)
        if previous is not None:
            log.debug("cio: hook %s replaced", hook.dispatch_uid)
        _hooks[hook.dispatch_uid] = hook
        _rebuild()
    return hook


def identify_on_save(
    model: type[M],
    *,
    customer_id: Callable[[M], str | int | None],
    attributes: Callable[[M], Mapping[str, Any] | None] | None = None,
    fields: Sequence[str] | None = None,
    idempotency_key: Callable[[M], str | None] | _Derive | None = None,
    on_invalid: OnInvalid = "raise",
    dispatch_uid: str | None = None,
) -> Hook:
    """Identify the person when an instance is created, or saved with a watched field changed.

    Args:
        model: The model (its proxy models fire the hook too).
        customer_id: The person's id from the instance; ``None`` skips the instance.
        attributes: The attributes to send (default: none, which creates the person).
        fields: The fields whose change triggers an identify (names or attnames; default
            ``None``: every concrete field). Saves that change none of them store nothing.
        idempotency_key: A key from the instance, or ``DERIVE``; default none (identify is an
            upsert, re-sending it is harmless).
        on_invalid: ``"raise"`` lets ``InvalidOperation`` fail the save; ``"skip"`` logs it
            (never the payload) and stores nothing.
        dispatch_uid: The hook's identity (default ``"identify_on_save:<app_label.model>"``);
            give one to register two identify hooks on one model.

    Returns:
        The registered :class:`Hook`.

    Raises:
        ImproperlyConfigured: A field is not a concrete field of ``model``, or an argument
            has the wrong type.
    """
    return _register(
        _build(
            "identify_on_save",
            model,
            customer_id=customer_id,
            attributes=attributes,
            fields=fields,
            idempotency_key=idempotency_key,
            on_invalid=on_invalid,
            dispatch_uid=dispatch_uid,
        )
    )


def track_on_create(
    model: type[M],
    name: str,
    *,
    customer_id: Callable[[M], str | int | None],
    data: Callable[[M], Mapping[str, Any] | None] | None = None,
    idempotency_key: Callable[[M], str | None] | _Derive | None = None,
    timestamp: Callable[[M], int | datetime | None] | None = None,
    on_invalid: OnInvalid = "raise",
    dispatch_uid: str | None = None,
) -> Hook:
    """Track the event ``name`` when an instance is created.

    Args:
        model: The model.
        name: The event name (at most 100 bytes).
        customer_id: The person's id from the instance; ``None`` skips the instance.
        data: The event data from the instance.
        idempotency_key: A key from the instance (e.g. ``lambda o: f"order-{o.pk}-placed"``),
            or ``DERIVE``.
        timestamp: When the event happened (default: when it is sent).
        on_invalid: ``"raise"`` or ``"skip"``, as for :func:`identify_on_save`.
        dispatch_uid: The hook's identity (default ``"track_on_create:<model>:<name>"``).

    Returns:
        The registered :class:`Hook`.

    Raises:
        ImproperlyConfigured: An argument has the wrong type.
        InvalidOperation: ``name`` is not a valid event name.
    """
    return _register(
        _build(
            "track_on_create",
            model,
            customer_id=customer_id,
            name=name,
            data=data,
            idempotency_key=idempotency_key,
            timestamp=timestamp,
            on_invalid=on_invalid,
            dispatch_uid=dispatch_uid,
        )
    )


def track_on_change(
    model: type[M],
    field: str,
    name: str,
    *,
    customer_id: Callable[[M], str | int | None],
    data: Callable[[M, Any, Any], Mapping[str, Any] | None] | None = None,
    idempotency_key: Callable[[M, Any, Any], str | None] | _Derive | None = None,
    timestamp: Callable[[M], int | datetime | None] | None = None,
    on_invalid: OnInvalid = "raise",
    dispatch_uid: str | None = None,
) -> Hook:
    """Track the event ``name`` when a save changes the value of ``field``.

    Not fired on create (use :func:`track_on_create`). ``data`` and ``idempotency_key`` are
    called as ``f(instance, old, new)`` with the field's old and new values (for a foreign key,
    the ids); without ``data`` the event carries ``{"field": ..., "old": ..., "new": ...}``.

    Args:
        model: The model.
        field: The watched field (name or attname).
        name: The event name.
        customer_id: The person's id from the instance; ``None`` skips the instance.
        data: ``data(instance, old, new)``.
        idempotency_key: ``idempotency_key(instance, old, new)``, or ``DERIVE``.
        timestamp: When the event happened (default: when it is sent).
        on_invalid: ``"raise"`` or ``"skip"``, as for :func:`identify_on_save`.
        dispatch_uid: The hook's identity (default ``"track_on_change:<model>:<field>:<name>"``).

    Returns:
        The registered :class:`Hook`.

    Raises:
        ImproperlyConfigured: ``field`` is not a concrete field, or an argument has the wrong
            type.
        InvalidOperation: ``name`` is not a valid event name.
    """
    return _register(
        _build(
            "track_on_change",
            model,
            customer_id=customer_id,
            name=name,
            field_name=field,
            data=data,
            idempotency_key=idempotency_key,
            timestamp=timestamp,
            on_invalid=on_invalid,
            dispatch_uid=dispatch_uid,
        )
    )


def delete_on_delete(
    model: type[M],
    *,
    customer_id: Callable[[M], str | int | None],
    idempotency_key: Callable[[M], str | None] | _Derive | None = None,
    on_invalid: OnInvalid = "raise",
    dispatch_uid: str | None = None,
) -> Hook:
    """Delete the person from Customer.io when an instance is deleted (``post_delete``).

    ``QuerySet.delete()`` and cascades fire it for every row (Django sends ``post_delete`` per
    object once a receiver is connected).

    Args:
        model: The model.
        customer_id: The person's id from the instance; ``None`` skips the instance.
        idempotency_key: A key from the instance, or ``DERIVE``.
        on_invalid: ``"raise"`` or ``"skip"``, as for :func:`identify_on_save`.
        dispatch_uid: The hook's identity (default ``"delete_on_delete:<model>"``).

    Returns:
        The registered :class:`Hook`.
    """
    return _register(
        _build(
            "delete_on_delete",
            model,
            customer_id=customer_id,
            idempotency_key=idempotency_key,
            on_invalid=on_invalid,
            dispatch_uid=dispatch_uid,
        )
    )


def registered(model: type[models.Model] | None = None) -> list[Hook]:
    """The registered hooks in registration order, optionally only those of ``model``."""
    with _lock:
        hooks = list(_hooks.values())
    return [h for h in hooks if model is None or h.model is model]


def unregister(hook: Hook | str) -> bool:
    """Unregister a hook (or the hook with that ``dispatch_uid``); say whether one was."""
    uid = hook.dispatch_uid if isinstance(hook, Hook) else hook
    with _lock:
        removed = _hooks.pop(uid, None) is not None
        if removed:
            _rebuild()
    return removed


def unregister_all(*, source: HookSource | None = None) -> None:
    """Unregister every hook (or every hook of one ``source``), disconnecting the receivers.

    Meant for tests. ``CIO_RELIABLE["HOOKS"]`` is registered again the next time the setting
    changes (or call :func:`register_from_settings`).
    """
    with _lock:
        for uid in [u for u, h in _hooks.items() if source is None or h.source == source]:
            del _hooks[uid]
        _rebuild()


def _senders(model: type[models.Model]) -> list[type[models.Model]]:
    """``model`` and its proxy models: Django sends model signals with the proxy as sender."""
    senders = [model]
    for candidate in apps.get_models():
        if candidate is not model and candidate._meta.proxy and issubclass(candidate, model):
            senders.append(candidate)
    return senders


def _rebuild() -> None:
    """Recompute the per-sender tables and (dis)connect receivers to match; under ``_lock``."""
    save_hooks: dict[type[models.Model], list[Hook]] = {}
    delete_hooks: dict[type[models.Model], list[Hook]] = {}
    tracked: dict[type[models.Model], set[str]] = {}
    for hook in _hooks.values():
        for sender in _senders(hook.model):
            if hook.kind == "delete_on_delete":
                delete_hooks.setdefault(sender, []).append(hook)
            else:
                save_hooks.setdefault(sender, []).append(hook)
            if hook.watched:
                tracked.setdefault(sender, set()).update(hook.watched)
    global _save_hooks, _delete_hooks, _tracked, _fields, _attnames
    fields_map: dict[type[models.Model], dict[str, models.Field[Any, Any]]] = {}
    names_map: dict[type[models.Model], dict[str, str]] = {}
    for sender in tracked:
        concrete = sender._meta.concrete_fields
        fields_map[sender] = {f.attname: f for f in concrete}
        names_map[sender] = {
            **{f.name: f.attname for f in concrete},
            **{f.attname: f.attname for f in concrete},
        }
    _fields, _attnames = fields_map, names_map
    _tracked = {sender: frozenset(names) for sender, names in tracked.items()}
    _save_hooks = {sender: tuple(hooks) for sender, hooks in save_hooks.items()}
    _delete_hooks = {sender: tuple(hooks) for sender, hooks in delete_hooks.items()}

    wanted: set[tuple[str, type[models.Model]]] = set()
    for sender in _tracked:
        wanted.update({("post_init", sender), ("pre_save", sender)})
    for sender in _save_hooks:
        wanted.add(("post_save", sender))
    for sender in _delete_hooks:
        wanted.add(("post_delete", sender))
    for signal_name, sender in _connected - wanted:
        _SIGNALS[signal_name].disconnect(
            sender=sender, dispatch_uid=_receiver_uid(signal_name, sender)
        )
    for signal_name, sender in wanted - _connected:
        _SIGNALS[signal_name].connect(
            _RECEIVERS[signal_name],
            sender=sender,
            weak=False,
            dispatch_uid=_receiver_uid(signal_name, sender),
        )
    _connected.clear()
    _connected.update(wanted)

    concrete_tracked = {
        base for sender in _tracked if (base := sender._meta.concrete_model) is not None
    }
    for patched_model in list(_patched):
        if patched_model not in concrete_tracked:
            _unpatch_refresh(patched_model)
    for base_model in concrete_tracked:
        if base_model not in _patched:
            _patch_refresh(base_model)


def _receiver_uid(signal_name: str, sender: type[models.Model]) -> str:
    return f"django_cio_reliable.hooks:{signal_name}:{sender._meta.label_lower}"


# --------------------------------------------------------------------------- snapshots


def _frozen(value: Any) -> Any:
    if isinstance(value, _IMMUTABLE):
        return value
    try:
        return copy.deepcopy(value)
    except Exception:  # an uncopyable value: compare by identity/equality as it is
        return value


def _is_expression(value: Any) -> bool:
    return hasattr(value, "resolve_expression")


def _snapshot_of(instance: models.Model) -> dict[str, Any]:
    snapshot: dict[str, Any] = instance.__dict__.get(SNAPSHOT_ATTR) or {}
    return snapshot


def _store_snapshot(
    instance: models.Model, base: Mapping[str, Any], attnames: Iterable[str]
) -> None:
    """Replace the snapshot by ``base`` updated with the current values of ``attnames``."""
    values = instance.__dict__
    snapshot = dict(base)
    for attname in attnames:
        value = values.get(attname, _MISSING)
        if value is _MISSING or _is_expression(value):
            snapshot.pop(attname, None)
        else:
            snapshot[attname] = _frozen(value)
    values[SNAPSHOT_ATTR] = snapshot


def _saved_attnames(
    sender: type[models.Model], instance: models.Model, update_fields: Iterable[str] | None
) -> frozenset[str]:
    """The tracked attnames this save wrote."""
    tracked = _tracked.get(sender, frozenset())
    loaded = instance.__dict__
    if update_fields is None:
        return frozenset(a for a in tracked if a in loaded)
    names = _attnames.get(sender, {})
    return frozenset(
        attname for attname in (names.get(n) for n in update_fields) if attname in tracked
    )


def _equal(field_obj: models.Field[Any, Any] | None, old: Any, new: Any) -> bool:
    try:
        if old == new:
            return True
    except Exception:  # a value whose comparison raises: treat as changed
        return False
    if field_obj is None:
        return False
    try:
        return bool(field_obj.to_python(old) == field_obj.to_python(new))
    except (ValidationError, TypeError, ValueError):
        return False


def _on_post_init(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    tracked = _tracked.get(sender)
    if tracked:
        _store_snapshot(instance, {}, tracked)


def _on_pre_save(
    sender: type[models.Model],
    instance: models.Model,
    raw: bool = False,
    using: str | None = None,
    update_fields: Iterable[str] | None = None,
    **kwargs: Any,
) -> None:
    """Read from the database the old values that no snapshot holds (one query at most)."""
    if raw or is_paused() or not _tracked.get(sender):
        return
    pk = instance.pk
    if pk is None:
        return
    state = instance._state
    meta = instance._meta
    if state.adding and (meta.pk is None or meta.pk.has_default() or meta.pk.has_db_default()):
        return  # Django inserts without trying an update first
    saving = _saved_attnames(sender, instance, update_fields)
    snapshot = _snapshot_of(instance)
    missing = sorted(saving if state.adding else (a for a in saving if a not in snapshot))
    if not missing:
        return
    row = sender._base_manager.using(using).filter(pk=pk).values(*missing).first()
    if row is None:
        return  # it will be an insert
    base = {} if state.adding else snapshot
    instance.__dict__[SNAPSHOT_ATTR] = {**base, **{k: _frozen(v) for k, v in row.items()}}


def _on_post_save(
    sender: type[models.Model],
    instance: models.Model,
    created: bool = False,
    raw: bool = False,
    using: str | None = None,
    update_fields: Iterable[str] | None = None,
    **kwargs: Any,
) -> None:
    hooks = _save_hooks.get(sender, ())
    tracked = _tracked.get(sender)
    old = _snapshot_of(instance)
    saved = _saved_attnames(sender, instance, update_fields) if tracked else frozenset()
    if hooks and not raw and not is_paused():
        expressions = [a for a in saved if _is_expression(instance.__dict__.get(a))]
        if expressions:
            # ``F()`` updates: read the value the database computed.
            instance.refresh_from_db(using=using, fields=expressions)
        for hook in hooks:
            _run_save_hook(hook, sender, instance, created, old, saved)
    if tracked:
        _store_snapshot(instance, {} if created else old, tracked if created else saved)


def _changed(
    sender: type[models.Model], instance: models.Model, old: Mapping[str, Any], attname: str
) -> bool:
    previous = old.get(attname, _MISSING)
    if previous is _MISSING:
        return True
    return not _equal(_fields.get(sender, {}).get(attname), previous, instance.__dict__[attname])


def _run_save_hook(
    hook: Hook,
    sender: type[models.Model],
    instance: models.Model,
    created: bool,
    old: Mapping[str, Any],
    saved: frozenset[str],
) -> None:
    if hook.kind == "identify_on_save":
        if created or any(_changed(sender, instance, old, a) for a in hook.watched & saved):
            _fire(hook, instance, lambda cid: _identify(hook, instance, cid))
    elif hook.kind == "track_on_create":
        if created:
            _fire(hook, instance, lambda cid: _track(hook, instance, cid, (instance,)))
    elif hook.kind == "track_on_change" and not created:
        (attname,) = hook.watched
        if attname in saved and _changed(sender, instance, old, attname):
            previous = old.get(attname)
            args = (instance, previous, instance.__dict__[attname])
            _fire(hook, instance, lambda cid: _track(hook, instance, cid, args))


def _key(hook: Hook, args: tuple[Any, ...]) -> str | _Derive | None:
    if hook.idempotency_key is None or isinstance(hook.idempotency_key, _Derive):
        return hook.idempotency_key
    value = hook.idempotency_key(*args)
    return None if value is None else cast(str, value)


def _identify(hook: Hook, instance: models.Model, cid: Any) -> Any:
    attributes = hook.attributes(instance) if hook.attributes is not None else None
    return api.identify(cid, attributes, idempotency_key=_key(hook, (instance,)))


def _track(hook: Hook, instance: models.Model, cid: Any, args: tuple[Any, ...]) -> Any:
    if hook.data is not None:
        data = hook.data(*args)
    elif hook.kind == "track_on_change":
        data = {"field": hook.field, "old": args[1], "new": args[2]}
    else:
        data = None
    when = hook.timestamp(instance) if hook.timestamp is not None else None
    return api.track(cid, hook.name, data, idempotency_key=_key(hook, args), timestamp=when)


def _fire(hook: Hook, instance: models.Model, store: Callable[[Any], Any]) -> None:
    try:
        cid = hook.customer_id(instance)
        if cid is None:
            log.debug(
                "cio: hook %s: no customer id for %s pk=%s",
                hook.dispatch_uid,
                hook.label,
                instance.pk,
            )
            return
        operation = store(cid)
    except InvalidOperation as error:
        if hook.on_invalid == "raise":
            raise
        log.warning(
            "cio: hook %s skipped %s pk=%s: invalid %s (limit %s, actual %s)",
            hook.dispatch_uid,
            hook.label,
            instance.pk,
            error.field,
            error.limit,
            error.actual,
        )
        return
    log.debug("cio: hook %s stored operation %s", hook.dispatch_uid, operation.pk)


def _on_post_delete(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    if is_paused():
        return
    for hook in _delete_hooks.get(sender, ()):
        _fire(hook, instance, functools.partial(_delete, hook, instance))


def _delete(hook: Hook, instance: models.Model, cid: Any) -> Any:
    return api.delete(cid, idempotency_key=_key(hook, (instance,)))


_RECEIVERS: Final[dict[str, Callable[..., None]]] = {
    "post_init": _on_post_init,
    "pre_save": _on_pre_save,
    "post_save": _on_post_save,
    "post_delete": _on_post_delete,
}


_ABSENT: Final = object()


def _patch_refresh(model: type[models.Model]) -> None:
    """Wrap ``model.refresh_from_db`` so refreshed (and lazily loaded) fields are snapshotted."""
    original = model.__dict__.get("refresh_from_db", _ABSENT)
    inherited = model.refresh_from_db

    @functools.wraps(inherited)
    def refresh_from_db(self: models.Model, *args: Any, **kwargs: Any) -> None:
        inherited(self, *args, **kwargs)
        _after_refresh(self, args, kwargs)

    refresh_from_db._cio_reliable_wrapped = True  # type: ignore[attr-defined]
    setattr(model, "refresh_from_db", refresh_from_db)  # noqa: B010
    _patched[model] = original


def _unpatch_refresh(model: type[models.Model]) -> None:
    original = _patched.pop(model)
    if original is _ABSENT:
        delattr(model, "refresh_from_db")
    else:
        setattr(model, "refresh_from_db", original)  # noqa: B010


def _after_refresh(instance: models.Model, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    sender = type(instance)
    tracked = _tracked.get(sender)
    if not tracked:
        return
    fields = kwargs["fields"] if "fields" in kwargs else (args[1] if len(args) > 1 else None)
    if fields is None:
        refreshed: Iterable[str] = tracked
    else:
        names = _attnames.get(sender, {})
        refreshed = {names.get(f, f) for f in fields} & tracked
    _store_snapshot(instance, _snapshot_of(instance), refreshed)


# --------------------------------------------------------------------------- settings


#: Keys every ``CIO_RELIABLE["HOOKS"]`` entry may have, and the keys of each kind.
COMMON_REQUIRED: Final = ("kind", "model", "customer_id")
COMMON_OPTIONAL: Final = ("idempotency_key", "on_invalid", "dispatch_uid")
KIND_KEYS: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "identify_on_save": ((), ("attributes", "fields")),
    "track_on_create": (("name",), ("data", "timestamp")),
    "track_on_change": (("field", "name"), ("data", "timestamp")),
    "delete_on_delete": ((), ()),
}
#: Keys whose value is a callable or the dotted path of one.
CALLABLE_KEYS: Final = ("customer_id", "attributes", "data", "idempotency_key", "timestamp")

ProblemCode = Literal["malformed", "model", "callable", "field", "duplicate"]


@dataclass(frozen=True)
class ConfigProblem:
    """One problem of a ``CIO_RELIABLE["HOOKS"]`` entry (the system checks report them).

    Attributes:
        code: ``malformed``, ``model``, ``callable``, ``field`` or ``duplicate``.
        index: The entry's position in the list.
        kind: The entry's kind (``"?"`` when it has none).
        detail: What is wrong, in words; it names keys, paths and fields, never other values.
        params: Extra values for the message (``key``, ``model``, ``uid``, ``first``).
    """

    code: ProblemCode
    index: int
    kind: str
    detail: str
    params: dict[str, str] = field(default_factory=dict)


def _type_name(value: object) -> str:
    return type(value).__name__


def _a(value: object) -> str:
    """``"a str"``, ``"an int"``: the type of ``value`` with its article."""
    name = _type_name(value)
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _resolve_callable(value: object) -> tuple[Callable[..., Any] | _Derive | None, str]:
    """Import a dotted path (or take a callable); returns the callable or a problem."""
    if isinstance(value, _Derive):
        return value, ""
    if callable(value):
        return value, ""
    if not isinstance(value, str):
        return None, f"is {_a(value)}, not a dotted path or a callable"
    try:
        resolved = import_string(value)
    except ImportError as error:
        return None, f"is {value!r}, which cannot be imported ({str(error)[:200]})"
    except Exception as error:
        return None, f"is {value!r}, whose import raised {_type_name(error)}"
    if not callable(resolved):
        return None, f"is {value!r}, which is {_a(resolved)}, not a callable"
    return cast(Callable[..., Any], resolved), ""


def _resolve_model(value: object) -> tuple[type[models.Model] | None, str]:
    if not isinstance(value, str) or value.count(".") != 1:
        return None, "which is not a model label 'app_label.ModelName'"
    try:
        model = apps.get_model(value)
    except LookupError:
        return None, "which is not an installed model"
    if model._meta.swapped:
        return None, f"which is swapped for {model._meta.swapped}"
    return model, ""


def parse_settings(
    entries: object,
) -> tuple[list[tuple[int, dict[str, Any]]], list[ConfigProblem]]:
    """Validate ``CIO_RELIABLE["HOOKS"]``.

    Args:
        entries: The setting's value (not a list: nothing to parse; ``E003`` reports it).

    Returns:
        The valid entries (index and keyword arguments for :func:`_build`, callables and the
        model resolved) and the problems found.
    """
    if not isinstance(entries, (list, tuple)):
        return [], []
    valid: list[tuple[int, dict[str, Any]]] = []
    problems: list[ConfigProblem] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        parsed, entry_problems = _parse_entry(index, entry)
        problems.extend(entry_problems)
        if parsed is None:
            continue
        uid = parsed.get("dispatch_uid") or _default_uid(
            parsed["kind"], parsed["model"], parsed.get("name", ""), parsed.get("field_name", "")
        )
        if uid in seen:
            problems.append(
                ConfigProblem(
                    "duplicate",
                    index,
                    parsed["kind"],
                    "",
                    {"uid": repr(uid), "first": str(seen[uid])},
                )
            )
        seen[uid] = index
        valid.append((index, parsed))
    return valid, problems


def _parse_entry(index: int, entry: object) -> tuple[dict[str, Any] | None, list[ConfigProblem]]:
    if not isinstance(entry, dict):
        detail = f"it is {_a(entry)}, not a dict"
        return None, [ConfigProblem("malformed", index, "?", detail)]
    kind = entry.get("kind")
    kind_text = kind if isinstance(kind, str) else "?"
    issues: list[str] = []
    if kind not in KIND_KEYS:
        if "kind" not in entry:
            issues.append("'kind' is missing")
        else:
            shown = repr(kind) if isinstance(kind, str) else _a(kind)
            issues.append(f"'kind' is {shown}, not one of {', '.join(map(repr, KINDS))}")
        return None, [ConfigProblem("malformed", index, kind_text, "; ".join(issues))]
    required, optional = KIND_KEYS[kind]
    allowed = {*COMMON_REQUIRED, *COMMON_OPTIONAL, *required, *optional}
    missing = [k for k in (*COMMON_REQUIRED, *required) if k not in entry]
    if missing:
        issues.append("missing " + ", ".join(repr(k) for k in missing))
    unknown = [k for k in entry if k not in allowed]
    if unknown:
        issues.append(f"unknown keys for {kind}: " + ", ".join(repr(str(k)) for k in unknown))
    name = entry.get("name")
    if "name" in entry and (not isinstance(name, str) or not name.strip()):
        issues.append("'name' must be a non-empty string")
    elif isinstance(name, str):
        try:
            validation.event_name(name)
        except InvalidOperation as error:
            issues.append(f"'name' is not a valid event name ({error})")
    field_name = entry.get("field")
    if "field" in entry and (not isinstance(field_name, str) or not field_name):
        issues.append("'field' must be a non-empty string")
    fields = entry.get("fields")
    if (
        "fields" in entry
        and fields is not None
        and (
            not isinstance(fields, (list, tuple))
            or not fields
            or not all(isinstance(f, str) and f for f in fields)
        )
    ):
        issues.append("'fields' must be None or a non-empty list of field names")
    on_invalid = entry.get("on_invalid", "raise")
    if on_invalid not in ON_INVALID:
        issues.append("'on_invalid' must be 'raise' or 'skip'")
    uid = entry.get("dispatch_uid")
    if "dispatch_uid" in entry and (not isinstance(uid, str) or not uid):
        issues.append("'dispatch_uid' must be a non-empty string")
    if issues:
        return None, [ConfigProblem("malformed", index, kind, "; ".join(issues))]

    problems: list[ConfigProblem] = []
    model, model_problem = _resolve_model(entry["model"])
    if model is None:
        problems.append(
            ConfigProblem("model", index, kind, model_problem, {"model": repr(entry["model"])})
        )
    parsed: dict[str, Any] = {"kind": kind, "on_invalid": on_invalid, "source": "settings"}
    for key in CALLABLE_KEYS:
        if key not in entry or (entry[key] is None and key != "customer_id"):
            continue
        resolved, problem = _resolve_callable(entry[key])
        if key != "idempotency_key" and isinstance(resolved, _Derive):
            resolved, problem = None, "is DERIVE, which only 'idempotency_key' accepts"
        if problem:
            problems.append(ConfigProblem("callable", index, kind, problem, {"key": key}))
        else:
            parsed[key] = resolved
    if model is not None:
        watched: list[str] = [str(field_name)] if kind == "track_on_change" else list(fields or ())
        bad = []
        for name_ in watched:
            try:
                _concrete_field(model, name_)
            except ImproperlyConfigured:
                bad.append(name_)
        if bad:
            key = "field" if kind == "track_on_change" else "fields"
            problems.append(
                ConfigProblem(
                    "field",
                    index,
                    kind,
                    ", ".join(repr(b) for b in bad),
                    {"key": key, "model": model._meta.label},
                )
            )
    if problems or model is None:
        return None, problems
    parsed["model"] = model
    if kind in ("track_on_create", "track_on_change"):
        parsed["name"] = name
    if kind == "track_on_change":
        parsed["field_name"] = field_name
    if kind == "identify_on_save" and fields is not None:
        parsed["fields"] = list(fields)
    if uid:
        parsed["dispatch_uid"] = uid
    return parsed, []


def register_from_settings() -> list[Hook]:
    """(Re)register the hooks of ``CIO_RELIABLE["HOOKS"]``, replacing the previous ones.

    Invalid entries are skipped with an error in the log; the system checks
    (``cio_reliable.E015``-``E018``) stop ``manage.py check``, ``migrate`` and ``runserver``
    on them. Called by ``AppConfig.ready()`` and whenever ``CIO_RELIABLE`` changes.

    Returns:
        The hooks registered from the setting.
    """
    valid, problems = parse_settings(app_settings.HOOKS)
    for problem in problems:
        if problem.code != "duplicate":
            log.error(
                "cio: CIO_RELIABLE['HOOKS'][%d] (%s) is skipped: %s problem; run manage.py check",
                problem.index,
                problem.kind,
                problem.code,
            )
    hooks: list[Hook] = []
    with _lock:
        for uid in [u for u, h in _hooks.items() if h.source == "settings"]:
            del _hooks[uid]
        for _index, kwargs in valid:
            hook = _build(**kwargs)
            _hooks.pop(hook.dispatch_uid, None)
            _hooks[hook.dispatch_uid] = hook
            hooks.append(hook)
        _rebuild()
    return hooks


@on_reset
def _settings_changed() -> None:
    if apps.ready:
        register_from_settings()


# --------------------------------------------------------------------------- backfill


@dataclass
class BackfillResult:
    """What :func:`identify_queryset` did (also passed to its ``progress`` callback).

    Attributes:
        model: The model's label.
        total: Rows selected (counted first when a ``progress`` callback is given), or ``None``.
        processed: Rows read so far.
        identified: Identify operations stored (with ``dry_run``: that would be stored).
        skipped: Rows whose customer id was ``None``.
        invalid: Rows skipped because their operation was invalid (``on_invalid="skip"``).
        chunks: Chunks committed.
        last_pk: The primary key of the last row of the last committed chunk; pass it as
            ``start_after`` to resume.
        dry_run: Nothing was stored.
        seconds: Elapsed time.
    """

    model: str
    total: int | None = None
    processed: int = 0
    identified: int = 0
    skipped: int = 0
    invalid: int = 0
    chunks: int = 0
    last_pk: Any = None
    dry_run: bool = False
    seconds: float = 0.0


class BackfillAborted(Exception):
    """A backfill stopped at a row whose operation is invalid (``on_invalid="raise"``).

    The chunk holding the row was rolled back; every earlier chunk is stored.

    Attributes:
        error: The :class:`~django_cio_reliable.exceptions.InvalidOperation`.
        pk: The primary key of the row.
        result: What was stored before it (``result.last_pk`` is where to resume).
    """

    def __init__(self, error: InvalidOperation, *, pk: Any, result: BackfillResult) -> None:
        self.error = error
        self.pk = pk
        self.result = result
        super().__init__(
            f"{result.model} pk={pk!r}: invalid {error.field} ({error}); "
            f"{result.identified} operations were stored before it; resume with "
            f"start_after={result.last_pk!r}"
        )


def _store_identifies(batch: Sequence[tuple[str, dict[str, Any]]], using: str) -> None:
    """Store one identify per ``(customer id, payload)`` in one ``INSERT`` per batch of rows.

    The rows are what :func:`outbox.enqueue` stores for an identify without a key, and every
    one is announced after commit the same way (``operation_enqueued``, then dispatch).
    """
    from django.db import connections
    from django.db.models.signals import post_save

    from django_cio_reliable import clock, outbox
    from django_cio_reliable.models import Operation

    if (
        not connections[using].features.can_return_rows_from_bulk_insert
        # bulk_create sends no post_save: whoever listens for new operations (such as
        # testing.capture_operations) would miss these rows.
        or post_save.has_listeners(Operation)
    ):
        for person, payload in batch:  # one by one
            outbox.enqueue(
                "identify", person, payload, payload_bytes=validation.json_bytes(payload)
            )
        return
    now = clock.now()
    operations = [
        outbox.new_operation(
            Operation.Kind.IDENTIFY,
            person,
            payload,
            now=now,
            payload_bytes=validation.json_bytes(payload),
        )
        for person, payload in batch
    ]
    outbox.store_many(operations, using)


def identify_hook_for(model: type[models.Model], hook: Hook | str | None = None) -> Hook:
    """The ``identify_on_save`` hook to backfill ``model`` with.

    Args:
        model: The model.
        hook: A hook, its ``dispatch_uid``, or ``None`` for the one identify hook of ``model``.

    Raises:
        ImproperlyConfigured: No such hook, or several and none chosen.
    """
    if isinstance(hook, Hook):
        return hook
    candidates = [
        h
        for h in registered()
        if h.kind == "identify_on_save" and (h.model is model or issubclass(model, h.model))
    ]
    if hook is not None:
        for candidate in candidates:
            if candidate.dispatch_uid == hook:
                return candidate
        raise ImproperlyConfigured(
            f"no identify_on_save hook {hook!r} on {model._meta.label}; registered: "
            + (", ".join(repr(h.dispatch_uid) for h in candidates) or "none")
        )
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ImproperlyConfigured(
            f"no identify_on_save hook is registered for {model._meta.label}: register one or "
            "pass customer_id (and attributes)"
        )
    raise ImproperlyConfigured(
        f"{model._meta.label} has {len(candidates)} identify_on_save hooks; choose one: "
        + ", ".join(repr(h.dispatch_uid) for h in candidates)
    )


def identify_queryset(
    queryset: QuerySet[M],
    *,
    customer_id: Callable[[M], str | int | None] | None = None,
    attributes: Callable[[M], Mapping[str, Any] | None] | None = None,
    hook: Hook | str | None = None,
    chunk_size: int = 1000,
    progress: Callable[[BackfillResult], None] | None = None,
    on_invalid: OnInvalid | None = None,
    start_after: Any = None,
    dry_run: bool = False,
) -> BackfillResult:
    """Identify every row of ``queryset``: the backfill for rows no signal reported.

    ``bulk_create``, ``QuerySet.update`` and raw SQL send no model signals, so hooks never see
    those rows. This walks ``queryset`` in primary-key order, ``chunk_size`` rows at a time
    (keyset pagination: constant memory, no long-lived cursor), and stores one ``identify`` per
    row, one transaction per chunk. Operations always go to the outbox (whatever ``DELIVERY``
    says) and carry no idempotency key. Paused hooks do not affect it.

    Args:
        queryset: Model instances to identify (not sliced; its ordering is replaced by ``pk``).
        customer_id: The person's id from a row (``None`` skips the row). Default: the
            model's registered identify hook.
        attributes: The attributes from a row. Default: the hook's.
        hook: The identify hook (or its ``dispatch_uid``) whose callables to use, when the
            model has several.
        chunk_size: Rows per query and per transaction.
        progress: Called with the running :class:`BackfillResult` after each chunk (and once
            before the first); ``total`` is counted first when it is given.
        on_invalid: ``"raise"`` stops at the first invalid row (:class:`BackfillAborted`);
            ``"skip"`` logs and counts it. Default: the hook's, else ``"raise"``.
        start_after: Resume after this primary key (``BackfillResult.last_pk``).
        dry_run: Build and validate every operation, store nothing.

    Returns:
        What was done.

    Raises:
        BackfillAborted: A row's operation is invalid and ``on_invalid`` is ``"raise"``.
        ImproperlyConfigured: No callables given and no single identify hook registered.
        ValueError: ``chunk_size`` is below 1, or ``queryset`` is sliced.
    """
    from django_cio_reliable.models import Operation

    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    if queryset.query.is_sliced:
        raise ValueError("identify_queryset() needs an unsliced queryset")
    model = queryset.model
    if customer_id is None:
        chosen = identify_hook_for(model, hook)
        customer_id = chosen.customer_id
        if attributes is None:
            attributes = chosen.attributes
        if on_invalid is None:
            on_invalid = chosen.on_invalid
    elif hook is not None:
        raise TypeError("pass either hook or customer_id, not both")
    policy: OnInvalid = on_invalid or "raise"
    result = BackfillResult(model=str(model._meta.label), dry_run=dry_run, last_pk=start_after)
    started = time.monotonic()
    base = queryset.order_by("pk")
    if start_after is not None:
        base = base.filter(pk__gt=start_after)
    if progress is not None:
        result.total = base.count()
        progress(result)
    using = router.db_for_write(Operation) or "default"
    if not dry_run and transaction.get_connection(using).in_atomic_block:
        log.warning(
            "cio: backfill of %s runs inside a transaction: nothing is committed (or dispatched) "
            "before it ends, and memory grows with every row",
            result.model,
        )
    last = start_after
    while True:
        page = base if last is None else base.filter(pk__gt=last)
        rows = list(page[:chunk_size])
        if not rows:
            break
        batch: list[tuple[str, dict[str, Any]]] = []
        skipped = invalid = 0
        for row in rows:
            try:
                cid = customer_id(row)
                if cid is None:
                    skipped += 1
                    continue
                person = validation.customer_id(cid)
                attrs = validation.attributes(attributes(row) if attributes else None)
            except InvalidOperation as error:
                if policy == "raise":
                    result.seconds = time.monotonic() - started
                    raise BackfillAborted(error, pk=row.pk, result=result) from error
                invalid += 1
                log.warning(
                    "cio: backfill skipped %s pk=%s: invalid %s (limit %s, actual %s)",
                    result.model,
                    row.pk,
                    error.field,
                    error.limit,
                    error.actual,
                )
                continue
            batch.append((person, {"attributes": attrs}))
        if batch and not dry_run:
            with transaction.atomic(using=using):
                _store_identifies(batch, using)
        last = rows[-1].pk
        result.processed += len(rows)
        result.identified += len(batch)
        result.skipped += skipped
        result.invalid += invalid
        result.chunks += 1
        result.last_pk = last
        result.seconds = time.monotonic() - started
        del rows, batch
        if progress is not None:
            progress(result)
        if result.chunks % 10 == 0:
            log.info(
                "cio: backfill of %s: %d rows, %d identified",
                result.model,
                result.processed,
                result.identified,
            )
    result.seconds = time.monotonic() - started
    log.info(
        "cio: backfill of %s done: %d rows, %d identified, %d skipped, %d invalid%s",
        result.model,
        result.processed,
        result.identified,
        result.skipped,
        result.invalid,
        " (dry run)" if dry_run else "",
    )
    return result


__all__ = [
    "BackfillAborted",
    "BackfillResult",
    "ConfigProblem",
    "Hook",
    "delete_on_delete",
    "identify_hook_for",
    "identify_on_save",
    "identify_queryset",
    "is_paused",
    "paused",
    "register_from_settings",
    "registered",
    "track_on_change",
    "track_on_create",
    "unregister",
    "unregister_all",
]

"""Hook objects and their registry: the functions that declare, list and remove model hooks."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, TypeVar, get_args

from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.db import models

from django_cio_reliable import validation
from django_cio_reliable.hooks import receivers
from django_cio_reliable.idempotency import _Derive

log = logging.getLogger(__name__)

HookKind = Literal["identify_on_save", "track_on_create", "track_on_change", "delete_on_delete"]
OnInvalid = Literal["raise", "skip"]
HookSource = Literal["code", "settings"]

#: Every hook kind, in the order the docs list them.
KINDS: Final[tuple[HookKind, ...]] = get_args(HookKind)
#: What a hook does with an ``InvalidOperation``: re-raise it (the save fails) or log and skip.
ON_INVALID: Final[tuple[OnInvalid, ...]] = get_args(OnInvalid)

M = TypeVar("M", bound=models.Model)


@dataclass(frozen=True, eq=False)
class Hook:
    """One registered model hook (read-only; built by :func:`identify_on_save` and friends).

    The other attributes are the arguments of the function that registered the hook.

    Attributes:
        kind: One of :data:`KINDS`.
        model: The model class the hook is registered on (its proxy models fire it too).
        dispatch_uid: The hook's identity; registering another hook with the same uid replaces
            this one.
        field: The watched field (``track_on_change``).
        fields: The watched fields of ``identify_on_save`` (``None``: every concrete field).
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


_lock = threading.RLock()
_hooks: dict[str, Hook] = {}


def default_uid(kind: HookKind, model: type[models.Model], name: str, field_name: str) -> str:
    """The ``dispatch_uid`` of a hook registered without one."""
    parts = [kind, str(model._meta.label_lower)]
    if kind == "track_on_change":
        parts.append(field_name)
    if name:
        parts.append(name)
    return ":".join(parts)


def concrete_field(model: type[models.Model], name: str) -> models.Field[Any, Any]:
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


def build(
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
    """Check the arguments of a hook and build it, unregistered (errors: as the callers')."""
    cls = _check_model(model)
    key_callable = None if isinstance(idempotency_key, _Derive) else idempotency_key
    for key, value in (
        ("customer_id", customer_id),
        ("attributes", attributes),
        ("data", data),
        ("timestamp", timestamp),
        ("idempotency_key", key_callable),
    ):
        if not callable(value) and (value is not None or key == "customer_id"):
            raise ImproperlyConfigured(f"{key} must be callable, not {type(value).__name__}")
    if on_invalid not in ON_INVALID:
        raise ImproperlyConfigured(f"on_invalid must be 'raise' or 'skip', not {on_invalid!r}")
    if kind in ("track_on_create", "track_on_change"):
        validation.event_name(name)
    watched: frozenset[str] = frozenset()
    watched_names: tuple[str, ...] | None = None
    if kind == "identify_on_save":
        if fields is None:
            watched = frozenset(f.attname for f in cls._meta.concrete_fields)
        elif isinstance(fields, str) or not fields:
            raise ImproperlyConfigured(
                "fields must be a non-empty list of field names (None watches every field)"
            )
        else:
            watched_names = tuple(fields)
            watched = frozenset(concrete_field(cls, f).attname for f in watched_names)
    elif kind == "track_on_change":
        watched = frozenset({concrete_field(cls, field_name).attname})
    if dispatch_uid is not None and (not isinstance(dispatch_uid, str) or not dispatch_uid):
        raise ImproperlyConfigured("dispatch_uid must be a non-empty string")
    return Hook(
        kind=kind,
        model=cls,
        customer_id=customer_id,
        dispatch_uid=dispatch_uid or default_uid(kind, cls, name, field_name),
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


def update(add: Sequence[Hook] = (), remove: Callable[[Hook], bool] | None = None) -> bool:
    """Unregister the hooks ``remove`` selects, register ``add`` (each replacing the hook with
    its ``dispatch_uid``), rewire the receivers, and say whether any hook was removed."""
    with _lock:
        removed = [uid for uid, hook in _hooks.items() if remove is not None and remove(hook)]
        for uid in removed:
            del _hooks[uid]
        for hook in add:
            if _hooks.pop(hook.dispatch_uid, None) is not None:
                log.debug("cio: hook %s replaced", hook.dispatch_uid)
            _hooks[hook.dispatch_uid] = hook
        receivers.connect(_hooks.values())
    return bool(removed)


def _register(hook: Hook) -> Hook:
    update([hook])
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
        build(
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
        build(
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
        build(
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
        build(
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
    return update(remove=lambda h: h.dispatch_uid == uid)


def unregister_all(*, source: HookSource | None = None) -> None:
    """Unregister every hook (or every hook of one ``source``), disconnecting the receivers.

    Meant for tests. ``CIO_RELIABLE["HOOKS"]`` is registered again the next time the setting
    changes (or call :func:`register_from_settings`).
    """
    update(remove=lambda h: source is None or h.source == source)

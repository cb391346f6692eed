"""The signal receivers that turn model saves and deletes into operations, and :class:`paused`.

:func:`connect` keeps Django's signals wired to exactly the registered hooks: ``post_save`` /
``post_delete`` for each hooked model and its proxies; where a field is watched, also
``post_init`` / ``pre_save`` and a wrapped ``refresh_from_db`` that keep its snapshot: a copy of
the watched fields on the instance, compared with their values when it is saved.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from contextlib import ContextDecorator
from contextvars import ContextVar
from datetime import date, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, cast
from uuid import UUID

from django.apps import apps
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.signals import ModelSignal, post_delete, post_init, post_save, pre_save

from django_cio_reliable import api
from django_cio_reliable.exceptions import InvalidOperation
from django_cio_reliable.idempotency import _Derive

if TYPE_CHECKING:
    from types import TracebackType

    from django_cio_reliable.hooks.registry import Hook

log = logging.getLogger(__name__)

#: Per sender class (a hooked model and its proxies): the hooks fired by post_save / post_delete.
_save_hooks: dict[type[models.Model], tuple[Hook, ...]] = {}
_delete_hooks: dict[type[models.Model], tuple[Hook, ...]] = {}
#: Per sender class: the attnames whose snapshot is kept, and its concrete fields by name and
#: by attname.
_tracked: dict[type[models.Model], frozenset[str]] = {}
_fields: dict[type[models.Model], dict[str, models.Field[Any, Any]]] = {}
_connected: set[tuple[str, type[models.Model]]] = set()
#: Concrete models whose ``refresh_from_db`` is wrapped, and what their class dict held before.
_patched: dict[type[models.Model], Any] = {}
#: The instance attribute that holds the snapshot of the watched fields.
SNAPSHOT_ATTR: Final = "_cio_reliable_snapshot"
_MISSING: Final = object()
# Kept as they are; anything else is deep-copied, so an in-place edit shows as a change.
_IMMUTABLE: Final = (str, int, float, bytes, type(None), Decimal, date, time, timedelta, UUID)
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


def _senders(model: type[models.Model]) -> list[type[models.Model]]:
    """``model`` and its proxy models: Django sends model signals with the proxy as sender."""
    proxies = [m for m in apps.get_models() if m._meta.proxy and issubclass(m, model)]
    return [model, *(m for m in proxies if m is not model)]


def connect(hooks: Iterable[Hook]) -> None:
    """Rebuild the per-sender tables for ``hooks``, (dis)connect the receivers to match."""
    global _save_hooks, _delete_hooks, _tracked, _fields, _connected
    save_hooks: dict[type[models.Model], list[Hook]] = {}
    delete_hooks: dict[type[models.Model], list[Hook]] = {}
    tracked: dict[type[models.Model], set[str]] = {}
    for hook in hooks:
        table = delete_hooks if hook.kind == "delete_on_delete" else save_hooks
        for sender in _senders(hook.model):
            table.setdefault(sender, []).append(hook)
            if hook.watched:
                tracked.setdefault(sender, set()).update(hook.watched)
    _fields = {
        sender: {key: f for f in sender._meta.concrete_fields for key in (f.name, f.attname)}
        for sender in tracked
    }
    _tracked = {sender: frozenset(names) for sender, names in tracked.items()}
    _save_hooks = {sender: tuple(hooks) for sender, hooks in save_hooks.items()}
    _delete_hooks = {sender: tuple(hooks) for sender, hooks in delete_hooks.items()}

    wanted = {(name, sender) for sender in _tracked for name in ("post_init", "pre_save")}
    wanted |= {("post_save", sender) for sender in _save_hooks}
    wanted |= {("post_delete", sender) for sender in _delete_hooks}
    for name, sender in _connected - wanted:
        _RECEIVERS[name][0].disconnect(sender=sender, dispatch_uid=_receiver_uid(name, sender))
    for name, sender in wanted - _connected:
        signal, receiver = _RECEIVERS[name]
        signal.connect(
            receiver, sender=sender, weak=False, dispatch_uid=_receiver_uid(name, sender)
        )
    _connected = wanted

    concrete_tracked = {
        base for sender in _tracked if (base := sender._meta.concrete_model) is not None
    }
    for stale in _patched.keys() - concrete_tracked:
        _unpatch_refresh(stale)
    for base_model in concrete_tracked - _patched.keys():
        _patch_refresh(base_model)


def _receiver_uid(signal_name: str, sender: type[models.Model]) -> str:
    return f"django_cio_reliable.hooks:{signal_name}:{sender._meta.label_lower}"


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


def _tracked_attnames(sender: type[models.Model], names: Iterable[str]) -> frozenset[str]:
    """The tracked attnames among ``names`` (field names or attnames) of ``sender``."""
    fields = _fields.get(sender, {})
    attnames = {f.attname for name in names if (f := fields.get(name)) is not None}
    return frozenset(attnames & _tracked.get(sender, frozenset()))


def _saved_attnames(
    sender: type[models.Model], instance: models.Model, update_fields: Iterable[str] | None
) -> frozenset[str]:
    """The tracked attnames this save wrote."""
    if update_fields is None:
        return frozenset(a for a in _tracked.get(sender, ()) if a in instance.__dict__)
    return _tracked_attnames(sender, update_fields)


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
    adding, pk_field = instance._state.adding, instance._meta.pk
    if adding and (pk_field is None or pk_field.has_default() or pk_field.has_db_default()):
        return  # Django inserts without trying an update first
    saving = _saved_attnames(sender, instance, update_fields)
    snapshot = _snapshot_of(instance)
    missing = sorted(saving if adding else (a for a in saving if a not in snapshot))
    if not missing:
        return
    row = sender._base_manager.using(using).filter(pk=pk).values(*missing).first()
    if row is None:
        return  # it will be an insert
    base = {} if adding else snapshot
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


def _on_post_delete(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    if is_paused():
        return
    for hook in _delete_hooks.get(sender, ()):
        _fire(hook, instance, (instance,))


_RECEIVERS: Final[dict[str, tuple[ModelSignal, Callable[..., None]]]] = {
    "post_init": (post_init, _on_post_init),
    "pre_save": (pre_save, _on_pre_save),
    "post_save": (post_save, _on_post_save),
    "post_delete": (post_delete, _on_post_delete),
}


def _changed(
    sender: type[models.Model], instance: models.Model, old: Mapping[str, Any], attname: str
) -> bool:
    previous = old.get(attname, _MISSING)
    if previous is _MISSING:
        return True
    return not _equal(_fields.get(sender, {}).get(attname), previous, instance.__dict__[attname])


def _equal(field: models.Field[Any, Any] | None, old: Any, new: Any) -> bool:
    try:
        if old == new:
            return True
    except Exception:  # a value whose comparison raises: treat as changed
        return False
    if field is None:
        return False
    try:
        return bool(field.to_python(old) == field.to_python(new))
    except (ValidationError, TypeError, ValueError):
        return False


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
            _fire(hook, instance, (instance,))
    elif hook.kind == "track_on_create":
        if created:
            _fire(hook, instance, (instance,))
    elif hook.kind == "track_on_change" and not created:
        (attname,) = hook.watched
        if attname in saved and _changed(sender, instance, old, attname):
            _fire(hook, instance, (instance, old.get(attname), instance.__dict__[attname]))


def _fire(hook: Hook, instance: models.Model, args: tuple[Any, ...]) -> None:
    """Store the hook's operation for ``instance``; ``args`` are what its callables take."""
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
        operation = _store(hook, instance, cid, args)
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


def _store(hook: Hook, instance: models.Model, cid: Any, args: tuple[Any, ...]) -> Any:
    if hook.kind == "identify_on_save":
        attributes = hook.attributes(instance) if hook.attributes is not None else None
        return api.identify(cid, attributes, idempotency_key=_key(hook, args))
    if hook.kind == "delete_on_delete":
        return api.delete(cid, idempotency_key=_key(hook, args))
    if hook.data is not None:
        data = hook.data(*args)
    elif hook.kind == "track_on_change":
        data = {"field": hook.field, "old": args[1], "new": args[2]}
    else:
        data = None
    when = hook.timestamp(instance) if hook.timestamp is not None else None
    return api.track(cid, hook.name, data, idempotency_key=_key(hook, args), timestamp=when)


def _key(hook: Hook, args: tuple[Any, ...]) -> str | _Derive | None:
    if hook.idempotency_key is None or isinstance(hook.idempotency_key, _Derive):
        return hook.idempotency_key
    value = hook.idempotency_key(*args)
    return None if value is None else cast(str, value)


def _patch_refresh(model: type[models.Model]) -> None:
    """Wrap ``model.refresh_from_db`` so refreshed (and lazily loaded) fields are snapshotted."""
    original = model.__dict__.get("refresh_from_db", _MISSING)
    inherited = model.refresh_from_db

    @functools.wraps(inherited)
    def refresh_from_db(self: models.Model, *args: Any, **kwargs: Any) -> None:
        inherited(self, *args, **kwargs)
        _after_refresh(self, args, kwargs)

    setattr(model, "refresh_from_db", refresh_from_db)  # noqa: B010
    _patched[model] = original


def _unpatch_refresh(model: type[models.Model]) -> None:
    original = _patched.pop(model)
    if original is _MISSING:
        delattr(model, "refresh_from_db")
    else:
        setattr(model, "refresh_from_db", original)  # noqa: B010


def _after_refresh(instance: models.Model, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    sender = type(instance)
    tracked = _tracked.get(sender)
    if not tracked:
        return
    fields = kwargs["fields"] if "fields" in kwargs else (args[1] if len(args) > 1 else None)
    refreshed = tracked if fields is None else _tracked_attnames(sender, fields)
    _store_snapshot(instance, _snapshot_of(instance), refreshed)

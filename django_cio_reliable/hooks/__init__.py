"""Declarative model hooks: identify, track and delete from Django's model signals.

Declared once, in code (usually in an ``AppConfig.ready()``) or in ``CIO_RELIABLE["HOOKS"]``::

    cio.hooks.identify_on_save(User, customer_id=lambda u: u.pk, fields=["email"],
                               attributes=lambda u: {"email": u.email})
    cio.hooks.track_on_create(Order, "order_placed", customer_id=lambda o: o.user_id,
                              idempotency_key=lambda o: f"order-{o.pk}-placed")

Hooks run in ``post_save`` / ``post_delete`` receivers, so the operation is stored in the same
database transaction as the save. Change detection keeps a snapshot of the watched fields on
each instance (taken when it is loaded, refreshed after each save and by ``refresh_from_db``);
a field with no trustworthy snapshot (deferred when loaded, or an instance built by hand) is read
from the database in ``pre_save``. See ``docs/hooks.md``.

No module of this package imports a model at import time: ``django_cio_reliable`` imports it
before the app registry is ready.
"""

from __future__ import annotations

from django_cio_reliable.hooks.backfill import (
    BackfillAborted,
    BackfillResult,
    identify_hook_for,
    identify_queryset,
)
from django_cio_reliable.hooks.receivers import is_paused, paused
from django_cio_reliable.hooks.registry import (
    KINDS,
    ON_INVALID,
    Hook,
    delete_on_delete,
    identify_on_save,
    registered,
    track_on_change,
    track_on_create,
    unregister,
    unregister_all,
)
from django_cio_reliable.hooks.settings import ConfigProblem, parse_settings, register_from_settings

__all__ = [
    "KINDS",
    "ON_INVALID",
    "BackfillAborted",
    "BackfillResult",
    "ConfigProblem",
    "Hook",
    "delete_on_delete",
    "identify_hook_for",
    "identify_on_save",
    "identify_queryset",
    "is_paused",
    "parse_settings",
    "paused",
    "register_from_settings",
    "registered",
    "track_on_change",
    "track_on_create",
    "unregister",
    "unregister_all",
]

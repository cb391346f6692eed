"""Model hooks, ``hooks.paused()``, ``cio.testing.capture_operations``, the backfill and its
command, the ``HOOKS`` setting and its checks, and the documented app signals."""

from __future__ import annotations

import gc
import logging
import re
import threading
import time
import tracemalloc
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from io import StringIO
from pathlib import Path
from typing import Any, cast

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, models, transaction
from django.db.models import F
from django.db.models.signals import post_delete, post_init, post_save
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

import django_cio_reliable as cio
from django_cio_reliable import checks, hooks, outbox, signals
from django_cio_reliable.models import Operation
from django_cio_reliable.testing import CapturedOperations, FakeCustomerIO, capture_operations
from tests.hookapp.models import Customer, Order, Tag, VipCustomer

DOCS = Path(__file__).resolve().parent.parent / "docs"
LONG_BIO = "b" * 1001  # over Customer.io's 1000-byte attribute value limit


@pytest.fixture(autouse=True)
def no_dispatch(no_kick: FakeCustomerIO, settings: Any) -> FakeCustomerIO:
    """Committed operations are stored, never delivered (and never sent off this machine)."""
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "RATE_LIMIT": 10_000}
    return no_kick


@pytest.fixture(autouse=True)
def clean_hooks() -> Iterator[None]:
    hooks.unregister_all()
    yield
    hooks.unregister_all()


def customer_attrs(c: Customer) -> dict[str, Any]:
    return {"email": c.email, "first_name": c.first_name}


@pytest.fixture
def identify_hook() -> hooks.Hook:
    return cio.hooks.identify_on_save(
        Customer,
        customer_id=lambda c: c.pk,
        attributes=customer_attrs,
        fields=["email", "first_name"],
    )


def kinds() -> list[tuple[str, str]]:
    return [(op.kind, op.customer_id) for op in Operation.objects.order_by("pk")]


def identifies() -> list[dict[str, Any]]:
    return [
        op.payload["attributes"] for op in Operation.objects.filter(kind="identify").order_by("pk")
    ]


# --------------------------------------------------------------------------- identify_on_save


@pytest.mark.django_db
def test_identify_on_create_and_only_when_a_watched_field_changes(
    identify_hook: hooks.Hook,
) -> None:
    c = Customer.objects.create(email="ada@example.com", first_name="Ada")
    assert identifies() == [{"email": "ada@example.com", "first_name": "Ada"}]

    c.last_login = timezone.now()
    c.plan = "pro"
    c.save()  # unwatched fields only: no identify storm from logins
    c.save()  # nothing changed
    assert len(identifies()) == 1

    c.email = "ada@example.org"
    c.save()
    assert identifies()[-1] == {"email": "ada@example.org", "first_name": "Ada"}
    c.save()
    assert len(identifies()) == 2

    c.email = "ada@example.org"  # same value again
    c.save()
    assert len(identifies()) == 2
    assert Operation.objects.get(pk=Operation.objects.latest("pk").pk).customer_id == str(c.pk)


@pytest.mark.django_db
def test_update_fields_limit_what_counts_as_changed(identify_hook: hooks.Hook) -> None:
    c = Customer.objects.create(email="a@example.com")
    c.email = "b@example.com"
    c.last_login = timezone.now()
    c.save(update_fields=["last_login"])  # like django.contrib.auth's update_last_login
    assert len(identifies()) == 1

    c.save(update_fields=["email"])
    assert identifies()[-1]["email"] == "b@example.com"
    c.save(update_fields=["email", "first_name"])
    assert len(identifies()) == 2


@pytest.mark.django_db
def test_saving_a_loaded_instance_reads_nothing_back(identify_hook: hooks.Hook) -> None:
    pk = Customer.objects.create(email="a@example.com").pk
    c = Customer.objects.get(pk=pk)
    c.email = "b@example.com"
    with CaptureQueriesContext(connection) as queries:
        c.save()
    selects = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT")]
    assert not [sql for sql in selects if "hookapp_customer" in sql]
    assert len(identifies()) == 2


@pytest.mark.django_db
def test_deferred_fields(identify_hook: hooks.Hook) -> None:
    pk = Customer.objects.create(email="a@example.com", first_name="Ada").pk

    c = Customer.objects.only("last_login").get(pk=pk)
    c.last_login = timezone.now()
    c.save()  # saves last_login only
    assert len(identifies()) == 1

    c = Customer.objects.only("last_login").get(pk=pk)
    c.email = "a@example.com"  # set without loading it, to the value it already has
    c.save()
    assert len(identifies()) == 1

    c = Customer.objects.only("last_login").get(pk=pk)
    c.email = "new@example.com"  # set without loading it: the old value is read in pre_save
    c.save()
    assert identifies()[-1] == {"email": "new@example.com", "first_name": "Ada"}

    c = Customer.objects.defer("first_name").get(pk=pk)
    assert c.first_name == "Ada"  # loaded lazily, then left alone
    c.save()
    assert len(identifies()) == 2

    c = Customer.objects.defer("first_name").get(pk=pk)
    assert c.first_name == "Ada"
    c.first_name = "Augusta"
    c.save()
    assert identifies()[-1] == {"email": "new@example.com", "first_name": "Augusta"}


@pytest.mark.django_db
def test_refresh_from_db_resets_the_snapshot(identify_hook: hooks.Hook) -> None:
    c = Customer.objects.create(email="a@example.com", first_name="Ada")
    Customer.objects.filter(pk=c.pk).update(email="z@example.com")  # no signal
    c.refresh_from_db()
    assert c.email == "z@example.com"
    c.save()  # nothing changed compared with the database
    assert len(identifies()) == 1

    c.first_name = "Bea"
    c.email = "y@example.com"
    c.refresh_from_db(fields=["email"])  # email reverted, first_name still changed
    c.save()
    assert identifies()[-1] == {"email": "z@example.com", "first_name": "Bea"}


@pytest.mark.django_db
def test_instance_built_by_hand_is_compared_with_the_database(identify_hook: hooks.Hook) -> None:
    existing = Customer.objects.create(email="a@example.com", first_name="Ada")

    Customer(pk=existing.pk, email="a@example.com", first_name="Ada").save()
    assert len(identifies()) == 1

    Customer(pk=existing.pk, email="b@example.com", first_name="Ada").save()
    assert identifies()[-1]["email"] == "b@example.com"

    Customer(pk=existing.pk + 1000, email="c@example.com").save()  # an insert
    assert [op.customer_id for op in Operation.objects.order_by("pk")][-1] == str(
        existing.pk + 1000
    )


@pytest.mark.django_db
def test_fields_none_watches_every_concrete_field() -> None:
    cio.hooks.identify_on_save(Customer, customer_id=lambda c: c.pk)
    c = Customer.objects.create(email="a@example.com")
    c.save()
    assert len(identifies()) == 1
    c.prefs["theme"] = "dark"  # mutated in place: the snapshot is a copy
    c.save()
    assert len(identifies()) == 2
    c.plan = "pro"
    c.save()
    assert len(identifies()) == 3
    assert identifies()[-1] == {}


@pytest.mark.django_db
def test_proxy_models_fire_the_hooks_of_their_model(identify_hook: hooks.Hook) -> None:
    vip = VipCustomer.objects.create(email="vip@example.com")
    vip.email = "vip2@example.com"
    vip.save()
    assert [a["email"] for a in identifies()] == ["vip@example.com", "vip2@example.com"]


@pytest.mark.django_db
def test_customer_id_none_skips_the_instance() -> None:
    cio.hooks.identify_on_save(Customer, customer_id=lambda c: c.email or None)
    Customer.objects.create()
    Customer.objects.create(email="a@example.com")
    assert kinds() == [("identify", "a@example.com")]


# --------------------------------------------------------------------------- track hooks


@pytest.fixture
def order_hooks() -> list[hooks.Hook]:
    return [
        cio.hooks.track_on_create(
            Order,
            "order_placed",
            customer_id=lambda o: o.customer_id,
            data=lambda o: {"total": o.total, "status": o.status},
            idempotency_key=lambda o: f"order-{o.pk}-placed",
        ),
        cio.hooks.track_on_change(
            Order,
            "status",
            "order_status_changed",
            customer_id=lambda o: o.customer_id,
            data=lambda o, old, new: {"from": old, "to": new},
        ),
    ]


@pytest.mark.django_db
def test_track_on_create(order_hooks: list[hooks.Hook]) -> None:
    customer = Customer.objects.create()
    order = Order.objects.create(customer=customer, total=Decimal("42.50"))
    (op,) = Operation.objects.all()
    assert (op.kind, op.name, op.customer_id) == ("track", "order_placed", str(customer.pk))
    assert op.payload["data"] == {"total": 42.5, "status": "new"}
    assert op.idempotency_key == f"order-{order.pk}-placed"
    assert len(op.event_id) == 26

    order.note = "gift"
    order.save()
    Order.objects.create(total=1)  # a guest order: customer_id is None
    assert Operation.objects.count() == 1


@pytest.mark.django_db
def test_track_on_change_passes_old_and_new(order_hooks: list[hooks.Hook]) -> None:
    customer = Customer.objects.create()
    order = Order.objects.create(customer=customer)
    order.status = "paid"
    order.save()
    order.save()
    order.note = "unrelated"
    order.save()
    order.status = "shipped"
    order.save(update_fields=["status"])
    changes = Operation.objects.filter(name="order_status_changed").order_by("pk")
    assert [op.payload["data"] for op in changes] == [
        {"from": "new", "to": "paid"},
        {"from": "paid", "to": "shipped"},
    ]


@pytest.mark.django_db
def test_track_on_change_default_data_and_foreign_keys() -> None:
    cio.hooks.track_on_change(Order, "customer", "order_moved", customer_id=lambda o: o.pk)
    first, second = Customer.objects.create(), Customer.objects.create()
    order = Order.objects.create(customer=first)
    order.customer = second
    order.save()
    (op,) = Operation.objects.all()
    assert op.payload["data"] == {"field": "customer", "old": first.pk, "new": second.pk}


@pytest.mark.django_db
def test_track_on_change_sees_the_value_an_f_expression_computed() -> None:
    cio.hooks.track_on_change(
        Order,
        "total",
        "order_total_changed",
        customer_id=lambda o: o.pk,
        data=lambda o, old, new: {"old": old, "new": new},
    )
    order = Order.objects.create(total=Decimal("10.00"))
    order.total = F("total") + 5
    order.save()
    (op,) = Operation.objects.all()
    assert op.payload["data"] == {"old": 10, "new": 15}
    assert order.total == Decimal("15.00")
    order.save()
    assert Operation.objects.count() == 1


@pytest.mark.django_db
def test_track_timestamp_callable() -> None:
    moment = timezone.now() - timedelta(days=1)
    cio.hooks.track_on_create(
        Order, "order_placed", customer_id=lambda o: o.pk, timestamp=lambda o: moment
    )
    Order.objects.create()
    (op,) = Operation.objects.all()
    assert op.payload["timestamp"] == int(moment.timestamp())


# --------------------------------------------------------------------------- delete_on_delete


@pytest.mark.django_db
def test_delete_on_delete_fires_for_instances_querysets_and_cascades() -> None:
    cio.hooks.delete_on_delete(Customer, customer_id=lambda c: c.pk)
    cio.hooks.track_on_create(Order, "order_placed", customer_id=lambda o: o.customer_id)
    a, b, c = (Customer.objects.create() for _ in range(3))
    expected = sorted(str(x.pk) for x in (a, b, c))
    Order.objects.create(customer=a)
    a.delete()
    Customer.objects.filter(pk__in=[b.pk, c.pk]).delete()
    deletes = Operation.objects.filter(kind="delete").order_by("pk")
    assert sorted(op.customer_id for op in deletes) == expected


@pytest.mark.django_db
def test_receivers_are_connected_only_where_needed() -> None:
    cio.hooks.track_on_create(Order, "order_placed", customer_id=lambda o: o.customer_id)
    # No post_delete receiver on Order: Django keeps its fast bulk delete.
    assert post_save.has_listeners(Order)
    assert not post_delete.has_listeners(Order)
    assert not post_init.has_listeners(Order)
    cio.hooks.delete_on_delete(Customer, customer_id=lambda c: c.pk)
    assert post_delete.has_listeners(Customer)
    assert post_delete.has_listeners(VipCustomer)
    assert Customer.refresh_from_db is models.Model.refresh_from_db


# --------------------------------------------------------------------------- transactions, raw


@pytest.mark.django_db
def test_rollback_stores_no_operation(identify_hook: hooks.Hook) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        Customer.objects.create(email="a@example.com")
        assert Operation.objects.count() == 1  # in the save's transaction
        raise RuntimeError("rollback")
    assert Operation.objects.count() == 0
    assert Customer.objects.count() == 0


@pytest.mark.django_db
def test_fixtures_are_loaded_without_operations() -> None:
    cio.hooks.identify_on_save(Customer, customer_id=lambda c: c.pk)
    cio.hooks.track_on_create(Order, "order_placed", customer_id=lambda o: o.customer_id)
    cio.hooks.track_on_change(Order, "status", "status_changed", customer_id=lambda o: o.pk)
    call_command("loaddata", "hookapp_people", verbosity=0)
    assert Customer.objects.count() == 2
    assert Order.objects.count() == 1
    assert Operation.objects.count() == 0
    call_command("loaddata", "hookapp_people", verbosity=0)  # over existing rows: updates
    assert Operation.objects.count() == 0


@pytest.mark.django_db
def test_bulk_create_and_queryset_update_send_no_signals(identify_hook: hooks.Hook) -> None:
    """Django's documented limitation: hooks never see these; identify_queryset backfills."""
    Customer.objects.bulk_create([Customer(email=f"{i}@example.com") for i in range(3)])
    Customer.objects.update(first_name="Everyone")
    assert Operation.objects.count() == 0
    result = cio.hooks.identify_queryset(Customer.objects.all())
    assert result.identified == 3
    assert {a["first_name"] for a in identifies()} == {"Everyone"}


# --------------------------------------------------------------------------- InvalidOperation


@pytest.mark.django_db
def test_invalid_operation_fails_the_save_by_default() -> None:
    cio.hooks.identify_on_save(
        Customer, customer_id=lambda c: c.pk, attributes=lambda c: {"bio": c.bio}
    )
    with pytest.raises(cio.InvalidOperation) as excinfo, transaction.atomic():
        Customer.objects.create(bio=LONG_BIO)
    assert excinfo.value.field == 'attributes["bio"]'
    assert Customer.objects.count() == 0  # the save's transaction rolled back
    assert Operation.objects.count() == 0


@pytest.mark.django_db
def test_invalid_operation_is_logged_and_skipped_when_asked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cio.hooks.identify_on_save(
        Customer,
        customer_id=lambda c: c.pk,
        attributes=lambda c: {"bio": c.bio},
        on_invalid="skip",
    )
    with caplog.at_level(logging.WARNING, logger="django_cio_reliable"):
        customer = Customer.objects.create(bio=LONG_BIO)
    assert Customer.objects.filter(pk=customer.pk).exists()
    assert Operation.objects.count() == 0
    (record,) = [r for r in caplog.records if "skipped" in r.getMessage()]
    message = record.getMessage()
    assert 'invalid attributes["bio"] (limit 1000 bytes, actual 1001 bytes)' in message
    assert f"pk={customer.pk}" in message
    assert LONG_BIO[:20] not in message  # never the payload
    customer.bio = "short"
    customer.save()
    assert Operation.objects.count() == 1


@pytest.mark.django_db
def test_other_exceptions_of_a_callable_always_propagate() -> None:
    def broken(customer: Customer) -> dict[str, Any]:
        raise KeyError("bug")

    cio.hooks.identify_on_save(
        Customer, customer_id=lambda c: c.pk, attributes=broken, on_invalid="skip"
    )
    with pytest.raises(KeyError):
        Customer.objects.create()


# --------------------------------------------------------------------------- registration


@pytest.mark.django_db
def test_registering_twice_does_not_double_fire() -> None:
    for _ in range(2):
        cio.hooks.identify_on_save(Customer, customer_id=lambda c: c.pk)
    assert [h.dispatch_uid for h in hooks.registered()] == ["identify_on_save:hookapp.customer"]
    Customer.objects.create()
    assert Operation.objects.count() == 1

    cio.hooks.identify_on_save(
        Customer, customer_id=lambda c: f"alt-{c.pk}", dispatch_uid="alternate"
    )
    Customer.objects.create()
    assert Operation.objects.count() == 3


@pytest.mark.django_db
def test_unregister_restores_everything(identify_hook: hooks.Hook) -> None:
    assert Customer.refresh_from_db is not models.Model.refresh_from_db
    assert hooks.unregister(identify_hook)
    assert not hooks.unregister(identify_hook)
    assert Customer.refresh_from_db is models.Model.refresh_from_db
    assert not post_save.has_listeners(Customer)
    assert not post_init.has_listeners(Customer)
    Customer.objects.create()
    assert Operation.objects.count() == 0


class AbstractPerson(models.Model):
    class Meta:
        abstract = True
        app_label = "hookapp"


def test_registration_errors() -> None:
    def cid(c: Customer) -> int:
        return c.pk

    with pytest.raises(ImproperlyConfigured, match="no field 'emial'"):
        cio.hooks.identify_on_save(Customer, customer_id=cid, fields=["emial"])
    with pytest.raises(ImproperlyConfigured, match="not a concrete field"):
        cio.hooks.identify_on_save(Customer, customer_id=cid, fields=["tags"])
    with pytest.raises(ImproperlyConfigured, match="non-empty list"):
        cio.hooks.identify_on_save(Customer, customer_id=cid, fields="email")
    with pytest.raises(ImproperlyConfigured, match="customer_id must be callable"):
        cio.hooks.delete_on_delete(Customer, customer_id="pk")  # type: ignore[arg-type]
    with pytest.raises(ImproperlyConfigured, match="on_invalid"):
        cio.hooks.delete_on_delete(Customer, customer_id=cid, on_invalid="ignore")  # type: ignore[arg-type]
    with pytest.raises(ImproperlyConfigured, match="model class"):
        cio.hooks.delete_on_delete("hookapp.Customer", customer_id=cid)  # type: ignore[arg-type]
    with pytest.raises(ImproperlyConfigured, match="abstract"):
        cio.hooks.delete_on_delete(cast(Any, AbstractPerson), customer_id=cid)
    with pytest.raises(ImproperlyConfigured, match="model class"):
        cio.hooks.delete_on_delete(cast(Any, models.Model), customer_id=cid)
    with pytest.raises(cio.InvalidOperation):
        cio.hooks.track_on_create(Order, "x" * 101, customer_id=lambda o: o.pk)
    with pytest.raises(ImproperlyConfigured, match="no field"):
        cio.hooks.track_on_change(Order, "state", "changed", customer_id=lambda o: o.pk)
    assert hooks.registered() == []
    assert Tag._meta.label == "hookapp.Tag"


# --------------------------------------------------------------------------- paused


@pytest.mark.django_db
def test_paused_block_decorator_and_nesting(identify_hook: hooks.Hook) -> None:
    with cio.hooks.paused():
        Customer.objects.create(email="a@example.com")
        with cio.hooks.paused():
            Customer.objects.create(email="b@example.com")
        assert hooks.is_paused()
        Customer.objects.create(email="c@example.com")  # still paused after the inner block
    assert not hooks.is_paused()
    assert Operation.objects.count() == 0

    @cio.hooks.paused()
    def import_rows() -> None:
        assert hooks.is_paused()
        Customer.objects.create(email="d@example.com")

    import_rows()
    import_rows()
    assert not hooks.is_paused()
    assert Operation.objects.count() == 0
    Customer.objects.create(email="e@example.com")
    assert [a["email"] for a in identifies()] == ["e@example.com"]


@pytest.mark.django_db
def test_a_change_made_while_paused_is_not_reported_later(identify_hook: hooks.Hook) -> None:
    with cio.hooks.paused():
        c = Customer.objects.create(email="a@example.com")
        c.email = "b@example.com"
        c.save()
    c.save()
    assert Operation.objects.count() == 0


@pytest.mark.django_db
def test_paused_exits_on_exceptions(identify_hook: hooks.Hook) -> None:
    with pytest.raises(ValueError), cio.hooks.paused():
        raise ValueError
    assert not hooks.is_paused()


@pytest.mark.django_db(transaction=True)
def test_paused_does_not_reach_other_threads(identify_hook: hooks.Hook) -> None:
    seen: list[bool] = []

    def other_thread() -> None:
        try:
            seen.append(hooks.is_paused())
            Customer.objects.create(email="thread@example.com")
        finally:
            connection.close()

    with cio.hooks.paused():
        Customer.objects.create(email="main@example.com")
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join(30)
    assert seen == [False]
    assert [a["email"] for a in identifies()] == ["thread@example.com"]


# --------------------------------------------------------------------------- CIO_RELIABLE["HOOKS"]


def settings_hooks() -> list[dict[str, Any]]:
    return [
        {
            "kind": "identify_on_save",
            "model": "hookapp.Customer",
            "customer_id": "tests.hookapp.cio.customer_id",
            "attributes": "tests.hookapp.cio.customer_attributes",
            "fields": ["email", "first_name", "plan"],
        },
        {
            "kind": "track_on_create",
            "model": "hookapp.Order",
            "name": "order_placed",
            "customer_id": "tests.hookapp.cio.order_customer_id",
            "data": "tests.hookapp.cio.order_data",
            "idempotency_key": "tests.hookapp.cio.order_placed_key",
        },
        {
            "kind": "track_on_change",
            "model": "hookapp.Order",
            "field": "status",
            "name": "order_status_changed",
            "customer_id": "tests.hookapp.cio.order_customer_id",
            "data": "tests.hookapp.cio.status_change",
            "on_invalid": "skip",
        },
        {
            "kind": "delete_on_delete",
            "model": "hookapp.Customer",
            "customer_id": "tests.hookapp.cio.customer_id",
        },
    ]


@pytest.mark.django_db
def test_hooks_from_settings(settings: Any) -> None:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "HOOKS": settings_hooks()}
    assert [(h.dispatch_uid, h.source) for h in hooks.registered()] == [
        ("identify_on_save:hookapp.customer", "settings"),
        ("track_on_create:hookapp.order:order_placed", "settings"),
        ("track_on_change:hookapp.order:status:order_status_changed", "settings"),
        ("delete_on_delete:hookapp.customer", "settings"),
    ]
    assert checks.check_hooks(None) == []

    with capture_operations() as ops:
        customer = Customer.objects.create(email="a@example.com", first_name="Ada")
        order = Order.objects.create(customer=customer, total=Decimal("9.99"))
        order.status = "paid"
        order.save()
        customer.last_login = timezone.now()
        customer.save()
        customer.delete()
    ops.assert_enqueued_once(
        "identify", customer_id=customer.pk, attributes={"email": "a@example.com", "plan": "free"}
    )
    ops.assert_enqueued_once(
        "track",
        name="order_placed",
        data={"total": Decimal("9.99")},
        idempotency_key=f"order-{order.pk}-placed",
    )
    ops.assert_enqueued_once("track", name="order_status_changed", data={"from": "new"})
    ops.assert_enqueued_once("delete", customer_id=customer.pk)
    assert len(ops) == 4

    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "HOOKS": settings_hooks()[:1]}
    assert len(hooks.registered()) == 1
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "HOOKS": []}
    assert hooks.registered() == []


@pytest.mark.django_db
def test_settings_reload_keeps_code_hooks(settings: Any) -> None:
    code_hook = cio.hooks.delete_on_delete(Order, customer_id=lambda o: o.pk)
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "HOOKS": settings_hooks()[:1]}
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "HOOKS": []}
    assert hooks.registered() == [code_hook]


@pytest.mark.django_db
def test_invalid_settings_entries_are_skipped_and_logged(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    bad = {**settings_hooks()[0], "customer_id": "tests.hookapp.cio.nope"}
    with caplog.at_level(logging.ERROR, logger="django_cio_reliable"):
        settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "HOOKS": [bad, settings_hooks()[3]]}
    assert [h.kind for h in hooks.registered()] == ["delete_on_delete"]
    assert "CIO_RELIABLE['HOOKS'][0] (identify_on_save) is skipped" in caplog.text


@pytest.mark.django_db
def test_settings_entries_may_hold_callables(settings: Any) -> None:
    settings.CIO_RELIABLE = {
        **settings.CIO_RELIABLE,
        "HOOKS": [
            {
                "kind": "track_on_create",
                "model": "hookapp.Order",
                "name": "order_placed",
                "customer_id": lambda o: o.pk,
                "idempotency_key": cio.DERIVE,
            }
        ],
    }
    order = Order.objects.create()
    (op,) = Operation.objects.all()
    assert op.customer_id == str(order.pk)
    assert op.idempotency_key.startswith("derived:")


def hook_check_ids(settings: Any, entries: list[Any]) -> list[tuple[str, str]]:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "HOOKS": entries}
    return [(m.id or "", m.msg) for m in checks.check_hooks(None)]


GOOD_ENTRY: dict[str, Any] = {
    "kind": "identify_on_save",
    "model": "hookapp.Customer",
    "customer_id": "tests.hookapp.cio.customer_id",
}


@pytest.mark.parametrize(
    ("entry", "check_id", "text"),
    [
        pytest.param("identify", "cio_reliable.E015", "it is a str, not a dict", id="not-a-dict"),
        pytest.param(
            {**GOOD_ENTRY, "kind": "identify"}, "cio_reliable.E015", "'identify'", id="unknown-kind"
        ),
        pytest.param(
            {"model": "hookapp.Customer"}, "cio_reliable.E015", "'kind' is missing", id="no-kind"
        ),
        pytest.param(
            {"kind": "track_on_create", "model": "hookapp.Order"},
            "cio_reliable.E015",
            "missing 'customer_id', 'name'",
            id="missing-keys",
        ),
        pytest.param(
            {**GOOD_ENTRY, "data": "tests.hookapp.cio.order_data"},
            "cio_reliable.E015",
            "unknown keys for identify_on_save: 'data'",
            id="key-of-another-kind",
        ),
        pytest.param(
            {**GOOD_ENTRY, "fields": "email"},
            "cio_reliable.E015",
            "'fields'",
            id="fields-not-a-list",
        ),
        pytest.param(
            {**GOOD_ENTRY, "on_invalid": "ignore"},
            "cio_reliable.E015",
            "on_invalid",
            id="on-invalid",
        ),
        pytest.param(
            {**GOOD_ENTRY, "kind": "track_on_create", "name": "x" * 101},
            "cio_reliable.E015",
            "'name' is not a valid event name",
            id="long-name",
        ),
        pytest.param(
            {**GOOD_ENTRY, "model": "hookapp.Nope"},
            "cio_reliable.E016",
            "not an installed model",
            id="unknown-model",
        ),
        pytest.param(
            {**GOOD_ENTRY, "model": "Customer"},
            "cio_reliable.E016",
            "not a model label",
            id="not-a-label",
        ),
        pytest.param(
            {**GOOD_ENTRY, "customer_id": "tests.hookapp.cio.nope"},
            "cio_reliable.E017",
            "cannot be imported",
            id="missing-callable",
        ),
        pytest.param(
            {**GOOD_ENTRY, "customer_id": "tests.hookapp.cio.NOT_CALLABLE"},
            "cio_reliable.E017",
            "which is an int, not a callable",
            id="not-callable",
        ),
        pytest.param(
            {**GOOD_ENTRY, "attributes": 42},
            "cio_reliable.E017",
            "is an int, not a dotted path",
            id="not-a-path",
        ),
        pytest.param(
            {**GOOD_ENTRY, "customer_id": cio.DERIVE},
            "cio_reliable.E017",
            "only 'idempotency_key'",
            id="derive-misplaced",
        ),
        pytest.param(
            {**GOOD_ENTRY, "fields": ["email", "emial"]},
            "cio_reliable.E018",
            "'emial'",
            id="unknown-field",
        ),
        pytest.param(
            {**GOOD_ENTRY, "fields": ["tags"]}, "cio_reliable.E018", "'tags'", id="m2m-field"
        ),
        pytest.param(
            {
                "kind": "track_on_change",
                "model": "hookapp.Order",
                "field": "state",
                "name": "changed",
                "customer_id": "tests.hookapp.cio.order_customer_id",
            },
            "cio_reliable.E018",
            "'field' names 'state'",
            id="unknown-change-field",
        ),
    ],
)
def test_hook_checks(settings: Any, entry: Any, check_id: str, text: str) -> None:
    ((found_id, message),) = hook_check_ids(settings, [entry])
    assert found_id == check_id
    assert text in message
    assert "CIO_RELIABLE['HOOKS'][0]" in message


def test_hook_checks_report_every_problem_and_duplicates(settings: Any) -> None:
    entries = [
        GOOD_ENTRY,
        {**GOOD_ENTRY, "customer_id": "tests.hookapp.cio.nope", "attributes": 3},
        dict(GOOD_ENTRY),
        {**GOOD_ENTRY, "dispatch_uid": "second"},
    ]
    found = hook_check_ids(settings, entries)
    assert [i for i, _ in found] == ["cio_reliable.E017", "cio_reliable.E017", "cio_reliable.W008"]
    assert "'customer_id'" in found[0][1] and "'attributes'" in found[1][1]
    assert "CIO_RELIABLE['HOOKS'][2]" in found[2][1] and "HOOKS'][0]" in found[2][1]


def test_hook_checks_leave_a_non_list_to_e003(settings: Any) -> None:
    assert hook_check_ids(settings, GOOD_ENTRY) == []  # type: ignore[arg-type]


def test_valid_settings_hooks_pass_the_checks(settings: Any) -> None:
    assert hook_check_ids(settings, settings_hooks()) == []


# --------------------------------------------------------------------------- cio.testing


@pytest.mark.django_db
def test_capture_operations_assertions() -> None:
    cio.identify("before", {"plan": "x"})
    with capture_operations() as ops:
        cio.identify(7, {"email": "a@example.com", "plan": "pro"})
        cio.track(7, "order_placed", {"total": Decimal("42.00"), "items": 2}, idempotency_key="k1")
        cio.track_anonymous("anon-1", "page_viewed")
        cio.delete(8)
        with pytest.raises(RuntimeError), transaction.atomic():
            cio.track(7, "rolled_back")
            raise RuntimeError
    cio.identify("after")

    assert isinstance(ops, CapturedOperations)
    assert [op.kind for op in ops] == ["identify", "track", "track_anonymous", "delete"]
    assert len(ops) == 4
    ops.assert_enqueued("identify")
    ops.assert_enqueued(count=4)
    op = ops.assert_enqueued_once("identify", customer_id=7, attributes={"plan": "pro"})
    assert op.customer_id == "7"
    ops.assert_enqueued_once("track", name="order_placed", data={"total": 42}, customer_id="7")
    ops.assert_enqueued_once("track", idempotency_key="k1")
    ops.assert_enqueued_once("track_anonymous", customer_id="anon-1", name="page_viewed")
    ops.assert_not_enqueued("track", name="rolled_back")
    ops.assert_not_enqueued("identify", customer_id="before")
    ops.assert_not_enqueued("identify", customer_id="after")
    ops.assert_not_enqueued("identify", attributes={"plan": "free"})
    ops.assert_not_enqueued("identify", attributes={"missing": None})
    assert ops.filter("track", data={"items": 2, "total": 42}) == ops.filter("track")

    with pytest.raises(AssertionError) as excinfo:
        ops.assert_enqueued_once("track", name="order_shipped")
    text = str(excinfo.value)
    assert "expected exactly 1 track matching name='order_shipped'; found 0." in text
    assert "track 'order_placed' customer_id='7'" in text
    with pytest.raises(AssertionError, match="found 1"):
        ops.assert_not_enqueued("delete")
    with pytest.raises(AssertionError, match="expected no operation"):
        ops.assert_nothing_enqueued()
    with pytest.raises(ValueError, match="unknown operation kind 'identity'"):
        ops.assert_enqueued("identity")

    ops.clear()
    assert len(ops) == 0
    ops.assert_nothing_enqueued()


@pytest.mark.django_db
def test_capture_operations_with_hooks(identify_hook: hooks.Hook) -> None:
    with cio.testing.capture_operations() as ops:
        Customer.objects.create(email="a@example.com")
        with cio.hooks.paused():
            Customer.objects.create(email="b@example.com")
    ops.assert_enqueued_once("identify", attributes={"email": "a@example.com"})
    with pytest.raises(AssertionError, match=r"Captured 1:\n  #\d+ identify"):
        ops.assert_enqueued("identify", attributes={"email": "b@example.com"})


@pytest.mark.django_db
def test_capture_operations_sees_a_backfill(identify_hook: hooks.Hook) -> None:
    """The backfill stores with bulk_create (no post_save) unless someone is capturing."""
    with cio.hooks.paused():
        Customer.objects.bulk_create([Customer(email=f"{i}@example.com") for i in range(3)])
    with cio.testing.capture_operations() as ops:
        result = cio.hooks.identify_queryset(Customer.objects.all())
    assert result.identified == 3
    for i in range(3):
        ops.assert_enqueued_once("identify", attributes={"email": f"{i}@example.com"})


# --------------------------------------------------------------------------- identify_queryset


@pytest.mark.django_db(transaction=True)
def test_identify_queryset_streams_in_chunks(identify_hook: hooks.Hook) -> None:
    Customer.objects.bulk_create(
        [Customer(email=f"{i}@example.com", first_name="" if i % 5 else "x") for i in range(25)]
    )
    seen: list[tuple[int, int | None, int]] = []

    def progress(result: hooks.BackfillResult) -> None:
        seen.append((result.processed, result.total, result.chunks))

    result = cio.hooks.identify_queryset(
        Customer.objects.filter(first_name=""), chunk_size=7, progress=progress
    )
    assert (result.total, result.processed, result.identified, result.chunks) == (20, 20, 20, 3)
    assert seen == [(0, 20, 0), (7, 20, 1), (14, 20, 2), (20, 20, 3)]
    assert result.last_pk == Customer.objects.filter(first_name="").order_by("pk").last().pk
    assert Operation.objects.filter(kind="identify").count() == 20
    assert {op.customer_id for op in Operation.objects.all()} == {
        str(pk) for pk in Customer.objects.filter(first_name="").values_list("pk", flat=True)
    }


@pytest.mark.django_db(transaction=True)
def test_identify_queryset_options(identify_hook: hooks.Hook, settings: Any) -> None:
    customers = Customer.objects.bulk_create(
        [Customer(email=f"{i}@example.com") for i in range(10)]
    )
    pks = sorted(c.pk for c in customers)

    dry = cio.hooks.identify_queryset(Customer.objects.all(), dry_run=True)
    assert (dry.identified, dry.dry_run) == (10, True)
    assert Operation.objects.count() == 0

    resumed = cio.hooks.identify_queryset(Customer.objects.all(), start_after=pks[5], chunk_size=3)
    assert resumed.identified == 4
    assert sorted(int(op.customer_id) for op in Operation.objects.all()) == pks[6:]

    Operation.objects.all().delete()
    explicit = cio.hooks.identify_queryset(
        Customer.objects.all(),
        customer_id=lambda c: None if c.pk == pks[0] else f"c-{c.pk}",
        attributes=lambda c: {"source": "backfill"},
    )
    assert (explicit.identified, explicit.skipped) == (9, 1)
    assert {op.payload["attributes"]["source"] for op in Operation.objects.all()} == {"backfill"}

    Operation.objects.all().delete()
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "DELIVERY": "direct"}
    cio.hooks.identify_queryset(Customer.objects.all())
    assert set(Operation.objects.values_list("status", flat=True)) == {"pending"}  # outbox


@pytest.mark.django_db(transaction=True)
def test_identify_queryset_invalid_rows() -> None:
    rows = Customer.objects.bulk_create([Customer(bio="ok") for _ in range(6)])
    bad = sorted(c.pk for c in rows)[4]
    Customer.objects.filter(pk=bad).update(bio=LONG_BIO)
    cio.hooks.identify_on_save(
        Customer, customer_id=lambda c: c.pk, attributes=lambda c: {"bio": c.bio}
    )

    with pytest.raises(hooks.BackfillAborted) as excinfo:
        cio.hooks.identify_queryset(Customer.objects.all(), chunk_size=2)
    aborted = excinfo.value
    assert aborted.pk == bad
    assert aborted.error.field == 'attributes["bio"]'
    assert (aborted.result.identified, aborted.result.chunks) == (4, 2)
    assert Operation.objects.count() == 4  # the failing chunk rolled back, earlier ones stay
    assert f"start_after={aborted.result.last_pk!r}" in str(aborted)
    assert LONG_BIO[:20] not in str(aborted)

    Operation.objects.all().delete()
    skipped = cio.hooks.identify_queryset(Customer.objects.all(), on_invalid="skip")
    assert (skipped.identified, skipped.invalid) == (5, 1)


def test_identify_queryset_refuses_bad_input(identify_hook: hooks.Hook) -> None:
    with pytest.raises(ValueError, match="unsliced"):
        cio.hooks.identify_queryset(Customer.objects.all()[:5])
    with pytest.raises(ValueError, match="chunk_size"):
        cio.hooks.identify_queryset(Customer.objects.all(), chunk_size=0)
    with pytest.raises(ImproperlyConfigured, match="no identify_on_save hook"):
        cio.hooks.identify_queryset(Order.objects.all())
    with pytest.raises(TypeError, match="either hook or customer_id"):
        cio.hooks.identify_queryset(
            Customer.objects.all(), hook=identify_hook, customer_id=lambda c: c.pk
        )
    cio.hooks.identify_on_save(Customer, customer_id=lambda c: c.pk, dispatch_uid="second")
    with pytest.raises(ImproperlyConfigured, match="has 2 identify_on_save hooks"):
        cio.hooks.identify_queryset(Customer.objects.all())
    with pytest.raises(ImproperlyConfigured, match="no identify_on_save hook 'third'"):
        cio.hooks.identify_queryset(Customer.objects.all(), hook="third")


ROWS = 50_000
MB = 1024 * 1024


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_backfill_of_50000_rows_runs_in_constant_memory(record_property: Any) -> None:
    Customer.objects.bulk_create(
        (Customer(email=f"user{i}@example.com", first_name=f"N{i}") for i in range(ROWS)),
        batch_size=5000,
    )
    assert Operation.objects.count() == 0
    peaks: dict[int, int] = {}

    def progress(result: hooks.BackfillResult) -> None:
        peaks[result.processed] = tracemalloc.get_traced_memory()[1]

    gc.collect()
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = cio.hooks.identify_queryset(
            Customer.objects.all(),
            customer_id=lambda c: c.pk,
            attributes=customer_attrs,
            chunk_size=1000,
            progress=progress,
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started

    record_property("backfill_seconds", round(elapsed, 2))
    record_property("backfill_peak_mb_10k", round(peaks[10_000] / MB, 2))
    record_property("backfill_peak_mb_50k", round(peak / MB, 2))
    print(  # noqa: T201 - the figures, for pytest -s
        f"\nbackfill of {ROWS} rows: {elapsed:.1f}s, traced peak {peaks[10_000] / MB:.2f} MB "
        f"after 10,000 rows, {peak / MB:.2f} MB after {ROWS}"
    )
    assert result.identified == ROWS
    assert result.chunks == ROWS // 1000
    assert Operation.objects.filter(kind="identify").count() == ROWS
    assert peak < 30 * MB
    # Constant memory: five times the rows, (almost) the same peak.
    assert peak < peaks[10_000] * 1.2 + 1 * MB, (peaks[10_000], peak)
    # No timing assertion: the time is a figure (record_property), measured by make bench.


# --------------------------------------------------------------------------- cio_backfill


class TtyOutput(StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.django_db(transaction=True)
def test_cio_backfill_command(identify_hook: hooks.Hook) -> None:
    Customer.objects.bulk_create([Customer(email=f"{i}@example.com") for i in range(5)])
    out = StringIO()
    call_command("cio_backfill", "hookapp.Customer", "--dry-run", stdout=out)
    assert "Would identify 5 of 5 rows of hookapp.Customer" in out.getvalue()
    assert "Dry run: nothing was stored." in out.getvalue()
    assert Operation.objects.count() == 0

    tty = TtyOutput()
    call_command("cio_backfill", "hookapp.customer", "--chunk-size", "2", stdout=tty)
    text = tty.getvalue()
    assert "\r[" + "#" * 30 + "] 5/5 rows, 5 identified" in text
    assert "Identified 5 of 5 rows of hookapp.Customer with hook " in text
    assert "'identify_on_save:hookapp.customer'" in text
    assert Operation.objects.count() == 5

    last = Customer.objects.order_by("pk").values_list("pk", flat=True)[2]
    out = StringIO()
    call_command("cio_backfill", "hookapp.Customer", "--start-after", str(last), stdout=out)
    assert "Identified 2 of 2 rows" in out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_cio_backfill_progress_lines_without_a_terminal(
    identify_hook: hooks.Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django_cio_reliable.management.commands import cio_backfill

    monkeypatch.setattr(cio_backfill, "PROGRESS_INTERVAL", 0.0)
    Customer.objects.bulk_create([Customer() for _ in range(4)])
    out = StringIO()
    call_command("cio_backfill", "hookapp.Customer", "--chunk-size", "2", stdout=out)
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines[:2]] == [
        "progress: 2/4 rows",
        "progress: 4/4 rows",
    ]
    out = StringIO()
    call_command("cio_backfill", "hookapp.Customer", "--no-progress", stdout=out)
    assert len(out.getvalue().splitlines()) == 1


@pytest.mark.django_db(transaction=True)
def test_cio_backfill_chooses_among_several_hooks(identify_hook: hooks.Hook) -> None:
    cio.hooks.identify_on_save(
        Customer, customer_id=lambda c: f"alt-{c.pk}", dispatch_uid="alternate"
    )
    Customer.objects.bulk_create([Customer()])
    with pytest.raises(CommandError) as excinfo:
        call_command("cio_backfill", "hookapp.Customer", stdout=StringIO())
    assert excinfo.value.returncode == 2
    assert "'identify_on_save:hookapp.customer', 'alternate'" in str(excinfo.value)

    call_command("cio_backfill", "hookapp.Customer", "--hook", "2", stdout=StringIO())
    call_command("cio_backfill", "hookapp.Customer", "--hook", "alternate", stdout=StringIO())
    assert [op.customer_id[:4] for op in Operation.objects.order_by("pk")] == ["alt-", "alt-"]
    with pytest.raises(CommandError, match="--hook 3"):
        call_command("cio_backfill", "hookapp.Customer", "--hook", "3", stdout=StringIO())


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["hookapp.Nope"], "not an installed model"),
        (["Customer"], "not a model label"),
        (["hookapp.Order"], "no identify_on_save hook is registered for hookapp.Order"),
        (["hookapp.Customer", "--chunk-size", "0"], "--chunk-size must be at least 1"),
        (["hookapp.Customer", "--start-after", "abc"], "not a primary key"),
    ],
)
def test_cio_backfill_bad_arguments(
    identify_hook: hooks.Hook, args: list[str], message: str
) -> None:
    with pytest.raises(CommandError, match=re.escape(message)) as excinfo:
        call_command("cio_backfill", *args, stdout=StringIO())
    assert excinfo.value.returncode == 2


@pytest.mark.django_db(transaction=True)
def test_cio_backfill_stops_at_an_invalid_row() -> None:
    cio.hooks.identify_on_save(
        Customer, customer_id=lambda c: c.pk, attributes=lambda c: {"bio": c.bio}
    )
    rows = Customer.objects.bulk_create([Customer() for _ in range(4)])
    pks = sorted(c.pk for c in rows)
    Customer.objects.filter(pk=pks[2]).update(bio=LONG_BIO)
    with pytest.raises(CommandError) as excinfo:
        call_command("cio_backfill", "hookapp.Customer", "--chunk-size", "2", stdout=StringIO())
    assert excinfo.value.returncode == 1
    assert f"pk={pks[2]}" in str(excinfo.value)
    assert f"--start-after {pks[1]}" in str(excinfo.value)
    assert Operation.objects.count() == 2

    out = StringIO()
    call_command("cio_backfill", "hookapp.Customer", "--on-invalid", "skip", stdout=out)
    assert "(0 without a customer id, 1 invalid)" in out.getvalue()


# --------------------------------------------------------------------------- the test app


@pytest.mark.django_db
def test_hookapp_has_no_missing_migrations() -> None:
    out = StringIO()
    try:
        call_command("makemigrations", "hookapp", check=True, dry_run=True, stdout=out)
    except SystemExit as exc:  # pragma: no cover - the failure message is the point
        raise AssertionError(f"missing migrations:\n{out.getvalue()}") from exc


def test_package_exposes_hooks_and_testing_lazily() -> None:
    assert cio.hooks is hooks
    assert cio.testing.capture_operations is capture_operations
    with pytest.raises(AttributeError):
        _ = cio.no_such_thing


# --------------------------------------------------------------------------- app signals


def documented_signals() -> dict[str, set[str]]:
    text = (DOCS / "signals.md").read_text(encoding="utf-8")
    sections = re.findall(r"^## `(\w+)`\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    return {
        name: set(re.findall(r"^\| `(\w+)` \|", body, flags=re.M)) - {"sender"}
        for name, body in sections
    }


def test_every_signal_is_documented() -> None:
    declared = {
        name
        for name, value in vars(signals).items()
        if isinstance(value, type(signals.operation_dead))
    }
    assert set(documented_signals()) == declared


@pytest.mark.django_db(transaction=True)
def test_operation_signals_send_the_documented_arguments(no_dispatch: FakeCustomerIO) -> None:
    received: dict[str, list[dict[str, Any]]] = {}
    in_transaction: list[bool] = []
    names = ("operation_enqueued", "operation_delivered", "operation_failed", "operation_dead")

    def receiver_for(name: str) -> Any:
        def receiver(sender: Any, **kwargs: Any) -> None:
            assert sender is Operation
            in_transaction.append(connection.in_atomic_block)
            received.setdefault(name, []).append(kwargs)

        return receiver

    connected = {name: receiver_for(name) for name in names}
    for name, receiver in connected.items():
        getattr(signals, name).connect(receiver, dispatch_uid=f"test-{name}")
    try:
        with transaction.atomic():
            first = cio.track(1, "a")
            second = cio.track(2, "b")
            third = cio.track(3, "c")
            assert received == {}
        no_dispatch.fail_next(1, status=503)  # the first request: one batch of all three
        outbox.drain(max_seconds=30, sleep=lambda s: None)
        Operation.objects.filter(pk__in=[first.pk, second.pk, third.pk]).update(
            next_attempt_at=timezone.now()
        )
        no_dispatch.fail_next(2, status=400)  # the batch, then the first one sent alone
        outbox.drain(max_seconds=30, sleep=lambda s: None)
    finally:
        for name in names:
            getattr(signals, name).disconnect(dispatch_uid=f"test-{name}")

    documented = documented_signals()
    for name in names:
        assert received.get(name), name
        for kwargs in received[name]:
            assert set(kwargs) - {"signal"} == documented[name], name
            assert isinstance(kwargs["operation"], Operation)
    assert [k["operation"].pk for k in received["operation_enqueued"]] == [
        first.pk,
        second.pk,
        third.pk,
    ]
    assert received["operation_failed"][0]["next_attempt_at"] > timezone.now() - timedelta(1)
    assert not any(in_transaction)  # sent after commit


@pytest.mark.django_db(transaction=True)
def test_breaker_signal_sends_the_documented_arguments() -> None:
    from django_cio_reliable.breaker import get_breaker
    from django_cio_reliable.models import BreakerState

    received: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        assert sender is BreakerState
        assert not connection.in_atomic_block
        received.append(kwargs)

    signals.breaker_state_changed.connect(receiver, dispatch_uid="test-breaker")
    breaker = get_breaker()
    try:
        breaker.force("forced_open", reason="incident drill")
        breaker.force("auto")
    finally:
        signals.breaker_state_changed.disconnect(dispatch_uid="test-breaker")
    assert len(received) == 2
    for kwargs in received:
        assert set(kwargs) - {"signal"} == documented_signals()["breaker_state_changed"]
    first = received[0]
    assert (first["old_mode"], first["new_mode"]) == ("auto", "forced_open")
    assert (first["old_state"], first["new_state"]) == ("closed", "open")
    assert "incident drill" in first["reason"]
    assert first["user"] is None
    assert first["destination"] == breaker.destination

"""The admin is no oracle for hidden payloads (docs/admin.md, "Payload privacy").

Staff without ``view_payload`` see a payload's size, never its content. Filtering, searching or
ordering the lists by payload values would answer guesses all the same (the number or order of
the rows tells whether a guess was right), so none of them may reach a payload without the
permission: a lookup on it is a 400 (Django's ``DisallowedModelAdminLookup``), search fields
and list filters on it are dropped, and a column ordered by it does not order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.db.models.fields.json import KT
from django.test import Client, RequestFactory
from django.utils import timezone

from django_cio_reliable import admin as cio_admin
from django_cio_reliable.models import DeadLetter, IdempotencyKey, Operation

pytestmark = pytest.mark.django_db

OPERATIONS = "/admin/django_cio_reliable/operation/"
DEAD_LETTERS = "/admin/django_cio_reliable/deadletter/"
IDEMPOTENCY_KEYS = "/admin/django_cio_reliable/idempotencykey/"

ALICE = "alice@example.com"
ZOE = "zoe@example.com"

#: ``(lookup, right guess, wrong guess)``. Before the fix most right guesses listed a row and
#: the wrong ones none (on SQLite and PostgreSQL); ``payload__contains`` (a 500 on SQLite) and
#: ``has_keys`` (the value is one key) told nothing from a query string, but are refused all
#: the same.
GUESSES = [
    pytest.param("payload__attributes__email__startswith", "a", "z", id="attributes-startswith"),
    pytest.param("payload__data__email__startswith", "a", "z", id="data-startswith"),
    pytest.param("payload__data__plan__tier", "gold", "silver", id="nested-data-exact"),
    pytest.param("payload__data__plan__tier__istartswith", "g", "s", id="nested-data-prefix"),
    pytest.param("payload__attributes__email", ALICE, ZOE, id="attributes-exact"),
    pytest.param("payload__contains", ALICE, ZOE, id="contains"),
    pytest.param("payload__icontains", "alice", "zoe", id="icontains"),
    pytest.param("payload__attributes__email__contains", ALICE, ZOE, id="key-contains"),
    pytest.param("payload__has_key", "attributes", "traits", id="has_key"),
    pytest.param("payload__attributes__has_key", "email", "phone", id="nested-has_key"),
    pytest.param("payload__data__has_keys", "email,plan", "email,phone", id="has_keys"),
    pytest.param("payload__isnull", "False", "True", id="isnull"),
    pytest.param("payload__attributes__email__regex", "^a", "^z", id="regex"),
]


def store(customer: str, *, kind: str = "identify", email: str = ALICE) -> Operation:
    """A dead operation (listed on both pages) whose payload holds ``email``."""
    now = timezone.now()
    payload: dict[str, Any] = (
        {"attributes": {"email": email, "plan": "gold"}}
        if kind == "identify"
        else {"name": "order_placed", "data": {"email": email, "plan": {"tier": "gold"}}}
    )
    op: Operation = Operation.objects.create(
        kind=kind,
        customer_id=customer,
        person_key=f"c:{customer}",
        name="" if kind == "identify" else "order_placed",
        payload=payload,
        payload_bytes=len(json.dumps(payload)),
        status="dead",
        attempts=3,
        next_attempt_at=now,
        created_at=now,
        dead_at=now,
        last_status_code=400,
        last_error="permanent (HTTP 400): attribute rejected",
    )
    return op


@pytest.fixture
def ops() -> list[Operation]:
    return [store("cust-1"), store("cust-2", kind="track")]


def make_user(django_user_model: Any, *codenames: str, name: str = "staff") -> Any:
    # No password (none is hashed, which is slow): the clients log in with force_login.
    user = django_user_model.objects.create_user(username=name, password=None, is_staff=True)
    for codename in codenames:
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label="django_cio_reliable", codename=codename)
        )
    # A fresh instance: the permission cache of the one above is stale.
    return django_user_model.objects.get(pk=user.pk)


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def viewer(django_user_model: Any) -> Client:
    """Staff who may list operations and dead letters, but not see payloads."""
    return logged_in(make_user(django_user_model, "view_operation", "view_deadletter"))


@pytest.fixture
def payload_viewer(django_user_model: Any) -> Client:
    """Staff who may also see payloads."""
    user = make_user(
        django_user_model, "view_operation", "view_deadletter", "view_payload", name="dpo"
    )
    return logged_in(user)


def answer(client: Client, url: str, query: dict[str, str]) -> tuple[int, list[int], bytes]:
    """What a request tells: its status, the rows listed (in order) and, on errors, the body."""
    response = client.get(url, query)
    if response.status_code == 200:
        return 200, [op.pk for op in response.context["cl"].result_list], b""
    return response.status_code, [], response.content


# --------------------------------------------------------------------------- lookups


@pytest.mark.parametrize("url", [OPERATIONS, DEAD_LETTERS], ids=["operations", "dead-letters"])
@pytest.mark.parametrize(("lookup", "right", "wrong"), GUESSES)
def test_payload_lookups_answer_no_guess_without_view_payload(
    viewer: Client, ops: list[Operation], url: str, lookup: str, right: str, wrong: str
) -> None:
    on_right = answer(viewer, url, {lookup: right})
    on_wrong = answer(viewer, url, {lookup: wrong})
    assert on_right == on_wrong, f"{lookup}: {right!r} and {wrong!r} can be told apart"
    assert on_right[0] == 400
    assert ALICE.encode() not in on_right[2]


@pytest.mark.parametrize("url", [OPERATIONS, DEAD_LETTERS], ids=["operations", "dead-letters"])
def test_payload_lookup_is_refused_among_allowed_filters(
    django_user_model: Any, ops: list[Operation], url: str
) -> None:
    """A payload lookup hidden among ordinary filters, or behind an action applied to every
    row the list selects ("select across"), is refused all the same: a 400, nothing done."""
    operator = logged_in(
        make_user(django_user_model, "view_operation", "view_deadletter", "replay_operation")
    )
    query = {"kind__exact": "identify", "payload__attributes__email__startswith": "a"}
    assert operator.get(url, query).status_code == 400
    response = operator.post(
        f"{url}?payload__attributes__email__startswith=a",
        {"action": "requeue", "select_across": "1", "index": "0", "_selected_action": ["0"]},
    )
    assert response.status_code == 400
    assert set(Operation.objects.values_list("status", flat=True)) == {"dead"}


def test_payload_lookups_through_the_idempotency_keys_are_refused(
    django_user_model: Any, ops: list[Operation]
) -> None:
    for codenames in (("view_idempotencykey",), ("view_idempotencykey", "view_payload")):
        client = logged_in(make_user(django_user_model, *codenames, name="-".join(codenames)))
        query = {"operation__payload__attributes__email__startswith": "a"}
        assert client.get(IDEMPOTENCY_KEYS, query).status_code == 400, codenames


def test_idempotency_keys_are_found_by_the_key_as_given_and_hide_the_person(
    django_user_model: Any,
) -> None:
    """Stored keys are hashes scoped by person and kind: the page searches the key as it was
    passed, and the person key (not shown) cannot be filtered to guess customer ids."""
    import django_cio_reliable as cio

    alice = cio.track(ALICE, "order_placed", idempotency_key="order-1")
    cio.track(ZOE, "order_placed", idempotency_key="order-2")
    client = logged_in(make_user(django_user_model, "view_idempotencykey"))
    status, rows, _ = answer(client, IDEMPOTENCY_KEYS, {"q": "order-1"})
    assert (status, rows) == (200, [IdempotencyKey.objects.get(operation_id=alice.pk).pk])
    for guess in ("c:a", "c:z"):
        assert client.get(IDEMPOTENCY_KEYS, {"person_key__startswith": guess}).status_code == 400


def test_other_lookups_still_work_without_view_payload(
    viewer: Client, ops: list[Operation]
) -> None:
    """Fields shown to the same users stay filterable: the error text (redacted of payload
    values when stored, and shown in full on the detail page) and the payload's size."""
    identify, track = ops
    assert answer(viewer, OPERATIONS, {"kind__exact": "identify"})[:2] == (200, [identify.pk])
    assert answer(viewer, OPERATIONS, {"last_error__icontains": "rejected"})[0] == 200
    size = {"payload_bytes__gte": str(track.payload_bytes)}
    assert answer(viewer, DEAD_LETTERS, size)[:2] == (200, [track.pk])
    assert answer(viewer, OPERATIONS, {"payload_erased_at__isnull": "True"})[0] == 200


@pytest.mark.parametrize("url", [OPERATIONS, DEAD_LETTERS], ids=["operations", "dead-letters"])
def test_view_payload_keeps_payload_filters(
    payload_viewer: Client, admin_client: Client, ops: list[Operation], url: str
) -> None:
    identify, track = ops
    for client in (payload_viewer, admin_client):
        lookup = "payload__attributes__email__startswith"
        assert answer(client, url, {lookup: "a"})[:2] == (200, [identify.pk])
        assert answer(client, url, {lookup: "z"})[:2] == (200, [])
        assert answer(client, url, {"payload__data__plan__tier": "gold"})[:2] == (200, [track.pk])
        assert answer(client, url, {"payload__has_key": "data"})[:2] == (200, [track.pk])


def test_no_payload_through_to_field(viewer: Client, ops: list[Operation]) -> None:
    """``_to_field`` (popups) cannot name the payload either."""
    response = viewer.get(OPERATIONS, {"_to_field": "payload", "_popup": "1"})
    assert response.status_code == 400
    op = ops[0]
    change = viewer.get(f"{OPERATIONS}{op.pk}/change/", {"_to_field": "payload"})
    assert change.status_code == 400


# --------------------------------------------------------------------------- search and ordering


@pytest.mark.parametrize("model", [Operation, DeadLetter])
@pytest.mark.parametrize("payload", [False, True], ids=["viewer", "payload-viewer"])
def test_shipped_search_and_ordering_never_reach_the_payload(
    rf: RequestFactory,
    django_user_model: Any,
    ops: list[Operation],
    model: type[Operation],
    payload: bool,
) -> None:
    """The shipped lists search exact customer and event ids and order by plain columns only
    (so nobody, with or without ``view_payload``, searches or orders by payload values)."""
    model_admin = admin.site.get_model_admin(model)
    codenames = ["view_operation", "view_deadletter"] + (["view_payload"] if payload else [])
    request = get_as(rf, make_user(django_user_model, *codenames))
    assert not [f for f in model_admin.get_search_fields(request) if "payload" in f]
    changelist = model_admin.get_changelist_instance(request)
    for name in changelist.list_display:
        order_field = changelist.get_ordering_field(name)
        assert not (isinstance(order_field, str) and "payload" in order_field), name
    client = logged_in(request.user)
    url = OPERATIONS if model is Operation else DEAD_LETTERS
    assert answer(client, url, {"q": ALICE})[:2] == (200, [])


class PayloadColumnsAdmin(cio_admin.OperationAdmin):
    """What a project might add in a subclass: payload columns, search and a filter."""

    list_display = (*cio_admin.OperationAdmin.list_display, "email", "plan")
    search_fields = ("=customer_id", "payload__attributes__email", "payload__data__email")
    list_filter = ("status", "payload")

    @admin.display(description="e-mail", ordering="payload__attributes__email")
    def email(self, obj: Operation) -> str:
        """A column ordered by a payload value (its text is beside the point)."""
        return "…"

    @admin.display(description="plan", ordering=KT("payload__attributes__plan"))
    def plan(self, obj: Operation) -> str:
        """A column ordered by an expression on the payload."""
        return "…"


@pytest.fixture
def private_site() -> Iterator[admin.AdminSite]:
    """A site (not the default one) with :class:`PayloadColumnsAdmin`, dropped after the test."""
    site = admin.AdminSite(name="cio_privacy_tests")
    site.register(Operation, PayloadColumnsAdmin)
    yield site
    site.unregister(Operation)


def listed(model_admin: Any, request: Any) -> list[int]:
    return [op.pk for op in model_admin.get_changelist_instance(request).result_list]


def get_as(rf: RequestFactory, user: Any, query: dict[str, str] | None = None) -> Any:
    """A GET request of ``user`` (for calling admin methods and views directly)."""
    request = rf.get("/", query or {})
    request.user = user
    return request


@pytest.fixture
def alice_and_zoe() -> list[Operation]:
    return [store("cust-a", email=ALICE), store("cust-z", email=ZOE)]


@pytest.mark.parametrize("allowed", [False, True], ids=["viewer", "payload-viewer"])
def test_payload_search_fields_need_view_payload(
    rf: RequestFactory,
    django_user_model: Any,
    private_site: admin.AdminSite,
    alice_and_zoe: list[Operation],
    allowed: bool,
) -> None:
    alice, _ = alice_and_zoe
    model_admin = private_site.get_model_admin(Operation)
    codenames = ("view_operation", "view_payload") if allowed else ("view_operation",)
    user = make_user(django_user_model, *codenames)

    def search(term: str) -> list[int]:
        return listed(model_admin, get_as(rf, user, {"q": term}))

    request = get_as(rf, user)
    fields = list(model_admin.get_search_fields(request))
    if allowed:
        assert fields == list(PayloadColumnsAdmin.search_fields)
        assert (search("alice"), search("nobody")) == ([alice.pk], [])
    else:
        assert fields == ["=customer_id"]
        assert search("alice") == search("nobody") == []
        assert search("cust-a") == [alice.pk]


@pytest.mark.parametrize("allowed", [False, True], ids=["viewer", "payload-viewer"])
def test_payload_search_in_the_autocomplete_needs_view_payload(
    rf: RequestFactory,
    django_user_model: Any,
    private_site: admin.AdminSite,
    alice_and_zoe: list[Operation],
    allowed: bool,
) -> None:
    """The autocomplete (``IdempotencyKey.operation`` points at operations) searches the same
    fields as the list."""
    alice, _ = alice_and_zoe
    codenames = ("view_operation", "view_payload") if allowed else ("view_operation",)
    user = make_user(django_user_model, *codenames)

    def complete(term: str) -> list[str]:
        query = {
            "term": term,
            "app_label": "django_cio_reliable",
            "model_name": "idempotencykey",
            "field_name": "operation",
        }
        response = private_site.autocomplete_view(get_as(rf, user, query))
        assert response.status_code == 200
        return [row["id"] for row in json.loads(response.content)["results"]]

    if allowed:
        assert (complete("alice"), complete("nobody")) == ([str(alice.pk)], [])
    else:
        assert complete("alice") == complete("nobody") == []


@pytest.mark.parametrize("column", ["email", "plan"])
@pytest.mark.parametrize("allowed", [False, True], ids=["viewer", "payload-viewer"])
def test_payload_ordered_columns_need_view_payload(
    rf: RequestFactory,
    django_user_model: Any,
    private_site: admin.AdminSite,
    alice_and_zoe: list[Operation],
    allowed: bool,
    column: str,
) -> None:
    alice, zoe = alice_and_zoe
    alice.payload["attributes"]["plan"] = "a-plan"
    zoe.payload["attributes"]["plan"] = "z-plan"
    for op in (alice, zoe):
        op.save(update_fields=["payload"])
    model_admin = private_site.get_model_admin(Operation)
    codenames = ("view_operation", "view_payload") if allowed else ("view_operation",)
    user = make_user(django_user_model, *codenames)
    index = PayloadColumnsAdmin.list_display.index(column)

    def ordered(order: str) -> list[int]:
        return listed(model_admin, get_as(rf, user, {"o": order}))

    request = get_as(rf, user)
    sortable = list(model_admin.get_sortable_by(request))
    if allowed:
        assert column in sortable
        assert ordered(str(index)) == [alice.pk, zoe.pk]
        assert ordered(f"-{index}") == [zoe.pk, alice.pk]
    else:
        assert column not in sortable
        assert "customer_id" in sortable
        assert ordered(str(index)) == ordered(f"-{index}") == ordered("") == [zoe.pk, alice.pk]
        # Other columns still order (customer id, ascending then descending).
        by_customer = PayloadColumnsAdmin.list_display.index("customer_id")
        assert ordered(str(by_customer)) == [alice.pk, zoe.pk]
        assert ordered(f"{index}.-{by_customer}") == [zoe.pk, alice.pk]


@pytest.mark.parametrize("allowed", [False, True], ids=["viewer", "payload-viewer"])
def test_payload_list_filters_need_view_payload(
    rf: RequestFactory,
    django_user_model: Any,
    private_site: admin.AdminSite,
    alice_and_zoe: list[Operation],
    allowed: bool,
) -> None:
    """A list filter on the payload would list its values: without the permission it is gone."""
    model_admin = private_site.get_model_admin(Operation)
    codenames = ("view_operation", "view_payload") if allowed else ("view_operation",)
    request = get_as(rf, make_user(django_user_model, *codenames))
    filters = list(model_admin.get_list_filter(request))
    specs = model_admin.get_changelist_instance(request).filter_specs
    paths = [getattr(spec, "field_path", None) for spec in specs]
    if allowed:
        assert filters == ["status", "payload"]
        assert "payload" in paths
    else:
        assert filters == ["status"]
        assert paths == ["status"]

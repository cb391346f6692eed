"""The admin: every page renders, every action works, and permissions are enforced."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_cio_reliable import admin as cio_admin
from django_cio_reliable import breaker, outbox
from django_cio_reliable.idempotency import new_event_id
from django_cio_reliable.models import (
    BreakerEvent,
    DeliveryState,
    IdempotencyKey,
    Operation,
)
from django_cio_reliable.privacy import forget
from django_cio_reliable.testing import FakeCustomerIO
from tests.conftest import API_KEY

pytestmark = pytest.mark.django_db

EMAIL = "payload-person@example.com"
XSS = "<script>alert('x')</script>"

DASHBOARD = "/admin/django_cio_reliable/operation/dashboard/"
OPERATIONS = "/admin/django_cio_reliable/operation/"
DEAD_LETTERS = "/admin/django_cio_reliable/deadletter/"
BREAKER = "/admin/django_cio_reliable/breakerstate/"
FORCE = "/admin/django_cio_reliable/breakerstate/force/"


@pytest.fixture(autouse=True)
def _fresh_breaker() -> Iterator[None]:
    breaker.reset()
    yield
    breaker.reset()


def store(
    customer: str = "cust-1",
    *,
    status: str = "pending",
    kind: str = "track",
    code: int | None = None,
    error: str = "",
    **fields: Any,
) -> Operation:
    now = timezone.now()
    event_id = new_event_id() if kind == "track" else ""
    payload: dict[str, Any] = (
        {"name": "order_placed", "data": {"email": EMAIL, "note": XSS}, "id": event_id}
        if kind == "track"
        else {"email": EMAIL}
    )
    values: dict[str, Any] = {
        "kind": kind,
        "customer_id": customer,
        "person_key": f"c:{customer}",
        "name": "order_placed" if kind == "track" else "",
        "payload": payload,
        "payload_bytes": len(json.dumps(payload)),
        "event_id": event_id,
        "status": status,
        "attempts": 3 if status in ("failed", "dead") else 0,
        "next_attempt_at": now,
        "created_at": now,
        "last_status_code": code,
        "last_error": error,
    }
    if status == "dead":
        values["dead_at"] = now
    if status == "delivered":
        values["delivered_at"] = now
    values.update(fields)
    op: Operation = Operation.objects.create(**values)
    return op


def staff_client(django_user_model: Any, *codenames: str, name: str = "staff") -> Client:
    user = django_user_model.objects.create_user(
        username=name, password="pw-not-secret", is_staff=True
    )
    for codename in codenames:
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label="django_cio_reliable", codename=codename)
        )
    client = Client()
    client.force_login(user)
    return client


def action(client: Client, url: str, name: str, ops: list[Operation], **extra: str) -> Any:
    data: dict[str, Any] = {
        "action": name,
        "_selected_action": [str(op.pk) for op in ops],
        "index": "0",
        **extra,
    }
    return client.post(url, data, follow=True)


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


# --------------------------------------------------------------------------- pages


def test_every_page_renders(admin_client: Client, fake_cio: FakeCustomerIO) -> None:
    op = store(error="transient (HTTP 503): down", status="failed", code=503)
    dead = store("cust-2", status="dead", code=400, error="permanent (HTTP 400): bad")
    IdempotencyKey.objects.create(
        key="order-1",
        person_key="c:cust-1",
        operation=op,
        created_at=timezone.now(),
        expires_at=timezone.now() + timedelta(days=1),
    )
    DeliveryState.objects.create(destination="https://track.customer.io#test-site")
    breaker.get_breaker().force("forced_open", reason="incident")
    event = BreakerEvent.objects.get()
    key = IdempotencyKey.objects.get()
    state = DeliveryState.objects.get()
    pages = [
        "/admin/",
        "/admin/django_cio_reliable/",
        OPERATIONS,
        f"{OPERATIONS}{op.pk}/change/",
        f"{OPERATIONS}{op.pk}/payload/",
        f"{OPERATIONS}{op.pk}/history/",
        DEAD_LETTERS,
        f"{DEAD_LETTERS}{dead.pk}/change/",
        "/admin/django_cio_reliable/idempotencykey/",
        f"/admin/django_cio_reliable/idempotencykey/{key.pk}/change/",
        "/admin/django_cio_reliable/deliverystate/",
        f"/admin/django_cio_reliable/deliverystate/{state.pk}/change/",
        BREAKER,
        "/admin/django_cio_reliable/breakerevent/",
        f"/admin/django_cio_reliable/breakerevent/{event.pk}/change/",
        DASHBOARD,
        DASHBOARD + "?hours=24",
    ]
    for url in pages:
        response = admin_client.get(url)
        assert response.status_code == 200, url
        assert API_KEY not in response.content.decode(), url
    response = admin_client.post(
        OPERATIONS, {"action": "mark_dead", "_selected_action": [op.pk], "index": "0"}
    )
    assert response.status_code == 200
    assert "Mark operations dead?" in response.content.decode()


def test_admin_index_links_the_dashboard(admin_client: Client, django_user_model: Any) -> None:
    body = admin_client.get("/admin/").content.decode()
    assert f'href="{DASHBOARD}"' in body
    assert 'id="cio-dashboard-link"' in body
    assert f'href="{DASHBOARD}"' in admin_client.get("/admin/django_cio_reliable/").content.decode()
    assert f'href="{DASHBOARD}"' in admin_client.get(OPERATIONS).content.decode()
    nobody = staff_client(django_user_model, "view_idempotencykey")
    assert DASHBOARD not in nobody.get("/admin/").content.decode()


def test_operations_are_read_only(admin_client: Client) -> None:
    op = store()
    assert admin_client.get(f"{OPERATIONS}add/").status_code == 403
    assert admin_client.get(f"{OPERATIONS}{op.pk}/delete/").status_code == 403
    response = admin_client.post(f"{OPERATIONS}{op.pk}/change/", {"status": "delivered"})
    assert response.status_code == 403
    op.refresh_from_db()
    assert op.status == "pending"
    body = admin_client.get(OPERATIONS).content.decode()
    assert "delete_selected" not in body


def test_filters_and_search(admin_client: Client) -> None:
    a = store("alice", status="failed", code=503)
    b = store("bob", status="dead", code=400, kind="identify")
    store("carol", status="delivered")

    def listed(query: str) -> set[int]:
        response = admin_client.get(OPERATIONS + query)
        assert response.status_code == 200
        return {op.pk for op in response.context["cl"].result_list}

    assert listed("?status__exact=failed") == {a.pk}
    assert listed("?kind__exact=identify") == {b.pk}
    assert listed("?last_status_code=400") == {b.pk}
    assert listed("?q=alice") == {a.pk}
    assert listed(f"?q={a.event_id}") == {a.pk}
    assert listed("?q=ali") == set()  # exact match only (indexed)


def test_payload_needs_its_permission(admin_client: Client, django_user_model: Any) -> None:
    op = store()
    body = admin_client.get(f"{OPERATIONS}{op.pk}/change/").content.decode()
    assert EMAIL in body
    assert "&lt;script&gt;" in body and XSS not in body
    raw = admin_client.get(f"{OPERATIONS}{op.pk}/payload/")
    assert raw["Content-Type"] == "application/json"
    assert raw.json()["data"]["email"] == EMAIL

    viewer = staff_client(django_user_model, "view_operation")
    response = viewer.get(f"{OPERATIONS}{op.pk}/change/")
    assert response.status_code == 200
    body = response.content.decode()
    assert EMAIL not in body and "order_placed" in body
    assert f"{op.payload_bytes:,} bytes (hidden" in body
    assert viewer.get(f"{OPERATIONS}{op.pk}/payload/").status_code == 403
    assert EMAIL not in viewer.get(OPERATIONS).content.decode()


def test_error_texts_are_escaped(admin_client: Client) -> None:
    op = store(status="dead", error=f"permanent (HTTP 400): {XSS}", code=400)
    for url in (OPERATIONS, DEAD_LETTERS, f"{OPERATIONS}{op.pk}/change/", DASHBOARD):
        body = admin_client.get(url).content.decode()
        assert XSS not in body, url
        assert "&lt;script&gt;" in body or "…" in body, url


# --------------------------------------------------------------------------- actions


def test_replay_now_delivers(admin_client: Client, fake_cio: FakeCustomerIO) -> None:
    dead = store(status="dead", code=500, error="gave up")
    failed = store("cust-2", status="failed", code=503)
    response = action(admin_client, OPERATIONS, "replay_now", [dead, failed])
    assert messages_of(response) == [
        "Requeued 2 operations: 2 delivered, 0 failed (will be retried), 0 dead."
    ]
    for op in (dead, failed):
        op.refresh_from_db()
        assert op.status == "delivered"
    assert {r.body["id"] for r in fake_cio.requests if r.body and "id" in r.body} <= {
        dead.event_id,
        failed.event_id,
    }
    assert len(fake_cio.receipts) == 2


def test_replay_now_reports_failures(admin_client: Client, fake_cio: FakeCustomerIO) -> None:
    dead = store(status="dead")
    fake_cio.fail_next(5, status=503)
    response = action(admin_client, DEAD_LETTERS, "replay_now", [dead])
    assert messages_of(response) == [
        "Requeued 1 operation: 0 delivered, 1 failed (will be retried), 0 dead."
    ]
    dead.refresh_from_db()
    assert dead.status == "failed"


def test_replay_now_respects_a_forced_open_breaker(
    admin_client: Client, fake_cio: FakeCustomerIO
) -> None:
    dead = store(status="dead")
    breaker.get_breaker().force("forced_open")
    response = action(admin_client, OPERATIONS, "replay_now", [dead])
    assert messages_of(response) == [
        "Requeued 1 operation but sent nothing: the breaker is forced open. The worker "
        "delivers them once delivery resumes."
    ]
    dead.refresh_from_db()
    assert dead.status == "pending"
    assert fake_cio.requests == []


def test_replay_now_respects_a_credentials_pause(
    admin_client: Client, fake_cio: FakeCustomerIO
) -> None:
    dead = store(status="dead")
    DeliveryState.objects.create(
        destination=f"{fake_cio.url}#test-site",
        paused_until=timezone.now() + timedelta(minutes=5),
        pause_reason="auth",
    )
    response = action(admin_client, OPERATIONS, "replay_now", [dead])
    assert "sent nothing: Customer.io rejected the credentials" in messages_of(response)[0]
    assert fake_cio.requests == []


def test_replay_now_says_when_the_breaker_stopped_it(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops = [store(f"c{i}", status="dead") for i in range(2)]
    # The breaker refuses mid-run (e.g. the first requests tripped it): the drain hands back.
    monkeypatch.setattr(outbox, "drain", lambda **kwargs: outbox.DrainResult(breaker="open"))
    response = action(admin_client, OPERATIONS, "replay_now", ops)
    assert messages_of(response) == [
        "Requeued 2 operations: 0 delivered, 0 failed (will be retried), 0 dead, 2 left for "
        "the worker (the breaker is open)."
    ]


def test_replay_now_has_a_size_limit(admin_client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cio_admin, "REPLAY_NOW_LIMIT", 2)
    ops = [store(f"c{i}", status="dead") for i in range(3)]
    response = action(admin_client, OPERATIONS, "replay_now", ops)
    assert "at most 2 operations at a time" in messages_of(response)[0]
    assert Operation.objects.filter(status="dead").count() == 3


def test_replay_now_with_nothing_replayable(admin_client: Client) -> None:
    done = store(status="delivered")
    response = action(admin_client, OPERATIONS, "replay_now", [done])
    assert messages_of(response) == [
        "Nothing to replay: the selected operations are delivered, being sent, or their "
        "payload was erased (a forgotten person)."
    ]


def test_requeue(admin_client: Client) -> None:
    dead = store(status="dead", attempts=25)
    done = store("cust-2", status="delivered")
    response = action(admin_client, OPERATIONS, "requeue", [dead, done])
    assert messages_of(response) == ["Requeued 1 operation. Skipped 1 (delivered or being sent)."]
    dead.refresh_from_db()
    assert (dead.status, dead.attempts, dead.dead_at) == ("pending", 0, None)


def test_dead_letters_bulk_replay(admin_client: Client) -> None:
    ops = [store(f"c{i}", status="dead") for i in range(3)]
    store("alive", status="pending")
    response = admin_client.get(DEAD_LETTERS)
    assert {op.pk for op in response.context["cl"].result_list} == {op.pk for op in ops}
    response = action(admin_client, DEAD_LETTERS, "requeue", ops)
    assert messages_of(response) == ["Requeued 3 operations."]
    assert Operation.objects.filter(status="dead").count() == 0
    # Mark dead is not offered on the dead letters page.
    assert "mark_dead" not in admin_client.get(DEAD_LETTERS).content.decode()


def test_mark_dead_asks_then_records_the_reason(admin_client: Client) -> None:
    pending = store()
    done = store("cust-2", status="delivered")
    confirm = admin_client.post(
        OPERATIONS,
        {"action": "mark_dead", "_selected_action": [pending.pk, done.pk], "index": "0"},
    )
    body = confirm.content.decode()
    assert "1 of the 2 selected operations can be marked dead" in body
    pending.refresh_from_db()
    assert pending.status == "pending"
    response = admin_client.post(
        OPERATIONS,
        {
            "action": "mark_dead",
            "_selected_action": [pending.pk, done.pk],
            "post": "yes",
            "reason": "bad data <b>",
        },
        follow=True,
    )
    assert messages_of(response) == [
        "Marked 1 operation dead. Skipped 1 (only pending and failed operations can be)."
    ]
    pending.refresh_from_db()
    assert pending.status == "dead"
    assert pending.last_error == "bad data <b> (marked dead in the admin by admin)"
    assert "bad data &lt;b&gt;" in admin_client.get(DEAD_LETTERS).content.decode()


# --------------------------------------------------------------------------- breaker


@pytest.mark.parametrize(
    ("mode", "state"),
    [("forced_open", "open"), ("forced_closed", "closed"), ("disabled", "closed")],
)
def test_force_buttons(admin_client: Client, admin_user: Any, mode: str, state: str) -> None:
    response = admin_client.post(
        FORCE, {"mode": mode, "reason": "incident 42", "next": DASHBOARD}, follow=True
    )
    assert response.redirect_chain == [(DASHBOARD, 302)]
    snapshot = breaker.get_breaker().snapshot(fresh=True)
    assert (snapshot.mode, snapshot.state) == (mode, state)
    event = BreakerEvent.objects.get()
    assert (event.to_mode, event.user, event.username) == (mode, admin_user, "admin")
    assert "incident 42" in event.reason
    body = response.content.decode()
    assert f'data-mode="{mode}"' in body
    assert "incident 42" in body
    # Reset goes back to automatic (closed).
    admin_client.post(FORCE, {"mode": "auto"})
    snapshot = breaker.get_breaker().snapshot(fresh=True)
    assert (snapshot.mode, snapshot.state) == ("auto", "closed")
    assert BreakerEvent.objects.count() == 2


def test_force_rejects_get_unknown_modes_and_foreign_redirects(admin_client: Client) -> None:
    assert admin_client.get(FORCE).status_code == 405
    response = admin_client.post(FORCE, {"mode": "explode"}, follow=True)
    assert messages_of(response) == ["Unknown breaker mode."]
    assert BreakerEvent.objects.count() == 0
    response = admin_client.post(FORCE, {"mode": "forced_open", "next": "https://evil.example/"})
    assert response["Location"] == BREAKER


def test_force_needs_a_csrf_token(admin_user: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.post(FORCE, {"mode": "forced_open"}).status_code == 403
    assert breaker.get_breaker().snapshot(fresh=True).mode == "auto"
    # With the token from the page it works.
    page = client.get(BREAKER)
    token = page.cookies["csrftoken"].value
    response = client.post(FORCE, {"mode": "forced_open", "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert breaker.get_breaker().snapshot(fresh=True).mode == "forced_open"


def test_breaker_page_shows_state_and_buttons(admin_client: Client) -> None:
    breaker.get_breaker().force("forced_open", reason="kill switch")
    body = admin_client.get(BREAKER).content.decode()
    assert 'id="cio-breaker-state"' in body and 'data-mode="forced_open"' in body
    for mode in ("forced_open", "forced_closed", "disabled", "auto"):
        assert f'id="cio-force-{mode}"' in body
    assert "kill switch" in body
    assert "csrfmiddlewaretoken" in body


# --------------------------------------------------------------------------- dashboard


def test_dashboard_shows_backlog_chart_and_errors(admin_client: Client) -> None:
    store(status="pending", created_at=timezone.now() - timedelta(minutes=5))
    store("c2", status="failed", code=503, error="transient (HTTP 503): down")
    store(
        "jane@example.com", status="dead", code=400, error="permanent (HTTP 400): jane@example.com"
    )
    store("c4", status="delivered")
    response = admin_client.get(DASHBOARD)
    body = response.content.decode()
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="cio-chart"' in body
    assert 'data-series="delivered"' in body and 'data-series="failed"' in body
    assert 'data-status="pending">1<' in body and 'data-status="dead">1<' in body
    assert 'id="cio-open-total"><strong>2<' in body
    assert 'id="cio-oldest-open">5m' in body
    assert "transient (HTTP 503): down" in body
    assert "permanent (HTTP 400): &lt;customer&gt;" in body
    assert "jane@example.com" not in body
    assert "<script src" not in body.split('id="content-main"')[1].split("</svg>")[0]
    assert 'id="cio-force-forced_open"' in body


def test_dashboard_chart_window(admin_client: Client) -> None:
    body = admin_client.get(DASHBOARD + "?hours=12").content.decode()
    assert 'data-buckets="144"' in body and 'data-bucket-minutes="5"' in body
    assert "<strong>12 h</strong>" in body


# --------------------------------------------------------------------------- permissions


def test_staff_without_permissions_gets_403(django_user_model: Any) -> None:
    op = store(status="dead")
    client = staff_client(django_user_model)
    for url in (DASHBOARD, BREAKER, OPERATIONS, DEAD_LETTERS, f"{OPERATIONS}{op.pk}/payload/"):
        assert client.get(url).status_code == 403, url
    assert client.post(FORCE, {"mode": "forced_open"}).status_code == 403
    for name in ("replay_now", "requeue", "mark_dead"):
        response = client.post(
            OPERATIONS, {"action": name, "_selected_action": [op.pk], "index": "0"}
        )
        assert response.status_code == 403, name
    op.refresh_from_db()
    assert op.status == "dead"
    assert breaker.get_breaker().snapshot(fresh=True).mode == "auto"


def test_viewers_cannot_act(django_user_model: Any) -> None:
    op = store(status="dead")
    client = staff_client(
        django_user_model, "view_operation", "view_deadletter", "view_breakerstate"
    )
    assert client.get(DASHBOARD).status_code == 200
    body = client.get(BREAKER).content.decode()
    assert 'id="cio-breaker-state"' in body and "cio-force-form" not in body
    assert "cio-force-form" not in client.get(DASHBOARD).content.decode()
    assert client.post(FORCE, {"mode": "forced_open"}).status_code == 403
    assert "replay_now" not in client.get(OPERATIONS).content.decode()
    for url, name in ((OPERATIONS, "replay_now"), (DEAD_LETTERS, "requeue")):
        response = client.post(url, {"action": name, "_selected_action": [op.pk], "index": "0"})
        assert response.status_code == 403
    # Confirming "mark dead" without the permission is refused too.
    response = client.post(
        OPERATIONS, {"action": "mark_dead", "_selected_action": [op.pk], "post": "yes"}
    )
    assert response.status_code == 403
    op.refresh_from_db()
    assert op.status == "dead"


def test_operators_with_permissions_can_act(django_user_model: Any) -> None:
    op = store(status="dead")
    client = staff_client(
        django_user_model,
        "view_operation",
        "replay_operation",
        "view_breakerstate",
        "force_breaker",
    )
    response = action(client, OPERATIONS, "requeue", [op])
    assert messages_of(response) == ["Requeued 1 operation."]
    assert client.post(FORCE, {"mode": "forced_open"}).status_code == 302
    event = BreakerEvent.objects.get()
    assert event.username == "staff"
    assert 'id="cio-force-form"' in client.get(DASHBOARD).content.decode()


def test_forcing_the_breaker_needs_its_own_permission(django_user_model: Any) -> None:
    # Django's generic "change" permission on the breaker rows is not enough.
    client = staff_client(
        django_user_model,
        "view_operation",
        "view_breakerstate",
        "change_breakerstate",
        "replay_operation",
    )
    for mode in ("forced_open", "forced_closed", "disabled", "auto"):
        assert client.post(FORCE, {"mode": mode}).status_code == 403, mode
    assert "cio-force-form" not in client.get(BREAKER).content.decode()
    assert "cio-force-form" not in client.get(DASHBOARD).content.decode()
    assert breaker.get_breaker().snapshot(fresh=True).mode == "auto"
    assert not BreakerEvent.objects.exists()


def test_force_breaker_permission_alone_lets_a_user_force(django_user_model: Any) -> None:
    client = staff_client(django_user_model, "force_breaker", name="oncall")
    assert client.post(FORCE, {"mode": "forced_open", "reason": "incident"}).status_code == 302
    assert breaker.get_breaker().snapshot(fresh=True).mode == "forced_open"
    assert BreakerEvent.objects.get().username == "oncall"


def test_forgotten_operations_are_not_replayed_from_the_admin(admin_client: Client) -> None:
    gone = store("forgotten-1", status="dead", code=400, error="permanent (HTTP 400): bad")
    kept = store("kept-1", status="dead", code=400, error="permanent (HTTP 400): bad")
    forget("forgotten-1")

    response = action(admin_client, DEAD_LETTERS, "requeue", [gone, kept])
    assert messages_of(response) == [
        "Requeued 1 operation. Skipped 1 (delivered or being sent; 1 with their payload erased)."
    ]
    gone.refresh_from_db()
    kept.refresh_from_db()
    assert (gone.status, gone.payload) == ("dead", {})
    assert kept.status == "pending"

    response = action(admin_client, OPERATIONS, "replay_now", [gone])
    assert "their payload was erased" in messages_of(response)[0]
    gone.refresh_from_db()
    assert gone.status == "dead"
    page = admin_client.get(f"{OPERATIONS}{gone.pk}/change/").content.decode()
    assert "erased" in page
    assert EMAIL not in page


def test_url_names() -> None:
    assert reverse("admin:django_cio_reliable_operation_dashboard") == DASHBOARD
    assert reverse("admin:django_cio_reliable_breakerstate_force") == FORCE
    assert reverse("django_cio_reliable:health") == "/health/cio/"


@pytest.mark.django_db(transaction=True)
def test_replay_now_sends_outside_the_request_transaction(
    admin_client: Client, fake_cio: FakeCustomerIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ATOMIC_REQUESTS the admin's *replay now* still writes the shared rows (breaker,
    rate limit, counts) outside any transaction of the request: its view is exempted."""
    from django.db import connection

    from django_cio_reliable import transport

    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)
    seen: list[bool] = []
    for name in ("send", "send_batch"):
        original = getattr(transport.Transport, name)

        def spying(self: transport.Transport, *args: Any, _sent: Any = original) -> Any:
            seen.append(connection.in_atomic_block)
            return _sent(self, *args)

        monkeypatch.setattr(transport.Transport, name, spying)
    dead = store(status="dead")
    response = action(admin_client, OPERATIONS, "replay_now", [dead])
    assert messages_of(response) == [
        "Requeued 1 operation: 1 delivered, 0 failed (will be retried), 0 dead."
    ]
    assert seen == [False]

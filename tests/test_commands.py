"""``manage.py cio_replay`` and ``manage.py cio_status`` through ``call_command``."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from io import StringIO
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.utils import timezone

import django_cio_reliable as cio
from django_cio_reliable import clock
from django_cio_reliable.conf import app_settings
from django_cio_reliable.idempotency import new_event_id
from django_cio_reliable.management.commands import cio_replay, cio_status
from django_cio_reliable.models import DeliveryState, Operation
from django_cio_reliable.privacy import FORGOTTEN
from django_cio_reliable.testing import FakeCustomerIO
from tests.conftest import API_KEY

pytestmark = pytest.mark.django_db

SECRET = "pii-secret@example.com"


def make_op(
    customer: str = "1",
    *,
    kind: str = "track",
    status: str = "dead",
    created_at: datetime | None = None,
    error: str = "",
    code: int | None = None,
    attempts: int = 3,
    **extra: Any,
) -> Operation:
    """Store one operation directly, the way the outbox would have left it."""
    now = timezone.now()
    event_id = new_event_id() if kind in ("track", "track_anonymous") else ""
    payload: dict[str, Any] = (
        {"name": "order_placed", "data": {"email": SECRET}, "id": event_id}
        if event_id
        else {"attributes": {"email": SECRET}}
    )
    op: Operation = Operation.objects.create(
        kind=kind,
        customer_id=customer,
        person_key=("a:" if kind == "track_anonymous" else "c:") + customer,
        name="order_placed" if event_id else "",
        payload=payload,
        event_id=event_id,
        status=status,
        attempts=attempts,
        next_attempt_at=now + timedelta(hours=1),
        created_at=created_at or now,
        last_error=error,
        last_status_code=code,
        dead_at=now if status == "dead" else None,
        delivered_at=now if status == "delivered" else None,
        **extra,
    )
    return op


def replay(*args: str, command: Any = None) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(command or "cio_replay", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def status_of(*ops: Operation) -> list[str]:
    return [Operation.objects.get(pk=op.pk).status for op in ops]


def test_string_constants_match_the_models() -> None:
    assert {
        cio_replay.DEAD,
        cio_replay.FAILED,
        cio_replay.PENDING,
        cio_replay.SENDING,
        cio_replay.DELIVERED,
    } == set(Operation.Status.values)
    assert cio_replay.AUTH_PAUSE in DeliveryState.PauseReason.values
    assert set(cio_status.STATUSES) == set(Operation.Status.values)
    assert set(cio_status.PAUSE_REASONS) <= set(DeliveryState.PauseReason.values)


# ---------------------------------------------------------------------------- cio_replay: select


def test_default_requeues_dead_only_keeping_event_ids() -> None:
    dead = make_op("1", error="400 bad", code=400)
    others = [make_op("2", status=s) for s in ("failed", "pending", "delivered", "sending")]
    before = {op.pk: Operation.objects.get(pk=op.pk).updated_at for op in others}

    out, _ = replay()

    assert "Requeued 1 of 1 selected operations" in out
    row = Operation.objects.get(pk=dead.pk)
    assert row.status == "pending"
    assert row.attempts == 0
    assert row.dead_at is None
    assert row.next_attempt_at <= timezone.now()
    assert row.event_id == dead.event_id
    assert row.payload["id"] == dead.event_id
    assert status_of(*others) == ["failed", "pending", "delivered", "sending"]
    assert {op.pk: Operation.objects.get(pk=op.pk).updated_at for op in others} == before


def test_keep_attempts() -> None:
    op = make_op(attempts=7)
    replay("--keep-attempts")
    assert Operation.objects.get(pk=op.pk).attempts == 7


def test_status_repeatable_and_comma_list() -> None:
    dead, failed, pending, delivered = (
        make_op(status=s) for s in ("dead", "failed", "pending", "delivered")
    )
    out, _ = replay("--status", "failed,pending", "--status", "DEAD", "--customer", "1")
    assert "Requeued 3 of 3" in out
    assert status_of(dead, failed, pending, delivered) == [
        "pending",
        "pending",
        "pending",
        "delivered",
    ]


def test_kind_filter() -> None:
    track = make_op(kind="track")
    identify = make_op(kind="identify")
    anonymous = make_op(kind="track_anonymous")
    delete = make_op(kind="delete")
    replay("--kind", "identify", "--kind", "track-anonymous,delete")
    assert status_of(track, identify, anonymous, delete) == [
        "dead",
        "pending",
        "pending",
        "pending",
    ]


def test_customer_filter_repeatable_and_never_split() -> None:
    one, two, three, comma = make_op("1"), make_op("2"), make_op("3"), make_op("1,2")
    replay("--customer", "1", "--customer", "3")
    assert status_of(one, two, three, comma) == ["pending", "dead", "pending", "dead"]
    replay("--customer", "1,2")
    assert status_of(two, comma) == ["dead", "pending"]


def test_id_filter_and_unselected_ids_are_reported() -> None:
    a, b, c = make_op(), make_op(), make_op(status="failed")
    out, err = replay("--id", str(a.pk), "--id", f"{c.pk},999999")
    assert "Requeued 1 of 1" in out
    assert status_of(a, b, c) == ["pending", "dead", "failed"]
    assert f"#{c.pk} (failed)" in err
    assert "#999999 (no such operation)" in err


def test_error_contains_is_case_insensitive() -> None:
    match = make_op(error="Customer.io said: Attribute VALUE too long")
    other = make_op(error="gave up after 25 attempts: 503")
    replay("--error-contains", "attribute value")
    assert status_of(match, other) == ["pending", "dead"]


def test_since_until_with_dates_and_datetimes() -> None:
    utc = dt_timezone.utc
    may1_late = make_op(created_at=datetime(2024, 5, 1, 23, 59, tzinfo=utc))
    may2 = make_op(created_at=datetime(2024, 5, 2, 0, 0, tzinfo=utc))
    april = make_op(created_at=datetime(2024, 4, 30, 12, 0, tzinfo=utc))

    # A date alone: --until covers the whole day, --since starts at midnight.
    out, _ = replay("--since", "2024-05-01", "--until", "2024-05-01", "--dry-run")
    assert "1 operation would be replayed" in out
    assert f"\n{may1_late.pk} " in out

    # Datetimes with an offset; both bounds inclusive.
    out, _ = replay("--since", "2024-04-30T14:00:00+02:00", "--until", "2024-05-02T00:00:00Z")
    assert "Requeued 3 of 3" in out
    assert status_of(may1_late, may2, april) == ["pending", "pending", "pending"]


def test_naive_values_are_in_the_current_time_zone() -> None:
    # 2024-05-01 23:30 UTC is 2024-05-02 08:30 in Tokyo.
    op = make_op(created_at=datetime(2024, 5, 1, 23, 30, tzinfo=dt_timezone.utc))
    out, _ = replay("--since", "2024-05-02", "--dry-run")
    assert "No operations match." in out
    with timezone.override(ZoneInfo("Asia/Tokyo")):
        out, _ = replay("--since", "2024-05-02", "--until", "2024-05-02T08:30", "--dry-run")
        assert "1 operation would be replayed" in out
        out, _ = replay("--until", "2024-05-02T08:29:59", "--dry-run")
        assert "No operations match." in out
    assert status_of(op) == ["dead"]


def test_filters_combine_with_and() -> None:
    hit = make_op("7", kind="identify", error="HTTP 400 invalid email")
    wrong_kind = make_op("7", kind="track", error="HTTP 400 invalid email")
    wrong_customer = make_op("8", kind="identify", error="HTTP 400 invalid email")
    wrong_error = make_op("7", kind="identify", error="timeout")
    replay("--kind", "identify", "--customer", "7", "--error-contains", "INVALID")
    assert status_of(hit, wrong_kind, wrong_customer, wrong_error) == [
        "pending",
        "dead",
        "dead",
        "dead",
    ]


def test_limit_takes_the_oldest_first() -> None:
    ops = [make_op(str(i)) for i in range(5)]
    out, _ = replay("--limit", "2")
    assert "Requeued 2 of 2" in out
    assert status_of(*ops) == ["pending", "pending", "dead", "dead", "dead"]


def test_nothing_matches() -> None:
    make_op(status="delivered")
    out, _ = replay()
    assert out.strip() == "No operations match."


def test_non_dead_statuses_need_a_filter_or_all() -> None:
    failed = make_op(status="failed")
    with pytest.raises(CommandError, match="needs a filter") as raised:
        replay("--status", "failed")
    assert raised.value.returncode == 2
    assert status_of(failed) == ["failed"]
    # A dry run may look at everything; --all (or any filter) allows the replay.
    out, _ = replay("--status", "failed", "--dry-run")
    assert "1 operation would be replayed" in out
    replay("--status", "failed", "--all")
    assert status_of(failed) == ["pending"]


def test_delivered_needs_the_flag_and_warns() -> None:
    delivered = make_op(status="delivered", kind="identify")
    with pytest.raises(CommandError, match="--include-delivered"):
        replay("--status", "delivered", "--id", str(delivered.pk))
    assert status_of(delivered) == ["delivered"]

    out, err = replay("--status", "delivered", "--include-delivered", "--id", str(delivered.pk))
    assert "Requeued 1 of 1" in out
    assert "Warning: replaying delivered operations" in err
    row = Operation.objects.get(pk=delivered.pk)
    assert (row.status, row.delivered_at, row.attempts) == ("pending", None, 0)


# ---------------------------------------------------------------------------- cio_replay: dry run


def test_dry_run_changes_nothing_and_prints_a_table() -> None:
    long_error = "permanent: " + "x" * 200
    op = make_op("cust-42", kind="identify", error=long_error, code=400, attempts=4)
    make_op("cust-43", error="timeout\nwith newline")
    snapshot = list(Operation.objects.order_by("id").values())

    out, _ = replay("--dry-run")

    assert list(Operation.objects.order_by("id").values()) == snapshot
    lines = out.splitlines()
    assert lines[0] == "Dry run: 2 operations would be replayed; nothing was changed."
    assert lines[1].split() == [
        "id",
        "kind",
        "customer",
        "status",
        "attempts",
        "last",
        "status",
        "error",
    ]
    assert lines[2].split()[:6] == [str(op.pk), "identify", "cust-42", "dead", "4", "400"]
    assert lines[2].endswith(long_error[:80])
    assert long_error[:81] not in out
    assert "timeout with newline" in lines[3]
    assert SECRET not in out
    assert "order_placed" not in out


def test_dry_run_table_is_capped_unless_verbose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cio_replay, "DRY_RUN_ROWS", 2)
    for i in range(5):
        make_op(str(i))
    out, _ = replay("--dry-run")
    assert "5 operations would be replayed" in out
    assert len(out.splitlines()) == 1 + 1 + 2 + 1
    assert "… and 3 more" in out
    out, _ = replay("--dry-run", "--verbosity", "2")
    assert len(out.splitlines()) == 1 + 1 + 5


def test_dry_run_with_limit() -> None:
    ops = [make_op(str(i)) for i in range(3)]
    out, _ = replay("--dry-run", "--limit", "1")
    assert "1 operation would be replayed" in out
    assert f"\n{ops[0].pk} " in out
    assert f"\n{ops[1].pk} " not in out


# ---------------------------------------------------------------------------- cio_replay: errors


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--status", "bogus"], "unknown status 'bogus'"),
        (["--status", "sending"], "not replayable"),
        (["--status", "delivered"], "add --include-delivered"),
        (["--include-delivered"], "only goes with --status delivered"),
        (["--kind", "page"], "unknown kind 'page'"),
        (["--since", "yesterday"], "not an ISO 8601 date"),
        (["--until", "2024-13-01"], "not an ISO 8601 date"),
        (["--since", "2024-05-02", "--until", "2024-05-01"], "is after --until"),
        (["--since", "2024-05-01T10:00Z", "--until", "2024-05-01T09:59Z"], "is after --until"),
        (["--limit", "0"], "--limit must be at least 1"),
        (["--rate", "0", "--now"], "--rate must be greater than 0"),
        (["--rate", "-1", "--now"], "--rate must be greater than 0"),
        (["--chunk-size", "0", "--now"], "--chunk-size must be at least 1"),
        (["--id", "abc"], "not an operation id"),
        (["--id", "0"], "not an operation id"),
        (["--customer", " "], "--customer needs a customer id"),
        (["--error-contains", " "], "--error-contains needs some text"),
        (["--now", "--dry-run"], "exclude each other"),
        (["--rate", "5"], "--rate only applies with --now"),
        (["--chunk-size", "5"], "--chunk-size only applies with --now"),
        (["--force"], "--force only applies with --now"),
        (["--status", "pending"], "needs a filter"),
    ],
)
def test_bad_arguments(args: list[str], message: str) -> None:
    op = make_op()
    with pytest.raises(CommandError, match=message) as raised:
        replay(*args)
    assert raised.value.returncode == 2
    assert status_of(op) == ["dead"]


def test_argparse_errors_are_command_errors() -> None:
    with pytest.raises(CommandError, match="invalid int value"):
        replay("--limit", "many")


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--limit", "0"], 2),
        (["--limit", "many"], 2),
        (["--dry-run"], 0),
    ],
)
def test_manage_py_exit_codes(
    argv: list[str], code: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_op()
    # run_from_argv closes every connection when it is done; keep the test's transaction.
    monkeypatch.setattr(connections, "close_all", lambda: None)
    command = cio_replay.Command()
    if code:
        with pytest.raises(SystemExit) as raised:
            command.run_from_argv(["manage.py", "cio_replay", *argv])
        assert raised.value.code == code
    else:
        command.run_from_argv(["manage.py", "cio_replay", *argv])
        assert "would be replayed" in capsys.readouterr().out


# ---------------------------------------------------------------------------- cio_replay --now


class FakeTime:
    """Monotonic time that advances only when the command sleeps (or ``step`` per read)."""

    def __init__(self, step: float = 0.0) -> None:
        self.current = 1000.0
        self.step = step
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        self.current += self.step
        return self.current

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.current += seconds


class TTY(StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def server(fake_cio: FakeCustomerIO, settings: Any) -> FakeCustomerIO:
    """The fake server, with no shared rate limit in the way and batching on."""
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "RATE_LIMIT": 100_000, "BATCH": True}
    return fake_cio


def no_batching(settings: Any) -> None:
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "BATCH": False}


def dead_via_api(count: int, *, customer_prefix: str = "u") -> list[Operation]:
    """Operations stored through the public API, then dead-lettered (as after an incident)."""
    ops = [cio.track(f"{customer_prefix}{i}", "order_placed", {"n": i}) for i in range(count)]
    Operation.objects.filter(pk__in=[op.pk for op in ops]).update(
        status="dead", attempts=25, dead_at=timezone.now(), last_error="gave up: 503"
    )
    return ops


def now_command(fake: FakeTime | None = None) -> cio_replay.Command:
    fake = fake or FakeTime()
    return cio_replay.Command(sleep=fake.sleep, monotonic=fake.monotonic)


def test_now_delivers_with_the_stored_event_ids(server: FakeCustomerIO) -> None:
    ops = dead_via_api(3)
    identify = cio.identify("u0", {"plan": "pro"})
    Operation.objects.filter(pk=identify.pk).update(status="dead")

    out, _ = replay("--now", command=now_command())

    assert out.splitlines()[-1] == "delivered=4 dead=0 failed=0 skipped=0"
    assert status_of(*ops, identify) == ["delivered"] * 4
    receipts = server.receipts
    assert sorted(str(r.event_id) for r in receipts if r.kind == "track") == sorted(
        op.event_id for op in ops
    )
    assert all(len(op.event_id) == 26 for op in ops)
    assert {op.pk: op.event_id for op in ops} == dict(
        Operation.objects.filter(pk__in=[op.pk for op in ops]).values_list("id", "event_id")
    )


def test_replay_of_a_delivered_event_is_deduplicated_by_its_id(
    server: FakeCustomerIO, settings: Any
) -> None:
    no_batching(settings)
    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "SCRUB_DELIVERED": False}
    op = dead_via_api(1)[0]
    replay("--now", command=now_command())
    replay(
        "--now",
        "--status",
        "delivered",
        "--include-delivered",
        "--id",
        str(op.pk),
        command=now_command(),
    )
    receipts = [r for r in server.receipts if r.kind == "track"]
    assert [r.event_id for r in receipts] == [op.event_id, op.event_id]
    assert [r.applied for r in receipts] == [True, False]


def test_scrubbed_delivered_operations_are_never_replayed(
    server: FakeCustomerIO, settings: Any
) -> None:
    no_batching(settings)
    op = dead_via_api(1)[0]
    replay("--now", command=now_command())
    row = Operation.objects.get(pk=op.pk)
    assert row.status == "delivered"
    assert row.payload == {}
    assert row.payload_erased_at is not None

    out, err = replay(
        "--now",
        "--status",
        "delivered",
        "--include-delivered",
        "--id",
        str(op.pk),
        command=now_command(),
    )

    assert "Skipped 1 operation whose payload was erased" in out
    assert "No operations match." in out
    assert f"#{op.pk} (delivered, payload erased)" in err
    assert [r.event_id for r in server.receipts if r.kind == "track"] == [op.event_id]


def test_forgotten_operations_are_never_replayed(server: FakeCustomerIO) -> None:
    gone, kept = dead_via_api(2)
    pending = cio.track(gone.customer_id, "later")
    cio.forget(gone.customer_id)
    assert Operation.objects.get(pk=gone.pk).payload_erased_at is not None
    assert Operation.objects.get(pk=pending.pk).last_error == FORGOTTEN

    dry, _ = replay("--dry-run")
    assert "Skipped 2 operations whose payload was erased" in dry
    assert "Dry run: 1 operation would be replayed" in dry

    out, _ = replay("--now", command=now_command())

    assert "Skipped 2 operations whose payload was erased" in out
    assert out.splitlines()[-1] == "delivered=1 dead=0 failed=0 skipped=0"
    assert status_of(gone, pending, kept) == ["dead", "dead", "delivered"]
    assert [r.customer_id for r in server.receipts] == [kept.customer_id]

    requeued, err = replay("--status", "dead", "--id", str(gone.pk), "--id", str(pending.pk))
    assert "No operations match." in requeued
    assert f"#{gone.pk} (dead, payload erased)" in err
    assert status_of(gone, pending) == ["dead", "dead"]


def test_now_partial_failure_exits_1(server: FakeCustomerIO, settings: Any) -> None:
    no_batching(settings)
    ops = dead_via_api(3)
    server.fail_next(1, status=400)

    out = StringIO()
    with pytest.raises(CommandError, match="1 operations were not delivered") as raised:
        call_command(now_command(), "--now", stdout=out, stderr=StringIO())

    assert raised.value.returncode == 1
    assert out.getvalue().splitlines()[-1] == "delivered=2 dead=1 failed=0 skipped=0"
    assert status_of(*ops) == ["dead", "delivered", "delivered"]
    assert Operation.objects.get(pk=ops[0].pk).last_status_code == 400


def test_now_transient_failure_counts_as_failed(server: FakeCustomerIO, settings: Any) -> None:
    no_batching(settings)
    ops = dead_via_api(2)
    server.fail_next(1, status=503)
    out = StringIO()
    with pytest.raises(CommandError, match="1 failed and will be retried") as raised:
        call_command(now_command(), "--now", stdout=out)
    assert raised.value.returncode == 1
    assert out.getvalue().splitlines()[-1] == "delivered=1 dead=0 failed=1 skipped=0"
    assert status_of(*ops) == ["failed", "delivered"]


def test_now_refuses_while_credentials_are_rejected(server: FakeCustomerIO) -> None:
    ops = dead_via_api(2)
    DeliveryState.objects.create(
        destination=app_settings.destination,
        paused_until=timezone.now() + timedelta(minutes=5),
        pause_reason="auth",
        auth_failed_at=timezone.now(),
    )

    with pytest.raises(CommandError, match="Refusing --now: delivery is paused") as raised:
        replay("--now", command=now_command())
    assert raised.value.returncode == 3
    assert status_of(*ops) == ["dead", "dead"]
    assert server.requests == []

    out, err = replay("--now", "--force", command=now_command())
    assert "lifted the credentials pause" in err
    assert out.splitlines()[-1] == "delivered=2 dead=0 failed=0 skipped=0"
    assert DeliveryState.objects.get().paused_until is None


def test_now_is_not_refused_for_an_expired_or_rate_limit_pause(server: FakeCustomerIO) -> None:
    dead_via_api(1)
    DeliveryState.objects.create(
        destination=app_settings.destination,
        paused_until=timezone.now() - timedelta(seconds=1),
        pause_reason="auth",
    )
    assert cio_replay._refuse_reason() is None
    DeliveryState.objects.update(
        paused_until=timezone.now() + timedelta(minutes=5), pause_reason="rate_limited"
    )
    assert cio_replay._refuse_reason() is None


def test_now_stops_when_credentials_are_rejected_midway(
    server: FakeCustomerIO, settings: Any
) -> None:
    no_batching(settings)
    ops = dead_via_api(3)
    server.fail_next(1, status=401)
    out = StringIO()
    with pytest.raises(CommandError, match="stopped early: Customer.io rejected") as raised:
        call_command(now_command(), "--now", "--chunk-size", "1", stdout=out)
    assert raised.value.returncode == 1
    assert out.getvalue().splitlines()[-1] == "delivered=0 dead=0 failed=0 skipped=3"
    # The first was handed back (not dead-lettered); the others were never requeued.
    assert status_of(*ops) == ["pending", "dead", "dead"]


def test_now_waits_out_a_429(
    server: FakeCustomerIO, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_batching(settings)
    ops = dead_via_api(2)
    server.fail_next(1, status=429, retry_after=30)
    fake = FakeTime()
    shift = [0.0]
    real_now = clock.now
    monkeypatch.setattr(clock, "now", lambda: real_now() + timedelta(seconds=shift[0]))

    def sleep(seconds: float) -> None:
        fake.sleep(seconds)
        shift[0] += seconds

    command = cio_replay.Command(sleep=sleep, monotonic=fake.monotonic)
    out, _ = replay("--now", command=command)
    assert out.splitlines()[-1] == "delivered=2 dead=0 failed=0 skipped=0"
    assert status_of(*ops) == ["delivered", "delivered"]
    assert any(29 <= s <= 31 for s in fake.sleeps)


def test_now_leaves_operations_blocked_by_an_earlier_one_queued(server: FakeCustomerIO) -> None:
    earlier = cio.track("p1", "first")
    Operation.objects.filter(pk=earlier.pk).update(
        status="failed", next_attempt_at=timezone.now() + timedelta(hours=1)
    )
    later = dead_via_api(1, customer_prefix="p1-")[0]
    Operation.objects.filter(pk=later.pk).update(customer_id="p1", person_key="c:p1")

    out, _ = replay("--now", "--id", str(later.pk), command=now_command())

    assert "delivered=0 dead=0 failed=0 skipped=1" in out
    assert "1 operations are left queued for the drain workers" in out
    assert status_of(earlier, later) == ["failed", "pending"]
    assert server.requests == []


def test_now_rate_cap_sleeps_between_chunks(server: FakeCustomerIO) -> None:
    dead_via_api(6)
    fake = FakeTime()
    out, _ = replay("--now", "--rate", "2", command=now_command(fake))
    assert out.splitlines()[-1] == "delivered=6 dead=0 failed=0 skipped=0"
    # Chunks of 2 at 2/s: the 2nd and 3rd chunks wait for their slot, a second apart.
    assert [s for s in fake.sleeps if s >= 0.5] == pytest.approx([1.0, 1.0])
    assert len(server.requests) == 3


def test_now_progress_bar_on_a_terminal(server: FakeCustomerIO) -> None:
    dead_via_api(3)
    out = TTY()
    call_command(now_command(), "--now", "--chunk-size", "1", stdout=out)
    text = out.getvalue()
    assert text.count("\r[") == 3
    assert "\r[" + "#" * 30 + "] 3/3 delivered=3" in text
    assert text.splitlines()[-1] == "delivered=3 dead=0 failed=0 skipped=0"


def test_now_plain_progress_lines_without_a_terminal(server: FakeCustomerIO) -> None:
    dead_via_api(3)
    out, _ = replay("--now", "--chunk-size", "1", command=now_command(FakeTime(step=3.0)))
    assert "\r" not in out
    progress = [line for line in out.splitlines() if line.startswith("progress: ")]
    assert progress and len(progress) < 3
    assert progress[0].startswith("progress: ") and "/3 delivered=" in progress[0]
    assert out.splitlines()[-1] == "delivered=3 dead=0 failed=0 skipped=0"


# ---------------------------------------------------------------------------- cio_status


def status(*args: str) -> str:
    out = StringIO()
    call_command("cio_status", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_human_duration() -> None:
    assert clock.human_duration(0) == "0s"
    assert clock.human_duration(59.9) == "59s"
    assert clock.human_duration(61) == "1m 01s"
    assert clock.human_duration(2 * 3600 + 5 * 60 + 9) == "2h 05m"
    assert clock.human_duration(3 * 86400 + 4 * 3600 + 1) == "3d 4h"
    assert clock.human_duration(-5) == "0s"


def test_status_empty_queue() -> None:
    out = status()
    assert "  pending    0" in out
    assert "Oldest open operation: none" in out
    assert "Dead letters: 0" in out
    assert "Delivery: not paused" in out
    assert "Credentials" not in out


def test_status_text_report() -> None:
    old = timezone.now() - timedelta(hours=2, minutes=5)
    make_op(status="pending", created_at=old)
    make_op(status="failed")
    make_op(status="dead")
    make_op(status="dead")
    make_op(status="delivered")
    out = status()
    assert "  pending    1" in out
    assert "  failed     1" in out
    assert "  delivered  1" in out
    assert "  dead       2" in out
    assert "Open (to deliver): 2" in out
    assert "Oldest open operation: 2h 05m (75" in out
    assert "Dead letters: 2" in out
    assert SECRET not in out


def test_status_shows_pause_and_credentials_without_secrets() -> None:
    make_op(status="dead", error=f"401 for key {API_KEY}")
    DeliveryState.objects.create(
        destination=app_settings.destination,
        paused_until=timezone.now() + timedelta(minutes=5),
        pause_reason="auth",
        auth_failed_at=timezone.now(),
        auth_error=f"rejected {API_KEY}",
    )
    out = status()
    assert "Delivery paused until " in out
    assert ": credentials rejected (401/403)" in out
    assert "Credentials: Customer.io rejected them at " in out
    data = json.loads(status("--json"))
    assert data["pause_reason"] == "auth"
    assert data["credentials_failed_at"]
    for text in (out, json.dumps(data)):
        assert API_KEY not in text
        assert SECRET not in text


def test_status_json() -> None:
    make_op(status="pending", created_at=timezone.now() - timedelta(seconds=90))
    make_op(status="dead")
    data = json.loads(status("--json"))
    assert data["counts"] == {"pending": 1, "sending": 0, "failed": 0, "delivered": 0, "dead": 1}
    assert data["open"] == 1
    assert data["dead"] == 1
    assert 89 <= data["oldest_open_age_seconds"] < 120
    assert data["oldest_open_age"].startswith("1m ")
    assert data["paused_until"] is None
    assert data["pause_reason"] is None
    assert data["credentials_failed_at"] is None
    assert data["ok"] is True
    assert data["failures"] == []


def test_status_fail_on_dead() -> None:
    status("--fail-on-dead")
    make_op(status="dead")
    out = StringIO()
    with pytest.raises(CommandError, match="1 dead operations") as raised:
        call_command("cio_status", "--fail-on-dead", "--json", stdout=out)
    assert raised.value.returncode == 1
    data = json.loads(out.getvalue())
    assert data["ok"] is False
    assert data["failures"] == ["1 dead operations"]
    # Without the flag a dead letter is reported but the exit status stays 0.
    assert "Dead letters: 1" in status()


def test_status_fail_on_backlog_threshold() -> None:
    make_op(status="pending")
    make_op(status="failed")
    make_op(status="dead")
    status("--fail-on-backlog", "2")
    with pytest.raises(CommandError, match="2 open operations") as raised:
        status("--fail-on-backlog", "1")
    assert raised.value.returncode == 1


def test_status_fail_on_age_and_auth() -> None:
    make_op(status="pending", created_at=timezone.now() - timedelta(minutes=10))
    status("--fail-on-age", "3600", "--fail-on-auth")
    with pytest.raises(CommandError, match="oldest open operation is 600s old") as raised:
        status("--fail-on-age", "60")
    assert raised.value.returncode == 1
    DeliveryState.objects.create(
        destination=app_settings.destination, auth_failed_at=timezone.now()
    )
    with pytest.raises(CommandError, match="rejected the credentials"):
        status("--fail-on-auth")


@pytest.mark.parametrize("args", [["--fail-on-backlog", "-1"], ["--fail-on-age", "-1"]])
def test_status_bad_arguments(args: list[str]) -> None:
    with pytest.raises(CommandError) as raised:
        status(*args)
    assert raised.value.returncode == 2

"""Real child processes running Django against the test suite's own database.

The concurrency, crash and django-q2 tests start Python processes that import ``tests.settings``
and connect to the database pytest-django created for the session (a file on SQLite, the
``test_…`` database on PostgreSQL), so the parent test and its children see the same rows.

Parent side (in a test): :class:`Children` spawns ``python -m tests.procs <command> …`` with the
test database and the test's ``CIO_RELIABLE`` passed through the environment, and kills every
child (and its process group) when the test ends; :class:`StartLine` makes children and threads
start at the same instant; :func:`bulk_track` inserts many operations fast.

Child side (``python -m tests.procs``): the commands ``track``, ``drain``, ``task-drain`` and
``manage`` below. A child prints its result as one JSON line prefixed with ``CIO-RESULT``.

Environment read by a child:

- ``CIO_SQLITE_NAME`` / ``CIO_PG_NAME``: the database (``tests/settings.py`` reads them);
- ``CIO_TEST_OVERRIDES``: JSON merged into ``settings.CIO_RELIABLE`` before ``django.setup()``;
- ``CIO_TEST_Q_CLUSTER``: JSON merged into ``settings.Q_CLUSTER`` before ``django.setup()``
  (django-q2 reads it once, at import);
- ``CIO_TEST_CHILD_LOG``: a level name (``INFO``, ``DEBUG``) to log ``django_cio_reliable`` to
  the child's stderr, which a failing test shows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django_cio_reliable.models import Operation
    from django_cio_reliable.testing import Receipt

ROOT = Path(__file__).resolve().parent.parent
OVERRIDES_ENV = "CIO_TEST_OVERRIDES"
Q_CLUSTER_ENV = "CIO_TEST_Q_CLUSTER"
LOG_ENV = "CIO_TEST_CHILD_LOG"
RESULT_PREFIX = "CIO-RESULT "
#: Exit status of a ``drain`` child that gave up with operations still open.
EXIT_UNFINISHED = 3
#: Exit status of a child that never saw its start signal.
EXIT_NO_START = 4

OPEN_STATUSES = ("pending", "sending", "failed")
DIE_POINTS = ("none", "claim", "send", "ack")


# --------------------------------------------------------------------------- parent side


def database_env() -> dict[str, str]:
    """Environment that points a child's ``tests.settings`` at this process's test database."""
    from django.db import connection

    name = str(connection.settings_dict["NAME"])
    if connection.vendor == "postgresql":
        return {"CIO_TEST_DB": "postgres", "CIO_PG_NAME": name, "CIO_PG_TEST_NAME": name}
    if connection.vendor == "sqlite":
        if not Path(name).is_file():
            raise RuntimeError(f"child processes need a file test database, not {name!r}")
        return {"CIO_TEST_DB": "sqlite", "CIO_SQLITE_NAME": name, "CIO_SQLITE_TEST_NAME": name}
    raise RuntimeError(f"no child-process support for {connection.vendor}")


def child_env(
    *,
    overrides: Mapping[str, Any] | None = None,
    q_cluster: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The environment of a child: the test database, and this test's ``CIO_RELIABLE``
    (``TRACK_URL`` of the fake server included) updated with ``overrides``."""
    from django.conf import settings

    env = dict(os.environ)
    env.update(database_env())
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env[OVERRIDES_ENV] = json.dumps({**settings.CIO_RELIABLE, **(overrides or {})})
    env[Q_CLUSTER_ENV] = json.dumps(dict(q_cluster or {}))
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


class Child:
    """One spawned child process, the leader of its own process group."""

    def __init__(
        self, name: str, process: subprocess.Popen[bytes], stdout: Path, stderr: Path
    ) -> None:
        self.name = name
        self.process = process
        self.stdout_path = stdout
        self.stderr_path = stderr

    def __repr__(self) -> str:
        return f"<Child {self.name} pid={self.pid} returncode={self.process.returncode}>"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the child was reaped (by :meth:`wait`, :meth:`kill`…)."""
        return self.process.returncode

    def alive(self) -> bool:
        """Whether the child still runs. Does not reap it: until it is reaped, its pid and
        process group cannot be reused, so :meth:`kill` can still signal the group safely."""
        if self.process.returncode is not None:
            return False
        try:
            exited = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        return exited is None

    def wait(self, timeout: float) -> int:
        """Wait for the child to exit; kill it and fail the test if it takes too long."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(
                    f"{self.name} did not exit within {timeout:g}s\n{self.describe()}"
                )
            time.sleep(0.01)
        return self.process.wait()

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the child itself (not its group)."""
        if self.alive():
            os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL the child's whole process group (django-q2 forks workers) and reap it.

        The group is signalled only while the child is not yet reaped (its id is still ours).
        """
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the child, wait up to ``timeout`` for it to exit, then SIGKILL its group."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        self.kill()
        return self.process.returncode

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def result(self) -> dict[str, Any]:
        """The JSON the child printed as its result (the last ``CIO-RESULT`` line)."""
        lines = [ln for ln in self.stdout().splitlines() if ln.startswith(RESULT_PREFIX)]
        if not lines:
            raise AssertionError(f"{self.name} printed no result\n{self.describe()}")
        value: dict[str, Any] = json.loads(lines[-1][len(RESULT_PREFIX) :])
        return value

    def describe(self) -> str:
        """Name, exit status and the tail of the output, for assertion messages."""
        return (
            f"--- {self.name} (pid {self.pid}, returncode {self.process.returncode})\n"
            f"stdout: {self.stdout()[-2000:]}\nstderr: {self.stderr()[-4000:]}"
        )


class Children:
    """Spawns children for one test and kills every one of them on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.spawned: list[Child] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def spawn(
        self,
        command: str,
        *args: str,
        name: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        q_cluster: Mapping[str, Any] | None = None,
    ) -> Child:
        """Start ``python -m tests.procs command *args`` in a new session (process group)."""
        label = name or f"{command}-{len(self.spawned)}"
        stdout_path = self.workdir / f"{label}.out"
        stderr_path = self.workdir / f"{label}.err"
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.procs", command, *args],
                cwd=ROOT,
                env=child_env(overrides=overrides, q_cluster=q_cluster),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        child = Child(label, process, stdout_path, stderr_path)
        self.spawned.append(child)
        return child

    def describe(self) -> str:
        return "\n".join(child.describe() for child in self.spawned)

    def close(self) -> None:
        for child in self.spawned:
            child.kill()


class StartLine:
    """A start barrier across processes: each child touches its ready file, then waits for the
    go file; the parent waits until every child is ready and creates the go file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.go = directory / "go"

    def args(self, name: str) -> list[str]:
        """Command-line arguments that make a child wait at this start line."""
        return ["--ready", str(self.directory / f"ready-{name}"), "--go", str(self.go)]

    def wait_ready(self, children: Iterable[Child], timeout: float = 60.0) -> None:
        """Block until every child (spawned with :meth:`args` of its name) is ready."""
        pending = list(children)
        deadline = time.monotonic() + timeout
        while pending:
            for child in list(pending):
                if (self.directory / f"ready-{child.name}").exists():
                    pending.remove(child)
                elif not child.alive():
                    raise AssertionError(f"{child.name} died before the start\n{child.describe()}")
            if pending and time.monotonic() > deadline:
                details = "\n".join(child.describe() for child in pending)
                raise AssertionError(f"children not ready after {timeout:g}s\n{details}")
            time.sleep(0.01)

    def open(self) -> None:
        self.go.touch()


def bulk_track(
    count: int, people: int, *, name: str = "bulk_event", shuffle: int | None = None
) -> list[Operation]:
    """Insert ``count`` pending track operations spread over ``people`` customers, fast.

    Rows are built the way ``outbox.enqueue`` builds them (payload with a ULID ``id``, the
    event id, the person key), in one ``bulk_create``: no ``on_commit`` hook runs, so nothing
    is dispatched. Operation ``i`` belongs to customer ``str(i % people)`` (round robin), or,
    with a ``shuffle`` seed, to a customer picked by a seeded shuffle of that assignment, so
    one customer's operations are scattered across claims. Each carries ``data={"seq": n}``:
    it is the ``n``-th operation of its customer.
    """
    import random

    from django.utils import timezone

    from django_cio_reliable import outbox, validation
    from django_cio_reliable.models import Operation

    owners = [index % people for index in range(count)]
    if shuffle is not None:
        random.Random(shuffle).shuffle(owners)
    next_seq = [0] * people
    now = timezone.now()
    rows = []
    for owner in owners:
        customer = str(owner)
        payload: dict[str, Any] = {"name": name, "data": {"seq": next_seq[owner]}}
        next_seq[owner] += 1
        rows.append(
            outbox.new_operation(
                Operation.Kind.TRACK,
                customer,
                payload,
                now=now,
                name=name,
                payload_bytes=validation.json_bytes(payload),
            )
        )
    created: list[Operation] = Operation.objects.bulk_create(rows, batch_size=2000)
    assert all(op.pk is not None for op in created)
    return created


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 20 ms; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


def sequences_by_person(receipts: Iterable[Receipt]) -> dict[str, list[int]]:
    """``data["seq"]`` of the receipts of each customer, in the order the server got them."""
    by_person: dict[str, list[int]] = {}
    for receipt in receipts:
        by_person.setdefault(str(receipt.customer_id), []).append(int(receipt.data["seq"]))
    return by_person


# --------------------------------------------------------------------------- child side


def _json_env(name: str) -> dict[str, Any]:
    raw = os.environ.get(name, "")
    value: dict[str, Any] = json.loads(raw) if raw else {}
    return value


def setup_django() -> None:
    """Apply the overrides from the environment, then ``django.setup()``."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    from django.conf import settings

    settings.CIO_RELIABLE.update(_json_env(OVERRIDES_ENV))
    settings.Q_CLUSTER.update(_json_env(Q_CLUSTER_ENV))

    import django

    django.setup()
    level = os.environ.get(LOG_ENV, "")
    if level:
        import logging

        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(asctime)s [{os.getpid()}] %(message)s"))
        logger = logging.getLogger("django_cio_reliable")
        logger.addHandler(handler)
        logger.setLevel(level)


def emit(result: Mapping[str, Any]) -> None:
    """Print the child's result line."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def await_start(ready: str | None, go: str | None, timeout: float = 120.0) -> None:
    """Say we are ready, then spin until the go file exists."""
    if ready:
        Path(ready).touch()
    if not go:
        return
    deadline = time.monotonic() + timeout
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            sys.exit(EXIT_NO_START)
        time.sleep(0.001)


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _replace(owner: object, attribute: str, value: object) -> None:
    setattr(owner, attribute, value)


def install_death(point: str, after: int) -> None:
    """Make this process SIGKILL itself at the ``after``-th time it reaches ``point``.

    - ``claim``: right after a claim committed (operations leased, nothing sent);
    - ``send``: right after a request was answered, before its acknowledgement (the
      operations were applied by the server but are still ``sending`` in the database);
    - ``ack``: inside the acknowledgement, after its UPDATE ran but before it committed.
    """
    if point == "none":
        return
    from django.db import transaction

    from django_cio_reliable import outbox, transport
    from django_cio_reliable.outbox import deliver, runner

    reached = [0]

    def arrive() -> None:
        reached[0] += 1
        if reached[0] >= after:
            _die()

    if point == "claim":
        original_claim = outbox.claim  # what the drain loop (outbox.runner) calls

        def claim(*args: Any, **kwargs: Any) -> outbox.Claim:
            claimed = original_claim(*args, **kwargs)
            if claimed.operations:
                arrive()
            return claimed

        _replace(runner, "claim", claim)
    elif point == "send":
        for method in ("send", "send_batch"):
            original: Callable[..., Any] = getattr(transport.Transport, method)

            def sent(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
                answer = _original(self, *args, **kwargs)
                arrive()
                return answer

            _replace(transport.Transport, method, sent)
    elif point == "ack":
        original_ack = outbox.ack_delivered  # what the Deliverer (outbox.deliver) calls

        def ack(claim_: outbox.Claim, operations: Sequence[Any], *args: Any, **kwargs: Any) -> int:
            if not operations:
                return original_ack(claim_, operations, *args, **kwargs)
            with transaction.atomic():
                updated = original_ack(claim_, operations, *args, **kwargs)
                arrive()
            return updated

        _replace(deliver, "ack_delivered", ack)
    else:
        raise SystemExit(f"unknown death point {point!r}")


def cmd_track(args: argparse.Namespace) -> int:
    """Call ``cio.track`` once, at the start signal, and print the operation it returned."""
    setup_django()
    from django.db import connection

    import django_cio_reliable as cio

    connection.ensure_connection()
    await_start(args.ready, args.go)
    operation = cio.track(
        args.customer, args.event, {"caller": args.caller}, idempotency_key=args.key
    )
    emit({"id": operation.pk, "event_id": operation.event_id, "caller": args.caller})
    connection.close()
    return 0


def cmd_drain(args: argparse.Namespace) -> int:
    """Loop ``outbox.drain`` until no operation is open (or ``--timeout``); print the totals."""
    setup_django()
    from django.db import connection

    from django_cio_reliable import outbox
    from django_cio_reliable.models import Operation

    install_death(args.die_at, args.die_after)
    connection.ensure_connection()
    await_start(args.ready, args.go)
    started = time.monotonic()
    deadline = started + args.timeout
    total = outbox.DrainResult()
    drains = 0
    finished = False
    while time.monotonic() < deadline:
        result = outbox.drain(max_seconds=max(0.1, deadline - time.monotonic()))
        drains += 1
        total.add(result)
        if not Operation.objects.filter(status__in=OPEN_STATUSES).exists():
            finished = True
            break
        if result.claimed == 0:
            # Everything open is leased by another worker or waits behind an earlier
            # operation of its person: poll.
            time.sleep(args.poll)
    emit(
        {
            "pid": os.getpid(),
            "finished": finished,
            "seconds": round(time.monotonic() - started, 3),
            "drains": drains,
            "claimed": total.claimed,
            "delivered": total.delivered,
            "failed": total.failed,
            "dead": total.dead,
            "released": total.released,
            "requests": total.requests,
        }
    )
    connection.close()
    return 0 if finished else EXIT_UNFINISHED


def cmd_task_drain(args: argparse.Namespace) -> int:
    """Run the django-q2 entry point ``tasks.drain`` in the main thread (SIGTERM-aware)."""
    setup_django()
    from django_cio_reliable import tasks

    summary = tasks.drain(max_seconds=args.max_seconds)
    emit(summary)
    return 0


def cmd_manage(args: argparse.Namespace) -> int:
    """Run a management command (``manage qcluster``, ``manage migrate``…)."""
    setup_django()
    from django.core.management import execute_from_command_line

    execute_from_command_line(["manage.py", *args.arguments])
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m tests.procs", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)

    def start_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--ready", help="file to create once set up")
        sub.add_argument("--go", help="file whose creation starts the work")

    track = commands.add_parser("track", help="one cio.track call at the start signal")
    track.add_argument("--customer", default="42")
    track.add_argument("--event", default="order_placed")
    track.add_argument("--key", default="same")
    track.add_argument("--caller", default=f"process-{os.getpid()}")
    start_options(track)
    track.set_defaults(handler=cmd_track)

    drain = commands.add_parser("drain", help="drain until no operation is open")
    drain.add_argument("--timeout", type=float, default=60.0)
    drain.add_argument("--poll", type=float, default=0.05)
    drain.add_argument("--die-at", choices=DIE_POINTS, default="none")
    drain.add_argument("--die-after", type=int, default=1)
    start_options(drain)
    drain.set_defaults(handler=cmd_drain)

    task = commands.add_parser("task-drain", help="django_cio_reliable.tasks.drain()")
    task.add_argument("--max-seconds", type=float, default=30.0)
    task.set_defaults(handler=cmd_task_drain)

    manage = commands.add_parser("manage", help="a management command")
    manage.add_argument("arguments", nargs=argparse.REMAINDER)
    manage.set_defaults(handler=cmd_manage)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())

"""Shared helpers of the benchmarks and the soak: databases, child processes, rows, machine facts.

Nothing here imports Django at module level: ``run.py`` (the orchestrator) stays Django-free and
each section runs in its own process with its own database (see :func:`configure`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SITE_ID = "bench-site"
API_KEY = "bench-api-key"
#: Customer.io latency simulated by FakeCustomerIO where a row says "at 30 ms".
LATENCY = 0.03
#: A rate limit that never binds (rows that measure something else than the limiter).
UNBOUND_RATE = 1_000_000.0
#: The library's default RATE_LIMIT (requests per second, whole deployment).
DEFAULT_RATE = 100.0


# --------------------------------------------------------------------------- rows


@dataclass
class Row:
    """One line of the results table: a figure, the baseline of the same run, their ratio.

    ``ratio`` is oriented so that bigger is better for the library (``baseline / value`` for
    costs, ``value / baseline`` for throughputs); ``ratio_label`` says which.
    """

    section: str
    label: str
    value: float | None
    unit: str
    baseline_label: str = ""
    baseline: float | None = None
    baseline_unit: str = ""
    ratio: float | None = None
    ratio_label: str = ""
    goal: str = ""
    met: bool | None = None
    note: str = ""
    runs: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Row:
        return cls(**dict(data))


def cost_row(
    section: str,
    label: str,
    value: float,
    baseline_label: str,
    baseline: float,
    *,
    unit: str = "µs",
    goal: float | None = None,
    runs: int = 1,
    note: str = "",
) -> Row:
    """A row for a cost (smaller is better): ratio = baseline / value ("× cheaper")."""
    ratio = baseline / value if value else None
    return Row(
        section=section,
        label=label,
        value=value,
        unit=unit,
        baseline_label=baseline_label,
        baseline=baseline,
        baseline_unit=unit,
        ratio=ratio,
        ratio_label="× cheaper",
        goal=f"≥ {goal:g}× cheaper" if goal is not None else "",
        met=None if goal is None or ratio is None else ratio >= goal,
        runs=runs,
        note=note,
    )


def rate_row(
    section: str,
    label: str,
    value: float,
    baseline_label: str,
    baseline: float,
    *,
    unit: str = "op/s",
    goal: float | None = None,
    runs: int = 1,
    note: str = "",
) -> Row:
    """A row for a throughput (bigger is better): ratio = value / baseline ("× faster")."""
    ratio = value / baseline if baseline else None
    return Row(
        section=section,
        label=label,
        value=value,
        unit=unit,
        baseline_label=baseline_label,
        baseline=baseline,
        baseline_unit=unit,
        ratio=ratio,
        ratio_label="× faster",
        goal=f"≥ {goal:g}×" if goal is not None else "",
        met=None if goal is None or ratio is None else ratio >= goal,
        runs=runs,
        note=note,
    )


def write_rows(
    path: str | None, rows: Sequence[Row], meta: Mapping[str, Any] | None = None
) -> None:
    """Write a section's rows (and facts about the run) as JSON for ``run.py``."""
    if not path:
        return
    Path(path).write_text(
        json.dumps({"rows": [r.to_dict() for r in rows], "meta": dict(meta or {})}, indent=1)
    )


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def repeat(runs: int, fn: Callable[[], float]) -> tuple[float, list[float]]:
    """Run ``fn`` ``runs`` times; return the median and every sample."""
    samples = [fn() for _ in range(runs)]
    return median(samples), samples


# --------------------------------------------------------------------------- databases


def pg_database(base: str) -> str:
    """The PostgreSQL database named ``base`` plus ``$CIO_BENCH_PG_SUFFIX`` (the smoke test
    sets one, so it never drops the databases of a ``make bench`` running at the same time)."""
    return base + os.environ.get("CIO_BENCH_PG_SUFFIX", "")


def bench_env(
    db: str,
    *,
    pg_name: str | None = None,
    sqlite_path: str | None = None,
    cio: Mapping[str, Any] | None = None,
    q_cluster: Mapping[str, Any] | None = None,
    log_level: str = "",
) -> dict[str, str]:
    """The environment variables ``benchmarks.settings`` reads (for this process or a child)."""
    env = {
        "DJANGO_SETTINGS_MODULE": "benchmarks.settings",
        "CIO_BENCH_DB": db,
        "CIO_BENCH_PG_NAME": pg_name or pg_database("cio_bench"),
        "CIO_BENCH_CIO": json.dumps(dict(cio or {})),
        "CIO_BENCH_Q": json.dumps(dict(q_cluster or {})),
        "CIO_BENCH_LOG": log_level,
    }
    if sqlite_path:
        env["CIO_BENCH_SQLITE"] = sqlite_path
    return env


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a child: ``ROOT`` importable, unbuffered output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTEST_CURRENT_TEST", None)
    env.update(extra or {})
    return env


def pg_admin_connect() -> Any:
    import psycopg

    return psycopg.connect(
        host=os.environ.get("CIO_PG_HOST", "127.0.0.1"),
        port=os.environ.get("CIO_PG_PORT", "5432"),
        user=os.environ.get("CIO_PG_USER", "postgres"),
        dbname="postgres",
        autocommit=True,
        connect_timeout=10,
    )


def recreate_pg_database(name: str) -> None:
    """Drop (ending its sessions) and create the PostgreSQL database ``name``."""
    with pg_admin_connect() as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_pg_database(name: str) -> None:
    with pg_admin_connect() as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def configure(
    db: str,
    *,
    pg_name: str | None = None,
    sqlite_path: str | None = None,
    cio: Mapping[str, Any] | None = None,
    q_cluster: Mapping[str, Any] | None = None,
    log_level: str = "",
    fresh: bool = True,
) -> dict[str, str]:
    """Point ``benchmarks.settings`` at a (fresh) database, ``django.setup()`` and migrate.

    Returns the environment a child process needs to use the same database and settings.
    """
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if db == "sqlite" and sqlite_path is None:
        sqlite_path = str(Path(tempfile.gettempdir()) / f"cio_bench_{os.getpid()}.sqlite3")
        atexit.register(_remove_sqlite, sqlite_path)
    env = bench_env(
        db,
        pg_name=pg_name,
        sqlite_path=sqlite_path,
        cio=cio,
        q_cluster=q_cluster,
        log_level=log_level,
    )
    os.environ.update(env)
    if fresh:
        if db == "postgres":
            recreate_pg_database(env["CIO_BENCH_PG_NAME"])
        elif sqlite_path:
            for suffix in ("", "-journal", "-wal", "-shm"):
                Path(sqlite_path + suffix).unlink(missing_ok=True)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return env


def _remove_sqlite(path: str) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(path + suffix).unlink(missing_ok=True)


def bulk_pending(
    count: int, people: int, *, name: str = "bench_event", start: int = 0, batch: int = 5000
) -> None:
    """Insert ``count`` pending track operations over ``people`` customers with ``bulk_create``.

    Rows look like ``outbox.enqueue`` makes them (a ULID event ``id`` in the payload, the
    person key); nothing is dispatched. Operation ``i`` belongs to customer ``b{i % people}``
    and carries ``data={"seq": i}``.
    """
    from django.utils import timezone

    from django_cio_reliable import outbox, validation
    from django_cio_reliable.models import Operation

    now = timezone.now()
    rows: list[Operation] = []
    for index in range(start, start + count):
        customer = f"b{index % people}"
        payload: dict[str, Any] = {"name": name, "data": {"seq": index, "total": 42}}
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
        if len(rows) >= batch:
            Operation.objects.bulk_create(rows)
            rows = []
    if rows:
        Operation.objects.bulk_create(rows)


def reset_outbox() -> None:
    """Empty the outbox and the shared delivery state (fast, for repeated runs)."""
    from django.db import connection

    from django_cio_reliable.models import DeliveryState, IdempotencyKey, Operation

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            tables = [IdempotencyKey._meta.db_table, Operation._meta.db_table]
            cursor.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables))
    else:
        IdempotencyKey.objects.all().delete()
        Operation.objects.all().delete()
    DeliveryState.objects.all().delete()


def vacuum_analyze() -> None:
    """``VACUUM ANALYZE`` the outbox on PostgreSQL so each run starts from fresh statistics."""
    from django.db import connection

    from django_cio_reliable.models import Operation

    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(f'VACUUM ANALYZE "{Operation._meta.db_table}"')


def open_count() -> int:
    from django_cio_reliable.models import Operation

    return int(Operation.objects.filter(status__in=Operation.OPEN_STATUSES).count())


# --------------------------------------------------------------------------- processes


@dataclass
class Child:
    """A child process that leads its own process group; output goes to files."""

    name: str
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (django-q2 forks) and reap the leader."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the leader, wait, then SIGKILL the group."""
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.process.wait(timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def result(self) -> dict[str, Any]:
        """The last JSON line the child printed with the ``RESULT`` prefix."""
        lines = [ln for ln in self.stdout().splitlines() if ln.startswith(RESULT_PREFIX)]
        if not lines:
            raise RuntimeError(
                f"{self.name} (pid {self.pid}, exit {self.process.poll()}) printed no result\n"
                f"{self.stderr()[-3000:]}"
            )
        value: dict[str, Any] = json.loads(lines[-1][len(RESULT_PREFIX) :])
        return value


RESULT_PREFIX = "BENCH-RESULT "


def spawn(
    name: str, argv: Sequence[str], workdir: Path, env: Mapping[str, str] | None = None
) -> Child:
    """Start ``argv`` in a new session with stdout/stderr in ``workdir/name.{out,err}``."""
    out_path = workdir / f"{name}.out"
    err_path = workdir / f"{name}.err"
    with out_path.open("ab") as out, err_path.open("ab") as err:
        process = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env=child_env(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    return Child(name, process, out_path, err_path)


def emit(result: Mapping[str, Any]) -> None:
    """Print a child's result line (read back by :meth:`Child.result`)."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(dict(result)) + "\n")
    sys.stdout.flush()


class StartLine:
    """Children touch ``ready-NAME`` then wait for ``go``; the parent opens the line."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.go = directory / "go"
        self.go.unlink(missing_ok=True)

    def args(self, name: str) -> list[str]:
        return ["--ready", str(self.directory / f"ready-{name}"), "--go", str(self.go)]

    def wait_ready(self, children: Sequence[Child], timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        for child in children:
            marker = self.directory / f"ready-{child.name}"
            while not marker.exists():
                if not child.alive():
                    raise RuntimeError(f"{child.name} died before the start\n{child.stderr()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{child.name} not ready after {timeout:g}s")
                time.sleep(0.01)

    def open(self) -> float:
        """Start everybody; return the monotonic time of the start."""
        started = time.monotonic()
        self.go.touch()
        return started


def await_start(ready: str | None, go: str | None, timeout: float = 300.0) -> None:
    """Child side of :class:`StartLine`."""
    if ready:
        Path(ready).touch()
    if not go:
        return
    deadline = time.monotonic() + timeout
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            raise SystemExit("no start signal")
        time.sleep(0.0005)


# --------------------------------------------------------------------------- measuring


def proc_status() -> dict[str, int]:
    """``VmRSS``, ``VmHWM`` … of this process in kB, from ``/proc/self/status`` (Linux)."""
    values: dict[str, int] = {}
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return values
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key.startswith("Vm") and rest.strip().endswith("kB"):
            values[key] = int(rest.split()[0])
    return values


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs``); say whether it worked."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/PID/stat``; 0 if gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # After the command name: state is field 3, utime field 14, stime field 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backend_pid() -> int:
    """The process id of this connection's PostgreSQL backend (0 elsewhere)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def cpu_times() -> tuple[float, float]:
    """Machine-wide (busy, total) CPU seconds from ``/proc/stat`` (all cores)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0, 0.0
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    total = sum(ticks[:8])
    hz = os.sysconf("SC_CLK_TCK")
    return (total - idle) / hz, total / hz


def max_in_window(times: Sequence[float], window: float = 1.0) -> int:
    """The largest number of ``times`` inside any half-open window ``[t, t + window)``."""
    ordered = sorted(times)
    best = 0
    left = 0
    for right, value in enumerate(ordered):
        while value - ordered[left] >= window:
            left += 1
        best = max(best, right - left + 1)
    return best


def machine_facts() -> dict[str, Any]:
    """CPU count, Python, Django, SQLite, PostgreSQL (when reachable), packages."""
    import sqlite3
    from importlib import metadata

    facts: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": _memory_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "load_before": load_average(),
    }
    for package in ("Django", "django-q2", "customerio", "psycopg", "requests"):
        try:
            facts[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            facts[package] = "not installed"
    try:
        with pg_admin_connect() as conn:
            row = conn.execute("SHOW server_version").fetchone()
            facts["postgresql"] = row[0] if row else "?"
            fsync = conn.execute("SHOW synchronous_commit").fetchone()
            facts["postgresql_synchronous_commit"] = fsync[0] if fsync else "?"
    except Exception as exc:  # noqa: BLE001 - a fact, not a failure
        facts["postgresql"] = f"unreachable ({type(exc).__name__})"
    return facts


def load_average() -> str:
    """``/proc/loadavg``'s 1, 5 and 15 minute load averages (other work on the machine)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _memory_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def fake_server(latency: float = 0.0) -> Any:
    """A started FakeCustomerIO with the benchmark credentials (caller stops it)."""
    from django_cio_reliable.testing import FakeCustomerIO

    server = FakeCustomerIO(site_id=SITE_ID, api_key=API_KEY)
    server.start()
    server.set_latency(latency)
    return server


def library_settings(server_url: str, **overrides: Any) -> dict[str, Any]:
    """``CIO_RELIABLE`` for a benchmark against ``server_url`` (kicks never reach a broker)."""
    return {
        "SITE_ID": SITE_ID,
        "API_KEY": API_KEY,
        "TRACK_URL": server_url,
        "DISPATCH": "task",
        "KICK_DEBOUNCE": 3600,
        **overrides,
    }


def silence_kicks() -> None:
    """Make after-commit kicks free: no django-q2 task is queued (no cluster runs here)."""
    from django_cio_reliable import dispatch

    dispatch.kicker._send = lambda: None  # type: ignore[method-assign]

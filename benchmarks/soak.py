"""``make soak``: a chaos soak of real django-q2 clusters on PostgreSQL against a faulty
FakeCustomerIO, with worker processes SIGKILLed at random while web-like producers keep calling
``identify`` / ``track``.

Phases:

1. A fresh PostgreSQL database (``--pg-name``, default ``cio_soak``), migrated (which creates the
   drain schedule). FakeCustomerIO in this process, scripted with seeded random faults: 30 %
   5xx, 5 % 429 with ``Retry-After: 1``, 5 % hangs past the client timeout, 3 % connection
   resets; items marked ``soak_reject`` refused permanently in the batch answer (207).
2. ``--clusters`` ``manage.py qcluster`` processes (``--workers`` each) and ``--producers``
   producer processes (``benchmarks.soak_producer``) run for ``--seconds``. Meanwhile: two full
   outages (every request 503, then the server stopped: connection refused), and every 2–5 s
   a SIGKILL of either a whole cluster (restarted after 0.5–2 s) or one of its worker
   processes in the middle of a drain (django-q2 starts a new one; an idle worker is never
   killed alone: that wedges a django-q2 cluster, issue #23 of django-q2).
3. Faults stop; this process kicks a drain every 2 s (as web traffic would) until the outbox has
   no open operation, then waits for in-flight requests to finish and stops the clusters.
4. Checks (``benchmarks.soak_check``): every accepted operation delivered or dead for a stated
   reason (only the scripted refusals may die), unique operations received == accepted − dead,
   no event id applied twice, per-person order (first receipts in ``soak_seq`` order, and each
   person's final attributes from its last identify), idempotency keys, rolled-back and invalid
   calls never stored or sent, the API key in no log line and no stored row, no payload value
   in a log line. Every child's stdout/stderr and the ``django_cio_reliable`` logger at DEBUG
   (all processes) go to files in ``--workdir``.

Prints one line of figures, the details, and PASS or FAIL; exits 1 on FAIL.

Usage: ``python -m benchmarks.soak [--seconds 60] [--producers 2] [--clusters 2] [--workers 2]
[--rate 20] [--seed 1] [--json F] [--workdir D]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/soak.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402
from benchmarks.soak_check import Verdict, check, payload_uid  # noqa: E402

SITE_ID = "soak-site"


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", flush=True)


def library_settings(server_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """``CIO_RELIABLE`` of every soak process: short timeouts so it converges within the run.

    ``LEASE_SECONDS`` (5) > ``TIMEOUT`` + ``CONNECT_TIMEOUT`` (1.5), and the default
    ``IDEMPOTENCY_TTL`` (10 days) ≥ ``MAX_AGE`` + ``REPLAY_WINDOW`` (3 + 7 days), as the system
    checks require. The API key comes from the ``CIO_API_KEY`` environment variable.
    """
    from django_cio_reliable.conf import DEFAULTS

    values: dict[str, Any] = {
        "SITE_ID": SITE_ID,
        "API_KEY": "",
        "TRACK_URL": server_url,
        "DISPATCH": "task",
        "KICK_DEBOUNCE": 1.0,
        "TIMEOUT": 1.0,
        "CONNECT_TIMEOUT": 0.5,
        "LEASE_SECONDS": 5,
        "RETRY_BASE": 0.25,
        "RETRY_CAP": 4.0,
        "MAX_ATTEMPTS": 25,
        "RATE_LIMIT": args.rate_limit,
        "DRAIN_LINGER": 3.0,
        "BATCH": not args.no_batch,
        "BREAKER_RESET_TIMEOUT": 2.0,
        "BREAKER_RESET_TIMEOUT_MAX": 5.0,
        "BREAKER_WINDOW_SECONDS": 10.0,
    }
    if not args.default_breaker:
        # Trip on the outages, not on the 43 % background noise of random faults (with the
        # defaults, 5 consecutive failures open it every few seconds and little is sent).
        values.update(
            {
                "BREAKER_FAILURE_RATE_THRESHOLD": 0.8,
                "BREAKER_MINIMUM_CALLS": 20,
                "BREAKER_CONSECUTIVE_FAILURES": 12,
            }
        )
    # Only settings this version of the library knows (unknown keys draw a warning).
    return {k: v for k, v in values.items() if k in DEFAULTS}


def q_cluster(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": "cio-soak",
        "orm": "default",
        "workers": args.workers,
        "timeout": 20,
        "retry": 30,
        "poll": 0.2,
        "log_level": "INFO",
        "save_limit": 200,
        "catch_up": False,
    }


class Cluster:
    """One ``manage.py qcluster`` process group, restarted after each SIGKILL."""

    def __init__(self, index: int, workdir: Path, env: dict[str, str]) -> None:
        self.index = index
        self.workdir = workdir
        self.env = env
        self.generation = 0
        self.child: common.Child | None = None
        self.restart_at: float | None = None

    def start(self) -> None:
        self.generation += 1
        self.child = common.spawn(
            f"cluster{self.index}-{self.generation}",
            [sys.executable, "-m", "django", "qcluster"],
            self.workdir,
            self.env,
        )
        self.restart_at = None

    def alive(self) -> bool:
        return self.child is not None and self.child.alive()

    def worker_pids(self) -> list[int]:
        """django-q2 worker processes of the current generation that are alive."""
        if self.child is None:
            return []
        pids = []
        for line in self.child.stderr().splitlines():
            if "ready for work at" in line:
                pid = int(line.rsplit(" ", 1)[-1])
                try:
                    if _alive(pid) and os.getpgid(pid) == self.child.pid:
                        pids.append(pid)
                except ProcessLookupError:
                    continue
        return sorted(set(pids))

    def busy_worker_pids(self) -> list[int]:
        """Workers of :meth:`worker_pids` that are running a task right now.

        A worker has started a task when django-q2 logs ``Process-NAME processing`` after its
        ``Process-NAME ready for work at PID``, and finished it when ``tasks.drain`` logs
        ``PID … drain finished``.
        """
        if self.child is None:
            return []
        names: dict[str, int] = {}
        started: dict[int, int] = {}
        finished: dict[int, int] = {}
        for index, line in enumerate(self.child.stderr().splitlines()):
            if " ready for work at " in line:
                name = line.split("INFO ", 1)[-1].split(" ", 1)[0]
                names[name] = int(line.rsplit(" ", 1)[-1])
            elif " processing " in line:
                pid = names.get(line.split("INFO ", 1)[-1].split(" ", 1)[0])
                if pid is not None:
                    started[pid] = index
            elif "drain finished" in line:
                parts = line.split()
                if len(parts) > 2 and parts[2].isdigit():
                    finished[int(parts[2])] = index
        alive = set(self.worker_pids())
        return sorted(p for p, at in started.items() if p in alive and at > finished.get(p, -1))

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(timeout=15)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return True
    return state != "Z"


class Chaos:
    """Kills at random; outages at fixed points of the producing phase."""

    def __init__(
        self, args: argparse.Namespace, server: Any, clusters: list[Cluster], rng: random.Random
    ) -> None:
        self.args = args
        self.server = server
        self.clusters = clusters
        self.rng = rng
        self.kills = {"cluster": 0, "worker": 0}
        self.outages: list[str] = []
        self.next_kill = time.monotonic() + rng.uniform(args.kill_min, args.kill_max)
        self.server_down_until: float | None = None

    def outage_seconds(self) -> float:
        return float(min(20.0, max(3.0, 0.08 * self.args.seconds)))

    def tick(self, elapsed: float, now: float) -> None:
        duration = self.outage_seconds()
        if not self.outages and elapsed >= 0.3 * self.args.seconds:
            self.server.outage(duration, status=503)
            self.outages.append(f"503 for every request, {duration:.0f} s at t={elapsed:.0f}s")
            log(f"outage 1: every request answered 503 for {duration:.0f} s")
        elif len(self.outages) == 1 and elapsed >= 0.65 * self.args.seconds:
            self.server.stop()
            self.server_down_until = now + duration
            self.outages.append(
                f"server stopped (connection refused), {duration:.0f} s at t={elapsed:.0f}s"
            )
            log(f"outage 2: server stopped (connection refused) for {duration:.0f} s")
        if self.server_down_until is not None and now >= self.server_down_until:
            self.server.start()
            self.server_down_until = None
            log("outage 2 over: server listening again")
        for cluster in self.clusters:
            if cluster.restart_at is not None and now >= cluster.restart_at:
                cluster.start()
                log(f"cluster {cluster.index} restarted (generation {cluster.generation})")
            elif cluster.restart_at is None and not cluster.alive():
                log(f"cluster {cluster.index} exited by itself; restarting")
                cluster.start()
        if now >= self.next_kill:
            self.kill_one(now)
            self.next_kill = now + self.rng.uniform(self.args.kill_min, self.args.kill_max)

    def kill_one(self, now: float) -> None:
        live = [c for c in self.clusters if c.alive() and c.restart_at is None]
        if not live:
            return
        cluster = self.rng.choice(live)
        # Only a worker in the middle of a drain: an idle django-q2 worker waits for its next
        # task holding the queue's read lock, and killing it then wedges the whole cluster
        # (django-q2 issue #23) — a test of django-q2, not of this app.
        workers = cluster.busy_worker_pids()
        if workers and self.rng.random() < 0.5:
            pid = self.rng.choice(workers)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            self.kills["worker"] += 1
            log(f"SIGKILL worker {pid} of cluster {cluster.index}")
            return
        assert cluster.child is not None
        cluster.child.kill()
        cluster.restart_at = now + self.rng.uniform(0.5, 2.0)
        self.kills["cluster"] += 1
        log(f"SIGKILL cluster {cluster.index} (whole process group)")

    def finish(self) -> None:
        if self.server_down_until is not None:
            self.server.start()
            self.server_down_until = None
        for cluster in self.clusters:
            if not cluster.alive():
                cluster.start()


def kick_drain() -> None:
    from django_q.tasks import async_task

    from django_cio_reliable import dispatch

    async_task(dispatch.DRAIN_TASK, task_name="cio-soak-settle", group="django_cio_reliable")


def outbox_counts() -> dict[str, int]:
    from django.db.models import Count

    from django_cio_reliable.models import Operation

    counts = dict.fromkeys(("pending", "sending", "failed", "delivered", "dead"), 0)
    for row in Operation.objects.order_by().values("status").annotate(n=Count("id")):
        counts[row["status"]] = row["n"]
    return counts


def stored_texts() -> list[str]:
    """Every row of every table of the soak database, as text (for the secret scan)."""
    from django.db import connection

    texts: list[str] = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f'SELECT t::text FROM "{table}" t')  # noqa: S608 - our own tables
            texts.extend(str(row[0]) for row in cursor.fetchall())
    return texts


def outbox_rows() -> list[dict[str, Any]]:
    from django_cio_reliable.models import Operation

    rows = []
    for op in Operation.objects.order_by("id").values(
        "id", "kind", "status", "customer_id", "last_error", "attempts", "payload"
    ):
        payload = op.pop("payload") or {}
        op["uid"] = payload_uid(str(op["kind"]), payload)
        rows.append(op)
    return rows


def read_journals(paths: Sequence[Path]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for path in paths:
        if path.exists():
            records.extend(json.loads(line) for line in path.read_text().splitlines() if line)
    return records


def setup_parent_logging(workdir: Path) -> None:
    handler = logging.FileHandler(workdir / "soak-parent.log")
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s %(message)s")
    )
    logger = logging.getLogger("django_cio_reliable")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)


def run(args: argparse.Namespace) -> Verdict:
    from django_cio_reliable.testing import FakeCustomerIO

    rng = random.Random(args.seed)  # noqa: S311 - reproducible chaos, not cryptography
    api_key = f"soak-secret-{secrets.token_hex(12)}"
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="cio-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"workdir {workdir}; database {args.pg_name}; seed {args.seed}")
    server = FakeCustomerIO(site_id=SITE_ID, api_key=api_key)
    server.start()
    os.environ["CIO_API_KEY"] = api_key
    try:
        return _run(args, rng, api_key, workdir, server)
    finally:
        server.stop()
        if not args.keep_db:
            from django.db import connections

            connections.close_all()
            common.drop_pg_database(args.pg_name)
        if args.clean:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(
    args: argparse.Namespace, rng: random.Random, api_key: str, workdir: Path, server: Any
) -> Verdict:
    from django.db import connection

    env = common.configure(
        "postgres",
        pg_name=args.pg_name,
        cio=library_settings(server.url, args),
        q_cluster=q_cluster(args),
    )
    # Children log django_cio_reliable at DEBUG to their stderr (a file); this process logs
    # to soak-parent.log (setup_parent_logging), and django-q2's INFO lines stay quiet here.
    setup_parent_logging(workdir)
    env["CIO_BENCH_LOG"] = "DEBUG"
    env["CIO_API_KEY"] = api_key
    logging.getLogger("django-q").setLevel(logging.WARNING)
    server.set_latency(args.latency)
    server.random_faults(
        seed=args.seed,
        error_rate=0.30,
        rate_limit_rate=0.05,
        hang_rate=0.05,
        reset_rate=0.03,
        hang_seconds=2.0,
        retry_after=1,
    )
    server.reject_batch_items(
        lambda index, op: bool((op.get("attributes") or {}).get("soak_reject")),
        reason="invalid",
        field="soak_reject",
        message="attribute soak_reject is refused by this workspace",
    )
    clusters = [Cluster(i, workdir, env) for i in range(args.clusters)]
    for cluster in clusters:
        cluster.start()
    line = common.StartLine(workdir)
    journals = [workdir / f"journal-{i}.jsonl" for i in range(args.producers)]
    producers = [
        common.spawn(
            f"producer{i}",
            [
                sys.executable,
                "-m",
                "benchmarks.soak_producer",
                "--index",
                str(i),
                "--seconds",
                str(args.seconds),
                "--rate",
                str(args.rate),
                "--people",
                str(args.people),
                "--seed",
                str(args.seed),
                "--journal",
                str(journals[i]),
                *line.args(f"producer{i}"),
            ],
            workdir,
            env,
        )
        for i in range(args.producers)
    ]
    line.wait_ready(producers)
    started = line.open()
    log(
        f"{args.producers} producers × {args.rate:g} requests/s, {args.clusters} clusters × "
        f"{args.workers} workers, {args.seconds:g} s of chaos"
    )
    chaos = Chaos(args, server, clusters, rng)
    last_status = started
    while any(p.alive() for p in producers):
        now = time.monotonic()
        if now - started < args.seconds:
            chaos.tick(now - started, now)
        if now - last_status >= 10:
            last_status = now
            log(f"t={now - started:.0f}s outbox {outbox_counts()}; server {_stats(server)}")
        time.sleep(0.1)
        if now - started > args.seconds + 120:
            raise RuntimeError("producers did not finish")
    chaos.finish()
    server.random_faults(seed=args.seed, error_rate=0.0)
    log(f"producing done; faults off; kills: {chaos.kills}; settling (up to {args.settle:g} s)")
    for producer in producers:
        if producer.process.returncode != 0:
            log(
                f"producer {producer.name} exited {producer.process.returncode}: "
                f"{producer.stderr()[-1000:]}"
            )
    settle_started = time.monotonic()
    last_kick = 0.0
    settled = False
    while time.monotonic() - settle_started < args.settle:
        counts = outbox_counts()
        if counts["pending"] + counts["sending"] + counts["failed"] == 0:
            settled = True
            break
        if time.monotonic() - last_kick >= 2.0:
            kick_drain()
            last_kick = time.monotonic()
        if time.monotonic() - last_status >= 5:
            last_status = time.monotonic()
            log(f"settling: outbox {counts}; server {_stats(server)}")
        time.sleep(0.2)
    settle_seconds = time.monotonic() - settle_started
    deadline = time.monotonic() + 10
    while server.stats()["by_outcome"].get("in_flight", 0) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    log(f"{'settled' if settled else 'NOT settled'} after {settle_seconds:.1f} s; stopping")
    for cluster in clusters:
        cluster.stop()
    connection.close()
    log_files = sorted(workdir.glob("*.err")) + sorted(workdir.glob("*.out"))
    log_files += sorted(workdir.glob("*.log"))
    verdict = check(
        journal=read_journals(journals),
        rows=outbox_rows(),
        receipts=server.receipts,
        people=server.people(),
        request_times=[r.received_at for r in server.requests],
        rate_limit=args.rate_limit,
        log_files=log_files,
        stored_texts=stored_texts(),
        api_key=api_key,
        rejections=not args.no_batch,
    )
    if not settled:
        verdict.problems.append(f"the outbox did not settle within {args.settle:g} s")
    stats = server.stats()
    extra = {
        "seconds": args.seconds,
        "settle_seconds": round(settle_seconds, 1),
        "kills": chaos.kills,
        "cluster_generations": [c.generation for c in clusters],
        "outages": chaos.outages,
        "server": {k: stats[k] for k in ("requests", "receipts", "applied", "duplicates")},
        "faults_by_kind": _faults(server),
        "workdir": str(workdir),
    }
    _print(verdict, extra)
    if args.json:
        Path(args.json).write_text(json.dumps({**verdict.to_dict(), **extra}, indent=1))
    return verdict


def _stats(server: Any) -> str:
    if not server.running:
        return "stopped"
    s = server.stats()
    return f"requests={s['requests']} applied={s['applied']} duplicates={s['duplicates']}"


def _faults(server: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for request in server.requests:
        label = request.fault or (str(request.status) if request.status else request.outcome)
        counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _print(v: Verdict, extra: dict[str, Any]) -> None:
    print()
    print(f"soak: {v.line()}")
    print(
        f"  re-sent and harmless: {v.resent_events_deduplicated} events deduplicated by event id, "
        f"{v.resent_identifies} identify upserts sent again (a worker died or timed out after "
        "the server applied them; identify carries no id, re-applying it is an upsert)"
    )
    print(
        f"  dead: {v.dead} ({v.dead_as_scripted} refused by the server as scripted); reasons: "
        + ("; ".join(f"{r!r} ×{n}" for r, n in v.dead_reasons.items()) or "none")
    )
    print(
        f"  calls: {v.repeats} repeated keys, {v.races} racing keys, {v.rolled_back} rolled back, "
        f"{v.invalid_refused} invalid refused ({v.invalid_accepted} accepted), "
        f"{v.idempotency_violations} key violations, {v.phantom} unknown receipts"
    )
    print(
        f"  order: {v.reordered} out-of-order receipts, {v.stale_identifies} stale final "
        f"identifies; secrets: key in {v.key_in_logs} of {v.log_lines} log lines and "
        f"{v.key_in_rows} of {v.rows_scanned} stored rows; PII in {v.pii_in_logs} log lines"
    )
    print(
        f"  chaos: kills {extra['kills']}, outages {extra['outages']}; server requests "
        f"{extra['server']['requests']}, faults {extra['faults_by_kind']}; settled in "
        f"{extra['settle_seconds']} s; logs in {extra['workdir']}"
    )
    for warning in v.warnings:
        print(f"  WARNING: {warning}")
    if v.passed:
        print("PASS")
    else:
        print("FAIL: " + "; ".join(v.problems))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--seconds", type=float, default=float(os.environ.get("CIO_SOAK_SECONDS") or 60)
    )
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--clusters", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="django-q2 workers per cluster")
    parser.add_argument("--rate", type=float, default=20.0, help="web requests/s per producer")
    parser.add_argument("--people", type=int, default=50, help="people per producer")
    parser.add_argument("--rate-limit", type=float, default=common.DEFAULT_RATE)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--kill-min", type=float, default=2.0)
    parser.add_argument("--kill-max", type=float, default=5.0)
    parser.add_argument("--settle", type=float, default=None, help="max seconds to settle")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-batch", action="store_true", help="BATCH off: one request each")
    parser.add_argument(
        "--default-breaker",
        action="store_true",
        help="the breaker's default thresholds (it then stays open through most of the noise)",
    )
    parser.add_argument("--pg-name", default="cio_soak")
    parser.add_argument("--workdir")
    parser.add_argument("--json", help="write the figures and checks here")
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument("--clean", action="store_true", help="delete the logs afterwards")
    args = parser.parse_args(argv)
    if args.settle is None:
        args.settle = max(120.0, args.seconds)
    if str(common.ROOT) not in sys.path:
        sys.path.insert(0, str(common.ROOT))
    verdict = run(args)
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())

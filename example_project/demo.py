"""`make demo`: the example shop on SQLite against the bundled fake Customer.io server.

The story runs through the real code paths: web requests through Django's URL conf store
operations in the outbox, a real django-q2 cluster (``manage.py qcluster``) delivers them to a
real HTTP server (FakeCustomerIO). Customer.io then fails for a while, comes back, rejects a few
operations, and ``cio_replay`` sends them again once "fixed". The summary counts what the server
received, so "nothing lost, nothing sent twice" is measured, not claimed.

Usage: ``python example_project/demo.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SITE_ID = "demo-site"
API_KEY = "demo-api-key-local-only"


def log(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def wait_for(
    predicate: Callable[[], bool], timeout: float, status: Callable[[], str] | None = None
) -> bool:
    deadline = time.monotonic() + timeout
    last = 0.0
    while time.monotonic() < deadline:
        if predicate():
            return True
        if status is not None and time.monotonic() - last >= 1.0:
            log(status())
            last = time.monotonic()
        time.sleep(0.2)
    return predicate()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short story, then exit")
    parser.add_argument("--users", type=int, default=None, help="how many customers sign up")
    args = parser.parse_args(argv)
    users = args.users or (5 if args.quick else 20)

    state_dir = Path(tempfile.mkdtemp(prefix="cio-demo-")) if args.quick else HERE / ".demo"
    if state_dir.exists() and not args.quick:
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)

    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT))
    from django_cio_reliable.testing import FakeCustomerIO

    server = FakeCustomerIO(site_id=SITE_ID, api_key=API_KEY)
    server.start()
    log(f"FakeCustomerIO listening on {server.url}")

    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "shop.settings",
            "SHOP_STATE_DIR": str(state_dir),
            "CIO_TRACK_URL": server.url,
            "CIO_SITE_ID": SITE_ID,
            "CIO_API_KEY": API_KEY,
        }
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    log(f"migrated the shop database in {state_dir}")

    cluster = subprocess.Popen(
        [sys.executable, str(HERE / "manage.py"), "qcluster"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    log(f"started a django-q2 cluster (pid {cluster.pid})")
    try:
        return run_story(server, users, quick=args.quick)
    finally:
        cluster.send_signal(signal.SIGTERM)
        try:
            cluster.wait(timeout=20)
        except subprocess.TimeoutExpired:
            cluster.kill()
        server.stop()
        if args.quick:
            shutil.rmtree(state_dir, ignore_errors=True)


def run_story(server: Any, users: int, *, quick: bool) -> int:
    from django.test import Client

    from django_cio_reliable import outbox
    from django_cio_reliable.models import Operation

    client = Client(HTTP_HOST="localhost")
    accepted = 0
    request_times: list[float] = []

    def post(path: str, data: dict[str, Any]) -> dict[str, Any]:
        nonlocal accepted
        started = time.perf_counter()
        response = client.post(path, data)
        request_times.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code}")
        accepted += 1
        result: dict[str, Any] = response.json()
        return result

    def status_line() -> str:
        s = outbox.queue_status()
        open_ = s.counts["pending"] + s.counts["failed"] + s.counts["sending"]
        return (
            f"backlog={open_} delivered={s.counts['delivered']} dead={s.counts['dead']} "
            f"server received={len(server.receipts)}"
        )

    def all_settled() -> bool:
        return not Operation.objects.filter(status__in=outbox.OPEN).exists()

    log("1. healthy traffic: customers sign up and place orders")
    ids = [post("/signup/", {"username": f"customer{i}"})["id"] for i in range(users)]
    for uid in ids:
        post("/orders/", {"user": uid, "total": "19.90"})
    wait_for(all_settled, 30, status_line)
    log(status_line())

    log("2. Customer.io starts failing (HTTP 503): the web requests stay fast")
    server.fail_next(100_000, status=503)
    outage_started = len(request_times)
    for uid in ids:
        post("/orders/", {"user": uid, "total": "5.00"})
    time.sleep(2 if quick else 6)
    log(status_line())
    slowest = max(request_times[outage_started:]) * 1000
    log(f"   slowest web request during the outage: {slowest:.1f} ms")

    log("3. Customer.io is back: the backlog drains, in per-person order")
    server.clear_faults()
    wait_for(all_settled, 60, status_line)
    log(status_line())

    log("4. Customer.io rejects a few operations for bad data: they become dead letters")
    server.reject_batch_items(
        lambda index, op: op.get("attributes", {}).get("total") == 1,
        reason="invalid",
        field="total",
        message="attribute 'total' is locked",
    )
    for uid in ids[:3]:
        post("/orders/", {"user": uid, "total": "1.00"})
    wait_for(all_settled, 30, status_line)
    dead = Operation.objects.filter(status=Operation.Status.DEAD).count()
    log(f"   dead letters: {dead}")

    log("5. the data is fixed; an operator runs `manage.py cio_replay`")
    server.clear_faults()
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("cio_replay", stdout=out)
    log("   " + out.getvalue().strip().replace("\n", "\n[demo]    "))
    wait_for(all_settled, 30, status_line)

    counts = outbox.queue_status().counts
    applied = server.applied()
    duplicates = len(server.duplicates())
    delivered = counts["delivered"]
    lost = accepted - delivered - counts["dead"]
    print()
    header = ("accepted", "delivered", "unique", "duplicates", "lost", "dead")
    print(" ".join(f"{h:>10}" for h in header))
    row = (accepted, delivered, len(applied), duplicates, lost, counts["dead"])
    print(" ".join(f"{v:>10}" for v in row))
    print()
    ok = lost == 0 and counts["dead"] == 0 and len(applied) == accepted
    log("nothing lost, nothing sent twice" if ok else "MISMATCH: see the table above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

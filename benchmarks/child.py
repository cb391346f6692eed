"""Child processes of the benchmarks: drain workers and memory probes.

``python -m benchmarks.child <command> …`` with the database and ``CIO_RELIABLE`` of its parent
in the environment (``benchmarks.common.bench_env``). Each prints one JSON result line.

- ``drain``: wait at the start line, then drain until no operation is open (or
  ``--max-seconds``); report when it finished (``time.monotonic()``, comparable across
  processes on Linux), what it did and the CPU it used. ``--profile FILE`` runs it under
  cProfile.
- ``memory-drain``: drain everything while sampling this process's RSS.
- ``memory-load``: the baseline of ``memory-drain``: load every pending operation into a list.
- ``memory-backfill --mode naive|hooks``: identify every ``User`` (a naive loop, or
  ``hooks.identify_queryset``) and report the peak RSS growth.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks import common


def setup() -> None:
    if str(common.ROOT) not in sys.path:
        sys.path.insert(0, str(common.ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    import django

    django.setup()
    from django.db import connection

    connection.ensure_connection()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def drain_until_done(deadline: float, poll: float = 0.005) -> tuple[Any, bool, int]:
    """Loop ``outbox.drain`` until nothing is open or ``deadline``; return totals."""
    from django_cio_reliable import outbox

    total = outbox.DrainResult()
    drains = 0
    finished = False
    while time.monotonic() < deadline:
        result = outbox.drain(max_seconds=max(0.05, deadline - time.monotonic()))
        drains += 1
        total.add(result)
        if result.claimed == 0:
            if common.open_count() == 0:
                finished = True
                break
            # Everything open is leased by another worker or waits behind an earlier
            # operation of its person.
            time.sleep(poll)
    return total, finished, drains


def record_slots() -> tuple[list[float], list[float]]:
    """Record every rate-limit slot this process reserves and when its wait ended (wall time)."""
    from django_cio_reliable import outbox

    slots: list[float] = []
    wakes: list[float] = []
    reserve = outbox.RateLimiter.reserve
    acquire = outbox.RateLimiter.acquire

    def recording_reserve(
        self: outbox.RateLimiter, count: int = 1, *, max_wait: float | None = None
    ) -> float | None:
        start = reserve(self, count, max_wait=max_wait)
        if start is not None:
            slots.append(start)
        return start

    def recording_acquire(self: outbox.RateLimiter) -> None:
        acquire(self)
        wakes.append(time.time())

    setattr(outbox.RateLimiter, "reserve", recording_reserve)  # noqa: B010
    setattr(outbox.RateLimiter, "acquire", recording_acquire)  # noqa: B010
    return slots, wakes


def cmd_drain(args: argparse.Namespace) -> int:
    setup()
    slots, wakes = record_slots() if args.record_slots else ([], [])
    common.await_start(args.ready, args.go)
    backend = common.backend_pid()
    backend0 = common.process_cpu_seconds(backend) if backend else 0.0
    started = time.monotonic()
    cpu0 = cpu_seconds()
    deadline = started + args.max_seconds

    def work() -> tuple[Any, bool, int]:
        return drain_until_done(deadline)

    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        total, finished, drains = profiler.runcall(work)
        profiler.dump_stats(args.profile)
    else:
        total, finished, drains = work()
    ended = time.monotonic()
    common.emit(
        {
            "pid": os.getpid(),
            "started": started,
            "ended": ended,
            "finished": finished,
            "drains": drains,
            "claimed": total.claimed,
            "delivered": total.delivered,
            "failed": total.failed,
            "dead": total.dead,
            "released": total.released,
            "requests": total.requests,
            "cpu_seconds": cpu_seconds() - cpu0,
            "db_cpu_seconds": (common.process_cpu_seconds(backend) - backend0) if backend else 0.0,
            "slots": slots,
            "wakes": wakes,
        }
    )
    return 0


def cmd_memory_drain(args: argparse.Namespace) -> int:
    setup()
    from django_cio_reliable import outbox
    from django_cio_reliable.transport import get_transport

    # Warm up what is loaded once per process (modules, the HTTP session, the claim query).
    get_transport().check_credentials()
    outbox.drain(max_seconds=5, ids=[])
    common.reset_peak_rss()
    before = common.proc_status()
    samples: list[tuple[int, int]] = []
    delivered = 0
    started = time.monotonic()
    while True:
        result = outbox.drain(max_seconds=args.sample_seconds)
        delivered += result.delivered
        samples.append((delivered, common.proc_status().get("VmRSS", 0)))
        if result.claimed == 0 and common.open_count() == 0:
            break
    after = common.proc_status()
    common.emit(
        {
            "delivered": delivered,
            "seconds": time.monotonic() - started,
            "rss_before_kb": before.get("VmRSS", 0),
            "hwm_kb": after.get("VmHWM", 0),
            "rss_after_kb": after.get("VmRSS", 0),
            "samples": samples,
            "peak_reset": bool(before),
        }
    )
    return 0


def cmd_memory_load(args: argparse.Namespace) -> int:
    setup()
    from django_cio_reliable.models import Operation

    Operation.objects.filter(pk=0).first()
    common.reset_peak_rss()
    before = common.proc_status()
    rows = list(Operation.objects.filter(status=Operation.Status.PENDING))
    after = common.proc_status()
    common.emit(
        {
            "rows": len(rows),
            "rss_before_kb": before.get("VmRSS", 0),
            "hwm_kb": after.get("VmHWM", 0),
        }
    )
    return 0


def cmd_memory_backfill(args: argparse.Namespace) -> int:
    setup()
    from django.contrib.auth.models import User
    from django.db import transaction

    import django_cio_reliable as cio
    from django_cio_reliable.models import Operation

    def attributes(user: User) -> dict[str, Any]:
        return {"email": user.email, "first_name": user.first_name}

    with transaction.atomic():
        warm = cio.identify("warm-up", {"email": "warm@example.invalid"})
    Operation.objects.filter(pk=warm.pk).delete()
    common.reset_peak_rss()
    before = common.proc_status()
    started = time.monotonic()
    if args.mode == "hooks":
        from django_cio_reliable.hooks import identify_queryset

        result = identify_queryset(
            User.objects.all(), customer_id=lambda u: u.pk, attributes=attributes
        )
        identified = result.identified
    else:
        identified = 0
        with transaction.atomic():
            for user in User.objects.all():
                cio.identify(user.pk, attributes(user))
                identified += 1
    seconds = time.monotonic() - started
    after = common.proc_status()
    common.emit(
        {
            "mode": args.mode,
            "identified": identified,
            "seconds": seconds,
            "rss_before_kb": before.get("VmRSS", 0),
            "hwm_kb": after.get("VmHWM", 0),
        }
    )
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m benchmarks.child", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    drain = commands.add_parser("drain")
    drain.add_argument("--ready")
    drain.add_argument("--go")
    drain.add_argument("--max-seconds", type=float, default=3600.0)
    drain.add_argument("--profile")
    drain.add_argument("--record-slots", action="store_true")
    drain.set_defaults(handler=cmd_drain)
    memory = commands.add_parser("memory-drain")
    memory.add_argument("--sample-seconds", type=float, default=2.0)
    memory.set_defaults(handler=cmd_memory_drain)
    load = commands.add_parser("memory-load")
    load.set_defaults(handler=cmd_memory_load)
    backfill = commands.add_parser("memory-backfill")
    backfill.add_argument("--mode", choices=("naive", "hooks"), required=True)
    backfill.set_defaults(handler=cmd_memory_backfill)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())

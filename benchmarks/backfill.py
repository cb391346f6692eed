"""Peak RSS growth of backfilling existing rows with ``hooks.identify_queryset`` (a memory row).

Users are inserted with ``bulk_create`` (no signals, so no hook saw them: the case the backfill
exists for). Two children run in turn on the same rows (``python -m benchmarks.child
memory-backfill``): the naive loop an application would write without the helper (iterate
``User.objects.all()`` and call ``cio.identify`` for each, in one transaction) and
``identify_queryset`` (keyset pages of ``chunk_size`` rows, one transaction per page). Each
reports ``VmHWM - VmRSS(before)``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from benchmarks import common

SECTION = "memory"


def available() -> bool:
    try:
        from django_cio_reliable import hooks
    except ImportError:
        return False
    return hasattr(hooks, "identify_queryset")


def insert_users(count: int) -> None:
    from django.contrib.auth.models import User

    User.objects.all().delete()
    batch: list[User] = []
    for i in range(count):
        batch.append(
            User(username=f"user{i}", email=f"user{i}@example.invalid", first_name=f"First{i}")
        )
        if len(batch) >= 5000:
            User.objects.bulk_create(batch)
            batch = []
    if batch:
        User.objects.bulk_create(batch)


def run_child(workdir: Path, env: dict[str, str], mode: str) -> dict[str, Any]:
    child = common.spawn(
        f"memory-backfill-{mode}",
        [sys.executable, "-m", "benchmarks.child", "memory-backfill", "--mode", mode],
        workdir,
        env,
    )
    child.process.wait(1800)
    return child.result()


def measure(workdir: Path, env: dict[str, str], rows: int, meta: dict[str, Any]) -> common.Row:
    """The backfill row (``value=None`` with a note when the helper is not there yet)."""
    label = f"peak RSS growth backfilling {rows:,} rows (identify_queryset)"
    if not available():
        return common.Row(
            section=SECTION,
            label=label,
            value=None,
            unit="MB",
            note="pending: django_cio_reliable.hooks.identify_queryset is not available",
        )
    from django.db import connection

    common.reset_outbox()
    insert_users(rows)
    connection.close()
    naive = run_child(workdir, env, "naive")
    common.reset_outbox()
    connection.close()
    helper = run_child(workdir, env, "hooks")
    meta["backfill"] = {"naive": naive, "hooks": helper}
    growth = (helper["hwm_kb"] - helper["rss_before_kb"]) / 1024
    naive_growth = (naive["hwm_kb"] - naive["rss_before_kb"]) / 1024
    row = common.cost_row(
        SECTION,
        label,
        growth,
        "naive loop: cio.identify() per row of User.objects.all(), one transaction",
        naive_growth,
        unit="MB",
        note=(
            f"{helper['identified']:,} identified in {helper['seconds']:.1f} s "
            f"(naive: {naive['seconds']:.1f} s)"
        ),
    )
    row.met = None
    if helper["identified"] != rows:
        row.note += f"; ONLY {helper['identified']} of {rows} identified"
    return row

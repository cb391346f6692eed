"""``manage.py cio_status``: queue depth, oldest open operation, dead letters, pauses, breaker
(docs/commands.md; the exit codes are in ``Command.help``)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from django_cio_reliable import breaker, lifecycle, outbox
from django_cio_reliable.clock import human_duration

EXIT_UNHEALTHY = 1
EXIT_BAD_ARGUMENTS = 2

#: Statuses in the order they are printed.
STATUSES = tuple(lifecycle.Status.values)

PAUSE_REASONS = {
    "auth": "credentials rejected (401/403)",
    "rate_limited": "rate limited (429)",
}


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else timezone.localtime(moment).isoformat(timespec="seconds")


def build_report(status: outbox.QueueStatus, snapshot: breaker.Snapshot) -> dict[str, Any]:
    """The machine-readable report (what ``--json`` prints)."""
    counts = status.counts  # every status, in the order of STATUSES
    age = status.oldest_open_age
    return {
        "counts": counts,
        "open": sum(counts[name] for name in lifecycle.OPEN),
        "dead": counts["dead"],
        "oldest_open_age_seconds": None if age is None else round(age, 3),
        "oldest_open_age": None if age is None else human_duration(age),
        "paused_until": _iso(status.paused_until),
        "pause_reason": status.pause_reason or None,
        "credentials_failed_at": _iso(status.auth_failed_at),
        "breaker": {
            "state": snapshot.state,
            "mode": snapshot.mode,
            "open_since": _iso(snapshot.open_since),
            "retry_at": _iso(snapshot.retry_at),
            "failure_rate": round(snapshot.failure_rate, 3),
            "calls_in_window": snapshot.calls,
        },
    }


class Command(BaseCommand):
    """Print the state of the outbox; optionally fail for monitoring."""

    help = (
        "Show the outbox: operations by status, the age of the oldest open operation, dead "
        "letters, whether delivery is paused, and the circuit breaker. Exit codes: 0 ok, "
        "1 a --fail-on-* condition holds, 2 bad arguments."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the output format and the monitoring thresholds."""
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.add_argument(
            "--fail-on-dead", action="store_true", help="exit 1 when any operation is dead"
        )
        parser.add_argument(
            "--fail-on-backlog",
            type=int,
            metavar="N",
            help="exit 1 when more than N operations are open (pending, sending or failed)",
        )
        parser.add_argument(
            "--fail-on-age",
            type=float,
            metavar="SECONDS",
            help="exit 1 when the oldest open operation is older than SECONDS",
        )
        parser.add_argument(
            "--fail-on-breaker",
            action="store_true",
            help="exit 1 when the circuit breaker is not closed (open, half-open, forced open)",
        )
        parser.add_argument(
            "--fail-on-auth",
            action="store_true",
            help="exit 1 when Customer.io rejected the credentials and no request succeeded since",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Print the report, then fail if a --fail-on-* condition holds."""
        backlog_limit: int | None = options["fail_on_backlog"]
        age_limit: float | None = options["fail_on_age"]
        if backlog_limit is not None and backlog_limit < 0:
            raise CommandError("--fail-on-backlog must be 0 or more", returncode=EXIT_BAD_ARGUMENTS)
        if age_limit is not None and age_limit < 0:
            raise CommandError("--fail-on-age must be 0 or more", returncode=EXIT_BAD_ARGUMENTS)
        report = build_report(outbox.queue_status(), breaker.get_breaker().snapshot(fresh=True))
        failures: list[str] = []
        if options["fail_on_dead"] and report["dead"]:
            failures.append(f"{report['dead']} dead operations")
        if backlog_limit is not None and report["open"] > backlog_limit:
            failures.append(f"{report['open']} open operations (more than {backlog_limit})")
        age = report["oldest_open_age_seconds"]
        if age_limit is not None and age is not None and age > age_limit:
            failures.append(f"oldest open operation is {age:.0f}s old (more than {age_limit:g}s)")
        state = report["breaker"]
        if options["fail_on_breaker"] and (
            state["state"] != "closed" or state["mode"] == "forced_open"
        ):
            failures.append(f"circuit breaker is {state['state']} ({state['mode']})")
        if options["fail_on_auth"] and report["credentials_failed_at"]:
            failures.append("Customer.io rejected the credentials")
        if options["json"]:
            report["ok"] = not failures
            report["failures"] = failures
            self.stdout.write(json.dumps(report, indent=2, sort_keys=True))
        else:
            self._print(report)
        if failures:
            raise CommandError("; ".join(failures), returncode=EXIT_UNHEALTHY)

    def _print(self, report: dict[str, Any]) -> None:
        counts: dict[str, int] = report["counts"]
        width = max(len(name) for name in counts)
        self.stdout.write("Operations by status:")
        for name, count in counts.items():
            self.stdout.write(f"  {name.ljust(width)}  {count}")
        self.stdout.write(f"Open (to deliver): {report['open']}")
        age = report["oldest_open_age_seconds"]
        if age is None:
            self.stdout.write("Oldest open operation: none")
        else:
            self.stdout.write(f"Oldest open operation: {report['oldest_open_age']} ({age:.0f}s)")
        self.stdout.write(f"Dead letters: {report['dead']}")
        if report["paused_until"]:
            reason = report["pause_reason"] or ""
            label = PAUSE_REASONS.get(reason, reason or "unknown")
            self.stdout.write(f"Delivery paused until {report['paused_until']}: {label}")
        else:
            self.stdout.write("Delivery: not paused")
        state = report["breaker"]
        line = f"Circuit breaker: {state['state'].replace('_', '-')}"
        if state["mode"] != "auto":
            line += f" ({state['mode'].replace('_', ' ')})"
        if state["open_since"]:
            line += f", not closed since {state['open_since']}"
        if state["retry_at"]:
            line += f", next probe at {state['retry_at']}"
        self.stdout.write(line)
        if report["credentials_failed_at"]:
            self.stdout.write(
                f"Credentials: Customer.io rejected them at {report['credentials_failed_at']} "
                "and no request has succeeded since; check CIO_RELIABLE SITE_ID/API_KEY."
            )

"""``manage.py cio_replay``: requeue dead (or other) operations, or deliver them right now
(docs/commands.md; the exit codes are in ``Command.help``)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from datetime import time as dt_time
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import BooleanField, ExpressionWrapper
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from django_cio_reliable import breaker, clock, outbox
from django_cio_reliable.lifecycle import Status, erased_q
from django_cio_reliable.models import DeliveryState, Operation

log = logging.getLogger(__name__)

#: Exit codes (``manage.py`` exits with these; ``call_command`` raises ``CommandError``).
EXIT_NOT_DELIVERED = 1
EXIT_BAD_ARGUMENTS = 2
EXIT_REFUSED = 3

DEAD = Status.DEAD
FAILED = Status.FAILED
PENDING = Status.PENDING
SENDING = Status.SENDING
DELIVERED = Status.DELIVERED
AUTH_PAUSE = DeliveryState.PauseReason.AUTH

#: Statuses ``--status`` accepts without further ado; ``delivered`` needs --include-delivered.
REPLAYABLE = (DEAD, FAILED, PENDING)
KINDS = tuple(Operation.Kind.values)

#: Rows of the ``--dry-run`` table shown at verbosity 1 (all of them at verbosity 2).
DRY_RUN_ROWS = 100
#: Characters of ``last_error`` shown by ``--dry-run``.
ERROR_CHARS = 80
#: Operations are requeued in chunks of at most this many (kept under SQLite's variable cap).
REQUEUE_CHUNK = 500
#: ``--now``: operations requeued and delivered per round unless ``--chunk-size`` says otherwise.
DEFAULT_CHUNK_SIZE = 100
#: ``--now``: how long one chunk may take before the drain hands back what it has not sent.
CHUNK_MAX_SECONDS = 3600.0
#: ``--now``: how often to wait out a 429 pause and try a chunk again before giving up on it.
MAX_RATE_LIMIT_WAITS = 20
#: ``--now`` without a terminal: seconds between two progress lines.
PROGRESS_INTERVAL = 5.0
#: ``--now``: how often to wait for a half-open breaker's probe slot before giving up on a chunk.
MAX_PROBE_WAITS = 120
#: Who a breaker reset by ``--force`` is attributed to on its breaker event.
FORCE_ACTOR = "manage.py cio_replay --now --force"
#: Why ``--now`` stops when Customer.io rejects the credentials midway.
AUTH_STOPPED = "Customer.io rejected the credentials (401/403); delivery is paused"


def _bad(message: str) -> CommandError:
    return CommandError(message, returncode=EXIT_BAD_ARGUMENTS)


def _split(values: Sequence[str] | None) -> list[str]:
    """Flatten repeated and comma-separated option values, dropping blanks, keeping order."""
    parts = (part.strip() for value in values or () for part in value.split(","))
    return list(dict.fromkeys(part for part in parts if part))


def _chunks(items: Sequence[int], size: int) -> list[Sequence[int]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _when(moment: datetime) -> str:
    return timezone.localtime(moment).isoformat(timespec="seconds")


def parse_statuses(values: Sequence[str] | None, *, include_delivered: bool) -> list[str]:
    """The statuses to replay (default: dead).

    Raises:
        CommandError: An unknown status, ``sending``, or ``delivered`` without the flag.
    """
    statuses = [s.lower() for s in _split(values)] or [DEAD]
    for status in statuses:
        if status == SENDING:
            raise _bad(
                "--status sending is not replayable: an operation being sent is handed back "
                "when its lease expires"
            )
        if status == DELIVERED and not include_delivered:
            raise _bad("--status delivered re-sends delivered operations; add --include-delivered")
        if status not in (*REPLAYABLE, DELIVERED):
            raise _bad(
                f"unknown status {status!r}; choose from {', '.join(REPLAYABLE)} "
                "(or delivered with --include-delivered)"
            )
    if include_delivered and DELIVERED not in statuses:
        raise _bad("--include-delivered only goes with --status delivered")
    return statuses


def parse_kinds(values: Sequence[str] | None) -> list[str]:
    """The kinds to replay (empty: every kind).

    Raises:
        CommandError: An unknown kind.
    """
    kinds = [k.lower().replace("-", "_") for k in _split(values)]
    for kind in kinds:
        if kind not in KINDS:
            raise _bad(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    return kinds


def parse_ids(values: Sequence[str] | None) -> list[int]:
    """Operation ids from ``--id`` (repeatable, comma lists allowed).

    Raises:
        CommandError: An id that is not a positive integer.
    """
    ids: list[int] = []
    for value in _split(values):
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number < 1:
            raise _bad(f"--id {value!r} is not an operation id (a positive integer)")
        ids.append(number)
    return ids


def parse_moment(value: str | None, *, option: str, end: bool) -> datetime | None:
    """Parse an ISO 8601 date or datetime (``None`` when not given); naive values are in the
    current time zone.

    A date alone means the start of that day for ``--since`` and the whole day for ``--until``
    (up to its last microsecond).

    Raises:
        CommandError: The value is not an ISO 8601 date or datetime.
    """
    if not value:
        return None
    text = value.strip()
    try:
        day = parse_date(text) if len(text) <= 10 else None
        if day is not None:
            moment: datetime | None = datetime.combine(day, dt_time.max if end else dt_time.min)
        else:
            moment = parse_datetime(text)
    except (ValueError, OverflowError):
        moment = None
    if moment is None:
        raise _bad(
            f"{option} {value!r} is not an ISO 8601 date or datetime "
            "(e.g. 2024-05-01 or 2024-05-01T13:30:00+02:00)"
        )
    return timezone.make_aware(moment) if timezone.is_naive(moment) else moment


def requeue(ids: Sequence[int], statuses: Sequence[str], *, reset_attempts: bool) -> int:
    """Requeue the operations ``ids`` that still have one of ``statuses``; returns how many
    (event ids kept, live leases and erased payloads skipped: see :func:`outbox.replay`)."""
    return sum(
        outbox.replay(
            Operation.objects.filter(id__in=chunk, status__in=statuses),
            reset_attempts=reset_attempts,
            delivered=DELIVERED in statuses,
        )
        for chunk in _chunks(ids, REQUEUE_CHUNK)
    )


def _breaker_refusal() -> str | None:
    """Why the circuit breaker refuses ``--now`` (``None`` when it admits calls or probes)."""
    snapshot = breaker.get_breaker().snapshot(fresh=True)
    if snapshot.mode == "forced_open":
        return (
            "the circuit breaker was forced open by an operator (a kill switch); set it back "
            "to automatic in the admin first (or pass --force to reset it for every worker "
            "and try now)"
        )
    if snapshot.state == "open" and snapshot.retry_at and snapshot.retry_at > clock.now():
        return (
            f"the circuit breaker is open (Customer.io is failing) until at least "
            f"{_when(snapshot.retry_at)}; the drain workers resume by themselves once "
            "Customer.io answers again (or pass --force to reset the breaker for every "
            "worker and try now)"
        )
    return None


def _refuse_reason() -> str | None:
    """Why ``--now`` must not deliver at the moment (``None`` when it may).

    Every condition that ``--force`` overrides is checked here, and only here: the
    credentials pause and an open (or forced-open) circuit breaker.
    """
    reasons: list[str] = []
    until, reason = outbox.paused_until()
    if until is not None and reason == AUTH_PAUSE:
        reasons.append(
            f"delivery is paused until {_when(until)} because Customer.io rejected the "
            "credentials (401/403); fix CIO_RELIABLE SITE_ID/API_KEY, then run again "
            "(or pass --force to lift the pause and try now)"
        )
    refused = _breaker_refusal()
    if refused is not None:
        reasons.append(refused)
    return "; and ".join(reasons) if reasons else None


@dataclass
class Tally:
    """Where the operations handled by ``--now`` ended up."""

    selected: int = 0
    delivered: int = 0
    dead: int = 0
    failed: int = 0
    done: int = 0
    stopped: str = ""

    @property
    def skipped(self) -> int:
        """Operations left queued (blocked by an earlier one of the same person, taken by a
        drain worker, or not reached because the run stopped)."""
        return self.selected - self.delivered - self.dead - self.failed

    def summary(self) -> str:
        """The final summary line."""
        return (
            f"delivered={self.delivered} dead={self.dead} failed={self.failed} "
            f"skipped={self.skipped}"
        )

    def count(self, ids: Sequence[int]) -> None:
        """Record the current status of the operations ``ids`` (one finished chunk)."""
        statuses = Counter(Operation.objects.filter(id__in=ids).values_list("status", flat=True))
        self.delivered += statuses[DELIVERED]
        self.dead += statuses[DEAD]
        self.failed += statuses[FAILED]
        self.done += len(ids)


class Command(BaseCommand):
    """Requeue dead (or failed/pending) operations, or deliver them synchronously."""

    help = (
        "Requeue dead operations (or the statuses given by --status) for delivery, keeping "
        "their event ids. --dry-run shows what would be replayed; --now delivers them in this "
        "process. Exit codes: 0 ok, 1 some operations failed or died again (--now), "
        "2 bad arguments, 3 --now refused (credentials rejected or circuit breaker open; "
        "see --force)."
    )

    def __init__(
        self,
        *args: Any,
        sleep: Callable[[float], None] | None = None,
        monotonic: Callable[[], float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.sleep: Callable[[float], None] = sleep or time.sleep
        self.monotonic: Callable[[], float] = monotonic or time.monotonic
        self._interrupted = ""
        self._last_progress = 0.0

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the filters and modes."""
        select = parser.add_argument_group("selection (every given filter must match)")
        select.add_argument(
            "--status",
            action="append",
            metavar="STATUS",
            help="dead (default), failed or pending; repeatable or comma-separated. "
            "delivered needs --include-delivered.",
        )
        select.add_argument(
            "--include-delivered",
            action="store_true",
            help="allow --status delivered (re-sends operations Customer.io already accepted)",
        )
        select.add_argument(
            "--kind",
            action="append",
            metavar="KIND",
            help=f"{', '.join(KINDS)}; repeatable or comma-separated",
        )
        select.add_argument(
            "--customer", action="append", metavar="ID", help="customer (or anonymous) id"
        )
        select.add_argument(
            "--since", metavar="WHEN", help="created at or after this ISO 8601 date/datetime"
        )
        select.add_argument(
            "--until",
            metavar="WHEN",
            help="created at or before this ISO 8601 datetime (a date: the whole day)",
        )
        select.add_argument(
            "--id", action="append", metavar="ID", help="operation id; repeatable or comma list"
        )
        select.add_argument(
            "--error-contains",
            metavar="TEXT",
            help="the last error contains TEXT (case-insensitive)",
        )
        select.add_argument(
            "--all",
            action="store_true",
            help="allow a failed/pending/delivered replay without any other filter",
        )
        select.add_argument("--limit", type=int, metavar="N", help="at most N, oldest first")
        mode = parser.add_argument_group("mode")
        mode.add_argument(
            "--dry-run", action="store_true", help="show what would be replayed, change nothing"
        )
        mode.add_argument(
            "--keep-attempts",
            action="store_true",
            help="keep the attempt counters instead of starting again from zero",
        )
        mode.add_argument(
            "--now", action="store_true", help="deliver synchronously in this process"
        )
        mode.add_argument(
            "--rate",
            type=float,
            metavar="N",
            help="--now: at most N operations per second (on top of RATE_LIMIT)",
        )
        mode.add_argument(
            "--chunk-size",
            type=int,
            metavar="N",
            help="--now: operations requeued and delivered per round (default 100)",
        )
        mode.add_argument(
            "--force",
            action="store_true",
            help="--now: deliver even though delivery is paused for rejected credentials or "
            "the circuit breaker is open (lifts the pause and resets the breaker for every "
            "worker)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Parse the options, select, then dry-run, requeue or deliver."""
        limit = options["limit"]
        if limit is not None and limit < 1:
            raise _bad("--limit must be at least 1")
        statuses, lookups = self._selection(options)
        if options["rate"] is not None and options["rate"] <= 0:
            raise _bad("--rate must be greater than 0")
        if options["chunk_size"] is not None and options["chunk_size"] < 1:
            raise _bad("--chunk-size must be at least 1")
        for name in ("rate", "chunk_size", "force"):
            if options[name] not in (None, False) and not options["now"]:
                raise _bad(f"--{name.replace('_', '-')} only applies with --now")
        if options["now"] and options["dry_run"]:
            raise _bad("--now and --dry-run exclude each other")
        non_dead = [s for s in statuses if s != DEAD]
        if non_dead and not lookups and not options["all"] and not options["dry_run"]:
            raise _bad(
                f"replaying every {'/'.join(non_dead)} operation needs a filter (--kind, "
                "--customer, --since, --until, --id, --error-contains) or --all"
            )
        if DELIVERED in statuses:
            self.stderr.write(
                "Warning: replaying delivered operations sends them again. Customer.io drops "
                "a repeated event by its id, but a replayed identify sets the stored (possibly "
                "older) attributes again and a replayed delete deletes the person again."
            )
        # Erased payloads (a forgotten person, or SCRUB_DELIVERED) are never selected: an
        # emptied operation sent again could recreate a deleted person.
        matching = Operation.objects.filter(status__in=statuses, **lookups)
        selected = matching.exclude(erased_q()).order_by("id").values_list("id", flat=True)
        ids = list(selected[:limit] if limit else selected)
        skipped_erased = matching.filter(erased_q()).count()
        if skipped_erased:
            self.stdout.write(
                f"Skipped {skipped_erased} operation{'s' if skipped_erased != 1 else ''} whose "
                "payload was erased (forgotten person, or scrubbed after delivery): they are "
                "never sent again."
            )
        self._report_unselected(statuses, lookups.get("id__in", []), ids)
        if not ids:
            self.stdout.write("No operations match.")
        elif options["dry_run"]:
            self._dry_run(ids, options["verbosity"])
        elif options["now"]:
            self._check_refusal(force=options["force"])
            self._deliver_now(ids, statuses, options)
        else:
            count = requeue(ids, statuses, reset_attempts=not options["keep_attempts"])
            log.info("cio_replay: requeued %d of %d selected operations", count, len(ids))
            message = f"Requeued {count} of {len(ids)} selected operations for the drain workers."
            if count < len(ids):
                message += (
                    f" {len(ids) - count} changed status meanwhile (e.g. being sent) and were "
                    "skipped."
                )
            self.stdout.write(message)

    def _selection(self, options: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        """The statuses, and the lookups of the other filters given (each must match)."""
        since = parse_moment(options["since"], option="--since", end=False)
        until = parse_moment(options["until"], option="--until", end=True)
        if since and until and since > until:
            raise _bad(f"--since {options['since']} is after --until {options['until']}")
        # Customer ids may contain commas: --customer is repeatable, never split.
        customers = list(dict.fromkeys(c.strip() for c in options["customer"] or () if c.strip()))
        if options["customer"] is not None and not customers:
            raise _bad("--customer needs a customer id")
        error_contains = options["error_contains"]
        if error_contains is not None and not error_contains.strip():
            raise _bad("--error-contains needs some text")
        statuses = parse_statuses(options["status"], include_delivered=options["include_delivered"])
        lookups = {
            "kind__in": parse_kinds(options["kind"]),
            "customer_id__in": customers,
            "created_at__gte": since,
            "created_at__lte": until,
            "id__in": parse_ids(options["id"]),
            "last_error__icontains": error_contains,
        }
        return statuses, {lookup: value for lookup, value in lookups.items() if value}

    def _report_unselected(
        self, statuses: Sequence[str], wanted: Sequence[int], selected: Sequence[int]
    ) -> None:
        chosen = set(selected)
        missing = [i for i in wanted if i not in chosen]
        if not missing:
            return
        rows = Operation.objects.filter(id__in=missing).annotate(
            wiped=ExpressionWrapper(erased_q(), output_field=BooleanField())
        )
        found = {
            op_id: f"{status}, payload erased" if wiped else status
            for op_id, status, wiped in rows.values_list("id", "status", "wiped")
        }
        parts = [f"#{i} ({found.get(i, 'no such operation')})" for i in missing]
        self.stderr.write(
            f"Not selected (status not in {', '.join(statuses)}, another filter, "
            f"or --limit): {', '.join(parts)}"
        )

    def _dry_run(self, ids: Sequence[int], verbosity: int) -> None:
        shown = ids if verbosity >= 2 else ids[:DRY_RUN_ROWS]
        rows = Operation.objects.filter(id__in=shown).order_by("id")
        table = [("id", "kind", "customer", "status", "attempts", "last status", "error")]
        for op_id, kind, customer, status, attempts, code, error in rows.values_list(
            "id", "kind", "customer_id", "status", "attempts", "last_status_code", "last_error"
        ):
            table.append(
                (
                    str(op_id),
                    kind,
                    customer if len(customer) <= 40 else customer[:39] + "…",
                    status,
                    str(attempts),
                    "-" if code is None else str(code),
                    " ".join(error.split())[:ERROR_CHARS],
                )
            )
        self.stdout.write(
            f"Dry run: {len(ids)} operation{'s' if len(ids) != 1 else ''} would be replayed; "
            "nothing was changed."
        )
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
        for row in table:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            self.stdout.write("  ".join([*cells, row[-1]]).rstrip())
        if len(shown) < len(ids):
            self.stdout.write(f"… and {len(ids) - len(shown)} more (--verbosity 2 lists all).")

    def _check_refusal(self, *, force: bool) -> None:
        """Refuse (exit 3) what :func:`_refuse_reason` names, or with ``--force`` lift the
        credentials pause and reset the breaker for every worker (a breaker event)."""
        reason = _refuse_reason()
        if reason is None:
            return
        if not force:
            raise CommandError(f"Refusing --now: {reason}", returncode=EXIT_REFUSED)
        done: list[str] = []
        if outbox.resume(AUTH_PAUSE):
            done.append("lifted the credentials pause for every worker")
        if _breaker_refusal() is not None:
            transition = breaker.get_breaker().force("auto", reason=FORCE_ACTOR)
            if transition is not None:
                log.warning(
                    "cio_replay: --force reset the circuit breaker (%s/%s -> %s)",
                    transition.from_state,
                    transition.from_mode,
                    transition.to_state,
                )
                done.append("reset the circuit breaker to closed for every worker")
        self.stderr.write(
            f"Warning: --force: {reason.split(';')[0]}; {' and '.join(done) or 'ignored'}."
        )

    def _on_interrupt(self, signum: int, frame: FrameType | None) -> None:
        if self._interrupted:
            raise KeyboardInterrupt
        self._interrupted = "interrupted"

    def _deliver_now(
        self, ids: Sequence[int], statuses: Sequence[str], options: dict[str, Any]
    ) -> None:
        rate: float | None = options["rate"]
        size: int = options["chunk_size"] or DEFAULT_CHUNK_SIZE
        if rate is not None:
            # Never burst more than about one second's worth of operations.
            size = max(1, min(size, int(rate)))
        tally = Tally(selected=len(ids))
        in_main = threading.current_thread() is threading.main_thread()
        previous: Any = signal.signal(signal.SIGINT, self._on_interrupt) if in_main else None
        try:
            started = self._last_progress = self.monotonic()
            for chunk in _chunks(ids, size):
                if self._interrupted:
                    tally.stopped = self._interrupted
                    break
                if rate is not None:
                    wait = started + tally.done / rate - self.monotonic()
                    if wait > 0:
                        self.sleep(wait)
                requeue(chunk, statuses, reset_attempts=not options["keep_attempts"])
                stop = self._drain_chunk(chunk)
                tally.count(chunk)
                self._progress(tally)
                if stop:
                    tally.stopped = stop
                    break
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)
        if self.stdout.isatty() and tally.done:
            self.stdout.write("")  # end the progress bar's line
        self.stdout.write(tally.summary())
        log.info("cio_replay --now: %s", tally.summary())
        problems = []
        if tally.dead or tally.failed:
            problems.append(
                f"{tally.dead + tally.failed} operations were not delivered "
                f"({tally.dead} dead again, {tally.failed} failed and will be retried)"
            )
        if tally.stopped:
            problems.append(f"stopped early: {tally.stopped}")
        if problems:
            raise CommandError("; ".join(problems), returncode=EXIT_NOT_DELIVERED)
        if tally.skipped:
            self.stdout.write(
                f"{tally.skipped} operations are left queued for the drain workers (an earlier "
                "operation of the same person is still open, or a worker took them)."
            )

    def _drain_chunk(self, chunk: Sequence[int]) -> str:
        """Deliver one chunk, waiting out 429 pauses and busy half-open probe slots; returns
        why the run must stop, if so (an auth pause, an open circuit breaker)."""
        rate_limited = probe_waits = 0
        while rate_limited < MAX_RATE_LIMIT_WAITS and probe_waits < MAX_PROBE_WAITS:
            until, reason = outbox.paused_until()
            if until is not None:
                if reason == AUTH_PAUSE:
                    return AUTH_STOPPED
                rate_limited += 1
                self.sleep(max(0.0, (until - clock.now()).total_seconds()))
                continue
            result = outbox.drain(
                ids=chunk,
                max_seconds=CHUNK_MAX_SECONDS,
                should_stop=lambda: self._interrupted,
                sleep=self.sleep,
            )
            if result.stopped:
                return result.stopped
            if result.paused == AUTH_PAUSE:
                return AUTH_STOPPED
            if result.paused:
                rate_limited += 1
                continue
            if result.breaker == "half_open":
                # Another process holds the probe slot(s): wait for its verdict.
                probe_waits += 1
                self.sleep(max(0.25, breaker.get_breaker().cache_seconds))
                continue
            if result.breaker:
                return (
                    f"the circuit breaker is {result.breaker.replace('_', ' ')} (Customer.io "
                    "is failing); the rest is left to the drain workers"
                )
            return ""
        if probe_waits >= MAX_PROBE_WAITS:
            return "the circuit breaker stayed half-open (another process is probing)"
        return "still rate limited (429) after waiting repeatedly"

    def _progress(self, tally: Tally) -> None:
        text = (
            f"{tally.done}/{tally.selected} delivered={tally.delivered} dead={tally.dead} "
            f"failed={tally.failed}"
        )
        if self.stdout.isatty():
            filled = 30 * tally.done // max(1, tally.selected)
            self.stdout.write(f"\r[{'#' * filled}{'-' * (30 - filled)}] {text}", ending="")
            self.stdout.flush()
            return
        now = self.monotonic()
        if tally.done < tally.selected and now - self._last_progress >= PROGRESS_INTERVAL:
            self._last_progress = now
            self.stdout.write(f"progress: {text}")

"""``manage.py cio_backfill app_label.Model``: identify every row of a model (docs/hooks.md;
the exit codes are in ``Command.help``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import models

from django_cio_reliable import hooks

EXIT_ABORTED = 1
EXIT_BAD_ARGUMENTS = 2

#: Without a terminal: seconds between two progress lines.
PROGRESS_INTERVAL = 5.0
#: Width of the progress bar, in characters.
BAR_WIDTH = 30


def _bad(message: str) -> CommandError:
    return CommandError(message, returncode=EXIT_BAD_ARGUMENTS)


def resolve_model(label: str) -> type[models.Model]:
    """The model named ``app_label.ModelName``.

    Raises:
        CommandError: Not a label, or not an installed model.
    """
    if label.count(".") != 1:
        raise _bad(f"{label!r} is not a model label 'app_label.ModelName'")
    try:
        return apps.get_model(label)
    except LookupError:
        raise _bad(f"{label!r} is not an installed model") from None


def resolve_hook(model: type[models.Model], choice: str | None) -> hooks.Hook:
    """The identify hook to use: by ``dispatch_uid``, by 1-based position, or the only one.

    Raises:
        CommandError: No such hook, or several and none chosen.
    """
    candidates = [
        h for h in hooks.registered() if h.kind == "identify_on_save" and issubclass(model, h.model)
    ]
    if choice is not None and choice.isdigit():
        position = int(choice)
        if not 1 <= position <= len(candidates):
            listed = ", ".join(f"{i}: {h.dispatch_uid}" for i, h in enumerate(candidates, 1))
            raise _bad(
                f"--hook {position}: {model._meta.label} has {len(candidates)} identify hooks"
                + (f" ({listed})" if listed else "")
            )
        return candidates[position - 1]
    try:
        return hooks.identify_hook_for(model, choice)
    except ImproperlyConfigured as error:
        raise _bad(str(error)) from None


class Command(BaseCommand):
    """Identify every row of a model through its registered identify hook."""

    help = (
        "Identify every row of a model in Customer.io with its registered identify_on_save "
        "hook: for rows created by bulk_create, QuerySet.update or imports, which send no "
        "signals. Streams the table in primary-key order, one transaction per chunk. "
        "Exit codes: 0 ok, 1 stopped at an invalid row, 2 bad arguments."
    )

    def __init__(
        self, *args: Any, monotonic: Callable[[], float] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.monotonic: Callable[[], float] = monotonic or time.monotonic
        self._last_progress = 0.0
        self._drew_bar = False

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the model and the options."""
        parser.add_argument("model", metavar="app_label.Model", help="the model to identify")
        parser.add_argument(
            "--hook",
            metavar="UID|N",
            help="the identify hook's dispatch uid, or its position (1, 2, ...) among the "
            "model's identify hooks; needed only when the model has several",
        )
        parser.add_argument(
            "--chunk-size",
            type=int,
            default=1000,
            metavar="N",
            help="rows per query and per transaction (default 1000)",
        )
        parser.add_argument(
            "--start-after",
            metavar="PK",
            help="resume after this primary key (printed when a run stops)",
        )
        parser.add_argument(
            "--on-invalid",
            choices=hooks.ON_INVALID,
            help="what to do with a row whose operation is invalid (default: the hook's)",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="build and validate every operation, store nothing",
        )
        parser.add_argument(
            "--no-progress", action="store_true", help="print no progress, only the summary"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Resolve the model and hook, run the backfill, print the counts."""
        model = resolve_model(options["model"])
        chunk_size: int = options["chunk_size"]
        if chunk_size < 1:
            raise _bad("--chunk-size must be at least 1")
        hook = resolve_hook(model, options["hook"])
        start_after: Any = None
        if options["start_after"] is not None:
            pk_field = model._meta.pk
            assert pk_field is not None  # noqa: S101 - every concrete model has one
            try:
                start_after = pk_field.to_python(options["start_after"])
            except ValidationError:
                raise _bad(
                    f"--start-after {options['start_after']!r} is not a primary key of "
                    f"{model._meta.label}"
                ) from None
        show = not options["no_progress"] and options["verbosity"] >= 1
        self._last_progress = self.monotonic()
        try:
            result = hooks.identify_queryset(
                model._default_manager.all(),
                hook=hook,
                chunk_size=chunk_size,
                progress=self._progress if show else None,
                on_invalid=options["on_invalid"],
                start_after=start_after,
                dry_run=options["dry_run"],
            )
        except hooks.BackfillAborted as aborted:
            self._end_bar()
            done = aborted.result
            again = (
                f"resume with --start-after {done.last_pk}"
                if done.last_pk is not None
                else "run it again"
            )
            raise CommandError(
                f"stopped at {done.model} pk={aborted.pk!r}: invalid {aborted.error.field} "
                f"({aborted.error}). {done.identified} rows were identified before it. Fix the "
                f"row (or pass --on-invalid skip) and {again}.",
                returncode=EXIT_ABORTED,
            ) from None
        self._end_bar()
        verb = "Would identify" if result.dry_run else "Identified"
        self.stdout.write(
            f"{verb} {result.identified} of {result.processed} rows of {result.model} with hook "
            f"{hook.dispatch_uid!r} in {result.seconds:.1f}s ({result.skipped} without a "
            f"customer id, {result.invalid} invalid)."
            + (" Dry run: nothing was stored." if result.dry_run else "")
        )

    def _progress(self, result: hooks.BackfillResult) -> None:
        total = result.total or 0
        rate = result.processed / result.seconds if result.seconds > 0 else 0.0
        text = f"{result.processed}/{total} rows, {result.identified} identified, {rate:.0f} rows/s"
        if self.stdout.isatty():
            filled = BAR_WIDTH * result.processed // max(1, total)
            self.stdout.write(f"\r[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {text}", ending="")
            self.stdout.flush()
            self._drew_bar = True
            return
        now = self.monotonic()
        if result.processed and now - self._last_progress >= PROGRESS_INTERVAL:
            self._last_progress = now
            self.stdout.write(f"progress: {text}")

    def _end_bar(self) -> None:
        if self._drew_bar:
            self.stdout.write("")
            self._drew_bar = False

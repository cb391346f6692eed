"""``manage.py cio_forget CUSTOMER_ID [--send-delete]``: erase a person from the outbox."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_cio_reliable.exceptions import InvalidOperation
from django_cio_reliable.privacy import forget


class Command(BaseCommand):
    help = (
        "Erase every stored payload and idempotency key of a person; open operations "
        "(including those being sent) are cancelled and never retried or replayed. A request "
        "a worker had already started may still reach Customer.io once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("customer_id", help="the person's customer id")
        parser.add_argument(
            "--send-delete",
            action="store_true",
            help="also enqueue a Customer.io delete of the person",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            result = forget(options["customer_id"], send_delete=options["send_delete"])
        except InvalidOperation as exc:
            raise CommandError(str(exc), returncode=2) from exc
        self.stdout.write(
            f"cancelled={result.cancelled} in_flight={result.in_flight} "
            f"erased={result.erased} keys={result.keys}"
        )
        if result.in_flight:
            self.stdout.write(
                self.style.WARNING(
                    f"{result.in_flight} operation(s) were being sent: the request already "
                    "on its way may reach Customer.io once; they are never retried and "
                    "their stored payload is erased."
                )
            )
        if result.delete_operation_id is not None:
            self.stdout.write(f"enqueued delete operation {result.delete_operation_id}")

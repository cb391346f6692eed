"""A web-like producer of the soak: calls ``identify``/``track`` in request-sized transactions.

``python -m benchmarks.soak_producer --index N --seconds S --rate R --people P --seed X
--journal FILE`` (the database and ``CIO_RELIABLE`` come from the environment, see
``benchmarks.settings``). For ``S`` seconds it plays web requests at ``R`` per second (Poisson
arrivals), each in ``transaction.atomic()``:

- most requests store one or two operations (identify 30 %, track 70 %) of one of its own
  ``P`` people, numbered per person (``soak_seq``) so the server side can check their order;
  10 % of tracks carry an idempotency key, 2 % of operations carry ``soak_reject`` (the soak's
  FakeCustomerIO refuses those items permanently: they must end dead with the server's reason);
- some repeat an earlier keyed call (a retried web request): the same operation must come back;
- some race the other producers on a shared key (``race-<half second>``): one operation;
- some roll their transaction back: nothing of theirs may ever be stored or sent;
- some pass invalid data: ``InvalidOperation`` must be raised at the call site, nothing stored.

Every operation carries ``soak_uid`` (unique), ``soak_seq`` and a PII-like ``email`` (which must
never show up in a log line). The journal (JSON lines) records what was accepted — written
after the transaction committed — and every check result the producer can make itself.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from benchmarks import common

IDENTIFY_SHARE = 0.3
TWO_OPS_SHARE = 0.2
KEYED_SHARE = 0.1
REJECT_SHARE = 0.02
#: Shares of the special requests (cumulative thresholds of one roll).
INVALID_SHARE = 0.03
ROLLBACK_SHARE = 0.02
RACE_SHARE = 0.03
REPEAT_SHARE = 0.05
PII_DOMAIN = "example.invalid"
PII_PREFIX = "soak-pii-"


class Rollback(Exception):
    """Raised inside a request to roll its transaction back (a failed web request)."""


def pii(uid: str) -> str:
    return f"{PII_PREFIX}{uid}@{PII_DOMAIN}"


def invalid_cases(index: int) -> dict[str, Callable[[], Any]]:
    """Calls that break a Customer.io limit; each must raise ``InvalidOperation``."""
    import django_cio_reliable as cio

    person = f"bad-{index}"
    uid = f"bad-{index}-{time.monotonic_ns()}"
    base = {"soak_uid": uid, "email": pii(uid)}
    return {
        "customer id over 150 bytes": lambda: cio.identify("bad-" + "x" * 160, base),
        "empty customer id": lambda: cio.track("", "order_placed", base),
        "attribute value over 1000 bytes": lambda: cio.identify(
            person, {**base, "bio": "x" * 1001}
        ),
        "over 300 attributes": lambda: cio.identify(
            person, {**base, **{f"a{i}": i for i in range(301)}}
        ),
        "event name over 100 bytes": lambda: cio.track(person, "e" * 101, base),
        "event data over 100,000 bytes": lambda: cio.track(
            person, "order_placed", {**base, "blob": "x" * 100_001}
        ),
        "value not JSON-serialisable": lambda: cio.track(
            person, "order_placed", {**base, "when": object()}
        ),
    }


class Producer:
    def __init__(self, args: argparse.Namespace, journal: TextIO) -> None:
        self.index: int = args.index
        self.rng = random.Random(args.seed * 1000 + args.index)  # noqa: S311 - reproducible
        self.people = [f"p{args.index}-{n}" for n in range(args.people)]
        self.seq: dict[str, int] = {}
        self.counter = 0
        self.keyed: list[dict[str, Any]] = []
        self.journal = journal
        self.counts: dict[str, int] = {
            "requests": 0,
            "operations": 0,
            "repeats": 0,
            "races": 0,
            "rollbacks": 0,
            "invalid_refused": 0,
            "invalid_accepted": 0,
            "errors": 0,
        }

    def write(self, record: dict[str, Any]) -> None:
        self.journal.write(json.dumps(record) + "\n")

    def new_uid(self) -> str:
        self.counter += 1
        return f"{self.index}-{self.counter}"

    def request(self) -> None:
        from django.db import transaction

        import django_cio_reliable as cio

        person = self.rng.choice(self.people)
        records: list[dict[str, Any]] = []
        keyed: list[dict[str, Any]] = []
        count = 2 if self.rng.random() < TWO_OPS_SHARE else 1
        with transaction.atomic():
            for _ in range(count):
                seq = self.seq.get(person, 0) + 1
                self.seq[person] = seq
                uid = self.new_uid()
                data: dict[str, Any] = {"soak_uid": uid, "soak_seq": seq, "email": pii(uid)}
                reject = self.rng.random() < REJECT_SHARE
                if reject:
                    data["soak_reject"] = True
                key = None
                if self.rng.random() < IDENTIFY_SHARE:
                    kind = "identify"
                    op = cio.identify(person, data)
                else:
                    kind = "track"
                    if self.rng.random() < KEYED_SHARE:
                        key = f"order-{uid}"
                    op = cio.track(person, "order_placed", data, idempotency_key=key)
                record = {
                    "t": "op",
                    "op": op.pk,
                    "uid": uid,
                    "kind": kind,
                    "person": person,
                    "seq": seq,
                    "reject": reject,
                    "key": key,
                }
                records.append(record)
                if key:
                    keyed.append({"person": person, "data": data, "key": key, "op": op.pk})
        # Committed: only now is it accepted.
        for record in records:
            self.write(record)
        self.keyed.extend(keyed)
        self.counts["operations"] += len(records)

    def repeat(self) -> None:
        from django.db import transaction

        import django_cio_reliable as cio

        call = self.rng.choice(self.keyed)
        with transaction.atomic():
            op = cio.track(
                call["person"], "order_placed", call["data"], idempotency_key=call["key"]
            )
        self.write({"t": "repeat", "key": call["key"], "op": op.pk, "expect": call["op"]})
        self.counts["repeats"] += 1

    def race(self) -> None:
        from django.db import transaction

        import django_cio_reliable as cio

        key = f"race-{int(time.time() * 2)}"
        data = {"soak_uid": key, "soak_seq": 1, "email": pii(key)}
        with transaction.atomic():
            op = cio.track(key, "raced", data, idempotency_key=key)
        self.write({"t": "race", "key": key, "op": op.pk, "person": key})
        self.counts["races"] += 1

    def rollback(self) -> None:
        from django.db import transaction

        import django_cio_reliable as cio

        person = self.rng.choice(self.people)
        uid = f"rolled-{self.new_uid()}"
        try:
            with transaction.atomic():
                cio.identify(person, {"soak_uid": uid, "soak_seq": -1, "email": pii(uid)})
                cio.track(person, "order_placed", {"soak_uid": uid, "email": pii(uid)})
                raise Rollback
        except Rollback:
            pass
        self.write({"t": "rollback", "uid": uid})
        self.counts["rollbacks"] += 1

    def invalid(self) -> None:
        from django.db import transaction

        from django_cio_reliable.exceptions import InvalidOperation

        cases = invalid_cases(self.index)
        name = self.rng.choice(sorted(cases))
        try:
            with transaction.atomic():
                op = cases[name]()
        except InvalidOperation as error:
            self.write({"t": "invalid", "case": name, "refused": True, "field": error.field})
            self.counts["invalid_refused"] += 1
            return
        self.write({"t": "invalid", "case": name, "refused": False, "op": op.pk})
        self.counts["invalid_accepted"] += 1

    def step(self) -> None:
        roll = self.rng.random()
        self.counts["requests"] += 1
        if roll < INVALID_SHARE:
            self.invalid()
        elif roll < INVALID_SHARE + ROLLBACK_SHARE:
            self.rollback()
        elif roll < INVALID_SHARE + ROLLBACK_SHARE + RACE_SHARE:
            self.race()
        elif roll < INVALID_SHARE + ROLLBACK_SHARE + RACE_SHARE + REPEAT_SHARE and self.keyed:
            self.repeat()
        else:
            self.request()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--rate", type=float, default=20.0, help="web requests per second")
    parser.add_argument("--people", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--journal", required=True)
    parser.add_argument("--ready")
    parser.add_argument("--go")
    args = parser.parse_args(argv)
    if str(common.ROOT) not in sys.path:
        sys.path.insert(0, str(common.ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    import django

    django.setup()
    from django.db import connection

    connection.ensure_connection()
    with open(args.journal, "a", buffering=1) as journal:
        producer = Producer(args, journal)
        common.await_start(args.ready, args.go)
        started = time.monotonic()
        deadline = started + args.seconds
        next_at = started
        while True:
            next_at += producer.rng.expovariate(args.rate)
            if next_at >= deadline:
                break
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                producer.step()
            except Exception as exc:  # noqa: BLE001 - recorded; the transaction rolled back
                producer.counts["errors"] += 1
                producer.write({"t": "error", "error": f"{type(exc).__name__}: {exc}"[:500]})
        producer.write({"t": "summary", "pid": os.getpid(), **producer.counts})
    connection.close()
    common.emit(producer.counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())

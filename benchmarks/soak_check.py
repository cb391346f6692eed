"""The soak's end-of-run checks, as pure functions over what was recorded.

Inputs: the producers' journals (what the API accepted, refused, rolled back), the outbox rows
(status and reason of every stored operation), FakeCustomerIO's receipts, people and request
times, and the text of every log file and stored row. Output: the figures of the summary line
and the list of broken invariants (empty when the soak passed).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import max_in_window
from benchmarks.soak_producer import PII_PREFIX


@dataclass
class Expected:
    """One accepted operation, as its producer recorded it."""

    op: int
    uid: str
    kind: str
    person: str
    seq: int
    reject: bool


@dataclass
class Verdict:
    accepted: int = 0
    delivered: int = 0
    dead: int = 0
    dead_as_scripted: int = 0
    dead_reasons: dict[str, int] = field(default_factory=dict)
    still_open: int = 0
    lost: int = 0
    received_unique: int = 0
    duplicates_applied: int = 0
    resent_events_deduplicated: int = 0
    resent_identifies: int = 0
    reordered: int = 0
    stale_identifies: int = 0
    phantom: int = 0
    rolled_back: int = 0
    invalid_refused: int = 0
    invalid_accepted: int = 0
    idempotency_violations: int = 0
    repeats: int = 0
    races: int = 0
    producer_errors: int = 0
    requests: int = 0
    max_rate: int = 0
    rate_limit: float = 0.0
    key_in_logs: int = 0
    key_in_rows: int = 0
    pii_in_logs: int = 0
    log_lines: int = 0
    rows_scanned: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def line(self) -> str:
        """The one line of figures."""
        return (
            f"accepted={self.accepted}, delivered={self.delivered}, dead={self.dead}, "
            f"lost={self.lost}, duplicates={self.duplicates_applied}, "
            f"reordered={self.reordered + self.stale_identifies}, "
            f"max observed rate={self.max_rate}/s (limit {self.rate_limit:g})"
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        data["line"] = self.line()
        return data


def uid_of(values: Mapping[str, Any] | None) -> str | None:
    if not values:
        return None
    uid = values.get("soak_uid")
    return str(uid) if uid is not None else None


def payload_uid(kind: str, payload: Mapping[str, Any]) -> str | None:
    if kind == "identify":
        return uid_of(payload.get("attributes"))
    return uid_of(payload.get("data"))


def check(
    *,
    journal: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    receipts: Sequence[Any],
    people: Mapping[str, Mapping[str, Any]],
    request_times: Sequence[float],
    rate_limit: float,
    log_files: Iterable[Path],
    stored_texts: Iterable[str],
    api_key: str,
    rejections: bool = True,
) -> Verdict:
    """Every invariant of the soak; see the module docstring of ``benchmarks.soak``.

    ``rejections``: whether the server refused the operations marked ``soak_reject`` (it does
    so in batch answers only; with batching off they are delivered like the others).
    """
    v = Verdict(rate_limit=rate_limit)
    expected: dict[int, Expected] = {}
    keys: dict[str, set[int]] = defaultdict(set)
    rolled_back: set[str] = set()
    for rec in journal:
        kind = rec.get("t")
        if kind == "op":
            expected[int(rec["op"])] = Expected(
                int(rec["op"]),
                str(rec["uid"]),
                str(rec["kind"]),
                str(rec["person"]),
                int(rec["seq"]),
                bool(rec["reject"]) and rejections,
            )
            if rec.get("key"):
                keys[str(rec["key"])].add(int(rec["op"]))
        elif kind == "race":
            op = int(rec["op"])
            expected.setdefault(
                op, Expected(op, str(rec["key"]), "track", str(rec["key"]), 1, False)
            )
            keys[str(rec["key"])].add(op)
            v.races += 1
        elif kind == "repeat":
            keys[str(rec["key"])].add(int(rec["op"]))
            keys[str(rec["key"])].add(int(rec["expect"]))
            v.repeats += 1
        elif kind == "rollback":
            rolled_back.add(str(rec["uid"]))
        elif kind == "invalid":
            if rec.get("refused"):
                v.invalid_refused += 1
            else:
                v.invalid_accepted += 1
        elif kind == "error":
            v.producer_errors += 1
    v.rolled_back = len(rolled_back)
    v.accepted = len(expected)
    v.idempotency_violations = sum(1 for ops in keys.values() if len(ops) != 1)

    # The outbox against what was accepted.
    by_id = {int(r["id"]): r for r in rows}
    missing = set(expected) - set(by_id)
    extra = set(by_id) - set(expected)
    statuses = Counter(str(r["status"]) for r in rows if int(r["id"]) in expected)
    v.delivered = statuses.get("delivered", 0)
    v.dead = statuses.get("dead", 0)
    v.still_open = sum(statuses.get(s, 0) for s in ("pending", "sending", "failed"))
    dead_ids = {i for i in expected if i in by_id and by_id[i]["status"] == "dead"}
    reasons: Counter[str] = Counter()
    for i in dead_ids:
        reason = str(by_id[i].get("last_error") or "")
        reasons[reason[:120] or "(no reason)"] += 1
        if not reason:
            v.problems.append(f"operation {i} is dead with no reason")
    v.dead_reasons = dict(reasons.most_common(10))
    scripted = {i for i, e in expected.items() if e.reject}
    v.dead_as_scripted = len(dead_ids & scripted)
    if dead_ids - scripted:
        v.problems.append(
            f"{len(dead_ids - scripted)} operations died that the server never refused: "
            + "; ".join(f"{r} ×{n}" for r, n in reasons.most_common(3))
        )
    if scripted - dead_ids:
        v.problems.append(f"{len(scripted - dead_ids)} refused operations are not dead")
    if missing:
        v.problems.append(f"{len(missing)} accepted operations are not in the outbox")
    if extra:
        v.problems.append(
            f"{len(extra)} stored operations were never accepted (rolled back or invalid)"
        )
    if v.still_open:
        v.problems.append(f"{v.still_open} operations are still open after the settle phase")

    # What the server received.
    accepted_uids = {e.uid: e for e in expected.values()}
    dead_uids = {expected[i].uid for i in dead_ids}
    first_by_uid: dict[str, Any] = {}
    per_uid: Counter[str] = Counter()
    applied_events: Counter[str] = Counter()
    unknown = 0
    for receipt in receipts:
        uid = uid_of(receipt.attributes)
        if uid is None or uid not in accepted_uids:
            unknown += 1
            if uid is not None and uid in rolled_back:
                v.problems.append(f"rolled-back operation {uid} reached the server")
            continue
        per_uid[uid] += 1
        first_by_uid.setdefault(uid, receipt)
        if receipt.event_id and receipt.applied:
            applied_events[receipt.event_id] += 1
        if receipt.kind == "identify":
            if per_uid[uid] > 1:
                v.resent_identifies += 1
        elif not receipt.applied:
            v.resent_events_deduplicated += 1
    v.phantom = unknown
    if unknown:
        v.problems.append(f"{unknown} receipts match no accepted operation")
    v.duplicates_applied = sum(n - 1 for n in applied_events.values() if n > 1)
    if v.duplicates_applied:
        v.problems.append(f"{v.duplicates_applied} events were applied twice")
    received = set(first_by_uid)
    v.received_unique = len(received)
    lost = {uid for uid in accepted_uids if uid not in received and uid not in dead_uids}
    v.lost = len(lost)
    if lost:
        v.problems.append(f"{len(lost)} accepted operations never reached the server (lost)")
    dead_received = received & dead_uids
    if dead_received:
        v.problems.append(f"{len(dead_received)} dead operations were received anyway")
    if v.received_unique != v.accepted - v.dead:
        v.problems.append(
            f"unique operations received ({v.received_unique}) != accepted - dead "
            f"({v.accepted - v.dead})"
        )

    # Per-person order: first receipts of each person in operation order.
    seen: dict[str, int] = {}
    for receipt in receipts:
        uid = uid_of(receipt.attributes)
        if uid is None or uid not in accepted_uids or first_by_uid.get(uid) is not receipt:
            continue
        exp = accepted_uids[uid]
        if exp.seq < seen.get(exp.person, 0):
            v.reordered += 1
        seen[exp.person] = max(seen.get(exp.person, 0), exp.seq)
    if v.reordered:
        v.problems.append(f"{v.reordered} operations reached the server after a later one")
    last_identify: dict[str, int] = {}
    for e in expected.values():
        if e.kind == "identify" and e.op not in dead_ids:
            last_identify[e.person] = max(last_identify.get(e.person, 0), e.seq)
    for person, seq in last_identify.items():
        final = people.get(person, {}).get("soak_seq")
        if final != seq:
            v.stale_identifies += 1
    if v.stale_identifies:
        v.problems.append(
            f"{v.stale_identifies} people end with attributes of an older identify (stale re-send)"
        )

    # Idempotency, invalid input, producer errors.
    if v.idempotency_violations:
        v.problems.append(f"{v.idempotency_violations} idempotency keys map to several operations")
    if v.invalid_accepted:
        v.problems.append(f"{v.invalid_accepted} invalid calls were accepted")
    if v.producer_errors:
        v.problems.append(f"{v.producer_errors} producer requests failed with an exception")
    bad_rows = [r for r in rows if str(r.get("customer_id", "")).startswith("bad-")]
    if bad_rows:
        v.problems.append(f"{len(bad_rows)} invalid operations were stored")

    # The rate the server saw.
    v.requests = len(request_times)
    v.max_rate = max_in_window(request_times)
    if v.max_rate > rate_limit:
        v.warnings.append(
            f"the server saw {v.max_rate} requests in one 1 s window (limit {rate_limit:g}): "
            "the limiter's slots are exact but arrival jitter is not budgeted "
            "(docs/benchmarks.md, 'rate limit')"
        )

    # Secrets and PII.
    for path in log_files:
        with path.open(errors="replace") as handle:
            for line in handle:
                v.log_lines += 1
                if api_key in line:
                    v.key_in_logs += 1
                if PII_PREFIX in line:
                    v.pii_in_logs += 1
    for text in stored_texts:
        v.rows_scanned += 1
        if api_key in text:
            v.key_in_rows += 1
    if v.key_in_logs:
        v.problems.append(f"the API key appears in {v.key_in_logs} log lines")
    if v.key_in_rows:
        v.problems.append(f"the API key appears in {v.key_in_rows} stored rows")
    if v.pii_in_logs:
        v.problems.append(f"payload values (PII) appear in {v.pii_in_logs} log lines")
    return v

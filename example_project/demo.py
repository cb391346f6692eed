"""`make demo`: the example shop on SQLite against the bundled fake Customer.io server.

Everything runs through the real code paths. The demo migrates a fresh SQLite database, starts
FakeCustomerIO (a real HTTP server speaking the Track API), a django-q2 cluster
(``manage.py qcluster``) and the dev server (``manage.py runserver``), then plays customers over
HTTP: they sign up, change their e-mail address, place orders that get paid and shipped. The
shop's model hooks store the Customer.io operations in each request's transaction; the cluster
delivers them.

Then Customer.io fails (the breaker opens, the backlog grows, the web requests stay fast), comes
back (a half-open probe, the breaker closes, the backlog drains in per-person order), an operator
pulls the kill switch (breaker forced open) and resets it, Customer.io rejects orders carrying a
locked attribute (dead letters), and ``manage.py cio_replay`` sends them again once "fixed".

The summary counts what FakeCustomerIO received, so "nothing lost, nothing sent twice, in
per-person order" is measured, not claimed: the demo exits 1 when a check fails.

Usage: ``python example_project/demo.py [--quick] [--screenshot PATH] [--report PATH]``.
Without ``--quick`` the dev server and the admin dashboard stay up until Ctrl-C.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from django_cio_reliable.testing import FakeCustomerIO, Receipt

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SITE_ID = "demo-site"
API_KEY = "demo-api-key-local-only"
ADMIN_USERNAME = "demo"
DASHBOARD_PATH = "/admin/django_cio_reliable/operation/dashboard/"
LOCKED = "attribute 'coupon' is locked"
KILL_SWITCH = (
    "from django_cio_reliable.breaker import get_breaker; "
    "get_breaker().force('forced_open', reason='kill switch')"
)

Signature = tuple[Any, ...]


@dataclass(frozen=True)
class Pace:
    """How long each part of the story lasts."""

    users: int
    cooldown: float  # BREAKER_RESET_TIMEOUT of every process
    slowness: float  # how slowly Customer.io fails during the outage
    open_for: float  # seconds of traffic while the breaker is open
    bad_orders: int


QUICK = Pace(users=4, cooldown=3.0, slowness=0.3, open_for=1.5, bad_orders=3)
FULL = Pace(users=12, cooldown=5.0, slowness=1.0, open_for=8.0, bad_orders=5)


# --------------------------------------------------------------------------- output


class Console:
    """Log lines, and one status line: redrawn in place on a terminal, plain lines otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.lock = threading.Lock()
        self.status = ""
        self.shown = False
        self.last_plain = ""
        self.last_plain_at = 0.0

    def _clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.shown = False

    def _draw(self) -> None:
        if self.status:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.stream.write(self.status[:width])
            self.shown = True
        self.stream.flush()

    def log(self, message: str = "") -> None:
        with self.lock:
            if self.tty:
                self._clear()
                self.stream.write(message + "\n")
                self._draw()
            else:
                self.stream.write(message + "\n")
                self.stream.flush()

    def update(self, status: str, *, force: bool = False) -> None:
        with self.lock:
            self.status = status
            if self.tty:
                self._clear()
                self._draw()
                return
            now = time.monotonic()
            if status != self.last_plain and (force or now - self.last_plain_at >= 1.0):
                self.stream.write(f"  [status] {status}\n")
                self.stream.flush()
                self.last_plain, self.last_plain_at = status, now

    def stop_status(self) -> None:
        with self.lock:
            self._clear()
            self.status = ""
            self.stream.flush()


console = Console(sys.stdout)


def log(message: str = "") -> None:
    console.log(message)


STARTED = time.monotonic()


def step(title: str) -> None:
    log("")
    log(f"== {title}   [{time.monotonic() - STARTED:.0f} s]")


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Processes:
    env: dict[str, str]
    logs: Path
    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        out = (self.logs / f"{name}.log").open("wb")
        child = subprocess.Popen(
            [sys.executable, str(HERE / "manage.py"), *args],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops them in order
        )
        out.close()
        self.children.append((name, child))
        return child

    def manage(self, *args: str, show: bool = True, expect: int = 0) -> tuple[int, str]:
        """Run ``manage.py ARGS``, print the command and its output, check its exit code."""
        if show:
            log(f"  $ python manage.py {' '.join(_quote(a) for a in args)}")
        done = subprocess.run(
            [sys.executable, str(HERE / "manage.py"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        output = (done.stdout + done.stderr).rstrip()
        if show and output:
            for line in output.splitlines():
                log(f"    {line}")
        if show:
            log(f"    (exit code {done.returncode})")
        if done.returncode != expect:
            raise DemoError(
                f"manage.py {' '.join(args)} exited {done.returncode}, expected {expect}:\n"
                + output[-2000:]
            )
        return done.returncode, output

    def stop(self) -> None:
        for _name, child in reversed(self.children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for name, child in reversed(self.children):
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                log(f"{name} (pid {child.pid}) did not stop in 20 s: killing it")
                child.kill()
                child.wait()


def _quote(arg: str) -> str:
    return f'"{arg}"' if any(c in arg for c in " ;'()") else arg


class DemoError(RuntimeError):
    """The story cannot go on."""


# --------------------------------------------------------------------------- HTTP


@dataclass
class Response:
    status: int
    body: str
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)


class Browser:
    """A tiny HTTP client for the dev server (cookies kept for the admin session)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def request(self, path: str, data: dict[str, str] | None = None) -> Response:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        request = urllib.request.Request(self.base + path, data=body)  # noqa: S310 - our server
        started = time.perf_counter()
        try:
            with self.opener.open(request, timeout=30) as answer:
                text = answer.read().decode()
                status = answer.status
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            status = error.code
        return Response(status, text, time.perf_counter() - started)

    def csrf(self) -> str:
        for cookie in self.cookies:
            if cookie.name == "csrftoken" and cookie.value:
                return cookie.value
        raise DemoError("the admin set no csrftoken cookie")

    def login(self, username: str, password: str) -> None:
        self.request("/admin/login/")
        answer = self.request(
            "/admin/login/?next=/admin/",
            {
                "username": username,
                "password": password,
                "csrfmiddlewaretoken": self.csrf(),
                "next": "/admin/",
            },
        )
        if answer.status != 200 or "Log out" not in answer.body:
            raise DemoError(f"could not log in to the admin as {username} ({answer.status})")


# --------------------------------------------------------------------------- the shop's customers


@dataclass
class Customer:
    pk: int
    username: str
    email: str
    orders: dict[int, str] = field(default_factory=dict)  # order id -> status


class Shoppers:
    """Plays the customers over HTTP and remembers what each of them should cause, in order."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.customers: list[Customer] = []
        self.expected: dict[str, list[Signature]] = {}
        self.latencies: dict[str, list[float]] = {}
        self.phase = "setup"
        self.random = random.Random(6)  # noqa: S311 - a reproducible story, not cryptography

    def _post(self, path: str, data: dict[str, str]) -> Any:
        answer = self.browser.request(path, data)
        self.latencies.setdefault(self.phase, []).append(answer.seconds)
        if answer.status != 200:
            raise DemoError(f"POST {path} answered {answer.status}: {answer.body[:300]}")
        return answer.json()

    def _expect(self, customer: Customer, signature: Signature) -> None:
        self.expected.setdefault(str(customer.pk), []).append(signature)

    def sign_up(self, username: str) -> Customer:
        email = f"{username}@example.com"
        pk = self._post("/signup/", {"username": username, "email": email})["id"]
        customer = Customer(pk, username, email)
        self.customers.append(customer)
        self._expect(customer, ("identify", email))
        return customer

    def change_email(self, customer: Customer) -> None:
        customer.email = f"{customer.username}+{len(self.expected[str(customer.pk)])}@example.com"
        self._post(f"/users/{customer.pk}/", {"email": customer.email})
        self._expect(customer, ("identify", customer.email))

    def place_order(self, customer: Customer, coupon: str = "") -> int:
        total = f"{self.random.randint(5, 120)}.{self.random.randint(0, 99):02d}"
        data = {"user": str(customer.pk), "total": total}
        if coupon:
            data["coupon"] = coupon
        order: int = self._post("/orders/", data)["id"]
        customer.orders[order] = "placed" if not coupon else "held"
        self._expect(customer, ("order_placed", order))
        return order

    def move_order(self, customer: Customer, order: int, status: str) -> None:
        self._post(f"/orders/{order}/status/", {"status": status})
        customer.orders[order] = status
        self._expect(customer, ("order_status_changed", order, status))

    def shop_a_little(self, customer: Customer | None = None) -> None:
        """One thing a customer does: pay or ship an order, place one, or change their e-mail."""
        who = customer or self.random.choice(self.customers)
        roll = self.random.random()
        placed = [o for o, s in who.orders.items() if s == "placed"]
        paid = [o for o, s in who.orders.items() if s == "paid"]
        if roll < 0.1:
            self.change_email(who)
        elif placed and roll < 0.55:
            self.move_order(who, placed[0], "paid")
        elif paid and roll < 0.8:
            self.move_order(who, paid[0], "shipped")
        else:
            self.place_order(who)

    @property
    def accepted(self) -> int:
        return sum(len(ops) for ops in self.expected.values())


def signature(receipt: Receipt) -> Signature:
    """What a receipt at FakeCustomerIO says happened, comparable with Shoppers.expected."""
    data = receipt.attributes
    if receipt.kind == "identify":
        return ("identify", data.get("email"))
    if receipt.name == "order_status_changed":
        return ("order_status_changed", data.get("order"), data.get("to"))
    return (receipt.name or receipt.kind, data.get("order"))


# --------------------------------------------------------------------------- state and checks


@dataclass
class Snapshot:
    breaker: str
    mode: str
    counts: dict[str, int]
    received: int

    @property
    def backlog(self) -> int:
        return self.counts["pending"] + self.counts["sending"] + self.counts["failed"]

    def line(self) -> str:
        mode = "" if self.mode == "auto" else f" ({self.mode.replace('_', ' ')})"
        return (
            f"breaker {self.breaker}{mode} | backlog {self.backlog} | "
            f"delivered {self.counts['delivered']} | dead {self.counts['dead']} | "
            f"received by Customer.io {self.received}"
        )


def snapshot(server: FakeCustomerIO) -> Snapshot:
    from django_cio_reliable import outbox
    from django_cio_reliable.models import BreakerState

    row = BreakerState.objects.values_list("state", "mode").first() or ("closed", "auto")
    counts = outbox.queue_status().counts
    return Snapshot(str(row[0]), str(row[1]), counts, len(server.applied()))


class Monitor(threading.Thread):
    """Refreshes the status line four times a second and remembers what it saw."""

    def __init__(self, server: FakeCustomerIO) -> None:
        super().__init__(name="demo-monitor", daemon=True)
        self.server = server
        self.halt = threading.Event()
        self.latest: Snapshot | None = None

    def run(self) -> None:
        from django.db import connection

        try:
            while not self.halt.is_set():
                try:
                    current = snapshot(self.server)
                except Exception:  # noqa: BLE001, S112 - a busy database: try again
                    time.sleep(0.25)
                    continue
                self.latest = current
                console.update(current.line())
                self.halt.wait(0.25)
        finally:
            connection.close()


@dataclass
class Check:
    ok: bool
    what: str


class Checks:
    def __init__(self) -> None:
        self.items: list[Check] = []

    def __call__(self, ok: bool, what: str) -> bool:
        self.items.append(Check(bool(ok), what))
        log(f"  {'ok  ' if ok else 'FAIL'} {what}")
        return bool(ok)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.items if not c.ok]


def wait_until(predicate: Callable[[], bool], timeout: float, tick: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(tick)
    return predicate()


def settled() -> bool:
    from django_cio_reliable import lifecycle
    from django_cio_reliable.models import Operation

    return not Operation.objects.filter(status__in=lifecycle.OPEN).exists()


def breaker_state() -> tuple[str, str]:
    from django_cio_reliable.models import BreakerState

    row = BreakerState.objects.values_list("state", "mode").first()
    return (str(row[0]), str(row[1])) if row else ("closed", "auto")


def transitions(since_id: int = 0) -> list[tuple[int, str, str, str]]:
    """Breaker events after ``since_id``: (id, from_state, to_state, to_mode)."""
    from django_cio_reliable.models import BreakerEvent

    rows = BreakerEvent.objects.filter(id__gt=since_id).order_by("id")
    return [(e.id, e.from_state, e.to_state, e.to_mode) for e in rows]


def milliseconds(values: list[float]) -> str:
    if not values:
        return "no requests"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return (
        f"{len(values)} requests, median {statistics.median(values) * 1000:.0f} ms, "
        f"p95 {p95 * 1000:.0f} ms, max {max(values) * 1000:.0f} ms"
    )


# --------------------------------------------------------------------------- the story


@dataclass
class Story:
    server: FakeCustomerIO
    procs: Processes
    base: str
    pace: Pace
    password: str
    checks: Checks = field(default_factory=Checks)
    report: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.shop = Shoppers(Browser(self.base))
        self.monitor = Monitor(self.server)
        self.events_before_outage = 0
        self.started_at = datetime.now(timezone.utc).replace(microsecond=0)
        self.dead_event_ids: set[str] = set()

    def failed_requests(self) -> int:
        return sum(1 for r in self.server.requests if r.fault == "outage")

    def health(self, label: str) -> tuple[Response, Response]:
        plain = self.shop.browser.request("/health/?format=json")
        ours = self.shop.browser.request("/health/cio/?format=json")
        log(f"  GET /health/     -> {plain.status} {plain.body.strip()}")
        log(f"  GET /health/cio/ -> {ours.status} {ours.body.strip()}")
        self.report.setdefault("health", {})[label] = {
            "health": plain.status,
            "health_cio": ours.status,
            "health_cio_body": ours.body,
        }
        return plain, ours

    def run(self) -> None:
        self.monitor.start()
        try:
            self.healthy()
            self.outage()
            self.recovery()
            self.kill_switch()
            self.credentials()
            self.dead_letters()
            self.replay()
        finally:
            self.monitor.halt.set()
            self.monitor.join()
            console.stop_status()

    # 1 ----------------------------------------------------------------------
    def healthy(self) -> None:
        step("1. Healthy traffic: customers sign up, place orders, pay for them")
        shop = self.shop
        shop.phase = "healthy"
        for i in range(self.pace.users):
            customer = shop.sign_up(f"customer{i}")
            shop.place_order(customer)
        for customer in shop.customers:
            shop.shop_a_little(customer)
        self.checks(
            wait_until(settled, 30),
            f"{shop.accepted} operations stored by the model hooks and delivered",
        )
        log(f"  web requests: {milliseconds(shop.latencies['healthy'])}")
        plain, ours = self.health("healthy")
        self.checks(plain.status == 200 and ours.status == 200, "both health endpoints say OK")

    # 2 ----------------------------------------------------------------------
    def outage(self) -> None:
        pace, shop = self.pace, self.shop
        step(f"2. Customer.io starts failing: HTTP 503 after {pace.slowness:g} s for every request")
        self.events_before_outage = transitions()[-1][0] if transitions() else 0
        self.server.set_latency(pace.slowness)
        self.server.outage(3600, status=503)
        shop.phase = "outage"

        def opened() -> bool:
            shop.shop_a_little()
            return breaker_state()[0] == "open"

        is_open = wait_until(opened, 30, tick=0.3)
        opened_after = self.failed_requests()
        self.checks(
            is_open,
            f"the breaker opened after {opened_after} failed requests to Customer.io",
        )
        log(f"  customers keep shopping for {pace.open_for:g} s while the breaker is open")
        deadline = time.monotonic() + pace.open_for
        while time.monotonic() < deadline:
            shop.shop_a_little()
            time.sleep(0.15)
        requests_while_open = self.failed_requests() - opened_after
        now = snapshot(self.server)
        self.checks(now.backlog > 0, f"the backlog grew to {now.backlog} operations, all stored")
        log(
            f"  Customer.io saw {requests_while_open} requests in those {pace.open_for:g} s "
            "(only half-open probes get through)"
        )
        latencies = shop.latencies["outage"]
        log(f"  web requests during the outage: {milliseconds(latencies)}")
        self.report["latency_ms"] = {
            phase: {
                "median": round(statistics.median(values) * 1000, 1),
                "max": round(max(values) * 1000, 1),
                "count": len(values),
            }
            for phase, values in shop.latencies.items()
            if values
        }
        self.checks(
            statistics.median(latencies) < pace.slowness,
            f"web requests stay fast: median {statistics.median(latencies) * 1000:.0f} ms, "
            f"while each call to Customer.io takes {pace.slowness * 1000:.0f} ms and fails",
        )
        plain, ours = self.health("outage")
        self.checks(
            plain.status == 500 and ours.status == 200 and "Warning" in ours.body,
            "health: django-health-check's view answers 500 on the warning, HealthView 200",
        )
        self.procs.manage("cio_status", "--fail-on-breaker", expect=1)

    # 3 ----------------------------------------------------------------------
    def recovery(self) -> None:
        shop = self.shop
        step("3. Customer.io is back: a half-open probe, the breaker closes, the backlog drains")
        self.server.clear_faults()
        shop.phase = "recovery"

        def closed() -> bool:
            shop.shop_a_little()
            return breaker_state()[0] == "closed"

        self.checks(wait_until(closed, 40, tick=0.5), "the breaker closed again")
        self.checks(wait_until(settled, 40), "the backlog drained")
        seen = [(f, t) for _, f, t, m in transitions(self.events_before_outage) if m == "auto"]
        log("  breaker transitions: " + ", ".join(f"{f} -> {t}" for f, t in seen))
        self.report["transitions"] = [f"{f}->{t}" for f, t in seen]
        self.checks(
            ("closed", "open") in seen
            and ("open", "half_open") in seen
            and ("half_open", "closed") in seen,
            "the breaker went closed -> open -> half-open -> closed",
        )

    # 4 ----------------------------------------------------------------------
    def kill_switch(self) -> None:
        shop, procs = self.shop, self.procs
        step("4. An operator pulls the kill switch (breaker forced open), then resets it")
        procs.manage("shell", "-c", KILL_SWITCH)
        time.sleep(1.2)  # every process trusts its cached breaker state for up to 1 s
        shop.phase = "forced_open"
        received = len(self.server.applied())
        for customer in shop.customers[:3]:
            shop.shop_a_little(customer)
        time.sleep(1.5)
        held = snapshot(self.server)
        self.checks(
            held.breaker == "open" and held.mode == "forced_open" and held.received == received,
            f"forced open: nothing sent, {held.backlog} operations wait in the outbox",
        )
        _, ours = self.health("forced_open")
        self.checks(ours.status == 200 and "forced open" in ours.body, "health reports it")
        code, _ = procs.manage("cio_replay", "--status", "pending", "--all", "--now", expect=3)
        self.checks(code == 3, "cio_replay --now refuses while the breaker is open (exit code 3)")
        log("  the operator presses 'Reset to automatic' on the admin dashboard")
        shop.browser.login(ADMIN_USERNAME, self.password)
        answer = shop.browser.request(
            "/admin/django_cio_reliable/breakerstate/force/",
            {
                "mode": "auto",
                "reason": "demo: incident over",
                "csrfmiddlewaretoken": shop.browser.csrf(),
                "next": DASHBOARD_PATH,
            },
        )
        state = breaker_state()
        self.checks(
            answer.status == 200 and state == ("closed", "auto"),
            f"reset from the admin: {state[0]} and {state[1]} again (HTTP {answer.status})",
        )
        shop.phase = "after_reset"
        shop.shop_a_little()  # traffic goes on, and kicks a drain
        self.checks(wait_until(settled, 30), "the held operations were delivered")

    # 5 ----------------------------------------------------------------------
    def credentials(self) -> None:
        shop, procs = self.shop, self.procs
        step("5. The API key was rotated in Customer.io but not here yet: Customer.io answers 401")
        from django_cio_reliable.models import DeliveryState

        self.server.fail_next(1, status=401)
        shop.phase = "credentials"
        received = len(self.server.applied())
        for customer in shop.customers[:2]:
            shop.shop_a_little(customer)

        def paused() -> bool:
            return bool(DeliveryState.objects.filter(pause_reason="auth").exists())

        self.checks(
            wait_until(paused, 20) and len(self.server.applied()) == received,
            "delivery paused for every worker; nothing dead-lettered, no attempt used up",
        )
        _, ours = self.health("credentials")
        self.checks(
            ours.status == 500 and "credentials" in ours.body,
            "HealthView answers 500: rejected credentials need a person, not a retry",
        )
        procs.manage("cio_status", "--fail-on-auth", expect=1)
        log("  the new key is deployed (restart the web and qcluster processes), then:")
        _, out = procs.manage(
            "cio_replay", "--status", "pending,failed", "--all", "--now", "--force"
        )
        self.checks(
            "lifted the credentials pause" in out and wait_until(settled, 20),
            "cio_replay --now --force lifted the pause and delivered what waited",
        )

    # 6 ----------------------------------------------------------------------
    def dead_letters(self) -> None:
        shop, procs, pace = self.shop, self.procs, self.pace
        step("6. A deploy adds a 'coupon' to orders; Customer.io rejects it: dead letters")
        self.server.reject_batch_items(
            lambda index, op: "coupon" in (op.get("attributes") or {}),
            reason="invalid",
            field="coupon",
            message=f"{LOCKED} in this workspace",
            description="orders with a coupon",
        )
        shop.phase = "dead_letters"
        for customer in shop.customers[: pace.bad_orders]:
            shop.place_order(customer, coupon="WELCOME10")
            shop.shop_a_little(customer)
        self.checks(wait_until(settled, 30), "everything settled")
        from django_cio_reliable.models import Operation

        dead = list(Operation.objects.filter(status="dead").values_list("event_id", "last_error"))
        self.dead_event_ids = {event_id for event_id, _ in dead}
        self.checks(
            len(dead) == pace.bad_orders and all(LOCKED in error for _, error in dead),
            f"{len(dead)} operations dead-lettered with Customer.io's reason; the rest delivered",
        )
        self.report["dead_letters"] = len(dead)
        _, ours = self.health("dead_letters")
        self.checks(ours.status == 200 and "dead letter" in ours.body, "health warns about them")
        procs.manage("cio_status", "--fail-on-dead", expect=1)

    # 7 ----------------------------------------------------------------------
    def replay(self) -> None:
        procs, pace = self.procs, self.pace
        step("7. The attribute is unlocked in Customer.io; the operator replays the dead letters")
        self.server.clear_faults()
        since = self.started_at.isoformat(timespec="seconds")
        _, listing = procs.manage(
            "cio_replay", "--dry-run", "--error-contains", "locked", "--since", since
        )
        self.checks(
            f"{pace.bad_orders} operations would be replayed" in listing,
            "--dry-run lists them and changes nothing",
        )
        _, first = procs.manage("cio_replay", "--error-contains", "locked", "--limit", "1", "--now")
        _, rest = procs.manage("cio_replay", "--error-contains", "locked", "--now", "--rate", "50")
        self.checks(
            "delivered=1 " in first and f"delivered={pace.bad_orders - 1} " in rest,
            f"cio_replay --now delivered 1, then the other {pace.bad_orders - 1}",
        )
        self.checks(wait_until(settled, 20), "nothing left to deliver")
        procs.manage("cio_status", "--json", "--fail-on-dead", "--fail-on-backlog", "0", show=False)
        self.checks(True, "cio_status --fail-on-dead --fail-on-backlog 0 exits 0")

    # summary ------------------------------------------------------------------
    def summary(self) -> dict[str, int]:
        from django_cio_reliable import outbox

        counts = outbox.queue_status().counts
        applied = self.server.applied()
        received: dict[str, list[Signature]] = {}
        for receipt in applied:
            received.setdefault(str(receipt.customer_id), []).append(signature(receipt))
        expected = self.shop.expected
        want = Counter(s for ops in expected.values() for s in ops)
        got = Counter(s for ops in received.values() for s in ops)
        lost = sum((want - got).values())
        unknown = sum((got - want).values())
        repeated = sum(n - 1 for s, n in got.items() if n > 1)
        duplicates = len(self.server.duplicates()) + repeated
        replayed = {
            signature(r) for r in applied if r.event_id and r.event_id in self.dead_event_ids
        }
        self.report["replayed"] = len(replayed)
        out_of_order = []
        for person, ops in expected.items():
            mine = [s for s in received.get(person, []) if s not in replayed]
            if mine != [s for s in ops if s not in replayed and s in got]:
                out_of_order.append(person)
        row = {
            "accepted": sum(counts.values()),
            "delivered": counts["delivered"],
            "unique": len({(str(r.customer_id), signature(r)) for r in applied}),
            "duplicates": duplicates,
            "lost": lost,
            "dead": counts["dead"],
        }
        step("Summary")
        log("  " + " ".join(f"{name:>10}" for name in row))
        log("  " + " ".join(f"{value:>10}" for value in row.values()))
        log("")
        c = self.checks
        c(row["accepted"] == self.shop.accepted, f"the shop caused {self.shop.accepted} operations")
        c(lost == 0 and unknown == 0, f"nothing lost ({lost}), nothing unexpected ({unknown})")
        c(duplicates == 0, f"nothing sent twice ({duplicates})")
        c(row["delivered"] == row["unique"] == row["accepted"], "every operation delivered once")
        c(not out_of_order, f"per-person order held for all {len(expected)} customers")
        self.report.update(row, unknown=unknown, out_of_order=out_of_order)
        return row


# --------------------------------------------------------------------------- screenshot


def take_screenshot(base: str, password: str, path: Path) -> None:
    """Log in to the admin in headless Chromium and save the dashboard as a PNG."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="cio-demo-chromium-")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--window-size=1400,1600",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        target = urllib.parse.quote(f"{DASHBOARD_PATH}?hours=1")
        driver.get(f"{base}/admin/login/?next={target}")
        driver.find_element(By.NAME, "username").send_keys(ADMIN_USERNAME)
        driver.find_element(By.NAME, "password").send_keys(password)
        driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        WebDriverWait(driver, 20).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, "svg#cio-throughput-chart"))
        )
        state = driver.find_element(By.ID, "cio-breaker-state").get_attribute("data-state")
        if state != "closed":
            raise DemoError(f"the dashboard shows the breaker {state}, not closed")
        path.parent.mkdir(parents=True, exist_ok=True)
        if not driver.save_screenshot(str(path)):
            raise DemoError(f"could not write the screenshot {path}")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# --------------------------------------------------------------------------- main


@contextmanager
def fake_customer_io() -> Iterator[FakeCustomerIO]:
    from django_cio_reliable.testing import FakeCustomerIO

    server = FakeCustomerIO(site_id=SITE_ID, api_key=API_KEY)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def wait_for_http(base: str, child: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise DemoError(f"the dev server exited with code {child.returncode}")
        try:
            with urllib.request.urlopen(base + "/", timeout=2):  # noqa: S310 - our server
                return
        except OSError:
            time.sleep(0.2)
    raise DemoError(f"the dev server did not answer on {base} within {timeout:g} s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short story, then exit")
    parser.add_argument("--port", type=int, default=0, help="dev server port (default: free)")
    parser.add_argument(
        "--screenshot",
        type=Path,
        metavar="PATH",
        help="at the end, log in with headless Chromium and save the dashboard as a PNG",
    )
    parser.add_argument("--report", type=Path, metavar="PATH", help="write the results as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pace = QUICK if args.quick else FULL
    started = time.monotonic()
    state_dir = Path(tempfile.mkdtemp(prefix="cio-demo-")) if args.quick else HERE / ".demo"
    if not args.quick and state_dir.exists():
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    sys.path[:0] = [str(HERE), str(ROOT)]
    password = secrets.token_urlsafe(12)
    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"
    report: dict[str, Any] = {"ok": False}
    code = 1
    with fake_customer_io() as server:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]),
            "PYTHONUNBUFFERED": "1",
            "DJANGO_SETTINGS_MODULE": "shop.settings",
            "SHOP_STATE_DIR": str(state_dir),
            "CIO_TRACK_URL": server.url,
            "CIO_SITE_ID": SITE_ID,
            "CIO_API_KEY": API_KEY,
            "SHOP_BREAKER_COOLDOWN": str(pace.cooldown),
            "DJANGO_SUPERUSER_PASSWORD": password,
        }
        os.environ.update({k: env[k] for k in ("DJANGO_SETTINGS_MODULE", "SHOP_STATE_DIR")})
        os.environ.update({k: env[k] for k in ("CIO_TRACK_URL", "CIO_SITE_ID", "CIO_API_KEY")})
        os.environ["SHOP_BREAKER_COOLDOWN"] = env["SHOP_BREAKER_COOLDOWN"]
        procs = Processes(env, state_dir)
        try:
            log(f"FakeCustomerIO (the stand-in for Customer.io) listens on {server.url}")
            procs.manage("migrate", "--verbosity", "0", show=False)
            log(f"migrated a fresh SQLite database in {state_dir}")
            procs.manage(
                "createsuperuser",
                "--noinput",
                "--username",
                ADMIN_USERNAME,
                "--email",
                "demo@localhost",
                show=False,
            )
            cluster = procs.start("qcluster", "qcluster")
            log(f"started a django-q2 cluster: manage.py qcluster (pid {cluster.pid})")
            web = procs.start("runserver", "runserver", "--noreload", f"127.0.0.1:{port}")
            wait_for_http(base, web, 30)
            log(f"started the dev server: manage.py runserver (pid {web.pid}) on {base}")
            log(f"logs of both: {state_dir}/qcluster.log, {state_dir}/runserver.log")
            log("")
            log(f"  admin:      {base}/admin/")
            log(f"  dashboard:  {base}{DASHBOARD_PATH}")
            log(f"  health:     {base}/health/  and  {base}/health/cio/")
            log(f"  log in as   {ADMIN_USERNAME} / {password}   (a local-only demo superuser)")

            import django

            django.setup()
            story = Story(server, procs, base, pace, password, report=report)
            try:
                story.run()
            except DemoError as error:
                story.checks(False, f"the story stopped: {error}")
            story.summary()
            if args.screenshot:
                step("Screenshot")
                try:
                    take_screenshot(base, password, args.screenshot.resolve())
                    story.checks(True, f"dashboard screenshot saved to {args.screenshot}")
                    report["screenshot"] = str(args.screenshot.resolve())
                except Exception as error:  # noqa: BLE001 - reported as a failed check
                    story.checks(False, f"screenshot failed: {error!r}")
            failed = story.checks.failed
            report["checks"] = [{"ok": c.ok, "what": c.what} for c in story.checks.items]
            report["ok"] = not failed
            report["seconds"] = round(time.monotonic() - started, 1)
            log("")
            if failed:
                log(f"DEMO FAILED: {len(failed)} check(s) failed: see FAIL above")
            else:
                log(
                    f"nothing lost, nothing sent twice, per-person order kept "
                    f"({len(story.checks.items)} checks passed in {report['seconds']:g} s)"
                )
            code = 1 if failed else 0
            if args.report:
                args.report.write_text(json.dumps(report, indent=2, default=str))
            if not args.quick:
                serve(base, password, server)
        except KeyboardInterrupt:
            log("")
            log("stopping")
        except DemoError as error:
            log(f"DEMO FAILED: {error}")
            code = 1
        finally:
            procs.stop()
            if code:
                show_logs(state_dir)
            if args.quick:
                shutil.rmtree(state_dir, ignore_errors=True)
    return code


def show_logs(state_dir: Path, lines: int = 40) -> None:
    """The end of each process's log, for a failed run (the quick run's directory is removed)."""
    for name in ("runserver", "qcluster"):
        path = state_dir / f"{name}.log"
        if path.exists():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            log(f"--- last lines of {name}.log ---")
            for line in tail:
                log(f"  {line}")


def serve(base: str, password: str, server: FakeCustomerIO) -> None:
    step("The shop stays up: explore it (Ctrl-C stops everything)")
    log(f"  dashboard:  {base}{DASHBOARD_PATH}")
    log(f"  log in as   {ADMIN_USERNAME} / {password}")
    log("  force the breaker open on the dashboard, then place an order:")
    log(f"    curl -d user=2 -d total=9.99 {base}/orders/")
    monitor = Monitor(server)
    monitor.start()
    try:
        while True:
            time.sleep(3600)
    finally:
        monitor.halt.set()
        monitor.join()
        console.stop_status()


if __name__ == "__main__":
    sys.exit(main())

"""System checks: each id fires on a minimal bad setting, never on a good one; all documented."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from django.conf import settings as django_settings
from django.core.checks import ERROR, WARNING, CheckMessage
from django.core.checks.registry import registry
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from django_cio_reliable import checks
from django_cio_reliable.conf import DEFAULTS

if TYPE_CHECKING:
    from pytest_django import Settings  # older releases lack it: types only

DOCS = Path(__file__).resolve().parent.parent / "docs"

#: A distinctive API key: no check message or hint may ever contain it.
SECRET = "sk-do-not-print-7f3a9c1e5b"

#: The test settings' CIO_RELIABLE with the distinctive key.
GOOD: dict[str, Any] = {**django_settings.CIO_RELIABLE, "API_KEY": SECRET}

#: Marks a Django setting to delete instead of override.
DELETE = object()

CHECK_FUNCTIONS = (
    checks.check_settings,
    checks.check_task_queue,
    checks.check_cache,
    checks.check_time_zone,
    checks.check_hooks,
    checks.check_sqlite_transactions,
)

#: Every id ever shipped and what it means. Ids are stable: never change the meaning of one;
#: retire it (checks.RETIRED_IDS) and add a new id instead.
SHIPPED = {
    "cio_reliable.E001": "Customer.io credentials missing",
    "cio_reliable.E002": "CIO_RELIABLE is not a dict",
    "cio_reliable.E003": "A setting has the wrong type",
    "cio_reliable.E004": "A numeric setting is out of range",
    "cio_reliable.E005": "REGION, DELIVERY or DISPATCH is not an accepted value",
    "cio_reliable.E006": "TRACK_URL is not a usable base URL",
    "cio_reliable.E007": "Retry or lease timing settings contradict each other",
    "cio_reliable.E008": "IDEMPOTENCY_TTL is shorter than MAX_AGE + REPLAY_WINDOW",
    "cio_reliable.E009": "django_q is not installed",
    "cio_reliable.E010": "Q_CLUSTER is not a dict",
    "cio_reliable.E011": "No django-q2 broker while DISPATCH is 'task'",
    "cio_reliable.E012": "Q_CLUSTER timeout is not smaller than retry",
    "cio_reliable.E013": "DRAIN_MAX_SECONDS is not smaller than Q_CLUSTER timeout",
    "cio_reliable.E014": "CACHE_ALIAS names no configured cache",
    "cio_reliable.E015": "A HOOKS entry is malformed",
    "cio_reliable.E016": "A HOOKS entry names an unknown model",
    "cio_reliable.E017": "A HOOKS callable cannot be imported or is not callable",
    "cio_reliable.E018": "A HOOKS entry watches a field its model lacks",
    "cio_reliable.W001": "Unknown key in CIO_RELIABLE",
    "cio_reliable.W002": "TRACK_URL sends the API key in cleartext",
    "cio_reliable.W003": "health_check is not installed",
    "cio_reliable.W004": "No django-q2 broker while DISPATCH is 'inline'",
    "cio_reliable.W005": "Q_CLUSTER has no timeout",
    "cio_reliable.W006": "CACHE_ALIAS names a process-local cache",
    "cio_reliable.W007": "USE_TZ is False",
    "cio_reliable.W008": "Two HOOKS entries share a dispatch uid",
    "cio_reliable.W009": "SQLite without transaction_mode IMMEDIATE",
}


def run_all() -> list[CheckMessage]:
    """Run every check of the app directly, as the check framework would."""
    return [message for check in CHECK_FUNCTIONS for message in check(app_configs=None)]


def without_app(name: str) -> list[str]:
    return [app for app in django_settings.INSTALLED_APPS if app != name]


def caches(**extra: str) -> dict[str, dict[str, str]]:
    return {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        **{alias: {"BACKEND": backend, "LOCATION": "/tmp/cio"} for alias, backend in extra.items()},
    }


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite must not depend on a CIO_API_KEY in the developer's environment."""
    monkeypatch.delenv("CIO_API_KEY", raising=False)


def configure(settings: Settings, cio: dict[str, Any], django: dict[str, Any]) -> None:
    settings.CIO_RELIABLE = {**GOOD, **cio}
    for name, value in django.items():
        if value is DELETE:
            delattr(settings, name)
        else:
            with warnings.catch_warnings():
                # Django warns about overriding DATABASES; the checks only read the setting.
                warnings.filterwarnings("ignore", "Overriding setting DATABASES", UserWarning)
                setattr(settings, name, value)


@dataclass(frozen=True)
class Case:
    """A minimal bad configuration and the one id it must raise."""

    check_id: str
    names: str
    cio: dict[str, Any] = field(default_factory=dict)
    django: dict[str, Any] = field(default_factory=dict)


BROKERLESS = {"name": "cio", "timeout": 60, "retry": 120}

#: A valid CIO_RELIABLE["HOOKS"] entry (the callables live in tests/hookapp/cio.py).
HOOK = {
    "kind": "identify_on_save",
    "model": "hookapp.Customer",
    "customer_id": "tests.hookapp.cio.customer_id",
}

CASES = [
    Case("cio_reliable.E001", "SITE_ID", cio={"SITE_ID": ""}),
    Case("cio_reliable.E001", "SITE_ID", cio={"SITE_ID": "   "}),
    Case("cio_reliable.E001", "CIO_API_KEY", cio={"API_KEY": ""}),
    Case("cio_reliable.E001", "API_KEY_ENV", cio={"API_KEY": "", "API_KEY_ENV": ""}),
    Case("cio_reliable.E002", "CIO_RELIABLE", django={"CIO_RELIABLE": [("SITE_ID", "x")]}),
    Case("cio_reliable.E003", "TIMEOUT", cio={"TIMEOUT": "10"}),
    Case("cio_reliable.E003", "MAX_ATTEMPTS", cio={"MAX_ATTEMPTS": True}),
    Case("cio_reliable.E003", "MAX_ATTEMPTS", cio={"MAX_ATTEMPTS": 3.0}),
    Case("cio_reliable.E003", "BATCH", cio={"BATCH": 1}),
    Case("cio_reliable.E003", "SCRUB_DELIVERED", cio={"SCRUB_DELIVERED": "yes"}),
    Case("cio_reliable.E003", "SITE_ID", cio={"SITE_ID": 42}),
    Case("cio_reliable.E003", "API_KEY", cio={"API_KEY": SECRET.encode()}),
    Case("cio_reliable.E003", "API_KEY_ENV", cio={"API_KEY_ENV": None}),
    Case("cio_reliable.E003", "REGION", cio={"REGION": None}),
    Case("cio_reliable.E003", "DELIVERY", cio={"DELIVERY": 1}),
    Case("cio_reliable.E003", "DISPATCH", cio={"DISPATCH": ["task"]}),
    Case("cio_reliable.E003", "TRACK_URL", cio={"TRACK_URL": b"https://track.customer.io"}),
    Case("cio_reliable.E003", "CACHE_ALIAS", cio={"CACHE_ALIAS": 0}),
    Case("cio_reliable.E003", "DRAIN_MAX_SECONDS", cio={"DRAIN_MAX_SECONDS": "30"}),
    Case("cio_reliable.E003", "RATE_LIMIT", cio={"RATE_LIMIT": None}),
    Case("cio_reliable.E003", "HOOKS", cio={"HOOKS": HOOK}),
    Case("cio_reliable.E004", "TIMEOUT", cio={"TIMEOUT": 0}),
    Case("cio_reliable.E004", "TIMEOUT", cio={"TIMEOUT": 301}),
    Case("cio_reliable.E004", "TIMEOUT", cio={"TIMEOUT": float("nan")}),
    Case("cio_reliable.E004", "CONNECT_TIMEOUT", cio={"CONNECT_TIMEOUT": -1}),
    Case("cio_reliable.E004", "MAX_ERROR_BODY_BYTES", cio={"MAX_ERROR_BODY_BYTES": 1023}),
    Case("cio_reliable.E004", "MAX_ATTEMPTS", cio={"MAX_ATTEMPTS": 0}),
    Case("cio_reliable.E004", "MAX_AGE", cio={"MAX_AGE": 0}),
    Case("cio_reliable.E004", "MAX_AGE", cio={"MAX_AGE": float("inf")}),
    Case("cio_reliable.E004", "RETRY_BASE", cio={"RETRY_BASE": 0}),
    Case("cio_reliable.E004", "RETRY_CAP", cio={"RETRY_CAP": -5}),
    Case("cio_reliable.E004", "DIRECT_ATTEMPTS", cio={"DIRECT_ATTEMPTS": 0}),
    Case("cio_reliable.E004", "DIRECT_ATTEMPTS", cio={"DIRECT_ATTEMPTS": 6}),
    Case("cio_reliable.E004", "RATE_LIMIT", cio={"RATE_LIMIT": 0}),
    Case("cio_reliable.E004", "BATCH_SIZE", cio={"BATCH_SIZE": 0}),
    Case("cio_reliable.E004", "BATCH_SIZE", cio={"BATCH_SIZE": 1001}),
    Case("cio_reliable.E004", "BATCH_MAX_BYTES", cio={"BATCH_MAX_BYTES": 500_001}),
    Case("cio_reliable.E004", "CLAIM_SIZE", cio={"CLAIM_SIZE": 0}),
    Case("cio_reliable.E004", "LEASE_SECONDS", cio={"LEASE_SECONDS": 0}),
    Case("cio_reliable.E004", "DRAIN_MAX_SECONDS", cio={"DRAIN_MAX_SECONDS": 0}),
    Case("cio_reliable.E004", "DRAIN_SCHEDULE_MINUTES", cio={"DRAIN_SCHEDULE_MINUTES": 0}),
    Case("cio_reliable.E004", "KICK_DEBOUNCE", cio={"KICK_DEBOUNCE": -0.5}),
    Case("cio_reliable.E004", "DRAIN_LINGER", cio={"DRAIN_LINGER": -1}),
    Case("cio_reliable.E004", "IDEMPOTENCY_TTL", cio={"IDEMPOTENCY_TTL": 0}),
    Case("cio_reliable.E004", "IDEMPOTENCY_CACHE_SIZE", cio={"IDEMPOTENCY_CACHE_SIZE": -1}),
    Case("cio_reliable.E004", "REPLAY_WINDOW", cio={"REPLAY_WINDOW": -1}),
    Case("cio_reliable.E004", "RETAIN_DELIVERED", cio={"RETAIN_DELIVERED": -1}),
    Case("cio_reliable.E004", "RETAIN_DEAD", cio={"RETAIN_DEAD": -1}),
    Case("cio_reliable.E004", "PURGE_BATCH_SIZE", cio={"PURGE_BATCH_SIZE": 0}),
    Case(
        "cio_reliable.E004",
        "BREAKER_FAILURE_RATE_THRESHOLD",
        cio={"BREAKER_FAILURE_RATE_THRESHOLD": 0},
    ),
    Case(
        "cio_reliable.E004",
        "BREAKER_FAILURE_RATE_THRESHOLD",
        cio={"BREAKER_FAILURE_RATE_THRESHOLD": 50},
    ),
    Case("cio_reliable.E004", "BREAKER_WINDOW_SECONDS", cio={"BREAKER_WINDOW_SECONDS": 0.5}),
    Case("cio_reliable.E004", "BREAKER_MINIMUM_CALLS", cio={"BREAKER_MINIMUM_CALLS": 0}),
    Case(
        "cio_reliable.E004",
        "BREAKER_CONSECUTIVE_FAILURES",
        cio={"BREAKER_CONSECUTIVE_FAILURES": -1},
    ),
    Case("cio_reliable.E004", "BREAKER_SLOW_CALL_SECONDS", cio={"BREAKER_SLOW_CALL_SECONDS": 0}),
    Case(
        "cio_reliable.E004",
        "BREAKER_SLOW_CALL_RATE_THRESHOLD",
        cio={"BREAKER_SLOW_CALL_RATE_THRESHOLD": 1.5},
    ),
    Case("cio_reliable.E004", "BREAKER_RESET_TIMEOUT", cio={"BREAKER_RESET_TIMEOUT": 0}),
    Case(
        "cio_reliable.E004",
        "BREAKER_RESET_TIMEOUT_MULTIPLIER",
        cio={"BREAKER_RESET_TIMEOUT_MULTIPLIER": 0.5},
    ),
    Case("cio_reliable.E004", "BREAKER_RESET_TIMEOUT_MAX", cio={"BREAKER_RESET_TIMEOUT_MAX": -1}),
    Case(
        "cio_reliable.E004", "BREAKER_HALF_OPEN_MAX_CALLS", cio={"BREAKER_HALF_OPEN_MAX_CALLS": 0}
    ),
    Case(
        "cio_reliable.E004",
        "BREAKER_HALF_OPEN_MAX_CALLS",
        cio={"BREAKER_HALF_OPEN_MAX_CALLS": 101},
    ),
    Case(
        "cio_reliable.E004",
        "BREAKER_PROBE_LEASE_SECONDS",
        cio={"BREAKER_PROBE_LEASE_SECONDS": 0},
    ),
    Case("cio_reliable.E004", "BREAKER_SUCCESS_THRESHOLD", cio={"BREAKER_SUCCESS_THRESHOLD": 0}),
    Case("cio_reliable.E004", "BREAKER_CACHE_SECONDS", cio={"BREAKER_CACHE_SECONDS": -0.1}),
    Case("cio_reliable.E004", "BREAKER_CACHE_SECONDS", cio={"BREAKER_CACHE_SECONDS": 61}),
    Case("cio_reliable.E005", "REGION", cio={"REGION": "asia"}),
    Case("cio_reliable.E005", "DELIVERY", cio={"DELIVERY": "Outbox"}),
    Case("cio_reliable.E005", "DISPATCH", cio={"DISPATCH": "celery"}),
    Case("cio_reliable.E006", "TRACK_URL", cio={"TRACK_URL": "ftp://track.customer.io"}),
    Case("cio_reliable.E006", "TRACK_URL", cio={"TRACK_URL": "track.customer.io"}),
    Case("cio_reliable.E006", "TRACK_URL", cio={"TRACK_URL": "https://"}),
    Case("cio_reliable.E006", "TRACK_URL", cio={"TRACK_URL": f"https://u:{SECRET}@h.example"}),
    Case("cio_reliable.E006", "TRACK_URL", cio={"TRACK_URL": f"https://h.example/?k={SECRET}"}),
    Case("cio_reliable.E006", "TRACK_URL", cio={"TRACK_URL": f"https://h.example/#{SECRET}"}),
    Case("cio_reliable.E006", "TRACK_URL", cio={"TRACK_URL": "http://127.0.0.1:99999"}),
    Case("cio_reliable.E006", "TRACK_URL", cio={"TRACK_URL": "http://[::1"}),
    Case("cio_reliable.E007", "RETRY_CAP", cio={"RETRY_BASE": 2, "RETRY_CAP": 1.5}),
    Case("cio_reliable.E007", "LEASE_SECONDS", cio={"LEASE_SECONDS": 13.05}),
    Case("cio_reliable.E007", "LEASE_SECONDS", cio={"TIMEOUT": 200, "LEASE_SECONDS": 180}),
    Case(
        "cio_reliable.E007",
        "BREAKER_RESET_TIMEOUT_MAX",
        cio={"BREAKER_RESET_TIMEOUT": 60, "BREAKER_RESET_TIMEOUT_MAX": 30},
    ),
    Case(
        "cio_reliable.E007",
        "BREAKER_PROBE_LEASE_SECONDS",
        cio={"BREAKER_PROBE_LEASE_SECONDS": 13.05},
    ),
    Case("cio_reliable.E008", "IDEMPOTENCY_TTL", cio={"IDEMPOTENCY_TTL": 864_000 - 1}),
    Case("cio_reliable.E008", "REPLAY_WINDOW", cio={"REPLAY_WINDOW": 30 * 24 * 3600}),
    Case("cio_reliable.E008", "MAX_AGE", cio={"MAX_AGE": 1e308, "REPLAY_WINDOW": 10**400}),
    Case("cio_reliable.E009", "django_q", django={"INSTALLED_APPS": without_app("django_q")}),
    Case("cio_reliable.E010", "Q_CLUSTER", django={"Q_CLUSTER": "orm"}),
    Case("cio_reliable.E011", "Q_CLUSTER", cio={"DISPATCH": "task"}, django={"Q_CLUSTER": DELETE}),
    Case(
        "cio_reliable.E011", "Q_CLUSTER", cio={"DISPATCH": "task"}, django={"Q_CLUSTER": BROKERLESS}
    ),
    Case(
        "cio_reliable.E011",
        "Q_CLUSTER",
        cio={"DISPATCH": "task"},
        django={"Q_CLUSTER": {**BROKERLESS, "orm": None}},
    ),
    Case(
        "cio_reliable.E012",
        "Q_CLUSTER['timeout']",
        django={"Q_CLUSTER": {"orm": "default", "timeout": 120, "retry": 120}},
    ),
    Case(
        "cio_reliable.E012",
        "Q_CLUSTER['retry']",
        django={"Q_CLUSTER": {"orm": "default", "timeout": 90}},
    ),
    Case(
        "cio_reliable.E012",
        "Q_CLUSTER['timeout']",
        django={"Q_CLUSTER": {"orm": "default", "timeout": "60", "retry": 120}},
    ),
    Case("cio_reliable.E013", "DRAIN_MAX_SECONDS", cio={"DRAIN_MAX_SECONDS": 60}),
    Case("cio_reliable.E014", "CACHE_ALIAS", cio={"CACHE_ALIAS": "shared"}),
    Case(
        "cio_reliable.E015",
        "identify_on_create",
        cio={"HOOKS": [{**HOOK, "kind": "identify_on_create"}]},
    ),
    Case(
        "cio_reliable.E015",
        "'customer_id'",
        cio={"HOOKS": [{"kind": "delete_on_delete", "model": "hookapp.Customer"}]},
    ),
    Case(
        "cio_reliable.E015", "not a dict", cio={"HOOKS": [("identify_on_save", "hookapp.Customer")]}
    ),
    Case("cio_reliable.E016", "hookapp.Nope", cio={"HOOKS": [{**HOOK, "model": "hookapp.Nope"}]}),
    Case(
        "cio_reliable.E017",
        "tests.hookapp.cio.nope",
        cio={"HOOKS": [{**HOOK, "customer_id": "tests.hookapp.cio.nope"}]},
    ),
    Case("cio_reliable.E018", "emial", cio={"HOOKS": [{**HOOK, "fields": ["emial"]}]}),
    Case("cio_reliable.W001", "TIMEOTU", cio={"TIMEOTU": 5}),
    Case("cio_reliable.W001", "API_KEYS", cio={"API_KEYS": SECRET}),
    Case("cio_reliable.W002", "TRACK_URL", cio={"TRACK_URL": "http://fake-cio:8765"}),
    Case("cio_reliable.W002", "TRACK_URL", cio={"TRACK_URL": "http://10.0.0.5"}),
    Case(
        "cio_reliable.W003", "health_check", django={"INSTALLED_APPS": without_app("health_check")}
    ),
    Case("cio_reliable.W004", "Q_CLUSTER", django={"Q_CLUSTER": DELETE}),
    Case("cio_reliable.W004", "Q_CLUSTER", django={"Q_CLUSTER": BROKERLESS}),
    Case("cio_reliable.W005", "Q_CLUSTER", django={"Q_CLUSTER": {"orm": "default", "retry": 120}}),
    Case(
        "cio_reliable.W006",
        "CACHE_ALIAS",
        cio={"CACHE_ALIAS": "local"},
        django={"CACHES": caches(local="django.core.cache.backends.locmem.LocMemCache")},
    ),
    Case(
        "cio_reliable.W006",
        "CACHE_ALIAS",
        cio={"CACHE_ALIAS": "dummy"},
        django={"CACHES": caches(dummy="django.core.cache.backends.dummy.DummyCache")},
    ),
    Case(
        "cio_reliable.W006",
        "FileBasedCache",
        cio={"CACHE_ALIAS": "files"},
        django={"CACHES": caches(files="django.core.cache.backends.filebased.FileBasedCache")},
    ),
    Case("cio_reliable.W007", "USE_TZ", django={"USE_TZ": False}),
    Case("cio_reliable.W008", "dispatch uid", cio={"HOOKS": [HOOK, HOOK]}),
    Case(
        "cio_reliable.W009",
        "transaction_mode",
        django={
            "DATABASES": {
                "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "shop.sqlite3"}
            }
        },
    ),
    Case(
        "cio_reliable.W009",
        "'DEFERRED'",
        django={
            "DATABASES": {
                "default": {
                    "ENGINE": "django.db.backends.sqlite3",
                    "NAME": "shop.sqlite3",
                    "OPTIONS": {"transaction_mode": "DEFERRED"},
                }
            }
        },
    ),
]


def _case_id(case: Case) -> str:
    return f"{case.check_id.split('.')[1]}-{case.names}"


def test_good_test_settings_raise_nothing() -> None:
    assert run_all() == []


@pytest.mark.parametrize(
    "cio",
    [
        pytest.param({**DEFAULTS, "SITE_ID": "s", "API_KEY": SECRET}, id="every-default"),
        pytest.param({"REGION": "EU"}, id="region-any-case"),
        pytest.param({"TRACK_URL": "http://127.0.0.1:8765"}, id="fake-server"),
        pytest.param({"TRACK_URL": "http://localhost:8765/"}, id="localhost"),
        pytest.param({"TRACK_URL": "http://[::1]:8765"}, id="ipv6-loopback"),
        pytest.param({"TRACK_URL": "https://track-eu.customer.io"}, id="https"),
        pytest.param({"TRACK_URL": "https://proxy.example.com/cio/"}, id="https-path"),
        pytest.param({"TRACK_URL": ""}, id="empty-url-means-unset"),
        pytest.param({"DELIVERY": "direct", "DISPATCH": "task"}, id="direct-task"),
        pytest.param({"TIMEOUT": 300, "CONNECT_TIMEOUT": 300, "LEASE_SECONDS": 601}, id="max"),
        pytest.param(
            {
                "DIRECT_ATTEMPTS": 5,
                "BATCH_SIZE": 1000,
                "BATCH_MAX_BYTES": 500_000,
                "KICK_DEBOUNCE": 0,
                "IDEMPOTENCY_CACHE_SIZE": 0,
                "MAX_ERROR_BODY_BYTES": 1024,
                "RETAIN_DELIVERED": 0,
                "RETAIN_DEAD": 0,
                "REPLAY_WINDOW": 0,
                "RETRY_CAP": 1.0,
                "BATCH": False,
            },
            id="boundaries",
        ),
        pytest.param({"DIRECT_ATTEMPTS": 1, "MAX_ATTEMPTS": 1}, id="single-attempt"),
        pytest.param({"MAX_ATTEMPTS": 10**400, "CLAIM_SIZE": 10**400}, id="huge-ints"),
        pytest.param({"DRAIN_MAX_SECONDS": 59.5}, id="drain-under-q-timeout"),
        pytest.param({"MAX_AGE": 3600, "REPLAY_WINDOW": 0, "IDEMPOTENCY_TTL": 3600}, id="ttl=max"),
        pytest.param(
            {
                "BREAKER_FAILURE_RATE_THRESHOLD": 1,
                "BREAKER_SLOW_CALL_RATE_THRESHOLD": 0.01,
                "BREAKER_WINDOW_SECONDS": 1,
                "BREAKER_MINIMUM_CALLS": 1,
                "BREAKER_CONSECUTIVE_FAILURES": 0,
                "BREAKER_RESET_TIMEOUT": 5,
                "BREAKER_RESET_TIMEOUT_MULTIPLIER": 1,
                "BREAKER_RESET_TIMEOUT_MAX": 5,
                "BREAKER_HALF_OPEN_MAX_CALLS": 100,
                "BREAKER_PROBE_LEASE_SECONDS": 13.06,
                "BREAKER_SUCCESS_THRESHOLD": 1,
                "BREAKER_CACHE_SECONDS": 0,
            },
            id="breaker-boundaries",
        ),
        pytest.param(
            {"TIMEOUT": 300, "CONNECT_TIMEOUT": 300, "LEASE_SECONDS": 601},
            id="derived-probe-lease-follows-timeouts",
        ),
    ],
)
def test_good_variants_raise_nothing(settings: Settings, cio: dict[str, Any]) -> None:
    settings.CIO_RELIABLE = {**GOOD, **cio}
    assert run_all() == []


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_bad_setting_raises_its_id_only(settings: Settings, case: Case) -> None:
    configure(settings, case.cio, case.django)

    messages = run_all()

    assert [m.id for m in messages] == [case.check_id]
    (message,) = messages
    text = f"{message.msg}\n{message.hint}"
    assert case.names in text
    assert SECRET not in text
    expected_level = ERROR if case.check_id.split(".")[1].startswith("E") else WARNING
    assert message.level == expected_level


def test_every_id_has_a_case() -> None:
    assert {case.check_id for case in CASES} == set(checks.CHECKS)


def test_every_setting_has_a_rule_and_a_bad_case() -> None:
    assert set(checks.SETTING_RULES) == set(DEFAULTS)
    typed = {key for case in CASES if case.check_id == "cio_reliable.E003" for key in case.cio}
    assert typed >= {
        key for key, rule in checks.SETTING_RULES.items() if rule.kind not in ("int", "number")
    }
    numeric = {key for key, rule in checks.SETTING_RULES.items() if rule.kind in ("int", "number")}
    ranged = {key for case in CASES if case.check_id == "cio_reliable.E004" for key in case.cio}
    assert ranged == numeric


def test_one_message_per_bad_key(settings: Settings) -> None:
    settings.CIO_RELIABLE = {**GOOD, "TIMEOUT": 0, "BATCH_SIZE": "100", "REGION": "mars"}

    ids = sorted((m.id or "", m.msg.split("'")[1]) for m in run_all())

    assert ids == [
        ("cio_reliable.E003", "BATCH_SIZE"),
        ("cio_reliable.E004", "TIMEOUT"),
        ("cio_reliable.E005", "REGION"),
    ]


def test_range_message_names_accepted_values(settings: Settings) -> None:
    settings.CIO_RELIABLE = {**GOOD, "BATCH_MAX_BYTES": 600_000}

    (message,) = run_all()

    assert message.msg == (
        "CIO_RELIABLE['BATCH_MAX_BYTES'] must be an integer from 1 to 500000; got 600000."
    )
    assert "500 KB" in (message.hint or "")


def test_unknown_key_suggests_the_closest(settings: Settings) -> None:
    settings.CIO_RELIABLE = {**GOOD, "RETRY_CAPP": 60, "zzz": 1}

    hints = [m.hint or "" for m in run_all()]

    assert hints[0].startswith("Did you mean 'RETRY_CAP'?")
    assert not hints[1].startswith("Did you mean")


def test_api_key_from_the_environment(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.CIO_RELIABLE = {**GOOD, "API_KEY": "", "API_KEY_ENV": "MY_CIO_KEY"}
    assert [m.id for m in run_all()] == ["cio_reliable.E001"]

    monkeypatch.setenv("MY_CIO_KEY", SECRET)

    assert run_all() == []


def test_missing_setting_reports_both_credentials(settings: Settings) -> None:
    del settings.CIO_RELIABLE

    messages = run_all()

    assert [(m.id, m.msg.split("'")[1]) for m in messages] == [
        ("cio_reliable.E001", "SITE_ID"),
        ("cio_reliable.E001", "API_KEY"),
    ]


def test_q_cluster_with_explicit_redis_counts_as_a_broker(settings: Settings) -> None:
    settings.CIO_RELIABLE = {**GOOD, "DISPATCH": "task"}
    settings.Q_CLUSTER = {"name": "cio", "redis": {}, "timeout": 60, "retry": 120}

    assert run_all() == []


def test_unimportable_cache_backend_is_left_to_django(settings: Settings) -> None:
    settings.CIO_RELIABLE = {**GOOD, "CACHE_ALIAS": "odd"}
    settings.CACHES = caches(odd="no.such.Backend")

    assert run_all() == []


def test_shared_cache_is_accepted(settings: Settings) -> None:
    settings.CIO_RELIABLE = {**GOOD, "CACHE_ALIAS": "shared"}
    settings.CACHES = caches(shared="django.core.cache.backends.db.DatabaseCache")

    assert run_all() == []


def test_checks_are_registered_with_the_tag() -> None:
    registered = {check for check in registry.get_checks() if checks.TAG in check.tags}

    assert registered == set(CHECK_FUNCTIONS)


def test_manage_py_check_runs_the_checks(settings: Settings) -> None:
    settings.CIO_RELIABLE = {**GOOD, "TIMEOUT": 0}

    with pytest.raises(SystemCheckError) as excinfo:
        call_command("check", stdout=StringIO(), stderr=StringIO())

    assert "(cio_reliable.E004) CIO_RELIABLE['TIMEOUT'] must be" in str(excinfo.value)
    assert SECRET not in str(excinfo.value)


def test_manage_py_check_prints_warnings(settings: Settings) -> None:
    settings.CIO_RELIABLE = {**GOOD, "TRACK_URL": "http://cio.internal"}
    stdout, stderr = StringIO(), StringIO()

    call_command("check", stdout=stdout, stderr=stderr)

    assert "(cio_reliable.W002)" in stderr.getvalue()


def test_manage_py_check_is_clean_with_good_settings() -> None:
    stdout, stderr = StringIO(), StringIO()

    call_command("check", stdout=stdout, stderr=stderr)

    assert "cio_reliable" not in stdout.getvalue() + stderr.getvalue()


# --- the registry: stable ids, documented ------------------------------------------------------


def test_ids_are_stable_and_never_reused() -> None:
    assert not set(checks.CHECKS) & checks.RETIRED_IDS
    for check_id, title in SHIPPED.items():
        if check_id not in checks.RETIRED_IDS:
            assert checks.CHECKS[check_id].title == title, f"{check_id} changed its meaning"
    assert set(checks.CHECKS) <= set(SHIPPED), "add new ids to SHIPPED"


def test_ids_are_well_formed_and_numbered_without_gaps() -> None:
    for check_id, spec in checks.CHECKS.items():
        assert spec.id == check_id
        assert re.fullmatch(r"cio_reliable\.[EW]\d{3}", check_id)
        assert (spec.level == ERROR) == (check_id[13] == "E")
        assert spec.level in (ERROR, WARNING)
    for letter in "EW":
        numbers = sorted(
            int(i[14:]) for i in [*checks.CHECKS, *checks.RETIRED_IDS] if i[13] == letter
        )
        assert numbers == list(range(1, len(numbers) + 1))


def test_duplicate_ids_are_refused() -> None:
    spec = checks.CHECKS["cio_reliable.E001"]

    with pytest.raises(ValueError, match="duplicate check id cio_reliable.E001"):
        checks._build_registry(spec, spec)


def test_docs_list_every_id_and_nothing_else() -> None:
    text = (DOCS / "checks.md").read_text(encoding="utf-8")
    headings = re.findall(r"^### (cio_reliable\.[EW]\d{3})$", text, flags=re.MULTILINE)
    mentioned = set(re.findall(r"cio_reliable\.[EW]\d{3}", text))

    assert sorted(headings) == sorted(checks.CHECKS)
    assert mentioned <= set(checks.CHECKS) | checks.RETIRED_IDS
    assert mentioned >= checks.RETIRED_IDS


def test_docs_sections_say_level_trigger_fix_and_example() -> None:
    text = (DOCS / "checks.md").read_text(encoding="utf-8")
    sections = dict(
        re.findall(r"^### (cio_reliable\.[EW]\d{3})\n(.*?)(?=^##)", text + "\n##", re.M | re.S)
    )
    for check_id, spec in checks.CHECKS.items():
        body = sections[check_id]
        level = "Error" if spec.level == ERROR else "Warning"
        assert f"**{level}** — {spec.title}." in body, check_id
        for part in ("**Triggered by:**", "**Fix:**", "**Example:**"):
            assert part in body, f"{check_id} lacks {part}"


def test_docs_table_is_generated_from_the_registry() -> None:
    text = (DOCS / "checks.md").read_text(encoding="utf-8")
    start, end = "<!-- registry-table:start -->\n", "<!-- registry-table:end -->"
    table = text[text.index(start) + len(start) : text.index(end)]

    expected = checks.registry_table()
    assert table == expected, f"replace the table in docs/checks.md with:\n{expected}"


def _default_text(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def test_settings_doc_has_one_row_per_setting() -> None:
    text = (DOCS / "settings.md").read_text(encoding="utf-8")
    text = text[text.index("| Setting | Type |") : text.index("## Other settings")]
    rows = {
        match[0]: match[1]
        for match in re.findall(r"^\| `([A-Z_]+)` \|(.*)$", text, flags=re.MULTILINE)
    }

    assert set(rows) == set(DEFAULTS)
    for key, rule in checks.SETTING_RULES.items():
        cells = [cell.strip() for cell in rows[key].split(" | ")]
        assert cells[1] == f"`{_default_text(DEFAULTS[key])}`", key
        assert cells[2].startswith(rule.accepted), key


def test_docs_range_table_matches_the_rules() -> None:
    text = (DOCS / "checks.md").read_text(encoding="utf-8")
    section = text[text.index("### cio_reliable.E004") : text.index("### cio_reliable.E005")]
    documented: dict[str, str] = {}
    for keys, accepted in re.findall(r"^\| (`[A-Z_].*?`) \| (.+) \|$", section, flags=re.M):
        for key in re.findall(r"`([A-Z_]+)`", keys):
            assert key not in documented, key
            documented[key] = accepted

    numeric = {key for key, rule in checks.SETTING_RULES.items() if rule.kind in ("int", "number")}
    assert set(documented) == numeric
    for key, accepted in documented.items():
        assert accepted.startswith(checks.SETTING_RULES[key].accepted), key

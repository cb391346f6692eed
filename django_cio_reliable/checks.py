"""Django system checks for django-cio-reliable.

Every check id lives in :data:`CHECKS`, the one registry that ``docs/checks.md`` is written from
(:func:`registry_table` renders its summary table). Ids are stable: a removed id
goes to :data:`RETIRED_IDS` and is never given a new meaning.

Settings are read live on every run, so ``override_settings`` works. Messages name the setting
and what it accepts; they never contain the API key (or any credential found in ``TRACK_URL``).
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from django.apps import AppConfig, apps
from django.conf import settings
from django.core.cache.backends.dummy import DummyCache
from django.core.cache.backends.filebased import FileBasedCache
from django.core.cache.backends.locmem import LocMemCache
from django.core.checks import ERROR, WARNING, CheckMessage, Error, Tags, register
from django.core.checks import Warning as CheckWarning
from django.utils.module_loading import import_string

from django_cio_reliable.conf import DEFAULTS, SETTING_NAME, app_settings, user_settings

#: The tag of every check here: ``manage.py check --tag cio_reliable`` runs only these.
TAG: Final = "cio_reliable"


@dataclass(frozen=True)
class CheckSpec:
    """One registered check id.

    Attributes:
        id: The stable id, ``cio_reliable.E001`` (an error) or ``cio_reliable.W001`` (a warning).
        title: A short summary for the docs table.
        msg: The message template (``str.format`` fields, no literal braces).
        hint: The hint template (same fields as ``msg``).
    """

    id: str
    title: str
    msg: str
    hint: str

    @property
    def level(self) -> int:
        """``django.core.checks.ERROR`` or ``WARNING``, from the id's letter."""
        return ERROR if self.id[13] == "E" else WARNING


def _build_registry(*specs: CheckSpec) -> dict[str, CheckSpec]:
    registry: dict[str, CheckSpec] = {}
    for spec in specs:
        if spec.id in registry:
            raise ValueError(f"duplicate check id {spec.id}")
        registry[spec.id] = spec
    return registry


_BROKER_KEYS: Final = ("orm", "redis", "django_redis", "sqs", "iron_mq", "mongo", "broker_class")

#: Every check id, its level, title, message template and hint template.
CHECKS: Final[dict[str, CheckSpec]] = _build_registry(
    CheckSpec(
        "cio_reliable.E001",
        "Customer.io credentials missing",
        "CIO_RELIABLE['{key}'] is empty{detail}; no operation can be delivered.",
        "Set CIO_RELIABLE['{key}'] to the {label} of your workspace's Track API credentials "
        "in Customer.io{env_hint}.",
    ),
    CheckSpec(
        "cio_reliable.E002",
        "CIO_RELIABLE is not a dict",
        "The CIO_RELIABLE setting must be a dict; got a value of type {type}.",
        "Write CIO_RELIABLE as a dict of settings, e.g. "
        "dict(SITE_ID=..., API_KEY=..., REGION='us'); docs/settings.md lists every key.",
    ),
    CheckSpec(
        "cio_reliable.E003",
        "A setting has the wrong type",
        "CIO_RELIABLE['{key}'] must be {accepted}; got a value of type {type}.",
        "Set CIO_RELIABLE['{key}'] to {accepted}, or remove it to use the default ({default}).",
    ),
    CheckSpec(
        "cio_reliable.E004",
        "A numeric setting is out of range",
        "CIO_RELIABLE['{key}'] must be {accepted}; got {value}.",
        "Set CIO_RELIABLE['{key}'] to {accepted}, or remove it to use the default "
        "({default}).{note}",
    ),
    CheckSpec(
        "cio_reliable.E005",
        "REGION, DELIVERY or DISPATCH is not an accepted value",
        "CIO_RELIABLE['{key}'] must be {accepted}; got {value}.",
        "Set CIO_RELIABLE['{key}'] to {accepted}, or remove it to use the default "
        "({default}).{note}",
    ),
    CheckSpec(
        "cio_reliable.E006",
        "TRACK_URL is not a usable base URL",
        "CIO_RELIABLE['TRACK_URL'] is not a usable base URL: {problems}.",
        "Use an origin such as 'https://track.customer.io' or, for the bundled fake server, "
        "'http://127.0.0.1:8765': scheme http or https, a host, no user name or password "
        "(the API key is sent as Basic auth), no query string or fragment. "
        "Remove TRACK_URL to use the host of CIO_RELIABLE['REGION'].",
    ),
    CheckSpec(
        "cio_reliable.E007",
        "Retry or lease timing settings contradict each other",
        "CIO_RELIABLE['{key}'] ({value}) must be {relation} ({bound}).",
        "{reason}",
    ),
    CheckSpec(
        "cio_reliable.E008",
        "IDEMPOTENCY_TTL is shorter than MAX_AGE + REPLAY_WINDOW",
        "CIO_RELIABLE['IDEMPOTENCY_TTL'] ({ttl}) must be at least "
        "CIO_RELIABLE['MAX_AGE'] + CIO_RELIABLE['REPLAY_WINDOW'] ({needed}).",
        "An idempotency key must outlive every retry and replay of its operation, else a "
        "retried or replayed call is enqueued twice. Raise IDEMPOTENCY_TTL to at least "
        "{needed} seconds, or lower MAX_AGE or REPLAY_WINDOW.",
    ),
    CheckSpec(
        "cio_reliable.E009",
        "django_q is not installed",
        "'django_q' is not in INSTALLED_APPS: the delivery tasks and the drain schedule of "
        "django-cio-reliable run on django-q2.",
        "Add 'django_q' to INSTALLED_APPS, configure Q_CLUSTER with a broker, run "
        "'manage.py migrate' and start 'manage.py qcluster'.",
    ),
    CheckSpec(
        "cio_reliable.E010",
        "Q_CLUSTER is not a dict",
        "The Q_CLUSTER setting must be a dict; got a value of type {type}.",
        "Write Q_CLUSTER as a dict, e.g. dict(name='cio', orm='default', timeout=60, retry=120).",
    ),
    CheckSpec(
        "cio_reliable.E011",
        "No django-q2 broker while DISPATCH is 'task'",
        "Q_CLUSTER {problem}, but CIO_RELIABLE['DISPATCH'] is 'task': every operation is "
        "handed to django-q2, which would fall back to a Redis server on localhost.",
        "Give Q_CLUSTER a broker with one of the keys {brokers} (e.g. orm='default'); "
        "an empty 'redis' dict selects Redis on localhost deliberately. "
        "Or set CIO_RELIABLE['DISPATCH'] to 'inline'.",
    ),
    CheckSpec(
        "cio_reliable.E012",
        "Q_CLUSTER timeout is not smaller than retry",
        "Q_CLUSTER['timeout'] ({timeout}) must be a number greater than 0 and smaller than "
        "Q_CLUSTER['retry'] ({retry}).",
        "django-q2 hands an unacknowledged task to another worker after 'retry' seconds, so a "
        "task still running by then runs twice. Set e.g. timeout=60 and retry=120.",
    ),
    CheckSpec(
        "cio_reliable.E013",
        "DRAIN_MAX_SECONDS is not smaller than Q_CLUSTER timeout",
        "CIO_RELIABLE['DRAIN_MAX_SECONDS'] ({drain}) must be smaller than "
        "Q_CLUSTER['timeout'] ({timeout}).",
        "django-q2 kills a task after 'timeout' seconds; the drain must stop claiming and hand "
        "back its work before that. Lower DRAIN_MAX_SECONDS, or remove it to derive it from "
        "Q_CLUSTER['timeout'].",
    ),
    CheckSpec(
        "cio_reliable.E014",
        "CACHE_ALIAS names no configured cache",
        "CIO_RELIABLE['CACHE_ALIAS'] is {alias}, which is not a key of CACHES.",
        "Use one of the configured aliases ({aliases}), or remove CACHE_ALIAS to let each "
        "process debounce its own drain kicks.",
    ),
    CheckSpec(
        "cio_reliable.E015",
        "A HOOKS entry is malformed",
        "CIO_RELIABLE['HOOKS'][{index}] is not a valid hook definition: {detail}.",
        "Each entry is a dict with 'kind' (one of {kinds}), 'model' ('app_label.ModelName'), "
        "'customer_id' (a callable or its dotted path) and the keys of its kind; "
        "docs/hooks.md lists them.",
    ),
    CheckSpec(
        "cio_reliable.E016",
        "A HOOKS entry names an unknown model",
        "CIO_RELIABLE['HOOKS'][{index}] ({kind}) names the model {model}, {detail}.",
        "Set 'model' to the label of an installed, concrete model: 'app_label.ModelName' "
        "(e.g. 'auth.User').",
    ),
    CheckSpec(
        "cio_reliable.E017",
        "A HOOKS callable cannot be imported or is not callable",
        "CIO_RELIABLE['HOOKS'][{index}] ({kind}): '{key}' {detail}.",
        "Give '{key}' the dotted path of a module-level function (e.g. "
        "'myapp.cio.user_attributes'), or the function itself.",
    ),
    CheckSpec(
        "cio_reliable.E018",
        "A HOOKS entry watches a field its model lacks",
        "CIO_RELIABLE['HOOKS'][{index}] ({kind}): '{key}' names {detail}, {which} of {model}.",
        "Name concrete fields of {model} (a field name, or an attname such as 'user_id'); "
        "many-to-many fields and reverse relations are not saved with the instance.",
    ),
    CheckSpec(
        "cio_reliable.W001",
        "Unknown key in CIO_RELIABLE",
        "CIO_RELIABLE has an unknown key {key}, which is ignored.",
        "{suggestion}docs/settings.md lists every setting.",
    ),
    CheckSpec(
        "cio_reliable.W002",
        "TRACK_URL sends the API key in cleartext",
        "CIO_RELIABLE['TRACK_URL'] uses plain http to the non-loopback host {host}: the API "
        "key would cross the network unencrypted.",
        "Use https. Plain http is meant for 127.0.0.1, ::1 or localhost (the bundled fake "
        "server); on a trusted private network, add 'cio_reliable.W002' to "
        "SILENCED_SYSTEM_CHECKS.",
    ),
    CheckSpec(
        "cio_reliable.W003",
        "health_check is not installed",
        "'health_check' is not in INSTALLED_APPS: the django-cio-reliable health check plugin "
        "(breaker state, backlog, dead letters) is unavailable.",
        "Add 'health_check' to INSTALLED_APPS and route its URLs, or add 'cio_reliable.W003' to "
        "SILENCED_SYSTEM_CHECKS if you monitor the outbox otherwise.",
    ),
    CheckSpec(
        "cio_reliable.W004",
        "No django-q2 broker while DISPATCH is 'inline'",
        "Q_CLUSTER {problem}: the drain schedule that retries failed operations would run on "
        "django-q2's fallback broker, a Redis server on localhost.",
        "Give Q_CLUSTER a broker with one of the keys {brokers} (e.g. orm='default'); "
        "an empty 'redis' dict selects Redis on localhost deliberately.",
    ),
    CheckSpec(
        "cio_reliable.W005",
        "Q_CLUSTER has no timeout",
        "Q_CLUSTER sets no 'timeout': django-q2 never stops a hung drain task, and a task "
        "running longer than Q_CLUSTER['retry'] ({retry}) is started a second time.",
        "Set Q_CLUSTER['timeout'] below Q_CLUSTER['retry'], e.g. timeout=60 and retry=120.",
    ),
    CheckSpec(
        "cio_reliable.W006",
        "CACHE_ALIAS names a process-local cache",
        "CIO_RELIABLE['CACHE_ALIAS'] is {alias}, a {backend} that {problem}; the drain-kick "
        "debounce it holds must be seen by every process to be shared.",
        "Point CACHE_ALIAS at a cache shared by every process (Redis, Memcached, "
        "DatabaseCache), or remove it to let each process debounce its own kicks.{note}",
    ),
    CheckSpec(
        "cio_reliable.W007",
        "USE_TZ is False",
        "USE_TZ is False: django-cio-reliable computes leases, retry times and retention "
        "with aware datetimes; naive ones shift across time zones and DST changes.",
        "Set USE_TZ = True (Django's default).",
    ),
    CheckSpec(
        "cio_reliable.W008",
        "Two HOOKS entries share a dispatch uid",
        "CIO_RELIABLE['HOOKS'][{index}] ({kind}) has the dispatch uid {uid}, like "
        "CIO_RELIABLE['HOOKS'][{first}]: only the later one is registered.",
        "Remove the duplicate, or give one of them its own 'dispatch_uid' (two hooks of one "
        "kind on one model need distinct uids).",
    ),
    CheckSpec(
        "cio_reliable.W009",
        "SQLite without transaction_mode IMMEDIATE",
        "DATABASES[{alias}] is SQLite with transaction_mode {mode}: when a web process and a "
        "qcluster worker write at once, SQLite refuses one of them with 'database is locked' "
        "instead of waiting (the outbox claim and the shared rate limit read, then write).",
        "Set DATABASES[{alias}]['OPTIONS']['transaction_mode'] = 'IMMEDIATE' (and a 'timeout' "
        "of a few seconds), or use PostgreSQL when more than one process writes.",
    ),
)

#: Ids that were used once and removed. They are never reused for a different check.
RETIRED_IDS: Final[frozenset[str]] = frozenset()


def _message(check_id: str, **params: object) -> CheckMessage:
    spec = CHECKS[check_id]
    kind = Error if spec.level == ERROR else CheckWarning
    return kind(spec.msg.format(**params), hint=spec.hint.format(**params), id=check_id)


def _num(value: float) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(round(value, 6))
    return repr(value)


_PLAIN_KINDS: Final = {"str": "a string", "bool": "True or False", "list": "a list"}


@dataclass(frozen=True)
class Rule:
    """What one ``CIO_RELIABLE`` key accepts.

    ``kind`` is ``"str"``, ``"bool"``, ``"int"`` (not ``bool``), ``"number"`` (``int`` or
    ``float``, finite, not ``bool``), ``"choice"`` (a string from ``choices``) or ``"list"`` (a
    list or tuple; its items are checked apart). ``high`` is inclusive; ``low`` is unless
    ``low_inclusive`` is false. ``note`` is an extra sentence for the hint.
    """

    kind: Literal["str", "bool", "int", "number", "choice", "list"]
    low: float | None = None
    low_inclusive: bool = True
    high: float | None = None
    nullable: bool = False
    choices: tuple[str, ...] = ()
    ignore_case: bool = False
    note: str = ""

    @property
    def accepted(self) -> str:
        """What the setting accepts, in words (also the "accepted" column of the docs)."""
        if self.kind in _PLAIN_KINDS:
            text = _PLAIN_KINDS[self.kind]
        elif self.kind == "choice":
            text = "one of " + ", ".join(repr(choice) for choice in self.choices)
            if self.ignore_case:
                text += " (case-insensitive)"
        else:
            text = "an integer" if self.kind == "int" else "a number"
            if self.kind == "int" and self.low is not None and self.high is not None:
                text += f" from {_num(self.low)} to {_num(self.high)}"
            else:
                bounds: list[str] = []
                if self.low is not None:
                    word = "of at least" if self.low_inclusive else "greater than"
                    bounds.append(f"{word} {_num(self.low)}")
                if self.high is not None:
                    bounds.append(f"at most {_num(self.high)}")
                if bounds:
                    text += " " + " and ".join(bounds)
        return f"None or {text}" if self.nullable else text

    def problem(self, value: object) -> Literal["type", "range", "choice"] | None:
        """Classify ``value``: ``None`` when it is accepted, else what is wrong with it."""
        if value is None:
            return None if self.nullable else "type"
        if self.kind in ("str", "choice"):
            if not isinstance(value, str):
                return "type"
            if self.kind == "choice":
                candidate = value.lower() if self.ignore_case else value
                return None if candidate in self.choices else "choice"
            return None
        if self.kind == "bool":
            return None if isinstance(value, bool) else "type"
        if self.kind == "list":
            return None if isinstance(value, (list, tuple)) else "type"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "type"
        if self.kind == "int" and not isinstance(value, int):
            return "type"
        if isinstance(value, float) and not math.isfinite(value):
            return "range"
        if self.low is not None and (
            value < self.low or (value == self.low and not self.low_inclusive)
        ):
            return "range"
        if self.high is not None and value > self.high:
            return "range"
        return None


_POSITIVE: Final = Rule("number", low=0, low_inclusive=False)
_NON_NEGATIVE: Final = Rule("number", low=0)
_TIMEOUT: Final = Rule("number", low=0, low_inclusive=False, high=300)
_RATE: Final = Rule("number", low=0, low_inclusive=False, high=1)

#: What every key of ``conf.DEFAULTS`` accepts. Relations between keys are checked apart.
SETTING_RULES: Final[dict[str, Rule]] = {
    "SITE_ID": Rule("str"),
    "API_KEY": Rule("str"),
    "API_KEY_ENV": Rule("str"),
    "REGION": Rule(
        "choice",
        choices=("us", "eu"),
        ignore_case=True,
        note=" Use the data center of your Customer.io workspace.",
    ),
    "TRACK_URL": Rule("str", nullable=True),
    "DELIVERY": Rule(
        "choice",
        choices=("outbox", "direct"),
        note=" 'outbox' stores first and delivers after commit; 'direct' sends in the request.",
    ),
    "DISPATCH": Rule(
        "choice",
        choices=("task", "inline"),
        note=" 'task' kicks a django-q2 task; 'inline' sends in on_commit in the request thread.",
    ),
    "TIMEOUT": _TIMEOUT,
    "CONNECT_TIMEOUT": _TIMEOUT,
    "MAX_ERROR_BODY_BYTES": Rule("int", low=1024),
    "MAX_ATTEMPTS": Rule("int", low=1),
    "MAX_AGE": _POSITIVE,
    "RETRY_BASE": _POSITIVE,
    "RETRY_CAP": _POSITIVE,
    "DIRECT_ATTEMPTS": Rule("int", low=1, high=5),
    "RATE_LIMIT": _POSITIVE,
    "BATCH": Rule("bool"),
    "BATCH_SIZE": Rule("int", low=1, high=1000),
    "BATCH_MAX_BYTES": Rule(
        "int",
        low=1,
        high=500_000,
        note=" Customer.io's /api/v2/batch accepts at most 500 KB a request.",
    ),
    "CLAIM_SIZE": Rule("int", low=1),
    "LEASE_SECONDS": _POSITIVE,
    "DRAIN_MAX_SECONDS": Rule("number", low=0, low_inclusive=False, nullable=True),
    "DRAIN_SCHEDULE_MINUTES": Rule("int", low=1),
    "KICK_DEBOUNCE": _NON_NEGATIVE,
    "DRAIN_LINGER": _NON_NEGATIVE,
    "IDEMPOTENCY_TTL": _POSITIVE,
    "IDEMPOTENCY_CACHE_SIZE": Rule("int", low=0),
    "REPLAY_WINDOW": _NON_NEGATIVE,
    "RETAIN_DELIVERED": _NON_NEGATIVE,
    "RETAIN_DEAD": _NON_NEGATIVE,
    "SCRUB_DELIVERED": Rule("bool"),
    "PURGE_BATCH_SIZE": Rule("int", low=1),
    "CACHE_ALIAS": Rule("str", nullable=True),
    "HOOKS": Rule("list", note=" Each entry is a dict; docs/hooks.md describes them."),
    "BREAKER_FAILURE_RATE_THRESHOLD": _RATE,
    "BREAKER_WINDOW_SECONDS": Rule("number", low=1),
    "BREAKER_MINIMUM_CALLS": Rule("int", low=1),
    "BREAKER_CONSECUTIVE_FAILURES": Rule(
        "int", low=0, note=" 0 turns the consecutive-failure trigger off."
    ),
    "BREAKER_SLOW_CALL_SECONDS": _POSITIVE,
    "BREAKER_SLOW_CALL_RATE_THRESHOLD": Rule(
        "number",
        low=0,
        low_inclusive=False,
        high=1,
        note=" 1.0 (the default) turns the slow-call trigger off.",
    ),
    "BREAKER_RESET_TIMEOUT": _POSITIVE,
    "BREAKER_RESET_TIMEOUT_MULTIPLIER": Rule(
        "number", low=1, note=" 1.0 keeps the cooldown constant."
    ),
    "BREAKER_RESET_TIMEOUT_MAX": _POSITIVE,
    "BREAKER_HALF_OPEN_MAX_CALLS": Rule("int", low=1, high=100),
    "BREAKER_PROBE_LEASE_SECONDS": Rule(
        "number",
        low=0,
        low_inclusive=False,
        nullable=True,
        note=" None derives it from TIMEOUT + CONNECT_TIMEOUT.",
    ),
    "BREAKER_SUCCESS_THRESHOLD": Rule("int", low=1),
    "BREAKER_CACHE_SECONDS": Rule(
        "number", low=0, high=60, note=" 0 reads the shared state on every call."
    ),
}


def _valid_values() -> dict[str, Any]:
    """Every setting whose value passes its :class:`Rule` (defaults filled in)."""
    raw = user_settings() or {}
    values = {**DEFAULTS, **{key: raw[key] for key in DEFAULTS if key in raw}}
    return {
        key: value for key, value in values.items() if SETTING_RULES[key].problem(value) is None
    }


@register(TAG)
def check_settings(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    """Check ``CIO_RELIABLE``: its shape, keys, types, ranges, credentials and relations."""
    raw = user_settings()
    if raw is None:
        return [_message("cio_reliable.E002", type=type(getattr(settings, SETTING_NAME)).__name__)]
    messages: list[CheckMessage] = []
    for key in raw:
        if key not in DEFAULTS:
            close = difflib.get_close_matches(str(key).upper(), list(DEFAULTS), n=1, cutoff=0.6)
            suggestion = f"Did you mean {close[0]!r}? " if close else ""
            messages.append(_message("cio_reliable.W001", key=repr(key), suggestion=suggestion))
    for key, rule in SETTING_RULES.items():
        value = raw.get(key, DEFAULTS[key])
        problem = rule.problem(value)
        if problem is None:
            continue
        params: dict[str, object] = {
            "key": key,
            "accepted": rule.accepted,
            "default": repr(DEFAULTS[key]),
            "note": rule.note,
        }
        if problem == "type":
            messages.append(_message("cio_reliable.E003", type=type(value).__name__, **params))
        elif problem == "range":
            messages.append(_message("cio_reliable.E004", value=_num(value), **params))
        else:
            messages.append(_message("cio_reliable.E005", value=repr(str(value)[:40]), **params))
    valid = _valid_values()
    messages.extend(_check_credentials(valid))
    messages.extend(_check_track_url(valid))
    messages.extend(_check_relations(valid))
    return messages


def _check_credentials(valid: dict[str, Any]) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    if "SITE_ID" in valid and not valid["SITE_ID"].strip():
        messages.append(
            _message("cio_reliable.E001", key="SITE_ID", detail="", label="Site ID", env_hint="")
        )
    if "API_KEY" in valid and "API_KEY_ENV" in valid and not app_settings.API_KEY.strip():
        env_name = valid["API_KEY_ENV"]
        if env_name:
            detail = (
                f" and the environment variable {env_name!r} (named by "
                "CIO_RELIABLE['API_KEY_ENV']) is unset or empty"
            )
            env_hint = f", or set the environment variable {env_name!r}"
        else:
            detail = " and CIO_RELIABLE['API_KEY_ENV'] is empty, so no environment variable is read"
            env_hint = ""
        params = {"key": "API_KEY", "detail": detail, "label": "API key", "env_hint": env_hint}
        messages.append(_message("cio_reliable.E001", **params))
    return messages


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_track_url(valid: dict[str, Any]) -> list[CheckMessage]:
    url = valid.get("TRACK_URL")
    if not url:
        return []
    problems: list[str] = []
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        port_error = False
        try:
            _ = parts.port
        except ValueError:
            port_error = True
    except ValueError:
        return [_message("cio_reliable.E006", problems="it cannot be parsed")]
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        shown = repr(scheme) if scheme else "none"
        problems.append(f"the scheme must be http or https, not {shown}")
    if not host:
        problems.append("it has no host")
    if port_error:
        problems.append("its port is not a number from 0 to 65535")
    if parts.username is not None or parts.password is not None:
        problems.append("it contains a user name or password (not shown)")
    if parts.query:
        problems.append("it has a query string (not shown)")
    if parts.fragment:
        problems.append("it has a fragment (not shown)")
    if problems:
        return [_message("cio_reliable.E006", problems="; ".join(problems))]
    if scheme == "http" and not _is_loopback(host.lower()):
        return [_message("cio_reliable.W002", host=repr(host))]
    return []


def _add(a: float, b: float) -> float:
    try:
        return a + b
    except OverflowError:  # an int too large for a float plus a float
        return math.inf


#: E007: a setting, the settings whose sum bounds it, how it must compare with the sum, and why.
_RELATIONS: Final = (
    (
        "RETRY_CAP",
        ("RETRY_BASE",),
        "at least",
        "The backoff is random(0, min(RETRY_CAP, RETRY_BASE * 2**attempt)); a cap below the "
        "base makes every delay shorter than the base. Raise RETRY_CAP or lower RETRY_BASE.",
    ),
    (
        "LEASE_SECONDS",
        ("TIMEOUT", "CONNECT_TIMEOUT"),
        "greater than",
        "A claim must outlive one request, else another worker takes over an operation that is "
        "still being sent. Raise LEASE_SECONDS or lower the timeouts.",
    ),
    (
        "BREAKER_RESET_TIMEOUT_MAX",
        ("BREAKER_RESET_TIMEOUT",),
        "at least",
        "The breaker's cooldown starts at BREAKER_RESET_TIMEOUT and grows up to "
        "BREAKER_RESET_TIMEOUT_MAX. Raise BREAKER_RESET_TIMEOUT_MAX or lower "
        "BREAKER_RESET_TIMEOUT.",
    ),
    (
        "BREAKER_PROBE_LEASE_SECONDS",
        ("TIMEOUT", "CONNECT_TIMEOUT"),
        "greater than",
        "A half-open probe holds its slot for one request; a lease that expires while the probe "
        "is still waiting for Customer.io admits another probe. Raise "
        "BREAKER_PROBE_LEASE_SECONDS, or remove it to derive it from the timeouts.",
    ),
)


def _check_relations(valid: dict[str, Any]) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    for key, terms, relation, reason in _RELATIONS:
        if valid.get(key) is None or any(term not in valid for term in terms):
            continue  # invalid (reported above) or None (BREAKER_PROBE_LEASE_SECONDS: derived)
        bound = functools.reduce(_add, (valid[term] for term in terms))
        if valid[key] <= bound if relation == "greater than" else valid[key] < bound:
            messages.append(
                _message(
                    "cio_reliable.E007",
                    key=key,
                    value=_num(valid[key]),
                    relation=f"{relation} " + " + ".join(f"CIO_RELIABLE['{t}']" for t in terms),
                    bound=_num(bound),
                    reason=reason,
                )
            )
    if all(key in valid for key in ("IDEMPOTENCY_TTL", "MAX_AGE", "REPLAY_WINDOW")):
        needed = _add(valid["MAX_AGE"], valid["REPLAY_WINDOW"])
        if valid["IDEMPOTENCY_TTL"] < needed:
            messages.append(
                _message(
                    "cio_reliable.E008", ttl=_num(valid["IDEMPOTENCY_TTL"]), needed=_num(needed)
                )
            )
    return messages


@register(TAG)
def check_task_queue(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    """Check the django-q2 and django-health-check integration."""
    messages: list[CheckMessage] = []
    if not apps.is_installed("django_q"):
        messages.append(_message("cio_reliable.E009"))
    if not apps.is_installed("health_check"):
        messages.append(_message("cio_reliable.W003"))

    cluster = getattr(settings, "Q_CLUSTER", None)
    if cluster is not None and not isinstance(cluster, dict):
        messages.append(_message("cio_reliable.E010", type=type(cluster).__name__))
        return messages
    if cluster is None or not ("redis" in cluster or any(cluster.get(key) for key in _BROKER_KEYS)):
        problem = "is not set" if cluster is None else "configures no broker"
        brokers = ", ".join(repr(key) for key in _BROKER_KEYS)
        inline = (user_settings() or {}).get("DISPATCH", DEFAULTS["DISPATCH"]) == "inline"
        check_id = "cio_reliable.W004" if inline else "cio_reliable.E011"
        messages.append(_message(check_id, problem=problem, brokers=brokers))
    if cluster is None:
        return messages

    timeout = cluster.get("timeout")
    retry = cluster.get("retry", 60)
    if timeout is None:
        messages.append(_message("cio_reliable.W005", retry=repr(retry)))
    elif _POSITIVE.problem(timeout) or _POSITIVE.problem(retry) or not timeout < retry:
        messages.append(_message("cio_reliable.E012", timeout=repr(timeout), retry=repr(retry)))
    else:
        drain = _valid_values().get("DRAIN_MAX_SECONDS")
        if drain is not None and drain >= timeout:
            messages.append(_message("cio_reliable.E013", drain=_num(drain), timeout=_num(timeout)))
    return messages


_PROCESS_LOCAL: Final[tuple[tuple[type[Any], str, str], ...]] = (
    (DummyCache, "stores nothing", ""),
    (LocMemCache, "keeps its data inside one process", ""),
    (
        FileBasedCache,
        "is shared only by processes on one host that see the same directory",
        " A FileBasedCache on a directory shared by every process of a single-host "
        "deployment works; silence cio_reliable.W006 then.",
    ),
)


@register(TAG, Tags.caches)
def check_cache(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    """Check that ``CACHE_ALIAS``, when set, names a cache every process shares."""
    alias = _valid_values().get("CACHE_ALIAS")
    if alias is None:
        return []
    caches: dict[str, dict[str, Any]] = settings.CACHES
    if alias not in caches:
        aliases = ", ".join(repr(name) for name in caches) or "none"
        return [_message("cio_reliable.E014", alias=repr(alias), aliases=aliases)]
    backend_path = str(caches[alias].get("BACKEND", ""))
    try:
        backend = import_string(backend_path)
    except ImportError:
        return []
    for local, problem, note in _PROCESS_LOCAL:
        if isinstance(backend, type) and issubclass(backend, local):
            return [
                _message(
                    "cio_reliable.W006",
                    alias=repr(alias),
                    backend=backend.__name__,
                    problem=problem,
                    note=note,
                )
            ]
    return []


@register(TAG)
def check_time_zone(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    """Warn when ``USE_TZ`` is off."""
    return [] if settings.USE_TZ else [_message("cio_reliable.W007")]


@register(TAG, Tags.database)
def check_sqlite_transactions(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    """Warn when the outbox lives in SQLite opened in the default (deferred) transaction mode."""
    from django.db import router

    from django_cio_reliable.models import Operation

    alias = router.db_for_write(Operation) or "default"
    database = settings.DATABASES.get(alias) or {}
    if not str(database.get("ENGINE", "")).endswith("sqlite3"):
        return []
    mode = (database.get("OPTIONS") or {}).get("transaction_mode")
    if str(mode).upper() == "IMMEDIATE":
        return []
    return [_message("cio_reliable.W009", alias=repr(alias), mode=repr(mode or "DEFERRED"))]


#: The check id of each kind of ``hooks.ConfigProblem``.
_HOOK_CHECKS: Final = {
    "malformed": "cio_reliable.E015",
    "model": "cio_reliable.E016",
    "callable": "cio_reliable.E017",
    "field": "cio_reliable.E018",
    "duplicate": "cio_reliable.W008",
}


@register(TAG)
def check_hooks(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    """Check the entries of ``CIO_RELIABLE["HOOKS"]``: shape, model, callables and fields."""
    raw = user_settings()
    entries = (raw or {}).get("HOOKS", DEFAULTS["HOOKS"])
    if raw is None or SETTING_RULES["HOOKS"].problem(entries) is not None:
        return []  # E002 / E003
    from django_cio_reliable import hooks

    _valid, problems = hooks.parse_settings(entries)
    kinds = ", ".join(repr(kind) for kind in hooks.KINDS)
    messages: list[CheckMessage] = []
    for problem in problems:
        plural = "," in problem.detail
        which = "which are not concrete fields" if plural else "which is not a concrete field"
        params = {**problem.params, "index": problem.index, "kind": problem.kind, "which": which}
        messages.append(
            _message(_HOOK_CHECKS[problem.code], detail=problem.detail, kinds=kinds, **params)
        )
    return messages


def registry_table() -> str:
    """Return the Markdown summary table of :data:`CHECKS` that heads ``docs/checks.md``."""
    lines = ["| id | level | summary |", "| --- | --- | --- |"]
    for spec in CHECKS.values():
        level = "Error" if spec.level >= ERROR else "Warning"
        anchor = spec.id.lower().replace(".", "")
        lines.append(f"| [`{spec.id}`](#{anchor}) | {level} | {spec.title} |")
    return "\n".join(lines) + "\n"

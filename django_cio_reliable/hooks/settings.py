"""Hooks declared in ``CIO_RELIABLE["HOOKS"]``: parsing the entries and registering them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.utils.module_loading import import_string

from django_cio_reliable import validation
from django_cio_reliable.conf import app_settings, on_reset
from django_cio_reliable.exceptions import InvalidOperation
from django_cio_reliable.hooks import registry
from django_cio_reliable.idempotency import _Derive

log = logging.getLogger(__name__)

#: Keys every entry may have, and per kind its (required, optional) keys.
COMMON_REQUIRED: Final = ("kind", "model", "customer_id")
COMMON_OPTIONAL: Final = ("idempotency_key", "on_invalid", "dispatch_uid")
KIND_KEYS: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "identify_on_save": ((), ("attributes", "fields")),
    "track_on_create": (("name",), ("data", "timestamp")),
    "track_on_change": (("field", "name"), ("data", "timestamp")),
    "delete_on_delete": ((), ()),
}
#: Keys whose value is a callable or the dotted path of one.
CALLABLE_KEYS: Final = ("customer_id", "attributes", "data", "idempotency_key", "timestamp")

ProblemCode = Literal["malformed", "model", "callable", "field", "duplicate"]


@dataclass(frozen=True)
class ConfigProblem:
    """One problem of a ``CIO_RELIABLE["HOOKS"]`` entry (the system checks report them).

    Attributes:
        code: ``malformed``, ``model``, ``callable``, ``field`` or ``duplicate``.
        index: The entry's position in the list.
        kind: The entry's kind (``"?"`` when it has none).
        detail: What is wrong, in words; it names keys, paths and fields, never other values.
        params: Extra values for the message (``key``, ``model``, ``uid``, ``first``).
    """

    code: ProblemCode
    index: int
    kind: str
    detail: str
    params: dict[str, str] = field(default_factory=dict)


def _a(value: object) -> str:
    """``"a str"``, ``"an int"``: the type of ``value`` with its article."""
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _resolve_callable(value: object) -> tuple[Callable[..., Any] | _Derive | None, str]:
    """Import a dotted path (or take a callable); returns the callable or a problem."""
    if isinstance(value, _Derive) or callable(value):
        return value, ""
    if not isinstance(value, str):
        return None, f"is {_a(value)}, not a dotted path or a callable"
    try:
        resolved = import_string(value)
    except ImportError as error:
        return None, f"is {value!r}, which cannot be imported ({str(error)[:200]})"
    except Exception as error:
        return None, f"is {value!r}, whose import raised {type(error).__name__}"
    if not callable(resolved):
        return None, f"is {value!r}, which is {_a(resolved)}, not a callable"
    return cast(Callable[..., Any], resolved), ""


def _resolve_model(value: object) -> tuple[type[models.Model] | None, str]:
    if not isinstance(value, str) or value.count(".") != 1:
        return None, "which is not a model label 'app_label.ModelName'"
    try:
        model = apps.get_model(value)
    except LookupError:
        return None, "which is not an installed model"
    if model._meta.swapped:
        return None, f"which is swapped for {model._meta.swapped}"
    return model, ""


def parse_settings(entries: object) -> tuple[list[dict[str, Any]], list[ConfigProblem]]:
    """Validate ``CIO_RELIABLE["HOOKS"]``.

    Args:
        entries: The setting's value (not a list: nothing to parse; ``E003`` reports it).

    Returns:
        The valid entries (keyword arguments for ``registry.build``, callables and the model
        resolved) and the problems found.
    """
    if not isinstance(entries, (list, tuple)):
        return [], []
    valid: list[dict[str, Any]] = []
    problems: list[ConfigProblem] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        parsed, entry_problems = _parse_entry(index, entry)
        problems.extend(entry_problems)
        if parsed is None:
            continue
        uid = parsed.get("dispatch_uid") or registry.default_uid(
            parsed["kind"], parsed["model"], parsed.get("name", ""), parsed.get("field_name", "")
        )
        if uid in seen:
            params = {"uid": repr(uid), "first": str(seen[uid])}
            problems.append(ConfigProblem("duplicate", index, parsed["kind"], "", params))
        seen[uid] = index
        valid.append(parsed)
    return valid, problems


def _shape_issues(kind: str, entry: dict[Any, Any]) -> list[str]:
    """What is wrong with the keys and plain values of an entry of a known ``kind``."""
    issues: list[str] = []
    required, optional = KIND_KEYS[kind]
    allowed = {*COMMON_REQUIRED, *COMMON_OPTIONAL, *required, *optional}
    missing = [k for k in (*COMMON_REQUIRED, *required) if k not in entry]
    if missing:
        issues.append("missing " + ", ".join(repr(k) for k in missing))
    unknown = [k for k in entry if k not in allowed]
    if unknown:
        issues.append(f"unknown keys for {kind}: " + ", ".join(repr(str(k)) for k in unknown))
    name = entry.get("name")
    if "name" in entry and (not isinstance(name, str) or not name.strip()):
        issues.append("'name' must be a non-empty string")
    elif isinstance(name, str):
        try:
            validation.event_name(name)
        except InvalidOperation as error:
            issues.append(f"'name' is not a valid event name ({error})")
    if "field" in entry and (not isinstance(entry["field"], str) or not entry["field"]):
        issues.append("'field' must be a non-empty string")
    fields = entry.get("fields")
    if fields is not None and (
        not isinstance(fields, (list, tuple))
        or not fields
        or not all(isinstance(f, str) and f for f in fields)
    ):
        issues.append("'fields' must be None or a non-empty list of field names")
    if entry.get("on_invalid", "raise") not in registry.ON_INVALID:
        issues.append("'on_invalid' must be 'raise' or 'skip'")
    uid = entry.get("dispatch_uid")
    if "dispatch_uid" in entry and (not isinstance(uid, str) or not uid):
        issues.append("'dispatch_uid' must be a non-empty string")
    return issues


def _parse_entry(index: int, entry: object) -> tuple[dict[str, Any] | None, list[ConfigProblem]]:
    if not isinstance(entry, dict):
        return None, [ConfigProblem("malformed", index, "?", f"it is {_a(entry)}, not a dict")]
    kind = entry.get("kind")
    if kind not in KIND_KEYS:
        if "kind" not in entry:
            issue = "'kind' is missing"
        else:
            shown = repr(kind) if isinstance(kind, str) else _a(kind)
            issue = f"'kind' is {shown}, not one of {', '.join(map(repr, registry.KINDS))}"
        kind_text = kind if isinstance(kind, str) else "?"
        return None, [ConfigProblem("malformed", index, kind_text, issue)]
    issues = _shape_issues(kind, entry)
    if issues:
        return None, [ConfigProblem("malformed", index, kind, "; ".join(issues))]

    problems: list[ConfigProblem] = []
    model, model_problem = _resolve_model(entry["model"])
    if model is None:
        params = {"model": repr(entry["model"])}
        problems.append(ConfigProblem("model", index, kind, model_problem, params))
    callables: dict[str, Any] = {}
    for key in CALLABLE_KEYS:
        if key not in entry or (entry[key] is None and key != "customer_id"):
            continue
        resolved, problem = _resolve_callable(entry[key])
        if key != "idempotency_key" and isinstance(resolved, _Derive):
            resolved, problem = None, "is DERIVE, which only 'idempotency_key' accepts"
        if problem:
            problems.append(ConfigProblem("callable", index, kind, problem, {"key": key}))
        else:
            callables[key] = resolved
    if model is not None:
        watched = [entry["field"]] if kind == "track_on_change" else entry.get("fields") or ()
        bad = []
        for name in watched:
            try:
                registry.concrete_field(model, name)
            except ImproperlyConfigured:
                bad.append(name)
        if bad:
            params = {"key": "field" if kind == "track_on_change" else "fields"}
            params["model"] = model._meta.label
            detail = ", ".join(repr(b) for b in bad)
            problems.append(ConfigProblem("field", index, kind, detail, params))
    if problems or model is None:
        return None, problems
    # The keys were checked against KIND_KEYS: what is left is the arguments of registry.build.
    parsed = {**entry, **callables, "model": model, "source": "settings"}
    if kind == "track_on_change":
        parsed["field_name"] = parsed.pop("field")
    return parsed, []


def register_from_settings() -> list[registry.Hook]:
    """(Re)register the hooks of ``CIO_RELIABLE["HOOKS"]``, replacing the previous ones.

    Invalid entries are skipped with an error in the log; the system checks
    (``cio_reliable.E015``-``E018``) stop ``manage.py check``, ``migrate`` and ``runserver``
    on them. Called by ``AppConfig.ready()`` and whenever ``CIO_RELIABLE`` changes.

    Returns:
        The hooks registered from the setting.
    """
    valid, problems = parse_settings(app_settings.HOOKS)
    for problem in problems:
        if problem.code != "duplicate":
            log.error(
                "cio: CIO_RELIABLE['HOOKS'][%d] (%s) is skipped: %s problem; run manage.py check",
                problem.index,
                problem.kind,
                problem.code,
            )
    hooks = [registry.build(**kwargs) for kwargs in valid]
    registry.update(hooks, remove=lambda h: h.source == "settings")
    return hooks


@on_reset
def _settings_changed() -> None:
    if apps.ready:
        register_from_settings()

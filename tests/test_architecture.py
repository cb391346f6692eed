"""The core invariants of DESIGN.md that are about the code's shape, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import django_cio_reliable

PACKAGE = Path(django_cio_reliable.__file__).resolve().parent
LIBRARY = [
    path
    for path in sorted(PACKAGE.rglob("*.py"))
    if path.relative_to(PACKAGE).parts[0] not in ("testing", "migrations")
]


def _status_writes(path: Path) -> list[str]:
    """``….update(status=…)`` / ``.update(**{"status": …})`` calls in ``path`` (the
    lifecycle's own ``**updates`` are its business)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in ("update", "bulk_update", "update_or_create"):
            continue
        names = {kw.arg for kw in node.keywords}
        dicts = [kw.value for kw in node.keywords if kw.arg is None]
        for value in dicts:
            if isinstance(value, ast.Dict):
                names |= {str(k.value) for k in value.keys if isinstance(k, ast.Constant)}
        if "status" in names:
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    return found


def test_only_the_lifecycle_writes_an_operations_status() -> None:
    """Invariant 1: ``Operation.status`` is written only by ``lifecycle.OperationQuerySet``."""
    writers = [hit for path in LIBRARY for hit in _status_writes(path)]
    assert writers and all(hit.startswith("lifecycle.py:") for hit in writers), writers


def test_the_status_sets_are_defined_once() -> None:
    """The open / waiting statuses are spelt out only in the lifecycle module."""
    spelt = []
    for path in LIBRARY:
        if path.name == "lifecycle.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Tuple | ast.List | ast.Set):
                values = {e.value for e in node.elts if isinstance(e, ast.Constant)}
                if {"pending", "failed"} <= values:
                    spelt.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert spelt == []

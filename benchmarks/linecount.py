"""The library's size: lines of ``django_cio_reliable/**/*.py`` without ``testing/`` (the fake
server shipped for tests) and without ``migrations/``, now (the working tree, uncommitted
changes included) against the same count at a git commit (``0bbb2c7`` by default, read with
``git show``), as non-blank lines and as total lines. The ratio is now ÷ then.

Without git (an sdist) or without that commit (a shallow clone), the rows carry today's count
and say why there is no baseline; the section does not fail. Nothing here needs a database:
``--db``, ``--runs``, ``--quick`` and ``--smoke`` are accepted and ignored.

Usage: ``python -m benchmarks.linecount [--commit 0bbb2c7] [--json F]``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/linecount.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

SECTION = "linecount"
PACKAGE = "django_cio_reliable"
EXCLUDED = ("testing", "migrations")
DEFAULT_COMMIT = "0bbb2c7"


def counted(path: str) -> bool:
    """Whether ``path`` (relative to the repository, ``/``-separated) is counted."""
    parts = path.split("/")
    return (
        path.endswith(".py")
        and parts[0] == PACKAGE
        and not any(part in EXCLUDED or part == "__pycache__" for part in parts[1:-1])
    )


def count(text: str) -> tuple[int, int]:
    """(non-blank lines, total lines) of ``text``."""
    lines = text.splitlines()
    return sum(1 for line in lines if line.strip()), len(lines)


def now_counts(root: Path) -> dict[str, tuple[int, int]]:
    """Per counted file of the working tree: (non-blank, total)."""
    found: dict[str, tuple[int, int]] = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if counted(relative):
            found[relative] = count(path.read_text(encoding="utf-8", errors="replace"))
    return found


def git(root: Path, *args: str) -> str:
    completed = subprocess.run(
        ["git", "-C", str(root), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr.strip().splitlines()[-1:] or ["git failed"])
    return completed.stdout


def then_counts(root: Path, commit: str) -> tuple[dict[str, tuple[int, int]] | None, str]:
    """Per counted file at ``commit``, or ``None`` and why not."""
    if shutil.which("git") is None:
        return None, "git is not installed"
    try:
        git(root, "rev-parse", "--git-dir")
    except (RuntimeError, OSError, subprocess.SubprocessError):
        return None, "not a git checkout (an sdist?)"
    try:
        git(root, "cat-file", "-e", f"{commit}^{{commit}}")
    except (RuntimeError, OSError, subprocess.SubprocessError):
        return None, f"commit {commit} is not in this clone (shallow?)"
    found: dict[str, tuple[int, int]] = {}
    try:
        names = git(root, "ls-tree", "-r", "--name-only", commit, PACKAGE).splitlines()
        for name in names:
            if counted(name):
                found[name] = count(git(root, "show", f"{commit}:{name}"))
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return None, f"git failed: {exc}"
    return found, ""


def total(counts: Mapping[str, tuple[int, int]], which: int) -> int:
    return sum(value[which] for value in counts.values())


def head(root: Path) -> str:
    try:
        return git(root, "log", "-1", "--format=%h").strip()
    except (RuntimeError, OSError, subprocess.SubprocessError):
        return "?"


def dirty(root: Path) -> bool | None:
    """Whether the package has uncommitted changes (``None``: unknown)."""
    try:
        return bool(git(root, "status", "--short", PACKAGE).strip())
    except (RuntimeError, OSError, subprocess.SubprocessError):
        return None


def changes(
    now: Mapping[str, tuple[int, int]], then: Mapping[str, tuple[int, int]]
) -> list[tuple[str, int]]:
    """Files whose non-blank count changed, biggest change first."""
    names: Iterable[str] = set(now) | set(then)
    delta = [(name, now.get(name, (0, 0))[0] - then.get(name, (0, 0))[0]) for name in names]
    return sorted((d for d in delta if d[1]), key=lambda d: (-abs(d[1]), d[0]))


def build_rows(
    now: Mapping[str, tuple[int, int]],
    then: Mapping[str, tuple[int, int]] | None,
    commit: str,
    why: str,
    where: str,
) -> list[common.Row]:
    scope = f"{PACKAGE}/**/*.py without testing/ and migrations/"
    rows: list[common.Row] = []
    for which, kind in ((0, "non-blank lines"), (1, "total lines")):
        value = total(now, which)
        baseline = total(then, which) if then is not None else None
        note = f"{len(now)} files now ({where})"
        if then is not None:
            note += f", {len(then)} at {commit}"
            if which == 0:
                moved = changes(now, then)
                if moved:
                    note += "; biggest changes: " + ", ".join(
                        f"{name.removeprefix(PACKAGE + '/')} {d:+d}" for name, d in moved[:6]
                    )
        else:
            note += f"; no baseline: {why}"
        rows.append(
            common.Row(
                section=SECTION,
                label=f"library size, {kind}: {scope}",
                value=float(value),
                unit="lines",
                baseline_label=(
                    f"the same count at {commit}"
                    if then is not None
                    else f"the same count at {commit} (unavailable: {why})"
                ),
                baseline=float(baseline) if baseline is not None else None,
                baseline_unit="lines",
                ratio=value / baseline if baseline else None,
                ratio_label=f"× the lines at {commit}",
                note=note,
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--commit", default=DEFAULT_COMMIT, help="the baseline commit")
    parser.add_argument("--root", default=str(common.ROOT), help="the repository")
    parser.add_argument("--db", default="", help="ignored (no database)")
    parser.add_argument("--runs", type=int, default=1, help="ignored")
    parser.add_argument("--quick", action="store_true", help="ignored")
    parser.add_argument("--smoke", action="store_true", help="ignored")
    parser.add_argument("--json", help="write the rows here (for run.py)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    now = now_counts(root)
    then, why = then_counts(root, args.commit)
    is_dirty = dirty(root) if then is not None else None
    where = "working tree" + (
        ", with uncommitted changes to the package"
        if is_dirty
        else ", package as committed"
        if is_dirty is False
        else ""
    )
    if then is not None:
        where += f", HEAD {head(root)}"
    rows = build_rows(now, then, args.commit, why, where)
    for row in rows:
        baseline = "–" if row.baseline is None else f"{row.baseline:,.0f}"
        ratio = "–" if row.ratio is None else f"{row.ratio:.3f}×"
        print(f"{row.label}: {row.value:,.0f} (at {args.commit}: {baseline}; {ratio})")
        print(f"  {row.note}")
    meta: dict[str, Any] = {
        "commit": args.commit,
        "now": now,
        "then": then,
        "why_no_baseline": why,
        "where": where,
    }
    common.write_rows(args.json, rows, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())

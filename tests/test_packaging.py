"""``python -m build`` makes a wheel and an sdist that carry everything and import cleanly."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = out.glob("*.whl")
    [sdist] = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def _expected(root: str) -> set[str]:
    package = ROOT / "django_cio_reliable"
    wanted = {f"{root}django_cio_reliable/py.typed"}
    for path in package.rglob("*"):
        if path.suffix in (".py", ".html", ".svg") and "__pycache__" not in path.parts:
            wanted.add(f"{root}{path.relative_to(ROOT).as_posix()}")
    return wanted


@pytest.mark.slow
def test_wheel_carries_code_migrations_templates_and_py_typed(dists: dict[str, Path]) -> None:
    names = set(zipfile.ZipFile(dists["wheel"]).namelist())
    missing = _expected("") - names
    assert not missing, sorted(missing)
    assert "django_cio_reliable/migrations/0001_initial.py" in names
    assert not any(name.startswith(("tests/", "example_project/")) for name in names)


@pytest.mark.slow
def test_sdist_carries_code_migrations_templates_and_py_typed(dists: dict[str, Path]) -> None:
    with tarfile.open(dists["sdist"]) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    missing = _expected("") - names
    assert not missing, sorted(missing)
    assert {"LICENSE", "README.md", "CHANGELOG.md", "setup.cfg"} <= names


@pytest.mark.slow
def test_wheel_imports_cleanly(dists: dict[str, Path], tmp_path: Path) -> None:
    code = (
        "import django_cio_reliable, django_cio_reliable.testing, sys;"
        "assert django_cio_reliable.__file__.startswith(sys.argv[1]), django_cio_reliable.__file__;"
        "print(django_cio_reliable.__version__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(dists["wheel"])],
        cwd=tmp_path,
        env={"PYTHONPATH": str(dists["wheel"]), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()

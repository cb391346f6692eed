"""``python -m build`` makes a wheel and an sdist that carry everything and import cleanly."""

from __future__ import annotations

import os
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


#: Run in a fresh interpreter from the install target: nothing may come from the repository.
INSTALLED_CHECK = r"""
import importlib, os, pkgutil, sys
from pathlib import Path

target, root = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
# The development environment's editable install must not answer for a missing file.
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in repr(f)]
assert all(Path(p or ".").resolve() != root for p in sys.path), sys.path

import django
from django.conf import settings

settings.configure(
    INSTALLED_APPS=[
        "django.contrib.admin",
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
        "django.contrib.messages",
        "django_q",
        "django_cio_reliable",
    ],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}],
    Q_CLUSTER={"name": "packaging", "orm": "default", "timeout": 60, "retry": 120},
    USE_TZ=True,
)
django.setup()

import django_cio_reliable
import django_cio_reliable.migrations as migrations

package = Path(django_cio_reliable.__file__).resolve().parent
assert package == target / "django_cio_reliable", package
assert (package / "py.typed").is_file()
names = sorted(m.name for m in pkgutil.iter_modules(migrations.__path__))
assert "0001_initial" in names, names
for name in names:
    module = importlib.import_module(f"django_cio_reliable.migrations.{name}")
    assert Path(module.__file__).resolve().is_relative_to(target), module.__file__
    assert hasattr(module, "Migration"), name
templates = package / "templates"
assert templates.is_dir() and any(templates.rglob("*.html"))
from django.template.loader import get_template

for path in templates.rglob("*.html"):
    template = get_template(path.relative_to(templates).as_posix())
    assert Path(template.origin.name).resolve().is_relative_to(target), template.origin.name
for module in list(sys.modules.values()):
    file = getattr(module, "__file__", None) or ""
    if module.__name__.startswith("django_cio_reliable"):
        assert Path(file).resolve().is_relative_to(target), (module.__name__, file)
print(len(names), "migrations")
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_installed_distribution_imports_without_the_repository(
    dists: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-compile",
            "--quiet",
            "--target",
            str(target),
            str(dists[kind]),
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (target / "django_cio_reliable" / "__init__.py").is_file()
    inherited = [
        entry
        for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if entry and Path(entry).resolve() != ROOT
    ]
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = os.pathsep.join([str(target), *inherited])
    result = subprocess.run(
        [sys.executable, "-c", INSTALLED_CHECK, str(target), str(ROOT)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("migrations")

"""Models and migrations agree (house style: jazzband/django-axes)."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_no_missing_migrations() -> None:
    out = StringIO()
    try:
        call_command("makemigrations", "django_cio_reliable", check=True, dry_run=True, stdout=out)
    except SystemExit as exc:  # pragma: no cover - the failure message is the point
        raise AssertionError(f"missing migrations:\n{out.getvalue()}") from exc

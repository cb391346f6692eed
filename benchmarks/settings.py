"""Settings for the benchmarks: SQLite file or PostgreSQL (``CIO_BENCH_DB=postgres``)."""

from __future__ import annotations

import os
import tempfile
from typing import Any

SECRET_KEY = "benchmarks-only"  # noqa: S105
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django_q",
    "health_check",
    "django_cio_reliable",
]
DATABASES: dict[str, Any]
if os.environ.get("CIO_BENCH_DB", "sqlite") == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": os.environ.get("CIO_PG_HOST", "127.0.0.1"),
            "PORT": os.environ.get("CIO_PG_PORT", "5432"),
            "USER": os.environ.get("CIO_PG_USER", "postgres"),
            "NAME": os.environ.get("CIO_BENCH_PG_NAME", "cio_bench"),
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get(
                "CIO_BENCH_SQLITE",
                os.path.join(tempfile.gettempdir(), f"cio_bench_{os.getpid()}.sqlite3"),
            ),
            "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
        }
    }
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
Q_CLUSTER = {"name": "cio-bench", "orm": "default", "timeout": 600, "retry": 1200}
CIO_RELIABLE: dict[str, Any] = {
    "SITE_ID": "bench-site",
    "API_KEY": "bench-api-key",
    "DISPATCH": "task",
    "KICK_DEBOUNCE": 3600,
}
LOGGING = {"version": 1, "disable_existing_loggers": False}

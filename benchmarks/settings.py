"""Settings for the benchmarks and the soak: SQLite file or PostgreSQL (``CIO_BENCH_DB=postgres``).

Environment read at import (child processes get it from their parent, see ``benchmarks.common``):

- ``CIO_BENCH_DB``: ``sqlite`` (default) or ``postgres``;
- ``CIO_BENCH_SQLITE``: the SQLite file (default: one per process in the temp directory);
- ``CIO_BENCH_PG_NAME``: the PostgreSQL database (default ``cio_bench``);
- ``CIO_BENCH_CIO``: JSON merged into ``CIO_RELIABLE``;
- ``CIO_BENCH_Q``: JSON merged into ``Q_CLUSTER`` (django-q2 reads it once, at import);
- ``CIO_BENCH_LOG``: a level name (``DEBUG``, ``INFO``): log ``django_cio_reliable`` (and
  django-q2) to stderr with the process id, so a parent can capture every log line in a file.
"""

from __future__ import annotations

import json
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
Q_CLUSTER: dict[str, Any] = {
    "name": "cio-bench",
    "orm": "default",
    "timeout": 600,
    "retry": 1200,
    "log_level": "WARNING",
    **json.loads(os.environ.get("CIO_BENCH_Q") or "{}"),
}
CIO_RELIABLE: dict[str, Any] = {
    "SITE_ID": "bench-site",
    "API_KEY": "bench-api-key",
    "DISPATCH": "task",
    "KICK_DEBOUNCE": 3600,
    **json.loads(os.environ.get("CIO_BENCH_CIO") or "{}"),
}
_LOG_LEVEL = os.environ.get("CIO_BENCH_LOG", "")
LOGGING: dict[str, Any] = {"version": 1, "disable_existing_loggers": False}
if _LOG_LEVEL:
    LOGGING.update(
        {
            "formatters": {
                "pid": {"format": "%(asctime)s %(process)d %(levelname)s %(name)s %(message)s"}
            },
            "handlers": {
                "stderr": {
                    "class": "logging.StreamHandler",
                    "formatter": "pid",
                    "level": "DEBUG",
                }
            },
            "loggers": {
                "django_cio_reliable": {"handlers": ["stderr"], "level": _LOG_LEVEL},
                "django": {"handlers": ["stderr"], "level": "WARNING"},
            },
        }
    )

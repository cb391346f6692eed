"""Settings for the test suite (never the example project's)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = "tests-only-not-secret"  # noqa: S105
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]

#: ``CIO_TEST_DB=postgres`` runs the suite on the local PostgreSQL server.
TEST_DB = os.environ.get("CIO_TEST_DB", "sqlite")

DATABASES: dict[str, Any]
if TEST_DB == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": os.environ.get("CIO_PG_HOST", "127.0.0.1"),
            "PORT": os.environ.get("CIO_PG_PORT", "5432"),
            "USER": os.environ.get("CIO_PG_USER", "postgres"),
            "NAME": os.environ.get("CIO_PG_NAME", "cio_reliable"),
            "CONN_MAX_AGE": 0,
            "TEST": {"NAME": os.environ.get("CIO_PG_TEST_NAME", "test_cio_reliable")},
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("CIO_SQLITE_NAME", str(BASE_DIR / "cio_tests.sqlite3")),
            "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
            # A file, not memory: the concurrency and crash tests share it with child processes.
            "TEST": {
                "NAME": os.environ.get(
                    "CIO_SQLITE_TEST_NAME",
                    os.path.join(tempfile.gettempdir(), f"cio_reliable_test_{os.getpid()}.sqlite3"),
                )
            },
        }
    }

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_q",
    "health_check",
    "django_cio_reliable",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "tests.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

STATIC_URL = "/static/"

CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

Q_CLUSTER = {"name": "cio-tests", "orm": "default", "timeout": 60, "retry": 120, "workers": 1}

CIO_RELIABLE: dict[str, Any] = {
    "SITE_ID": "test-site",
    "API_KEY": "test-api-key-0123456789",
    "REGION": "us",
    "DISPATCH": "inline",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"null": {"class": "logging.NullHandler"}},
    "loggers": {"django_cio_reliable": {"handlers": ["null"], "level": "DEBUG"}},
}

# The models of the hook tests (tests/test_hooks.py).
INSTALLED_APPS += ["tests.hookapp"]

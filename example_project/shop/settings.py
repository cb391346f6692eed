"""Settings of the example shop: SQLite, django-q2 with the ORM broker, FakeCustomerIO.

The demo (``demo.py``) points ``CIO_TRACK_URL`` at its FakeCustomerIO and shortens the breaker's
cooldown through ``SHOP_BREAKER_COOLDOWN`` so that the story fits in a minute.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
STATE_DIR = Path(os.environ.get("SHOP_STATE_DIR", BASE_DIR / ".demo"))
STATE_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = os.environ.get("SHOP_SECRET_KEY", "example-shop-local-only")
DEBUG = os.environ.get("SHOP_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"

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
    "shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "shop.urls"
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

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(STATE_DIR / "shop.sqlite3"),
        # IMMEDIATE transactions: several processes write (web, qcluster, commands); WAL lets
        # readers (the dashboard, health checks) read while a worker writes.
        "OPTIONS": {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL",
        },
        # The model hooks store their operations in the request's transaction.
        "ATOMIC_REQUESTS": True,
    }
}

CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

Q_CLUSTER = {
    "name": "shop",
    "orm": "default",
    "workers": 2,
    "timeout": 60,
    "retry": 120,
    "poll": 0.2,
    "catch_up": False,
}

BREAKER_COOLDOWN = float(os.environ.get("SHOP_BREAKER_COOLDOWN", "5"))

CIO_RELIABLE: dict[str, Any] = {
    "SITE_ID": os.environ.get("CIO_SITE_ID", "demo-site"),
    "API_KEY": os.environ.get("CIO_API_KEY", "demo-api-key"),
    "REGION": "us",
    "TRACK_URL": os.environ.get("CIO_TRACK_URL", "http://127.0.0.1:8765"),
    "TIMEOUT": 2.0,
    "CONNECT_TIMEOUT": 1.0,
    "RETRY_BASE": 0.5,
    "RETRY_CAP": 2.0,
    "KICK_DEBOUNCE": 0.2,
    # A demo-sized breaker: 3 failures in a row open it, a short cooldown, 3 probes close it.
    "BREAKER_CONSECUTIVE_FAILURES": 3,
    "BREAKER_RESET_TIMEOUT": BREAKER_COOLDOWN,
    "BREAKER_RESET_TIMEOUT_MAX": 2 * BREAKER_COOLDOWN,
    "BREAKER_SUCCESS_THRESHOLD": 3,
    # The user hook, declared in settings (the order hooks are in code: shop/apps.py).
    "HOOKS": [
        {
            "kind": "identify_on_save",
            "model": "auth.User",
            "customer_id": "shop.cio.user_id",
            "attributes": "shop.cio.user_attributes",
            "fields": ["email", "first_name"],  # a login (last_login) identifies nobody
        }
    ],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django-q": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        "django_cio_reliable": {
            "handlers": ["console"],
            "level": os.environ.get("SHOP_CIO_LOG_LEVEL", "WARNING"),
        },
    },
}

"""The test app's configuration."""

from __future__ import annotations

from django.apps import AppConfig


class HookappConfig(AppConfig):
    """Test models for the model hooks; registers nothing by itself."""

    name = "tests.hookapp"
    label = "hookapp"
    default_auto_field = "django.db.models.BigAutoField"

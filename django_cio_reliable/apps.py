"""Django app configuration."""

from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class CioReliableConfig(AppConfig):
    """Registers the system checks and signal receivers; performs no I/O."""

    name = "django_cio_reliable"
    label = "django_cio_reliable"
    verbose_name = "Customer.io delivery"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_cio_reliable import checks, conf  # noqa: F401
        from django_cio_reliable.dispatch import ensure_schedules

        post_migrate.connect(
            ensure_schedules, sender=self, dispatch_uid="django_cio_reliable.ensure_schedules"
        )
        from django_cio_reliable import hooks

        # The model hooks of CIO_RELIABLE["HOOKS"]: imports the named callables, no queries.
        hooks.register_from_settings()

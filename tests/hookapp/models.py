"""Models the hook tests attach hooks to: customers and their orders."""

from __future__ import annotations

from typing import Any

from django.db import models


class Customer(models.Model):
    """A person: identified on save, deleted from Customer.io on delete."""

    email = models.EmailField(blank=True)
    first_name = models.CharField(max_length=100, blank=True)
    plan = models.CharField(max_length=20, default="free")
    bio = models.TextField(blank=True)
    last_login = models.DateTimeField(null=True, blank=True)
    prefs: models.JSONField[Any, Any] = models.JSONField(default=dict, blank=True)
    tags: models.ManyToManyField[Tag, Any] = models.ManyToManyField("Tag", blank=True)

    def __str__(self) -> str:
        return self.email or f"customer {self.pk}"


class VipCustomer(Customer):
    """A proxy: Django sends its signals with the proxy as the sender."""

    class Meta:
        proxy = True


class Tag(models.Model):
    """A many-to-many target (cannot be watched: not saved with the customer)."""

    name = models.CharField(max_length=50)

    def __str__(self) -> str:
        return self.name


class Order(models.Model):
    """An order: tracked when placed and when its status changes."""

    customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.CASCADE, related_name="orders"
    )
    status = models.CharField(max_length=20, default="new")
    total = models.DecimalField(max_digits=10, decimal_places=2, default=0)
    note = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"order {self.pk}"

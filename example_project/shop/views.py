"""Two endpoints a shop would have: sign up and place an order. Both stay fast while
Customer.io is down, because the operations go to the outbox in the same transaction."""

from __future__ import annotations

from decimal import Decimal

from django.contrib.auth import get_user_model
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

import django_cio_reliable as cio
from shop.models import Order


@csrf_exempt
@require_POST
def signup(request: HttpRequest) -> JsonResponse:
    username = request.POST.get("username", "")
    with transaction.atomic():
        user = get_user_model().objects.create(username=username, email=f"{username}@example.com")
        cio.identify(user.pk, {"email": user.email, "username": username})
    return JsonResponse({"id": user.pk})


@csrf_exempt
@require_POST
def place_order(request: HttpRequest) -> JsonResponse:
    user = get_user_model().objects.get(pk=request.POST.get("user", ""))
    with transaction.atomic():
        order = Order.objects.create(user=user, total=Decimal(request.POST.get("total", "0")))
        cio.track(
            user.pk,
            "order_placed",
            {"order": order.pk, "total": order.total},
            idempotency_key=f"order-{order.pk}-placed",
        )
    return JsonResponse({"id": order.pk})

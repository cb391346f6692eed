"""The shop's endpoints: sign up, change an e-mail address, place an order, move it along.

No view calls Customer.io, or even the app: the model hooks (``shop.cio``, declared in settings
and in ``ShopConfig.ready``) store the operations in the request's transaction
(``ATOMIC_REQUESTS``), so these views stay fast whatever Customer.io does.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from django.contrib.auth import get_user_model
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from shop.models import Order


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    links = [
        ("Admin", reverse("admin:index")),
        ("Customer.io dashboard", reverse("admin:django_cio_reliable_operation_dashboard")),
        ("Dead letters", reverse("admin:django_cio_reliable_deadletter_changelist")),
        ("Health (django-health-check: 500 on any failure)", reverse("health")),
        ("Customer.io health (200 when only warnings fail)", reverse("django_cio_reliable:health")),
    ]
    items = format_html_join("\n", '<li><a href="{}">{}</a></li>', ((u, t) for t, u in links))
    return HttpResponse(format_html("<h1>Example shop</h1><ul>{}</ul>", items))


@csrf_exempt
@require_POST
def signup(request: HttpRequest) -> JsonResponse:
    username = request.POST.get("username", "")
    user = get_user_model().objects.create(
        username=username,
        email=request.POST.get("email", f"{username}@example.com"),
        first_name=request.POST.get("first_name", ""),
    )
    return JsonResponse({"id": user.pk})


@csrf_exempt
@require_POST
def profile(request: HttpRequest, user_id: int) -> JsonResponse:
    user = get_object_or_404(get_user_model(), pk=user_id)
    user.email = request.POST.get("email", user.email)
    user.save()
    return JsonResponse({"id": user.pk})


@csrf_exempt
@require_POST
def place_order(request: HttpRequest) -> HttpResponse:
    user = get_object_or_404(get_user_model(), pk=request.POST.get("user", ""))
    try:
        total = Decimal(request.POST.get("total", "0"))
    except InvalidOperation:
        return HttpResponseBadRequest("total is not a number")
    order = Order.objects.create(user=user, total=total, coupon=request.POST.get("coupon", ""))
    return JsonResponse({"id": order.pk})


@csrf_exempt
@require_POST
def order_status(request: HttpRequest, order_id: int) -> HttpResponse:
    order = get_object_or_404(Order, pk=order_id)
    status = request.POST.get("status", "")
    if status not in Order.Status.values:
        return HttpResponseBadRequest("unknown status")
    order.status = status
    order.save()
    return JsonResponse({"id": order.pk, "status": order.status})

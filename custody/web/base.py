"""What every page shares: who is asking (the API's ``Actor``), the role gates and the page renderer.

The gates are the API's own rules: the permission classes of ``custody.api.permissions`` decide who may do
what (``allows(actor)``), and objects are found through the same scopes (``custody.selectors.access``), so a
page shows exactly what the API would return to the same person. Regulators, bank operators and
administrators must have verified a TOTP device in this session (``requires_two_factor``), as for the API's
session authentication.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from rest_framework.permissions import BasePermission

from custody.api.authentication import get_actor
from custody.selectors.access import Actor

View = TypeVar("View", bound=Callable[..., HttpResponseBase])


def actor_of(request: HttpRequest) -> Actor:
    return get_actor(request)


def user_of(request: HttpRequest) -> User:
    return cast(User, request.user)


def otp_verified(request: HttpRequest) -> bool:
    is_verified = getattr(request.user, "is_verified", None)
    return bool(callable(is_verified) and is_verified())


def home_url(actor: Actor) -> str:
    """Where a signed-in person starts: their role's dashboard."""
    if actor.guardian_id is not None:
        return reverse("web:parent-home")
    if actor.institution_id is not None:
        return reverse("web:institution-home")
    if actor.jurisdiction_id is not None:
        return reverse("web:regulator-home")
    return reverse("web:landing")


def refused(request: HttpRequest, message: Any = None) -> HttpResponse:
    """403 with a page saying so (another role's page, or an action this staff role may not take)."""
    return render(
        request,
        "custody/web/refused.html",
        {"message": message or _("这个页面不属于您的角色。")},
        status=403,
    )


def role_required(*permissions: type[BasePermission]) -> Callable[[View], View]:
    """Let in a signed-in person whom any of ``permissions`` allows (and who passed TOTP where needed)."""

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if not request.user.is_authenticated:
                return redirect(
                    f"{reverse(settings.LOGIN_URL)}?{urlencode({'next': request.get_full_path()})}"
                )
            actor = actor_of(request)
            if actor.two_factor_required and not otp_verified(request):
                return redirect(
                    f"{reverse(settings.LOGIN_URL)}?{urlencode({'next': request.get_full_path(), 'otp': 1})}"
                )
            if not any(permission().allows(actor) for permission in permissions):  # type: ignore[attr-defined]
                return refused(request)
            return view(request, *args, **kwargs)

        return cast(View, wrapper)

    return decorate


def may(actor: Actor, permission: type[BasePermission]) -> bool:
    """Whether the API's permission class lets this actor take an action (to show or hide its form)."""
    return bool(permission().allows(actor))  # type: ignore[attr-defined]


def is_htmx(request: HttpRequest) -> bool:
    return request.headers.get("HX-Request") == "true"

"""The landing page (首页) and the demo's one-click logins (示范模式).

The landing page explains the product and the demo district (``make seed`` / ``seed_demo``). In demo mode
(``settings.DEMO_MODE`` and ``settings.DEBUG`` both on, never in production settings) it offers one-click
logins as the demo parent, institution manager and regulator; the regulator's session is then marked as
having passed its TOTP check with the demo user's own device, since the demo prints that device's secret
anyway. Otherwise the one-click endpoint does not exist (404).
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST
from django_otp import devices_for_user
from django_otp import login as otp_login

from custody.selectors.access import actor_for
from custody.web.base import actor_of, home_url

# The users ``seed_demo`` creates (custody/demo.py).
DEMO_USERS = {"parent": "demo_parent", "institution": "demo_clerk", "regulator": "demo_regulator"}


def demo_enabled() -> bool:
    return bool(settings.DEBUG and getattr(settings, "DEMO_MODE", False))


def landing(request: HttpRequest) -> HttpResponse:
    signed_in = request.user.is_authenticated
    demo_users = set(User.objects.filter(username__in=DEMO_USERS.values()).values_list("username", flat=True))
    return render(
        request,
        "custody/web/landing.html",
        {
            "demo": demo_enabled(),
            "demo_ready": demo_users == set(DEMO_USERS.values()),
            "home": home_url(actor_of(request)) if signed_in else "",
        },
    )


@require_POST
def demo_login(request: HttpRequest) -> HttpResponse:
    if not demo_enabled():
        raise Http404
    role = request.POST.get("role", "")
    username = DEMO_USERS.get(role)
    user = User.objects.filter(username=username).first() if username else None
    if user is None:
        messages.error(request, _("示范数据尚未生成：请先运行 make seed（或 manage.py seed_demo）。"))
        return redirect("web:landing")
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    if role == "regulator":
        device = next(iter(devices_for_user(user, confirmed=True)), None)
        if device is None:
            messages.error(request, _("示范监管账户没有动态口令设备，请使用登录页。"))
            return redirect("web:login")
        otp_login(request, device)
    return redirect(home_url(actor_for(user)))

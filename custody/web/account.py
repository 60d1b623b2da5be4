"""Signing in and out of the web pages (登录): Django's session, with a TOTP code for regulators, bank
operators and administrators, as the API requires (``custody.services.access.requires_two_factor``).

Failed sign-ins, wrong TOTP codes included, count towards django-axes' lockout like the API's; errors never
say whether the username exists.
"""

from __future__ import annotations

from django.contrib.auth import authenticate, login, logout, user_login_failed
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods, require_POST
from django_otp import login as otp_login
from django_otp import match_token

from custody.selectors.access import actor_for
from custody.services.access import requires_two_factor
from custody.web.base import home_url
from custody.web.forms import LoginForm


def _next_url(request: HttpRequest) -> str | None:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return None


@require_http_methods(["GET", "POST"])
def login_view(request: HttpRequest) -> HttpResponse:
    form = LoginForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        user = authenticate(request, username=data["username"], password=data["password"])
        if getattr(request, "axes_locked_out", False):
            form.add_error(None, _("登录失败次数过多，请稍后再试。"))
        elif user is None:
            form.add_error(None, _("用户名或密码错误。"))
        else:
            device = None
            if requires_two_factor(user):
                if not data.get("otp_token"):
                    form.add_error("otp_token", _("该账户须输入动态口令。"))
                else:
                    device = match_token(user, data["otp_token"])
                    if device is None:
                        user_login_failed.send(
                            sender=__name__, credentials={"username": data["username"]}, request=request
                        )
                        form.add_error("otp_token", _("动态口令错误。"))
            if not form.errors:
                login(request, user)
                if device is not None:
                    otp_login(request, device)
                return redirect(_next_url(request) or home_url(actor_for(user)))
    return render(
        request,
        "custody/web/login.html",
        {"form": form, "next": _next_url(request) or "", "otp_needed": bool(request.GET.get("otp"))},
    )


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    return redirect("web:landing")

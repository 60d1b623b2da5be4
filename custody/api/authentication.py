"""How API clients prove who they are.

- ``BearerTokenAuthentication``: ``Authorization: Bearer ck_…``, a token from ``POST /api/v1/auth/token/``
  (custody/services/access.py). Expired, revoked or unknown tokens fail with 401; a token of a user who must
  use two factors is valid only if it was issued after a TOTP check.
- ``TwoFactorSessionAuthentication``: the web's session cookie, with Django's CSRF check; a user who must use
  two factors must have verified a TOTP device in this session (django-otp's ``OTPMiddleware``).
- ``LockoutBackend``: django-axes' lockout check as the first authentication backend.

Both classes load the user with its role rows in the same query, so building the request's ``Actor``
(custody/selectors/access.py) costs nothing more.
"""

from __future__ import annotations

from typing import Any

from axes.backends import AxesStandaloneBackend
from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from custody.models import ApiToken
from custody.selectors.access import Actor, actor_for, partial_instance, token_holder
from custody.services.access import hash_token, requires_two_factor

ACTOR_ATTRIBUTE = "_custody_actor"


def set_actor(request: Request | HttpRequest, actor: Actor) -> None:
    django_request = getattr(request, "_request", request)
    setattr(django_request, ACTOR_ATTRIBUTE, actor)


def get_actor(request: Request | HttpRequest) -> Actor:
    """The request's actor, built once (from the authenticated user) and kept on the Django request."""
    django_request = getattr(request, "_request", request)
    actor = getattr(django_request, ACTOR_ATTRIBUTE, None)
    if actor is None:
        actor = actor_for(getattr(request, "user", None))
        setattr(django_request, ACTOR_ATTRIBUTE, actor)
    return actor


class BearerTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[AbstractBaseUser, ApiToken] | None:
        parts = authentication.get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword.lower().encode():
            return None
        if len(parts) != 2 or len(parts[1]) > 200:
            raise exceptions.AuthenticationFailed(
                "令牌格式错误 malformed Authorization header", code="authentication_failed"
            )
        try:
            raw = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed(
                "令牌格式错误 malformed token", code="authentication_failed"
            ) from None
        holder = token_holder(hash_token(raw))
        if holder is None or holder.revoked or not holder.user.is_active:
            raise exceptions.AuthenticationFailed(
                "令牌无效或已撤销 invalid or revoked token", code="authentication_failed"
            )
        if holder.expires_at <= timezone.now():
            raise exceptions.AuthenticationFailed(
                "令牌已过期，请重新登录 the token has expired; sign in again", code="authentication_failed"
            )
        if holder.actor.two_factor_required and not holder.otp_verified:
            raise exceptions.AuthenticationFailed(
                "该账户须使用经动态口令验证后签发的令牌 this account needs a token issued after a TOTP check",
                code="otp_required",
            )
        set_actor(request, holder.actor)
        # The token row itself is loaded only if a view asks for it (signing out).
        token = partial_instance(
            ApiToken, id=holder.token_id, user_id=holder.user.pk, otp_verified=holder.otp_verified
        )
        return holder.user, token

    def authenticate_header(self, request: Request) -> str:
        return f'{self.keyword} realm="api"'


class TwoFactorSessionAuthentication(authentication.SessionAuthentication):
    """Django's session (and CSRF) for the web pages' own API calls, with TOTP for privileged users."""

    def authenticate(self, request: Request) -> tuple[AbstractBaseUser, None] | None:
        result = super().authenticate(request)
        if result is None:
            return None
        user = result[0]
        if requires_two_factor(user):
            is_verified = getattr(user, "is_verified", None)
            if not callable(is_verified) or not is_verified():
                raise exceptions.AuthenticationFailed(
                    "请先完成动态口令验证 verify your TOTP device first", code="otp_required"
                )
        return result


class LockoutBackend(AxesStandaloneBackend):
    """django-axes' lockout check (the first of ``AUTHENTICATION_BACKENDS``). Every login the product offers
    passes the request; a call without one (a script, ``Client.login`` in tests) cannot be attributed to a
    client, so it is not counted rather than refused."""

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> None:
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


def axes_client_str(username: str, ip_address: str, user_agent: str, path_info: str, request: Any) -> str:
    """How django-axes names a client in its log lines: the username masked (it may be a phone number)."""
    from custody import pii

    return f"{{username: {pii.mask(username or '')!r}, ip_address: {ip_address!r}, path_info: {path_info!r}}}"


def lockout_response(
    request: HttpRequest, original_response: Any = None, credentials: Any = None
) -> HttpResponse:
    """What django-axes answers once a username or address is locked out (``AXES_LOCKOUT_CALLABLE``): the
    API's error shape under /api/, a short bilingual text elsewhere (the admin site's login)."""
    from django.conf import settings

    from custody.api.errors import ERROR_CODES, error_payload

    hours = settings.AXES_COOLOFF_TIME
    message = f"登录失败次数过多，请{hours}小时后再试 too many failed sign-ins; try again in {hours} h"
    status = ERROR_CODES["account_locked"][0]
    if request.path.startswith("/api/"):
        return JsonResponse(error_payload("account_locked", message), status=status)
    return HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = BearerTokenAuthentication
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "POST /api/v1/auth/token/ 获取令牌 get a token; regulators, bank operators and "
            "administrators also send their TOTP code",
        }


class TwoFactorSessionScheme(OpenApiAuthenticationExtension):
    target_class = TwoFactorSessionAuthentication
    name = "sessionAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        from django.conf import settings

        return {
            "type": "apiKey",
            "in": "cookie",
            "name": settings.SESSION_COOKIE_NAME,
            "description": "网页会话（需 CSRF 令牌）the web session; unsafe methods need the CSRF token",
        }

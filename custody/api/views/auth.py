"""登录 Signing in to the API: a token for a username and password, plus a TOTP code for regulators, bank
operators and administrators; signing out; who am I.

Failed sign-ins count towards django-axes' lockout (``AXES_FAILURE_LIMIT`` failures lock the username for
``AXES_COOLOFF_TIME``), wrong TOTP codes included, and the endpoint has its own tight rate limit per client
address. Errors never say whether the username exists.
"""

from __future__ import annotations

from django.contrib.auth import authenticate, user_logged_in, user_login_failed
from django_otp import match_token
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from custody.api.authentication import set_actor
from custody.api.base import ApiView, validated
from custody.api.errors import error_response
from custody.api.idempotency import audited
from custody.api.permissions import Anyone
from custody.models import ApiToken
from custody.selectors.access import actor_for
from custody.services.access import issue_api_token, requires_two_factor, revoke_api_token


class TokenView(ApiView):
    """获取令牌 Exchange a username and password (and a TOTP code where required) for an API token."""

    permission_classes = (Anyone,)
    authentication_classes = ()  # the credentials are in the body: no session, so no CSRF
    throttle_scope = "login"

    class InputSerializer(serializers.Serializer):
        username = serializers.CharField(max_length=150)
        password = serializers.CharField(max_length=128, trim_whitespace=False)
        otp_token = serializers.RegexField(
            r"^[0-9]{6,8}$",
            required=False,
            help_text="动态口令 TOTP code (regulators, banks, administrators)",
        )
        name = serializers.CharField(max_length=100, required=False, default="", allow_blank=True)

    class OutputSerializer(serializers.Serializer):
        token = serializers.CharField(
            help_text="只显示一次 shown once: send as Authorization: Bearer <token>"
        )
        prefix = serializers.CharField()
        expires_at = serializers.DateTimeField()
        otp_verified = serializers.BooleanField()
        roles = serializers.ListField(child=serializers.CharField())

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer}, auth=[])
    @audited("auth.token")
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request)
        django_request = request._request
        username = data["username"]
        user = authenticate(django_request, username=username, password=data["password"])
        if getattr(django_request, "axes_locked_out", False):
            return error_response("account_locked")
        if user is None:
            return error_response("invalid_credentials", "用户名或密码错误 wrong username or password")
        otp_verified = False
        if requires_two_factor(user):
            code = data.get("otp_token")
            if not code:
                return error_response("otp_required", "该账户须提供动态口令 this account needs a TOTP code")
            if match_token(user, code) is None:
                user_login_failed.send(
                    sender=__name__, credentials={"username": username}, request=django_request
                )
                return error_response("otp_invalid", "动态口令错误 wrong TOTP code")
            otp_verified = True
        raw, token = issue_api_token(user=user, otp_verified=otp_verified, name=data["name"])
        user_logged_in.send(sender=user.__class__, request=django_request, user=user)
        request.user = user
        actor = actor_for(user)
        set_actor(request, actor)
        self.audit(target=token, details={"otp_verified": otp_verified})
        payload = {
            "token": raw,
            "prefix": token.prefix,
            "expires_at": token.expires_at,
            "otp_verified": otp_verified,
            "roles": [role.value for role in actor.roles],
        }
        return Response(self.OutputSerializer(payload).data, status=status.HTTP_201_CREATED)


class TokenRevokeView(ApiView):
    """注销令牌 Revoke the token this request is authenticated with."""

    permission_classes = (IsAuthenticated,)

    class OutputSerializer(serializers.Serializer):
        revoked = serializers.BooleanField()

    @extend_schema(request=None, responses={200: OutputSerializer})
    @audited("auth.revoke")
    def post(self, request: Request) -> Response:
        token = request.auth
        if not isinstance(token, ApiToken):
            return error_response(
                "invalid_request",
                "此请求未使用令牌 this request was not made with a token",
                field="Authorization",
            )
        revoke_api_token(token=token)
        self.audit(target=token)
        return Response(self.OutputSerializer({"revoked": True}).data)


class MeView(ApiView):
    """我是谁 The caller's roles and scope."""

    permission_classes = (IsAuthenticated,)

    class OutputSerializer(serializers.Serializer):
        username = serializers.CharField()
        roles = serializers.ListField(child=serializers.CharField())
        guardian = serializers.IntegerField(source="guardian_id", allow_null=True)
        institution = serializers.IntegerField(source="institution_id", allow_null=True)
        staff_role = serializers.CharField(allow_null=True)
        jurisdiction = serializers.IntegerField(source="jurisdiction_id", allow_null=True)
        bank_name = serializers.CharField(allow_null=True)
        two_factor_required = serializers.BooleanField()

    @extend_schema(responses={200: OutputSerializer})
    def get(self, request: Request) -> Response:
        actor = self.actor
        payload = {**vars(actor), "roles": [role.value for role in actor.roles]}
        return Response(self.OutputSerializer(payload).data)

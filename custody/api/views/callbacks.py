"""支付渠道回调 Payment callbacks from the custody bank, WeChat Pay and Alipay:
``POST /api/v1/callbacks/{channel}/``.

No session and no token: the caller is the channel, proven by its signature over the raw body
(``custody.channels``; the bank: Ed25519, WeChat Pay: APIv3 RSA + AES-GCM, Alipay: RSA2). The view hands the
request, byte for byte, to ``custody.services.payments.receive_callback`` and answers in the form each
channel expects (``verifier.acknowledge``):

- accepted, or a replay of a payment recorded before: success, so the channel stops resending;
- authentic but not a completed payment (``not_paid``): success as well, and nothing is recorded;
- refused (bad signature, unknown key, stale, malformed, another merchant): the channel's failure reply
  with its HTTP status (401 / 400 / 403);
- authentic but not acceptable (unknown order, wrong amount, contract not awaiting payment, institution not
  active): a failure reply (400), so the channel keeps the payment open and resends; the ``CallbackLog``
  row holds the reason for the operators.

Every callback leaves a ``CallbackLog`` row (payments.py) and an audit event (the audit middleware).
"""

from __future__ import annotations

from typing import Any

from axes.helpers import get_client_ip_address
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.parsers import BaseParser
from rest_framework.request import Request

from custody.api.base import ApiView
from custody.api.errors import ErrorSerializer
from custody.api.permissions import Anyone
from custody.channels import CallbackRejected, RejectCode, UnknownChannel, get_verifier
from custody.errors import NotFound, PaymentRejected
from custody.services.payments import receive_callback


class RawBodyParser(BaseParser):
    """Declares the media types the channels send; the view reads ``request.body`` itself (the exact bytes
    that were signed), so nothing is parsed here."""

    media_type = "*/*"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> dict:
        return {}


class _CallbackView(ApiView):
    permission_classes = (Anyone,)
    authentication_classes = ()  # the signature is the credential; no session, so no CSRF either
    parser_classes = (RawBodyParser,)
    throttle_scope = "callbacks"
    channel = ""

    def post(self, request: Request) -> HttpResponse:
        body = request.body
        try:
            verifier = get_verifier(self.channel)
        except UnknownChannel:
            raise NotFound(
                f"未启用的支付渠道 {self.channel} the channel {self.channel} is not configured"
            ) from None
        try:
            receive_callback(
                channel=self.channel,
                headers=dict(request.headers),
                body=body,
                source_ip=get_client_ip_address(request._request),
            )
            ack = verifier.acknowledge(None)
        except CallbackRejected as rejection:
            ack = verifier.acknowledge(rejection)
        except PaymentRejected as refusal:
            # Authentic, so not "malformed" in the channel's eyes either; but the channel must not consider
            # it done. MALFORMED is the code every channel answers with its failure reply and a 400.
            ack = verifier.acknowledge(CallbackRejected(RejectCode.MALFORMED, refusal.message))
        return HttpResponse(ack.body, status=ack.status, content_type=ack.content_type)


_ACK = {
    "type": "object",
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
    "required": ["code", "message"],
}
_BANK_HEADERS = [
    OpenApiParameter(name, str, OpenApiParameter.HEADER, required=True, description=text)
    for name, text in (
        ("X-Bank-Key-Id", "签名密钥编号 the bank key that signed"),
        ("X-Bank-Timestamp", "签名时间（Unix 秒）unix seconds when signed"),
        ("X-Bank-Nonce", "随机串 a random string"),
        ("X-Bank-Signature", "Ed25519 签名（base64）over timestamp\\nnonce\\nbody"),
    )
]
_WECHAT_HEADERS = [
    OpenApiParameter(name, str, OpenApiParameter.HEADER, required=True)
    for name in ("Wechatpay-Serial", "Wechatpay-Signature", "Wechatpay-Timestamp", "Wechatpay-Nonce")
]


class BankCallbackView(_CallbackView):
    """托管银行到账通知 The custody bank confirms a payment into a supervised account (Ed25519-signed)."""

    channel = "bank"

    @extend_schema(
        operation_id="callbacks_bank",
        auth=[],
        parameters=_BANK_HEADERS,
        request={"application/json": OpenApiTypes.OBJECT},
        responses={
            200: OpenApiResponse(_ACK, description="已受理 accepted (or a replay): code SUCCESS"),
            400: OpenApiResponse(_ACK, description="格式错误或不能入账 malformed, or not acceptable"),
            401: OpenApiResponse(_ACK, description="签名、密钥或时间无效 bad signature, key or timestamp"),
            403: OpenApiResponse(_ACK, description="他方商户 another merchant"),
            404: ErrorSerializer,
            429: ErrorSerializer,
        },
    )
    def post(self, request: Request) -> HttpResponse:
        return super().post(request)


class WechatCallbackView(_CallbackView):
    """微信支付回调 WeChat Pay APIv3 payment notification (RSA-signed, AES-256-GCM encrypted resource)."""

    channel = "wechat"

    @extend_schema(
        operation_id="callbacks_wechat",
        auth=[],
        parameters=_WECHAT_HEADERS,
        request={"application/json": OpenApiTypes.OBJECT},
        responses={
            204: OpenApiResponse(description="成功 success (accepted, replay, or not a completed payment)"),
            400: OpenApiResponse(_ACK, description="失败 FAIL: malformed or not acceptable"),
            401: OpenApiResponse(_ACK, description="失败 FAIL: signature, key or timestamp"),
            403: OpenApiResponse(_ACK, description="失败 FAIL: another merchant or app"),
            404: ErrorSerializer,
            429: ErrorSerializer,
        },
    )
    def post(self, request: Request) -> HttpResponse:
        return super().post(request)


class AlipayCallbackView(_CallbackView):
    """支付宝异步通知 Alipay asynchronous notification (RSA2-signed form fields)."""

    channel = "alipay"

    @extend_schema(
        operation_id="callbacks_alipay",
        auth=[],
        request={"application/x-www-form-urlencoded": OpenApiTypes.OBJECT},
        responses={
            (200, "text/plain"): OpenApiResponse(str, description='"success": accepted or not paid'),
            (400, "text/plain"): OpenApiResponse(str, description='"fail": malformed or not acceptable'),
            (401, "text/plain"): OpenApiResponse(str, description='"fail": bad signature or key'),
            (403, "text/plain"): OpenApiResponse(str, description='"fail": another app or seller'),
            404: ErrorSerializer,
            429: ErrorSerializer,
        },
    )
    def post(self, request: Request) -> HttpResponse:
        return super().post(request)

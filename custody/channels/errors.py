"""Why a payment channel's callback was refused: one exception, ``CallbackRejected``, with a stable code.

The code is what callers branch on (and what the API shows); the message is for people, Chinese first with
English beside it. Messages name fields and headers, never values from the payload: a rejected callback may
carry a payer's account or openid, and rejections end up in logs.
"""

from __future__ import annotations

from enum import StrEnum


class RejectCode(StrEnum):
    BAD_SIGNATURE = "bad_signature"
    """The signature does not verify over the bytes received, is not canonical base64, or not our scheme."""

    UNKNOWN_KEY = "unknown_key"
    """The key id / certificate serial names no key we trust, or a certificate outside its validity period."""

    STALE_TIMESTAMP = "stale_timestamp"
    """Authentic, but signed too long ago or too far in the future: a replay or a badly wrong clock."""

    MALFORMED = "malformed"
    """A header or field is missing, of the wrong type, or inexact (a float where integer fen are due)."""

    DECRYPT_FAILED = "decrypt_failed"
    """The encrypted resource (WeChat Pay) does not decrypt and authenticate with our APIv3 key."""

    WRONG_MERCHANT = "wrong_merchant"
    """Authentic, but addressed to another merchant or app: never credit it to ours."""

    NOT_PAID = "not_paid"
    """Authentic and for us, but not a completed payment (WeChat ``trade_state``, Alipay ``trade_status``).
    Callers should acknowledge it to the channel (so it stops resending) and record nothing."""


_DEFAULT_MESSAGES: dict[RejectCode, str] = {
    RejectCode.BAD_SIGNATURE: "签名验证失败 / bad signature",
    RejectCode.UNKNOWN_KEY: "未知的密钥或证书 / unknown key or certificate",
    RejectCode.STALE_TIMESTAMP: "通知时间超出允许范围 / timestamp outside the allowed window",
    RejectCode.MALFORMED: "通知格式错误 / malformed notification",
    RejectCode.DECRYPT_FAILED: "通知内容解密失败 / could not decrypt the notification",
    RejectCode.WRONG_MERCHANT: "商户号或应用号不符 / notification is for another merchant or app",
    RejectCode.NOT_PAID: "交易未支付成功 / the trade is not a completed payment",
}

# How a plain HTTP endpoint should answer each rejection (channels with their own reply format, such as
# Alipay's "success"/"fail" body, map these in their ``acknowledge``).
HTTP_STATUS: dict[RejectCode, int] = {
    RejectCode.BAD_SIGNATURE: 401,
    RejectCode.UNKNOWN_KEY: 401,
    RejectCode.STALE_TIMESTAMP: 401,
    RejectCode.MALFORMED: 400,
    RejectCode.DECRYPT_FAILED: 400,
    RejectCode.WRONG_MERCHANT: 403,
    # Authentic and well formed: the channel must see success or it resends for a day.
    RejectCode.NOT_PAID: 200,
}


class CallbackRejected(Exception):
    """A channel callback that must not be recorded. ``code`` is stable; ``message`` is "中文 / English"."""

    def __init__(self, code: RejectCode | str, message: str | None = None) -> None:
        self.code = RejectCode(code)
        self.message = message or _DEFAULT_MESSAGES[self.code]
        super().__init__(f"{self.code.value}: {self.message}")

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]


def rejected(code: RejectCode, zh: str, en: str) -> CallbackRejected:
    """``raise rejected(RejectCode.MALFORMED, "缺少字段 amount", "missing field amount")``."""
    return CallbackRejected(code, f"{zh} / {en}")

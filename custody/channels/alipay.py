"""Alipay asynchronous payment notifications (支付宝异步通知), form-encoded, signed RSA2.

Alipay signs the parameters, not the bytes: take every parameter except ``sign`` and ``sign_type``, drop those
with empty values, sort by name, join the URL-decoded values as ``k=v&k=v``, encode with the notification's
``charset``, and verify ``sign`` as SHA256withRSA (PKCS#1 v1.5) with Alipay's public key for our app. So the
body has to be split into parameters before verifying; nothing in it is interpreted until the signature holds.
Two consequences, both harmless: bytes that do not change the decoded parameters (``%2B`` written ``%2b``)
do not break the signature, and a parameter with an empty value may be added by anyone; every field read here
must be non-empty, so it is always among the signed ones.

Alipay signs no timestamp of its own. ``notify_time`` (通知的发送时间, Beijing time, to the second) is signed
and is the time of this delivery, so it is held to the same window as the other channels (five minutes
either way by default; ``timestamp_window`` widens it). A replay inside the window, and Alipay's own resends
(up to eight over 25 hours, and TRADE_FINISHED after TRADE_SUCCESS for the same trade), carry the same
``trade_no`` and are absorbed by the ledger's idempotency on ``transaction_id``.

A notification for a trade that is not paid (WAIT_BUYER_PAY, TRADE_CLOSED) is rejected as ``not_paid`` so the
caller records nothing but still answers ``success``.

``sign_alipay_notification`` and ``alipay_notification_params`` build notifications for tests, demo data and
the simulator.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from urllib.parse import quote_plus, unquote_plus, urlencode
from zoneinfo import ZoneInfo

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from custody.channels.base import (
    DEFAULT_TIMESTAMP_WINDOW,
    Acknowledgement,
    PaymentNotice,
    check_timestamp_window,
    decode_signature,
    require_aware,
    require_text,
    within_calendar,
    yuan_to_fen,
)
from custody.channels.errors import CallbackRejected, RejectCode, rejected

BEIJING = ZoneInfo("Asia/Shanghai")
PAID_STATUSES = frozenset({"TRADE_SUCCESS", "TRADE_FINISHED"})
SIGN_TYPE = "RSA2"
# Python codec names for the charsets Alipay may declare.
CHARSETS = {"utf-8": "utf-8", "utf8": "utf-8", "gbk": "gbk", "gb2312": "gb2312", "gb18030": "gb18030"}
_PARAMETER_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_ALIPAY_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")
_ALIPAY_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def _malformed_form() -> CallbackRejected:
    return rejected(RejectCode.MALFORMED, "通知不是有效的表单编码", "body is not valid form encoding")


def parse_form(body: bytes) -> dict[str, str]:
    """``application/x-www-form-urlencoded`` parameters, decoded with the body's own ``charset``.

    Strict: ASCII bytes, every part ``name=value`` with a plain name (letters, digits, ``_.-``), no name twice
    (two readers could pick different ones).
    """
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise _malformed_form() from None
    if not text:
        raise _malformed_form()
    raw_pairs: list[tuple[str, str]] = []
    for part in text.split("&"):
        name, equals, value = part.partition("=")
        if not equals or not name:
            raise _malformed_form()
        raw_pairs.append((name, value))
    try:
        names = [unquote_plus(name, encoding="ascii", errors="strict") for name, _ in raw_pairs]
        declared = dict(zip(names, (value for _, value in raw_pairs), strict=True)).get("charset", "utf-8")
        charset = CHARSETS.get(unquote_plus(declared, encoding="ascii", errors="strict").lower())
        if charset is None:
            raise rejected(RejectCode.MALFORMED, "不支持的字符集", "charset is not supported")
        values = [unquote_plus(value, encoding=charset, errors="strict") for _, value in raw_pairs]
    except UnicodeDecodeError:
        raise _malformed_form() from None
    params: dict[str, str] = {}
    for name, value in zip(names, values, strict=True):
        if not _PARAMETER_NAME.fullmatch(name):
            raise _malformed_form()
        if name in params:
            raise rejected(RejectCode.MALFORMED, f"参数 {name} 重复", f"parameter {name} appears twice")
        params[name] = value
    return params


def signing_content(params: Mapping[str, str]) -> str:
    """What Alipay signs: non-empty parameters but sign and sign_type, sorted by name, ``k=v`` joined by &."""
    kept = sorted((k, v) for k, v in params.items() if k not in ("sign", "sign_type") and v != "")
    return "&".join(f"{k}={v}" for k, v in kept)


def _charset_of(params: Mapping[str, str]) -> str:
    return CHARSETS[params.get("charset", "utf-8").lower()]


def _beijing_time(params: Mapping[str, str], key: str) -> datetime:
    text = require_text(params, key)
    try:
        if not _ALIPAY_TIME.fullmatch(text):
            raise ValueError(text)
        moment = datetime.strptime(text, _ALIPAY_TIME_FORMAT).replace(tzinfo=BEIJING)
        if not within_calendar(moment):
            raise ValueError(text)
        return moment
    except ValueError:
        raise rejected(
            RejectCode.MALFORMED,
            f"字段 {key} 不是 yyyy-MM-dd HH:mm:ss 时间",
            f"field {key} is not a yyyy-MM-dd HH:mm:ss time",
        ) from None


def fen_to_yuan(fen: int) -> str:
    """1234 -> "12.34", the way Alipay writes amounts."""
    return f"{fen // 100}.{fen % 100:02d}"


class AlipayVerifier:
    """Verifies Alipay asynchronous notifications for one app (and optionally one seller)."""

    channel = "alipay"

    def __init__(
        self,
        *,
        app_id: str,
        public_keys: Sequence[RSAPublicKey],
        seller_id: str | None = None,
        timestamp_window: timedelta = DEFAULT_TIMESTAMP_WINDOW,
    ) -> None:
        # Several keys only while Alipay's public key is being rotated: the notification does not say which.
        if not public_keys:
            raise ValueError("Alipay needs at least one Alipay public key")
        self._app_id = app_id
        self._public_keys = tuple(public_keys)
        self._seller_id = seller_id
        self._window = timestamp_window

    def verify(self, *, headers: Mapping[str, str], body: bytes, now: datetime) -> PaymentNotice:
        require_aware(now)
        params = parse_form(body)
        sign = params.get("sign")
        if not sign:
            raise rejected(RejectCode.MALFORMED, "缺少参数 sign", "missing parameter sign")
        if params.get("sign_type", SIGN_TYPE) != SIGN_TYPE:
            raise rejected(RejectCode.BAD_SIGNATURE, "签名类型不是 RSA2", "sign_type is not RSA2")
        signature = decode_signature(sign)
        content = signing_content(params).encode(_charset_of(params))
        if not any(self._verifies(key, signature, content) for key in self._public_keys):
            raise rejected(RejectCode.BAD_SIGNATURE, "支付宝签名验证失败", "Alipay signature does not verify")

        check_timestamp_window(_beijing_time(params, "notify_time"), now=now, window=self._window)
        if require_text(params, "app_id") != self._app_id:
            raise rejected(RejectCode.WRONG_MERCHANT, "应用ID不符", "app_id is not our app")
        if self._seller_id is not None and params.get("seller_id") != self._seller_id:
            raise rejected(RejectCode.WRONG_MERCHANT, "卖家ID不符", "seller_id is not our seller")
        if require_text(params, "trade_status") not in PAID_STATUSES:
            raise rejected(
                RejectCode.NOT_PAID,
                "交易状态不是 TRADE_SUCCESS 或 TRADE_FINISHED",
                "trade_status is not TRADE_SUCCESS or TRADE_FINISHED",
            )

        # Apps created since 2023 get buyer_open_id instead of buyer_id; either identifies the payer.
        payer_key = "buyer_id" if params.get("buyer_id") else "buyer_open_id"
        return PaymentNotice(
            channel=self.channel,
            transaction_id=require_text(params, "trade_no"),
            order_reference=require_text(params, "out_trade_no"),
            amount_fen=yuan_to_fen(require_text(params, "total_amount"), name="total_amount"),
            currency="CNY",  # total_amount is always in yuan for domestic Alipay
            paid_at=_beijing_time(params, "gmt_payment"),
            payer_account=require_text(params, payer_key, name="buyer_id"),
            raw=body,
        )

    def acknowledge(self, rejection: CallbackRejected | None) -> Acknowledgement:
        # Alipay reads only the body: exactly "success" stops its resends, anything else means try again.
        if rejection is None or rejection.code is RejectCode.NOT_PAID:
            return Acknowledgement(200, "text/plain; charset=utf-8", b"success")
        return Acknowledgement(rejection.http_status, "text/plain; charset=utf-8", b"fail")

    @staticmethod
    def _verifies(key: RSAPublicKey, signature: bytes, content: bytes) -> bool:
        try:
            key.verify(signature, content, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return False
        return True


# --- building notifications (tests, demo data, the simulator) --------------------------------------------


def alipay_notification_params(
    *,
    app_id: str,
    trade_no: str,
    out_trade_no: str,
    total_fen: int,
    gmt_payment: datetime,
    notify_time: datetime,
    buyer_id: str,
    seller_id: str = "2088000000000000",
    trade_status: str = "TRADE_SUCCESS",
) -> dict[str, str]:
    """The parameters of a payment notification, shaped as Alipay sends them (before signing)."""
    require_aware(gmt_payment)
    require_aware(notify_time)
    amount = fen_to_yuan(total_fen)
    return {
        "gmt_create": gmt_payment.astimezone(BEIJING).strftime(_ALIPAY_TIME_FORMAT),
        "charset": "utf-8",
        "seller_email": "",
        "subject": "课程费用",
        "buyer_id": buyer_id,
        "invoice_amount": amount,
        "notify_id": secrets.token_hex(16),
        "fund_bill_list": '[{"amount":"' + amount + '","fundChannel":"ALIPAYACCOUNT"}]',
        "notify_type": "trade_status_sync",
        "trade_status": trade_status,
        "receipt_amount": amount,
        "app_id": app_id,
        "buyer_pay_amount": amount,
        "notify_time": notify_time.astimezone(BEIJING).strftime(_ALIPAY_TIME_FORMAT),
        "point_amount": "0.00",
        "total_amount": amount,
        "trade_no": trade_no,
        "gmt_payment": gmt_payment.astimezone(BEIJING).strftime(_ALIPAY_TIME_FORMAT),
        "seller_id": seller_id,
        "out_trade_no": out_trade_no,
        "version": "1.0",
    }


def sign_alipay_notification(private_key: RSAPrivateKey, params: Mapping[str, str]) -> bytes:
    """The form-encoded body of ``params`` with ``sign_type=RSA2`` and their ``sign``, as Alipay posts it."""
    charset = _charset_of(params)
    signature = private_key.sign(signing_content(params).encode(charset), padding.PKCS1v15(), hashes.SHA256())
    signed = {**params, "sign_type": SIGN_TYPE, "sign": base64.b64encode(signature).decode("ascii")}
    return urlencode(signed, encoding=charset, quote_via=quote_plus).encode("ascii")

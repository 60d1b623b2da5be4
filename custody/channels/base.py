"""What every payment channel's callback boils down to (``PaymentNotice``), and the checks all channels share.

A channel verifier turns the raw HTTP request of a payment callback (headers and body bytes) into a
``PaymentNotice`` or raises ``CallbackRejected``. The order is always the same: find the key, verify the
signature over the bytes exactly as received, and only then check freshness and parse the payload. Parsing is
strict: amounts are exact integers of fen (a JSON ``12.0`` or ``1e3`` is refused), JSON objects with duplicate
keys are refused (two parsers could read different amounts from them), times must carry their zone.

Nothing here logs, and no error message repeats payload values: payer accounts and openids are personal data.
``PaymentNotice`` also keeps ``payer_account`` and ``raw`` out of its ``repr`` for the same reason.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from custody.channels.errors import CallbackRejected, RejectCode, rejected
from ledger.money import MAX_MINOR_UNITS

DEFAULT_TIMESTAMP_WINDOW = timedelta(minutes=5)
SUPPORTED_CURRENCIES = frozenset({"CNY"})
# Channel ids are short (WeChat 32, Alipay 64, bank serials ~32); the cap only stops absurd input.
MAX_IDENTIFIER_LENGTH = 128

_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")
_NONCE = re.compile(r"[!-~]{1,128}")  # printable ASCII, no spaces or line breaks


@dataclass(frozen=True)
class PaymentNotice:
    """One confirmed payment, as a channel reported it (支付结果通知).

    ``transaction_id`` is the channel's own id and the idempotency key of the payment: channels resend the
    same payment many times (retries, Alipay's later TRADE_FINISHED), with a different ``raw`` body each time
    but the same other fields. Compare those fields, not ``raw``, when checking that a replay is the same.
    """

    channel: str
    transaction_id: str
    order_reference: str
    amount_fen: int
    currency: str
    paid_at: datetime
    payer_account: str = field(repr=False)
    raw: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if type(self.amount_fen) is not int or not 0 < self.amount_fen < MAX_MINOR_UNITS:
            raise ValueError("amount_fen must be a positive int of fen")
        if self.paid_at.tzinfo is None or self.paid_at.utcoffset() is None:
            raise ValueError("paid_at must be timezone-aware")


@dataclass(frozen=True)
class Acknowledgement:
    """The HTTP answer a channel expects for a callback, accepted or not."""

    status: int
    content_type: str
    body: bytes


class ChannelVerifier(Protocol):
    channel: str

    def verify(self, *, headers: Mapping[str, str], body: bytes, now: datetime) -> PaymentNotice:
        """The payment this callback reports, or ``CallbackRejected``. ``now`` is business time, aware."""
        ...

    def acknowledge(self, rejection: CallbackRejected | None) -> Acknowledgement:
        """What to answer the channel: ``None`` when the notice was accepted (or recorded before)."""
        ...


# --- headers and signatures -----------------------------------------------------------------------------


def require_aware(now: datetime) -> None:
    # A naive "now" is a programming error in the caller, not a bad callback.
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (use ledger.clock.now())")


def optional_header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header ``name``, matched case-insensitively (HTTP header names are), or None."""
    value = headers.get(name)
    if value is None:
        wanted = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == wanted), None)
    return value


def header(headers: Mapping[str, str], name: str) -> str:
    """The non-empty value of header ``name``, or a ``malformed`` rejection."""
    value = optional_header(headers, name)
    if value is None or value == "":
        raise rejected(RejectCode.MALFORMED, f"缺少请求头 {name}", f"missing header {name}")
    return value


def decode_signature(text: str) -> bytes:
    """Standard base64, refused unless it is the one canonical encoding of its bytes.

    Base64 padding leaves a few bits unused; without this check several strings decode to the same signature,
    so changing a byte of the signature header could leave the signature valid.
    """
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise rejected(
            RejectCode.BAD_SIGNATURE, "签名不是有效的 base64", "signature is not valid base64"
        ) from None
    if not decoded or base64.b64encode(decoded).decode("ascii") != text:
        raise rejected(
            RejectCode.BAD_SIGNATURE, "签名不是规范的 base64 编码", "signature is not canonical base64"
        )
    return decoded


def parse_unix_timestamp(text: str, *, name: str) -> datetime:
    if not _UNIX_SECONDS.fullmatch(text):
        raise rejected(RejectCode.MALFORMED, f"{name} 不是 Unix 秒数", f"{name} is not unix seconds")
    try:
        return datetime.fromtimestamp(int(text), tz=UTC)
    except (ValueError, OverflowError, OSError):  # twelve digits reach past the year 9999
        raise rejected(
            RejectCode.MALFORMED, f"{name} 超出日历范围", f"{name} is beyond the calendar"
        ) from None


# A moment at least a day from either end of the calendar stays a valid datetime in UTC (the database) and in
# any time zone (Asia/Shanghai for business dates); one nearer the ends crashes the code that stores it.
_EARLIEST_MOMENT = datetime.min.replace(tzinfo=UTC) + timedelta(days=1)
_LATEST_MOMENT = datetime.max.replace(tzinfo=UTC) - timedelta(days=1)


def within_calendar(moment: datetime) -> bool:
    """Whether the aware ``moment`` can be stored and shown in any time zone."""
    try:
        return _EARLIEST_MOMENT <= moment.astimezone(UTC) <= _LATEST_MOMENT
    except OverflowError:
        return False


def check_nonce(text: str, *, name: str) -> None:
    # The signed message joins timestamp, nonce and body with "\n": a nonce holding one would be ambiguous.
    if not _NONCE.fullmatch(text):
        raise rejected(
            RejectCode.MALFORMED, f"{name} 含有不允许的字符", f"{name} holds characters that are not allowed"
        )


def check_timestamp_window(sent_at: datetime, *, now: datetime, window: timedelta) -> None:
    """Refuse a callback signed more than ``window`` before or after ``now`` (a replay or a broken clock)."""
    if abs(now - sent_at) > window:
        seconds = int(window.total_seconds())
        raise rejected(
            RejectCode.STALE_TIMESTAMP,
            f"通知时间与当前时间相差超过 {seconds} 秒",
            f"notification time is more than {seconds} s away from now",
        )


# --- payload parsing -------------------------------------------------------------------------------------


def _refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj: dict[str, object] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError("duplicate key")
        obj[key] = value
    return obj


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number")


def load_json_object(data: bytes, *, what: str = "body") -> dict[str, object]:
    """Strict JSON: UTF-8, an object at the top, no duplicate keys, non-integers kept exact as ``Decimal``."""
    try:
        parsed = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_refuse_duplicate_keys,
            parse_float=Decimal,
            parse_constant=_refuse_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise rejected(RejectCode.MALFORMED, f"{what} 不是有效的 JSON", f"{what} is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise rejected(RejectCode.MALFORMED, f"{what} 不是 JSON 对象", f"{what} is not a JSON object")
    return parsed


def _missing(name: str) -> CallbackRejected:
    return rejected(RejectCode.MALFORMED, f"缺少字段 {name}", f"missing field {name}")


def require_object(data: Mapping[str, object], key: str, *, name: str | None = None) -> dict[str, object]:
    name = name or key
    value = data.get(key)
    if value is None:
        raise _missing(name)
    if not isinstance(value, dict):
        raise rejected(RejectCode.MALFORMED, f"字段 {name} 不是对象", f"field {name} is not an object")
    return value


def require_text(data: Mapping[str, object], key: str, *, name: str | None = None) -> str:
    """A non-empty string field without control characters, at most ``MAX_IDENTIFIER_LENGTH`` long."""
    name = name or key
    value = data.get(key)
    if value is None or value == "":
        raise _missing(name)
    if not isinstance(value, str):
        raise rejected(RejectCode.MALFORMED, f"字段 {name} 不是字符串", f"field {name} is not a string")
    if len(value) > MAX_IDENTIFIER_LENGTH or _CONTROL_CHARACTERS.search(value):
        raise rejected(
            RejectCode.MALFORMED,
            f"字段 {name} 过长或含有控制字符",
            f"field {name} is too long or holds control characters",
        )
    return value


def require_fen(data: Mapping[str, object], key: str, *, name: str | None = None) -> int:
    """A positive integer of fen. JSON ``12.3``, ``12.0``, ``"12"`` and ``true`` are all refused."""
    name = name or key
    value = data.get(key)
    if value is None:
        raise _missing(name)
    # bool is an int subclass; Decimal is what the strict loader makes of any JSON number with . or e.
    if type(value) is not int:
        raise rejected(
            RejectCode.MALFORMED, f"字段 {name} 必须是整数（分）", f"field {name} must be an integer of fen"
        )
    if not 0 < value < MAX_MINOR_UNITS:
        raise rejected(RejectCode.MALFORMED, f"字段 {name} 超出允许范围", f"field {name} is out of range")
    return value


def require_currency(data: Mapping[str, object], key: str, *, name: str | None = None) -> str:
    name = name or key
    value = require_text(data, key, name=name)
    if value not in SUPPORTED_CURRENCIES:
        raise rejected(
            RejectCode.MALFORMED, f"字段 {name} 的币种不受支持", f"field {name} is not a supported currency"
        )
    return value


def require_aware_datetime(data: Mapping[str, object], key: str, *, name: str | None = None) -> datetime:
    """An ISO 8601 / RFC 3339 date-time with its UTC offset (``2024-03-01T10:00:00+08:00``)."""
    name = name or key
    text = require_text(data, key, name=name)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None or moment.utcoffset() is None:
        raise rejected(
            RejectCode.MALFORMED,
            f"字段 {name} 不是带时区的 ISO 8601 时间",
            f"field {name} is not an ISO 8601 time with a UTC offset",
        )
    if not within_calendar(moment):
        raise rejected(
            RejectCode.MALFORMED, f"字段 {name} 超出日历范围", f"field {name} is beyond the calendar"
        )
    return moment


_YUAN = re.compile(r"(0|[1-9][0-9]{0,15})(\.[0-9]{1,2})?")


def yuan_to_fen(text: str, *, name: str) -> int:
    """Exact conversion of a yuan string: ``"12.34"`` -> 1234, ``"5"`` -> 500.

    Refuses more than two decimals (``"12.345"``), signs, exponents, spaces, leading zeros and zero.
    """
    if not _YUAN.fullmatch(text):
        raise rejected(
            RejectCode.MALFORMED,
            f"字段 {name} 不是最多两位小数的金额",
            f"field {name} is not an amount with at most 2 decimals",
        )
    fen = Decimal(text).scaleb(2)  # exact: the pattern admits only plain decimals with <= 2 places
    if not 0 < fen < MAX_MINOR_UNITS:
        raise rejected(RejectCode.MALFORMED, f"字段 {name} 超出允许范围", f"field {name} is out of range")
    return int(fen)


# --- keys from settings ----------------------------------------------------------------------------------

MIN_RSA_KEY_BITS = 2048


def load_rsa_public_key(text: str) -> RSAPublicKey:
    """An RSA public key from settings, as PEM (``BEGIN PUBLIC KEY``), a PEM certificate, or bare base64 DER
    (the form Alipay's console shows). Raises ValueError for anything else or a key under 2048 bits."""
    text = text.strip()
    key: object
    if "-----BEGIN CERTIFICATE-----" in text:
        key = x509.load_pem_x509_certificate(text.encode("ascii")).public_key()
    elif text.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(text.encode("ascii"))
    else:
        try:
            der = base64.b64decode("".join(text.split()), validate=True)
        except binascii.Error as exc:
            raise ValueError("neither PEM nor base64 DER") from exc
        key = serialization.load_der_public_key(der)
    if not isinstance(key, RSAPublicKey):
        raise ValueError("not an RSA public key")
    if key.key_size < MIN_RSA_KEY_BITS:
        raise ValueError(f"RSA key of {key.key_size} bits; at least {MIN_RSA_KEY_BITS} required")
    return key

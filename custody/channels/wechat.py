"""WeChat Pay APIv3 payment notifications (微信支付 APIv3 支付成功通知).

WeChat signs each notification with SHA256-RSA (PKCS#1 v1.5) over::

    f"{Wechatpay-Timestamp}\\n{Wechatpay-Nonce}\\n" + raw body + "\\n"

using the key named by ``Wechatpay-Serial``. That header names either a platform certificate (平台证书, an
upper-case hex serial) or a WeChat Pay public key (微信支付公钥, ``PUB_KEY_ID_...``). Merchants move from the
first to the second gradually and WeChat may sign with either during the move, so both are accepted side by
side; a certificate counts only within its validity period.

After the signature and the timestamp window, the body's ``resource`` is decrypted with AEAD_AES_256_GCM (the
merchant's 32-byte APIv3 key, the resource's ``nonce`` and ``associated_data``); the plaintext is the
transaction. It must belong to our ``mchid`` (and one of our ``appid`` when configured) and be
``trade_state == "SUCCESS"``; ``amount.total`` (fen, an integer) is what the order was for, coupons included.

Service-provider (服务商) notifications, with ``sp_mchid``/``sub_mchid``, are not handled here.

``build_wechat_notification`` and its parts build signed, encrypted notifications with keys made by the test,
for tests, demo data and the simulator.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from custody.channels.base import (
    DEFAULT_TIMESTAMP_WINDOW,
    MIN_RSA_KEY_BITS,
    Acknowledgement,
    PaymentNotice,
    check_nonce,
    check_timestamp_window,
    decode_signature,
    header,
    load_json_object,
    optional_header,
    parse_unix_timestamp,
    require_aware,
    require_aware_datetime,
    require_currency,
    require_fen,
    require_object,
    require_text,
)
from custody.channels.errors import CallbackRejected, RejectCode, rejected

SERIAL_HEADER = "Wechatpay-Serial"
SIGNATURE_HEADER = "Wechatpay-Signature"
TIMESTAMP_HEADER = "Wechatpay-Timestamp"
NONCE_HEADER = "Wechatpay-Nonce"
SIGNATURE_TYPE_HEADER = "Wechatpay-Signature-Type"
SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
PUBLIC_KEY_ID_PREFIX = "PUB_KEY_ID_"
RESOURCE_ALGORITHM = "AEAD_AES_256_GCM"


def signed_message(timestamp: str, nonce: str, body: bytes) -> bytes:
    return f"{timestamp}\n{nonce}\n".encode() + body + b"\n"


def api_v3_key_bytes(key: str | bytes) -> bytes:
    """The APIv3 key (APIv3密钥) is 32 ASCII characters, used as the AES-256 key as they are."""
    try:
        raw = key.encode("ascii") if isinstance(key, str) else bytes(key)
    except UnicodeEncodeError:
        raise ValueError("the WeChat Pay APIv3 key is ASCII") from None
    if len(raw) != 32:
        raise ValueError("the WeChat Pay APIv3 key is 32 bytes")
    return raw


def certificate_serial(certificate: x509.Certificate) -> str:
    """The serial as WeChat writes it in ``Wechatpay-Serial``: upper-case hex."""
    return format(certificate.serial_number, "X")


class WechatPayVerifier:
    """Verifies WeChat Pay APIv3 payment notifications for one merchant (直连商户)."""

    channel = "wechat"

    def __init__(
        self,
        *,
        mchid: str,
        api_v3_key: str | bytes,
        platform_certificates: Iterable[x509.Certificate] = (),
        public_keys: Mapping[str, RSAPublicKey] | None = None,
        app_ids: Collection[str] = (),
        timestamp_window: timedelta = DEFAULT_TIMESTAMP_WINDOW,
    ) -> None:
        self._mchid = mchid
        self._aead = AESGCM(api_v3_key_bytes(api_v3_key))
        self._certificates: dict[int, tuple[x509.Certificate, RSAPublicKey]] = {}
        for certificate in platform_certificates:
            key = certificate.public_key()
            if not isinstance(key, RSAPublicKey) or key.key_size < MIN_RSA_KEY_BITS:
                raise ValueError("a WeChat Pay platform certificate holds an RSA key of at least 2048 bits")
            self._certificates[certificate.serial_number] = (certificate, key)
        self._public_keys = dict(public_keys or {})
        for key_id in self._public_keys:
            if not key_id.startswith(PUBLIC_KEY_ID_PREFIX):
                raise ValueError(f"WeChat Pay public key ids start with {PUBLIC_KEY_ID_PREFIX}")
        if not self._certificates and not self._public_keys:
            raise ValueError("WeChat Pay needs a platform certificate or a public key")
        self._app_ids = frozenset(app_ids)
        self._window = timestamp_window

    def verify(self, *, headers: Mapping[str, str], body: bytes, now: datetime) -> PaymentNotice:
        require_aware(now)
        serial = header(headers, SERIAL_HEADER)
        signature_text = header(headers, SIGNATURE_HEADER)
        timestamp = header(headers, TIMESTAMP_HEADER)
        nonce = header(headers, NONCE_HEADER)

        key = self._key_for(serial, now=now)
        signature_type = optional_header(headers, SIGNATURE_TYPE_HEADER)
        if signature_type is not None and signature_type != SIGNATURE_TYPE:
            raise rejected(
                RejectCode.BAD_SIGNATURE, "不支持的签名类型", f"signature type is not {SIGNATURE_TYPE}"
            )
        signature = decode_signature(signature_text)
        try:
            key.verify(signature, signed_message(timestamp, nonce, body), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise rejected(
                RejectCode.BAD_SIGNATURE, "微信支付签名验证失败", "WeChat Pay signature does not verify"
            ) from None

        check_nonce(nonce, name=NONCE_HEADER)
        sent_at = parse_unix_timestamp(timestamp, name=TIMESTAMP_HEADER)
        check_timestamp_window(sent_at, now=now, window=self._window)

        envelope = load_json_object(body)
        transaction = load_json_object(self._decrypt(envelope), what="resource")

        if require_text(transaction, "mchid") != self._mchid:
            raise rejected(RejectCode.WRONG_MERCHANT, "商户号不符", "mchid is not our merchant id")
        if self._app_ids and require_text(transaction, "appid") not in self._app_ids:
            raise rejected(RejectCode.WRONG_MERCHANT, "应用号不符", "appid is not one of our app ids")
        if require_text(transaction, "trade_state") != "SUCCESS":
            raise rejected(RejectCode.NOT_PAID, "交易状态不是 SUCCESS", "trade_state is not SUCCESS")

        amount = require_object(transaction, "amount")
        payer = require_object(transaction, "payer")
        return PaymentNotice(
            channel=self.channel,
            transaction_id=require_text(transaction, "transaction_id"),
            order_reference=require_text(transaction, "out_trade_no"),
            amount_fen=require_fen(amount, "total", name="amount.total"),
            currency=require_currency(amount, "currency", name="amount.currency"),
            paid_at=require_aware_datetime(transaction, "success_time"),
            payer_account=require_text(payer, "openid", name="payer.openid"),
            raw=body,
        )

    def acknowledge(self, rejection: CallbackRejected | None) -> Acknowledgement:
        # APIv3: success is HTTP 200/204 with no body; anything else is 4XX/5XX with {"code":"FAIL",...},
        # after which WeChat resends (15 s, 15 s, 30 s, 3 min, ... for about a day).
        if rejection is None or rejection.code is RejectCode.NOT_PAID:
            return Acknowledgement(204, "application/json", b"")
        payload = {"code": "FAIL", "message": rejection.message}
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        return Acknowledgement(rejection.http_status, "application/json", body)

    def _key_for(self, serial: str, *, now: datetime) -> RSAPublicKey:
        if serial.startswith(PUBLIC_KEY_ID_PREFIX):
            key = self._public_keys.get(serial)
            if key is None:
                raise rejected(
                    RejectCode.UNKNOWN_KEY, "未知的微信支付公钥ID", "unknown WeChat Pay public key id"
                )
            return key
        try:
            number = int(serial, 16)
        except ValueError:
            number = -1
        found = self._certificates.get(number)
        if found is None:
            raise rejected(
                RejectCode.UNKNOWN_KEY,
                "未知的平台证书序列号",
                "unknown WeChat Pay platform certificate serial",
            )
        certificate, key = found
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            raise rejected(
                RejectCode.UNKNOWN_KEY,
                "平台证书不在有效期内",
                "WeChat Pay platform certificate is not valid at this time",
            )
        return key

    def _decrypt(self, envelope: Mapping[str, object]) -> bytes:
        resource = require_object(envelope, "resource")
        original_type = resource.get("original_type", "transaction")
        if original_type != "transaction":
            raise rejected(
                RejectCode.MALFORMED,
                "不是支付通知（original_type）",
                "not a payment notification (original_type)",
            )
        if require_text(resource, "algorithm", name="resource.algorithm") != RESOURCE_ALGORITHM:
            raise rejected(
                RejectCode.MALFORMED, "不支持的加密算法", f"resource.algorithm is not {RESOURCE_ALGORITHM}"
            )
        nonce = require_text(resource, "nonce", name="resource.nonce")
        associated_data = resource.get("associated_data", "")
        ciphertext = resource.get("ciphertext")
        if not isinstance(associated_data, str) or not isinstance(ciphertext, str) or not ciphertext:
            raise rejected(
                RejectCode.MALFORMED,
                "resource 缺少密文或附加数据",
                "resource.ciphertext or resource.associated_data is missing or not a string",
            )
        try:
            return self._aead.decrypt(
                nonce.encode(), base64.b64decode(ciphertext, validate=True), associated_data.encode()
            )
        except (InvalidTag, ValueError):  # ValueError: bad base64 or a nonce length AES-GCM refuses
            raise rejected(
                RejectCode.DECRYPT_FAILED, "通知内容解密失败", "resource does not decrypt with our APIv3 key"
            ) from None


# --- building notifications (tests, demo data, the simulator) --------------------------------------------


def wechat_transaction(
    *,
    mchid: str,
    appid: str,
    transaction_id: str,
    out_trade_no: str,
    total_fen: int,
    success_time: datetime,
    openid: str,
    trade_state: str = "SUCCESS",
    currency: str = "CNY",
) -> dict[str, object]:
    """The decrypted ``resource`` of a payment notification, shaped as WeChat sends it."""
    require_aware(success_time)
    return {
        "appid": appid,
        "mchid": mchid,
        "out_trade_no": out_trade_no,
        "transaction_id": transaction_id,
        "trade_type": "JSAPI",
        "trade_state": trade_state,
        "trade_state_desc": "支付成功",
        "bank_type": "OTHERS",
        "attach": "",
        "success_time": success_time.isoformat(timespec="seconds"),
        "payer": {"openid": openid},
        "amount": {
            "total": total_fen,
            "payer_total": total_fen,
            "currency": currency,
            "payer_currency": currency,
        },
    }


def encrypt_wechat_resource(
    api_v3_key: str | bytes,
    plaintext: bytes,
    *,
    associated_data: str = "transaction",
    nonce: str | None = None,
) -> dict[str, str]:
    """A notification's ``resource``: ``plaintext`` sealed with AEAD_AES_256_GCM under the APIv3 key."""
    nonce = nonce if nonce is not None else secrets.token_hex(6)  # 12 characters, as WeChat uses
    sealed = AESGCM(api_v3_key_bytes(api_v3_key)).encrypt(nonce.encode(), plaintext, associated_data.encode())
    return {
        "original_type": "transaction",
        "algorithm": RESOURCE_ALGORITHM,
        "ciphertext": base64.b64encode(sealed).decode("ascii"),
        "associated_data": associated_data,
        "nonce": nonce,
    }


def notification_body(resource: Mapping[str, str], *, created_at: datetime) -> bytes:
    """The notification envelope around an encrypted ``resource``."""
    envelope = {
        "id": "EV-" + secrets.token_hex(10),
        "create_time": created_at.isoformat(timespec="seconds"),
        "resource_type": "encrypt-resource",
        "event_type": "TRANSACTION.SUCCESS",
        "summary": "支付成功",
        "resource": dict(resource),
    }
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()


def sign_wechat_notification(
    private_key: RSAPrivateKey,
    serial: str,
    body: bytes,
    timestamp: int | datetime,
    nonce: str | None = None,
) -> dict[str, str]:
    """The ``Wechatpay-*`` headers for ``body``, signed as WeChat Pay does."""
    if isinstance(timestamp, datetime):
        require_aware(timestamp)
        timestamp = int(timestamp.timestamp())
    nonce = nonce if nonce is not None else secrets.token_hex(16).upper()
    signature = private_key.sign(
        signed_message(str(timestamp), nonce, body), padding.PKCS1v15(), hashes.SHA256()
    )
    return {
        SERIAL_HEADER: serial,
        SIGNATURE_HEADER: base64.b64encode(signature).decode("ascii"),
        TIMESTAMP_HEADER: str(timestamp),
        NONCE_HEADER: nonce,
        SIGNATURE_TYPE_HEADER: SIGNATURE_TYPE,
    }


def build_wechat_notification(
    *,
    private_key: RSAPrivateKey,
    serial: str,
    api_v3_key: str | bytes,
    transaction: Mapping[str, object],
    sent_at: datetime,
) -> tuple[dict[str, str], bytes]:
    """Headers and body of a complete notification for ``transaction``: encrypted, then signed."""
    plaintext = json.dumps(transaction, ensure_ascii=False, separators=(",", ":")).encode()
    body = notification_body(encrypt_wechat_resource(api_v3_key, plaintext), created_at=sent_at)
    return sign_wechat_notification(private_key, serial, body, sent_at), body

"""The custody bank's payment callback (托管银行到账通知): Ed25519 over timestamp, nonce and the raw body.

The request carries four headers::

    X-Bank-Key-Id:    which of the bank's keys signed (lets the bank rotate keys)
    X-Bank-Timestamp: unix seconds when the bank signed
    X-Bank-Nonce:     a random string, printable ASCII without spaces
    X-Bank-Signature: base64 of the Ed25519 signature over  f"{timestamp}\\n{nonce}\\n".encode() + body

and a UTF-8 JSON body::

    {"transaction_id": "...", "order_reference": "...", "amount_fen": 1234, "currency": "CNY",
     "paid_at": "2024-03-01T10:00:00+08:00", "payer_account": "..."}

The signature is checked over the bytes as received before anything is parsed; then the timestamp must lie
within the window (five minutes either way by default). The nonce is not remembered here: a replay inside the
window carries the same ``transaction_id`` and is absorbed by the ledger's idempotency.

``sign_bank_callback`` and ``bank_callback_body`` build such requests for tests, demo data and the simulator.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from custody.channels.base import (
    DEFAULT_TIMESTAMP_WINDOW,
    Acknowledgement,
    PaymentNotice,
    check_nonce,
    check_timestamp_window,
    decode_signature,
    header,
    load_json_object,
    parse_unix_timestamp,
    require_aware,
    require_aware_datetime,
    require_currency,
    require_fen,
    require_text,
)
from custody.channels.errors import CallbackRejected, RejectCode, rejected

KEY_ID_HEADER = "X-Bank-Key-Id"
TIMESTAMP_HEADER = "X-Bank-Timestamp"
NONCE_HEADER = "X-Bank-Nonce"
SIGNATURE_HEADER = "X-Bank-Signature"


def signed_message(timestamp: str, nonce: str, body: bytes) -> bytes:
    return f"{timestamp}\n{nonce}\n".encode() + body


def load_public_key(encoded: str) -> Ed25519PublicKey:
    """A bank public key from settings: base64 of the raw 32 bytes. Raises ValueError if it is not one."""
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise ValueError("not base64") from exc
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


class BankVerifier:
    """Verifies custody-bank callbacks against the bank's public keys, by key id."""

    channel = "bank"

    def __init__(
        self,
        *,
        keys: Mapping[str, Ed25519PublicKey],
        timestamp_window: timedelta = DEFAULT_TIMESTAMP_WINDOW,
    ) -> None:
        self._keys = dict(keys)
        self._window = timestamp_window

    def verify(self, *, headers: Mapping[str, str], body: bytes, now: datetime) -> PaymentNotice:
        require_aware(now)
        key_id = header(headers, KEY_ID_HEADER)
        timestamp = header(headers, TIMESTAMP_HEADER)
        nonce = header(headers, NONCE_HEADER)
        signature_text = header(headers, SIGNATURE_HEADER)

        key = self._keys.get(key_id)
        if key is None:
            raise rejected(RejectCode.UNKNOWN_KEY, "未知的银行密钥编号", "unknown bank key id")
        signature = decode_signature(signature_text)
        try:
            key.verify(signature, signed_message(timestamp, nonce, body))
        except InvalidSignature:
            raise rejected(
                RejectCode.BAD_SIGNATURE, "银行签名验证失败", "bank signature does not verify"
            ) from None

        # Authentic from here on; what follows checks that it is fresh and well formed.
        check_nonce(nonce, name=NONCE_HEADER)
        sent_at = parse_unix_timestamp(timestamp, name=TIMESTAMP_HEADER)
        check_timestamp_window(sent_at, now=now, window=self._window)

        data = load_json_object(body)
        return PaymentNotice(
            channel=self.channel,
            transaction_id=require_text(data, "transaction_id"),
            order_reference=require_text(data, "order_reference"),
            amount_fen=require_fen(data, "amount_fen"),
            currency=require_currency(data, "currency"),
            paid_at=require_aware_datetime(data, "paid_at"),
            payer_account=require_text(data, "payer_account"),
            raw=body,
        )

    def acknowledge(self, rejection: CallbackRejected | None) -> Acknowledgement:
        if rejection is None:
            payload = {"code": "SUCCESS", "message": "成功 / OK"}
            return Acknowledgement(200, "application/json", _json_bytes(payload))
        payload = {"code": rejection.code.value, "message": rejection.message}
        return Acknowledgement(rejection.http_status, "application/json", _json_bytes(payload))


def _json_bytes(payload: Mapping[str, object]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


# --- building callbacks (tests, demo data, the bank simulator) -------------------------------------------


def bank_callback_body(
    *,
    transaction_id: str,
    order_reference: str,
    amount_fen: int,
    paid_at: datetime,
    payer_account: str,
    currency: str = "CNY",
) -> bytes:
    """The JSON body a custody bank sends for one payment."""
    require_aware(paid_at)
    return _json_bytes(
        {
            "transaction_id": transaction_id,
            "order_reference": order_reference,
            "amount_fen": int(amount_fen),
            "currency": currency,
            "paid_at": paid_at.isoformat(),
            "payer_account": payer_account,
        }
    )


def sign_bank_callback(
    private_key: Ed25519PrivateKey,
    key_id: str,
    body: bytes,
    timestamp: int | datetime,
    nonce: str | None = None,
) -> dict[str, str]:
    """The four ``X-Bank-*`` headers for ``body``, signed at ``timestamp`` (unix seconds or an aware time)."""
    if isinstance(timestamp, datetime):
        require_aware(timestamp)
        timestamp = int(timestamp.timestamp())
    nonce = nonce if nonce is not None else secrets.token_hex(16)
    signature = private_key.sign(signed_message(str(timestamp), nonce, body))
    return {
        KEY_ID_HEADER: key_id,
        TIMESTAMP_HEADER: str(timestamp),
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: base64.b64encode(signature).decode("ascii"),
    }

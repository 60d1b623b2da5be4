"""Payment-channel callbacks (支付渠道回调): verify what a bank, WeChat Pay or Alipay says about a payment.

Each channel's verifier turns one callback request into a ``PaymentNotice`` or raises ``CallbackRejected``::

    from custody.channels import CallbackRejected, RejectCode, get_verifier
    from ledger import clock

    verifier = get_verifier("wechat")
    try:
        notice = verifier.verify(headers=request.headers, body=request.body, now=clock.now())
    except CallbackRejected as rejection:
        if rejection.code is RejectCode.NOT_PAID:   # authentic, but no money moved: answer success
            ...
        ack = verifier.acknowledge(rejection)
    else:
        ...  # record the payment, idempotent on (notice.channel, notice.transaction_id)
        ack = verifier.acknowledge(None)
    return HttpResponse(ack.body, status=ack.status, content_type=ack.content_type)

Pass ``request.body`` exactly as received: the bank and WeChat Pay sign those bytes. This package is pure
code: no models, no database, no network, no logging of payloads.

Settings (``CUSTODY_CHANNELS``; only the channels in use need an entry)::

    CUSTODY_CHANNELS = {
        "bank": {
            # key id (X-Bank-Key-Id) -> base64 of the bank's raw 32-byte Ed25519 public key
            "keys": {"bank-1": "<base64>"},
            "timestamp_window_seconds": 300,          # optional, default 300
        },
        "wechat": {
            "mchid": "1900000001",                    # our merchant id (商户号)
            "api_v3_key": "<32 characters>",          # APIv3密钥: a secret, read it from the environment
            # Either or both, while migrating from platform certificates to WeChat Pay public keys:
            "platform_certificates": ["-----BEGIN CERTIFICATE-----..."],   # serial taken from the certificate
            "public_keys": {"PUB_KEY_ID_0114...": "-----BEGIN PUBLIC KEY-----..."},
            "app_ids": ["wx..."],                     # optional: also require one of these appid
            "timestamp_window_seconds": 300,
        },
        "alipay": {
            "app_id": "2021000000000000",
            # Alipay's public key for this app (支付宝公钥), PEM or the bare base64 the console shows;
            # a list so a rotation can overlap. A PEM certificate works too (public-key-certificate mode).
            "public_keys": ["MIIBIjANBgkq..."],
            "seller_id": "2088000000000000",          # optional: also require this seller (PID)
            "timestamp_window_seconds": 300,          # compared with notify_time, see alipay.py
        },
    }
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

from cryptography import x509
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from custody.channels.alipay import AlipayVerifier
from custody.channels.bank import BankVerifier
from custody.channels.bank import load_public_key as load_bank_public_key
from custody.channels.base import (
    DEFAULT_TIMESTAMP_WINDOW,
    Acknowledgement,
    ChannelVerifier,
    PaymentNotice,
    load_rsa_public_key,
)
from custody.channels.errors import CallbackRejected, RejectCode
from custody.channels.wechat import WechatPayVerifier

__all__ = [
    "CHANNELS",
    "Acknowledgement",
    "AlipayVerifier",
    "BankVerifier",
    "CallbackRejected",
    "ChannelVerifier",
    "PaymentNotice",
    "RejectCode",
    "UnknownChannel",
    "WechatPayVerifier",
    "build_verifier",
    "get_verifier",
]

CHANNELS = ("bank", "wechat", "alipay")


class UnknownChannel(LookupError):
    """No such channel, or it has no entry in ``CUSTODY_CHANNELS`` (an endpoint should answer 404)."""


def get_verifier(channel: str) -> ChannelVerifier:
    """The verifier for ``channel``, built from ``settings.CUSTODY_CHANNELS``.

    Built on each call (loading a few public keys is cheap), so changed settings take effect at once.
    Raises ``UnknownChannel`` for a channel that is not configured, ``ImproperlyConfigured`` for bad settings.
    """
    configured = getattr(settings, "CUSTODY_CHANNELS", None) or {}
    if channel not in CHANNELS or channel not in configured:
        raise UnknownChannel(channel)
    return build_verifier(channel, configured[channel])


def build_verifier(channel: str, config: Mapping[str, object]) -> ChannelVerifier:
    """A verifier from one ``CUSTODY_CHANNELS`` entry. Errors name the setting, never a secret's value."""
    where = f"CUSTODY_CHANNELS[{channel!r}]"
    try:
        window = _window(config, where)
        if channel == "bank":
            keys = _mapping(config, "keys", where)
            if not keys:
                raise ValueError("'keys' is empty")
            return BankVerifier(
                keys={str(k): load_bank_public_key(str(v)) for k, v in keys.items()},
                timestamp_window=window,
            )
        if channel == "wechat":
            certificates = [
                x509.load_pem_x509_certificate(str(pem).encode("ascii"))
                for pem in _sequence(config, "platform_certificates", where)
            ]
            public_keys = {
                str(key_id): load_rsa_public_key(str(pem))
                for key_id, pem in _mapping(config, "public_keys", where).items()
            }
            return WechatPayVerifier(
                mchid=_text(config, "mchid", where),
                api_v3_key=_text(config, "api_v3_key", where),
                platform_certificates=certificates,
                public_keys=public_keys,
                app_ids=[str(a) for a in _sequence(config, "app_ids", where)],
                timestamp_window=window,
            )
        if channel == "alipay":
            seller_id = config.get("seller_id")
            return AlipayVerifier(
                app_id=_text(config, "app_id", where),
                public_keys=[load_rsa_public_key(str(k)) for k in _sequence(config, "public_keys", where)],
                seller_id=str(seller_id) if seller_id else None,
                timestamp_window=window,
            )
    except (ValueError, TypeError) as exc:
        # The exception text describes the shape (too short, not base64), not the value.
        raise ImproperlyConfigured(f"{where}: {exc}") from None
    raise UnknownChannel(channel)


def _window(config: Mapping[str, object], where: str) -> timedelta:
    seconds = config.get("timestamp_window_seconds")
    if seconds is None:
        return DEFAULT_TIMESTAMP_WINDOW
    if type(seconds) is not int or seconds <= 0:
        raise ImproperlyConfigured(f"{where}['timestamp_window_seconds'] must be a positive int")
    return timedelta(seconds=seconds)


def _text(config: Mapping[str, object], key: str, where: str) -> str:
    value = config.get(key)
    if not isinstance(value, str) or not value:
        raise ImproperlyConfigured(f"{where}[{key!r}] must be a non-empty string")
    return value


def _mapping(config: Mapping[str, object], key: str, where: str) -> Mapping[object, object]:
    value = config.get(key, {})
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(f"{where}[{key!r}] must be a mapping")
    return value


def _sequence(config: Mapping[str, object], key: str, where: str) -> list[object]:
    value = config.get(key, [])
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        raise ImproperlyConfigured(f"{where}[{key!r}] must be a list")
    return list(value)

"""``get_verifier`` builds each channel's verifier from ``settings.CUSTODY_CHANNELS``."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from django.core.exceptions import ImproperlyConfigured
from pytest_django.fixtures import Settings

from custody.channels import (
    AlipayVerifier,
    BankVerifier,
    RejectCode,
    UnknownChannel,
    WechatPayVerifier,
    build_verifier,
    get_verifier,
)
from custody.channels.alipay import sign_alipay_notification
from custody.channels.bank import sign_bank_callback
from custody.channels.wechat import build_wechat_notification
from tests.custody.channels import test_alipay, test_bank, test_wechat
from tests.custody.channels.conftest import NOW, WechatKeys, assert_rejected

API_V3_KEY = test_wechat.API_V3_KEY
ZERO_KEY = base64.b64encode(bytes(32)).decode()
BROKEN_PEM = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"


def pem_public_key(key: RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def bare_base64_public_key(key: RSAPrivateKey) -> str:
    """The form Alipay's console shows: base64 DER without PEM armour."""
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def raw_ed25519_base64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


@pytest.fixture
def channels(
    settings: Settings, bank_key: Ed25519PrivateKey, wechat_keys: WechatKeys, alipay_key: RSAPrivateKey
) -> Settings:
    settings.CUSTODY_CHANNELS = {
        "bank": {"keys": {"bank-1": raw_ed25519_base64(bank_key)}},
        "wechat": {
            "mchid": test_wechat.MCHID,
            "api_v3_key": API_V3_KEY,
            "platform_certificates": [
                wechat_keys.certificate.public_bytes(serialization.Encoding.PEM).decode()
            ],
            "public_keys": {wechat_keys.public_key_id: pem_public_key(wechat_keys.public_key_key)},
            "app_ids": [test_wechat.APPID],
        },
        "alipay": {
            "app_id": test_alipay.APP_ID,
            "public_keys": [bare_base64_public_key(alipay_key)],
            "seller_id": test_alipay.SELLER_ID,
        },
    }
    return settings


def test_bank_from_settings(channels: Settings, bank_key: Ed25519PrivateKey) -> None:
    verifier = get_verifier("bank")
    assert isinstance(verifier, BankVerifier) and verifier.channel == "bank"
    body = test_bank.body()
    notice = verifier.verify(headers=sign_bank_callback(bank_key, "bank-1", body, NOW), body=body, now=NOW)
    assert notice.amount_fen == 480000


def test_wechat_from_settings_accepts_both_kinds_of_key(channels: Settings, wechat_keys: WechatKeys) -> None:
    verifier = get_verifier("wechat")
    assert isinstance(verifier, WechatPayVerifier) and verifier.channel == "wechat"
    for key, serial in (
        (wechat_keys.certificate_key, wechat_keys.certificate_serial),
        (wechat_keys.public_key_key, wechat_keys.public_key_id),
    ):
        headers, body = build_wechat_notification(
            private_key=key,
            serial=serial,
            api_v3_key=API_V3_KEY,
            transaction=test_wechat.transaction(),
            sent_at=NOW,
        )
        assert verifier.verify(headers=headers, body=body, now=NOW) == test_wechat.expected_notice(body)


def test_alipay_from_settings_with_a_bare_base64_key(channels: Settings, alipay_key: RSAPrivateKey) -> None:
    verifier = get_verifier("alipay")
    assert isinstance(verifier, AlipayVerifier) and verifier.channel == "alipay"
    body = sign_alipay_notification(alipay_key, test_alipay.params())
    assert verifier.verify(headers={}, body=body, now=NOW).amount_fen == 1234


def test_alipay_key_may_be_pem_too(alipay_key: RSAPrivateKey) -> None:
    verifier = build_verifier(
        "alipay", {"app_id": test_alipay.APP_ID, "public_keys": [pem_public_key(alipay_key)]}
    )
    body = sign_alipay_notification(alipay_key, test_alipay.params())
    assert verifier.verify(headers={}, body=body, now=NOW).amount_fen == 1234


def test_the_window_comes_from_settings(channels: Settings, bank_key: Ed25519PrivateKey) -> None:
    body = test_bank.body()
    headers = sign_bank_callback(bank_key, "bank-1", body, NOW - timedelta(seconds=600))
    assert_rejected(
        RejectCode.STALE_TIMESTAMP, lambda: get_verifier("bank").verify(headers=headers, body=body, now=NOW)
    )
    channels.CUSTODY_CHANNELS = {
        "bank": {**channels.CUSTODY_CHANNELS["bank"], "timestamp_window_seconds": 900},
    }
    assert get_verifier("bank").verify(headers=headers, body=body, now=NOW).amount_fen == 480000


@pytest.mark.parametrize("channel", ["paypal", "", "BANK"])
def test_an_unknown_channel(channels: Settings, channel: str) -> None:
    with pytest.raises(UnknownChannel):
        get_verifier(channel)


def test_a_channel_without_settings_is_unknown(settings: Settings) -> None:
    settings.CUSTODY_CHANNELS = {"bank": {"keys": {"bank-1": base64.b64encode(bytes(32)).decode()}}}
    with pytest.raises(UnknownChannel):
        get_verifier("wechat")
    del settings.CUSTODY_CHANNELS
    with pytest.raises(UnknownChannel):
        get_verifier("bank")


@pytest.mark.parametrize(
    ("channel", "config", "complaint"),
    [
        ("bank", {"keys": {}}, "empty"),
        ("bank", {"keys": {"bank-1": "not base64!"}}, "base64"),
        ("bank", {"keys": {"bank-1": base64.b64encode(bytes(31)).decode()}}, "32 bytes"),
        ("bank", {"keys": ["bank-1"]}, "mapping"),
        ("bank", {"keys": {"bank-1": ZERO_KEY}, "timestamp_window_seconds": "300"}, "positive int"),
        ("wechat", {"mchid": "1", "api_v3_key": "secret-but-too-short", "public_keys": {}}, "32 bytes"),
        ("wechat", {"mchid": "1", "api_v3_key": "k" * 32}, "platform certificate or a public key"),
        ("wechat", {"mchid": "1", "api_v3_key": "k" * 32, "platform_certificates": "PEM"}, "list"),
        ("wechat", {"api_v3_key": "k" * 32}, "mchid"),
        ("alipay", {"app_id": "1", "public_keys": []}, "public key"),
        ("alipay", {"app_id": "1", "public_keys": [BROKEN_PEM]}, "alipay"),
    ],
)  # fmt: skip
def test_bad_settings_are_improperly_configured_without_the_secret(
    channel: str, config: dict[str, object], complaint: str
) -> None:
    with pytest.raises(ImproperlyConfigured, match=complaint) as info:
        build_verifier(channel, config)
    assert "secret-but-too-short" not in str(info.value)
    assert f"CUSTODY_CHANNELS[{channel!r}]" in str(info.value)


def test_a_short_rsa_key_is_refused() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ImproperlyConfigured, match="at least 2048"):
        build_verifier("alipay", {"app_id": "1", "public_keys": [pem_public_key(weak)]})

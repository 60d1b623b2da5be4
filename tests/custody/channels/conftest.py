"""Key material made at test time for the channel verifiers, and a helper to assert a rejection.

Nothing here is a real key: the bank's Ed25519 key, WeChat Pay's platform certificate and public key, and
Alipay's key are generated once per test session, so tests need no files and no network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from custody.channels import CallbackRejected, RejectCode

BEIJING = ZoneInfo("Asia/Shanghai")
# Business "now" of every test: callbacks are signed relative to it.
NOW = datetime(2024, 3, 1, 10, 0, 0, tzinfo=BEIJING)


def rejection(verify: Callable[[], object]) -> CallbackRejected:
    """The ``CallbackRejected`` that ``verify()`` raises (fails the test if it returns instead)."""
    with pytest.raises(CallbackRejected) as info:
        verify()
    return info.value


def assert_rejected(code: RejectCode, verify: Callable[[], object]) -> CallbackRejected:
    error = rejection(verify)
    assert error.code is code, f"expected {code.value}, got {error.code.value}: {error.message}"
    return error


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def self_signed_certificate(
    key: rsa.RSAPrivateKey, *, serial: int, not_before: datetime, not_after: datetime
) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tenpay.com (test)"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com Root CA (test)"),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )


@dataclass(frozen=True)
class WechatKeys:
    """WeChat Pay's two kinds of signing key: a platform certificate and a public key with its id."""

    certificate_key: rsa.RSAPrivateKey
    certificate: x509.Certificate
    certificate_serial: str
    public_key_key: rsa.RSAPrivateKey
    public_key_id: str


@pytest.fixture(scope="session")
def bank_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def wechat_keys() -> WechatKeys:
    certificate_key = rsa_key()
    serial = 0x5157F09EFDC096DE15EBE81A47057A7232F1B8E1
    certificate = self_signed_certificate(
        certificate_key,
        serial=serial,
        not_before=NOW - timedelta(days=30),
        not_after=NOW + timedelta(days=365),
    )
    return WechatKeys(
        certificate_key=certificate_key,
        certificate=certificate,
        certificate_serial=format(serial, "X"),
        public_key_key=rsa_key(),
        public_key_id="PUB_KEY_ID_0114232134912410000000000000",
    )


@pytest.fixture(scope="session")
def alipay_key() -> rsa.RSAPrivateKey:
    return rsa_key()


@pytest.fixture(scope="session")
def other_rsa_key() -> rsa.RSAPrivateKey:
    """A key nobody trusts: signatures made with it must never verify."""
    return rsa_key()

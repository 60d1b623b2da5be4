"""WeChat Pay APIv3 notifications: RSA signature (platform certificate or public key), AES-GCM resource."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial

import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custody.channels import CallbackRejected, PaymentNotice, RejectCode, WechatPayVerifier
from custody.channels.wechat import (
    NONCE_HEADER,
    SERIAL_HEADER,
    SIGNATURE_HEADER,
    SIGNATURE_TYPE_HEADER,
    TIMESTAMP_HEADER,
    build_wechat_notification,
    encrypt_wechat_resource,
    notification_body,
    sign_wechat_notification,
    wechat_transaction,
)
from tests.custody.channels.conftest import (
    BEIJING,
    NOW,
    WechatKeys,
    assert_rejected,
    rejection,
    rsa_key,
    self_signed_certificate,
)

MCHID = "1900000001"
APPID = "wxd678efh567hg6787"
API_V3_KEY = "a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb"
OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
SUCCESS_TIME = datetime(2024, 3, 1, 9, 59, 12, tzinfo=BEIJING)
TRANSACTION_ID = "4200002024030112345678901234"


def transaction(**overrides: object) -> dict[str, object]:
    data = wechat_transaction(
        mchid=MCHID,
        appid=APPID,
        transaction_id=TRANSACTION_ID,
        out_trade_no="PAY-2024-000042",
        total_fen=480000,
        success_time=SUCCESS_TIME,
        openid=OPENID,
    )
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def expected_notice(raw: bytes) -> PaymentNotice:
    return PaymentNotice(
        channel="wechat",
        transaction_id=TRANSACTION_ID,
        order_reference="PAY-2024-000042",
        amount_fen=480000,
        currency="CNY",
        paid_at=SUCCESS_TIME,
        payer_account=OPENID,
        raw=raw,
    )


@pytest.fixture(scope="module")
def verifier(wechat_keys: WechatKeys) -> WechatPayVerifier:
    # Both kinds of key at once: a merchant migrating from certificates to public keys.
    return WechatPayVerifier(
        mchid=MCHID,
        api_v3_key=API_V3_KEY,
        platform_certificates=[wechat_keys.certificate],
        public_keys={wechat_keys.public_key_id: wechat_keys.public_key_key.public_key()},
        app_ids=[APPID],
    )


def by_certificate(
    keys: WechatKeys, tx: dict[str, object], at: datetime = NOW
) -> tuple[dict[str, str], bytes]:
    return build_wechat_notification(
        private_key=keys.certificate_key,
        serial=keys.certificate_serial,
        api_v3_key=API_V3_KEY,
        transaction=tx,
        sent_at=at,
    )


def by_public_key(
    keys: WechatKeys, tx: dict[str, object], at: datetime = NOW
) -> tuple[dict[str, str], bytes]:
    return build_wechat_notification(
        private_key=keys.public_key_key,
        serial=keys.public_key_id,
        api_v3_key=API_V3_KEY,
        transaction=tx,
        sent_at=at,
    )


Signer = Callable[[WechatKeys, dict[str, object]], tuple[dict[str, str], bytes]]


def resigned(key: RSAPrivateKey, serial: str, resource: dict[str, str]) -> tuple[dict[str, str], bytes]:
    """A correctly signed notification around ``resource`` as given (tampered or not)."""
    body = notification_body(resource, created_at=NOW)
    return sign_wechat_notification(key, serial, body, NOW), body


@pytest.mark.parametrize(
    "signer", [by_certificate, by_public_key], ids=["platform-certificate", "public-key-id"]
)
def test_both_kinds_of_key_verify_and_yield_the_exact_notice(
    verifier: WechatPayVerifier, wechat_keys: WechatKeys, signer: Signer
) -> None:
    headers, body = signer(wechat_keys, transaction())
    assert verifier.verify(headers=headers, body=body, now=NOW) == expected_notice(body)


def test_headers_as_django_gives_them(verifier: WechatPayVerifier, wechat_keys: WechatKeys) -> None:
    headers, body = by_certificate(wechat_keys, transaction())
    lowered = {name.lower(): value for name, value in headers.items()}
    assert verifier.verify(headers=lowered, body=body, now=NOW).amount_fen == 480000


def test_signature_type_header_is_optional(verifier: WechatPayVerifier, wechat_keys: WechatKeys) -> None:
    headers, body = by_public_key(wechat_keys, transaction())
    del headers[SIGNATURE_TYPE_HEADER]
    assert verifier.verify(headers=headers, body=body, now=NOW).transaction_id == TRANSACTION_ID


# --- tampering ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def notifications(wechat_keys: WechatKeys) -> dict[bool, tuple[dict[str, str], bytes]]:
    """One notification per kind of key, fixed for a whole property test (ids and nonces are random)."""
    return {
        False: by_certificate(wechat_keys, transaction()),
        True: by_public_key(wechat_keys, transaction()),
    }


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), use_public_key=st.booleans())
def test_any_single_byte_change_of_the_body_is_a_bad_signature(
    verifier: WechatPayVerifier,
    notifications: dict[bool, tuple[dict[str, str], bytes]],
    data: st.DataObject,
    use_public_key: bool,
) -> None:
    headers, body = notifications[use_public_key]
    position = data.draw(st.integers(0, len(body) - 1), label="position")
    replacement = data.draw(st.integers(0, 255).filter(lambda b: b != body[position]), label="byte")
    tampered = body[:position] + bytes([replacement]) + body[position + 1 :]
    assert_rejected(
        RejectCode.BAD_SIGNATURE, lambda: verifier.verify(headers=headers, body=tampered, now=NOW)
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    header_name=st.sampled_from([SIGNATURE_HEADER, TIMESTAMP_HEADER, NONCE_HEADER]),
)
def test_any_character_change_of_a_signed_header_is_a_bad_signature(
    verifier: WechatPayVerifier,
    notifications: dict[bool, tuple[dict[str, str], bytes]],
    data: st.DataObject,
    header_name: str,
) -> None:
    headers, body = notifications[False]
    original = headers[header_name]
    position = data.draw(st.integers(0, len(original) - 1), label="position")
    alphabet = st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
    replacement = data.draw(alphabet.filter(lambda c: c != original[position]), label="character")
    tampered = {**headers, header_name: original[:position] + replacement + original[position + 1 :]}
    assert_rejected(RejectCode.BAD_SIGNATURE, lambda: verifier.verify(headers=tampered, body=body, now=NOW))


def test_the_last_signature_character_cannot_be_swapped_for_an_equivalent_one(
    verifier: WechatPayVerifier, wechat_keys: WechatKeys
) -> None:
    # A 256-byte signature leaves 4 unused bits before "==": lenient decoders read several strings as one.
    headers, body = by_certificate(wechat_keys, transaction())
    signature = headers[SIGNATURE_HEADER]
    assert signature.endswith("==")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = signature[-3]
    same_bytes = [c for c in alphabet if c != last and alphabet.index(c) >> 4 == alphabet.index(last) >> 4]
    assert len(same_bytes) == 15
    for c in same_bytes:
        variant = signature[:-3] + c + "=="
        assert base64.b64decode(variant) == base64.b64decode(signature)
        assert_rejected(
            RejectCode.BAD_SIGNATURE,
            partial(verifier.verify, headers={**headers, SIGNATURE_HEADER: variant}, body=body, now=NOW),
        )


def test_a_signature_by_the_certificate_key_under_the_public_key_id_is_a_bad_signature(
    verifier: WechatPayVerifier, wechat_keys: WechatKeys
) -> None:
    headers, body = by_certificate(wechat_keys, transaction())
    headers[SERIAL_HEADER] = wechat_keys.public_key_id
    assert_rejected(RejectCode.BAD_SIGNATURE, lambda: verifier.verify(headers=headers, body=body, now=NOW))


def test_a_signature_by_an_untrusted_key_is_a_bad_signature(
    verifier: WechatPayVerifier, wechat_keys: WechatKeys, other_rsa_key: RSAPrivateKey
) -> None:
    headers, body = build_wechat_notification(
        private_key=other_rsa_key,
        serial=wechat_keys.certificate_serial,
        api_v3_key=API_V3_KEY,
        transaction=transaction(),
        sent_at=NOW,
    )
    assert_rejected(RejectCode.BAD_SIGNATURE, lambda: verifier.verify(headers=headers, body=body, now=NOW))


def test_another_signature_type_is_a_bad_signature(
    verifier: WechatPayVerifier, wechat_keys: WechatKeys
) -> None:
    headers, body = by_certificate(wechat_keys, transaction())
    headers[SIGNATURE_TYPE_HEADER] = "WECHATPAY2-SM2-WITH-SM3"
    assert_rejected(RejectCode.BAD_SIGNATURE, lambda: verifier.verify(headers=headers, body=body, now=NOW))


@pytest.mark.parametrize(
    "serial",
    [
        "5157F09EFDC096DE15EBE81A47057A7232F1B8E2",
        "PUB_KEY_ID_0114232134912410000000000001",
        "not-hex",
        "PUB_KEY_ID_",
    ],
)
def test_an_unknown_serial_or_public_key_id_is_unknown_key(
    verifier: WechatPayVerifier, wechat_keys: WechatKeys, serial: str
) -> None:
    headers, body = by_certificate(wechat_keys, transaction())
    headers[SERIAL_HEADER] = serial
    assert_rejected(RejectCode.UNKNOWN_KEY, lambda: verifier.verify(headers=headers, body=body, now=NOW))


def test_serials_compare_as_numbers(verifier: WechatPayVerifier, wechat_keys: WechatKeys) -> None:
    # WeChat writes serials in upper case; a leading zero or lower case names the same certificate.
    headers, body = by_certificate(wechat_keys, transaction())
    headers[SERIAL_HEADER] = "0" + wechat_keys.certificate_serial.lower()
    assert verifier.verify(headers=headers, body=body, now=NOW).amount_fen == 480000


@pytest.mark.parametrize(
    ("not_before", "not_after"),
    [
        (NOW - timedelta(days=400), NOW - timedelta(days=1)),
        (NOW + timedelta(days=1), NOW + timedelta(days=400)),
    ],
    ids=["expired", "not-yet-valid"],
)
def test_a_certificate_outside_its_validity_is_unknown_key(not_before: datetime, not_after: datetime) -> None:
    key = rsa_key()
    certificate = self_signed_certificate(key, serial=0xABCDEF, not_before=not_before, not_after=not_after)
    verifier = WechatPayVerifier(mchid=MCHID, api_v3_key=API_V3_KEY, platform_certificates=[certificate])
    headers, body = build_wechat_notification(
        private_key=key, serial="ABCDEF", api_v3_key=API_V3_KEY, transaction=transaction(), sent_at=NOW
    )
    error = assert_rejected(
        RejectCode.UNKNOWN_KEY, lambda: verifier.verify(headers=headers, body=body, now=NOW)
    )
    assert "有效期" in error.message


@pytest.mark.parametrize("offset_seconds", [-301, 301, -3600])
def test_a_timestamp_outside_the_window_is_stale(
    verifier: WechatPayVerifier, wechat_keys: WechatKeys, offset_seconds: int
) -> None:
    headers, body = by_public_key(wechat_keys, transaction(), at=NOW + timedelta(seconds=offset_seconds))
    assert_rejected(RejectCode.STALE_TIMESTAMP, lambda: verifier.verify(headers=headers, body=body, now=NOW))
    assert verifier.verify(headers=headers, body=body, now=NOW + timedelta(seconds=offset_seconds)).amount_fen


# --- the encrypted resource ---------------------------------------------------------------------------------


def sealed(tx: dict[str, object] | bytes, key: str = API_V3_KEY) -> dict[str, str]:
    plaintext = tx if isinstance(tx, bytes) else json.dumps(tx).encode()
    return encrypt_wechat_resource(key, plaintext, nonce="fdasflkja484")


def test_tampered_ciphertext_is_decrypt_failed(verifier: WechatPayVerifier, wechat_keys: WechatKeys) -> None:
    resource = sealed(transaction())
    ciphertext = bytearray(base64.b64decode(resource["ciphertext"]))
    for position in (0, len(ciphertext) // 2, len(ciphertext) - 1):  # first byte, middle, inside the GCM tag
        flipped = bytearray(ciphertext)
        flipped[position] ^= 0x01
        tampered = {**resource, "ciphertext": base64.b64encode(bytes(flipped)).decode()}
        headers, body = resigned(wechat_keys.certificate_key, wechat_keys.certificate_serial, tampered)
        assert_rejected(
            RejectCode.DECRYPT_FAILED, partial(verifier.verify, headers=headers, body=body, now=NOW)
        )


@pytest.mark.parametrize(
    "change",
    [
        {"associated_data": "refund"},
        {"nonce": "fdasflkja485"},
        {"nonce": "short"},
        {"ciphertext": "***not base64***"},
    ],
    ids=["associated-data", "nonce", "nonce-length", "ciphertext-not-base64"],
)
def test_changed_decryption_inputs_are_decrypt_failed(
    verifier: WechatPayVerifier, wechat_keys: WechatKeys, change: dict[str, str]
) -> None:
    headers, body = resigned(
        wechat_keys.public_key_key, wechat_keys.public_key_id, {**sealed(transaction()), **change}
    )
    assert_rejected(RejectCode.DECRYPT_FAILED, lambda: verifier.verify(headers=headers, body=body, now=NOW))


def test_a_resource_sealed_with_another_api_key_is_decrypt_failed(
    verifier: WechatPayVerifier, wechat_keys: WechatKeys
) -> None:
    resource = sealed(transaction(), key="b" * 32)
    headers, body = resigned(wechat_keys.public_key_key, wechat_keys.public_key_id, resource)
    assert_rejected(RejectCode.DECRYPT_FAILED, lambda: verifier.verify(headers=headers, body=body, now=NOW))


@pytest.mark.parametrize(
    "tx",
    [transaction(mchid="1900000002"), transaction(appid="wx0000000000000000")],
    ids=["mchid", "appid"],
)
def test_another_merchant_or_app_is_wrong_merchant(
    verifier: WechatPayVerifier, wechat_keys: WechatKeys, tx: dict[str, object]
) -> None:
    headers, body = by_certificate(wechat_keys, tx)
    assert_rejected(RejectCode.WRONG_MERCHANT, lambda: verifier.verify(headers=headers, body=body, now=NOW))


def test_appid_is_only_checked_when_configured(wechat_keys: WechatKeys) -> None:
    verifier = WechatPayVerifier(
        mchid=MCHID, api_v3_key=API_V3_KEY, platform_certificates=[wechat_keys.certificate]
    )
    headers, body = by_certificate(wechat_keys, transaction(appid="wx0000000000000000"))
    assert verifier.verify(headers=headers, body=body, now=NOW).amount_fen == 480000


@pytest.mark.parametrize("state", ["NOTPAY", "CLOSED", "REFUND", "PAYERROR", "USERPAYING"])
def test_a_trade_that_is_not_paid_is_not_paid_and_acknowledged(
    verifier: WechatPayVerifier, wechat_keys: WechatKeys, state: str
) -> None:
    headers, body = by_certificate(wechat_keys, transaction(trade_state=state, success_time=None, payer=None))
    error = assert_rejected(RejectCode.NOT_PAID, lambda: verifier.verify(headers=headers, body=body, now=NOW))
    assert verifier.acknowledge(error).status == 204


def amount(**changes: object) -> dict[str, object]:
    return {"total": 480000, "payer_total": 480000, "currency": "CNY", "payer_currency": "CNY", **changes}


@pytest.mark.parametrize(
    "tx",
    [
        pytest.param(transaction(amount=amount(total=4800.5)), id="float-total"),
        pytest.param(transaction(amount=amount(total="480000")), id="string-total"),
        pytest.param(transaction(amount=amount(total=0)), id="zero-total"),
        pytest.param(transaction(amount=amount(currency="USD")), id="currency"),
        pytest.param(transaction(amount={"currency": "CNY"}), id="missing-total"),
        pytest.param(transaction(amount=None), id="missing-amount"),
        pytest.param(transaction(amount=[480000]), id="amount-not-object"),
        pytest.param(transaction(payer=None), id="missing-payer"),
        pytest.param(transaction(payer={"openid": ""}), id="empty-openid"),
        pytest.param(transaction(transaction_id=None), id="missing-transaction-id"),
        pytest.param(transaction(out_trade_no=None), id="missing-out-trade-no"),
        pytest.param(transaction(success_time="2024-03-01T09:59:12"), id="naive-success-time"),
        pytest.param(transaction(mchid=None), id="missing-mchid"),
        pytest.param(transaction(trade_state=None), id="missing-trade-state"),
    ],
)
def test_a_malformed_transaction_is_malformed(
    verifier: WechatPayVerifier, wechat_keys: WechatKeys, tx: dict[str, object]
) -> None:
    headers, body = by_certificate(wechat_keys, tx)
    assert_rejected(RejectCode.MALFORMED, lambda: verifier.verify(headers=headers, body=body, now=NOW))


def test_an_integral_float_total_is_malformed(verifier: WechatPayVerifier, wechat_keys: WechatKeys) -> None:
    plaintext = json.dumps(transaction()).replace('"total": 480000', '"total": 480000.0').encode()
    assert b"480000.0" in plaintext
    headers, body = resigned(wechat_keys.certificate_key, wechat_keys.certificate_serial, sealed(plaintext))
    assert_rejected(RejectCode.MALFORMED, lambda: verifier.verify(headers=headers, body=body, now=NOW))


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"id": "EV-1"}',
        b'{"resource": "x"}',
        json.dumps({"resource": {**sealed(transaction()), "algorithm": "AEAD_SM4_GCM"}}).encode(),
        json.dumps({"resource": {**sealed(transaction()), "original_type": "refund"}}).encode(),
        json.dumps({"resource": {**sealed(transaction()), "ciphertext": 5}}).encode(),
        json.dumps({"resource": sealed(b"not json")}).encode(),
        json.dumps({"resource": sealed(b"[]")}).encode(),
    ],
    ids=["not-json", "no-resource", "resource-not-object", "algorithm", "refund", "ciphertext-type",
         "plain-not-json", "plain-not-object"],
)  # fmt: skip
def test_a_malformed_envelope_is_malformed(
    verifier: WechatPayVerifier, wechat_keys: WechatKeys, body: bytes
) -> None:
    headers = sign_wechat_notification(wechat_keys.certificate_key, wechat_keys.certificate_serial, body, NOW)
    assert_rejected(RejectCode.MALFORMED, lambda: verifier.verify(headers=headers, body=body, now=NOW))


@pytest.mark.parametrize("missing", [SERIAL_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, NONCE_HEADER])
def test_a_missing_header_is_malformed(
    verifier: WechatPayVerifier, wechat_keys: WechatKeys, missing: str
) -> None:
    headers, body = by_certificate(wechat_keys, transaction())
    del headers[missing]
    assert_rejected(RejectCode.MALFORMED, lambda: verifier.verify(headers=headers, body=body, now=NOW))


def test_rejections_never_show_the_openid(verifier: WechatPayVerifier, wechat_keys: WechatKeys) -> None:
    headers, body = by_certificate(wechat_keys, transaction(amount=amount(total=1.5)))
    error = rejection(lambda: verifier.verify(headers=headers, body=body, now=NOW))
    assert OPENID not in str(error)
    assert OPENID not in verifier.acknowledge(error).body.decode()


def test_acknowledgements(verifier: WechatPayVerifier) -> None:
    assert verifier.acknowledge(None).status == 204
    refused = verifier.acknowledge(CallbackRejected(RejectCode.DECRYPT_FAILED))
    assert refused.status == 400
    assert json.loads(refused.body)["code"] == "FAIL"


def test_configuration_is_checked(wechat_keys: WechatKeys) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        WechatPayVerifier(mchid=MCHID, api_v3_key="short", platform_certificates=[wechat_keys.certificate])
    with pytest.raises(ValueError, match="platform certificate or a public key"):
        WechatPayVerifier(mchid=MCHID, api_v3_key=API_V3_KEY)
    with pytest.raises(ValueError, match="PUB_KEY_ID_"):
        WechatPayVerifier(
            mchid=MCHID, api_v3_key=API_V3_KEY, public_keys={"KEY1": wechat_keys.public_key_key.public_key()}
        )

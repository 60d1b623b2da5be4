"""The custody bank's callback: Ed25519 over timestamp, nonce and the raw JSON body."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custody.channels import BankVerifier, CallbackRejected, PaymentNotice, RejectCode
from custody.channels.bank import (
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    bank_callback_body,
    sign_bank_callback,
)
from tests.custody.channels.conftest import BEIJING, NOW, assert_rejected, rejection

KEY_ID = "bank-1"
PAYER_ACCOUNT = "6222020200112233445"
PAID_AT = datetime(2024, 3, 1, 9, 58, 30, tzinfo=BEIJING)


def body(**overrides: object) -> bytes:
    fields: dict[str, object] = {
        "transaction_id": "BK20240301000123",
        "order_reference": "PAY-2024-000042",
        "amount_fen": 480000,
        "currency": "CNY",
        "paid_at": "2024-03-01T09:58:30+08:00",
        "payer_account": PAYER_ACCOUNT,
    }
    fields.update(overrides)
    return json.dumps({k: v for k, v in fields.items() if v is not None}).encode()


@pytest.fixture(scope="module")
def verifier(bank_key: Ed25519PrivateKey) -> BankVerifier:
    return BankVerifier(
        keys={KEY_ID: bank_key.public_key(), "bank-2": Ed25519PrivateKey.generate().public_key()}
    )


def signed(key: Ed25519PrivateKey, payload: bytes, at: datetime = NOW) -> dict[str, str]:
    return sign_bank_callback(key, KEY_ID, payload, at, "5K8264ILTKCH16CQ2502SI8ZNMTM67VS")


def test_a_valid_callback_yields_the_exact_notice(
    verifier: BankVerifier, bank_key: Ed25519PrivateKey
) -> None:
    payload = body()
    notice = verifier.verify(headers=signed(bank_key, payload), body=payload, now=NOW)
    assert notice == PaymentNotice(
        channel="bank",
        transaction_id="BK20240301000123",
        order_reference="PAY-2024-000042",
        amount_fen=480000,
        currency="CNY",
        paid_at=PAID_AT,
        payer_account=PAYER_ACCOUNT,
        raw=payload,
    )
    assert notice.raw is payload


def test_header_names_match_case_insensitively(verifier: BankVerifier, bank_key: Ed25519PrivateKey) -> None:
    payload = body()
    headers = {name.lower(): value for name, value in signed(bank_key, payload).items()}
    assert verifier.verify(headers=headers, body=payload, now=NOW).amount_fen == 480000


def test_body_builder_round_trips(verifier: BankVerifier, bank_key: Ed25519PrivateKey) -> None:
    payload = bank_callback_body(
        transaction_id="T1", order_reference="R1", amount_fen=1, paid_at=PAID_AT, payer_account="acct"
    )
    notice = verifier.verify(
        headers=sign_bank_callback(bank_key, KEY_ID, payload, NOW), body=payload, now=NOW
    )
    assert (notice.transaction_id, notice.order_reference, notice.amount_fen, notice.paid_at) == (
        "T1",
        "R1",
        1,
        PAID_AT,
    )


# --- tampering ----------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_byte_change_of_the_body_is_a_bad_signature(
    verifier: BankVerifier, bank_key: Ed25519PrivateKey, data: st.DataObject
) -> None:
    payload = body()
    headers = signed(bank_key, payload)
    position = data.draw(st.integers(0, len(payload) - 1), label="position")
    replacement = data.draw(st.integers(0, 255).filter(lambda b: b != payload[position]), label="byte")
    tampered = payload[:position] + bytes([replacement]) + payload[position + 1 :]
    assert_rejected(
        RejectCode.BAD_SIGNATURE, lambda: verifier.verify(headers=headers, body=tampered, now=NOW)
    )


def test_added_or_removed_bytes_are_a_bad_signature(
    verifier: BankVerifier, bank_key: Ed25519PrivateKey
) -> None:
    payload = body()
    headers = signed(bank_key, payload)
    for tampered in (payload + b" ", b" " + payload, payload[:-1], b""):
        assert_rejected(
            RejectCode.BAD_SIGNATURE, partial(verifier.verify, headers=headers, body=tampered, now=NOW)
        )


BASE64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


@pytest.mark.parametrize("header_name", [SIGNATURE_HEADER, TIMESTAMP_HEADER, NONCE_HEADER])
def test_changing_any_character_of_a_signed_header_is_a_bad_signature(
    verifier: BankVerifier, bank_key: Ed25519PrivateKey, header_name: str
) -> None:
    payload = body()
    headers = signed(bank_key, payload)
    original = headers[header_name]
    alphabet = BASE64_ALPHABET if header_name == SIGNATURE_HEADER else "0123456789ABCZ"
    changed = 0
    for position in range(len(original)):
        for replacement in alphabet:
            if replacement == original[position]:
                continue
            value = original[:position] + replacement + original[position + 1 :]
            tampered = {**headers, header_name: value}
            assert_rejected(
                RejectCode.BAD_SIGNATURE, partial(verifier.verify, headers=tampered, body=payload, now=NOW)
            )
            changed += 1
    assert changed >= len(original) * (len(alphabet) - 1)


def test_the_signature_of_another_key_is_a_bad_signature(verifier: BankVerifier) -> None:
    payload = body()
    headers = signed(Ed25519PrivateKey.generate(), payload)
    assert_rejected(RejectCode.BAD_SIGNATURE, lambda: verifier.verify(headers=headers, body=payload, now=NOW))


def test_a_signature_under_another_trusted_key_id_is_a_bad_signature(
    verifier: BankVerifier, bank_key: Ed25519PrivateKey
) -> None:
    payload = body()
    headers = {**signed(bank_key, payload), "X-Bank-Key-Id": "bank-2"}
    assert_rejected(RejectCode.BAD_SIGNATURE, lambda: verifier.verify(headers=headers, body=payload, now=NOW))


def test_an_unknown_key_id_is_unknown_key(verifier: BankVerifier, bank_key: Ed25519PrivateKey) -> None:
    payload = body()
    headers = {**signed(bank_key, payload), "X-Bank-Key-Id": "bank-9"}
    assert_rejected(RejectCode.UNKNOWN_KEY, lambda: verifier.verify(headers=headers, body=payload, now=NOW))


# --- freshness ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset_seconds", "accepted"),
    [(0, True), (-300, True), (300, True), (-301, False), (301, False), (-86400, False), (86400, False)],
)
def test_the_timestamp_must_lie_within_five_minutes_either_way(
    verifier: BankVerifier, bank_key: Ed25519PrivateKey, offset_seconds: int, accepted: bool
) -> None:
    payload = body()
    headers = signed(bank_key, payload, at=NOW + timedelta(seconds=offset_seconds))
    if accepted:
        assert verifier.verify(headers=headers, body=payload, now=NOW).transaction_id == "BK20240301000123"
    else:
        assert_rejected(
            RejectCode.STALE_TIMESTAMP, lambda: verifier.verify(headers=headers, body=payload, now=NOW)
        )


def test_the_window_is_configurable(bank_key: Ed25519PrivateKey) -> None:
    narrow = BankVerifier(keys={KEY_ID: bank_key.public_key()}, timestamp_window=timedelta(seconds=60))
    payload = body()
    headers = signed(bank_key, payload, at=NOW - timedelta(seconds=120))
    assert_rejected(RejectCode.STALE_TIMESTAMP, lambda: narrow.verify(headers=headers, body=payload, now=NOW))
    wide = BankVerifier(keys={KEY_ID: bank_key.public_key()}, timestamp_window=timedelta(minutes=10))
    assert wide.verify(headers=headers, body=payload, now=NOW).amount_fen == 480000


def test_now_must_be_aware(verifier: BankVerifier, bank_key: Ed25519PrivateKey) -> None:
    payload = body()
    with pytest.raises(ValueError, match="aware"):
        verifier.verify(headers=signed(bank_key, payload), body=payload, now=NOW.replace(tzinfo=None))


# --- malformed ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["X-Bank-Key-Id", TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER])
def test_a_missing_header_is_malformed(
    verifier: BankVerifier, bank_key: Ed25519PrivateKey, missing: str
) -> None:
    payload = body()
    headers = {k: v for k, v in signed(bank_key, payload).items() if k != missing}
    error = assert_rejected(
        RejectCode.MALFORMED, lambda: verifier.verify(headers=headers, body=payload, now=NOW)
    )
    assert missing in error.message


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b"[1, 2]", id="array"),
        pytest.param(body(amount_fen=12.3), id="float-amount"),
        pytest.param(body().replace(b'"amount_fen": 480000', b'"amount_fen": 480000.0'), id="integral-float"),
        pytest.param(body().replace(b'"amount_fen": 480000', b'"amount_fen": 4.8e5'), id="exponent"),
        pytest.param(body(amount_fen="480000"), id="string-amount"),
        pytest.param(body(amount_fen=True), id="bool-amount"),
        pytest.param(body(amount_fen=0), id="zero-amount"),
        pytest.param(body(amount_fen=-100), id="negative-amount"),
        pytest.param(body(amount_fen=2**63), id="huge-amount"),
        pytest.param(body().replace(b'"amount_fen": 480000', b'"amount_fen": NaN'), id="nan"),
        pytest.param(body()[:-1] + b', "amount_fen": 1}', id="duplicate-key"),
        pytest.param(body(currency="USD"), id="currency"),
        pytest.param(body(paid_at="2024-03-01T09:58:30"), id="naive-time"),
        pytest.param(body(paid_at="yesterday"), id="not-a-time"),
        # Valid ISO 8601, but not a moment Python can hold in UTC (nor, then, in the database).
        pytest.param(body(paid_at="0001-01-01T00:00:00+14:00"), id="time-before-the-calendar"),
        pytest.param(body(paid_at="9999-12-31T23:59:59-14:00"), id="time-after-the-calendar"),
        pytest.param(body(transaction_id=123), id="numeric-id"),
        pytest.param(body(order_reference="x" * 129), id="long-reference"),
        pytest.param(body(payer_account="622\n202"), id="control-character"),
        *(pytest.param(body(**{field: None}), id=f"missing-{field}") for field in (
            "transaction_id", "order_reference", "amount_fen", "currency", "paid_at", "payer_account"
        )),
    ],
)  # fmt: skip
def test_a_signed_but_malformed_body_is_malformed(
    verifier: BankVerifier, bank_key: Ed25519PrivateKey, payload: bytes
) -> None:
    headers = signed(bank_key, payload)
    assert_rejected(RejectCode.MALFORMED, lambda: verifier.verify(headers=headers, body=payload, now=NOW))


@pytest.mark.parametrize(
    ("timestamp", "nonce"),
    [
        ("+1709258400", "n"),
        ("1709258400.0", "n"),
        (" 1709258400", "n"),
        ("1709258400", "a b"),
        ("1709258400", "é"),
        ("999999999999", "n"),  # unix seconds, but past the year 9999
    ],
)
def test_signed_but_malformed_timestamp_or_nonce_is_malformed(
    verifier: BankVerifier, bank_key: Ed25519PrivateKey, timestamp: str, nonce: str
) -> None:
    payload = body()
    signature = bank_key.sign(f"{timestamp}\n{nonce}\n".encode() + payload)
    headers = {
        "X-Bank-Key-Id": KEY_ID,
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: base64.b64encode(signature).decode(),
    }
    assert_rejected(RejectCode.MALFORMED, lambda: verifier.verify(headers=headers, body=payload, now=NOW))


def test_rejections_and_repr_never_show_the_payer_account(
    verifier: BankVerifier, bank_key: Ed25519PrivateKey
) -> None:
    payload = body(amount_fen=12.3)
    error = rejection(lambda: verifier.verify(headers=signed(bank_key, payload), body=payload, now=NOW))
    assert PAYER_ACCOUNT not in str(error)
    good = body()
    notice = verifier.verify(headers=signed(bank_key, good), body=good, now=NOW)
    assert PAYER_ACCOUNT not in repr(notice)
    assert "BK20240301000123" in repr(notice)


def test_acknowledgements(verifier: BankVerifier) -> None:
    accepted = verifier.acknowledge(None)
    assert (accepted.status, json.loads(accepted.body)["code"]) == (200, "SUCCESS")
    refused = verifier.acknowledge(CallbackRejected(RejectCode.BAD_SIGNATURE))
    assert refused.status == 401
    assert json.loads(refused.body) == {"code": "bad_signature", "message": "签名验证失败 / bad signature"}


def test_signing_accepts_unix_seconds(bank_key: Ed25519PrivateKey) -> None:
    unix = int(NOW.timestamp())
    assert sign_bank_callback(bank_key, KEY_ID, b"{}", unix, "n") == sign_bank_callback(
        bank_key, KEY_ID, b"{}", NOW.astimezone(UTC), "n"
    )

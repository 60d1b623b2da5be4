"""Alipay asynchronous notifications: RSA2 over the sorted, decoded parameters of a form-encoded body."""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import datetime, timedelta
from functools import partial
from urllib.parse import quote_plus, urlencode

import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custody.channels import AlipayVerifier, CallbackRejected, PaymentNotice, RejectCode
from custody.channels.alipay import (
    alipay_notification_params,
    parse_form,
    sign_alipay_notification,
    signing_content,
)
from tests.custody.channels.conftest import BEIJING, NOW, assert_rejected, rejection

APP_ID = "2021004100000001"
SELLER_ID = "2088621000000001"
BUYER_ID = "2088102177846880"
GMT_PAYMENT = datetime(2024, 3, 1, 9, 59, 40, tzinfo=BEIJING)


def params(**overrides: str | None) -> dict[str, str]:
    data = alipay_notification_params(
        app_id=APP_ID,
        trade_no="2024030122001446880500012345",
        out_trade_no="PAY-2024-000042",
        total_fen=1234,
        gmt_payment=GMT_PAYMENT,
        notify_time=NOW,
        buyer_id=BUYER_ID,
        seller_id=SELLER_ID,
    )
    data.update({k: v for k, v in overrides.items() if v is not None})
    return {k: v for k, v in data.items() if overrides.get(k, "present") is not None}


@pytest.fixture(scope="module")
def verifier(alipay_key: RSAPrivateKey) -> AlipayVerifier:
    return AlipayVerifier(app_id=APP_ID, public_keys=[alipay_key.public_key()], seller_id=SELLER_ID)


def verify(verifier: AlipayVerifier, body: bytes, now: datetime = NOW) -> PaymentNotice:
    # Alipay signs no header; the verifier must not need any.
    return verifier.verify(headers={}, body=body, now=now)


def test_a_valid_notification_yields_the_exact_notice(
    verifier: AlipayVerifier, alipay_key: RSAPrivateKey
) -> None:
    body = sign_alipay_notification(alipay_key, params())
    assert verify(verifier, body) == PaymentNotice(
        channel="alipay",
        transaction_id="2024030122001446880500012345",
        order_reference="PAY-2024-000042",
        amount_fen=1234,
        currency="CNY",
        paid_at=GMT_PAYMENT,
        payer_account=BUYER_ID,
        raw=body,
    )


def test_the_signing_content_is_sorted_decoded_and_skips_empty_values() -> None:
    content = signing_content(
        {"b": "2", "a": "x y&z", "sign": "S", "sign_type": "RSA2", "empty": "", "c": "中文"}
    )
    assert content == "a=x y&z&b=2&c=中文"


def test_a_gbk_notification_with_chinese_values_verifies(alipay_key: RSAPrivateKey) -> None:
    verifier = AlipayVerifier(app_id=APP_ID, public_keys=[alipay_key.public_key()])
    body = sign_alipay_notification(alipay_key, params(charset="GBK", subject="少儿编程课 第一期"))
    assert quote_plus("少儿编程课 第一期", encoding="gbk") in body.decode()  # percent-encoded GBK bytes
    assert parse_form(body)["subject"] == "少儿编程课 第一期"
    assert verify(verifier, body).amount_fen == 1234


@pytest.mark.parametrize("status", ["TRADE_SUCCESS", "TRADE_FINISHED"])
def test_both_paid_statuses_are_payments(
    verifier: AlipayVerifier, alipay_key: RSAPrivateKey, status: str
) -> None:
    body = sign_alipay_notification(alipay_key, params(trade_status=status))
    assert verify(verifier, body).transaction_id == "2024030122001446880500012345"


@pytest.mark.parametrize(("total", "fen"), [("12.34", 1234), ("12.3", 1230), ("5", 500), ("0.01", 1)])
def test_total_amount_converts_exactly(
    verifier: AlipayVerifier, alipay_key: RSAPrivateKey, total: str, fen: int
) -> None:
    body = sign_alipay_notification(alipay_key, params(total_amount=total))
    assert verify(verifier, body).amount_fen == fen


def test_buyer_open_id_stands_in_for_buyer_id(verifier: AlipayVerifier, alipay_key: RSAPrivateKey) -> None:
    body = sign_alipay_notification(
        alipay_key, params(buyer_id=None, buyer_open_id="074a1CcTG1LelxKe4xQC0zg")
    )
    assert verify(verifier, body).payer_account == "074a1CcTG1LelxKe4xQC0zg"


def test_an_old_payment_notified_now_is_accepted(verifier: AlipayVerifier, alipay_key: RSAPrivateKey) -> None:
    # The window applies to notify_time (this delivery), not to when the buyer paid.
    paid_yesterday = (NOW - timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S")
    body = sign_alipay_notification(alipay_key, params(gmt_payment=paid_yesterday))
    assert verify(verifier, body).paid_at == NOW - timedelta(days=1)


# --- tampering ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signed_body(alipay_key: RSAPrivateKey) -> bytes:
    """One signed notification, fixed for a whole property test (its notify_id is random)."""
    return sign_alipay_notification(alipay_key, params())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_single_byte_change_of_the_body_changes_what_is_recorded(
    verifier: AlipayVerifier, signed_body: bytes, data: st.DataObject
) -> None:
    """Alipay signs decoded parameters, not bytes, so a change that decodes the same (``%2B`` -> ``%2b``)
    still verifies. What must hold: every other change is rejected, and none alters the notice."""
    body = signed_body
    original = verify(verifier, body)
    position = data.draw(st.integers(0, len(body) - 1), label="position")
    replacement = data.draw(st.integers(0, 255).filter(lambda b: b != body[position]), label="byte")
    tampered = body[:position] + bytes([replacement]) + body[position + 1 :]
    try:
        notice = verify(verifier, tampered)
    except CallbackRejected as error:
        assert error.code in (RejectCode.BAD_SIGNATURE, RejectCode.MALFORMED)
    else:
        # Only an unsigned (empty) parameter or an equivalent escape can have changed.
        assert signing_content(parse_form(tampered)) == signing_content(parse_form(body))
        assert parse_form(tampered)["sign"] == parse_form(body)["sign"]
        assert notice == replace(original, raw=tampered)


def test_a_change_that_decodes_the_same_is_the_same_notice(
    verifier: AlipayVerifier, alipay_key: RSAPrivateKey
) -> None:
    body = sign_alipay_notification(alipay_key, params())
    assert b"%3A" in body  # the colons of notify_time
    same = body.replace(b"%3A", b"%3a", 1)
    assert verify(verifier, same) == replace(verify(verifier, body), raw=same)


@pytest.mark.parametrize(
    "changes",
    [
        {"total_amount": "1234.00"},
        {"out_trade_no": "PAY-2024-000043"},
        {"trade_no": "2024030122001446880500012346"},
        {"buyer_id": "2088102177846881"},
        {"trade_status": "TRADE_SUCCES"},
        {"gmt_payment": "2024-03-01 09:59:41"},
        {"extra": "added after signing"},
    ],
)
def test_changing_a_signed_parameter_is_a_bad_signature(
    verifier: AlipayVerifier, alipay_key: RSAPrivateKey, changes: dict[str, str]
) -> None:
    signed = parse_form(sign_alipay_notification(alipay_key, params()))
    body = urlencode({**signed, **changes}, quote_via=quote_plus).encode()
    assert_rejected(RejectCode.BAD_SIGNATURE, lambda: verify(verifier, body))


def test_an_added_empty_parameter_is_not_signed_and_changes_nothing(
    verifier: AlipayVerifier, alipay_key: RSAPrivateKey
) -> None:
    body = sign_alipay_notification(alipay_key, params())
    assert verify(verifier, body + b"&passback_params=").amount_fen == 1234


@pytest.mark.parametrize("sign_type", ["RSA", "MD5", ""])
def test_a_sign_type_other_than_rsa2_is_a_bad_signature(
    verifier: AlipayVerifier, alipay_key: RSAPrivateKey, sign_type: str
) -> None:
    signed = parse_form(sign_alipay_notification(alipay_key, params()))
    body = urlencode({**signed, "sign_type": sign_type}, quote_via=quote_plus).encode()
    assert_rejected(RejectCode.BAD_SIGNATURE, lambda: verify(verifier, body))


def test_a_flipped_signature_bit_is_a_bad_signature(
    verifier: AlipayVerifier, alipay_key: RSAPrivateKey
) -> None:
    signed = parse_form(sign_alipay_notification(alipay_key, params()))
    raw = bytearray(base64.b64decode(signed["sign"]))
    for position in (0, 100, len(raw) - 1):
        flipped = bytearray(raw)
        flipped[position] ^= 0x80
        body = urlencode(
            {**signed, "sign": base64.b64encode(bytes(flipped)).decode()}, quote_via=quote_plus
        ).encode()
        assert_rejected(RejectCode.BAD_SIGNATURE, partial(verify, verifier, body))


def test_a_signature_by_another_key_is_a_bad_signature(
    verifier: AlipayVerifier, other_rsa_key: RSAPrivateKey
) -> None:
    body = sign_alipay_notification(other_rsa_key, params())
    assert_rejected(RejectCode.BAD_SIGNATURE, lambda: verify(verifier, body))


def test_during_a_key_rotation_both_keys_verify(
    alipay_key: RSAPrivateKey, other_rsa_key: RSAPrivateKey
) -> None:
    rotating = AlipayVerifier(
        app_id=APP_ID, public_keys=[alipay_key.public_key(), other_rsa_key.public_key()]
    )
    for key in (alipay_key, other_rsa_key):
        assert verify(rotating, sign_alipay_notification(key, params())).amount_fen == 1234


# --- freshness, merchant, status ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset_seconds", "accepted"), [(-300, True), (300, True), (-301, False), (3600, False)]
)
def test_notify_time_must_lie_within_the_window(
    verifier: AlipayVerifier, alipay_key: RSAPrivateKey, offset_seconds: int, accepted: bool
) -> None:
    notify_time = (NOW + timedelta(seconds=offset_seconds)).strftime("%Y-%m-%d %H:%M:%S")
    body = sign_alipay_notification(alipay_key, params(notify_time=notify_time))
    if accepted:
        assert verify(verifier, body).amount_fen == 1234
    else:
        assert_rejected(RejectCode.STALE_TIMESTAMP, lambda: verify(verifier, body))


def test_notify_time_is_beijing_time(verifier: AlipayVerifier, alipay_key: RSAPrivateKey) -> None:
    # 10:00 in Beijing is 02:00 UTC; a verifier reading it as UTC would find it eight hours off.
    body = sign_alipay_notification(alipay_key, params(notify_time="2024-03-01 10:00:00"))
    assert verify(verifier, body, now=datetime.fromisoformat("2024-03-01T02:00:00+00:00")).amount_fen == 1234


@pytest.mark.parametrize("changes", [{"app_id": "2021004100000002"}, {"seller_id": "2088621000000002"}])
def test_another_app_or_seller_is_wrong_merchant(
    verifier: AlipayVerifier, alipay_key: RSAPrivateKey, changes: dict[str, str]
) -> None:
    body = sign_alipay_notification(alipay_key, params(**changes))
    assert_rejected(RejectCode.WRONG_MERCHANT, lambda: verify(verifier, body))


@pytest.mark.parametrize("status", ["WAIT_BUYER_PAY", "TRADE_CLOSED"])
def test_an_unpaid_trade_is_not_paid_and_acknowledged(
    verifier: AlipayVerifier, alipay_key: RSAPrivateKey, status: str
) -> None:
    body = sign_alipay_notification(alipay_key, params(trade_status=status, gmt_payment=None))
    error = assert_rejected(RejectCode.NOT_PAID, lambda: verify(verifier, body))
    assert verifier.acknowledge(error).body == b"success"


# --- malformed ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        *(
            {"total_amount": bad}
            for bad in ("12.345", "1e3", "-12.34", "12.", ".5", "012.34", "0.00", "12,34", "１２")
        ),
        {"total_amount": None},
        {"trade_no": None},
        {"out_trade_no": None},
        {"gmt_payment": None},
        {"gmt_payment": "2024/03/01 09:59:40"},
        {"gmt_payment": "2024-02-30 09:59:40"},
        {"gmt_payment": "0001-01-01 00:00:00"},  # Beijing time before the first UTC moment
        {"notify_time": None},
        {"notify_time": "2024-03-01T10:00:00+08:00"},
        {"buyer_id": None},
        {"trade_status": None},
        {"app_id": None},
        {"out_trade_no": "x" * 129},
    ],
    ids=lambda changes: ",".join(f"{k}={v!r}"[:30] for k, v in changes.items()),
)
def test_a_signed_but_malformed_notification_is_malformed(
    verifier: AlipayVerifier, alipay_key: RSAPrivateKey, changes: dict[str, str | None]
) -> None:
    body = sign_alipay_notification(alipay_key, params(**changes))
    assert_rejected(RejectCode.MALFORMED, lambda: verify(verifier, body))


@pytest.mark.parametrize(
    "body",
    [b"", b"a=1&&b=2", b"a", b"=1", b"a=\xe4", b"a=%E4%B8", b"a=1&a=1", b"charset=latin-1&a=1", b"a=1",
     b"a%00=1", b"a+b=1"],
    ids=["empty", "empty-part", "no-equals", "no-name", "non-ascii", "broken-utf8", "duplicate", "charset",
         "unsigned", "control-in-name", "space-in-name"],
)  # fmt: skip
def test_a_broken_form_is_malformed(verifier: AlipayVerifier, body: bytes) -> None:
    assert_rejected(RejectCode.MALFORMED, lambda: verify(verifier, body))


def test_rejections_never_show_the_buyer(verifier: AlipayVerifier, alipay_key: RSAPrivateKey) -> None:
    body = sign_alipay_notification(alipay_key, params(total_amount="12.345"))
    error = rejection(lambda: verify(verifier, body))
    assert BUYER_ID not in str(error) and "12.345" not in str(error)


def test_acknowledgements(verifier: AlipayVerifier) -> None:
    assert verifier.acknowledge(None).body == b"success"
    refused = verifier.acknowledge(CallbackRejected(RejectCode.BAD_SIGNATURE))
    assert (refused.status, refused.body) == (401, b"fail")


def test_a_verifier_needs_a_key() -> None:
    with pytest.raises(ValueError, match="public key"):
        AlipayVerifier(app_id=APP_ID, public_keys=[])

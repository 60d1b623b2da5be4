"""The shared pieces: exact amounts, strict JSON, canonical base64, the notice's invariants, the errors."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial

import pytest

from custody.channels import CallbackRejected, PaymentNotice, RejectCode
from custody.channels.base import (
    check_timestamp_window,
    decode_signature,
    header,
    load_json_object,
    yuan_to_fen,
)
from custody.channels.errors import HTTP_STATUS
from tests.custody.channels.conftest import NOW, assert_rejected


@pytest.mark.parametrize(
    ("text", "fen"),
    [("12.34", 1234), ("12.3", 1230), ("12", 1200), ("0.01", 1), ("0.1", 10), ("5000", 500000),
     ("99999999.99", 9999999999), ("0.07", 7), ("1.10", 110)],
)  # fmt: skip
def test_yuan_strings_convert_exactly(text: str, fen: int) -> None:
    assert yuan_to_fen(text, name="total_amount") == fen


@pytest.mark.parametrize(
    "text",
    ["12.345", "0.001", "0", "0.00", "-1", "+1", "1e2", "1E2", "12.", ".5", "012", " 12", "12 ", "NaN",
     "Infinity", "", "1_000", "١٢", "12.3.4"],
)  # fmt: skip
def test_inexact_or_odd_yuan_strings_are_malformed(text: str) -> None:
    error = assert_rejected(RejectCode.MALFORMED, lambda: yuan_to_fen(text, name="total_amount"))
    assert "total_amount" in error.message


def test_strict_json_keeps_non_integers_exact_and_refuses_duplicates() -> None:
    parsed = load_json_object(b'{"a": 12.30, "b": 7}')
    assert parsed == {"a": Decimal("12.30"), "b": 7}
    assert type(parsed["b"]) is int
    for bad in (b'{"a": 1, "a": 2}', b'{"a": {"b": 1, "b": 1}}', b'{"a": Infinity}', b"[" * 100_000):
        assert_rejected(RejectCode.MALFORMED, partial(load_json_object, bad))


def test_signatures_must_be_canonical_base64() -> None:
    signature = bytes(range(64))
    text = base64.b64encode(signature).decode()
    assert decode_signature(text) == signature
    for bad in (text.rstrip("="), text + "=", text[:-3] + "B==", " " + text, text.replace("A", "-"), ""):
        if bad == text:
            continue
        assert_rejected(RejectCode.BAD_SIGNATURE, partial(decode_signature, bad))


def test_the_window_is_inclusive_and_symmetric() -> None:
    window = timedelta(minutes=5)
    for offset in (timedelta(0), window, -window):
        check_timestamp_window(NOW + offset, now=NOW, window=window)
    for offset in (window + timedelta(seconds=1), -window - timedelta(seconds=1)):
        assert_rejected(
            RejectCode.STALE_TIMESTAMP,
            partial(check_timestamp_window, NOW + offset, now=NOW, window=window),
        )


def test_header_lookup_ignores_case_and_refuses_empty_values() -> None:
    assert header({"x-bank-nonce": "n1"}, "X-Bank-Nonce") == "n1"
    assert_rejected(RejectCode.MALFORMED, lambda: header({"X-Bank-Nonce": ""}, "X-Bank-Nonce"))


def notice(**changes: object) -> PaymentNotice:
    fields: dict[str, object] = {
        "channel": "bank",
        "transaction_id": "T1",
        "order_reference": "R1",
        "amount_fen": 100,
        "currency": "CNY",
        "paid_at": NOW,
        "payer_account": "6222020200112233445",
        "raw": b"{}",
    }
    fields.update(changes)
    return PaymentNotice(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {"amount_fen": 1.5},
        {"amount_fen": 0},
        {"amount_fen": True},
        {"amount_fen": -1},
        {"paid_at": datetime(2024, 3, 1)},
    ],
)
def test_a_notice_cannot_hold_an_inexact_amount_or_a_naive_time(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        notice(**changes)


def test_a_notice_keeps_personal_data_out_of_its_repr() -> None:
    text = repr(notice())
    assert "6222020200112233445" not in text and "raw" not in text
    assert "T1" in text and "amount_fen=100" in text


def test_every_code_has_a_chinese_and_english_default_message_and_a_status() -> None:
    for code in RejectCode:
        error = CallbackRejected(code)
        zh, en = error.message.split(" / ")
        assert any("\u4e00" <= ch <= "\u9fff" for ch in zh), code
        assert en.isascii() and en, code
        assert str(error).startswith(f"{code.value}: ")
        assert error.http_status == HTTP_STATUS[code]
    assert CallbackRejected("bad_signature").code is RejectCode.BAD_SIGNATURE
    with pytest.raises(ValueError):
        CallbackRejected("no_such_code")

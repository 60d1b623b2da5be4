"""Every writer round-trips through its parser: random statements -> write -> parse -> equal.

The statements are random but valid (they add up). Text is drawn from Chinese and lower-case letters, digits
and the punctuation that gives writers trouble (quotes, commas, slashes, colons, leading = + - @), but no
upper-case ASCII, so it never happens to spell one of our references (HT…, PO…) that the readers would lift
out of free text into a blank reference field, nor an MT940 keyword.
"""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciliation.formats import (
    CAMT053,
    CSV,
    MT940,
    XLSX,
    Statement,
    StatementError,
    StatementLine,
    detect_format,
    parse_statement,
    write_camt053,
    write_csv,
    write_mt940,
    write_xlsx,
)

FIXTURES = Path(__file__).parent / "fixtures"

TEXT_CHARACTERS = st.one_of(
    st.characters(categories=["Lo"], max_codepoint=0x9FFF),
    st.characters(categories=["Ll", "Nd"], max_codepoint=0x24F),
    st.sampled_from(" ,.;:/()（）、，。\"'`=+-@#&<>"),
)
# Short remittance texts, and long ones that camt.053 splits into 140-character pieces and MT940 wraps.
texts = st.one_of(
    st.text(TEXT_CHARACTERS, max_size=40), st.text(TEXT_CHARACTERS, min_size=130, max_size=300)
).map(str.strip)
names = st.text(TEXT_CHARACTERS, max_size=40).map(str.strip)
accounts = st.from_regex(r"[0-9]{0,25}", fullmatch=True)
identifiers = st.from_regex(r"[0-9A-Za-z][0-9A-Za-z-]{0,15}", fullmatch=True)
serials = st.from_regex(r"[0-9A-Za-z]{1,16}", fullmatch=True)
references = st.one_of(
    st.just(""),
    st.from_regex(r"PO[0-9]{8,12}", fullmatch=True),
    st.from_regex(r"HT[0-9]{16}", fullmatch=True),  # 18 characters: too long for an MT940 customer reference
    st.from_regex(r"[a-z0-9][a-z0-9-]{0,15}", fullmatch=True),
)
amounts = st.integers(1, 10**11).flatmap(lambda fen: st.sampled_from([fen, -fen]))


@st.composite
def statements(draw: st.DrawFn, *, running_balances: bool) -> Statement:
    start = draw(st.dates(date(2001, 1, 1), date(2078, 12, 1)))
    end = start + timedelta(days=draw(st.integers(0, 40)))
    count = draw(st.integers(0, 6))
    opening = draw(st.integers(-(10**12), 10**12))
    balance = opening
    lines = []
    for index, serial in enumerate(draw(st.lists(serials, min_size=count, max_size=count, unique=True))):
        amount = draw(amounts)
        balance += amount
        booked_on = start + timedelta(days=draw(st.integers(0, (end - start).days)))
        lines.append(
            StatementLine(
                line_number=index + 1,
                serial=serial,
                booked_on=booked_on,
                value_on=booked_on + timedelta(days=draw(st.integers(-5, 5))),
                amount_fen=amount,
                balance_after_fen=balance if running_balances and draw(st.booleans()) else None,
                counterparty_name=draw(names),
                counterparty_account=draw(accounts),
                reference=draw(references),
                summary=draw(texts),
            )
        )
    return Statement(
        account_number=draw(st.from_regex(r"[0-9]{6,30}", fullmatch=True)),
        currency=draw(st.sampled_from(["CNY", "CNY", "USD", "HKD", "EUR"])),
        statement_id=draw(identifiers),
        sequence=draw(st.one_of(st.none(), st.integers(1, 99999))),
        period_start=start,
        period_end=end,
        opening_balance_fen=opening,
        closing_balance_fen=balance,
        lines=tuple(lines),
    )


ROUND_TRIP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@ROUND_TRIP
@given(statements(running_balances=True), st.sampled_from(["gb18030", "utf-8"]))
def test_csv_round_trip(statement: Statement, encoding: str) -> None:
    data = write_csv(statement, encoding=encoding)
    assert detect_format(data) == CSV
    assert parse_statement(data) == statement


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(statements(running_balances=True))
def test_xlsx_round_trip(statement: Statement) -> None:
    data = write_xlsx(statement)
    assert detect_format(data) == XLSX
    assert parse_statement(data) == statement


@ROUND_TRIP
@given(statements(running_balances=False), st.sampled_from(["02", "08"]))
def test_camt053_round_trip(statement: Statement, version: str) -> None:
    data = write_camt053(statement, version=version)
    assert detect_format(data) == CAMT053
    assert parse_statement(data) == statement


@ROUND_TRIP
@given(statements(running_balances=False))
def test_mt940_round_trip(statement: Statement) -> None:
    data = write_mt940(statement)
    assert detect_format(data) == MT940
    assert parse_statement(data) == statement


@ROUND_TRIP
@given(statements(running_balances=True))
def test_a_statement_survives_every_format_in_turn(statement: Statement) -> None:
    # camt.053 and MT940 carry no running balances; the rest must survive CSV -> camt -> MT940 -> XLSX.
    plain = dataclasses.replace(
        statement, lines=tuple(dataclasses.replace(line, balance_after_fen=None) for line in statement.lines)
    )
    through = parse_statement(write_csv(plain))
    through = parse_statement(write_camt053(through))
    through = parse_statement(write_mt940(through))
    assert parse_statement(write_xlsx(through)) == plain


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("icbc_2024-03_gbk.csv", CSV),
        ("cmb_2024-03-18_utf8bom.csv", CSV),
        ("icbc_2024-03_writer.xlsx", XLSX),
        ("ccb_2024-03-15_camt053_v02.xml", CAMT053),
        ("ccb_2024-03-18_camt053_v08.xml", CAMT053),
        ("boc_2024-03-15.mt940", MT940),
    ],
)
def test_the_format_is_found_from_the_bytes_not_the_name(name: str, expected: str) -> None:
    data = (FIXTURES / name).read_bytes()
    assert detect_format(data) == expected
    assert detect_format(data, "misleading.csv") == expected
    assert parse_statement(data, filename="download") == parse_statement(data, format=expected)


def test_parse_statement_refuses_empty_unknown_and_mismatched_input() -> None:
    cases: list[tuple[bytes, dict[str, str], str]] = [
        (b"", {}, "format"),
        (b"   \r\n", {}, "format"),
        (b"anything", {"format": "ofx"}, "format"),
        ((FIXTURES / "boc_2024-03-15.mt940").read_bytes(), {"format": CAMT053}, "structure"),
    ]
    for data, kwargs, rule in cases:
        with pytest.raises(StatementError) as caught:
            parse_statement(data, **kwargs)
        assert caught.value.rule == rule

"""``reconciliation.formats.base``: exact amounts, dates, decoding, the statement checks and continuity."""

from __future__ import annotations

import dataclasses
from datetime import date

import pytest

from reconciliation.formats import Statement, StatementError, StatementLine, check_continuity, check_statement
from reconciliation.formats.base import (
    decode_text,
    find_reference,
    format_yuan,
    nearest_year,
    parse_amount_fen,
    parse_date,
    parse_period,
)


@pytest.mark.parametrize(
    ("text", "fen"),
    [
        ("0.01", 1),
        ("12", 1200),
        ("12.3", 1230),
        ("1234.56", 123456),
        ("1,234.56", 123456),
        ("1,234,567.00", 123456700),
        ("-1,234.56", -123456),
        ("+5.00", 500),
        ("(1,234.56)", -123456),
        ("１，２３４．５６", 123456),  # full-width digits, comma and point
        ("－８.００", -800),  # full-width minus
        ("\u22125.00", -500),  # the typographic minus sign
        ("¥12.00", 1200),
        ("￥12.00", 1200),
        ("12.00元", 1200),
        (" 7.10 ", 710),
    ],
)
def test_amounts_are_read_exactly(text: str, fen: int) -> None:
    assert parse_amount_fen(text, line_number=3, what="金额") == fen


@pytest.mark.parametrize(
    "text",
    [
        "12.345",
        "1,23.45",
        "1,2345.00",
        "12.",
        ".5",
        "1e3",
        "NaN",
        "Infinity",
        "",
        "-",
        "12,34",
        "1.2.3",
        "--5",
        "()",
    ],
)
def test_anything_else_is_refused_with_the_line(text: str) -> None:
    with pytest.raises(StatementError) as caught:
        parse_amount_fen(text, line_number=9, what="借方发生额")
    assert caught.value.line_number == 9
    assert caught.value.rule == "amount"
    assert "借方发生额" in caught.value.message and "line 9" in caught.value.message


def test_unsigned_and_plain_modes_refuse_signs_and_groups() -> None:
    with pytest.raises(StatementError):
        parse_amount_fen("-1.00", line_number=1, what="x", signed=False)
    with pytest.raises(StatementError):
        parse_amount_fen("1,000.00", line_number=1, what="x", grouping=False)
    assert parse_amount_fen("1234,5", line_number=1, what="x", decimal_comma=True) == 123450
    assert parse_amount_fen("5,", line_number=1, what="x", decimal_comma=True) == 500
    with pytest.raises(StatementError):
        parse_amount_fen("5,123", line_number=1, what="x", decimal_comma=True)


def test_format_yuan() -> None:
    assert format_yuan(123456) == "1234.56"
    assert format_yuan(-5) == "-0.05"
    assert format_yuan(123456789, grouping=True) == "1,234,567.89"
    assert format_yuan(123450, decimal_comma=True) == "1234,50"


@pytest.mark.parametrize(
    "text",
    [
        "2024-03-05",
        "2024/3/5",
        "2024.03.05",
        "20240305",
        "2024年3月5日",
        "2024-03-05 10:23:45",
        "2024-03-05T10:23",
    ],
)
def test_dates(text: str) -> None:
    assert parse_date(text, line_number=1, what="交易日期") == date(2024, 3, 5)


@pytest.mark.parametrize("text", ["2024-02-30", "2024-13-01", "05/03/2024", "2024-03", "昨天", "2024-03-05x"])
def test_bad_dates_are_refused(text: str) -> None:
    with pytest.raises(StatementError) as caught:
        parse_date(text, line_number=4, what="交易日期")
    assert (caught.value.line_number, caught.value.rule) == (4, "date")


def test_period() -> None:
    assert parse_period("2024-03-01 至 2024-03-31", line_number=1) == (date(2024, 3, 1), date(2024, 3, 31))
    assert parse_period("20240301-20240331", line_number=1) == (date(2024, 3, 1), date(2024, 3, 31))
    with pytest.raises(StatementError):
        parse_period("2024-03-01", line_number=1)


def test_decoding_tries_bom_utf8_then_gb18030() -> None:
    text = "账号：123\n摘要,学费\n"
    assert decode_text(text.encode("utf-8-sig")) == (text, "utf-8-sig")
    assert decode_text(text.encode("utf-8")) == (text, "utf-8")
    assert decode_text(text.encode("gbk")) == (text, "gb18030")
    assert decode_text(text.encode("utf-16")) == (text, "utf-16")
    # A rare character only GB18030 (not GBK) has still decodes.
    assert decode_text("𠀀 户名".encode("gb18030"))[0] == "𠀀 户名"


def test_undecodable_bytes_name_their_line() -> None:
    data = "第一行\n第二行\n".encode("gbk") + b"\x81\x20bad\n"
    with pytest.raises(StatementError) as caught:
        decode_text(data)
    assert (caught.value.line_number, caught.value.rule) == (3, "encoding")


def test_our_references_are_found_in_free_text() -> None:
    assert find_reference("学费 合同HT2024031200000027 春季") == "HT2024031200000027"
    assert find_reference("退费批次PO20240315001，明细见回单") == "PO20240315001"
    assert find_reference("HT20240312000000271") == ""  # one digit too many: not a contract number
    assert find_reference("学费") == ""


def test_an_entry_date_is_placed_in_the_year_nearest_its_value_date() -> None:
    assert nearest_year(12, 31, near=date(2025, 1, 2), line_number=1) == date(2024, 12, 31)
    assert nearest_year(1, 2, near=date(2024, 12, 31), line_number=1) == date(2025, 1, 2)
    assert nearest_year(3, 15, near=date(2024, 3, 14), line_number=1) == date(2024, 3, 15)


# --- the statement checks ---


def line(
    n: int, amount: int, balance: int | None, *, serial: str | None = None, on: int = 1
) -> StatementLine:
    return StatementLine(
        line_number=n,
        serial=f"S{n}" if serial is None else serial,
        booked_on=date(2024, 3, on),
        value_on=date(2024, 3, on),
        amount_fen=amount,
        balance_after_fen=balance,
        counterparty_name="",
        counterparty_account="",
        reference="",
        summary="",
    )


def statement(
    *lines: StatementLine, opening: int = 10_000, closing: int | None = None, **changes: object
) -> Statement:
    base = Statement(
        account_number="33050161353600001234",
        currency="CNY",
        statement_id="S-1",
        sequence=1,
        period_start=date(2024, 3, 1),
        period_end=date(2024, 3, 31),
        opening_balance_fen=opening,
        closing_balance_fen=opening + sum(x.amount_fen for x in lines) if closing is None else closing,
        lines=tuple(lines),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_a_statement_that_adds_up_passes() -> None:
    good = statement(line(5, 500, 10_500), line(6, -200, 10_300), line(7, 100, None))
    assert check_statement(good, closing_line=9) is good
    assert (good.credits_fen, good.debits_fen) == (600, 200)


def test_a_running_balance_that_does_not_follow_is_refused_at_its_line() -> None:
    with pytest.raises(StatementError) as caught:
        check_statement(
            statement(line(5, 500, 10_500), line(6, -200, 10_400), line(7, 100, 10_500)), closing_line=9
        )
    assert (caught.value.line_number, caught.value.rule) == (6, "balance")
    assert caught.value.details == {"stated_fen": 10_400, "expected_fen": 10_300}


def test_movements_that_do_not_reach_the_closing_balance_are_refused_at_the_closing_line() -> None:
    with pytest.raises(StatementError) as caught:
        check_statement(statement(line(5, 500, None), closing=10_600), closing_line=9)
    assert (caught.value.line_number, caught.value.rule) == (9, "balance")
    assert "期末余额" in caught.value.message


@pytest.mark.parametrize(
    ("bad", "rule", "at"),
    [
        (statement(line(5, 0, None)), "amount", 5),
        (statement(line(5, 100, None), line(6, 100, None, serial="S5")), "duplicate_serial", 6),
        (statement(line(5, 100, None, serial="")), "structure", 5),
        (statement(line(5, 100, None, on=1), period_start=date(2024, 3, 2)), "period", 5),
        (statement(period_start=date(2024, 4, 1)), "period", 0),
        (statement(currency="JPY"), "currency", 0),
        (statement(currency="XXX"), "currency", 0),
        (statement(account_number=""), "structure", 0),
    ],
)
def test_other_refusals(bad: Statement, rule: str, at: int) -> None:
    with pytest.raises(StatementError) as caught:
        check_statement(bad, closing_line=9)
    assert (caught.value.rule, caught.value.line_number) == (rule, at)


# --- continuity ---


def test_consecutive_statements_follow() -> None:
    march = statement(line(5, 500, None), sequence=7)
    april = statement(
        opening=march.closing_balance_fen,
        statement_id="S-2",
        sequence=8,
        period_start=date(2024, 4, 1),
        period_end=date(2024, 4, 30),
    )
    check_continuity(march, april)
    # Daily statements whose opening is dated the previous closing day follow too.
    check_continuity(march, dataclasses.replace(april, period_start=march.period_end))
    # Without sequence numbers only dates and balances are compared.
    check_continuity(dataclasses.replace(march, sequence=None), april)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"account_number": "999"}, "账号"),
        ({"currency": "USD"}, "币种"),
        ({"statement_id": "S-1"}, "重复"),
        ({"period_start": date(2024, 3, 30)}, "重叠"),
        ({"sequence": 9}, "序号"),
        ({"sequence": 1}, "序号"),  # a restart to 1 only counts in a new year
        ({"opening_balance_fen": 1}, "期初余额"),
    ],
)
def test_a_statement_that_does_not_follow_is_refused(change: dict[str, object], words: str) -> None:
    march = statement(line(5, 500, None), sequence=7)
    april = dataclasses.replace(
        statement(
            opening=march.closing_balance_fen, statement_id="S-2", sequence=8, period_start=date(2024, 4, 1)
        ),
        period_end=date(2024, 4, 30),
    )
    with pytest.raises(StatementError) as caught:
        check_continuity(march, dataclasses.replace(april, **change))  # type: ignore[arg-type]
    assert (caught.value.rule, caught.value.line_number) == ("continuity", 0)
    assert words in caught.value.message


def test_sequence_numbers_may_restart_in_a_new_year() -> None:
    december = statement(sequence=250, period_start=date(2024, 12, 31), period_end=date(2024, 12, 31))
    january = statement(
        statement_id="S-2", sequence=1, period_start=date(2025, 1, 2), period_end=date(2025, 1, 2)
    )
    check_continuity(december, january)

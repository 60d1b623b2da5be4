"""Chinese bank CSV exports: the committed fixtures read to exact values; broken files are refused whole."""

from __future__ import annotations

import dataclasses
from datetime import date
from pathlib import Path

import pytest

from reconciliation.formats import Statement, StatementError, StatementLine, parse_statement, write_csv
from reconciliation.formats.csv_bank import parse_csv
from reconciliation.formats.table import COLUMNS, escape_cell, unescape_cell

FIXTURES = Path(__file__).parent / "fixtures"
ICBC = FIXTURES / "icbc_2024-03_gbk.csv"
CMB = FIXTURES / "cmb_2024-03-18_utf8bom.csv"


def row(n: int, serial: str, on: str, amount: int, balance: int | None, name: str, account: str, ref: str,
        summary: str, value_on: str | None = None) -> StatementLine:  # fmt: skip
    return StatementLine(
        line_number=n,
        serial=serial,
        booked_on=date.fromisoformat(on),
        value_on=date.fromisoformat(value_on or on),
        amount_fen=amount,
        balance_after_fen=balance,
        counterparty_name=name,
        counterparty_account=account,
        reference=ref,
        summary=summary,
    )


ICBC_EXPECTED = Statement(
    account_number="1202020309900012345",
    currency="CNY",
    # The file names no statement id: derived from the account and the period.
    statement_id="1202020309900012345-20240301-20240331",
    sequence=None,
    period_start=date(2024, 3, 1),
    period_end=date(2024, 3, 31),
    opening_balance_fen=128_645_000,  # 1,335,050.00 after the first line's credit of 48,600.00
    closing_balance_fen=124_403_487,
    lines=(
        row(6, "2403010000123401", "2024-03-01", 4_860_000, 133_505_000, "银联商务股份有限公司",
            "31050161393600000025", "HT2024022800000012", "学费收入 合同HT2024022800000012学费"),
        row(7, "2403040000231877", "2024-03-04", 1_280_000, 134_785_000, "张伟", "6222021202004567890",
            "HT2024030200000031", "学费 HT2024030200000031"),
        row(8, "2403050000019922", "2024-03-05", -3_600_000, 131_185_000, "批量代付", "", "PO20240305001",
            "代发 退费批次PO20240305001"),
        row(9, "2403050000019923", "2024-03-05", -1_500, 131_183_500, "", "", "", "手续费 跨行汇款手续费"),
        row(10, "2403110000450011", "2024-03-11", -20_000_000, 111_183_500, "杭州启明培训学校有限公司",
            "1202020309900067890", "PO20240311002", "拨付 课消拨付PO20240311002"),
        row(11, "2403150000087654", "2024-03-15", 12_635_000, 123_818_500, "银联商务股份有限公司",
            "31050161393600000025", "", "学费收入"),
        row(12, "2403200000033310", "2024-03-20", -480_000, 123_338_500, "李娜", "6217001234567890123",
            "PO20240320007", "退费 退费PO20240320007"),
        row(13, "2403210000012001", "2024-03-21", 105_237, 123_443_737, "", "", "", "利息 结息",
            value_on="2024-03-20"),
        row(14, "2403280000077777", "2024-03-28", 960_000, 124_403_737, "王芳", "6228480012345678910",
            "HT2024032600000058", "学费 HT2024032600000058"),
        row(15, "2403290000000815", "2024-03-29", -250, 124_403_487, "", "", "", "手续费 短信服务费"),
    ),
)  # fmt: skip

CMB_EXPECTED = Statement(
    account_number="755912345610888",
    currency="CNY",
    statement_id="CMB755912345610888-20240318",
    sequence=77,
    period_start=date(2024, 3, 18),
    period_end=date(2024, 3, 18),
    opening_balance_fen=5_000_000,  # the explicit 期初余额 row
    closing_balance_fen=6_049_550,
    lines=(
        row(8, "G1803550012", "2024-03-18", 1_200_000, 6_200_000, "赵敏", "6214830212345678",
            "HT2024031500000044", "学费 春季班"),
        row(9, "G1803550013", "2024-03-18", -300_000, 5_900_000, "北京星辰教育科技有限公司",
            "110912345610301", "PO20240318001", "拨付"),
        row(10, "G1803550014", "2024-03-18", -500, 5_899_500, "", "", "", "手续费"),
        row(11, "G1803550015", "2024-03-18", 150_050, 6_049_550, "钱多多", "6222600123456789", "",
            "学费 补缴"),
    ),
)  # fmt: skip


def line_numbers(statement: Statement) -> list[int]:
    return [line.line_number for line in statement.lines]


def test_gbk_export_with_header_rows_separators_and_a_footer() -> None:
    data = ICBC.read_bytes()
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")  # the fixture really is GBK
    statement = parse_statement(data, filename=ICBC.name)
    assert statement == ICBC_EXPECTED
    assert line_numbers(statement) == line_numbers(ICBC_EXPECTED)


def test_utf8_bom_tab_separated_export_with_an_amount_and_direction_column() -> None:
    statement = parse_statement(CMB.read_bytes())
    assert statement == CMB_EXPECTED
    assert line_numbers(statement) == line_numbers(CMB_EXPECTED)


@pytest.mark.parametrize("encoding", ["gbk", "gb18030", "utf-8", "utf-8-sig", "utf-16"])
def test_the_same_export_reads_the_same_in_every_accepted_encoding(encoding: str) -> None:
    text = ICBC.read_bytes().decode("gbk")
    assert parse_csv(text.encode(encoding)) == ICBC_EXPECTED


def icbc_text() -> str:
    return ICBC.read_bytes().decode("gbk")


def refused(text: str, encoding: str = "gbk") -> StatementError:
    with pytest.raises(StatementError) as caught:
        parse_csv(text.encode(encoding))
    return caught.value


def test_totals_that_disagree_with_the_lines_are_refused_at_the_footer() -> None:
    error = refused(icbc_text().replace('"240,817.50"', '"240,817.51"'))
    assert (error.line_number, error.rule) == (16, "totals")
    assert "借方合计" in error.message
    error = refused(icbc_text().replace("合计：10笔", "合计：11笔"))
    assert (error.line_number, error.rule) == (16, "totals")


def test_an_amount_with_three_decimals_is_refused_at_its_line() -> None:
    error = refused(icbc_text().replace('"12,800.00"', '"12.345"'))
    assert (error.line_number, error.rule) == (7, "amount")
    assert "12.345" in error.message


def test_an_unparseable_date_is_refused_at_its_line() -> None:
    error = refused(icbc_text().replace("2024-03-11,2403110000450011", "2024-03-41,2403110000450011"))
    assert (error.line_number, error.rule) == (10, "date")
    error = refused(icbc_text().replace("2024-03-11,2403110000450011", "三月十一日,2403110000450011"))
    assert (error.line_number, error.rule) == (10, "date")


def test_a_wrong_running_balance_is_refused_at_its_line() -> None:
    error = refused(icbc_text().replace('"1,347,850.00"', '"1,347,805.00"'))
    assert (error.line_number, error.rule) == (7, "balance")
    assert error.details == {"stated_fen": 134_780_500, "expected_fen": 134_785_000}


def test_a_wrong_first_balance_is_caught_against_an_explicit_opening() -> None:
    # CMB's opening row makes even the first line's balance checkable.
    text = CMB.read_bytes().decode("utf-8-sig").replace("62,000.00", "62,000.01")
    error = refused(text, "utf-8-sig")
    assert (error.line_number, error.rule) == (8, "balance")


def test_a_stated_closing_balance_must_be_reached() -> None:
    error = refused(icbc_text().replace("制表日期：2024-04-01", "期末余额：1,244,034.88"))
    assert (error.line_number, error.rule) == (17, "balance")


@pytest.mark.parametrize(
    ("old", "new", "line", "rule"),
    [
        # Both a debit and a credit on one line.
        (',"36,000.00",,"1,311,850.00"', ',"36,000.00","1.00","1,311,850.00"', 8, "amount"),
        # Neither.
        (',"36,000.00",,"1,311,850.00"', ',,,"1,311,850.00"', 8, "amount"),
        # A booking row after the footer would be silently lost: refused.
        ("制表日期：2024-04-01,,,,,,,,,", '2024-03-30,X1,摘要,,,"1.00",,"1.00",,', 17, "structure"),
        # The same serial twice.
        ("2403050000019923", "2403050000019922", 9, "duplicate_serial"),
        # A second, different account number in the header.
        ("币种：人民币", "账号：999", 3, "structure"),
        # A line booked outside the stated period.
        ("起止日期：2024-03-01 至 2024-03-31", "起止日期：2024-03-02 至 2024-03-31", 6, "period"),
        # An unknown currency.
        ("币种：人民币", "币种：金币", 3, "currency"),
    ],
)
def test_other_broken_files_are_refused(old: str, new: str, line: int, rule: str) -> None:
    text = icbc_text()
    assert old in text
    error = refused(text.replace(old, new))
    assert (error.line_number, error.rule) == (line, rule)


def test_no_header_row_no_account_and_no_balances_are_refused() -> None:
    assert refused("账号：1\n只是一些文字\n").rule == "structure"
    no_account = icbc_text().replace("账号：1202020309900012345,", ",")
    assert "账号" in refused(no_account).message
    no_balances = "\n".join(
        ["账号：1", "交易日期,流水号,借方发生额,贷方发生额,摘要", "2024-03-01,A1,,5.00,学费"]
    )
    assert refused(no_balances, "utf-8").rule == "balance"


def test_columns_may_come_in_any_order_under_other_names() -> None:
    text = "\n".join(
        [
            "账号,0200001234567890123",
            "币种,人民币",
            "期初余额：100.00",
            "用途,收入金额（元）,对方账号,支出金额（元）,账户余额,交易流水号,记账日期,对方户名,起息日期,附言",
            '学费,"1,000.00",6222,,"1,100.00",L1,2024/03/02,张三,2024/03/01,HT2024030100000001',
            # A negative debit (a full-width minus here) is a reversal: money in.
            '冲正,,6223,－50.00,"1,150.00",L2,20240303,李四,,',
        ]
    )
    statement = parse_csv(text.encode("gb18030"))
    assert statement.account_number == "0200001234567890123"
    assert statement.opening_balance_fen == 10_000
    assert [(x.serial, x.amount_fen, x.value_on, x.reference, x.summary) for x in statement.lines] == [
        ("L1", 100_000, date(2024, 3, 1), "HT2024030100000001", "学费 HT2024030100000001"),
        ("L2", 5_000, date(2024, 3, 3), "", "冲正"),
    ]
    assert statement.closing_balance_fen == 115_000


def test_a_spreadsheet_style_account_cell_is_unwrapped() -> None:
    text = (
        icbc_text()
        .replace(",6222021202004567890,", ',"=""6222021202004567890""",')
        .replace(",6217001234567890123,", ",'6217001234567890123,")
    )
    statement = parse_csv(text.encode("gbk"))
    assert statement.lines[1].counterparty_account == "6222021202004567890"
    assert statement.lines[6].counterparty_account == "6217001234567890123"


def test_write_csv_reads_back_in_both_encodings() -> None:
    for encoding in ("gb18030", "utf-8"):
        data = write_csv(ICBC_EXPECTED, encoding=encoding)
        assert parse_statement(data) == ICBC_EXPECTED
    assert write_csv(ICBC_EXPECTED).decode("gb18030").splitlines()[-2].startswith("合计：10笔")


def test_write_csv_refuses_text_its_encoding_cannot_hold() -> None:
    emoji = dataclasses.replace(ICBC_EXPECTED.lines[0], summary="学费 🎓")
    statement = dataclasses.replace(ICBC_EXPECTED, lines=(emoji, *ICBC_EXPECTED.lines[1:]))
    with pytest.raises(StatementError) as caught:
        write_csv(statement, encoding="gbk")
    assert caught.value.rule == "unwritable"
    assert parse_csv(write_csv(statement)) == statement  # GB18030 holds every character


def test_cells_that_a_spreadsheet_would_run_are_quoted_and_read_back() -> None:
    for text in ['=HYPERLINK("http://x")', "+1", "-2", "@SUM(A1)", "'quoted", "`tick", '="007"', "plain"]:
        escaped = escape_cell(text)
        assert not escaped.startswith(("=", "+", "-", "@"))
        assert unescape_cell(escaped) == text
    hostile = dataclasses.replace(
        ICBC_EXPECTED.lines[0], summary="=cmd|' /C calc'!A0", counterparty_name="@x"
    )
    statement = dataclasses.replace(ICBC_EXPECTED, lines=(hostile, *ICBC_EXPECTED.lines[1:]))
    data = write_csv(statement, encoding="utf-8").decode("utf-8")
    assert ",'@x," in data and "'=cmd" in data
    assert parse_csv(data.encode("utf-8")) == statement


def test_the_column_mapping_names_each_field_once() -> None:
    names = [name for column in COLUMNS for name in column.names]
    assert len(names) == len(set(names))
    assert {column.field for column in COLUMNS} >= {"booked_on", "debit", "credit", "balance", "serial"}

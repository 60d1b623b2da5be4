"""Bank statement spreadsheets: the writer's fixture reads to exact values; zip and cells are distrusted."""

from __future__ import annotations

import dataclasses
import io
import zipfile
from decimal import Decimal
from pathlib import Path

import openpyxl
import pytest

from reconciliation.formats import StatementError, parse_statement, write_xlsx
from reconciliation.formats.xlsx_bank import parse_xlsx
from tests.reconciliation.test_formats_csv import ICBC_EXPECTED

FIXTURE = Path(__file__).parent / "fixtures" / "icbc_2024-03_writer.xlsx"


def test_the_committed_workbook_reads_to_exact_values() -> None:
    statement = parse_statement(FIXTURE.read_bytes(), filename=FIXTURE.name)
    assert statement == ICBC_EXPECTED
    # Row numbers: 7 header rows and the table header come first.
    assert [line.line_number for line in statement.lines] == list(range(9, 19))


def workbook_bytes(rows: list[list[object]]) -> bytes:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert sheet is not None
    for values in rows:
        sheet.append(values)
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def edited(row: int, column: int, value: object) -> bytes:
    workbook = openpyxl.load_workbook(io.BytesIO(FIXTURE.read_bytes()))
    sheet = workbook.active
    assert sheet is not None
    sheet.cell(row=row, column=column, value=value)
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def test_a_wrong_balance_cell_is_refused_at_its_row() -> None:
    with pytest.raises(StatementError) as caught:
        parse_xlsx(edited(12, 6, Decimal("1311834.00")))
    assert (caught.value.line_number, caught.value.rule) == (12, "balance")


def test_a_three_decimal_number_cell_is_refused() -> None:
    with pytest.raises(StatementError) as caught:
        parse_xlsx(edited(10, 5, Decimal("12800.005")))
    assert (caught.value.line_number, caught.value.rule) == (10, "amount")


def test_a_text_date_cell_that_is_not_a_date_is_refused() -> None:
    with pytest.raises(StatementError) as caught:
        parse_xlsx(edited(13, 1, "2024-02-30"))
    assert (caught.value.line_number, caught.value.rule) == (13, "date")


def test_numbers_typed_by_a_person_are_read_exactly() -> None:
    data = workbook_bytes(
        [
            ["账号", "0200001234567890123"],
            ["期初余额：0.10"],
            ["交易日期", "流水号", "借方发生额", "贷方发生额", "余额", "摘要"],
            [
                "2024-03-01",
                240301001,
                None,
                0.2,
                0.3,
                "利息",
            ],  # 0.1 + 0.2 is 0.3 here, not 0.30000000000000004
            ["2024-03-02", 240301002, 1, None, "-0.70", "手续费"],
        ]
    )
    statement = parse_xlsx(data)
    assert [(x.serial, x.amount_fen, x.balance_after_fen) for x in statement.lines] == [
        ("240301001", 20, 30),
        ("240301002", -100, -70),
    ]


def test_an_account_number_stored_as_a_float_is_refused() -> None:
    data = workbook_bytes(
        [
            ["交易日期", "流水号", "借方发生额", "贷方发生额", "余额", "对方账号", "本方账号"],
            ["2024-03-01", "A1", None, 5, 5, 6.222021202004568e18, "1"],
        ]
    )
    with pytest.raises(StatementError) as caught:
        parse_xlsx(data)
    assert caught.value.line_number == 2
    assert "对方账号" in caught.value.message


def test_the_writer_guards_against_formula_injection_and_keeps_amounts_exact() -> None:
    hostile = dataclasses.replace(
        ICBC_EXPECTED.lines[0], summary='=HYPERLINK("http://evil")', counterparty_name="+cmd", reference="@x"
    )
    statement = dataclasses.replace(ICBC_EXPECTED, lines=(hostile, *ICBC_EXPECTED.lines[1:]))
    data = write_xlsx(statement)
    sheet = openpyxl.load_workbook(io.BytesIO(data)).active
    assert sheet is not None
    cells = [cell for row in sheet.iter_rows() for cell in row]
    assert not [cell.coordinate for cell in cells if cell.data_type == "f"]  # no formula anywhere
    texts = {cell.value for cell in cells if isinstance(cell.value, str)}
    assert {'\'=HYPERLINK("http://evil")', "'+cmd", "'@x"} <= texts
    assert parse_xlsx(data) == statement
    # Amounts are numbers a person can add up, dates are dates.
    assert sheet["E9"].value == 48600 and sheet["E9"].number_format == "#,##0.00"
    assert sheet["A9"].is_date


def test_amounts_beyond_what_a_double_holds_to_the_fen_are_written_as_text() -> None:
    huge = 12_345_678_901_234_567  # 123,456,789,012,345.67 yuan: 17 significant digits
    first = dataclasses.replace(ICBC_EXPECTED.lines[0], amount_fen=huge, balance_after_fen=None)
    statement = dataclasses.replace(
        ICBC_EXPECTED,
        lines=(first,),
        closing_balance_fen=ICBC_EXPECTED.opening_balance_fen + huge,
    )
    data = write_xlsx(statement)
    assert parse_xlsx(data) == statement
    sheet = openpyxl.load_workbook(io.BytesIO(data)).active
    assert sheet is not None
    assert sheet["E9"].value == "123,456,789,012,345.67"


def with_member(name: str, content: bytes) -> bytes:
    source = zipfile.ZipFile(io.BytesIO(FIXTURE.read_bytes()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            target.writestr(item, content if item.filename == name else source.read(item))
    return out.getvalue()


def test_a_doctype_inside_the_workbook_is_refused_before_openpyxl_reads_it() -> None:
    sheet = zipfile.ZipFile(io.BytesIO(FIXTURE.read_bytes())).read("xl/worksheets/sheet1.xml")
    assert not sheet.startswith(b"<?xml")
    bomb = b'<!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>' + sheet
    with pytest.raises(StatementError) as caught:
        parse_xlsx(with_member("xl/worksheets/sheet1.xml", bomb))
    assert caught.value.rule == "unsafe_xml"


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 512, ".xls"),
        (b"PK\x03\x04 not really a zip", ".xlsx"),
    ],
)
def test_files_that_are_not_xlsx_are_refused(data: bytes, words: str) -> None:
    with pytest.raises(StatementError) as caught:
        parse_statement(data, filename="statement.xlsx")
    assert caught.value.rule == "format"
    assert words in caught.value.message

"""The regulators' XLSX report: four sheets with Chinese headers and English beside, exact amounts as number
cells, and no cell a spreadsheet would run as a formula, whatever text came in from a bank file."""

from __future__ import annotations

import io
from datetime import timedelta
from decimal import Decimal
from typing import Any

import openpyxl
import pytest

from custody.models import Jurisdiction
from reconciliation.formats import Statement, StatementLine, write_csv
from reconciliation.reports import build_report, safe_text
from reconciliation.simulator import Delivery, Fault, FaultKind
from tests.reconciliation.conftest import DAY1, World, import_and_reconcile

DAY2 = DAY1 + timedelta(days=1)


@pytest.mark.parametrize(
    "text, shown",
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1+1", "'+1+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("学费 HT2024", "学费 HT2024"),
        ("", ""),
    ],
)
def test_text_that_would_start_a_formula_gets_an_apostrophe(text: str, shown: str) -> None:
    assert safe_text(text) == shown


def cells(sheet: Any) -> list[list[Any]]:
    """Cell values; numbers as the Decimal they show (a workbook keeps them as doubles)."""
    return [
        [Decimal(repr(cell.value)) if isinstance(cell.value, float) else cell.value for cell in row]
        for row in sheet.iter_rows()
    ]


@pytest.mark.django_db
def test_the_report_lists_tie_outs_breaks_items_and_matches_safely(
    world_factory: Any, district: Jurisdiction
) -> None:
    world: World = world_factory(1, seed=3)
    school = world.institutions[0]
    school.name = "=cmd|' /C calc'!A0"  # an institution name is text too
    school.save(update_fields=["name"])
    with world.bank.day(DAY1, faults=[Fault(FaultKind.BANK_FEE, amount_fen=1_234)]):
        world.pay_bank(world.contract(school))
    deliveries = world.bank.deliveries(fmt="csv")
    # The bank's serial for an unknown credit is text we never wrote: make it a formula.
    statement = world.bank.statement(school, DAY1)
    hostile = StatementLine(
        line_number=9,
        serial="=1+2",
        booked_on=DAY1,
        value_on=DAY1,
        amount_fen=500,
        balance_after_fen=statement.closing_balance_fen + 500,
        counterparty_name="@evil",
        counterparty_account="",
        reference="",
        summary="+SUM(1,2)",
    )
    changed = Statement(
        **{
            **statement.__dict__,
            "closing_balance_fen": hostile.balance_after_fen,
            "lines": (*statement.lines, hostile),
        }
    )
    import_and_reconcile([Delivery(school.pk, DAY1, deliveries[0].filename, write_csv(changed))])

    book = openpyxl.load_workbook(io.BytesIO(build_report(start=DAY1, end=DAY2)))

    assert book.sheetnames == ["汇总 Tie-outs", "差错 Breaks", "未达账项 Open items", "匹配 Matches"]
    for sheet in book.worksheets:
        for row in sheet.iter_rows():
            for cell in row:
                assert cell.data_type != "f", (sheet.title, cell.coordinate, cell.value)
                if isinstance(cell.value, str):
                    assert not cell.value.startswith(("=", "+", "-", "@")), (sheet.title, cell.value)
    ties = cells(book["汇总 Tie-outs"])
    assert ties[0][0].startswith("托管资金对账报告 Custody reconciliation report 2024-03-04 – 2024-03-05")
    header = ties[3]
    assert header[:5] == [
        "日期 Day",
        "机构 Institution",
        "账簿余额 Ledger (元)",
        "银行余额 Bank (元)",
        "差额 Difference (元)",
    ]
    day1 = ties[4]
    assert day1[1] == "'=cmd|' /C calc'!A0"
    assert (day1[2], day1[3], day1[4]) == (800, Decimal("792.66"), Decimal("7.34"))
    assert day1[7] == "差异已逐项说明 difference itemised"
    assert book["汇总 Tie-outs"].cell(row=5, column=3).number_format == "#,##0.00"

    breaks = cells(book["差错 Breaks"])
    (fee,) = breaks[4:]  # the unknown credit is still in transit on its own day: no break yet
    assert (fee[3], fee[4], fee[5]) == ("银行扣费 fee taken by the bank", Decimal("12.34"), "待处理 open")

    items = {row[2]: row[3:] for row in cells(book["未达账项 Open items"])[4:]}
    assert items["银行扣费 bank charges"][:2] == [Decimal("12.34"), 1]  # ledger − bank
    pending = items["在途：银行已记、账簿未达 in transit: lines the ledger has not posted yet"]
    assert pending == [-5, 1, "'=1+2"]  # 5.00 the bank has and the ledger has not
    matches = cells(book["匹配 Matches"])
    assert matches[4][1:3] == ["按参考号 by reference", 1]

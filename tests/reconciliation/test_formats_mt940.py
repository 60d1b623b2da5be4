"""MT940: the fixture reads to exact values; truncated or inconsistent messages are refused whole."""

from __future__ import annotations

import dataclasses
from datetime import date
from pathlib import Path

import pytest

from reconciliation.formats import Statement, StatementError, StatementLine, parse_statement
from reconciliation.formats.mt940 import Information, parse_mt940, read_information, write_mt940

FIXTURE = Path(__file__).parent / "fixtures" / "boc_2024-03-15.mt940"


def entry(n: int, serial: str, amount: int, name: str, account: str, ref: str, summary: str,
          value_on: date = date(2024, 3, 15)) -> StatementLine:  # fmt: skip
    return StatementLine(
        line_number=n,
        serial=serial,
        booked_on=date(2024, 3, 15),
        value_on=value_on,
        amount_fen=amount,
        balance_after_fen=None,
        counterparty_name=name,
        counterparty_account=account,
        reference=ref,
        summary=summary,
    )


EXPECTED = Statement(
    account_number="376558123456",  # ":25:BKCHCNBJ300/376558123456": the BIC is cut off
    currency="CNY",
    statement_id="BOC2403150074",
    sequence=74,
    period_start=date(2024, 3, 14),  # the opening balance is dated the previous business day
    period_end=date(2024, 3, 15),
    opening_balance_fen=131_183_500,
    closing_balance_fen=113_722_000,
    lines=(
        # Free Chinese text: 对方户名/对方账号 picked out, the contract number found in it.
        entry(6, "2403150000001", 4_860_000, "银联商务股份有限公司", "31050161393600000025",
              "HT2024031200000027",
              "对方户名：银联商务股份有限公司；对方账号：31050161393600000025；"
              "摘要：学费 合同HT2024031200000027"),
        # Keyword form.
        entry(9, "2403150000002", 1_280_000, "张伟", "6222021202004567890", "HT2024031400000031",
              "春季班学费"),
        # The :61: customer reference; free text over two lines joined as it stands.
        entry(11, "2403150000003", -3_600_000, "", "", "PO20240315001",
              "批量代付3笔 退费 李娜12000.00 王芳15000.00 赵敏9000.00 退费批次PO20240315001，明细见代发回单"
              "（银行回单号 BOC-DF-0315-0003）"),
        entry(14, "2403150000004", -1_500, "", "", "", "跨行汇款手续费"),
        entry(16, "2403150000005", -20_000_000, "杭州启明培训学校有限公司", "1202020309900067890",
              "PO20240315002", "课消拨付 2024年3月上半月", value_on=date(2024, 3, 14)),
    ),
)  # fmt: skip


def test_the_fixture_in_its_swift_envelope() -> None:
    statement = parse_statement(FIXTURE.read_bytes(), filename=FIXTURE.name)
    assert statement == EXPECTED
    assert [line.line_number for line in statement.lines] == [6, 9, 11, 14, 16]


def fixture_lines() -> list[str]:
    return FIXTURE.read_text("utf-8").splitlines()


def refused(lines: list[str]) -> StatementError:
    with pytest.raises(StatementError) as caught:
        parse_mt940("\r\n".join(lines).encode("utf-8"))
    return caught.value


def test_a_truncated_message_is_refused_at_its_last_line() -> None:
    lines = fixture_lines()
    cut = lines[: lines.index(":61:2403150315D15,00NCHGNONREF//2403150000004")]
    error = refused(cut)
    assert (error.line_number, error.rule) == (13, "structure")
    assert ":62F:" in error.message and "不完整" in error.message


def test_a_statement_line_cut_in_the_middle_is_refused_at_that_line() -> None:
    lines = fixture_lines()
    cut = [*lines[:15], ":61:2403140315D2000"]
    error = refused(cut)
    assert (error.line_number, error.rule) == (16, "structure")


@pytest.mark.parametrize(
    ("old", "new", "line", "rule"),
    [
        ("D15,00NCHG", "D15,005NCHG", 14, "amount"),
        ("D15,00NCHG", "D15.00NCHG", 14, "structure"),
        (":61:2403150315D15", ":61:2402300230D15", 14, "date"),
        (":62F:C240315CNY1137220,00", ":62F:C240315CNY1137220,01", 18, "balance"),
        (":62F:C240315CNY1137220,00", ":62F:C240315USD1137220,00", 18, "currency"),
        (":60F:C240314CNY1311835,00", ":60F:C240314CNY1311835,00X", 5, "structure"),
        ("//2403150000004", "//2403150000003", 14, "duplicate_serial"),
        (":61:2403150315D15,00", ":61:2403160316D15,00", 14, "period"),
        (":61:2403150315D15,00NCHG", ":61:2403150315D15,00XCHG", 14, "structure"),
    ],
)
def test_broken_messages_are_refused_at_the_line(old: str, new: str, line: int, rule: str) -> None:
    lines = fixture_lines()
    changed = [text.replace(old, new) for text in lines]
    assert changed != lines
    error = refused(changed)
    assert (error.line_number, error.rule) == (line, rule)


def test_two_statements_in_one_file_are_refused() -> None:
    lines = fixture_lines()
    body = lines[1:-1]
    error = refused([*lines[:-1], "-", *body, "-"])
    assert (error.line_number, error.rule) == (len(lines) + 1, "structure")


def message(
    *statement_lines: str, opening: str = "C240314CNY100,00", closing: str = "C240315CNY100,00"
) -> bytes:
    return "\n".join([":20:T1", ":25:123", ":28C:5/1", f":60F:{opening}", *statement_lines, f":62F:{closing}",
                      "-"]).encode()  # fmt: skip


def test_reversals_funds_codes_and_entry_dates() -> None:
    statement = parse_mt940(
        message(
            ":61:2403150315RC10,00NTRFNONREF//R1",  # reversal of a credit: money out
            ":61:240315RD2,50NTRFNONREF//R2",  # reversal of a debit: money in; no entry date
            ":61:2403150315CY1,00NMSCNONREF//R3",  # funds code Y, the third letter of CNY
            closing="C240315CNY93,50",
        )
    )
    assert [(x.serial, x.amount_fen) for x in statement.lines] == [("R1", -1000), ("R2", 250), ("R3", 100)]
    with pytest.raises(StatementError) as caught:
        parse_mt940(message(":61:2403150315CD1,00NMSCNONREF//R3", closing="C240315CNY101,00"))
    assert caught.value.rule == "currency"


def test_an_entry_date_across_the_year_end() -> None:
    data = message(
        ":61:2501021231C5,00NTRFNONREF//Y1", opening="C241231CNY0,00", closing="C250102CNY5,00"
    )  # value date 2 January 2025, booked 31 December 2024
    only = parse_mt940(data).lines[0]
    assert (only.value_on, only.booked_on) == (date(2025, 1, 2), date(2024, 12, 31))


def test_serial_and_reference_fall_back() -> None:
    statement = parse_mt940(
        message(
            ":61:2403150315C1,00NTRFMYREF",  # no bank reference: the customer reference is the serial
            ":61:2403150315C1,00NTRFNONREF",  # neither: derived from the statement and the line
            ":86:支付宝结算 PO20240315009",
            closing="C240315CNY102,00",
        )
    )
    assert [(x.serial, x.reference) for x in statement.lines] == [
        ("MYREF", "MYREF"),
        ("T1#6", "PO20240315009"),
    ]


def test_supplementary_details_are_the_summary_when_there_is_no_86() -> None:
    statement = parse_mt940(
        message(":61:2403150315C1,00NTRFNONREF//B1", "TUITION MARCH", closing="C240315CNY101,00")
    )
    assert statement.lines[0].summary == "TUITION MARCH"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "/TRTP/SEPA OVERBOEKING/IBAN/NL44RABO0123456789/BIC/RABONL2U/NAME/J. JANSEN"
            "/REMI/USTD//FACTUUR 42//EREF/NOTPROVIDED",
            Information("J. JANSEN", "NL44RABO0123456789", "", "FACTUUR 42"),
        ),
        (
            "/EREF/E2E-1/PREF/PO20240315001/NAME/张伟/ACCT/6222/REMI/学费",
            Information("张伟", "6222", "E2E-1", "学费"),
        ),
        ("/PREF/PO20240315001/REMI/批量代付", Information("", "", "PO20240315001", "批量代付")),
        (
            "166?00GUTSCHRIFT?20EREF+HT2024?21 TUITION?3050010517?31DE0012?32MAX?33 MUSTERMANN",
            Information("MAX MUSTERMANN", "DE0012", "", "EREF+HT2024 TUITION"),
        ),
        (
            "对方户名:李四 对方账号:6217-0001 学费",
            Information("李四", "6217-0001", "", "对方户名:李四 对方账号:6217-0001 学费"),
        ),
        ("结息", Information("", "", "", "结息")),
    ],
)  # fmt: skip
def test_the_86_heuristics(text: str, expected: Information) -> None:
    assert read_information(text) == expected


def test_the_writer_wraps_long_text_without_starting_a_line_with_a_tag_or_the_end_mark() -> None:
    summary = "退费说明" * 15 + ":20:X" + "-" * 40 + " 完"
    transfer = dataclasses.replace(EXPECTED.lines[1], summary=summary)
    statement = dataclasses.replace(
        EXPECTED, lines=(transfer,), closing_balance_fen=EXPECTED.opening_balance_fen + transfer.amount_fen
    )
    data = write_mt940(statement)
    lines = data.decode("utf-8").split("\r\n")
    info_start = next(i for i, text in enumerate(lines) if text.startswith(":86:"))
    continuation = lines[info_start + 1 : lines.index(":62F:C240315CNY1324635,00")]
    assert continuation and all(len(text) <= 65 and text[0] not in ":- " for text in continuation)
    assert parse_mt940(data) == statement


def test_the_writer_refuses_what_mt940_cannot_hold() -> None:
    cases = [
        dataclasses.replace(EXPECTED, statement_id="S" * 17),
        dataclasses.replace(EXPECTED, sequence=100_000),
        dataclasses.replace(EXPECTED, lines=(dataclasses.replace(EXPECTED.lines[0], serial="S" * 17),
                                              *EXPECTED.lines[1:])),
        dataclasses.replace(EXPECTED, lines=(dataclasses.replace(EXPECTED.lines[0], summary="a/NAME/b"),
                                              *EXPECTED.lines[1:])),
        dataclasses.replace(EXPECTED, lines=(dataclasses.replace(EXPECTED.lines[0], summary="-" * 130),
                                              *EXPECTED.lines[1:])),
    ]  # fmt: skip
    for statement in cases:
        with pytest.raises(StatementError) as caught:
            write_mt940(statement)
        assert caught.value.rule == "unwritable"


def test_the_writer_reads_back() -> None:
    data = write_mt940(EXPECTED)
    assert parse_statement(data) == EXPECTED
    # Our 18-character contract number does not fit the 16-character customer reference: it goes to /EREF/.
    assert "/EREF/HT2024031200000027" in data.decode("utf-8")
    assert ":61:2403150315D36000,00NTRFPO20240315001//2403150000003" in data.decode("utf-8")


def test_a_space_at_the_end_of_a_wrapped_line_is_kept() -> None:
    # Found by the round-trip property: the 65th character of an :86: line was a space, and stripping the
    # line lost it.
    transfer = dataclasses.replace(
        EXPECTED.lines[3],
        counterparty_name="00000000000",
        counterparty_account="0000000",
        summary="0" * 28 + " 0",
    )
    statement = dataclasses.replace(
        EXPECTED, lines=(transfer,), closing_balance_fen=EXPECTED.opening_balance_fen + transfer.amount_fen
    )
    data = write_mt940(statement)
    assert any(text.endswith(" ") for text in data.decode("utf-8").split("\r\n"))
    assert parse_mt940(data) == statement

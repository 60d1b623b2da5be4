"""camt.053: the .02 and .08 fixtures read to exact values; unsafe or inconsistent XML is refused whole."""

from __future__ import annotations

import dataclasses
import re
from datetime import date, datetime
from pathlib import Path

import pytest

from reconciliation.formats import Statement, StatementError, StatementLine, check_continuity, parse_statement
from reconciliation.formats.camt053 import parse_camt053, write_camt053

FIXTURES = Path(__file__).parent / "fixtures"
V02 = FIXTURES / "ccb_2024-03-15_camt053_v02.xml"
V08 = FIXTURES / "ccb_2024-03-18_camt053_v08.xml"


def entry(n: int, serial: str, amount: int, name: str, account: str, ref: str, summary: str) -> StatementLine:
    return StatementLine(
        line_number=n,
        serial=serial,
        booked_on=date(2024, 3, 15),
        value_on=date(2024, 3, 15),
        amount_fen=amount,
        balance_after_fen=None,
        counterparty_name=name,
        counterparty_account=account,
        reference=ref,
        summary=summary,
    )


V02_EXPECTED = Statement(
    account_number="33050161353600001234",
    currency="CNY",
    statement_id="CCB20240315-330501613536",
    sequence=74,
    period_start=date(2024, 3, 15),
    period_end=date(2024, 3, 15),
    opening_balance_fen=131_183_500,
    closing_balance_fen=113_722_000,
    lines=(
        # NOTPROVIDED end to end: the contract number is found in the remittance text.
        entry(93, "CCB2403150000001", 4_860_000, "银联商务股份有限公司", "31050161393600000025",
              "HT2024031200000027", "学费 合同HT2024031200000027"),
        entry(138, "CCB2403150000002", 1_280_000, "张伟", "6222021202004567890", "HT2024031400000031",
              "春季班学费"),
        # The batch payout: one line, our batch reference, no single counterparty.
        entry(183, "CCB2403150000003", -3_600_000, "", "", "PO20240315001", "批量代付 3笔 退费"),
        entry(293, "CCB2403150000004", -1_500, "", "", "", "跨行汇款手续费 3笔"),
        entry(317, "CCB2403150000005", -20_000_000, "杭州启明培训学校有限公司", "1202020309900067890",
              "PO20240315002", "课消拨付 2024年3月上半月"),
    ),
)  # fmt: skip


def test_camt053_v02_fixture() -> None:
    statement = parse_statement(V02.read_bytes(), filename=V02.name)
    assert statement == V02_EXPECTED
    assert [line.line_number for line in statement.lines] == [93, 138, 183, 293, 317]


def test_camt053_v08_fixture_follows_the_v02_one() -> None:
    statement = parse_statement(V08.read_bytes())
    assert statement.sequence == 75
    assert (statement.opening_balance_fen, statement.closing_balance_fen) == (113_722_000, 114_202_000)
    assert [(x.amount_fen, x.counterparty_name, x.counterparty_account, x.reference, x.summary)
            for x in statement.lines] == [
        (960_000, "王芳", "6228480012345678910", "HT2024031600000058", "学费HT2024031600000058"),
        (-480_000, "李娜", "6217001234567890123", "PO20240318001", "退费"),
    ]  # fmt: skip
    check_continuity(V02_EXPECTED, statement)


def refused(data: bytes) -> StatementError:
    with pytest.raises(StatementError) as caught:
        parse_camt053(data)
    return caught.value


def v02_text() -> str:
    return V02.read_text("utf-8")


def test_a_closing_balance_the_entries_do_not_reach_is_refused_at_the_balance() -> None:
    text = v02_text().replace('<Amt Ccy="CNY">1137220.00</Amt>', '<Amt Ccy="CNY">1137220.01</Amt>', 1)
    error = refused(text.encode())
    assert (error.line_number, error.rule) == (52, "balance")  # the CLBD <Bal>


def test_summary_totals_are_checked() -> None:
    error = refused(v02_text().replace("<Sum>236015.00</Sum>", "<Sum>236015.10</Sum>").encode())
    assert (error.line_number, error.rule) == (89, "totals")  # TtlDbtNtries/Sum
    error = refused(v02_text().replace("<NbOfNtries>5</NbOfNtries>", "<NbOfNtries>6</NbOfNtries>").encode())
    assert error.rule == "totals"
    net = "<CdtDbtInd>DBIT</CdtDbtInd>\n        </TtlNtries>"
    error = refused(v02_text().replace(net, net.replace("DBIT", "CRDT")).encode())
    assert error.rule == "totals"


def test_a_batch_whose_transactions_do_not_add_up_is_refused() -> None:
    error = refused(
        v02_text().replace('<Amt Ccy="CNY">9000.00</Amt>', '<Amt Ccy="CNY">9000.01</Amt>').encode()
    )
    assert (error.line_number, error.rule) == (183, "totals")


@pytest.mark.parametrize(
    ("old", "new", "rule", "line"),
    [
        # The fee entry starts on line 293; its amount is on line 295.
        ('<Amt Ccy="CNY">15.00</Amt>', '<Amt Ccy="CNY">15.005</Amt>', "amount", 295),
        ('<Amt Ccy="CNY">15.00</Amt>', '<Amt Ccy="CNY">-15.00</Amt>', "amount", 295),
        ('<Amt Ccy="CNY">15.00</Amt>', '<Amt Ccy="USD">15.00</Amt>', "currency", 295),
        ("<AcctSvcrRef>CCB2403150000004<", "<AcctSvcrRef>CCB2403150000003<", "duplicate_serial", 293),
    ],
)  # fmt: skip
def test_a_bad_entry_is_refused_at_its_line(old: str, new: str, rule: str, line: int) -> None:
    text = v02_text()
    assert text.count(old) == 1
    error = refused(text.replace(old, new).encode())
    assert (error.line_number, error.rule) == (line, rule)


def test_an_entry_that_is_not_booked_is_refused() -> None:
    before, after = v02_text().split("<NtryRef>4</NtryRef>")
    error = refused(
        (before + "<NtryRef>4</NtryRef>" + after.replace("<Sts>BOOK</Sts>", "<Sts>PDNG</Sts>", 1)).encode()
    )
    assert (error.line_number, error.rule) == (293, "structure")
    assert "BOOK" in error.message


def test_bad_dates_are_refused() -> None:
    error = refused(v02_text().replace("<Dt>2024-03-15</Dt>\n        </BookgDt>", "<Dt>2024-03-32</Dt>\n"
                                       "        </BookgDt>", 1).encode())  # fmt: skip
    assert (error.line_number, error.rule) == (98, "date")  # <BookgDt>


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        (lambda t: t.replace("<Cd>CLBD</Cd>", "<Cd>CLAV</Cd>"), "structure"),
        (lambda t: t.replace("camt.053.001.02", "camt.054.001.02"), "format"),
        (lambda t: t.replace("</Stmt>", "</Stmt><Stmt><Id>2</Id></Stmt>"), "structure"),
        (lambda t: re.sub(r"<Othr>\s*<Id>33050161353600001234</Id>\s*</Othr>", "<Othr/>", t), "structure"),
    ],
)  # fmt: skip
def test_structural_refusals(change: object, rule: str) -> None:
    assert callable(change)
    assert refused(change(v02_text()).encode()).rule == rule


def test_malformed_xml_names_its_line() -> None:
    error = refused(v02_text().replace("</AcctSvcrRef>", "</AcctSvcrReff>", 1).encode())
    assert (error.line_number, error.rule) == (104, "structure")


UNSAFE = [
    # Billion laughs.
    '<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>',
    # External entity.
    '<!DOCTYPE d [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>',
    # External DTD.
    '<!DOCTYPE Document SYSTEM "http://example.invalid/camt.dtd">',
]


@pytest.mark.parametrize("declaration", UNSAFE)
def test_doctype_and_entities_are_refused_before_anything_is_parsed(declaration: str) -> None:
    text = v02_text().replace("<Document ", declaration + "\n<Document ", 1)
    error = refused(text.encode())
    assert (error.line_number, error.rule) == (3, "unsafe_xml")
    with pytest.raises(StatementError):
        parse_statement(text.encode())


def test_a_doctype_the_byte_check_cannot_see_is_refused_by_the_parser() -> None:
    # In UTF-16 "<!DOCTYPE" is not those bytes; expat's declaration handler refuses it all the same.
    text = (
        v02_text()
        .replace('encoding="UTF-8"', 'encoding="UTF-16"')
        .replace("<Document ", UNSAFE[0] + "<Document ")
    )
    error = refused(text.encode("utf-16"))
    assert (error.line_number, error.rule) == (3, "unsafe_xml")


def test_an_undeclared_entity_is_an_xml_error_not_a_lookup() -> None:
    error = refused(v02_text().replace("春季班学费", "&xxe;").encode())
    assert error.rule == "structure"


@pytest.mark.parametrize("version", ["02", "08"])
def test_the_writer_reads_back_in_both_versions(version: str) -> None:
    data = write_camt053(V02_EXPECTED, version=version, created_at=datetime(2024, 3, 16, 6, 0))
    assert f"urn:iso:std:iso:20022:tech:xsd:camt.053.001.{version}".encode() in data
    assert parse_statement(data) == V02_EXPECTED
    # The batch's one line is written as a single transaction: no counterparty, the batch reference.
    assert b"<EndToEndId>PO20240315001</EndToEndId>" in data
    if version == "08":
        assert b"<Sts>\n          <Cd>BOOK</Cd>" in data and b"<TtlNetNtry>" in data
    else:
        assert b"<Sts>BOOK</Sts>" in data and b"<TtlNetNtryAmt>174615.00</TtlNetNtryAmt>" in data


def test_a_long_summary_is_split_into_140_character_pieces() -> None:
    transfer = dataclasses.replace(V02_EXPECTED.lines[1], summary="退费说明" * 60)  # 240 characters
    statement = dataclasses.replace(
        V02_EXPECTED,
        lines=(transfer,),
        closing_balance_fen=V02_EXPECTED.opening_balance_fen + transfer.amount_fen,
    )
    data = write_camt053(statement)
    assert len(re.findall(rb"<Ustrd>", data)) == 2
    assert parse_camt053(data) == statement


def test_the_writer_refuses_what_camt053_cannot_hold() -> None:
    long_serial = dataclasses.replace(V02_EXPECTED.lines[0], serial="S" * 36)
    with pytest.raises(StatementError) as caught:
        write_camt053(dataclasses.replace(V02_EXPECTED, lines=(long_serial, *V02_EXPECTED.lines[1:])))
    assert caught.value.rule == "unwritable"
    with pytest.raises(ValueError):
        write_camt053(V02_EXPECTED, version="05")

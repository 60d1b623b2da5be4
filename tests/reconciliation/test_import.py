"""Import of statements: every format into one table of lines, each statement checked (opening + movements
= closing, continuity with the previous one), a bad file refused with its line number and nothing of it
kept, and the same file twice changing nothing."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest

from custody.models import Institution, Jurisdiction
from reconciliation.errors import ReconciliationError
from reconciliation.formats import (
    Statement,
    StatementError,
    StatementLine,
    write_camt053,
    write_csv,
    write_mt940,
    write_xlsx,
)
from reconciliation.models import (
    BankStatement,
    BankStatementLine,
    Break,
    BreakKind,
    BreakState,
    ReconciliationEvent,
)
from reconciliation.services.imports import import_statement, store_statement
from tests.reconciliation.conftest import DAY1, new_institution

pytestmark = pytest.mark.django_db

WRITERS = {"csv": write_csv, "xlsx": write_xlsx, "camt053": write_camt053, "mt940": write_mt940}


@pytest.fixture
def institution(district: Jurisdiction) -> Institution:
    return new_institution(district)


def statement(
    institution: Institution,
    day: date,
    *,
    sequence: int,
    opening: int,
    amounts: tuple[int, ...] = (80_000, -24_000),
    statement_id: str | None = None,
) -> Statement:
    lines = []
    balance = opening
    for n, amount in enumerate(amounts, start=1):
        balance += amount
        lines.append(
            StatementLine(
                line_number=n,
                serial=f"{day:%Y%m%d}{sequence:02d}{n:04d}",
                booked_on=day,
                value_on=day,
                amount_fen=amount,
                balance_after_fen=balance,
                counterparty_name="张伟" if amount > 0 else "机构结算户",
                counterparty_account="6222020200112233445" if amount > 0 else "2002990000000001",
                reference=f"HT{day:%Y%m%d}{n:08d}" if amount > 0 else f"PO{day:%Y%m%d}{n:08d}",
                summary="学费" if amount > 0 else "拨付",
            )
        )
    return Statement(
        account_number=institution.custody_account_number,
        currency="CNY",
        statement_id=statement_id or f"{day:%Y%m%d}-{sequence:04d}",
        sequence=sequence,
        period_start=day,
        period_end=day,
        opening_balance_fen=opening,
        closing_balance_fen=balance,
        lines=tuple(lines),
    )


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_every_format_imports_into_the_same_lines(institution: Institution, fmt: str) -> None:
    source = statement(institution, DAY1, sequence=1, opening=10_000, amounts=(80_000, -24_000, 1_600_000))
    result = import_statement(data=WRITERS[fmt](source), filename=f"s.{fmt}")

    stored = result.statement
    assert result.created
    assert (stored.institution_id, stored.format, stored.statement_id, stored.sequence) == (
        institution.pk,
        fmt,
        source.statement_id,
        1,
    )
    assert (stored.opening_balance_fen, stored.closing_balance_fen) == (10_000, 1_666_000)
    assert (stored.credits_fen, stored.debits_fen, stored.line_count) == (1_680_000, 24_000, 3)
    lines = list(BankStatementLine.objects.filter(statement=stored).order_by("line_number"))
    assert [(x.serial, x.amount_fen, x.reference, x.counterparty_account, x.value_on) for x in lines] == [
        (s.serial, s.amount_fen, s.reference, s.counterparty_account, s.value_on) for s in source.lines
    ]
    assert all(x.institution_id == institution.pk for x in lines)
    expected_balances = [s.balance_after_fen for s in source.lines] if fmt in ("csv", "xlsx") else [None] * 3
    assert [x.balance_after_fen for x in lines] == expected_balances


def test_the_same_file_twice_changes_nothing(institution: Institution) -> None:
    data = write_csv(statement(institution, DAY1, sequence=1, opening=0))
    first = import_statement(data=data, filename="a.csv")
    events = ReconciliationEvent.objects.count()

    again = import_statement(data=data, filename="renamed.csv")

    assert (again.created, again.statement.pk) == (False, first.statement.pk)
    assert BankStatement.objects.count() == 1
    assert BankStatementLine.objects.count() == 2
    assert ReconciliationEvent.objects.count() == events


def test_a_bad_file_is_refused_with_its_line_and_nothing_of_it_is_imported(institution: Institution) -> None:
    data = write_csv(statement(institution, DAY1, sequence=1, opening=0)).decode("gb18030")
    # The second booking's running balance (余额) now disagrees with its movement.
    rows = data.split("\r\n")
    index = next(
        i for i, row in enumerate(rows) if row.startswith("2024-03-04") and ",240.00,,560.00," in row
    )
    rows[index] = rows[index].replace(",560.00,", ",570.00,")
    with pytest.raises(StatementError) as refused:
        import_statement(data="\r\n".join(rows).encode("gb18030"), filename="bad.csv")

    assert refused.value.rule == "balance"
    assert refused.value.line_number == index + 1
    assert "余额不符" in refused.value.message and "balance mismatch" in refused.value.message
    assert BankStatement.objects.count() == 0
    assert BankStatementLine.objects.count() == 0
    assert Break.objects.count() == 0


def test_an_account_that_is_no_institutions_is_refused(institution: Institution) -> None:
    foreign = statement(institution, DAY1, sequence=1, opening=0)
    data = write_mt940(Statement(**{**foreign.__dict__, "account_number": "6000000000000009"}))
    with pytest.raises(ReconciliationError) as refused:
        import_statement(data=data)
    assert refused.value.rule == "unknown_account"
    assert BankStatement.objects.count() == 0


def test_a_statement_must_continue_the_previous_one_or_it_is_refused_with_a_gap_break(
    institution: Institution,
) -> None:
    import_statement(data=write_csv(statement(institution, DAY1, sequence=1, opening=0)))
    # Day 2 opens at 1.00 yuan more than day 1 closed: money moved in no statement we have.
    wrong_opening = statement(institution, DAY1 + timedelta(days=1), sequence=2, opening=56_100)
    with pytest.raises(StatementError) as refused:
        import_statement(data=write_csv(wrong_opening))
    assert refused.value.rule == "continuity"
    assert "期初余额" in refused.value.reason
    assert BankStatement.objects.count() == 1
    (gap,) = Break.objects.all()
    assert (gap.kind, gap.state, gap.amount_fen) == (BreakKind.SEQUENCE_GAP, BreakState.OPEN, 0)
    assert gap.details["previous_closing_fen"] == 56_000 and gap.details["opening_fen"] == 56_100

    # A person decides the missing movement will never come as a statement: imported, the break stays.
    imported = import_statement(data=write_csv(wrong_opening), allow_gap=True)
    assert imported.created
    gap.refresh_from_db()
    assert gap.state == BreakState.OPEN and gap.details["imported"] is True


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"statement_id": "20240304-0001"}, "已导入"),  # another file claiming an imported statement
        ({"period_start": DAY1 - timedelta(days=1)}, "重叠"),  # a period that overlaps the first
        ({"sequence": 3}, "序号不连续"),  # a sequence number skipped
    ],
)
def test_continuity_refusals(institution: Institution, change: dict[str, Any], reason: str) -> None:
    first = statement(institution, DAY1, sequence=1, opening=0)
    import_statement(data=write_csv(first))
    second = statement(institution, DAY1 + timedelta(days=1), sequence=2, opening=first.closing_balance_fen)
    second = Statement(**{**second.__dict__, **change})
    with pytest.raises(StatementError) as refused:
        import_statement(data=write_camt053(second))
    assert refused.value.rule == "continuity"
    assert reason in refused.value.reason
    assert BankStatement.objects.count() == 1


def test_a_streamed_statement_is_checked_as_it_goes_and_refused_whole(institution: Institution) -> None:
    header = statement(institution, DAY1, sequence=1, opening=0)
    lines = list(header.lines)
    bad_closing = Statement(**{**header.__dict__, "closing_balance_fen": header.closing_balance_fen + 1})
    with pytest.raises(StatementError) as refused:
        store_statement(header=bad_closing, lines=iter(lines), format="generated", file_sha256="a" * 64)
    assert refused.value.rule == "balance"
    repeated = [lines[0], StatementLine(**{**lines[1].__dict__, "serial": lines[0].serial})]
    with pytest.raises(StatementError) as twice:
        store_statement(header=header, lines=iter(repeated), format="generated", file_sha256="b" * 64)
    assert twice.value.rule == "duplicate_serial" and twice.value.line_number == 2
    assert BankStatement.objects.count() == 0 and BankStatementLine.objects.count() == 0

    stored = store_statement(header=header, lines=iter(lines), format="generated", file_sha256="c" * 64)
    assert stored.statement.line_count == 2 and stored.statement.format == "generated"

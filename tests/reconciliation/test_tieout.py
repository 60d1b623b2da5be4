"""Daily tie-out: the ledger's custody cash at the close of the day (24:00 Asia/Shanghai, or the day's cut)
equals the bank's closing balance, or the difference is itemised and what no item explains is a
balance_difference break."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User

from custody.models import Jurisdiction
from custody.services.access import grant_regulator
from ledger.money import to_minor
from ledger.selectors import balance_at
from reconciliation.errors import ReconciliationError
from reconciliation.formats import Statement, write_csv
from reconciliation.models import Break, BreakKind, BreakState, DayCut, ResolutionKind, TieOut, TieOutStatus
from reconciliation.selectors.days import SHANGHAI, BusinessCalendar, default_end, default_start
from reconciliation.services import breaks as queue
from reconciliation.services.days import record_day_cut
from reconciliation.services.imports import import_statement
from reconciliation.services.runs import reconcile_statement
from reconciliation.services.tieout import explain, tie_out
from tests.reconciliation.conftest import DAY1, import_and_reconcile

DAY2 = DAY1 + timedelta(days=1)


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=SHANGHAI)


def test_by_default_a_business_day_is_midnight_to_midnight_in_shanghai() -> None:
    calendar = BusinessCalendar([])
    assert calendar.start(DAY1) == default_start(DAY1) == at(DAY1, 0)
    assert calendar.end(DAY1) == default_end(DAY1) == at(DAY2, 0)
    assert calendar.day_of(at(DAY1, 0, 1)) == DAY1
    assert calendar.day_of(at(DAY2, 0)) == DAY1  # the close belongs to the day it closes
    assert calendar.day_of(datetime(2024, 3, 4, 16, 30, tzinfo=UTC)) == DAY2  # 00:30 in Shanghai


def test_a_day_cut_overrides_one_days_window() -> None:
    cut = DayCut(day=DAY1, opens_at=at(DAY1, 0) - timedelta(hours=7), closes_at=at(DAY1, 17))
    calendar = BusinessCalendar([cut])
    assert (calendar.start(DAY1), calendar.end(DAY1)) == (cut.opens_at, cut.closes_at)
    assert calendar.day_of(at(DAY1, 16, 59)) == DAY1
    assert calendar.day_of(at(DAY1, 17, 1)) == DAY1  # not overridden after the cut: the calendar day
    assert calendar.day_of(at(DAY1, 0) - timedelta(hours=1)) == DAY1  # inside the cut's window
    assert calendar.end(DAY2) == at(DAY2 + timedelta(days=1), 0)


@pytest.mark.django_db
def test_day_cuts_may_not_overlap_or_run_backwards() -> None:
    record_day_cut(day=DAY1, opens_at=at(DAY1, 9), closes_at=at(DAY1, 17))
    with pytest.raises(ReconciliationError) as backwards:
        record_day_cut(day=DAY2, opens_at=at(DAY2, 9), closes_at=at(DAY2, 8))
    assert backwards.value.rule == "day_cut_order"
    with pytest.raises(ReconciliationError) as overlap:
        record_day_cut(day=DAY2, opens_at=at(DAY1, 16), closes_at=at(DAY2, 17))
    assert overlap.value.rule == "day_cut_overlap"
    moved = record_day_cut(day=DAY1, opens_at=at(DAY1, 8), closes_at=at(DAY1, 18))
    assert DayCut.objects.get(day=DAY1) == moved and moved.closes_at == at(DAY1, 18)


@pytest.mark.django_db
def test_the_ledger_is_read_at_the_days_close_not_after(world_factory: Any) -> None:
    world = world_factory(1)
    school = world.institutions[0]
    with world.bank.day(DAY1):
        world.pay_bank(world.contract(school))
    with world.bank.day(DAY2):
        world.pay_bank(world.contract(school))
    import_and_reconcile(world.bank.deliveries(fmt="csv"))

    day1 = TieOut.objects.get(day=DAY1)
    close = DayCut.objects.get(day=DAY1).closes_at
    assert day1.closes_at == close
    assert day1.ledger_fen == to_minor(balance_at(school.cash_account, close)) == 80_000
    assert TieOut.objects.get(day=DAY2).ledger_fen == 160_000
    # Recomputed later, day 1 still reads the ledger at its own close.
    again = tie_out(institution=school, day=DAY1)
    assert again is not None and (again.ledger_fen, again.status) == (80_000, TieOutStatus.TIED)
    assert "账簿 ledger 800.00" in explain(again) and "银行 bank 800.00" in explain(again)


@pytest.mark.django_db
def test_an_opening_balance_the_ledger_never_had_is_a_balance_difference_until_corrected(
    world_factory: Any, district: Jurisdiction
) -> None:
    world = world_factory(1, opening_balances={})
    school = world.institutions[0]
    world.bank.accounts[school.pk].balance_fen = 10_000  # the bank says 100.00 was there before day 1
    with world.bank.day(DAY1):
        world.pay_bank(world.contract(school))
    import_and_reconcile(world.bank.deliveries(fmt="mt940"))

    tie = TieOut.objects.get(day=DAY1)
    assert (tie.status, tie.difference_fen, tie.unexplained_fen) == (
        TieOutStatus.UNEXPLAINED,
        -10_000,
        -10_000,
    )
    assert tie.details["opening_difference_fen"] == -10_000 and tie.details["other_fen"] == 0
    (found,) = Break.objects.all()
    assert (found.kind, found.day, found.amount_fen) == (BreakKind.BALANCE_DIFFERENCE, DAY1, -10_000)
    assert "期初差异" in found.explanation and "not explained" in found.explanation
    assert "未能逐项说明" in explain(tie)

    proposer, approver = User.objects.create_user("a"), User.objects.create_user("b")
    grant_regulator(user=proposer, jurisdiction=district)
    grant_regulator(user=approver, jurisdiction=district)
    queue.propose_correction(
        item=found,
        by=proposer,
        legs=[
            queue.CorrectionLeg(f"custody_cash:i{school.pk}", "debit", 10_000),
            queue.CorrectionLeg(f"payable:i{school.pk}", "credit", 10_000),
        ],
        reason="开户时的存量资金 money in the account before custody began",
    )
    queue.approve_correction(item=found, by=approver)
    found.refresh_from_db()
    assert (found.state, found.resolution_kind) == (BreakState.RESOLVED, ResolutionKind.CORRECTED)

    with world.bank.day(DAY2):
        pass
    import_and_reconcile(world.bank.deliveries(fmt="mt940")[-1:])
    day2 = TieOut.objects.get(day=DAY2)
    assert (day2.status, day2.difference_fen) == (TieOutStatus.TIED, 0)
    assert day2.details["opening_adjustments_fen"] == 10_000
    assert Break.objects.filter(state__in=[BreakState.OPEN, BreakState.ASSIGNED]).count() == 0


@pytest.mark.django_db
def test_a_gap_between_statements_is_unexplained_and_named(world_factory: Any) -> None:
    world = world_factory(1)
    school = world.institutions[0]
    with world.bank.day(DAY1):
        world.pay_bank(world.contract(school))
    with world.bank.day(DAY2):
        pass
    first, second = world.bank.deliveries(fmt="csv")
    import_and_reconcile([first])
    # The bank's next statement opens 3.00 yuan higher: a movement in no statement we were sent.
    statement = world.bank.statement(school, DAY2)
    shifted = Statement(
        **{**statement.__dict__, "opening_balance_fen": 80_300, "closing_balance_fen": 80_300}
    )
    imported = import_statement(data=write_csv(shifted), allow_gap=True).statement
    reconcile_statement(statement=imported)

    tie = TieOut.objects.get(day=DAY2)
    assert (tie.unexplained_fen, tie.details["statement_gaps_fen"]) == (-300, 300)
    kinds = sorted(Break.objects.values_list("kind", flat=True))
    assert kinds == [BreakKind.BALANCE_DIFFERENCE, BreakKind.SEQUENCE_GAP]
    assert Break.objects.get(kind=BreakKind.BALANCE_DIFFERENCE).details["statement_gaps_fen"] == 300

"""The custody bank simulator: it drives the real services (payouts answered, channels settled, transfers
sent as signed callbacks), keeps a book whose statements agree with the ledger when nothing goes wrong,
applies each fault exactly as asked, writes every format, and does the same for the same seed."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction

from custody.models import Payment, PayoutInstruction, PayoutState
from ledger.models import PendingTransfer
from ledger.money import to_minor
from ledger.selectors import balance_at
from reconciliation.formats import parse_statement
from reconciliation.models import DayCut
from reconciliation.simulator import CustodyBankSimulator, Fault, FaultKind, SimulatorError
from tests.reconciliation.conftest import DAY1, World

pytestmark = pytest.mark.django_db

DAY2 = DAY1 + timedelta(days=1)


def busy_day(world: World) -> None:
    school = world.institutions[0]
    first, second = world.contract(school), world.contract(school)
    world.pay_bank(first)
    world.pay_bank(second)
    world.pay_wechat(world.contract(school))
    world.consume(first, 3)
    world.release(school)


def test_a_clean_day_closes_at_the_ledgers_custody_cash(world_factory: Any) -> None:
    world: World = world_factory(1)
    school = world.institutions[0]
    with world.bank.day(DAY1):
        busy_day(world)
    consumed = Payment.objects.filter(channel="bank").order_by("pk")[0].contract  # 3 of its 10 hours used
    with world.bank.day(DAY2):
        world.refund(consumed)

    assert school.cash_account is not None
    for day in (DAY1, DAY2):
        statement = world.bank.statement(school, day)
        close = DayCut.objects.get(day=day).closes_at
        assert statement.closing_balance_fen == to_minor(balance_at(school.cash_account, close))
    first, second = world.bank.statement(school, DAY1), world.bank.statement(school, DAY2)
    assert (first.sequence, second.sequence) == (1, 2)
    assert second.opening_balance_fen == first.closing_balance_fen
    # Day 1: two transfers in (serials = the platform's transaction ids), one release out; WeChat settles on
    # day 2 (T+1) as one line beside the refund of the 7 hours left.
    assert [line.amount_fen for line in first.lines] == [80_000, 80_000, -24_000]
    assert {line.serial for line in first.lines if line.amount_fen > 0} == set(
        Payment.objects.filter(channel="bank").values_list("transaction_id", flat=True)
    )
    assert sorted(line.amount_fen for line in second.lines) == [-56_000, 80_000]
    assert PayoutInstruction.objects.filter(state=PayoutState.EXECUTED).count() == 2
    assert Payment.objects.filter(settlement_entry__isnull=True).count() == 0


@pytest.mark.parametrize("fmt", ["csv", "xlsx", "camt053", "mt940"])
def test_every_statement_reads_back_from_its_file(world_factory: Any, fmt: str) -> None:
    world: World = world_factory(1, split_over_fen=10_000, batch_refunds=True)
    with world.bank.day(DAY1):
        busy_day(world)
    (delivery,) = world.bank.deliveries(fmt=fmt)
    parsed = parse_statement(delivery.data, filename=delivery.filename)
    original = world.bank.statement(world.institutions[0], DAY1)
    if fmt in ("camt053", "mt940"):  # no running balances in these formats
        original = type(original)(
            **{
                **original.__dict__,
                "lines": tuple(type(x)(**{**x.__dict__, "balance_after_fen": None}) for x in original.lines),
            }
        )
    assert parsed == original


def test_faults_change_the_banks_book_as_asked(world_factory: Any) -> None:
    world: World = world_factory(1)
    school = world.institutions[0]
    with world.bank.day(DAY1) as bank:
        busy_day(world)
        (release,) = PayoutInstruction.objects.all()
        payment = Payment.objects.filter(channel="bank").order_by("pk").first()
        assert payment is not None
        for fault in (
            Fault(FaultKind.MISSING_LINE, target=release.reference),
            Fault(FaultKind.AMOUNT_OFF, target=payment.transaction_id, amount_fen=2),
            Fault(FaultKind.BANK_FEE, amount_fen=1_200),
            Fault(FaultKind.UNKNOWN_REFERENCE, amount_fen=3_300),
        ):
            bank.fault(fault)
    with world.bank.day(DAY2, faults=[Fault(FaultKind.OUT_OF_SEQUENCE)]):
        pass
    with world.bank.day(DAY2 + timedelta(days=1)):
        pass

    lines = world.bank.statement(school, DAY1).lines
    by_serial = {line.serial: line for line in lines}
    missing, off, fee, unknown = world.bank.applied[:4]
    assert release.reference not in {line.reference for line in lines} and missing.amount_fen == -24_000
    assert by_serial[payment.transaction_id].amount_fen == payment.amount_fen + 2 and off.amount_fen == 2
    assert (by_serial[fee.serial].amount_fen, by_serial[fee.serial].summary) == (-1_200, "账户管理费")
    assert by_serial[unknown.serial].amount_fen == 3_300
    assert unknown.target.startswith("HT") and by_serial[unknown.serial].reference == unknown.target
    assert [d.day for d in world.bank.deliveries()] == [DAY1, DAY2 + timedelta(days=1), DAY2]
    # The ledger is as the platform left it: the release was executed there.
    assert PayoutInstruction.objects.get().state == PayoutState.EXECUTED


def test_a_late_booking_moves_to_the_next_day_and_a_repeat_gets_its_own_serial(world_factory: Any) -> None:
    world: World = world_factory(1)
    school = world.institutions[0]
    with world.bank.day(DAY1, faults=[Fault(FaultKind.LATE_SETTLEMENT), Fault(FaultKind.DUPLICATE_LINE)]):
        busy_day(world)
    with world.bank.day(DAY2):
        pass
    late, repeat = world.bank.applied
    first, second = world.bank.statement(school, DAY1), world.bank.statement(school, DAY2)
    assert late.target not in {line.reference for line in first.lines} | {line.serial for line in first.lines}
    assert late.target in {line.reference for line in second.lines} | {line.serial for line in second.lines}
    serials = [line.serial for line in first.lines]
    assert repeat.serial in serials and len(set(serials)) == len(serials)
    assert late.target != repeat.target


def test_two_days_out_of_sequence_in_a_row_each_arrive_after_their_next_day(world_factory: Any) -> None:
    """Found by the property test: moving each marked day after its successor in turn undid both moves."""
    world: World = world_factory(1)
    days = [DAY1 + timedelta(days=n) for n in range(4)]
    for index, day in enumerate(days):
        faults = [Fault(FaultKind.OUT_OF_SEQUENCE)] if index in (1, 2) else []
        with world.bank.day(day, faults=faults):
            pass

    assert [d.day for d in world.bank.deliveries()] == [days[0], days[3], days[2], days[1]]


def test_a_refused_instruction_is_voided_and_not_booked(world_factory: Any) -> None:
    world: World = world_factory(1)
    school = world.institutions[0]
    with world.bank.day(DAY1) as bank:
        contract = world.contract(school)
        world.pay_bank(contract)
        world.consume(contract, 2)
        (payout,) = world.release(school)
        bank.execute_instructions(fail=[payout.reference])
    payout.refresh_from_db()
    assert payout.state == PayoutState.FAILED
    assert PendingTransfer.objects.get(pk=payout.pending_transfer_id).state == PendingTransfer.State.VOIDED
    assert [line.amount_fen for line in world.bank.statement(school, DAY1).lines] == [80_000]


def test_the_same_seed_makes_the_same_choices(world_factory: Any) -> None:
    def run() -> list[tuple[str, str, int]]:
        with transaction.atomic():
            world: World = world_factory(1, seed=42)
            with world.bank.day(
                DAY1, faults=[Fault(FaultKind.DUPLICATE_LINE), Fault(FaultKind.UNKNOWN_REFERENCE)]
            ):
                busy_day(world)
            lines = world.bank.statement(world.institutions[0], DAY1).lines
            shape = [
                (line.serial if line.serial[0].isdigit() else "txn", line.summary[:2], line.amount_fen)
                for line in lines
            ]
            shape += [
                (f.kind, f.target[:10] if f.kind == FaultKind.UNKNOWN_REFERENCE else "", f.amount_fen)
                for f in world.bank.applied
            ]
            transaction.set_rollback(True)
        return shape

    assert run() == run()


def test_misuse_is_refused(world_factory: Any) -> None:
    world: World = world_factory(1)
    with pytest.raises(SimulatorError):
        world.bank.execute_instructions()
    with (
        pytest.raises(SimulatorError),
        world.bank.day(DAY1, faults=[Fault(FaultKind.MISSING_LINE, target="PO0")]),
    ):
        pass
    with pytest.raises(SimulatorError), world.bank.day(DAY2, faults=[Fault(FaultKind.AMOUNT_OFF)]):
        pass  # nothing booked to change


def test_a_book_opened_later_starts_from_what_was_paid_and_executes_only_what_it_is_told(
    world_factory: Any, bank_key: Any
) -> None:
    world: World = world_factory(1)
    school = world.institutions[0]
    with world.bank.day(DAY1, execute=False):
        contract = world.contract(school)
        world.pay_bank(contract)
        world.consume(contract, 2)
        first, *_ = world.release(school)
    # A second book opened now (a bank's books when reconciliation starts): the payment is in its opening
    # balance, not a new credit.
    later = CustodyBankSimulator(
        institutions=[school], bank_key=bank_key, key_id="bank-test", opening_balances={school.pk: 80_000}
    )
    with later.day(DAY2, execute=False) as bank:
        world.consume(contract, 1)
        second, *_ = world.release(school)
        assert [p.pk for p in bank.execute_instructions(only=[second.pk])] == [second.pk]
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.state, second.state) == (PayoutState.INSTRUCTED, PayoutState.EXECUTED)
    assert [line.amount_fen for line in later.statement(school, DAY2).lines] == [-second.amount_fen]
    assert later.balance(school) == 80_000 - second.amount_fen

"""Orders never paid (待支付): the parent may cancel one, and one left unpaid past its policy's window lapses
(逾期未付款自动取消), so it stops holding hours against the anti-splitting sum; a payment arriving after that
is refused and changes nothing. No money moves in any of it.

The races with a payment callback are played both ways on PostgreSQL, with real concurrent sessions: one
holds the contract's row until the other is seen waiting for it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.db import connection, transaction

from custody.errors import PaymentRejected, RuleViolation
from custody.models import CallbackLog, CallbackOutcome, CancelReason, Contract, ContractState, Payment
from custody.services.contracts import (
    cancel_unpaid_contract,
    lapse_unpaid_contracts,
    unpaid_lapses_at,
)
from custody.services.policy import publish_policy
from ledger import clock
from ledger.models import Account, Entry
from tests.custody.conftest import ContractFactory
from tests.custody.flows.conftest import NOW, BankCallbackFactory

pytestmark = pytest.mark.django_db


def untouched_accounts(contract: Contract) -> bool:
    accounts = Account.objects.filter(pk__in=[contract.prepaid_account_id, contract.refund_account_id])
    return all(a.debits_posted == a.credits_posted == a.posting_count == 0 for a in accounts)


def test_the_parent_cancels_an_unpaid_order_and_its_hours_no_longer_count(
    make_contract: ContractFactory,
) -> None:
    order = make_contract(paid_hours=60)
    with pytest.raises(RuleViolation) as caught:
        make_contract(paid_hours=1)
    assert caught.value.rule == "anti_splitting_hours"
    entries = Entry.objects.count()

    cancel_unpaid_contract(contract=order)

    stored = Contract.objects.get(pk=order.pk)
    assert (stored.state, stored.cancel_reason, stored.ended_at) == (
        ContractState.CANCELLED,
        CancelReason.PARENT,
        NOW,
    )
    assert (order.state, order.cancel_reason) == (stored.state, stored.cancel_reason)
    assert Entry.objects.count() == entries and untouched_accounts(stored)
    assert make_contract(paid_hours=60).state == ContractState.AWAITING_PAYMENT


def test_a_paid_contract_cannot_be_cancelled_only_refunded(
    make_contract: ContractFactory, pay: Callable[[Contract], Contract]
) -> None:
    paid = pay(make_contract())
    with pytest.raises(RuleViolation) as caught:
        cancel_unpaid_contract(contract=paid)
    assert caught.value.rule == "cancel_unpaid_only"
    assert "请申请退费" in caught.value.message and "claim a refund" in caught.value.message
    assert Contract.objects.get(pk=paid.pk).state == ContractState.ACTIVE
    cancelled = make_contract()
    cancel_unpaid_contract(contract=cancelled)
    with pytest.raises(RuleViolation):  # a repeat is refused too, never a silent no-op
        cancel_unpaid_contract(contract=cancelled)


def test_an_order_lapses_exactly_when_its_window_ends(make_contract: ContractFactory) -> None:
    order = make_contract()
    deadline = unpaid_lapses_at(order)
    assert deadline == NOW + timedelta(days=7)  # the national default

    with clock.frozen_at(deadline - timedelta(seconds=1)):
        assert lapse_unpaid_contracts() == 0
    assert Contract.objects.get(pk=order.pk).state == ContractState.AWAITING_PAYMENT

    with clock.frozen_at(deadline):
        assert lapse_unpaid_contracts() == 1
        assert lapse_unpaid_contracts() == 0  # a second run changes nothing
    stored = Contract.objects.get(pk=order.pk)
    assert (stored.state, stored.cancel_reason, stored.ended_at) == (
        ContractState.CANCELLED,
        CancelReason.UNPAID,
        deadline,
    )
    assert untouched_accounts(stored)


def test_each_order_keeps_the_window_of_the_policy_it_was_signed_under(
    make_contract: ContractFactory, jurisdiction
) -> None:
    early = make_contract(paid_hours=10)
    publish_policy(
        jurisdiction=jurisdiction, changes={"unpaid_contract_lapse_days": 2}, changed_by=None, note="两天"
    )
    late = make_contract(paid_hours=10)
    assert unpaid_lapses_at(late) == NOW + timedelta(days=2)

    with clock.frozen_at(NOW + timedelta(days=2)):
        assert lapse_unpaid_contracts() == 1
    assert Contract.objects.get(pk=late.pk).state == ContractState.CANCELLED
    assert Contract.objects.get(pk=early.pk).state == ContractState.AWAITING_PAYMENT
    with clock.frozen_at(NOW + timedelta(days=7)):
        assert lapse_unpaid_contracts() == 1
    assert Contract.objects.get(pk=early.pk).state == ContractState.CANCELLED


def test_a_payment_after_the_order_lapsed_is_refused_and_changes_nothing(
    make_contract: ContractFactory, bank_callback: BankCallbackFactory
) -> None:
    order = make_contract()
    with clock.frozen_at(unpaid_lapses_at(order)):
        lapse_unpaid_contracts()
        entries = Entry.objects.count()
        with pytest.raises(PaymentRejected) as caught:
            bank_callback(order).send()
    assert caught.value.details["reason"] == "contract_not_awaiting_payment"
    assert not Payment.objects.filter(contract=order).exists()
    assert Entry.objects.count() == entries
    assert CallbackLog.objects.filter(outcome=CallbackOutcome.REJECTED).count() == 1


def test_a_paid_contract_never_lapses(
    make_contract: ContractFactory, pay: Callable[[Contract], Contract]
) -> None:
    paid = pay(make_contract())
    with clock.frozen_at(NOW + timedelta(days=30)):
        assert lapse_unpaid_contracts() == 0
    assert Contract.objects.get(pk=paid.pk).state == ContractState.ACTIVE


# --- racing a payment (PostgreSQL) ----------------------------------------------------------------------


def _wait_until_blocked(pid: int) -> None:
    """Until the session ``pid`` waits for a row lock (or 10 s)."""
    deadline = time.monotonic() + 10
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid])
            row = cursor.fetchone()
            if row is not None and row[0] == "Lock":
                return
            time.sleep(0.01)
    raise AssertionError(f"session {pid} never waited for the lock")


def _in_thread(call: Callable[[], object], pids: list[int], outcome: list[object]) -> threading.Thread:
    def run() -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                pids.append(cursor.fetchone()[0])
            outcome.append(call())
        except Exception as error:  # noqa: BLE001 - handed to the test to assert on
            outcome.append(error)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _backend_pid(pids: list[int]) -> int:
    deadline = time.monotonic() + 10
    while not pids and time.monotonic() < deadline:
        time.sleep(0.01)
    return pids[0]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_lapse_holding_the_order_first_makes_the_racing_payment_refused(
    make_contract: ContractFactory, bank_callback: BankCallbackFactory
) -> None:
    order = make_contract()
    pids: list[int] = []
    outcome: list[object] = []
    with clock.frozen_at(unpaid_lapses_at(order)), transaction.atomic():
        callback = bank_callback(order)  # signed now: within the channel's time window
        assert lapse_unpaid_contracts() == 1  # not committed yet: the row stays locked
        payer = _in_thread(callback.send, pids, outcome)
        _wait_until_blocked(_backend_pid(pids))
    payer.join(timeout=30)
    assert isinstance(outcome[0], PaymentRejected)
    assert outcome[0].details["reason"] == "contract_not_awaiting_payment"
    assert Contract.objects.get(pk=order.pk).state == ContractState.CANCELLED
    assert not Payment.objects.filter(contract=order).exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_payment_holding_the_order_first_wins_over_the_racing_lapse(
    make_contract: ContractFactory, bank_callback: BankCallbackFactory
) -> None:
    order = make_contract()
    pids: list[int] = []
    outcome: list[object] = []
    with clock.frozen_at(unpaid_lapses_at(order)):
        with transaction.atomic():
            bank_callback(order).send()  # not committed yet: the contract's row stays locked
            lapse = _in_thread(lapse_unpaid_contracts, pids, outcome)
            _wait_until_blocked(_backend_pid(pids))
        lapse.join(timeout=30)
    assert outcome == [0]
    stored = Contract.objects.get(pk=order.pk)
    assert (stored.state, stored.cancel_reason) == (ContractState.ACTIVE, "")
    assert Payment.objects.filter(contract=order).count() == 1

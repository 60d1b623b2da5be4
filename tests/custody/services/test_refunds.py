"""answer_refund answers a claimed refund only: approved, instructed, paid or rejected refunds are refused
with ``RefundAlreadyAnswered`` and nothing moves. A failed bank payout puts an instructed refund back to
approved through the bank's answer alone (payouts.record_payout_result), never through the institution's
answer."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from custody.errors import IllegalTransition, RefundAlreadyAnswered
from custody.models import Contract, PayoutInstruction, PayoutState, Refund, RefundState
from custody.services.payouts import record_payout_result
from custody.services.refunds import answer_refund, claim_refund, instruct_refund_payouts
from tests.custody.flows.conftest import (  # noqa: F401 - fixtures, registered by import
    _business_time,
    _channels,
    _flow_invariants,
    available,
    bank_callback,
    bank_key,
    ledger_rows,
    paid_contract,
    pay,
    refund_payable,
    wechat_key,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def contract(request: pytest.FixtureRequest) -> Contract:
    """The flows' paid contract: 20 paid hours, 1,600.00 yuan, paid through the bank."""
    paid: Contract = request.getfixturevalue("paid_contract")
    return paid


def approved_refund(contract: Contract, key: str) -> Refund:
    return answer_refund(refund=claim_refund(contract=contract, idempotency_key=key), approve=True)


@pytest.mark.parametrize("approve", [True, False])
def test_an_instructed_refund_cannot_be_answered_again(contract: Contract, approve: bool) -> None:
    refund = approved_refund(contract, "s-1")
    (payout,) = instruct_refund_payouts()
    rows = ledger_rows()

    with pytest.raises(RefundAlreadyAnswered) as info:
        answer_refund(refund=refund, approve=approve, reason="再议 again")

    error = info.value
    assert isinstance(error, IllegalTransition)  # still a state-machine refusal for callers that catch that
    assert error.code == "refund_already_answered"
    assert error.details == {
        "entity": "refund",
        "refund": refund.pk,
        "current": RefundState.INSTRUCTED,
        "target": RefundState.APPROVED if approve else RefundState.REJECTED,
    }
    assert "只有待答复" in error.message and "only a claimed refund" in error.message
    refund.refresh_from_db()
    assert (refund.state, refund.amount_fen) == (RefundState.INSTRUCTED, 160_000)
    assert ledger_rows() == rows
    assert PayoutInstruction.objects.get(pk=payout.pk).state == PayoutState.INSTRUCTED


@pytest.mark.parametrize("state", [RefundState.APPROVED, RefundState.PAID, RefundState.REJECTED])
def test_answered_refunds_in_every_other_state_are_refused(contract: Contract, state: str) -> None:
    claim = claim_refund(contract=contract, idempotency_key="s-2")
    if state == RefundState.REJECTED:
        refund = answer_refund(refund=claim, approve=False, reason="已协商继续上课")
    else:
        refund = answer_refund(refund=claim, approve=True)
    if state == RefundState.PAID:
        (payout,) = instruct_refund_payouts()
        record_payout_result(reference=payout.reference, executed=True)
    refund.refresh_from_db()
    assert refund.state == state
    rows = ledger_rows()

    with pytest.raises(RefundAlreadyAnswered):
        answer_refund(refund=refund, approve=True)

    assert Refund.objects.get(pk=refund.pk).state == state
    assert ledger_rows() == rows


def test_a_failed_payout_is_reopened_by_the_bank_answer_not_the_institution(contract: Contract) -> None:
    refund = approved_refund(contract, "s-3")
    (payout,) = instruct_refund_payouts()

    record_payout_result(reference=payout.reference, executed=False, reason="账户已销户 account closed")

    refund.refresh_from_db()
    assert (refund.state, refund.amount_fen) == (RefundState.APPROVED, 160_000)
    assert available(refund_payable(contract)) == 160_000
    with pytest.raises(RefundAlreadyAnswered):  # approved again by the bank, not open to a new answer
        answer_refund(refund=refund, approve=True)
    (retry,) = instruct_refund_payouts()
    assert (retry.refund_id, retry.amount_fen) == (refund.pk, 160_000)


def test_a_refund_has_one_live_instruction_and_keeps_its_failed_ones(contract: Contract) -> None:
    refund = approved_refund(contract, "s-4")
    (first,) = instruct_refund_payouts()
    record_payout_result(reference=first.reference, executed=False, reason="账户已销户 account closed")
    (second,) = instruct_refund_payouts()

    assert list(refund.payouts.order_by("pk").values_list("state", flat=True)) == [
        PayoutState.FAILED,
        PayoutState.INSTRUCTED,
    ]
    # The database refuses a second live instruction, whatever the code does.
    with pytest.raises(IntegrityError), transaction.atomic():
        PayoutInstruction.objects.filter(pk=first.pk).update(state=PayoutState.INSTRUCTED)
    record_payout_result(reference=second.reference, executed=True)
    refund.refresh_from_db()
    assert refund.state == RefundState.PAID

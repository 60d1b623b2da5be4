"""Flow 5, refunds: the parent claims, the institution answers within 5 working days (silence approves), the
approved value moves to refund_payable:c and the bank pays it back to the account that paid."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta

import pytest

from custody.errors import IllegalTransition, RuleViolation
from custody.models import (
    Contract,
    ContractState,
    LessonState,
    PayoutInstruction,
    PayoutKind,
    PayoutState,
    Refund,
    RefundState,
)
from custody.selectors.refunds import overdue_refunds, refund_quote
from custody.services.lessons import (
    NewLesson,
    confirm_lesson,
    dispute_lesson,
    record_lessons,
    resolve_dispute,
)
from custody.services.payouts import record_payout_result
from custody.services.refunds import (
    answer_refund,
    approve_unanswered_refunds,
    claim_refund,
    instruct_refund_payouts,
)
from ledger import clock
from ledger.money import cny
from tests.custody.conftest import ContractFactory
from tests.custody.flows.conftest import (
    PAYER_ACCOUNT,
    SHANGHAI,
    available,
    cash,
    ledger_rows,
    posted,
    prepaid,
    refund_payable,
)

pytestmark = pytest.mark.django_db


def lessons(contract: Contract, count: int, *, key: str = "L") -> list:
    return record_lessons(
        lessons=[
            NewLesson(contract=contract, held_at=clock.now(), idempotency_key=f"{key}{contract.pk}-{n}")
            for n in range(count)
        ]
    )


@pytest.fixture
def three_hour_contract(make_contract: ContractFactory, pay: Callable[[Contract], Contract]) -> Contract:
    return pay(make_contract(paid_hours=3, amount=cny("100.00")))


def test_a_refund_after_the_start_pays_back_the_unconsumed_paid_hours_by_the_schedule(
    three_hour_contract: Contract,
) -> None:
    contract = three_hour_contract
    institution = contract.institution
    clock.advance(timedelta(days=14))  # the course has started
    (taught,) = lessons(contract, 1)
    confirm_lesson(lesson=taught)

    claim = claim_refund(contract=contract, note="搬家 moving away", idempotency_key="claim-1")
    assert (claim.state, claim.answer_due) == (
        RefundState.CLAIMED,
        datetime(2024, 3, 25, 10, tzinfo=SHANGHAI),
    )
    approved = answer_refund(refund=claim, approve=True)

    assert (approved.state, approved.approved_by) == (RefundState.APPROVED, "institution")
    assert (approved.amount_fen, approved.paid_hours) == (6_667, 2)  # 33.33 + 33.34
    assert approved.payout_due == date(2024, 4, 1)  # 10 working days after Monday 18 March
    assert posted(prepaid(contract)) == 0
    assert posted(refund_payable(contract)) == 6_667
    assert approved.entry is not None and approved.entry.idempotency_key == f"refund:{approved.pk}:approve"
    stored = Contract.objects.get(pk=contract.pk)
    assert (stored.state, stored.paid_hours_refunded) == (ContractState.REFUNDED, 2)

    (payout,) = instruct_refund_payouts()
    assert (payout.kind, payout.amount_fen, payout.refund_id) == (PayoutKind.REFUND, 6_667, approved.pk)
    assert payout.destination_account == PAYER_ACCOUNT  # 原路返回
    assert PayoutInstruction.objects.get(pk=payout.pk).destination_account == PAYER_ACCOUNT  # as stored
    assert payout.reference.startswith("RF20240318")
    assert Refund.objects.get(pk=approved.pk).state == RefundState.INSTRUCTED
    assert available(cash(institution)) == 10_000 - 6_667
    assert instruct_refund_payouts() == []

    record_payout_result(reference=payout.reference, executed=True, bank_reference="B-1")
    paid = Refund.objects.get(pk=approved.pk)
    assert (paid.state, paid.paid_at) == (RefundState.PAID, clock.now())
    assert posted(refund_payable(contract)) == 0
    assert posted(cash(institution)) == 3_333
    assert posted(f"payable:i{institution.pk}") == 3_333


def test_before_the_course_starts_everything_is_refunded_within_five_working_days(
    paid_contract: Contract,
) -> None:
    assert refund_quote(paid_contract).before_start
    claim = claim_refund(contract=paid_contract, idempotency_key="claim-2")

    approved = answer_refund(refund=claim, approve=True)

    assert (approved.amount_fen, approved.paid_hours) == (160_000, 20)
    assert approved.payout_due == date(2024, 3, 11)
    assert posted(prepaid(paid_contract)) == 0
    assert Contract.objects.get(pk=paid_contract.pk).state == ContractState.REFUNDED


def test_unconfirmed_lessons_stay_pending_and_are_not_refunded(three_hour_contract: Contract) -> None:
    contract = three_hour_contract
    taught, waiting = lessons(contract, 2)
    confirm_lesson(lesson=taught)

    claim = claim_refund(contract=contract, idempotency_key="claim-3")
    approved = answer_refund(refund=claim, approve=True)

    assert (approved.amount_fen, approved.paid_hours) == (3_334, 1)
    stored = Contract.objects.get(pk=contract.pk)
    assert (stored.state, stored.hours_pending) == (ContractState.ACTIVE, 1)  # the lesson is still held
    confirm_lesson(lesson=waiting)
    assert Contract.objects.get(pk=contract.pk).state == ContractState.REFUNDED
    assert posted(prepaid(contract)) == 0


def test_a_lesson_voided_after_the_refund_leaves_its_value_for_a_new_claim(
    three_hour_contract: Contract,
) -> None:
    contract = three_hour_contract
    (disputed,) = lessons(contract, 1)
    first = answer_refund(refund=claim_refund(contract=contract, idempotency_key="c-a"), approve=True)
    assert first.amount_fen == 6_667
    (payout,) = instruct_refund_payouts()
    record_payout_result(reference=payout.reference, executed=True)

    dispute_lesson(lesson=disputed, reason="未上课 not held")
    resolve_dispute(lesson=disputed, release=False, note="认可 agreed", by="institution")

    assert available(prepaid(contract)) == 3_333
    assert Contract.objects.get(pk=contract.pk).state == ContractState.ACTIVE
    second = answer_refund(refund=claim_refund(contract=contract, idempotency_key="c-b"), approve=True)
    assert (second.amount_fen, second.paid_hours) == (3_333, 1)
    assert Contract.objects.get(pk=contract.pk).state == ContractState.REFUNDED


def test_silence_approves_after_five_working_days(paid_contract: Contract) -> None:
    claim = claim_refund(contract=paid_contract, idempotency_key="claim-4")
    assert claim.answer_due == datetime(2024, 3, 11, 10, tzinfo=SHANGHAI)

    assert approve_unanswered_refunds(now=claim.answer_due - timedelta(seconds=1)) == 0
    assert Refund.objects.get(pk=claim.pk).state == RefundState.CLAIMED

    clock.advance(claim.answer_due - clock.now())
    assert approve_unanswered_refunds() == 1
    approved = Refund.objects.get(pk=claim.pk)
    assert (approved.state, approved.approved_by, approved.amount_fen) == ("approved", "silence", 160_000)
    assert approve_unanswered_refunds() == 0


def test_a_rejection_needs_a_reason_and_the_contract_goes_on(paid_contract: Contract) -> None:
    claim = claim_refund(contract=paid_contract, idempotency_key="claim-5")
    with pytest.raises(RuleViolation) as info:
        answer_refund(refund=claim, approve=False)
    assert info.value.rule == "rejection_needs_reason"

    rejected = answer_refund(refund=claim, approve=False, reason="已超过约定退费期 past the agreed window")

    assert rejected.state == RefundState.REJECTED
    assert posted(prepaid(paid_contract)) == 160_000
    with pytest.raises(IllegalTransition):
        answer_refund(refund=rejected, approve=True)
    (held,) = lessons(paid_contract, 1)  # teaching resumes
    assert held.state == LessonState.PENDING


def test_claims_are_idempotent_one_at_a_time_and_only_for_refundable_contracts(
    paid_contract: Contract, make_contract: ContractFactory, make_student: Callable
) -> None:
    claim = claim_refund(contract=paid_contract, idempotency_key="claim-6")
    assert claim_refund(contract=paid_contract, idempotency_key="claim-6").pk == claim.pk
    with pytest.raises(RuleViolation) as info:
        claim_refund(contract=paid_contract, idempotency_key="claim-7")
    assert info.value.rule == "refund_already_open"

    unpaid = make_contract(student=make_student())
    with pytest.raises(RuleViolation) as info:
        claim_refund(contract=unpaid, idempotency_key="claim-8")
    assert info.value.rule == "refund_not_allowed"
    # Said in words, Chinese and English, not as the state's code.
    assert info.value.message.startswith("合同状态为待支付 awaiting payment，"), info.value.message
    assert "awaiting_payment" not in info.value.message
    with pytest.raises(RuleViolation) as info:
        claim_refund(contract=unpaid, idempotency_key="claim-6")
    assert info.value.rule == "idempotency_key_reused"
    assert Refund.objects.count() == 1


def test_a_failed_refund_payout_is_instructed_again_and_overdue_refunds_are_listed(
    paid_contract: Contract,
) -> None:
    approved = answer_refund(
        refund=claim_refund(contract=paid_contract, idempotency_key="claim-9"), approve=True
    )
    (payout,) = instruct_refund_payouts()

    failed = record_payout_result(
        reference=payout.reference, executed=False, reason="账户已销户 account closed"
    )

    assert (failed.state, failed.refund_id) == (PayoutState.FAILED, approved.pk)  # it stays linked
    assert Refund.objects.get(pk=approved.pk).state == RefundState.APPROVED
    assert available(refund_payable(paid_contract)) == 160_000
    assert list(overdue_refunds(today=date(2024, 3, 11))) == []
    assert [r.pk for r in overdue_refunds(today=date(2024, 3, 12))] == [approved.pk]

    rows = ledger_rows()
    (retry,) = instruct_refund_payouts()
    assert retry.refund_id == approved.pk
    assert [p.state for p in PayoutInstruction.objects.filter(refund=approved).order_by("pk")] == [
        PayoutState.FAILED,
        PayoutState.INSTRUCTED,
    ]
    assert ledger_rows()[1] == rows[1] + 1
    record_payout_result(reference=retry.reference, executed=True)
    assert list(overdue_refunds(today=date(2024, 3, 12))) == []


def test_approval_enqueues_the_payout_instruction_after_commit(
    paid_contract: Contract, django_capture_on_commit_callbacks: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    from custody import tasks

    sent: list[dict] = []
    monkeypatch.setattr(tasks.instruct_refund_payouts_task, "delay", lambda **kwargs: sent.append(kwargs))
    claim = claim_refund(contract=paid_contract, idempotency_key="claim-10")

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        answer_refund(refund=claim, approve=True)
    assert sent == []  # nothing is enqueued before the commit
    for callback in callbacks:
        callback()
    assert sent == [{"refund_ids": [claim.pk]}]
    assert tasks.instruct_refund_payouts_task(refund_ids=[claim.pk]) == 1
    assert Refund.objects.get(pk=claim.pk).state == RefundState.INSTRUCTED

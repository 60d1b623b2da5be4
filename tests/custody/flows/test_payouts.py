"""Flow 4, release payouts: confirmed lessons are paid out to institutions as bank instructions, each a
hold on the custody account that the bank's answer posts or voids."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from custody.errors import IllegalTransition, NotFound, RuleViolation
from custody.models import Contract, PayoutInstruction, PayoutKind, PayoutState
from custody.selectors.payouts import awaiting_bank, by_reference, payouts_of
from custody.services.closures import order_closure
from custody.services.institutions import freeze_institution
from custody.services.lessons import NewLesson, auto_confirm_due_lessons, record_lessons
from custody.services.payouts import record_payout_result, run_release_payouts
from custody.services.policy import publish_policy
from ledger import clock
from ledger.models import PendingTransfer
from tests.custody.conftest import ContractFactory, InstitutionFactory
from tests.custody.flows.conftest import available, cash, ledger_rows, payable, posted

pytestmark = pytest.mark.django_db


def consume(contract: Contract, hours: int, *, key: str = "P") -> None:
    """Record ``hours`` one-hour lessons and let silence confirm them."""
    record_lessons(
        lessons=[
            NewLesson(contract=contract, held_at=clock.now(), idempotency_key=f"{key}{contract.pk}-{n}")
            for n in range(hours)
        ]
    )
    assert auto_confirm_due_lessons(now=clock.now() + timedelta(days=40)) == hours


def test_a_release_run_instructs_one_payout_per_institution_and_the_bank_executes_it(
    paid_contract: Contract,
) -> None:
    institution = paid_contract.institution
    consume(paid_contract, 3)
    assert posted(payable(institution)) == 24_000

    (payout,) = run_release_payouts()

    assert payout.kind == PayoutKind.RELEASE
    assert payout.amount_fen == 24_000
    assert payout.reference == f"PO20240304{payout.pk:08d}"
    assert payout.destination_account == institution.settlement_account_number
    assert (
        PendingTransfer.objects.get(pk=payout.pending_transfer_id).idempotency_key
        == f"payout:{payout.pk}:hold"
    )
    assert available(payable(institution)) == 0  # reserved by the hold, not yet paid
    assert posted(payable(institution)) == 24_000
    assert available(cash(institution)) == 160_000 - 24_000
    assert run_release_payouts() == []  # nothing new to pay

    assert [p.pk for p in awaiting_bank()] == [payout.pk]
    assert by_reference(payout.reference) == payout
    assert [p.pk for p in payouts_of(institution, kind="release")] == [payout.pk]
    assert list(payouts_of(institution, kind="refund")) == []

    executed = record_payout_result(reference=payout.reference, executed=True, bank_reference="BANK-778")
    assert (executed.state, executed.bank_reference) == (PayoutState.EXECUTED, "BANK-778")
    assert posted(payable(institution)) == 0
    assert posted(cash(institution)) == 136_000

    rows = ledger_rows()
    again = record_payout_result(reference=payout.reference, executed=True, bank_reference="BANK-778")
    assert again.state == PayoutState.EXECUTED
    assert ledger_rows() == rows
    with pytest.raises(IllegalTransition):
        record_payout_result(reference=payout.reference, executed=False, reason="太晚了 too late")
    assert list(awaiting_bank()) == []
    with pytest.raises(NotFound):
        record_payout_result(reference="PO20240304XXXXXXXX", executed=True)


def test_a_failed_payout_voids_the_hold_and_the_next_run_pays_again(paid_contract: Contract) -> None:
    institution = paid_contract.institution
    consume(paid_contract, 2)
    (payout,) = run_release_payouts()

    with pytest.raises(RuleViolation):
        record_payout_result(reference=payout.reference, executed=False)
    failed = record_payout_result(
        reference=payout.reference, executed=False, reason="账户冻结 account frozen"
    )

    assert (failed.state, failed.failure_reason) == (PayoutState.FAILED, "账户冻结 account frozen")
    assert PendingTransfer.objects.get(pk=payout.pending_transfer_id).state == "voided"
    assert available(payable(institution)) == 16_000
    assert posted(cash(institution)) == 160_000
    (retry,) = run_release_payouts()
    assert retry.pk != payout.pk
    assert retry.amount_fen == 16_000


def test_frozen_and_closing_institutions_get_no_release_payouts(
    make_institution: InstitutionFactory,
    make_course: Callable,
    make_contract: ContractFactory,
    make_student: Callable,
    pay: Callable,
) -> None:
    contracts = []
    for _ in range(3):
        institution = make_institution()
        course = make_course(institution=institution)
        contract = pay(make_contract(course=course, student=make_student()))
        consume(contract, 1)
        contracts.append(contract)
    frozen, closing, active = (c.institution for c in contracts)
    freeze_institution(institution=frozen, reason="监管调查 investigation")
    order_closure(institution=closing, mode="planned", reason="计划停办 planned closure")

    payouts = run_release_payouts()

    assert [p.institution_id for p in payouts] == [active.pk]
    assert available(payable(frozen)) == available(payable(closing)) == 8_000


def test_a_weekly_cadence_pays_each_institution_at_most_once_a_week(paid_contract: Contract) -> None:
    publish_policy(
        jurisdiction=paid_contract.institution.jurisdiction,
        changes={"release_cadence": "weekly"},
        changed_by=None,
        note="一周一结 weekly (Xiamen)",
    )
    consume(paid_contract, 1, key="W")
    assert len(run_release_payouts()) == 1
    consume(paid_contract, 1, key="X")

    clock.advance(timedelta(days=6))
    assert run_release_payouts() == []
    assert len(run_release_payouts(ignore_cadence=True)) == 1
    consume(paid_contract, 1, key="Y")
    clock.advance(timedelta(days=7))
    (payout,) = run_release_payouts()
    assert payout.amount_fen == 8_000


def test_a_release_never_exceeds_the_cash_in_custody(
    make_contract: ContractFactory, make_student: Callable, wechat_callback: Callable, pay: Callable
) -> None:
    settled = pay(make_contract())
    unsettled = make_contract(student=make_student())
    wechat_callback(unsettled, txn="4200000077").send()  # paid, still in clearing
    consume(settled, 20)
    consume(unsettled, 5, key="U")
    institution = settled.institution
    assert posted(payable(institution)) == 25 * 8_000
    assert posted(cash(institution)) == 160_000

    (payout,) = run_release_payouts()

    assert payout.amount_fen == 160_000
    assert available(cash(institution)) == 0
    assert PayoutInstruction.objects.count() == 1

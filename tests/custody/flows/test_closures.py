"""Flow 6, closures: every contract's unconsumed value becomes exactly one approved closure refund, paid back
through the bank; the run is resumable and running it twice changes nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.db import IntegrityError, connection, transaction

from custody.errors import RuleViolation
from custody.models import (
    ClosureState,
    Contract,
    ContractState,
    InstitutionState,
    Lesson,
    LessonState,
    PayoutInstruction,
    Refund,
    RefundReason,
    RefundState,
)
from custody.services import closures
from custody.services.closures import order_closure, run_closure
from custody.services.lessons import NewLesson, confirm_lesson, dispute_lesson, record_lessons
from custody.services.payouts import record_payout_result, run_release_payouts
from custody.services.refunds import answer_refund, claim_refund, instruct_refund_payouts
from ledger import clock
from tests.custody.conftest import ContractFactory
from tests.custody.flows.conftest import (
    available,
    cash,
    ledger_rows,
    payable,
    posted,
    prepaid,
    refund_payable,
)

pytestmark = pytest.mark.django_db


def lessons(contract: Contract, count: int, *, key: str = "L") -> list[Lesson]:
    return record_lessons(
        lessons=[
            NewLesson(contract=contract, held_at=clock.now(), idempotency_key=f"{key}{contract.pk}-{n}")
            for n in range(count)
        ]
    )


@pytest.fixture
def school(make_contract: ContractFactory, make_student: Callable, pay: Callable) -> dict[str, Contract]:
    """One institution with: a contract part taught (2 confirmed, 1 pending, 1 disputed lesson), one not
    started, one fully consumed, and one never paid."""
    taught = pay(make_contract(student=make_student()))
    done, pending, disputed = lessons(taught, 4)[:3]
    confirm_lesson(lesson=done)
    dispute_lesson(lesson=disputed, reason="未上课 not held")
    confirm_lesson(
        lesson=Lesson.objects.filter(contract=taught, state="pending").exclude(pk=pending.pk).get()
    )
    untouched = pay(make_contract(student=make_student()))
    consumed = pay(make_contract(student=make_student(), paid_hours=2))
    for held in lessons(consumed, 2, key="C"):
        confirm_lesson(lesson=held)
    unpaid = make_contract(student=make_student())
    return {"taught": taught, "untouched": untouched, "consumed": consumed, "unpaid": unpaid}


def test_an_abnormal_closure_refunds_every_contract_once_and_closes_the_institution(
    school: dict[str, Contract],
) -> None:
    institution = school["taught"].institution
    closure = order_closure(institution=institution, mode="abnormal", reason="负责人失联 owner unreachable")
    assert institution.state == InstitutionState.FROZEN
    assert closure.refunds_start_at == clock.now()

    finished = run_closure(closure=closure, batch_size=1)

    assert finished.state == ClosureState.COMPLETED
    assert (finished.contracts_total, finished.contracts_done, finished.lessons_voided) == (2, 2, 2)
    assert finished.refunded_fen == 160_000 - 2 * 8_000 + 160_000
    taught, untouched = school["taught"], school["untouched"]
    for contract, amount, hours in ((taught, 144_000, 18), (untouched, 160_000, 20)):
        (refund,) = Refund.objects.filter(contract=contract)
        assert (refund.reason, refund.approved_by) == (RefundReason.CLOSURE, "closure")
        assert (refund.amount_fen, refund.paid_hours, refund.state) == (amount, hours, RefundState.INSTRUCTED)
        assert refund.idempotency_key == f"closure:{closure.pk}:contract:{contract.pk}"
        assert refund.entry is not None and refund.entry.idempotency_key == refund.idempotency_key
        assert refund.claimed_at == refund.answered_at == clock.now() and refund.claim_note == closure.reason
        assert refund.payout_due is not None and refund.answer_due is None and refund.paid_at is None
        assert posted(prepaid(contract)) == 0  # invariant 10
        assert posted(refund_payable(contract)) == amount
        assert Contract.objects.get(pk=contract.pk).state == ContractState.REFUNDED
    assert Lesson.objects.filter(contract=taught, state=LessonState.VOIDED).count() == 2
    assert not Lesson.objects.filter(state__in=("pending", "disputed")).exists()
    assert Contract.objects.get(pk=school["consumed"].pk).state == ContractState.COMPLETED
    assert Contract.objects.get(pk=school["unpaid"].pk).state == ContractState.CANCELLED
    assert not Refund.objects.filter(contract=school["consumed"]).exists()
    institution.refresh_from_db()
    assert institution.state == InstitutionState.CLOSED

    payouts = PayoutInstruction.objects.filter(kind="refund").order_by("pk")
    assert [p.amount_fen for p in payouts] == [144_000, 160_000]
    for payout in payouts:  # to the account that paid (原路返回), stored encrypted as the contract's is
        assert (
            payout.destination_account and payout.destination_account == payout.refund.contract.payer_account
        )
    assert available(cash(institution)) == posted(payable(institution))  # only what was earned is left
    rows = ledger_rows()
    assert run_closure(closure=closure).state == ClosureState.COMPLETED  # running again changes nothing
    assert ledger_rows() == rows
    assert run_release_payouts() == []  # a closed institution gets no release
    for payout in payouts:
        record_payout_result(reference=payout.reference, executed=True)
    assert posted(refund_payable(taught)) == posted(refund_payable(untouched)) == 0
    assert posted(cash(institution)) == posted(payable(institution)) == 4 * 8_000  # 2 + 2 hours earned


def test_a_planned_closure_keeps_teaching_through_the_notice_period(
    paid_contract: Contract, django_capture_on_commit_callbacks: Callable
) -> None:
    institution = paid_contract.institution
    with django_capture_on_commit_callbacks() as callbacks:
        closure = order_closure(institution=institution, mode="planned", reason="计划停办 planned")
    assert callbacks == []  # nothing to run yet
    assert closure.refunds_start_at == clock.now() + timedelta(days=30)
    assert institution.state == InstitutionState.CLOSING

    (held,) = lessons(paid_contract, 1)  # still allowed during the notice
    with pytest.raises(RuleViolation) as info:
        run_closure(closure=closure)
    assert info.value.rule == "closure_notice_period"

    clock.advance(timedelta(days=30))
    with pytest.raises(RuleViolation) as info:
        lessons(paid_contract, 1, key="late")
    assert info.value.rule == "institution_not_active"
    assert closures.due_closures() == [closure.pk]
    assert run_closure(closure=closure).state == ClosureState.COMPLETED
    assert Lesson.objects.get(pk=held.pk).state == LessonState.VOIDED
    assert Refund.objects.get(contract=paid_contract).amount_fen == 160_000
    assert closures.due_closures() == []


def test_a_run_interrupted_between_batches_resumes_without_refunding_twice(
    school: dict[str, Contract], monkeypatch: pytest.MonkeyPatch
) -> None:
    institution = school["taught"].institution
    closure = order_closure(institution=institution, mode="abnormal", reason="跑路 absconded")
    real = closures._create_refunds
    calls = []

    def crash_on_second_batch(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("worker killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(closures, "_create_refunds", crash_on_second_batch)
    with pytest.raises(RuntimeError):
        run_closure(closure=closure, batch_size=1)
    assert Refund.objects.count() == 1  # the first batch committed, the second rolled back whole
    assert Lesson.objects.filter(state="voided").count() == 2
    monkeypatch.setattr(closures, "_create_refunds", real)

    finished = run_closure(closure=closure, batch_size=1)

    assert finished.state == ClosureState.COMPLETED
    assert sorted(Refund.objects.values_list("contract_id", flat=True)) == sorted(
        [school["taught"].pk, school["untouched"].pk]
    )
    assert (finished.contracts_done, finished.refunded_fen) == (2, 304_000)


def test_open_claims_are_superseded_and_approved_ones_wait_for_their_payout(
    make_contract: ContractFactory, make_student: Callable, pay: Callable
) -> None:
    claimed = pay(make_contract(student=make_student()))
    claim = claim_refund(contract=claimed, idempotency_key="claim-a")
    approved = pay(make_contract(student=make_student()))
    (pending,) = lessons(approved, 1)
    parent_refund = answer_refund(
        refund=claim_refund(contract=approved, idempotency_key="claim-b"), approve=True
    )
    assert parent_refund.amount_fen == 152_000
    institution = claimed.institution

    closure = order_closure(institution=institution, mode="abnormal", reason="跑路 absconded")
    waiting = run_closure(closure=closure)

    superseded = Refund.objects.get(pk=claim.pk)
    assert (superseded.state, superseded.rejection_reason) == (RefundState.REJECTED, closures.SUPERSEDED)
    assert Refund.objects.get(contract=claimed, reason="closure").amount_fen == 160_000
    assert waiting.state == ClosureState.RUNNING  # the second contract waits for its own refund's payout
    assert Lesson.objects.get(pk=pending.pk).state == LessonState.PENDING
    (parent_payout,) = PayoutInstruction.objects.filter(refund=parent_refund)

    record_payout_result(reference=parent_payout.reference, executed=True)
    finished = run_closure(closure=closure)

    assert finished.state == ClosureState.COMPLETED
    assert Lesson.objects.get(pk=pending.pk).state == LessonState.VOIDED
    rest = Refund.objects.get(contract=approved, reason="closure")
    assert (rest.amount_fen, rest.paid_hours) == (8_000, 1)
    assert posted(prepaid(approved)) == 0
    assert instruct_refund_payouts() == []  # run_closure instructed everything it could


def test_closure_refund_is_exactly_once_per_contract_in_the_database(school: dict[str, Contract]) -> None:
    closure = order_closure(
        institution=school["taught"].institution, mode="abnormal", reason="跑路 absconded"
    )
    run_closure(closure=closure)
    existing = Refund.objects.get(contract=school["untouched"])
    with pytest.raises(IntegrityError), transaction.atomic():
        Refund.objects.create(
            contract=school["untouched"],
            reason=RefundReason.CLOSURE,
            state=RefundState.PAID,
            idempotency_key="another",
            claimed_at=clock.now(),
        )
    assert Refund.objects.filter(contract=school["untouched"]).get().pk == existing.pk


def test_an_abnormal_order_escalates_a_planned_closure(paid_contract: Contract) -> None:
    institution = paid_contract.institution
    planned = order_closure(institution=institution, mode="planned", reason="计划停办 planned")
    escalated = order_closure(institution=institution, mode="abnormal", reason="提前跑路 absconded early")
    assert escalated.pk == planned.pk
    assert (escalated.mode, escalated.refunds_start_at) == ("abnormal", clock.now())
    with pytest.raises(RuleViolation) as info:
        order_closure(institution=institution, mode="abnormal", reason="again")
    assert info.value.rule == "closure_already_ordered"
    assert run_closure(closure=escalated).state == ClosureState.COMPLETED


KILL_SCRIPT = """
import os, signal
import django
django.setup()
from custody.models import Closure
from custody.services import closures

real = closures._create_refunds
batches = []

def create_then_die(*args, **kwargs):
    result = real(*args, **kwargs)
    batches.append(result)
    if len(batches) == 2:  # the second batch's refund is written, its transaction not yet committed
        os.kill(os.getpid(), signal.SIGKILL)
    return result

closures._create_refunds = create_then_die
closures.run_closure(closure=Closure.objects.get(pk={closure_id}), batch_size=1)
"""


@pytest.fixture
def no_broker(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Committed transactions run their on-commit hooks: keep the closure runs they enqueue off the broker."""
    from custody import tasks

    enqueued: list[int] = []
    monkeypatch.setattr(tasks.run_closure_task, "delay", enqueued.append)
    return enqueued


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_run_killed_with_sigkill_mid_batch_resumes_and_refunds_each_contract_once(
    school: dict[str, Contract], no_broker: list[int]
) -> None:
    closure = order_closure(
        institution=school["taught"].institution, mode="abnormal", reason="跑路 absconded"
    )
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "config.settings"}
    killed = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT.format(closure_id=closure.pk)],
        env=env,
        cwd=settings.BASE_DIR,
        capture_output=True,
        timeout=120,
    )
    assert no_broker == [closure.pk]  # the abnormal order enqueued its run once committed
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert Refund.objects.count() == 1  # batch 1 committed; batch 2 died with its transaction

    finished = run_closure(closure=closure, batch_size=1)

    assert finished.state == ClosureState.COMPLETED
    assert Refund.objects.filter(reason="closure").count() == 2
    for contract in (school["taught"], school["untouched"]):
        assert Refund.objects.filter(contract=contract).count() == 1
        assert posted(prepaid(contract)) == 0
    assert finished.refunded_fen == 304_000


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_runs_racing_refund_each_contract_once(school: dict[str, Contract], no_broker: list[int]) -> None:
    closure = order_closure(
        institution=school["taught"].institution, mode="abnormal", reason="跑路 absconded"
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_closure(closure=closure, batch_size=1)
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert Refund.objects.filter(reason="closure").count() == 2
    assert PayoutInstruction.objects.filter(kind="refund").count() == 2
    for contract in (school["taught"], school["untouched"]):
        assert Refund.objects.filter(contract=contract).count() == 1

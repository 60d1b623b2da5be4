"""``verify_custody`` (custody/verification.py): a clean world passes, and each custody invariant of DESIGN.md
section 6 (3, 4, 6, 7, 10) broken on purpose behind the services' back is reported by its check's name and
names the institution or contract at fault; the command prints progress and exits 1.

The books are broken with direct writes the database allows (the ledger's triggers guard entries, postings
and account identities, not the materialized totals or the domain's rows), so this runs on both databases.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models import F

from custody.models import Closure, Contract, Institution, Lesson, LessonState, Refund, RefundReason
from custody.rules import latest_service_end
from custody.services.closures import order_closure, run_closure
from custody.services.lessons import confirm_lesson, dispute_lesson
from custody.services.payouts import record_payout_result, run_release_payouts
from custody.services.refunds import answer_refund, claim_refund, instruct_refund_payouts
from custody.verification import verify_custody
from ledger.models import Account
from ledger.money import cny
from ledger.verification import Finding
from tests.custody.conftest import ContractFactory, CourseFactory, InstitutionFactory
from tests.custody.flows.conftest import assert_invariants

pytestmark = pytest.mark.django_db


@dataclass
class World:
    """Two custody institutions: one trading (taught, refunded and released contracts, an unpaid order),
    one closed abnormally."""

    trading: Institution
    taught: Contract
    refunded: Contract
    unpaid: Contract
    closed: Institution
    closed_contract: Contract


@pytest.fixture
def world(
    make_contract: ContractFactory,
    make_student: Callable,
    make_institution: InstitutionFactory,
    make_course: CourseFactory,
    pay: Callable[[Contract], Contract],
    record: Callable[..., list[Lesson]],
) -> World:
    taught = pay(make_contract(student=make_student(), paid_hours=3, amount=cny("100.00")))
    first, second, third = record(taught, 3)
    confirm_lesson(lesson=first)
    dispute_lesson(lesson=second, reason="未上课 not held")
    run_release_payouts()
    refunded = pay(make_contract(student=make_student()))
    confirm_lesson(lesson=record(refunded, 1)[0])
    answer_refund(refund=claim_refund(contract=refunded, idempotency_key="v-1"), approve=True)
    for payout in instruct_refund_payouts():
        record_payout_result(reference=payout.reference, executed=True)
    unpaid = make_contract(student=make_student())

    closed = make_institution(name="跑路培训中心")
    course = make_course(institution=closed, name="初三物理")
    closed_contract = pay(make_contract(course=course, student=make_student()))
    confirm_lesson(lesson=record(closed_contract, 2)[0])
    closure = order_closure(institution=closed, mode="abnormal", reason="负责人失联 owner unreachable")
    run_closure(closure=closure)
    return World(taught.institution, taught, refunded, unpaid, closed, closed_contract)


def checks(findings: list[Finding]) -> set[str]:
    return {finding.check for finding in findings}


def about(findings: list[Finding], check: str) -> list[str]:
    return [f"{f.subject}: {f.problem}" for f in findings if f.check == check]


def test_a_clean_world_verifies(world: World) -> None:
    assert_invariants()  # the per-row selectors agree that it is clean
    stages: list[tuple[str, int, int]] = []

    report = verify_custody(progress=lambda stage, done, total: stages.append((stage, done, total)))

    assert report.ok, report.findings
    assert report.counts["contracts"] == Contract.objects.count() >= 4
    assert report.counts["institutions"] == 2
    names = [stage for stage, _, _ in stages]
    assert names == ["custody_balance", "contracts", "contracts", "open_caps", "closure_refunds", "done"]
    assert Closure.objects.get().state == "completed"
    assert Refund.objects.filter(reason=RefundReason.CLOSURE).count() == 1


def test_custody_cash_not_covering_the_liabilities_is_reported_per_institution(world: World) -> None:
    Account.objects.filter(code=f"payable:i{world.trading.pk}").update(credits_posted=F("credits_posted") + 1)

    findings = verify_custody().findings

    assert checks(findings) == {"custody_balance"}
    (message,) = about(findings, "custody_balance")
    assert f"institution {world.trading.pk} {world.trading.name}" in message
    assert "difference -0.01" in message


def test_money_a_contract_cannot_account_for_is_reported(world: World) -> None:
    confirmed = Lesson.objects.get(contract=world.taught, state=LessonState.CONFIRMED)
    Lesson.objects.filter(pk=confirmed.pk).update(amount_fen=F("amount_fen") + 5)  # released 0.05 more

    findings = verify_custody().findings

    assert checks(findings) == {"contract_position"}
    (message,) = about(findings, "contract_position")
    assert world.taught.number in message and "difference -0.05" in message


def test_a_hold_that_is_not_an_unconfirmed_lesson_is_reported(world: World) -> None:
    prepaid = Account.objects.filter(code=f"prepaid:c{world.taught.pk}")
    prepaid.update(debits_pending=F("debits_pending") - 7)

    findings = verify_custody().findings

    assert checks(findings) == {"contract_position"}
    (message,) = about(findings, "contract_position")
    assert world.taught.number in message and "unconfirmed lessons are worth" in message


def test_more_hours_released_and_refunded_than_paid_are_reported(world: World) -> None:
    # The refunded contract: 1 hour released, 19 refunded of 20; one more released hour is one too many.
    confirmed = Lesson.objects.get(contract=world.refunded, state=LessonState.CONFIRMED)
    Lesson.objects.filter(pk=confirmed.pk).update(hours=2, paid_hours=2)

    findings = verify_custody().findings

    assert checks(findings) == {"contract_hours"}
    problems = about(findings, "contract_hours")
    assert all(world.refunded.number in p for p in problems)
    assert any("released 2 + pending 0 + refunded 19 paid hours exceed the 20 paid" in p for p in problems)
    assert any("hours_consumed is 1 but its confirmed lessons hold 2 hours" in p for p in problems)


def test_an_hour_counter_out_of_step_is_reported(world: World) -> None:
    Contract.objects.filter(pk=world.taught.pk).update(hours_pending=F("hours_pending") - 1)

    findings = verify_custody().findings

    assert about(findings, "contract_hours") == [
        f"contract {world.taught.number} (id {world.taught.pk}): "
        "hours_pending is 1 but its unconfirmed lessons hold 2 hours"
    ]


@pytest.mark.parametrize("cap", ["hours", "period"])
def test_an_open_contract_over_a_cap_is_reported(world: World, cap: str) -> None:
    unpaid = world.unpaid
    if cap == "hours":
        change: dict[str, object] = {"paid_hours": 61}
        expected = "covers 61 hours (paid + gift), over the 60-hour cap of policy v1"
    else:
        latest = latest_service_end(unpaid.service_starts_on, 3)
        change = {"service_ends_on": latest + timedelta(days=1)}
        expected = f"past {latest}, the end of a 3-month period"
    Contract.objects.filter(pk=unpaid.pk).update(**change)

    findings = verify_custody().findings

    assert checks(findings) == {"open_caps"}
    (message,) = about(findings, "open_caps")
    assert unpaid.number in message and expected in message


def test_a_non_subject_charge_over_the_cap_is_reported(
    make_contract: ContractFactory, non_subject_course: object, make_student: Callable
) -> None:
    contract = make_contract(course=non_subject_course, student=make_student(), paid_hours=10)
    Contract.objects.filter(pk=contract.pk).update(amount_fen=500_001)

    findings = verify_custody().findings

    (message,) = about(findings, "open_caps")
    assert contract.number in message and "over the non-subject cap 5,000.00" in message


def test_split_contracts_over_the_hours_cap_are_reported(
    make_contract: ContractFactory, make_student: Callable
) -> None:
    student = make_student()
    first = make_contract(student=student, paid_hours=40)
    second = make_contract(student=student, paid_hours=20)
    Contract.objects.filter(pk=second.pk).update(paid_hours=30)  # 70 unconsumed hours of 数学 together

    findings = verify_custody().findings

    (message,) = about(findings, "open_caps")
    assert f"student {student.pk}, 数学" in message
    assert "2 open contracts hold 70 unconsumed hours, over the 60-hour cap" in message
    assert first.institution.name in message


def test_value_left_after_a_completed_closure_is_reported(world: World) -> None:
    Closure.objects.filter(institution=world.closed).update(refunded_fen=F("refunded_fen") + 1)
    Contract.objects.filter(pk=world.closed_contract.pk).update(state="active")

    findings = verify_custody().findings

    assert checks(findings) == {"closure_refunds"}
    problems = about(findings, "closure_refunds")
    assert len(problems) == 2
    assert any(world.closed_contract.number in p and "is active" in p for p in problems)
    assert any(world.closed.name in p and "refunds sum to" in p for p in problems)


def test_prepaid_value_left_after_a_closure_breaks_several_invariants_by_name(world: World) -> None:
    Account.objects.filter(code=f"prepaid:c{world.closed_contract.pk}").update(
        credits_posted=F("credits_posted") + 100
    )

    findings = verify_custody().findings

    assert checks(findings) == {"custody_balance", "contract_position", "closure_refunds"}
    (closure,) = about(findings, "closure_refunds")
    assert world.closed_contract.number in closure and "prepaid:c 1.00 yuan" in closure


def test_a_refunded_contract_without_a_refund_is_reported(world: World) -> None:
    Refund.objects.filter(contract=world.refunded).update(state="rejected")

    findings = verify_custody().findings

    assert "closure_refunds" in checks(findings)
    assert any(
        world.refunded.number in p and "marked refunded but has no approved refund" in p
        for p in about(findings, "closure_refunds")
    )


def test_the_command_prints_progress_and_fails_with_the_findings(world: World) -> None:
    out, err = io.StringIO(), io.StringIO()
    call_command("verify_custody", "--ledger", stdout=out, stderr=err)
    assert "OK: the custody invariants hold" in out.getvalue()
    assert "[contracts]" in err.getvalue() and "[zero_sum]" in err.getvalue()

    Contract.objects.filter(pk=world.unpaid.pk).update(paid_hours=61)
    out = io.StringIO()
    with pytest.raises(CommandError) as info:
        call_command("verify_custody", stdout=out, stderr=io.StringIO())
    assert info.value.returncode == 1
    assert f"[open_caps] contract {world.unpaid.number}" in out.getvalue()

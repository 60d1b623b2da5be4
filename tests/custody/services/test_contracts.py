"""``custody.services.contracts``: every signing rule at its limit and one unit past it, policy pinning, the
accounts a contract opens, and the contract state machine.

Business time is frozen at Friday 2026-11-20 10:00 in Shanghai, so every date below is fixed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from itertools import product
from zoneinfo import ZoneInfo

import pytest
from django.db import connection, connections
from moneyed import Money

from custody import rules
from custody.errors import IllegalTransition, RuleViolation
from custody.models import (
    Contract,
    ContractState,
    Course,
    Institution,
    InstitutionState,
    Student,
    TrainingCategory,
)
from custody.selectors.contracts import held_value, open_contracts_for
from custody.services.contracts import CONTRACT_TRANSITIONS, sign_contract, transition_contract
from custody.services.institutions import freeze_institution, transition_institution
from custody.services.policy import publish_policy
from ledger import clock
from ledger.models import Account, AccountType
from ledger.money import cny
from ledger.services import open_account, transfer
from tests.custody.conftest import ContractFactory, CourseFactory, InstitutionFactory

pytestmark = pytest.mark.django_db

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 20, 10, 0, tzinfo=SHANGHAI)
TODAY = date(2026, 11, 20)


@pytest.fixture(autouse=True)
def _frozen_business_time() -> Iterator[None]:
    with clock.frozen_at(NOW):
        yield


def refused(call: Callable[[], object]) -> RuleViolation:
    with pytest.raises(RuleViolation) as caught:
        call()
    return caught.value


def activate(contract: Contract, *, consumed: int = 0) -> Contract:
    """An active contract with ``consumed`` hours taught and confirmed (what the payment and lesson flows
    would have done; this module tests signing, not those flows)."""
    transition_contract(contract=contract, to_state=ContractState.ACTIVE)
    Contract.objects.filter(pk=contract.pk).update(hours_consumed=consumed)
    contract.refresh_from_db()
    return contract


# --- what signing writes --------------------------------------------------------------------------------


def test_sign_contract_pins_the_policy_opens_the_accounts_and_awaits_payment(
    make_contract: ContractFactory, course: Course, student: Student
) -> None:
    contract = make_contract()
    assert contract.state == ContractState.AWAITING_PAYMENT
    assert contract.institution == course.institution
    assert contract.guardian == student.guardian
    assert contract.subject == "数学"
    assert contract.policy.version == 1
    assert contract.signed_at == NOW
    assert contract.amount_fen == 20 * 8000
    assert contract.number == f"HT20261120{contract.pk:08d}"
    for account, code in (
        (contract.prepaid_account, f"prepaid:c{contract.pk}"),
        (contract.refund_account, f"refund_payable:c{contract.pk}"),
    ):
        assert account is not None
        assert account.code == code
        assert account.type == AccountType.LIABILITY
        assert account.debits_must_not_exceed_credits
    assert held_value(contract) == cny("0.00")


def test_a_signings_accounts_are_written_as_open_account_writes_them(make_contract: ContractFactory) -> None:
    """The signing inserts its accounts with its own statement (``ledger.backends.new_account_insert``); read
    back, each equals an account ``open_account`` made with the same attributes, field by field, and equals
    the instance the signing returned."""
    contract = make_contract()
    for made, code in ((contract.prepaid_account, "prepaid"), (contract.refund_account, "refund_payable")):
        assert made is not None
        stored = Account.objects.get(pk=made.pk)
        reference = open_account(
            code=f"test:reference:{code}",
            type=AccountType.LIABILITY,
            limit="debits_must_not_exceed_credits",
            name=stored.name,
        )
        differing = {
            f.attname
            for f in Account._meta.concrete_fields
            if getattr(stored, f.attname) != getattr(reference, f.attname)
        }
        assert differing - {"created_at"} == {"id", "code"}
        assert abs(stored.created_at - reference.created_at) < timedelta(minutes=1)  # both the real time
        assert all(
            getattr(made, f.attname) == getattr(stored, f.attname) for f in Account._meta.concrete_fields
        )


def test_held_value_is_what_the_prepaid_account_holds(make_contract: ContractFactory) -> None:
    contract = make_contract()
    clearing = open_account(code="clearing:bank", type="asset")
    transfer(
        idempotency_key="t-pay",
        kind="payment",
        debit_account=clearing,
        credit_account=f"prepaid:c{contract.pk}",
        amount=cny("1600.00"),
    )
    assert held_value(contract) == cny("1600.00")


def test_the_locked_unit_price_releases_the_amount_exactly(make_contract: ContractFactory) -> None:
    contract = make_contract(paid_hours=3, amount=cny("100.00"))
    parts = [contract.release_for_paid_hours(k, 1) for k in (1, 2, 3)]
    assert parts == [3333, 3333, 3334]
    assert sum(parts) == contract.amount_fen


# --- (1) service period ---------------------------------------------------------------------------------


def test_service_period_may_end_on_the_last_allowed_day_and_not_one_day_later(
    make_course: CourseFactory, make_contract: ContractFactory
) -> None:
    course = make_course(starts_on=date(2026, 12, 1))
    at_limit = make_contract(course=course, service_ends_on=date(2027, 2, 28))
    assert at_limit.service_ends_on == date(2027, 2, 28)
    error = refused(lambda: make_contract(course=course, service_ends_on=date(2027, 3, 1)))
    assert error.rule == rules.MAX_SERVICE_MONTHS
    assert error.details["limit"] == "2027-02-28"
    assert error.details["requested"] == "2027-03-01"
    assert error.details["months"] == 3
    assert error.field == "service_ends_on"


# --- (2) hours per charge, gift hours included ----------------------------------------------------------


def test_sixty_paid_hours_are_allowed_and_sixty_one_refused(make_contract: ContractFactory) -> None:
    assert make_contract(paid_hours=60).paid_hours == 60
    error = refused(lambda: make_contract(paid_hours=61))
    assert error.rule == rules.MAX_PAID_HOURS
    assert (error.details["limit"], error.details["requested"]) == (60, 61)


def test_gift_hours_count_towards_the_sixty(make_contract: ContractFactory, make_student) -> None:
    contract = make_contract(paid_hours=50, gift_hours=10)
    assert contract.total_hours == 60
    error = refused(lambda: make_contract(student=make_student(), paid_hours=50, gift_hours=11))
    assert error.rule == rules.MAX_PAID_HOURS
    assert (error.details["limit"], error.details["requested"]) == (60, 61)


# --- (3) non-subject amount cap -------------------------------------------------------------------------


def test_non_subject_charge_of_5000_yuan_is_allowed_and_one_fen_more_refused(
    make_contract: ContractFactory, non_subject_course: Course, make_student
) -> None:
    ok = make_contract(course=non_subject_course, paid_hours=17, amount=cny("5000.00"))
    assert ok.amount_fen == 500_000
    error = refused(
        lambda: make_contract(
            course=non_subject_course, student=make_student(), paid_hours=17, amount=cny("5000.01")
        )
    )
    assert error.rule == rules.NON_SUBJECT_MAX_CHARGE
    assert (error.details["limit"], error.details["requested"]) == (500_000, 500_001)
    assert "5,000.00" in error.message


def test_subject_charges_have_no_5000_yuan_cap(make_contract: ContractFactory) -> None:
    contract = make_contract(paid_hours=60)
    assert contract.course.category == TrainingCategory.SUBJECT
    assert contract.amount_fen == 480_000


# --- (4) anti-splitting ---------------------------------------------------------------------------------


def test_anti_splitting_allows_40_plus_20_hours(make_contract: ContractFactory) -> None:
    make_contract(paid_hours=40)
    second = make_contract(paid_hours=20)
    assert second.paid_hours == 20


def test_anti_splitting_refuses_40_plus_21_hours(make_contract: ContractFactory) -> None:
    make_contract(paid_hours=40)
    error = refused(lambda: make_contract(paid_hours=21))
    assert error.rule == rules.ANTI_SPLITTING_HOURS
    assert (error.details["limit"], error.details["requested"]) == (60, 61)
    assert error.details["open_hours"] == 40


def test_anti_splitting_counts_gift_hours_and_only_unconsumed_hours_of_open_contracts(
    make_contract: ContractFactory,
) -> None:
    first = make_contract(paid_hours=30, gift_hours=10)
    activate(first, consumed=15)  # 25 unconsumed
    make_contract(paid_hours=35)  # 25 + 35 = 60
    error = refused(lambda: make_contract(paid_hours=1))
    assert (error.rule, error.details["requested"], error.details["open_hours"]) == (
        rules.ANTI_SPLITTING_HOURS,
        61,
        60,
    )


def test_anti_splitting_ignores_closed_contracts_other_subjects_students_and_institutions(
    make_contract: ContractFactory,
    make_course: CourseFactory,
    make_institution: InstitutionFactory,
    make_student,
) -> None:
    cancelled = make_contract(paid_hours=60)
    transition_contract(contract=cancelled, to_state=ContractState.CANCELLED)
    make_contract(paid_hours=60)  # the cancelled one no longer counts
    make_contract(course=make_course(subject="英语"), paid_hours=60)
    make_contract(student=make_student(), paid_hours=60)
    other = make_institution(name="另一家机构")
    make_contract(course=make_course(institution=other), paid_hours=60)
    assert Contract.objects.filter(state=ContractState.AWAITING_PAYMENT).count() == 4


def test_anti_splitting_refuses_while_an_open_contract_runs_past_three_months_from_today(
    make_course: CourseFactory, make_contract: ContractFactory, make_student
) -> None:
    horizon = rules.latest_service_end(TODAY, 3)
    assert horizon == date(2027, 2, 19)
    early = make_course(starts_on=TODAY + timedelta(days=10))
    make_contract(course=early, paid_hours=10, service_ends_on=horizon)
    assert make_contract(paid_hours=10).paid_hours == 10

    other = make_student()
    make_contract(course=early, student=other, paid_hours=10, service_ends_on=horizon + timedelta(days=1))
    error = refused(lambda: make_contract(student=other, paid_hours=10))
    assert error.rule == rules.ANTI_SPLITTING_PERIOD
    assert (error.details["limit"], error.details["requested"]) == ("2027-02-19", "2027-02-20")


def test_anti_splitting_can_be_switched_off_by_the_jurisdiction(
    make_contract: ContractFactory, institution: Institution
) -> None:
    make_contract(paid_hours=40)
    publish_policy(
        jurisdiction=institution.jurisdiction, changes={"anti_splitting": False}, changed_by=None, note="试点"
    )
    assert make_contract(paid_hours=40).policy.version == 2


# --- (5) earliest charge --------------------------------------------------------------------------------


def test_a_charge_30_days_before_the_start_is_allowed_and_31_refused(
    make_course: CourseFactory, make_contract: ContractFactory, make_student
) -> None:
    course = make_course(starts_on=TODAY + timedelta(days=30))
    assert make_contract(course=course).service_starts_on == date(2026, 12, 20)
    error = refused(
        lambda: make_contract(
            course=course, student=make_student(), service_starts_on=TODAY + timedelta(days=31)
        )
    )
    assert error.rule == rules.EARLIEST_CHARGE
    assert (error.details["limit"], error.details["requested"]) == (30, 31)


def test_the_earliest_charge_day_is_a_shanghai_date(make_course: CourseFactory, make_contract) -> None:
    course = make_course(starts_on=date(2026, 12, 21))
    # 2026-11-20 23:30 UTC is already 2026-11-21 in Shanghai: 30 days before 2026-12-21.
    with clock.frozen_at(datetime(2026, 11, 20, 23, 30, tzinfo=ZoneInfo("UTC"))):
        assert make_contract(course=course).signed_at.astimezone(SHANGHAI).date() == date(2026, 11, 21)
    error = refused(lambda: make_contract(course=course))
    assert (error.rule, error.details["requested"]) == (rules.EARLIEST_CHARGE, 31)


# --- (6) renewal ----------------------------------------------------------------------------------------


def test_renewal_with_20_hours_remaining_is_allowed(make_contract: ContractFactory) -> None:
    current = activate(make_contract(paid_hours=40), consumed=20)
    assert current.remaining_hours == 20
    renewal = make_contract(paid_hours=20, renews=current)
    assert renewal.renews == current


def test_renewal_with_21_hours_remaining_is_refused(make_contract: ContractFactory) -> None:
    current = activate(make_contract(paid_hours=40), consumed=19)
    error = refused(lambda: make_contract(paid_hours=10, renews=current))
    assert error.rule == rules.RENEWAL_MAX_REMAINING_HOURS
    assert (error.details["limit"], error.details["requested"]) == (20, 21)
    assert error.details["contract"] == current.number


def test_renewal_counts_pending_and_refunded_hours_as_not_remaining(make_contract: ContractFactory) -> None:
    current = activate(make_contract(paid_hours=40), consumed=10)
    Contract.objects.filter(pk=current.pk).update(hours_pending=5, paid_hours_refunded=5)
    assert make_contract(paid_hours=10, renews=current).paid_hours == 10


def test_renewal_must_continue_an_open_contract_of_the_same_student_institution_and_subject(
    make_contract: ContractFactory, make_course: CourseFactory, make_student
) -> None:
    current = activate(make_contract(paid_hours=20), consumed=10)
    error = refused(lambda: make_contract(student=make_student(), renews=current))
    assert error.rule == rules.RENEWAL_MISMATCH
    error = refused(lambda: make_contract(course=make_course(subject="物理"), renews=current))
    assert error.rule == rules.RENEWAL_MISMATCH
    Contract.objects.filter(pk=current.pk).update(hours_consumed=20)
    transition_contract(contract=current, to_state=ContractState.COMPLETED)
    error = refused(lambda: make_contract(renews=current))
    assert (error.rule, error.details["state"]) == (rules.RENEWAL_NOT_OPEN, "completed")


# --- (7) institution and course -------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["frozen", "closing", "closed"])
def test_an_institution_that_is_not_active_cannot_sign(
    make_contract: ContractFactory, course: Course, state: str
) -> None:
    institution = course.institution
    path = {"frozen": ["frozen"], "closing": ["closing"], "closed": ["closing", "closed"]}[state]
    for step in path:
        transition_institution(
            institution=institution, to_state=InstitutionState(step), reason="检查 inspection"
        )
    error = refused(make_contract)
    assert (error.rule, error.details["state"]) == (rules.INSTITUTION_NOT_ACTIVE, state)


def test_an_institution_off_the_whitelist_cannot_sign(make_contract: ContractFactory, course: Course) -> None:
    Institution.objects.filter(pk=course.institution_id).update(whitelisted=False)
    assert refused(make_contract).rule == rules.INSTITUTION_NOT_WHITELISTED


def test_an_unfrozen_institution_signs_again(make_contract: ContractFactory, course: Course) -> None:
    freeze_institution(institution=course.institution, reason="风险预警 risk alert")
    assert refused(make_contract).rule == rules.INSTITUTION_NOT_ACTIVE
    transition_institution(
        institution=course.institution, to_state=InstitutionState.ACTIVE, reason="整改完成 fixed"
    )
    assert make_contract().state == ContractState.AWAITING_PAYMENT


def test_an_unpublished_course_cannot_be_sold(make_contract: ContractFactory, course: Course) -> None:
    Course.objects.filter(pk=course.pk).update(published=False)
    assert refused(make_contract).rule == rules.COURSE_NOT_PUBLISHED


# --- (8) amounts, hours, dates and prices ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "rule", "field"),
    [
        ({"amount": cny("0.00")}, rules.POSITIVE_AMOUNT, "amount"),
        ({"amount": cny("-1.00")}, rules.POSITIVE_AMOUNT, "amount"),
        ({"paid_hours": 0, "amount": cny("80.00")}, rules.POSITIVE_HOURS, "paid_hours"),
        ({"gift_hours": -1}, rules.POSITIVE_HOURS, "gift_hours"),
    ],
)
def test_amount_and_hours_must_be_positive(
    make_contract: ContractFactory, overrides: dict[str, object], rule: str, field: str
) -> None:
    error = refused(lambda: make_contract(**overrides))
    assert (error.rule, error.field) == (rule, field)


def test_one_paid_hour_of_one_fen_is_the_smallest_contract(
    make_contract: ContractFactory, make_course: CourseFactory
) -> None:
    course = make_course(price_per_hour=cny("0.01"))
    assert make_contract(course=course, paid_hours=1).amount_fen == 1


def test_the_amount_may_be_discounted_but_not_above_the_published_price(
    make_contract: ContractFactory,
) -> None:
    assert make_contract(paid_hours=10, amount=cny("800.00")).amount_fen == 80_000
    assert make_contract(paid_hours=10, amount=cny("500.00")).amount_fen == 50_000
    error = refused(lambda: make_contract(paid_hours=10, amount=cny("800.01")))
    assert error.rule == rules.LIST_PRICE
    assert (error.details["limit"], error.details["requested"]) == (80_000, 80_001)


def test_a_cut_guidance_price_applies_to_new_contracts_of_existing_courses(
    make_contract: ContractFactory, institution: Institution
) -> None:
    publish_policy(
        jurisdiction=institution.jurisdiction,
        changes={},
        changed_by=None,
        note="指导价下调 guidance price cut",
        guidance_prices={("small", "offline"): 7000},
    )
    # 7,000 + 10 % = 7,700 fen per hour, 154,000 for 20 hours; the course still lists 8,000.
    assert make_contract(amount=cny("1540.00")).policy.version == 2
    error = refused(lambda: make_contract(amount=cny("1540.01")))
    assert error.rule == rules.GUIDANCE_PRICE
    assert (error.details["limit"], error.details["requested"]) == (154_000, 154_001)


def test_the_service_period_must_be_in_order_after_the_course_start_and_not_over(
    make_contract: ContractFactory, make_course: CourseFactory, course: Course
) -> None:
    error = refused(lambda: make_contract(service_ends_on=course.starts_on - timedelta(days=1)))
    assert error.rule == rules.SERVICE_PERIOD_ORDER
    error = refused(lambda: make_contract(service_starts_on=course.starts_on - timedelta(days=1)))
    assert (error.rule, error.details["limit"]) == (rules.SERVICE_BEFORE_COURSE, course.starts_on.isoformat())
    started = make_course(starts_on=date(2026, 9, 1))
    error = refused(lambda: make_contract(course=started, service_ends_on=TODAY - timedelta(days=1)))
    assert error.rule == rules.SERVICE_PERIOD_OVER
    joined_late = make_contract(course=started, service_starts_on=TODAY, service_ends_on=TODAY)
    assert joined_late.service_starts_on == TODAY


def test_contracts_are_in_cny(make_contract: ContractFactory) -> None:
    assert refused(lambda: make_contract(amount=Money("100", "USD"))).rule == "currency"


# --- policy versions ------------------------------------------------------------------------------------


def test_a_contract_keeps_its_policy_version_and_a_new_cap_applies_only_to_new_contracts(
    make_contract: ContractFactory, institution: Institution, make_student
) -> None:
    old = make_contract(paid_hours=60)
    v2 = publish_policy(
        jurisdiction=institution.jurisdiction,
        changes={"max_paid_hours": 40},
        changed_by=None,
        note="收紧 tighter cap",
    )
    old.refresh_from_db()
    assert old.policy.version == 1
    assert old.paid_hours == 60
    student = make_student()
    assert make_contract(student=student, paid_hours=40).policy == v2
    error = refused(lambda: make_contract(student=make_student(), paid_hours=41))
    assert error.rule == rules.MAX_PAID_HOURS
    assert (error.details["limit"], error.details["requested"], error.details["policy_version"]) == (
        40,
        41,
        2,
    )


# --- state machine --------------------------------------------------------------------------------------

ALL_STATES = list(ContractState)


@pytest.mark.parametrize(("current", "target"), list(product(ALL_STATES, ALL_STATES)))
def test_contract_transitions_follow_the_table(
    make_contract: ContractFactory, current: ContractState, target: ContractState
) -> None:
    contract = make_contract()
    Contract.objects.filter(pk=contract.pk).update(state=current)
    contract.refresh_from_db()
    if target in CONTRACT_TRANSITIONS[current]:
        transition_contract(contract=contract, to_state=target)
        contract.refresh_from_db()
        assert contract.state == target
    else:
        with pytest.raises(IllegalTransition) as caught:
            transition_contract(contract=contract, to_state=target)
        assert caught.value.details == {"entity": "contract", "current": current, "target": target}
        contract.refresh_from_db()
        assert contract.state == current


def test_the_table_has_the_agreed_shape() -> None:
    assert CONTRACT_TRANSITIONS[ContractState.AWAITING_PAYMENT] == {
        ContractState.ACTIVE,
        ContractState.CANCELLED,
    }
    assert CONTRACT_TRANSITIONS[ContractState.ACTIVE] == {ContractState.COMPLETED, ContractState.REFUNDED}
    for final in (ContractState.COMPLETED, ContractState.REFUNDED, ContractState.CANCELLED):
        assert CONTRACT_TRANSITIONS[final] == frozenset()


def test_activation_records_paid_at_and_a_final_state_ended_at(make_contract: ContractFactory) -> None:
    contract = make_contract()
    transition_contract(contract=contract, to_state=ContractState.ACTIVE)
    assert (contract.paid_at, contract.ended_at) == (NOW, None)
    later = NOW + timedelta(days=40)
    with clock.frozen_at(later):
        transition_contract(contract=contract, to_state=ContractState.REFUNDED)
    contract.refresh_from_db()
    assert (contract.state, contract.paid_at, contract.ended_at) == (ContractState.REFUNDED, NOW, later)


def test_a_stale_instance_cannot_repeat_a_transition(make_contract: ContractFactory) -> None:
    contract = make_contract()
    stale = Contract.objects.get(pk=contract.pk)
    transition_contract(contract=contract, to_state=ContractState.CANCELLED)
    with pytest.raises(IllegalTransition):
        transition_contract(contract=stale, to_state=ContractState.ACTIVE)


def test_open_contracts_for_lists_awaiting_and_active_in_signing_order(
    make_contract: ContractFactory, course: Course, student: Student
) -> None:
    first, second, third = (
        make_contract(paid_hours=10),
        make_contract(paid_hours=10),
        make_contract(paid_hours=10),
    )
    activate(second)
    transition_contract(contract=third, to_state=ContractState.CANCELLED)
    assert list(open_contracts_for(student, course.institution, "数学")) == [first, second]
    assert not open_contracts_for(student, course.institution, "英语").exists()


# --- concurrency (PostgreSQL) ---------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_signings_for_one_student_cannot_split_past_the_cap(
    course: Course, student: Student
) -> None:
    """Two 40-hour contracts signed at once: the student lock serialises them, so exactly one passes."""
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def sign() -> None:
        try:
            barrier.wait()
            sign_contract(
                course=course,
                student=student,
                paid_hours=40,
                amount=cny("3200.00"),
                service_starts_on=course.starts_on,
                service_ends_on=course.starts_on + timedelta(days=59),
            )
            outcomes.append("signed")
        except RuleViolation as error:
            outcomes.append(error.rule)
        finally:
            connections.close_all()

    with clock.frozen_at(NOW):
        threads = [threading.Thread(target=sign) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(outcomes) == sorted(["signed", rules.ANTI_SPLITTING_HOURS])
    assert Contract.objects.filter(student=student).count() == 1
    assert connection.vendor == "postgresql"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_signing_share_locks_its_institution_so_signings_run_side_by_side_and_a_freeze_waits(
    course: Course, student: Student, make_student: Callable[..., Student]
) -> None:
    """While one signing holds its transaction open, another student's signing at the same institution
    gets its locks at once, and freezing the institution cannot take the row until the first commits."""
    from django.db import OperationalError, transaction

    from custody.selectors.policy import lock_signing_context

    other = make_student()
    holding, release = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def first_signing() -> None:
        try:
            with transaction.atomic():
                seen["first"] = lock_signing_context(course_id=course.pk, student_id=student.pk).course.pk
                holding.set()
                release.wait(timeout=30)
        finally:
            connections.close_all()

    def second_signing_and_freeze() -> None:
        try:
            holding.wait(timeout=30)
            with transaction.atomic():
                with connection.cursor() as cursor:
                    cursor.execute("SET LOCAL lock_timeout = '2s'")
                seen["second"] = lock_signing_context(course_id=course.pk, student_id=other.pk).course.pk
            try:
                with transaction.atomic():
                    with connection.cursor() as cursor:
                        cursor.execute("SET LOCAL lock_timeout = '300ms'")
                    freeze_institution(institution=course.institution, reason="风险 risk")
                seen["freeze"] = "frozen"
            except OperationalError as error:
                seen["freeze"] = "lock timeout" if "lock timeout" in str(error) else str(error)
        finally:
            release.set()
            connections.close_all()

    threads = [threading.Thread(target=first_signing), threading.Thread(target=second_signing_and_freeze)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"first": course.pk, "second": course.pk, "freeze": "lock timeout"}
    freeze_institution(institution=course.institution, reason="风险 risk")  # free once the signing ended
    course.institution.refresh_from_db()
    assert course.institution.state == "frozen"

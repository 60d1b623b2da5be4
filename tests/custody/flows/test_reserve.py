"""Risk-reserve mode: parents' money sits in the institution's own account (institution_held:i), a reserve at
the bank guarantees it, checked daily; on closure refunds are paid from the reserve, pro rata if short."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.plugins.otp_totp.models import TOTPDevice

from custody.errors import RuleViolation
from custody.models import (
    ClosureState,
    Contract,
    Course,
    Institution,
    Jurisdiction,
    PayoutInstruction,
    Refund,
    RefundState,
    RegulatorProfile,
    ReserveCheck,
)
from custody.selectors.balances import custody_invariant
from custody.selectors.holdings import institutions_with_money
from custody.selectors.refunds import closure_shortfalls
from custody.selectors.supervision import overview
from custody.services.closures import order_closure, run_closure
from custody.services.lessons import NewLesson, confirm_lesson, record_lessons
from custody.services.payouts import record_payout_result, run_release_payouts
from custody.services.policy import publish_policy
from custody.services.reserve import check_reserves, deposit_reserve, pro_rata
from ledger import clock
from ledger.money import cny
from tests.custody.conftest import ContractFactory, InstitutionFactory
from tests.custody.flows.conftest import cash, ledger_rows, payable, posted, prepaid, refund_payable

pytestmark = pytest.mark.django_db


@pytest.fixture
def reserve_institution(make_institution: InstitutionFactory, jurisdiction: object) -> Institution:
    publish_policy(
        jurisdiction=jurisdiction,  # type: ignore[arg-type]
        changes={"risk_reserve_allowed": True, "reserve_minimum_fen": 10_000, "reserve_ratio_percent": 20},
        changed_by=None,
        note="允许风险保证金 reserve mode allowed",
    )
    return make_institution(name="自贡风险保证金机构", supervision_mode="risk_reserve")


@pytest.fixture
def reserve_course(reserve_institution: Institution, make_course: Callable) -> Course:
    return make_course(institution=reserve_institution)


@pytest.fixture
def reserve_contracts(
    reserve_course: Course, make_contract: ContractFactory, make_student: Callable, pay: Callable
) -> list[Contract]:
    """Two paid contracts: 1,600.00 and 800.00 yuan."""
    return [
        pay(make_contract(course=reserve_course, student=make_student())),
        pay(make_contract(course=reserve_course, student=make_student(), paid_hours=10)),
    ]


def held(institution: Institution) -> str:
    return f"institution_held:i{institution.pk}"


def test_payments_sit_in_the_institutions_own_account_and_the_invariant_holds(
    reserve_contracts: list[Contract], reserve_institution: Institution
) -> None:
    assert posted(held(reserve_institution)) == 240_000
    assert posted(cash(reserve_institution)) == 0
    assert posted(prepaid(reserve_contracts[0])) == 160_000
    invariant = custody_invariant(reserve_institution)
    assert invariant.holds
    assert (invariant.cash_fen, invariant.liabilities_fen) == (240_000, 240_000)


def test_a_release_is_an_entry_not_a_bank_instruction(
    reserve_contracts: list[Contract], reserve_institution: Institution
) -> None:
    (lesson,) = record_lessons(
        lessons=[NewLesson(contract=reserve_contracts[0], held_at=clock.now(), idempotency_key="R1")]
    )
    confirm_lesson(lesson=lesson)

    assert run_release_payouts() == []
    assert PayoutInstruction.objects.count() == 0
    assert posted(payable(reserve_institution)) == 0
    assert posted(held(reserve_institution)) == 240_000 - 8_000
    rows = ledger_rows()
    run_release_payouts()  # nothing new earned: nothing released twice
    assert ledger_rows() == rows


def test_deposits_are_idempotent_and_the_daily_check_records_the_shortfall(
    reserve_contracts: list[Contract], reserve_institution: Institution, make_institution: InstitutionFactory
) -> None:
    deposit_reserve(institution=reserve_institution, amount=cny("300.00"), key="DEP-1")
    deposit_reserve(institution=reserve_institution, amount=cny("300.00"), key="DEP-1")  # the same deposit
    assert posted(f"reserve_cash:i{reserve_institution.pk}") == 30_000
    assert posted(f"reserve_deposit:i{reserve_institution.pk}") == 30_000
    with pytest.raises(RuleViolation) as info:
        deposit_reserve(institution=make_institution(), amount=cny("1.00"), key="X")
    assert info.value.rule == "not_risk_reserve_mode"

    (check,) = check_reserves()

    # max(100.00 yuan minimum, 20 % of 2,400.00 yuan unconsumed = 480.00) = 480.00; the reserve holds 300.00.
    assert (check.on_date, check.unconsumed_prepaid_fen, check.required_fen) == (
        date(2024, 3, 4),
        240_000,
        48_000,
    )
    assert (check.reserve_fen, check.shortfall_fen, check.policy_version) == (30_000, 18_000, 2)
    assert Institution.objects.get(pk=reserve_institution.pk).reserve_required_fen == 48_000
    deposit_reserve(institution=reserve_institution, amount=cny("500.00"), key="DEP-2")
    assert [c.pk for c in check_reserves()] == [check.pk]  # one check per day: the first stands
    clock.advance(timedelta(days=1))
    (next_day,) = check_reserves()
    assert (next_day.reserve_fen, next_day.shortfall_fen) == (80_000, 0)
    assert ReserveCheck.objects.count() == 2


def test_a_closure_pays_refunds_from_the_reserve_pro_rata_and_reports_the_shortfall(
    reserve_contracts: list[Contract], reserve_institution: Institution
) -> None:
    big, small = reserve_contracts
    deposit_reserve(institution=reserve_institution, amount=cny("1200.00"), key="DEP-3")
    closure = order_closure(institution=reserve_institution, mode="abnormal", reason="跑路 absconded")

    finished = run_closure(closure=closure)

    assert finished.state == ClosureState.COMPLETED
    payouts = {
        p.refund.contract_id: p for p in PayoutInstruction.objects.select_related("refund") if p.refund
    }
    # 1,200.00 shared over refunds of 1,600.00 and 800.00: two thirds each.
    assert (payouts[big.pk].amount_fen, payouts[small.pk].amount_fen) == (80_000, 40_000)
    assert posted(f"reserve_cash:i{reserve_institution.pk}") == 120_000  # held until the bank pays
    for payout in payouts.values():
        record_payout_result(reference=payout.reference, executed=True)
    assert posted(f"reserve_cash:i{reserve_institution.pk}") == 0
    assert posted(f"reserve_deposit:i{reserve_institution.pk}") == 0
    assert (posted(refund_payable(big)), posted(refund_payable(small))) == (80_000, 40_000)
    assert posted(held(reserve_institution)) == 120_000  # still owed by the institution
    shortfalls = {s.contract_id: s.shortfall_fen for s in closure_shortfalls(closure)}
    assert shortfalls == {big.pk: 80_000, small.pk: 40_000}
    assert set(Refund.objects.values_list("state", flat=True)) == {RefundState.PAID}
    assert custody_invariant(reserve_institution).holds


@pytest.mark.parametrize(
    ("amounts", "available", "expected"),
    [
        ([100, 200], 300, [100, 200]),
        ([100, 200], 1_000, [100, 200]),
        ([1, 1, 1], 2, [1, 1, 0]),
        ([333, 333, 334], 500, [167, 166, 167]),  # 166.5, 166.5, 167: the tie goes to the earlier claim
        ([5], 0, [0]),
    ],
)
def test_pro_rata_shares_add_up_exactly_and_never_exceed_a_claim(
    amounts: list[int], available: int, expected: list[int]
) -> None:
    shares = pro_rata(amounts, available)
    assert shares == expected
    assert sum(shares) == min(available, sum(amounts))
    assert all(0 <= s <= a for s, a in zip(shares, amounts, strict=True))


def test_the_regulators_overview_sets_custody_cash_against_the_bank_custody_institutions_only(
    reserve_contracts: list[Contract],
    reserve_institution: Institution,
    course: Course,
    make_contract: ContractFactory,
    make_student: Callable,
    pay: Callable,
) -> None:
    """Summing every institution's liabilities against custody cash would show a reserve institution's
    money (which it holds itself) as a custody shortfall: the overview keeps the two modes apart."""
    pay(make_contract(course=course, student=make_student()))
    deposit_reserve(institution=reserve_institution, amount=cny("500.00"), key="DEP-OVERVIEW")
    custody_institution = course.institution

    summary = overview(Institution.objects.all())

    assert summary.custody_cash_fen == posted(cash(custody_institution)) > 0
    assert summary.custody_owed_fen == summary.custody_cash_fen
    assert summary.reserve_mode_institutions == 1
    assert summary.reserve_mode_owed_fen == 240_000
    assert summary.reserve_cash_fen == 50_000
    assert summary.prepaid_fen == summary.custody_owed_fen + summary.reserve_mode_owed_fen
    by_pk = {i.pk: i for i in institutions_with_money(Institution.objects.all())}
    assert (by_pk[reserve_institution.pk].reserve_fen, by_pk[custody_institution.pk].reserve_fen) == (
        50_000,
        0,
    )


def test_the_regulators_pages_show_a_reserve_institutions_reserve_not_an_empty_custody_account(
    reserve_contracts: list[Contract],
    reserve_institution: Institution,
    jurisdiction: Jurisdiction,
    client: Client,
    course: Course,
    make_contract: ContractFactory,
    make_student: Callable,
    pay: Callable,
) -> None:
    deposit_reserve(institution=reserve_institution, amount=cny("500.00"), key="DEP-PAGES")
    pay(make_contract(course=course, student=make_student()))  # a bank-custody institution beside it
    user = get_user_model().objects.create_user(username="reserve-regulator", password="x")
    RegulatorProfile.objects.create(user=user, jurisdiction=jurisdiction)
    device = TOTPDevice.objects.create(user=user, name="test", confirmed=True)
    client.force_login(user)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id  # the TOTP step passed
    session.save()

    home = client.get("/regulator/", HTTP_ACCEPT_LANGUAGE="zh-hans")
    page = client.get(f"/regulator/institutions/{reserve_institution.pk}/", HTTP_ACCEPT_LANGUAGE="zh-hans")

    assert home.status_code == page.status_code == 200
    home_text = home.content.decode()
    assert "另有 1 家风险保证金模式机构：应付 ¥2,400.00 由机构自管，银行保证金 ¥500.00。" in home_text
    assert '¥500.00 <small class="muted">保证金</small>' in home_text
    # The bars are scaled to the rows drawn as bars: the reserve institution's larger debt does not shrink
    # the custody institution's (whose cash equals what it owes, so both bars are full).
    assert home_text.count('style="width:100%"') == 2
    page_text = page.content.decode()
    assert "机构自管账户 + 在途" in page_text and "托管账户 + 在途" not in page_text
    assert "由银行保证金 ¥500.00 担保" in page_text

"""Fixtures for the REST API's tests: a small world with two jurisdictions, three institutions at two banks,
two families, paid contracts, lessons in every state, refund claims, payout instructions and a correction
proposal, all made by the real services; users for every role with their tokens; an API client per role.

Business time is frozen at Monday 2024-03-04 10:00 in Shanghai (a year ``chinese_calendar`` knows), so
working-day deadlines are exact. Throttle counters are cleared before each test.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db import transaction
from django.test import override_settings
from rest_framework.test import APIClient

from custody.channels.bank import bank_callback_body, sign_bank_callback
from custody.models import (
    AlertLevel,
    AlertRule,
    ClassSizeBand,
    Contract,
    CorrectionProposal,
    Course,
    Guardian,
    InboxMessage,
    Institution,
    Jurisdiction,
    Lesson,
    PayoutInstruction,
    Refund,
    RiskAlert,
    StaffRole,
    Student,
    TeachingMode,
    TrainingCategory,
)
from custody.services.access import (
    grant_bank_operator,
    grant_institution_staff,
    grant_regulator,
    issue_api_token,
)
from custody.services.calendar import local_today
from custody.services.contracts import sign_contract
from custody.services.corrections import CorrectionLeg, propose_correction
from custody.services.courses import publish_course
from custody.services.institutions import register_institution
from custody.services.lessons import NewLesson, confirm_lesson, dispute_lesson, record_lessons
from custody.services.payments import receive_callback
from custody.services.payouts import run_release_payouts
from custody.services.people import add_student, register_guardian
from custody.services.policy import ensure_jurisdiction
from custody.services.refunds import claim_refund
from ledger import clock
from ledger.money import cny, from_minor
from tests.custody.conftest import unique_phone, valid_id_number

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2024, 3, 4, 10, 0, tzinfo=SHANGHAI)  # a Monday
BANK_KEY_ID = "bank-api-test-1"
PAYER_ACCOUNT = "6222020200112233445"
BANK_X = "中国工商银行徐汇支行"
BANK_Y = "中国建设银行浦东分行"

ROLES = (
    "anonymous",
    "parent",
    "manager",
    "teacher",
    "finance",
    "regulator",
    "bank",
    "admin",
)


@pytest.fixture(autouse=True)
def _business_time() -> Iterator[None]:
    with clock.frozen_at(NOW):
        yield


@pytest.fixture(autouse=True)
def _fresh_throttles() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


@pytest.fixture(scope="session")
def bank_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(autouse=True)
def _channels(settings: Any, bank_key: Ed25519PrivateKey) -> None:
    for name, value in _test_settings(bank_key).items():
        setattr(settings, name, value)


@dataclass(frozen=True)
class SignedCallback:
    headers: dict[str, str]
    body: bytes

    def http_headers(self) -> dict[str, Any]:
        """The headers as Django's test client takes them (``HTTP_X_BANK_...``)."""
        return {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in self.headers.items()}


BankCallback = Callable[..., SignedCallback]


@pytest.fixture
def bank_callback(bank_key: Ed25519PrivateKey) -> BankCallback:
    def build(contract: Contract, *, txn: str | None = None, amount_fen: int | None = None) -> SignedCallback:
        body = bank_callback_body(
            transaction_id=txn or f"BK{contract.pk:010d}",
            order_reference=contract.number,
            amount_fen=contract.amount_fen if amount_fen is None else amount_fen,
            paid_at=clock.now(),
            payer_account=PAYER_ACCOUNT,
        )
        return SignedCallback(sign_bank_callback(bank_key, BANK_KEY_ID, body, clock.now()), body)

    return build


@pytest.fixture
def pay(bank_callback: BankCallback) -> Callable[[Contract], Contract]:
    def pay_contract(contract: Contract) -> Contract:
        signed = bank_callback(contract)
        receive_callback(channel="bank", headers=signed.headers, body=signed.body, source_ip="10.0.0.1")
        return Contract.objects.get(pk=contract.pk)

    return pay_contract


# --- users and clients ----------------------------------------------------------------------------------


def new_user(username: str, **extra: Any) -> User:
    return User.objects.create_user(username=username, password="correct horse battery staple", **extra)


def client_for(user: User | None, *, otp_verified: bool = True) -> APIClient:
    client = APIClient()
    if user is not None:
        raw, _ = issue_api_token(user=user, otp_verified=otp_verified)
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


_keys = iter(range(1, 10**9))


def idem() -> dict[str, Any]:
    """A fresh ``Idempotency-Key`` header for the test client."""
    return {"HTTP_IDEMPOTENCY_KEY": f"test-{next(_keys)}"}


# --- the world ------------------------------------------------------------------------------------------


@dataclass
class World:
    jurisdiction: Jurisdiction
    other_jurisdiction: Jurisdiction
    institution: Institution  # A: jurisdiction 1, bank X: "own" for staff, regulator, bank
    neighbour: Institution  # B: jurisdiction 1, bank X: another institution, same regulator and bank
    remote: Institution  # C: jurisdiction 2, bank Y: nobody's "own" except its own staff
    course: Course
    remote_course: Course
    guardian: Guardian
    student: Student
    other_guardian: Guardian
    other_student: Student
    contract: Contract  # the parent's, at A, paid
    refund_contract: Contract  # the parent's, at A, paid, with a refund claim
    other_contract: Contract  # the other family's, at C (another jurisdiction and bank), paid
    other_refund_contract: Contract  # the other family's, at C, with a refund claim
    lesson: Lesson  # pending, on contract
    disputed: Lesson  # disputed, on contract
    other_lesson: Lesson  # pending, on other_contract
    other_disputed: Lesson  # disputed, on other_contract
    refund: Refund
    other_refund: Refund
    payout: PayoutInstruction  # A's release payout, instructed
    other_payout: PayoutInstruction  # C's release payout, instructed
    correction: CorrectionProposal  # proposed in jurisdiction 1
    other_correction: CorrectionProposal  # proposed in jurisdiction 2
    alert: RiskAlert  # open, at A
    other_alert: RiskAlert  # open, at C
    message: InboxMessage  # to jurisdiction 1's regulators
    other_message: InboxMessage  # to jurisdiction 2's regulators
    users: dict[str, User] = field(default_factory=dict)

    def client(self, role: str) -> APIClient:
        return client_for(self.users.get(role))


def _institution(jurisdiction: Jurisdiction, name: str, bank: str) -> Institution:
    n = next(_keys)
    return register_institution(
        jurisdiction=jurisdiction,
        name=name,
        licence_number=f"教民API{n:010d}",
        category=TrainingCategory.SUBJECT,
        custody_bank_name=bank,
        custody_account_number=f"1001{n:012d}",
        settlement_account_number=f"2002{n:012d}",
    )


def _course(institution: Institution, name: str) -> Course:
    return publish_course(
        institution=institution,
        name=name,
        subject="数学",
        category=TrainingCategory.SUBJECT,
        class_size_band=ClassSizeBand.SMALL,
        mode=TeachingMode.OFFLINE,
        price_per_hour=cny("80.00"),
        starts_on=local_today() + timedelta(days=14),
    )


def new_contract(course: Course, student: Student, paid_hours: int = 20) -> Contract:
    return sign_contract(
        course=course,
        student=student,
        paid_hours=paid_hours,
        amount=from_minor(course.price_per_hour_fen * paid_hours, "CNY"),
        service_starts_on=course.starts_on,
        service_ends_on=course.starts_on + timedelta(days=59),
    )


def build_world(pay: Callable[[Contract], Contract]) -> World:
    """The world, made by the real services (business time must be frozen at ``NOW``)."""
    jurisdiction = ensure_jurisdiction(code="310104", name="徐汇区")
    other_jurisdiction = ensure_jurisdiction(code="310115", name="浦东新区")
    institution = _institution(jurisdiction, "启明学科培训中心", BANK_X)
    neighbour = _institution(jurisdiction, "星河学科培训中心", BANK_X)
    remote = _institution(other_jurisdiction, "浦东学科培训中心", BANK_Y)
    course = _course(institution, "初二数学提高班")
    remote_course = _course(remote, "初三物理")

    guardian = register_guardian(name="张伟", phone=unique_phone(), id_number=valid_id_number("19850315"))
    student = add_student(
        guardian=guardian, name="张小明", id_number=valid_id_number("20120601"), grade="初二"
    )
    other_guardian = register_guardian(
        name="王芳", phone=unique_phone(), id_number=valid_id_number("19870720")
    )
    other_student = add_student(guardian=other_guardian, name="王小红", id_number=valid_id_number("20110303"))

    contract = pay(new_contract(course, student))
    refund_contract = pay(new_contract(course, student, paid_hours=10))
    other_contract = pay(new_contract(remote_course, other_student))
    other_refund_contract = pay(new_contract(remote_course, other_student, paid_hours=10))

    lessons = record_lessons(
        lessons=[
            NewLesson(contract=contract, held_at=clock.now() - timedelta(hours=n), idempotency_key=f"w-a-{n}")
            for n in range(1, 5)
        ]
        + [
            NewLesson(
                contract=other_contract, held_at=clock.now() - timedelta(hours=n), idempotency_key=f"w-c-{n}"
            )
            for n in range(1, 5)
        ]
    )
    lesson, disputed, confirmed, _ = lessons[:4]
    other_lesson, other_disputed, other_confirmed, _ = lessons[4:]
    dispute_lesson(lesson=disputed, reason="孩子当天请假 my child was absent")
    dispute_lesson(lesson=other_disputed, reason="课程取消 the lesson was cancelled")
    confirm_lesson(lesson=confirmed)
    confirm_lesson(lesson=other_confirmed)
    payout, other_payout = sorted(
        run_release_payouts(institutions=[institution, remote], ignore_cadence=True),
        key=lambda p: p.institution_id != institution.pk,
    )

    refund = claim_refund(contract=refund_contract, note="搬家 moving", idempotency_key="w-r-1")
    other_refund = claim_refund(contract=other_refund_contract, note="转学", idempotency_key="w-r-2")

    users = {
        "parent": new_user("parent1"),
        "other_parent": new_user("parent2"),
        "manager": new_user("manager-a"),
        "teacher": new_user("teacher-a"),
        "finance": new_user("finance-a"),
        "remote_manager": new_user("manager-c"),
        "regulator": new_user("regulator-1"),
        "second_regulator": new_user("regulator-1b"),
        "remote_regulator": new_user("regulator-2"),
        "bank": new_user("bank-x"),
        "remote_bank": new_user("bank-y"),
        "admin": new_user("admin", is_staff=True, is_superuser=True),
    }
    guardian.user = users["parent"]
    guardian.save(update_fields=["user"])
    other_guardian.user = users["other_parent"]
    other_guardian.save(update_fields=["user"])
    grant_institution_staff(user=users["manager"], institution=institution, role=StaffRole.MANAGER)
    grant_institution_staff(user=users["teacher"], institution=institution, role=StaffRole.TEACHER)
    grant_institution_staff(user=users["finance"], institution=institution, role=StaffRole.FINANCE)
    grant_institution_staff(user=users["remote_manager"], institution=remote, role=StaffRole.MANAGER)
    grant_regulator(user=users["regulator"], jurisdiction=jurisdiction)
    grant_regulator(user=users["second_regulator"], jurisdiction=jurisdiction)
    grant_regulator(user=users["remote_regulator"], jurisdiction=other_jurisdiction)
    grant_bank_operator(user=users["bank"], bank_name=BANK_X)
    grant_bank_operator(user=users["remote_bank"], bank_name=BANK_Y)

    correction = propose_correction(
        institution=institution,
        proposed_by=users["regulator"],
        reason="重分类 reclassify",
        legs=[
            CorrectionLeg(f"payable:i{institution.pk}", "debit", 100),
            CorrectionLeg(f"prepaid:c{contract.pk}", "credit", 100),
        ],
    )
    other_correction = propose_correction(
        institution=remote,
        proposed_by=users["remote_regulator"],
        reason="重分类 reclassify",
        legs=[
            CorrectionLeg(f"payable:i{remote.pk}", "debit", 100),
            CorrectionLeg(f"prepaid:c{other_contract.pk}", "credit", 100),
        ],
    )
    alert, other_alert = (
        RiskAlert.objects.create(
            institution=where,
            jurisdiction_id=where.jurisdiction_id,
            rule=AlertRule.DISPUTED_LESSONS,
            level=AlertLevel.YELLOW,
            window="ongoing",
            value=25,
            threshold=20,
            unit="count",
            message="有异议课时过多 many disputed lessons",
            policy_version=1,
            raised_at=clock.now(),
            last_seen_at=clock.now(),
        )
        for where in (institution, remote)
    )
    message, other_message = (
        InboxMessage.objects.create(
            jurisdiction_id=raised.jurisdiction_id,
            institution_id=raised.institution_id,
            alert=raised,
            subject="黄色预警 yellow alert",
            body=raised.message,
            created_at=clock.now(),
        )
        for raised in (alert, other_alert)
    )
    return World(
        jurisdiction=jurisdiction,
        other_jurisdiction=other_jurisdiction,
        institution=institution,
        neighbour=neighbour,
        remote=remote,
        course=course,
        remote_course=remote_course,
        guardian=guardian,
        student=student,
        other_guardian=other_guardian,
        other_student=other_student,
        contract=contract,
        refund_contract=refund_contract,
        other_contract=other_contract,
        other_refund_contract=other_refund_contract,
        lesson=lesson,
        disputed=disputed,
        other_lesson=other_lesson,
        other_disputed=other_disputed,
        refund=refund,
        other_refund=other_refund,
        payout=payout,
        other_payout=other_payout,
        correction=correction,
        other_correction=other_correction,
        alert=alert,
        other_alert=other_alert,
        message=message,
        other_message=other_message,
        users=users,
    )


def _paying(bank_key: Ed25519PrivateKey) -> Callable[[Contract], Contract]:
    def pay_contract(contract: Contract) -> Contract:
        body = bank_callback_body(
            transaction_id=f"BK{contract.pk:010d}",
            order_reference=contract.number,
            amount_fen=contract.amount_fen,
            paid_at=clock.now(),
            payer_account=PAYER_ACCOUNT,
        )
        headers = sign_bank_callback(bank_key, BANK_KEY_ID, body, clock.now())
        receive_callback(channel="bank", headers=headers, body=body, source_ip="10.0.0.1")
        return Contract.objects.get(pk=contract.pk)

    return pay_contract


def _test_settings(bank_key: Ed25519PrivateKey) -> dict[str, Any]:
    public = base64.b64encode(bank_key.public_key().public_bytes_raw()).decode()
    return {
        "CUSTODY_CHANNELS": {"bank": {"keys": {BANK_KEY_ID: public}}},
        # A password hash costs 0.7 s by design; the tests make a dozen users.
        "PASSWORD_HASHERS": ["django.contrib.auth.hashers.MD5PasswordHasher"],
    }


@pytest.fixture(scope="module")
def _module_world(
    django_db_setup: None, django_db_blocker: Any, bank_key: Ed25519PrivateKey
) -> Iterator[World]:
    """One world per test module, built inside a transaction that is rolled back after the module; each test
    runs in a savepoint inside it (pytest-django's ``db``), so tests still see the world as built."""
    with django_db_blocker.unblock():
        outer = transaction.atomic()
        outer.__enter__()
        try:
            with override_settings(**_test_settings(bank_key)), clock.frozen_at(NOW):
                built = build_world(_paying(bank_key))
            yield built
        finally:
            transaction.set_rollback(True)
            outer.__exit__(None, None, None)


@pytest.fixture
def world(_module_world: World, db: None) -> World:
    return _module_world


@pytest.fixture
def committed_world(transactional_db: None, bank_key: Ed25519PrivateKey) -> World:
    """The world committed, for tests that need other connections to see it (PostgreSQL only)."""
    return build_world(_paying(bank_key))

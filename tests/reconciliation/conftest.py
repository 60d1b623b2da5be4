"""Fixtures for reconciliation: institutions made by the custody services, a custody bank simulator holding
the bank's signing key (and WeChat Pay configured, for T+1 channel settlements), and ``World``: a small
district where tests sign contracts, take payments, consume lessons, pay out and refund through the real
services, day by day, while the simulated bank keeps its book and writes statements.

Business days start at Monday 2024-03-04 (``DAY1``); each simulated day records its cut on the ledger's
clock, so tie-outs read the ledger at the simulated day's close.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from itertools import count
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.contrib.auth.models import User

from custody.channels.wechat import build_wechat_notification, wechat_transaction
from custody.models import Contract, Course, Institution, Jurisdiction, Payment, PayoutInstruction
from custody.services.contracts import sign_contract
from custody.services.courses import publish_course
from custody.services.institutions import register_institution
from custody.services.lessons import NewLesson, confirm_lesson, record_lessons
from custody.services.payments import receive_callback
from custody.services.payouts import run_release_payouts
from custody.services.people import add_student, register_guardian
from custody.services.policy import ensure_jurisdiction
from custody.services.refunds import answer_refund, claim_refund, instruct_refund_payouts
from ledger import clock
from ledger.money import from_minor
from reconciliation.models import BankStatement
from reconciliation.selectors.days import SHANGHAI
from reconciliation.services.imports import import_statement
from reconciliation.services.runs import RunSummary, reconcile_statement
from reconciliation.simulator import CustodyBankSimulator, Delivery, bank_key_for_settings
from tests.custody.conftest import unique_phone, valid_id_number

DAY1 = date(2024, 3, 4)  # a Monday
BANK_KEY_ID = "bank-recon-1"
WECHAT_KEY_ID = "PUB_KEY_ID_0114232024030400000000000000000009"
WECHAT_API_V3_KEY = "0123456789abcdefghijABCDEFGHIJkl"
WECHAT_MCHID = "1900000009"
WECHAT_APPID = "wx0000000000000009"
PRICE_FEN = 8_000  # 80.00 yuan an hour
_serial = count(1)


@pytest.fixture(scope="session")
def bank_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def wechat_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(autouse=True)
def _channels(settings: Any, bank_key: Ed25519PrivateKey, wechat_key: rsa.RSAPrivateKey) -> None:
    public_pem = (
        wechat_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    settings.CUSTODY_CHANNELS = {
        "bank": {"keys": {BANK_KEY_ID: bank_key_for_settings(bank_key)}},
        "wechat": {
            "mchid": WECHAT_MCHID,
            "api_v3_key": WECHAT_API_V3_KEY,
            "public_keys": {WECHAT_KEY_ID: public_pem},
            "app_ids": [WECHAT_APPID],
        },
    }


@pytest.fixture
def district(db: None) -> Jurisdiction:
    return ensure_jurisdiction(code="310104", name="徐汇区")


def new_institution(jurisdiction: Jurisdiction, **overrides: Any) -> Institution:
    n = next(_serial)
    fields: dict[str, Any] = {
        "jurisdiction": jurisdiction,
        "name": f"对账测试培训机构{n}",
        "licence_number": f"教民对账{n:010d}",
        "category": "subject",
        "custody_bank_name": "中国工商银行徐汇支行",
        "custody_account_number": f"1001990{n:09d}",
        "settlement_account_number": f"2002990{n:09d}",
    }
    fields.update(overrides)
    with clock.frozen_at(_morning(DAY1 - timedelta(days=7))):
        return register_institution(**fields)


def _morning(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 9, 0, tzinfo=SHANGHAI)


class World:
    """A few institutions, their bank, and the flows that move custody cash."""

    def __init__(
        self,
        institutions: Sequence[Institution],
        bank_key: Ed25519PrivateKey,
        wechat_key: rsa.RSAPrivateKey,
        **options: Any,
    ) -> None:
        self.institutions = list(institutions)
        self.wechat_key = wechat_key
        self.bank = CustodyBankSimulator(
            institutions=self.institutions, bank_key=bank_key, key_id=BANK_KEY_ID, **options
        )
        self.courses: dict[int, Course] = {}
        with clock.frozen_at(_morning(DAY1 - timedelta(days=7))):
            for institution in self.institutions:
                self.courses[institution.pk] = publish_course(
                    institution=institution,
                    name="初二数学",
                    subject="数学",
                    category="subject",
                    class_size_band="small",
                    mode="offline",
                    price_per_hour=from_minor(PRICE_FEN, "CNY"),
                    starts_on=DAY1,
                )

    def contract(self, institution: Institution, *, hours: int = 10) -> Contract:
        guardian = register_guardian(name="李娜", phone=unique_phone(), id_number=valid_id_number("19860101"))
        student = add_student(guardian=guardian, name="李小华", id_number=valid_id_number())
        course = self.courses[institution.pk]
        return sign_contract(
            course=course,
            student=student,
            paid_hours=hours,
            amount=from_minor(PRICE_FEN * hours, "CNY"),
            service_starts_on=course.starts_on,
            service_ends_on=course.starts_on + timedelta(days=59),
        )

    def pay_bank(self, contract: Contract) -> Payment:
        return self.bank.receive_transfer(contract, payer_account=f"6222{next(_serial):015d}")

    def pay_wechat(self, contract: Contract) -> Payment:
        transaction = wechat_transaction(
            mchid=WECHAT_MCHID,
            appid=WECHAT_APPID,
            transaction_id=f"4200{next(_serial):024d}",
            out_trade_no=contract.number,
            total_fen=contract.amount_fen,
            success_time=clock.now(),
            openid=f"o-parent-{next(_serial)}",
        )
        headers, body = build_wechat_notification(
            private_key=self.wechat_key,
            serial=WECHAT_KEY_ID,
            api_v3_key=WECHAT_API_V3_KEY,
            transaction=transaction,
            sent_at=clock.now(),
        )
        return receive_callback(channel="wechat", headers=headers, body=body, source_ip="10.0.0.1")

    def consume(self, contract: Contract, hours: int) -> None:
        """Record ``hours`` lessons and have the parent confirm them (released to payable:i)."""
        lessons = record_lessons(
            lessons=[
                NewLesson(
                    contract=contract, held_at=clock.now(), idempotency_key=f"L{contract.pk}-{next(_serial)}"
                )
                for _ in range(hours)
            ]
        )
        for lesson in lessons:
            confirm_lesson(lesson=lesson)

    def release(self, institution: Institution) -> list[PayoutInstruction]:
        return run_release_payouts(institutions=[institution], ignore_cadence=True)

    def refund(self, contract: Contract) -> list[PayoutInstruction]:
        refund = claim_refund(contract=contract, idempotency_key=f"R{contract.pk}-{next(_serial)}")
        answer_refund(refund=refund, approve=True)
        return instruct_refund_payouts(refunds=[refund])


@pytest.fixture
def world_factory(district: Jurisdiction, bank_key: Ed25519PrivateKey, wechat_key: rsa.RSAPrivateKey) -> Any:
    def make(institutions: int = 1, **options: Any) -> World:
        return World(
            [new_institution(district) for _ in range(institutions)], bank_key, wechat_key, **options
        )

    return make


def import_and_reconcile(deliveries: Sequence[Delivery], *, by: User | None = None) -> list[RunSummary]:
    """Import each delivered file in order and reconcile what it brought."""
    runs = []
    for delivery in deliveries:
        result = import_statement(data=delivery.data, filename=delivery.filename, imported_by=by)
        runs.append(reconcile_statement(statement=result.statement))
    return runs


def statements_of(institution: Institution) -> list[BankStatement]:
    return list(BankStatement.objects.filter(institution=institution).order_by("period_start"))

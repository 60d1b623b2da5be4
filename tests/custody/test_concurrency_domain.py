"""Real processes racing on the same contracts (PostgreSQL): a refund claim and its approval, the parent's
lesson confirmations, disputes upheld (voiding lessons back into the contract), a rival claim, and release
runs with the bank executing every payout, all at once on ten paid contracts. Whatever the interleaving,
no contract moves more than was paid: paid = released + refunded + held + still prepaid, custody cash never
goes below zero, the ledger verifies and every institution's custody invariant holds.

The workers are separate OS processes (multiprocessing "spawn": a fresh interpreter each, no shared
connection or state) on the same test database, started together behind a barrier. The SIGKILL fault test of
the closure job lives with the closure tests (tests/custody/flows/test_closures.py), so it is not repeated.

Django is imported inside the functions only: a spawned worker imports this module before Django is set up.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from typing import Any

import pytest

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

CONTRACTS = 10
LESSONS = 6  # per contract, one hour each: 0-2 confirmed by the parent, 3-4 disputed and voided, 5 left
PRICE_FEN = 8_000
PAID_HOURS = 20


# --- the workers (run in their own processes) ---------------------------------------------------------------


def _start_django(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def _run(role: str, database_url: str, ids: list[int], barrier: Any, results: Any) -> None:
    """One racing process: ``role`` says what it does to ``ids``; errors go back through ``results``."""
    try:
        _start_django(database_url)
        from custody.errors import RuleViolation
        from custody.models import Contract, Lesson, PayoutInstruction, PayoutState, Refund
        from custody.services import lessons, payouts, refunds

        barrier.wait(timeout=60)
        done = 0
        if role in ("refund", "rival"):
            for contract in Contract.objects.filter(pk__in=ids).order_by("pk" if role == "refund" else "-pk"):
                try:
                    claim = refunds.claim_refund(contract=contract, idempotency_key=f"{role}-{contract.pk}")
                    refunds.answer_refund(refund=claim, approve=True)
                    done += 1
                except RuleViolation as refusal:  # the other claimant was first: one open refund per contract
                    if refusal.rule not in ("refund_already_open", "nothing_to_refund", "refund_not_allowed"):
                        raise
                refunds.instruct_refund_payouts(refunds=Refund.objects.filter(contract=contract))
        elif role == "confirm":
            for lesson in Lesson.objects.filter(pk__in=ids).order_by("pk"):
                lessons.confirm_lesson(lesson=lesson)
                done += 1
        elif role == "void":
            for lesson in Lesson.objects.filter(pk__in=ids).order_by("-pk"):
                lessons.dispute_lesson(lesson=lesson, reason="当天缺课 absent")
                lessons.resolve_dispute(lesson=lesson, release=False, note="异议成立 upheld", by="regulator")
                done += 1
        elif role == "bank":
            for _ in range(12):
                payouts.run_release_payouts()
                refunds.instruct_refund_payouts()
                for reference in PayoutInstruction.objects.filter(state=PayoutState.INSTRUCTED).values_list(
                    "reference", flat=True
                ):
                    payouts.record_payout_result(reference=reference, executed=True, bank_reference="B")
                    done += 1
        results.put((role, "ok", done))
    except BaseException:
        results.put((role, "error", traceback.format_exc()))


# --- the test -------------------------------------------------------------------------------------------


def _paid_contracts_with_lessons(settings: Any) -> tuple[list[int], list[int], list[int]]:
    """Ten paid contracts (bank callbacks), six pending one-hour lessons each. Returns the contract ids, the
    lessons the parent confirms and the lessons disputed and voided."""
    import base64
    from datetime import timedelta

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from custody.channels.bank import bank_callback_body, sign_bank_callback
    from custody.models import ClassSizeBand, Lesson, TeachingMode, TrainingCategory
    from custody.services.calendar import local_today
    from custody.services.contracts import sign_contract
    from custody.services.courses import publish_course
    from custody.services.institutions import register_institution
    from custody.services.lessons import NewLesson, record_lessons
    from custody.services.payments import receive_callback
    from custody.services.people import add_student, id_number_check_character, register_guardian
    from custody.services.policy import ensure_jurisdiction
    from ledger import clock
    from ledger.money import from_minor

    key = Ed25519PrivateKey.generate()
    public = base64.b64encode(key.public_key().public_bytes_raw()).decode()
    settings.CUSTODY_CHANNELS = {"bank": {"keys": {"race-bank": public}}}

    def id_number(n: int, birth: str) -> str:
        first17 = f"500112{birth}{n:03d}"
        return first17 + id_number_check_character(first17)

    jurisdiction = ensure_jurisdiction(code="500112", name="重庆市渝北区")
    institution = register_institution(
        jurisdiction=jurisdiction,
        name="启航培训学校",
        licence_number="教民500112000001",
        category=TrainingCategory.SUBJECT,
        custody_bank_name="重庆农村商业银行渝北支行",
        custody_account_number="10010001",
        settlement_account_number="20020001",
    )
    today = local_today()
    course = publish_course(
        institution=institution,
        name="初中数学",
        subject="数学",
        category=TrainingCategory.SUBJECT,
        class_size_band=ClassSizeBand.SMALL,
        mode=TeachingMode.OFFLINE,
        price_per_hour=from_minor(PRICE_FEN, "CNY"),
        starts_on=today,
    )
    guardian = register_guardian(name="王芳", phone="13800000001", id_number=id_number(1, "19850101"))
    contracts = []
    for n in range(CONTRACTS):
        student = add_student(guardian=guardian, name=f"王小{n}", id_number=id_number(10 + n, "20140301"))
        contract = sign_contract(
            course=course,
            student=student,
            paid_hours=PAID_HOURS,
            amount=from_minor(PRICE_FEN * PAID_HOURS - 7 * n, "CNY"),  # unit prices that are not whole fen
            service_starts_on=today,
            service_ends_on=today + timedelta(days=59),
        )
        body = bank_callback_body(
            transaction_id=f"RACE{n:04d}",
            order_reference=contract.number,
            amount_fen=contract.amount_fen,
            paid_at=clock.now(),
            payer_account="6222020200112233445",
        )
        receive_callback(
            channel="bank", headers=sign_bank_callback(key, "race-bank", body, clock.now()), body=body
        )
        contracts.append(contract)
    record_lessons(
        lessons=[
            NewLesson(
                contract=contract,
                held_at=clock.now() - timedelta(hours=LESSONS - k),
                hours=1,
                idempotency_key=f"race-{contract.pk}-{k}",
            )
            for contract in contracts
            for k in range(LESSONS)
        ]
    )
    confirm, void = [], []
    for contract in contracts:
        ids = list(Lesson.objects.filter(contract=contract).order_by("pk").values_list("pk", flat=True))
        confirm += ids[:3]
        void += ids[3:5]
    return [c.pk for c in contracts], confirm, void


def test_refunds_confirmations_voids_and_payouts_racing_never_move_more_than_was_paid(settings: Any) -> None:
    from django.db import connection
    from django.db.models import Sum

    from custody.models import (
        Contract,
        Institution,
        Lesson,
        LessonState,
        Payment,
        PayoutInstruction,
        PayoutKind,
        PayoutState,
        Refund,
        RefundReason,
        RefundState,
    )
    from custody.selectors.balances import contract_position, custody_invariant
    from custody.services import payouts, refunds
    from ledger import verification
    from ledger.models import Account

    contract_ids, confirm_ids, void_ids = _paid_contracts_with_lessons(settings)
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    connection.close()  # the workers get the database to themselves while they race

    context = multiprocessing.get_context("spawn")
    roles = {
        "refund": contract_ids,
        "rival": contract_ids,
        "confirm": confirm_ids,
        "void": void_ids,
        "bank": [],
    }
    barrier = context.Barrier(len(roles))
    results = context.Queue()
    workers = [
        context.Process(target=_run, args=(role, url, ids, barrier, results), name=role)
        for role, ids in roles.items()
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=300) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    errors = [detail for _, status, detail in outcomes if status == "error"]
    assert not errors, "\n".join(str(e) for e in errors)
    assert {role for role, _, _ in outcomes} == set(roles)

    # Settle what the race left instructed, then check every contract and the books.
    refunds.instruct_refund_payouts()
    for reference in PayoutInstruction.objects.filter(state=PayoutState.INSTRUCTED).values_list(
        "reference", flat=True
    ):
        payouts.record_payout_result(reference=reference, executed=True, bank_reference="B")

    assert Lesson.objects.filter(pk__in=confirm_ids, state=LessonState.CONFIRMED).count() == len(confirm_ids)
    assert Lesson.objects.filter(pk__in=void_ids, state=LessonState.VOIDED).count() == len(void_ids)
    for contract in Contract.objects.filter(pk__in=contract_ids).select_related("prepaid_account"):
        position = contract_position(contract)
        assert position.balanced, position
        assert position.paid_fen == contract.amount_fen
        assert position.released_fen + position.refunded_fen <= position.paid_fen, position
        account = contract.prepaid_account
        assert account is not None
        assert account.debits_posted == position.released_fen + position.refunded_fen
        claims = Refund.objects.filter(contract=contract, reason=RefundReason.PARENT_CLAIM)
        assert 1 <= claims.exclude(state=RefundState.REJECTED).count() <= 2
        # The one lesson nobody touched is still held; everything else was released or refunded.
        assert (
            position.held_fen == Lesson.objects.get(contract=contract, state=LessonState.PENDING).amount_fen
        )
        assert (
            contract.hours_consumed + contract.hours_pending + contract.paid_hours_refunded
            <= contract.total_hours
        )

    paid_in = Payment.objects.aggregate(s=Sum("amount_fen"))["s"]
    paid_out = PayoutInstruction.objects.filter(state=PayoutState.EXECUTED).aggregate(s=Sum("amount_fen"))[
        "s"
    ]
    assert 0 < paid_out <= paid_in
    refunded_out = PayoutInstruction.objects.filter(
        kind=PayoutKind.REFUND, state=PayoutState.EXECUTED
    ).aggregate(s=Sum("amount_fen"))["s"]
    assert refunded_out == Refund.objects.filter(state=RefundState.PAID).aggregate(s=Sum("amount_fen"))["s"]
    cash = Account.objects.get(code=f"custody_cash:i{Institution.objects.get().pk}")
    assert cash.debits_posted - cash.credits_posted == paid_in - paid_out >= 0
    assert custody_invariant(Institution.objects.get()).holds
    report = verification.verify()
    assert report.ok, report.findings[:10]

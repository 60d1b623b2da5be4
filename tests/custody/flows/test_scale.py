"""The flows at district scale, on PostgreSQL: set-based jobs stay within their time budgets.

- auto-confirmation of 100,000 lessons (500 institutions × 20 contracts × 10 lessons), and the release run
  that batches the released money into 500 payouts: under 15 s together;
- a closure of an institution with 10,000 contracts (each with a confirmed and a pending lesson): under 10 s.

Contracts are set up in bulk (rows, accounts and settled funding through ``ledger.services.post_batch``) since
signing 10,000 contracts one by one would take minutes; everything timed goes through the real services.
By default the suite runs a smaller district (20 institutions x 10 contracts x 3 lessons; a 500-contract
closure) over the same set-based paths with the same assertions but no time budget, so CI stays fast on any
machine; CUSTODY_FULL_SCALE=1 runs the full sizes and asserts the budgets. The published figures come from
``make bench`` (bench/bench_custody.py). Before timing, the tables are ANALYZEd: a production database has
statistics, while this server runs with autovacuum off and a freshly loaded table would otherwise be planned
as if empty. Timings are printed (``pytest -s``) and attached to the report as properties.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from functools import partial

import pytest
from django.db import connection

from custody.models import (
    ClosureState,
    Contract,
    ContractState,
    Course,
    Institution,
    Lesson,
    LessonState,
    PayoutInstruction,
    Refund,
)
from custody.selectors.balances import custody_invariant
from custody.selectors.policy import current_policy
from custody.services.closures import order_closure, run_closure
from custody.services.lessons import NewLesson, auto_confirm_due_lessons, record_lessons
from custody.services.payouts import run_release_payouts
from custody.services.people import add_student, register_guardian
from ledger import clock, verification
from ledger.models import Account, AccountType
from ledger.money import from_minor
from ledger.services import NewEntry, credit, debit, post_batch
from tests.custody.conftest import InstitutionFactory, unique_phone, valid_id_number

# Transactional: every job's transactions really commit, so the ledger's deferred checks run in the timing.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres, pytest.mark.slow]

PRICE_FEN = 8_000
PAID_HOURS = 10
FULL_SCALE = os.environ.get("CUSTODY_FULL_SCALE") == "1"
INSTITUTIONS, CONTRACTS_EACH, LESSON_ROUNDS = (500, 20, PAID_HOURS) if FULL_SCALE else (20, 10, 3)
CLOSURE_CONTRACTS = 10_000 if FULL_SCALE else 500


@pytest.fixture(autouse=True)
def _flow_invariants() -> Iterator[None]:
    """Overrides the per-contract checks of conftest (40,000 queries here): the ledger verifies and every
    institution's custody invariant holds."""
    yield
    report = verification.verify()
    assert report.ok, report.findings[:10]
    for institution in Institution.objects.all():
        assert custody_invariant(institution).holds


def bulk_contracts(institutions: list[Institution], per_institution: int) -> list[int]:
    """Active contracts of ``PAID_HOURS`` hours at ``PRICE_FEN``, paid and settled into custody."""
    guardian = register_guardian(name="王芳", phone=unique_phone(), id_number=valid_id_number("19800101"))
    student = add_student(guardian=guardian, name="王小明", id_number=valid_id_number("20140101"))
    today = clock.now().date()
    policy = current_policy(institutions[0].jurisdiction)
    courses = Course.objects.bulk_create(
        [
            Course(
                institution=i,
                name="数学",
                subject="数学",
                category=i.category,
                class_size_band="small",
                mode="offline",
                price_per_hour_fen=PRICE_FEN,
                starts_on=today,
                published=True,
            )
            for i in institutions
        ]
    )
    now = clock.now()
    contracts = Contract.objects.bulk_create(
        [
            Contract(
                number=f"SC{i.pk:05d}{n:07d}",
                institution=i,
                course=course,
                student=student,
                guardian=guardian,
                policy=policy,
                subject="数学",
                paid_hours=PAID_HOURS,
                amount_fen=PRICE_FEN * PAID_HOURS,
                service_starts_on=today,
                service_ends_on=today + timedelta(days=59),
                state=ContractState.ACTIVE,
                signed_at=now,
                paid_at=now,
                payer_account="6222020200112233445",
            )
            for i, course in zip(institutions, courses, strict=True)
            for n in range(per_institution)
        ],
        batch_size=5000,
    )
    accounts = Account.objects.bulk_create(
        [
            Account(
                code=f"{prefix}:c{c.pk}",
                type=AccountType.LIABILITY,
                currency="CNY",
                debits_must_not_exceed_credits=True,
            )
            for c in contracts
            for prefix in ("prepaid", "refund_payable")
        ],
        batch_size=5000,
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE custody_contract c SET prepaid_account_id = d.prepaid, refund_account_id = d.refund "
            "FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) AS d(id, prepaid, refund) "
            "WHERE c.id = d.id",
            [[c.pk for c in contracts], [a.pk for a in accounts[0::2]], [a.pk for a in accounts[1::2]]],
        )
    amount = from_minor(PRICE_FEN * PAID_HOURS, "CNY")
    for start in range(0, len(contracts), 5000):
        post_batch(
            entries=[
                NewEntry(
                    idempotency_key=f"scale:fund:{c.pk}",
                    kind="payment",
                    legs=[
                        debit(f"custody_cash:i{c.institution_id}", amount),
                        credit(f"prepaid:c{c.pk}", amount),
                    ],
                )
                for c in contracts[start : start + 5000]
            ]
        )
    return [c.pk for c in contracts]


def record_one_lesson_each(contract_ids: list[int], *, round_: int) -> None:
    contracts = {c.pk: c for c in Contract.objects.filter(pk__in=contract_ids)}
    for start in range(0, len(contract_ids), 10_000):
        record_lessons(
            lessons=[
                NewLesson(contract=contracts[pk], held_at=clock.now(), idempotency_key=f"scale:{pk}:{round_}")
                for pk in contract_ids[start : start + 10_000]
            ]
        )


def analyze() -> None:
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def timed(label: str, record_property: Callable[[str, object], None], run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    print(f"{label}: {seconds:.2f} s (load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores)")
    record_property(label, round(seconds, 3))
    return seconds


def test_auto_confirm_and_release_at_district_scale(
    make_institution: InstitutionFactory, record_property: Callable[[str, object], None]
) -> None:
    """Full scale: 100,000 lessons auto-confirmed and released into 500 payouts within 15 s."""
    institutions = [make_institution() for _ in range(INSTITUTIONS)]
    contract_ids = bulk_contracts(institutions, per_institution=CONTRACTS_EACH)
    lessons = len(contract_ids) * LESSON_ROUNDS
    analyze()
    recording = 0.0
    for round_ in range(LESSON_ROUNDS):
        recording += timed(
            f"record {len(contract_ids):,} lessons (round {round_})",
            record_property,
            partial(record_one_lesson_each, contract_ids, round_=round_),
        )
    print(f"recording {lessons:,} lessons: {recording:.2f} s")
    assert Lesson.objects.filter(state=LessonState.PENDING).count() == lessons
    clock.advance(timedelta(days=40))
    analyze()

    confirmed: list[int] = []
    confirm_seconds = timed(
        f"auto-confirm {lessons:,} lessons",
        record_property,
        lambda: confirmed.append(auto_confirm_due_lessons()),
    )
    payouts: list[PayoutInstruction] = []
    payout_seconds = timed(
        f"release run into {INSTITUTIONS} payouts",
        record_property,
        lambda: payouts.extend(run_release_payouts()),
    )

    assert confirmed == [lessons]
    assert len(payouts) == INSTITUTIONS
    assert {p.amount_fen for p in payouts} == {CONTRACTS_EACH * LESSON_ROUNDS * PRICE_FEN}
    completed = len(contract_ids) if LESSON_ROUNDS == PAID_HOURS else 0
    assert Contract.objects.filter(state=ContractState.COMPLETED).count() == completed
    if FULL_SCALE:
        assert confirm_seconds + payout_seconds < 15, (confirm_seconds, payout_seconds)


def test_a_closure_at_scale_refunds_every_contract_once(
    make_institution: InstitutionFactory, record_property: Callable[[str, object], None]
) -> None:
    """Full scale: an institution with 10,000 contracts closed abnormally within 10 s."""
    institution = make_institution()
    contract_ids = bulk_contracts([institution], per_institution=CLOSURE_CONTRACTS)
    analyze()
    record_one_lesson_each(contract_ids, round_=0)
    clock.advance(timedelta(days=40))
    assert auto_confirm_due_lessons() == CLOSURE_CONTRACTS
    record_one_lesson_each(contract_ids, round_=1)  # pending when the closure comes
    closure = order_closure(institution=institution, mode="abnormal", reason="跑路 absconded")
    analyze()

    seconds = timed(
        f"closure of {CLOSURE_CONTRACTS:,} contracts", record_property, lambda: run_closure(closure=closure)
    )

    closure.refresh_from_db()
    assert closure.state == ClosureState.COMPLETED
    assert (closure.contracts_done, closure.lessons_voided) == (CLOSURE_CONTRACTS, CLOSURE_CONTRACTS)
    refund_fen = (PAID_HOURS - 1) * PRICE_FEN
    assert Refund.objects.filter(reason="closure", amount_fen=refund_fen).count() == CLOSURE_CONTRACTS
    assert PayoutInstruction.objects.filter(kind="refund").count() == CLOSURE_CONTRACTS
    assert closure.refunded_fen == CLOSURE_CONTRACTS * refund_fen
    if FULL_SCALE:
        assert seconds < 10, seconds
    rows = Refund.objects.count()
    run_closure(closure=closure)
    assert Refund.objects.count() == rows

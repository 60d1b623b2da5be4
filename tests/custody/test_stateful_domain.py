"""The whole custody domain under Hypothesis's rule-based state machine, with DESIGN.md section 6 checked
after every step.

Each example sets up a district (a subject institution and a non-subject one in bank custody, a non-subject
one with a risk reserve, a course each, three students) and runs a random program through the services only:
sign contracts (many of them over a cap), pay through signed custody-bank callbacks (some for the wrong
amount), replay callbacks (byte for byte, or re-signed by the bank), cancel unpaid orders, record lessons,
confirm, dispute, resolve, move business time (auto-confirmation, approval by silence, unpaid orders
lapsing), claim and answer refunds, instruct refunds, run release payouts, answer payouts as the bank, freeze
and unfreeze, order closures (planned and abnormal) and run them twice, run every job twice, and replay
idempotent requests.

After every step (``@invariant``), numbered as in DESIGN.md section 6:

1. every entry sums to zero (``ledger.verification.check_entries_balance``); on PostgreSQL the deferred
   constraints are also fired (``SET CONSTRAINTS ALL IMMEDIATE``), as a commit would;
2. every account's materialized totals equal its postings (``check_materialized_totals``), holds agree;
3. per institution: custody cash (the institution's own account in risk-reserve mode) = Σ prepaid + payable
   + Σ refund payable (``custody.selectors.balances.custody_invariant``; bank payments settle at once, so
   nothing is in clearing);
4. per contract, from the ledger's postings on ``prepaid:c`` grouped by entry kind: paid (payment credits) =
   released (lesson debits) + refunded (refund debits) + held (open lesson holds) + still prepaid, and each
   figure equals the domain's own record (payments, confirmed lessons, approved refunds);
5. no limited account past its limit, no custody liability or cash below zero;
6. released + refunded paid hours ≤ paid hours; consumed + pending + refunded ≤ paid + gift hours; and the
   contract's hour counters equal its lessons and refunds;
7. no open set of contracts (student × institution × subject) holds more than 60 unconsumed hours, no open
   contract covers more than 3 months or (non-subject) more than 5,000 yuan;
9. replaying a callback, a lesson, a refund claim or a bank answer, or running the jobs a second time,
   changes nothing (checked inside those rules);
10. after a closure run: each contract it took has nothing left in ``prepaid:c`` and exactly one closure
   refund, for exactly what was left, if anything was; a completed closure leaves no open contract.

Each example runs inside a savepoint that is rolled back (SQLite's flush cannot DELETE append-only rows).
``HYPOTHESIS_PROFILE=ci`` (or ``nightly``) runs more and longer programs.
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db import connection, transaction
from django.db.models import Count, Sum
from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from custody.channels import CallbackRejected
from custody.channels.bank import bank_callback_body, sign_bank_callback
from custody.errors import CustodyError
from custody.models import (
    ClassSizeBand,
    Closure,
    ClosureState,
    ConfirmedBy,
    Contract,
    ContractState,
    Course,
    Institution,
    InstitutionState,
    Lesson,
    LessonState,
    Payment,
    PayoutInstruction,
    PayoutState,
    Refund,
    RefundReason,
    RefundState,
    Student,
    SupervisionMode,
    TeachingMode,
    TrainingCategory,
)
from custody.rules import latest_service_end
from custody.selectors.balances import custody_invariant
from custody.services import closures, institutions, lessons, payouts, refunds, reserve
from custody.services.calendar import local_date
from custody.services.contracts import (
    cancel_unpaid_contract,
    lapse_unpaid_contracts,
    sign_contract,
    unpaid_lapses_at,
)
from custody.services.courses import publish_course
from custody.services.payments import receive_callback
from custody.services.people import add_student, id_number_check_character, register_guardian
from custody.services.policy import ensure_jurisdiction, publish_policy
from ledger import clock, verification
from ledger.models import Account, Entry, PendingTransfer
from ledger.money import from_minor

pytestmark = pytest.mark.django_db

# (max_examples, stateful_step_count)
PROFILES = {"dev": (15, 35), "ci": (100, 50), "nightly": (400, 70)}
MAX_EXAMPLES, STEP_COUNT = PROFILES[os.environ.get("HYPOTHESIS_PROFILE", "dev")]

SHANGHAI = ZoneInfo("Asia/Shanghai")
START = datetime(2024, 3, 4, 10, 0, tzinfo=SHANGHAI)  # a Monday, in a year chinese_calendar knows
BANK_KEY = Ed25519PrivateKey.generate()
BANK_KEY_ID = "stateful-bank"
PAYER = "6222020200112233445"
LIABILITY_PREFIXES = ("prepaid:", "payable:", "refund_payable:", "reserve_deposit:")
ASSET_PREFIXES = ("custody_cash:", "institution_held:", "reserve_cash:")
OPEN_REFUND_STATES = (RefundState.CLAIMED, RefundState.APPROVED, RefundState.INSTRUCTED)
APPROVED_STATES = (RefundState.APPROVED, RefundState.INSTRUCTED, RefundState.PAID)

T = TypeVar("T")
picks = st.integers(min_value=0, max_value=10_000)


def _id_number(n: int, birth: str) -> str:
    first17 = f"500112{birth}{n:03d}"
    return first17 + id_number_check_character(first17)


def snapshot() -> tuple[object, ...]:
    """Everything a replay or a second job run must leave unchanged: the ledger's rows and totals, and the
    domain's states."""
    accounts = tuple(
        Account.objects.order_by("pk").values_list(
            "pk", "debits_posted", "credits_posted", "debits_pending", "credits_pending"
        )
    )

    def states(model: Any) -> tuple[tuple[str, int], ...]:
        return tuple(model.objects.values_list("state").annotate(n=Count("pk")).order_by("state"))

    return (
        Entry.objects.count(),
        PendingTransfer.objects.count(),
        tuple(PendingTransfer.objects.values_list("state").annotate(n=Count("pk")).order_by("state")),
        accounts,
        Payment.objects.count(),
        Lesson.objects.count(),
        Refund.objects.count(),
        PayoutInstruction.objects.count(),
        states(Contract),
        states(Lesson),
        states(Refund),
        states(PayoutInstruction),
        states(Closure),
        states(Institution),
    )


class DomainMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._atomic = transaction.atomic()
        self._atomic.__enter__()
        self._clock = clock.frozen_at(START)
        self._clock.__enter__()
        self.serial = 0
        self.callbacks: list[tuple[dict[str, str], bytes]] = []
        self.lesson_requests: list[lessons.NewLesson] = []
        self.claims: list[tuple[int, str]] = []
        self.answers: list[tuple[str, bool]] = []
        self.setup_district()

    def teardown(self) -> None:
        transaction.set_rollback(True)
        self._atomic.__exit__(None, None, None)
        self._clock.__exit__(None, None, None)

    # --- the district ---------------------------------------------------------------------------------------

    def setup_district(self) -> None:
        jurisdiction = ensure_jurisdiction(code="500112", name="重庆市渝北区")
        publish_policy(
            jurisdiction=jurisdiction,
            changes={"risk_reserve_allowed": True},
            changed_by=None,
            note="允许风险保证金 risk reserve allowed",
        )
        today = local_date(START)
        specs = [
            ("启航培训学校", TrainingCategory.SUBJECT, SupervisionMode.CUSTODY, "数学", 8_000),
            ("星光美术中心", TrainingCategory.NON_SUBJECT, SupervisionMode.CUSTODY, "美术", 30_000),
            ("悦动体育中心", TrainingCategory.NON_SUBJECT, SupervisionMode.RISK_RESERVE, "游泳", 12_500),
        ]
        self.institution_ids: list[int] = []
        self.courses: list[Course] = []
        for n, (name, category, mode, subject, price) in enumerate(specs):
            institution = institutions.register_institution(
                jurisdiction=jurisdiction,
                name=name,
                licence_number=f"教民50011200000{n}",
                category=category,
                supervision_mode=mode,
                custody_bank_name="重庆农村商业银行渝北支行",
                custody_account_number=f"1001000{n}",
                settlement_account_number=f"2002000{n}",
            )
            if mode == SupervisionMode.RISK_RESERVE:
                reserve.deposit_reserve(
                    institution=institution, amount=from_minor(10_000_000, "CNY"), key="D1"
                )
            self.institution_ids.append(institution.pk)
            self.courses.append(
                publish_course(
                    institution=institution,
                    name=f"{subject}课程",
                    subject=subject,
                    category=category,
                    class_size_band=ClassSizeBand.SMALL,
                    mode=TeachingMode.OFFLINE,
                    price_per_hour=from_minor(price, "CNY"),
                    starts_on=today + timedelta(days=7),
                )
            )
        guardian = register_guardian(name="王芳", phone="13800000001", id_number=_id_number(1, "19850101"))
        self.students: list[Student] = [
            add_student(guardian=guardian, name=name, id_number=_id_number(10 + n, "20140301"))
            for n, name in enumerate(("王小明", "王小红", "王小刚"))
        ]
        # One paid contract at each institution to start from, so short programs already move money.
        for course, student, hours in zip(self.courses, self.students, (20, 10, 12), strict=True):
            contract = sign_contract(
                course=course,
                student=student,
                paid_hours=hours,
                amount=from_minor(course.price_per_hour_fen * hours, "CNY"),
                service_starts_on=course.starts_on,
                service_ends_on=course.starts_on + timedelta(days=59),
            )
            self.pay_contract(contract)

    def pay_contract(self, contract: Contract, *, amount_fen: int | None = None) -> Payment | None:
        body = bank_callback_body(
            transaction_id=self.next_key("T"),
            order_reference=contract.number,
            amount_fen=contract.amount_fen if amount_fen is None else amount_fen,
            paid_at=clock.now(),
            payer_account=PAYER,
        )
        payment = self.attempt(
            lambda: receive_callback(
                channel="bank", headers=self.signed(body), body=body, source_ip="10.0.0.1"
            )
        )
        if payment is not None:
            self.callbacks.append((self.signed(body), body))
        return payment

    # --- helpers --------------------------------------------------------------------------------------------

    def next_key(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial}"

    @staticmethod
    def attempt(call: Callable[[], T]) -> T | None:
        """Run one service call in a savepoint; a refusal of the domain (a rule, a state machine, a channel)
        returns None, anything else fails the test."""
        try:
            with transaction.atomic():
                return call()
        except (CustodyError, CallbackRejected) as refusal:
            with contextlib.suppress(
                InvalidArgument
            ):  # outside Hypothesis (the fixed program) there is no log
                note(f"refused: {type(refusal).__name__} {getattr(refusal, 'code', '')} {refusal}")
            return None

    @staticmethod
    def pick(items: list[T], index: int) -> T:
        return items[index % len(items)]

    def contracts(self) -> list[Contract]:
        return list(Contract.objects.order_by("pk"))

    def lessons(self) -> list[Lesson]:
        return list(Lesson.objects.order_by("pk"))

    def signed(self, body: bytes) -> dict[str, str]:
        return sign_bank_callback(BANK_KEY, BANK_KEY_ID, body, clock.now())

    def unchanged(self, action: Callable[[], object], what: str) -> None:
        before = snapshot()
        action()
        assert snapshot() == before, f"{what} changed something"

    # --- contracts and payments -----------------------------------------------------------------------------

    @rule(
        course=st.integers(0, 2),
        student=st.integers(0, 2),
        # Mostly within the caps (16 h keeps a 300-yuan non-subject course under 5,000 yuan), sometimes over.
        paid_hours=st.one_of(st.integers(1, 16), st.integers(1, 16), st.integers(17, 72)),
        gift_hours=st.sampled_from((0, 0, 0, 2, 10)),
        discount=st.sampled_from((100, 100, 95, 90)),
        start_in=st.one_of(st.integers(0, 30), st.integers(0, 30), st.integers(31, 45)),
        length=st.one_of(st.integers(10, 85), st.integers(10, 85), st.integers(86, 120)),
        pay_now=st.sampled_from((True, True, True, False)),
    )
    def sign(
        self,
        course: int,
        student: int,
        paid_hours: int,
        gift_hours: int,
        discount: int,
        start_in: int,
        length: int,
        pay_now: bool,
    ) -> None:
        chosen = self.courses[course]
        starts_on = max(chosen.starts_on, local_date(clock.now()) + timedelta(days=start_in))
        before = Contract.objects.count()
        contract = self.attempt(
            lambda: sign_contract(
                course=chosen,
                student=self.students[student],
                paid_hours=paid_hours,
                gift_hours=gift_hours,
                amount=from_minor(chosen.price_per_hour_fen * paid_hours * discount // 100, "CNY"),
                service_starts_on=starts_on,
                service_ends_on=starts_on + timedelta(days=length),
            )
        )
        assert Contract.objects.count() == before + (contract is not None)
        if contract is not None and pay_now:
            institution = Institution.objects.get(pk=contract.institution_id)
            paid = self.pay_contract(contract)
            assert (paid is not None) == (institution.state == InstitutionState.ACTIVE)

    @rule(pick=picks, awaiting=st.booleans(), wrong_amount=st.booleans())
    def pay(self, pick: int, awaiting: bool, wrong_amount: bool) -> None:
        waiting = list(Contract.objects.filter(state=ContractState.AWAITING_PAYMENT).order_by("pk"))
        contract = self.pick(waiting if awaiting and waiting else self.contracts(), pick)
        institution = Institution.objects.get(pk=contract.institution_id)
        acceptable = (
            contract.state == ContractState.AWAITING_PAYMENT
            and institution.state == InstitutionState.ACTIVE
            and not wrong_amount
        )
        entries = Entry.objects.count()
        payment = self.pay_contract(contract, amount_fen=contract.amount_fen + (100 if wrong_amount else 0))
        assert (payment is not None) == acceptable
        if payment is None:
            assert Entry.objects.count() == entries
            return
        contract.refresh_from_db()
        assert contract.state == ContractState.ACTIVE
        assert payment.settlement_entry_id is not None  # the bank's notice settles into custody at once

    @precondition(lambda self: bool(self.callbacks))
    @rule(pick=picks, resign=st.booleans())
    def replay_callback(self, pick: int, resign: bool) -> None:
        headers, body = self.pick(self.callbacks, pick)
        if resign:
            headers = self.signed(body)  # the bank resends: new nonce and timestamp, same payment
        self.unchanged(
            lambda: self.attempt(
                lambda: receive_callback(channel="bank", headers=headers, body=body, source_ip="10.0.0.1")
            ),
            "a replayed callback",
        )

    # --- lessons --------------------------------------------------------------------------------------------

    @precondition(lambda self: Contract.objects.filter(state=ContractState.ACTIVE).exists())
    @rule(pick=picks, hours=st.integers(1, 6), hours_ago=st.integers(1, 48))
    def record_lesson(self, pick: int, hours: int, hours_ago: int) -> None:
        contract = self.pick(list(Contract.objects.filter(state=ContractState.ACTIVE).order_by("pk")), pick)
        new = lessons.NewLesson(
            contract=contract,
            held_at=clock.now() - timedelta(hours=hours_ago),
            hours=hours,
            idempotency_key=self.next_key("L"),
        )
        recorded = self.attempt(lambda: lessons.record_lessons(lessons=[new]))
        if recorded:
            self.lesson_requests.append(new)
            assert recorded[0].state == LessonState.PENDING

    @precondition(lambda self: Contract.objects.filter(state=ContractState.ACTIVE).exists())
    @rule(hours=st.integers(1, 3))
    def record_lessons_for_all(self, hours: int) -> None:
        """The institutions record a lesson for every active contract at once (the bulk path); a batch with
        one refused lesson records nothing, so each institution's batch goes separately."""
        by_institution: dict[int, list[lessons.NewLesson]] = defaultdict(list)
        for contract in Contract.objects.filter(state=ContractState.ACTIVE).order_by("pk"):
            by_institution[contract.institution_id].append(
                lessons.NewLesson(
                    contract=contract,
                    held_at=clock.now() - timedelta(hours=1),
                    hours=min(hours, max(contract.remaining_hours, 1)),
                    idempotency_key=self.next_key("L"),
                )
            )
        for batch in by_institution.values():
            recorded = self.attempt(lambda batch=batch: lessons.record_lessons(lessons=batch))  # type: ignore[misc]
            if recorded:
                self.lesson_requests.extend(batch)

    @precondition(lambda self: bool(self.lesson_requests))
    @rule(pick=picks)
    def replay_lesson(self, pick: int) -> None:
        new = self.pick(self.lesson_requests, pick)
        self.unchanged(lambda: lessons.record_lessons(lessons=[new]), "a replayed lesson")

    @precondition(lambda self: Lesson.objects.exists())
    @rule(pick=picks)
    def confirm(self, pick: int) -> None:
        lesson = self.pick(self.lessons(), pick)
        legal = lesson.state in (LessonState.PENDING, LessonState.DISPUTED)
        done = self.attempt(lambda: lessons.confirm_lesson(lesson=lesson))
        assert (done is not None) == legal

    @precondition(lambda self: Lesson.objects.exists())
    @rule(pick=picks)
    def dispute(self, pick: int) -> None:
        lesson = self.pick(self.lessons(), pick)
        legal = lesson.state == LessonState.PENDING
        done = self.attempt(lambda: lessons.dispute_lesson(lesson=lesson, reason="孩子当天缺课 absent"))
        assert (done is not None) == legal

    @precondition(lambda self: Lesson.objects.filter(state=LessonState.DISPUTED).exists())
    @rule(
        pick=picks,
        release=st.booleans(),
        by=st.sampled_from((ConfirmedBy.INSTITUTION, ConfirmedBy.REGULATOR)),
    )
    def resolve(self, pick: int, release: bool, by: str) -> None:
        lesson = self.pick(list(Lesson.objects.filter(state=LessonState.DISPUTED).order_by("pk")), pick)
        done = self.attempt(
            lambda: lessons.resolve_dispute(lesson=lesson, release=release, note="核实", by=by)
        )
        assert done is not None
        assert done.state == (LessonState.CONFIRMED if release else LessonState.VOIDED)

    # --- time and jobs --------------------------------------------------------------------------------------

    @rule(days=st.integers(0, 25), hours=st.integers(0, 23))
    def advance_time(self, days: int, hours: int) -> None:
        clock.advance(timedelta(days=days, hours=hours))
        lessons.auto_confirm_due_lessons()
        refunds.approve_unanswered_refunds()
        lapse_unpaid_contracts()
        for order in Contract.objects.filter(state=ContractState.AWAITING_PAYMENT).select_related("policy"):
            assert unpaid_lapses_at(order) > clock.now(), f"{order.number} outlived its payment window"
        assert not Lesson.objects.filter(
            state=LessonState.PENDING,
            confirm_deadline__lte=clock.now(),
            institution__state=InstitutionState.ACTIVE,
        ).exists()
        assert not Refund.objects.filter(state=RefundState.CLAIMED, answer_due__lte=clock.now()).exists()

    def run_jobs(self) -> None:
        lessons.auto_confirm_due_lessons()
        lapse_unpaid_contracts()
        refunds.approve_unanswered_refunds()
        refunds.instruct_refund_payouts()
        payouts.run_release_payouts()
        reserve.check_reserves()
        for closure in Closure.objects.exclude(state=ClosureState.COMPLETED).filter(
            refunds_start_at__lte=clock.now()
        ):
            self.run_closure_checked(closure)

    @rule()
    def run_jobs_twice(self) -> None:
        self.run_jobs()
        self.unchanged(self.run_jobs, "running every job a second time")

    @precondition(lambda self: Contract.objects.exists())
    @rule(pick=picks)
    def cancel_order(self, pick: int) -> None:
        contract = self.pick(self.contracts(), pick)
        awaiting = contract.state == ContractState.AWAITING_PAYMENT
        entries = Entry.objects.count()
        cancelled = self.attempt(lambda: cancel_unpaid_contract(contract=contract))
        assert (cancelled is not None) == awaiting, "only an order awaiting payment can be cancelled"
        assert Entry.objects.count() == entries, "cancelling an order moved money"

    # --- refunds --------------------------------------------------------------------------------------------

    @precondition(lambda self: Contract.objects.exists())
    @rule(pick=picks)
    def claim_refund(self, pick: int) -> None:
        contract = self.pick(self.contracts(), pick)
        key = self.next_key("R")
        refund = self.attempt(
            lambda: refunds.claim_refund(contract=contract, note="搬家", idempotency_key=key)
        )
        if refund is not None:
            self.claims.append((contract.pk, key))
            assert refund.state == RefundState.CLAIMED

    @precondition(lambda self: bool(self.claims))
    @rule(pick=picks)
    def replay_claim(self, pick: int) -> None:
        contract_id, key = self.pick(self.claims, pick)
        contract = Contract.objects.get(pk=contract_id)
        self.unchanged(
            lambda: refunds.claim_refund(contract=contract, note="搬家", idempotency_key=key),
            "a replayed claim",
        )

    @precondition(lambda self: Refund.objects.exists())
    @rule(pick=picks, approve=st.booleans())
    def answer_refund(self, pick: int, approve: bool) -> None:
        refund = self.pick(list(Refund.objects.order_by("pk")), pick)
        legal = refund.state == RefundState.CLAIMED
        done = self.attempt(
            lambda: refunds.answer_refund(refund=refund, approve=approve, reason="已协商继续上课")
        )
        assert (done is not None) == legal

    @rule()
    def instruct_refunds(self) -> None:
        refunds.instruct_refund_payouts()

    # --- payouts --------------------------------------------------------------------------------------------

    @rule()
    def release_payouts(self) -> None:
        payouts.run_release_payouts()

    @precondition(lambda self: PayoutInstruction.objects.exists())
    @rule(pick=picks, executed=st.booleans())
    def bank_answers(self, pick: int, executed: bool) -> None:
        payout = self.pick(list(PayoutInstruction.objects.order_by("pk")), pick)
        target = PayoutState.EXECUTED if executed else PayoutState.FAILED
        legal = payout.state in (PayoutState.INSTRUCTED, target)
        done = self.attempt(
            lambda: payouts.record_payout_result(
                reference=payout.reference, executed=executed, bank_reference="B1", reason="账户冻结 frozen"
            )
        )
        assert (done is not None) == legal
        if done is not None:
            self.answers.append((payout.reference, executed))

    @precondition(lambda self: bool(self.answers))
    @rule(pick=picks)
    def replay_bank_answer(self, pick: int) -> None:
        reference, executed = self.pick(self.answers, pick)
        self.unchanged(
            lambda: payouts.record_payout_result(
                reference=reference, executed=executed, bank_reference="B1", reason="账户冻结 frozen"
            ),
            "a repeated bank answer",
        )

    # --- the regulator --------------------------------------------------------------------------------------

    @rule(which=st.integers(0, 2), freeze=st.booleans())
    def freeze_or_unfreeze(self, which: int, freeze: bool) -> None:
        institution = Institution.objects.get(pk=self.institution_ids[which])
        service = institutions.freeze_institution if freeze else institutions.unfreeze_institution
        legal = institution.state == (InstitutionState.ACTIVE if freeze else InstitutionState.FROZEN)
        done = self.attempt(lambda: service(institution=institution, reason="风险预警 risk alert"))
        assert (done is not None) == legal

    @precondition(lambda self: Lesson.objects.count() >= 3)  # once there is something to close
    @rule(which=st.integers(0, 2), abnormal=st.booleans())
    def close(self, which: int, abnormal: bool) -> None:
        institution = Institution.objects.get(pk=self.institution_ids[which])
        closure = self.attempt(
            lambda: closures.order_closure(
                institution=institution, mode="abnormal" if abnormal else "planned", reason="停办 closure"
            )
        )
        if closure is not None and closure.refunds_start_at <= clock.now():
            self.run_closure_checked(closure)

    def run_closure_checked(self, closure: Closure) -> None:
        """Run a due closure twice; invariant 10 for every contract the run took."""
        waiting = set(
            Refund.objects.filter(
                contract__institution_id=closure.institution_id,
                reason=RefundReason.PARENT_CLAIM,
                state__in=(RefundState.APPROVED, RefundState.INSTRUCTED),
            ).values_list("contract_id", flat=True)
        )
        # What each active contract has left in prepaid:c (its open lessons are voided back into it).
        left = {
            pk: credits - debits
            for pk, credits, debits in Contract.objects.filter(
                institution_id=closure.institution_id, state=ContractState.ACTIVE
            ).values_list("pk", "prepaid_account__credits_posted", "prepaid_account__debits_posted")
            if pk not in waiting
        }
        closures.run_closure(closure=closure, batch_size=2)
        self.unchanged(lambda: closures.run_closure(closure=closure, batch_size=2), "a second closure run")
        for contract in Contract.objects.filter(pk__in=left).select_related("prepaid_account"):
            account = contract.prepaid_account
            assert account is not None
            assert account.credits_posted == account.debits_posted and account.debits_pending == 0, contract
            found = list(
                Refund.objects.filter(contract=contract, reason=RefundReason.CLOSURE).values_list(
                    "amount_fen", flat=True
                )
            )
            assert found == ([left[contract.pk]] if left[contract.pk] > 0 else []), (contract, found)
            assert contract.state == (
                ContractState.REFUNDED if left[contract.pk] > 0 else ContractState.COMPLETED
            )
            assert not Lesson.objects.filter(
                contract=contract, state__in=(LessonState.PENDING, LessonState.DISPUTED)
            ).exists()

    # --- DESIGN.md section 6 --------------------------------------------------------------------------------

    @invariant()
    def books_hold(self) -> None:
        if connection.vendor == "postgresql":
            # Fire the deferred checks (the zero-sum trigger, foreign keys) now, as a commit would.
            with connection.cursor() as cursor:
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
                cursor.execute("SET CONSTRAINTS ALL DEFERRED")
        report = verification.Report()
        verification.check_entries_balance(report)  # 1
        verification.check_materialized_totals(report)  # 2
        verification.check_limits(report)  # 5
        verification.check_pending_transfers(report)
        assert report.ok, report.findings

    @invariant()
    def custody_invariant_holds(self) -> None:  # 3
        for institution in Institution.objects.all():
            invariant_ = custody_invariant(institution)
            assert invariant_.in_clearing_fen == 0, invariant_
            assert invariant_.holds, invariant_

    @invariant()
    def contracts_add_up(self) -> None:  # 4
        by_kind: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT c.id, e.kind, SUM(p.amount) FROM custody_contract c "
                "JOIN ledger_posting p ON p.account_id = c.prepaid_account_id "
                "JOIN ledger_entry e ON e.id = p.entry_id GROUP BY c.id, e.kind"
            )
            for contract_id, kind, total in cursor.fetchall():
                by_kind[contract_id][kind] = int(total)
        paid = dict(Payment.objects.values_list("contract_id").annotate(s=Sum("amount_fen")))
        released = dict(
            Lesson.objects.filter(state=LessonState.CONFIRMED)
            .values_list("contract_id")
            .annotate(s=Sum("amount_fen"))
        )
        refunded = dict(
            Refund.objects.filter(state__in=APPROVED_STATES)
            .values_list("contract_id")
            .annotate(s=Sum("amount_fen"))
        )
        held = dict(
            Lesson.objects.filter(state__in=(LessonState.PENDING, LessonState.DISPUTED))
            .values_list("contract_id")
            .annotate(s=Sum("amount_fen"))
        )
        for contract in Contract.objects.select_related("prepaid_account"):
            account = contract.prepaid_account
            assert account is not None
            kinds = by_kind.get(contract.pk, {})
            assert set(kinds) <= {"payment", "lesson", "refund"}, kinds
            ledger_paid = -kinds.get("payment", 0)
            ledger_released = kinds.get("lesson", 0)
            ledger_refunded = kinds.get("refund", 0)
            still_prepaid = account.credits_posted - account.debits_posted - account.debits_pending
            assert ledger_paid == (paid.get(contract.pk) or 0)
            assert ledger_released == (released.get(contract.pk) or 0)
            assert ledger_refunded == (refunded.get(contract.pk) or 0)
            assert account.debits_pending == (held.get(contract.pk) or 0)
            assert ledger_paid == ledger_released + ledger_refunded + account.debits_pending + still_prepaid
            assert still_prepaid >= 0

    @invariant()
    def nothing_below_zero(self) -> None:  # 5
        for code, dr, cr in Account.objects.values_list("code", "debits_posted", "credits_posted"):
            if code.startswith(LIABILITY_PREFIXES):
                assert cr - dr >= 0, code
            elif code.startswith(ASSET_PREFIXES):
                assert dr - cr >= 0, code

    @invariant()
    def hours_within_bought(self) -> None:  # 6
        lesson_hours: dict[tuple[int, str], tuple[int, int]] = {
            (cid, state): (hours or 0, paid or 0)
            for cid, state, hours, paid in Lesson.objects.values_list("contract_id", "state")
            .annotate(h=Sum("hours"), p=Sum("paid_hours"))
            .values_list("contract_id", "state", "h", "p")
        }
        refunded_hours = dict(
            Refund.objects.filter(state__in=APPROVED_STATES)
            .values_list("contract_id")
            .annotate(h=Sum("paid_hours"))
        )
        for contract in Contract.objects.all():
            confirmed = lesson_hours.get((contract.pk, LessonState.CONFIRMED), (0, 0))
            pending = [
                lesson_hours.get((contract.pk, state), (0, 0))
                for state in (LessonState.PENDING, LessonState.DISPUTED)
            ]
            assert contract.hours_consumed == confirmed[0], contract
            assert contract.hours_pending == sum(h for h, _ in pending), contract
            assert contract.paid_hours_refunded == (refunded_hours.get(contract.pk) or 0), contract
            assert confirmed[1] + contract.paid_hours_refunded <= contract.paid_hours, contract
            taken = contract.hours_consumed + contract.hours_pending + contract.paid_hours_refunded
            assert taken <= contract.paid_hours + contract.gift_hours, contract

    @invariant()
    def caps_hold(self) -> None:  # 7
        open_hours: dict[tuple[int, int, str], int] = defaultdict(int)
        for contract in Contract.objects.filter(
            state__in=(ContractState.AWAITING_PAYMENT, ContractState.ACTIVE)
        ).select_related("policy", "course"):
            policy = contract.policy
            open_hours[(contract.student_id, contract.institution_id, contract.subject)] += (
                contract.remaining_hours
            )
            assert contract.paid_hours + contract.gift_hours <= policy.max_paid_hours, contract
            assert contract.service_ends_on <= latest_service_end(
                contract.service_starts_on, policy.max_service_months
            ), contract
            if contract.course.category == TrainingCategory.NON_SUBJECT:
                assert contract.amount_fen <= policy.non_subject_max_charge_fen, contract
        assert all(hours <= 60 for hours in open_hours.values()), open_hours

    @invariant()
    def completed_closures_leave_nothing_open(self) -> None:  # 10
        for closure in Closure.objects.filter(state=ClosureState.COMPLETED):
            contracts = Contract.objects.filter(institution_id=closure.institution_id)
            assert not contracts.filter(
                state__in=(ContractState.AWAITING_PAYMENT, ContractState.ACTIVE)
            ).exists()
            for contract in contracts.select_related("prepaid_account"):
                account = contract.prepaid_account
                assert account is not None
                assert account.credits_posted - account.debits_posted == 0, contract
                assert Refund.objects.filter(contract=contract, reason=RefundReason.CLOSURE).count() <= 1


def test_the_domain_keeps_its_invariants_under_random_programs(settings: Any) -> None:
    public = base64.b64encode(BANK_KEY.public_key().public_bytes_raw()).decode()
    settings.CUSTODY_CHANNELS = {"bank": {"keys": {BANK_KEY_ID: public}}}
    run_state_machine_as_test(
        DomainMachine,
        settings=settings_for_machine(),
    )


def settings_for_machine() -> Any:
    return settings(
        max_examples=MAX_EXAMPLES,
        stateful_step_count=STEP_COUNT,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.filter_too_much,
        ],
    )


def test_approving_an_instructed_refund_again_is_refused(settings: Any) -> None:
    """Found by the state machine: an instructed refund (here a closure refund with its payout at the bank)
    must not be answered again."""
    public = base64.b64encode(BANK_KEY.public_key().public_bytes_raw()).decode()
    settings.CUSTODY_CHANNELS = {"bank": {"keys": {BANK_KEY_ID: public}}}
    machine = DomainMachine()
    try:
        machine.record_lessons_for_all(2)
        machine.close(0, True)
        refund = Refund.objects.get(reason=RefundReason.CLOSURE)
        assert refund.state == RefundState.INSTRUCTED and refund.amount_fen == 160_000
        answered = machine.attempt(lambda: refunds.answer_refund(refund=refund, approve=True))
        refund.refresh_from_db()
        assert answered is None
        assert (refund.state, refund.amount_fen) == (RefundState.INSTRUCTED, 160_000)
    finally:
        machine.teardown()


def test_the_machine_reaches_every_state(settings: Any) -> None:
    """The random programs are not vacuous: one fixed program through the machine's own rules reaches paid
    contracts, every lesson state, approved and paid refunds, executed payouts and a completed closure."""
    public = base64.b64encode(BANK_KEY.public_key().public_bytes_raw()).decode()
    settings.CUSTODY_CHANNELS = {"bank": {"keys": {BANK_KEY_ID: public}}}
    machine = DomainMachine()
    try:
        steps: list[Callable[[], None]] = [
            lambda: machine.sign(0, 0, 20, 0, 100, 0, 50, False),
            lambda: machine.sign(1, 1, 10, 2, 95, 0, 50, False),
            lambda: machine.sign(2, 2, 12, 0, 100, 0, 50, False),
            lambda: machine.pay(0, True, True),  # the wrong amount: refused
            lambda: machine.pay(0, True, False),
            lambda: machine.pay(0, True, False),
            lambda: machine.pay(0, True, False),
            lambda: machine.pay(0, False, False),  # already paid: refused
            lambda: machine.replay_callback(0, True),
            lambda: machine.advance_time(8, 0),
            *[lambda n=n: machine.record_lesson(n, 2, 1) for n in range(6)],
            lambda: machine.confirm(0),
            lambda: machine.dispute(1),
            lambda: machine.dispute(4),
            lambda: machine.resolve(0, False, ConfirmedBy.REGULATOR),
            lambda: machine.claim_refund(2),
            lambda: machine.answer_refund(0, True),
            lambda: machine.advance_time(25, 0),
            lambda: machine.run_jobs_twice(),
            lambda: machine.bank_answers(0, True),
            lambda: machine.bank_answers(1, True),
            lambda: machine.bank_answers(2, True),
            lambda: machine.replay_bank_answer(0),
            lambda: machine.record_lesson(0, 2, 1),
            lambda: machine.close(0, True),
        ]
        for step in steps:
            step()
            for check in (
                machine.books_hold,
                machine.custody_invariant_holds,
                machine.contracts_add_up,
                machine.nothing_below_zero,
                machine.hours_within_bought,
                machine.caps_hold,
                machine.completed_closures_leave_nothing_open,
            ):
                check()
        lesson_states = set(Lesson.objects.values_list("state", flat=True))
        assert lesson_states >= {LessonState.CONFIRMED, LessonState.VOIDED}
        assert Lesson.objects.filter(confirmed_by=ConfirmedBy.SILENCE).exists()
        assert Payment.objects.count() == 6
        assert Refund.objects.filter(reason=RefundReason.PARENT_CLAIM, state=RefundState.PAID).exists()
        assert PayoutInstruction.objects.filter(state=PayoutState.EXECUTED).exists()
        assert Closure.objects.get().state == ClosureState.COMPLETED
        assert Refund.objects.filter(reason=RefundReason.CLOSURE).exists()
    finally:
        machine.teardown()

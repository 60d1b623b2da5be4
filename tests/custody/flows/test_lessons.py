"""Flows 2 and 3, lessons: recorded as holds on prepaid:c, posted by the parent's confirmation or by silence
after N working days, stopped by a dispute until it is resolved."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from django.db import IntegrityError, transaction
from django.db.models import Q

from custody.errors import IllegalTransition, RuleViolation
from custody.models import ConfirmedBy, Contract, ContractState, Lesson, LessonState
from custody.selectors.lessons import (
    awaiting_confirmation,
    disputed_lessons,
    due_for_auto_confirmation,
    lessons_of,
    paid_hours_taken,
    unconfirmed_count,
)
from custody.services._bulk import add_contract_hours
from custody.services.institutions import freeze_institution, unfreeze_institution
from custody.services.lessons import (
    NewLesson,
    _auto_confirm_batch,
    auto_confirm_due_lessons,
    confirm_lesson,
    dispute_lesson,
    record_lessons,
    resolve_dispute,
)
from custody.services.policy import publish_policy
from custody.services.refunds import answer_refund, claim_refund
from ledger import clock
from ledger.models import PendingTransfer
from ledger.money import cny
from tests.custody.conftest import ContractFactory
from tests.custody.flows.conftest import SHANGHAI, available, ledger_rows, payable, pending, posted, prepaid

pytestmark = pytest.mark.django_db


def lesson(contract: Contract, key: str, *, hours: int = 1, held_at: datetime | None = None) -> NewLesson:
    return NewLesson(contract=contract, held_at=held_at or clock.now(), hours=hours, idempotency_key=key)


def lesson_hold(held: Lesson) -> Q:
    """The lookup of a lesson's hold (a paid lesson always has one)."""
    assert held.pending_transfer_id is not None
    return Q(pk=held.pending_transfer_id)


@pytest.fixture
def three_hour_contract(make_contract: ContractFactory, pay: Callable[[Contract], Contract]) -> Contract:
    """100.00 yuan for 3 paid hours: the exact schedule releases 33.33, 33.33, 33.34."""
    return pay(make_contract(paid_hours=3, amount=cny("100.00")))


def test_lessons_hold_the_exact_schedule_and_confirmation_releases_it(three_hour_contract: Contract) -> None:
    contract = three_hour_contract
    institution = contract.institution

    lessons = record_lessons(lessons=[lesson(contract, f"L{n}") for n in (1, 2, 3)])

    assert [x.amount_fen for x in lessons] == [3333, 3333, 3334]
    assert [x.paid_hours for x in lessons] == [1, 1, 1]
    assert all(x.state == LessonState.PENDING for x in lessons)
    assert posted(prepaid(contract)) == 10_000  # held, not yet moved
    assert available(prepaid(contract)) == 0
    assert pending(prepaid(contract)) == (10_000, 0)
    assert pending(payable(institution)) == (0, 10_000)
    assert PendingTransfer.objects.get(lesson_hold(lessons[0])).idempotency_key == (
        f"lesson:{lessons[0].pk}:hold"
    )
    assert Contract.objects.get(pk=contract.pk).hours_pending == 3

    confirm_lesson(lesson=lessons[0])
    assert posted(prepaid(contract)) == 6_667
    assert posted(payable(institution)) == 3_333
    stored = Contract.objects.get(pk=contract.pk)
    assert (stored.hours_pending, stored.hours_consumed, stored.state) == (2, 1, ContractState.ACTIVE)

    confirm_lesson(lesson=lessons[1])
    confirm_lesson(lesson=lessons[2])
    assert posted(prepaid(contract)) == 0
    assert posted(payable(institution)) == 10_000
    stored = Contract.objects.get(pk=contract.pk)
    assert (stored.hours_consumed, stored.state) == (3, ContractState.COMPLETED)
    assert Lesson.objects.get(pk=lessons[2].pk).confirmed_by == ConfirmedBy.PARENT


def test_paid_hours_are_consumed_before_gift_hours(make_contract: ContractFactory, pay: Callable) -> None:
    contract = pay(make_contract(paid_hours=2, gift_hours=1, amount=cny("160.00")))

    first, second = record_lessons(lessons=[lesson(contract, "G1", hours=2), lesson(contract, "G2")])

    assert (first.paid_hours, first.amount_fen) == (2, 16_000)
    assert (second.paid_hours, second.amount_fen, second.pending_transfer_id) == (0, 0, None)
    confirm_lesson(lesson=second)  # a gift hour releases nothing
    assert posted(payable(contract.institution)) == 0
    confirm_lesson(lesson=first)
    assert posted(payable(contract.institution)) == 16_000
    assert Contract.objects.get(pk=contract.pk).state == ContractState.COMPLETED


def test_a_lesson_beyond_the_remaining_hours_is_refused_and_the_batch_writes_nothing(
    three_hour_contract: Contract,
) -> None:
    record_lessons(lessons=[lesson(three_hour_contract, "B1", hours=2)])
    rows = ledger_rows()

    with pytest.raises(RuleViolation) as info:
        record_lessons(lessons=[lesson(three_hour_contract, "B2"), lesson(three_hour_contract, "B3")])

    assert info.value.rule == "lesson_beyond_paid_hours"
    assert (info.value.details["remaining"], info.value.details["requested"]) == (0, 1)
    assert ledger_rows() == rows
    assert Lesson.objects.count() == 1
    assert Contract.objects.get(pk=three_hour_contract.pk).hours_pending == 2


def test_recording_again_with_the_same_key_returns_the_first_lesson(three_hour_contract: Contract) -> None:
    held = clock.now() - timedelta(hours=2)
    (first,) = record_lessons(lessons=[lesson(three_hour_contract, "K1", held_at=held)])
    rows = ledger_rows()

    (again,) = record_lessons(lessons=[lesson(three_hour_contract, "K1", held_at=held)])

    assert again.pk == first.pk
    assert ledger_rows() == rows
    with pytest.raises(RuleViolation) as info:
        record_lessons(lessons=[lesson(three_hour_contract, "K1", hours=2, held_at=held)])
    assert info.value.rule == "idempotency_key_reused"


def test_lessons_are_refused_for_inactive_institutions_refunding_contracts_and_the_future(
    make_contract: ContractFactory, make_student: Callable, pay: Callable
) -> None:
    contract = pay(make_contract())
    with pytest.raises(RuleViolation) as info:
        record_lessons(lessons=[lesson(contract, "F1", held_at=clock.now() + timedelta(minutes=1))])
    assert info.value.rule == "lesson_in_future"

    claim_refund(contract=contract, idempotency_key="R1")
    with pytest.raises(RuleViolation) as info:
        record_lessons(lessons=[lesson(contract, "F2")])
    assert info.value.rule == "contract_under_refund"

    other = pay(make_contract(student=make_student()))
    freeze_institution(institution=other.institution, reason="监管调查 investigation")
    with pytest.raises(RuleViolation) as info:
        record_lessons(lessons=[lesson(other, "F3")])
    assert info.value.rule == "institution_not_active"
    assert Lesson.objects.count() == 0


def test_silence_confirms_at_the_deadline_in_working_days_and_not_before(paid_contract: Contract) -> None:
    recorded = datetime(2024, 3, 25, 10, 0, tzinfo=SHANGHAI)
    clock.advance(recorded - clock.now())
    (held,) = record_lessons(lessons=[lesson(paid_contract, "S1")])
    # 15 working days: Qingming (4–6 April) is off and Sunday 7 April is a swapped working day (调休).
    deadline = datetime(2024, 4, 16, 10, 0, tzinfo=SHANGHAI)
    assert held.confirm_deadline == deadline

    assert auto_confirm_due_lessons(now=deadline - timedelta(seconds=1)) == 0
    assert Lesson.objects.get(pk=held.pk).state == LessonState.PENDING
    assert posted(payable(paid_contract.institution)) == 0

    clock.advance(deadline - clock.now())
    assert auto_confirm_due_lessons() == 1
    confirmed = Lesson.objects.get(pk=held.pk)
    assert (confirmed.state, confirmed.confirmed_by, confirmed.confirmed_at) == (
        "confirmed",
        "silence",
        deadline,
    )
    assert posted(payable(paid_contract.institution)) == 8_000
    assert posted(prepaid(paid_contract)) == 152_000
    stored = Contract.objects.get(pk=paid_contract.pk)
    assert (stored.hours_pending, stored.hours_consumed) == (0, 1)
    assert auto_confirm_due_lessons() == 0  # a second run finds nothing


def test_the_deadline_follows_the_policy_version_the_contract_was_signed_under(
    paid_contract: Contract, make_contract: ContractFactory, make_student: Callable, pay: Callable
) -> None:
    publish_policy(
        jurisdiction=paid_contract.institution.jurisdiction,
        changes={"lesson_auto_confirm_working_days": 7},
        changed_by=None,
        note="7个工作日 seven working days",
    )
    newer = pay(make_contract(student=make_student()))

    old_rule, new_rule = record_lessons(lessons=[lesson(paid_contract, "V1"), lesson(newer, "V2")])

    assert old_rule.confirm_deadline == datetime(2024, 3, 25, 10, 0, tzinfo=SHANGHAI)  # 15 working days
    assert new_rule.confirm_deadline == datetime(2024, 3, 13, 10, 0, tzinfo=SHANGHAI)  # 7 working days


def test_a_dispute_stops_the_clock_until_it_is_resolved(paid_contract: Contract) -> None:
    released, upheld = record_lessons(lessons=[lesson(paid_contract, "D1"), lesson(paid_contract, "D2")])
    dispute_lesson(lesson=released, reason="孩子请假未上课 my child was absent")
    dispute_lesson(lesson=upheld, reason="老师未到 no teacher")

    assert auto_confirm_due_lessons(now=clock.now() + timedelta(days=90)) == 0
    assert Lesson.objects.filter(state=LessonState.DISPUTED).count() == 2
    assert posted(payable(paid_contract.institution)) == 0

    resolve_dispute(
        lesson=released, release=True, note="考勤记录显示已上课 attendance shows it was held", by="regulator"
    )
    assert posted(payable(paid_contract.institution)) == 8_000
    assert Lesson.objects.get(pk=released.pk).confirmed_by == ConfirmedBy.REGULATOR

    resolve_dispute(lesson=upheld, release=False, note="机构认可 institution agrees", by="institution")
    voided = Lesson.objects.get(pk=upheld.pk)
    assert voided.state == LessonState.VOIDED
    assert PendingTransfer.objects.get(lesson_hold(voided)).state == "voided"
    assert available(prepaid(paid_contract)) == 152_000  # the voided hour's value is back
    stored = Contract.objects.get(pk=paid_contract.pk)
    assert (stored.hours_pending, stored.hours_consumed, stored.remaining_hours) == (0, 1, 19)
    with pytest.raises(IllegalTransition):
        resolve_dispute(lesson=voided, release=True, note="again", by="regulator")


def test_after_a_voided_lesson_the_releases_still_add_up_to_the_amount(three_hour_contract: Contract) -> None:
    first, second = record_lessons(
        lessons=[lesson(three_hour_contract, "A1"), lesson(three_hour_contract, "A2")]
    )
    dispute_lesson(lesson=first, reason="未上课 not held")
    resolve_dispute(lesson=first, release=False, note="认可 agreed", by="institution")

    third, fourth = record_lessons(
        lessons=[lesson(three_hour_contract, "A3"), lesson(three_hour_contract, "A4")]
    )

    assert [second.amount_fen, third.amount_fen, fourth.amount_fen] == [3333, 3333, 3334]
    for held in (second, third, fourth):
        confirm_lesson(lesson=held)
    assert posted(payable(three_hour_contract.institution)) == 10_000
    assert posted(prepaid(three_hour_contract)) == 0
    assert Contract.objects.get(pk=three_hour_contract.pk).state == ContractState.COMPLETED


def test_confirming_twice_is_an_illegal_transition_and_posts_nothing(paid_contract: Contract) -> None:
    (held,) = record_lessons(lessons=[lesson(paid_contract, "T1")])
    confirm_lesson(lesson=held)
    rows = ledger_rows()
    with pytest.raises(IllegalTransition):
        confirm_lesson(lesson=held)
    with pytest.raises(IllegalTransition):
        dispute_lesson(lesson=held, reason="太晚了 too late")
    assert ledger_rows() == rows


def test_a_frozen_institutions_lessons_wait_for_auto_confirmation(paid_contract: Contract) -> None:
    (held,) = record_lessons(lessons=[lesson(paid_contract, "W1")])
    freeze_institution(institution=paid_contract.institution, reason="监管调查 investigation")
    later = clock.now() + timedelta(days=60)
    assert auto_confirm_due_lessons(now=later) == 0
    unfreeze_institution(institution=paid_contract.institution, reason="调查结束 cleared")
    assert auto_confirm_due_lessons(now=later) == 1
    assert Lesson.objects.get(pk=held.pk).state == LessonState.CONFIRMED


def test_auto_confirmation_works_in_batches(
    make_contract: ContractFactory, make_student: Callable, pay: Callable
) -> None:
    contracts = [pay(make_contract(student=make_student())) for _ in range(3)]
    record_lessons(lessons=[lesson(c, f"M{c.pk}-{n}") for c in contracts for n in range(4)])

    assert auto_confirm_due_lessons(now=clock.now() + timedelta(days=60), limit=5) == 12

    for contract in contracts:
        stored = Contract.objects.get(pk=contract.pk)
        assert (stored.hours_pending, stored.hours_consumed) == (0, 4)
        assert posted(prepaid(contract)) == 160_000 - 4 * 8_000
    assert posted(payable(contracts[0].institution)) == 3 * 4 * 8_000


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_auto_confirmation_runs_shares_of_institutions_side_by_side(
    make_institution: Callable,
    make_course: Callable,
    make_contract: ContractFactory,
    make_student: Callable,
    pay: Callable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On PostgreSQL, outside a transaction, two shares of the institutions (id modulo 2) run at once, each on
    its own connection: every due lesson is confirmed once, the disputed one is left alone, each contract's
    hours and accounts end as in a serial run, and a second run finds nothing."""
    institutions = [make_institution() for _ in range(4)]
    contracts = [
        pay(make_contract(course=make_course(institution=institution), student=make_student()))
        for institution in institutions
        for _ in range(2)
    ]
    recorded = record_lessons(lessons=[lesson(c, f"P{c.pk}-{n}") for c in contracts for n in range(3)])
    dispute_lesson(lesson=recorded[0], reason="没上课")
    batches: list[tuple[tuple[int, int] | None, int, int]] = []
    batch = _auto_confirm_batch

    def spy(moment: datetime, limit: int, share: tuple[int, int] | None = None) -> tuple[int, int]:
        selected, confirmed = batch(moment, limit, share)
        from django.db import connection

        batches.append((share, connection.connection.info.backend_pid, confirmed))
        return selected, confirmed

    monkeypatch.setattr("custody.services.lessons._auto_confirm_batch", spy)
    later = clock.now() + timedelta(days=60)

    assert auto_confirm_due_lessons(now=later, limit=2, workers=2) == 23

    assert {share for share, _, _ in batches} == {(0, 2), (1, 2)}
    assert len({pid for _, pid, _ in batches}) == 2  # one connection per share
    for index in (0, 1):
        assert sum(n for share, _, n in batches if share == (index, 2)) == sum(
            3 for c in contracts if c.institution_id % 2 == index
        ) - (1 if recorded[0].institution_id % 2 == index else 0)
    assert Lesson.objects.get(pk=recorded[0].pk).state == LessonState.DISPUTED
    assert Lesson.objects.filter(state=LessonState.CONFIRMED, confirmed_by=ConfirmedBy.SILENCE).count() == 23
    for contract in contracts:
        stored = Contract.objects.get(pk=contract.pk)
        confirmed = 2 if contract.pk == recorded[0].contract_id else 3
        assert (stored.hours_pending, stored.hours_consumed) == (3 - confirmed, confirmed)
        assert posted(prepaid(contract)) == 160_000 - confirmed * 8_000
    for institution in institutions:
        expected = sum(
            2 if c.pk == recorded[0].contract_id else 3
            for c in contracts
            if c.institution_id == institution.pk
        )
        assert posted(payable(institution)) == expected * 8_000
    assert auto_confirm_due_lessons(now=later, workers=2) == 0


def test_an_auto_confirmation_batch_takes_a_contracts_lessons_together(
    make_contract: ContractFactory, make_student: Callable, pay: Callable
) -> None:
    # Recorded round by round, so lesson ids interleave the contracts; a batch still takes whole contracts
    # (each ledger call then touches only its own contracts' accounts).
    contracts = sorted((pay(make_contract(student=make_student())) for _ in range(3)), key=lambda c: c.pk)
    record_lessons(lessons=[lesson(c, f"R{c.pk}-{n}") for n in range(4) for c in contracts])

    assert _auto_confirm_batch(clock.now() + timedelta(days=60), 4) == (4, 4)

    confirmed = Lesson.objects.filter(state=LessonState.CONFIRMED)
    assert sorted(confirmed.values_list("contract_id", flat=True)) == [contracts[0].pk] * 4
    assert Lesson.objects.filter(state=LessonState.PENDING).count() == 8
    assert posted(prepaid(contracts[0])) == 160_000 - 4 * 8_000
    assert posted(prepaid(contracts[1])) == 160_000


def test_the_lesson_selectors_show_what_awaits_the_parent_and_the_institution(
    paid_contract: Contract,
) -> None:
    first, second, third = record_lessons(lessons=[lesson(paid_contract, f"Q{n}") for n in range(3)])
    dispute_lesson(lesson=second, reason="未上课 not held")
    confirm_lesson(lesson=third)

    assert [x.pk for x in awaiting_confirmation(paid_contract)] == [first.pk]
    assert [x.pk for x in disputed_lessons(paid_contract.institution)] == [second.pk]
    assert unconfirmed_count(paid_contract.institution) == {"pending": 1, "disputed": 1}
    assert list(due_for_auto_confirmation()) == []
    assert [x.pk for x in due_for_auto_confirmation(now=first.confirm_deadline)] == [first.pk]
    assert paid_hours_taken([paid_contract.pk]) == {paid_contract.pk: 3}
    assert [x.pk for x in lessons_of(paid_contract)] == [first.pk, second.pk, third.pk]


def test_auto_confirmation_ends_each_contract_it_finishes_and_no_other(
    three_hour_contract: Contract, make_contract: ContractFactory, make_student: Callable, pay: Callable
) -> None:
    finished = three_hour_contract
    refunding = pay(make_contract(student=make_student()))
    going_on = pay(make_contract(student=make_student()))
    record_lessons(
        lessons=[lesson(finished, f"E{n}") for n in range(3)]
        + [lesson(refunding, "E3"), lesson(going_on, "E4")]
    )
    answer_refund(refund=claim_refund(contract=refunding, idempotency_key="E-refund"), approve=True)
    assert Contract.objects.get(pk=refunding.pk).state == ContractState.ACTIVE  # its lesson is still held

    moment = clock.now() + timedelta(days=60)
    assert auto_confirm_due_lessons(now=moment) == 5

    def ends() -> dict[int, tuple[str, datetime | None]]:
        return {
            c.pk: (c.state, c.ended_at)
            for c in Contract.objects.filter(pk__in=[finished.pk, refunding.pk, going_on.pk])
        }

    assert ends() == {
        finished.pk: (ContractState.COMPLETED, moment),
        refunding.pk: (ContractState.REFUNDED, moment),
        going_on.pk: (ContractState.ACTIVE, None),
    }
    assert posted(prepaid(finished)) == posted(prepaid(refunding)) == 0
    # A contract that has ended is not ended again.
    add_contract_hours(
        {finished.pk: (0, 0, 0), refunding.pk: (0, 0, 0)}, finish_at=moment + timedelta(days=1)
    )
    assert ends()[finished.pk] == (ContractState.COMPLETED, moment)
    assert ends()[refunding.pk] == (ContractState.REFUNDED, moment)


def test_the_database_refuses_a_second_lesson_with_the_same_key(paid_contract: Contract) -> None:
    (held,) = record_lessons(lessons=[lesson(paid_contract, "U1")])
    copy = Lesson.objects.get(pk=held.pk)
    copy.pk, copy.pending_transfer, copy.amount_fen = None, None, 0
    with pytest.raises(IntegrityError, match="idempotency_key"), transaction.atomic():
        copy.save()

"""Lessons (一课一消): recorded by the institution, confirmed or disputed by the parent, confirmed by silence.

A recorded lesson holds its value in the ledger (a pending transfer Dr ``prepaid:c`` / Cr ``payable:i``); the
parent's confirmation, or silence for N working days, posts the hold; a dispute stops the clock until the
institution or the regulator resolves it (release posts; upholding the dispute voids the hold and gives the
hours back).

The lesson state machine, the only one in this module::

    pending → confirmed (parent, silence) | disputed (parent) | voided (closure)
    disputed → confirmed (parent withdraws, or resolved for release) | voided (dispute upheld, closure)

Amounts. Paid hours are consumed before gift hours (赠课, no cash value). A lesson taking paid hours ``p+1 ..
p+n`` of a contract that has already taken ``T`` fen holds ``release_for_paid_hours(1, p+n) − T``: with no
voided lessons that is exactly the schedule of ``Contract.release_for_paid_hours`` (100.00 yuan for 3 hours
releases 33.33, 33.33, 33.34), and after a voided lesson it still makes the contract's releases add up to its
amount to the fen.

Ledger keys, all derived from the lesson's id: ``lesson:{pk}:hold``, ``lesson:{pk}:release``,
``lesson:{pk}:void``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db.models import F, Q

from custody.errors import IllegalTransition, RuleViolation
from custody.models import (
    Closure,
    ConfirmedBy,
    Contract,
    ContractState,
    Institution,
    InstitutionState,
    Lesson,
    LessonState,
    Refund,
    RefundState,
)
from custody.selectors.lessons import paid_hours_taken
from custody.services import calendar
from custody.services._bulk import (
    SQLITE_CHUNK,
    add_contract_hours,
    chunked,
    is_postgres,
    lock_rows,
    reserve_ids,
    transition_rows,
)
from ledger import clock
from ledger.backends import mark_saved
from ledger.models import Account
from ledger.money import from_minor
from ledger.services import NewPending, Resolution, create_pending_batch, resolve_pending_batch

LESSON_TRANSITIONS: Mapping[str, frozenset[str]] = {
    LessonState.PENDING: frozenset({LessonState.CONFIRMED, LessonState.DISPUTED, LessonState.VOIDED}),
    LessonState.DISPUTED: frozenset({LessonState.CONFIRMED, LessonState.VOIDED}),
    LessonState.CONFIRMED: frozenset(),
    LessonState.VOIDED: frozenset(),
}

# Refund states after which a contract takes no more lessons (a rejected claim does not stop the service).
_REFUND_STOPS_LESSONS = (RefundState.CLAIMED, RefundState.APPROVED, RefundState.INSTRUCTED, RefundState.PAID)
MAX_LESSON_HOURS = 12
# Holds posted per ledger call inside one auto-confirmation transaction: the ledger's set-based statement
# is fastest around 10,000 rows (measured: 20,000 posts took 13.5 s in one call, 10.3 s in two; with the holds
# in contract order, 100,000 lessons took 13.2 s in calls of 5,000 or 10,000 and 14.2 s in calls of 50,000).
LEDGER_CHUNK = 10_000


def hold_key(lesson_id: int) -> str:
    return f"lesson:{lesson_id}:hold"


def release_key(lesson_id: int) -> str:
    return f"lesson:{lesson_id}:release"


def void_key(lesson_id: int) -> str:
    return f"lesson:{lesson_id}:void"


def check_lesson_transition(lesson: Lesson, target: str) -> None:
    if target not in LESSON_TRANSITIONS[lesson.state]:
        raise IllegalTransition("lesson", lesson.state, target)


@dataclass(frozen=True, kw_only=True)
class NewLesson:
    """One lesson the institution delivered. ``idempotency_key`` is the institution's own id for it (a retry
    with the same key returns the lesson recorded the first time)."""

    contract: Contract
    held_at: datetime
    hours: int = 1
    idempotency_key: str


@dataclass
class _ContractTally:
    """Running counters of one locked contract while a batch of lessons is split and priced."""

    contract: Contract  # its counters and price only, read as values (no related rows)
    prepaid: Account
    payable: Account
    confirm_days: int  # lesson_auto_confirm_working_days of the policy the contract was signed under
    remaining_hours: int
    paid_taken: int
    value_taken: int


def record_lessons(*, lessons: Sequence[NewLesson], recorded_by: User | None = None) -> list[Lesson]:
    """Record delivered lessons in bulk: one ledger call for all holds, one insert for all rows.

    Refuses the whole batch (nothing is written) if any lesson breaks a rule: beyond the contract's remaining
    hours (``lesson_beyond_paid_hours``), a contract not active or under refund, an institution that may not
    record lessons, a lesson in the future. Lessons whose key was recorded before are returned as they are.
    """
    if not lessons:
        return []
    now = clock.now()
    _validate_shapes(lessons, now=now)
    keys = list(dict.fromkeys(new.idempotency_key for new in lessons))
    with transaction.atomic():
        lock_rows("custody_contract", {new.contract.pk for new in lessons})
        existing = _existing_lessons(keys)
        for new in lessons:
            _check_replay(new, existing.get(new.idempotency_key))
        fresh: dict[str, NewLesson] = {}
        for new in lessons:
            if new.idempotency_key not in existing:
                fresh.setdefault(new.idempotency_key, new)
        if fresh:
            existing.update(_insert(list(fresh.values()), recorded_by=recorded_by, now=now))
    return [existing[new.idempotency_key] for new in lessons]


def _validate_shapes(lessons: Sequence[NewLesson], *, now: datetime) -> None:
    seen: dict[str, NewLesson] = {}
    for new in lessons:
        if not new.idempotency_key or len(new.idempotency_key) > 200:
            raise RuleViolation(
                "idempotency_key_required",
                "课时记录须有1至200字符的幂等键 a lesson needs an idempotency key of 1 to 200 characters",
                field="idempotency_key",
            )
        if not 1 <= new.hours <= MAX_LESSON_HOURS:
            raise RuleViolation(
                "lesson_hours",
                f"每次课时数须在1至{MAX_LESSON_HOURS}之间 a lesson lasts 1 to {MAX_LESSON_HOURS} class hours",
                field="hours",
                limit=MAX_LESSON_HOURS,
                requested=new.hours,
            )
        if new.held_at.tzinfo is None:
            raise ValueError("held_at must be timezone-aware")
        if new.held_at > now:
            raise RuleViolation(
                "lesson_in_future",
                "不能登记尚未上的课 a lesson cannot be recorded before it is held",
                field="held_at",
                held_at=new.held_at.isoformat(),
            )
        first = seen.setdefault(new.idempotency_key, new)
        if _content(first) != _content(new):
            raise _key_reused(new.idempotency_key)


def _content(new: NewLesson) -> tuple[int, datetime, int]:
    return (new.contract.pk, new.held_at, new.hours)


def _key_reused(key: str) -> RuleViolation:
    return RuleViolation(
        "idempotency_key_reused",
        f"幂等键 {key} 已用于另一节课 idempotency key {key} was used for another lesson",
        field="idempotency_key",
    )


def _existing_lessons(keys: Sequence[str]) -> dict[str, Lesson]:
    """Lessons already recorded under these keys. A batch is usually all new: on PostgreSQL one ``= ANY``
    probe of the unique key index finds which keys exist (an ``IN`` list of 5,000 parameters costs more to
    build than to run), and only those lessons are loaded."""
    if is_postgres():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT idempotency_key FROM custody_lesson WHERE idempotency_key = ANY(%s)", [list(keys)]
            )
            keys = [row[0] for row in cursor.fetchall()]
        if not keys:
            return {}
    found: dict[str, Lesson] = {}
    for chunk in chunked(keys, 10_000 if is_postgres() else SQLITE_CHUNK):
        found.update(
            (lesson.idempotency_key, lesson) for lesson in Lesson.objects.filter(idempotency_key__in=chunk)
        )
    return found


def _check_replay(new: NewLesson, lesson: Lesson | None) -> None:
    if lesson is not None and (lesson.contract_id, lesson.held_at, lesson.hours) != _content(new):
        raise _key_reused(new.idempotency_key)


def _insert(lessons: list[NewLesson], *, recorded_by: User | None, now: datetime) -> dict[str, Lesson]:
    contract_ids = sorted({new.contract.pk for new in lessons})
    tallies = _tallies(contract_ids, now=now)
    # Split each lesson into paid and gift hours and price it, in the order given.
    priced: list[tuple[NewLesson, _ContractTally, int, int]] = []
    for new in lessons:
        tally = tallies[new.contract.pk]
        if new.hours > tally.remaining_hours:
            raise RuleViolation(
                "lesson_beyond_paid_hours",
                f"合同{tally.contract.number}剩余{tally.remaining_hours}课时，不能登记{new.hours}课时 "
                f"contract {tally.contract.number} has {tally.remaining_hours} hours left; "
                f"{new.hours} cannot be recorded",
                field="hours",
                contract=tally.contract.number,
                remaining=tally.remaining_hours,
                requested=new.hours,
            )
        contract = tally.contract
        paid = min(new.hours, contract.paid_hours - tally.paid_taken)
        amount = 0
        if paid > 0:
            schedule = contract.release_for_paid_hours(1, tally.paid_taken + paid)
            amount = max(0, min(schedule - tally.value_taken, contract.amount_fen - tally.value_taken))
        tally.remaining_hours -= new.hours
        tally.paid_taken += paid
        tally.value_taken += amount
        priced.append((new, tally, paid, amount))

    ids = reserve_ids(Lesson, len(priced))
    deadlines: dict[int, datetime] = {}
    holds = create_pending_batch(
        transfers=[
            NewPending(
                idempotency_key=hold_key(lesson_id),
                kind="lesson",
                debit_account=tally.prepaid,
                credit_account=tally.payable,
                amount=from_minor(amount, "CNY"),
                metadata={"lesson": lesson_id, "contract": tally.contract.pk},
            )
            for lesson_id, (_, tally, _, amount) in zip(ids, priced, strict=True)
            if amount > 0
        ]
    )
    hold_ids = iter(hold.pk for hold in holds)
    rows: list[Lesson] = []
    pending_hours: dict[int, int] = defaultdict(int)
    for lesson_id, (new, tally, paid, amount) in zip(ids, priced, strict=True):
        days = tally.confirm_days
        if days not in deadlines:
            deadlines[days] = calendar.add_working_days(now, days)
        rows.append(
            Lesson(
                id=lesson_id,
                contract_id=tally.contract.pk,
                institution_id=tally.contract.institution_id,
                idempotency_key=new.idempotency_key,
                held_at=new.held_at,
                hours=new.hours,
                paid_hours=paid,
                amount_fen=amount,
                state=LessonState.PENDING,
                pending_transfer_id=next(hold_ids) if amount > 0 else None,
                recorded_at=now,
                recorded_by=recorded_by,
                confirm_deadline=deadlines[days],
            )
        )
        pending_hours[tally.contract.pk] += new.hours
    _insert_lessons(rows, recorded_by=recorded_by, now=now)
    add_contract_hours({cid: (hours, 0, 0) for cid, hours in pending_hours.items()})
    return {row.idempotency_key: row for row in rows}


def _insert_lessons(rows: Sequence[Lesson], *, recorded_by: User | None, now: datetime) -> None:
    """Insert new pending lessons: one ``INSERT … SELECT unnest(…)`` on PostgreSQL (a fraction of the cost of
    ``bulk_create``'s VALUES list at 10,000 rows), ``bulk_create`` elsewhere. The column list is the
    Lesson model's; a new non-null column without a database default makes this fail loudly, not silently."""
    if not is_postgres():
        Lesson.objects.bulk_create(rows, batch_size=5000)
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO custody_lesson (id, contract_id, institution_id, idempotency_key, held_at, hours, "
            "paid_hours, amount_fen, pending_transfer_id, confirm_deadline, state, recorded_at, "
            "recorded_by_id, confirmed_by, dispute_reason, resolution_note) "
            "SELECT u.*, 'pending', %s, %s, '', '', '' FROM unnest(%s::bigint[], %s::bigint[], "
            "%s::bigint[], %s::text[], %s::timestamptz[], %s::int[], %s::int[], %s::bigint[], %s::bigint[], "
            "%s::timestamptz[]) "
            "AS u(id, contract_id, institution_id, idempotency_key, held_at, hours, paid_hours, amount_fen, "
            "pending_transfer_id, confirm_deadline)",
            [
                now,
                recorded_by.pk if recorded_by is not None else None,
                [r.id for r in rows],
                [r.contract_id for r in rows],
                [r.institution_id for r in rows],
                [r.idempotency_key for r in rows],
                [r.held_at for r in rows],
                [r.hours for r in rows],
                [r.paid_hours for r in rows],
                [r.amount_fen for r in rows],
                [r.pending_transfer_id for r in rows],
                [r.confirm_deadline for r in rows],
            ],
        )
    mark_saved(rows)


def _account(account: Account | None) -> Account:
    if account is None:
        raise RuntimeError(
            "the contract or institution has no ledger account; it was not opened by its service"
        )
    return account


_TALLY_FIELDS = (
    "pk",
    "number",
    "state",
    "institution_id",
    "paid_hours",
    "gift_hours",
    "amount_fen",
    "hours_consumed",
    "hours_pending",
    "paid_hours_refunded",
    "prepaid_account_id",
    "policy__lesson_auto_confirm_working_days",
)


def _tallies(contract_ids: Sequence[int], *, now: datetime) -> dict[int, _ContractTally]:
    """The locked contracts with what they have left, after checking that each may take lessons.

    Read as values, not as model graphs: a batch of 10,000 lessons touches 10,000 contracts but only a few
    institutions, so each institution (and its payable account) is read once."""
    rows: list[tuple] = []
    stopped: set[int] = set()
    for chunk in chunked(contract_ids, 10_000 if is_postgres() else SQLITE_CHUNK):
        rows.extend(Contract.objects.filter(pk__in=chunk).values_list(*_TALLY_FIELDS))
        stopped.update(
            Refund.objects.filter(contract_id__in=chunk, state__in=_REFUND_STOPS_LESSONS).values_list(
                "contract_id", flat=True
            )
        )
    institutions = Institution.objects.select_related("payable_account").in_bulk({row[3] for row in rows})
    refunds_start = dict(
        Closure.objects.filter(institution_id__in=institutions).values_list(
            "institution_id", "refunds_start_at"
        )
    )
    prepaid = Account.objects.in_bulk([row[10] for row in rows])
    taken = paid_hours_taken(contract_ids)
    tallies: dict[int, _ContractTally] = {}
    for (
        pk,
        number,
        state,
        institution_id,
        paid,
        gift,
        amount,
        consumed,
        pending,
        refunded,
        prepaid_id,
        days,
    ) in rows:
        contract = Contract(
            id=pk,
            number=number,
            state=state,
            institution_id=institution_id,
            paid_hours=paid,
            gift_hours=gift,
            amount_fen=amount,
            hours_consumed=consumed,
            hours_pending=pending,
            paid_hours_refunded=refunded,
        )
        institution = institutions[institution_id]
        _check_may_take_lessons(
            contract,
            institution,
            refunds_start_at=refunds_start.get(institution_id),
            refund_open=pk in stopped,
            now=now,
        )
        account = prepaid[_account_id(prepaid_id)]
        tallies[pk] = _ContractTally(
            contract=contract,
            prepaid=account,
            payable=_account(institution.payable_account),
            confirm_days=days,
            remaining_hours=contract.remaining_hours,
            paid_taken=taken[pk],
            value_taken=account.debits_posted + account.debits_pending,
        )
    return tallies


def _account_id(account_id: int | None) -> int:
    if account_id is None:
        raise RuntimeError("the contract has no prepaid account; it was not opened by sign_contract")
    return account_id


def _check_may_take_lessons(
    contract: Contract,
    institution: Institution,
    *,
    refunds_start_at: datetime | None,
    refund_open: bool,
    now: datetime,
) -> None:
    if institution.state == InstitutionState.CLOSING:
        # A planned closure keeps teaching through its notice period, until refunds start.
        if refunds_start_at is None or refunds_start_at <= now:
            raise RuleViolation(
                "institution_not_active",
                f"机构{institution.name}停办退费中，不能登记课时 {institution.name} is closing; "
                "no lessons can be recorded",
                institution=institution.pk,
                state=institution.state,
            )
    elif institution.state != InstitutionState.ACTIVE:
        raise RuleViolation(
            "institution_not_active",
            f"机构{institution.name}状态为{institution.state}，不能登记课时 "
            f"{institution.name} is {institution.state}; no lessons can be recorded",
            institution=institution.pk,
            state=institution.state,
        )
    if contract.state != ContractState.ACTIVE:
        raise RuleViolation(
            "contract_not_active",
            f"合同{contract.number}状态为{contract.state}，不能登记课时 "
            f"contract {contract.number} is {contract.state}; no lessons can be recorded",
            contract=contract.number,
            state=contract.state,
        )
    if refund_open:
        raise RuleViolation(
            "contract_under_refund",
            f"合同{contract.number}已申请退费，不能再登记课时 "
            f"contract {contract.number} has a refund claim; no more lessons can be recorded",
            contract=contract.number,
        )


# --- confirmation and disputes ----------------------------------------------------------------------------


def confirm_lesson(*, lesson: Lesson) -> Lesson:
    """The parent confirms (家长确认): the hold is posted and the hours count as consumed. A parent may also
    confirm a lesson they disputed (withdrawing the dispute)."""
    return _release(lesson=lesson, by=ConfirmedBy.PARENT, note="")


def dispute_lesson(*, lesson: Lesson, reason: str) -> Lesson:
    """The parent disputes (异议): the lesson stays held, and no longer confirms itself by silence."""
    if not reason.strip():
        raise RuleViolation("dispute_needs_reason", "异议须说明理由 a dispute needs a reason", field="reason")
    with transaction.atomic():
        locked = _lock_lesson(lesson)
        check_lesson_transition(locked, LessonState.DISPUTED)
        locked.state = LessonState.DISPUTED
        locked.disputed_at = clock.now()
        locked.dispute_reason = reason.strip()[:500]
        locked.save(update_fields=["state", "disputed_at", "dispute_reason"])
    return locked


def resolve_dispute(*, lesson: Lesson, release: bool, note: str, by: str) -> Lesson:
    """The institution or the regulator resolves a dispute: ``release`` posts the hold (the lesson counts),
    otherwise the dispute is upheld, the hold is voided and the hours go back to the contract."""
    if by not in (ConfirmedBy.INSTITUTION, ConfirmedBy.REGULATOR):
        raise ValueError(f"a dispute is resolved by the institution or the regulator, not {by!r}")
    if not note.strip():
        raise RuleViolation(
            "resolution_needs_note", "处理异议须说明理由 a resolution needs a note", field="note"
        )
    if release:
        return _release(lesson=lesson, by=by, note=note, disputed_only=True)
    return _void(lesson=lesson, note=note, disputed_only=True)


def _void(*, lesson: Lesson, note: str, disputed_only: bool) -> Lesson:
    """Void an unconfirmed lesson: the hold is released and its hours return to the contract."""
    with transaction.atomic():
        locked = _lock_lesson(lesson)
        if disputed_only and locked.state != LessonState.DISPUTED:
            raise IllegalTransition("lesson", locked.state, "resolved")
        check_lesson_transition(locked, LessonState.VOIDED)
        now = clock.now()
        if locked.pending_transfer_id is not None:
            resolve_pending_batch(
                resolutions=[Resolution(locked.pending_transfer_id, "void", void_key(locked.pk))]
            )
        locked.state = LessonState.VOIDED
        locked.resolved_at = now
        locked.resolution_note = note.strip()[:500]
        locked.save(update_fields=["state", "resolved_at", "resolution_note"])
        add_contract_hours({locked.contract_id: (-locked.hours, 0, 0)}, finish_at=now)
    return locked


def _release(*, lesson: Lesson, by: str, note: str, disputed_only: bool = False) -> Lesson:
    with transaction.atomic():
        locked = _lock_lesson(lesson)
        if disputed_only and locked.state != LessonState.DISPUTED:
            raise IllegalTransition("lesson", locked.state, "resolved")
        check_lesson_transition(locked, LessonState.CONFIRMED)
        now = clock.now()
        if locked.pending_transfer_id is not None:
            resolve_pending_batch(
                resolutions=[Resolution(locked.pending_transfer_id, "post", release_key(locked.pk))]
            )
        fields = ["state", "confirmed_at", "confirmed_by"]
        if locked.state == LessonState.DISPUTED:
            locked.resolved_at = now
            locked.resolution_note = note.strip()[:500]
            fields += ["resolved_at", "resolution_note"]
        locked.state = LessonState.CONFIRMED
        locked.confirmed_at = now
        locked.confirmed_by = by
        locked.save(update_fields=fields)
        add_contract_hours({locked.contract_id: (-locked.hours, locked.hours, 0)}, finish_at=now)
    return locked


def _lock_lesson(lesson: Lesson) -> Lesson:
    """Lock the lesson's contract, then the lesson (the flows' lock order), and return it fresh."""
    lock_rows("custody_contract", [lesson.contract_id])
    return Lesson.objects.select_for_update().get(pk=lesson.pk)


# --- confirmation by silence ------------------------------------------------------------------------------


def auto_confirm_due_lessons(
    *, now: datetime | None = None, limit: int = 50_000, workers: int | None = None
) -> int:
    """Confirm every pending lesson whose deadline has passed (逾期默认确认). Returns how many.

    Set-based: per transaction of at most ``limit`` lessons, one ledger call posts all their holds and a few
    statements update the lessons and their contracts. Disputed lessons are never touched. Safe to re-run and
    to run beside parents confirming: whatever another transaction confirmed first is skipped.

    On PostgreSQL, outside a caller's transaction, ``workers`` (``CUSTODY_AUTO_CONFIRM_WORKERS``) transactions
    run at a time, each on its own connection over its own share of the institutions (``institution_id``
    modulo ``workers``). A lesson hold moves money only between its contract's ``prepaid:c`` and its
    institution's ``payable:i``, so the shares lock disjoint rows (contracts, lessons, holds, accounts) and
    neither waits for the other; each transaction is the same as in a serial run.
    """
    moment = now or clock.now()
    shares = settings.CUSTODY_AUTO_CONFIRM_WORKERS if workers is None else workers
    if shares <= 1 or not is_postgres() or connection.in_atomic_block:
        return _auto_confirm_share(moment, limit, None)
    with ThreadPoolExecutor(max_workers=shares) as pool:
        runs = [pool.submit(_auto_confirm_apart, moment, limit, (k, shares)) for k in range(shares)]
        return sum(run.result() for run in runs)


def _auto_confirm_apart(moment: datetime, limit: int, share: tuple[int, int]) -> int:
    """One share in this thread's own connection, closed at the end."""
    try:
        return _auto_confirm_share(moment, limit, share)
    finally:
        connection.close()


def _auto_confirm_share(moment: datetime, limit: int, share: tuple[int, int] | None) -> int:
    total = 0
    while True:
        selected, confirmed = _auto_confirm_batch(moment, limit, share)
        total += confirmed
        if selected < limit:
            return total


def _auto_confirm_batch(
    moment: datetime, limit: int, share: tuple[int, int] | None = None
) -> tuple[int, int]:
    with transaction.atomic():
        # A frozen institution's lessons wait: the regulator has stopped its releases (they confirm once it
        # is unfrozen). A closing one's confirm through the notice period; once refunds start, the closure
        # voids them.
        lessons = Lesson.objects.filter(state=LessonState.PENDING, confirm_deadline__lte=moment)
        if share is not None:
            index, shares = share
            lessons = lessons.alias(share=F("institution_id") % shares).filter(share=index)
        due = list(
            lessons.filter(
                Q(institution__state=InstitutionState.ACTIVE)
                | Q(
                    institution__state=InstitutionState.CLOSING,
                    institution__closure__refunds_start_at__gt=moment,
                )
            )
            # A contract's lessons together: a transaction then finishes its contracts and touches each of
            # their rows (and prepaid accounts) once, instead of every contract with a due lesson.
            .order_by("contract_id", "pk")
            .values_list("pk", "contract_id")[:limit]
        )
        if not due:
            return 0, 0
        lock_rows("custody_contract", {contract_id for _, contract_id in due})
        # Under the contracts' locks nobody else changes these lessons: confirm the ones still pending,
        # reading them as they change, then post their holds.
        rows = transition_rows(
            "custody_lesson",
            [pk for pk, _ in due],
            from_states=[LessonState.PENDING],
            to_state=LessonState.CONFIRMED,
            extra={"confirmed_at": moment, "confirmed_by": ConfirmedBy.SILENCE.value},
            returning="id, contract_id, hours, pending_transfer_id",
        )
        # In contract order, so that each ledger call touches its own contracts' prepaid accounts: in lesson
        # order every call would update every account of the batch again, and an account row updated many
        # times in one transaction costs more each time (its versions pile up until the transaction ends).
        resolutions = [
            Resolution(transfer_id, "post", release_key(pk))
            for pk, _, _, transfer_id in sorted(rows, key=lambda row: (row[1], row[0]))
            if transfer_id is not None
        ]
        for start in range(0, len(resolutions), LEDGER_CHUNK):
            resolve_pending_batch(resolutions=resolutions[start : start + LEDGER_CHUNK])
        hours: dict[int, int] = defaultdict(int)
        for _, contract_id, lesson_hours, _ in rows:
            hours[contract_id] += lesson_hours
        add_contract_hours({cid: (-h, h, 0) for cid, h in hours.items()}, finish_at=moment)
        return len(due), len(rows)

"""Closures (终止办学 / 跑路): every contract's unconsumed value goes back to its parents through the bank.

Flow 6 of docs/flows.md:

- ``order_closure`` planned: institution → closing (no new contracts or payments; lessons go on until refunds
  start, ``closure_notice_days`` = 30 later). Abnormal: institution → frozen at once, refunds start now.
- ``run_closure``, per batch of contracts, in one transaction: void every unconfirmed lesson (pending and
  disputed; key ``lesson:{pk}:void``); one approved closure refund per contract with value left,
  Dr ``prepaid:c`` / Cr ``refund_payable:c`` (key ``closure:{closure}:contract:{contract}``); the contract →
  refunded (completed when nothing was left).
- then the refund payouts (refunds.instruct_refund_payouts; from the reserve in risk-reserve mode);
- finally institution → closed and the closure completed.

``run_closure`` is a resumable job: each batch is one transaction that takes its contracts out of the active
set, so a run killed at any point (even SIGKILL) and started again continues where the last committed batch
ended; the unique constraint "one closure refund per contract" and the deterministic ledger keys make a
double refund impossible even if two runs race. Release payouts skip closing, frozen and closed institutions;
refund payouts go on.

A contract whose own refund claim was already approved but not yet paid cannot take a second refund (one
open refund per contract): it waits, and the closure stays running until that payout is done and a later
run (the periodic task) refunds the rest. Claims not yet answered are superseded by the closure refund.

The closure state machine: announced → running → completed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import NamedTuple

from django.contrib.auth.models import User
from django.db import DEFAULT_DB_ALIAS, connection, transaction
from django.db.models import F

from custody.errors import IllegalTransition, RuleViolation
from custody.models import (
    CancelReason,
    Closure,
    ClosureMode,
    ClosureState,
    Contract,
    ContractState,
    Institution,
    InstitutionState,
    LessonState,
    Policy,
    Refund,
    RefundReason,
    RefundState,
    SupervisionMode,
)
from custody.selectors.policy import current_policy
from custody.selectors.refunds import RefundQuote, refund_quotes
from custody.services import calendar
from custody.services._bulk import (
    end_contracts,
    fetch_by_ids,
    lock_rows,
    reserve_ids,
    transition_rows,
)
from custody.services.contracts import cancel_unpaid_orders
from custody.services.institutions import transition_institution
from custody.services.lessons import void_key
from custody.services.refunds import (
    RefundToPay,
    choose_payable_refunds,
    instruct_refund_payouts,
    write_refund_payouts,
)
from ledger import clock
from ledger.backends import execute_bound
from ledger.models import Account
from ledger.money import from_minor
from ledger.services import NewEntry, Resolution, credit, debit, post_batch, resolve_pending_batch

CLOSURE_TRANSITIONS = {
    ClosureState.ANNOUNCED: frozenset({ClosureState.RUNNING}),
    ClosureState.RUNNING: frozenset({ClosureState.COMPLETED}),
    ClosureState.COMPLETED: frozenset(),
}
SUPERSEDED = "机构停办，由停办退费统一办理 superseded by the institution's closure refund"
VOIDED_BY_CLOSURE = "机构停办，未确认课时作废 voided by the institution's closure"


def refund_key(closure_id: int, contract_id: int) -> str:
    return f"closure:{closure_id}:contract:{contract_id}"


def order_closure(
    *, institution: Institution, mode: str, reason: str, ordered_by: User | None = None
) -> Closure:
    """The regulator orders a closure. Planned: the institution is closing and refunds start after the notice
    period (``policy.closure_notice_days``). Abnormal (跑路): frozen at once, refunds start now and the run is
    enqueued after commit. An abnormal order on an announced planned closure escalates it."""
    if not reason.strip():
        raise RuleViolation("reason_required", "须说明理由 a reason is required", field="reason")
    closure_mode = ClosureMode(mode)
    now = clock.now()
    with transaction.atomic():
        locked = Institution.objects.select_for_update().get(pk=institution.pk)
        closure = Closure.objects.filter(institution=locked).first()
        if closure is not None:
            if not (
                closure.state == ClosureState.ANNOUNCED
                and closure.mode == ClosureMode.PLANNED
                and closure_mode == ClosureMode.ABNORMAL
            ):
                raise RuleViolation(
                    "closure_already_ordered",
                    f"机构{locked.name}已有停办程序 a closure of {locked.name} was already ordered",
                    closure=closure.pk,
                    state=closure.state,
                )
            # Escalation: the notice period ends now.
            closure.mode = ClosureMode.ABNORMAL
            closure.refunds_start_at = now
            closure.reason = f"{closure.reason}; {reason.strip()}"[:500]
            closure.save(update_fields=["mode", "refunds_start_at", "reason"])
        else:
            if closure_mode == ClosureMode.PLANNED:
                transition_institution(institution=locked, to_state=InstitutionState.CLOSING, reason=reason)
                starts = now + timedelta(days=current_policy(locked.jurisdiction).closure_notice_days)
            else:
                if locked.state != InstitutionState.FROZEN:
                    transition_institution(
                        institution=locked, to_state=InstitutionState.FROZEN, reason=reason
                    )
                starts = now
            closure = Closure.objects.create(
                institution=locked,
                mode=closure_mode,
                state=ClosureState.ANNOUNCED,
                ordered_by=ordered_by,
                ordered_at=now,
                reason=reason.strip()[:500],
                refunds_start_at=starts,
            )
        if closure.refunds_start_at <= now:
            closure_id = closure.pk
            transaction.on_commit(lambda: _enqueue_run(closure_id))
    institution.state = locked.state
    institution.state_changed_at = locked.state_changed_at
    institution.state_reason = locked.state_reason
    return closure


def _enqueue_run(closure_id: int) -> None:
    from custody.tasks import run_closure_task

    run_closure_task.delay(closure_id)


def run_closure(*, closure: Closure, batch_size: int = 500) -> Closure:
    """Refund every contract of the closing institution, ``batch_size`` contracts per transaction; then
    instruct the refund payouts and close the institution. Resumable and safe to run twice (see module)."""
    now = clock.now()
    current = Closure.objects.get(pk=closure.pk)
    if current.state == ClosureState.COMPLETED:
        return current
    if current.refunds_start_at > now:
        raise RuleViolation(
            "closure_notice_period",
            f"停办公告期至{current.refunds_start_at.isoformat()}，尚不能退费 "
            f"refunds start at {current.refunds_start_at.isoformat()}, after the notice period",
            refunds_start_at=current.refunds_start_at.isoformat(),
        )
    _start(current.pk, now=now)
    institution = Institution.objects.get(pk=current.institution_id)
    after: int | None = 0
    while after is not None:
        after = _refund_batch(current.pk, institution, batch_size=batch_size, after=after, now=clock.now())
    if institution.supervision_mode == SupervisionMode.RISK_RESERVE:
        from custody.services.reserve import pay_closure_refunds_from_reserve

        pay_closure_refunds_from_reserve(closure=current)
    instruct_refund_payouts(institution=institution)
    _finish(current.pk)
    return Closure.objects.get(pk=current.pk)


def _start(closure_id: int, *, now: datetime) -> None:
    with transaction.atomic():
        closure = Closure.objects.select_for_update().get(pk=closure_id)
        if closure.state == ClosureState.ANNOUNCED:
            closure.state = ClosureState.RUNNING
            closure.started_at = now
            closure.contracts_total = Contract.objects.filter(
                institution_id=closure.institution_id, state=ContractState.ACTIVE
            ).count()
            closure.save(update_fields=["state", "started_at", "contracts_total"])
        institution = Institution.objects.get(pk=closure.institution_id)
        if institution.state == InstitutionState.FROZEN:
            transition_institution(
                institution=institution, to_state=InstitutionState.CLOSING, reason=closure.reason
            )
        # Orders never paid will not be: the institution takes no more payments.
        unpaid = list(
            Contract.objects.filter(
                institution_id=closure.institution_id, state=ContractState.AWAITING_PAYMENT
            ).values_list("pk", flat=True)
        )
        lock_rows("custody_contract", unpaid)
        cancel_unpaid_orders(unpaid, reason=CancelReason.CLOSURE, now=now)


def _refund_batch(
    closure_id: int, institution: Institution, *, batch_size: int, after: int, now: datetime
) -> int | None:
    """One transaction: up to ``batch_size`` active contracts (ids above ``after``) leave the active set with
    their refunds. Returns the last contract id it looked at, or None when none is left to take now."""
    with transaction.atomic():
        closure = Closure.objects.select_for_update().get(pk=closure_id)
        if closure.state != ClosureState.RUNNING:
            return None
        # A contract whose own refund is approved but not yet paid waits (one open refund per contract).
        # Those are few: they are read apart, which keeps the batch query a plain index range scan.
        waiting = {
            row[0]
            for row in _rows(
                "SELECT r.contract_id FROM custody_refund r JOIN custody_contract c ON c.id = r.contract_id "
                "WHERE c.institution_id = %s AND c.state = 'active' AND r.reason = 'parent_claim' "
                "AND r.state IN ('approved', 'instructed')",
                [closure.institution_id],
            )
        }
        candidates = [
            pk
            for (pk,) in _rows(
                "SELECT c.id FROM custody_contract c WHERE c.institution_id = %s AND c.state = 'active' "
                "AND c.id > %s ORDER BY c.id LIMIT %s",
                [closure.institution_id, after, batch_size + len(waiting)],
            )
            if pk not in waiting
        ][:batch_size]
        if not candidates:
            return None
        lock_rows("custody_contract", candidates)
        ids = [
            row[0]
            for row in fetch_by_ids(
                "SELECT id FROM custody_contract WHERE id {ids} AND state = 'active' ORDER BY id", candidates
            )
        ]
        Refund.objects.filter(contract_id__in=ids, state=RefundState.CLAIMED).update(
            state=RefundState.REJECTED, answered_at=now, rejection_reason=SUPERSEDED
        )
        voided_hours, voided = _void_unconfirmed_lessons(ids, now=now)
        refunds = _create_refunds(closure, institution, ids, now=now)
        changed = end_contracts(
            {
                cid: (
                    -voided_hours.get(cid, 0),
                    refunds[cid].paid_hours if cid in refunds else 0,
                    # Nothing left to give back (every paid hour was consumed): the contract is done.
                    ContractState.REFUNDED if cid in refunds else ContractState.COMPLETED,
                )
                for cid in ids
            },
            now=now,
        )
        if changed != len(ids):
            raise RuntimeError("a locked contract changed state during the closure")
        Closure.objects.filter(pk=closure.pk).update(
            contracts_done=F("contracts_done") + len(ids),
            lessons_voided=F("lessons_voided") + voided,
            refunded_fen=F("refunded_fen") + sum(q.amount_fen for q in refunds.values()),
        )
        return candidates[-1]


def _rows(sql: str, params: list[int]) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall())


def _void_unconfirmed_lessons(contract_ids: Sequence[int], *, now: datetime) -> tuple[dict[int, int], int]:
    """Void every pending or disputed lesson of the contracts; returns the hours voided per contract and how
    many lessons."""
    candidates = fetch_by_ids(
        "SELECT id FROM custody_lesson WHERE contract_id {ids} AND state IN ('pending', 'disputed') "
        "ORDER BY id",
        contract_ids,
    )
    lessons = transition_rows(
        "custody_lesson",
        [row[0] for row in candidates],
        from_states=[LessonState.PENDING, LessonState.DISPUTED],
        to_state=LessonState.VOIDED,
        extra={"resolved_at": now, "resolution_note": VOIDED_BY_CLOSURE},
        returning="id, contract_id, hours, pending_transfer_id",
    )
    if len(lessons) != len(candidates):
        raise RuntimeError("a lesson of a locked contract changed state during the closure")
    if not lessons:
        return {}, 0
    resolve_pending_batch(
        resolutions=[
            Resolution(transfer_id, "void", void_key(pk))
            for pk, _, _, transfer_id in sorted(lessons)
            if transfer_id
        ]
    )
    hours: dict[int, int] = defaultdict(int)
    for _, contract_id, lesson_hours, _ in lessons:
        hours[contract_id] += lesson_hours
    return hours, len(lessons)


def _create_refunds(
    closure: Closure, institution: Institution, contract_ids: Sequence[int], *, now: datetime
) -> dict[int, RefundQuote]:
    """One approved closure refund for each contract with value left (after its lessons were voided), with
    its payout instruction when the custody account covers it."""
    quotes = refund_quotes(contract_ids, today=calendar.local_date(now))
    with_value = [quotes[cid] for cid in contract_ids if quotes[cid].amount_fen > 0]
    if not with_value:
        return {}
    facts = _refund_facts([q.contract_id for q in with_value])
    deadlines = _payout_deadlines({f.policy_id for f in facts.values()}, now=now)
    refund_ids = reserve_ids(Refund, len(with_value))
    result = post_batch(
        entries=[
            NewEntry(
                idempotency_key=refund_key(closure.pk, q.contract_id),
                kind="refund",
                legs=[
                    debit(facts[q.contract_id].prepaid, from_minor(q.amount_fen, "CNY")),
                    credit(facts[q.contract_id].refund_payable, from_minor(q.amount_fen, "CNY")),
                ],
                metadata={"refund": refund_id, "contract": q.contract_id, "closure": closure.pk},
            )
            for refund_id, q in zip(refund_ids, with_value, strict=True)
        ]
    )
    # In custody mode the payouts are instructed in the same transaction, so the refunds are written in their
    # final state (approved, then instructed at once); risk-reserve refunds are paid from the reserve later.
    chosen: list[RefundToPay] = []
    sources: dict[int, Account] = {}
    if institution.supervision_mode == SupervisionMode.CUSTODY:
        chosen, sources = choose_payable_refunds(
            [
                RefundToPay(
                    refund_id,
                    q.contract_id,
                    institution.pk,
                    q.amount_fen,
                    facts[q.contract_id].payer_account,
                    refund_account=facts[q.contract_id].refund_payable,
                )
                for refund_id, q in zip(refund_ids, with_value, strict=True)
            ]
        )
    instructed = {row.refund_id for row in chosen}
    _insert_refunds(
        [
            _NewRefund(
                refund_id,
                q.contract_id,
                RefundState.INSTRUCTED if refund_id in instructed else RefundState.APPROVED,
                refund_key(closure.pk, q.contract_id),
                q.paid_hours,
                q.amount_fen,
                entry.pk,
                deadlines[(facts[q.contract_id].policy_id, q.before_start)],
            )
            for refund_id, q, entry in zip(refund_ids, with_value, result.entries, strict=True)
        ],
        note=closure.reason[:500],
        now=now,
    )
    write_refund_payouts(chosen, sources, now=now)
    return {q.contract_id: q for q in with_value}


class _RefundFacts(NamedTuple):
    """What a closure refund needs of its contract. The accounts carry what the ledger's calls read of an
    account (id, code, currency), no more: a batch builds a thousand of them."""

    policy_id: int
    payer_account: str
    prepaid: Account
    refund_payable: Account


_ACCOUNT_FIELDS = ("id", "code", "currency")


def _refund_facts(contract_ids: Sequence[int]) -> dict[int, _RefundFacts]:
    payer_field = Contract._meta.get_field("payer_account")
    facts: dict[int, _RefundFacts] = {}
    # Each account through scalar subqueries, an index probe each: a join of a batch's 500 contracts to the
    # account table was planned as hash joins over all of it (4 to 10 times slower at 20,000 accounts).
    for pk, policy_id, payer, *accounts in fetch_by_ids(
        "SELECT c.id, c.policy_id, c.payer_account, c.prepaid_account_id, "
        "(SELECT a.code FROM ledger_account a WHERE a.id = c.prepaid_account_id), "
        "(SELECT a.currency FROM ledger_account a WHERE a.id = c.prepaid_account_id), c.refund_account_id, "
        "(SELECT a.code FROM ledger_account a WHERE a.id = c.refund_account_id), "
        "(SELECT a.currency FROM ledger_account a WHERE a.id = c.refund_account_id) "
        "FROM custody_contract c WHERE c.id {ids}",
        contract_ids,
    ):
        facts[pk] = _RefundFacts(
            policy_id,
            payer_field.from_db_value(payer, None, connection) or "",  # the column is NOT NULL
            Account.from_db(DEFAULT_DB_ALIAS, _ACCOUNT_FIELDS, accounts[:3]),
            Account.from_db(DEFAULT_DB_ALIAS, _ACCOUNT_FIELDS, accounts[3:]),
        )
    return facts


class _NewRefund(NamedTuple):
    id: int
    contract_id: int
    state: str
    idempotency_key: str
    paid_hours: int
    amount_fen: int
    entry_id: int
    payout_due: date


def _insert_refunds(refunds: Sequence[_NewRefund], *, note: str, now: datetime) -> None:
    """Insert a batch's closure refunds, claimed and answered ``now`` with the closure's ``note``: one
    ``INSERT … SELECT unnest(…)`` on PostgreSQL (``bulk_create`` binds every value of every row, several times
    the database's work at 500 rows; and no model instances are built, which cost more than the insert),
    ``bulk_create`` elsewhere. The column list is the model's; a new non-null column without a database
    default makes this fail loudly."""
    if not refunds:
        return
    if connection.vendor != "postgresql":
        Refund.objects.bulk_create(
            [
                Refund(
                    **r._asdict(),
                    reason=RefundReason.CLOSURE,
                    claimed_at=now,
                    claim_note=note,
                    answered_at=now,
                    approved_by="closure",
                )
                for r in refunds
            ],
            batch_size=2000,
        )
        return
    execute_bound(
        "INSERT INTO custody_refund (id, contract_id, reason, state, idempotency_key, claimed_at, "
        "claim_note, answer_due, answered_at, approved_by, rejection_reason, paid_hours, amount_fen, "
        "entry_id, payout_due, paid_at) "
        "SELECT u.id, u.contract_id, %b, u.state, u.key, %b, %b, NULL, %b, %b, '', u.paid_hours, "
        "u.amount_fen, u.entry_id, u.payout_due, NULL "
        "FROM unnest(%b::bigint[], %b::bigint[], %b::text[], %b::text[], %b::int[], %b::bigint[], "
        "%b::bigint[], %b::date[]) "
        "AS u(id, contract_id, state, key, paid_hours, amount_fen, entry_id, payout_due) ORDER BY u.id",
        [
            RefundReason.CLOSURE.value,
            now,
            note,
            now,
            "closure",
            [r.id for r in refunds],
            [r.contract_id for r in refunds],
            [str(r.state) for r in refunds],
            [r.idempotency_key for r in refunds],
            [r.paid_hours for r in refunds],
            [r.amount_fen for r in refunds],
            [r.entry_id for r in refunds],
            [r.payout_due for r in refunds],
        ],
    )


def _payout_deadlines(policy_ids: set[int], *, now: datetime) -> dict[tuple[int, bool], date]:
    deadlines: dict[tuple[int, bool], date] = {}
    by_days: dict[int, date] = {}
    for policy in Policy.objects.filter(pk__in=policy_ids):
        for before_start, days in (
            (True, policy.refund_payout_before_start_working_days),
            (False, policy.refund_payout_after_start_working_days),
        ):
            if days not in by_days:
                by_days[days] = calendar.local_date(calendar.add_working_days(now, days))
            deadlines[(policy.pk, before_start)] = by_days[days]
    return deadlines


def _finish(closure_id: int) -> None:
    with transaction.atomic():
        closure = Closure.objects.select_for_update().get(pk=closure_id)
        if closure.state != ClosureState.RUNNING:
            return
        if Contract.objects.filter(
            institution_id=closure.institution_id, state=ContractState.ACTIVE
        ).exists():
            return  # contracts waiting for their own refund's payout: a later run finishes
        institution = Institution.objects.get(pk=closure.institution_id)
        transition_institution(
            institution=institution, to_state=InstitutionState.CLOSED, reason=closure.reason
        )
        if ClosureState.COMPLETED not in CLOSURE_TRANSITIONS[ClosureState(closure.state)]:
            raise IllegalTransition("closure", closure.state, ClosureState.COMPLETED)
        closure.state = ClosureState.COMPLETED
        closure.finished_at = clock.now()
        closure.save(update_fields=["state", "finished_at"])


def due_closures(*, now: datetime | None = None) -> list[int]:
    """Closures whose refunds have started and are not completed (the periodic task runs each)."""
    return list(
        Closure.objects.filter(
            state__in=(ClosureState.ANNOUNCED, ClosureState.RUNNING), refunds_start_at__lte=now or clock.now()
        )
        .order_by("pk")
        .values_list("pk", flat=True)
    )

"""Refunds (退费): the parent claims, the institution answers within 5 working days (silence approves), the
bank pays back to the account that paid (原路返回) within 5 working days before the course starts, 10 after.

Flow 5 of docs/flows.md:

- approved (institution, silence, closure): Dr ``prepaid:c`` / Cr ``refund_payable:c`` for the quote
  (key ``refund:{pk}:approve``; closure refunds use ``closure:{closure}:contract:{contract}``);
- instructed to the bank: hold Dr ``refund_payable:c`` / Cr ``custody_cash:i`` (``payout:{pk}:hold``);
- paid by the bank (payouts.record_payout_result): post the hold (``payout:{pk}:executed``).

The amount is the contract's value neither released nor held: the ``prepaid:c`` balance available (posted
minus the holds of unconfirmed lessons), i.e. the unconsumed paid hours at the unit price locked at purchase,
to the fen; before the course starts, everything. No interest is added (不含孳息). Unconfirmed lessons stay
pending at approval: the parent may still confirm them, and if one is voided later its value stays in
``prepaid:c`` and the contract stays active until a new claim takes it. A contract becomes ``refunded`` once
its refund is approved and nothing is pending or left; no lesson can be recorded once a refund is claimed.

The refund state machine::

    claimed → approved | rejected            (answer_refund, approve_unanswered_refunds: only from claimed)
    approved → instructed → paid
    instructed → approved   (only the bank's failure answer, payouts.record_payout_result; a new
                             instruction follows)

Answering checks the state itself (``RefundAlreadyAnswered``), not just the transition table: the table allows
instructed → approved for a failed payout, and an institution must not re-answer a refund at the bank.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction

from custody.errors import IllegalTransition, RefundAlreadyAnswered, RuleViolation
from custody.models import (
    Contract,
    ContractState,
    Institution,
    InstitutionState,
    PayoutInstruction,
    PayoutKind,
    PayoutState,
    Refund,
    RefundReason,
    RefundState,
    SupervisionMode,
)
from custody.selectors.refunds import OPEN_STATES, refund_quotes
from custody.services import calendar
from custody.services._bulk import add_contract_hours, is_postgres, lock_rows, reserve_ids, update_states
from custody.services.payouts import hold_key, reference_for
from ledger import clock
from ledger.backends import execute_bound, mark_saved
from ledger.models import Account
from ledger.money import from_minor
from ledger.services import NewPending, create_pending_batch, transfer

REFUND_TRANSITIONS: Mapping[str, frozenset[str]] = {
    RefundState.CLAIMED: frozenset({RefundState.APPROVED, RefundState.REJECTED}),
    RefundState.APPROVED: frozenset({RefundState.INSTRUCTED}),
    RefundState.INSTRUCTED: frozenset({RefundState.PAID, RefundState.APPROVED}),
    RefundState.REJECTED: frozenset(),
    RefundState.PAID: frozenset(),
}


def check_refund_transition(refund: Refund, target: str) -> None:
    if target not in REFUND_TRANSITIONS[refund.state]:
        raise IllegalTransition("refund", refund.state, target)


def approve_key(refund_id: int) -> str:
    return f"refund:{refund_id}:approve"


def claim_refund(*, contract: Contract, note: str = "", idempotency_key: str) -> Refund:
    """The parent claims a refund of what is left on an active contract (paid, started or not)."""
    if not idempotency_key or len(idempotency_key) > 200:
        raise RuleViolation(
            "idempotency_key_required",
            "退费申请须有1至200字符的幂等键 a claim needs an idempotency key of 1 to 200 characters",
            field="idempotency_key",
        )
    now = clock.now()
    with transaction.atomic():
        lock_rows("custody_contract", [contract.pk])
        replay = Refund.objects.filter(idempotency_key=idempotency_key).first()
        if replay is not None:
            if replay.contract_id != contract.pk:
                raise RuleViolation(
                    "idempotency_key_reused",
                    f"幂等键 {idempotency_key} 已用于另一合同 the key was used for another contract",
                    field="idempotency_key",
                )
            return replay
        locked = Contract.objects.select_related("policy", "institution").get(pk=contract.pk)
        if locked.state != ContractState.ACTIVE:
            raise RuleViolation(
                "refund_not_allowed",
                f"合同状态为{ContractState(locked.state).label}，只有履行中的合同可以申请退费 "
                "only an active contract can be refunded",
                contract=locked.number,
                state=locked.state,
            )
        if locked.institution.state not in (InstitutionState.ACTIVE, InstitutionState.FROZEN):
            # A closing institution refunds every contract by itself (closures.py).
            raise RuleViolation(
                "closure_in_progress",
                "机构停办中，退费将由停办程序统一办理 "
                "the institution is closing; its closure refunds every contract",
                contract=locked.number,
            )
        if Refund.objects.filter(contract=locked, state__in=OPEN_STATES).exists():
            raise RuleViolation(
                "refund_already_open",
                "该合同已有进行中的退费 this contract already has a refund in progress",
                contract=locked.number,
            )
        quote = refund_quotes([locked.pk])[locked.pk]
        if quote.amount_fen <= 0:
            raise RuleViolation(
                "nothing_to_refund",
                "该合同没有可退的金额 nothing on this contract is refundable",
                contract=locked.number,
            )
        return Refund.objects.create(
            contract=locked,
            reason=RefundReason.PARENT_CLAIM,
            state=RefundState.CLAIMED,
            idempotency_key=idempotency_key,
            claimed_at=now,
            claim_note=note.strip()[:500],
            answer_due=calendar.add_working_days(now, locked.policy.refund_answer_working_days),
        )


def answer_refund(*, refund: Refund, approve: bool, reason: str = "") -> Refund:
    """The institution's answer (机构答复) to a claimed refund. A rejection must say why; a refund already
    answered (approved, instructed, paid, rejected) raises ``RefundAlreadyAnswered``."""
    if not approve and not reason.strip():
        raise RuleViolation(
            "rejection_needs_reason", "拒绝退费须说明理由 a rejection needs a reason", field="reason"
        )
    now = clock.now()
    with transaction.atomic():
        locked = _lock_refund(refund)
        if locked.state != RefundState.CLAIMED:
            target = RefundState.APPROVED if approve else RefundState.REJECTED
            raise RefundAlreadyAnswered(locked.pk, locked.state, target)
        if approve:
            _approve(locked, approved_by="institution", now=now)
        else:
            check_refund_transition(locked, RefundState.REJECTED)
            locked.state = RefundState.REJECTED
            locked.answered_at = now
            locked.rejection_reason = reason.strip()[:500]
            locked.save(update_fields=["state", "answered_at", "rejection_reason"])
    return locked


def approve_unanswered_refunds(*, now: datetime | None = None) -> int:
    """Approve every claim whose answer deadline passed in silence (逾期视为同意). One short transaction each;
    a claim answered meanwhile is skipped. Returns how many were approved."""
    moment = now or clock.now()
    due = list(
        Refund.objects.filter(state=RefundState.CLAIMED, answer_due__lte=moment)
        .order_by("pk")
        .values_list("pk", "contract_id")
    )
    approved = 0
    for pk, contract_id in due:
        with transaction.atomic():
            lock_rows("custody_contract", [contract_id])
            locked = Refund.objects.select_for_update().get(pk=pk)
            if locked.state != RefundState.CLAIMED or locked.answer_due is None or locked.answer_due > moment:
                continue
            _approve(locked, approved_by="silence", now=moment)
            approved += 1
    return approved


def _lock_refund(refund: Refund) -> Refund:
    lock_rows("custody_contract", [refund.contract_id])
    return Refund.objects.select_for_update().get(pk=refund.pk)


def _approve(refund: Refund, *, approved_by: str, now: datetime) -> None:
    """Approve a locked claim: take the quote out of prepaid:c into refund_payable:c, set the payout deadline,
    and have the payout instructed after commit."""
    if refund.state != RefundState.CLAIMED:
        # Never a re-approval: the quote would be recomputed while an instruction's hold moves the first one.
        raise RefundAlreadyAnswered(refund.pk, refund.state, RefundState.APPROVED)
    check_refund_transition(refund, RefundState.APPROVED)
    contract = Contract.objects.select_related("policy", "prepaid_account", "refund_account").get(
        pk=refund.contract_id
    )
    quote = refund_quotes([contract.pk], today=calendar.local_date(now))[contract.pk]
    fields = ["state", "approved_by", "answered_at", "amount_fen", "paid_hours", "payout_due"]
    if quote.amount_fen > 0:
        refund.entry = transfer(
            idempotency_key=approve_key(refund.pk),
            kind="refund",
            debit_account=_required(contract.prepaid_account),
            credit_account=_required(contract.refund_account),
            amount=from_minor(quote.amount_fen, "CNY"),
            metadata={"refund": refund.pk, "contract": contract.pk},
        )
        fields.append("entry")
    policy = contract.policy
    days = (
        policy.refund_payout_before_start_working_days
        if quote.before_start
        else policy.refund_payout_after_start_working_days
    )
    refund.state = RefundState.APPROVED
    refund.approved_by = approved_by
    refund.answered_at = now
    refund.amount_fen = quote.amount_fen
    refund.paid_hours = quote.paid_hours
    refund.payout_due = calendar.local_date(calendar.add_working_days(now, days))
    refund.save(update_fields=fields)
    add_contract_hours({contract.pk: (0, 0, quote.paid_hours)}, finish_at=now)
    refund_id = refund.pk
    transaction.on_commit(lambda: _enqueue_instruction([refund_id]))


def _enqueue_instruction(refund_ids: list[int]) -> None:
    from custody.tasks import instruct_refund_payouts_task

    instruct_refund_payouts_task.delay(refund_ids=refund_ids)


def _required(account: Account | None) -> Account:
    if account is None:
        raise RuntimeError("the contract has no ledger account; it was not opened by sign_contract")
    return account


# --- instructions to the bank ---------------------------------------------------------------------------


def instruct_refund_payouts(
    *,
    refunds: Iterable[Refund] | None = None,
    institution: Institution | None = None,
    batch_size: int = 2000,
) -> list[PayoutInstruction]:
    """Send approved refunds to the bank (退费划付指令): one instruction each, to the account that paid
    (原路返回), each backed by a hold on the custody account. One ledger call per batch.

    A refund waits (stays approved, and shows as overdue once its deadline passes) when the custody account
    cannot cover it yet or no payer account is known. Closure refunds of risk-reserve institutions are paid
    from the reserve instead (reserve.py). Safe to re-run: instructed refunds are not selected again.
    """
    wanted = None if refunds is None else sorted({r.pk for r in refunds})
    instructed: list[PayoutInstruction] = []
    after = 0
    while True:
        candidates = Refund.objects.filter(
            state=RefundState.APPROVED, amount_fen__gt=0, pk__gt=after
        ).exclude(
            reason=RefundReason.CLOSURE, contract__institution__supervision_mode=SupervisionMode.RISK_RESERVE
        )
        if wanted is not None:
            candidates = candidates.filter(pk__in=wanted)
        if institution is not None:
            candidates = candidates.filter(contract__institution=institution)
        batch = list(candidates.order_by("pk").values_list("pk", "contract_id")[:batch_size])
        if not batch:
            return instructed
        instructed.extend(_instruct_batch(batch))
        after = batch[-1][0]


@dataclass(frozen=True)
class RefundToPay:
    """What an instruction needs to know of an approved refund (read under its contract's lock)."""

    refund_id: int
    contract_id: int
    institution_id: int
    amount_fen: int
    payer_account: str
    refund_account: Account | None = None  # refund_payable:c, when the caller has it at hand


def _instruct_batch(batch: list[tuple[int, int]]) -> list[PayoutInstruction]:
    now = clock.now()
    with transaction.atomic():
        lock_rows("custody_contract", {contract_id for _, contract_id in batch})
        rows = [
            RefundToPay(*row)
            for row in Refund.objects.select_for_update(of=("self",))
            .filter(pk__in=[pk for pk, _ in batch], state=RefundState.APPROVED)
            .order_by("pk")
            .values_list(
                "pk", "contract_id", "contract__institution_id", "amount_fen", "contract__payer_account"
            )
        ]
        chosen, sources = choose_payable_refunds(rows)
        payouts = write_refund_payouts(chosen, sources, now=now)
        changed = update_states(
            "custody_refund",
            [r.refund_id for r in chosen],
            from_states=[RefundState.APPROVED],
            to_state=RefundState.INSTRUCTED,
        )
        if changed != len(chosen):
            raise RuntimeError("a locked refund changed state while being instructed")
        return payouts


def choose_payable_refunds(rows: Sequence[RefundToPay]) -> tuple[list[RefundToPay], dict[int, Account]]:
    """The refunds (in the order given) that their institutions' payout accounts can cover now, and those
    accounts by institution. The accounts are locked (id order) before their balances are read, so two
    instructions cannot both count on the same money. Refunds without a known payer account are left out."""
    institutions = Institution.objects.filter(pk__in={r.institution_id for r in rows}).select_related(
        "cash_account"
    )
    sources = {institution.pk: payout_source(institution) for institution in institutions}
    available = {
        pk: dr - cr - cp
        for pk, dr, cr, cp in Account.objects.select_for_update(no_key=True)
        .filter(pk__in={a.pk for a in sources.values()})
        .order_by("pk")
        .values_list("pk", "debits_posted", "credits_posted", "credits_pending")
    }
    chosen: list[RefundToPay] = []
    for row in rows:
        source = sources[row.institution_id]
        if row.amount_fen <= 0 or not row.payer_account or available[source.pk] < row.amount_fen:
            continue
        available[source.pk] -= row.amount_fen
        chosen.append(row)
    return chosen, sources


def write_refund_payouts(
    chosen: Sequence[RefundToPay], sources: Mapping[int, Account], *, now: datetime
) -> list[PayoutInstruction]:
    """One instruction per refund, to the account that paid (原路返回), each backed by a hold
    Dr ``refund_payable:c`` / Cr the payout account; all holds in one ledger call. The caller moves the
    refunds to instructed."""
    if not chosen:
        return []
    ids = reserve_ids(PayoutInstruction, len(chosen))
    holds = create_pending_batch(
        transfers=[
            NewPending(
                idempotency_key=hold_key(payout_id),
                kind="payout_refund",
                debit_account=row.refund_account or f"refund_payable:c{row.contract_id}",
                credit_account=sources[row.institution_id],
                amount=from_minor(row.amount_fen, "CNY"),
                metadata={"payout": payout_id, "refund": row.refund_id, "contract": row.contract_id},
            )
            for payout_id, row in zip(ids, chosen, strict=True)
        ]
    )
    payouts = [
        PayoutInstruction(
            id=payout_id,
            institution_id=row.institution_id,
            kind=PayoutKind.REFUND,
            reference=reference_for(PayoutKind.REFUND, payout_id, now),
            amount_fen=row.amount_fen,
            destination_account=row.payer_account,
            refund_id=row.refund_id,
            pending_transfer_id=hold.pk,
            state=PayoutState.INSTRUCTED,
            instructed_at=now,
        )
        for payout_id, row, hold in zip(ids, chosen, holds, strict=True)
    ]
    _insert_payouts(payouts, [row.contract_id for row in chosen])
    return payouts


def _insert_payouts(payouts: Sequence[PayoutInstruction], contract_ids: Sequence[int]) -> None:
    """Insert refund instructions, each to its contract's payer account. On PostgreSQL one ``INSERT … SELECT
    unnest(…)`` that copies the stored (encrypted) payer account from the contract row, which is what the
    instruction would store: ``bulk_create`` spent more on encrypting it again and binding each value than the
    database spent on the rows. The column list is the model's; a new non-null column without a database
    default makes this fail loudly."""
    if not is_postgres():
        PayoutInstruction.objects.bulk_create(payouts, batch_size=2000)
        return
    _, inserted = execute_bound(
        "INSERT INTO custody_payoutinstruction (id, institution_id, kind, reference, amount_fen, "
        "destination_account, refund_id, pending_transfer_id, state, instructed_at, executed_at, "
        "bank_reference, failure_reason) "
        "SELECT u.id, u.institution_id, %b, u.reference, u.amount_fen, c.payer_account, u.refund_id, "
        "u.pending_transfer_id, %b, %b, NULL, '', '' "
        "FROM unnest(%b::bigint[], %b::bigint[], %b::text[], %b::bigint[], %b::bigint[], %b::bigint[], "
        "%b::bigint[]) AS u(id, institution_id, reference, amount_fen, refund_id, pending_transfer_id, "
        "contract_id) JOIN custody_contract c ON c.id = u.contract_id ORDER BY u.id",
        [
            PayoutKind.REFUND.value,
            PayoutState.INSTRUCTED.value,
            payouts[0].instructed_at,
            [p.pk for p in payouts],
            [p.institution_id for p in payouts],
            [p.reference for p in payouts],
            [p.amount_fen for p in payouts],
            [p.refund_id for p in payouts],
            [p.pending_transfer_id for p in payouts],
            list(contract_ids),
        ],
    )
    if inserted != len(payouts):
        raise RuntimeError("a refund instruction's contract is missing")
    mark_saved(payouts)


def payout_source(institution: Institution) -> Account:
    """The account a refund is paid from: the custody account, or in risk-reserve mode the institution's own
    account (the institution pays its parents back itself while it operates)."""
    if institution.supervision_mode == SupervisionMode.RISK_RESERVE:
        from custody.services.reserve import held_account

        return held_account(institution)
    if institution.cash_account is None:
        raise RuntimeError(f"institution {institution.pk} has no custody account")
    return institution.cash_account

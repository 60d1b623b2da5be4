"""Payouts out of the custody account (拨付与退款划付): bank instructions, each backed by a ledger hold.

Flow 4 of docs/flows.md, and the bank's half of flow 5:

- release run, one instruction per institution: hold Dr ``payable:i`` / Cr ``custody_cash:i``
  (key ``payout:{pk}:hold``);
- refund instruction (refunds.py): hold Dr ``refund_payable:c`` / Cr ``custody_cash:i``
  (``payout:{pk}:hold``);
- the bank executed it: post the hold (``payout:{pk}:executed``);
- the bank could not: void the hold, the money is payable / refund payable again (``payout:{pk}:failed``).

An instruction's ``reference`` (``PO{yyyymmdd}{pk:08d}`` for releases, ``RF…`` for refunds) is what the bank
statement shows, so reconciliation matches by it. Only active institutions get release payouts: frozen,
closing and closed ones are paid nothing (their refunds still are). In risk-reserve mode the institution
already holds its money, so a release is an entry, not an instruction (reserve.py).

The payout state machine: instructed → executed | failed; both final.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from django.db import transaction

from custody.errors import IllegalTransition, NotFound, RuleViolation
from custody.models import (
    Institution,
    InstitutionState,
    PayoutInstruction,
    PayoutKind,
    PayoutState,
    Policy,
    Refund,
    RefundState,
    ReleaseCadence,
    SupervisionMode,
)
from custody.services._bulk import lock_rows, reserve_ids
from custody.services.calendar import local_date
from ledger import clock
from ledger.models import Account
from ledger.money import from_minor
from ledger.services import NewPending, Resolution, create_pending_batch, resolve_pending_batch

PAYOUT_TRANSITIONS = {
    PayoutState.INSTRUCTED: frozenset({PayoutState.EXECUTED, PayoutState.FAILED}),
    PayoutState.EXECUTED: frozenset(),
    PayoutState.FAILED: frozenset(),
}
REFUND_FROM_RESERVE_KIND = "payout_reserve_refund"


def hold_key(payout_id: int) -> str:
    return f"payout:{payout_id}:hold"


def reference_for(kind: str, payout_id: int, moment: datetime) -> str:
    prefix = "PO" if kind == PayoutKind.RELEASE else "RF"
    return f"{prefix}{local_date(moment):%Y%m%d}{payout_id:08d}"


def run_release_payouts(
    *, institutions: Iterable[Institution] | None = None, ignore_cadence: bool = False
) -> list[PayoutInstruction]:
    """Pay released money out to institutions (拨付): one instruction per active institution with a positive
    ``payable:i``, all holds created by one ledger call. Safe to re-run: a run reserves what it pays out, so
    the next finds nothing new until more lessons are confirmed.

    A jurisdiction with a weekly release cadence (Xiamen) pays each institution at most once in 7 days unless
    ``ignore_cadence``. The amount never exceeds the custody cash available (money still in clearing waits).
    """
    now = clock.now()
    with transaction.atomic():
        candidates = Institution.objects.filter(state=InstitutionState.ACTIVE)
        if institutions is not None:
            candidates = candidates.filter(pk__in=[i.pk for i in institutions])
        rows = list(
            candidates.order_by("pk").values_list(
                "pk", "jurisdiction_id", "supervision_mode", "payable_account_id", "cash_account_id"
            )
        )
        if not ignore_cadence:
            rows = _due_by_cadence(rows, now=now)
        reserve_mode = [pk for pk, _, mode, _, _ in rows if mode == SupervisionMode.RISK_RESERVE]
        if reserve_mode:
            from custody.services.reserve import release_to_institutions

            release_to_institutions(institution_ids=reserve_mode)
        custody_mode = [
            (pk, payable, cash) for pk, _, mode, payable, cash in rows if mode == SupervisionMode.CUSTODY
        ]
        return _instruct_releases(custody_mode, now=now)


def _due_by_cadence(
    rows: list[tuple[int, int, str, int, int]], *, now: datetime
) -> list[tuple[int, int, str, int, int]]:
    weekly = {
        jurisdiction_id
        for jurisdiction_id in {row[1] for row in rows}
        if current_policy_cadence(jurisdiction_id) == ReleaseCadence.WEEKLY
    }
    if not weekly:
        return rows
    recently_paid = set(
        PayoutInstruction.objects.filter(
            kind=PayoutKind.RELEASE,
            institution__jurisdiction_id__in=weekly,
            instructed_at__gt=now - timedelta(days=7),
        )
        .exclude(state=PayoutState.FAILED)
        .values_list("institution_id", flat=True)
    )
    return [row for row in rows if row[1] not in weekly or row[0] not in recently_paid]


def current_policy_cadence(jurisdiction_id: int) -> str | None:
    """The release cadence of the jurisdiction's policy in force (the newest version)."""
    return (
        Policy.objects.filter(jurisdiction_id=jurisdiction_id)
        .order_by("-version")
        .values_list("release_cadence", flat=True)
        .first()
    )


def _instruct_releases(rows: Sequence[tuple[int, int, int]], *, now: datetime) -> list[PayoutInstruction]:
    if not rows:
        return []
    account_ids = {a for _, payable, cash in rows for a in (payable, cash)}
    # Lock the accounts in id order (the ledger's global order) before reading what is available, so two runs
    # cannot both see the same money.
    totals = {
        pk: (dr, cr, dp, cp)
        for pk, dr, cr, dp, cp in Account.objects.select_for_update(no_key=True)
        .filter(pk__in=account_ids)
        .order_by("pk")
        .values_list("pk", "debits_posted", "credits_posted", "debits_pending", "credits_pending")
    }
    planned: list[tuple[int, int, int, int]] = []
    for institution_id, payable_id, cash_id in rows:
        dr, cr, dp, _ = totals[payable_id]
        payable_available = cr - dr - dp
        cdr, ccr, _, ccp = totals[cash_id]
        cash_available = cdr - ccr - ccp
        amount = min(payable_available, cash_available)
        if amount > 0:
            planned.append((institution_id, payable_id, cash_id, amount))
    if not planned:
        return []
    ids = reserve_ids(PayoutInstruction, len(planned))
    holds = create_pending_batch(
        transfers=[
            NewPending(
                idempotency_key=hold_key(payout_id),
                kind="payout_release",
                debit_account=_code("payable", institution_id),
                credit_account=_code("custody_cash", institution_id),
                amount=from_minor(amount, "CNY"),
                metadata={"payout": payout_id, "institution": institution_id},
            )
            for payout_id, (institution_id, _, _, amount) in zip(ids, planned, strict=True)
        ]
    )
    destinations = dict(
        Institution.objects.filter(pk__in=[p[0] for p in planned]).values_list(
            "pk", "settlement_account_number"
        )
    )
    payouts = [
        PayoutInstruction(
            id=payout_id,
            institution_id=institution_id,
            kind=PayoutKind.RELEASE,
            reference=reference_for(PayoutKind.RELEASE, payout_id, now),
            amount_fen=amount,
            destination_account=destinations[institution_id],
            pending_transfer=hold,
            state=PayoutState.INSTRUCTED,
            instructed_at=now,
        )
        for payout_id, (institution_id, _, _, amount), hold in zip(ids, planned, holds, strict=True)
    ]
    PayoutInstruction.objects.bulk_create(payouts, batch_size=2000)
    return payouts


def _code(kind: str, institution_id: int) -> str:
    return f"{kind}:i{institution_id}"


def record_payout_result(
    *, reference: str, executed: bool, bank_reference: str = "", reason: str = ""
) -> PayoutInstruction:
    """The bank's answer to an instruction. Executed: the hold is posted (and a refund is paid). Failed: the
    hold is voided, the money is payable (or refund payable) again and the next run instructs it anew.

    Replaying the same answer returns the payout unchanged; the opposite answer raises ``IllegalTransition``.
    """
    if not executed and not reason.strip():
        raise RuleViolation(
            "failure_needs_reason", "须说明失败原因 a failed payout needs a reason", field="reason"
        )
    found = PayoutInstruction.objects.filter(reference=reference).values_list("pk", "refund_id").first()
    if found is None:
        raise NotFound(f"没有指令 {reference} no payout instruction {reference}", reference=reference)
    payout_id, refund_id = found
    target = PayoutState.EXECUTED if executed else PayoutState.FAILED
    now = clock.now()
    with transaction.atomic():
        refund = None
        if refund_id is not None:
            contract_id = Refund.objects.values_list("contract_id", flat=True).get(pk=refund_id)
            lock_rows("custody_contract", [contract_id])
            refund = Refund.objects.select_for_update().get(pk=refund_id)
        payout = (
            PayoutInstruction.objects.select_for_update().select_related("pending_transfer").get(pk=payout_id)
        )
        if payout.state == target:
            return payout  # the bank repeated its answer
        if target not in PAYOUT_TRANSITIONS[PayoutState(payout.state)]:
            raise IllegalTransition("payout", payout.state, target)
        hold = payout.pending_transfer
        if executed:
            resolve_pending_batch(resolutions=[Resolution(hold.pk, "post", f"payout:{payout.pk}:executed")])
            payout.state = PayoutState.EXECUTED
            payout.executed_at = now
            payout.bank_reference = bank_reference[:64]
            if hold.kind == REFUND_FROM_RESERVE_KIND:
                from custody.services.reserve import apply_reserve_to_refund

                apply_reserve_to_refund(payout=payout, hold=hold)
            if refund is not None:
                _advance_refund(refund, RefundState.PAID, paid_at=now)
        else:
            resolve_pending_batch(resolutions=[Resolution(hold.pk, "void", f"payout:{payout.pk}:failed")])
            payout.state = PayoutState.FAILED
            payout.failure_reason = reason.strip()[:500]
            if refund is not None:
                # The refund is owed again and gets a new instruction; this failed one stays linked to it
                # (one live instruction per refund: custody_one_live_payout_per_refund).
                _advance_refund(refund, RefundState.APPROVED)
        payout.save(update_fields=["state", "executed_at", "bank_reference", "failure_reason"])
    return payout


def _advance_refund(refund: Refund, target: RefundState, *, paid_at: datetime | None = None) -> None:
    from custody.services.refunds import check_refund_transition

    check_refund_transition(refund, target)
    refund.state = target
    fields = ["state"]
    if paid_at is not None:
        refund.paid_at = paid_at
        fields.append("paid_at")
    refund.save(update_fields=fields)

"""Risk-reserve mode (风险保证金): where a jurisdiction allows it, parents' money sits in the institution's
own account and a reserve deposited with the bank guarantees it.

The ledger still tracks every contract's prepaid liability exactly as in custody mode; only the asset side
differs. Accounts, per institution *i* (opened on first use):

| account | type | holds |
|---|---|---|
| ``institution_held:i`` | asset (never negative) | parents' money that is in the institution's own account |
| ``reserve_cash:i`` | asset (never negative) | the reserve the bank holds as a deposit |
| ``reserve_deposit:i`` | liability (never negative) | the reserve owed back to the institution |

Entries:

- payment settles (payments.py): Dr ``institution_held:i`` / Cr ``clearing:{channel}``
  (``settlement:{channel}:{txn}``);
- lesson released (lessons.py): Dr ``prepaid:c`` / Cr ``payable:i``, as in custody mode;
- release run, the institution already has the money: Dr ``payable:i`` / Cr ``institution_held:i``
  (``reserve_release:i{pk}:{payable credits}``), no bank instruction;
- parent's refund, paid by the institution: hold Dr ``refund_payable:c`` / Cr ``institution_held:i``
  (``payout:{pk}:hold``);
- reserve deposited: Dr ``reserve_cash:i`` / Cr ``reserve_deposit:i`` (``reserve:i{pk}:deposit:{key}``);
- closure refund paid from the reserve: hold Dr ``refund_payable:c`` / Cr ``reserve_cash:i``
  (``payout:{pk}:hold``); once executed, the deposit settles what the institution held:
  Dr ``reserve_deposit:i`` / Cr ``institution_held:i`` (``payout:{pk}:reserve_applied``).

So ``institution_held:i`` = Σ ``prepaid:c`` + ``payable:i`` + Σ ``refund_payable:c`` (the custody invariant
with the institution's account in place of the custody account), and ``reserve_cash:i`` =
``reserve_deposit:i``.

The daily check (``check_reserves``) requires max(``policy.reserve_minimum_fen``, ``reserve_ratio_percent`` ×
unconsumed prepaid value, rounded up to the fen) and records the shortfall in ``ReserveCheck``. On closure,
refunds are paid from the reserve, in full if it suffices, otherwise pro rata (largest remainder, to the fen);
what the reserve cannot cover stays in ``refund_payable:c`` as a claim against the institution
(``selectors.refunds.closure_shortfalls``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from django.db import transaction
from django.db.models import F, Sum
from moneyed import Money

from custody.errors import RuleViolation
from custody.models import (
    Closure,
    Contract,
    Institution,
    InstitutionState,
    PayoutInstruction,
    PayoutKind,
    PayoutState,
    Refund,
    RefundReason,
    RefundState,
    ReserveCheck,
    SupervisionMode,
)
from custody.selectors.policy import current_policy
from custody.services._bulk import lock_rows, reserve_ids, update_states
from custody.services.calendar import local_today
from custody.services.payouts import REFUND_FROM_RESERVE_KIND, hold_key, reference_for
from ledger import clock
from ledger.models import Account, AccountType, Entry, PendingTransfer
from ledger.money import from_minor, to_minor
from ledger.services import (
    NewEntry,
    NewPending,
    create_pending_batch,
    credit,
    debit,
    open_account,
    post_batch,
    transfer,
)


def held_account(institution: Institution) -> Account:
    return open_account(
        code=f"institution_held:i{institution.pk}",
        type=AccountType.ASSET,
        limit="credits_must_not_exceed_debits",
        name=f"{institution.name} 机构自有账户中的预收费 prepaid money in the institution's account",
    )


def reserve_cash_account(institution: Institution) -> Account:
    return open_account(
        code=f"reserve_cash:i{institution.pk}",
        type=AccountType.ASSET,
        limit="credits_must_not_exceed_debits",
        name=f"{institution.name} 风险保证金 reserve at the bank",
    )


def reserve_deposit_account(institution: Institution) -> Account:
    return open_account(
        code=f"reserve_deposit:i{institution.pk}",
        type=AccountType.LIABILITY,
        limit="debits_must_not_exceed_credits",
        name=f"{institution.name} 应退保证金 reserve owed back to the institution",
    )


def _require_reserve_mode(institution: Institution) -> None:
    if institution.supervision_mode != SupervisionMode.RISK_RESERVE:
        raise RuleViolation(
            "not_risk_reserve_mode",
            f"机构{institution.name}为银行托管方式，无风险保证金 {institution.name} is in bank custody mode",
            institution=institution.pk,
        )


def deposit_reserve(*, institution: Institution, amount: Money, key: str) -> Entry:
    """The bank confirms the institution deposited ``amount`` into its reserve. ``key`` is the bank's
    reference for the deposit: the same key again records nothing twice."""
    _require_reserve_mode(institution)
    if to_minor(amount) <= 0:
        raise RuleViolation("amount_positive", "金额须为正 the amount must be positive", field="amount")
    return transfer(
        idempotency_key=f"reserve:i{institution.pk}:deposit:{key}",
        kind="reserve_deposit",
        debit_account=reserve_cash_account(institution),
        credit_account=reserve_deposit_account(institution),
        amount=amount,
        metadata={"institution": institution.pk, "bank_reference": key},
    )


def release_to_institutions(*, institution_ids: Sequence[int]) -> list[Entry]:
    """Release run for risk-reserve institutions: what they earned (``payable:i``) they already hold, so it
    leaves the held balance by an entry, with no bank instruction. Safe to re-run (keyed by the payable
    account's cumulative credits: nothing new earned, nothing new released)."""
    institutions = list(
        Institution.objects.filter(pk__in=institution_ids, supervision_mode=SupervisionMode.RISK_RESERVE)
        .select_related("payable_account")
        .order_by("pk")
    )
    if not institutions:
        return []
    with transaction.atomic():
        held = {i.pk: held_account(i) for i in institutions}
        payable_ids = [_payable_id(i) for i in institutions]
        totals = {
            pk: (dr, cr, dp)
            for pk, dr, cr, dp in Account.objects.select_for_update(no_key=True)
            .filter(pk__in=payable_ids)
            .order_by("pk")
            .values_list("pk", "debits_posted", "credits_posted", "debits_pending")
        }
        entries = []
        for institution in institutions:
            dr, cr, dp = totals[_payable_id(institution)]
            amount = cr - dr - dp
            if amount <= 0:
                continue
            entries.append(
                NewEntry(
                    idempotency_key=f"reserve_release:i{institution.pk}:{cr}",
                    kind="reserve_release",
                    legs=[
                        debit(f"payable:i{institution.pk}", from_minor(amount, "CNY")),
                        credit(held[institution.pk], from_minor(amount, "CNY")),
                    ],
                    metadata={"institution": institution.pk},
                )
            )
        return post_batch(entries=entries).entries if entries else []


def _payable_id(institution: Institution) -> int:
    if institution.payable_account_id is None:
        raise RuntimeError(f"institution {institution.pk} has no payable account")
    return institution.payable_account_id


def check_reserves(*, on_date: date | None = None) -> list[ReserveCheck]:
    """The daily reserve check of every risk-reserve institution not yet closed. One row per institution and
    day: a re-run the same day returns the rows written first."""
    day = on_date or local_today()
    now = clock.now()
    institutions = list(
        Institution.objects.filter(supervision_mode=SupervisionMode.RISK_RESERVE)
        .exclude(state=InstitutionState.CLOSED)
        .select_related("jurisdiction")
        .order_by("pk")
    )
    if not institutions:
        return []
    unconsumed = dict(
        Contract.objects.filter(institution__in=institutions)
        .values("institution_id")
        .annotate(total=Sum(F("prepaid_account__credits_posted") - F("prepaid_account__debits_posted")))
        .values_list("institution_id", "total")
    )
    reserves = {
        code: dr - cr - cp
        for code, dr, cr, cp in Account.objects.filter(
            code__in=[f"reserve_cash:i{i.pk}" for i in institutions]
        ).values_list("code", "debits_posted", "credits_posted", "credits_pending")
    }
    existing = {
        c.institution_id: c for c in ReserveCheck.objects.filter(institution__in=institutions, on_date=day)
    }
    policies = {}
    checks: list[ReserveCheck] = []
    with transaction.atomic():
        for institution in institutions:
            if institution.pk in existing:
                checks.append(existing[institution.pk])
                continue
            if institution.jurisdiction_id not in policies:
                policies[institution.jurisdiction_id] = current_policy(institution.jurisdiction)
            policy = policies[institution.jurisdiction_id]
            prepaid = int(unconsumed.get(institution.pk) or 0)
            by_ratio = -(-prepaid * policy.reserve_ratio_percent // 100)  # rounded up to the fen
            required = max(policy.reserve_minimum_fen, by_ratio)
            reserve = reserves.get(f"reserve_cash:i{institution.pk}", 0)
            check, _ = ReserveCheck.objects.get_or_create(
                institution=institution,
                on_date=day,
                defaults={
                    "checked_at": now,
                    "policy_version": policy.version,
                    "unconsumed_prepaid_fen": prepaid,
                    "ratio_percent": policy.reserve_ratio_percent,
                    "minimum_fen": policy.reserve_minimum_fen,
                    "required_fen": required,
                    "reserve_fen": reserve,
                    "shortfall_fen": max(0, required - reserve),
                },
            )
            Institution.objects.filter(pk=institution.pk).update(reserve_required_fen=check.required_fen)
            checks.append(check)
    return checks


def pro_rata(amounts: Sequence[int], available: int) -> list[int]:
    """Share ``available`` fen among claims in proportion to ``amounts`` (largest remainder, ties to the
    earlier claim). The shares add up to ``min(available, sum(amounts))`` exactly; none exceeds its claim."""
    total = sum(amounts)
    if available >= total:
        return list(amounts)
    if available <= 0 or total <= 0:
        return [0] * len(amounts)
    shares = [a * available // total for a in amounts]
    remainders = sorted(range(len(amounts)), key=lambda i: (-(amounts[i] * available % total), i))
    for i in remainders[: available - sum(shares)]:
        shares[i] += 1
    return shares


def pay_closure_refunds_from_reserve(*, closure: Closure) -> list[PayoutInstruction]:
    """Instruct the bank to pay the closure refunds of a risk-reserve institution from its reserve: in full
    if the reserve suffices, else pro rata. Refunds left at 0 (nothing in the reserve) stay approved."""
    institution = Institution.objects.get(pk=closure.institution_id)
    _require_reserve_mode(institution)
    now = clock.now()
    with transaction.atomic():
        candidates = list(
            Refund.objects.filter(
                contract__institution=institution, reason=RefundReason.CLOSURE, state=RefundState.APPROVED
            )
            .order_by("pk")
            .values_list("pk", "contract_id")
        )
        if not candidates:
            return []
        lock_rows("custody_contract", {cid for _, cid in candidates})
        refunds = [
            r
            for r in Refund.objects.select_for_update(of=("self",))
            .filter(pk__in=[pk for pk, _ in candidates], state=RefundState.APPROVED, amount_fen__gt=0)
            .select_related("contract__refund_account")
            .order_by("pk")
            if r.contract.payer_account
        ]
        source = reserve_cash_account(institution)
        dr, cr, cp = (
            Account.objects.select_for_update(no_key=True)
            .filter(pk=source.pk)
            .values_list("debits_posted", "credits_posted", "credits_pending")
            .get()
        )
        shares = pro_rata([r.amount_fen for r in refunds], dr - cr - cp)
        chosen = [(r, share) for r, share in zip(refunds, shares, strict=True) if share > 0]
        if not chosen:
            return []
        ids = reserve_ids(PayoutInstruction, len(chosen))
        holds = create_pending_batch(
            transfers=[
                NewPending(
                    idempotency_key=hold_key(payout_id),
                    kind=REFUND_FROM_RESERVE_KIND,
                    debit_account=f"refund_payable:c{refund.contract_id}",
                    credit_account=source,
                    amount=from_minor(share, "CNY"),
                    metadata={
                        "payout": payout_id,
                        "refund": refund.pk,
                        "contract": refund.contract_id,
                        "refund_fen": refund.amount_fen,
                    },
                )
                for payout_id, (refund, share) in zip(ids, chosen, strict=True)
            ]
        )
        payouts = [
            PayoutInstruction(
                id=payout_id,
                institution=institution,
                kind=PayoutKind.REFUND,
                reference=reference_for(PayoutKind.REFUND, payout_id, now),
                amount_fen=share,
                destination_account=refund.contract.payer_account,
                refund=refund,
                pending_transfer=hold,
                state=PayoutState.INSTRUCTED,
                instructed_at=now,
            )
            for payout_id, (refund, share), hold in zip(ids, chosen, holds, strict=True)
        ]
        PayoutInstruction.objects.bulk_create(payouts, batch_size=2000)
        update_states(
            "custody_refund",
            [refund.pk for refund, _ in chosen],
            from_states=[RefundState.APPROVED],
            to_state=RefundState.INSTRUCTED,
        )
        return payouts


def apply_reserve_to_refund(*, payout: PayoutInstruction, hold: PendingTransfer) -> Entry:
    """A refund paid from the reserve was executed: the institution's deposit settles, for that amount, the
    parents' money it held (runs inside record_payout_result's transaction)."""
    institution = Institution.objects.get(pk=payout.institution_id)
    return transfer(
        idempotency_key=f"payout:{payout.pk}:reserve_applied",
        kind="reserve_applied",
        debit_account=reserve_deposit_account(institution),
        credit_account=held_account(institution),
        amount=from_minor(hold.amount, "CNY"),
        metadata={"payout": payout.pk, "refund": hold.metadata.get("refund")},
    )

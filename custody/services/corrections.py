"""Manual corrections (人工调账) under four eyes: propose, then a second regulator approves and the entry is
posted, or anyone in scope rejects it.

A correction is one balanced ledger entry (key ``correction:{pk}``, kind ``correction``) whose accounts all
belong to one institution: its ``custody_cash:i`` / ``payable:i`` (or, in risk-reserve mode,
``institution_held:i`` / ``reserve_cash:i`` / ``reserve_deposit:i``) and its contracts' ``prepaid:c`` /
``refund_payable:c``. A balanced entry inside one institution keeps its custody invariant (Δ assets =
Δ liabilities); the ledger still refuses anything that breaks an account's limit. The approver must be a
regulator of the proposal's jurisdiction (or one above it) and not the proposer; the database backs the
second rule with a CHECK constraint.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from django.contrib.auth.models import User
from django.db import transaction

from custody.errors import IllegalTransition, RuleViolation
from custody.models import (
    Contract,
    CorrectionProposal,
    CorrectionState,
    Institution,
    RegulatorProfile,
)
from custody.selectors.access import jurisdiction_scope
from ledger import clock
from ledger.models import Account
from ledger.money import MAX_MINOR_UNITS, from_minor
from ledger.services import Leg, post_entry

MAX_LEGS = 20
_INSTITUTION_ACCOUNT = re.compile(
    r"(custody_cash|payable|institution_held|reserve_cash|reserve_deposit):i(?P<pk>[0-9]{1,18})"
)
_CONTRACT_ACCOUNT = re.compile(r"(prepaid|refund_payable):c(?P<pk>[0-9]{1,18})")


@dataclass(frozen=True)
class CorrectionLeg:
    account: str
    side: str  # "debit" or "credit"
    amount_fen: int


def correction_key(proposal_id: int) -> str:
    return f"correction:{proposal_id}"


def propose_correction(
    *, institution: Institution, proposed_by: User, reason: str, legs: Sequence[CorrectionLeg]
) -> CorrectionProposal:
    """A regulator proposes a correcting entry for ``institution``; nothing moves until a second approves."""
    if not reason.strip():
        raise RuleViolation("reason_required", "须说明调账理由 a correction needs a reason", field="reason")
    _check_legs(institution, legs)
    return CorrectionProposal.objects.create(
        jurisdiction_id=institution.jurisdiction_id,
        institution=institution,
        reason=reason.strip()[:500],
        legs=[{"account": leg.account, "side": leg.side, "amount_fen": leg.amount_fen} for leg in legs],
        state=CorrectionState.PROPOSED,
        proposed_by=proposed_by,
        proposed_at=clock.now(),
    )


def approve_correction(
    *, proposal: CorrectionProposal, approved_by: User, note: str = ""
) -> CorrectionProposal:
    """The second regulator approves: the entry is posted and the proposal is ``posted``, in one transaction.
    A limit the entry would break (``LimitExceeded``) refuses the approval and leaves the proposal open."""
    with transaction.atomic():
        locked = CorrectionProposal.objects.select_for_update().get(pk=proposal.pk)
        _check_open(locked, CorrectionState.POSTED)
        if approved_by.pk == locked.proposed_by_id:
            raise RuleViolation(
                "four_eyes",
                "调账须由另一名监管人员复核，提出人不能自行批准 "
                "a correction must be approved by a second regulator, not its proposer",
                field="approved_by",
            )
        _check_regulator_of(approved_by, locked)
        entry = post_entry(
            idempotency_key=correction_key(locked.pk),
            kind="correction",
            legs=[
                Leg(leg["account"], from_minor(leg["amount_fen"], "CNY"), leg["side"]) for leg in locked.legs
            ],
            metadata={
                "correction": locked.pk,
                "institution": locked.institution_id,
                "proposed_by": locked.proposed_by_id,
                "approved_by": approved_by.pk,
                "reason": locked.reason,
            },
        )
        locked.state = CorrectionState.POSTED
        locked.entry = entry
        locked.decided_by = approved_by
        locked.decided_at = clock.now()
        locked.decision_note = note.strip()[:500]
        locked.save(update_fields=["state", "entry", "decided_by", "decided_at", "decision_note"])
    return locked


def reject_correction(*, proposal: CorrectionProposal, rejected_by: User, note: str) -> CorrectionProposal:
    """Reject (or, by its proposer, withdraw) a proposal; nothing is posted."""
    if not note.strip():
        raise RuleViolation("reason_required", "驳回须说明理由 a rejection needs a reason", field="note")
    with transaction.atomic():
        locked = CorrectionProposal.objects.select_for_update().get(pk=proposal.pk)
        _check_open(locked, CorrectionState.REJECTED)
        _check_regulator_of(rejected_by, locked)
        locked.state = CorrectionState.REJECTED
        locked.decided_by = rejected_by if rejected_by.pk != locked.proposed_by_id else None
        locked.decided_at = clock.now()
        locked.decision_note = note.strip()[:500]
        locked.save(update_fields=["state", "decided_by", "decided_at", "decision_note"])
    return locked


def _check_open(proposal: CorrectionProposal, target: str) -> None:
    if proposal.state != CorrectionState.PROPOSED:
        raise IllegalTransition("correction", proposal.state, target)


def _check_regulator_of(user: User, proposal: CorrectionProposal) -> None:
    profile = RegulatorProfile.objects.filter(user=user).first()
    if profile is None or proposal.jurisdiction_id not in jurisdiction_scope(profile.jurisdiction_id):
        raise RuleViolation(
            "not_regulator_of_jurisdiction",
            "只有该辖区的监管人员可以处理此调账 "
            "only a regulator of this jurisdiction may decide this correction",
            jurisdiction=proposal.jurisdiction_id,
        )


def _check_legs(institution: Institution, legs: Sequence[CorrectionLeg]) -> None:
    if not 2 <= len(legs) <= MAX_LEGS:
        raise RuleViolation(
            "correction_legs",
            f"调账分录须有2至{MAX_LEGS}条 a correction has 2 to {MAX_LEGS} legs",
            field="legs",
            limit=MAX_LEGS,
            requested=len(legs),
        )
    debits = credits = 0
    seen: set[str] = set()
    for leg in legs:
        if leg.side not in ("debit", "credit"):
            raise RuleViolation("correction_legs", f"未知的借贷方向 unknown side {leg.side!r}", field="legs")
        if type(leg.amount_fen) is not int or not 0 < leg.amount_fen < MAX_MINOR_UNITS:
            raise RuleViolation(
                "correction_legs", "金额须为正整数（分） amounts must be positive fen", field="legs"
            )
        if leg.account in seen:
            raise RuleViolation(
                "correction_legs",
                f"账户 {leg.account} 出现两次 account {leg.account} appears twice",
                field="legs",
            )
        seen.add(leg.account)
        if leg.side == "debit":
            debits += leg.amount_fen
        else:
            credits += leg.amount_fen
    if debits != credits:
        raise RuleViolation(
            "correction_unbalanced",
            f"借方合计{debits}分与贷方合计{credits}分不等 "
            f"debits ({debits} fen) and credits ({credits} fen) differ",
            field="legs",
            debits=debits,
            credits=credits,
        )
    _check_accounts_of(institution, sorted(seen))


def _check_accounts_of(institution: Institution, codes: Sequence[str]) -> None:
    contract_ids: set[int] = set()
    for code in codes:
        own = _INSTITUTION_ACCOUNT.fullmatch(code)
        theirs = _CONTRACT_ACCOUNT.fullmatch(code)
        if own is not None and int(own["pk"]) == institution.pk:
            continue
        if theirs is not None:
            contract_ids.add(int(theirs["pk"]))
            continue
        raise _foreign_account(code)
    if contract_ids:
        owned = set(
            Contract.objects.filter(pk__in=contract_ids, institution=institution).values_list("pk", flat=True)
        )
        for code in codes:
            theirs = _CONTRACT_ACCOUNT.fullmatch(code)
            if theirs is not None and int(theirs["pk"]) not in owned:
                raise _foreign_account(code)
    existing = set(Account.objects.filter(code__in=codes).values_list("code", flat=True))
    missing = [code for code in codes if code not in existing]
    if missing:
        raise RuleViolation(
            "correction_account_missing",
            f"账户 {missing[0]} 不存在 account {missing[0]} does not exist",
            field="legs",
            account=missing[0],
        )


def _foreign_account(code: str) -> RuleViolation:
    return RuleViolation(
        "correction_foreign_account",
        f"账户 {code} 不属于该机构 account {code} does not belong to this institution",
        field="legs",
        account=code,
    )

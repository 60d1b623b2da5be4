"""Balances of the custody domain, read from the ledger: the per-institution custody invariant and the
per-contract position (what was paid, released, held, refunded and is still prepaid).

DESIGN.md section 6, invariant 3: for each institution, ``custody_cash:i`` (plus money confirmed by a channel
but not yet settled into custody) = Σ ``prepaid:c`` + ``payable:i`` + Σ ``refund_payable:c``. Posted balances
are compared: holds (unconfirmed lessons, instructed payouts) move nothing until posted. In risk-reserve mode
the institution's own account (``institution_held:i``) stands in for the custody account.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import F, Sum

from custody.models import (
    Contract,
    Institution,
    Lesson,
    LessonState,
    Payment,
    Refund,
    RefundState,
    SupervisionMode,
)
from ledger.models import Account


@dataclass(frozen=True)
class CustodyInvariant:
    """Both sides of the custody invariant of one institution, in fen (posted balances)."""

    institution_id: int
    cash_fen: int  # custody_cash:i (institution_held:i in risk-reserve mode)
    in_clearing_fen: int  # confirmed by a channel, not yet settled into the account above
    prepaid_fen: int  # Σ prepaid:c
    payable_fen: int  # payable:i
    refund_payable_fen: int  # Σ refund_payable:c

    @property
    def assets_fen(self) -> int:
        return self.cash_fen + self.in_clearing_fen

    @property
    def liabilities_fen(self) -> int:
        return self.prepaid_fen + self.payable_fen + self.refund_payable_fen

    @property
    def holds(self) -> bool:
        return self.assets_fen == self.liabilities_fen


def _posted(account: Account | None) -> int:
    if account is None:
        return 0
    return account.signed_balance(account.debits_posted, account.credits_posted)


def custody_invariant(institution: Institution) -> CustodyInvariant:
    institution = Institution.objects.select_related("cash_account", "payable_account").get(pk=institution.pk)
    if institution.supervision_mode == SupervisionMode.RISK_RESERVE:
        cash = _posted(Account.objects.filter(code=f"institution_held:i{institution.pk}").first())
    else:
        cash = _posted(institution.cash_account)
    sums = Contract.objects.filter(institution=institution).aggregate(
        prepaid=Sum(F("prepaid_account__credits_posted") - F("prepaid_account__debits_posted")),
        refund=Sum(F("refund_account__credits_posted") - F("refund_account__debits_posted")),
    )
    in_clearing = Payment.objects.filter(
        contract__institution=institution, settlement_entry__isnull=True
    ).aggregate(total=Sum("amount_fen"))["total"]
    return CustodyInvariant(
        institution_id=institution.pk,
        cash_fen=cash,
        in_clearing_fen=int(in_clearing or 0),
        prepaid_fen=int(sums["prepaid"] or 0),
        payable_fen=_posted(institution.payable_account),
        refund_payable_fen=int(sums["refund"] or 0),
    )


@dataclass(frozen=True)
class ContractPosition:
    """Invariant 4: paid = released + refunded + held + available, in fen; and the hours behind them."""

    contract_id: int
    paid_fen: int  # Σ payments
    released_fen: int  # confirmed lessons (posted to payable:i)
    held_fen: int  # unconfirmed lessons (holds on prepaid:c)
    refunded_fen: int  # approved refunds (moved to refund_payable:c)
    available_fen: int  # prepaid:c posted minus holds: what a refund would take now
    refund_payable_fen: int  # approved, not yet paid out by the bank

    @property
    def balanced(self) -> bool:
        return self.paid_fen == self.released_fen + self.refunded_fen + self.held_fen + self.available_fen


def contract_position(contract: Contract) -> ContractPosition:
    contract = Contract.objects.select_related("prepaid_account", "refund_account").get(pk=contract.pk)
    prepaid = contract.prepaid_account
    paid = Payment.objects.filter(contract=contract).aggregate(total=Sum("amount_fen"))["total"] or 0
    released = (
        Lesson.objects.filter(contract=contract, state=LessonState.CONFIRMED).aggregate(
            total=Sum("amount_fen")
        )["total"]
        or 0
    )
    refunded = (
        Refund.objects.filter(
            contract=contract, state__in=(RefundState.APPROVED, RefundState.INSTRUCTED, RefundState.PAID)
        ).aggregate(total=Sum("amount_fen"))["total"]
        or 0
    )
    held = prepaid.debits_pending if prepaid else 0
    return ContractPosition(
        contract_id=contract.pk,
        paid_fen=int(paid),
        released_fen=int(released),
        held_fen=held,
        refunded_fen=int(refunded),
        available_fen=(_posted(prepaid) - held) if prepaid else 0,
        refund_payable_fen=_posted(contract.refund_account),
    )

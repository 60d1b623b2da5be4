"""What custody holds, read from the ledger's materialized totals (O(1) per account, no history scan).

Per contract (its ``prepaid:c`` and ``refund_payable:c`` accounts):

| figure | from the ledger | meaning |
|---|---|---|
| paid | credits posted to ``prepaid:c`` | payments confirmed by a channel |
| held | ``prepaid:c`` posted balance | not released or refunded (incl. lessons awaiting confirmation) |
| pending | debits pending on ``prepaid:c`` | lessons recorded, not yet confirmed (part of held) |
| consumed | debits posted to ``prepaid:c`` − credits to ``refund_payable:c`` | released to the institution |
| refunded | credits posted to ``refund_payable:c`` | refunds approved |
| refund paid | debits posted to ``refund_payable:c`` | refunds the bank has paid back |

so held = paid − consumed − refunded, for each contract and for a parent's sum. Per institution:
``custody_cash:i`` (debit-normal) and ``payable:i`` (credit-normal).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import CharField, F, IntegerField, OuterRef, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Cast, Coalesce, Concat

from custody.models import Contract, Institution
from custody.selectors._prepared import fetch_one
from ledger.models import Account

_PREPAID_CR = F("prepaid_account__credits_posted")
_PREPAID_DR = F("prepaid_account__debits_posted")
_REFUND_CR = F("refund_account__credits_posted")
_REFUND_DR = F("refund_account__debits_posted")

CONTRACT_MONEY = {
    "paid_fen": _PREPAID_CR,
    "held_fen": _PREPAID_CR - _PREPAID_DR,
    "pending_fen": F("prepaid_account__debits_pending"),
    "consumed_fen": _PREPAID_DR - _REFUND_CR,
    "refunded_fen": _REFUND_CR,
    "refund_paid_fen": _REFUND_DR,
}


def with_money(contracts: QuerySet[Contract]) -> QuerySet[Contract]:
    """``contracts`` annotated with the figures above, in fen (one join per account, no aggregation)."""
    return contracts.annotate(**{name: Coalesce(expr, 0) for name, expr in CONTRACT_MONEY.items()})


@dataclass(frozen=True)
class Holdings:
    """A parent's (or any set of contracts') totals, in fen."""

    contracts: int
    paid_fen: int
    held_fen: int
    pending_fen: int
    consumed_fen: int
    refunded_fen: int
    refund_paid_fen: int


# The parent's balance is the API's hottest read: one fixed statement, prepared once per connection,
# the same figures as ``holdings(Contract.objects.filter(guardian_id=...))``.
_GUARDIAN_HOLDINGS_SQL = """
SELECT count(*),
       COALESCE(SUM(p.credits_posted), 0),
       COALESCE(SUM(p.credits_posted - p.debits_posted), 0),
       COALESCE(SUM(p.debits_pending), 0),
       COALESCE(SUM(p.debits_posted - r.credits_posted), 0),
       COALESCE(SUM(r.credits_posted), 0),
       COALESCE(SUM(r.debits_posted), 0)
FROM custody_contract c
LEFT JOIN ledger_account p ON p.id = c.prepaid_account_id
LEFT JOIN ledger_account r ON r.id = c.refund_account_id
WHERE c.guardian_id = %s
"""


def holdings_of_guardian(guardian_id: int) -> Holdings:
    """One aggregate statement over the guardian's contracts and their two accounts (index on guardian)."""
    row = fetch_one(_GUARDIAN_HOLDINGS_SQL, [guardian_id]) or (0,) * 7
    return Holdings(*(int(value or 0) for value in row))


def holdings(contracts: QuerySet[Contract]) -> Holdings:
    row = contracts.aggregate(
        contracts=Coalesce(Sum(Value(1, output_field=IntegerField())), 0),
        **{name: Coalesce(Sum(expr), 0) for name, expr in CONTRACT_MONEY.items()},
    )
    return Holdings(**{key: int(value) for key, value in row.items()})


def _contract_sum(expression: F | object) -> Subquery:
    return Subquery(
        Contract.objects.filter(institution=OuterRef("pk"))
        .order_by()
        .values("institution")
        .annotate(total=Sum(expression))
        .values("total")[:1]
    )


def _reserve_cash() -> Subquery:
    """The posted balance of the institution's ``reserve_cash:i`` (risk-reserve mode; none in bank custody),
    found by its code's unique index."""
    code = Concat(Value("reserve_cash:i"), Cast(OuterRef("pk"), output_field=CharField()))
    return Subquery(
        Account.objects.filter(code=code).values(balance=F("debits_posted") - F("credits_posted"))[:1]
    )


def institutions_with_money(institutions: QuerySet[Institution]) -> QuerySet[Institution]:
    """Institutions annotated, in fen: ``cash_fen`` (custody_cash:i posted), ``cash_pending_out_fen``
    (instructed payouts not yet executed), ``payable_fen``, ``prepaid_fen`` (Σ prepaid:c),
    ``refund_payable_fen`` (Σ refund_payable:c) and ``reserve_fen`` (reserve_cash:i, risk-reserve mode)."""
    return institutions.annotate(
        cash_fen=Coalesce(F("cash_account__debits_posted") - F("cash_account__credits_posted"), 0),
        cash_pending_out_fen=Coalesce(F("cash_account__credits_pending"), 0),
        payable_fen=Coalesce(F("payable_account__credits_posted") - F("payable_account__debits_posted"), 0),
        prepaid_fen=Coalesce(_contract_sum(_PREPAID_CR - _PREPAID_DR), 0),
        refund_payable_fen=Coalesce(_contract_sum(_REFUND_CR - _REFUND_DR), 0),
        reserve_fen=Coalesce(_reserve_cash(), 0),
    )

"""The ledger's reads: balances now (one row), at any past moment (one index lookup), and statements."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from moneyed import Money

from ledger.models import Account, Posting
from ledger.money import from_minor


@dataclass(frozen=True)
class Balance:
    """An account's balance on its normal side (assets: debits - credits; the rest: credits - debits).

    ``available`` also subtracts pending outflows, the amount a new hold or transfer may still take.
    """

    account_code: str
    posted: Money
    pending_debits: Money
    pending_credits: Money
    available: Money


def balance(account: Account, *, refresh: bool = True) -> Balance:
    """Current balance: reads the account's materialized totals (O(1) at any history size)."""
    if refresh:
        account = Account.objects.get(pk=account.pk)
    posted = account.signed_balance(account.debits_posted, account.credits_posted)
    outflow_pending = account.credits_pending if account.is_debit_normal else account.debits_pending
    return Balance(
        account_code=account.code,
        posted=from_minor(posted, account.currency),
        pending_debits=from_minor(account.debits_pending, account.currency),
        pending_credits=from_minor(account.credits_pending, account.currency),
        available=from_minor(posted - outflow_pending, account.currency),
    )


def balance_at(account: Account, moment: datetime) -> Money:
    """Posted balance as the ledger stood at ``moment`` (transaction time): the running totals of the last
    posting at or before it, found through the (account, posted_at, id) index."""
    last = (
        Posting.objects.filter(account_id=account.pk, posted_at__lte=moment)
        .order_by("-posted_at", "-id")
        .values_list("debits_after", "credits_after")
        .first()
    )
    debits, credits = last if last else (0, 0)
    return from_minor(account.signed_balance(debits, credits), account.currency)


@dataclass(frozen=True)
class StatementLine:
    posting_id: int
    entry_id: int
    posted_at: datetime
    kind: str
    debit: Money
    credit: Money
    balance: Money


@dataclass(frozen=True)
class Statement:
    account_code: str
    start: datetime
    end: datetime
    opening: Money
    closing: Money
    lines: list[StatementLine]


def statement(account: Account, *, start: datetime, end: datetime) -> Statement:
    """Postings with ``start < posted_at <= end``, each with the balance after it."""
    lines = list(_statement_lines(account, start=start, end=end))
    opening = balance_at(account, start)
    return Statement(
        account_code=account.code,
        start=start,
        end=end,
        opening=opening,
        closing=lines[-1].balance if lines else opening,
        lines=lines,
    )


def _statement_lines(account: Account, *, start: datetime, end: datetime) -> Iterator[StatementLine]:
    rows = (
        Posting.objects.filter(account_id=account.pk, posted_at__gt=start, posted_at__lte=end)
        .order_by("posted_at", "id")
        .values_list("id", "entry_id", "posted_at", "entry__kind", "amount", "debits_after", "credits_after")
    )
    cur = account.currency
    for pid, entry_id, posted_at, kind, amount, dr_after, cr_after in rows.iterator(chunk_size=2000):
        yield StatementLine(
            posting_id=pid,
            entry_id=entry_id,
            posted_at=posted_at,
            kind=kind,
            debit=from_minor(max(amount, 0), cur),
            credit=from_minor(max(-amount, 0), cur),
            balance=from_minor(account.signed_balance(dr_after, cr_after), cur),
        )

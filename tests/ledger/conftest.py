"""Small fixtures for the ledger's tests: a custody chart of three accounts and helpers that count rows.

The chart mirrors the custody flows: ``cash`` is the supervised custody account (an asset that may never go
below zero), ``prepaid`` what a contract paid and has not consumed, ``payable`` what the institution earned
(liabilities that may never go below zero).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from moneyed import Money

from ledger import clock
from ledger.models import Account, ChainLink, Entry, PendingTransfer, Posting, UnsealedEntry
from ledger.money import cny
from ledger.services import open_account, transfer


@dataclass(frozen=True)
class Chart:
    cash: Account
    prepaid: Account
    payable: Account

    def refreshed(self) -> Chart:
        return Chart(
            cash=Account.objects.get(pk=self.cash.pk),
            prepaid=Account.objects.get(pk=self.prepaid.pk),
            payable=Account.objects.get(pk=self.payable.pk),
        )


@dataclass(frozen=True)
class RowCounts:
    entries: int
    postings: int
    pending: int
    unsealed: int
    links: int


def row_counts() -> RowCounts:
    return RowCounts(
        entries=Entry.objects.count(),
        postings=Posting.objects.count(),
        pending=PendingTransfer.objects.count(),
        unsealed=UnsealedEntry.objects.count(),
        links=ChainLink.objects.count(),
    )


@pytest.fixture(autouse=True)
def _reset_business_clock() -> Iterator[None]:
    """Tests may freeze or advance business time; none leaks into the next test."""
    clock.reset()
    yield
    clock.reset()


@pytest.fixture
def accounts() -> Chart:
    """custody_cash:i1 (an asset) and prepaid:c1, payable:i1 (liabilities), none allowed below zero."""
    return Chart(
        cash=open_account(
            code="custody_cash:i1", type="asset", limit="credits_must_not_exceed_debits", name="托管账户 i1"
        ),
        prepaid=open_account(
            code="prepaid:c1", type="liability", limit="debits_must_not_exceed_credits", name="预收 c1"
        ),
        payable=open_account(
            code="payable:i1", type="liability", limit="debits_must_not_exceed_credits", name="应付 i1"
        ),
    )


@pytest.fixture
def counts() -> Callable[[], RowCounts]:
    """``counts()`` snapshots how many entries, postings, holds, queued entries and chain links exist."""
    return row_counts


@pytest.fixture
def pay_in(accounts: Chart) -> Callable[..., Entry]:
    """A parent's payment into custody: Dr custody_cash / Cr prepaid (flow 1, settled)."""

    def pay(amount: Money | str, *, key: str) -> Entry:
        money = amount if isinstance(amount, Money) else cny(amount)
        return transfer(
            idempotency_key=key,
            kind="payment",
            debit_account=accounts.cash,
            credit_account=accounts.prepaid,
            amount=money,
        )

    return pay

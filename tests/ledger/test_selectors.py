"""``ledger.selectors``: the balance now (one row), the balance at a past moment, and statements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from django.test.utils import CaptureQueriesContext
from moneyed import Money

from ledger.models import Entry
from ledger.money import cny
from ledger.selectors import balance, balance_at, statement
from ledger.services import create_pending, post_pending, transfer
from tests.ledger.conftest import Chart

pytestmark = pytest.mark.django_db

MICROSECOND = timedelta(microseconds=1)


def release(chart: Chart, amount: str, *, key: str) -> Entry:
    return transfer(
        idempotency_key=key,
        kind="release",
        debit_account=chart.prepaid,
        credit_account=chart.payable,
        amount=cny(amount),
    )


@dataclass(frozen=True)
class History:
    """pay 100, release 30, pay 50, release 20, release 15: prepaid goes 100, 70, 120, 100, 85."""

    entries: list[Entry]

    def at(self, index: int) -> datetime:
        return self.entries[index].posted_at


@pytest.fixture
def history(accounts: Chart, pay_in: Callable[..., Entry]) -> History:
    entries = [
        pay_in("100", key="pay-1"),
        release(accounts, "30", key="release-1"),
        pay_in("50", key="pay-2"),
        release(accounts, "20", key="release-2"),
        release(accounts, "15", key="release-3"),
    ]
    moments = [e.posted_at for e in entries]
    assert moments == sorted(moments) and len(set(moments)) == len(moments), "entries need distinct times"
    return History(entries)


def test_balance_reads_the_materialized_totals(accounts: Chart, history: History) -> None:
    create_pending(
        idempotency_key="lesson-1",
        kind="lesson",
        debit_account=accounts.prepaid,
        credit_account=accounts.payable,
        amount=cny("25"),
    )

    prepaid = balance(accounts.prepaid)
    assert prepaid.account_code == "prepaid:c1"
    assert prepaid.posted == cny("85")
    assert prepaid.pending_debits == cny("25")
    assert prepaid.pending_credits == cny("0")
    assert prepaid.available == cny("60")
    payable = balance(accounts.payable)
    assert (payable.posted, payable.pending_credits, payable.available) == (cny("65"), cny("25"), cny("65"))
    cash = balance(accounts.cash)
    assert (cash.posted, cash.available) == (cny("150"), cny("150"))


def test_balance_is_one_query_at_any_history_size(
    accounts: Chart, history: History, django_assert_num_queries: Callable[..., CaptureQueriesContext]
) -> None:
    with django_assert_num_queries(1):
        small = balance(accounts.prepaid)
    for i in range(20):
        release(accounts, "1", key=f"more-{i}")
    with django_assert_num_queries(1):
        large = balance(accounts.prepaid)

    assert (small.posted, large.posted) == (cny("85"), cny("65"))


def test_balance_without_refresh_uses_the_row_it_is_given(accounts: Chart, history: History) -> None:
    stale = accounts.prepaid  # loaded before the history was posted

    assert balance(stale, refresh=False).posted == cny("0")
    assert balance(stale).posted == cny("85")


@pytest.mark.parametrize(
    ("moment", "prepaid", "payable", "cash"),
    [
        (lambda h: h.at(0) - MICROSECOND, "0", "0", "0"),
        (lambda h: h.at(0), "100", "0", "100"),
        (lambda h: h.at(1) - MICROSECOND, "100", "0", "100"),
        (lambda h: h.at(1), "70", "30", "100"),
        (lambda h: h.at(2) + (h.at(3) - h.at(2)) / 2, "120", "30", "150"),
        (lambda h: h.at(3), "100", "50", "150"),
        (lambda h: h.at(4) - MICROSECOND, "100", "50", "150"),
        (lambda h: h.at(4), "85", "65", "150"),
        (lambda h: h.at(4) + timedelta(days=365), "85", "65", "150"),
    ],
)
def test_balance_at_returns_the_historic_balance(
    accounts: Chart,
    history: History,
    moment: Callable[[History], datetime],
    prepaid: str,
    payable: str,
    cash: str,
) -> None:
    when = moment(history)

    assert balance_at(accounts.prepaid, when) == cny(prepaid)
    assert balance_at(accounts.payable, when) == cny(payable)
    assert balance_at(accounts.cash, when) == cny(cash)


def test_balance_at_is_posted_only_and_follows_transaction_time(accounts: Chart, history: History) -> None:
    backdated = transfer(
        idempotency_key="pay-backdated",
        kind="payment",
        debit_account=accounts.cash,
        credit_account=accounts.prepaid,
        amount=cny("7"),
        effective_at=history.at(0) - timedelta(days=30),
    )
    create_pending(
        idempotency_key="lesson-1",
        kind="lesson",
        debit_account=accounts.prepaid,
        credit_account=accounts.payable,
        amount=cny("40"),
    )

    # The value date is in the past, but the ledger learned of it just now.
    assert balance_at(accounts.prepaid, history.at(4)) == cny("85")
    assert balance_at(accounts.prepaid, backdated.posted_at) == cny("92")
    # Holds do not change the posted balance.
    assert balance_at(accounts.prepaid, backdated.posted_at + timedelta(days=1)) == cny("92")


def test_balance_at_of_a_batch_is_its_end_state(accounts: Chart, pay_in: Callable[..., Entry]) -> None:
    pay_in("100", key="pay-1")
    lesson = create_pending(
        idempotency_key="lesson-1",
        kind="lesson",
        debit_account=accounts.prepaid,
        credit_account=accounts.payable,
        amount=cny("40"),
    )
    posted = post_pending(transfer=lesson, idempotency_key="confirm-1", amount=cny("25"))

    assert balance_at(accounts.prepaid, posted.posted_at) == cny("75")
    assert balance_at(accounts.prepaid, posted.posted_at - MICROSECOND) == cny("100")


def test_statement_for_a_range_in_the_middle_of_history(accounts: Chart, history: History) -> None:
    result = statement(accounts.prepaid, start=history.at(1), end=history.at(3))

    assert result.account_code == "prepaid:c1"
    assert (result.start, result.end) == (history.at(1), history.at(3))
    assert result.opening == cny("70")
    assert result.closing == cny("100")
    lines = [(line.entry_id, line.kind, line.debit, line.credit, line.balance) for line in result.lines]
    assert lines == [
        (history.entries[2].pk, "payment", cny("0"), cny("50"), cny("120")),
        (history.entries[3].pk, "release", cny("20"), cny("0"), cny("100")),
    ]
    assert [line.posted_at for line in result.lines] == [history.at(2), history.at(3)]
    # Running balances chain: each line is the previous balance plus its credit minus its debit.
    running = result.opening
    for line in result.lines:
        running = running + line.credit - line.debit
        assert line.balance == running
    assert running == result.closing


def test_statement_of_an_asset_runs_on_the_debit_side(accounts: Chart, history: History) -> None:
    result = statement(accounts.cash, start=history.at(0) - MICROSECOND, end=history.at(4))

    assert result.opening == cny("0")
    assert [(line.debit, line.balance) for line in result.lines] == [
        (cny("100"), cny("100")),
        (cny("50"), cny("150")),
    ]
    assert result.closing == cny("150")


def test_statement_of_a_quiet_range_has_no_lines(accounts: Chart, history: History) -> None:
    result = statement(accounts.cash, start=history.at(3), end=history.at(4) + timedelta(hours=1))

    assert result.lines == []
    assert result.opening == result.closing == cny("150")


def test_statement_amounts_are_money_in_the_account_currency(accounts: Chart, history: History) -> None:
    result = statement(accounts.payable, start=history.at(0), end=history.at(4))

    assert all(
        isinstance(line.balance, Money) and line.balance.currency.code == "CNY" for line in result.lines
    )
    assert [line.credit for line in result.lines] == [cny("30"), cny("20"), cny("15")]
    assert result.closing == cny("65")

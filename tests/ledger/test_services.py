"""``ledger.services``: accounts, entries, idempotency, balance limits, batches and reversals.

Every test runs on SQLite and on PostgreSQL (the second CI pass) unless marked ``postgres``. On PostgreSQL a
single ``transfer`` or ``post_entry`` outside any transaction takes another path (one autocommit statement, no
savepoint, not through ``post_batch``); the ``transaction=True`` tests at the end cover it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import connection, transaction
from django.db.transaction import TransactionManagementError
from django.test.utils import CaptureQueriesContext
from moneyed import Money

from ledger import clock
from ledger.errors import (
    AccountConflict,
    AccountNotFound,
    CurrencyMismatch,
    IdempotencyConflict,
    InvalidAmount,
    InvalidEntry,
    LimitExceeded,
    ReversalError,
    UnbalancedEntry,
)
from ledger.models import Account, Entry, Posting
from ledger.money import cny
from ledger.selectors import balance
from ledger.services import (
    NewEntry,
    create_pending,
    credit,
    debit,
    open_account,
    post_batch,
    post_entry,
    reverse_entry,
    transfer,
)
from tests.ledger.conftest import Chart, RowCounts

pytestmark = pytest.mark.django_db

SHANGHAI = ZoneInfo("Asia/Shanghai")


def posted(account: Account) -> Money:
    return balance(account).posted


def release(chart: Chart, amount: str, *, key: str) -> Entry:
    """Lesson consumed: Dr prepaid / Cr payable."""
    return transfer(
        idempotency_key=key,
        kind="release",
        debit_account=chart.prepaid,
        credit_account=chart.payable,
        amount=cny(amount),
    )


def release_entry(chart: Chart, amount: str, *, key: str) -> NewEntry:
    return NewEntry(key, "release", [debit(chart.prepaid, cny(amount)), credit(chart.payable, cny(amount))])


# --- accounts -------------------------------------------------------------------------------------------


def test_open_account_creates_the_account_with_its_limit_and_zero_totals() -> None:
    account = open_account(
        code="prepaid:c9",
        type="liability",
        currency="cny",
        limit="debits_must_not_exceed_credits",
        name="预收",
    )

    stored = Account.objects.get(code="prepaid:c9")
    assert stored.pk == account.pk
    assert (stored.type, stored.currency, stored.name) == ("liability", "CNY", "预收")
    assert stored.debits_must_not_exceed_credits is True
    assert stored.credits_must_not_exceed_debits is False
    assert (stored.debits_posted, stored.credits_posted, stored.debits_pending, stored.credits_pending) == (
        0,
        0,
        0,
        0,
    )
    assert stored.posting_count == 0


def test_open_account_is_idempotent_by_code() -> None:
    first = open_account(code="payable:i9", type="liability", limit="debits_must_not_exceed_credits")
    again = open_account(
        code="payable:i9", type="liability", currency="CNY", limit="debits_must_not_exceed_credits", name="x"
    )

    assert again.pk == first.pk
    assert Account.objects.filter(code="payable:i9").count() == 1
    # The name is not part of the account's identity; the first one is kept.
    assert Account.objects.get(pk=first.pk).name == ""


@pytest.mark.parametrize(
    ("changes", "attribute"),
    [
        ({"type": "asset"}, "type"),
        ({"currency": "USD"}, "currency"),
        ({"limit": "none"}, "debits_must_not_exceed_credits"),
        ({"limit": "credits_must_not_exceed_debits"}, "credits_must_not_exceed_debits"),
    ],
)
def test_open_account_with_conflicting_attributes_raises(changes: dict[str, str], attribute: str) -> None:
    open_account(code="prepaid:c8", type="liability", limit="debits_must_not_exceed_credits")
    arguments = {"code": "prepaid:c8", "type": "liability", "limit": "debits_must_not_exceed_credits"}

    with pytest.raises(AccountConflict) as raised:
        open_account(**{**arguments, **changes})  # type: ignore[arg-type]

    assert raised.value.details == {"code": "prepaid:c8"}
    assert attribute in raised.value.message
    stored = Account.objects.get(code="prepaid:c8")
    assert (stored.type, stored.currency, stored.debits_must_not_exceed_credits) == ("liability", "CNY", True)


# --- transfer / post_entry ------------------------------------------------------------------------------


def test_transfer_moves_balances_on_each_accounts_normal_side(
    accounts: Chart, pay_in: Callable[..., Entry]
) -> None:
    pay_in("100.00", key="pay-1")
    release(accounts, "30.25", key="release-1")

    assert posted(accounts.cash) == cny("100.00")  # asset: debits - credits
    assert posted(accounts.prepaid) == cny("69.75")  # liability: credits - debits
    assert posted(accounts.payable) == cny("30.25")
    chart = accounts.refreshed()
    assert (chart.cash.debits_posted, chart.cash.credits_posted, chart.cash.posting_count) == (10000, 0, 1)
    assert (chart.prepaid.debits_posted, chart.prepaid.credits_posted, chart.prepaid.posting_count) == (
        3025,
        10000,
        2,
    )
    assert (chart.payable.debits_posted, chart.payable.credits_posted) == (0, 3025)


def test_transfer_writes_one_entry_with_signed_postings_and_running_totals(
    accounts: Chart, pay_in: Callable[..., Entry], counts: Callable[[], RowCounts]
) -> None:
    pay_in("100.00", key="pay-1")
    before = counts()

    entry = release(accounts, "40.00", key="release-1")

    after = counts()
    assert (after.entries - before.entries, after.postings - before.postings) == (1, 2)
    assert after.unsealed - before.unsealed == 1  # queued for the hash chain
    stored = Entry.objects.get(pk=entry.pk)
    assert (stored.idempotency_key, stored.kind) == ("release-1", "release")
    rows = sorted(
        Posting.objects.filter(entry=stored).values_list(
            "account__code", "amount", "debits_after", "credits_after"
        )
    )
    assert rows == [("payable:i1", -4000, 0, 4000), ("prepaid:c1", 4000, 4000, 10000)]
    assert all(p.posted_at == stored.posted_at for p in stored.postings.all())


def test_effective_at_defaults_to_posted_at_and_can_be_given(accounts: Chart) -> None:
    default = transfer(
        idempotency_key="pay-1",
        kind="payment",
        debit_account=accounts.cash,
        credit_account=accounts.prepaid,
        amount=cny("10"),
    )
    value_date = datetime(2026, 3, 2, 9, 30, tzinfo=SHANGHAI)
    dated = transfer(
        idempotency_key="pay-2",
        kind="payment",
        debit_account=accounts.cash,
        credit_account=accounts.prepaid,
        amount=cny("10"),
        effective_at=value_date,
    )

    stored_default = Entry.objects.get(pk=default.pk)
    assert stored_default.effective_at == stored_default.posted_at
    assert default.effective_at == stored_default.posted_at
    stored_dated = Entry.objects.get(pk=dated.pk)
    assert stored_dated.effective_at == value_date
    assert stored_dated.posted_at != value_date
    # What the call returned is what a read gives back, the same instant in the same zone.
    assert (dated.effective_at, dated.effective_at.utcoffset()) == (
        stored_dated.effective_at,
        stored_dated.effective_at.utcoffset(),
    )


def test_metadata_is_kept(accounts: Chart) -> None:
    metadata = {"contract": "c1", "lesson": 7, "备注": "第七课", "tags": ["a", "b"]}

    entry = transfer(
        idempotency_key="pay-1",
        kind="payment",
        debit_account=accounts.cash,
        credit_account=accounts.prepaid,
        amount=cny("1.00"),
        metadata=metadata,
    )

    assert entry.metadata == metadata
    assert Entry.objects.get(pk=entry.pk).metadata == metadata


def test_accounts_may_be_named_by_code(accounts: Chart) -> None:
    entry = transfer(
        idempotency_key="pay-1",
        kind="payment",
        debit_account="custody_cash:i1",
        credit_account="prepaid:c1",
        amount=cny("5.00"),
    )

    assert set(Posting.objects.filter(entry_id=entry.pk).values_list("account_id", flat=True)) == {
        accounts.cash.pk,
        accounts.prepaid.pk,
    }
    assert posted(accounts.prepaid) == cny("5.00")


def test_an_entry_may_have_more_than_two_legs(accounts: Chart, pay_in: Callable[..., Entry]) -> None:
    refund_payable = open_account(code="refund_payable:c1", type="liability")
    pay_in("100", key="pay-1")

    entry = post_entry(
        idempotency_key="split-1",
        kind="split",
        legs=[
            debit(accounts.prepaid, cny("100")),
            credit(accounts.payable, cny("60")),
            credit(refund_payable, cny("40")),
        ],
    )

    assert Posting.objects.filter(entry_id=entry.pk).count() == 3
    assert posted(accounts.prepaid) == cny("0")
    assert posted(accounts.payable) == cny("60")
    assert posted(refund_payable) == cny("40")


def test_entry_balancing_per_currency_may_mix_currencies(accounts: Chart) -> None:
    usd_cash = open_account(code="usd_cash", type="asset", currency="USD")
    usd_prepaid = open_account(code="usd_prepaid", type="liability", currency="USD")

    post_entry(
        idempotency_key="mixed-1",
        kind="payment",
        legs=[
            debit(accounts.cash, cny("10")),
            credit(accounts.prepaid, cny("10")),
            debit(usd_cash, Money("3.50", "USD")),
            credit(usd_prepaid, Money("3.50", "USD")),
        ],
    )

    assert posted(usd_prepaid) == Money("3.50", "USD")
    assert posted(accounts.prepaid) == cny("10")


# --- refused entries: nothing is written ----------------------------------------------------------------


def test_unbalanced_legs_are_refused(accounts: Chart, counts: Callable[[], RowCounts]) -> None:
    before = counts()

    with pytest.raises(UnbalancedEntry) as raised:
        post_entry(
            idempotency_key="bad-1",
            kind="payment",
            legs=[debit(accounts.cash, cny("10.00")), credit(accounts.prepaid, cny("9.99"))],
        )

    assert raised.value.details == {"currency": "CNY", "difference": 1}
    assert counts() == before


def test_legs_balanced_in_amount_but_not_per_currency_are_refused(accounts: Chart) -> None:
    usd_cash = open_account(code="usd_cash", type="asset", currency="USD")

    with pytest.raises(UnbalancedEntry):
        post_entry(
            idempotency_key="bad-1",
            kind="fx",
            legs=[debit(usd_cash, Money("10", "USD")), credit(accounts.prepaid, cny("10"))],
        )
    assert Entry.objects.count() == 0


def test_one_leg_is_refused(accounts: Chart) -> None:
    with pytest.raises(InvalidEntry, match="at least 2 postings"):
        post_entry(idempotency_key="bad-1", kind="payment", legs=[debit(accounts.cash, cny("10"))])
    with pytest.raises(InvalidEntry):
        post_entry(idempotency_key="bad-2", kind="payment", legs=[])
    assert Entry.objects.count() == 0


def test_the_same_account_twice_is_refused(accounts: Chart) -> None:
    with pytest.raises(InvalidEntry, match="appears twice") as raised:
        post_entry(
            idempotency_key="bad-1",
            kind="payment",
            legs=[
                debit(accounts.cash, cny("10")),
                credit(accounts.prepaid, cny("5")),
                credit(accounts.prepaid, cny("5")),
            ],
        )
    assert raised.value.details == {"account": "prepaid:c1"}
    assert Entry.objects.count() == 0


@pytest.mark.parametrize("key", ["", "k" * 201])
def test_an_idempotency_key_of_1_to_200_characters_is_required(accounts: Chart, key: str) -> None:
    with pytest.raises(InvalidEntry, match="idempotency key"):
        transfer(
            idempotency_key=key,
            kind="payment",
            debit_account=accounts.cash,
            credit_account=accounts.prepaid,
            amount=cny("1"),
        )
    assert Entry.objects.count() == 0


def test_a_currency_the_account_does_not_hold_is_refused(accounts: Chart) -> None:
    usd_cash = open_account(code="usd_cash", type="asset", currency="USD")

    with pytest.raises(CurrencyMismatch) as raised:
        transfer(
            idempotency_key="bad-1",
            kind="payment",
            debit_account=usd_cash,
            credit_account=accounts.prepaid,
            amount=cny("10"),
        )
    assert raised.value.details == {"account": "usd_cash"}

    with pytest.raises(CurrencyMismatch):
        transfer(
            idempotency_key="bad-2",
            kind="payment",
            debit_account=accounts.cash,
            credit_account=accounts.prepaid,
            amount=Money("10", "USD"),
        )
    assert Entry.objects.count() == 0


@pytest.mark.parametrize("amount", ["0", "-10.00", "0.00"])
def test_zero_and_negative_amounts_are_refused(accounts: Chart, amount: str) -> None:
    with pytest.raises(InvalidAmount):
        transfer(
            idempotency_key="bad-1",
            kind="payment",
            debit_account=accounts.cash,
            credit_account=accounts.prepaid,
            amount=cny(amount),
        )
    assert Entry.objects.count() == 0
    assert posted(accounts.cash) == cny("0")


def test_fractional_fen_is_refused_by_the_service(accounts: Chart) -> None:
    with pytest.raises(InvalidAmount, match="minor units"):
        transfer(
            idempotency_key="bad-1",
            kind="payment",
            debit_account=accounts.cash,
            credit_account=accounts.prepaid,
            amount=cny("10.001"),
        )
    assert Entry.objects.count() == 0


def test_an_unknown_account_code_is_refused(accounts: Chart) -> None:
    with pytest.raises(AccountNotFound) as raised:
        transfer(
            idempotency_key="bad-1",
            kind="payment",
            debit_account=accounts.cash,
            credit_account="prepaid:nobody",
            amount=cny("10"),
        )
    assert raised.value.details == {"code": "prepaid:nobody"}
    assert Entry.objects.count() == 0


# --- idempotency ----------------------------------------------------------------------------------------


def test_same_key_same_content_returns_the_first_entry_and_writes_nothing(
    accounts: Chart, pay_in: Callable[..., Entry], counts: Callable[[], RowCounts]
) -> None:
    first = pay_in("100", key="pay-1")
    before = counts()

    again = pay_in("100", key="pay-1")

    assert again.pk == first.pk
    assert again.posted_at == first.posted_at
    assert counts() == before
    assert posted(accounts.prepaid) == cny("100")


@pytest.mark.parametrize(
    "change",
    [
        {"amount": cny("100.01")},
        {"kind": "refund"},
        {"metadata": {"channel": "alipay"}},
        {"effective_at": datetime(2026, 1, 1, tzinfo=SHANGHAI)},
        {"credit_account": "payable:i1"},
    ],
)
def test_same_key_other_content_is_a_conflict_and_writes_nothing(
    accounts: Chart, counts: Callable[[], RowCounts], change: dict[str, object]
) -> None:
    original: dict[str, object] = {
        "idempotency_key": "pay-1",
        "kind": "payment",
        "debit_account": accounts.cash,
        "credit_account": accounts.prepaid,
        "amount": cny("100"),
    }
    transfer(**original)  # type: ignore[arg-type]
    before = counts()

    with pytest.raises(IdempotencyConflict) as raised:
        transfer(**{**original, **change})  # type: ignore[arg-type]

    assert raised.value.details == {"key": "pay-1"}
    assert counts() == before
    assert posted(accounts.prepaid) == cny("100")
    assert posted(accounts.payable) == cny("0")


def test_idempotency_works_inside_an_outer_atomic_block(
    accounts: Chart, pay_in: Callable[..., Entry], counts: Callable[[], RowCounts]
) -> None:
    with transaction.atomic():
        first = pay_in("50", key="pay-1")
        before = counts()
        assert pay_in("50", key="pay-1").pk == first.pk
        assert counts() == before
        with pytest.raises(IdempotencyConflict):
            pay_in("51", key="pay-1")
        # The outer transaction carries on after the conflict.
        pay_in("5", key="pay-2")

    assert Entry.objects.filter(idempotency_key__in=["pay-1", "pay-2"]).count() == 2
    assert posted(accounts.prepaid) == cny("55")


def test_a_replayed_key_is_replayed_after_the_balance_has_moved_on(
    accounts: Chart, pay_in: Callable[..., Entry]
) -> None:
    """Replaying returns the recorded result even when posting it now would break a limit."""
    pay_in("100", key="pay-1")
    first = release(accounts, "100", key="release-1")

    again = release(accounts, "100", key="release-1")

    assert again.pk == first.pk
    assert posted(accounts.prepaid) == cny("0")
    assert posted(accounts.payable) == cny("100")


# --- balance limits -------------------------------------------------------------------------------------


def test_a_liability_cannot_go_below_zero(
    accounts: Chart, pay_in: Callable[..., Entry], counts: Callable[[], RowCounts]
) -> None:
    pay_in("100", key="pay-1")
    before = counts()

    with pytest.raises(LimitExceeded) as raised:
        release(accounts, "100.01", key="release-1")

    assert raised.value.details == {"account": "prepaid:c1", "available": 10000, "requested": 10001}
    assert "prepaid:c1" in raised.value.message
    assert counts() == before
    assert posted(accounts.prepaid) == cny("100")
    assert posted(accounts.payable) == cny("0")


def test_a_liability_may_be_brought_exactly_to_zero(accounts: Chart, pay_in: Callable[..., Entry]) -> None:
    pay_in("100", key="pay-1")

    release(accounts, "100", key="release-1")

    assert posted(accounts.prepaid) == cny("0")


def test_custody_cash_cannot_go_below_zero(accounts: Chart, counts: Callable[[], RowCounts]) -> None:
    clearing = open_account(code="clearing:wechat", type="asset")
    before = counts()

    with pytest.raises(LimitExceeded) as raised:
        transfer(
            idempotency_key="out-1",
            kind="payout",
            debit_account=clearing,
            credit_account=accounts.cash,
            amount=cny("0.01"),
        )

    assert raised.value.details == {"account": "custody_cash:i1", "available": 0, "requested": 1}
    assert counts() == before


def test_accounts_without_a_limit_may_go_negative(accounts: Chart) -> None:
    clearing = open_account(code="clearing:wechat", type="asset")

    transfer(
        idempotency_key="pay-1",
        kind="payment",
        debit_account=clearing,
        credit_account=accounts.prepaid,
        amount=cny("10"),
    )
    transfer(
        idempotency_key="settle-1",
        kind="settlement",
        debit_account=accounts.cash,
        credit_account=clearing,
        amount=cny("25"),
    )

    assert posted(clearing) == cny("-15")


def test_pending_holds_count_against_the_limit(
    accounts: Chart, pay_in: Callable[..., Entry], counts: Callable[[], RowCounts]
) -> None:
    pay_in("100", key="pay-1")
    create_pending(
        idempotency_key="lesson-1",
        kind="lesson",
        debit_account=accounts.prepaid,
        credit_account=accounts.payable,
        amount=cny("80"),
    )
    before = counts()

    with pytest.raises(LimitExceeded) as raised:
        release(accounts, "20.01", key="release-1")

    assert raised.value.details == {"account": "prepaid:c1", "available": 2000, "requested": 2001}
    assert counts() == before
    release(accounts, "20", key="release-2")
    assert balance(accounts.prepaid).available == cny("0")


def test_a_refused_statement_leaves_the_outer_transaction_usable(
    accounts: Chart, pay_in: Callable[..., Entry]
) -> None:
    """The service wraps its statement in a savepoint, so a caller's transaction survives a LimitExceeded."""
    with transaction.atomic():
        pay_in("100", key="pay-1")
        with pytest.raises(LimitExceeded):
            release(accounts, "500", key="release-too-much")
        release(accounts, "30", key="release-1")
        assert Entry.objects.count() == 2

    assert posted(accounts.prepaid) == cny("70")
    assert posted(accounts.payable) == cny("30")
    assert not Entry.objects.filter(idempotency_key="release-too-much").exists()


# --- post_batch -----------------------------------------------------------------------------------------


def savepoints(queries: CaptureQueriesContext) -> int:
    return sum(1 for q in queries.captured_queries if q["sql"].startswith("SAVEPOINT"))


def test_batch_builds_its_entries_only_when_asked(accounts: Chart, pay_in: Callable[..., Entry]) -> None:
    pay_in("100", key="pay-1")
    post_batch(entries=[release_entry(accounts, "10", key="r-0")])

    result = post_batch(entries=[release_entry(accounts, "10", key=f"r-{i}") for i in range(3)])
    built_before = "entries" in vars(result)

    assert (result.created, result.replayed) == (2, 1)
    assert not built_before
    assert [e.idempotency_key for e in result.entries] == ["r-0", "r-1", "r-2"]
    assert result.entries[1] == Entry.objects.get(idempotency_key="r-1")
    assert result.entries is result.entries


def test_batch_in_a_callers_block_takes_one_savepoint(accounts: Chart, pay_in: Callable[..., Entry]) -> None:
    pay_in("100", key="pay-1")

    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        post_batch(entries=[release_entry(accounts, "10", key="r-1")])

    assert savepoints(queries) == 1
    assert posted(accounts.payable) == cny("10")


def test_batch_without_savepoint_takes_none_and_an_error_dooms_the_callers_block(
    accounts: Chart, pay_in: Callable[..., Entry]
) -> None:
    pay_in("100", key="pay-1")

    with transaction.atomic():
        with CaptureQueriesContext(connection) as queries:
            post_batch(entries=[release_entry(accounts, "10", key="r-1")], savepoint=False)
        with pytest.raises(LimitExceeded, match="within_credits"):
            post_batch(entries=[release_entry(accounts, "500", key="r-2")], savepoint=False)
        doomed = transaction.get_rollback()
        with pytest.raises(TransactionManagementError):
            Entry.objects.count()

    assert savepoints(queries) == 0
    assert doomed
    # The block rolled back as a whole: the first batch too, which had no savepoint of its own.
    assert sorted(Entry.objects.values_list("idempotency_key", flat=True)) == ["pay-1"]
    assert posted(accounts.payable) == cny("0")


def test_batch_without_savepoint_is_rollback_mode_only(accounts: Chart) -> None:
    with pytest.raises(ValueError, match="rollback"):
        post_batch(entries=[release_entry(accounts, "10", key="r-1")], on_error="skip", savepoint=False)


def test_batch_rollback_posts_everything_in_one_go(accounts: Chart, pay_in: Callable[..., Entry]) -> None:
    pay_in("100", key="pay-1")

    result = post_batch(
        entries=[release_entry(accounts, "10", key=f"r-{i}") for i in range(5)], on_error="rollback"
    )

    assert (result.created, result.replayed, result.failures) == (5, 0, [])
    assert [e.idempotency_key for e in result.entries] == [f"r-{i}" for i in range(5)]
    assert {e.pk for e in result.entries} == set(
        Entry.objects.filter(kind="release").values_list("pk", flat=True)
    )
    assert posted(accounts.prepaid) == cny("50")
    assert posted(accounts.payable) == cny("50")
    # One statement, one posting time.
    assert len({e.posted_at for e in result.entries}) == 1


def test_batch_rollback_with_one_invalid_entry_posts_nothing(
    accounts: Chart, pay_in: Callable[..., Entry], counts: Callable[[], RowCounts]
) -> None:
    pay_in("100", key="pay-1")
    before = counts()
    bad = NewEntry(
        "r-bad", "release", [debit(accounts.prepaid, cny("10")), credit(accounts.payable, cny("9"))]
    )

    with pytest.raises(UnbalancedEntry):
        post_batch(entries=[release_entry(accounts, "10", key="r-0"), bad], on_error="rollback")

    assert counts() == before


def test_batch_rollback_with_one_entry_over_the_limit_posts_nothing(
    accounts: Chart, pay_in: Callable[..., Entry], counts: Callable[[], RowCounts]
) -> None:
    pay_in("100", key="pay-1")
    before = counts()

    with pytest.raises(LimitExceeded) as raised:
        post_batch(
            entries=[release_entry(accounts, "60", key="r-0"), release_entry(accounts, "60", key="r-1")],
            on_error="rollback",
        )

    assert raised.value.details["account"] == "prepaid:c1"
    assert counts() == before
    assert posted(accounts.prepaid) == cny("100")


def test_batch_skip_posts_the_good_entries_and_reports_each_failure(
    accounts: Chart, pay_in: Callable[..., Entry], counts: Callable[[], RowCounts]
) -> None:
    pay_in("100", key="pay-1")
    usd_cash = open_account(code="usd_cash", type="asset", currency="USD")
    before = counts()
    entries = [
        release_entry(accounts, "10", key="r-0"),
        NewEntry("r-1", "release", [debit(accounts.prepaid, cny("10")), credit(accounts.payable, cny("9"))]),
        release_entry(accounts, "20", key="r-2"),
        release_entry(accounts, "500", key="r-3"),
        NewEntry("r-4", "release", [debit(usd_cash, cny("1")), credit(accounts.payable, cny("1"))]),
        NewEntry("r-5", "release", [debit(accounts.prepaid, cny("1"))]),
        release_entry(accounts, "0", key="r-6"),
        release_entry(accounts, "30", key="r-7"),
    ]

    result = post_batch(entries=entries, on_error="skip")

    failures = {f.index: (f.idempotency_key, type(f.error)) for f in result.failures}
    assert failures == {
        1: ("r-1", UnbalancedEntry),
        3: ("r-3", LimitExceeded),
        4: ("r-4", CurrencyMismatch),
        5: ("r-5", InvalidEntry),
        6: ("r-6", InvalidAmount),
    }
    limit_failure = next(f for f in result.failures if f.index == 3)
    assert limit_failure.error.details["account"] == "prepaid:c1"
    assert [e.idempotency_key for e in result.entries] == ["r-0", "r-2", "r-7"]
    assert (result.created, result.replayed) == (3, 0)
    after = counts()
    assert (after.entries - before.entries, after.postings - before.postings) == (3, 6)
    assert posted(accounts.prepaid) == cny("40")
    assert posted(accounts.payable) == cny("60")


def test_batch_skip_reports_an_unknown_account_as_a_failure(
    accounts: Chart, pay_in: Callable[..., Entry]
) -> None:
    pay_in("100", key="pay-1")
    unknown = NewEntry(
        "r-1", "release", [debit("prepaid:nobody", cny("1")), credit(accounts.payable, cny("1"))]
    )

    result = post_batch(entries=[release_entry(accounts, "10", key="r-0"), unknown], on_error="skip")

    assert [(f.index, type(f.error)) for f in result.failures] == [(1, AccountNotFound)]
    assert [e.idempotency_key for e in result.entries] == ["r-0"]


def test_a_key_repeated_in_one_batch_with_the_same_content_posts_once(
    accounts: Chart, pay_in: Callable[..., Entry], counts: Callable[[], RowCounts]
) -> None:
    pay_in("100", key="pay-1")
    before = counts()

    result = post_batch(
        entries=[
            release_entry(accounts, "10", key="r-0"),
            release_entry(accounts, "20", key="r-1"),
            release_entry(accounts, "10", key="r-0"),
        ]
    )

    assert [e.idempotency_key for e in result.entries] == ["r-0", "r-1"]
    assert result.created == 2
    assert result.failures == []
    assert counts().entries - before.entries == 2
    assert posted(accounts.payable) == cny("30")


def test_a_key_repeated_in_one_batch_with_other_content_fails_the_rollback_batch(
    accounts: Chart, pay_in: Callable[..., Entry], counts: Callable[[], RowCounts]
) -> None:
    pay_in("100", key="pay-1")
    before = counts()

    with pytest.raises(IdempotencyConflict, match="twice in one batch"):
        post_batch(
            entries=[release_entry(accounts, "10", key="r-0"), release_entry(accounts, "11", key="r-0")],
            on_error="rollback",
        )

    assert counts() == before


def test_a_key_repeated_in_one_batch_with_other_content_is_a_failure_in_skip_mode(
    accounts: Chart, pay_in: Callable[..., Entry]
) -> None:
    pay_in("100", key="pay-1")

    result = post_batch(
        entries=[
            release_entry(accounts, "10", key="r-0"),
            release_entry(accounts, "20", key="r-1"),
            release_entry(accounts, "11", key="r-0"),
        ],
        on_error="skip",
    )

    assert [(f.index, f.idempotency_key, type(f.error)) for f in result.failures] == [
        (2, "r-0", IdempotencyConflict)
    ]
    # The first use of the key wins and is posted once.
    stored = Entry.objects.get(idempotency_key="r-0")
    assert Posting.objects.get(entry=stored, account=accounts.payable).amount == -1000
    assert posted(accounts.payable) == cny("30")
    assert result.created == 2


def test_skip_mode_lists_the_entry_posted_under_a_key_that_later_conflicted(
    accounts: Chart, pay_in: Callable[..., Entry]
) -> None:
    pay_in("100", key="pay-1")

    result = post_batch(
        entries=[release_entry(accounts, "10", key="r-0"), release_entry(accounts, "11", key="r-0")],
        on_error="skip",
    )

    assert result.created == 1
    assert [e.idempotency_key for e in result.entries] == ["r-0"]


def test_replays_of_an_earlier_batch_are_counted_as_replayed(
    accounts: Chart, pay_in: Callable[..., Entry], counts: Callable[[], RowCounts]
) -> None:
    pay_in("100", key="pay-1")
    first = post_batch(entries=[release_entry(accounts, "10", key=f"r-{i}") for i in range(3)])
    before = counts()

    second = post_batch(entries=[release_entry(accounts, "10", key=f"r-{i}") for i in range(4)])

    assert (second.created, second.replayed, second.failures) == (1, 3, [])
    assert [e.pk for e in second.entries[:3]] == [e.pk for e in first.entries]
    after = counts()
    assert (after.entries - before.entries, after.postings - before.postings) == (1, 2)
    assert posted(accounts.payable) == cny("40")


def test_a_batch_replaying_a_key_with_other_content_is_refused(
    accounts: Chart, pay_in: Callable[..., Entry], counts: Callable[[], RowCounts]
) -> None:
    pay_in("100", key="pay-1")
    post_batch(entries=[release_entry(accounts, "10", key="r-0")])
    before = counts()

    with pytest.raises(IdempotencyConflict, match="used before"):
        post_batch(
            entries=[release_entry(accounts, "5", key="r-new"), release_entry(accounts, "99", key="r-0")]
        )
    assert counts() == before

    skipped = post_batch(
        entries=[release_entry(accounts, "5", key="r-new"), release_entry(accounts, "99", key="r-0")],
        on_error="skip",
    )
    assert [(f.index, type(f.error)) for f in skipped.failures] == [(1, IdempotencyConflict)]
    assert [e.idempotency_key for e in skipped.entries] == ["r-new"]
    assert posted(accounts.payable) == cny("15")


def test_batch_limits_apply_to_the_net_effect_per_account(
    accounts: Chart, counts: Callable[[], RowCounts]
) -> None:
    """Batch-net semantics: a batch is one statement and the balance limits are checked on each account's
    net change over the whole batch, not entry by entry. Here prepaid:c1 starts at zero; the first entry alone
    would overdraw it, but the same batch pays 100 in, so the batch is accepted."""
    before = counts()

    result = post_batch(
        entries=[
            release_entry(accounts, "100", key="r-0"),
            NewEntry(
                "pay-1", "payment", [debit(accounts.cash, cny("100")), credit(accounts.prepaid, cny("100"))]
            ),
        ]
    )

    assert result.created == 2
    assert counts().entries - before.entries == 2
    assert posted(accounts.prepaid) == cny("0")
    assert posted(accounts.payable) == cny("100")
    assert posted(accounts.cash) == cny("100")


def test_a_batch_whose_net_effect_breaks_a_limit_is_refused(
    accounts: Chart, counts: Callable[[], RowCounts]
) -> None:
    """Batch-net semantics, other side: paying in 100 and releasing 100.01 in one batch still overdraws."""
    before = counts()

    with pytest.raises(LimitExceeded):
        post_batch(
            entries=[
                release_entry(accounts, "100.01", key="r-0"),
                NewEntry(
                    "pay-1",
                    "payment",
                    [debit(accounts.cash, cny("100")), credit(accounts.prepaid, cny("100"))],
                ),
            ]
        )

    assert counts() == before


def test_an_empty_batch_posts_nothing(accounts: Chart, counts: Callable[[], RowCounts]) -> None:
    before = counts()

    result = post_batch(entries=[])

    assert (result.entries, result.created, result.replayed, result.failures) == ([], 0, 0, [])
    assert counts() == before


# --- reverse_entry --------------------------------------------------------------------------------------


def test_reverse_entry_posts_mirror_postings_and_restores_balances(
    accounts: Chart, pay_in: Callable[..., Entry]
) -> None:
    pay_in("100", key="pay-1")
    original = release(accounts, "30", key="release-1")

    reversal = reverse_entry(entry=original, idempotency_key="rev-1", reason="录错课时 wrong lesson")

    stored = Entry.objects.get(pk=reversal.pk)
    assert stored.reverses_id == original.pk
    assert stored.kind == "reversal"
    assert stored.metadata == {"reason": "录错课时 wrong lesson", "reverses_kind": "release"}
    mirrored = dict(Posting.objects.filter(entry=stored).values_list("account_id", "amount"))
    originals = dict(Posting.objects.filter(entry_id=original.pk).values_list("account_id", "amount"))
    assert mirrored == {account_id: -amount for account_id, amount in originals.items()}
    assert posted(accounts.prepaid) == cny("100")
    assert posted(accounts.payable) == cny("0")
    # History is kept: both entries stay, each account carries both postings.
    chart = accounts.refreshed()
    assert (chart.prepaid.debits_posted, chart.prepaid.credits_posted) == (3000, 13000)


def test_reversing_again_with_the_same_key_replays(
    accounts: Chart, pay_in: Callable[..., Entry], counts: Callable[[], RowCounts]
) -> None:
    original = pay_in("100", key="pay-1")
    first = reverse_entry(entry=original, idempotency_key="rev-1", reason="duplicate payment")
    before = counts()

    again = reverse_entry(entry=original, idempotency_key="rev-1", reason="duplicate payment")

    assert again.pk == first.pk
    assert counts() == before
    with pytest.raises(IdempotencyConflict):
        reverse_entry(entry=original, idempotency_key="rev-1", reason="another reason")


def test_reversing_twice_is_refused(
    accounts: Chart, pay_in: Callable[..., Entry], counts: Callable[[], RowCounts]
) -> None:
    pay_in("100", key="pay-1")
    duplicate = pay_in("100", key="pay-2")
    reverse_entry(entry=duplicate, idempotency_key="rev-1", reason="duplicate payment")
    before = counts()

    with pytest.raises(ReversalError, match="already reversed") as raised:
        reverse_entry(entry=duplicate, idempotency_key="rev-2", reason="duplicate payment")

    assert raised.value.details == {"entry_id": duplicate.pk}
    assert counts() == before
    assert posted(accounts.cash) == cny("100")
    assert posted(accounts.prepaid) == cny("100")


def test_reversing_twice_is_a_reversal_error_even_when_it_would_also_overdraw(
    accounts: Chart, pay_in: Callable[..., Entry]
) -> None:
    original = pay_in("100", key="pay-1")
    reverse_entry(entry=original, idempotency_key="rev-1", reason="duplicate payment")

    try:
        reverse_entry(entry=original, idempotency_key="rev-2", reason="duplicate payment")
    except LimitExceeded as error:
        raise AssertionError(
            f"a second reversal was reported as {error.code}, not reversal_not_allowed"
        ) from None
    except ReversalError:
        pass
    else:
        raise AssertionError("a second reversal was accepted")


def test_reversing_a_reversal_is_refused(accounts: Chart, pay_in: Callable[..., Entry]) -> None:
    original = pay_in("100", key="pay-1")
    reversal = reverse_entry(entry=original, idempotency_key="rev-1", reason="duplicate payment")

    with pytest.raises(ReversalError, match="itself a reversal"):
        reverse_entry(entry=reversal, idempotency_key="rev-2", reason="undo the undo")
    with pytest.raises(ReversalError):
        reverse_entry(entry=Entry.objects.get(pk=reversal.pk), idempotency_key="rev-3", reason="again")
    assert Entry.objects.count() == 2


def test_a_reversal_that_would_break_a_limit_is_refused(
    accounts: Chart, pay_in: Callable[..., Entry]
) -> None:
    payment = pay_in("100", key="pay-1")
    release(accounts, "60", key="release-1")

    with pytest.raises(LimitExceeded) as raised:
        reverse_entry(entry=payment, idempotency_key="rev-1", reason="chargeback")

    assert raised.value.details["account"] == "prepaid:c1"
    assert not Entry.objects.filter(reverses_id=payment.pk).exists()


# --- PostgreSQL: one entry outside a transaction is one autocommit statement -----------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_autocommit_transfer_replay_and_conflict(accounts: Chart, counts: Callable[[], RowCounts]) -> None:
    first = transfer(
        idempotency_key="pay-1",
        kind="payment",
        debit_account=accounts.cash,
        credit_account=accounts.prepaid,
        amount=cny("100"),
    )
    before = counts()

    again = transfer(
        idempotency_key="pay-1",
        kind="payment",
        debit_account=accounts.cash,
        credit_account=accounts.prepaid,
        amount=cny("100"),
    )
    with pytest.raises(IdempotencyConflict):
        transfer(
            idempotency_key="pay-1",
            kind="payment",
            debit_account=accounts.cash,
            credit_account=accounts.prepaid,
            amount=cny("1"),
        )

    assert again.pk == first.pk
    assert counts() == before
    assert posted(accounts.prepaid) == cny("100")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_autocommit_entry_of_three_postings_returns_what_a_read_gives_and_replays(
    accounts: Chart, counts: Callable[[], RowCounts]
) -> None:
    legs = [
        debit(accounts.cash, cny("100")),
        credit(accounts.prepaid, cny("70")),
        credit(accounts.payable, cny("30")),
    ]
    dated = datetime(2026, 3, 2, 9, 30, tzinfo=ZoneInfo("Asia/Shanghai"))

    entry = post_entry(idempotency_key="split-1", kind="payment", legs=legs, effective_at=dated)
    before = counts()
    again = post_entry(idempotency_key="split-1", kind="payment", legs=legs, effective_at=dated)

    stored = Entry.objects.get(pk=entry.pk)
    fields = ("pk", "idempotency_key", "request_hash", "kind", "posted_at", "effective_at", "metadata")
    assert [getattr(entry, f) for f in fields] == [getattr(stored, f) for f in fields]
    assert entry.effective_at.utcoffset() == stored.effective_at.utcoffset()
    assert again.pk == entry.pk and counts() == before
    assert sorted(stored.postings.values_list("amount", flat=True)) == [-7000, -3000, 10000]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_autocommit_transfer_over_the_limit_is_explained_and_writes_nothing(
    accounts: Chart, counts: Callable[[], RowCounts]
) -> None:
    transfer(
        idempotency_key="pay-1",
        kind="payment",
        debit_account=accounts.cash,
        credit_account=accounts.prepaid,
        amount=cny("100"),
    )
    before = counts()

    with pytest.raises(LimitExceeded) as raised:
        release(accounts, "150", key="release-1")

    assert raised.value.details == {"account": "prepaid:c1", "available": 10000, "requested": 15000}
    assert counts() == before
    release(accounts, "100", key="release-2")
    assert posted(accounts.prepaid) == cny("0")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_refused_statement_leaves_a_real_outer_transaction_usable(
    accounts: Chart, pay_in: Callable[..., Entry]
) -> None:
    """As above, but the caller's block is a real transaction (no test wrapper): without the service's
    savepoint PostgreSQL would abort it and refuse every later statement until ROLLBACK."""
    with transaction.atomic():
        pay_in("100", key="pay-1")
        with pytest.raises(LimitExceeded):
            release(accounts, "500", key="release-too-much")
        release(accounts, "30", key="release-1")

    assert sorted(Entry.objects.values_list("idempotency_key", flat=True)) == ["pay-1", "release-1"]
    assert posted(accounts.prepaid) == cny("70")


def test_posted_at_comes_from_the_database_clock_not_business_time(accounts: Chart) -> None:
    clock.advance(timedelta(days=400))

    entry = transfer(
        idempotency_key="pay-1",
        kind="payment",
        debit_account=accounts.cash,
        credit_account=accounts.prepaid,
        amount=cny("1"),
    )

    assert abs(Entry.objects.get(pk=entry.pk).posted_at - (clock.now() - timedelta(days=400))) < timedelta(
        minutes=5
    )

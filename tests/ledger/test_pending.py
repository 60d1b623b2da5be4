"""Pending (two-phase) transfers: holds that reserve funds, then are posted in full or in part, voided or
expired, each exactly once, one at a time or in batches."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from django.db import connection, transaction
from moneyed import Money

from ledger import backends, clock, services
from ledger.canonical import post_pending_request_hash, request_hash
from ledger.errors import (
    CurrencyMismatch,
    IdempotencyConflict,
    InvalidAmount,
    InvalidEntry,
    LimitExceeded,
    PendingTransferError,
    ReversalError,
)
from ledger.models import Account, Entry, PendingTransfer, Posting
from ledger.money import cny
from ledger.selectors import balance
from ledger.services import (
    NewPending,
    Resolution,
    create_pending,
    create_pending_batch,
    expire_pending,
    open_account,
    post_pending,
    resolve_pending_batch,
    reverse_entry,
    transfer,
    void_pending,
)
from ledger.verification import (
    Report,
    check_entries_balance,
    check_limits,
    check_materialized_totals,
    check_pending_transfers,
)
from tests.ledger.conftest import Chart, RowCounts

pytestmark = pytest.mark.django_db


def hold(chart: Chart, amount: str, *, key: str, **kwargs: object) -> PendingTransfer:
    """A recorded lesson: pending Dr prepaid / Cr payable."""
    return create_pending(
        idempotency_key=key,
        kind="lesson",
        debit_account=chart.prepaid,
        credit_account=chart.payable,
        amount=cny(amount),
        **kwargs,  # type: ignore[arg-type]
    )


def totals(account: Account) -> tuple[int, int, int, int]:
    a = Account.objects.get(pk=account.pk)
    return (a.debits_posted, a.credits_posted, a.debits_pending, a.credits_pending)


@pytest.fixture
def funded(accounts: Chart, pay_in: Callable[..., Entry]) -> Chart:
    """The chart after a 100.00 payment: cash 100, prepaid 100, payable 0."""
    pay_in("100", key="pay-1")
    return accounts


# --- create ---------------------------------------------------------------------------------------------


def test_create_pending_moves_pending_totals_and_shrinks_available(
    funded: Chart, counts: Callable[[], RowCounts]
) -> None:
    before = counts()

    p = hold(funded, "30", key="lesson-1", metadata={"lesson": 1})

    stored = PendingTransfer.objects.get(pk=p.pk)
    assert (stored.state, stored.amount, stored.currency, stored.kind) == ("pending", 3000, "CNY", "lesson")
    assert (stored.debit_account_id, stored.credit_account_id) == (funded.prepaid.pk, funded.payable.pk)
    assert stored.metadata == {"lesson": 1}
    assert stored.resolved_at is None and stored.posted_amount is None and stored.resolution_key is None
    assert totals(funded.prepaid) == (0, 10000, 3000, 0)
    assert totals(funded.payable) == (0, 0, 0, 3000)
    prepaid = balance(funded.prepaid)
    assert (prepaid.posted, prepaid.pending_debits, prepaid.available) == (cny("100"), cny("30"), cny("70"))
    payable = balance(funded.payable)
    assert (payable.posted, payable.pending_credits, payable.available) == (cny("0"), cny("30"), cny("0"))
    after = counts()
    # A hold writes no entry and no posting.
    assert (after.pending - before.pending, after.entries, after.postings) == (
        1,
        before.entries,
        before.postings,
    )


def test_create_pending_is_idempotent(funded: Chart, counts: Callable[[], RowCounts]) -> None:
    first = hold(funded, "30", key="lesson-1")
    before = counts()

    again = hold(funded, "30", key="lesson-1")

    assert again.pk == first.pk
    assert counts() == before
    assert totals(funded.prepaid)[2] == 3000
    with pytest.raises(IdempotencyConflict):
        hold(funded, "31", key="lesson-1")
    with pytest.raises(IdempotencyConflict):
        hold(funded, "30", key="lesson-1", metadata={"lesson": 2})
    assert counts() == before
    assert totals(funded.prepaid)[2] == 3000


def test_a_hold_past_the_available_balance_is_refused(funded: Chart, counts: Callable[[], RowCounts]) -> None:
    hold(funded, "70", key="lesson-1")
    before = counts()

    with pytest.raises(LimitExceeded) as raised:
        hold(funded, "30.01", key="lesson-2")

    assert raised.value.details == {"account": "prepaid:c1", "available": 3000, "requested": 3001}
    assert counts() == before
    assert totals(funded.prepaid) == (0, 10000, 7000, 0)


def test_a_hold_crediting_custody_cash_counts_against_its_limit(funded: Chart) -> None:
    """Pending outflows from the asset (credits) reserve its balance, as pending debits do on a liability."""
    clearing = open_account(code="clearing:bank", type="asset")
    create_pending(
        idempotency_key="out-1",
        kind="payout",
        debit_account=clearing,
        credit_account=funded.cash,
        amount=cny("60"),
    )

    assert totals(funded.cash) == (10000, 0, 0, 6000)
    assert balance(funded.cash).available == cny("40")
    assert balance(funded.cash).posted == cny("100")
    with pytest.raises(LimitExceeded) as raised:
        transfer(
            idempotency_key="out-2",
            kind="payout",
            debit_account=clearing,
            credit_account=funded.cash,
            amount=cny("40.01"),
        )
    assert raised.value.details == {"account": "custody_cash:i1", "available": 4000, "requested": 4001}


@pytest.mark.parametrize("amount", ["0", "-5"])
def test_a_hold_must_be_positive(funded: Chart, amount: str) -> None:
    with pytest.raises(InvalidAmount):
        hold(funded, amount, key="lesson-1")
    assert PendingTransfer.objects.count() == 0


def test_a_hold_needs_two_accounts_in_its_currency(funded: Chart) -> None:
    usd = open_account(code="usd_prepaid", type="liability", currency="USD")
    with pytest.raises(InvalidEntry):
        create_pending(
            idempotency_key="p-1",
            kind="lesson",
            debit_account=funded.prepaid,
            credit_account=funded.prepaid,
            amount=cny("1"),
        )
    with pytest.raises(CurrencyMismatch):
        create_pending(
            idempotency_key="p-2",
            kind="lesson",
            debit_account=usd,
            credit_account=funded.payable,
            amount=cny("1"),
        )
    with pytest.raises(CurrencyMismatch):
        create_pending(
            idempotency_key="p-3",
            kind="lesson",
            debit_account=funded.prepaid,
            credit_account=funded.payable,
            amount=Money("1", "USD"),
        )
    assert PendingTransfer.objects.count() == 0


# --- post -----------------------------------------------------------------------------------------------


def test_post_in_full_moves_the_posted_balances_and_clears_the_hold(
    funded: Chart, counts: Callable[[], RowCounts]
) -> None:
    p = hold(funded, "30", key="lesson-1", metadata={"lesson": 1})
    before = counts()

    entry = post_pending(transfer=p, idempotency_key="confirm-1", metadata={"confirmed_by": "parent"})

    stored = PendingTransfer.objects.get(pk=p.pk)
    assert (stored.state, stored.posted_amount, stored.resolution_key) == ("posted", 3000, "confirm-1")
    assert stored.resolved_at is not None
    assert entry.pending_transfer_id == p.pk
    assert (entry.idempotency_key, entry.kind) == ("confirm-1", "lesson")
    assert entry.metadata == {"lesson": 1, "confirmed_by": "parent"}
    assert dict(Posting.objects.filter(entry=entry).values_list("account_id", "amount")) == {
        funded.prepaid.pk: 3000,
        funded.payable.pk: -3000,
    }
    assert totals(funded.prepaid) == (3000, 10000, 0, 0)
    assert totals(funded.payable) == (0, 3000, 0, 0)
    assert balance(funded.prepaid).available == cny("70")
    after = counts()
    assert (after.entries - before.entries, after.postings - before.postings) == (1, 2)


def test_post_part_releases_the_rest_and_moves_only_the_posted_amount(funded: Chart) -> None:
    p = hold(funded, "30", key="lesson-1")

    entry = post_pending(transfer=p, idempotency_key="confirm-1", amount=cny("12.50"))

    assert PendingTransfer.objects.get(pk=p.pk).posted_amount == 1250
    assert Posting.objects.get(entry=entry, account=funded.payable).amount == -1250
    assert totals(funded.prepaid) == (1250, 10000, 0, 0)
    assert totals(funded.payable) == (0, 1250, 0, 0)
    assert balance(funded.prepaid).available == cny("87.50")


def test_a_post_that_adds_no_metadata_keeps_the_holds(funded: Chart) -> None:
    """The hold's metadata goes into the entry as the database returned it (PostgreSQL) or decoded (SQLite),
    and the request hash is the generic encoder's, so the post replays."""
    p = hold(funded, "30", key="lesson-1", metadata={"lesson": 1, "note": '数学 "A"'})

    entry = post_pending(transfer=p, idempotency_key="confirm-1")

    stored = Entry.objects.get(pk=entry.pk)
    assert stored.metadata == {"lesson": 1, "note": '数学 "A"'}
    assert stored.request_hash == request_hash({"op": "post_pending", "transfer": p.pk, "amount": 3000})
    assert post_pending(transfer=p, idempotency_key="confirm-1").pk == entry.pk


def test_replaying_a_post_with_its_key_returns_the_same_entry(
    funded: Chart, counts: Callable[[], RowCounts]
) -> None:
    p = hold(funded, "30", key="lesson-1")
    first = post_pending(transfer=p, idempotency_key="confirm-1", amount=cny("10"))
    before = counts()

    again = post_pending(transfer=p, idempotency_key="confirm-1", amount=cny("10"))

    assert again.pk == first.pk
    assert counts() == before
    assert totals(funded.payable) == (0, 1000, 0, 0)


def test_replaying_a_post_with_its_key_and_another_amount_is_a_conflict(
    funded: Chart, counts: Callable[[], RowCounts]
) -> None:
    p = hold(funded, "30", key="lesson-1")
    post_pending(transfer=p, idempotency_key="confirm-1", amount=cny("10"))
    before = counts()

    with pytest.raises(IdempotencyConflict) as raised:
        post_pending(transfer=p, idempotency_key="confirm-1", amount=cny("20"))

    assert raised.value.details == {"key": "confirm-1"}
    assert counts() == before
    assert PendingTransfer.objects.get(pk=p.pk).posted_amount == 1000


def test_replaying_a_partial_post_as_a_full_post_is_a_conflict(funded: Chart) -> None:
    p = hold(funded, "30", key="lesson-1")
    post_pending(transfer=p, idempotency_key="confirm-1", amount=cny("10"))

    with pytest.raises(IdempotencyConflict):
        post_pending(transfer=p, idempotency_key="confirm-1")


def test_post_with_a_key_an_entry_already_uses_is_refused_and_the_hold_stays(funded: Chart) -> None:
    p = hold(funded, "30", key="lesson-1")

    with pytest.raises(IdempotencyConflict):
        post_pending(transfer=p, idempotency_key="pay-1")

    stored = PendingTransfer.objects.get(pk=p.pk)
    assert (stored.state, stored.resolution_key) == ("pending", None)
    assert totals(funded.prepaid) == (0, 10000, 3000, 0)


@pytest.mark.parametrize("action", ["void", "post"])
def test_a_resolution_key_reused_on_another_hold_is_a_conflict(funded: Chart, action: str) -> None:
    first = hold(funded, "10", key="lesson-1")
    second = hold(funded, "10", key="lesson-2")
    void_pending(transfer=first, idempotency_key="resolve-1")

    with pytest.raises(IdempotencyConflict):
        if action == "void":
            void_pending(transfer=second, idempotency_key="resolve-1")
        else:
            post_pending(transfer=second, idempotency_key="resolve-1")


def test_a_posted_hold_is_corrected_by_reversing_its_entry_once(funded: Chart) -> None:
    """A confirmed lesson overturned later (a regulator's ruling) is corrected with a reversing entry."""
    p = hold(funded, "30", key="lesson-1")
    prepaid_before = balance(funded.prepaid).posted
    entry = post_pending(transfer=p, idempotency_key="confirm-1")
    assert balance(funded.payable).posted == cny("30")

    reversal = reverse_entry(entry=entry, idempotency_key="rev-1", reason="lesson not given")

    assert reversal.reverses_id == entry.pk
    assert balance(funded.payable).posted == cny("0")
    assert balance(funded.prepaid).posted == prepaid_before
    assert reverse_entry(entry=entry, idempotency_key="rev-1", reason="lesson not given").pk == reversal.pk
    with pytest.raises(ReversalError, match="already reversed"):
        reverse_entry(entry=entry, idempotency_key="rev-2", reason="again")


def test_an_expired_hold_cannot_be_posted_even_before_the_expiry_job(funded: Chart) -> None:
    p = hold(funded, "30", key="lesson-1", expires_at=clock.now() + timedelta(hours=1))
    clock.advance(timedelta(hours=1))

    with pytest.raises(PendingTransferError, match="expired"):
        post_pending(transfer=p, idempotency_key="confirm-1")
    assert PendingTransfer.objects.get(pk=p.pk).state == PendingTransfer.State.PENDING


# --- void and expire ------------------------------------------------------------------------------------


def test_void_releases_the_hold_and_posts_nothing(funded: Chart, counts: Callable[[], RowCounts]) -> None:
    p = hold(funded, "30", key="lesson-1")
    before = counts()

    voided = void_pending(transfer=p, idempotency_key="dispute-upheld-1")

    assert (voided.state, voided.posted_amount, voided.resolution_key) == ("voided", None, "dispute-upheld-1")
    assert voided.resolved_at is not None
    assert totals(funded.prepaid) == (0, 10000, 0, 0)
    assert totals(funded.payable) == (0, 0, 0, 0)
    assert balance(funded.prepaid).available == cny("100")
    after = counts()
    assert (after.entries, after.postings) == (before.entries, before.postings)
    # Replaying the void changes nothing.
    assert void_pending(transfer=p, idempotency_key="dispute-upheld-1").state == "voided"
    assert totals(funded.prepaid) == (0, 10000, 0, 0)


def test_expire_pending_expires_only_holds_past_their_expiry(funded: Chart) -> None:
    now = clock.now()
    soon = hold(funded, "10", key="lesson-1", expires_at=now + timedelta(hours=1))
    later = hold(funded, "20", key="lesson-2", expires_at=now + timedelta(hours=3))
    never = hold(funded, "30", key="lesson-3")
    posted_early = hold(funded, "5", key="lesson-4", expires_at=now + timedelta(minutes=30))
    post_pending(transfer=posted_early, idempotency_key="confirm-4")

    assert expire_pending(now=now + timedelta(minutes=59)) == 0
    assert expire_pending(now=now + timedelta(hours=2)) == 1

    states = dict(PendingTransfer.objects.values_list("idempotency_key", "state"))
    assert states == {
        "lesson-1": "expired",
        "lesson-2": "pending",
        "lesson-3": "pending",
        "lesson-4": "posted",
    }
    expired = PendingTransfer.objects.get(pk=soon.pk)
    assert (expired.resolution_key, expired.posted_amount) == (None, None)
    assert totals(funded.prepaid) == (500, 10000, 5000, 0)
    # Running the job again finds nothing new; later holds expire when their time comes.
    assert expire_pending(now=now + timedelta(hours=2)) == 0
    assert expire_pending(now=now + timedelta(hours=3)) == 1
    assert PendingTransfer.objects.get(pk=later.pk).state == "expired"
    assert PendingTransfer.objects.get(pk=never.pk).state == "pending"
    assert totals(funded.prepaid) == (500, 10000, 3000, 0)


def test_expire_pending_uses_business_time_by_default(funded: Chart) -> None:
    p = hold(funded, "10", key="lesson-1", expires_at=clock.now() + timedelta(days=15))

    assert expire_pending() == 0
    clock.advance(timedelta(days=15, seconds=1))
    assert expire_pending() == 1
    assert PendingTransfer.objects.get(pk=p.pk).state == "expired"


# --- illegal transitions --------------------------------------------------------------------------------


def test_post_after_void_is_refused(funded: Chart, counts: Callable[[], RowCounts]) -> None:
    p = hold(funded, "30", key="lesson-1")
    void_pending(transfer=p, idempotency_key="void-1")
    before = counts()

    with pytest.raises(PendingTransferError, match="already voided") as raised:
        post_pending(transfer=p, idempotency_key="confirm-1")

    assert raised.value.details == {"transfer_id": p.pk, "state": "voided"}
    assert counts() == before
    assert totals(funded.prepaid) == (0, 10000, 0, 0)


def test_void_after_post_is_refused(funded: Chart) -> None:
    p = hold(funded, "30", key="lesson-1")
    post_pending(transfer=p, idempotency_key="confirm-1")

    with pytest.raises(PendingTransferError, match="already posted"):
        void_pending(transfer=p, idempotency_key="void-1")

    assert PendingTransfer.objects.get(pk=p.pk).state == "posted"
    assert totals(funded.payable) == (0, 3000, 0, 0)


def test_posting_twice_with_different_keys_is_refused(funded: Chart, counts: Callable[[], RowCounts]) -> None:
    p = hold(funded, "30", key="lesson-1")
    post_pending(transfer=p, idempotency_key="confirm-1", amount=cny("10"))
    before = counts()

    with pytest.raises(PendingTransferError):
        post_pending(transfer=p, idempotency_key="confirm-2", amount=cny("10"))

    assert counts() == before
    assert totals(funded.payable) == (0, 1000, 0, 0)


def test_post_after_expiry_is_refused(funded: Chart) -> None:
    p = hold(funded, "30", key="lesson-1", expires_at=clock.now() + timedelta(hours=1))
    expire_pending(now=clock.now() + timedelta(hours=2))

    with pytest.raises(PendingTransferError, match="already expired"):
        post_pending(transfer=p, idempotency_key="confirm-1")
    assert totals(funded.payable) == (0, 0, 0, 0)


@pytest.mark.parametrize("amount", ["30.01", "0", "-1"])
def test_posting_more_than_held_or_nothing_is_refused(
    funded: Chart, counts: Callable[[], RowCounts], amount: str
) -> None:
    p = hold(funded, "30", key="lesson-1")
    before = counts()

    with pytest.raises(PendingTransferError, match="cannot post") as raised:
        post_pending(transfer=p, idempotency_key="confirm-1", amount=cny(amount))

    assert raised.value.details["held"] == 3000
    assert counts() == before
    stored = PendingTransfer.objects.get(pk=p.pk)
    assert stored.state == "pending"
    assert totals(funded.prepaid) == (0, 10000, 3000, 0)


def test_posting_in_another_currency_is_refused(funded: Chart) -> None:
    p = hold(funded, "30", key="lesson-1")

    with pytest.raises(CurrencyMismatch):
        post_pending(transfer=p, idempotency_key="confirm-1", amount=Money("10", "USD"))
    assert PendingTransfer.objects.get(pk=p.pk).state == "pending"


# --- batches --------------------------------------------------------------------------------------------


def test_resolve_pending_batch_posts_and_voids_many_at_once(
    funded: Chart, counts: Callable[[], RowCounts]
) -> None:
    holds = [hold(funded, "10", key=f"lesson-{i}") for i in range(5)]
    before = counts()

    changed = resolve_pending_batch(
        resolutions=[
            Resolution(holds[0].pk, "post", "confirm-0"),
            Resolution(holds[1].pk, "post", "confirm-1", amount=cny("4")),
            Resolution(holds[2].pk, "void", "void-2"),
            Resolution(holds[3].pk, "post", "confirm-3"),
        ]
    )

    assert changed == 4
    states = dict(PendingTransfer.objects.values_list("idempotency_key", "state"))
    assert states == {
        "lesson-0": "posted",
        "lesson-1": "posted",
        "lesson-2": "voided",
        "lesson-3": "posted",
        "lesson-4": "pending",
    }
    after = counts()
    assert (after.entries - before.entries, after.postings - before.postings) == (3, 6)
    assert totals(funded.prepaid) == (2400, 10000, 1000, 0)
    assert totals(funded.payable) == (0, 2400, 0, 1000)
    # The same batch again is a replay: nothing changes.
    assert (
        resolve_pending_batch(
            resolutions=[
                Resolution(holds[0].pk, "post", "confirm-0"),
                Resolution(holds[1].pk, "post", "confirm-1", amount=cny("4")),
                Resolution(holds[2].pk, "void", "void-2"),
                Resolution(holds[3].pk, "post", "confirm-3"),
            ]
        )
        == 0
    )
    assert counts() == after


def test_resolve_pending_batch_is_all_or_nothing(funded: Chart, counts: Callable[[], RowCounts]) -> None:
    a = hold(funded, "10", key="lesson-a")
    b = hold(funded, "10", key="lesson-b")
    void_pending(transfer=b, idempotency_key="void-b")
    before = counts()

    with pytest.raises(PendingTransferError):
        resolve_pending_batch(
            resolutions=[Resolution(a.pk, "post", "confirm-a"), Resolution(b.pk, "post", "confirm-b")]
        )

    assert counts() == before
    assert PendingTransfer.objects.get(pk=a.pk).state == "pending"
    assert totals(funded.prepaid) == (0, 10000, 1000, 0)


def test_resolve_pending_batch_refuses_a_transfer_twice_or_an_unknown_one(funded: Chart) -> None:
    a = hold(funded, "10", key="lesson-a")

    with pytest.raises(PendingTransferError, match="once"):
        resolve_pending_batch(resolutions=[Resolution(a.pk, "post", "c-1"), Resolution(a.pk, "void", "v-1")])
    with pytest.raises(PendingTransferError) as raised:
        resolve_pending_batch(
            resolutions=[Resolution(a.pk, "post", "c-1"), Resolution(a.pk + 1000, "void", "v")]
        )
    assert raised.value.details == {"transfer_id": a.pk + 1000}
    assert PendingTransfer.objects.get(pk=a.pk).state == "pending"
    assert resolve_pending_batch(resolutions=[]) == 0


def test_resolve_pending_batch_resolves_a_large_mixed_batch(funded: Chart) -> None:
    """Past the large-batch threshold: posts (in full and in part), voids and expiries (no key, no posted
    amount) in one call, and on PostgreSQL the batch's statements leave generic plans behind."""
    size = backends._JIT_OFF_FROM_ENTRIES + 20
    holds = create_pending_batch(
        transfers=[
            NewPending(f"lesson-{i}", "lesson", funded.prepaid, funded.payable, cny("0.50"))
            for i in range(size)
        ]
    )
    resolutions = []
    for i, p in enumerate(holds):
        if i % 4 == 0:
            resolutions.append(Resolution(p.pk, "post", f"confirm-{i}"))
        elif i % 4 == 1:
            resolutions.append(Resolution(p.pk, "post", f"confirm-{i}", amount=cny("0.20")))
        elif i % 4 == 2:
            resolutions.append(Resolution(p.pk, "void", f"void-{i}"))
        else:
            resolutions.append(Resolution(p.pk, "expire", ""))

    with transaction.atomic():
        backends.use_generic_plans()
        assert resolve_pending_batch(resolutions=resolutions) == size
        if connection.vendor == "postgresql":
            mode = backends.execute_prepared("SELECT current_setting('plan_cache_mode')", [])
            assert mode == [("auto",)]

    stored = {p.idempotency_key: p for p in PendingTransfer.objects.all()}
    for i in range(size):
        p = stored[f"lesson-{i}"]
        expected = [
            ("posted", 50, f"confirm-{i}"),
            ("posted", 20, f"confirm-{i}"),
            ("voided", None, f"void-{i}"),
            ("expired", None, None),
        ][i % 4]
        assert (p.state, p.posted_amount, p.resolution_key) == expected
        assert p.resolved_at is not None
    posted = 30 * 50 + 30 * 20
    assert totals(funded.prepaid) == (posted, 10000, 0, 0)
    assert totals(funded.payable) == (0, posted, 0, 0)
    assert Entry.objects.filter(pending_transfer__isnull=False).count() == 60


def test_resolve_pending_batch_refuses_a_hold_that_is_not_pending_when_marked(
    funded: Chart, counts: Callable[[], RowCounts], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last guard: the UPDATE must change every hold the batch read as pending. Simulated by a read
    that misses a void."""
    a = hold(funded, "10", key="lesson-a")
    b = hold(funded, "10", key="lesson-b")
    hold(funded, "10", key="lesson-c")
    void_pending(transfer=a, idempotency_key="void-a")
    lock_holds = services._lock_holds
    monkeypatch.setattr(
        services,
        "_lock_holds",
        lambda ids: {pk: h._replace(state="pending") for pk, h in lock_holds(ids).items()},
    )
    before = counts()

    with pytest.raises(PendingTransferError, match="changed state during the batch"):
        resolve_pending_batch(
            resolutions=[Resolution(a.pk, "post", "confirm-a"), Resolution(b.pk, "post", "confirm-b")]
        )

    assert counts() == before
    assert PendingTransfer.objects.get(pk=b.pk).state == "pending"
    assert totals(funded.prepaid) == (0, 10000, 2000, 0)


def _spy_post_holds_in_full(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """What each call of the one-statement post returned (held, written), in order."""
    results: list[tuple[int, int]] = []
    post = backends.post_holds_in_full

    def spy(*args: object, **kwargs: object) -> tuple[int, int]:
        results.append(post(*args, **kwargs))  # type: ignore[arg-type]
        return results[-1]

    monkeypatch.setattr(backends, "post_holds_in_full", spy)
    return results


@pytest.mark.postgres
def test_posting_holds_in_full_in_one_statement_writes_what_the_general_path_writes(
    funded: Chart, counts: Callable[[], RowCounts], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL, holds posted in full under keys of their own take one statement; the general path
    (forced here for the second half) writes the same: each hold posted under its key, an entry with the
    hold's kind and metadata and the request hash of ``post_pending``, two postings, the seal queue, and the
    accounts' pending, posted and running totals. The first batch is large enough to be planned for its own
    arrays (not prepared)."""
    size = backends._JIT_OFF_FROM_ENTRIES
    expires = clock.now() + timedelta(days=1)
    holds = create_pending_batch(
        transfers=[
            NewPending(
                f"lesson-{i}",
                "lesson",
                funded.prepaid,
                funded.payable,
                cny("0.40"),
                expires_at=expires if i % 2 else None,
                metadata={"lesson": i, "note": '数学 "A"'},
            )
            for i in range(size + 4)
        ]
    )
    calls = _spy_post_holds_in_full(monkeypatch)
    before = counts()

    with transaction.atomic():
        posted = resolve_pending_batch(
            resolutions=[Resolution(p.pk, "post", f"c-{p.pk}") for p in holds[:size]]
        )
    assert posted == size
    assert calls == [(size, size)]
    monkeypatch.setattr(services, "_posts_in_full", lambda resolutions: False)
    assert (
        resolve_pending_batch(resolutions=[Resolution(p.pk, "post", f"c-{p.pk}") for p in holds[size:]]) == 4
    )
    assert calls == [(size, size)]

    for i, p in enumerate(holds):
        stored = PendingTransfer.objects.get(pk=p.pk)
        assert (stored.state, stored.posted_amount, stored.resolution_key) == ("posted", 40, f"c-{p.pk}")
        assert stored.resolved_at is not None
        entry = Entry.objects.get(pending_transfer_id=p.pk)
        assert (entry.idempotency_key, entry.kind, entry.reverses_id) == (f"c-{p.pk}", "lesson", None)
        assert entry.metadata == {"lesson": i, "note": '数学 "A"'}
        assert entry.request_hash == post_pending_request_hash(transfer=p.pk, amount=40)
        assert entry.effective_at == entry.posted_at
        postings = Posting.objects.filter(entry=entry)
        assert sorted(postings.values_list("account_id", "amount", "currency", "posted_at")) == [
            (funded.prepaid.pk, 40, "CNY", entry.posted_at),
            (funded.payable.pk, -40, "CNY", entry.posted_at),
        ]
    after = counts()
    n = size + 4
    assert (after.entries - before.entries, after.postings - before.postings) == (n, 2 * n)
    assert after.unsealed - before.unsealed == n
    assert totals(funded.prepaid) == (40 * n, 10000, 0, 0)
    assert totals(funded.payable) == (0, 40 * n, 0, 0)
    report = Report()
    for check in (check_entries_balance, check_materialized_totals, check_limits, check_pending_transfers):
        check(report)
    assert report.findings == []
    # Posted in one statement or not, a post replays with its key.
    assert resolve_pending_batch(resolutions=[Resolution(holds[0].pk, "post", f"c-{holds[0].pk}")]) == 0
    assert counts() == after


@pytest.mark.postgres
def test_a_batch_the_one_statement_post_does_not_take_cleanly_goes_the_general_way(
    funded: Chart, counts: Callable[[], RowCounts], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replayed post beside a new one: the statement takes only the new hold, is rolled back, and the
    general path replays the first and posts the second, once."""
    a = hold(funded, "10", key="lesson-a")
    b = hold(funded, "10", key="lesson-b")
    post_pending(transfer=a, idempotency_key="confirm-a")
    calls = _spy_post_holds_in_full(monkeypatch)
    before = counts()

    changed = resolve_pending_batch(
        resolutions=[Resolution(a.pk, "post", "confirm-a"), Resolution(b.pk, "post", "confirm-b")]
    )

    assert changed == 1
    assert calls == [(1, 1)]
    after = counts()
    assert (after.entries - before.entries, after.postings - before.postings) == (1, 2)
    assert totals(funded.prepaid) == (2000, 10000, 0, 0)
    assert Entry.objects.filter(pending_transfer_id__in=[a.pk, b.pk]).count() == 2


def test_holds_have_no_index_on_their_accounts_and_their_accounts_are_checked() -> None:
    """Migration 0011: resolving a hold would rewrite those indexes, and nothing reads holds by account.
    SQLite keeps the foreign keys; PostgreSQL checks the accounts with a statement trigger instead (migration
    0013; what it refuses: tests/ledger/test_guards.py)."""
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, "ledger_pendingtransfer")
    indexed = [c["columns"] for c in constraints.values() if c["index"]]
    referenced = {c["columns"][0]: c["foreign_key"] for c in constraints.values() if c["foreign_key"]}
    assert ["debit_account_id"] not in indexed
    assert ["credit_account_id"] not in indexed
    assert referenced == (
        {}
        if connection.vendor == "postgresql"
        else {"debit_account_id": ("ledger_account", "id"), "credit_account_id": ("ledger_account", "id")}
    )


def test_create_pending_batch_creates_all_holds(funded: Chart) -> None:
    created = create_pending_batch(
        transfers=[
            NewPending(f"lesson-{i}", "lesson", funded.prepaid, funded.payable, cny("10")) for i in range(4)
        ]
    )

    assert [p.idempotency_key for p in created] == [f"lesson-{i}" for i in range(4)]
    assert all(p.pk is not None and p.state == "pending" for p in created)
    assert totals(funded.prepaid) == (0, 10000, 4000, 0)
    assert totals(funded.payable) == (0, 0, 0, 4000)


def test_create_pending_batch_is_all_or_nothing_when_a_limit_would_break(
    funded: Chart, counts: Callable[[], RowCounts]
) -> None:
    hold(funded, "20", key="lesson-0")
    before = counts()

    with pytest.raises(LimitExceeded) as raised:
        create_pending_batch(
            transfers=[
                NewPending("lesson-1", "lesson", funded.prepaid, funded.payable, cny("50")),
                NewPending("lesson-2", "lesson", funded.prepaid, funded.payable, cny("30.01")),
            ]
        )

    assert raised.value.details == {"account": "prepaid:c1", "available": 8000, "requested": 8001}
    assert counts() == before
    assert totals(funded.prepaid) == (0, 10000, 2000, 0)
    assert totals(funded.payable) == (0, 0, 0, 2000)


def test_create_pending_batch_replays_known_keys_and_refuses_conflicts(
    funded: Chart, counts: Callable[[], RowCounts]
) -> None:
    first = hold(funded, "10", key="lesson-0")

    created = create_pending_batch(
        transfers=[
            NewPending("lesson-0", "lesson", funded.prepaid, funded.payable, cny("10")),
            NewPending("lesson-1", "lesson", funded.prepaid, funded.payable, cny("10")),
            NewPending("lesson-1", "lesson", funded.prepaid, funded.payable, cny("10")),
        ]
    )

    assert created[0].pk == first.pk
    assert created[1].pk == created[2].pk
    assert PendingTransfer.objects.count() == 2
    assert totals(funded.prepaid) == (0, 10000, 2000, 0)
    before = counts()
    with pytest.raises(IdempotencyConflict):
        create_pending_batch(
            transfers=[
                NewPending("lesson-2", "lesson", funded.prepaid, funded.payable, cny("10")),
                NewPending("lesson-2", "lesson", funded.prepaid, funded.payable, cny("11")),
            ]
        )
    with pytest.raises(IdempotencyConflict):
        create_pending_batch(
            transfers=[
                NewPending("lesson-3", "lesson", funded.prepaid, funded.payable, cny("10")),
                NewPending("lesson-0", "lesson", funded.prepaid, funded.payable, cny("99")),
            ]
        )
    assert counts() == before

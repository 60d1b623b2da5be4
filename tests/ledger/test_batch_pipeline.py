"""post_batch on PostgreSQL writes a large rollback-mode batch in pipelined chunks (post_entries_pipelined).

The chunk size is cut to 2 here so that small batches take that path; every test checks that the batch still
behaves as one atomic write: all or nothing, keys once, running totals in order, locks taken up front.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection, transaction

from ledger import backends
from ledger.errors import IdempotencyConflict, LimitExceeded, UnbalancedEntry
from ledger.models import Account, Entry, Posting, UnsealedEntry
from ledger.money import cny
from ledger.selectors import balance
from ledger.services import NewEntry, credit, debit, post_batch
from ledger.verification import Report, check_entries_balance, check_limits, check_materialized_totals
from tests.ledger.conftest import Chart, RowCounts

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "PIPELINE_CHUNK", 2)
    monkeypatch.setattr(backends, "FIRST_CHUNK", 2)


@pytest.fixture
def statements() -> list[str]:
    """The statement of each chunk sent (filled by ``sent``)."""
    return []


@pytest.fixture
def sent(
    monkeypatch: pytest.MonkeyPatch, statements: list[str]
) -> Iterator[list[tuple[list[str], list[int]]]]:
    """The chunks sent, as (keys, accounts the statement locks)."""
    calls: list[tuple[list[str], list[int]]] = []
    original = backends._send_chunk

    def spy(conn: Any, sql: str, chunk: list[backends.EntrySpec], lock: list[int]) -> Any:
        statements.append(sql)
        calls.append(([s.idempotency_key for s in chunk], list(lock)))
        return original(conn, sql, chunk, lock)

    monkeypatch.setattr(backends, "_send_chunk", spy)
    yield calls


def release_entry(chart: Chart, amount: str, *, key: str) -> NewEntry:
    return NewEntry(key, "release", [debit(chart.prepaid, cny(amount)), credit(chart.payable, cny(amount))])


def payment(chart: Chart, amount: str, *, key: str) -> NewEntry:
    return NewEntry(key, "payment", [debit(chart.cash, cny(amount)), credit(chart.prepaid, cny(amount))])


def test_a_pipelined_batch_posts_every_entry_in_order_with_running_totals(
    accounts: Chart, sent: list[tuple[list[str], list[int]]]
) -> None:
    entries = [payment(accounts, "100", key="pay-0")] + [
        release_entry(accounts, str(10 + i), key=f"r-{i}") for i in range(6)
    ]

    result = post_batch(entries=entries)

    assert [keys for keys, _ in sent] == [["pay-0", "r-0"], ["r-1", "r-2"], ["r-3", "r-4"], ["r-5"]]
    assert (result.created, result.replayed, result.failures) == (7, 0, [])
    assert [e.idempotency_key for e in result.entries] == [e.idempotency_key for e in entries]
    assert result.entries == sorted(result.entries, key=lambda e: e.pk)
    assert [e.pk for e in result.entries] == [
        Entry.objects.get(idempotency_key=e.idempotency_key).pk for e in entries
    ]
    assert UnsealedEntry.objects.count() == 7
    # Each account's postings carry its running totals in id order, across the chunks.
    for account in (accounts.cash, accounts.prepaid, accounts.payable):
        dr = cr = 0
        for p in Posting.objects.filter(account=account).order_by("id"):
            dr, cr = dr + max(p.amount, 0), cr + max(-p.amount, 0)
            assert (p.debits_after, p.credits_after) == (dr, cr)
    stored = Account.objects.get(pk=accounts.prepaid.pk)
    assert (stored.debits_posted, stored.credits_posted, stored.posting_count) == (
        sum(range(10, 16)) * 100,
        10000,
        7,
    )
    assert balance(accounts.payable).posted == cny(str(sum(range(10, 16))))
    report = Report()
    for check in (check_entries_balance, check_materialized_totals, check_limits):
        check(report)
    assert report.ok, report.findings


def test_a_smaller_first_chunk_is_sent_first_and_the_rest_at_full_size(
    accounts: Chart, sent: list[tuple[list[str], list[int]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backends, "FIRST_CHUNK", 1)
    entries = [payment(accounts, "100", key="pay-0")] + [
        release_entry(accounts, "10", key=f"r-{i}") for i in range(4)
    ]

    post_batch(entries=entries)

    assert [keys for keys, _ in sent] == [["pay-0"], ["r-0", "r-1"], ["r-2", "r-3"]]
    assert balance(accounts.payable).posted == cny("40")


def test_the_first_chunk_locks_every_account_of_the_batch_and_later_chunks_none(
    accounts: Chart, sent: list[tuple[list[str], list[int]]]
) -> None:
    post_batch(
        entries=[payment(accounts, "100", key="pay-0"), payment(accounts, "1", key="pay-1")]
        + [release_entry(accounts, "10", key=f"r-{i}") for i in range(3)]
    )

    locks = [lock for _, lock in sent]
    assert locks[0] == sorted([accounts.cash.pk, accounts.prepaid.pk, accounts.payable.pk])
    assert locks[1:] == [[], []]


def test_chunks_get_plans_sized_for_their_arrays_after_a_callers_generic_plans(accounts: Chart) -> None:
    with transaction.atomic():
        backends.use_generic_plans()
        post_batch(
            entries=[payment(accounts, "100", key="pay-0")]
            + [release_entry(accounts, "10", key=f"r-{i}") for i in range(3)]
        )
        setting = backends.execute_prepared("SELECT current_setting('plan_cache_mode')", [])[0][0]

    assert setting == "auto"


def test_an_invalid_entry_in_a_late_chunk_posts_nothing(
    accounts: Chart, counts: Callable[[], RowCounts], sent: list[tuple[list[str], list[int]]]
) -> None:
    before = counts()
    bad = NewEntry(
        "r-bad", "release", [debit(accounts.prepaid, cny("10")), credit(accounts.payable, cny("9"))]
    )
    entries = (
        [payment(accounts, "100", key="pay-0")]
        + [release_entry(accounts, "10", key=f"r-{i}") for i in range(4)]
        + [bad]
    )

    with pytest.raises(UnbalancedEntry):
        post_batch(entries=entries)

    # The earlier chunks had been sent when the bad entry was found; they were rolled back with the rest.
    assert len(sent) >= 2
    assert counts() == before
    assert balance(accounts.prepaid).posted == cny("0")


def test_a_limit_broken_in_a_later_chunk_posts_nothing_and_leaves_the_callers_block_usable(
    accounts: Chart, counts: Callable[[], RowCounts]
) -> None:
    before = counts()
    entries = [payment(accounts, "100", key="pay-0")] + [
        release_entry(accounts, "30", key=f"r-{i}") for i in range(4)
    ]

    with transaction.atomic():
        with pytest.raises(LimitExceeded) as raised:
            post_batch(entries=entries)
        assert Entry.objects.count() == before.entries

    assert raised.value.details["account"] == "prepaid:c1"
    assert counts() == before


def test_a_key_repeated_across_chunks_posts_once_with_the_same_content(
    accounts: Chart, counts: Callable[[], RowCounts]
) -> None:
    before = counts()
    entries = [
        payment(accounts, "100", key="pay-0"),
        release_entry(accounts, "10", key="r-0"),
        release_entry(accounts, "20", key="r-1"),
        release_entry(accounts, "10", key="r-0"),
        release_entry(accounts, "30", key="r-2"),
    ]

    result = post_batch(entries=entries)

    assert [e.idempotency_key for e in result.entries] == ["pay-0", "r-0", "r-1", "r-2"]
    assert (result.created, result.replayed) == (4, 0)
    assert counts().entries - before.entries == 4
    assert balance(accounts.payable).posted == cny("60")


def test_a_key_repeated_across_chunks_with_other_content_posts_nothing(
    accounts: Chart, counts: Callable[[], RowCounts]
) -> None:
    before = counts()
    entries = [
        payment(accounts, "100", key="pay-0"),
        release_entry(accounts, "10", key="r-0"),
        release_entry(accounts, "20", key="r-1"),
        release_entry(accounts, "11", key="r-0"),
    ]

    with pytest.raises(IdempotencyConflict, match="twice in one batch"):
        post_batch(entries=entries)

    assert counts() == before


def test_keys_posted_before_are_replayed_and_a_changed_one_is_refused(
    accounts: Chart, counts: Callable[[], RowCounts]
) -> None:
    first = post_batch(
        entries=[payment(accounts, "100", key="pay-0"), release_entry(accounts, "10", key="r-0")]
    )

    again = post_batch(
        entries=[
            payment(accounts, "100", key="pay-0"),
            release_entry(accounts, "20", key="r-1"),
            release_entry(accounts, "10", key="r-0"),
        ]
    )

    assert (again.created, again.replayed) == (1, 2)
    assert [e.pk for e in again.entries[::2]] == [e.pk for e in first.entries]
    before = counts()
    with pytest.raises(IdempotencyConflict, match="used before"):
        post_batch(
            entries=[
                release_entry(accounts, "5", key="r-2"),
                release_entry(accounts, "5", key="r-3"),
                release_entry(accounts, "11", key="r-0"),
            ]
        )
    assert counts() == before


NEW_KEYS = backends._POSTGRES_POST_NEW_ENTRIES
ANY_KEYS = backends._POSTGRES_POST_ENTRIES


def test_a_batch_of_new_keys_is_written_by_plain_inserts_in_one_attempt(
    accounts: Chart, sent: list[tuple[list[str], list[int]]], statements: list[str]
) -> None:
    result = post_batch(entries=[payment(accounts, str(10 + i), key=f"pay-{i}") for i in range(5)])

    assert (result.created, result.replayed) == (5, 0)
    assert "ON CONFLICT" not in NEW_KEYS and "ON CONFLICT" in ANY_KEYS
    assert statements == [NEW_KEYS] * 3


def test_a_key_that_exists_rolls_the_plain_inserts_back_and_the_batch_is_written_again_around_it(
    accounts: Chart,
    counts: Callable[[], RowCounts],
    sent: list[tuple[list[str], list[int]]],
    statements: list[str],
) -> None:
    first = post_batch(entries=[payment(accounts, "12", key="pay-2")])
    before = counts()
    statements.clear()

    again = post_batch(entries=[payment(accounts, str(10 + i), key=f"pay-{i}") for i in range(5)])

    # The first attempt failed on pay-2, in its second chunk (with however many chunks were sent by the time
    # the error came back); the second skipped it.
    assert set(statements[:-3]) == {NEW_KEYS} and len(statements) >= 5
    assert statements[-3:] == [ANY_KEYS] * 3
    assert (again.created, again.replayed) == (4, 1)
    assert again.entries[2].pk == first.entries[0].pk
    after = counts()
    assert (after.entries - before.entries, after.postings - before.postings) == (4, 8)
    assert after.unsealed - before.unsealed == 4
    stored = Account.objects.get(pk=accounts.prepaid.pk)
    assert (stored.credits_posted, stored.posting_count) == (sum(range(10, 15)) * 100, 5)
    report = Report()
    for check in (check_entries_balance, check_materialized_totals, check_limits):
        check(report)
    assert report.ok, report.findings


def test_without_a_savepoint_in_a_callers_block_keys_that_exist_are_skipped_at_once(
    accounts: Chart, sent: list[tuple[list[str], list[int]]], statements: list[str]
) -> None:
    post_batch(entries=[payment(accounts, "12", key="pay-2")])
    statements.clear()

    with transaction.atomic():
        again = post_batch(
            entries=[payment(accounts, str(10 + i), key=f"pay-{i}") for i in range(5)], savepoint=False
        )

    # A failed statement would have doomed the caller's transaction: no attempt that can fail on a key.
    assert statements == [ANY_KEYS] * 3
    assert (again.created, again.replayed) == (4, 1)


@pytest.mark.django_db(transaction=True)
def test_a_key_another_transaction_commits_during_the_batch_is_replayed(
    accounts: Chart, sent: list[tuple[list[str], list[int]]], statements: list[str]
) -> None:
    held = threading.Event()
    failures: list[BaseException] = []

    def other_writer() -> None:
        try:
            with transaction.atomic():
                post_batch(entries=[payment(accounts, "12", key="pay-2")])
                held.set()
                time.sleep(0.5)  # the batch below waits for this transaction
        except BaseException as error:  # reported by the test
            failures.append(error)
            held.set()
        finally:
            connection.close()

    thread = threading.Thread(target=other_writer)
    thread.start()
    held.wait()
    result = post_batch(entries=[payment(accounts, str(10 + i), key=f"pay-{i}") for i in range(5)])
    thread.join()

    assert failures == []
    assert (result.created, result.replayed) == (4, 1)
    assert set(statements[:-3]) == {NEW_KEYS} and len(statements) >= 4
    assert statements[-3:] == [ANY_KEYS] * 3
    assert Entry.objects.filter(idempotency_key="pay-2").count() == 1
    report = Report()
    for check in (check_entries_balance, check_materialized_totals, check_limits):
        check(report)
    assert report.ok, report.findings


@pytest.mark.django_db(transaction=True)
def test_a_connection_whose_first_batch_failed_on_a_key_keeps_posting_batches(
    accounts: Chart, sent: list[tuple[list[str], list[int]]], statements: list[str]
) -> None:
    post_batch(entries=[payment(accounts, "10", key="pay-0")])
    # A new connection: its first pipelined statement (prepared on first use) is the one that fails.
    connection.close()

    replayed = post_batch(entries=[payment(accounts, str(10 + i), key=f"pay-{i}") for i in range(3)])
    fresh = post_batch(entries=[payment(accounts, str(20 + i), key=f"new-{i}") for i in range(3)])
    again = post_batch(entries=[payment(accounts, str(20 + i), key=f"new-{i}") for i in range(3)])

    assert (replayed.created, replayed.replayed) == (2, 1)
    assert (fresh.created, fresh.replayed) == (3, 0)
    assert (again.created, again.replayed) == (0, 3)
    assert statements[0] == NEW_KEYS and statements[-4:] == [NEW_KEYS, NEW_KEYS, ANY_KEYS, ANY_KEYS]
    report = Report()
    for check in (check_entries_balance, check_materialized_totals, check_limits):
        check(report)
    assert report.ok, report.findings

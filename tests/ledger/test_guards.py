"""The database's own guards (ledger/sql/): history is append-only, entries balance, accounts keep their
identity, holds resolve once. Each test goes around the application with raw SQL and expects the database to
refuse, so a bug in Python could not do it either.

PostgreSQL checks each statement's postings per entry and leaves an entry that a statement leaves unbalanced
(or without postings) to a deferred check at COMMIT; SQLite has no deferred triggers, so it makes the ledger
write postings before their entry and checks the balance when the entry row arrives. Each side has its own
tests for that part.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.backends.utils import CursorWrapper
from django.utils import timezone

from ledger.chain import create_checkpoint
from ledger.models import Account, Entry, PendingTransfer, Posting
from ledger.money import cny
from ledger.services import create_pending, open_account, post_pending, void_pending
from tests.ledger.conftest import Chart

only_sqlite = pytest.mark.skipif(
    connection.vendor != "sqlite",
    reason="SQLite's own guard (postings before their entry); PostgreSQL checks at COMMIT, tested above",
)


def db_time(moment: datetime) -> datetime | str:
    """A timestamp as a raw-SQL parameter: aware on PostgreSQL, naive UTC text on SQLite (as Django does)."""
    if connection.vendor == "sqlite":
        return str(connection.ops.adapt_datetimefield_value(moment))
    return moment


def insert_postings(cursor: CursorWrapper, entry_id: int, legs: Sequence[tuple[Account, int]]) -> None:
    now = db_time(timezone.now())
    for account, amount in legs:
        cursor.execute(
            "INSERT INTO ledger_posting (entry_id, account_id, amount, currency, posted_at, debits_after, "
            "credits_after) VALUES (%s, %s, %s, 'CNY', %s, %s, %s)",
            [entry_id, account.pk, amount, now, max(amount, 0), max(-amount, 0)],
        )


def insert_entry_row(cursor: CursorWrapper, key: str, entry_id: int | None = None) -> int:
    now = db_time(timezone.now())
    if entry_id is None:
        cursor.execute(
            "INSERT INTO ledger_entry (idempotency_key, request_hash, kind, posted_at, effective_at, "
            "metadata) VALUES (%s, 'x', 'raw', %s, %s, '{}') RETURNING id",
            [key, now, now],
        )
        return int(cursor.fetchone()[0])
    cursor.execute(
        "INSERT INTO ledger_entry (id, idempotency_key, request_hash, kind, posted_at, effective_at, "
        "metadata) VALUES (%s, %s, 'x', 'raw', %s, %s, '{}')",
        [entry_id, key, now, now],
    )
    return entry_id


def raw(sql: str, params: Sequence[Any] = ()) -> None:
    """Run one statement in a savepoint, so a refusal leaves the test's transaction usable."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, list(params))


@pytest.fixture
def history(accounts: Chart, pay_in: Callable[..., Entry]) -> Entry:
    """One payment, sealed into the chain and signed in a checkpoint."""
    entry = pay_in("100", key="pay-1")
    create_checkpoint()
    return entry


# --- append-only history (both databases) ---------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE ledger_entry SET kind = 'forged' WHERE id = %(entry)s",
        "UPDATE ledger_entry SET metadata = '{}' WHERE id = %(entry)s",
        "DELETE FROM ledger_entry WHERE id = %(entry)s",
        "UPDATE ledger_posting SET amount = amount * 2 WHERE entry_id = %(entry)s",
        "UPDATE ledger_posting SET account_id = account_id WHERE entry_id = %(entry)s",
        "DELETE FROM ledger_posting WHERE entry_id = %(entry)s",
        "UPDATE ledger_chainlink SET hash = prev_hash WHERE entry_id = %(entry)s",
        "DELETE FROM ledger_chainlink WHERE entry_id = %(entry)s",
        "UPDATE ledger_checkpoint SET signature = '00'",
        "DELETE FROM ledger_checkpoint",
    ],
)
def test_history_rows_cannot_be_updated_or_deleted(history: Entry, sql: str) -> None:
    verb = sql.split()[0]
    table = sql.split()[2] if verb == "DELETE" else sql.split()[1]
    before = {
        "entry": Entry.objects.filter(pk=history.pk).values().first(),
        "postings": sorted(
            Posting.objects.filter(entry_id=history.pk).values_list("id", "amount", "account_id")
        ),
    }

    with pytest.raises(IntegrityError, match=f"{verb} on {table} is not allowed; history is append-only"):
        raw(sql.replace("%(entry)s", str(history.pk)))

    assert Entry.objects.filter(pk=history.pk).values().first() == before["entry"]
    assert (
        sorted(Posting.objects.filter(entry_id=history.pk).values_list("id", "amount", "account_id"))
        == before["postings"]
    )


@pytest.mark.django_db
def test_the_orm_cannot_edit_an_entry_either(history: Entry) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        Entry.objects.filter(pk=history.pk).update(kind="forged")
    with pytest.raises(IntegrityError), transaction.atomic():
        Posting.objects.filter(entry_id=history.pk).update(amount=1)
    assert Entry.objects.get(pk=history.pk).kind == "payment"


# --- accounts keep their identity (both databases) ------------------------------------------------------


@pytest.mark.django_db
def test_an_account_cannot_be_deleted(accounts: Chart, history: Entry) -> None:
    unused = open_account(code="unused", type="expense")

    with pytest.raises(IntegrityError, match="(?i)account"):
        raw("DELETE FROM ledger_account WHERE id = %s", [unused.pk])
    with pytest.raises(IntegrityError), transaction.atomic():
        Account.objects.filter(pk=unused.pk).delete()
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM ledger_account WHERE id = %s", [accounts.prepaid.pk])

    assert Account.objects.filter(pk__in=[unused.pk, accounts.prepaid.pk]).count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    "assignment",
    [
        "currency = 'USD'",
        "code = 'prepaid:c2'",
        "type = 'asset'",
        "debits_must_not_exceed_credits = %(false)s",
    ],
)
def test_an_account_keeps_its_code_type_currency_and_limit(accounts: Chart, assignment: str) -> None:
    false = "false" if connection.vendor == "postgresql" else "0"

    with pytest.raises(IntegrityError, match="(?i)account"):
        raw(
            f"UPDATE ledger_account SET {assignment.replace('%(false)s', false)} WHERE id = %s",
            [accounts.prepaid.pk],
        )

    stored = Account.objects.get(pk=accounts.prepaid.pk)
    assert (stored.code, stored.type, stored.currency, stored.debits_must_not_exceed_credits) == (
        "prepaid:c1",
        "liability",
        "CNY",
        True,
    )


@pytest.mark.django_db
def test_changing_an_accounts_currency_through_the_orm_fails(accounts: Chart) -> None:
    account = Account.objects.get(pk=accounts.cash.pk)
    account.currency = "USD"

    with pytest.raises(IntegrityError), transaction.atomic():
        account.save()

    assert Account.objects.get(pk=accounts.cash.pk).currency == "CNY"
    # Harmless attributes may still change.
    Account.objects.filter(pk=accounts.cash.pk).update(name="托管账户")
    assert Account.objects.get(pk=accounts.cash.pk).name == "托管账户"


# --- pending transfers resolve once (both databases) ----------------------------------------------------


@pytest.fixture
def resolved_holds(accounts: Chart, pay_in: Callable[..., Entry]) -> dict[str, PendingTransfer]:
    pay_in("100", key="pay-1")

    def hold(key: str) -> PendingTransfer:
        return create_pending(
            idempotency_key=key,
            kind="lesson",
            debit_account=accounts.prepaid,
            credit_account=accounts.payable,
            amount=cny("10"),
        )

    posted, voided, pending = hold("lesson-posted"), hold("lesson-voided"), hold("lesson-pending")
    post_pending(transfer=posted, idempotency_key="confirm-1")
    void_pending(transfer=voided, idempotency_key="void-1")
    return {"posted": posted, "voided": voided, "pending": pending}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("which", "assignment"),
    [
        ("posted", "state = 'voided', posted_amount = NULL"),
        ("posted", "posted_amount = 500"),
        ("posted", "amount = 2000"),
        ("voided", "state = 'posted', posted_amount = 1000"),
        ("voided", "state = 'expired'"),
        ("pending", "amount = 1"),
        ("pending", "debit_account_id = credit_account_id + 0, credit_account_id = debit_account_id"),
    ],
)
def test_a_pending_transfer_cannot_be_changed_after_resolution_or_rewritten(
    resolved_holds: dict[str, PendingTransfer], which: str, assignment: str
) -> None:
    target = resolved_holds[which]
    before = PendingTransfer.objects.filter(pk=target.pk).values().first()

    with pytest.raises(IntegrityError, match="(?i)pending transfer"):
        raw(f"UPDATE ledger_pendingtransfer SET {assignment} WHERE id = %s", [target.pk])

    assert PendingTransfer.objects.filter(pk=target.pk).values().first() == before


@pytest.mark.django_db
@pytest.mark.parametrize("which", ["posted", "voided", "pending"])
def test_a_pending_transfer_cannot_be_deleted(resolved_holds: dict[str, PendingTransfer], which: str) -> None:
    target = resolved_holds[which]

    with pytest.raises(IntegrityError, match="(?i)pending transfer"):
        raw("DELETE FROM ledger_pendingtransfer WHERE id = %s", [target.pk])

    assert PendingTransfer.objects.filter(pk=target.pk).exists()


# --- PostgreSQL: every entry balances, checked at COMMIT ------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_postgres_a_balanced_entry_written_with_raw_sql_commits(accounts: Chart) -> None:
    """The control for the tests below: the guards refuse what is wrong, not raw SQL as such."""
    with transaction.atomic(), connection.cursor() as cursor:
        entry_id = insert_entry_row(cursor, "raw-balanced")
        insert_postings(cursor, entry_id, [(accounts.cash, 500), (accounts.prepaid, -500)])

    assert Posting.objects.filter(entry_id=entry_id).count() == 2


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("legs", "message"),
    [
        ("unbalanced", "does not balance"),
        ("single", "at least 2 are required"),
    ],
)
def test_postgres_an_entry_that_does_not_balance_fails_at_commit(
    accounts: Chart, legs: str, message: str
) -> None:
    postings = {
        "unbalanced": [(accounts.cash, 10000), (accounts.prepaid, -9000)],
        "single": [(accounts.cash, 10000)],
    }[legs]
    written_before_commit: list[int] = []

    with pytest.raises(IntegrityError, match=message), transaction.atomic(), connection.cursor() as cursor:
        entry_id = insert_entry_row(cursor, f"raw-{legs}")
        insert_postings(cursor, entry_id, postings)
        # Every INSERT succeeded and is visible inside the transaction...
        cursor.execute("SELECT count(*) FROM ledger_posting WHERE entry_id = %s", [entry_id])
        written_before_commit.append(cursor.fetchone()[0])
    # ...the deferred trigger refuses the COMMIT.

    assert written_before_commit == [len(postings)]
    assert not Entry.objects.filter(idempotency_key=f"raw-{legs}").exists()
    assert Posting.objects.count() == 0


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_postgres_postings_cannot_be_added_to_a_committed_entry(
    accounts: Chart, pay_in: Callable[..., Entry]
) -> None:
    entry = pay_in("100", key="pay-1")
    other = open_account(code="clearing:bank", type="asset")
    reached_commit = False

    with (
        pytest.raises(IntegrityError, match="already committed"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        # Even a pair that sums to zero is refused, at the INSERT itself.
        insert_postings(cursor, entry.pk, [(other, 700), (accounts.payable, -700)])
        reached_commit = True

    assert reached_commit is False
    assert Posting.objects.filter(entry_id=entry.pk).count() == 2
    assert Account.objects.get(pk=other.pk).posting_count == 0


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_postgres_postings_that_unbalance_an_entry_in_a_later_statement_fail_at_commit(
    accounts: Chart,
) -> None:
    """The entry and a balanced pair go in together (no check is left for COMMIT), then one more posting
    joins it: that statement's set does not balance, so the entry is checked again at COMMIT."""
    with (
        pytest.raises(IntegrityError, match="does not balance"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        entry_id = insert_entry_row(cursor, "raw-late-posting")
        now = timezone.now()
        cursor.execute(
            "INSERT INTO ledger_posting (entry_id, account_id, amount, currency, posted_at, debits_after, "
            "credits_after) VALUES (%s, %s, 500, 'CNY', %s, 500, 0), (%s, %s, -500, 'CNY', %s, 0, 500)",
            [entry_id, accounts.cash.pk, now, entry_id, accounts.prepaid.pk, now],
        )
        insert_postings(cursor, entry_id, [(accounts.payable, 100)])

    assert not Entry.objects.filter(idempotency_key="raw-late-posting").exists()
    assert Posting.objects.count() == 0


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_postgres_an_entry_without_postings_fails_at_commit(accounts: Chart) -> None:
    with (
        pytest.raises(IntegrityError, match="at least 2 are required"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        insert_entry_row(cursor, "raw-empty")

    assert not Entry.objects.filter(idempotency_key="raw-empty").exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_postgres_postings_cannot_come_before_their_entry(accounts: Chart) -> None:
    with (
        pytest.raises(IntegrityError, match="does not exist"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("SELECT nextval(pg_get_serial_sequence('ledger_entry', 'id'))")
        future_id = int(cursor.fetchone()[0])
        insert_postings(cursor, future_id, [(accounts.cash, 500), (accounts.prepaid, -500)])

    assert Posting.objects.count() == 0


@pytest.mark.postgres
@pytest.mark.django_db
def test_postgres_the_ledgers_own_writes_leave_no_check_for_commit(accounts: Chart) -> None:
    """A transfer and a batch write each entry with its balanced postings in one statement, so they queue
    no entry for the (slower) check at COMMIT; the queue is visible here, inside the test's transaction."""
    from ledger.services import NewEntry, credit, debit, post_batch, transfer

    transfer(
        idempotency_key="t-1",
        kind="payment",
        debit_account=accounts.cash,
        credit_account=accounts.prepaid,
        amount=cny("100"),
    )
    result = post_batch(
        entries=[
            NewEntry(
                f"b-{n}", "payment", [debit(accounts.cash, cny("1")), credit(accounts.prepaid, cny("1"))]
            )
            for n in range(150)
        ]
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM ledger_entry_balance_due")
        queued = cursor.fetchone()[0]

    assert result.created == 150
    assert queued == 0


# --- SQLite: postings first, then the entry, which must balance -----------------------------------------


@only_sqlite
@pytest.mark.django_db
def test_sqlite_a_balanced_entry_written_with_raw_sql_is_accepted(accounts: Chart) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        insert_postings(cursor, 9001, [(accounts.cash, 500), (accounts.prepaid, -500)])
        insert_entry_row(cursor, "raw-balanced", entry_id=9001)

    assert Posting.objects.filter(entry_id=9001).count() == 2


@only_sqlite
@pytest.mark.django_db
def test_sqlite_postings_cannot_be_added_to_an_existing_entry(
    accounts: Chart, pay_in: Callable[..., Entry]
) -> None:
    entry = pay_in("100", key="pay-1")
    other = open_account(code="clearing:bank", type="asset")

    with (
        pytest.raises(IntegrityError, match="already exists"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        insert_postings(cursor, entry.pk, [(other, 700), (accounts.payable, -700)])

    assert Posting.objects.filter(entry_id=entry.pk).count() == 2


@only_sqlite
@pytest.mark.django_db
@pytest.mark.parametrize("legs", ["unbalanced", "single", "none"])
def test_sqlite_an_entry_whose_postings_do_not_balance_is_refused(accounts: Chart, legs: str) -> None:
    postings = {
        "unbalanced": [(accounts.cash, 10000), (accounts.prepaid, -9000)],
        "single": [(accounts.cash, 10000)],
        "none": [],
    }[legs]
    postings_went_in = False

    with (
        pytest.raises(IntegrityError, match="does not balance"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        insert_postings(cursor, 9001, postings)
        postings_went_in = True
        insert_entry_row(cursor, f"raw-{legs}", entry_id=9001)

    assert postings_went_in
    assert not Entry.objects.filter(pk=9001).exists()
    assert not Posting.objects.filter(entry_id=9001).exists()


@only_sqlite
@pytest.mark.django_db
def test_sqlite_postings_whose_entry_never_comes_break_a_foreign_key(accounts: Chart) -> None:
    """SQLite's triggers cannot check at COMMIT; the posting→entry foreign key (kept on SQLite, dropped on
    PostgreSQL where the posting trigger enforces more) is what refuses postings left without an entry. It is
    deferred, so SQLite checks it at COMMIT; ``check_constraints`` runs the same check inside the test's
    transaction (the tables cannot be emptied after a committing test, their rows cannot be deleted)."""
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, "ledger_posting")
    foreign_keys = {tuple(c["columns"]) for c in constraints.values() if c["foreign_key"]}

    with pytest.raises(IntegrityError, match="ledger_posting"), transaction.atomic():
        with connection.cursor() as cursor:
            insert_postings(cursor, 9001, [(accounts.cash, 500), (accounts.prepaid, -500)])
        connection.check_constraints(table_names=["ledger_posting"])

    assert foreign_keys == {("entry_id",), ("account_id",)}
    assert not Posting.objects.filter(entry_id=9001).exists()


@pytest.mark.postgres
@pytest.mark.django_db
def test_postgres_postings_refer_to_their_entry_through_the_trigger_not_a_foreign_key() -> None:
    """Migrations 0007 and 0008 dropped the posting→entry and posting→account constraints: their per-posting
    checks at COMMIT repeated, or were replaced by, the posting trigger's per-statement checks."""
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, "ledger_posting")
    foreign_keys = {tuple(c["columns"]) for c in constraints.values() if c["foreign_key"]}

    assert foreign_keys == set()


@pytest.mark.postgres
@pytest.mark.django_db
def test_postgres_a_posting_on_an_account_that_does_not_exist_is_refused(accounts: Chart) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(max(id), 0) + 1000 FROM ledger_account")
        nowhere = int(cursor.fetchone()[0])
    ghost = Account(pk=nowhere, code="ghost", currency="CNY")

    with (
        pytest.raises(IntegrityError, match=f"account {nowhere}, which does not exist"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        entry_id = insert_entry_row(cursor, "raw-ghost")
        insert_postings(cursor, entry_id, [(accounts.cash, 500), (ghost, -500)])

    assert not Entry.objects.filter(idempotency_key="raw-ghost").exists()


# --- an entry's pending transfer exists (both databases) ------------------------------------------------


def insert_entry_posting_hold(cursor: CursorWrapper, key: str, hold_id: int, entry_id: int) -> None:
    now = db_time(timezone.now())
    cursor.execute(
        "INSERT INTO ledger_entry (id, idempotency_key, request_hash, kind, posted_at, effective_at, "
        "metadata, pending_transfer_id) VALUES (%s, %s, 'x', 'raw', %s, %s, '{}', %s)",
        [entry_id, key, now, now, hold_id],
    )


def unused_id(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT coalesce(max(id), 0) + 1000 FROM {table}")  # noqa: S608 (a fixed name)
        return int(cursor.fetchone()[0])


@pytest.mark.postgres
@pytest.mark.django_db
@pytest.mark.parametrize("hold", ["exists", "missing"])
def test_postgres_an_entry_can_only_post_a_pending_transfer_that_exists(
    accounts: Chart, resolved_holds: dict[str, PendingTransfer], hold: str
) -> None:
    """Checked by the entry trigger at the INSERT (migration 0009 dropped the foreign key and its check per
    entry at COMMIT); the hold that exists is the control."""
    hold_id = resolved_holds["pending"].pk if hold == "exists" else unused_id("ledger_pendingtransfer")
    entry_id = unused_id("ledger_entry")
    inserted = False

    with (
        pytest.raises(IntegrityError, match=f"pending transfer {hold_id}, which does not exist")
        if hold == "missing"
        else contextlib.nullcontext(),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        insert_entry_posting_hold(cursor, "raw-hold", hold_id, entry_id)
        inserted = True
        insert_postings(cursor, entry_id, [(accounts.cash, 500), (accounts.prepaid, -500)])

    assert inserted == (hold == "exists")
    assert Entry.objects.filter(idempotency_key="raw-hold").exists() == (hold == "exists")


@only_sqlite
@pytest.mark.django_db
def test_sqlite_an_entry_posting_a_pending_transfer_that_does_not_exist_breaks_a_foreign_key(
    accounts: Chart,
) -> None:
    """SQLite keeps the entry→hold foreign key (deferred: checked at COMMIT, here by
    ``check_constraints``)."""
    hold_id = unused_id("ledger_pendingtransfer")

    with pytest.raises(IntegrityError, match="ledger_entry"), transaction.atomic():
        with connection.cursor() as cursor:
            insert_postings(cursor, 9001, [(accounts.cash, 500), (accounts.prepaid, -500)])
            insert_entry_posting_hold(cursor, "raw-hold", hold_id, 9001)
        connection.check_constraints(table_names=["ledger_entry"])

    assert not Entry.objects.filter(pk=9001).exists()


# --- a pending transfer's accounts exist (both databases) ------------------------------------------------


def insert_holds(cursor: CursorWrapper, holds: Sequence[tuple[int, int]]) -> None:
    """One statement, as the ledger writes holds: (debit account id, credit account id) each, 1.00 CNY."""
    now = db_time(timezone.now())
    cursor.execute(
        "INSERT INTO ledger_pendingtransfer (idempotency_key, request_hash, kind, debit_account_id, "
        "credit_account_id, amount, currency, state, created_at, metadata) VALUES "
        + ", ".join(["(%s, 'x', 'raw', %s, %s, 100, 'CNY', 'pending', %s, '{}')"] * len(holds)),
        [value for n, (dr, cr) in enumerate(holds) for value in (f"raw-hold-{n}", dr, cr, now)],
    )


@pytest.mark.django_db
@pytest.mark.parametrize("holds", [1, 3])
@pytest.mark.parametrize("missing", ["none", "debit", "credit"])
def test_a_pending_transfer_is_only_on_accounts_that_exist(accounts: Chart, missing: str, holds: int) -> None:
    """PostgreSQL: the statement trigger of migration 0013 refuses at the INSERT, whichever of a statement's
    holds names the missing account; SQLite: the foreign keys it keeps (checked here by
    ``check_constraints``). Holds on accounts that exist are the control."""
    nowhere = unused_id("ledger_account")
    rows = [(accounts.prepaid.pk, accounts.payable.pk)] * holds
    bad = {"debit": (nowhere, accounts.payable.pk), "credit": (accounts.prepaid.pk, nowhere)}
    if missing in bad:
        rows[holds // 2] = bad[missing]

    with (
        pytest.raises(IntegrityError, match=rf"account {nowhere}, which does not exist|{missing}_account_id")
        if missing in bad
        else contextlib.nullcontext(),
        transaction.atomic(),
    ):
        with connection.cursor() as cursor:
            insert_holds(cursor, rows)
        connection.check_constraints(table_names=["ledger_pendingtransfer"])

    assert PendingTransfer.objects.filter(idempotency_key__startswith="raw-hold-").count() == (
        0 if missing in bad else holds
    )


@pytest.mark.postgres
@pytest.mark.django_db
def test_postgres_a_pending_transfer_refers_to_its_accounts_through_the_trigger_not_foreign_keys() -> None:
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, "ledger_pendingtransfer")
    assert not [c for c in constraints.values() if c["foreign_key"]]


@pytest.mark.postgres
@pytest.mark.django_db
def test_postgres_an_entry_refers_to_its_hold_through_the_trigger_not_a_foreign_key() -> None:
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, "ledger_entry")
    foreign_keys = {tuple(c["columns"]) for c in constraints.values() if c["foreign_key"]}

    assert foreign_keys == {("reverses_id",)}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("other", "message"),
    [("new", None), ("committed", "already committed"), ("missing", "does not exist")],
)
def test_postgres_one_statement_adding_postings_to_two_entries_is_checked_for_each(
    accounts: Chart, pay_in: Callable[..., Entry], other: str, message: str | None
) -> None:
    """A statement that touches several entries takes the trigger's general path (one entry in one currency
    has a shorter one); each entry must still be the transaction's own."""
    committed = pay_in("100", key="pay-1")
    bank = open_account(code="clearing:bank", type="asset")
    with contextlib.ExitStack() as stack:
        if message is not None:
            stack.enter_context(pytest.raises(IntegrityError, match=message))
        with transaction.atomic(), connection.cursor() as cursor:
            first = insert_entry_row(cursor, "raw-first")
            if other == "new":
                second = insert_entry_row(cursor, "raw-second")
            elif other == "committed":
                second = committed.pk
            else:
                second = unused_id("ledger_entry")
            now = timezone.now()
            cursor.execute(
                "INSERT INTO ledger_posting (entry_id, account_id, amount, currency, posted_at, "
                "debits_after, credits_after) VALUES (%s, %s, 5, 'CNY', %s, 5, 0), "
                "(%s, %s, -5, 'CNY', %s, 0, 5), (%s, %s, 7, 'CNY', %s, 7, 0), (%s, %s, -7, 'CNY', %s, 0, 7)",
                [first, bank.pk, now, first, accounts.payable.pk, now]
                + [second, bank.pk, now, second, accounts.payable.pk, now],
            )

    assert Entry.objects.filter(idempotency_key="raw-first").exists() == (other == "new")
    assert Posting.objects.filter(entry_id=committed.pk).count() == 2


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("usd", [2, 3])
def test_postgres_an_entry_in_two_currencies_must_balance_in_each(accounts: Chart, usd: int) -> None:
    """One entry and its postings in one statement, as the ledger writes them, but in two currencies (USD
    +usd/-2): the trigger's general path, which sums each currency. Balanced, it queues nothing for COMMIT."""
    usd_cash = open_account(code="usd:cash", type="asset", currency="USD")
    usd_payable = open_account(code="usd:payable", type="liability", currency="USD")
    queued: list[int] = []
    with contextlib.ExitStack() as stack:
        if usd != 2:
            stack.enter_context(pytest.raises(IntegrityError, match="postings in USD sum to 1"))
        with transaction.atomic(), connection.cursor() as cursor:
            now = timezone.now()
            cursor.execute(
                "WITH e AS (INSERT INTO ledger_entry (idempotency_key, request_hash, kind, posted_at, "
                "effective_at, metadata) VALUES ('raw-fx', 'x', 'raw', %s, %s, '{}') RETURNING id) "
                "INSERT INTO ledger_posting (entry_id, account_id, amount, currency, posted_at, "
                "debits_after, credits_after) SELECT e.id, l.account, l.amount, l.currency, %s, 0, 0 FROM e, "
                "(VALUES (%s, 5, 'CNY'), (%s, -5, 'CNY'), (%s, %s, 'USD'), (%s, -2, 'USD')) "
                "AS l(account, amount, currency)",
                [now, now, now, accounts.cash.pk, accounts.payable.pk, usd_cash.pk, usd, usd_payable.pk],
            )
            cursor.execute("SELECT count(*) FROM ledger_entry_balance_due")
            queued.append(cursor.fetchone()[0])

    assert queued == [0 if usd == 2 else 1]
    assert Entry.objects.filter(idempotency_key="raw-fx").exists() == (usd == 2)


@pytest.mark.django_db
@pytest.mark.parametrize("entry", ["exists", "missing"])
def test_the_seal_queue_names_only_entries_that_exist(accounts: Chart, entry: str) -> None:
    """PostgreSQL: the statement trigger of migration 0010 refuses at the INSERT; SQLite: the foreign key
    it keeps (checked here by ``check_constraints``). The queued entry that exists is the control."""
    from ledger.services import transfer

    posted = transfer(
        idempotency_key="queue-control",
        kind="t",
        debit_account=accounts.cash,
        credit_account=accounts.prepaid,
        amount=cny("5.00"),
    )
    queued = posted.pk if entry == "exists" else unused_id("ledger_entry")

    with (
        pytest.raises(IntegrityError, match=r"ledger_unsealedentry|queued for sealing, does not exist")
        if entry == "missing"
        else contextlib.nullcontext(),
        transaction.atomic(),
    ):
        with connection.cursor() as cursor:
            cursor.execute(
                "DELETE FROM ledger_unsealedentry WHERE entry_id = %s", [posted.pk]
            )  # as seal() does
            cursor.execute("INSERT INTO ledger_unsealedentry (entry_id) VALUES (%s)", [queued])
        connection.check_constraints(table_names=["ledger_unsealedentry"])


@pytest.mark.postgres
@pytest.mark.django_db
def test_postgres_the_seal_queue_refers_to_entries_through_the_trigger_not_a_foreign_key() -> None:
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, "ledger_unsealedentry")
    assert not [c for c in constraints.values() if c["foreign_key"]]


# --- statements of many rows: the triggers' range and per-account checks (PostgreSQL) -------------------


def insert_batch(
    cursor: CursorWrapper, entry_ids: Sequence[int], postings: Sequence[tuple[int, int, int]]
) -> None:
    """One statement, as the ledger writes a batch: entries with the given ids, and postings given as
    (entry id, account id, amount), which may name entries the statement does not insert."""
    now = timezone.now()
    cursor.execute(
        "WITH e AS (INSERT INTO ledger_entry (id, idempotency_key, request_hash, kind, posted_at, "
        "effective_at, metadata) SELECT id, 'raw-batch-' || id, 'x', 'raw', %s, %s, '{}' "
        "FROM unnest(%s::bigint[]) AS t(id)) "
        "INSERT INTO ledger_posting (entry_id, account_id, amount, currency, posted_at, debits_after, "
        "credits_after) SELECT p.entry_id, p.account_id, p.amount, 'CNY', %s, 0, 0 "
        "FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) AS p(entry_id, account_id, amount)",
        [
            now,
            now,
            list(entry_ids),
            now,
            [p[0] for p in postings],
            [p[1] for p in postings],
            [p[2] for p in postings],
        ],
    )


def balanced_pairs(accounts: Chart, entry_ids: Sequence[int]) -> list[tuple[int, int, int]]:
    """Two balanced postings per entry, spread over the chart's three accounts."""
    chart = [accounts.cash.pk, accounts.prepaid.pk, accounts.payable.pk]
    return [
        posting
        for n, entry_id in enumerate(entry_ids)
        for posting in ((entry_id, chart[n % 3], 100 + n), (entry_id, chart[(n + 1) % 3], -100 - n))
    ]


def batch_ids(layout: str, count: int = 60) -> list[int]:
    """Unused entry ids: adjacent (the triggers' range checks) or every other one (their per-row checks)."""
    start = unused_id("ledger_entry")
    return (
        list(range(start, start + count))
        if layout == "adjacent"
        else list(range(start, start + 2 * count, 2))
    )


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("layout", ["adjacent", "gapped"])
@pytest.mark.parametrize("missing", [None, 0, 29, 59])
def test_postgres_a_batch_whose_one_posting_names_a_missing_account_is_refused(
    accounts: Chart, layout: str, missing: int | None
) -> None:
    """The account check runs once per distinct account of the statement: one bad posting among 120 good
    ones is still found, although its account id is neither the statement's first nor its last (a posting
    on account ``far`` comes after it). No missing account is the control."""
    ids = batch_ids(layout)
    postings = balanced_pairs(accounts, ids)
    nowhere = unused_id("ledger_account")
    far = Account.objects.create(pk=nowhere + 1000, code="far", type="asset", currency="CNY")
    postings[2 * 45] = (ids[45], far.pk, postings[2 * 45][2])
    if missing is not None:
        entry_id, _, amount = postings[2 * missing + 1]
        postings[2 * missing + 1] = (entry_id, nowhere, amount)

    with (
        pytest.raises(IntegrityError, match=f"account {nowhere}, which does not exist")
        if missing is not None
        else contextlib.nullcontext(),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        insert_batch(cursor, ids, postings)

    assert Entry.objects.filter(pk__in=ids).count() == (0 if missing is not None else len(ids))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("layout", ["adjacent", "gapped"])
@pytest.mark.parametrize("bare", [None, 0, 31, 59])
def test_postgres_a_batch_entry_left_without_postings_fails_at_commit(
    accounts: Chart, layout: str, bare: int | None
) -> None:
    """The entry trigger queues a new entry that has no posting at the end of its statement, whether the
    statement's entries are adjacent (one range scan of the postings) or not (a probe per entry). Every
    entry with postings is the control: nothing is queued and the batch commits."""
    ids = batch_ids(layout)
    postings = [p for p in balanced_pairs(accounts, ids) if bare is None or p[0] != ids[bare]]
    queued: list[list[int]] = []

    with (
        pytest.raises(IntegrityError, match="has 0 postings")
        if bare is not None
        else contextlib.nullcontext(),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        insert_batch(cursor, ids, postings)
        cursor.execute("SELECT entry_id FROM ledger_entry_balance_due ORDER BY entry_id")
        queued.append([row[0] for row in cursor.fetchall()])

    assert queued == [[] if bare is None else [ids[bare]]]
    assert Entry.objects.filter(pk__in=ids).count() == (0 if bare is not None else len(ids))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("legs", "message"), [("unbalanced", "does not balance"), ("single", "at least 2 are required")]
)
def test_postgres_one_unbalanced_entry_in_a_batch_in_one_currency_fails_at_commit(
    accounts: Chart, legs: str, message: str
) -> None:
    """A one-currency statement of many entries is grouped per entry only; a short or unbalanced entry among
    balanced ones is still queued for COMMIT, and only it."""
    ids = batch_ids("adjacent")
    postings = balanced_pairs(accounts, ids)
    entry_id, account_id, amount = postings[41]
    if legs == "unbalanced":
        postings[41] = (entry_id, account_id, amount - 1)
    else:
        del postings[41]
    queued: list[list[int]] = []

    with pytest.raises(IntegrityError, match=message), transaction.atomic(), connection.cursor() as cursor:
        insert_batch(cursor, ids, postings)
        cursor.execute("SELECT entry_id FROM ledger_entry_balance_due ORDER BY entry_id")
        queued.append([row[0] for row in cursor.fetchall()])

    assert queued == [[entry_id]]
    assert not Entry.objects.filter(pk__in=ids).exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("other", "message"),
    [
        ("new", None),
        ("committed", "already committed"),
        ("missing", "does not exist"),
        ("missing past one of ours", "does not exist"),
    ],
)
def test_postgres_postings_to_adjacent_entries_are_checked_for_each(
    accounts: Chart, pay_in: Callable[..., Entry], other: str, message: str | None
) -> None:
    """When a statement's postings name every id of their range, the trigger reads the range without a
    join: an adjacent entry that is already committed, or does not exist, must still be refused. When they
    skip an id, the range holds an entry they do not touch (here one of the transaction's own), and only the
    entries they name count: one that does not exist is refused."""
    committed = pay_in("100", key="pay-1")
    bank = open_account(code="clearing:bank", type="asset")  # the committed entry has none on it
    ids = [committed.pk + 1, committed.pk + 2]
    if other == "new":
        inserted = ids
    elif other == "committed":
        ids = [committed.pk, committed.pk + 1]
        inserted = ids[1:]
    elif other == "missing":
        inserted = ids[:1]
    else:
        inserted = ids
        ids = [ids[0], ids[1] + 1]

    def legs(entry_ids: Sequence[int]) -> list[tuple[int, int, int]]:
        return [p for i in entry_ids for p in ((i, bank.pk, 5), (i, accounts.payable.pk, -5))]

    with (
        pytest.raises(IntegrityError, match=message) if message else contextlib.nullcontext(),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        if other == "missing past one of ours":
            insert_batch(cursor, inserted, [])
            insert_batch(cursor, [], legs(ids))
        else:
            insert_batch(cursor, inserted, legs(ids))

    assert Entry.objects.filter(pk__in=inserted).count() == (2 if other == "new" else 0)
    assert Posting.objects.filter(entry_id=committed.pk).count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize("layout", ["adjacent", "gapped"])
@pytest.mark.parametrize("missing", [False, True])
def test_the_seal_queue_names_only_entries_that_exist_among_many(
    accounts: Chart, layout: str, missing: bool
) -> None:
    """One statement queues many entries: adjacent ids (PostgreSQL's range check) or every other one (its
    per-row check), with one that does not exist (just past the range, so an adjacent set stays adjacent)
    or none (the control)."""
    from ledger.services import NewEntry, credit, debit, post_batch

    result = post_batch(
        entries=[
            NewEntry(
                f"q-{n}", "payment", [debit(accounts.cash, cny("1")), credit(accounts.prepaid, cny("1"))]
            )
            for n in range(40)
        ]
    )
    ids = sorted(Entry.objects.filter(idempotency_key__startswith="q-").values_list("pk", flat=True))
    assert result.created == 40 and ids == list(range(ids[0], ids[0] + 40))
    queued = ids if layout == "adjacent" else ids[::2]
    if missing:
        queued = [*queued, ids[-1] + (1 if layout == "adjacent" else 2)]

    with (
        pytest.raises(IntegrityError, match=r"ledger_unsealedentry|queued for sealing, does not exist")
        if missing
        else contextlib.nullcontext(),
        transaction.atomic(),
    ):
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM ledger_unsealedentry")  # as seal() does
            cursor.execute(
                "INSERT INTO ledger_unsealedentry (entry_id) VALUES " + ", ".join(["(%s)"] * len(queued)),
                queued,
            )
        connection.check_constraints(table_names=["ledger_unsealedentry"])

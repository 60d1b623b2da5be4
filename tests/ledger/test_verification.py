"""``ledger.verification`` and ``manage.py verify_ledger``: a clean ledger verifies; a ledger changed behind
the application's back does not, and each finding names the check and the row.

Most tampering needs the append-only triggers out of the way: those tests run on PostgreSQL, disable the
triggers with ``ALTER TABLE ... DISABLE TRIGGER USER`` and enable them again in the same committed transaction
(DDL is transactional there, so a failure rolls the DISABLE back too). Two kinds of tampering pass every
trigger on purpose (changing an account's running totals; inserting a whole balanced entry), and run on both
databases: only the verifier can catch them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper
from django.utils import timezone

from ledger import verification
from ledger.chain import create_checkpoint, seal, walk_chain
from ledger.models import Account, ChainLink, Checkpoint, Entry, PendingTransfer, Posting
from ledger.money import cny
from ledger.services import (
    NewEntry,
    create_pending,
    credit,
    debit,
    expire_pending,
    post_batch,
    post_pending,
    reverse_entry,
    transfer,
    void_pending,
)
from tests.ledger.conftest import Chart

Findings = set[tuple[str, str]]


def findings() -> Findings:
    return {(f.check, f.subject) for f in verification.verify().findings}


@dataclass(frozen=True)
class Sealed:
    """pay 100 (link 1), release 30 (link 2), a 10.00 lesson hold posted (link 3), pay 50 (link 4), then a
    signed checkpoint of link 4."""

    chart: Chart
    entries: list[Entry]
    lesson: PendingTransfer
    checkpoint: Checkpoint

    def link_of(self, index: int) -> int:
        return ChainLink.objects.get(entry_id=self.entries[index].pk).seq


@pytest.fixture
def sealed(accounts: Chart, pay_in: Callable[..., Entry]) -> Sealed:
    entries = [
        pay_in("100", key="pay-1"),
        transfer(
            idempotency_key="release-1",
            kind="release",
            debit_account=accounts.prepaid,
            credit_account=accounts.payable,
            amount=cny("30"),
        ),
    ]
    lesson = create_pending(
        idempotency_key="lesson-1",
        kind="lesson",
        debit_account=accounts.prepaid,
        credit_account=accounts.payable,
        amount=cny("10"),
    )
    entries.append(post_pending(transfer=lesson, idempotency_key="confirm-1"))
    entries.append(pay_in("50", key="pay-2"))
    checkpoint = create_checkpoint()
    assert [ChainLink.objects.get(entry_id=e.pk).seq for e in entries] == [1, 2, 3, 4]
    assert verification.verify().ok
    return Sealed(accounts, entries, PendingTransfer.objects.get(pk=lesson.pk), checkpoint)


@pytest.fixture
def busy_ledger(accounts: Chart, pay_in: Callable[..., Entry]) -> Chart:
    """Every kind of write: payments, a batch, holds posted in full and in part, voided and expired, still
    pending, and a reversal."""
    now = timezone.now()
    pay_in("1000", key="pay-1")
    post_batch(
        entries=[
            NewEntry(
                f"r-{i}", "release", [debit(accounts.prepaid, cny("25")), credit(accounts.payable, cny("25"))]
            )
            for i in range(4)
        ]
    )
    holds = [
        create_pending(
            idempotency_key=f"lesson-{i}",
            kind="lesson",
            debit_account=accounts.prepaid,
            credit_account=accounts.payable,
            amount=cny("40"),
            expires_at=now + (timedelta(hours=1) if i == 3 else timedelta(days=30)),
        )
        for i in range(5)
    ]
    post_pending(transfer=holds[0], idempotency_key="confirm-0")
    post_pending(transfer=holds[1], idempotency_key="confirm-1", amount=cny("12.34"))
    void_pending(transfer=holds[2], idempotency_key="void-2")
    assert expire_pending(now=now + timedelta(hours=2)) == 1
    duplicate = pay_in("80", key="pay-duplicate")
    reverse_entry(entry=duplicate, idempotency_key="rev-1", reason="重复支付 duplicate payment")
    transfer(
        idempotency_key="payout-1",
        kind="payout",
        debit_account=accounts.payable,
        credit_account=accounts.cash,
        amount=cny("60"),
    )
    return accounts


@contextmanager
def tampering(*tables: str) -> Iterator[CursorWrapper]:
    """Raw SQL with the tables' user triggers off, committed as one transaction that turns them back on."""
    with transaction.atomic(), connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        yield cursor
        # Run the deferred foreign-key checks now: a table with pending trigger events cannot be altered.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        for table in tables:
            cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")


@pytest.fixture
def triggers_stay_on() -> Iterator[None]:
    yield
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tgrelid::regclass::text, tgname FROM pg_trigger "
            "WHERE NOT tgisinternal AND tgenabled = 'D' AND tgrelid::regclass::text LIKE %s",
            ["ledger_%"],
        )
        assert cursor.fetchall() == []


# --- a clean ledger verifies ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_clean_ledger_verifies_before_and_after_sealing(busy_ledger: Chart) -> None:
    before = verification.verify()
    assert before.findings == []
    assert before.ok
    assert before.counts["entries"] == Entry.objects.count() > 0
    assert before.counts["unsealed_entries"] == before.counts["entries"]
    assert before.counts["chain_links"] == 0

    create_checkpoint()
    transfer(
        idempotency_key="pay-late",
        kind="payment",
        debit_account=busy_ledger.cash,
        credit_account=busy_ledger.prepaid,
        amount=cny("1"),
    )
    create_checkpoint()

    after = verification.verify()
    assert after.findings == []
    assert (after.counts["chain_links"], after.counts["unsealed_entries"], after.counts["checkpoints"]) == (
        Entry.objects.count(),
        0,
        2,
    )


@pytest.mark.django_db
def test_the_busy_ledger_really_has_every_kind_of_hold_and_entry(busy_ledger: Chart) -> None:
    states = sorted(PendingTransfer.objects.values_list("state", flat=True))
    assert states == ["expired", "pending", "posted", "posted", "voided"]
    assert Entry.objects.filter(kind="reversal").count() == 1
    assert Entry.objects.filter(kind="release").count() == 4


@pytest.mark.django_db
def test_verify_reports_progress_by_stage(busy_ledger: Chart) -> None:
    seal()
    calls: list[tuple[str, int, int]] = []

    verification.verify(progress=lambda stage, done, total: calls.append((stage, done, total)))

    stages = [stage for stage, _, _ in calls]
    assert [s for s in dict.fromkeys(stages)] == [
        "zero_sum",
        "totals",
        "limits",
        "pending",
        "chain",
        "checkpoints",
        "log_roots",
        "done",
    ]
    assert ("chain", Entry.objects.count(), Entry.objects.count()) in calls


@pytest.mark.django_db
def test_verify_ledger_prints_ok_on_a_clean_ledger(busy_ledger: Chart) -> None:
    out, err = StringIO(), StringIO()

    call_command("verify_ledger", "--seal", stdout=out, stderr=err)

    text = out.getvalue()
    assert f"sealed {Entry.objects.count()} queued entries" in text
    assert "OK: the ledger verifies" in text
    assert f"checked {Entry.objects.count()} entries" in text


# --- tampering that passes every trigger (both databases) -----------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("column", "account"),
    [("credits_posted", "prepaid"), ("debits_posted", "cash"), ("posting_count", "payable")],
)
@pytest.mark.parametrize("shift", [1, 100_000])
def test_a_changed_materialized_total_is_found(sealed: Sealed, column: str, account: str, shift: int) -> None:
    target: Account = getattr(sealed.chart, account)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE ledger_account SET {column} = {column} + %s WHERE id = %s", [shift, target.pk]
        )

    assert findings() == {("totals", f"account {target.code}")}


@pytest.mark.django_db
def test_a_changed_pending_total_is_found(sealed: Sealed) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "UPDATE ledger_account SET credits_pending = 500 WHERE id = %s", [sealed.chart.payable.pk]
        )

    report = verification.verify()
    assert {(f.check, f.subject) for f in report.findings} == {("totals", "account payable:i1")}
    assert "pending" in report.findings[0].problem


def insert_balanced_entry(chart: Chart, amount: int) -> int:
    """What someone with write access could add without tripping a guard: a whole balanced entry (Dr cash /
    Cr prepaid) whose postings carry correct running totals, with the accounts' totals moved to match."""
    cash = Account.objects.get(pk=chart.cash.pk)
    prepaid = Account.objects.get(pk=chart.prepaid.pk)
    now = timezone.now()
    moment: datetime | str = (
        str(connection.ops.adapt_datetimefield_value(now)) if connection.vendor == "sqlite" else now
    )
    postings = [
        (cash.pk, amount, cash.debits_posted + amount, cash.credits_posted),
        (prepaid.pk, -amount, prepaid.debits_posted, prepaid.credits_posted + amount),
    ]
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            # SQLite's guard wants the postings before their entry.
            cursor.execute("SELECT MAX(id) + 1 FROM ledger_entry")
            entry_id = int(cursor.fetchone()[0])
            _insert_postings(cursor, entry_id, postings, moment)
            _insert_entry(cursor, entry_id, moment)
        else:
            cursor.execute("SELECT nextval(pg_get_serial_sequence('ledger_entry', 'id'))")
            entry_id = int(cursor.fetchone()[0])
            _insert_entry(cursor, entry_id, moment)
            _insert_postings(cursor, entry_id, postings, moment)
        cursor.execute(
            "UPDATE ledger_account SET debits_posted = debits_posted + %s, "
            "posting_count = posting_count + 1 WHERE id = %s",
            [amount, cash.pk],
        )
        cursor.execute(
            "UPDATE ledger_account SET credits_posted = credits_posted + %s, "
            "posting_count = posting_count + 1 WHERE id = %s",
            [amount, prepaid.pk],
        )
    return entry_id


def _insert_entry(cursor: CursorWrapper, entry_id: int, moment: datetime | str) -> None:
    cursor.execute(
        "INSERT INTO ledger_entry (id, idempotency_key, request_hash, kind, posted_at, effective_at, "
        "metadata) VALUES (%s, 'forged-1', 'x', 'payment', %s, %s, '{}')",
        [entry_id, moment, moment],
    )


def _insert_postings(
    cursor: CursorWrapper, entry_id: int, postings: list[tuple[int, int, int, int]], moment: datetime | str
) -> None:
    for account_id, amount, debits_after, credits_after in postings:
        cursor.execute(
            "INSERT INTO ledger_posting (entry_id, account_id, amount, currency, posted_at, debits_after, "
            "credits_after) VALUES (%s, %s, %s, 'CNY', %s, %s, %s)",
            [entry_id, account_id, amount, moment, debits_after, credits_after],
        )


@pytest.mark.django_db
def test_an_entry_inserted_outside_the_application_is_found_by_the_chain_check(sealed: Sealed) -> None:
    entry_id = insert_balanced_entry(sealed.chart, 70000)

    # Balanced, with consistent totals: only the missing chain link or queue row gives it away.
    assert findings() == {("chain", f"entry {entry_id}")}


@pytest.mark.django_db
def test_verify_ledger_fails_with_exit_code_1_and_names_the_finding(sealed: Sealed) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "UPDATE ledger_account SET credits_posted = credits_posted + 1 WHERE id = %s",
            [sealed.chart.prepaid.pk],
        )
    out, err = StringIO(), StringIO()

    with pytest.raises(CommandError) as raised:
        call_command("verify_ledger", stdout=out, stderr=err)

    assert raised.value.returncode == 1
    assert "1 findings" in str(raised.value)
    assert "[totals] account prepaid:c1" in out.getvalue()
    assert "OK" not in out.getvalue()


# --- PostgreSQL: tampering behind the triggers' back ----------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("triggers_stay_on")
def test_postgres_a_changed_posting_amount_is_found(sealed: Sealed) -> None:
    release = sealed.entries[1]
    posting = Posting.objects.get(entry_id=release.pk, account_id=sealed.chart.payable.pk)
    with tampering("ledger_posting") as cursor:
        cursor.execute("UPDATE ledger_posting SET amount = -2000 WHERE id = %s", [posting.pk])

    assert findings() == {
        ("zero_sum", f"entry {release.pk}"),
        ("totals", "account payable:i1"),
        ("running_totals", "account payable:i1"),
        ("chain", f"link {sealed.link_of(1)}"),
    }


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("triggers_stay_on")
def test_postgres_a_posting_moved_to_an_entry_that_does_not_exist_is_found(sealed: Sealed) -> None:
    release = sealed.entries[1]
    posting = Posting.objects.get(entry_id=release.pk, account_id=sealed.chart.payable.pk)
    with tampering("ledger_posting") as cursor:
        cursor.execute("UPDATE ledger_posting SET entry_id = 999999 WHERE id = %s", [posting.pk])

    report = verification.verify()
    assert (
        verification.Finding(
            "zero_sum", f"posting {posting.pk}", "belongs to entry 999999, which does not exist"
        )
        in report.findings
    )
    assert {(f.check, f.subject) for f in report.findings} == {
        ("zero_sum", f"entry {release.pk}"),  # its sum, and its count of postings
        ("zero_sum", f"posting {posting.pk}"),
        ("zero_sum", "entry 999999"),  # the one posting's sum
        ("chain", f"link {sealed.link_of(1)}"),
    }


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("triggers_stay_on")
def test_postgres_a_deleted_entry_is_found(sealed: Sealed) -> None:
    """Deleting the release (link 2) with its postings and its chain link."""
    release = sealed.entries[1]
    with tampering("ledger_chainlink", "ledger_posting", "ledger_entry") as cursor:
        cursor.execute("DELETE FROM ledger_chainlink WHERE entry_id = %s", [release.pk])
        cursor.execute("DELETE FROM ledger_posting WHERE entry_id = %s", [release.pk])
        cursor.execute("DELETE FROM ledger_entry WHERE id = %s", [release.pk])

    assert not Entry.objects.filter(pk=release.pk).exists()
    assert findings() == {
        ("totals", "account prepaid:c1"),
        ("totals", "account payable:i1"),
        # Later postings on both accounts still carry the deleted amounts in their running totals.
        ("running_totals", "account prepaid:c1"),
        ("running_totals", "account payable:i1"),
        # The next link jumps a sequence number and points at a hash that is gone.
        ("chain", "link 3"),
    }


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("triggers_stay_on")
def test_postgres_a_deleted_last_entry_is_found_by_the_checkpoint(sealed: Sealed) -> None:
    """The chain alone cannot tell a cut-off tail; the signed checkpoint of link 4 can."""
    last = sealed.entries[3]
    with tampering("ledger_chainlink", "ledger_posting", "ledger_entry") as cursor:
        cursor.execute("DELETE FROM ledger_chainlink WHERE entry_id = %s", [last.pk])
        cursor.execute("DELETE FROM ledger_posting WHERE entry_id = %s", [last.pk])
        cursor.execute("DELETE FROM ledger_entry WHERE id = %s", [last.pk])

    assert findings() == {
        ("totals", "account custody_cash:i1"),
        ("totals", "account prepaid:c1"),
        ("checkpoint", f"checkpoint {sealed.checkpoint.pk}"),
    }


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("triggers_stay_on")
def test_postgres_an_inserted_entry_without_queue_or_link_is_found(sealed: Sealed) -> None:
    entry_id = insert_balanced_entry(sealed.chart, 70000)

    assert findings() == {("chain", f"entry {entry_id}")}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("triggers_stay_on")
def test_postgres_reordered_chain_links_are_found(sealed: Sealed) -> None:
    second, third = sealed.entries[1].pk, sealed.entries[2].pk
    with tampering("ledger_chainlink") as cursor:
        # entry_id is unique: park one link on a placeholder (the foreign key is checked at commit).
        cursor.execute("UPDATE ledger_chainlink SET entry_id = -1 WHERE seq = 2")
        cursor.execute("UPDATE ledger_chainlink SET entry_id = %s WHERE seq = 3", [second])
        cursor.execute("UPDATE ledger_chainlink SET entry_id = %s WHERE seq = 2", [third])

    assert list(ChainLink.objects.order_by("seq").values_list("entry_id", flat=True))[1:3] == [third, second]
    assert findings() == {("chain", "link 2"), ("chain", "link 3")}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("triggers_stay_on")
def test_postgres_a_tamper_at_a_chunk_boundary_is_found_whatever_the_chunk_size(sealed: Sealed) -> None:
    """In chunks of two, link 3 starts the second chunk: its prev_hash is checked against the first chunk's
    last link, and a posting changed in link 4 is found there too, in order."""
    third, fourth = sealed.entries[2].pk, sealed.entries[3].pk
    with tampering("ledger_chainlink", "ledger_posting") as cursor:
        cursor.execute("UPDATE ledger_chainlink SET prev_hash = %s WHERE seq = 3", ["ab" * 32])
        cursor.execute("UPDATE ledger_posting SET amount = amount * 2 WHERE entry_id = %s", [fourth])

    in_twos = list(walk_chain(chunk=2))

    assert [(c.seq, c.entry_id, c.problem) for c in in_twos] == [
        (3, third, "link does not follow the previous one (prev_hash differs)"),
        (3, third, f"entry {third} differs from what was sealed at link 3"),
        (4, fourth, f"entry {fourth} differs from what was sealed at link 4"),
    ]
    assert list(walk_chain(chunk=3)) == in_twos
    assert list(walk_chain()) == in_twos


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("triggers_stay_on")
def test_postgres_a_changed_materialized_total_is_found(sealed: Sealed) -> None:
    with tampering("ledger_account") as cursor:
        cursor.execute(
            "UPDATE ledger_account SET credits_posted = credits_posted + 5000 WHERE id = %s",
            [sealed.chart.prepaid.pk],
        )

    assert findings() == {("totals", "account prepaid:c1")}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("triggers_stay_on")
def test_postgres_a_changed_checkpoint_payload_is_found(sealed: Sealed) -> None:
    body = json.loads(sealed.checkpoint.payload)
    body["created_at"] = body["created_at"].replace("20", "19", 1)
    forged = json.dumps(body, sort_keys=True, separators=(",", ":"))
    assert forged != sealed.checkpoint.payload
    with tampering("ledger_checkpoint") as cursor:
        cursor.execute(
            "UPDATE ledger_checkpoint SET payload = %s WHERE id = %s", [forged, sealed.checkpoint.pk]
        )

    report = verification.verify()
    assert {(f.check, f.subject) for f in report.findings} == {
        ("checkpoint", f"checkpoint {sealed.checkpoint.pk}")
    }
    assert report.findings[0].problem == "signature does not verify"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("triggers_stay_on")
def test_postgres_a_rewritten_checkpoint_head_is_found(sealed: Sealed) -> None:
    """Moving the stored head to another link (without re-signing) is caught twice over."""
    with tampering("ledger_checkpoint") as cursor:
        cursor.execute("UPDATE ledger_checkpoint SET chain_seq = 2 WHERE id = %s", [sealed.checkpoint.pk])

    problems = {f.problem for f in verification.verify().findings if f.check == "checkpoint"}
    assert findings() == {("checkpoint", f"checkpoint {sealed.checkpoint.pk}")}
    assert problems == {
        "stored head differs from the signed payload",
        "chain link 2 no longer has the signed hash",
    }


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("triggers_stay_on")
def test_postgres_a_checkpoint_payload_that_is_not_json_is_a_finding(sealed: Sealed) -> None:
    with tampering("ledger_checkpoint") as cursor:
        cursor.execute(
            "UPDATE ledger_checkpoint SET payload = 'garbage' WHERE id = %s", [sealed.checkpoint.pk]
        )

    assert findings() == {("checkpoint", f"checkpoint {sealed.checkpoint.pk}")}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("triggers_stay_on")
def test_postgres_a_posted_hold_marked_voided_is_found(sealed: Sealed) -> None:
    assert sealed.lesson.state == "posted"
    with tampering("ledger_pendingtransfer") as cursor:
        cursor.execute(
            "UPDATE ledger_pendingtransfer SET state = 'voided', posted_amount = NULL WHERE id = %s",
            [sealed.lesson.pk],
        )

    assert findings() == {("pending", f"pending transfer {sealed.lesson.pk}")}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("triggers_stay_on")
def test_postgres_verify_ledger_fails_on_a_tampered_ledger(sealed: Sealed) -> None:
    with tampering("ledger_posting") as cursor:
        cursor.execute(
            "UPDATE ledger_posting SET amount = amount + 1 WHERE entry_id = %s", [sealed.entries[0].pk]
        )
    out, err = StringIO(), StringIO()

    with pytest.raises(CommandError) as raised:
        call_command("verify_ledger", stdout=out, stderr=err)

    assert raised.value.returncode == 1
    assert f"[zero_sum] entry {sealed.entries[0].pk}" in out.getvalue()
    assert "[chain] link 1" in out.getvalue()

"""A refund's ledger entry and a payout instruction's hold must exist: on PostgreSQL through the triggers of
custody/sql/ledger_references.postgresql.sql (migration 0012 dropped the foreign keys and their checks per row
at COMMIT), on SQLite through the foreign keys it keeps (checked here by ``check_constraints``, as at COMMIT).
Each case has its control: the same write naming a row that exists goes through."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from custody.models import (
    Contract,
    PayoutInstruction,
    PayoutKind,
    Refund,
    RefundReason,
    RefundState,
)
from ledger.money import cny
from ledger.services import create_pending, transfer
from tests.custody.conftest import ContractFactory

pytestmark = pytest.mark.django_db

MISSING = r"which does not exist|FOREIGN KEY|foreign key"


@dataclass(frozen=True)
class LedgerRows:
    contract: Contract
    entry_id: int
    hold_id: int
    nowhere: int  # an id no entry and no hold has


@pytest.fixture
def rows(make_contract: ContractFactory) -> LedgerRows:
    contract = make_contract()
    cash = contract.institution.cash_account
    entry = transfer(
        idempotency_key="refs-entry",
        kind="test",
        debit_account=cash,
        credit_account=contract.prepaid_account,
        amount=cny("10.00"),
    )
    hold = create_pending(
        idempotency_key="refs-hold",
        kind="test",
        debit_account=contract.prepaid_account,
        credit_account=cash,
        amount=cny("1.00"),
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT max(id) + 1000 FROM (SELECT max(id) AS id FROM ledger_entry "
            "UNION ALL SELECT max(id) FROM ledger_pendingtransfer) ids"
        )
        nowhere = int(cursor.fetchone()[0])
    return LedgerRows(contract, entry.pk, hold.pk, nowhere)


def refund(rows: LedgerRows, n: int, entry_id: int | None) -> Refund:
    now = timezone.now()
    return Refund(
        contract=rows.contract,
        reason=RefundReason.PARENT_CLAIM,
        state=RefundState.REJECTED,
        idempotency_key=f"refs-refund-{n}",
        claimed_at=now,
        entry_id=entry_id,
    )


def payout(rows: LedgerRows, n: int, hold_id: int) -> PayoutInstruction:
    return PayoutInstruction(
        institution=rows.contract.institution,
        kind=PayoutKind.REFUND,
        reference=f"REFS{n}",
        amount_fen=100,
        destination_account="6222020200112233445",
        pending_transfer_id=hold_id,
        instructed_at=timezone.now(),
    )


def refused_unless(exists: bool) -> contextlib.AbstractContextManager[object]:
    return contextlib.nullcontext() if exists else pytest.raises(IntegrityError, match=MISSING)


def check(tables: Sequence[str]) -> None:
    connection.check_constraints(table_names=list(tables))


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("exists", [True, False])
def test_refunds_are_inserted_only_with_entries_that_exist(
    rows: LedgerRows, exists: bool, count: int
) -> None:
    """One statement of ``count`` refunds, the middle one naming the entry (or nothing that exists)."""
    batch = [refund(rows, n, None) for n in range(count)]
    batch[count // 2].entry_id = rows.entry_id if exists else rows.nowhere

    with refused_unless(exists), transaction.atomic():
        Refund.objects.bulk_create(batch)
        check(["custody_refund"])

    assert Refund.objects.filter(idempotency_key__startswith="refs-refund-").count() == (
        count if exists else 0
    )


@pytest.mark.parametrize("exists", [True, False])
def test_a_refund_is_updated_only_to_an_entry_that_exists(rows: LedgerRows, exists: bool) -> None:
    saved = refund(rows, 0, None)
    saved.save()

    with refused_unless(exists), transaction.atomic():
        Refund.objects.filter(pk=saved.pk).update(entry_id=rows.entry_id if exists else rows.nowhere)
        check(["custody_refund"])

    saved.refresh_from_db()
    assert saved.entry_id == (rows.entry_id if exists else None)


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("exists", [True, False])
def test_payout_instructions_are_inserted_only_with_holds_that_exist(
    rows: LedgerRows, exists: bool, count: int
) -> None:
    # The others name holds of their own: the hold is one-to-one with its instruction.
    others = [
        create_pending(
            idempotency_key=f"refs-hold-{n}",
            kind="test",
            debit_account=rows.contract.prepaid_account,
            credit_account=rows.contract.institution.cash_account,
            amount=cny("0.01"),
        ).pk
        for n in range(count - 1)
    ]
    holds = [*others[: count // 2], rows.hold_id if exists else rows.nowhere, *others[count // 2 :]]

    with refused_unless(exists), transaction.atomic():
        PayoutInstruction.objects.bulk_create([payout(rows, n, hold) for n, hold in enumerate(holds)])
        check(["custody_payoutinstruction"])

    assert PayoutInstruction.objects.filter(reference__startswith="REFS").count() == (count if exists else 0)


@pytest.mark.parametrize("exists", [True, False])
def test_a_payout_instruction_is_updated_only_to_a_hold_that_exists(rows: LedgerRows, exists: bool) -> None:
    first = create_pending(
        idempotency_key="refs-hold-first",
        kind="test",
        debit_account=rows.contract.prepaid_account,
        credit_account=rows.contract.institution.cash_account,
        amount=cny("0.01"),
    )
    saved = payout(rows, 0, first.pk)
    saved.save()

    with refused_unless(exists), transaction.atomic():
        PayoutInstruction.objects.filter(pk=saved.pk).update(
            pending_transfer_id=rows.hold_id if exists else rows.nowhere
        )
        check(["custody_payoutinstruction"])

    saved.refresh_from_db()
    assert saved.pending_transfer_id == (rows.hold_id if exists else first.pk)


@pytest.mark.postgres
def test_postgres_the_ledger_references_are_triggers_not_foreign_keys() -> None:
    with connection.cursor() as cursor:
        found = {
            (table, column)
            for table in ("custody_refund", "custody_payoutinstruction")
            for info in connection.introspection.get_constraints(cursor, table).values()
            if info["foreign_key"]
            for column in info["columns"]
        }
    assert ("custody_refund", "entry_id") not in found
    assert ("custody_payoutinstruction", "pending_transfer_id") not in found
    assert ("custody_refund", "contract_id") in found  # the custody-side references keep their constraints

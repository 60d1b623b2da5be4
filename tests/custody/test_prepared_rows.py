"""The prepared hot paths read and write model rows without the ORM: they must agree with it to the field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TypeVar

import pytest
from django.db.models import Model

from custody.models import CallbackLog, CallbackOutcome, Contract, Payment
from custody.selectors._prepared import ModelColumns, RowWrite, fetch_one, insert_of, write_rows
from custody.services.contracts import activate_paid_contract
from ledger.money import cny
from ledger.services import open_account, transfer
from tests.custody.conftest import ContractFactory

pytestmark = pytest.mark.django_db

M = TypeVar("M", bound=Model)


def _fields(obj: object) -> dict[str, object]:
    return {f.attname: getattr(obj, f.attname) for f in type(obj)._meta.concrete_fields}  # type: ignore[attr-defined]


def test_a_row_loaded_from_prepared_sql_equals_the_orms(make_contract: ContractFactory) -> None:
    contract = make_contract()
    activate_paid_contract(
        contract=contract, paid_at=datetime(2026, 3, 1, 8, tzinfo=UTC), payer_account="6222 0000 1111"
    )
    columns = ModelColumns(Contract, "c")
    row = fetch_one(f"SELECT 7, {columns.sql} FROM custody_contract c WHERE c.id = %s", [contract.pk])
    assert row is not None
    loaded = columns.load(row, 1)
    assert _fields(loaded) == _fields(Contract.objects.get(pk=contract.pk))
    assert loaded.payer_account == "6222 0000 1111"  # decrypted as the ORM does
    assert loaded.state == "active" and loaded.paid_at == datetime(2026, 3, 1, 8, tzinfo=UTC)
    assert loaded._state.adding is False


def _insert(obj: M) -> M:
    write_rows(insert_of(obj))
    return obj


def test_a_row_inserted_by_insert_of_reads_back_through_the_orm(make_contract: ContractFactory) -> None:
    contract = make_contract()
    entry = transfer(
        idempotency_key="prepared-rows:1",
        kind="payment",
        debit_account=open_account(code="test:prepared:clearing", type="asset"),
        credit_account=open_account(code="test:prepared:prepaid", type="liability"),
        amount=cny("1.00"),
    )
    payment = _insert(
        Payment(
            contract=contract,
            channel="bank",
            transaction_id="T-prepared-1",
            amount_fen=contract.amount_fen,
            currency="CNY",
            paid_at=datetime(2026, 3, 1, 8, tzinfo=UTC),
            received_at=datetime(2026, 3, 1, 8, 1, tzinfo=UTC),
            payer_account="6222 0000 2222",
            entry=entry,
            raw_payload='{"amount": 1, "付款人": "二"}'.encode(),
        )
    )
    assert payment.pk is not None and payment._state.adding is False
    stored = Payment.objects.get(pk=payment.pk)
    assert bytes(stored.raw_payload) == '{"amount": 1, "付款人": "二"}'.encode()
    stored.raw_payload = payment.raw_payload  # memoryview as read, bytes as written
    assert _fields(stored) == _fields(payment)
    log = _insert(
        CallbackLog(
            channel="bank",
            received_at=datetime(2026, 3, 1, 8, 1, tzinfo=UTC),
            outcome=CallbackOutcome.ACCEPTED,
            body_sha256="0" * 64,
            body_size=3,
        )
    )
    assert CallbackLog.objects.get(pk=log.pk).outcome == CallbackOutcome.ACCEPTED


def test_the_payer_account_is_stored_encrypted(make_contract: ContractFactory) -> None:
    contract = make_contract()
    activate_paid_contract(
        contract=contract, paid_at=datetime(2026, 3, 1, 8, tzinfo=UTC), payer_account="6222 0000 3333"
    )
    (stored,) = fetch_one("SELECT payer_account FROM custody_contract WHERE id = %s", [contract.pk]) or (
        None,
    )
    assert stored and "6222" not in stored


def test_write_rows_runs_independent_writes_and_sets_the_inserted_keys(
    make_contract: ContractFactory,
) -> None:
    contract = make_contract()
    log = CallbackLog(
        channel="bank",
        received_at=datetime(2026, 3, 1, 8, 1, tzinfo=UTC),
        outcome=CallbackOutcome.ACCEPTED,
        body_sha256="1" * 64,
        body_size=4,
    )
    renamed = RowWrite(
        "UPDATE custody_contract SET subject = %s WHERE id = %s RETURNING id", ["物理", contract.pk]
    )
    missing = RowWrite("UPDATE custody_contract SET subject = %s WHERE id = %s RETURNING id", ["化学", -1])

    ids = write_rows(renamed, insert_of(log), missing)

    assert ids == [contract.pk, log.pk, None]
    assert log.pk is not None and log._state.adding is False
    assert CallbackLog.objects.get(pk=log.pk).body_sha256 == "1" * 64
    assert Contract.objects.get(pk=contract.pk).subject == "物理"

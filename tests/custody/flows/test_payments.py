"""Flow 1, payments in: a signed callback credits prepaid:c once; settlement moves it into custody."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from datetime import timedelta
from unittest.mock import patch

import pytest
from django.db import connection

from custody.channels import CallbackRejected, RejectCode
from custody.errors import NotFound, PaymentRejected
from custody.models import CallbackLog, CallbackOutcome, Contract, ContractState, Payment, Student
from custody.selectors.balances import custody_invariant
from custody.services import payments
from custody.services.institutions import freeze_institution
from custody.services.payments import settle_payments
from ledger import clock
from ledger.models import Account, Posting
from ledger.services import open_account
from tests.custody.conftest import ContractFactory, CourseFactory, InstitutionFactory
from tests.custody.flows.conftest import (
    NOW,
    PAYER_ACCOUNT,
    BankCallbackFactory,
    cash,
    clearing,
    ledger_rows,
    posted,
    prepaid,
)

pytestmark = pytest.mark.django_db


def test_a_bank_payment_credits_prepaid_settles_into_custody_and_activates_the_contract(
    make_contract: ContractFactory, bank_callback: BankCallbackFactory
) -> None:
    contract = make_contract()
    callback = bank_callback(contract, txn="BK0001")

    payment = callback.send()

    assert (payment.channel, payment.transaction_id, payment.amount_fen) == ("bank", "BK0001", 160_000)
    assert bytes(payment.raw_payload) == callback.body
    assert payment.settlement_entry_id is not None
    assert posted(prepaid(contract)) == 160_000
    assert posted(clearing("bank", contract.institution)) == 0  # confirmed and settled at once
    assert Account.objects.get(code=clearing("bank", contract.institution)).posting_count == 2
    assert posted(cash(contract.institution)) == 160_000
    contract.refresh_from_db()
    assert contract.state == ContractState.ACTIVE
    assert contract.paid_at == NOW
    assert contract.payer_account == PAYER_ACCOUNT
    with connection.cursor() as cursor:  # the payer account is encrypted at rest
        cursor.execute("SELECT payer_account FROM custody_payment WHERE id = %s", [payment.pk])
        assert PAYER_ACCOUNT not in cursor.fetchone()[0]
    log = CallbackLog.objects.get()
    assert (log.outcome, log.transaction_id, log.source_ip) == (
        CallbackOutcome.ACCEPTED,
        "BK0001",
        "10.1.2.3",
    )
    assert log.body_sha256 == hashlib.sha256(callback.body).hexdigest()


def test_the_payments_contract_reads_every_field_as_the_orm_does(
    make_contract: ContractFactory, bank_callback: BankCallbackFactory
) -> None:
    """The callback's lock statement loads only the columns a payment uses (the rest deferred): the payment
    it returns still shows its contract and institution as stored, the deferred fields read on access."""
    contract = make_contract()

    payment = bank_callback(contract, txn="BK-fields").send()

    for loaded, stored in (
        (payment.contract, Contract.objects.get(pk=contract.pk)),
        (payment.contract.institution, contract.institution),
    ):
        for field in type(stored)._meta.concrete_fields:
            assert getattr(loaded, field.attname) == getattr(stored, field.attname), field.attname


def test_a_replayed_callback_returns_the_first_payment_and_posts_nothing(
    make_contract: ContractFactory, bank_callback: BankCallbackFactory
) -> None:
    contract = make_contract()
    first = bank_callback(contract, txn="BK0002").send()
    rows = ledger_rows()

    again = bank_callback(contract, txn="BK0002").send()  # same payment, new nonce and signature

    assert again.pk == first.pk
    assert ledger_rows() == rows
    assert posted(prepaid(contract)) == 160_000
    assert Payment.objects.count() == 1
    assert list(CallbackLog.objects.order_by("pk").values_list("outcome", flat=True)) == [
        "accepted",
        "replay",
    ]


@pytest.mark.postgres
def test_a_payment_posts_on_the_generic_plan_of_the_ledger_statement(
    make_contract: ContractFactory, bank_callback: BankCallbackFactory
) -> None:
    """The lock statement sets the transaction on generic plans, so the posting statement (arrays, which
    PostgreSQL would otherwise plan on every call) is never planned for the payment's values."""

    def plans() -> tuple[int, int]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT coalesce(sum(generic_plans), 0), coalesce(sum(custom_plans), 0) "
                "FROM pg_prepared_statements "
                "WHERE statement LIKE '%unnest%' AND statement LIKE '%INSERT INTO ledger_entry%'"
            )
            generic, custom = cursor.fetchone()
        return int(generic), int(custom)

    before = plans()
    for n in range(3):  # one student: three 20-hour contracts reach the 60-hour cap
        bank_callback(make_contract(), txn=f"BK-generic-{n}").send()

    generic, custom = plans()
    assert (generic - before[0], custom - before[1]) == (3, 0)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"amount_fen": 159_999}, "wrong_amount"),
        ({"amount_fen": 160_001}, "wrong_amount"),
        ({"order_reference": "HT2024030499999999"}, "unknown_order"),
    ],
)
def test_an_unacceptable_payment_is_rejected_logged_and_changes_nothing(
    make_contract: ContractFactory, bank_callback: BankCallbackFactory, change: dict, reason: str
) -> None:
    contract = make_contract()
    callback = bank_callback(contract, txn="BK0003", **change)
    rows = ledger_rows()

    with pytest.raises(PaymentRejected) as info:
        callback.send()

    assert info.value.details["reason"] == reason
    assert ledger_rows() == rows
    assert Payment.objects.count() == 0
    assert Contract.objects.get(pk=contract.pk).state == ContractState.AWAITING_PAYMENT
    log = CallbackLog.objects.get()
    assert (log.outcome, log.reason_code, log.transaction_id) == ("rejected", reason, "BK0003")
    assert (log.body_sha256, log.body_size) == (hashlib.sha256(callback.body).hexdigest(), len(callback.body))


def test_a_bad_signature_is_rejected_logged_by_digest_only_and_changes_nothing(
    make_contract: ContractFactory, bank_callback: BankCallbackFactory
) -> None:
    contract = make_contract()
    callback = bank_callback(contract)
    tampered = callback.body.replace(b'"amount_fen":160000', b'"amount_fen":1')
    assert tampered != callback.body
    rows = ledger_rows()

    with pytest.raises(CallbackRejected) as info:
        type(callback)("bank", callback.headers, tampered).send()

    assert info.value.code is RejectCode.BAD_SIGNATURE
    assert ledger_rows() == rows
    log = CallbackLog.objects.get()
    assert (log.outcome, log.reason_code, log.transaction_id) == ("rejected", "bad_signature", "")
    assert log.body_sha256 == hashlib.sha256(tampered).hexdigest()


def test_a_second_payment_for_a_paid_contract_is_refused(
    paid_contract: Contract, bank_callback: BankCallbackFactory
) -> None:
    rows = ledger_rows()
    with pytest.raises(PaymentRejected) as info:
        bank_callback(paid_contract, txn="BK-OTHER").send()
    assert info.value.details["reason"] == "contract_not_awaiting_payment"
    assert ledger_rows() == rows
    assert posted(prepaid(paid_contract)) == 160_000


def test_a_transaction_id_reused_for_another_contract_is_a_conflict(
    make_contract: ContractFactory, make_student: Callable, bank_callback: BankCallbackFactory
) -> None:
    first = make_contract()
    second = make_contract(student=make_student())
    bank_callback(first, txn="BK-SAME").send()
    with pytest.raises(PaymentRejected) as info:
        bank_callback(second, txn="BK-SAME").send()
    assert info.value.details["reason"] == "transaction_conflict"
    assert Contract.objects.get(pk=second.pk).state == ContractState.AWAITING_PAYMENT


def test_a_frozen_or_unlisted_institution_takes_no_payment(
    make_contract: ContractFactory, make_student: Callable, bank_callback: BankCallbackFactory
) -> None:
    frozen = make_contract()
    unlisted = make_contract(student=make_student())
    freeze_institution(institution=frozen.institution, reason="监管调查 investigation")
    with pytest.raises(PaymentRejected) as info:
        bank_callback(frozen, txn="BK-F").send()
    assert info.value.details["reason"] == "institution_not_active"

    type(unlisted.institution).objects.filter(pk=unlisted.institution_id).update(
        state="active", whitelisted=False
    )
    with pytest.raises(PaymentRejected) as info:
        bank_callback(unlisted, txn="BK-W").send()
    assert info.value.details["reason"] == "institution_not_whitelisted"
    assert Payment.objects.count() == 0


def test_wechat_payments_wait_in_clearing_until_their_settlement_arrives(
    make_contract: ContractFactory, wechat_callback: Callable
) -> None:
    contract = make_contract()
    institution = contract.institution
    payment = wechat_callback(contract, txn="4200000001").send()

    assert payment.settlement_entry_id is None
    assert posted(clearing("wechat", institution)) == 160_000
    assert posted(cash(institution)) == 0
    invariant = custody_invariant(institution)
    assert (invariant.cash_fen, invariant.in_clearing_fen, invariant.prepaid_fen) == (0, 160_000, 160_000)

    clock.advance(timedelta(days=1))
    settled = settle_payments(channel="wechat", transaction_ids=["4200000001"])
    assert [p.settlement_entry_id is not None for p in settled] == [True]
    assert posted(clearing("wechat", institution)) == 0
    assert posted(cash(institution)) == 160_000

    rows = ledger_rows()
    settle_payments(channel="wechat", transaction_ids=["4200000001"])  # the settlement file again
    assert ledger_rows() == rows
    with pytest.raises(NotFound):
        settle_payments(channel="wechat", transaction_ids=["4200000001", "4200999999"])
    assert ledger_rows() == rows


def test_each_institution_has_its_own_clearing_account_per_channel(
    make_contract: ContractFactory,
    make_institution: InstitutionFactory,
    make_course: CourseFactory,
    make_student: Callable[..., Student],
    bank_callback: BankCallbackFactory,
) -> None:
    # Payments at different institutions lock no account in common, so they do not queue on one another.
    first = make_contract()
    other = make_institution(name="远航学科培训中心")
    second = make_contract(course=make_course(institution=other), student=make_student())
    bank_callback(first, txn="BK-I1").send()
    bank_callback(second, txn="BK-I2").send()

    locked = [
        {p.account.code for p in Posting.objects.filter(entry__in=[pay.entry_id, pay.settlement_entry_id])}
        for pay in Payment.objects.order_by("pk").select_related("contract")
    ]
    assert locked == [
        {clearing("bank", first.institution), cash(first.institution), prepaid(first)},
        {clearing("bank", other), cash(other), prepaid(second)},
    ]


def test_a_payment_recorded_in_a_channel_wide_clearing_account_settles_out_of_it(
    make_contract: ContractFactory, wechat_callback: Callable
) -> None:
    # Before clearing was kept per institution, payments were posted to ``clearing:{channel}``: their
    # settlement must credit the account they debited, not the institution's new one.
    contract = make_contract()
    channel_wide = open_account(code="clearing:wechat", type="asset")
    with patch.object(payments, "clearing_account", return_value=channel_wide):
        wechat_callback(contract, txn="4200000009").send()
    assert posted("clearing:wechat") == 160_000

    clock.advance(timedelta(days=1))
    settle_payments(channel="wechat", transaction_ids=["4200000009"])
    assert posted("clearing:wechat") == 0
    assert posted(clearing("wechat", contract.institution)) == 0
    assert posted(cash(contract.institution)) == 160_000


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_same_callback_racing_on_two_connections_is_recorded_once(
    make_contract: ContractFactory, bank_callback: BankCallbackFactory
) -> None:
    contract = make_contract()
    callbacks = [bank_callback(contract, txn="BK-RACE") for _ in range(2)]
    barrier = threading.Barrier(2)
    results: list[object] = []

    def deliver(callback: object) -> None:
        try:
            barrier.wait(timeout=10)
            results.append(callback.send())  # type: ignore[attr-defined]
        except BaseException as error:
            results.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver, args=(c,)) for c in callbacks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert all(isinstance(r, Payment) for r in results), results
    assert len({r.pk for r in results}) == 1  # type: ignore[attr-defined]
    assert Payment.objects.count() == 1
    assert posted(prepaid(contract)) == 160_000
    assert sorted(CallbackLog.objects.values_list("outcome", flat=True)) == ["accepted", "replay"]

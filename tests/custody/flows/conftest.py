"""Fixtures for the money flows: a frozen business clock, configured payment channels with keys made at test
time, helpers that pay a contract through a real signed callback, and the invariants checked after every test.

Business time is frozen at Monday 2024-03-04 10:00 in Shanghai (a year ``chinese_calendar`` knows, with the
Qingming 调休 a month later), so working-day deadlines are exact dates. The shared fixtures of
tests/custody/conftest.py (jurisdiction, institution, course, guardian, student, make_contract) build on it.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db.models import Q

from custody.channels.bank import bank_callback_body, sign_bank_callback
from custody.channels.wechat import build_wechat_notification, wechat_transaction
from custody.models import Contract, ContractState, Institution, Payment
from custody.selectors.balances import contract_position, custody_invariant
from custody.services.payments import receive_callback
from ledger import clock, verification
from ledger.models import Account, Entry, PendingTransfer
from tests.custody.conftest import ContractFactory

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2024, 3, 4, 10, 0, tzinfo=SHANGHAI)  # a Monday
BANK_KEY_ID = "bank-test-1"
PAYER_ACCOUNT = "6222020200112233445"
WECHAT_KEY_ID = "PUB_KEY_ID_0114232024030400000000000000000001"
WECHAT_API_V3_KEY = "0123456789abcdefghijABCDEFGHIJkl"
WECHAT_MCHID = "1900000001"
WECHAT_APPID = "wx0000000000000001"


@pytest.fixture(autouse=True)
def _business_time() -> Iterator[None]:
    with clock.frozen_at(NOW):
        yield


@pytest.fixture(scope="session")
def bank_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def wechat_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(autouse=True)
def _channels(settings: Any, bank_key: Ed25519PrivateKey, wechat_key: rsa.RSAPrivateKey) -> None:
    public_pem = (
        wechat_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    settings.CUSTODY_CHANNELS = {
        "bank": {"keys": {BANK_KEY_ID: base64.b64encode(bank_key.public_key().public_bytes_raw()).decode()}},
        "wechat": {
            "mchid": WECHAT_MCHID,
            "api_v3_key": WECHAT_API_V3_KEY,
            "public_keys": {WECHAT_KEY_ID: public_pem},
            "app_ids": [WECHAT_APPID],
        },
    }


@dataclass(frozen=True)
class Callback:
    channel: str
    headers: dict[str, str]
    body: bytes

    def send(self) -> Payment:
        return receive_callback(
            channel=self.channel, headers=self.headers, body=self.body, source_ip="10.1.2.3"
        )


class BankCallbackFactory(Protocol):
    def __call__(
        self,
        contract: Contract,
        *,
        txn: str | None = None,
        amount_fen: int | None = None,
        order_reference: str | None = None,
        payer: str = PAYER_ACCOUNT,
    ) -> Callback: ...


@pytest.fixture
def bank_callback(bank_key: Ed25519PrivateKey) -> BankCallbackFactory:
    """A signed custody-bank callback for ``contract`` (signed now, a fresh nonce each call)."""

    def build(
        contract: Contract,
        *,
        txn: str | None = None,
        amount_fen: int | None = None,
        order_reference: str | None = None,
        payer: str = PAYER_ACCOUNT,
    ) -> Callback:
        body = bank_callback_body(
            transaction_id=txn or f"BK{contract.pk:010d}",
            order_reference=order_reference or contract.number,
            amount_fen=contract.amount_fen if amount_fen is None else amount_fen,
            paid_at=clock.now(),
            payer_account=payer,
        )
        return Callback("bank", sign_bank_callback(bank_key, BANK_KEY_ID, body, clock.now()), body)

    return build


@pytest.fixture
def wechat_callback(wechat_key: rsa.RSAPrivateKey) -> Callable[..., Callback]:
    """A signed, encrypted WeChat Pay notification for ``contract``."""

    def build(
        contract: Contract, *, txn: str | None = None, openid: str = "o-parent-openid-0001"
    ) -> Callback:
        transaction = wechat_transaction(
            mchid=WECHAT_MCHID,
            appid=WECHAT_APPID,
            transaction_id=txn or f"4200{contract.pk:016d}",
            out_trade_no=contract.number,
            total_fen=contract.amount_fen,
            success_time=clock.now(),
            openid=openid,
        )
        headers, body = build_wechat_notification(
            private_key=wechat_key,
            serial=WECHAT_KEY_ID,
            api_v3_key=WECHAT_API_V3_KEY,
            transaction=transaction,
            sent_at=clock.now(),
        )
        return Callback("wechat", headers, body)

    return build


@pytest.fixture
def pay(bank_callback: BankCallbackFactory) -> Callable[[Contract], Contract]:
    """Pay ``contract`` in full through the custody bank's callback; returns the contract, refreshed."""

    def pay_contract(contract: Contract) -> Contract:
        bank_callback(contract).send()
        return Contract.objects.get(pk=contract.pk)

    return pay_contract


@pytest.fixture
def paid_contract(make_contract: ContractFactory, pay: Callable[[Contract], Contract]) -> Contract:
    """20 paid hours at 80.00 yuan (1,600.00), paid through the bank and settled into custody."""
    return pay(make_contract())


# --- reading balances -----------------------------------------------------------------------------------


def posted(code: str) -> int:
    """Posted balance of the account, in fen, on its normal side (0 if it was never opened)."""
    account = Account.objects.filter(code=code).first()
    return 0 if account is None else account.signed_balance(account.debits_posted, account.credits_posted)


def available(code: str) -> int:
    """Posted balance minus pending outflows: what a new hold could still take."""
    account = Account.objects.get(code=code)
    outflow = account.credits_pending if account.is_debit_normal else account.debits_pending
    return account.signed_balance(account.debits_posted, account.credits_posted) - outflow


def pending(code: str) -> tuple[int, int]:
    account = Account.objects.get(code=code)
    return account.debits_pending, account.credits_pending


def ledger_rows() -> tuple[int, int]:
    """How many entries and holds exist: a replay must leave both unchanged."""
    return Entry.objects.count(), PendingTransfer.objects.count()


def cash(institution: Institution) -> str:
    return f"custody_cash:i{institution.pk}"


def clearing(channel: str, institution: Institution) -> str:
    return f"clearing:{channel}:i{institution.pk}"


def payable(institution: Institution) -> str:
    return f"payable:i{institution.pk}"


def prepaid(contract: Contract) -> str:
    return f"prepaid:c{contract.pk}"


def refund_payable(contract: Contract) -> str:
    return f"refund_payable:c{contract.pk}"


# --- invariants after every test ------------------------------------------------------------------------


def assert_invariants() -> None:
    """DESIGN.md section 6: the ledger verifies (zero sums, totals, limits, holds, chain), each institution's
    custody invariant holds, and each paid contract's position adds up."""
    report = verification.verify()
    assert report.ok, report.findings
    for institution in Institution.objects.all():
        invariant = custody_invariant(institution)
        assert invariant.holds, invariant
    for contract in Contract.objects.filter(~Q(state=ContractState.AWAITING_PAYMENT)):
        position = contract_position(contract)
        assert position.balanced, position
        hours_taken = contract.hours_consumed + contract.hours_pending + contract.paid_hours_refunded
        assert hours_taken <= contract.total_hours, contract


@pytest.fixture(autouse=True)
def _flow_invariants(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "db" in request.fixturenames or "transactional_db" in request.fixturenames:
        assert_invariants()

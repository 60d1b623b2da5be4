"""Payments in (缴费): a channel's signed callback confirms a payment; settlement moves it into custody.

Flow 1 of docs/flows.md:

- payment confirmed: Dr ``clearing:{channel}:i`` / Cr ``prepaid:c``,
  key ``payment:{channel}:{transaction_id}``;
- settled into custody (the bank channel at once; WeChat Pay and Alipay when their settlement arrives):
  Dr ``custody_cash:i`` / Cr ``clearing:{channel}:i``, key ``settlement:{channel}:{transaction_id}``.

A channel's clearing account is kept per institution (``clearing_account``): every payment posts to it and
holds its row locked until it commits, so one account per channel made every payment of the channel wait for
the one before it; per institution, only payments at one institution queue (a bank payment already did, on
the custody account its settlement posts to). The channel's money in clearing is the sum of its
institutions' accounts; the custody figures and checks count it from the payments not yet settled, per
institution, so none of them reads these accounts.

In risk-reserve mode the money lands in the institution's own account, so settlement debits
``institution_held:i`` instead of ``custody_cash:i`` (see reserve.py).

A callback is accepted only if it verifies (signature, key, freshness: ``custody.channels``) and then names a
contract awaiting payment (``order_reference`` = contract number), for exactly its amount, in CNY, of an
institution that is active and whitelisted, from a named payer account. Training loans (培训贷) are refused by
construction: a contract is paid in one payment from the payer's own channel account, which is recorded
(encrypted) and is the only place a refund can go back to (原路返回); no third party (a lender) can be paid
out, and instalments are not accepted (the amount must equal the contract's).

Every callback leaves one ``CallbackLog`` row: accepted, replay (the same transaction again: nothing is
posted twice, the first payment is returned) or rejected with a reason code; rejected ones keep only the
body's SHA-256 and size, never the payload.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import Any

from django.db import connection, transaction
from moneyed import Money

from custody.channels import CallbackRejected, PaymentNotice, get_verifier
from custody.errors import NotFound, PaymentRejected
from custody.models import (
    CallbackLog,
    CallbackOutcome,
    Contract,
    ContractState,
    Institution,
    InstitutionState,
    Payment,
    SupervisionMode,
)
from custody.selectors._prepared import ModelColumns, fetch_one, insert_of, load_joined, row_locks
from custody.services.contracts import activate_paid_contract
from ledger import clock
from ledger.backends import generic_plans_column
from ledger.models import Account, AccountType, Posting
from ledger.money import from_minor
from ledger.services import NewEntry, credit, debit, open_account, post_batch

TRANSACTION_ID_MAX = Payment._meta.get_field("transaction_id").max_length or 64


def _clearing_code_prefix(channel: str) -> str:
    return f"clearing:{channel}:i"


def clearing_account(channel: str, institution: Institution) -> Account:
    """``clearing:{channel}:i{pk}``: paid through the channel for the institution's contracts, not yet in
    custody (opened on the institution's first payment through the channel)."""
    return open_account(
        code=f"{_clearing_code_prefix(channel)}{institution.pk}",
        type=AccountType.ASSET,
        name=f"{institution.name} {channel} 在途资金 channel clearing",
    )


def payment_key(channel: str, transaction_id: str) -> str:
    return f"payment:{channel}:{transaction_id}"


def settlement_key(channel: str, transaction_id: str) -> str:
    return f"settlement:{channel}:{transaction_id}"


def receive_callback(
    *, channel: str, headers: Mapping[str, str], body: bytes, source_ip: str | None = None
) -> Payment:
    """Verify a payment callback and record the payment, once.

    Raises ``CallbackRejected`` (from the channel: bad signature, stale, malformed, not paid…) or
    ``PaymentRejected`` (authentic but not acceptable; ``details["reason"]`` is the code), after logging it;
    ``custody.channels.UnknownChannel`` for a channel that is not configured. A replay returns the payment
    recorded the first time.
    """
    now = clock.now()
    verifier = get_verifier(channel)
    try:
        notice = verifier.verify(headers=headers, body=body, now=now)
    except CallbackRejected as rejection:
        _log(channel, CallbackOutcome.REJECTED, body, source_ip, reason=rejection.code.value)
        raise
    try:
        payment, replay = _accept(notice, body=body, source_ip=source_ip, now=now)
    except PaymentRejected as rejection:
        reason = str(rejection.details.get("reason", rejection.code))
        _log(channel, CallbackOutcome.REJECTED, body, source_ip, reason=reason, txn=notice.transaction_id)
        raise
    if replay:
        _log(channel, CallbackOutcome.REPLAY, body, source_ip, txn=notice.transaction_id)
    return payment


def _rejected(reason: str, zh: str, en: str, **details: Any) -> PaymentRejected:
    return PaymentRejected(f"{zh} {en}", reason=reason, **details)


def _accept(
    notice: PaymentNotice, *, body: bytes, source_ip: str | None, now: datetime
) -> tuple[Payment, bool]:
    if len(notice.transaction_id) > TRANSACTION_ID_MAX:
        raise _rejected("transaction_id_too_long", "交易号过长", "the transaction id is too long")
    with transaction.atomic():
        contract, recorded_payment, clearing = _lock_contract_for_payment(notice)
        existing: Payment | None = None
        if contract is not None and recorded_payment is not None:
            existing = Payment.objects.get(pk=recorded_payment)
        elif contract is None or contract.state != ContractState.AWAITING_PAYMENT:
            # Read apart: the subquery saw the snapshot taken before the lock was granted, so a payment that
            # the lock's previous holder committed (paying this contract) is only visible to a new statement.
            existing = Payment.objects.filter(
                channel=notice.channel, transaction_id=notice.transaction_id
            ).first()
        if existing is not None:
            if contract is not None and _same_payment(existing, notice, contract):
                return existing, True
            raise _rejected(
                "transaction_conflict",
                "同一交易号已记录为另一笔付款",
                "this transaction id was recorded for another payment",
            )
        if contract is None:
            raise _rejected("unknown_order", "找不到该订单对应的合同", "no contract has this order reference")
        _check_acceptable(notice, contract)
        log = CallbackLog(
            channel=notice.channel,
            received_at=now,
            outcome=CallbackOutcome.ACCEPTED,
            transaction_id=notice.transaction_id,
            body_sha256=hashlib.sha256(body).hexdigest(),
            body_size=len(body),
            source_ip=source_ip,
        )
        payment = _record(notice, contract, clearing, log, now=now)
    return payment, False


# Only the columns a payment reads (its checks, its entries' accounts, the clearing account's name for an
# institution's first payment); other fields load on first access. A row of every column cost the callback
# more to convert and build than its statement cost the database.
_CONTRACT = ModelColumns(
    Contract,
    "c",
    ["id", "number", "state", "amount_fen", "institution", "prepaid_account", "refund_account", "policy"],
)
_INSTITUTION = ModelColumns(
    Institution, "i", ["id", "name", "supervision_mode", "whitelisted", "state", "cash_account"]
)
_ACCOUNT_FIELDS = ["id", "code", "currency", "type"]
_CASH = ModelColumns(Account, "cash", _ACCOUNT_FIELDS)
_PREPAID = ModelColumns(Account, "prepaid", _ACCOUNT_FIELDS)
_CLEARING = ModelColumns(Account, "clearing", _ACCOUNT_FIELDS)


@cache
def _lock_contract_sql(vendor: str) -> str:
    return f"""
SELECT {_CONTRACT.sql}, {_INSTITUTION.sql}, {_CASH.sql}, {_PREPAID.sql}, {_CLEARING.sql},
       (SELECT p.id FROM custody_payment p WHERE p.channel = %s AND p.transaction_id = %s),
       {generic_plans_column(vendor)}
FROM custody_contract c
JOIN custody_institution i ON i.id = c.institution_id
LEFT JOIN ledger_account cash ON cash.id = i.cash_account_id
LEFT JOIN ledger_account prepaid ON prepaid.id = c.prepaid_account_id
LEFT JOIN ledger_account clearing ON clearing.code = %s || CAST(c.institution_id AS TEXT)
WHERE c.number = %s
{row_locks(update="c")}
"""


def _lock_contract_for_payment(notice: PaymentNotice) -> tuple[Contract | None, int | None, Account | None]:
    """The contract the notice pays (locked), with its institution, custody and prepaid accounts; the
    payment already recorded for this transaction, if any; and the institution's clearing account for the
    channel (``None`` before its first payment through the channel). One prepared statement: the happy
    path's only read. It also sets the rest of the transaction on generic plans (``generic_plans_column``),
    for the ledger's posting of a payment and its settlement, whose arrays would otherwise have it planned
    on every call."""
    row = fetch_one(
        _lock_contract_sql(connection.vendor),
        [
            notice.channel,
            notice.transaction_id,
            _clearing_code_prefix(notice.channel),
            notice.order_reference,
        ],
    )
    if row is None:
        return None, None, None
    (contract, institution, cash, prepaid, clearing), (recorded_payment, _) = load_joined(
        row, _CONTRACT, _INSTITUTION, _CASH, _PREPAID, _CLEARING
    )
    contract.institution = institution
    institution.cash_account = cash
    contract.prepaid_account = prepaid
    return contract, recorded_payment, clearing


def _same_payment(payment: Payment, notice: PaymentNotice, contract: Contract) -> bool:
    # Channels resend with a different raw body (new nonce, later status); the payment's facts must agree.
    return (
        payment.contract_id == contract.pk
        and payment.amount_fen == notice.amount_fen
        and payment.currency == notice.currency
        and payment.payer_account == notice.payer_account
    )


def _check_acceptable(notice: PaymentNotice, contract: Contract) -> None:
    if contract.state != ContractState.AWAITING_PAYMENT:
        raise _rejected(
            "contract_not_awaiting_payment",
            f"合同状态为{contract.state}，不接受付款",
            f"the contract is {contract.state}, not awaiting payment",
            state=contract.state,
        )
    if notice.currency != "CNY":
        raise _rejected("wrong_currency", "币种须为人民币", "the currency must be CNY")
    if notice.amount_fen != contract.amount_fen:
        raise _rejected(
            "wrong_amount",
            f"付款金额{notice.amount_fen}分与合同金额{contract.amount_fen}分不符",
            f"paid {notice.amount_fen} fen; the contract is for {contract.amount_fen} fen",
            expected=contract.amount_fen,
            received=notice.amount_fen,
        )
    institution = contract.institution
    if institution.state != InstitutionState.ACTIVE:
        raise _rejected(
            "institution_not_active",
            f"机构状态为{institution.state}，不能收费",
            f"the institution is {institution.state}; it may not take payments",
            state=institution.state,
        )
    if not institution.whitelisted:
        raise _rejected(
            "institution_not_whitelisted", "机构不在白名单内", "the institution is not whitelisted"
        )
    if not notice.payer_account.strip():
        raise _rejected(
            "no_payer_account",
            "付款账户缺失，不能原路退回（禁止培训贷）",
            "no payer account: refunds could not go back to it (training loans are forbidden)",
        )


def _record(
    notice: PaymentNotice, contract: Contract, clearing: Account | None, log: CallbackLog, *, now: datetime
) -> Payment:
    """Post the payment (and the bank's settlement), then write the payment, the contract's activation and
    the callback log. Posting locks the institution's clearing and custody accounts, which every payment at
    the institution posts to, until the transaction commits; so everything that can be prepared comes before
    it, and one statement follows it."""
    if contract.prepaid_account is None:
        raise RuntimeError(f"contract {contract.number} has no prepaid account")
    amount = from_minor(notice.amount_fen, "CNY")
    if clearing is None:  # the institution's first payment through the channel opens its clearing account
        clearing = clearing_account(notice.channel, contract.institution)
    entries = [
        NewEntry(
            idempotency_key=payment_key(notice.channel, notice.transaction_id),
            kind="payment",
            legs=[debit(clearing, amount), credit(contract.prepaid_account, amount)],
            effective_at=notice.paid_at,
            metadata={
                "contract": contract.pk,
                "channel": notice.channel,
                "transaction_id": notice.transaction_id,
            },
        )
    ]
    # The custody bank's own notice means the money is already in the supervised account: the settlement
    # is posted with the payment, in the same ledger call.
    settled = notice.channel == "bank"
    if settled:
        entries.append(
            _settlement_entry(
                channel=notice.channel,
                transaction_id=notice.transaction_id,
                amount=amount,
                target=settlement_account(contract.institution),
                clearing=clearing,
                metadata={"contract": contract.pk},
            )
        )
    payment = Payment(
        contract=contract,
        channel=notice.channel,
        transaction_id=notice.transaction_id,
        amount_fen=notice.amount_fen,
        currency=notice.currency,
        paid_at=notice.paid_at,
        received_at=now,
        payer_account=notice.payer_account,
        raw_payload=notice.raw,
        settled_at=now if settled else None,
    )
    log_write = insert_of(log)
    # Inside _accept's block, which any ledger error fails as a whole: no savepoint of the ledger's own.
    posted = post_batch(entries=entries, savepoint=False).entries
    payment.entry = posted[0]
    payment.settlement_entry = posted[1] if settled else None
    activate_paid_contract(
        contract=contract,
        paid_at=notice.paid_at,
        payer_account=notice.payer_account,
        together_with=[insert_of(payment), log_write],
    )
    return payment


def _settlement_entry(
    *,
    channel: str,
    transaction_id: str,
    amount: Money,
    target: Account,
    clearing: Account | str,
    metadata: Mapping[str, Any],
) -> NewEntry:
    return NewEntry(
        idempotency_key=settlement_key(channel, transaction_id),
        kind="settlement",
        legs=[debit(target, amount), credit(clearing, amount)],
        metadata=dict(metadata),
    )


def _log(
    channel: str,
    outcome: CallbackOutcome,
    body: bytes,
    source_ip: str | None,
    *,
    reason: str = "",
    txn: str = "",
) -> None:
    CallbackLog.objects.create(
        channel=channel[:16],
        received_at=clock.now(),
        outcome=outcome,
        reason_code=reason[:32],
        transaction_id=txn[:64],
        body_sha256=hashlib.sha256(body).hexdigest(),
        body_size=len(body),
        source_ip=source_ip,
    )


# --- settlement -----------------------------------------------------------------------------------------


def settlement_account(institution: Institution) -> Account:
    """Where a payment of this institution's contracts settles: the custody account, or in risk-reserve
    mode the institution's own account (``institution_held:i``)."""
    if institution.supervision_mode == SupervisionMode.RISK_RESERVE:
        from custody.services.reserve import held_account

        return held_account(institution)
    if institution.cash_account is None:
        raise RuntimeError(f"institution {institution.pk} has no custody account")
    return institution.cash_account


def settle_payments(*, channel: str, transaction_ids: Sequence[str]) -> list[Payment]:
    """A channel's settlement (WeChat Pay, Alipay: T+1) arrived in custody: Dr custody cash / Cr clearing for
    each payment not settled yet. Payments settled before are left alone (safe to repeat); an unknown
    transaction id raises ``NotFound`` and settles nothing."""
    wanted = list(dict.fromkeys(transaction_ids))
    now = clock.now()
    with transaction.atomic():
        payments = list(
            Payment.objects.select_for_update(of=("self",))
            .select_related("contract__institution__cash_account")
            .filter(channel=channel, transaction_id__in=wanted)
            .order_by("pk")
        )
        missing = set(wanted) - {p.transaction_id for p in payments}
        if missing:
            raise NotFound(
                f"{len(missing)}笔交易不存在 {len(missing)} transaction(s) of {channel} are not recorded",
                channel=channel,
                missing=sorted(missing)[:10],
            )
        _settle([p for p in payments if p.settlement_entry_id is None], now=now)
    return payments


def _settle(payments: Sequence[Payment], *, now: datetime) -> None:
    if not payments:
        return
    # Each settlement credits the clearing account its payment debited (the debit leg of the payment entry):
    # payments recorded while clearing was one account per channel (``clearing:{channel}``) settle there.
    clearing = {
        posting.entry_id: posting.account
        for posting in Posting.objects.select_related("account").filter(
            entry_id__in=[p.entry_id for p in payments], amount__gt=0
        )
    }
    targets: dict[int, Account] = {}
    entries = []
    for p in payments:
        institution = p.contract.institution
        if institution.pk not in targets:
            targets[institution.pk] = settlement_account(institution)
        entries.append(
            _settlement_entry(
                channel=p.channel,
                transaction_id=p.transaction_id,
                amount=from_minor(p.amount_fen, "CNY"),
                target=targets[institution.pk],
                clearing=clearing[p.entry_id],
                metadata={"payment": p.pk, "contract": p.contract_id},
            )
        )
    result = post_batch(entries=entries)
    for payment, entry in zip(payments, result.entries, strict=True):
        payment.settlement_entry = entry
        payment.settled_at = now
    Payment.objects.bulk_update(payments, ["settlement_entry", "settled_at"], batch_size=1000)

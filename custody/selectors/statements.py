"""A parent's verifiable statement (对账单) of one contract: every posting on its ``prepaid:c`` and
``refund_payable:c`` accounts with the running balance, and, when the latest custody checkpoint counted the
contract among its liabilities, the proof that it did (custody/selectors/checkpoints.py; checked by
``python -m ledger.verify liability`` with the platform's public key alone)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.utils import timezone

from custody.models import Contract
from custody.selectors.checkpoints import ContractLiabilityProof, contract_liability_proof
from ledger.models import Account
from ledger.selectors import Statement, statement


@dataclass(frozen=True)
class ContractStatement:
    contract: Contract
    prepaid: Statement | None
    refund: Statement | None
    liability_proof: ContractLiabilityProof | None


def _whole_history(account: Account | None) -> Statement | None:
    # Postings carry the database's transaction time, so the window is in that clock: from the account's
    # opening to now.
    if account is None:
        return None
    return statement(
        account, start=account.created_at - timedelta(seconds=1), end=timezone.now() + timedelta(seconds=5)
    )


def contract_statement(contract: Contract) -> ContractStatement:
    """Every posting of the contract's two accounts (they live only as long as the contract)."""
    return ContractStatement(
        contract=contract,
        prepaid=_whole_history(contract.prepaid_account),
        refund=_whole_history(contract.refund_account),
        liability_proof=contract_liability_proof(contract),
    )

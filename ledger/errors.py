"""The ledger's errors: one base class, each subclass a rule with the numbers that broke it.

``code`` is stable and machine-readable; the API maps it to its error shape.
"""

from __future__ import annotations


class LedgerError(Exception):
    code = "ledger_error"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidAmount(LedgerError):
    code = "invalid_amount"


class InvalidEntry(LedgerError):
    """The shape of an entry is wrong: fewer than two postings, zero amounts, an account twice."""

    code = "invalid_entry"


class UnbalancedEntry(LedgerError):
    code = "unbalanced_entry"


class CurrencyMismatch(LedgerError):
    code = "currency_mismatch"


class AccountNotFound(LedgerError):
    code = "account_not_found"


class AccountConflict(LedgerError):
    """An account with this code exists with other attributes."""

    code = "account_conflict"


class LimitExceeded(LedgerError):
    """A balance limit would break: a liability below zero, an asset below zero."""

    code = "limit_exceeded"


class IdempotencyConflict(LedgerError):
    """The key was used before with different content."""

    code = "idempotency_conflict"


class PendingTransferError(LedgerError):
    """An illegal pending-transfer transition: post after void, post twice, post more than held."""

    code = "pending_transfer_state"


class ReversalError(LedgerError):
    code = "reversal_not_allowed"

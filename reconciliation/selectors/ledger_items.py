"""The ledger side of reconciliation: the postings on an institution's ``custody_cash:i`` and the references
the bank will print beside them.

A custody account's statement shows exactly the postings on ``custody_cash:i``: payment settlements
(Dr custody_cash / Cr clearing) and executed payouts and refunds (posted holds, Dr payable or refund_payable /
Cr custody_cash), plus approved corrections. A posting's amount is already signed like a bank line (a debit
of the asset is money in). Its references come from the custody records that caused it:

- an executed payout: ``PayoutInstruction.reference`` (``PO…`` release, ``RF…`` refund), found through the
  entry's pending transfer;
- a settlement: the payment's channel transaction id (for the custody bank's own channel, the bank's serial
  of the credit) and its contract number (``HT…``, what parents write in the transfer's message).

``ITEMS_SQL`` reads them in one statement, joined set-wise; reconciliation never changes custody's rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from custody.models import Contract, Payment, PayoutInstruction
from ledger.models import Entry, Posting
from reconciliation.models import MatchEntry


def items_sql() -> str:
    """Unmatched custody-cash postings of one account posted after a moment, with their references.
    Parameters: account id, posted after."""
    return f"""
SELECT p.id AS posting_id, p.entry_id AS entry_id, p.amount AS amount, p.posted_at AS posted_at,
       e.kind AS kind, po.reference AS payout_ref, po.kind AS payout_kind,
       pay.transaction_id AS txn_id, pay.channel AS channel, c.number AS contract_no
FROM {Posting._meta.db_table} p
JOIN {Entry._meta.db_table} e ON e.id = p.entry_id
LEFT JOIN {PayoutInstruction._meta.db_table} po
       ON e.pending_transfer_id IS NOT NULL AND po.pending_transfer_id = e.pending_transfer_id
LEFT JOIN {Payment._meta.db_table} pay ON pay.settlement_entry_id = p.entry_id
LEFT JOIN {Contract._meta.db_table} c ON c.id = pay.contract_id
WHERE p.account_id = %s AND p.posted_at > %s
  AND NOT EXISTS (SELECT 1 FROM {MatchEntry._meta.db_table} m WHERE m.posting_id = p.id)
"""


@dataclass
class LedgerItem:
    """One unmatched posting on custody cash, as the rule-based matcher sees it."""

    posting_id: int
    entry_id: int
    amount_fen: int
    posted_at: datetime
    kind: str
    payout_ref: str
    payout_kind: str
    txn_id: str
    channel: str
    contract_no: str
    day_ordinal: int = 0  # the business day (date.toordinal()), filled in by the matcher

    @property
    def references(self) -> list[str]:
        return [r for r in (self.payout_ref, self.txn_id, self.contract_no) if r]

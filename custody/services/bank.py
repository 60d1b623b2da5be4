"""What a custody bank (托管银行) sends besides payment callbacks: the answers to payout instructions
(payouts.record_payout_result), the settlement of channel payments (payments.settle_payments), and daily
statements of the supervised accounts, received here.

``receive_statement`` parses and checks the file (``reconciliation.formats.parse_statement``: format found
from the bytes; opening + movements = closing; running balances and serials consistent), finds the
institution whose supervised account it is (it must be held at the uploading bank) and keeps the file
byte for byte. The same file twice returns the first upload. Reconciliation reads these uploads.
"""

from __future__ import annotations

import hashlib

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction

from custody.errors import NotFound
from custody.models import BankStatementUpload, Institution
from ledger import clock
from reconciliation.formats import detect_format, parse_statement


def receive_statement(
    *, bank_name: str, data: bytes, filename: str, uploaded_by: User
) -> BankStatementUpload:
    """Check and keep one statement file of a supervised account held at ``bank_name``.

    Raises ``StatementError`` for a file that is not a consistent statement and ``NotFound`` when the account
    is not the supervised account of an institution at this bank."""
    statement = parse_statement(data, filename=filename)
    institution = Institution.objects.filter(
        custody_account_number=statement.account_number, custody_bank_name=bank_name
    ).first()
    if institution is None:
        raise NotFound(
            "该账户不是本行托管的监管账户 the account is not a supervised account held at this bank",
            field="file",
        )
    digest = hashlib.sha256(data).hexdigest()
    existing = BankStatementUpload.objects.filter(institution=institution, file_sha256=digest).first()
    if existing is not None:
        return existing
    try:
        with transaction.atomic():
            return BankStatementUpload.objects.create(
                institution=institution,
                account_number=statement.account_number,
                format=detect_format(data, filename),
                statement_id=statement.statement_id[:64],
                sequence=statement.sequence,
                period_start=statement.period_start,
                period_end=statement.period_end,
                opening_balance_fen=statement.opening_balance_fen,
                closing_balance_fen=statement.closing_balance_fen,
                credits_fen=statement.credits_fen,
                debits_fen=statement.debits_fen,
                line_count=len(statement.lines),
                filename=filename[:200],
                file_sha256=digest,
                content=data,
                uploaded_by=uploaded_by,
                uploaded_at=clock.now(),
            )
    except IntegrityError:
        return BankStatementUpload.objects.get(institution=institution, file_sha256=digest)

"""Imported bank statements (对账单) and their lines, one model for every file format."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q


class BankStatement(models.Model):
    """One statement of one institution's supervised account, as imported. The file's SHA-256 is unique, so
    importing the same file twice finds the first import and changes nothing."""

    institution = models.ForeignKey(
        "custody.Institution", on_delete=models.PROTECT, related_name="bank_statements"
    )
    account_number = models.CharField(max_length=64)
    currency = models.CharField(max_length=3)
    format = models.CharField(max_length=16)  # csv, xlsx, camt053, mt940, or "generated" (simulator, bench)
    statement_id = models.CharField(max_length=100)
    sequence = models.PositiveIntegerField(null=True, blank=True)
    period_start = models.DateField()
    period_end = models.DateField()
    opening_balance_fen = models.BigIntegerField()
    closing_balance_fen = models.BigIntegerField()
    credits_fen = models.BigIntegerField()
    debits_fen = models.BigIntegerField()
    line_count = models.PositiveIntegerField()
    filename = models.CharField(max_length=200, blank=True)
    file_sha256 = models.CharField(max_length=64, unique=True)
    imported_at = models.DateTimeField()
    imported_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    matched_at = models.DateTimeField(null=True, blank=True)  # the last matching run over its lines

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["institution", "statement_id"], name="recon_statement_id_once"),
            models.CheckConstraint(
                condition=Q(period_end__gte=F("period_start")), name="recon_statement_period_order"
            ),
            models.CheckConstraint(
                condition=Q(
                    closing_balance_fen=F("opening_balance_fen") + F("credits_fen") - F("debits_fen")
                ),
                name="recon_statement_adds_up",
            ),
        ]
        indexes = [models.Index(fields=["institution", "period_end"], name="recon_statement_period")]

    def __str__(self) -> str:
        return (
            f"statement {self.statement_id} of {self.account_number} ({self.period_start}–{self.period_end})"
        )


class BankStatementLine(models.Model):
    """One booking on the account (``reconciliation.formats.StatementLine`` plus where it was imported).

    ``amount_fen`` is signed from the account holder's side: money in (贷方) > 0, money out (借方) < 0, the
    same sign as a posting on ``custody_cash:i`` (a debit of the asset is money in)."""

    statement = models.ForeignKey(BankStatement, on_delete=models.PROTECT, related_name="lines")
    # Denormalised from the statement: matching looks across an institution's statements.
    institution = models.ForeignKey(
        "custody.Institution", on_delete=models.PROTECT, related_name="+", db_index=False
    )
    line_number = models.PositiveIntegerField()
    serial = models.TextField()  # 流水号
    booked_on = models.DateField()
    value_on = models.DateField()
    amount_fen = models.BigIntegerField()
    balance_after_fen = models.BigIntegerField(null=True, blank=True)
    counterparty_name = models.TextField(blank=True)
    counterparty_account = models.TextField(blank=True)
    reference = models.TextField(blank=True)
    summary = models.TextField(blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["statement", "line_number"], name="recon_line_number_once"),
            models.UniqueConstraint(fields=["statement", "serial"], name="recon_line_serial_once"),
            models.CheckConstraint(condition=~Q(amount_fen=0), name="recon_line_amount_nonzero"),
        ]
        indexes = [
            models.Index(fields=["institution", "reference"], name="recon_line_reference"),
            models.Index(fields=["institution", "booked_on"], name="recon_line_booked"),
        ]

    def __str__(self) -> str:
        return f"line {self.line_number} of statement {self.statement_id}: {self.amount_fen}"

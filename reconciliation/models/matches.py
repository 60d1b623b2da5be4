"""Matches: a group of bank lines and ledger postings on custody cash that are the same money, and the rule
that put them together. One line and one posting belong to at most one match (unique keys)."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class MatchRule(models.TextChoices):
    REFERENCE = "reference", "按参考号 by reference"
    AMOUNT_DATE_COUNTERPARTY = "amount_date_counterparty", "金额+日期+对方 amount, date and counterparty"
    AMOUNT_DATE = "amount_date", "金额+日期 amount and date"
    AMOUNT_DRIFT = "amount_drift", "金额容差 amount within the allowed drift"
    BATCH_SUM = "batch_sum", "批量合计 one line for a batch of entries"
    REVERSAL = "reversal", "冲正 a line and its reversal"
    CORRECTION = "correction", "调账 an approved correcting entry"
    OPENING_CORRECTION = "opening_correction", "期初调整 an approved opening-balance correction"
    MANUAL = "manual", "人工匹配 matched by a person"


class Match(models.Model):
    institution = models.ForeignKey("custody.Institution", on_delete=models.PROTECT, related_name="+")
    rule = models.CharField(max_length=32, choices=MatchRule.choices)
    key = models.TextField(blank=True)  # what matched: the reference, the amount and day, the batch
    matched_at = models.DateTimeField()
    matched_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    lines_fen = models.BigIntegerField()  # Σ bank lines (signed)
    entries_fen = models.BigIntegerField()  # Σ custody-cash postings (signed the same way)

    class Meta:
        verbose_name_plural = "matches"
        indexes = [models.Index(fields=["institution", "matched_at"], name="recon_match_time")]

    def __str__(self) -> str:
        return f"match {self.pk} ({self.rule})"

    @property
    def difference_fen(self) -> int:
        """Ledger minus bank: 0 when the group balances."""
        return self.entries_fen - self.lines_fen


class MatchLine(models.Model):
    match = models.ForeignKey(Match, on_delete=models.CASCADE, related_name="line_links")
    line = models.OneToOneField(
        "reconciliation.BankStatementLine", on_delete=models.PROTECT, related_name="match_link"
    )
    amount_fen = models.BigIntegerField()

    def __str__(self) -> str:
        return f"line {self.line_id} in match {self.match_id}"


class MatchEntry(models.Model):
    """A ledger posting on ``custody_cash:i`` in a match, with its entry for convenience."""

    match = models.ForeignKey(Match, on_delete=models.CASCADE, related_name="entry_links")
    posting = models.OneToOneField("ledger.Posting", on_delete=models.PROTECT, related_name="+")
    entry = models.ForeignKey("ledger.Entry", on_delete=models.PROTECT, related_name="+", db_index=False)
    amount_fen = models.BigIntegerField()

    class Meta:
        verbose_name_plural = "match entries"

    def __str__(self) -> str:
        return f"posting {self.posting_id} in match {self.match_id}"

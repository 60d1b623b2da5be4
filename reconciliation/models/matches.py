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
    """A group of lines and postings that are the same money.

    A million-line statement writes a million matches, so each costs as few writes as it can: the links
    are keyed by their line and posting (which the database keeps to one match each, and checks are real
    rows); the link's match and the match's institution are written by the matcher in the same statement
    as the match, and are not re-checked row by row by foreign keys (deleting a match deletes its links:
    ``on_delete=CASCADE``, done by Django)."""

    # Looked up through the (institution, matched_at) index; no index of its own.
    institution = models.ForeignKey(
        "custody.Institution", on_delete=models.PROTECT, related_name="+", db_index=False, db_constraint=False
    )
    rule = models.CharField(max_length=32, choices=MatchRule.choices)
    key = models.TextField(blank=True)  # what matched: the reference, the amount and day, the batch
    matched_at = models.DateTimeField()
    matched_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
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
    """A bank line in a match. The line is the key: a line is in one match at most."""

    line = models.OneToOneField(
        "reconciliation.BankStatementLine",
        on_delete=models.PROTECT,
        related_name="match_link",
        primary_key=True,
    )
    match = models.ForeignKey(Match, on_delete=models.CASCADE, related_name="line_links", db_constraint=False)
    amount_fen = models.BigIntegerField()

    def __str__(self) -> str:
        return f"line {self.line_id} in match {self.match_id}"


class MatchEntry(models.Model):
    """A ledger posting on ``custody_cash:i`` in a match. The posting is the key: a posting is in one match
    at most. Its entry is kept for convenience (no constraint of its own: the posting's entry it is)."""

    # Postings are append-only (the ledger's triggers refuse UPDATE and DELETE) and the matcher reads these
    # ids from the ledger in the same transaction: a foreign-key check per link (a lock on each posting)
    # would prove nothing more, at a third of the cost of matching a million lines.
    posting = models.OneToOneField(
        "ledger.Posting", on_delete=models.PROTECT, related_name="+", primary_key=True, db_constraint=False
    )

    match = models.ForeignKey(
        Match, on_delete=models.CASCADE, related_name="entry_links", db_constraint=False
    )
    entry = models.ForeignKey(
        "ledger.Entry", on_delete=models.PROTECT, related_name="+", db_index=False, db_constraint=False
    )
    amount_fen = models.BigIntegerField()

    class Meta:
        verbose_name_plural = "match entries"

    def __str__(self) -> str:
        return f"posting {self.posting_id} in match {self.match_id}"

"""The break queue (差错处理): every difference between the bank and the ledger that needs a person, with its
owner, its comments, its resolution and, where money must move, a correcting entry under four eyes.

``ReconciliationEvent`` is the audit log of reconciliation: a break's history (raised, assigned, commented,
correction proposed / rejected / approved, resolved, reopened) and the other actions (imports, matches made or
undone by hand). The database refuses UPDATE and DELETE of its rows (migration 0002), so the history cannot
be rewritten.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q


class BreakKind(models.TextChoices):
    UNMATCHED_LINE = "unmatched_line", "银行有账、账簿无记录 bank line with no ledger entry"
    UNMATCHED_ENTRY = "unmatched_entry", "账簿有记录、银行未入账 ledger entry not on the bank statement"
    AMOUNT_DIFFERENCE = "amount_difference", "金额不符 amounts differ"
    BALANCE_DIFFERENCE = "balance_difference", "余额不符 balances differ"
    DUPLICATE_LINE = "duplicate_line", "重复入账 line booked twice"
    SEQUENCE_GAP = "sequence_gap", "对账单不连续 statements out of sequence"
    FEE = "fee", "银行扣费 fee taken by the bank"


class BreakState(models.TextChoices):
    OPEN = "open", "待处理 open"
    ASSIGNED = "assigned", "处理中 assigned"
    RESOLVED = "resolved", "已解决 resolved"


class ResolutionKind(models.TextChoices):
    MATCHED = "matched", "已匹配 matched (automatically or by hand)"
    CORRECTED = "corrected", "已调账 corrected by an approved entry"
    ACCEPTED = "accepted", "已确认无需调账 accepted, no entry needed"
    STATEMENT_RECEIVED = "statement_received", "对账单已补齐 the statement arrived in sequence"
    RETIED = "retied", "余额已相符 the balances agree again"
    UNMATCHED = "unmatched", "匹配已撤销 the match was undone"


class Break(models.Model):
    # What the break is about, so a re-run finds it instead of raising it again ("unmatched_line:123").
    key = models.CharField(max_length=120, unique=True)
    institution = models.ForeignKey("custody.Institution", on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=24, choices=BreakKind.choices)
    day = models.DateField()  # the business day it concerns
    amount_fen = models.BigIntegerField()  # its effect on ledger − bank; 0 when it moves no money
    explanation = models.TextField()  # Chinese first, English beside
    details = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=10, choices=BreakState.choices, default=BreakState.OPEN)
    raised_at = models.DateTimeField()
    statement = models.ForeignKey(
        "reconciliation.BankStatement", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    line = models.ForeignKey(
        "reconciliation.BankStatementLine", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    posting = models.ForeignKey(
        "ledger.Posting", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    match = models.ForeignKey(
        "reconciliation.Match", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    resolution_kind = models.CharField(max_length=20, choices=ResolutionKind.choices, blank=True)
    resolution = models.TextField(blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    # A correcting entry, proposed by one regulator and approved by another (four eyes).
    correction_legs = models.JSONField(null=True, blank=True)  # [{"account", "side", "amount_fen"}]
    correction_reason = models.TextField(blank=True)
    correction_proposed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    correction_proposed_at = models.DateTimeField(null=True, blank=True)
    correction_approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    correction_approved_at = models.DateTimeField(null=True, blank=True)
    correction_entry = models.OneToOneField(
        "ledger.Entry", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(correction_approved_by__isnull=True)
                | ~Q(correction_approved_by=F("correction_proposed_by")),
                name="recon_break_four_eyes",
            ),
            models.CheckConstraint(
                condition=Q(correction_entry__isnull=True)
                | Q(correction_approved_by__isnull=False, correction_proposed_by__isnull=False),
                name="recon_break_entry_approved",
            ),
            models.CheckConstraint(
                condition=(Q(state="resolved") & Q(resolved_at__isnull=False) & ~Q(resolution_kind=""))
                | (~Q(state="resolved") & Q(resolved_at__isnull=True)),
                name="recon_break_resolution_consistent",
            ),
            models.CheckConstraint(
                condition=~Q(state="assigned") | Q(assignee__isnull=False),
                name="recon_break_assigned_has_assignee",
            ),
        ]
        indexes = [
            models.Index(fields=["institution", "state", "day"], name="recon_break_queue"),
            models.Index(fields=["state", "kind"], name="recon_break_state_kind"),
        ]

    def __str__(self) -> str:
        return f"break {self.pk} {self.kind} ({self.state})"


class ReconciliationEvent(models.Model):
    """One action in reconciliation, by a person or the system: a break raised, assigned, commented,
    corrected, resolved or reopened; a statement imported; a match made or undone by hand. Append-only."""

    at = models.DateTimeField()
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    action = models.CharField(max_length=40)
    break_item = models.ForeignKey(
        Break, on_delete=models.PROTECT, null=True, blank=True, related_name="events", db_column="break_id"
    )
    institution = models.ForeignKey(
        "custody.Institution", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    note = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["break_item", "at"], name="recon_event_break"),
            models.Index(fields=["institution", "at"], name="recon_event_institution"),
        ]

    def __str__(self) -> str:
        return f"{self.action} at {self.at.isoformat()}"

"""Manual corrections (人工调账) under four eyes: one regulator proposes a correcting ledger entry, another
regulator of the same jurisdiction approves it, and only then is it posted through the ledger's services.

The database holds the rule too: the approver can never be the proposer (a CHECK constraint), and a posted
correction always names its entry.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from custody.models.institutions import Institution
from custody.models.policy import Jurisdiction


class CorrectionState(models.TextChoices):
    PROPOSED = "proposed", "待复核 awaiting a second regulator"
    POSTED = "posted", "已入账 approved and posted"
    REJECTED = "rejected", "已驳回 rejected"


class CorrectionProposal(models.Model):
    """A proposed correcting entry. ``legs`` is ``[{"account": code, "side": "debit"|"credit",
    "amount_fen": int}, ...]``; every account belongs to ``institution``, so the entry cannot move money
    between institutions."""

    jurisdiction = models.ForeignKey(Jurisdiction, on_delete=models.PROTECT, related_name="corrections")
    institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="corrections")
    reason = models.CharField(max_length=500)
    legs = models.JSONField()
    state = models.CharField(max_length=10, choices=CorrectionState.choices, default=CorrectionState.PROPOSED)
    proposed_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    proposed_at = models.DateTimeField()
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_note = models.CharField(max_length=500, blank=True)
    entry = models.OneToOneField(
        "ledger.Entry", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(decided_by__isnull=True) | ~Q(decided_by=F("proposed_by")),
                name="custody_correction_four_eyes",
            ),
            models.CheckConstraint(
                condition=~Q(state="posted") | Q(entry__isnull=False, decided_by__isnull=False),
                name="custody_correction_posted_has_entry",
            ),
        ]
        indexes = [models.Index(fields=["jurisdiction", "state"], name="custody_correction_jur_state")]

    def __str__(self) -> str:
        return f"correction {self.pk} ({self.state})"

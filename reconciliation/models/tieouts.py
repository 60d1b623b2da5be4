"""Daily tie-outs (日终余额核对): the ledger's custody cash at the day's close against the bank's balance."""

from __future__ import annotations

from django.db import models


class TieOutStatus(models.TextChoices):
    TIED = "tied", "相符 tied"
    EXPLAINED = "explained", "差异已逐项说明 difference itemised"
    UNEXPLAINED = "unexplained", "差异未能说明 difference not explained"


class TieOut(models.Model):
    """One institution, one day. ``difference_fen`` = ledger − bank; ``details`` itemises it by category
    (in-transit entries, unmatched lines, fees, amount differences, timing) with the first items of each;
    ``unexplained_fen`` is what no item accounts for (an opening difference, a gap between statements)."""

    institution = models.ForeignKey("custody.Institution", on_delete=models.PROTECT, related_name="+")
    day = models.DateField()
    statement = models.ForeignKey(
        "reconciliation.BankStatement", on_delete=models.PROTECT, related_name="tie_outs"
    )
    closes_at = models.DateTimeField()  # the moment the ledger was read (the day's cut)
    ledger_fen = models.BigIntegerField()
    bank_fen = models.BigIntegerField()
    difference_fen = models.BigIntegerField()
    explained_fen = models.BigIntegerField()
    unexplained_fen = models.BigIntegerField()
    status = models.CharField(max_length=12, choices=TieOutStatus.choices)
    details = models.JSONField(default=dict, blank=True)
    computed_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["institution", "day"], name="recon_tieout_once")]
        indexes = [models.Index(fields=["day", "status"], name="recon_tieout_day")]

    def __str__(self) -> str:
        return f"tie-out of {self.institution_id} on {self.day}: {self.status}"

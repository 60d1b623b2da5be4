"""Business-day cuts (日切): when a bank's business day opens and closes on the ledger's clock."""

from __future__ import annotations

from django.db import models
from django.db.models import F, Q


class DayCut(models.Model):
    """The window of one business day on the ledger's transaction clock (``Posting.posted_at``).

    Without a row, day D runs from 00:00 to 24:00 Asia/Shanghai. A row overrides that: the custody bank
    simulator runs a day in seconds and records the real moments its day opened and closed, and a bank whose
    books close at another hour (日切 at 17:00) would record its cuts the same way. A posting belongs to the
    day whose window holds its ``posted_at``; the tie-out of day D reads the ledger at ``closes_at``.
    """

    day = models.DateField(unique=True)
    opens_at = models.DateTimeField()
    closes_at = models.DateTimeField()
    note = models.CharField(max_length=200, blank=True)
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["closes_at"], name="recon_daycut_closes")]
        constraints = [
            models.CheckConstraint(condition=Q(closes_at__gt=F("opens_at")), name="recon_daycut_order"),
        ]

    def __str__(self) -> str:
        return f"day cut {self.day}: {self.opens_at.isoformat()} – {self.closes_at.isoformat()}"

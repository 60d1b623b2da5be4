"""Risk-reserve mode (风险保证金): the daily check of each institution's reserve against the rules.

The money itself is in the ledger (``reserve_cash:i`` held by the bank, ``reserve_deposit:i`` owed back to the
institution; see custody/services/reserve.py); this table only records each check and its shortfall.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from custody.models.institutions import Institution


class ReserveCheck(models.Model):
    """One day's check: required = max(policy minimum, ratio × unconsumed prepaid value); shortfall = what
    the reserve lacks. Written once per institution and day (a re-run returns the first)."""

    institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="reserve_checks")
    on_date = models.DateField()
    checked_at = models.DateTimeField()
    policy_version = models.PositiveIntegerField()
    unconsumed_prepaid_fen = models.BigIntegerField()
    ratio_percent = models.PositiveSmallIntegerField()
    minimum_fen = models.BigIntegerField()
    required_fen = models.BigIntegerField()
    reserve_fen = models.BigIntegerField()
    shortfall_fen = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["institution", "on_date"], name="custody_reserve_check_daily"),
            models.CheckConstraint(
                condition=Q(shortfall_fen__gte=0), name="custody_reserve_shortfall_non_negative"
            ),
        ]

    def __str__(self) -> str:
        return f"reserve check {self.institution_id} {self.on_date}: short {self.shortfall_fen}"

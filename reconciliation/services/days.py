"""Recording business-day cuts (日切) on the ledger's clock."""

from __future__ import annotations

from datetime import date, datetime

from django.db import transaction
from django.db.models import Q

from reconciliation.errors import ReconciliationError
from reconciliation.models import DayCut


def record_day_cut(*, day: date, opens_at: datetime, closes_at: datetime, note: str = "") -> DayCut:
    """Record (or move) the window of business day ``day``. Windows of different days may not overlap, and
    a later day's window may not come before an earlier day's."""
    if closes_at <= opens_at:
        raise ReconciliationError(
            "day_cut_order",
            f"日切时间须晚于开始时间 the day {day} must close after it opens",
            day=day.isoformat(),
        )
    with transaction.atomic():
        clash = (
            DayCut.objects.exclude(day=day)
            .filter(
                Q(opens_at__lt=closes_at, closes_at__gt=opens_at)
                | Q(day__lt=day, closes_at__gt=opens_at)
                | Q(day__gt=day, opens_at__lt=closes_at)
            )
            .first()
        )
        if clash is not None:
            raise ReconciliationError(
                "day_cut_overlap",
                f"{day} 的日切窗口与 {clash.day} 重叠或倒序 the window of {day} overlaps or precedes "
                f"{clash.day}'s",
                day=day.isoformat(),
                other=clash.day.isoformat(),
            )
        cut, _ = DayCut.objects.update_or_create(
            day=day, defaults={"opens_at": opens_at, "closes_at": closes_at, "note": note[:200]}
        )
    return cut

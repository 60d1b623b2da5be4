"""Charts drawn on the server as inline SVG (no chart library, no script): the regulator's money flows over
time. The figures are read here from the payment and payout records (a read for one picture, grouped by
day in Shanghai time); the drawing is plain geometry.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo

from django.db.models import Sum
from django.db.models.functions import TruncDate

from custody.models import Payment, PayoutInstruction, PayoutKind, PayoutState
from custody.services.calendar import local_today
from custody.web.templatetags import format_yuan

SHANGHAI = ZoneInfo("Asia/Shanghai")


@dataclass(frozen=True)
class Series:
    key: str  # a CSS class: inflow, release, refund
    label: str
    values: list[int]  # fen per day

    @property
    def total(self) -> int:
        return sum(self.values)


@dataclass(frozen=True)
class FlowChart:
    days: list[date]
    series: list[Series]
    width: int = 720
    height: int = 220
    bottom: int = 28
    top: int = 12

    @cached_property
    def peak(self) -> int:
        return max([1, *(v for s in self.series for v in s.values)])

    @cached_property
    def step(self) -> int:
        """The y axis' tick interval in fen: a round amount (1, 2 or 5 times a power of ten) that covers the
        peak in at most four steps, so the axis reads ¥0, ¥10,000, ¥20,000… and not quarters of the peak."""
        least = -(-self.peak // 4)
        magnitude = 10 ** (len(str(least)) - 1)
        return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= least)

    @cached_property
    def top_value(self) -> int:
        """The amount at the top of the y axis: the first tick at or above the peak."""
        return self.step * -(-self.peak // self.step)

    @cached_property
    def left(self) -> int:
        """Room for the widest y-axis label (the top tick's, e.g. ¥30,000.00): about 7 px a character at the
        axis' 11 px font, and the 6 px gap before the axis."""
        return 12 + 7 * len(format_yuan(self.top_value))

    def _x(self, index: int) -> float:
        span = self.width - self.left - 8
        return self.left + (span * index / max(1, len(self.days) - 1))

    def _y(self, fen: int) -> float:
        span = self.height - self.top - self.bottom
        return self.top + span - span * fen / self.top_value

    def lines(self) -> list[tuple[Series, str]]:
        """Each series with its polyline points."""
        return [
            (s, " ".join(f"{self._x(i):.1f},{self._y(v):.1f}" for i, v in enumerate(s.values)))
            for s in self.series
        ]

    def y_ticks(self) -> list[tuple[float, int]]:
        return [(self._y(fen), fen) for fen in range(0, self.top_value + 1, self.step)]

    def x_ticks(self) -> list[tuple[float, date]]:
        step = max(1, len(self.days) // 6)
        return [(self._x(i), day) for i, day in enumerate(self.days) if i % step == 0]

    @property
    def baseline(self) -> float:
        return self._y(0)


def _by_day(rows: Iterable[tuple[date, int | None]]) -> dict[date, int]:
    return {day: int(total or 0) for day, total in rows}


def flows_by_day(institution_ids: Any, *, days: int = 30, labels: dict[str, str]) -> FlowChart:
    """Money in (payments confirmed) and out (releases and refunds the bank executed), per day, over the last
    ``days`` days up to today (Shanghai)."""
    today = local_today()
    first = today - timedelta(days=days - 1)
    day_list = [first + timedelta(days=i) for i in range(days)]
    payments = _by_day(
        Payment.objects.filter(contract__institution_id__in=institution_ids, paid_at__date__gte=first)
        .annotate(day=TruncDate("paid_at", tzinfo=SHANGHAI))
        .values("day")
        .order_by()
        .annotate(total=Sum("amount_fen"))
        .values_list("day", "total")
    )
    out: dict[str, dict[date, int]] = {}
    for kind in (PayoutKind.RELEASE, PayoutKind.REFUND):
        out[kind] = _by_day(
            PayoutInstruction.objects.filter(
                institution_id__in=institution_ids,
                kind=kind,
                state=PayoutState.EXECUTED,
                executed_at__date__gte=first,
            )
            .annotate(day=TruncDate("executed_at", tzinfo=SHANGHAI))
            .values("day")
            .order_by()
            .annotate(total=Sum("amount_fen"))
            .values_list("day", "total")
        )
    return FlowChart(
        days=day_list,
        series=[
            Series("inflow", labels["inflow"], [payments.get(d, 0) for d in day_list]),
            Series("release", labels["release"], [out[PayoutKind.RELEASE].get(d, 0) for d in day_list]),
            Series("refund", labels["refund"], [out[PayoutKind.REFUND].get(d, 0) for d in day_list]),
        ],
    )

"""The regulator's flow chart: its y axis is drawn at round amounts that cover the peak."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from custody.web.charts import FlowChart, Series


def chart(*peaks: int) -> FlowChart:
    days = [date(2026, 11, 1) + timedelta(days=i) for i in range(len(peaks))]
    return FlowChart(days=days, series=[Series("inflow", "in", list(peaks))])


@pytest.mark.parametrize(
    ("peak", "ticks"),
    [
        (2_381_690, [0, 1_000_000, 2_000_000, 3_000_000]),  # ¥23,816.90 → ¥0, ¥10,000, ¥20,000, ¥30,000
        (2_000_000, [0, 500_000, 1_000_000, 1_500_000, 2_000_000]),
        (2_000_001, [0, 1_000_000, 2_000_000, 3_000_000]),
        (99, [0, 50, 100]),
        (1, [0, 1]),
        (0, [0, 1]),  # nothing moved: a one-fen axis, not a division by zero
    ],
)
def test_ticks_are_round_amounts_covering_the_peak_in_at_most_four_steps(peak: int, ticks: list[int]) -> None:
    drawn = chart(0, peak, peak // 2)

    assert [fen for _, fen in drawn.y_ticks()] == ticks
    assert drawn.top_value >= peak and len(ticks) <= 5


def test_the_top_tick_is_the_top_of_the_plot_and_zero_its_baseline() -> None:
    drawn = chart(0, 2_381_690)

    (y_zero, _), *_, (y_top, top) = drawn.y_ticks()
    assert (y_zero, y_top, top) == (drawn.baseline, drawn.top, 3_000_000)
    # The peak is drawn below the top tick, in proportion.
    _, points = drawn.lines()[0]
    peak_y = float(points.split()[1].split(",")[1])
    assert peak_y == pytest.approx(
        drawn.top + (drawn.height - drawn.top - drawn.bottom) * (1 - 2_381_690 / 3_000_000), abs=0.1
    )

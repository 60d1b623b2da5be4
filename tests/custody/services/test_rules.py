"""``custody.rules``: the pure checks, at and just past each limit, without the database where possible.

The signing rules are exercised end to end through ``sign_contract`` in ``test_contracts.py``; here are the
date arithmetic of the service-period cap and the exact integer arithmetic of the guidance-price cap.
"""

from __future__ import annotations

from datetime import date

import pytest

from custody import rules
from custody.errors import RuleViolation
from custody.models import Policy


@pytest.mark.parametrize(
    ("starts_on", "months", "latest"),
    [
        (date(2026, 12, 1), 3, date(2027, 2, 28)),  # the example of the brief
        (date(2026, 11, 30), 3, date(2027, 2, 28)),  # no 30 February: to the end of February
        (date(2026, 11, 28), 3, date(2027, 2, 27)),
        (date(2027, 11, 30), 3, date(2028, 2, 29)),  # leap year
        (date(2027, 11, 29), 3, date(2028, 2, 28)),
        (date(2026, 1, 31), 1, date(2026, 2, 28)),
        (date(2026, 3, 15), 3, date(2026, 6, 14)),
        (date(2026, 10, 1), 3, date(2026, 12, 31)),
        (date(2026, 11, 1), 3, date(2027, 1, 31)),
        (date(2026, 1, 1), 12, date(2026, 12, 31)),
        (date(2026, 5, 31), 1, date(2026, 6, 30)),
        # Past the end of the calendar: the period may run to its last day (a request for a service
        # starting in 9999 was a 500 from the API).
        (date(9999, 12, 1), 3, date.max),
        (date(9999, 10, 1), 3, date(9999, 12, 31)),
        (date(9999, 11, 15), 120, date.max),
    ],
)
def test_latest_service_end(starts_on: date, months: int, latest: date) -> None:
    assert rules.latest_service_end(starts_on, months) == latest


def test_latest_service_end_never_moves_backwards_as_the_start_moves_forward() -> None:
    day, previous = date(2026, 1, 1), date.min
    while day.year < 2029:
        latest = rules.latest_service_end(day, 3)
        assert latest >= previous
        assert latest >= day
        previous = latest
        day = date.fromordinal(day.toordinal() + 1)


def _policy(markup: int = 10) -> Policy:
    return Policy(version=7, guidance_markup_percent=markup)


@pytest.mark.parametrize(
    ("guidance", "markup", "cap"),
    [(8000, 10, 8800), (6001, 10, 6601), (2000, 10, 2200), (4000, 0, 4000), (6000, 5, 6300), (1, 10, 1)],
)
def test_guidance_cap_is_the_floor_of_the_exact_product(guidance: int, markup: int, cap: int) -> None:
    assert rules.guidance_cap_fen(guidance, markup) == cap
    rules.check_guidance_price(
        _policy(markup),
        guidance_price_fen=guidance,
        class_size_band="small",
        mode="offline",
        price_per_hour_fen=cap,
    )
    with pytest.raises(RuleViolation) as refused:
        rules.check_guidance_price(
            _policy(markup),
            guidance_price_fen=guidance,
            class_size_band="small",
            mode="offline",
            price_per_hour_fen=cap + 1,
        )
    assert refused.value.rule == rules.GUIDANCE_PRICE
    assert refused.value.details["limit"] == cap
    assert refused.value.details["requested"] == cap + 1
    assert refused.value.details["policy_version"] == 7


def test_a_missing_guidance_price_refuses_rather_than_allowing_any_price() -> None:
    with pytest.raises(RuleViolation) as refused:
        rules.check_guidance_price(
            _policy(), guidance_price_fen=None, class_size_band="small", mode="online", price_per_hour_fen=1
        )
    assert refused.value.rule == rules.GUIDANCE_PRICE_MISSING


def test_messages_are_chinese_first_with_english_beside() -> None:
    with pytest.raises(RuleViolation) as refused:
        rules.check_guidance_price(
            _policy(),
            guidance_price_fen=8000,
            class_size_band="small",
            mode="offline",
            price_per_hour_fen=8801,
        )
    message = refused.value.message
    assert message.startswith("学科类课时单价88.01元")
    assert "88.00 yuan" in message

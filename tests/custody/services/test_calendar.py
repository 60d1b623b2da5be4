"""``custody.services.calendar``: working days with 调休, database overrides, the fallback for years the
calendar package does not cover, and deadlines at the same Shanghai wall-clock time."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from custody.models import WorkdayOverride
from custody.services.calendar import add_working_days, is_working_day, local_today, package_is_working_day
from ledger import clock

pytestmark = pytest.mark.django_db

SHANGHAI = ZoneInfo("Asia/Shanghai")
UTC = ZoneInfo("UTC")


def at(day: str, hour: int = 18, minute: int = 0) -> datetime:
    return datetime.combine(date.fromisoformat(day), datetime.min.time(), SHANGHAI).replace(
        hour=hour, minute=minute
    )


@pytest.mark.parametrize(
    ("day", "working"),
    [
        ("2024-02-04", True),  # Sunday, worked for the Spring Festival (调休)
        ("2024-02-12", False),  # Monday, Spring Festival
        ("2024-09-29", True),  # Sunday, worked for National Day
        ("2024-10-01", False),
        ("2024-10-04", False),
        ("2024-10-07", False),  # Monday, still National Day
        ("2024-10-08", True),
        ("2024-10-12", True),  # Saturday, worked
        ("2024-10-13", False),  # an ordinary Sunday
        ("2024-10-14", True),  # an ordinary Monday
    ],
)
def test_the_2024_schedule_with_swapped_working_days(day: str, working: bool) -> None:
    assert is_working_day(date.fromisoformat(day)) is working


def test_years_the_package_does_not_cover_fall_back_to_monday_to_friday() -> None:
    with pytest.raises(NotImplementedError):
        import chinese_calendar

        chinese_calendar.is_workday(date(2035, 1, 1))
    assert package_is_working_day(date(2035, 1, 1)) is True  # a Monday; no holiday data for 2035
    assert is_working_day(date(2035, 1, 5)) is True  # Friday
    assert is_working_day(date(2035, 1, 6)) is False  # Saturday
    assert is_working_day(date(2035, 1, 7)) is False  # Sunday


def test_an_override_wins_over_the_package_and_over_the_fallback() -> None:
    WorkdayOverride.objects.create(date=date(2024, 10, 8), is_working_day=False, note="local holiday")
    WorkdayOverride.objects.create(date=date(2024, 10, 5), is_working_day=True, note="make-up day")
    WorkdayOverride.objects.create(date=date(2035, 2, 5), is_working_day=False, note="春节 2035")
    WorkdayOverride.objects.create(date=date(2035, 2, 3), is_working_day=True, note="调休 2035")
    assert is_working_day(date(2024, 10, 8)) is False
    assert is_working_day(date(2024, 10, 5)) is True
    assert is_working_day(date(2035, 2, 5)) is False  # a Monday
    assert is_working_day(date(2035, 2, 3)) is True  # a Saturday


def test_add_working_days_jumps_the_national_day_holiday() -> None:
    assert add_working_days(at("2024-09-30"), 1) == at("2024-10-08")
    assert add_working_days(at("2024-09-30"), 2) == at("2024-10-09")
    # Friday 2024-09-27 + 1 is the swapped Sunday 2024-09-29; + 2 is Monday the 30th.
    assert add_working_days(at("2024-09-27", 9, 30), 1) == at("2024-09-29", 9, 30)
    assert add_working_days(at("2024-09-27", 9, 30), 2) == at("2024-09-30", 9, 30)


def test_add_working_days_over_the_spring_festival() -> None:
    # Friday 2024-02-02 → the swapped Sunday 2024-02-04; the festival runs 2024-02-10..17; 2024-02-18 worked.
    assert add_working_days(at("2024-02-02"), 1) == at("2024-02-04")
    assert add_working_days(at("2024-02-08"), 1) == at("2024-02-09")
    assert add_working_days(at("2024-02-09"), 1) == at("2024-02-18")
    assert add_working_days(at("2024-02-09"), 2) == at("2024-02-19")


def test_fifteen_working_days_for_the_lesson_confirmation_deadline() -> None:
    # 2024-09-20 (Fri) + 15: 09-23..27 (5), 09-29 Sun worked (6), 09-30 (7), National Day off, 10-08..11
    # (11), 10-12 Sat worked (12), 10-14, 10-15, 10-16 (15).
    assert add_working_days(at("2024-09-20", 20, 15), 15) == at("2024-10-16", 20, 15)
    assert add_working_days(at("2024-09-20", 20, 15), 14) == at("2024-10-15", 20, 15)


def test_add_working_days_uses_overrides_far_ahead_and_outside_the_package_years() -> None:
    WorkdayOverride.objects.create(date=date(2024, 10, 8), is_working_day=False)
    assert add_working_days(at("2024-09-30"), 1) == at("2024-10-09")
    # 2035: Monday to Friday, 80 working days = 16 weeks; an override 112 days out is found across the
    # query windows.
    start = at("2035-01-01", 10)  # a Monday
    assert add_working_days(start, 80) == at("2035-04-23", 10)
    WorkdayOverride.objects.create(date=date(2035, 4, 23), is_working_day=False)
    assert add_working_days(start, 80) == at("2035-04-24", 10)


def test_the_day_is_counted_in_shanghai_and_the_result_keeps_the_callers_zone() -> None:
    # 2024-09-30 16:30 UTC is 2024-10-01 00:30 in Shanghai, a holiday: the next working day is 10-08.
    start = datetime(2024, 9, 30, 16, 30, tzinfo=UTC)
    due = add_working_days(start, 1)
    assert due.tzinfo == UTC
    assert due == at("2024-10-08", 0, 30)


def test_zero_days_is_the_start_and_bad_input_is_refused() -> None:
    start = at("2024-10-03")
    assert add_working_days(start, 0) == start
    with pytest.raises(ValueError):
        add_working_days(start, -1)
    with pytest.raises(ValueError):
        add_working_days(datetime(2024, 10, 3, 18), 1)


def test_local_today_follows_business_time_in_shanghai() -> None:
    with clock.frozen_at(datetime(2026, 11, 20, 16, 30, tzinfo=UTC)):
        assert local_today() == date(2026, 11, 21)

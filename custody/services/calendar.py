"""Working days (工作日) for the deadlines of the rules: lesson auto-confirmation, refund answers and payouts.

The Chinese calendar moves working days around holidays (调休: a Sunday can be a working day, a Wednesday a
holiday). ``chinese_calendar`` knows the State Council's schedule for the years it ships; a
``WorkdayOverride`` row wins over it (a new year's schedule, a local holiday). For years the package does
not cover, Monday to Friday are working days unless overridden. Dates are local to Asia/Shanghai.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import chinese_calendar

from custody.models import WorkdayOverride
from ledger import clock

SHANGHAI = ZoneInfo("Asia/Shanghai")
# Overrides are read in windows of this many days, so a long deadline costs a few queries, not one per day.
_WINDOW_DAYS = 62


def local_date(moment: datetime) -> date:
    """The calendar date in Shanghai of an aware datetime."""
    return moment.astimezone(SHANGHAI).date()


def local_today() -> date:
    """Today in Shanghai, by business time (``ledger.clock``)."""
    return local_date(clock.now())


def package_is_working_day(day: date) -> bool:
    """The national schedule from ``chinese_calendar``; Monday–Friday for years it does not cover."""
    try:
        return bool(chinese_calendar.is_workday(day))
    except NotImplementedError:
        return day.weekday() < 5


def is_working_day(day: date) -> bool:
    override = WorkdayOverride.objects.filter(date=day).values_list("is_working_day", flat=True).first()
    if override is not None:
        return override
    return package_is_working_day(day)


def add_working_days(start: datetime, days: int) -> datetime:
    """The same Shanghai wall-clock time, ``days`` working days after ``start``'s date.

    Counting starts the day after ``start``: a lesson recorded on Friday 18:00 with a 1-working-day deadline
    is due on Monday 18:00 (or on the 调休 Sunday, when that Sunday is a working day). ``days=0`` returns
    ``start``.
    """
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    if days < 0:
        raise ValueError(f"days must not be negative, got {days}")
    local = start.astimezone(SHANGHAI)
    day = local.date()
    overrides: dict[date, bool] = {}
    loaded_until = day
    remaining = days
    while remaining > 0:
        day += timedelta(days=1)
        if day > loaded_until:
            window_end = day + timedelta(days=_WINDOW_DAYS)
            overrides.update(
                WorkdayOverride.objects.filter(date__gte=day, date__lte=window_end).values_list(
                    "date", "is_working_day"
                )
            )
            loaded_until = window_end
        working = overrides.get(day)
        if working is None:
            working = package_is_working_day(day)
        if working:
            remaining -= 1
    return datetime.combine(day, local.timetz()).astimezone(start.tzinfo)

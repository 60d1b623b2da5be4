"""Business days on the ledger's clock: where day D starts and ends, and which day a moment belongs to.

A posting's ``posted_at`` is the ledger's transaction time. By default business day D is 00:00–24:00
Asia/Shanghai (which has kept UTC+8 without daylight saving since 1991). ``DayCut`` rows override single
days (see ``reconciliation.models.days``). ``BusinessCalendar`` loads the overrides once so bulk work can
place many moments without a query each.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from reconciliation.models import DayCut

SHANGHAI = ZoneInfo("Asia/Shanghai")


def default_start(day: date) -> datetime:
    return datetime.combine(day, time(0), SHANGHAI)


def default_end(day: date) -> datetime:
    return datetime.combine(day + timedelta(days=1), time(0), SHANGHAI)


def local_date(moment: datetime) -> date:
    return moment.astimezone(SHANGHAI).date()


class BusinessCalendar:
    """The day cuts in force, loaded once (all of them, or those of some days)."""

    def __init__(self, cuts: Iterable[DayCut]) -> None:
        ordered = sorted(cuts, key=lambda cut: cut.opens_at)
        self._by_day = {cut.day: cut for cut in ordered}
        self._opens = [cut.opens_at for cut in ordered]
        self._cuts = ordered

    @classmethod
    def load(cls) -> BusinessCalendar:
        return cls(DayCut.objects.all())

    @property
    def has_overrides(self) -> bool:
        return bool(self._cuts)

    def start(self, day: date) -> datetime:
        """The moment day ``day`` opens: postings after it (and up to its end) belong to it."""
        cut = self._by_day.get(day)
        return cut.opens_at if cut is not None else default_start(day)

    def end(self, day: date) -> datetime:
        """The moment day ``day`` closes: the tie-out reads the ledger as it stood then."""
        cut = self._by_day.get(day)
        return cut.closes_at if cut is not None else default_end(day)

    def day_of(self, moment: datetime) -> date:
        """The business day a posting made at ``moment`` belongs to."""
        index = bisect.bisect_left(self._opens, moment) - 1
        if index >= 0:
            cut = self._cuts[index]
            if cut.opens_at < moment <= cut.closes_at:
                return cut.day
        return local_date(moment - timedelta(microseconds=1)) if _is_midnight(moment) else local_date(moment)


def _is_midnight(moment: datetime) -> bool:
    # A posting at exactly 24:00 closes the day before (the window is (start, end]).
    local = moment.astimezone(SHANGHAI)
    return local.time() == time(0)


def day_start(day: date) -> datetime:
    cut = DayCut.objects.filter(day=day).first()
    return cut.opens_at if cut is not None else default_start(day)


def day_end(day: date) -> datetime:
    cut = DayCut.objects.filter(day=day).first()
    return cut.closes_at if cut is not None else default_end(day)


def ledger_clock_now() -> datetime:
    """The ledger's transaction clock now: PostgreSQL's ``clock_timestamp()`` (what ``posted_at`` is stamped
    with there), Django's ``timezone.now()`` on SQLite."""
    from django.db import connection
    from django.utils import timezone

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT clock_timestamp()")
            moment: datetime = cursor.fetchone()[0]
            return moment
    return timezone.now()

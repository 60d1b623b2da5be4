"""Values read with raw SQL: PostgreSQL gives dates and aware datetimes, SQLite gives text."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from django.utils.dateparse import parse_datetime


def as_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        moment = value
    else:
        parsed = parse_datetime(str(value))
        if parsed is None:
            raise ValueError(f"not a datetime: {value!r}")
        moment = parsed
    # SQLite stores UTC without an offset.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)

"""Where "now" comes from, so tests can move business time (auto-confirmation, expiry, deadlines).

The ledger's own transaction time (``posted_at``) is always the real clock of the database; business time is
this clock, which tests can freeze or advance.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime, timedelta

from django.utils import timezone

_offset = timedelta(0)
_frozen: datetime | None = None


def now() -> datetime:
    if _frozen is not None:
        return _frozen
    return timezone.now() + _offset


def advance(delta: timedelta) -> None:
    """Move business time forward (tests and demo data only)."""
    global _offset, _frozen
    if _frozen is not None:
        _frozen = _frozen + delta
    else:
        _offset += delta


@contextlib.contextmanager
def frozen_at(moment: datetime) -> Iterator[None]:
    global _frozen
    previous = _frozen
    _frozen = moment
    try:
        yield
    finally:
        _frozen = previous


def reset() -> None:
    global _offset, _frozen
    _offset = timedelta(0)
    _frozen = None

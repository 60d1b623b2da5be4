"""Fixtures for the audit features (checkpoints, proofs, exports, risk alerts): the money-flow fixtures of
tests/custody/flows (business time frozen at Monday 2024-03-04 10:00 Shanghai, signed bank callbacks, a paid
contract), without the flows' after-test invariant check, since the tamper tests break the books on purpose.
Tests that keep the books whole call ``assert_invariants`` themselves."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta

import pytest

from custody.models import Contract, Lesson
from custody.services.lessons import NewLesson, record_lessons
from ledger import clock
from tests.custody.flows.conftest import (  # noqa: F401 - fixtures, registered by import
    _business_time,
    _channels,
    assert_invariants,
    bank_callback,
    bank_key,
    paid_contract,
    pay,
    wechat_key,
)


@pytest.fixture
def record(db: None) -> Callable[..., list[Lesson]]:
    """``record(contract, n, hours=1)``: record ``n`` lessons of ``contract`` held now (business time)."""
    serial = iter(range(1, 1_000_000))

    def record_n(contract: Contract, n: int = 1, *, hours: int = 1) -> list[Lesson]:
        return record_lessons(
            lessons=[
                NewLesson(
                    contract=contract,
                    held_at=clock.now() - timedelta(hours=1),
                    hours=hours,
                    idempotency_key=f"test-lesson:{contract.pk}:{next(serial)}",
                )
                for _ in range(n)
            ]
        )

    return record_n


def ledger_today() -> date:
    """Today by the ledger's own clock (postings carry the database's time, not business time), in
    Shanghai: the date an export of today's books asks for."""
    from django.utils import timezone

    from custody.services.calendar import local_date

    return local_date(timezone.now())

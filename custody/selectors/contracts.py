"""Reads about contracts: a student's open contracts for a subject, their unconsumed hours, held value."""

from __future__ import annotations

from django.db.models import QuerySet
from moneyed import Money

from custody.models import Contract, ContractState, Institution, Student
from custody.selectors._prepared import ModelColumns, fetch_one, load_joined
from ledger.money import from_minor
from ledger.selectors import balance

OPEN_STATES = (ContractState.AWAITING_PAYMENT, ContractState.ACTIVE)


def open_contracts_for(student: Student, institution: Institution, subject: str) -> QuerySet[Contract]:
    """Contracts awaiting payment or active, for this student at this institution in this subject."""
    return Contract.objects.filter(
        student=student, institution=institution, subject=subject, state__in=OPEN_STATES
    ).order_by("signed_at", "pk")


_OPEN_LATEST = ModelColumns(Contract, "c", fields=("id", "number", "service_ends_on"))
_OPEN_SUMMARY_SQL = f"""
SELECT {_OPEN_LATEST.sql},
       sum(c.paid_hours + c.gift_hours - c.hours_consumed - c.hours_pending - c.paid_hours_refunded) OVER ()
FROM custody_contract c
WHERE c.student_id = %s AND c.institution_id = %s AND c.subject = %s AND c.state IN (%s, %s)
ORDER BY c.service_ends_on DESC, c.id DESC
LIMIT 1
"""


def open_contracts_summary(
    *, student_id: int, institution_id: int, subject: str
) -> tuple[int, Contract | None]:
    """What the anti-splitting rule looks at, in one prepared statement: the unconsumed hours of the
    student's open contracts at this institution in this subject (Σ ``Contract.remaining_hours``: paid +
    gift − consumed − pending − refunded) and the one whose service period ends last (only its number and
    end date are loaded)."""
    row = fetch_one(_OPEN_SUMMARY_SQL, [student_id, institution_id, subject, *OPEN_STATES])
    if row is None:
        return 0, None
    (latest,), (hours,) = load_joined(row, _OPEN_LATEST)
    return int(hours), latest


def held_value(contract: Contract) -> Money:
    """What custody holds for this contract and has not released or refunded: the posted balance of
    ``prepaid:c`` (it still includes lessons recorded and not yet confirmed, whose release is pending)."""
    if contract.prepaid_account is None:
        return from_minor(0, "CNY")
    return balance(contract.prepaid_account).posted

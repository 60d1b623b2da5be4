"""Reads of the versioned policy: the version in force, the version at a past moment, and guidance prices."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cache

from django.db import connection

from custody.errors import NotFound
from custody.models import Contract, Course, GuidancePrice, Institution, Jurisdiction, Policy, Student
from custody.selectors._prepared import ModelColumns, fetch_one, load_joined, row_locks
from ledger.backends import next_id_column
from ledger.models import Account


def current_policy(jurisdiction: Jurisdiction) -> Policy:
    """The newest version: the one new contracts and courses are checked against."""
    policy = Policy.objects.filter(jurisdiction=jurisdiction).order_by("-version").first()
    if policy is None:
        raise _no_policy(jurisdiction)
    return policy


def _no_policy(jurisdiction: Jurisdiction) -> NotFound:
    return NotFound(
        f"{jurisdiction.code}尚无监管政策 jurisdiction {jurisdiction.code} has no policy",
        jurisdiction=jurisdiction.code,
    )


@dataclass(frozen=True)
class SigningContext:
    """What signing a contract reads before the rules run: the course with its institution (share-locked) and
    jurisdiction, the student's guardian (the student locked), the policy in force and the course's guidance
    price under it (``None`` if the policy has none for its band and mode). On PostgreSQL the same statement
    draws the new contract's id and its two ledger accounts' ids from their sequences
    (``new_contract_id``, ``new_account_ids``; ``None`` elsewhere): a refused signing leaves gaps, as any
    rolled-back insert does."""

    course: Course
    guardian_id: int
    policy: Policy
    guidance_price_fen: int | None
    new_contract_id: int | None
    new_account_ids: tuple[int, int] | None


_COURSE = ModelColumns(Course, "c")
_INSTITUTION = ModelColumns(Institution, "i")
_JURISDICTION = ModelColumns(Jurisdiction, "j")
_POLICY = ModelColumns(Policy, "p")


def lock_signing_context(*, course_id: int, student_id: int) -> SigningContext:
    """The signing context in one prepared statement. The institution is share-locked, so it cannot be frozen
    or closed (those take it FOR UPDATE) until the signing commits, while signings at one institution still
    run side by side; the student is locked, so two signings for one student are serialised and the
    anti-splitting sum cannot be raced.

    Raises ``Course.DoesNotExist``, ``Student.DoesNotExist`` or ``NotFound`` (no policy)."""
    row = fetch_one(_signing_context_sql(connection.vendor), [student_id, course_id])
    if row is None:
        if not Course.objects.filter(pk=course_id).exists():
            raise Course.DoesNotExist(f"no course {course_id}")
        raise Student.DoesNotExist(f"no student {student_id}")
    (course, institution, jurisdiction, policy), (guardian_id, guidance, new_id, *account_ids) = load_joined(
        row, _COURSE, _INSTITUTION, _JURISDICTION, _POLICY
    )
    course.institution = institution
    institution.jurisdiction = jurisdiction
    if policy is None:
        raise _no_policy(jurisdiction)
    prepaid_id, refund_id = account_ids
    new_account_ids = None if prepaid_id is None else (prepaid_id, refund_id)
    return SigningContext(course, guardian_id, policy, guidance, new_id, new_account_ids)


@cache
def _signing_context_sql(vendor: str) -> str:
    return f"""
SELECT {_COURSE.sql}, {_INSTITUTION.sql}, {_JURISDICTION.sql}, {_POLICY.sql}, s.guardian_id,
       (SELECT g.price_per_lesson_fen FROM custody_guidanceprice g
        WHERE g.policy_id = p.id AND g.class_size_band = c.class_size_band AND g.mode = c.mode
        ORDER BY g.id LIMIT 1),
       {next_id_column(Contract, vendor)},
       {next_id_column(Account, vendor)}, {next_id_column(Account, vendor)}
FROM custody_course c
JOIN custody_institution i ON i.id = c.institution_id
JOIN custody_jurisdiction j ON j.id = i.jurisdiction_id
JOIN custody_student s ON s.id = %s
LEFT JOIN custody_policy p ON p.id = (
    SELECT p2.id FROM custody_policy p2 WHERE p2.jurisdiction_id = j.id ORDER BY p2.version DESC LIMIT 1
)
WHERE c.id = %s
{row_locks(share="i", update="s")}
"""


def policy_at(jurisdiction: Jurisdiction, moment: datetime) -> Policy:
    """The version that was in force at ``moment`` (the newest one effective at or before it)."""
    policy = (
        Policy.objects.filter(jurisdiction=jurisdiction, effective_from__lte=moment)
        .order_by("-version")
        .first()
    )
    if policy is None:
        raise NotFound(
            f"{jurisdiction.code}在{moment.isoformat()}尚无监管政策 "
            f"jurisdiction {jurisdiction.code} had no policy at {moment.isoformat()}",
            jurisdiction=jurisdiction.code,
        )
    return policy


def guidance_prices(policy: Policy) -> dict[tuple[str, str], int]:
    """政府指导价 of one standard lesson in fen, by (class-size band, teaching mode)."""
    rows = GuidancePrice.objects.filter(policy=policy).values_list(
        "class_size_band", "mode", "price_per_lesson_fen"
    )
    return {(band, mode): fen for band, mode, fen in rows}


def guidance_price_fen(policy: Policy, *, class_size_band: str, mode: str) -> int | None:
    return (
        GuidancePrice.objects.filter(policy=policy, class_size_band=class_size_band, mode=mode)
        .values_list("price_per_lesson_fen", flat=True)
        .first()
    )

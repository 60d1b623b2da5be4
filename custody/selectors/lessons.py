"""Reads about lessons (一课一消): what awaits confirmation or is disputed, and the paid hours taken."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from django.db.models import Count, QuerySet

from custody.models import Contract, Institution, Lesson, LessonState
from custody.services._bulk import fetch_by_ids
from ledger import clock

# Lessons that hold or have taken hours of their contract (a voided lesson gave its hours back).
LIVE_STATES = (LessonState.PENDING, LessonState.DISPUTED, LessonState.CONFIRMED)
UNCONFIRMED_STATES = (LessonState.PENDING, LessonState.DISPUTED)


def paid_hours_taken(contract_ids: Sequence[int]) -> dict[int, int]:
    """Paid hours of each contract that are consumed, pending, disputed or refunded.

    Lessons take paid hours before gift hours, but a voided paid lesson gives its paid hours back while later
    gift lessons keep theirs, so this is counted from the lessons themselves, not from the hour counters.
    """
    ids = sorted(set(contract_ids))
    taken = dict(fetch_by_ids("SELECT id, paid_hours_refunded FROM custody_contract WHERE id {ids}", ids))
    for contract_id, paid in fetch_by_ids(
        "SELECT contract_id, SUM(paid_hours) FROM custody_lesson WHERE contract_id {ids} "
        "AND state IN ('pending', 'disputed', 'confirmed') GROUP BY contract_id",
        ids,
    ):
        taken[contract_id] += int(paid or 0)
    return taken


def lessons_of(contract: Contract) -> QuerySet[Lesson]:
    return Lesson.objects.filter(contract=contract).order_by("held_at", "pk")


def awaiting_confirmation(contract: Contract) -> QuerySet[Lesson]:
    """What the parent is asked to confirm or dispute, oldest first, with its auto-confirm deadline."""
    return Lesson.objects.filter(contract=contract, state=LessonState.PENDING).order_by(
        "confirm_deadline", "pk"
    )


def disputed_lessons(institution: Institution) -> QuerySet[Lesson]:
    """Disputes the institution (or the regulator) has to resolve; their release is stopped."""
    return (
        Lesson.objects.filter(institution=institution, state=LessonState.DISPUTED)
        .select_related("contract")
        .order_by("disputed_at", "pk")
    )


def due_for_auto_confirmation(*, now: datetime | None = None) -> QuerySet[Lesson]:
    """Pending lessons whose confirmation deadline has passed (the partial index ``custody_lesson_due``)."""
    return Lesson.objects.filter(
        state=LessonState.PENDING, confirm_deadline__lte=now or clock.now()
    ).order_by("pk")


def unconfirmed_count(institution: Institution) -> dict[str, int]:
    """How many lessons of the institution are pending and how many disputed (a risk-alert input)."""
    counts = dict.fromkeys((LessonState.PENDING.value, LessonState.DISPUTED.value), 0)
    for state, n in (
        Lesson.objects.filter(institution=institution, state__in=UNCONFIRMED_STATES)
        .values("state")
        .annotate(n=Count("pk"))
        .values_list("state", "n")
    ):
        counts[state] = n or 0
    return counts

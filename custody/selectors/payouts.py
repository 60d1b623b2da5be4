"""Reads about payout instructions: what the bank has yet to execute, and an institution's payout history."""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet

from custody.models import Institution, PayoutInstruction, PayoutKind, PayoutState


def payouts_of(institution: Institution, *, kind: str | None = None) -> QuerySet[PayoutInstruction]:
    """The institution's instructions, newest first (release status for the institution's staff)."""
    found = PayoutInstruction.objects.filter(institution=institution)
    if kind is not None:
        found = found.filter(kind=PayoutKind(kind))
    return found.order_by("-instructed_at", "-pk")


def awaiting_bank(*, instructed_before: datetime | None = None) -> QuerySet[PayoutInstruction]:
    """Instructions the bank has not answered yet (optionally only those older than a moment)."""
    found = PayoutInstruction.objects.filter(state=PayoutState.INSTRUCTED)
    if instructed_before is not None:
        found = found.filter(instructed_at__lt=instructed_before)
    return found.order_by("instructed_at", "pk")


def by_reference(reference: str) -> PayoutInstruction | None:
    """The instruction a bank statement line names (reconciliation matches by it)."""
    return PayoutInstruction.objects.filter(reference=reference).first()

"""Reads of the break queue: what is open (for a regulator's scope), and a break's timeline."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import QuerySet

from reconciliation.models import Break, BreakState, ReconciliationEvent


def open_breaks(*, institution_ids: Iterable[int] | None = None, kind: str | None = None) -> QuerySet[Break]:
    """Open and assigned breaks, oldest day first (a regulator passes the institutions in their scope)."""
    found = Break.objects.filter(state__in=(BreakState.OPEN, BreakState.ASSIGNED))
    if institution_ids is not None:
        found = found.filter(institution_id__in=list(institution_ids))
    if kind is not None:
        found = found.filter(kind=kind)
    return found.select_related("assignee", "line", "match").order_by("day", "pk")


def timeline(item: Break) -> QuerySet[ReconciliationEvent]:
    """Everything that happened to a break, in order, with who did it."""
    return ReconciliationEvent.objects.filter(break_item=item).select_related("actor").order_by("at", "pk")

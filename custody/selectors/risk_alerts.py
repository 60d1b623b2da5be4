"""Reads of the stored risk alerts (风险预警) and the regulators' inbox, for the API and the web pages.

The alerts are written by ``custody.services.alerts.run_risk_scan``; their handling goes through
``transition_alert`` (acknowledge, investigate, resolve with a note) in the same module.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Case, IntegerField, QuerySet, Value, When

from custody.models import (
    AlertEvent,
    AlertLevel,
    AlertState,
    InboxMessage,
    Institution,
    Jurisdiction,
    RiskAlert,
)

UNRESOLVED = (AlertState.OPEN, AlertState.ACKNOWLEDGED, AlertState.INVESTIGATING)


def _red_first(alerts: QuerySet[RiskAlert]) -> QuerySet[RiskAlert]:
    return alerts.annotate(
        level_order=Case(
            When(level=AlertLevel.RED, then=Value(0)), default=Value(1), output_field=IntegerField()
        )
    ).order_by("level_order", "-raised_at", "-pk")


def alerts_in_jurisdiction(
    jurisdiction: Jurisdiction, *, states: Iterable[str] = UNRESOLVED, level: str | None = None
) -> QuerySet[RiskAlert]:
    """A jurisdiction's alerts in the given states, red first, newest first."""
    alerts = RiskAlert.objects.filter(jurisdiction=jurisdiction, state__in=list(states)).select_related(
        "institution"
    )
    if level is not None:
        alerts = alerts.filter(level=level)
    return _red_first(alerts)


def alerts_of_institution(
    institution: Institution, *, states: Iterable[str] = UNRESOLVED
) -> QuerySet[RiskAlert]:
    return _red_first(RiskAlert.objects.filter(institution=institution, state__in=list(states)))


def alert_history(alert: RiskAlert) -> QuerySet[AlertEvent]:
    """Raised, escalated, each transition with who and why, each notification sent or failed, in order."""
    return AlertEvent.objects.filter(alert=alert).select_related("actor").order_by("at", "pk")


def inbox(jurisdiction: Jurisdiction, *, unread_only: bool = False) -> QuerySet[InboxMessage]:
    """The jurisdiction's regulators' inbox (站内信), newest first."""
    messages = InboxMessage.objects.filter(jurisdiction=jurisdiction)
    if unread_only:
        messages = messages.filter(read_at__isnull=True)
    return messages.order_by("-created_at", "-pk")

"""Reading the audit trail: a regulator searches the events of their jurisdictions."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import QuerySet

from custody.models import AuditEvent


def events_in(jurisdiction_ids: Iterable[int]) -> QuerySet[AuditEvent]:
    return AuditEvent.objects.filter(jurisdiction_id__in=list(jurisdiction_ids))

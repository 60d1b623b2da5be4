"""Writing reconciliation's log (``ReconciliationEvent``): one row per action, never changed after.

Actions taken by a person are also written to the platform's audit trail (``custody.services.audit``,
action ``reconciliation.<action>``), where every regulator's action is looked up; the system's own actions
(breaks raised and resolved by a run) stay in this log, which is each break's timeline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser

from custody.models import Institution
from custody.services.audit import record_event
from reconciliation.models import ReconciliationEvent


def record(
    *,
    action: str,
    at: datetime,
    actor: AbstractBaseUser | None = None,
    break_id: int | None = None,
    institution_id: int | None = None,
    note: str = "",
    data: Mapping[str, Any] | None = None,
    target: tuple[str, int] | None = None,
) -> ReconciliationEvent:
    event = ReconciliationEvent.objects.create(
        at=at,
        actor_id=actor.pk if actor is not None else None,
        action=action,
        break_item_id=break_id,
        institution_id=institution_id,
        note=note,
        data=dict(data or {}),
    )
    if actor is not None:
        target_type, target_id = target or (("reconciliation.break", break_id) if break_id else ("", 0))
        record_event(
            action=f"reconciliation.{action}",
            actor=actor,
            actor_role="regulator",
            target_type=target_type,
            target_id=target_id or "",
            institution_id=institution_id,
            jurisdiction_id=(
                Institution.objects.values_list("jurisdiction_id", flat=True)
                .filter(pk=institution_id)
                .first()
                if institution_id is not None
                else None
            ),
            details={"note": note, **dict(data or {})},
        )
    return event


def record_many(events: Sequence[ReconciliationEvent]) -> None:
    ReconciliationEvent.objects.bulk_create(events, batch_size=2000)

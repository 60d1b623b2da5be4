"""Background jobs of reconciliation: thin wrappers over its services, idempotent and safe to retry.

``reconciliation.reconcile_daily`` runs nightly (its beat entry belongs in ``setup_periodic_tasks``, at
02:30 Asia/Shanghai, after the banks' statements for the day before have been imported): it matches and
ties out yesterday for every institution with a statement. Re-running it finds what it did: matches by
their unique lines and postings, breaks by key, tie-outs by institution and day.
"""

from __future__ import annotations

from datetime import date, timedelta

from celery import shared_task


@shared_task(name="reconciliation.reconcile_daily")
def reconcile_daily(day: str | None = None) -> dict[str, object]:
    """Reconcile ``day`` (ISO, default yesterday in Shanghai by business time)."""
    from ledger import clock
    from reconciliation.selectors.days import local_date
    from reconciliation.services.runs import reconcile_day

    target = date.fromisoformat(day) if day else local_date(clock.now()) - timedelta(days=1)
    run = reconcile_day(day=target)
    return {
        "day": target.isoformat(),
        "statements_matched": len(run.matched),
        "matches": sum(m.matches for m in run.matched),
        "tie_outs": {str(t.institution_id): t.status for t in run.tie_outs},
    }

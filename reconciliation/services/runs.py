"""Reconciliation runs: a statement (match it, tie out each of its days) or a day (every institution whose
statement covers it). What the ``reconcile`` command and the nightly job call."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta

from django.contrib.auth.models import User
from django.db.models import Q

from custody.models import Institution
from ledger import clock
from reconciliation.models import BankStatement, TieOut
from reconciliation.selectors.days import BusinessCalendar
from reconciliation.services import events
from reconciliation.services.matching import MatchSummary, Progress, match_statement
from reconciliation.services.tieout import tie_out


@dataclass
class RunSummary:
    matched: list[MatchSummary] = field(default_factory=list)
    tie_outs: list[TieOut] = field(default_factory=list)
    dry_run: bool = False


def statement_days(statement: BankStatement) -> list[date]:
    days = []
    day = statement.period_start
    while day <= statement.period_end:
        days.append(day)
        day += timedelta(days=1)
    return days


def reconcile_statement(
    *,
    statement: BankStatement,
    dry_run: bool = False,
    progress: Progress | None = None,
    by: User | None = None,
) -> RunSummary:
    """Match the statement, then tie out every day of its period (not in a dry run)."""
    summary = RunSummary(dry_run=dry_run)
    summary.matched.append(
        match_statement(statement=statement, dry_run=dry_run, progress=progress, matched_by=by)
    )
    if dry_run:
        return summary
    calendar = BusinessCalendar.load()
    institution = Institution.objects.get(pk=statement.institution_id)
    for day in statement_days(statement):
        tie = tie_out(institution=institution, day=day, calendar=calendar)
        if tie is not None:
            summary.tie_outs.append(tie)
    _log_run(summary, by, what={"statement": statement.pk})
    return summary


def reconcile_day(
    *,
    day: date,
    institutions: Iterable[Institution] | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    by: User | None = None,
) -> RunSummary:
    """For every institution with a statement covering ``day``: match its statements not matched yet (or
    again the one covering the day: earlier lines are retried and settlement windows move on), then tie out
    the day."""
    summary = RunSummary(dry_run=dry_run)
    covering = BankStatement.objects.filter(period_start__lte=day, period_end__gte=day)
    if institutions is not None:
        covering = covering.filter(institution__in=[i.pk for i in institutions])
    institution_ids = sorted(set(covering.values_list("institution_id", flat=True)))
    calendar = BusinessCalendar.load()
    for institution_id in institution_ids:
        statements = list(
            BankStatement.objects.filter(institution_id=institution_id, period_start__lte=day)
            .filter(Q(matched_at__isnull=True) | Q(period_end__gte=day))
            .order_by("period_start", "pk")
        )
        for statement in statements:
            summary.matched.append(
                match_statement(statement=statement, dry_run=dry_run, progress=progress, matched_by=by)
            )
        if not dry_run:
            tie = tie_out(institution=Institution.objects.get(pk=institution_id), day=day, calendar=calendar)
            if tie is not None:
                summary.tie_outs.append(tie)
    if not dry_run:
        _log_run(summary, by, what={"day": day.isoformat()})
    return summary


def _log_run(summary: RunSummary, by: User | None, *, what: dict[str, object]) -> None:
    for institution_id in sorted({t.institution_id for t in summary.tie_outs}):
        events.record(
            action="reconciled",
            at=clock.now(),
            actor=by,
            institution_id=institution_id,
            data={
                **what,
                "matches": sum(m.matches for m in summary.matched),
                "tie_outs": {
                    t.day.isoformat(): {"status": t.status, "difference_fen": t.difference_fen}
                    for t in summary.tie_outs
                    if t.institution_id == institution_id
                },
            },
        )

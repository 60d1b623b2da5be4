"""Matching by hand (人工勾对) and undoing a match: what a regulator does when no rule could see that a line
and an entry are the same money, or when a rule paired the wrong ones. Both are logged and audited."""

from __future__ import annotations

from collections.abc import Sequence

from django.contrib.auth.models import User
from django.db import transaction

from custody.models import Institution
from ledger import clock
from ledger.models import Posting
from reconciliation.errors import ReconciliationError
from reconciliation.formats.base import format_yuan
from reconciliation.models import BankStatementLine, BreakKind, Match, MatchEntry, MatchLine, MatchRule
from reconciliation.services import breaks as break_service
from reconciliation.services import events


def match_manually(
    *, lines: Sequence[BankStatementLine], postings: Sequence[Posting], by: User, note: str
) -> Match:
    """Match these lines with these custody-cash postings. All belong to one institution, none is matched
    yet; a difference between the two sides stays on the match as an ``amount_difference`` break."""
    text = note.strip()
    if not text:
        raise ReconciliationError(
            "note_required", "人工匹配须说明理由 a manual match needs a note", field="note"
        )
    if not lines and not postings:
        raise ReconciliationError("nothing_to_match", "没有要匹配的流水或分录 nothing to match")
    with transaction.atomic():
        institution_ids: set[int | None] = {line.institution_id for line in lines}
        owners = dict(
            Institution.objects.filter(cash_account_id__in={p.account_id for p in postings}).values_list(
                "cash_account_id", "pk"
            )
        )
        institution_ids |= {owners.get(p.account_id) for p in postings}
        if len(institution_ids) != 1 or None in institution_ids:
            raise ReconciliationError(
                "one_institution",
                "人工匹配的流水和分录须属于同一机构的托管账户 "
                "the lines and postings must all be on one institution's custody account",
            )
        institution_id = institution_ids.pop()
        assert institution_id is not None
        taken_lines = MatchLine.objects.filter(line__in=lines).values_list("line_id", flat=True)
        taken_postings = MatchEntry.objects.filter(posting__in=postings).values_list("posting_id", flat=True)
        if taken_lines.exists() or taken_postings.exists():
            raise ReconciliationError(
                "already_matched",
                "部分流水或分录已匹配，请先撤销原匹配 some of them are matched already; undo that match "
                "first",
                lines=list(taken_lines),
                postings=list(taken_postings),
            )
        now = clock.now()
        match = Match.objects.create(
            institution_id=institution_id,
            rule=MatchRule.MANUAL,
            key=text[:200],
            matched_at=now,
            matched_by=by,
            lines_fen=sum(line.amount_fen for line in lines),
            entries_fen=sum(p.amount for p in postings),
        )
        MatchLine.objects.bulk_create(
            MatchLine(match=match, line=line, amount_fen=line.amount_fen) for line in lines
        )
        MatchEntry.objects.bulk_create(
            MatchEntry(match=match, posting=p, entry_id=p.entry_id, amount_fen=p.amount) for p in postings
        )
        if match.difference_fen != 0:
            break_service.raise_breaks(
                [
                    break_service.NewBreak(
                        key=break_service.break_key(BreakKind.AMOUNT_DIFFERENCE, match.pk),
                        institution_id=institution_id,
                        kind=BreakKind.AMOUNT_DIFFERENCE,
                        day=max((line.value_on for line in lines), default=now.date()),
                        amount_fen=match.difference_fen,
                        explanation=(
                            f"人工匹配的两边相差 {format_yuan(match.difference_fen, grouping=True)} 元 "
                            f"the two sides of a manual match differ by {format_yuan(match.difference_fen)} "
                            "yuan"
                        ),
                        details={"lines_fen": match.lines_fen, "entries_fen": match.entries_fen},
                        match_id=match.pk,
                    )
                ],
                at=now,
            )
        events.record(
            action="matched_manually",
            at=now,
            actor=by,
            institution_id=institution_id,
            note=text,
            data={
                "match": match.pk,
                "lines": [line.pk for line in lines],
                "postings": [p.pk for p in postings],
            },
            target=("reconciliation.match", match.pk),
        )
        break_service.resolve_matched_items(institution_id=institution_id)
    return match


def unmatch(*, match: Match, by: User, note: str) -> None:
    """Undo a match made by a rule or by hand: its lines and postings are unmatched again, and the next run
    matches or flags them anew. A correction's match stays: the entry was posted for those items."""
    text = note.strip()
    if not text:
        raise ReconciliationError(
            "note_required", "撤销匹配须说明理由 undoing a match needs a note", field="note"
        )
    if match.rule in (MatchRule.CORRECTION, MatchRule.OPENING_CORRECTION):
        raise ReconciliationError(
            "correction_match",
            "调账匹配不能撤销 the match of an approved correction cannot be undone",
            match=match.pk,
        )
    with transaction.atomic():
        locked = Match.objects.select_for_update().get(pk=match.pk)
        details = {
            "match": locked.pk,
            "rule": locked.rule,
            "lines": list(locked.line_links.values_list("line_id", flat=True)),
            "postings": list(locked.entry_links.values_list("posting_id", flat=True)),
        }
        institution_id, match_id = locked.institution_id, locked.pk
        locked.delete()
        events.record(
            action="unmatched",
            at=clock.now(),
            actor=by,
            institution_id=institution_id,
            note=text,
            data=details,
            target=("reconciliation.match", match_id),
        )
        break_service.resolve_matched_items(institution_id=institution_id)

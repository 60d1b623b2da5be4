"""The break queue (差错处理): raising breaks (deduplicated by key, so a re-run finds instead of repeating),
resolving them when the missing item turns up, and the regulators' actions on them: assign, comment,
resolve, reopen, and a correcting entry that one regulator proposes and a second approves (four eyes).

Every action leaves a ``ReconciliationEvent``. An approved correction is posted through
``ledger.services.post_entry`` (kind ``reconciliation_correction``) and its custody-cash posting joins the
break's items in a ``correction`` match, so the difference it corrects is accounted for exactly once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction

from custody.models import Contract, Institution
from ledger import clock
from ledger.models import Account, Posting
from ledger.money import from_minor
from ledger.services import Leg, post_entry
from reconciliation.errors import ReconciliationError
from reconciliation.models import (
    Break,
    BreakKind,
    BreakState,
    Match,
    MatchEntry,
    MatchLine,
    MatchRule,
    ReconciliationEvent,
    ResolutionKind,
)
from reconciliation.services import events

OPEN_STATES = (BreakState.OPEN, BreakState.ASSIGNED)
ITEM_KINDS = (BreakKind.UNMATCHED_LINE, BreakKind.UNMATCHED_ENTRY, BreakKind.FEE, BreakKind.DUPLICATE_LINE)
CORRECTION_KIND = "reconciliation_correction"
MAX_LEGS = 10
_INSTITUTION_ACCOUNT = re.compile(r"(custody_cash|payable):i(?P<pk>[0-9]{1,18})")
_CONTRACT_ACCOUNT = re.compile(r"(prepaid|refund_payable):c(?P<pk>[0-9]{1,18})")


@dataclass(frozen=True)
class NewBreak:
    key: str
    institution_id: int
    kind: str
    day: date
    amount_fen: int
    explanation: str
    details: dict[str, Any] = field(default_factory=dict)
    statement_id: int | None = None
    line_id: int | None = None
    posting_id: int | None = None
    match_id: int | None = None


@dataclass
class RaiseResult:
    created: list[Break] = field(default_factory=list)
    reopened: list[Break] = field(default_factory=list)
    unchanged: int = 0


@dataclass(frozen=True)
class CorrectionLeg:
    account: str
    side: str  # "debit" or "credit"
    amount_fen: int


def break_key(kind: str, *parts: object) -> str:
    return ":".join([kind, *(str(p) for p in parts)])


# --- raised and resolved by the system ------------------------------------------------------------------


def raise_breaks(specs: Sequence[NewBreak], *, at: datetime | None = None) -> RaiseResult:
    """Raise each break unless it exists. An open one is refreshed (amount, explanation); a resolved one whose
    cause is back is reopened, unless a person accepted that same amount. One query per 1,000 keys, bulk
    inserts."""
    moment = at or clock.now()
    result = RaiseResult()
    for start in range(0, len(specs), 1000):
        chunk = specs[start : start + 1000]
        existing = {b.key: b for b in Break.objects.filter(key__in=[s.key for s in chunk])}
        fresh: list[Break] = []
        log: list[ReconciliationEvent] = []
        for spec in chunk:
            found = existing.get(spec.key)
            if found is None:
                fresh.append(
                    Break(
                        key=spec.key,
                        institution_id=spec.institution_id,
                        kind=spec.kind,
                        day=spec.day,
                        amount_fen=spec.amount_fen,
                        explanation=spec.explanation,
                        details=spec.details,
                        state=BreakState.OPEN,
                        raised_at=moment,
                        statement_id=spec.statement_id,
                        line_id=spec.line_id,
                        posting_id=spec.posting_id,
                        match_id=spec.match_id,
                    )
                )
                continue
            changed = (found.amount_fen, found.explanation) != (spec.amount_fen, spec.explanation)
            if (
                found.state == BreakState.RESOLVED
                and found.resolution_kind == ResolutionKind.ACCEPTED
                and found.amount_fen == spec.amount_fen
            ):
                result.unchanged += 1  # a person accepted this very difference; it stays resolved
            elif found.state == BreakState.RESOLVED:
                _reopen_fields(found)
                _refresh(found, spec)
                found.save()
                log.append(_event(found, "reopened", moment, note="差异再次出现 the difference is back"))
                result.reopened.append(found)
            elif changed:
                _refresh(found, spec)
                found.save(update_fields=["amount_fen", "explanation", "details", "day", "match"])
                log.append(_event(found, "updated", moment, data={"amount_fen": spec.amount_fen}))
            else:
                result.unchanged += 1
        if fresh:
            Break.objects.bulk_create(fresh, batch_size=1000)
            log.extend(_event(b, "raised", moment, data={"amount_fen": b.amount_fen}) for b in fresh)
            result.created.extend(fresh)
        events.record_many(log)
    return result


def _refresh(found: Break, spec: NewBreak) -> None:
    found.amount_fen = spec.amount_fen
    found.explanation = spec.explanation
    found.details = spec.details
    found.day = spec.day
    found.match_id = spec.match_id if spec.match_id is not None else found.match_id


def _reopen_fields(found: Break) -> None:
    found.state = BreakState.ASSIGNED if found.assignee_id is not None else BreakState.OPEN
    found.resolution_kind = ""
    found.resolution = ""
    found.resolved_at = None
    found.resolved_by = None


def _event(
    item: Break,
    action: str,
    at: datetime,
    *,
    actor: User | None = None,
    note: str = "",
    data: dict[str, Any] | None = None,
) -> ReconciliationEvent:
    return ReconciliationEvent(
        at=at,
        actor=actor,
        action=action,
        break_item_id=item.pk,
        institution_id=item.institution_id,
        note=note,
        data=data or {},
    )


def resolve_automatically(items: Iterable[Break], *, kind: str, note: str, at: datetime | None = None) -> int:
    """Resolve open breaks whose cause went away (the missing line arrived, the gap was filled)."""
    moment = at or clock.now()
    done: list[Break] = []
    for item in items:
        if item.state == BreakState.RESOLVED:
            continue
        item.state = BreakState.RESOLVED
        item.resolution_kind = kind
        item.resolution = note
        item.resolved_at = moment
        item.resolved_by = None
        done.append(item)
    if done:
        Break.objects.bulk_update(
            done, ["state", "resolution_kind", "resolution", "resolved_at", "resolved_by"], batch_size=1000
        )
        events.record_many([_event(b, "resolved", moment, note=note, data={"kind": kind}) for b in done])
    return len(done)


def resolve_sequence_gaps(*, institution_id: int, statement_id: str) -> int:
    found = Break.objects.filter(
        key=break_key(BreakKind.SEQUENCE_GAP, institution_id, statement_id), state__in=OPEN_STATES
    )
    return resolve_automatically(
        found,
        kind=ResolutionKind.STATEMENT_RECEIVED,
        note=f"对账单「{statement_id}」已按顺序导入 statement {statement_id!r} was imported in sequence",
    )


def resolve_matched_items(*, institution_id: int) -> int:
    """Resolve open item breaks (unmatched line or entry, fee, duplicate) whose item is now in a match, and
    amount differences whose match now balances or was undone."""
    open_items = list(
        Break.objects.filter(institution_id=institution_id, state__in=OPEN_STATES, kind__in=ITEM_KINDS)
    )
    line_ids = [b.line_id for b in open_items if b.line_id is not None]
    posting_ids = [b.posting_id for b in open_items if b.posting_id is not None]
    matched_lines = dict(MatchLine.objects.filter(line_id__in=line_ids).values_list("line_id", "match__rule"))
    matched_postings = dict(
        MatchEntry.objects.filter(posting_id__in=posting_ids).values_list("posting_id", "match__rule")
    )
    by_rule: dict[str, list[Break]] = {}
    for item in open_items:
        rule = matched_lines.get(item.line_id) if item.line_id is not None else None
        if rule is None and item.posting_id is not None:
            rule = matched_postings.get(item.posting_id)
        if rule is not None:
            by_rule.setdefault(rule, []).append(item)
    resolved = 0
    for rule, items in by_rule.items():
        resolved += resolve_automatically(
            items,
            kind=ResolutionKind.CORRECTED if rule == MatchRule.CORRECTION else ResolutionKind.MATCHED,
            note=f"已匹配（规则 {rule}）matched by rule {rule}",
        )
    differences = list(
        Break.objects.filter(
            institution_id=institution_id, state__in=OPEN_STATES, kind=BreakKind.AMOUNT_DIFFERENCE
        ).select_related("match")
    )
    undone = [b for b in differences if b.match is None]
    balanced = [b for b in differences if b.match is not None and b.match.difference_fen == 0]
    resolved += resolve_automatically(
        undone, kind=ResolutionKind.UNMATCHED, note="匹配已撤销 the match was undone"
    )
    resolved += resolve_automatically(
        balanced, kind=ResolutionKind.CORRECTED, note="差额已调平 the difference was corrected"
    )
    return resolved


# --- regulators' actions --------------------------------------------------------------------------------


def _locked(item: Break) -> Break:
    return Break.objects.select_for_update().get(pk=item.pk)


def _require_open(item: Break, action: str) -> None:
    if item.state == BreakState.RESOLVED:
        raise ReconciliationError(
            "break_resolved",
            f"差错 {item.pk} 已解决，不能{action} break {item.pk} is resolved; reopen it first",
            break_id=item.pk,
        )


def _require_note(note: str, what: str) -> str:
    text = note.strip()
    if not text:
        raise ReconciliationError("note_required", f"须填写{what} a note is required", field="note")
    return text


def assign_break(*, item: Break, assignee: User, by: User) -> Break:
    with transaction.atomic():
        locked = _locked(item)
        _require_open(locked, "分派")
        before = locked.assignee_id
        locked.assignee = assignee
        locked.state = BreakState.ASSIGNED
        locked.save(update_fields=["assignee", "state"])
        events.record(
            action="assigned",
            at=clock.now(),
            actor=by,
            break_id=locked.pk,
            institution_id=locked.institution_id,
            data={"assignee": assignee.pk, "previous_assignee": before},
        )
    return locked


def comment_on_break(*, item: Break, by: User, note: str) -> ReconciliationEvent:
    text = _require_note(note, "备注")
    return events.record(
        action="commented",
        at=clock.now(),
        actor=by,
        break_id=item.pk,
        institution_id=item.institution_id,
        note=text,
    )


def resolve_break(*, item: Break, by: User, resolution: str) -> Break:
    """Close a break that needs no entry (explained, accepted). Its items stay unmatched, so a tie-out still
    shows them among the itemised differences."""
    text = _require_note(resolution, "处理说明")
    with transaction.atomic():
        locked = _locked(item)
        _require_open(locked, "再次处理")
        if locked.correction_legs is not None and locked.correction_entry_id is None:
            raise ReconciliationError(
                "correction_pending",
                f"差错 {locked.pk} 有待复核的调账，请先批准或驳回 break {locked.pk} has a correction "
                "awaiting approval",
                break_id=locked.pk,
            )
        now = clock.now()
        locked.state = BreakState.RESOLVED
        locked.resolution_kind = ResolutionKind.ACCEPTED
        locked.resolution = text
        locked.resolved_at = now
        locked.resolved_by = by
        locked.save(update_fields=["state", "resolution_kind", "resolution", "resolved_at", "resolved_by"])
        events.record(
            action="resolved",
            at=now,
            actor=by,
            break_id=locked.pk,
            institution_id=locked.institution_id,
            note=text,
            data={"kind": ResolutionKind.ACCEPTED},
        )
    return locked


def reopen_break(*, item: Break, by: User, note: str) -> Break:
    text = _require_note(note, "重开原因")
    with transaction.atomic():
        locked = _locked(item)
        if locked.state != BreakState.RESOLVED:
            raise ReconciliationError(
                "break_not_resolved",
                f"差错 {locked.pk} 未解决 break {locked.pk} is not resolved",
                break_id=locked.pk,
            )
        if locked.correction_entry_id is not None:
            raise ReconciliationError(
                "break_corrected",
                f"差错 {locked.pk} 已调账，请新提调账 break {locked.pk} was corrected by an entry; raise a "
                "new one",
                break_id=locked.pk,
            )
        _reopen_fields(locked)
        locked.save(update_fields=["state", "resolution_kind", "resolution", "resolved_at", "resolved_by"])
        events.record(
            action="reopened",
            at=clock.now(),
            actor=by,
            break_id=locked.pk,
            institution_id=locked.institution_id,
            note=text,
        )
    return locked


def propose_correction(*, item: Break, by: User, legs: Sequence[CorrectionLeg], reason: str) -> Break:
    """A regulator proposes the correcting entry (调账) for a break; nothing moves until another approves.

    The entry must balance, use only this institution's accounts (``custody_cash:i``, ``payable:i``, its
    contracts' ``prepaid:c`` / ``refund_payable:c``) and move custody cash by exactly the break's difference
    in the direction that removes it."""
    text = _require_note(reason, "调账理由")
    with transaction.atomic():
        locked = _locked(item)
        _require_open(locked, "调账")
        _require_regulator(by, locked.institution_id)
        if locked.kind == BreakKind.SEQUENCE_GAP:
            raise ReconciliationError(
                "correction_not_applicable",
                "对账单不连续不能以调账解决，须补齐对账单 a sequence gap is resolved by the missing "
                "statement, not an entry",
                break_id=locked.pk,
            )
        if locked.correction_legs is not None and locked.correction_entry_id is None:
            raise ReconciliationError(
                "correction_pending",
                f"差错 {locked.pk} 已有待复核的调账 break {locked.pk} already has a correction awaiting "
                "approval",
                break_id=locked.pk,
            )
        _check_legs(locked, legs)
        now = clock.now()
        locked.correction_legs = [
            {"account": leg.account, "side": leg.side, "amount_fen": leg.amount_fen} for leg in legs
        ]
        locked.correction_reason = text
        locked.correction_proposed_by = by
        locked.correction_proposed_at = now
        locked.save(
            update_fields=[
                "correction_legs",
                "correction_reason",
                "correction_proposed_by",
                "correction_proposed_at",
            ]
        )
        events.record(
            action="correction_proposed",
            at=now,
            actor=by,
            break_id=locked.pk,
            institution_id=locked.institution_id,
            note=text,
            data={"legs": locked.correction_legs},
        )
    return locked


def reject_correction(*, item: Break, by: User, note: str) -> Break:
    text = _require_note(note, "驳回理由")
    with transaction.atomic():
        locked = _locked(item)
        if locked.correction_legs is None or locked.correction_entry_id is not None:
            raise ReconciliationError(
                "no_correction_pending",
                f"差错 {locked.pk} 没有待复核的调账 no correction awaits approval",
                break_id=locked.pk,
            )
        _require_regulator(by, locked.institution_id)
        legs = locked.correction_legs
        locked.correction_legs = None
        locked.correction_reason = ""
        locked.correction_proposed_by = None
        locked.correction_proposed_at = None
        locked.save(
            update_fields=[
                "correction_legs",
                "correction_reason",
                "correction_proposed_by",
                "correction_proposed_at",
            ]
        )
        events.record(
            action="correction_rejected",
            at=clock.now(),
            actor=by,
            break_id=locked.pk,
            institution_id=locked.institution_id,
            note=text,
            data={"legs": legs},
        )
    return locked


def approve_correction(*, item: Break, by: User, note: str = "") -> Break:
    """A second regulator approves: the entry is posted, its custody-cash posting joins the break's items in a
    match, and the break is resolved, all in one transaction. The proposer cannot approve (four eyes; the
    database refuses it too)."""
    with transaction.atomic():
        locked = _locked(item)
        _require_open(locked, "批准调账")
        if locked.correction_legs is None or locked.correction_proposed_by_id is None:
            raise ReconciliationError(
                "no_correction_pending",
                f"差错 {locked.pk} 没有待复核的调账 no correction awaits approval",
                break_id=locked.pk,
            )
        if by.pk == locked.correction_proposed_by_id:
            raise ReconciliationError(
                "four_eyes",
                "调账须由另一名监管人员批准，提出人不能自行批准 "
                "a correction must be approved by a second regulator, not by its proposer",
                break_id=locked.pk,
            )
        _require_regulator(by, locked.institution_id)
        now = clock.now()
        entry = post_entry(
            idempotency_key=f"reconciliation:break:{locked.pk}:correction",
            kind=CORRECTION_KIND,
            legs=[
                Leg(leg["account"], from_minor(leg["amount_fen"], "CNY"), leg["side"])
                for leg in locked.correction_legs
            ],
            metadata={
                "break": locked.pk,
                "break_kind": locked.kind,
                "institution": locked.institution_id,
                "proposed_by": locked.correction_proposed_by_id,
                "approved_by": by.pk,
                "reason": locked.correction_reason,
            },
        )
        cash_account_id = Institution.objects.values_list("cash_account_id", flat=True).get(
            pk=locked.institution_id
        )
        posting = Posting.objects.get(entry_id=entry.pk, account_id=cash_account_id)
        match = _link_correction(locked, posting, at=now, by=by)
        locked.correction_entry = entry
        locked.correction_approved_by = by
        locked.correction_approved_at = now
        locked.state = BreakState.RESOLVED
        locked.resolution_kind = ResolutionKind.CORRECTED
        locked.resolution = note.strip() or locked.correction_reason
        locked.resolved_at = now
        locked.resolved_by = by
        locked.match = match if locked.match_id is None else locked.match
        locked.save()
        events.record(
            action="correction_approved",
            at=now,
            actor=by,
            break_id=locked.pk,
            institution_id=locked.institution_id,
            note=note.strip(),
            data={"entry": entry.pk, "match": match.pk},
        )
    return locked


def _link_correction(item: Break, posting: Posting, *, at: datetime, by: User) -> Match:
    """Put the correcting posting with the items it corrects, so the difference is accounted for once."""
    if item.kind == BreakKind.AMOUNT_DIFFERENCE and item.match_id is not None:
        match = Match.objects.select_for_update().get(pk=item.match_id)
        match.entries_fen += posting.amount
        match.save(update_fields=["entries_fen"])
    else:
        rule = (
            MatchRule.OPENING_CORRECTION
            if item.kind == BreakKind.BALANCE_DIFFERENCE
            else MatchRule.CORRECTION
        )
        line, corrected = item.line, item.posting
        lines_fen = line.amount_fen if line is not None else 0
        entries_fen = posting.amount + (corrected.amount if corrected is not None else 0)
        match = Match.objects.create(
            institution_id=item.institution_id,
            rule=rule,
            key=f"break:{item.pk}",
            matched_at=at,
            matched_by=by,
            lines_fen=lines_fen,
            entries_fen=entries_fen,
        )
        if line is not None:
            MatchLine.objects.create(match=match, line=line, amount_fen=lines_fen)
        if corrected is not None:
            MatchEntry.objects.create(
                match=match, posting=corrected, entry_id=corrected.entry_id, amount_fen=corrected.amount
            )
    MatchEntry.objects.create(
        match=match, posting=posting, entry_id=posting.entry_id, amount_fen=posting.amount
    )
    return match


def _check_legs(item: Break, legs: Sequence[CorrectionLeg]) -> None:
    def refuse(message: str, **details: object) -> ReconciliationError:
        return ReconciliationError("correction_legs", message, field="legs", **details)

    if not 2 <= len(legs) <= MAX_LEGS:
        raise refuse(
            f"调账分录须有2至{MAX_LEGS}条 a correction has 2 to {MAX_LEGS} legs", requested=len(legs)
        )
    institution = Institution.objects.get(pk=item.institution_id)
    cash_code = f"custody_cash:i{institution.pk}"
    debits = credits = cash_effect = 0
    seen: set[str] = set()
    contract_ids: set[int] = set()
    for leg in legs:
        if leg.side not in ("debit", "credit"):
            raise refuse(f"未知的借贷方向 unknown side {leg.side!r}")
        if type(leg.amount_fen) is not int or leg.amount_fen <= 0:
            raise refuse("金额须为正整数（分） amounts must be positive fen")
        if leg.account in seen:
            raise refuse(f"账户 {leg.account} 出现两次 account {leg.account} appears twice")
        seen.add(leg.account)
        own = _INSTITUTION_ACCOUNT.fullmatch(leg.account)
        theirs = _CONTRACT_ACCOUNT.fullmatch(leg.account)
        if own is not None and int(own["pk"]) == institution.pk:
            pass
        elif theirs is not None:
            contract_ids.add(int(theirs["pk"]))
        else:
            raise refuse(f"账户 {leg.account} 不属于该机构 account {leg.account} is not this institution's")
        signed = leg.amount_fen if leg.side == "debit" else -leg.amount_fen
        if leg.side == "debit":
            debits += leg.amount_fen
        else:
            credits += leg.amount_fen
        if leg.account == cash_code:
            cash_effect = signed
    if debits != credits:
        raise refuse(f"借方{debits}分与贷方{credits}分不等 debits ({debits}) and credits ({credits}) differ")
    if contract_ids:
        owned = set(
            Contract.objects.filter(pk__in=contract_ids, institution=institution).values_list("pk", flat=True)
        )
        if contract_ids - owned:
            raise refuse(
                f"合同 {sorted(contract_ids - owned)[0]} 不属于该机构 a contract is not this institution's"
            )
    missing = seen - set(Account.objects.filter(code__in=seen).values_list("code", flat=True))
    if missing:
        raise refuse(f"账户 {sorted(missing)[0]} 不存在 account {sorted(missing)[0]} does not exist")
    if cash_effect != -item.amount_fen:
        raise refuse(
            f"调账须使托管现金变动 {-item.amount_fen} 分以消除差异，实为 {cash_effect} 分 "
            f"the entry must move custody cash by {-item.amount_fen} fen to remove the difference, not "
            f"{cash_effect}",
            required_fen=-item.amount_fen,
            proposed_fen=cash_effect,
        )


def _require_regulator(user: User, institution_id: int) -> None:
    """Only a regulator of the institution's jurisdiction (or one above it) proposes or approves a
    correction."""
    from custody.models import RegulatorProfile
    from custody.selectors.access import jurisdiction_scope

    jurisdiction_id = Institution.objects.values_list("jurisdiction_id", flat=True).get(pk=institution_id)
    profile = RegulatorProfile.objects.filter(user=user).first()
    if profile is None or jurisdiction_id not in jurisdiction_scope(profile.jurisdiction_id):
        raise ReconciliationError(
            "not_regulator_of_jurisdiction",
            "只有该辖区的监管人员可以调账 only a regulator of this jurisdiction may propose or approve "
            "corrections",
            jurisdiction=jurisdiction_id,
        )

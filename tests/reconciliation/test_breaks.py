"""The break queue: each fault the bank simulator injects produces exactly the right break, a clean run
produces none, and regulators work the queue: assign, comment, resolve, reopen, and correct under four eyes,
every action logged."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction

from custody.models import Contract, Institution, PayoutInstruction, RegulatorProfile
from custody.services.access import grant_regulator
from ledger.errors import LimitExceeded
from ledger.models import Entry
from reconciliation.errors import ReconciliationError
from reconciliation.formats import StatementError
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
    TieOut,
    TieOutStatus,
)
from reconciliation.selectors.breaks import open_breaks, timeline
from reconciliation.services import breaks as queue
from reconciliation.services.imports import import_statement
from reconciliation.services.runs import reconcile_statement
from reconciliation.simulator import Fault, FaultKind
from tests.reconciliation.conftest import DAY1, World, import_and_reconcile

pytestmark = pytest.mark.django_db

DAY2 = DAY1 + timedelta(days=1)
DAY3 = DAY1 + timedelta(days=2)


@dataclass
class Scenario:
    world: World
    institution: Institution
    paid_by_bank: Contract  # day 1, bank transfer
    refunded: Contract  # day 1 bank transfer, refunded on day 2
    release: PayoutInstruction  # day 1
    refund: PayoutInstruction  # day 2


def run_days(world_factory: Any, faults: dict[date, list[Fault]] | None = None, **options: Any) -> Scenario:
    """Three days: day 1 two bank transfers, a WeChat payment and a release payout; day 2 a refund and a
    WeChat settlement; day 3 quiet. ``faults`` by day."""
    faults = faults or {}
    world: World = world_factory(1, **options)
    institution = world.institutions[0]
    with world.bank.day(DAY1, faults=faults.get(DAY1, [])):
        paid = world.contract(institution)
        world.pay_bank(paid)
        refunded = world.contract(institution)
        world.pay_bank(refunded)
        world.pay_wechat(world.contract(institution))
        world.consume(paid, 3)
        (release,) = world.release(institution)
    with world.bank.day(DAY2, faults=faults.get(DAY2, [])):
        (refund,) = world.refund(refunded)
    with world.bank.day(DAY3, faults=faults.get(DAY3, [])):
        pass
    return Scenario(world, institution, paid, refunded, release, refund)


def breaks() -> list[Break]:
    return list(Break.objects.order_by("pk"))


def test_a_clean_run_raises_no_break_and_every_day_ties_out(world_factory: Any) -> None:
    scenario = run_days(world_factory)
    runs = import_and_reconcile(scenario.world.bank.deliveries(fmt="csv"))

    assert breaks() == []
    ties = list(TieOut.objects.order_by("day"))
    assert [(t.day, t.status, t.difference_fen) for t in ties] == [
        (DAY1, TieOutStatus.TIED, 0),
        (DAY2, TieOutStatus.TIED, 0),
        (DAY3, TieOutStatus.TIED, 0),
    ]
    # 80.00 × 10 h twice in, 3 h released out; WeChat 800.00 in on day 2, the refund 800.00 out.
    assert [t.bank_fen for t in ties] == [160_000 - 24_000, 136_000, 136_000]
    rules = [rule for run in runs for m in run.matched for rule in m.matches_by_rule.elements()]
    assert sorted(rules) == sorted(
        [MatchRule.REFERENCE] * 4 + [MatchRule.AMOUNT_DATE_COUNTERPARTY]
    )  # two transfers, the release, the refund by reference; the WeChat settlement by amount and payer


def test_a_missing_line_is_an_unmatched_entry_once_its_settlement_window_has_passed(
    world_factory: Any,
) -> None:
    scenario = run_days(world_factory, {DAY1: [Fault(FaultKind.MISSING_LINE, target="")]} | {})
    applied = scenario.world.bank.applied[0]
    deliveries = scenario.world.bank.deliveries(fmt="camt053")

    import_and_reconcile(deliveries[:1])
    assert breaks() == []  # day 1: still within its window; the tie-out shows it in transit
    day1 = TieOut.objects.get(day=DAY1)
    assert day1.status == TieOutStatus.EXPLAINED
    assert day1.details["categories"]["in_transit_entries"]["fen"] == applied.amount_fen

    import_and_reconcile(deliveries[1:])
    (found,) = breaks()
    assert found.kind == BreakKind.UNMATCHED_ENTRY
    assert found.day == DAY1
    assert found.amount_fen == applied.amount_fen
    assert applied.target in found.details["references"]
    assert MatchEntry.objects.filter(posting=found.posting).count() == 0
    assert TieOut.objects.get(day=DAY3).status == TieOutStatus.EXPLAINED
    assert (
        TieOut.objects.get(day=DAY3).details["categories"]["unmatched_entries"]["fen"] == applied.amount_fen
    )


def test_a_duplicated_line_is_flagged_as_booked_twice_and_the_original_matches(world_factory: Any) -> None:
    scenario = run_days(world_factory, {DAY1: [Fault(FaultKind.DUPLICATE_LINE)]})
    applied = scenario.world.bank.applied[0]
    import_and_reconcile(scenario.world.bank.deliveries(fmt="mt940"))

    (found,) = breaks()
    assert found.kind == BreakKind.DUPLICATE_LINE
    assert found.line is not None and found.line.serial == applied.serial
    assert found.amount_fen == -applied.amount_fen
    twin_id = found.details["twin_line"]
    assert MatchLine.objects.filter(line_id=twin_id).exists()
    assert not MatchLine.objects.filter(line=found.line).exists()
    assert {t.status for t in TieOut.objects.all()} == {TieOutStatus.EXPLAINED}


def test_a_settlement_a_day_late_is_in_transit_then_matched_without_a_break(world_factory: Any) -> None:
    scenario = run_days(world_factory, {DAY1: [Fault(FaultKind.LATE_SETTLEMENT, target="")]})
    applied = scenario.world.bank.applied[0]
    import_and_reconcile(scenario.world.bank.deliveries(fmt="xlsx"))

    assert breaks() == []
    day1, day2, day3 = TieOut.objects.order_by("day")
    assert day1.status == TieOutStatus.EXPLAINED
    assert day1.details["categories"]["in_transit_entries"]["fen"] == applied.amount_fen
    assert (day2.status, day3.status) == (TieOutStatus.TIED, TieOutStatus.TIED)
    assert Match.objects.filter(key__endswith=applied.target).count() == 1


def test_with_no_settlement_window_a_late_settlement_is_a_break_that_resolves_when_it_arrives(
    world_factory: Any, settings: Any
) -> None:
    settings.RECONCILIATION = {"settlement_window_days": 0}
    scenario = run_days(world_factory, {DAY1: [Fault(FaultKind.LATE_SETTLEMENT)]})
    applied = scenario.world.bank.applied[0]
    deliveries = scenario.world.bank.deliveries(fmt="csv")

    import_and_reconcile(deliveries[:1])
    (found,) = breaks()
    assert (found.kind, found.state, found.amount_fen) == (
        BreakKind.UNMATCHED_ENTRY,
        BreakState.OPEN,
        applied.amount_fen,
    )

    import_and_reconcile(deliveries[1:])
    found.refresh_from_db()
    assert (found.state, found.resolution_kind) == (BreakState.RESOLVED, ResolutionKind.MATCHED)
    assert [e.action for e in found.events.order_by("pk")] == ["raised", "resolved"]


def test_an_amount_off_by_a_fen_is_matched_by_reference_with_an_amount_difference(world_factory: Any) -> None:
    scenario = run_days(world_factory, {DAY1: [Fault(FaultKind.AMOUNT_OFF, target="")]})
    applied = scenario.world.bank.applied[0]
    import_and_reconcile(scenario.world.bank.deliveries(fmt="csv"))

    (found,) = breaks()
    assert found.kind == BreakKind.AMOUNT_DIFFERENCE
    assert found.amount_fen == -1  # the bank booked one fen more (in): the ledger is one fen lower
    assert found.match is not None and found.match.rule == MatchRule.REFERENCE
    assert applied.target in found.match.key
    assert found.match.difference_fen == -1
    assert TieOut.objects.get(day=DAY3).details["categories"]["amount_differences"]["fen"] == -1


def test_a_fee_taken_by_the_bank_is_a_fee_break(world_factory: Any) -> None:
    scenario = run_days(world_factory, {DAY2: [Fault(FaultKind.BANK_FEE, amount_fen=1_500)]})
    applied = scenario.world.bank.applied[0]
    import_and_reconcile(scenario.world.bank.deliveries(fmt="camt053"))

    (found,) = breaks()
    assert (found.kind, found.day, found.amount_fen) == (BreakKind.FEE, DAY2, 1_500)
    assert found.line is not None and found.line.serial == applied.serial
    assert TieOut.objects.get(day=DAY2).details["categories"]["fees"]["fen"] == 1_500


def test_a_line_with_an_unknown_reference_is_an_unmatched_line_at_once(world_factory: Any) -> None:
    scenario = run_days(world_factory, {DAY3: [Fault(FaultKind.UNKNOWN_REFERENCE, amount_fen=160_000)]})
    applied = scenario.world.bank.applied[0]
    import_and_reconcile(scenario.world.bank.deliveries(fmt="mt940"))

    (found,) = breaks()
    assert (found.kind, found.amount_fen) == (BreakKind.UNMATCHED_LINE, -160_000)
    assert found.details["reason"] == "unknown_reference"
    assert found.line is not None and found.line.reference == applied.target
    # Its amount equals two open contracts' payments, yet no rule pairs a line whose reference says otherwise.
    assert not MatchLine.objects.filter(line=found.line).exists()


def test_a_statement_out_of_sequence_is_refused_with_a_sequence_gap_that_resolves_when_it_comes_in_order(
    world_factory: Any,
) -> None:
    scenario = run_days(world_factory, {DAY2: [Fault(FaultKind.OUT_OF_SEQUENCE)]})
    deliveries = scenario.world.bank.deliveries(fmt="csv")
    assert [d.day for d in deliveries] == [DAY1, DAY3, DAY2]

    import_and_reconcile(deliveries[:1])
    with pytest.raises(StatementError) as refused:
        import_statement(data=deliveries[1].data, filename=deliveries[1].filename)
    assert refused.value.rule == "continuity"
    (gap,) = breaks()
    assert (gap.kind, gap.state, gap.day) == (BreakKind.SEQUENCE_GAP, BreakState.OPEN, DAY3)
    assert gap.details["imported"] is False
    assert gap.details["previous_sequence"] == 1 and gap.details["sequence"] == 3

    import_and_reconcile([deliveries[2], deliveries[1]])
    gap.refresh_from_db()
    assert (gap.state, gap.resolution_kind) == (BreakState.RESOLVED, ResolutionKind.STATEMENT_RECEIVED)
    assert [b.kind for b in breaks()] == [BreakKind.SEQUENCE_GAP]


# --- the queue -----------------------------------------------------------------------------------------


@pytest.fixture
def regulators(db: None, world_factory: Any) -> tuple[User, User]:
    from custody.models import Jurisdiction

    district = Jurisdiction.objects.get(code="310104")
    first = User.objects.create_user("reg-wang")
    second = User.objects.create_user("reg-zhao")
    grant_regulator(user=first, jurisdiction=district)
    grant_regulator(user=second, jurisdiction=district)
    return first, second


def test_a_fee_is_corrected_under_four_eyes_and_the_day_ties_out_again(
    world_factory: Any, regulators: tuple[User, User]
) -> None:
    scenario = run_days(world_factory, {DAY2: [Fault(FaultKind.BANK_FEE, amount_fen=1_500)]})
    import_and_reconcile(scenario.world.bank.deliveries(fmt="csv"))
    (fee,) = breaks()
    wang, zhao = regulators
    cash = f"custody_cash:i{scenario.institution.pk}"
    payable = f"payable:i{scenario.institution.pk}"

    queue.assign_break(item=fee, assignee=zhao, by=wang)
    queue.comment_on_break(item=fee, by=zhao, note="银行确认系账户管理费 the bank confirms an account fee")
    with pytest.raises(ReconciliationError) as wrong:
        queue.propose_correction(
            item=fee,
            by=wang,
            legs=[queue.CorrectionLeg(payable, "debit", 1_000), queue.CorrectionLeg(cash, "credit", 1_000)],
            reason="由机构承担 charged to the institution",
        )
    assert wrong.value.rule == "correction_legs" and wrong.value.details["required_fen"] == -1_500
    proposed = queue.propose_correction(
        item=fee,
        by=wang,
        legs=[queue.CorrectionLeg(payable, "debit", 1_500), queue.CorrectionLeg(cash, "credit", 1_500)],
        reason="由机构承担 charged to the institution",
    )
    assert proposed.correction_proposed_by == wang and proposed.state == BreakState.ASSIGNED
    with pytest.raises(ReconciliationError) as same_person:
        queue.approve_correction(item=fee, by=wang)
    assert same_person.value.rule == "four_eyes"
    # payable:i is empty (everything released was paid out): the ledger refuses, the proposal stays open.
    with pytest.raises(LimitExceeded):
        queue.approve_correction(item=fee, by=zhao)
    fee.refresh_from_db()
    assert (fee.state, fee.correction_entry) == (BreakState.ASSIGNED, None)
    assert not Entry.objects.filter(kind=queue.CORRECTION_KIND).exists()
    later = DAY3 + timedelta(days=1)
    with scenario.world.bank.day(later):
        scenario.world.consume(scenario.paid_by_bank, 2)  # 160.00 released, not paid out yet

    approved = queue.approve_correction(item=fee, by=zhao, note="同意 approved")

    assert (approved.state, approved.resolution_kind) == (BreakState.RESOLVED, ResolutionKind.CORRECTED)
    entry = approved.correction_entry
    assert entry is not None and entry.kind == queue.CORRECTION_KIND
    assert entry.metadata["proposed_by"] == wang.pk and entry.metadata["approved_by"] == zhao.pk
    match = Match.objects.get(rule=MatchRule.CORRECTION)
    assert list(match.line_links.values_list("line_id", flat=True)) == [fee.line_id]
    assert match.difference_fen == 0
    assert [e.action for e in approved.events.order_by("pk")] == [
        "raised",
        "assigned",
        "commented",
        "correction_proposed",
        "correction_approved",
    ]
    # The correction was posted after day 4 closed: day 5 has nothing left to explain.
    with scenario.world.bank.day(later + timedelta(days=1)):
        pass
    import_and_reconcile(scenario.world.bank.deliveries(fmt="csv")[-2:])
    assert TieOut.objects.get(day=later).status == TieOutStatus.EXPLAINED  # the fee, then corrected
    assert TieOut.objects.get(day=later + timedelta(days=1)).status == TieOutStatus.TIED
    from custody.models import AuditEvent

    assert set(
        AuditEvent.objects.filter(action__startswith="reconciliation.").values_list("action", flat=True)
    ) == {
        "reconciliation.assigned",
        "reconciliation.commented",
        "reconciliation.correction_proposed",
        "reconciliation.correction_approved",
    }


def test_only_a_regulator_of_the_jurisdiction_proposes_or_approves(
    world_factory: Any, regulators: tuple[User, User]
) -> None:
    scenario = run_days(world_factory, {DAY2: [Fault(FaultKind.BANK_FEE)]})
    import_and_reconcile(scenario.world.bank.deliveries(fmt="csv"))
    (fee,) = breaks()
    outsider = User.objects.create_user("clerk")
    cash = f"custody_cash:i{scenario.institution.pk}"
    legs = [
        queue.CorrectionLeg(f"payable:i{scenario.institution.pk}", "debit", 1_000),
        queue.CorrectionLeg(cash, "credit", 1_000),
    ]
    with pytest.raises(ReconciliationError) as refused:
        queue.propose_correction(item=fee, by=outsider, legs=legs, reason="试试 try")
    assert refused.value.rule == "not_regulator_of_jurisdiction"
    queue.propose_correction(item=fee, by=regulators[0], legs=legs, reason="机构承担 the institution pays")
    with pytest.raises(ReconciliationError):
        queue.approve_correction(item=fee, by=outsider)
    assert RegulatorProfile.objects.count() == 2


def test_the_database_refuses_an_approval_by_the_proposer_and_any_change_to_the_log(
    world_factory: Any, regulators: tuple[User, User]
) -> None:
    scenario = run_days(world_factory, {DAY2: [Fault(FaultKind.BANK_FEE)]})
    import_and_reconcile(scenario.world.bank.deliveries(fmt="csv"))
    (fee,) = breaks()
    wang = regulators[0]
    with pytest.raises(IntegrityError), transaction.atomic():
        Break.objects.filter(pk=fee.pk).update(correction_proposed_by=wang, correction_approved_by=wang)
    event = fee.events.get()
    with pytest.raises(IntegrityError), transaction.atomic():
        ReconciliationEvent.objects.filter(pk=event.pk).update(note="rewritten")
    with pytest.raises(IntegrityError), transaction.atomic():
        ReconciliationEvent.objects.filter(pk=event.pk).delete()


def test_resolving_without_an_entry_keeps_the_item_in_the_tie_out_and_a_reopen_is_logged(
    world_factory: Any, regulators: tuple[User, User]
) -> None:
    scenario = run_days(world_factory, {DAY1: [Fault(FaultKind.UNKNOWN_REFERENCE, amount_fen=5_000)]})
    import_and_reconcile(scenario.world.bank.deliveries(fmt="csv"))
    (line_break,) = breaks()
    wang, _ = regulators

    with pytest.raises(ReconciliationError):
        queue.resolve_break(item=line_break, by=wang, resolution="  ")
    resolved = queue.resolve_break(
        item=line_break, by=wang, resolution="家长误汇，已联系退回 paid by mistake"
    )
    assert (resolved.state, resolved.resolution_kind) == (BreakState.RESOLVED, ResolutionKind.ACCEPTED)
    with pytest.raises(ReconciliationError):
        queue.assign_break(item=resolved, assignee=wang, by=wang)
    # The money is still on the bank's side only: the tie-out keeps itemising it, no new break is raised.
    reconcile_statement(statement=line_break.statement)  # type: ignore[arg-type]
    resolved.refresh_from_db()
    assert resolved.state == BreakState.RESOLVED
    assert TieOut.objects.get(day=DAY3).details["categories"]["unmatched_lines"]["fen"] == -5_000

    reopened = queue.reopen_break(item=resolved, by=wang, note="家长否认 the parent disputes it")
    assert reopened.state == BreakState.OPEN
    assert [(e.action, e.actor) for e in timeline(reopened)] == [
        ("raised", None),
        ("resolved", wang),
        ("reopened", wang),
    ]
    assert list(open_breaks(institution_ids=[scenario.institution.pk])) == [reopened]
    assert list(open_breaks(institution_ids=[scenario.institution.pk], kind=BreakKind.FEE)) == []
    assert list(open_breaks(institution_ids=[])) == []

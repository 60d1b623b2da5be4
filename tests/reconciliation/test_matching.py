"""Matching: by reference first (one line to one entry, one to many, many to one), then by rules (amount
with a drift, a value-date window, the counterparty; a batch's sum; a reversal), recorded with the rule that
matched; a dry run shows what would match and writes nothing; running again changes nothing."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction

from ledger.models import Posting
from reconciliation.errors import ReconciliationError
from reconciliation.formats import Statement, StatementLine, write_csv
from reconciliation.models import (
    BankStatement,
    BankStatementLine,
    Break,
    BreakKind,
    BreakState,
    Match,
    MatchEntry,
    MatchLine,
    MatchRule,
    ResolutionKind,
)
from reconciliation.selectors.ledger_items import LedgerItem
from reconciliation.services.imports import import_statement
from reconciliation.services.manual import match_manually, unmatch
from reconciliation.services.matching import match_statement
from reconciliation.services.rules import OpenLine, match_by_rules
from reconciliation.simulator import Delivery
from tests.reconciliation.conftest import DAY1, import_and_reconcile

DAY2 = DAY1 + timedelta(days=1)


# --- rules, in memory ----------------------------------------------------------------------------------


def line(
    n: int,
    amount: int,
    *,
    day: date = DAY1,
    reference: str = "",
    account: str = "",
    name: str = "",
    summary: str = "",
) -> OpenLine:
    return OpenLine(n, 1, n, f"S{n}", day, day, amount, name, account, reference, summary)


def item(n: int, amount: int, *, day: date = DAY1, payout_kind: str = "", channel: str = "") -> LedgerItem:
    return LedgerItem(
        posting_id=n,
        entry_id=100 + n,
        amount_fen=amount,
        posted_at=datetime(2024, 3, 4, tzinfo=UTC),
        kind="settlement" if channel else "payout_release",
        payout_ref="",
        payout_kind=payout_kind,
        txn_id="",
        channel=channel,
        contract_no="",
        day_ordinal=day.toordinal(),
    )


def rules(
    lines: list[OpenLine], items: list[LedgerItem], *, drift: int = 100
) -> list[tuple[str, list[int], list[int]]]:
    groups = match_by_rules(lines, items, window_days=3, drift_fen=drift, settlement_account="2002")
    return [(g.rule, [lid for lid, _ in g.lines], [pid for pid, _, _ in g.items]) for g in groups]


def test_the_exact_amount_prefers_the_fitting_counterparty_then_the_nearest_day() -> None:
    found = rules(
        [line(1, -5_000, account="2002"), line(2, 7_000, name="财付通支付科技有限公司"), line(3, 9_000)],
        [
            item(10, -5_000, day=DAY1 - timedelta(days=1)),  # nearer, but a refund
            item(11, -5_000, day=DAY1 - timedelta(days=2), payout_kind="release"),  # the institution's payout
            item(12, 7_000, day=DAY2),
            item(13, 7_000, day=DAY2, channel="wechat"),
            item(14, 9_000, day=DAY1 + timedelta(days=2)),
            item(15, 9_000, day=DAY1 - timedelta(days=1)),
        ],
    )
    assert found == [
        (MatchRule.AMOUNT_DATE_COUNTERPARTY, [1], [11]),
        (MatchRule.AMOUNT_DATE_COUNTERPARTY, [2], [13]),
        (MatchRule.AMOUNT_DATE, [3], [15]),
    ]


def test_outside_the_date_window_or_the_drift_nothing_matches() -> None:
    assert rules([line(1, 9_000)], [item(10, 9_000, day=DAY1 + timedelta(days=4))]) == []
    assert rules([line(1, 9_000)], [item(10, 9_101)]) == []
    assert rules([line(1, 9_000)], [item(10, 9_001)], drift=0) == []
    assert rules([line(1, 9_000)], [item(10, -9_000)]) == []  # money in is not money out


def test_a_drift_within_the_allowance_matches_with_its_difference() -> None:
    groups = match_by_rules(
        [line(1, 9_000)],
        [item(10, 9_040), item(11, 9_090)],
        window_days=3,
        drift_fen=100,
        settlement_account="",
    )
    (group,) = groups
    assert (group.rule, group.difference_fen) == (MatchRule.AMOUNT_DRIFT, 40)


def test_a_batch_line_matches_the_days_postings_of_one_kind_that_add_up_to_it() -> None:
    found = rules(
        [line(1, -30_000, summary="批量代付"), line(2, 12_000, name="财付通")],
        [
            item(10, -10_000, payout_kind="refund"),
            item(11, -20_000, payout_kind="refund"),
            item(12, -5_000, payout_kind="release"),  # same day, another kind: not in the batch
            item(13, 5_000, day=DAY1 - timedelta(days=1), channel="wechat"),
            item(14, 7_000, day=DAY1 - timedelta(days=1), channel="wechat"),
        ],
    )
    assert found == [
        (MatchRule.BATCH_SUM, [1], [10, 11]),
        (MatchRule.BATCH_SUM, [2], [13, 14]),
    ]


def test_a_reversal_pairs_two_lines_and_references_and_fees_never_match_by_rules() -> None:
    found = rules(
        [
            line(1, 8_000, reference="PB20240304000001"),
            line(2, -8_000, reference="PB20240304000001", day=DAY2),
            line(3, 8_000, reference="HT2024030400000099"),  # one of our references: only by reference
            line(4, -1_500, summary="账户管理费"),  # a bank charge
        ],
        [item(10, 8_000), item(11, -1_500)],
    )
    assert found == [(MatchRule.REVERSAL, [1, 2], [])]


def test_a_reversal_by_counterparty_needs_a_line_without_a_reference() -> None:
    payer = "6222020200112233445"
    found = rules(
        [
            # A payment and the refund of it to the payer (原路返回): two movements, however alike.
            line(1, 8_000, reference="HT2024030400000001", account=payer),
            line(2, -8_000, reference="RF20240306000007", account=payer, day=DAY2),
            # The bank's own reversal quotes no reference: it pairs with the line it undoes by the account.
            line(3, 5_000, reference="", account="6222000011112222"),
            line(4, -5_000, reference="", account="6222000011112222", day=DAY2),
        ],
        [],
    )
    assert found == [(MatchRule.REVERSAL, [3, 4], [])]


# --- statements against the ledger ---------------------------------------------------------------------


@pytest.mark.django_db
def test_one_line_for_one_entry_many_lines_for_one_and_one_line_for_many(world_factory: Any) -> None:
    world = world_factory(1, batch_refunds=True, split_over_fen=10_000)
    school = world.institutions[0]
    with world.bank.day(DAY1):
        paid = world.contract(school)
        world.pay_bank(paid)
        first, second = world.contract(school), world.contract(school)
        world.pay_bank(first)
        world.pay_bank(second)
        world.consume(paid, 3)
        (release,) = world.release(school)  # 240.00: booked as 100.00 + 100.00 + 40.00
    with world.bank.day(DAY2):
        refunds = world.refund(first) + world.refund(second)  # one batch line of 1,600.00
    import_and_reconcile(world.bank.deliveries(fmt="csv"))

    assert not Break.objects.exists()
    split = Match.objects.get(key=f"payout:{release.reference}")
    assert split.rule == MatchRule.REFERENCE
    assert sorted(split.line_links.values_list("amount_fen", flat=True)) == [-10_000, -10_000, -4_000]
    assert list(split.entry_links.values_list("amount_fen", flat=True)) == [-24_000]
    batch = Match.objects.get(rule=MatchRule.BATCH_SUM)
    assert batch.line_links.count() == 1 and batch.entry_links.count() == 2
    assert batch.lines_fen == batch.entries_fen == -sum(p.amount_fen for p in refunds)
    transfers = Match.objects.filter(rule=MatchRule.REFERENCE, key__startswith="serial:")
    assert transfers.count() == 3  # a bank transfer's serial is the transaction id the platform recorded


@pytest.mark.django_db
def test_a_dry_run_shows_what_would_match_and_writes_nothing(world_factory: Any) -> None:
    world = world_factory(1)
    school = world.institutions[0]
    with world.bank.day(DAY1):
        world.pay_bank(world.contract(school))
        world.pay_wechat(world.contract(school))
        world.pay_wechat(world.contract(school))
    with world.bank.day(DAY2):
        pass
    statements = [
        import_statement(data=d.data, filename=d.filename).statement
        for d in world.bank.deliveries(fmt="camt053")
    ]

    preview = match_statement(statement=statements[1], dry_run=True)

    assert preview.dry_run
    assert dict(preview.matches_by_rule) == {MatchRule.REFERENCE: 1, MatchRule.BATCH_SUM: 1}
    assert {g.rule for g in preview.proposals} == {MatchRule.REFERENCE, MatchRule.BATCH_SUM}
    assert Match.objects.count() == 0 and MatchLine.objects.count() == 0 and Break.objects.count() == 0
    assert BankStatement.objects.get(pk=statements[1].pk).matched_at is None

    done = match_statement(statement=statements[1])
    assert dict(done.matches_by_rule) == dict(preview.matches_by_rule)
    assert Match.objects.count() == 2
    again = match_statement(statement=statements[1])
    assert again.matches == 0 and Match.objects.count() == 2


@pytest.mark.django_db
def test_a_line_and_a_posting_belong_to_one_match_at_most(world_factory: Any) -> None:
    world = world_factory(1)
    with world.bank.day(DAY1):
        world.pay_bank(world.contract(world.institutions[0]))
    import_and_reconcile(world.bank.deliveries(fmt="csv"))
    match = Match.objects.get()
    link = match.line_links.get()
    other = Match.objects.create(
        institution=match.institution,
        rule=MatchRule.MANUAL,
        matched_at=match.matched_at,
        lines_fen=0,
        entries_fen=0,
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        MatchLine.objects.create(match=other, line_id=link.line_id, amount_fen=link.amount_fen)
    entry_link = match.entry_links.get()
    with pytest.raises(IntegrityError), transaction.atomic():
        MatchEntry.objects.create(
            match=other, posting_id=entry_link.posting_id, entry_id=entry_link.entry_id, amount_fen=1
        )


@pytest.mark.django_db
def test_a_person_matches_what_no_rule_could_and_undoes_a_wrong_match(world_factory: Any) -> None:
    world = world_factory(1)
    school = world.institutions[0]
    with world.bank.day(DAY1):
        payment = world.pay_bank(world.contract(school))
    # The bank printed neither the serial nor the contract number, and 5.00 yuan less (beyond the drift).
    statement = world.bank.statement(school, DAY1)
    (original,) = statement.lines
    changed = StatementLine(
        **{
            **original.__dict__,
            "serial": "X1",
            "reference": "",
            "summary": "转账",
            "amount_fen": original.amount_fen - 500,
            "balance_after_fen": original.amount_fen - 500,
        }
    )
    data = write_csv(
        Statement(
            **{**statement.__dict__, "closing_balance_fen": changed.balance_after_fen, "lines": (changed,)}
        )
    )
    import_and_reconcile([Delivery(school.pk, DAY1, "x.csv", data)])
    assert Match.objects.count() == 0  # no reference, and further off than any rule allows
    user = User.objects.create_user("reg")
    bank_line = BankStatementLine.objects.get()
    posting = Posting.objects.get(entry=payment.settlement_entry, account_id=school.cash_account_id)

    with pytest.raises(ReconciliationError):
        match_manually(lines=[bank_line], postings=[posting], by=user, note=" ")
    match = match_manually(
        lines=[bank_line], postings=[posting], by=user, note="家长转账未注明合同号 no reference"
    )

    assert (match.rule, match.difference_fen, match.matched_by) == (MatchRule.MANUAL, 500, user)
    difference = Break.objects.get(kind=BreakKind.AMOUNT_DIFFERENCE)
    assert (difference.amount_fen, difference.match) == (500, match)
    with pytest.raises(ReconciliationError):
        match_manually(lines=[bank_line], postings=[], by=user, note="again")

    unmatch(match=match, by=user, note="配错了 wrong pair")
    assert not Match.objects.exists() and not MatchLine.objects.exists()
    difference.refresh_from_db()
    assert (difference.state, difference.resolution_kind) == (BreakState.RESOLVED, ResolutionKind.UNMATCHED)

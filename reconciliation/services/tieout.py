"""Daily tie-out (日终余额核对): for an institution and a day, the ledger's custody cash at the day's close
against the bank's balance that day, and the difference explained item by item.

**The closing moment.** The ledger is read with ``ledger.selectors.balance_at(custody_cash:i, end of day D)``,
the end of day D being 24:00 Asia/Shanghai (the start of D+1), or the day's cut where a ``DayCut`` records
one. The bank's balance that day is the opening balance of the statement covering D plus its lines booked on
or before D (the closing balance, for a daily statement).

**The explanation.** Reconciliation of an institution starts at the start of the first day of its first
statement (the horizon). Everything since then is an item: a posting on custody cash (posted after the
horizon, up to the close) or a bank line (booked up to D). So, exactly,

    ledger − bank = (ledger at the horizon − first opening balance)          opening difference
                  − Σ (opening − previous closing) over the statements        gaps between statements
                  + Σ postings − Σ lines                                      the items

and the items are grouped: postings not matched yet (in transit, or a break once their settlement window
passed), lines not matched (in transit, a fee, a repeated booking, an unknown line), matches whose two sides
differ (amount differences), and matches with a side after the close (timing). Whatever the items do not
explain (an opening difference, a gap; approved opening corrections count against them) is a
``balance_difference`` break; when a later run finds it explained, that break resolves itself.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from django.db import connection, transaction

from custody.models import Institution
from ledger import clock
from ledger.models import Account, Posting
from ledger.money import to_minor
from ledger.selectors import balance_at
from reconciliation.formats.base import format_yuan
from reconciliation.models import (
    BankStatement,
    BankStatementLine,
    Break,
    BreakKind,
    Match,
    MatchEntry,
    MatchLine,
    MatchRule,
    ResolutionKind,
    TieOut,
    TieOutStatus,
)
from reconciliation.selectors.days import BusinessCalendar
from reconciliation.services import breaks as break_service
from reconciliation.services._values import as_datetime
from reconciliation.services.config import reconciliation_settings

ITEMS_SHOWN = 20
# Category -> (Chinese, English), in the order a person reads them.
CATEGORIES: dict[str, tuple[str, str]] = {
    "in_transit_entries": ("在途：账簿已记、银行未达", "in transit: entries the bank has not booked yet"),
    "unmatched_entries": ("账簿有记录、银行无对应", "entries the bank never booked (breaks)"),
    "pending_lines": ("在途：银行已记、账簿未达", "in transit: lines the ledger has not posted yet"),
    "unmatched_lines": ("银行流水无对应分录", "bank lines with no entry (breaks)"),
    "fees": ("银行扣费", "bank charges"),
    "duplicates": ("银行重复入账", "bookings the bank repeated"),
    "amount_differences": ("匹配金额差异", "amount differences within matches"),
    "timing": ("跨日匹配（时间差）", "matched across the day's close (timing)"),
}
LINE_BREAK_CATEGORY: dict[str, str] = {
    BreakKind.FEE: "fees",
    BreakKind.DUPLICATE_LINE: "duplicates",
    BreakKind.UNMATCHED_LINE: "unmatched_lines",
}


@dataclass
class _Category:
    fen: int = 0
    count: int = 0
    items: list[Any] | None = None

    def add(self, fen: int, item: Any) -> None:
        self.fen += fen
        self.count += 1
        if self.items is None:
            self.items = []
        if len(self.items) < ITEMS_SHOWN:
            self.items.append(item)


def statement_for_day(institution_id: int, day: date) -> BankStatement | None:
    """The statement giving the bank's balance on ``day``: the latest-starting one whose period holds it."""
    return (
        BankStatement.objects.filter(
            institution_id=institution_id, period_start__lte=day, period_end__gte=day
        )
        .order_by("-period_start", "-pk")
        .first()
    )


def tie_out(
    *, institution: Institution, day: date, calendar: BusinessCalendar | None = None
) -> TieOut | None:
    """Compute (or recompute) the tie-out of one institution and day; ``None`` when no statement covers it."""
    calendar = calendar or BusinessCalendar.load()
    statement = statement_for_day(institution.pk, day)
    if statement is None:
        return None
    first = BankStatement.objects.filter(institution_id=institution.pk).order_by("period_start", "pk").first()
    if first is None or institution.cash_account_id is None:
        return None
    cash = Account.objects.get(pk=institution.cash_account_id)
    horizon = calendar.start(first.period_start)
    closes_at = calendar.end(day)
    ledger_fen = to_minor(balance_at(cash, closes_at))
    booked = BankStatementLine.objects.filter(statement=statement, booked_on__lte=day)
    bank_fen = statement.opening_balance_fen + sum(booked.values_list("amount_fen", flat=True))
    difference = ledger_fen - bank_fen

    opening_difference = to_minor(balance_at(cash, horizon)) - first.opening_balance_fen
    gaps = _statement_gaps(institution.pk, day)
    categories: dict[str, _Category] = defaultdict(_Category)
    opening_adjustments = 0
    settled_by = day.toordinal() - reconciliation_settings().settlement_window_days

    for posting_id, amount, posted_at, break_kind in _unmatched_postings(cash.pk, horizon, closes_at):
        in_window = calendar.day_of(posted_at).toordinal() > settled_by
        name = (
            "unmatched_entries"
            if break_kind
            else ("in_transit_entries" if in_window else "unmatched_entries")
        )
        categories[name].add(amount, posting_id)
    for _, serial, amount, break_kind in _unmatched_lines(institution.pk, day):
        categories[LINE_BREAK_CATEGORY.get(break_kind or "", "pending_lines")].add(-amount, serial)
    for match_id, rule, inside_entries, inside_lines, entries_total, lines_total in _partial_matches(
        institution.pk, cash.pk, horizon, closes_at, day
    ):
        contribution = inside_entries - inside_lines
        if rule == MatchRule.OPENING_CORRECTION:
            opening_adjustments += contribution
        elif inside_entries == entries_total and inside_lines == lines_total:
            categories["amount_differences"].add(contribution, match_id)
        else:
            categories["timing"].add(contribution, match_id)

    explained = sum(c.fen for c in categories.values())
    unexplained = difference - explained
    status = (
        TieOutStatus.TIED
        if difference == 0 and unexplained == 0
        else TieOutStatus.EXPLAINED
        if unexplained == 0
        else TieOutStatus.UNEXPLAINED
    )
    details = {
        "categories": {
            name: {"fen": c.fen, "count": c.count, "items": c.items or []}
            for name in CATEGORIES
            if (c := categories.get(name)) is not None and (c.count or c.fen)
        },
        "horizon_start": horizon.isoformat(),
        "opening_difference_fen": opening_difference,
        "opening_adjustments_fen": opening_adjustments,
        "statement_gaps_fen": gaps,
        "other_fen": unexplained - (opening_difference + opening_adjustments - gaps),
    }
    now = clock.now()
    with transaction.atomic():
        result, _ = TieOut.objects.update_or_create(
            institution=institution,
            day=day,
            defaults={
                "statement": statement,
                "closes_at": closes_at,
                "ledger_fen": ledger_fen,
                "bank_fen": bank_fen,
                "difference_fen": difference,
                "explained_fen": explained,
                "unexplained_fen": unexplained,
                "status": status,
                "details": details,
                "computed_at": now,
            },
        )
        _raise_or_resolve(result, now)
    return result


def explain(tie: TieOut) -> str:
    """The tie-out in words: Chinese first, English beside, one category per line."""
    lines = [
        f"{tie.day} 账簿 ledger {format_yuan(tie.ledger_fen, grouping=True)}，银行 bank "
        f"{format_yuan(tie.bank_fen, grouping=True)}，差额 difference "
        f"{format_yuan(tie.difference_fen, grouping=True)}"
    ]
    for name, entry in tie.details.get("categories", {}).items():
        zh, en = CATEGORIES[name]
        lines.append(f"  {zh} {en}: {format_yuan(entry['fen'], grouping=True)} ({entry['count']})")
    if tie.unexplained_fen:
        d = tie.details
        lines.append(
            f"  未能逐项说明 not itemised: {format_yuan(tie.unexplained_fen, grouping=True)} = 期初差异 "
            "opening "
            f"{format_yuan(d['opening_difference_fen'] + d['opening_adjustments_fen'], grouping=True)} − "
            "对账单缺口 gaps "
            f"{format_yuan(d['statement_gaps_fen'], grouping=True)} + 其他 other "
            f"{format_yuan(d['other_fen'], grouping=True)}"
        )
    return "\n".join(lines)


def _raise_or_resolve(tie: TieOut, now: datetime) -> None:
    key = break_service.break_key(BreakKind.BALANCE_DIFFERENCE, tie.institution_id, tie.day.isoformat())
    if tie.unexplained_fen == 0:
        break_service.resolve_automatically(
            Break.objects.filter(key=key, state__in=break_service.OPEN_STATES),
            kind=ResolutionKind.RETIED,
            note=f"{tie.day} 余额差异已能逐项说明 the difference is now fully itemised",
            at=now,
        )
        return
    d = tie.details
    opening = d["opening_difference_fen"] + d["opening_adjustments_fen"]
    break_service.raise_breaks(
        [
            break_service.NewBreak(
                key=key,
                institution_id=tie.institution_id,
                kind=BreakKind.BALANCE_DIFFERENCE,
                day=tie.day,
                amount_fen=tie.unexplained_fen,
                explanation=(
                    f"{tie.day} 账簿托管现金 {format_yuan(tie.ledger_fen, grouping=True)} 元，银行余额 "
                    f"{format_yuan(tie.bank_fen, grouping=True)} 元，逐项说明后仍差 "
                    f"{format_yuan(tie.unexplained_fen, grouping=True)} 元（期初差异 "
                    f"{format_yuan(opening, grouping=True)}，"
                    f"对账单缺口 {format_yuan(d['statement_gaps_fen'], grouping=True)}，其他 "
                    f"{format_yuan(d['other_fen'], grouping=True)}） on {tie.day} the ledger has "
                    f"{format_yuan(tie.ledger_fen)}, the bank {format_yuan(tie.bank_fen)}; "
                    f"{format_yuan(tie.unexplained_fen)} is not explained by any item"
                ),
                details={
                    "ledger_fen": tie.ledger_fen,
                    "bank_fen": tie.bank_fen,
                    "difference_fen": tie.difference_fen,
                    "explained_fen": tie.explained_fen,
                    "opening_difference_fen": d["opening_difference_fen"],
                    "opening_adjustments_fen": d["opening_adjustments_fen"],
                    "statement_gaps_fen": d["statement_gaps_fen"],
                    "other_fen": d["other_fen"],
                },
                statement_id=tie.statement_id,
            )
        ],
        at=now,
    )


def _statement_gaps(institution_id: int, day: date) -> int:
    """Σ (opening − previous closing) over the statements up to ``day``: money the bank moved in no statement
    we have."""
    rows = (
        BankStatement.objects.filter(institution_id=institution_id, period_start__lte=day)
        .order_by("period_start", "pk")
        .values_list("opening_balance_fen", "closing_balance_fen")
    )
    total = 0
    previous_closing: int | None = None
    for opening, closing in rows:
        if previous_closing is not None:
            total += opening - previous_closing
        previous_closing = closing
    return total


def _unmatched_postings(
    account_id: int, after: datetime, until: datetime
) -> list[tuple[int, int, datetime, str]]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT p.id, p.amount, p.posted_at, b.kind FROM {Posting._meta.db_table} p "
            f"LEFT JOIN {Break._meta.db_table} b ON b.posting_id = p.id AND b.kind = %s "
            f"WHERE p.account_id = %s AND p.posted_at > %s AND p.posted_at <= %s "
            f"AND NOT EXISTS (SELECT 1 FROM {MatchEntry._meta.db_table} m WHERE m.posting_id = p.id) "
            f"ORDER BY p.id",
            [BreakKind.UNMATCHED_ENTRY, account_id, after, until],
        )
        rows = cursor.fetchall()
    return [(pid, amount, as_datetime(posted_at), kind or "") for pid, amount, posted_at, kind in rows]


def _unmatched_lines(institution_id: int, day: date) -> list[tuple[int, str, int, str]]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT l.id, l.serial, l.amount_fen, b.kind FROM {BankStatementLine._meta.db_table} l "
            f"LEFT JOIN {Break._meta.db_table} b ON b.line_id = l.id AND b.kind IN (%s, %s, %s) "
            f"WHERE l.institution_id = %s AND l.booked_on <= %s "
            f"AND NOT EXISTS (SELECT 1 FROM {MatchLine._meta.db_table} m WHERE m.line_id = l.id) "
            f"ORDER BY l.id",
            [BreakKind.FEE, BreakKind.DUPLICATE_LINE, BreakKind.UNMATCHED_LINE, institution_id, day],
        )
        return [(lid, serial, amount, kind or "") for lid, serial, amount, kind in cursor.fetchall()]


def _partial_matches(
    institution_id: int, account_id: int, after: datetime, until: datetime, day: date
) -> list[tuple[int, str, int, int, int, int]]:
    """Matches whose postings up to the close and lines up to the day do not cancel: their id, rule, the two
    sums and the two totals. Matches that balance within the day contribute nothing and are not read."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT s.match_id, m.rule, s.entries, s.lines, m.entries_fen, m.lines_fen FROM ("
            f"  SELECT match_id, sum(e) AS entries, sum(l) AS lines FROM ("
            f"    SELECT me.match_id AS match_id, p.amount AS e, 0 AS l FROM {Posting._meta.db_table} p "
            f"    JOIN {MatchEntry._meta.db_table} me ON me.posting_id = p.id "
            f"    WHERE p.account_id = %s AND p.posted_at > %s AND p.posted_at <= %s "
            f"    UNION ALL "
            f"    SELECT ml.match_id, 0, l.amount_fen FROM {BankStatementLine._meta.db_table} l "
            f"    JOIN {MatchLine._meta.db_table} ml ON ml.line_id = l.id "
            f"    WHERE l.institution_id = %s AND l.booked_on <= %s"
            f"  ) u GROUP BY match_id HAVING sum(e) <> sum(l)"
            f") s JOIN {Match._meta.db_table} m ON m.id = s.match_id ORDER BY s.match_id",
            [account_id, after, until, institution_id, day],
        )
        return [(int(a), str(b), int(c), int(d), int(e), int(f)) for a, b, c, d, e, f in cursor.fetchall()]

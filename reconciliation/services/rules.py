"""Rule-based matching (规则匹配) of what references could not match: pure Python over compact records.

The rules, tried in this order, each on what the previous ones left:

1. ``reversal``: a line and a later line of the opposite amount with the same reference or counterparty
   account (冲正: the bank undid a booking); they match each other, no ledger entry.
2. ``amount_date_counterparty`` / ``amount_date``: the exact amount, a posting whose business day is within
   the date window of the line's value date; a posting whose counterparty fits (the institution's settlement
   account for a release payout, the channel's name for a channel settlement) wins, then the nearest day,
   then the oldest posting.
3. ``batch_sum``: one line for several postings of one day and direction (a channel's daily settlement, a
   batch payout 批量代付): the line's amount equals the sum of that day's unmatched postings of one kind
   (or of the whole day), nearest day first.
4. ``amount_drift``: an amount within the allowed drift (the match records the difference, which raises an
   ``amount_difference`` break).

Lines that carry one of our references (``HT…``, ``PO…``, ``RF…``) and lines that look like bank charges
never match by rules: a reference says what a line is, and a fee has no entry to match.
"""

from __future__ import annotations

import bisect
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

from reconciliation.models import MatchRule
from reconciliation.selectors.ledger_items import LedgerItem

OUR_REFERENCE = re.compile(r"(?:HT|PO|RF)\d{16}")
FEE_WORDS = re.compile(
    r"手续费|服务费|工本费|年费|账户管理费|管理费|短信费|汇划费|邮电费|扣费|结算费|"
    r"\bfees?\b|\bcharges?\b|commission|NCHG|NCOM|NFEE",
    re.IGNORECASE,
)
# Names a channel's settlement line carries as its counterparty.
CHANNEL_NAMES: dict[str, tuple[str, ...]] = {
    "wechat": ("财付通", "微信", "tenpay", "wechat"),
    "alipay": ("支付宝", "alipay"),
    "unionpay": ("银联", "unionpay", "chinapay"),
}


@dataclass
class OpenLine:
    """One unmatched bank line, as the rules see it."""

    id: int
    statement_id: int
    line_number: int
    serial: str
    booked_on: date
    value_on: date
    amount_fen: int
    counterparty_name: str
    counterparty_account: str
    reference: str
    summary: str

    @property
    def has_our_reference(self) -> bool:
        return OUR_REFERENCE.fullmatch(self.reference) is not None

    @property
    def looks_like_fee(self) -> bool:
        if self.amount_fen >= 0 or self.has_our_reference:
            return False
        return FEE_WORDS.search(f"{self.summary} {self.reference} {self.counterparty_name}") is not None

    @property
    def signature(self) -> tuple[object, ...]:
        """What two bookings of the same money share (the serial is the bank's and differs)."""
        return (
            self.amount_fen,
            self.value_on,
            self.counterparty_account,
            self.counterparty_name,
            self.reference,
            self.summary,
        )


@dataclass
class Group:
    """Lines and postings that are the same money, and the rule that said so."""

    rule: str
    key: str
    lines: list[tuple[int, int]] = field(default_factory=list)  # (line id, amount)
    items: list[tuple[int, int, int]] = field(default_factory=list)  # (posting id, entry id, amount)
    # Lines of the group that repeat another of its lines (booked twice): left out, with that twin.
    duplicates: list[tuple[int, int]] = field(default_factory=list)
    match_id: int | None = None  # once written

    @property
    def lines_fen(self) -> int:
        return sum(amount for _, amount in self.lines)

    @property
    def entries_fen(self) -> int:
        return sum(amount for _, _, amount in self.items)

    @property
    def difference_fen(self) -> int:
        return self.entries_fen - self.lines_fen


def fit_class(item: LedgerItem) -> str:
    """The kind of counterparty a posting's bank line shows: the institution (a release payout) or a
    channel (a settlement); "" when nothing is known (a refund goes to a parent's encrypted account)."""
    if item.payout_kind == "release":
        return "release"
    return item.channel if item.channel in CHANNEL_NAMES else ""


def line_classes(line: OpenLine, settlement_account: str) -> list[str]:
    """The counterparty kinds a line's counterparty fits."""
    found = []
    if settlement_account and line.counterparty_account == settlement_account:
        found.append("release")
    text = line.counterparty_name.lower()
    found.extend(channel for channel, names in CHANNEL_NAMES.items() if any(n.lower() in text for n in names))
    return found


def counterparty_fits(line: OpenLine, item: LedgerItem, settlement_account: str) -> bool:
    kind = fit_class(item)
    return bool(kind) and kind in line_classes(line, settlement_account)


def item_class(item: LedgerItem) -> str:
    return item.payout_kind or item.channel or item.kind


def match_by_rules(
    lines: Sequence[OpenLine],
    items: Sequence[LedgerItem],
    *,
    window_days: int,
    drift_fen: int,
    settlement_account: str,
) -> list[Group]:
    """Groups for the lines and postings the rules can pair; each line and posting in at most one."""
    ordered = sorted(lines, key=lambda line: (line.value_on, line.statement_id, line.line_number))
    used_lines: set[int] = set()
    used_items: set[int] = set()
    groups = _reversals(ordered, used_lines, window_days)
    eligible = [line for line in ordered if not line.has_our_reference and not line.looks_like_fee]
    groups += _exact(eligible, items, used_lines, used_items, window_days, settlement_account)
    groups += _batches(eligible, items, used_lines, used_items, window_days)
    if drift_fen > 0:
        groups += _drift(eligible, items, used_lines, used_items, window_days, drift_fen, settlement_account)
    return groups


def _reversals(lines: Sequence[OpenLine], used: set[int], window_days: int) -> list[Group]:
    by_amount: dict[int, list[OpenLine]] = defaultdict(list)
    for line in lines:
        by_amount[line.amount_fen].append(line)
    groups = []
    for line in lines:
        if line.id in used:
            continue
        for other in by_amount.get(-line.amount_fen, ()):
            if other.id in used or other.id == line.id:
                continue
            if abs((other.value_on - line.value_on).days) > window_days:
                continue
            same_reference = bool(line.reference) and line.reference == other.reference
            # Two lines quoting different references are two movements, not one and its reversal: a parent's
            # payment (HT…) and the refund of it (RF…) go to and from the same account for the same amount.
            same_account = (
                not (line.reference and other.reference)
                and bool(line.counterparty_account)
                and line.counterparty_account == other.counterparty_account
            )
            if same_reference or same_account:
                used.update((line.id, other.id))
                groups.append(
                    Group(
                        MatchRule.REVERSAL,
                        f"reversal:{line.reference or line.counterparty_account}",
                        lines=[(line.id, line.amount_fen), (other.id, other.amount_fen)],
                    )
                )
                break
    return groups


class _Buckets:
    """Unmatched postings by (amount, business day, counterparty kind), oldest first, with lazy removal: a
    line finds its candidates in a few dictionary lookups however many postings share its amount."""

    ANY = "*"

    def __init__(self, items: Sequence[LedgerItem], used: set[int]) -> None:
        self.used = used
        self.buckets: dict[tuple[int, int, str], list[LedgerItem]] = defaultdict(list)
        self.heads: dict[tuple[int, int, str], int] = defaultdict(int)
        for item in sorted(items, key=lambda it: it.posting_id):
            if item.posting_id in used:
                continue
            self.buckets[(item.amount_fen, item.day_ordinal, self.ANY)].append(item)
            kind = fit_class(item)
            if kind:
                self.buckets[(item.amount_fen, item.day_ordinal, kind)].append(item)

    def first(self, amount: int, day: int, kind: str) -> LedgerItem | None:
        key = (amount, day, kind)
        bucket = self.buckets.get(key)
        if not bucket:
            return None
        head = self.heads[key]
        while head < len(bucket) and bucket[head].posting_id in self.used:
            head += 1
        self.heads[key] = head
        return bucket[head] if head < len(bucket) else None

    def nearest(self, amount: int, day: int, kind: str, window_days: int) -> LedgerItem | None:
        for offset in range(window_days + 1):
            found = [
                item
                for candidate_day in {day - offset, day + offset}
                if (item := self.first(amount, candidate_day, kind)) is not None
            ]
            if found:
                return min(found, key=lambda it: it.posting_id)
        return None


def _exact(
    lines: Sequence[OpenLine],
    items: Sequence[LedgerItem],
    used_lines: set[int],
    used_items: set[int],
    window_days: int,
    settlement_account: str,
) -> list[Group]:
    buckets = _Buckets(items, used_items)
    groups = []
    for line in lines:
        if line.id in used_lines:
            continue
        day = line.value_on.toordinal()
        rule = MatchRule.AMOUNT_DATE_COUNTERPARTY
        chosen: LedgerItem | None = None
        fitting = [
            found
            for kind in line_classes(line, settlement_account)
            if (found := buckets.nearest(line.amount_fen, day, kind, window_days)) is not None
        ]
        if fitting:
            chosen = min(fitting, key=lambda it: (abs(it.day_ordinal - day), it.posting_id))
        else:
            rule = MatchRule.AMOUNT_DATE
            chosen = buckets.nearest(line.amount_fen, day, _Buckets.ANY, window_days)
        if chosen is None:
            continue
        used_lines.add(line.id)
        used_items.add(chosen.posting_id)
        groups.append(
            Group(
                rule,
                f"{line.amount_fen}@{line.value_on.isoformat()}",
                lines=[(line.id, line.amount_fen)],
                items=[(chosen.posting_id, chosen.entry_id, chosen.amount_fen)],
            )
        )
    return groups


def _batches(
    lines: Sequence[OpenLine],
    items: Sequence[LedgerItem],
    used_lines: set[int],
    used_items: set[int],
    window_days: int,
) -> list[Group]:
    by_day: dict[tuple[int, bool], dict[str, list[LedgerItem]]] = defaultdict(lambda: defaultdict(list))
    for item in items:
        if item.posting_id in used_items:
            continue
        bucket = by_day[(item.day_ordinal, item.amount_fen > 0)]
        bucket[item_class(item)].append(item)
        bucket["*"].append(item)
    groups = []
    for line in lines:
        if line.id in used_lines:
            continue
        day = line.value_on.toordinal()
        found: tuple[str, list[LedgerItem]] | None = None
        for offset in range(window_days + 1):
            for candidate_day in {day - offset, day + offset}:
                found_bucket = by_day.get((candidate_day, line.amount_fen > 0))
                if not found_bucket:
                    continue
                bucket = found_bucket
                for kind in sorted(bucket, key=lambda k: (k == "*", k)):
                    members = [it for it in bucket[kind] if it.posting_id not in used_items]
                    if len(members) >= 2 and sum(it.amount_fen for it in members) == line.amount_fen:
                        found = (f"{kind}@{date.fromordinal(candidate_day).isoformat()}", members)
                        break
                if found:
                    break
            if found:
                break
        if found is None:
            continue
        key, members = found
        used_lines.add(line.id)
        used_items.update(it.posting_id for it in members)
        groups.append(
            Group(
                MatchRule.BATCH_SUM,
                key,
                lines=[(line.id, line.amount_fen)],
                items=[(it.posting_id, it.entry_id, it.amount_fen) for it in members],
            )
        )
    return groups


def _drift(
    lines: Sequence[OpenLine],
    items: Sequence[LedgerItem],
    used_lines: set[int],
    used_items: set[int],
    window_days: int,
    drift_fen: int,
    settlement_account: str,
) -> list[Group]:
    ordered = sorted((it for it in items if it.posting_id not in used_items), key=lambda it: it.amount_fen)
    amounts = [it.amount_fen for it in ordered]
    groups = []
    for line in lines:
        if line.id in used_lines:
            continue
        day = line.value_on.toordinal()
        low = bisect.bisect_left(amounts, line.amount_fen - drift_fen)
        high = bisect.bisect_right(amounts, line.amount_fen + drift_fen)
        best: tuple[int, bool, int, int] | None = None
        chosen: LedgerItem | None = None
        for item in ordered[low:high]:
            if item.posting_id in used_items or abs(item.day_ordinal - day) > window_days:
                continue
            if (item.amount_fen > 0) != (line.amount_fen > 0):
                continue
            rank = (
                abs(item.amount_fen - line.amount_fen),
                not counterparty_fits(line, item, settlement_account),
                abs(item.day_ordinal - day),
                item.posting_id,
            )
            if best is None or rank < best:
                best, chosen = rank, item
        if chosen is None:
            continue
        used_lines.add(line.id)
        used_items.add(chosen.posting_id)
        groups.append(
            Group(
                MatchRule.AMOUNT_DRIFT,
                f"{line.amount_fen}~{chosen.amount_fen}@{line.value_on.isoformat()}",
                lines=[(line.id, line.amount_fen)],
                items=[(chosen.posting_id, chosen.entry_id, chosen.amount_fen)],
            )
        )
    return groups

"""Matching (勾对): bank lines against the ledger's custody-cash postings, by reference first, then by rules.

``match_statement(statement=…)`` takes the statement's unmatched lines (and the institution's earlier lines
still unmatched within the look-back) and the institution's unmatched postings on ``custody_cash:i`` since
the look-back, and:

1. references, set-based, in four passes: the payout reference (``PO…``/``RF…``) on the line's reference;
   the payment's transaction id on the line's serial, then on its reference; the contract number (``HT…``)
   on the reference. Lines and postings sharing a key form one group: one line for one entry, one line for
   several, several lines for one (a payout booked in parts). On PostgreSQL the one-line-one-posting groups
   of equal amounts (nearly all) are matched inside the database by one statement per pass; the other
   groups are streamed in key order. A group whose lines exceed its entries by lines that repeat another
   line of the group has those lines flagged as booked twice; any other difference stays in the match as
   an ``amount_difference``.
2. rules, in memory over the small remainder (``services.rules``).
3. classification of what is left: a bank charge (``fee``), a booking repeated (``duplicate_line``), one of
   our references that names nothing (``unmatched_line`` at once); any other line, and any posting, becomes a
   break once its settlement window has passed, and is "in transit" until then.

Matches are written in bulk (COPY on PostgreSQL) with ids taken from the sequence first; breaks are raised
through ``services.breaks`` (deduplicated by key) and those whose item is now matched are resolved. A dry run
does all of it inside a transaction it then rolls back, and returns what it would have matched.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import connection, transaction

from custody.models import Contract, Institution, Payment, PayoutInstruction
from ledger import clock
from ledger.models import Entry
from reconciliation.formats.base import format_yuan
from reconciliation.models import (
    BankStatement,
    BankStatementLine,
    BreakKind,
    Match,
    MatchEntry,
    MatchLine,
    MatchRule,
)
from reconciliation.selectors.days import BusinessCalendar
from reconciliation.selectors.ledger_items import LedgerItem, items_sql
from reconciliation.services import breaks as break_service
from reconciliation.services._bulk import insert_rows, is_postgres, reserve_ids
from reconciliation.services._values import as_date, as_datetime
from reconciliation.services.config import ReconciliationSettings, reconciliation_settings
from reconciliation.services.rules import Group, OpenLine, match_by_rules

Progress = Callable[[str, int, int], None]
ITEM_TABLE = "recon_tmp_item"
LINE_TABLE = "recon_tmp_line"
WRITE_CHUNK = 20_000
PROPOSALS_KEPT = 200


@dataclass
class MatchSummary:
    statement_id: int
    dry_run: bool
    lines_considered: int = 0
    postings_considered: int = 0
    matched_lines: int = 0
    matched_postings: int = 0
    matches_by_rule: Counter[str] = field(default_factory=Counter)
    lines_by_rule: Counter[str] = field(default_factory=Counter)
    breaks_by_kind: Counter[str] = field(default_factory=Counter)
    pending_lines: int = 0
    pending_postings: int = 0
    resolved_breaks: int = 0
    proposals: list[Group] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def matches(self) -> int:
        return sum(self.matches_by_rule.values())


def horizon_start(institution_id: int, calendar: BusinessCalendar) -> datetime | None:
    """Reconciliation of an institution starts with the first day of its first statement: the ledger before
    that is its opening balance."""
    first = (
        BankStatement.objects.filter(institution_id=institution_id)
        .order_by("period_start")
        .values_list("period_start", flat=True)
        .first()
    )
    return calendar.start(first) if first is not None else None


def match_statement(
    *,
    statement: BankStatement,
    dry_run: bool = False,
    progress: Progress | None = None,
    matched_by: User | None = None,
    settings: ReconciliationSettings | None = None,
) -> MatchSummary:
    config = settings or reconciliation_settings()
    run = _Run(statement, config, dry_run=dry_run, progress=progress, matched_by=matched_by)
    with transaction.atomic():
        # One matcher per institution at a time; imports of its statements wait too.
        Institution.objects.select_for_update().filter(pk=statement.institution_id).first()
        try:
            run.execute()
            run.summary.proposals = _proposals(run.institution.pk, run.now)
        finally:
            run.drop_tables()
        if dry_run:
            # A dry run does everything a run does, then takes it all back: what it reports is exact.
            transaction.set_rollback(True)
    return run.summary


class _Run:
    def __init__(
        self,
        statement: BankStatement,
        config: ReconciliationSettings,
        *,
        dry_run: bool,
        progress: Progress | None,
        matched_by: User | None,
    ) -> None:
        self.statement = statement
        self.config = config
        self.dry_run = dry_run
        self.progress = progress or (lambda phase, done, total: None)
        self.matched_by = matched_by
        self.institution = Institution.objects.get(pk=statement.institution_id)
        self.calendar = BusinessCalendar.load()
        self.summary = MatchSummary(statement_id=statement.pk, dry_run=dry_run)
        self.now = clock.now()
        # Settlement windows are judged against the latest day the bank has reported on.
        self.as_of = max(
            statement.period_end,
            BankStatement.objects.filter(institution_id=statement.institution_id)
            .order_by("-period_end")
            .values_list("period_end", flat=True)
            .first()
            or statement.period_end,
        )
        lookback = statement.period_start - timedelta(days=config.reference_lookback_days)
        horizon = horizon_start(statement.institution_id, self.calendar)
        self.lines_from = lookback
        self.postings_after = max(d for d in (self.calendar.start(lookback), horizon) if d is not None)
        self.writer = _Writer(self)
        self.breaks: list[break_service.NewBreak] = []

    # --- phases ---------------------------------------------------------------------------------------

    def execute(self) -> None:
        self._timed("load", self._load)
        self._timed("references", self._by_references)
        remaining_lines, remaining_items = self._timed("remainder", self._remainder)
        groups = self._timed(
            "rules",
            lambda: match_by_rules(
                remaining_lines,
                remaining_items,
                window_days=self.config.date_window_days,
                drift_fen=self.config.amount_drift_fen,
                settlement_account=self.institution.settlement_account_number,
            ),
        )
        for group in groups:
            self.writer.add(group)
        matched = {line_id for group in groups for line_id, _ in group.lines}
        taken = {posting_id for group in groups for posting_id, _, _ in group.items}
        left_lines = [line for line in remaining_lines if line.id not in matched]
        left_items = [item for item in remaining_items if item.posting_id not in taken]
        self._timed("classify", lambda: self._classify(left_lines, left_items))
        self._timed("write", self._finish)

    def _timed(self, phase: str, work: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = work()
        self.summary.seconds[phase] = round(time.perf_counter() - started, 3)
        return result

    def _load(self) -> None:
        self.drop_tables()
        with connection.cursor() as cursor:
            if is_postgres():
                # Hash joins, aggregates and the working tables of a big statement stay in memory (this
                # transaction only; temp_buffers takes effect in a session that has not used temporary tables
                # yet, as a worker's or a command's has not, and is allocated only as the tables grow).
                cursor.execute("SET LOCAL work_mem = '64MB'")
                cursor.execute("SET LOCAL temp_buffers = '256MB'")
            cursor.execute(
                f"CREATE TEMP TABLE {ITEM_TABLE} AS {items_sql()}",
                [self.institution.cash_account_id, self.postings_after],
            )
            cursor.execute(
                f"CREATE TEMP TABLE {LINE_TABLE} AS "
                "SELECT l.id AS line_id, l.amount_fen AS amount, l.reference AS reference, l.serial AS "
                "serial "
                f"FROM {BankStatementLine._meta.db_table} l "
                f"WHERE l.institution_id = %s AND (l.statement_id = %s OR l.booked_on >= %s) "
                f"AND NOT EXISTS (SELECT 1 FROM {MatchLine._meta.db_table} m WHERE m.line_id = l.id)",
                [self.institution.pk, self.statement.pk, self.lines_from],
            )
            if is_postgres():
                cursor.execute(f"ANALYZE {ITEM_TABLE}")
                cursor.execute(f"ANALYZE {LINE_TABLE}")
            cursor.execute(f"SELECT count(*) FROM {LINE_TABLE}")
            self.summary.lines_considered = cursor.fetchone()[0]
            cursor.execute(f"SELECT count(*) FROM {ITEM_TABLE}")
            self.summary.postings_considered = cursor.fetchone()[0]

    def drop_tables(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {ITEM_TABLE}")
            cursor.execute(f"DROP TABLE IF EXISTS {LINE_TABLE}")

    def _by_references(self) -> None:
        """Four passes, most specific first. On PostgreSQL each pass first matches, in one statement, every
        key held by exactly one line and one posting of the same amount (almost all of them); then the keys
        left (several lines or postings, or amounts that differ) are read as two streams sorted by key, the
        lines having it and the postings having it, zipped group by group in Python: no join multiplies
        lines by postings, however many share a key. What a pass matched leaves the working tables."""
        passes = (
            ("payout", "reference", "payout_ref"),
            ("serial", "serial", "txn_id"),
            ("transaction", "reference", "txn_id"),
            ("contract", "reference", "contract_no"),
        )
        total = self.summary.lines_considered
        order = ' COLLATE "C"' if is_postgres() else ""
        for name, line_key, item_key in passes:
            if is_postgres():
                self._pairs_in_sql(name, line_key, item_key)
                self.progress("references", self.summary.matched_lines, total)
            lines = _stream(
                f"SELECT l.{line_key}, l.line_id, l.amount FROM {LINE_TABLE} l "
                f"WHERE l.{line_key} IN (SELECT i.{item_key} FROM {ITEM_TABLE} i) "
                f"ORDER BY l.{line_key}{order}, l.line_id"
            )
            items = _stream(
                f"SELECT i.{item_key}, i.posting_id, i.entry_id, i.amount FROM {ITEM_TABLE} i "
                f"WHERE i.{item_key} IN (SELECT l.{line_key} FROM {LINE_TABLE} l) "
                f"ORDER BY i.{item_key}{order}, i.posting_id"
            )
            matched_lines: list[int] = []
            matched_items: list[int] = []
            for count, group in enumerate(_zip_groups(lines, items)):
                settled = _settle(group, name)
                self.writer.add(settled)
                matched_lines.extend(line_id for line_id, _ in settled.lines)
                matched_lines.extend(line_id for line_id, _ in settled.duplicates)
                matched_items.extend(posting_id for posting_id, _, _ in settled.items)
                if count % 10_000 == 0:
                    self.progress("references", self.summary.matched_lines, total)
            _discard(LINE_TABLE, "line_id", matched_lines)
            _discard(ITEM_TABLE, "posting_id", matched_items)
        self.progress("references", self.summary.matched_lines, total)

    def _pairs_in_sql(self, name: str, line_key: str, item_key: str) -> None:
        """One line and one posting alone with their key, for the same amount: matched set-wise."""
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [Match._meta.db_table])
            sequence = cursor.fetchone()[0]
            cursor.execute(
                _PAIRS_SQL.format(
                    lines=LINE_TABLE,
                    items=ITEM_TABLE,
                    line_key=line_key,
                    item_key=item_key,
                    match=Match._meta.db_table,
                    match_line=MatchLine._meta.db_table,
                    match_entry=MatchEntry._meta.db_table,
                ),
                {
                    "sequence": sequence,
                    "institution": self.institution.pk,
                    "rule": MatchRule.REFERENCE.value,
                    "prefix": f"{name}:",
                    "now": self.now,
                    "by": self.matched_by.pk if self.matched_by is not None else None,
                },
            )
            matched = cursor.fetchone()[0]
        self.summary.matches_by_rule[MatchRule.REFERENCE] += matched
        self.summary.lines_by_rule[MatchRule.REFERENCE] += matched
        self.summary.matched_lines += matched
        self.summary.matched_postings += matched

    def _remainder(self) -> tuple[list[OpenLine], list[LedgerItem]]:
        rows = _stream(
            f"SELECT l.id, l.statement_id, l.line_number, l.serial, l.booked_on, l.value_on, l.amount_fen, "
            f"l.counterparty_name, l.counterparty_account, l.reference, l.summary "
            f"FROM {BankStatementLine._meta.db_table} l JOIN {LINE_TABLE} t ON t.line_id = l.id ORDER BY l.id"
        )
        lines = [_open_line(row) for row in rows]
        items: list[LedgerItem] = []
        for row in _stream(
            "SELECT posting_id, entry_id, amount, posted_at, kind, payout_ref, payout_kind, txn_id, "
            "channel, "
            f"contract_no FROM {ITEM_TABLE} ORDER BY posting_id"
        ):
            (
                posting_id,
                entry_id,
                amount,
                posted_at,
                kind,
                payout_ref,
                payout_kind,
                txn_id,
                channel,
                contract,
            ) = row
            item = LedgerItem(
                posting_id=posting_id,
                entry_id=entry_id,
                amount_fen=amount,
                posted_at=as_datetime(posted_at),
                kind=kind,
                payout_ref=payout_ref or "",
                payout_kind=payout_kind or "",
                txn_id=txn_id or "",
                channel=channel or "",
                contract_no=contract or "",
            )
            item.day_ordinal = self.calendar.day_of(item.posted_at).toordinal()
            items.append(item)
        return lines, items

    def _classify(self, lines: Sequence[OpenLine], items: Sequence[LedgerItem]) -> None:
        settled_by = (self.as_of - timedelta(days=self.config.settlement_window_days)).toordinal()
        institution_id = self.institution.pk
        verdicts = _reference_verdicts(institution_id, [line for line in lines if line.has_our_reference])
        duplicates = _duplicates_of_matched(
            institution_id, [line for line in lines if line.id not in verdicts]
        )
        for repeat, original in _load_pairs(self.writer.duplicates):
            self._line_break(
                repeat,
                BreakKind.DUPLICATE_LINE,
                f"与同一参考号的流水「{original.serial}」重复入账 "
                f"the same booking as line {original.serial!r} of the same reference",
                twin=original.id,
            )
        seen: dict[tuple[object, ...], OpenLine] = {}
        for line in lines:
            twin = duplicates.get(line.id) or seen.get(line.signature)
            seen.setdefault(line.signature, line)
            verdict = verdicts.get(line.id)
            if line.looks_like_fee:
                self._line_break(
                    line, BreakKind.FEE, "银行扣费，账簿无对应分录 a bank charge with no ledger entry"
                )
            elif verdict is not None and verdict[0] == "duplicate":
                self._line_break(line, BreakKind.DUPLICATE_LINE, verdict[1], twin=verdict[2])
            elif twin is not None:
                self._line_break(
                    line,
                    BreakKind.DUPLICATE_LINE,
                    f"与流水「{twin.serial}」重复入账 the same booking as line {twin.serial!r}",
                    twin=twin.id,
                )
            elif verdict is not None and verdict[0] == "unknown":
                self._line_break(line, BreakKind.UNMATCHED_LINE, verdict[1], reason="unknown_reference")
            elif line.value_on.toordinal() <= settled_by:
                self._line_break(
                    line,
                    BreakKind.UNMATCHED_LINE,
                    "银行流水在结算期内未找到对应分录 no ledger entry within the settlement window",
                    reason="no_entry",
                )
            else:
                self.summary.pending_lines += 1
        for item in items:
            if item.day_ordinal <= settled_by:
                self._entry_break(item)
            else:
                self.summary.pending_postings += 1

    def _line_break(
        self, line: OpenLine, kind: str, why: str, *, twin: int | None = None, reason: str = ""
    ) -> None:
        details: dict[str, Any] = {
            "serial": line.serial,
            "reference": line.reference,
            "value_on": line.value_on.isoformat(),
            "amount_fen": line.amount_fen,
            "counterparty": line.counterparty_name,
            "summary": line.summary[:200],
        }
        if twin is not None:
            details["twin_line"] = twin
        if reason:
            details["reason"] = reason
        self.breaks.append(
            break_service.NewBreak(
                key=break_service.break_key(kind, line.id),
                institution_id=self.institution.pk,
                kind=kind,
                day=line.value_on,
                amount_fen=-line.amount_fen,
                explanation=(
                    f"{why}：流水「{line.serial}」{format_yuan(line.amount_fen, grouping=True)} 元 "
                    f"({line.value_on}) line {line.serial!r} of {format_yuan(line.amount_fen)} yuan"
                ),
                details=details,
                statement_id=line.statement_id,
                line_id=line.id,
            )
        )

    def _entry_break(self, item: LedgerItem) -> None:
        day = date.fromordinal(item.day_ordinal)
        references = "/".join(item.references) or item.kind
        self.breaks.append(
            break_service.NewBreak(
                key=break_service.break_key(BreakKind.UNMATCHED_ENTRY, item.posting_id),
                institution_id=self.institution.pk,
                kind=BreakKind.UNMATCHED_ENTRY,
                day=day,
                amount_fen=item.amount_fen,
                explanation=(
                    f"账簿分录 {item.entry_id}（{references}）{format_yuan(item.amount_fen, grouping=True)} "
                    "元 "
                    f"于 {day} 记账，结算期后银行仍未入账 ledger entry {item.entry_id} ({references}) of "
                    f"{format_yuan(item.amount_fen)} yuan from {day} is not on the bank statement after its "
                    f"settlement window"
                ),
                details={
                    "entry": item.entry_id,
                    "kind": item.kind,
                    "references": item.references,
                    "business_day": day.isoformat(),
                    "amount_fen": item.amount_fen,
                },
                posting_id=item.posting_id,
            )
        )

    def _finish(self) -> None:
        self.writer.flush()
        for group in self.writer.difference_groups:
            self.breaks.append(_difference_break(self.institution.pk, group, self.statement.period_end))
        self.summary.breaks_by_kind.update(spec.kind for spec in self.breaks)
        break_service.raise_breaks(self.breaks, at=self.now)
        self.summary.resolved_breaks = break_service.resolve_matched_items(institution_id=self.institution.pk)
        BankStatement.objects.filter(pk=self.statement.pk).update(matched_at=self.now)


def _difference_break(institution_id: int, group: Group, day: date) -> break_service.NewBreak:
    assert group.match_id is not None
    match_id = group.match_id
    return break_service.NewBreak(
        key=break_service.break_key(BreakKind.AMOUNT_DIFFERENCE, match_id),
        institution_id=institution_id,
        kind=BreakKind.AMOUNT_DIFFERENCE,
        day=day,
        amount_fen=group.difference_fen,
        explanation=(
            f"按规则 {group.rule} 匹配（{group.key}），账簿 "
            f"{format_yuan(group.entries_fen, grouping=True)} 元、银行 "
            f"{format_yuan(group.lines_fen, grouping=True)} 元，"
            f"相差 {format_yuan(group.difference_fen, grouping=True)} 元 matched by {group.rule}: the ledger "
            "has "
            f"{format_yuan(group.entries_fen)}, the bank {format_yuan(group.lines_fen)}, a difference of "
            f"{format_yuan(group.difference_fen)} yuan"
        ),
        details={
            "rule": group.rule,
            "lines": [line_id for line_id, _ in group.lines],
            "postings": [posting_id for posting_id, _, _ in group.items],
            "lines_fen": group.lines_fen,
            "entries_fen": group.entries_fen,
        },
        match_id=match_id,
    )


class _Writer:
    """Buffers matches and writes them in chunks of ``WRITE_CHUNK``, their ids reserved first."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.ids: list[int] = []
        self.matches: list[tuple[Any, ...]] = []
        self.lines: list[tuple[int, int, int]] = []
        self.entries: list[tuple[int, int, int, int]] = []
        self.difference_groups: list[Group] = []
        self.duplicates: list[tuple[int, int]] = []  # (line, twin line in the same group)

    def add(self, group: Group) -> None:
        if not group.lines and not group.items:
            return
        run = self.run
        summary = run.summary
        lines_fen, entries_fen = group.lines_fen, group.entries_fen
        summary.matches_by_rule[group.rule] += 1
        summary.lines_by_rule[group.rule] += len(group.lines)
        summary.matched_lines += len(group.lines)
        summary.matched_postings += len(group.items)
        if not self.ids:
            self.flush()
            self.ids = reserve_ids(Match, WRITE_CHUNK)
            self.ids.reverse()
        match_id = self.ids.pop()
        by = run.matched_by.pk if run.matched_by is not None else None
        self.matches.append(
            (match_id, run.institution.pk, group.rule, group.key, run.now, by, lines_fen, entries_fen)
        )
        self.lines.extend((match_id, line_id, amount) for line_id, amount in group.lines)
        self.entries.extend((match_id, p, e, amount) for p, e, amount in group.items)
        if entries_fen != lines_fen:
            group.match_id = match_id
            self.difference_groups.append(group)
        self.duplicates.extend(group.duplicates)

    def flush(self) -> None:
        if not self.matches:
            return
        insert_rows(
            Match,
            (
                "id",
                "institution_id",
                "rule",
                "key",
                "matched_at",
                "matched_by_id",
                "lines_fen",
                "entries_fen",
            ),
            self.matches,
        )
        insert_rows(MatchLine, ("match_id", "line_id", "amount_fen"), self.lines)
        insert_rows(MatchEntry, ("match_id", "posting_id", "entry_id", "amount_fen"), self.entries)
        self.matches, self.lines, self.entries = [], [], []


# The common case of a reference pass, set-wise (PostgreSQL): keys held by exactly one remaining line and one
# remaining posting of the same amount become matches; their rows leave the working tables.
_PAIRS_SQL = """
WITH l AS (
    SELECT {line_key} AS k, min(line_id) AS line_id, min(amount) AS amount
    FROM {lines} WHERE {line_key} <> '' GROUP BY {line_key} HAVING count(*) = 1
), i AS (
    SELECT {item_key} AS k, min(posting_id) AS posting_id, min(entry_id) AS entry_id, min(amount) AS amount
    FROM {items} WHERE {item_key} IS NOT NULL GROUP BY {item_key} HAVING count(*) = 1
), pairs AS MATERIALIZED (
    SELECT nextval(%(sequence)s::regclass) AS match_id, l.k, l.line_id, i.posting_id, i.entry_id, l.amount
    FROM l JOIN i ON i.k = l.k AND i.amount = l.amount
), m AS (
    INSERT INTO {match} (id, institution_id, rule, key, matched_at, matched_by_id, lines_fen, entries_fen)
    SELECT match_id, %(institution)s, %(rule)s, %(prefix)s || k, %(now)s, %(by)s, amount, amount FROM pairs
), ml AS (
    INSERT INTO {match_line} (match_id, line_id, amount_fen) SELECT match_id, line_id, amount FROM pairs
), me AS (
    INSERT INTO {match_entry} (match_id, posting_id, entry_id, amount_fen)
    SELECT match_id, posting_id, entry_id, amount FROM pairs
), dl AS (
    DELETE FROM {lines} t USING pairs p WHERE t.line_id = p.line_id
), di AS (
    DELETE FROM {items} t USING pairs p WHERE t.posting_id = p.posting_id
)
SELECT count(*) FROM pairs
"""


def _proposals(institution_id: int, at: datetime) -> list[Group]:
    """The first matches this run made, as groups (what a dry run shows before it is taken back)."""
    found = list(
        Match.objects.filter(institution_id=institution_id, matched_at=at)
        .order_by("pk")
        .values_list("pk", "rule", "key")[:PROPOSALS_KEPT]
    )
    groups = {pk: Group(rule, key) for pk, rule, key in found}
    for match_id, line_id, amount in MatchLine.objects.filter(match_id__in=groups).values_list(
        "match_id", "line_id", "amount_fen"
    ):
        groups[match_id].lines.append((line_id, amount))
    for match_id, posting_id, entry_id, amount in MatchEntry.objects.filter(match_id__in=groups).values_list(
        "match_id", "posting_id", "entry_id", "amount_fen"
    ):
        groups[match_id].items.append((posting_id, entry_id, amount))
    return [groups[pk] for pk, _, _ in found]


# --- reference groups -----------------------------------------------------------------------------------


@dataclass
class _KeyGroup:
    key: str
    lines: dict[int, int] = field(default_factory=dict)  # line id -> amount, in line order
    items: dict[int, tuple[int, int]] = field(default_factory=dict)  # posting id -> (entry id, amount)


def _stream(sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
    with connection.chunked_cursor() as cursor:
        cursor.execute(sql, params)
        while True:
            rows = cursor.fetchmany(10_000)
            if not rows:
                return
            yield from rows


def _by_key(rows: Iterator[tuple[Any, ...]]) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    """Consecutive rows with the same first column, as (key, the rest of each row)."""
    key: str | None = None
    rest: list[tuple[Any, ...]] = []
    for row in rows:
        if row[0] != key:
            if key is not None:
                yield key, rest
            key, rest = row[0], []
        rest.append(row[1:])
    if key is not None:
        yield key, rest


def _zip_groups(lines: Iterator[tuple[Any, ...]], items: Iterator[tuple[Any, ...]]) -> Iterator[_KeyGroup]:
    """Both streams hold the same keys in the same (bytewise) order: pair their groups."""
    for (line_key, line_rows), (item_key, item_rows) in zip(_by_key(lines), _by_key(items), strict=True):
        if line_key != item_key:
            raise RuntimeError(f"reference streams out of step: {line_key!r} against {item_key!r}")
        group = _KeyGroup(line_key)
        for line_id, amount in line_rows:
            group.lines.setdefault(line_id, amount)
        for posting_id, entry_id, amount in item_rows:
            group.items.setdefault(posting_id, (entry_id, amount))
        yield group


def _discard(table: str, column: str, ids: Sequence[int]) -> None:
    """Remove matched rows from a working table, so later passes do not see them."""
    if not ids:
        return
    with connection.cursor() as cursor:
        if is_postgres():
            cursor.execute(
                f"DELETE FROM {table} t USING unnest(%s::bigint[]) AS d(id) WHERE t.{column} = d.id",
                [list(ids)],
            )
            return
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            cursor.execute(f"DELETE FROM {table} WHERE {column} IN ({', '.join(['%s'] * len(chunk))})", chunk)


def _settle(group: _KeyGroup, how: str) -> Group:
    """One reference's lines and postings as a match, lines booked twice set aside with their twin."""
    entries = sum(amount for _, amount in group.items.values())
    lines = list(group.lines.items())
    remaining = sum(amount for _, amount in lines) - entries
    duplicates: list[tuple[int, int]] = []
    if remaining != 0 and len(lines) > 1:
        # The latest of identical lines is the repeat; take repeats while they reduce the excess exactly.
        for index in range(len(lines) - 1, 0, -1):
            line_id, amount = lines[index]
            twin = next((other for other, a in lines[:index] if a == amount), None)
            if twin is None or (amount > 0) != (remaining > 0) or abs(amount) > abs(remaining):
                continue
            duplicates.append((line_id, twin))
            remaining -= amount
            if remaining == 0:
                break
        if remaining != 0:
            duplicates = []
    repeated = {line_id for line_id, _ in duplicates}
    return Group(
        MatchRule.REFERENCE,
        f"{how}:{group.key}",
        lines=[(line_id, amount) for line_id, amount in lines if line_id not in repeated],
        items=[(posting_id, entry_id, amount) for posting_id, (entry_id, amount) in group.items.items()],
        duplicates=duplicates,
    )


# --- what is left ---------------------------------------------------------------------------------------


def _reference_verdicts(
    institution_id: int, lines: Sequence[OpenLine]
) -> dict[int, tuple[str, str, int | None]]:
    """For lines quoting one of our references that matched nothing: "unknown" (it names nothing we know),
    "duplicate" (what it names is matched already, to a line of the same amount), or nothing (what it names
    is not posted yet: in transit)."""
    if not lines:
        return {}
    references = {line.reference for line in lines}
    payouts = dict(
        PayoutInstruction.objects.filter(reference__in=references).values_list(
            "reference", "pending_transfer_id"
        )
    )
    contracts = dict(Contract.objects.filter(number__in=references).values_list("number", "pk"))
    known = set(payouts) | set(contracts)
    # Lines already matched with the same reference: what a repeated booking repeats.
    matched = {
        (reference, amount): (line_id, serial)
        for line_id, reference, amount, serial in BankStatementLine.objects.filter(
            institution_id=institution_id,
            reference__in=references,
            match_link__isnull=False,
        ).values_list("pk", "reference", "amount_fen", "serial")
    }
    posted = set(
        Entry.objects.filter(pending_transfer_id__in=[p for p in payouts.values() if p]).values_list(
            "pending_transfer_id", flat=True
        )
    )
    settled = set(
        Payment.objects.filter(
            contract_id__in=contracts.values(), settlement_entry__isnull=False
        ).values_list("contract__number", flat=True)
    )
    verdicts: dict[int, tuple[str, str, int | None]] = {}
    for line in lines:
        if line.reference not in known:
            verdicts[line.id] = (
                "unknown",
                f"参考号「{line.reference}」不存在 reference {line.reference!r} names no instruction or "
                "contract",
                None,
            )
            continue
        twin = matched.get((line.reference, line.amount_fen))
        is_posted = payouts.get(line.reference) in posted or line.reference in settled
        if twin is not None and is_posted:
            verdicts[line.id] = (
                "duplicate",
                f"参考号「{line.reference}」已与流水「{twin[1]}」匹配，本笔为重复入账 "
                f"reference {line.reference!r} is already matched to line {twin[1]!r}; this booking repeats "
                "it",
                twin[0],
            )
    return verdicts


LINE_FIELDS = (
    "pk",
    "statement_id",
    "line_number",
    "serial",
    "booked_on",
    "value_on",
    "amount_fen",
    "counterparty_name",
    "counterparty_account",
    "reference",
    "summary",
)


def _load_pairs(pairs: Sequence[tuple[int, int]]) -> list[tuple[OpenLine, OpenLine]]:
    if not pairs:
        return []
    wanted = {line_id for pair in pairs for line_id in pair}
    found = {
        row[0]: _open_line(row)
        for row in BankStatementLine.objects.filter(pk__in=wanted).values_list(*LINE_FIELDS)
    }
    return [(found[line_id], found[twin]) for line_id, twin in pairs]


def _duplicates_of_matched(institution_id: int, lines: Sequence[OpenLine]) -> dict[int, OpenLine]:
    """Unmatched lines that repeat a matched line of the same day exactly (amount, value date, counterparty,
    reference, summary), by the matched line."""
    if not lines:
        return {}
    wanted = {line.signature for line in lines}
    rows = BankStatementLine.objects.filter(
        institution_id=institution_id,
        booked_on__in={line.booked_on for line in lines},
        amount_fen__in={line.amount_fen for line in lines},
        match_link__isnull=False,
    ).values_list(*LINE_FIELDS)
    by_signature: dict[tuple[object, ...], OpenLine] = {}
    for row in rows:
        candidate = _open_line(row)
        if candidate.signature in wanted:
            by_signature.setdefault(candidate.signature, candidate)
    return {line.id: by_signature[line.signature] for line in lines if line.signature in by_signature}


def _open_line(row: Sequence[Any]) -> OpenLine:
    """A line from the columns of ``LINE_FIELDS``, whatever type the database gave the dates."""
    return OpenLine(
        id=row[0],
        statement_id=row[1],
        line_number=row[2],
        serial=row[3],
        booked_on=as_date(row[4]),
        value_on=as_date(row[5]),
        amount_fen=row[6],
        counterparty_name=row[7],
        counterparty_account=row[8],
        reference=row[9],
        summary=row[10],
    )

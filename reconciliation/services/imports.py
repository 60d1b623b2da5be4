"""Import of bank statements (对账单导入): one checked ``Statement`` from any format into one table of lines.

``import_statement(data=…)`` reads a file through ``reconciliation.formats`` (which refuses, with the line
number and the reason, a file whose balances do not add up) and stores it. Before anything is written the
statement must continue the account's previous statement (``check_continuity``: same account, no overlap,
opening = previous closing, next sequence number) and precede the next one when it fills a gap. A refused
file leaves nothing behind but, for a continuity refusal, a ``sequence_gap`` break saying what is missing;
the break resolves itself when the same statement is imported in sequence.

The same file twice is found by its SHA-256 and changes nothing. A different file claiming a statement id
already imported is refused. Lines are written with COPY on PostgreSQL, and ``store_statement`` also takes
the lines as a stream (checked on the fly: amounts, period, unique serials, running balance, opening +
movements = closing), so a very large statement never needs to sit in memory as objects.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction

from custody.models import Institution
from ledger import clock
from reconciliation.errors import ReconciliationError
from reconciliation.formats import Statement, StatementError, StatementLine, check_continuity, parse_statement
from reconciliation.formats import detect_format as detect_file_format
from reconciliation.formats.base import MAX_MINOR_UNITS, format_yuan
from reconciliation.models import BankStatement, BankStatementLine, BreakKind
from reconciliation.services import breaks as break_service
from reconciliation.services import events
from reconciliation.services._bulk import insert_rows, reserve_ids

GENERATED = "generated"
LINE_COLUMNS = (
    "statement_id",
    "institution_id",
    "line_number",
    "serial",
    "booked_on",
    "value_on",
    "amount_fen",
    "balance_after_fen",
    "counterparty_name",
    "counterparty_account",
    "reference",
    "summary",
)


@dataclass(frozen=True)
class ImportResult:
    statement: BankStatement
    created: bool  # False when the same file had been imported before


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def import_statement(
    *,
    data: bytes,
    filename: str = "",
    format: str | None = None,
    imported_by: User | None = None,
    allow_gap: bool = False,
) -> ImportResult:
    """Check and store one statement file, or raise ``StatementError`` (the file) or ``ReconciliationError``
    (an account that is no institution's supervised account) and store nothing of it.

    ``allow_gap`` imports a statement that does not continue the previous one (a person decided the bank
    will never send the missing one); its ``sequence_gap`` break is raised all the same.
    """
    digest = file_digest(data)
    existing = BankStatement.objects.filter(file_sha256=digest).first()
    if existing is not None:
        return ImportResult(existing, created=False)
    statement = parse_statement(data, filename=filename, format=format)
    return store_statement(
        header=statement,
        lines=statement.lines,
        format=format or detect_file_format(data, filename),
        file_sha256=digest,
        filename=filename,
        imported_by=imported_by,
        allow_gap=allow_gap,
    )


def store_statement(
    *,
    header: Statement,
    lines: Iterable[StatementLine],
    format: str,
    file_sha256: str,
    filename: str = "",
    imported_by: User | None = None,
    allow_gap: bool = False,
) -> ImportResult:
    """Store a statement whose header is ``header`` (its own ``lines`` are ignored) and whose lines are
    ``lines``, checked as they stream past. All or nothing."""
    existing = BankStatement.objects.filter(file_sha256=file_sha256).first()
    if existing is not None:
        return ImportResult(existing, created=False)
    institution = institution_for(header.account_number)
    gap: StatementError | None = None
    try:
        with transaction.atomic():
            Institution.objects.select_for_update().filter(pk=institution.pk).first()
            existing = BankStatement.objects.filter(file_sha256=file_sha256).first()
            if existing is not None:
                return ImportResult(existing, created=False)
            same_id = BankStatement.objects.filter(
                institution=institution, statement_id=header.statement_id
            ).first()
            if same_id is not None:
                raise StatementError(
                    0,
                    f"对账单「{header.statement_id}」已导入（文件不同）"
                    f"statement {header.statement_id!r} was already imported from another file",
                    rule="continuity",
                )
            try:
                check_sequence(institution, header)
            except StatementError as error:
                if not allow_gap:
                    raise
                gap = error
            statement = _write(institution, header, lines, format, file_sha256, filename, imported_by)
    except StatementError as error:
        if error.rule == "continuity":
            _raise_gap(institution, header, error)
        raise
    except IntegrityError:
        existing = BankStatement.objects.filter(file_sha256=file_sha256).first()
        if existing is None:
            raise
        return ImportResult(existing, created=False)
    events.record(
        action="statement_imported",
        at=clock.now(),
        actor=imported_by,
        institution_id=institution.pk,
        data={
            "statement": statement.pk,
            "statement_id": statement.statement_id,
            "format": format,
            "lines": statement.line_count,
            "file_sha256": file_sha256,
            "gap_allowed": gap is not None,
        },
        target=("reconciliation.statement", statement.pk),
    )
    if gap is not None:
        _raise_gap(institution, header, gap, imported=statement)
    else:
        break_service.resolve_sequence_gaps(institution_id=institution.pk, statement_id=header.statement_id)
    return ImportResult(statement, created=True)


def institution_for(account_number: str) -> Institution:
    """The institution whose supervised account (预收费资金专用账户) this is, or ``ReconciliationError``."""
    found = list(Institution.objects.filter(custody_account_number=account_number)[:2])
    if len(found) != 1:
        raise ReconciliationError(
            "unknown_account",
            f"账号 {account_number} 不是唯一一家机构的监管账户 "
            f"account {account_number} is not the supervised account of exactly one institution",
            account_number=account_number,
            institutions=len(found),
        )
    institution = found[0]
    if institution.cash_account_id is None:
        raise ReconciliationError(
            "unknown_account",
            f"机构 {institution.pk} 没有托管现金账户 institution {institution.pk} has no custody cash "
            "account",
            institution=institution.pk,
        )
    return institution


def header_of(row: BankStatement) -> Statement:
    """A stored statement's header as the formats layer models it (no lines), for continuity checks."""
    return Statement(
        account_number=row.account_number,
        currency=row.currency,
        statement_id=row.statement_id,
        sequence=row.sequence,
        period_start=row.period_start,
        period_end=row.period_end,
        opening_balance_fen=row.opening_balance_fen,
        closing_balance_fen=row.closing_balance_fen,
        lines=(),
    )


def check_sequence(institution: Institution, header: Statement) -> None:
    """``header`` must continue the statement before it and, when it fills a gap, precede the one after."""
    statements = BankStatement.objects.filter(institution=institution)
    overlapping = (
        statements.filter(period_start__lt=header.period_end, period_end__gt=header.period_start)
        .order_by("period_start")
        .first()
    )
    if overlapping is not None:
        raise StatementError(
            0,
            f"对账期间与已导入的对账单「{overlapping.statement_id}」重叠 "
            f"the period overlaps statement {overlapping.statement_id!r} "
            f"({overlapping.period_start}–{overlapping.period_end})",
            rule="continuity",
        )
    previous = statements.filter(period_end__lte=header.period_start).order_by("-period_end", "-pk").first()
    following = statements.filter(period_start__gte=header.period_end).order_by("period_start", "pk").first()
    if previous is not None:
        check_continuity(header_of(previous), header)
    if following is not None:
        check_continuity(header, header_of(following))


def _write(
    institution: Institution,
    header: Statement,
    lines: Iterable[StatementLine],
    format: str,
    file_sha256: str,
    filename: str,
    imported_by: User | None,
) -> BankStatement:
    # The statement row goes in last, with the totals counted on the way; its id is taken first so the lines
    # can point at it (foreign keys are checked at commit).
    statement_id = reserve_ids(BankStatement, 1)[0]
    tally = _Tally(header)
    insert_rows(
        BankStatementLine,
        LINE_COLUMNS,
        (
            (
                statement_id,
                institution.pk,
                line.line_number,
                line.serial,
                line.booked_on,
                line.value_on,
                line.amount_fen,
                line.balance_after_fen,
                line.counterparty_name,
                line.counterparty_account,
                line.reference,
                line.summary,
            )
            for line in tally.checked(lines)
        ),
    )
    tally.finish()
    return BankStatement.objects.create(
        id=statement_id,
        institution=institution,
        account_number=header.account_number,
        currency=header.currency,
        format=format,
        statement_id=header.statement_id,
        sequence=header.sequence,
        period_start=header.period_start,
        period_end=header.period_end,
        opening_balance_fen=header.opening_balance_fen,
        closing_balance_fen=header.closing_balance_fen,
        credits_fen=tally.credits,
        debits_fen=tally.debits,
        line_count=tally.count,
        filename=filename[:200],
        file_sha256=file_sha256,
        imported_at=clock.now(),
        imported_by=imported_by,
    )


class _Tally:
    """``check_statement`` for a stream of lines: what it checks, one line at a time."""

    def __init__(self, header: Statement) -> None:
        self.header = header
        self.balance = header.opening_balance_fen
        self.credits = 0
        self.debits = 0
        self.count = 0
        self.serials: set[str] = set()
        self.last_line = 0

    def checked(self, lines: Iterable[StatementLine]) -> Iterable[StatementLine]:
        header = self.header
        for line in lines:
            self.last_line = line.line_number
            if not line.serial:
                raise StatementError(line.line_number, "流水号为空 the line has no serial", rule="structure")
            if line.amount_fen == 0:
                raise StatementError(line.line_number, "发生额为零 the line moves no money", rule="amount")
            if not header.period_start <= line.booked_on <= header.period_end:
                raise StatementError(
                    line.line_number,
                    f"记账日期 {line.booked_on} 不在对账期间内 booked outside the statement period",
                    rule="period",
                )
            if line.serial in self.serials:
                raise StatementError(
                    line.line_number,
                    f"流水号「{line.serial}」重复 serial {line.serial!r} repeats",
                    rule="duplicate_serial",
                )
            self.serials.add(line.serial)
            self.balance += line.amount_fen
            if abs(self.balance) >= MAX_MINOR_UNITS:
                raise StatementError(line.line_number, "余额超出范围 balance out of range", rule="amount")
            if line.balance_after_fen is not None and line.balance_after_fen != self.balance:
                raise StatementError(
                    line.line_number,
                    f"余额不符 balance mismatch: {format_yuan(line.balance_after_fen)} ≠ "
                    f"{format_yuan(self.balance)}",
                    rule="balance",
                )
            if line.amount_fen > 0:
                self.credits += line.amount_fen
            else:
                self.debits -= line.amount_fen
            self.count += 1
            yield line

    def finish(self) -> None:
        if self.balance != self.header.closing_balance_fen:
            raise StatementError(
                self.last_line,
                f"期初余额加发生额 {format_yuan(self.balance)} 不等于期末余额 "
                f"{format_yuan(self.header.closing_balance_fen)} opening + movements ≠ closing",
                rule="balance",
            )


def _raise_gap(
    institution: Institution,
    header: Statement,
    error: StatementError,
    *,
    imported: BankStatement | None = None,
) -> None:
    earlier = BankStatement.objects.filter(institution=institution, period_end__lte=header.period_start)
    if imported is not None:
        earlier = earlier.exclude(pk=imported.pk)
    previous = earlier.order_by("-period_end", "-pk").first()
    details: dict[str, object] = {
        "statement_id": header.statement_id,
        "sequence": header.sequence,
        "period": [header.period_start.isoformat(), header.period_end.isoformat()],
        "opening_fen": header.opening_balance_fen,
        "reason": error.reason if hasattr(error, "reason") else str(error),
        "imported": imported is not None,
    }
    if previous is not None:
        details.update(
            previous_statement_id=previous.statement_id,
            previous_sequence=previous.sequence,
            previous_closing_fen=previous.closing_balance_fen,
        )
    outcome = "已按人工决定导入 imported by decision" if imported is not None else "未导入 not imported"
    break_service.raise_breaks(
        [
            break_service.NewBreak(
                key=f"sequence_gap:{institution.pk}:{header.statement_id}",
                institution_id=institution.pk,
                kind=BreakKind.SEQUENCE_GAP,
                day=header.period_start,
                amount_fen=0,
                explanation=(
                    f"对账单「{header.statement_id}」不连续，{outcome}：{error} "
                    f"statement {header.statement_id!r} does not continue the previous one"
                ),
                details=details,
                statement_id=imported.pk if imported is not None else None,
            )
        ],
        at=_now(),
    )


def _now() -> datetime:
    return clock.now()

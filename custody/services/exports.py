"""Signed exports (监管导出与家长对账单): the bundle a regulator takes away for an institution or a
jurisdiction and a date, and the PDF statement a parent keeps.

**The regulator's bundle** (``write_regulator_bundle``): one directory or zip, written by
``ledger.proofs.write_bundle``, whose ``manifest.json`` lists each file's SHA-256 and size and is signed with
the platform's Ed25519 key, so ``python -m ledger.verify bundle`` proves nothing was changed, added or
removed. The day is the ledger's business day D (00:00–24:00 Asia/Shanghai, by the ledger's own transaction
time); balances are as the ledger stood at the day's close, read from the postings' running totals.

- ``balances.csv``: each institution's own accounts (custody cash, payable, reserve accounts) and the sums of
  its contracts' ``prepaid:c`` and ``refund_payable:c``, at the close;
- ``entries.csv``: every leg of every entry posted on D that touches an account in scope, with its chain
  link (sequence number and hash: ask for its inclusion proof by them);
- ``contracts.csv``: each contract's held value, refund payable and what custody owes on it at the close
  (hours as of the export);
- ``reconciliation.csv``: each institution's custody invariant at the close, the bank tie-out of D and the
  breaks of days up to D still open;
- ``export.xlsx``: the same four tables, one sheet each;
- ``checkpoint.json``: the latest custody checkpoint signed before the close, when there is one.

CSV files are UTF-8 with a BOM (Excel opens them as UTF-8) and CRLF line ends; amounts are yuan with two
decimals, exact (integers of fen inside). Text that a spreadsheet would run as a formula (leading ``=``,
``+``, ``-``, ``@``, tab, carriage return, or their full-width forms) is neutralised: a leading ``'`` in CSV;
a text cell with Excel's quote-prefix style in XLSX (the value itself unchanged, never a formula).

**The parent's statement** (``parent_statement_pdf``): every contract of a guardian with what was paid,
consumed, refunded and is held, and, per contract, the latest signed checkpoint's figures with the command
that verifies the proof. Chinese text needs a CJK font: a TrueType font is embedded (subset) from
``settings.CUSTODY_PDF_FONT`` / the ``CUSTODY_PDF_FONT`` environment variable, else the first of
``CJK_FONT_CANDIDATES`` found (Debian: ``apt-get install fonts-wqy-microhei``). Without one, the PDF uses
reportlab's built-in CID font STSong-Light, which is *not* embedded (the reader's viewer supplies it), and
says so in the PDF's keywords and subject.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import connection
from django.db.models import Count, F, Q, Sum
from django.utils import timezone

from custody.models import Contract, Guardian, Institution, Jurisdiction, Payment, SupervisionMode
from custody.selectors.checkpoints import (
    ContractLiabilityProof,
    checkpoint_file,
    contract_liability_proof,
    custody_checkpoints,
)
from custody.selectors.holdings import with_money
from custody.services.calendar import SHANGHAI
from ledger import proofs
from ledger.models import Account

# --- tables and their two formats ---------------------------------------------------------------------------

Cell = str | int | Decimal | None
FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r", "＝", "＋", "－", "＠")


def is_formula_like(text: str) -> bool:
    return text.startswith(FORMULA_LEADS)


def csv_safe(text: str) -> str:
    """A text cell for CSV: a leading ``'`` when a spreadsheet would read it as a formula."""
    return "'" + text if is_formula_like(text) else text


def yuan(fen: int) -> Decimal:
    """Exact yuan with two decimals (never through a float)."""
    return (Decimal(int(fen)) / 100).quantize(Decimal("0.01"))


@dataclass
class Table:
    """One export table: a file stem, a sheet title, bilingual headers and typed cells (str is text, int a
    count, Decimal an amount in yuan)."""

    name: str
    title: str
    headers: list[str]
    rows: list[list[Cell]] = field(default_factory=list)


def to_csv(table: Table) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(table.headers)
    for row in table.rows:
        writer.writerow(["" if v is None else csv_safe(v) if isinstance(v, str) else str(v) for v in row])
    return out.getvalue().encode("utf-8-sig")


def to_xlsx(tables: Sequence[Table]) -> bytes:
    from openpyxl import Workbook
    from openpyxl.styles import Font

    workbook = Workbook()
    workbook.remove(workbook.active)
    for table in tables:
        sheet = workbook.create_sheet(title=table.title[:31])
        sheet.append(table.headers)
        for cell in sheet[1]:
            cell.font = Font(bold=True)
        for row in table.rows:
            sheet.append([None] * len(row))
            for column, value in enumerate(row, start=1):
                cell = sheet.cell(row=sheet.max_row, column=column)
                if isinstance(value, str):
                    cell.value = value
                    # Always text, never a formula, whatever it starts with; shown as typed.
                    cell.data_type = "s"
                    if is_formula_like(value):
                        cell.quotePrefix = True
                elif isinstance(value, Decimal):
                    cell.value = value
                    cell.number_format = "#,##0.00"
                else:
                    cell.value = value
        sheet.freeze_panes = "A2"
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


# --- the regulator's bundle ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """An institution, or every institution of a jurisdiction."""

    institutions: list[Institution]
    label: dict[str, str]

    @classmethod
    def of(cls, *, institution: Institution | None, jurisdiction: Jurisdiction | None) -> Scope:
        if (institution is None) == (jurisdiction is None):
            raise ValueError("export one institution or one jurisdiction")
        if institution is not None:
            return cls(
                [Institution.objects.select_related("jurisdiction").get(pk=institution.pk)],
                {"institution": institution.licence_number, "institution_name": institution.name},
            )
        assert jurisdiction is not None
        found = list(Institution.objects.filter(jurisdiction=jurisdiction).order_by("pk"))
        return cls(found, {"jurisdiction": jurisdiction.code, "jurisdiction_name": jurisdiction.name})

    @property
    def ids(self) -> list[int]:
        return [i.pk for i in self.institutions]


def day_bounds(on_date: date) -> tuple[datetime, datetime]:
    start = datetime.combine(on_date, time.min, tzinfo=SHANGHAI)
    return start, start + timedelta(days=1)


def _local(moment: datetime | None) -> str | None:
    return moment.astimezone(SHANGHAI).isoformat(timespec="seconds") if moment else None


_OWN_ACCOUNTS = (
    ("custody_cash", "托管账户资金 custody cash"),
    ("payable", "应付机构 released, owed to the institution"),
    ("institution_held", "机构自有账户中的预收费 prepaid held by the institution (reserve mode)"),
    ("reserve_cash", "风险保证金 reserve at the bank"),
    ("reserve_deposit", "应退保证金 reserve owed back to the institution"),
)


def _db_time(moment: datetime) -> Any:
    """A moment as the database compares it in raw SQL (SQLite stores UTC text; PostgreSQL takes it as is)."""
    return connection.ops.adapt_datetimefield_value(moment)


def _balances_at(account_ids: Iterable[int], moment: datetime) -> dict[int, tuple[int, int]]:
    """Account -> (debits, credits) posted before ``moment``: each account's last posting's running totals
    (one index range per account, read in chunks)."""
    ids = sorted(set(account_ids))
    found: dict[int, tuple[int, int]] = {}
    for start in range(0, len(ids), 5_000):
        chunk = ids[start : start + 5_000]
        placeholders = ", ".join(["%s"] * len(chunk))
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT account_id, debits_after, credits_after FROM ("
                "  SELECT account_id, debits_after, credits_after, ROW_NUMBER() OVER ("
                "    PARTITION BY account_id ORDER BY posted_at DESC, id DESC) AS newest"
                f"  FROM ledger_posting WHERE account_id IN ({placeholders}) AND posted_at < %s"
                ") last_posting WHERE newest = 1",
                [*chunk, _db_time(moment)],
            )
            found.update({row[0]: (row[1], row[2]) for row in cursor.fetchall()})
    return found


@dataclass
class _Books:
    """The scope's accounts and their balances at the close."""

    accounts: dict[int, Account]
    at_close: dict[int, tuple[int, int]]

    def balance(self, account_id: int | None) -> int:
        if account_id is None or account_id not in self.accounts:
            return 0
        debits, credits = self.at_close.get(account_id, (0, 0))
        return self.accounts[account_id].signed_balance(debits, credits)


def _books(scope: Scope, contracts: list[Contract], end: datetime) -> _Books:
    codes = [f"{prefix}:i{pk}" for pk in scope.ids for prefix, _ in _OWN_ACCOUNTS]
    own = list(Account.objects.filter(code__in=codes))
    contract_accounts = [c.prepaid_account_id for c in contracts] + [c.refund_account_id for c in contracts]
    ids = [a.pk for a in own] + [pk for pk in contract_accounts if pk is not None]
    accounts = {a.pk: a for a in own}
    for start in range(0, len(ids), 5_000):
        accounts.update(Account.objects.in_bulk(ids[start : start + 5_000]))
    return _Books(accounts=accounts, at_close=_balances_at(ids, end))


def _scope_contracts(scope: Scope, end: datetime) -> list[Contract]:
    return list(
        with_money(
            Contract.objects.filter(
                institution_id__in=scope.ids,
                prepaid_account__isnull=False,
                prepaid_account__created_at__lt=end,
            )
        )
        .select_related("institution")
        .order_by("institution_id", "pk")
    )


def _balances_table(scope: Scope, contracts: list[Contract], books: _Books) -> Table:
    table = Table(
        "balances",
        "余额 balances",
        [
            "机构许可证号 licence",
            "机构 institution",
            "账户 account",
            "说明 description",
            "借方累计 debits (yuan)",
            "贷方累计 credits (yuan)",
            "余额 balance (yuan)",
        ],
    )
    by_code = {a.code: a for a in books.accounts.values()}
    by_institution: dict[int, list[Contract]] = defaultdict(list)
    for contract in contracts:
        by_institution[contract.institution_id].append(contract)
    for institution in scope.institutions:
        for prefix, description in _OWN_ACCOUNTS:
            account = by_code.get(f"{prefix}:i{institution.pk}")
            if account is None:
                continue
            debits, credits = books.at_close.get(account.pk, (0, 0))
            table.rows.append(
                [
                    institution.licence_number,
                    institution.name,
                    account.code,
                    description,
                    yuan(debits),
                    yuan(credits),
                    yuan(books.balance(account.pk)),
                ]
            )
        own = by_institution.get(institution.pk, [])
        for field_name, code, description in (
            ("prepaid_account_id", "Σ prepaid:c", "合同预收费合计 contracts' prepaid, summed"),
            ("refund_account_id", "Σ refund_payable:c", "合同应退合计 contracts' refunds payable, summed"),
        ):
            totals = [books.at_close.get(getattr(c, field_name), (0, 0)) for c in own]
            debits, credits = sum(t[0] for t in totals), sum(t[1] for t in totals)
            table.rows.append(
                [
                    institution.licence_number,
                    institution.name,
                    f"{code} ({len(own)})",
                    description,
                    yuan(debits),
                    yuan(credits),
                    yuan(credits - debits),
                ]
            )
    return table


def _contracts_table(contracts: list[Contract], books: _Books) -> Table:
    table = Table(
        "contracts",
        "合同 contracts",
        [
            "合同编号 contract",
            "机构许可证号 licence",
            "状态 state",
            "签订时间 signed at",
            "合同金额 amount (yuan)",
            "购买课时 paid hours",
            "赠送课时 gift hours",
            "已消课时 hours consumed (at export)",
            "待确认课时 hours pending (at export)",
            "已退课时 hours refunded (at export)",
            "托管余额 held (yuan)",
            "待退款 refund payable (yuan)",
            "应付家长 owed to the parent (yuan)",
        ],
    )
    for c in contracts:
        held = books.balance(c.prepaid_account_id)
        refund_payable = books.balance(c.refund_account_id)
        table.rows.append(
            [
                c.number,
                c.institution.licence_number,
                c.state,
                _local(c.signed_at),
                yuan(c.amount_fen),
                c.paid_hours,
                c.gift_hours,
                c.hours_consumed,
                c.hours_pending,
                c.paid_hours_refunded,
                yuan(held),
                yuan(refund_payable),
                yuan(held + refund_payable),
            ]
        )
    return table


def _entries_table(books: _Books, start: datetime, end: datetime) -> Table:
    table = Table(
        "entries",
        "分录 entries",
        [
            "分录号 entry",
            "链序号 chain seq",
            "记账时间 posted at",
            "业务日期 effective at",
            "类型 kind",
            "账户 account",
            "借方 debit (yuan)",
            "贷方 credit (yuan)",
            "链哈希 link hash",
        ],
    )
    ids = sorted(books.accounts)
    entry_ids: set[int] = set()
    for chunk_start in range(0, len(ids), 5_000):
        chunk = ids[chunk_start : chunk_start + 5_000]
        placeholders = ", ".join(["%s"] * len(chunk))
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT DISTINCT entry_id FROM ledger_posting WHERE account_id IN ({placeholders}) "
                "AND posted_at >= %s AND posted_at < %s",
                [*chunk, _db_time(start), _db_time(end)],
            )
            entry_ids.update(row[0] for row in cursor.fetchall())
    ordered = sorted(entry_ids)
    for chunk_start in range(0, len(ordered), 5_000):
        chunk = ordered[chunk_start : chunk_start + 5_000]
        placeholders = ", ".join(["%s"] * len(chunk))
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT e.id, l.seq, e.posted_at, e.effective_at, e.kind, a.code, p.amount, l.hash "
                "FROM ledger_entry e JOIN ledger_posting p ON p.entry_id = e.id "
                "JOIN ledger_account a ON a.id = p.account_id "
                "LEFT JOIN ledger_chainlink l ON l.entry_id = e.id "
                f"WHERE e.id IN ({placeholders}) ORDER BY e.posted_at, e.id, p.id",
                chunk,
            )
            for entry_id, seq, posted_at, effective_at, kind, code, amount, link_hash in cursor.fetchall():
                table.rows.append(
                    [
                        entry_id,
                        seq,
                        _local(_aware(posted_at)),
                        _local(_aware(effective_at)),
                        kind,
                        code,
                        yuan(max(amount, 0)),
                        yuan(max(-amount, 0)),
                        link_hash,
                    ]
                )
    return table


def _aware(value: datetime | str) -> datetime:
    # SQLite's raw cursor returns text; PostgreSQL an aware datetime.
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment if timezone.is_aware(moment) else timezone.make_aware(moment, UTC)


def _reconciliation_table(
    scope: Scope, contracts: list[Contract], books: _Books, on_date: date, end: datetime
) -> Table:
    table = Table(
        "reconciliation",
        "对账 reconciliation",
        [
            "机构许可证号 licence",
            "机构 institution",
            "监管方式 mode",
            "托管现金 custody cash (yuan)",
            "在途资金 in clearing (yuan)",
            "应付合计 owed (yuan)",
            "账内差额 ledger difference (yuan)",
            "账内核对 ledger check",
            "银行核对 bank tie-out of the day",
            "银行余额 bank balance (yuan)",
            "账银差额 ledger − bank (yuan)",
            "未说明差额 unexplained (yuan)",
            "未解决差错 open breaks",
            "差错金额 open breaks (yuan)",
        ],
    )
    in_clearing = dict(
        Payment.objects.filter(contract__institution_id__in=scope.ids, entry__posted_at__lt=end)
        .filter(Q(settlement_entry__isnull=True) | Q(settlement_entry__posted_at__gte=end))
        .values("contract__institution_id")
        .annotate(total=Sum("amount_fen"))
        .values_list("contract__institution_id", "total")
    )
    owed: dict[int, int] = defaultdict(int)
    for c in contracts:
        owed[c.institution_id] += books.balance(c.prepaid_account_id) + books.balance(c.refund_account_id)
    tie_outs, breaks = _bank_reconciliation(scope.ids, on_date)
    for institution in scope.institutions:
        custody = institution.supervision_mode == SupervisionMode.CUSTODY
        cash = books.balance(institution.cash_account_id) if custody else 0
        clearing = int(in_clearing.get(institution.pk) or 0)
        total_owed = owed[institution.pk] + books.balance(institution.payable_account_id)
        difference = cash + clearing - total_owed
        tie_out = tie_outs.get(institution.pk)
        open_breaks = breaks.get(institution.pk, (0, 0))
        table.rows.append(
            [
                institution.licence_number,
                institution.name,
                institution.supervision_mode,
                yuan(cash),
                yuan(clearing),
                yuan(total_owed),
                yuan(difference) if custody else None,
                ("相符 holds" if difference == 0 else "不符 differs") if custody else "不适用 n/a",
                tie_out[0] if tie_out else "无对账单 no statement",
                yuan(tie_out[1]) if tie_out else None,
                yuan(tie_out[2]) if tie_out else None,
                yuan(tie_out[3]) if tie_out else None,
                open_breaks[0],
                yuan(open_breaks[1]),
            ]
        )
    return table


def _bank_reconciliation(
    institution_ids: list[int], on_date: date
) -> tuple[dict[int, tuple[str, int, int, int]], dict[int, tuple[int, int]]]:
    """The day's bank tie-outs and the breaks of days up to it still open, from the reconciliation app
    (read through the app registry: custody does not import it)."""
    if not apps.is_installed("reconciliation"):
        return {}, {}
    tie_out_model = apps.get_model("reconciliation", "TieOut")
    break_model = apps.get_model("reconciliation", "Break")
    tie_outs = {
        pk: (status, bank, difference, unexplained)
        for pk, status, bank, difference, unexplained in tie_out_model.objects.filter(
            institution_id__in=institution_ids, day=on_date
        ).values_list("institution_id", "status", "bank_fen", "difference_fen", "unexplained_fen")
    }
    breaks = {
        pk: (int(n), int(total or 0))
        for pk, n, total in break_model.objects.filter(institution_id__in=institution_ids, day__lte=on_date)
        .exclude(state="resolved")
        .values("institution_id")
        .annotate(n=Count("pk"), total=Sum("amount_fen"))
        .values_list("institution_id", "n", "total")
    }
    return tie_outs, breaks


def regulator_export(
    *, on_date: date, institution: Institution | None = None, jurisdiction: Jurisdiction | None = None
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The bundle's files (name -> bytes) and the manifest's meta for one institution or jurisdiction and
    one business day."""
    scope = Scope.of(institution=institution, jurisdiction=jurisdiction)
    start, end = day_bounds(on_date)
    contracts = _scope_contracts(scope, end)
    books = _books(scope, contracts, end)
    tables = [
        _balances_table(scope, contracts, books),
        _entries_table(books, start, end),
        _contracts_table(contracts, books),
        _reconciliation_table(scope, contracts, books, on_date, end),
    ]
    files = {f"{t.name}.csv": to_csv(t) for t in tables}
    files["export.xlsx"] = to_xlsx(tables)
    checkpoint = custody_checkpoints().filter(created_at__lt=end).first()
    if checkpoint is not None:
        document = checkpoint_file(checkpoint)
        files["checkpoint.json"] = (json.dumps(document, ensure_ascii=False, indent=2) + "\n").encode()
    meta = {
        "kind": "regulator_export",
        "scope": scope.label,
        "date": on_date.isoformat(),
        "day": {"from": _local(start), "to": _local(end)},
        "timezone": "Asia/Shanghai",
        "amounts": "yuan, exact to the fen",
        "rows": {t.name: len(t.rows) for t in tables},
        "checkpoint_id": checkpoint.pk if checkpoint is not None else None,
        "generated_at": _local(timezone.now()),
    }
    return files, meta


def write_regulator_bundle(
    *,
    destination: str | Path,
    on_date: date,
    institution: Institution | None = None,
    jurisdiction: Jurisdiction | None = None,
    as_zip: bool = False,
) -> Path:
    """Write the signed bundle to ``destination`` (a new directory, or a zip file)."""
    files, meta = regulator_export(on_date=on_date, institution=institution, jurisdiction=jurisdiction)
    return proofs.write_bundle(destination, files, meta=meta, as_zip=as_zip)


# --- the parent's statement ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatementRow:
    number: str
    institution: str
    course: str
    state: str
    paid_fen: int
    consumed_fen: int
    pending_fen: int
    refunded_fen: int
    held_fen: int
    refund_payable_fen: int


@dataclass(frozen=True)
class ParentStatement:
    guardian_label: str
    generated_at: datetime
    rows: list[StatementRow]
    proofs: list[ContractLiabilityProof]

    @property
    def totals(self) -> dict[str, int]:
        names = ("paid_fen", "consumed_fen", "pending_fen", "refunded_fen", "held_fen", "refund_payable_fen")
        return {name: sum(getattr(row, name) for row in self.rows) for name in names}


def masked_name(name: str) -> str:
    """张伟 -> 张*: the statement can travel; a full name need not."""
    return name[:1] + "*" * max(len(name) - 1, 1) if name else ""


def parent_statement(guardian: Guardian) -> ParentStatement:
    """What custody holds for a guardian, contract by contract (current balances), and each contract's proof
    from the latest custody checkpoint."""
    contracts = list(
        with_money(Contract.objects.filter(guardian=guardian, prepaid_account__isnull=False))
        .select_related("institution", "course", "refund_account")
        .annotate(refund_payable_fen=F("refund_account__credits_posted") - F("refund_account__debits_posted"))
        .order_by("pk")
    )
    rows = [
        StatementRow(
            number=c.number,
            institution=c.institution.name,
            course=c.course.name,
            state=c.get_state_display(),
            paid_fen=int(c.paid_fen),  # type: ignore[attr-defined]
            consumed_fen=int(c.consumed_fen),  # type: ignore[attr-defined]
            pending_fen=int(c.pending_fen),  # type: ignore[attr-defined]
            refunded_fen=int(c.refunded_fen),  # type: ignore[attr-defined]
            held_fen=int(c.held_fen),  # type: ignore[attr-defined]
            refund_payable_fen=int(c.refund_payable_fen or 0),
        )
        for c in contracts
    ]
    found = [contract_liability_proof(c) for c in contracts]
    return ParentStatement(
        guardian_label=masked_name(guardian.name),
        generated_at=timezone.now(),
        rows=rows,
        proofs=[p for p in found if p is not None],
    )


CJK_FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",  # Debian fonts-wqy-microhei
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",  # Debian fonts-wqy-zenhei
    "/usr/share/fonts/truetype/arphic/uming.ttc",  # Debian fonts-arphic-uming
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",  # Debian fonts-droid-fallback
    "/usr/share/fonts/wqy-microhei/wqy-microhei.ttc",  # Fedora, Alpine
    "/Library/Fonts/Arial Unicode.ttf",  # macOS
    "C:/Windows/Fonts/simhei.ttf",  # Windows
)
FALLBACK_CID_FONT = "STSong-Light"


@dataclass(frozen=True)
class PdfFont:
    name: str
    path: str | None  # None: the built-in CID font, not embedded

    @property
    def embedded(self) -> bool:
        return self.path is not None


def _font_paths() -> list[str]:
    configured = getattr(settings, "CUSTODY_PDF_FONT", "") or os.environ.get("CUSTODY_PDF_FONT", "")
    return ([configured] if configured else []) + list(CJK_FONT_CANDIDATES)


def cjk_font(paths: Sequence[str] | None = None) -> PdfFont:
    """The first usable CJK TrueType font of ``paths`` (default: the configured one, then the candidates),
    registered with reportlab; else the built-in STSong-Light CID font."""
    for path in paths if paths is not None else _font_paths():
        if path and Path(path).is_file():
            registered = _register_truetype(path)
            if registered is not None:
                return PdfFont(registered, path)
    return _register_cid()


@lru_cache(maxsize=16)
def _register_truetype(path: str) -> str | None:
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFError, TTFont

    name = f"CJK-{Path(path).stem}"
    try:
        pdfmetrics.registerFont(TTFont(name, path, subfontIndex=0))
    except (TTFError, OSError, ValueError):
        return None  # e.g. PostScript (CFF) outlines, which reportlab cannot embed
    return name


def _register_cid() -> PdfFont:
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont

    if FALLBACK_CID_FONT not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(UnicodeCIDFont(FALLBACK_CID_FONT))
    return PdfFont(FALLBACK_CID_FONT, None)


def _money(fen: int) -> str:
    return f"{yuan(fen):,}"


def parent_statement_pdf(guardian: Guardian, *, font_paths: Sequence[str] | None = None) -> bytes:
    """The guardian's statement as a PDF (A4), Chinese first with English beside."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, TableStyle
    from reportlab.platypus import Table as PdfTable

    statement = parent_statement(guardian)
    font = cjk_font(font_paths)
    note = "font-embedded" if font.embedded else "font-not-embedded"
    buffer = io.BytesIO()
    document = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=15 * mm,
        bottomMargin=15 * mm,
        title="校外培训预收费资金托管对账单 Prepaid tuition custody statement",
        author="custody-ledger",
        subject=(
            "家长对账单 parent statement"
            if font.embedded
            else "家长对账单 parent statement (CJK font not embedded: STSong-Light from the viewer)"
        ),
        keywords=f"custody-ledger, parent statement, {note}: {font.name}",
        creator="custody-ledger",
    )
    base = ParagraphStyle("base", fontName=font.name, fontSize=9, leading=13, wordWrap="CJK")
    title = ParagraphStyle("title", parent=base, fontSize=15, leading=20, spaceAfter=6)
    heading = ParagraphStyle("heading", parent=base, fontSize=11, leading=16, spaceBefore=8, spaceAfter=4)
    small = ParagraphStyle("small", parent=base, fontSize=7.5, leading=10)

    def p(text: str, style: ParagraphStyle = base) -> Paragraph:
        return Paragraph(text.replace("&", "&amp;").replace("<", "&lt;"), style)

    story: list[Any] = [
        p("校外培训预收费资金托管对账单 Prepaid tuition custody statement", title),
        p(
            f"家长 Guardian: {statement.guardian_label}　　"
            f"生成时间 Generated: {_local(statement.generated_at)}"
        ),
        p("金额单位：元 Amounts in yuan (CNY).", small),
        Spacer(1, 4 * mm),
    ]
    header = [
        "合同编号\nContract",
        "机构 / 课程\nInstitution / course",
        "状态\nState",
        "已付\nPaid",
        "已消课\nConsumed",
        "待确认\nPending",
        "已退费\nRefunded",
        "托管中\nHeld",
        "待退款\nRefund due",
    ]
    data: list[list[Any]] = [[p(h.replace("\n", "<br/>"), small) for h in header]]
    for row in statement.rows:
        data.append(
            [
                p(row.number, small),
                p(f"{row.institution}<br/>{row.course}".replace("&", "&amp;"), small),
                p(row.state, small),
                _money(row.paid_fen),
                _money(row.consumed_fen),
                _money(row.pending_fen),
                _money(row.refunded_fen),
                _money(row.held_fen),
                _money(row.refund_payable_fen),
            ]
        )
    totals = statement.totals
    data.append(
        [
            p("合计 Total", small),
            "",
            "",
            *(
                _money(totals[n])
                for n in (
                    "paid_fen",
                    "consumed_fen",
                    "pending_fen",
                    "refunded_fen",
                    "held_fen",
                    "refund_payable_fen",
                )
            ),
        ]
    )
    table = PdfTable(data, colWidths=[30 * mm, 38 * mm, 16 * mm] + [16.5 * mm] * 6, repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("FONTNAME", (0, 0), (-1, -1), font.name),
                ("FONTSIZE", (0, 0), (-1, -1), 7.5),
                ("ALIGN", (3, 1), (-1, -1), "RIGHT"),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("GRID", (0, 0), (-1, -1), 0.4, colors.grey),
                ("BACKGROUND", (0, 0), (-1, 0), colors.whitesmoke),
                ("BACKGROUND", (0, -1), (-1, -1), colors.whitesmoke),
            ]
        )
    )
    story += [
        table,
        p(
            "已消课：已确认并拨付给机构；待确认：已上课待家长确认，仍属托管资金；托管中含待确认部分。"
            " Consumed: confirmed and released to the institution. Pending: taught, awaiting your "
            "confirmation, still held. Held includes pending.",
            small,
        ),
        p("负债证明 Proof that your money is counted", heading),
    ]
    if not statement.proofs:
        story.append(p("尚无签名检查点计入您的合同。 No signed checkpoint counts your contracts yet."))
    for proof in statement.proofs:
        story += [
            p(
                f"合同 {proof.contract_number}：计入金额 {_money(proof.amount_fen)} 元，"
                f"已计入机构（许可证号 {proof.group}）签名合计 {_money(proof.group_total_fen)} 元"
                f"及平台签名总额 {_money(proof.total_fen)} 元"
                f"（检查点 {proof.checkpoint_id}，密钥 {proof.key_id}）。"
                f" Contract {proof.contract_number}: {_money(proof.amount_fen)} yuan is counted in the "
                f"institution's signed total of {_money(proof.group_total_fen)} yuan and the platform's "
                f"signed total of {_money(proof.total_fen)} yuan "
                f"(checkpoint {proof.checkpoint_id}, key {proof.key_id})."
            ),
            p(f"校验命令 Verify: {proof.verify_command}", small),
        ]
    story += [
        Spacer(1, 3 * mm),
        p(
            "证明文件可在家长端下载；校验只需平台公钥，无需信任本平台。详见 docs/proofs.md。 "
            "Download the proof files from the parent pages; checking them needs only the platform's public "
            "key, not trust in the platform. See docs/proofs.md.",
            small,
        ),
    ]
    document.build(story)
    return buffer.getvalue()

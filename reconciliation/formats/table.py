"""The Chinese bank statement table (账户明细对账单), shared by the CSV and the XLSX reader and writer.

Banks lay the same information out differently: a few header rows ("账号：…", "币种：人民币", "起止日期：…"),
then a table whose columns come in any order under one of several names (交易日期 or 记账日期, 借方发生额 or
支出金额, …), sometimes an explicit 期初余额 row, then a 合计 footer and a few trailer rows. ``COLUMNS`` and
``HEADER_KEYS`` are the one table-driven mapping from those names to our fields; ``read_table`` turns rows
of cells (text from a CSV, typed values from a spreadsheet) into a checked ``Statement``; ``table_layout``
lays a ``Statement`` out the same way for the writers.

Sign: in a bank's statement to its customer, 借方 (debit) is money out of the account and 贷方 (credit) is
money in, so ``amount_fen = credit - debit``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from reconciliation.formats.base import (
    FEN_PER_YUAN,
    Statement,
    StatementLine,
    check_currency,
    check_statement,
    find_reference,
    format_yuan,
    is_blank_amount,
    looks_like_date,
    normalize_text,
    parse_amount_fen,
    parse_date,
    parse_period,
)
from reconciliation.formats.errors import StatementError

Cell = str | int | float | Decimal | date | datetime | None


@dataclass(frozen=True)
class Column:
    field: str
    names: tuple[str, ...]  # header names after normalization, the preferred first


# One mapping for both readers. When two header cells name the same field, the name earlier in ``names`` wins
# (记账日期 over 交易时间); the other column is ignored. Summary columns are the exception: all are kept and
# joined, because banks split the remittance text over 摘要, 用途 and 附言.
COLUMNS: tuple[Column, ...] = (
    Column("booked_on", ("记账日期", "交易日期", "入账日期", "日期", "交易时间", "记账时间")),
    Column("value_on", ("起息日", "起息日期", "计息日期")),
    Column("debit", ("借方发生额", "借方金额", "支出金额", "付款金额", "借方", "支出")),
    Column("credit", ("贷方发生额", "贷方金额", "收入金额", "收款金额", "贷方", "收入")),
    Column("amount", ("交易金额", "发生额", "金额")),
    Column("direction", ("借贷标志", "借贷方向", "收支方向", "借贷")),
    Column("balance", ("余额", "账户余额", "交易后余额", "当前余额", "联机余额")),
    Column("serial", ("流水号", "交易流水号", "银行流水号", "交易序号")),
    Column(
        "counterparty_name", ("对方户名", "对方账户名称", "对方账户名", "对方名称", "对方单位", "收/付方名称")
    ),
    Column("counterparty_account", ("对方账号", "对方账户", "收/付方账号")),
    Column("reference", ("业务参考号", "客户参考号", "参考号", "业务编号")),
    Column("summary", ("摘要", "交易摘要", "用途", "附言", "交易附言", "备注")),
    Column("account", ("本方账号", "账号")),
)
JOINED_FIELDS = frozenset({"summary"})

# Header and trailer rows: "账号：0200…" in one cell, or "账号" and "0200…" in two.
HEADER_KEYS: dict[str, tuple[str, ...]] = {
    "account": ("账号", "帐号", "账户", "银行账号", "账户账号", "查询账号"),
    "currency": ("币种", "货币", "币别"),
    "period": ("起止日期", "查询期间", "交易期间", "对账期间", "查询日期", "日期范围"),
    "opening": ("期初余额", "上期余额", "上日余额"),
    "closing": ("期末余额", "本期余额", "本日余额"),
    "statement_id": ("对账单编号", "对账单号", "账单编号"),
    "sequence": ("对账单序号", "对账单期号", "期号"),
}
# Rows inside the table that are not bookings.
OPENING_WORDS = ("期初余额", "上期余额", "上日余额", "承前页")
CLOSING_WORDS = ("期末余额", "本期余额", "本日余额")
FOOTER_WORDS = ("合计", "总计", "本期合计", "本页合计", "累计")
DEBIT_MARKS = frozenset({"借", "D", "DR", "DEBIT", "支出", "支", "出", "付"})
CREDIT_MARKS = frozenset({"贷", "C", "CR", "CREDIT", "收入", "收", "入"})
CURRENCY_NAMES = {
    "人民币": "CNY",
    "人民币元": "CNY",
    "RMB": "CNY",
    "本币": "CNY",
    "美元": "USD",
    "港币": "HKD",
    "港元": "HKD",
    "欧元": "EUR",
    "英镑": "GBP",
}
DEFAULT_CURRENCY = "CNY"  # a domestic statement that names no currency is in yuan

# Spreadsheet numbers are IEEE doubles; below 10^13 yuan, 15 significant digits, repr() gives back exactly the
# decimal the bank typed. Above that a float cannot be trusted to the fen and is refused.
MAX_EXACT_FLOAT_YUAN = 10**13
# Leading characters a spreadsheet would run as a formula (or that mark a quoted cell), see ``escape_cell``.
FORMULA_LEADS = ("=", "+", "-", "@")
QUOTE_LEADS = ("'", "`")

# --- cells ---


def escape_cell(text: str) -> str:
    """Formula-injection guard for text we write: a cell starting with = + - @ (or with a quote, so the quote
    survives the read) gets a leading "'". ``unescape_cell`` undoes exactly this."""
    if text.startswith(FORMULA_LEADS + QUOTE_LEADS):
        return "'" + text
    return text


def unescape_cell(text: str) -> str:
    """A text cell as the bank meant it: trimmed; ``="0200…"`` (Excel's keep-as-text trick) unwrapped; one
    leading ' or ` (the same trick, and ``escape_cell``'s guard) dropped."""
    text = text.strip()
    if text[:1] in QUOTE_LEADS:
        return text[1:]
    if len(text) >= 3 and text.startswith('="') and text.endswith('"'):
        return text[2:-1]
    return text


def cell_text(cell: Cell) -> str:
    if cell is None:
        return ""
    if isinstance(cell, str):
        return unescape_cell(cell)
    if isinstance(cell, datetime):
        return cell.isoformat(sep=" ")
    if isinstance(cell, date):
        return cell.isoformat()
    if isinstance(cell, float):
        return repr(cell)
    return str(cell)


def cell_date(cell: Cell, *, line_number: int, what: str) -> date:
    if isinstance(cell, datetime):
        return cell.date()
    if isinstance(cell, date):
        return cell
    if isinstance(cell, int | float | Decimal) and not isinstance(cell, bool):
        # 20240315 typed as a number.
        return parse_date(cell_text(cell).removesuffix(".0"), line_number=line_number, what=what)
    return parse_date(cell_text(cell), line_number=line_number, what=what)


def cell_is_blank_amount(cell: Cell) -> bool:
    return cell is None or (isinstance(cell, str) and is_blank_amount(unescape_cell(cell)))


def cell_amount(cell: Cell, *, line_number: int, what: str) -> int:
    """Signed fen from a text or numeric cell; floats only where they are provably exact."""
    if isinstance(cell, bool | date):
        raise StatementError(line_number, f"{what}不是金额 {what} is not an amount", rule="amount")
    if isinstance(cell, int):
        return cell * FEN_PER_YUAN
    if isinstance(cell, Decimal):
        return parse_amount_fen(format(cell, "f"), line_number=line_number, what=what, grouping=False)
    if isinstance(cell, float):
        if not math.isfinite(cell) or abs(cell) >= MAX_EXACT_FLOAT_YUAN:
            raise StatementError(
                line_number, f"{what}数值过大，无法精确到分 {what} is too large to be exact", rule="amount"
            )
        return parse_amount_fen(repr(cell), line_number=line_number, what=what, grouping=False)
    return parse_amount_fen(cell_text(cell), line_number=line_number, what=what)


def cell_identifier(cell: Cell, *, line_number: int, what: str) -> str:
    """An account number or serial. A spreadsheet that stored one as a float may have rounded it: refused."""
    if isinstance(cell, float):
        if not (cell.is_integer() and abs(cell) < 10**15):
            raise StatementError(
                line_number,
                f"{what}被存为数字，可能已失去精度，请以文本导出 "
                f"{what} was stored as a number and may be rounded",
                rule="structure",
            )
        return str(int(cell))
    return cell_text(cell)


# --- header recognition ---

_UNIT_SUFFIX = re.compile(r"[(（][^)）]{0,8}[)）]$")


def normalize_header(text: str) -> str:
    """A header as compared: "借方发生额（元）" -> "借方发生额"; "* 交易日期 :" -> "交易日期"."""
    text = normalize_text(text).replace(" ", "").strip("*:：")
    return _UNIT_SUFFIX.sub("", text)


_NAME_TO_FIELD: dict[str, tuple[str, int]] = {
    name: (column.field, rank) for column in COLUMNS for rank, name in enumerate(column.names)
}


def match_header(texts: Sequence[str]) -> dict[str, list[int]] | None:
    """field -> column indexes when ``texts`` is the table's header row, else None."""
    best: dict[str, tuple[int, int]] = {}
    joined: dict[str, list[int]] = {}
    for index, text in enumerate(texts):
        known = _NAME_TO_FIELD.get(normalize_header(text))
        if known is None:
            continue
        field, rank = known
        if field in JOINED_FIELDS:
            joined.setdefault(field, []).append(index)
        elif field not in best or rank < best[field][0]:
            best[field] = (rank, index)
    mapping = {field: [index] for field, (_, index) in best.items()} | joined
    has_money = ("debit" in mapping and "credit" in mapping) or "amount" in mapping
    if "booked_on" in mapping and has_money and len(mapping) >= 3:
        return mapping
    return None


# A known key counts only at the start of a label ("开户账号：" is not "账号：").
_KNOWN_KEY = re.compile(
    r"(?:^|(?<=\s))(?P<key>"
    + "|".join(sorted((re.escape(k) for ks in HEADER_KEYS.values() for k in ks), key=len, reverse=True))
    + r")\s*[:：]"
)
# Any other "标签：" ends the value before it ("账号：0200… 开户行：工商银行").
_ANY_LABEL = re.compile(r"(?:^|(?<=\s))[\u4e00-\u9fffA-Za-z/]{2,10}\s*[:：]")
_KEY_TO_FIELD = {key: field for field, keys in HEADER_KEYS.items() for key in keys}


def read_key_values(texts: Sequence[str]) -> list[tuple[str, str]]:
    """[(field, value)] found in a header or trailer row."""
    found: list[tuple[str, str]] = []
    for index, text in enumerate(texts):
        if not text:
            continue
        bare = normalize_header(text)
        labels = sorted(
            {m.start(): m for m in list(_KNOWN_KEY.finditer(text)) + list(_ANY_LABEL.finditer(text))}.items()
        )
        if not labels and bare in _KEY_TO_FIELD:
            # The key alone in its cell; the value is the next non-empty cell.
            value = next((t for t in texts[index + 1 :] if t), "")
            found.append((_KEY_TO_FIELD[bare], value))
            continue
        for position, (start, _label) in enumerate(labels):
            known = _KNOWN_KEY.match(text, start)
            if known is None:
                continue
            end = labels[position + 1][0] if position + 1 < len(labels) else len(text)
            value = text[known.end() : end].strip()
            if not value and position + 1 == len(labels):
                value = next((t for t in texts[index + 1 :] if t), "")
            found.append((_KEY_TO_FIELD[known["key"]], value))
    return found


# --- reading ---


@dataclass
class _Stated:
    value: str
    line_number: int


def _row_has(texts: Sequence[str], words: Sequence[str]) -> bool:
    return any(normalize_header(text).startswith(tuple(words)) for text in texts if text)


def _cell(cells: Sequence[Cell], mapping: dict[str, list[int]], field: str) -> Cell:
    indexes = mapping.get(field)
    if not indexes or indexes[0] >= len(cells):
        return None
    return cells[indexes[0]]


def read_table(rows: Iterable[tuple[int, Sequence[Cell]]]) -> Statement:
    """Rows (1-based line number, cells) of a bank table -> a checked Statement, or StatementError.

    Before the header row, rows are read for "key：value" pairs. In the table each row is a booking, an
    opening-balance row (期初余额, no amounts), a closing-balance row (期末余额), the 合计 footer (its totals
    are checked), or the first trailer row ("制表：…" with no amounts), which ends the table. A row with
    amounts and a bad date is an error, never skipped.
    """
    stated: dict[str, _Stated] = {}
    mapping: dict[str, list[int]] | None = None
    in_table = False
    lines: list[_Row] = []
    footer: _Footer | None = None
    opening_row: tuple[int, int] | None = None
    closing_row: tuple[int, int] | None = None
    table_accounts: dict[str, int] = {}
    last_line = 0

    def remember(pairs: list[tuple[str, str]], line_number: int) -> None:
        for field, value in pairs:
            if field in stated and stated[field].value != value:
                raise StatementError(
                    line_number,
                    f"表头信息「{field}」前后不一致：{stated[field].value} 与 {value} "
                    f"the file states {field} twice, differently",
                    rule="structure",
                )
            stated[field] = _Stated(value, line_number)

    for line_number, cells in rows:
        last_line = line_number
        texts = [cell_text(cell) for cell in cells]
        if not any(texts):
            continue
        if mapping is None:
            mapping = match_header(texts)
            if mapping is None:
                remember(read_key_values(texts), line_number)
            else:
                in_table = True
            continue
        booked_cell = _cell(cells, mapping, "booked_on")
        has_date = isinstance(booked_cell, date) or looks_like_date(cell_text(booked_cell))
        no_money = all(cell_is_blank_amount(_cell(cells, mapping, f)) for f in ("debit", "credit", "amount"))
        if not in_table:
            if has_date and not no_money:
                raise StatementError(
                    line_number,
                    "合计行或期末余额之后还有明细 a booking after the table ended",
                    rule="structure",
                )
            remember(read_key_values(texts), line_number)
            continue
        if no_money and _row_has(texts, OPENING_WORDS):
            if lines:
                raise StatementError(line_number, "期初余额行出现在明细之后 an opening row after the lines")
            opening_row = (line_number, _balance_of(_cell(cells, mapping, "balance"), line_number))
            continue
        if no_money and _row_has(texts, CLOSING_WORDS):
            closing_row = (line_number, _balance_of(_cell(cells, mapping, "balance"), line_number))
            in_table = False
            continue
        if not has_date and _row_has(texts, FOOTER_WORDS):
            counts = [m for m in (_COUNT.search(normalize_text(t)) for t in texts) if m]
            footer = _Footer(
                line_number,
                _total_of(_cell(cells, mapping, "debit"), line_number),
                _total_of(_cell(cells, mapping, "credit"), line_number),
                int(counts[0][1]) if counts else None,
            )
            in_table = False
            continue
        if not has_date and no_money and cell_is_blank_amount(_cell(cells, mapping, "balance")):
            # A trailer row ("制表日期：…") in the first column: the table has ended.
            remember(read_key_values(texts), line_number)
            in_table = False
            continue
        lines.append(_read_row(cells, mapping, line_number))
        account = cell_identifier(_cell(cells, mapping, "account"), line_number=line_number, what="本方账号")
        if account:
            table_accounts.setdefault(account, line_number)

    if mapping is None:
        raise StatementError(
            0,
            "找不到明细表头（需要交易日期和借贷方发生额等列）no table header: need a booking date column and "
            "debit/credit or amount columns",
            rule="structure",
        )
    return _assemble(stated, lines, footer, opening_row, closing_row, table_accounts, last_line)


_COUNT = re.compile(r"(\d+)\s*笔")


@dataclass(frozen=True)
class _Footer:
    """The 合计 row: totals per column and, when it says "共N笔", the number of lines."""

    line_number: int
    debit_fen: int | None
    credit_fen: int | None
    count: int | None


@dataclass
class _Row:
    line_number: int
    serial: str
    booked_on: date
    value_on: date
    amount_fen: int
    balance_after_fen: int | None
    counterparty_name: str
    counterparty_account: str
    reference: str
    summary: str
    debit_fen: int
    credit_fen: int


def _balance_of(cell: Cell, line_number: int) -> int:
    if cell_is_blank_amount(cell):
        raise StatementError(line_number, "余额行没有余额 the balance row has no balance", rule="amount")
    return cell_amount(cell, line_number=line_number, what="余额")


def _total_of(cell: Cell, line_number: int) -> int | None:
    if cell_is_blank_amount(cell):
        return None
    return cell_amount(cell, line_number=line_number, what="合计")


def _read_row(cells: Sequence[Cell], mapping: dict[str, list[int]], line_number: int) -> _Row:
    def at(field: str) -> Cell:
        return _cell(cells, mapping, field)

    booked_cell = at("booked_on")
    if cell_text(booked_cell) == "":
        raise StatementError(line_number, "缺少交易日期 the line has no booking date", rule="date")
    booked_on = cell_date(booked_cell, line_number=line_number, what="交易日期")
    value_cell = at("value_on")
    value_on = (
        booked_on
        if cell_text(value_cell) == ""
        else cell_date(value_cell, line_number=line_number, what="起息日")
    )
    debit_fen = credit_fen = 0
    if "debit" in mapping and "credit" in mapping:
        debit_cell, credit_cell = at("debit"), at("credit")
        if not cell_is_blank_amount(debit_cell):
            debit_fen = cell_amount(debit_cell, line_number=line_number, what="借方发生额")
        if not cell_is_blank_amount(credit_cell):
            credit_fen = cell_amount(credit_cell, line_number=line_number, what="贷方发生额")
        if debit_fen and credit_fen:
            raise StatementError(
                line_number, "借方和贷方同时有发生额 both debit and credit amounts on one line", rule="amount"
            )
        if cell_is_blank_amount(debit_cell) and cell_is_blank_amount(credit_cell):
            raise StatementError(line_number, "借贷方发生额均为空 no debit or credit amount", rule="amount")
        amount_fen = credit_fen - debit_fen
    else:
        amount_cell = at("amount")
        if cell_is_blank_amount(amount_cell):
            raise StatementError(line_number, "交易金额为空 no amount", rule="amount")
        amount_fen = cell_amount(amount_cell, line_number=line_number, what="交易金额")
        if "direction" in mapping:
            mark = normalize_text(cell_text(at("direction"))).upper()
            if amount_fen < 0 or mark not in DEBIT_MARKS | CREDIT_MARKS:
                raise StatementError(
                    line_number,
                    f"借贷标志「{mark}」或金额符号无法识别 "
                    f"unknown debit/credit mark, or a signed amount beside a mark",
                    rule="amount",
                )
            if mark in DEBIT_MARKS:
                amount_fen = -amount_fen
        if amount_fen > 0:
            credit_fen = amount_fen
        else:
            debit_fen = -amount_fen
    balance_cell = at("balance")
    balance = (
        None
        if cell_is_blank_amount(balance_cell)
        else cell_amount(balance_cell, line_number=line_number, what="余额")
    )
    summary = " ".join(
        t for t in (cell_text(cells[i]) for i in mapping.get("summary", []) if i < len(cells)) if t
    )
    # The bank's reference column when it has one and filled it, else our reference quoted in the text.
    reference = cell_text(at("reference")) or find_reference(summary)
    return _Row(
        line_number=line_number,
        serial=cell_identifier(at("serial"), line_number=line_number, what="流水号"),
        booked_on=booked_on,
        value_on=value_on,
        amount_fen=amount_fen,
        balance_after_fen=balance,
        counterparty_name=cell_text(at("counterparty_name")),
        counterparty_account=cell_identifier(
            at("counterparty_account"), line_number=line_number, what="对方账号"
        ),
        reference=reference,
        summary=summary,
        debit_fen=debit_fen,
        credit_fen=credit_fen,
    )


def _assemble(
    stated: dict[str, _Stated],
    rows: list[_Row],
    footer: _Footer | None,
    opening_row: tuple[int, int] | None,
    closing_row: tuple[int, int] | None,
    table_accounts: dict[str, int],
    last_line: int,
) -> Statement:
    # Account: the header's, or the one the table repeats on every row; both must agree.
    accounts = dict(table_accounts)
    if "account" in stated:
        accounts.setdefault(stated["account"].value, stated["account"].line_number)
    if len(accounts) > 1:
        _, (other, line_number) = sorted(accounts.items(), key=lambda kv: kv[1])[:2]
        raise StatementError(
            line_number, f"本方账号「{other}」与前文不一致 a second account number", rule="structure"
        )
    if not accounts:
        raise StatementError(0, "文件中没有本方账号 the file names no account number", rule="structure")
    account_number = next(iter(accounts))

    currency = DEFAULT_CURRENCY
    if "currency" in stated:
        raw = stated["currency"].value.strip()
        currency = check_currency(CURRENCY_NAMES.get(raw, raw), line_number=stated["currency"].line_number)

    if footer is not None:
        if footer.count is not None and footer.count != len(rows):
            raise StatementError(
                footer.line_number,
                f"合计笔数 {footer.count} 与明细笔数 {len(rows)} 不符 "
                f"the footer counts {footer.count} lines, the table has {len(rows)}",
                rule="totals",
            )
        for label, side, stated_total, actual in (
            ("借方", "debit", footer.debit_fen, sum(r.debit_fen for r in rows)),
            ("贷方", "credit", footer.credit_fen, sum(r.credit_fen for r in rows)),
        ):
            if stated_total is not None and stated_total != actual:
                raise StatementError(
                    footer.line_number,
                    f"{label}合计 {format_yuan(stated_total, grouping=True)} 与明细之和 "
                    f"{format_yuan(actual, grouping=True)} 不符 the {side} total disagrees with the lines",
                    rule="totals",
                    stated_fen=stated_total,
                    expected_fen=actual,
                )

    opening: int | None = None
    if "opening" in stated:
        opening = parse_amount_fen(
            stated["opening"].value, line_number=stated["opening"].line_number, what="期初余额"
        )
    if opening_row is not None:
        if opening is not None and opening != opening_row[1]:
            raise StatementError(
                opening_row[0], "期初余额前后不一致 two different opening balances", rule="balance"
            )
        opening = opening_row[1]
    if opening is None and rows and rows[0].balance_after_fen is not None:
        opening = rows[0].balance_after_fen - rows[0].amount_fen
    if opening is None:
        raise StatementError(
            rows[0].line_number if rows else 0,
            "无法确定期初余额（没有期初余额，首笔也没有余额）no opening balance stated or derivable",
            rule="balance",
        )

    closing: int | None = None
    closing_line = last_line
    if "closing" in stated:
        closing_line = stated["closing"].line_number
        closing = parse_amount_fen(stated["closing"].value, line_number=closing_line, what="期末余额")
    if closing_row is not None:
        if closing is not None and closing != closing_row[1]:
            raise StatementError(
                closing_row[0], "期末余额前后不一致 two different closing balances", rule="balance"
            )
        closing, closing_line = closing_row[1], closing_row[0]
    if closing is None and rows and rows[-1].balance_after_fen is not None:
        closing, closing_line = rows[-1].balance_after_fen, rows[-1].line_number
    if closing is None:
        raise StatementError(
            last_line, "无法确定期末余额 no closing balance stated or derivable", rule="balance"
        )

    if "period" in stated:
        period_start, period_end = parse_period(
            stated["period"].value, line_number=stated["period"].line_number
        )
    elif rows:
        period_start = min(r.booked_on for r in rows)
        period_end = max(r.booked_on for r in rows)
    else:
        raise StatementError(0, "没有起止日期也没有明细 no period and no lines", rule="period")

    statement_id = (
        stated["statement_id"].value
        if "statement_id" in stated
        else (f"{account_number}-{period_start:%Y%m%d}-{period_end:%Y%m%d}")
    )
    sequence = None
    if "sequence" in stated:
        text = normalize_text(stated["sequence"].value)
        if not text.isdigit():
            raise StatementError(stated["sequence"].line_number, f"对账单序号「{text}」不是数字 not a number")
        sequence = int(text)

    lines = tuple(
        StatementLine(
            line_number=r.line_number,
            serial=r.serial or f"{statement_id}#{r.line_number}",
            booked_on=r.booked_on,
            value_on=r.value_on,
            amount_fen=r.amount_fen,
            balance_after_fen=r.balance_after_fen,
            counterparty_name=r.counterparty_name,
            counterparty_account=r.counterparty_account,
            reference=r.reference,
            summary=r.summary,
        )
        for r in rows
    )
    statement = Statement(
        account_number=account_number,
        currency=currency,
        statement_id=statement_id,
        sequence=sequence,
        period_start=period_start,
        period_end=period_end,
        opening_balance_fen=opening,
        closing_balance_fen=closing,
        lines=lines,
    )
    return check_statement(statement, closing_line=closing_line)


# --- writing ---

TITLE = "账户明细对账单"
WRITTEN_COLUMNS = (
    "交易日期",
    "起息日",
    "流水号",
    "借方发生额",
    "贷方发生额",
    "余额",
    "对方户名",
    "对方账号",
    "业务参考号",
    "摘要",
)


def table_layout(statement: Statement, *, money: type[str] | type[Decimal]) -> list[list[Cell]]:
    """The rows a writer emits, header rows to trailer. ``money=str`` gives "1,234.56" text (CSV);
    ``money=Decimal`` gives exact numbers for spreadsheet cells; dates stay ``date`` for the writer to
    render. Text is passed through ``escape_cell``."""
    check_statement(statement, closing_line=0)

    def amount(fen: int) -> Cell:
        if money is str:
            return format_yuan(fen, grouping=True)
        return Decimal(format_yuan(fen))

    header_values = [
        ("账号", statement.account_number),
        ("币种", statement.currency),
        ("对账单编号", statement.statement_id),
        ("对账单序号", None if statement.sequence is None else str(statement.sequence)),
        ("起止日期", f"{statement.period_start.isoformat()} 至 {statement.period_end.isoformat()}"),
        ("期初余额", format_yuan(statement.opening_balance_fen, grouping=True)),
    ]
    rows: list[list[Cell]] = [[TITLE]]
    for key, value in header_values:
        if value is None:
            continue
        cell = f"{key}：{value}"
        if read_key_values([cell]) != [(_KEY_TO_FIELD[key], value)]:
            raise StatementError(
                0, f"{key}「{value}」无法写入表头 cannot be written in a header row", rule="unwritable"
            )
        rows.append([cell])
    rows.append([])
    rows.append(list(WRITTEN_COLUMNS))
    for line in statement.lines:
        debit: Cell = amount(-line.amount_fen) if line.amount_fen < 0 else ""
        credit: Cell = amount(line.amount_fen) if line.amount_fen > 0 else ""
        balance: Cell = "" if line.balance_after_fen is None else amount(line.balance_after_fen)
        rows.append(
            [
                line.booked_on,
                line.value_on,
                escape_cell(line.serial),
                debit,
                credit,
                balance,
                escape_cell(line.counterparty_name),
                escape_cell(line.counterparty_account),
                escape_cell(line.reference),
                escape_cell(line.summary),
            ]
        )
    rows.append(
        [
            f"合计：{len(statement.lines)}笔",
            "",
            "",
            amount(statement.debits_fen),
            amount(statement.credits_fen),
            "",
            "",
            "",
            "",
            "",
        ]
    )
    rows.append([f"期末余额：{format_yuan(statement.closing_balance_fen, grouping=True)}"])
    return rows

"""The statement model every bank format is read into, and the checks every parser runs before returning.

A ``Statement`` is one bank statement of one account: its period, opening and closing balances, and its lines
in file order. Money is integer fen, signed from the account holder's side: money in (贷方, credit) is
positive, money out (借方, debit) negative. Amounts are read from text exactly (no float ever touches them) by
``parse_amount_fen``; dates by ``parse_date``; bytes become text by ``decode_text``.

``check_statement`` is the gate every parser passes its result through: opening + Σ movements = closing, each
running balance the file gives follows from the previous one, serials are unique, lines fall in the period.
``check_continuity`` does the same between two consecutive statements of one account.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation

from moneyed import CurrencyDoesNotExist, get_currency

from ledger.money import MAX_MINOR_UNITS, minor_units_per_unit
from reconciliation.formats.errors import StatementError

FEN_PER_YUAN = 100

# Format names accepted by ``parse_statement(format=...)``.
CSV = "csv"
XLSX = "xlsx"
CAMT053 = "camt053"
MT940 = "mt940"
FORMATS = (CSV, XLSX, CAMT053, MT940)


@dataclass(frozen=True)
class StatementLine:
    """One line of a statement (对账单明细): one booking on the account.

    ``line_number`` says where the line came from (for messages) and takes no part in equality: the same
    booking read from a CSV and from its camt.053 twin is the same line.
    """

    line_number: int = field(compare=False)
    serial: str  # 流水号 / camt AcctSvcrRef / MT940 bank reference
    booked_on: date  # 记账日期
    value_on: date  # 起息日; equals booked_on when the format has none
    amount_fen: int  # credit (money in) > 0, debit (money out) < 0; never 0
    balance_after_fen: int | None  # 余额 after this line, when the file gives it
    counterparty_name: str  # 对方户名
    counterparty_account: str  # 对方账号
    reference: str  # our reference when present: a payout reference (PO…), a contract number (HT…)
    summary: str  # 摘要 / 用途 / 附言 / remittance information


@dataclass(frozen=True)
class Statement:
    """One statement (对账单) of one account for one period."""

    account_number: str
    currency: str
    statement_id: str  # camt Stmt/Id, MT940 :20:, the CSV's 对账单编号, or derived from account and period
    sequence: int | None  # camt ElctrncSeqNb, MT940 :28C: statement number, CSV 对账单序号
    period_start: date
    period_end: date
    opening_balance_fen: int
    closing_balance_fen: int
    lines: tuple[StatementLine, ...]

    @property
    def credits_fen(self) -> int:
        return sum(line.amount_fen for line in self.lines if line.amount_fen > 0)

    @property
    def debits_fen(self) -> int:
        """The sum of money out, as a positive number."""
        return -sum(line.amount_fen for line in self.lines if line.amount_fen < 0)


# --- money ---

# Digits with well-formed thousands groups ("1,234,567") or none ("1234567"), then at most two decimals.
_GROUPED = re.compile(r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d{1,2})?")
_PLAIN = re.compile(r"\d+(?:\.\d{1,2})?")
# What banks leave in an empty amount cell.
BLANK_MARKS = frozenset({"", "-", "--", "—", "——", "/"})
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2012": "-", "\u2013": "-"})


def normalize_text(text: str) -> str:
    """Full-width digits, letters and punctuation to ASCII (NFKC), whitespace trimmed; for amounts, dates
    and header names, never for names or free text."""
    return unicodedata.normalize("NFKC", text).translate(_MINUS_SIGNS).strip()


def parse_amount_fen(
    text: str,
    *,
    line_number: int,
    what: str,
    signed: bool = True,
    grouping: bool = True,
    decimal_comma: bool = False,
) -> int:
    """An exact amount of yuan as text -> signed integer fen.

    Accepts "1234.56", "1,234.56", full-width "１，２３４．５６", a leading "¥", a trailing "元", a sign
    ("-1.00", "+1.00") and accounting parentheses ("(1,234.56)" = -1234.56). Refuses more than two
    decimals ("12.345"), malformed groups ("1,23.45"), exponents, NaN and anything else: a bank file that
    says something we do not understand is refused, not guessed at. ``decimal_comma`` reads SWIFT's
    "1234,56" instead.
    """
    original = text
    text = normalize_text(text).replace(" ", "")
    negative = False
    if signed and len(text) >= 2 and text[0] == "(" and text[-1] == ")":
        negative, text = True, text[1:-1]
    elif signed and text[:1] in ("-", "+"):
        negative, text = text[0] == "-", text[1:]
    if text[:1] == "¥":
        text = text[1:]
    if text[-1:] == "元":
        text = text[:-1]
    if decimal_comma:
        ok = re.fullmatch(r"\d+,\d{0,2}", text) is not None
        text = text.replace(",", ".").rstrip(".")
    else:
        ok = (_GROUPED if grouping else _PLAIN).fullmatch(text) is not None
        text = text.replace(",", "")
    if not ok:
        raise StatementError(
            line_number,
            f"{what}「{original}」不是精确到分的金额 {original!r} is not an exact amount in fen",
            rule="amount",
        )
    try:
        scaled = Decimal(text) * FEN_PER_YUAN
    except InvalidOperation as exc:  # unreachable after the pattern check; kept so no path returns junk
        raise StatementError(
            line_number, f"{what}「{original}」无法解析 cannot be read", rule="amount"
        ) from exc
    fen = int(scaled)
    if fen != scaled or fen >= MAX_MINOR_UNITS:
        raise StatementError(line_number, f"{what}「{original}」超出范围 out of range", rule="amount")
    return -fen if negative else fen


def is_blank_amount(text: str) -> bool:
    return normalize_text(text) in BLANK_MARKS


def format_yuan(fen: int, *, grouping: bool = False, decimal_comma: bool = False) -> str:
    """-123456 -> "-1234.56" (or "-1,234.56" with grouping, "1234,56" unsigned SWIFT style with
    decimal_comma; the caller writes the sign its own way there)."""
    sign = "-" if fen < 0 else ""
    yuan, cents = divmod(abs(fen), FEN_PER_YUAN)
    whole = f"{yuan:,}" if grouping else str(yuan)
    if decimal_comma:
        return f"{sign}{whole},{cents:02d}"
    return f"{sign}{whole}.{cents:02d}"


def check_currency(code: str, *, line_number: int) -> str:
    """An ISO 4217 code whose minor unit is 1/100 (fen, cent); anything else cannot be read as fen."""
    code = normalize_text(code).upper()
    try:
        currency = get_currency(code)
        per_unit = minor_units_per_unit(currency)
    except CurrencyDoesNotExist as exc:
        raise StatementError(line_number, f"未知币种「{code}」unknown currency", rule="currency") from exc
    if per_unit != FEN_PER_YUAN or not re.fullmatch(r"[A-Z]{3}", code):
        raise StatementError(
            line_number,
            f"币种「{code}」的最小单位不是 1/100 currency {code} does not have 100 minor units",
            rule="currency",
        )
    return code


# --- dates ---

_DATE = re.compile(
    r"(?P<y>\d{4})(?:(?P<sep>[-/.])(?P<m>\d{1,2})(?P=sep)(?P<d>\d{1,2})|年(?P<cm>\d{1,2})月(?P<cd>\d{1,2})日?"
    r"|(?P<m8>\d{2})(?P<d8>\d{2}))"
)
# A time after the date is allowed (some exports put 交易时间 in the date cell) and ignored.
_TIME_TAIL = re.compile(r"(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?")


def parse_date(text: str, *, line_number: int, what: str) -> date:
    """ "2024-03-15", "2024/3/15", "2024.03.15", "20240315", "2024年3月15日", each optionally followed by a
    time of day."""
    normalized = normalize_text(text)
    match = _DATE.match(normalized)
    if match is None or _TIME_TAIL.fullmatch(normalized[match.end() :]) is None:
        raise StatementError(line_number, f"{what}「{text}」不是日期 {text!r} is not a date", rule="date")
    year = int(match["y"])
    month = int(match["m"] or match["cm"] or match["m8"])
    day = int(match["d"] or match["cd"] or match["d8"])
    try:
        return date(year, month, day)
    except ValueError as exc:
        raise StatementError(
            line_number, f"{what}「{text}」不是有效日期 is not a valid date", rule="date"
        ) from exc


def looks_like_date(text: str) -> bool:
    try:
        parse_date(text, line_number=0, what="")
    except StatementError:
        return False
    return True


def parse_period(text: str, *, line_number: int) -> tuple[date, date]:
    """ "2024-03-01 至 2024-03-31", "2024/03/01~2024/03/31", "20240301-20240331": exactly two dates."""
    found = [
        m.group(0)
        for m in re.finditer(
            r"\d{4}(?:[-/.]\d{1,2}[-/.]\d{1,2}|年\d{1,2}月\d{1,2}日?|\d{4})", normalize_text(text)
        )
    ]
    if len(found) != 2:
        raise StatementError(
            line_number, f"起止日期「{text}」应含两个日期 the period needs two dates", rule="date"
        )
    start = parse_date(found[0], line_number=line_number, what="起始日期")
    end = parse_date(found[1], line_number=line_number, what="截止日期")
    return start, end


# --- text ---

# Tried strictly in this order: a BOM says what it is; valid UTF-8 is UTF-8 (GB18030 would also accept most of
# it as nonsense); what is left should be GB18030, the superset of GBK and GB2312 that Chinese banks export.
ENCODINGS = ("utf-8", "gb18030")


def decode_text(data: bytes) -> tuple[str, str]:
    """The text of a statement file and the encoding it was in, or a refusal naming the first bad line."""
    if data.startswith(b"\xef\xbb\xbf"):
        candidates: tuple[str, ...] = ("utf-8-sig",)
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        candidates = ("utf-16",)
    else:
        candidates = ENCODINGS
    last_error: UnicodeDecodeError | None = None
    for encoding in candidates:
        try:
            return data.decode(encoding), encoding
        except UnicodeDecodeError as exc:
            last_error = exc
    assert last_error is not None
    # The first undecodable byte under the last encoding tried is where a person should look.
    line = data[: last_error.start].count(b"\n") + 1
    raise StatementError(
        line,
        f"文件编码无法识别（已尝试 {', '.join(candidates)}）"
        f"cannot decode the file as {' or '.join(candidates)}",
        rule="encoding",
    )


# Our references, as custody writes them on payment instructions and as payers quote them: a contract number
# (custody.services.contracts: "HT" + signing date + 8-digit id) and a payout instruction reference ("PO…").
# Used only where a format has no field of its own for the reference (a CSV without a 业务参考号 column,
# a free-text MT940 :86:).
REFERENCE_PATTERNS = (
    re.compile(r"(?<![0-9A-Za-z])HT\d{16}(?![0-9A-Za-z])"),
    re.compile(r"(?<![0-9A-Za-z])PO[0-9A-Z]{6,38}(?![0-9A-Za-z])"),
)


def find_reference(text: str) -> str:
    """The first of our references quoted in free text, or ""."""
    for pattern in REFERENCE_PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(0)
    return ""


# --- checks ---


def check_statement(statement: Statement, *, closing_line: int) -> Statement:
    """Refuse a statement that does not add up; return it unchanged when it does.

    ``closing_line`` is where the file states its closing balance, for the message when Σ does not reach it.
    """
    check_currency(statement.currency, line_number=0)
    if not statement.account_number:
        raise StatementError(0, "对账单没有账号 the statement names no account", rule="structure")
    if statement.period_end < statement.period_start:
        raise StatementError(
            0,
            f"对账期间 {statement.period_start} 晚于 {statement.period_end} the period ends before it starts",
            rule="period",
        )
    balance = statement.opening_balance_fen
    serials: dict[str, int] = {}
    for line in statement.lines:
        if not line.serial:
            raise StatementError(line.line_number, "流水号为空 the line has no serial", rule="structure")
        if line.amount_fen == 0:
            raise StatementError(line.line_number, "发生额为零 the line moves no money", rule="amount")
        if not statement.period_start <= line.booked_on <= statement.period_end:
            raise StatementError(
                line.line_number,
                f"记账日期 {line.booked_on} 不在对账期间 {statement.period_start}–{statement.period_end} 内 "
                f"booked outside the statement period",
                rule="period",
            )
        if line.serial in serials:
            raise StatementError(
                line.line_number,
                f"流水号「{line.serial}」与第{serials[line.serial]}行重复 "
                f"serial {line.serial!r} repeats line {serials[line.serial]}",
                rule="duplicate_serial",
            )
        serials[line.serial] = line.line_number
        balance += line.amount_fen
        if abs(balance) >= MAX_MINOR_UNITS:
            raise StatementError(line.line_number, "余额超出范围 balance out of range", rule="amount")
        if line.balance_after_fen is not None and line.balance_after_fen != balance:
            raise StatementError(
                line.line_number,
                f"余额不符：文件为 {format_yuan(line.balance_after_fen, grouping=True)}，"
                f"按上一余额加本笔发生额应为 {format_yuan(balance, grouping=True)} "
                f"balance mismatch: the file says {format_yuan(line.balance_after_fen)}, "
                f"the previous balance plus this movement is {format_yuan(balance)}",
                rule="balance",
                stated_fen=line.balance_after_fen,
                expected_fen=balance,
            )
    if balance != statement.closing_balance_fen:
        raise StatementError(
            closing_line,
            f"期初余额 {format_yuan(statement.opening_balance_fen, grouping=True)} 加发生额合计 "
            f"{format_yuan(balance - statement.opening_balance_fen, grouping=True)} 不等于期末余额 "
            f"{format_yuan(statement.closing_balance_fen, grouping=True)} "
            f"opening + movements = {format_yuan(balance)} but the closing balance is "
            f"{format_yuan(statement.closing_balance_fen)}",
            rule="balance",
            stated_fen=statement.closing_balance_fen,
            expected_fen=balance,
        )
    return statement


def check_continuity(previous: Statement, current: Statement) -> None:
    """Refuse ``current`` unless it follows ``previous`` on the same account with nothing missing between.

    Same account and currency; not the same statement twice; the current period does not start before the
    previous one ended (daily MT940/camt statements may start on the day the previous one closed); the
    previous closing balance is the current opening balance; and when both carry sequence numbers, the
    current one is the next (or 1 again in a new year, when banks restart the count).
    """

    def refuse(reason: str) -> StatementError:
        return StatementError(0, reason, rule="continuity")

    if (previous.account_number, previous.currency) != (current.account_number, current.currency):
        raise refuse(
            f"账号或币种不同：{previous.account_number} {previous.currency} 与 "
            f"{current.account_number} {current.currency} different account or currency"
        )
    if previous.statement_id == current.statement_id:
        raise refuse(f"同一对账单「{current.statement_id}」重复导入 the same statement twice")
    if current.period_start < previous.period_end:
        raise refuse(
            f"对账期间倒退或重叠：上一份截至 {previous.period_end}，本份始于 {current.period_start} "
            f"the period overlaps the previous statement's"
        )
    if previous.sequence is not None and current.sequence is not None:
        follows = current.sequence == previous.sequence + 1
        restarts = current.sequence == 1 and current.period_start.year > previous.period_end.year
        if not (follows or restarts):
            raise refuse(
                f"对账单序号不连续：上一份 {previous.sequence}，本份 {current.sequence} "
                f"sequence {current.sequence} does not follow {previous.sequence}"
            )
    if previous.closing_balance_fen != current.opening_balance_fen:
        raise refuse(
            f"期初余额 {format_yuan(current.opening_balance_fen, grouping=True)} "
            f"不等于上一份对账单的期末余额 {format_yuan(previous.closing_balance_fen, grouping=True)} "
            f"the opening balance is not the previous closing balance"
        )


def two_digit_year(yy: int) -> int:
    """SWIFT's YYMMDD: 00–79 is 2000–2079, 80–99 is 1980–1999."""
    return 2000 + yy if yy < 80 else 1900 + yy


def nearest_year(month: int, day: int, *, near: date, line_number: int) -> date:
    """MMDD without a year, placed in the year that puts it closest to ``near`` (an MT940 entry date next to
    its value date, across a year end)."""
    candidates = []
    for year in (near.year - 1, near.year, near.year + 1):
        try:
            candidates.append(date(year, month, day))
        except ValueError:
            continue
    if not candidates:
        raise StatementError(
            line_number, f"记账日期 {month:02d}{day:02d} 不是有效日期 not a valid date", rule="date"
        )
    return min(candidates, key=lambda d: (abs((d - near).days), d))

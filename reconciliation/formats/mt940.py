"""SWIFT MT940 (Customer Statement Message), read and written without a third-party library.

The format is a list of tagged fields, one statement per message:

- ``:20:`` transaction reference (our statement_id); ``:25:`` account (``BIC/account`` is cut to the account)
- ``:28C:`` statement number[/page] (our sequence; 0 means none)
- ``:60F:``/``:60M:`` opening balance: C or D, YYMMDD, currency, amount with a decimal comma
- ``:61:`` one line: value date YYMMDD, entry date MMDD (optional), C/D/RC/RD, funds code (optional), amount,
  type (NTRF, NCHG, ...), customer reference (NONREF if none), ``//`` bank reference, and optionally
  supplementary details on the next line
- ``:86:`` free text about the ``:61:`` above it (up to 6 x 65 characters, wrapped anywhere)
- ``:62F:``/``:62M:`` closing balance; ``:64:``/``:65:`` (available balances) and a closing ``:86:``
  are ignored

A SWIFT envelope (``{1:...}{2:...}{4:`` ... ``-}``) is accepted and stripped. Text is UTF-8 or GB18030:
Chinese banks put Chinese into :86: although SWIFT's character set has none.

Signs: C and RD (reversal of a debit) are money in, D and RC (reversal of a credit) money out.

:86: is free text, so who the counterparty is and which reference is ours are found by heuristics, tried in
this order (``read_information``):

1. Keyword form, as ING and others structure it: ``/NAME/…/ACCT/…/EREF/…/REMI/…``: NAME (or ORDP/BENM)
   the counterparty, ACCT or IBAN its account, EREF the end-to-end reference (NOTPROVIDED means none), PREF
   a batch reference, REMI the remittance text (an ``USTD//`` prefix dropped). Other keywords are ignored.
2. German GVC subfields ``?20``…``?29`` (text), ``?31`` (account), ``?32``/``?33`` (name).
3. Anything else is the summary as it stands, with ``对方户名：…`` and ``对方账号：…`` picked out when a
   Chinese bank labels them.

The reference is the :61: customer reference unless NONREF, else EREF, else PREF, else our reference quoted
in the text (``base.REFERENCE_PATTERNS``). The serial is the :61: bank reference (after ``//``), else the
customer reference, else ``statement_id#line``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date

from reconciliation.formats.base import (
    Statement,
    StatementLine,
    check_currency,
    check_statement,
    decode_text,
    find_reference,
    format_yuan,
    nearest_year,
    parse_amount_fen,
    two_digit_year,
)
from reconciliation.formats.errors import StatementError

_TAG = re.compile(r"^:(?P<tag>\d{2}[A-Z]?):(?P<value>.*)$")
_BALANCE = re.compile(r"^(?P<mark>[CD])(?P<date>\d{6})(?P<currency>[A-Z]{3})(?P<amount>[\d,]+)$")
_LINE = re.compile(
    r"^(?P<value>\d{6})(?P<entry>\d{4})?(?P<mark>RC|RD|C|D)(?P<funds>[A-Z])?(?P<amount>\d[\d,]*)"
    r"(?P<type>[NSF][A-Z0-9]{3})(?P<customer>.*?)(?://(?P<bank>.*))?$"
)
NONREF = "NONREF"
NOT_PROVIDED = "NOTPROVIDED"
MAX_LINE = 65  # SWIFT x lines in :86:
MAX_AMOUNT_CHARS = 15  # 15d, the comma included
KEYWORDS = (
    "EREF",
    "PREF",
    "NAME",
    "ORDP",
    "BENM",
    "ACCT",
    "IBAN",
    "BIC",
    "REMI",
    "TRTP",
    "CSID",
    "MARF",
    "PURP",
)
_KEYWORD = re.compile(r"/(" + "|".join(KEYWORDS) + r")/")
_GVC = re.compile(r"^\d{3}\?")
_GVC_FIELD = re.compile(r"\?(\d{2})")
_CN_NAME = re.compile(r"对方户名[:：]\s*(?P<v>[^;；,，\s]+)")
_CN_ACCOUNT = re.compile(r"对方账号[:：]\s*(?P<v>[0-9A-Za-z-]+)")
_BIC_PREFIX = re.compile(r"^[A-Z]{6}[A-Z0-9]{2}(?:[A-Z0-9]{3})?/")


@dataclass
class _Field:
    tag: str
    line_number: int
    lines: list[str] = field(default_factory=list)

    @property
    def first(self) -> str:
        return self.lines[0]

    @property
    def joined(self) -> str:
        return "".join(self.lines)


@dataclass(frozen=True)
class Information:
    """What ``read_information`` finds in a :86: text."""

    counterparty_name: str
    counterparty_account: str
    reference: str  # EREF, else PREF, else ""
    summary: str


def read_information(text: str) -> Information:
    """The heuristics of the module docstring, in that order."""
    if text.startswith("/") and _KEYWORD.match(text):
        values: dict[str, str] = {}
        matches = list(_KEYWORD.finditer(text))
        for match, following in zip(matches, [*matches[1:], None], strict=True):
            end = following.start() if following else len(text)
            values.setdefault(match.group(1), text[match.end() : end])
        remittance = values.get("REMI", "")
        for prefix in ("USTD//", "/USTD//"):
            if remittance.startswith(prefix):
                remittance = remittance[len(prefix) :].removesuffix("/")
        end_to_end = values.get("EREF", "")
        return Information(
            counterparty_name=values.get("NAME") or values.get("ORDP") or values.get("BENM") or "",
            counterparty_account=values.get("ACCT") or values.get("IBAN") or "",
            reference=(end_to_end if end_to_end != NOT_PROVIDED else "") or values.get("PREF", ""),
            summary=remittance,
        )
    if _GVC.match(text):
        parts: dict[int, str] = {}
        pieces = _GVC_FIELD.split(text)
        for number, value in zip(pieces[1::2], pieces[2::2], strict=True):
            parts[int(number)] = parts.get(int(number), "") + value
        purpose = "".join(parts.get(n, "") for n in (*range(20, 30), *range(60, 64)))
        return Information(
            counterparty_name=parts.get(32, "") + parts.get(33, ""),
            counterparty_account=parts.get(31, ""),
            reference="",
            summary=purpose,
        )
    name = _CN_NAME.search(text)
    account = _CN_ACCOUNT.search(text)
    return Information(
        counterparty_name=name["v"] if name else "",
        counterparty_account=account["v"] if account else "",
        reference="",
        summary=text,
    )


def _ends_message(line: str) -> bool:
    return line.strip() == "-" or line.startswith("-}")


def _fields(text: str) -> tuple[list[_Field], int]:
    """The fields of the one message in ``text`` and the number of its last line."""
    lines = text.splitlines()
    start = 0
    for index, line in enumerate(lines):
        if "{4:" in line:
            start = index
            lines[index] = line[line.index("{4:") + 3 :]
            break
    fields: list[_Field] = []
    ended = False
    last_line = start
    for index in range(start, len(lines)):
        number = index + 1
        # Continuation lines are kept as they are: :86: text is wrapped anywhere, spaces included.
        line = lines[index]
        if not line.strip() and (not line or not fields):
            continue
        if ended:
            raise StatementError(
                number,
                "一个文件只能含一份对账单 one statement per file: text after the end mark",
                rule="structure",
            )
        if _ends_message(line):
            ended = True
            continue
        last_line = number
        match = _TAG.match(line)
        if match:
            fields.append(_Field(match["tag"], number, [match["value"]]))
        elif fields:
            fields[-1].lines.append(line)
        # Lines before the first tag (a file header some banks add) are not part of the message.
    return fields, last_line


def _balance(f: _Field, *, what: str) -> tuple[int, date, str]:
    match = _BALANCE.match(f.first.strip())
    if match is None:
        raise StatementError(f.line_number, f"{what} :{f.tag}: 格式错误 malformed balance", rule="structure")
    fen = parse_amount_fen(
        match["amount"], line_number=f.line_number, what=what, signed=False, decimal_comma=True
    )
    yymmdd = match["date"]
    try:
        on = date(two_digit_year(int(yymmdd[:2])), int(yymmdd[2:4]), int(yymmdd[4:]))
    except ValueError as exc:
        raise StatementError(f.line_number, f"{what}日期「{yymmdd}」无效 not a date", rule="date") from exc
    currency = check_currency(match["currency"], line_number=f.line_number)
    return (-fen if match["mark"] == "D" else fen), on, currency


def _statement_line(f: _Field, info: _Field | None, *, currency: str, statement_id: str) -> StatementLine:
    n = f.line_number
    match = _LINE.match(f.first.strip())
    if match is None:
        raise StatementError(n, f":61: 无法解析「{f.first}」malformed statement line", rule="structure")
    value = match["value"]
    try:
        value_on = date(two_digit_year(int(value[:2])), int(value[2:4]), int(value[4:]))
    except ValueError as exc:
        raise StatementError(n, f"起息日「{value}」无效 not a date", rule="date") from exc
    entry = match["entry"]
    booked_on = (
        nearest_year(int(entry[:2]), int(entry[2:]), near=value_on, line_number=n) if entry else value_on
    )
    if match["funds"] and currency[2] != match["funds"]:
        raise StatementError(
            n, f"资金代码 {match['funds']} 与币种 {currency} 不符 funds code mismatch", rule="currency"
        )
    fen = parse_amount_fen(match["amount"], line_number=n, what="金额", signed=False, decimal_comma=True)
    amount_fen = -fen if match["mark"] in ("D", "RC") else fen
    customer = match["customer"].strip()
    customer = "" if customer == NONREF else customer
    bank = (match["bank"] or "").strip()
    details = "".join(f.lines[1:]).strip()
    information = read_information(info.joined.strip() if info else details)
    summary = information.summary.strip()
    reference = customer or information.reference or find_reference(summary)
    return StatementLine(
        line_number=n,
        serial=bank or customer or f"{statement_id}#{n}",
        booked_on=booked_on,
        value_on=value_on,
        amount_fen=amount_fen,
        balance_after_fen=None,
        counterparty_name=information.counterparty_name.strip(),
        counterparty_account=information.counterparty_account.strip(),
        reference=reference,
        summary=summary,
    )


def parse_mt940(data: bytes) -> Statement:
    text, _encoding = decode_text(data)
    fields, last_line = _fields(text)
    by_tag: dict[str, list[_Field]] = {}
    for f in fields:
        by_tag.setdefault(f.tag, []).append(f)

    def one(*tags: str, what: str) -> _Field:
        found = [f for tag in tags for f in by_tag.get(tag, [])]
        if not found:
            raise StatementError(
                last_line,
                f"文件不完整：缺少 {what} :{tags[0]}: the file is incomplete: no {tags[0]}",
                rule="structure",
            )
        if len(found) > 1:
            raise StatementError(
                found[1].line_number,
                f"{what} :{tags[0]}: 重复，一个文件只能含一份对账单 one statement per file",
            )
        return found[0]

    reference = one("20", what="报文参考号")
    account = one("25", what="账号")
    number = one("28C", "28", what="对账单序号")
    opening = one("60F", "60M", what="期初余额")
    closing = one("62F", "62M", what="期末余额")
    opening_fen, opening_date, currency = _balance(opening, what="期初余额")
    closing_fen, closing_date, closing_currency = _balance(closing, what="期末余额")
    if closing_currency != currency:
        raise StatementError(
            closing.line_number, "期末余额币种与期初不同 closing balance currency", rule="currency"
        )

    statement_id = reference.first.strip()
    lines: list[StatementLine] = []
    for index, f in enumerate(fields):
        if f.tag != "61":
            continue
        if not opening.line_number < f.line_number < closing.line_number:
            raise StatementError(
                f.line_number, ":61: 不在 :60: 与 :62: 之间 statement line outside the balances"
            )
        following = fields[index + 1] if index + 1 < len(fields) else None
        info = following if following is not None and following.tag == "86" else None
        lines.append(_statement_line(f, info, currency=currency, statement_id=statement_id))

    account_text = account.joined.strip()
    account_number = _BIC_PREFIX.sub("", account_text)
    sequence_text = number.first.strip().split("/")[0]
    if not sequence_text.isdigit():
        raise StatementError(number.line_number, f"对账单序号「{sequence_text}」不是数字 not a number")
    statement = Statement(
        account_number=account_number,
        currency=currency,
        statement_id=statement_id,
        sequence=int(sequence_text) or None,
        period_start=opening_date,
        period_end=closing_date,
        opening_balance_fen=opening_fen,
        closing_balance_fen=closing_fen,
        lines=tuple(lines),
    )
    return check_statement(statement, closing_line=closing.line_number)


# --- writing ---


def _mt_amount(fen: int, *, line: int) -> str:
    text = format_yuan(abs(fen), decimal_comma=True)
    if len(text) > MAX_AMOUNT_CHARS:
        raise StatementError(line, "金额超过 MT940 的 15 位 amount too long for MT940", rule="unwritable")
    return text


def _mt_balance(tag: str, fen: int, on: date, currency: str) -> str:
    return f":{tag}:{'D' if fen < 0 else 'C'}{on:%y%m%d}{currency}{_mt_amount(fen, line=0)}"


def _wrap(text: str, *, line: int) -> list[str]:
    """Lines of at most 65 characters. A continuation line never starts with ":" or "-" (it could read as a
    new field or the end of the message) nor with a space (it could read as blank)."""
    lines: list[str] = []
    position = 0
    while position < len(text):
        size = min(MAX_LINE, len(text) - position)
        while size > 0 and position + size < len(text) and _bad_start(text[position + size]):
            size -= 1
        if size == 0:
            raise _refuse(line, "摘要（连续 65 个冒号、短横或空格）")
        lines.append(text[position : position + size])
        position += size
    return lines


def _bad_start(character: str) -> bool:
    return character in ":-" or character.isspace()


def _refuse(line: int, what: str) -> StatementError:
    return StatementError(line, f"{what}无法用 MT940 表示 cannot be written as MT940", rule="unwritable")


def write_mt940(statement: Statement) -> bytes:
    """One MT940 message, UTF-8, no SWIFT envelope. The reference goes into the :61: customer reference when
    it fits (16 characters, no "//"), else into :86: as /EREF/; counterparty and summary go into :86: in the
    keyword form (/NAME/ /ACCT/ /REMI/), which ``read_information`` reads back exactly."""
    check_statement(statement, closing_line=0)
    currency = statement.currency
    statement_id = statement.statement_id
    if not (0 < len(statement_id) <= 16) or statement_id.startswith("/") or "//" in statement_id:
        raise _refuse(0, "对账单编号（最长 16 位）")
    if len(statement.account_number) > 35 or "\n" in statement.account_number:
        raise _refuse(0, "账号")
    if statement.period_start.year < 1980 or statement.period_end.year > 2079:
        raise _refuse(0, "日期（YYMMDD 只能表示 1980–2079 年）")
    if statement.sequence is not None and statement.sequence > 99999:
        raise _refuse(0, "对账单序号（最多 5 位）")
    out = [
        f":20:{statement_id}",
        f":25:{statement.account_number}",
        f":28C:{statement.sequence or 0:05d}",
        _mt_balance("60F", statement.opening_balance_fen, statement.period_start, currency),
    ]
    for line in statement.lines:
        n = line.line_number
        if (
            nearest_year(line.booked_on.month, line.booked_on.day, near=line.value_on, line_number=n)
            != line.booked_on
        ):
            raise _refuse(n, "记账日期与起息日相隔过远")
        if not (0 < len(line.serial) <= 16) or "\n" in line.serial:
            raise _refuse(n, "流水号（最长 16 位）")
        fits = 0 < len(line.reference) <= 16 and "//" not in line.reference and line.reference != NONREF
        fits = fits and not line.reference.startswith("/") and line.reference == line.reference.strip()
        customer = line.reference if fits else NONREF
        mark = "D" if line.amount_fen < 0 else "C"
        out.append(
            f":61:{line.value_on:%y%m%d}{line.booked_on:%m%d}{mark}{_mt_amount(line.amount_fen, line=n)}NTRF"
            f"{customer}//{line.serial}"
        )
        parts = []
        if line.reference and not fits:
            parts.append(f"/EREF/{line.reference}")
        if line.counterparty_name:
            parts.append(f"/NAME/{line.counterparty_name}")
        if line.counterparty_account:
            parts.append(f"/ACCT/{line.counterparty_account}")
        if line.summary:
            parts.append(f"/REMI/{line.summary}")
        information = "".join(parts)
        if information:
            read_back = read_information(information)
            expected = Information(
                line.counterparty_name,
                line.counterparty_account,
                "" if fits else line.reference,
                line.summary,
            )
            if read_back != expected or "\n" in information or "\r" in information:
                raise _refuse(n, "对方户名、账号、参考号或摘要（含 /关键字/ 或换行）")
            wrapped = _wrap(information, line=n)
            out.append(f":86:{wrapped[0]}")
            out.extend(wrapped[1:])
    out.append(_mt_balance("62F", statement.closing_balance_fen, statement.period_end, currency))
    out.append("-")
    return ("\r\n".join(out) + "\r\n").encode("utf-8")

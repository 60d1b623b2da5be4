"""ISO 20022 camt.053 (BankToCustomerStatement), read safely and written to the published schema.

Reading. The XML is parsed by expat directly, never by a parser that would resolve anything: a DOCTYPE, an
entity declaration or an external entity reference is refused (``rule="unsafe_xml"``) before or while it is
read, so neither "billion laughs" nor external files can be reached. (defusedxml would do the same job; it is
not installed, and the standard library's expat with these handlers needs no new dependency.) Each element
keeps its line number, so a refusal names the line a person should open.

Versions: the namespace ``urn:iso:std:iso:20022:tech:xsd:camt.053.001.NN``. The elements we read have the
same paths in every version except two, which are handled both ways: an entry's status is text in .02
(``<Sts>BOOK</Sts>``) and a choice from .08 on (``<Sts><Cd>BOOK</Cd></Sts>``), and a related party's name
sits directly under ``Dbtr``/``Cdtr`` up to .07 and under ``Dbtr/Pty`` from .08. Tested: .02 and .08.

Mapping, per ``Ntry`` (one bank booking = one StatementLine, however many transactions it batches):

- amount: ``Amt`` with ``CdtDbtInd`` CRDT (+) or DBIT (-); booking ``BookgDt``, value ``ValDt``
- serial: ``AcctSvcrRef`` (the bank's reference), else ``NtryRef``
- reference: the batch's ``PmtInfId`` (``NtryDtls/Btch`` or common to all ``TxDtls/Refs``), else the single
  transaction's ``Refs/EndToEndId`` unless it is NOTPROVIDED; when neither is there, our reference quoted in
  the remittance text (``base.REFERENCE_PATTERNS``)
- counterparty: for a credit the debtor (``RltdPties/Dbtr`` + ``DbtrAcct``), for a debit the creditor; only
  when the entry has a single transaction (a batch has many counterparties and keeps none here)
- summary: the single transaction's ``RmtInf/Ustrd`` (joined), else ``AddtlNtryInf``
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import NoReturn
from xml.parsers import expat

from reconciliation.formats.base import (
    Statement,
    StatementLine,
    check_currency,
    check_statement,
    find_reference,
    format_yuan,
    parse_amount_fen,
    parse_date,
)
from reconciliation.formats.errors import StatementError

NAMESPACE_PREFIX = "urn:iso:std:iso:20022:tech:xsd:camt.053.001."
VERSIONS = ("02", "08")  # what the writer can produce
NOT_PROVIDED = "NOTPROVIDED"
_UNSAFE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
USTRD_MAX = 140  # Max140Text: a longer summary is written as several Ustrd


# --- a minimal, safe tree ---


@dataclass
class _Node:
    name: str  # local name, namespace stripped
    namespace: str
    attrib: dict[str, str]
    line: int
    children: list[_Node] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)

    @property
    def raw_text(self) -> str:
        return "".join(self.parts)

    @property
    def text(self) -> str:
        return self.raw_text.strip()

    def all(self, *path: str) -> list[_Node]:
        nodes = [self]
        for name in path:
            nodes = [child for node in nodes for child in node.children if child.name == name]
        return nodes

    def first(self, *path: str) -> _Node | None:
        found = self.all(*path)
        return found[0] if found else None

    def text_at(self, *path: str) -> str:
        node = self.first(*path)
        return node.text if node is not None else ""


def _refuse_unsafe(line: int) -> NoReturn:
    raise StatementError(
        line,
        "XML 含有 DOCTYPE 或实体声明，拒绝读取 the XML declares a DOCTYPE or entities; refused",
        rule="unsafe_xml",
    )


def parse_xml(data: bytes) -> _Node:
    """The document's root, with no DTD, entity or external reference ever processed."""
    unsafe = _UNSAFE.search(data)
    if unsafe:
        _refuse_unsafe(data[: unsafe.start()].count(b"\n") + 1)
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    stack: list[_Node] = []
    roots: list[_Node] = []

    def start(name: str, attrib: dict[str, str]) -> None:
        namespace, _, local = name.rpartition(" ")
        node = _Node(local, namespace, attrib, parser.CurrentLineNumber)
        (stack[-1].children if stack else roots).append(node)
        stack.append(node)

    def end(_name: str) -> None:
        stack.pop()

    def characters(text: str) -> None:
        if stack:
            stack[-1].parts.append(text)

    def refuse(*_args: object) -> NoReturn:
        # Also catches what the byte check cannot see, e.g. a DOCTYPE in a UTF-16 document.
        _refuse_unsafe(parser.CurrentLineNumber)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = characters
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise StatementError(
            exc.lineno, f"XML 格式错误 malformed XML: {expat.errors.messages[exc.code]}", rule="structure"
        ) from exc
    if len(roots) != 1:
        raise StatementError(0, "XML 没有根元素 the XML has no root element", rule="structure")
    return roots[0]


# --- reading ---


def _require(node: _Node, *path: str) -> _Node:
    found = node.first(*path)
    if found is None or (not found.children and not found.text):
        raise StatementError(node.line, f"缺少 {'/'.join(path)} missing {'/'.join(path)}", rule="structure")
    return found


def _date_of(choice: _Node | None, *, line: int, what: str) -> date | None:
    """A DateAndDateTimeChoice (``<Dt>`` or ``<DtTm>``) or an ISODateTime -> the date it names."""
    if choice is None:
        return None
    text = choice.text_at("Dt") or choice.text_at("DtTm") or choice.text
    if not text:
        return None
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}(?:T[0-9:.]+(?:Z|[+-]\d{2}:\d{2})?)?", text):
        raise StatementError(choice.line, f"{what}「{text}」不是 ISO 日期 not an ISO date", rule="date")
    return parse_date(text[:10], line_number=choice.line, what=what)


def _signed_amount(amount: _Node, indicator: str, *, currency: str, line: int, what: str) -> int:
    fen = parse_amount_fen(amount.text, line_number=amount.line, what=what, signed=False, grouping=False)
    if amount.attrib.get("Ccy") != currency:
        raise StatementError(
            amount.line,
            f"{what}币种 {amount.attrib.get('Ccy')} 不是对账单币种 {currency} amount in another currency",
            rule="currency",
        )
    if indicator == "CRDT":
        return fen
    if indicator == "DBIT":
        return -fen
    raise StatementError(line, f"借贷标识「{indicator}」应为 CRDT 或 DBIT bad CdtDbtInd", rule="amount")


def _party(details: _Node, role: str) -> tuple[str, str]:
    """(name, account) of ``Dbtr``/``Cdtr`` in a transaction's related parties, any version."""
    parties = details.first("RltdPties")
    if parties is None:
        return "", ""
    name = parties.text_at(role, "Nm") or parties.text_at(role, "Pty", "Nm")
    account = parties.text_at(f"{role}Acct", "Id", "IBAN") or parties.text_at(
        f"{role}Acct", "Id", "Othr", "Id"
    )
    return name, account


def _tx_amount(tx: _Node) -> _Node | None:
    return tx.first("AmtDtls", "TxAmt", "Amt") or tx.first("Amt")


def _read_entry(entry: _Node, *, currency: str, statement_id: str) -> StatementLine:
    line = entry.line
    amount_fen = _signed_amount(
        _require(entry, "Amt"), entry.text_at("CdtDbtInd"), currency=currency, line=line, what="金额"
    )
    status = entry.text_at("Sts") or entry.text_at("Sts", "Cd") or entry.text_at("Sts", "Prtry")
    if status != "BOOK":
        raise StatementError(
            line,
            f"分录状态为 {status or '空'}，对账单只应含已记账分录 entry status is not BOOK",
            rule="structure",
        )
    booked_on = _date_of(entry.first("BookgDt"), line=line, what="记账日期")
    value_on = _date_of(entry.first("ValDt"), line=line, what="起息日")
    booked_on = booked_on or value_on
    if booked_on is None:
        raise StatementError(line, "分录没有记账日期 the entry has no booking date", rule="date")

    transactions = entry.all("NtryDtls", "TxDtls")
    batch_nodes = entry.all("NtryDtls", "Btch", "PmtInfId") + entry.all(
        "NtryDtls", "TxDtls", "Refs", "PmtInfId"
    )
    batch_ids = {node.text for node in batch_nodes if node.text}
    if len(transactions) > 1:
        amounts = [_tx_amount(tx) for tx in transactions]
        if all(a is not None for a in amounts):
            parts = sum(
                parse_amount_fen(a.text, line_number=a.line, what="明细金额", signed=False, grouping=False)
                for a in amounts
                if a is not None
            )
            if parts != abs(amount_fen):
                raise StatementError(
                    line,
                    f"批量明细之和 {format_yuan(parts)} 不等于分录金额 {format_yuan(abs(amount_fen))} "
                    f"the batch's transactions do not add up to the entry",
                    rule="totals",
                )

    name = account = summary = end_to_end = ""
    if len(transactions) == 1:
        tx = transactions[0]
        end_to_end = tx.text_at("Refs", "EndToEndId")
        name, account = _party(tx, "Dbtr" if amount_fen > 0 else "Cdtr")
        # Pieces are joined as they are: a bank may split a sentence anywhere, spaces included.
        summary = "".join(node.raw_text for node in tx.all("RmtInf", "Ustrd")).strip()
    summary = summary or entry.text_at("AddtlNtryInf")
    if end_to_end and end_to_end != NOT_PROVIDED:
        reference = end_to_end
    elif len(batch_ids) == 1:
        reference = batch_ids.pop()
    else:
        reference = find_reference(summary)

    serial = entry.text_at("AcctSvcrRef") or entry.text_at("NtryRef") or f"{statement_id}#{line}"
    return StatementLine(
        line_number=line,
        serial=serial,
        booked_on=booked_on,
        value_on=value_on or booked_on,
        amount_fen=amount_fen,
        balance_after_fen=None,
        counterparty_name=name,
        counterparty_account=account,
        reference=reference,
        summary=summary,
    )


def _check_summary(summary: _Node, lines: list[StatementLine], currency: str) -> None:
    """TxsSummry, where the bank gives it: counts and sums of all, credit and debit entries, and the net."""
    credits = [line.amount_fen for line in lines if line.amount_fen > 0]
    debits = [-line.amount_fen for line in lines if line.amount_fen < 0]
    expected = {
        ("TtlNtries",): (len(lines), sum(credits) + sum(debits)),
        ("TtlCdtNtries",): (len(credits), sum(credits)),
        ("TtlDbtNtries",): (len(debits), sum(debits)),
    }
    for path, (count, total) in expected.items():
        node = summary.first(*path)
        if node is None:
            continue
        stated_count = node.text_at("NbOfNtries")
        if stated_count and int(stated_count) != count:
            raise StatementError(
                node.line, f"{path[0]} 笔数 {stated_count} 应为 {count} entry count disagrees", rule="totals"
            )
        stated_sum = node.first("Sum")
        if stated_sum is not None:
            fen = parse_amount_fen(
                stated_sum.text, line_number=stated_sum.line, what="合计", signed=False, grouping=False
            )
            if fen != total:
                raise StatementError(
                    stated_sum.line,
                    f"{path[0]} 合计 {format_yuan(fen)} 应为 {format_yuan(total)} "
                    f"sum disagrees with the entries",
                    rule="totals",
                )
    total_node = summary.first("TtlNtries")
    if total_node is None:
        return
    net = total_node.first("TtlNetNtryAmt") or total_node.first("TtlNetNtry", "Amt")
    indicator = total_node.text_at("CdtDbtInd") or total_node.text_at("TtlNetNtry", "CdtDbtInd")
    if net is not None:
        fen = parse_amount_fen(net.text, line_number=net.line, what="净额", signed=False, grouping=False)
        signed = -fen if indicator == "DBIT" else fen
        if signed != sum(credits) - sum(debits):
            raise StatementError(
                net.line,
                f"净额 {format_yuan(signed)} 应为 {format_yuan(sum(credits) - sum(debits))} net disagrees",
                rule="totals",
            )


def parse_camt053(data: bytes) -> Statement:
    root = parse_xml(data)
    if root.name != "Document" or not root.namespace.startswith(NAMESPACE_PREFIX):
        raise StatementError(
            root.line,
            f"不是 camt.053 文档（命名空间 {root.namespace or '无'}）not a camt.053 document",
            rule="format",
        )
    statements = root.all("BkToCstmrStmt", "Stmt")
    if len(statements) != 1:
        raise StatementError(
            statements[1].line if statements else root.line,
            f"文件应含一份对账单，实有 {len(statements)} 份 one statement per file, found {len(statements)}",
            rule="structure",
        )
    stmt = statements[0]
    statement_id = _require(stmt, "Id").text
    account_number = stmt.text_at("Acct", "Id", "IBAN") or stmt.text_at("Acct", "Id", "Othr", "Id")
    if not account_number:
        raise StatementError(stmt.line, "缺少账号 Acct/Id missing", rule="structure")

    balances: dict[str, list[_Node]] = {}
    for balance in stmt.all("Bal"):
        code = balance.text_at("Tp", "CdOrPrtry", "Cd") or balance.text_at("Tp", "CdOrPrtry", "Prtry")
        balances.setdefault(code, []).append(balance)
    opening_nodes = balances.get("OPBD") or balances.get("PRCD") or []
    closing_nodes = balances.get("CLBD") or []
    for label, nodes in (("期初余额 OPBD", opening_nodes), ("期末余额 CLBD", closing_nodes)):
        if len(nodes) != 1:
            raise StatementError(
                nodes[1].line if nodes else stmt.line,
                f"{label} 应恰有一个，实有 {len(nodes)} 个 expected exactly one {label.split()[1]} balance",
                rule="structure",
            )
    opening_node, closing_node = opening_nodes[0], closing_nodes[0]
    currency = stmt.text_at("Acct", "Ccy") or _require(opening_node, "Amt").attrib.get("Ccy", "")
    currency = check_currency(currency, line_number=stmt.line)

    def balance_fen(node: _Node) -> int:
        return _signed_amount(
            _require(node, "Amt"), node.text_at("CdtDbtInd"), currency=currency, line=node.line, what="余额"
        )

    opening = balance_fen(opening_node)
    closing = balance_fen(closing_node)
    period = stmt.first("FrToDt")
    period_start = _date_of(period.first("FrDtTm") if period else None, line=stmt.line, what="起始日期")
    period_end = _date_of(period.first("ToDtTm") if period else None, line=stmt.line, what="截止日期")
    period_start = period_start or _date_of(opening_node.first("Dt"), line=opening_node.line, what="期初日期")
    period_end = period_end or _date_of(closing_node.first("Dt"), line=closing_node.line, what="期末日期")
    if period_start is None or period_end is None:
        raise StatementError(stmt.line, "无法确定对账期间 no statement period", rule="period")

    sequence_text = stmt.text_at("ElctrncSeqNb") or stmt.text_at("LglSeqNb")
    if sequence_text and not sequence_text.isdigit():
        raise StatementError(stmt.line, f"序号「{sequence_text}」不是整数 sequence is not a number")
    lines = [_read_entry(entry, currency=currency, statement_id=statement_id) for entry in stmt.all("Ntry")]
    summary = stmt.first("TxsSummry")
    if summary is not None:
        _check_summary(summary, lines, currency)
    statement = Statement(
        account_number=account_number,
        currency=currency,
        statement_id=statement_id,
        sequence=int(sequence_text) if sequence_text else None,
        period_start=period_start,
        period_end=period_end,
        opening_balance_fen=opening,
        closing_balance_fen=closing,
        lines=tuple(lines),
    )
    return check_statement(statement, closing_line=closing_node.line)


# --- writing ---


def _sub(parent: ET.Element, name: str, text: str | None = None, **attrib: str) -> ET.Element:
    element = ET.SubElement(parent, name, attrib)
    if text is not None:
        element.text = text
    return element


def _limit(value: str, limit: int, *, line: int, what: str) -> str:
    if len(value) > limit:
        raise StatementError(
            line, f"{what}超过 camt.053 的 {limit} 字符上限 {what} is longer than {limit}", rule="unwritable"
        )
    return value


def _amount(parent: ET.Element, name: str, fen: int, currency: str) -> None:
    _sub(parent, name, format_yuan(abs(fen)), Ccy=currency)


def _indicator(fen: int) -> str:
    return "DBIT" if fen < 0 else "CRDT"


def _balance(parent: ET.Element, code: str, fen: int, on: date, currency: str) -> None:
    balance = _sub(parent, "Bal")
    _sub(_sub(_sub(balance, "Tp"), "CdOrPrtry"), "Cd", code)
    _amount(balance, "Amt", fen, currency)
    _sub(balance, "CdtDbtInd", _indicator(fen))
    _sub(_sub(balance, "Dt"), "Dt", on.isoformat())


def _party_element(parent: ET.Element, role: str, name: str, account: str, version: str) -> None:
    if name:
        party = _sub(parent, role)
        _sub(_sub(party, "Pty") if version >= "08" else party, "Nm", name)
    if account:
        _sub(_sub(_sub(_sub(parent, f"{role}Acct"), "Id"), "Othr"), "Id", account)


def write_camt053(statement: Statement, *, version: str = "02", created_at: datetime | None = None) -> bytes:
    """A camt.053.001.02 (or .08) document for one statement, UTF-8, elements in schema order.

    Every line becomes an ``Ntry`` with one ``TxDtls``: the serial as ``AcctSvcrRef``, the reference as
    ``Refs/EndToEndId`` (NOTPROVIDED when empty), the counterparty as debtor (credits) or creditor (debits),
    the summary as ``RmtInf/Ustrd`` in 140-character pieces. Running balances are not part of camt.053.
    """
    if version not in VERSIONS:
        raise ValueError(f"camt.053 version must be one of {VERSIONS}")
    check_statement(statement, closing_line=0)
    currency = statement.currency
    created = (created_at or datetime.combine(statement.period_end, time(23, 59, 59))).replace(microsecond=0)
    namespace = f"{NAMESPACE_PREFIX}{version}"
    # Unqualified names under a literal default xmlns: ElementTree's default_namespace option refuses the
    # unqualified Ccy attribute, and prefixes would only make the file harder to read.
    document = ET.Element("Document", xmlns=namespace)
    report = _sub(document, "BkToCstmrStmt")
    header = _sub(report, "GrpHdr")
    _sub(header, "MsgId", _limit(statement.statement_id, 35, line=0, what="对账单编号"))
    _sub(header, "CreDtTm", created.isoformat())
    stmt = _sub(report, "Stmt")
    _sub(stmt, "Id", statement.statement_id)
    if statement.sequence is not None:
        _sub(stmt, "ElctrncSeqNb", str(statement.sequence))
    _sub(stmt, "CreDtTm", created.isoformat())
    period = _sub(stmt, "FrToDt")
    _sub(period, "FrDtTm", datetime.combine(statement.period_start, time(0, 0, 0)).isoformat())
    _sub(period, "ToDtTm", datetime.combine(statement.period_end, time(23, 59, 59)).isoformat())
    account = _sub(stmt, "Acct")
    _sub(_sub(_sub(account, "Id"), "Othr"), "Id", _limit(statement.account_number, 34, line=0, what="账号"))
    _sub(account, "Ccy", currency)
    _balance(stmt, "OPBD", statement.opening_balance_fen, statement.period_start, currency)
    _balance(stmt, "CLBD", statement.closing_balance_fen, statement.period_end, currency)

    totals = _sub(stmt, "TxsSummry")
    net = statement.credits_fen - statement.debits_fen
    all_entries = _sub(totals, "TtlNtries")
    _sub(all_entries, "NbOfNtries", str(len(statement.lines)))
    _sub(all_entries, "Sum", format_yuan(statement.credits_fen + statement.debits_fen))
    if version >= "08":
        net_node = _sub(all_entries, "TtlNetNtry")
        _sub(net_node, "Amt", format_yuan(abs(net)))
        _sub(net_node, "CdtDbtInd", _indicator(net))
    else:
        _sub(all_entries, "TtlNetNtryAmt", format_yuan(abs(net)))
        _sub(all_entries, "CdtDbtInd", _indicator(net))
    for name, lines in (
        ("TtlCdtNtries", [line for line in statement.lines if line.amount_fen > 0]),
        ("TtlDbtNtries", [line for line in statement.lines if line.amount_fen < 0]),
    ):
        node = _sub(totals, name)
        _sub(node, "NbOfNtries", str(len(lines)))
        _sub(node, "Sum", format_yuan(sum(abs(line.amount_fen) for line in lines)))

    for line in statement.lines:
        n = line.line_number
        entry = _sub(stmt, "Ntry")
        _amount(entry, "Amt", line.amount_fen, currency)
        _sub(entry, "CdtDbtInd", _indicator(line.amount_fen))
        if version >= "08":
            _sub(_sub(entry, "Sts"), "Cd", "BOOK")
        else:
            _sub(entry, "Sts", "BOOK")
        _sub(_sub(entry, "BookgDt"), "Dt", line.booked_on.isoformat())
        _sub(_sub(entry, "ValDt"), "Dt", line.value_on.isoformat())
        _sub(entry, "AcctSvcrRef", _limit(line.serial, 35, line=n, what="流水号"))
        domain = _sub(_sub(entry, "BkTxCd"), "Domn")
        _sub(domain, "Cd", "PMNT")
        family = _sub(domain, "Fmly")
        _sub(family, "Cd", "RCDT" if line.amount_fen > 0 else "ICDT")
        _sub(family, "SubFmlyCd", "DMCT")
        tx = _sub(_sub(entry, "NtryDtls"), "TxDtls")
        if line.reference == NOT_PROVIDED:
            raise StatementError(
                n, "参考号不能是 NOTPROVIDED reference cannot be NOTPROVIDED", rule="unwritable"
            )
        reference = _limit(line.reference, 35, line=n, what="参考号") or NOT_PROVIDED
        _sub(_sub(tx, "Refs"), "EndToEndId", reference)
        role = "Dbtr" if line.amount_fen > 0 else "Cdtr"
        if line.counterparty_name or line.counterparty_account:
            _party_element(
                _sub(tx, "RltdPties"),
                role,
                _limit(line.counterparty_name, 140, line=n, what="对方户名"),
                _limit(line.counterparty_account, 34, line=n, what="对方账号"),
                version,
            )
        if line.summary:
            remittance = _sub(tx, "RmtInf")
            for start in range(0, len(line.summary), USTRD_MAX):
                _sub(remittance, "Ustrd", line.summary[start : start + USTRD_MAX])
    ET.indent(document, space="  ")
    body = ET.tostring(document, encoding="unicode")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n").encode("utf-8")

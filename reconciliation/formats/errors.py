"""The one error a statement file can raise: which line, which rule, and why (Chinese first, English beside).

A parser either returns a whole, checked ``Statement`` or raises ``StatementError``; nothing partial ever
escapes. ``line_number`` is 1-based in the file as a person opens it (the CSV/MT940/XML text line, the
spreadsheet row); 0 means the file as a whole (its encoding, a missing closing balance, continuity between two
statements). ``rule`` is stable and machine-readable so the break queue can group refusals.
"""

from __future__ import annotations

from typing import Any

# The stable rule names, one per kind of refusal.
RULES = frozenset(
    {
        "format",  # not a statement of any format we read, or the wrong one for the format asked
        "encoding",  # bytes that decode in none of the accepted encodings
        "structure",  # a missing header, field or tag; a truncated file; two statements in one file
        "unsafe_xml",  # DOCTYPE, entity declarations, external entities
        "amount",  # not an exact amount of fen
        "date",  # not a date
        "currency",  # an unknown currency, or amounts in a currency other than the statement's
        "balance",  # opening + movements != closing, or a running balance that does not follow
        "totals",  # a 合计 footer or camt TxsSummry that disagrees with the lines
        "duplicate_serial",  # the same 流水号 twice in one statement
        "period",  # a line booked outside the statement period, or a period that ends before it starts
        "continuity",  # a statement that does not follow the previous one
        "unwritable",  # a writer cannot represent a value in the target format
    }
)


class StatementError(Exception):
    """``StatementError(7, "余额不符 balance mismatch: …", rule="balance")``."""

    code = "statement_error"

    def __init__(self, line_number: int, reason: str, *, rule: str = "structure", **details: Any) -> None:
        if rule not in RULES:
            raise ValueError(f"unknown statement rule {rule!r}")
        self.line_number = line_number
        self.reason = reason
        self.rule = rule
        self.details = details
        where = f"第{line_number}行 line {line_number}" if line_number > 0 else "文件 file"
        self.message = f"{where}: {reason}"
        super().__init__(self.message)

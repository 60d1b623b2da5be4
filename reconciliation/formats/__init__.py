"""Bank statement formats (对账单格式): bank files to one checked ``Statement``, and back.

``parse_statement(data)`` finds the format from the bytes (and the file name, as a hint), reads the file and
returns a ``Statement`` whose balances add up, or raises ``StatementError(line_number, reason)``: nothing
partial is ever returned. ``check_continuity(previous, current)`` checks two consecutive statements. The
writers produce what a bank would send, for the bank simulator and tests; each reads back through its parser.

This layer is pure: no database, no Django. Matching and the break queue are built on top of it.
See docs/statements.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from reconciliation.formats.base import (
    CAMT053,
    CSV,
    FORMATS,
    MT940,
    XLSX,
    Statement,
    StatementLine,
    check_continuity,
    check_statement,
)
from reconciliation.formats.camt053 import parse_camt053, write_camt053
from reconciliation.formats.csv_bank import parse_csv, write_csv
from reconciliation.formats.errors import StatementError
from reconciliation.formats.mt940 import parse_mt940, write_mt940
from reconciliation.formats.xlsx_bank import XLS_MAGIC, XLSX_MAGIC, parse_xlsx, write_xlsx

__all__ = [
    "CAMT053",
    "CSV",
    "FORMATS",
    "MT940",
    "XLSX",
    "Statement",
    "StatementError",
    "StatementLine",
    "check_continuity",
    "check_statement",
    "detect_format",
    "parse_statement",
    "write_camt053",
    "write_csv",
    "write_mt940",
    "write_xlsx",
]

MAX_STATEMENT_BYTES = (
    64 * 1024 * 1024
)  # a month of a busy account is a few MB; anything near this is not a statement

PARSERS: dict[str, Callable[[bytes], Statement]] = {
    CSV: parse_csv,
    XLSX: parse_xlsx,
    CAMT053: parse_camt053,
    MT940: parse_mt940,
}
_EXTENSIONS = {
    ".csv": CSV,
    ".txt": CSV,
    ".xlsx": XLSX,
    ".xls": XLSX,
    ".xml": CAMT053,
    ".sta": MT940,
    ".mt940": MT940,
    ".940": MT940,
}
_MT940_START = re.compile(rb"^(?:\{1:|:20:)", re.MULTILINE)


def detect_format(data: bytes, filename: str = "") -> str:
    """The format of a statement file: from its first bytes, then from its file name, else CSV."""
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")
    if data.startswith((XLSX_MAGIC, XLS_MAGIC)):
        return XLSX
    if head.startswith(b"<"):
        return CAMT053
    if head.startswith((b"{1:", b":20:")) or (
        _MT940_START.search(head) and b":25:" in head and b":60" in head
    ):
        return MT940
    suffix = filename[filename.rfind(".") :].lower() if "." in filename else ""
    return _EXTENSIONS.get(suffix, CSV)


def parse_statement(data: bytes, *, filename: str = "", format: str | None = None) -> Statement:
    """A checked Statement from the bytes of a bank file, or StatementError; never a partial result."""
    if len(data) > MAX_STATEMENT_BYTES:
        raise StatementError(0, "文件过大 the file is too large to be a statement", rule="format")
    if not data.strip():
        raise StatementError(0, "文件为空 the file is empty", rule="format")
    chosen = format or detect_format(data, filename)
    if chosen not in PARSERS:
        raise StatementError(
            0, f"未知格式「{chosen}」unknown format; one of {', '.join(FORMATS)}", rule="format"
        )
    return PARSERS[chosen](data)

"""Chinese bank CSV statement exports (账户明细 .csv), in any encoding banks use, to a Statement.

Decoding tries, strictly and in order, UTF-8 with a BOM (or UTF-16 with one), UTF-8, then GB18030 (the
superset of GBK/GB2312 most bank systems export). Cells may be separated by commas or tabs (some "CSV"
downloads are really tab-separated); the separator is the one under which a table header is found. The
table itself is read by ``reconciliation.formats.table``, shared with the XLSX reader.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import date

from reconciliation.formats.base import Statement, decode_text
from reconciliation.formats.errors import StatementError
from reconciliation.formats.table import Cell, cell_text, match_header, read_table, table_layout

DELIMITERS = (",", "\t", ";")


def _rows(text: str, delimiter: str) -> Iterator[tuple[int, list[Cell]]]:
    """(first physical line of the row, cells); a quoted cell may span lines."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise StatementError(
                reader.line_num, f"CSV 格式错误 malformed CSV: {exc}", rule="structure"
            ) from exc
        yield start, list(row)
        start = reader.line_num + 1


def _has_header(text: str, delimiter: str) -> bool:
    try:
        return any(match_header([cell_text(c) for c in cells]) for _, cells in _rows(text, delimiter))
    except StatementError:
        return False


def _csv_cell(cell: Cell) -> str:
    if cell is None:
        return ""
    if isinstance(cell, date):
        return cell.isoformat()
    return str(cell)


def parse_csv(data: bytes) -> Statement:
    text, _encoding = decode_text(data)
    delimiter = next((d for d in DELIMITERS if _has_header(text, d)), DELIMITERS[0])
    return read_table(_rows(text, delimiter))


def write_csv(statement: Statement, encoding: str = "gb18030") -> bytes:
    """The statement as a bank would export it: header rows, the table, a 合计 footer, the closing balance.
    GB18030 by default, like the banks; any encoding that can hold the text may be asked for."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    for row in table_layout(statement, money=str):
        writer.writerow([_csv_cell(cell) for cell in row])
    try:
        return out.getvalue().encode(encoding)
    except UnicodeEncodeError as exc:
        line = out.getvalue()[: exc.start].count("\n") + 1
        raise StatementError(
            line, f"该文字无法用 {encoding} 编码 text cannot be encoded in {encoding}", rule="unwritable"
        ) from exc

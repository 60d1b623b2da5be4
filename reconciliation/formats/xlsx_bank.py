"""Chinese bank statement spreadsheets (.xlsx): the same table as the CSV export, in a workbook.

The first worksheet is read with openpyxl in read-only, data-only mode (cached values, formulas never
evaluated) and handed, row by row with its 1-based row number, to the table reader the CSV uses. Before
openpyxl sees the file, the zip is checked: bounded size and member count (no zip bombs), and no DOCTYPE or
ENTITY declaration in any XML part (openpyxl parses the parts with the standard library, and defusedxml is
not installed here). The old binary .xls format is refused with a request to save as .xlsx.
"""

from __future__ import annotations

import io
import re
import zipfile
from datetime import date
from decimal import Decimal

import openpyxl
from openpyxl.utils.exceptions import IllegalCharacterError, InvalidFileException

from reconciliation.formats.base import Statement
from reconciliation.formats.errors import StatementError
from reconciliation.formats.table import MAX_EXACT_FLOAT_YUAN, WRITTEN_COLUMNS, Cell, read_table, table_layout

XLSX_MAGIC = b"PK\x03\x04"
XLS_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # OLE2: the pre-2007 binary .xls
MAX_UNCOMPRESSED_BYTES = 200 * 1024 * 1024
MAX_MEMBERS = 2000
_UNSAFE_XML = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
SHEET_TITLE = "对账单"


def _check_archive(data: bytes) -> None:
    if data.startswith(XLS_MAGIC):
        raise StatementError(
            0,
            "不支持旧版 .xls 文件，请另存为 .xlsx the old .xls format is not read; save as .xlsx",
            rule="format",
        )
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise StatementError(0, "不是有效的 .xlsx 文件 not a valid .xlsx file", rule="format") from exc
    with archive:
        members = archive.infolist()
        if len(members) > MAX_MEMBERS or sum(m.file_size for m in members) > MAX_UNCOMPRESSED_BYTES:
            raise StatementError(
                0, ".xlsx 解压后过大 the .xlsx is too large when unpacked", rule="unsafe_xml"
            )
        for member in members:
            if member.filename.endswith((".xml", ".rels")) and _UNSAFE_XML.search(archive.read(member)):
                raise StatementError(
                    0,
                    f".xlsx 内 {member.filename} 含有 DOCTYPE/ENTITY 声明，拒绝读取 "
                    f"{member.filename} declares a DOCTYPE or entity; refused",
                    rule="unsafe_xml",
                )


def parse_xlsx(data: bytes) -> Statement:
    _check_archive(data)
    try:
        workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise StatementError(0, f"无法读取 .xlsx 文件 cannot read the .xlsx: {exc}", rule="format") from exc
    try:
        if not workbook.worksheets:
            raise StatementError(0, ".xlsx 中没有工作表 the workbook has no sheet", rule="structure")
        sheet = workbook.worksheets[0]
        # Bank exports often carry a wrong <dimension>; read every row that is there.
        sheet.reset_dimensions()
        rows: list[tuple[int, list[Cell]]] = [
            (number, list(values)) for number, values in enumerate(sheet.iter_rows(values_only=True), start=1)
        ]
    finally:
        workbook.close()
    return read_table(rows)


def _xlsx_cell(cell: Cell) -> Cell:
    # Numbers a double cannot hold to the fen stay text; the reader accepts both.
    if isinstance(cell, Decimal) and abs(cell) >= MAX_EXACT_FLOAT_YUAN:
        return f"{cell:,.2f}"
    return cell


def write_xlsx(statement: Statement) -> bytes:
    """The statement as a one-sheet workbook laid out like the CSV. Dates are date cells, amounts exact
    numbers (written from Decimal, never through a float), text cells guarded against formula injection."""
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.title = SHEET_TITLE
    try:
        for row in table_layout(statement, money=Decimal):
            sheet.append([_xlsx_cell(cell) for cell in row])
    except IllegalCharacterError as exc:
        raise StatementError(
            0, "文字含有 .xlsx 不允许的控制字符 text has characters .xlsx cannot hold", rule="unwritable"
        ) from exc
    for row in sheet.iter_rows():
        for cell in row:
            if isinstance(cell.value, date):
                cell.number_format = "yyyy-mm-dd"
            elif isinstance(cell.value, Decimal):
                cell.number_format = "#,##0.00"
    widths = {"交易日期": 12, "起息日": 12, "流水号": 22, "对方户名": 28, "对方账号": 24, "摘要": 30}
    for index, name in enumerate(WRITTEN_COLUMNS):
        sheet.column_dimensions[openpyxl.utils.get_column_letter(index + 1)].width = widths.get(name, 16)
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()

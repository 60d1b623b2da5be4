"""The reconciliation report for regulators (对账报告), as an XLSX workbook.

Four sheets, headers in Chinese with English beside: the daily tie-outs (汇总), the breaks with their
owner, explanation and resolution (差错), what explains each day's difference (未达账项), and the matches by
rule (匹配). Amounts are yuan as exact number cells (written from Decimal, never a float). Every text cell
is guarded against formula injection: text starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return gets a leading apostrophe, so a spreadsheet shows it and never runs it (counterparty names and
summaries come from bank files, which anyone can put text into).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import openpyxl
from django.db.models import Count, Q, Sum

from custody.models import Institution
from ledger import clock
from reconciliation.models import Break, Match, MatchLine, TieOut
from reconciliation.selectors.days import SHANGHAI
from reconciliation.services.tieout import CATEGORIES

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
YUAN_FORMAT = "#,##0.00"


def safe_text(value: str) -> str:
    """Text a spreadsheet shows as it is: one that would start a formula gets a leading apostrophe."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def yuan(fen: int) -> Decimal:
    return Decimal(fen) / 100


def _cell(value: Any) -> Any:
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, datetime):
        return value.astimezone(SHANGHAI).replace(tzinfo=None)
    return value


def build_report(*, start: date, end: date, institutions: Iterable[Institution] | None = None) -> bytes:
    """The workbook for days ``start``…``end`` (all institutions, or those given)."""
    chosen = None if institutions is None else [i.pk for i in institutions]
    names = dict(Institution.objects.values_list("pk", "name"))
    workbook = openpyxl.Workbook(write_only=True)

    ties = TieOut.objects.filter(day__gte=start, day__lte=end).order_by("day", "institution_id")
    breaks = Break.objects.filter(Q(day__gte=start, day__lte=end) | Q(state__in=("open", "assigned")))
    matches = Match.objects.filter(
        pk__in=MatchLine.objects.filter(line__booked_on__gte=start, line__booked_on__lte=end).values(
            "match_id"
        )
    )
    if chosen is not None:
        ties = ties.filter(institution_id__in=chosen)
        breaks = breaks.filter(institution_id__in=chosen)
        matches = matches.filter(institution_id__in=chosen)

    title = f"托管资金对账报告 Custody reconciliation report {start.isoformat()} – {end.isoformat()}"
    generated = f"生成时间 Generated {clock.now().astimezone(SHANGHAI):%Y-%m-%d %H:%M}"

    _sheet(
        workbook,
        "汇总 Tie-outs",
        [title, generated],
        [
            "日期 Day",
            "机构 Institution",
            "账簿余额 Ledger (元)",
            "银行余额 Bank (元)",
            "差额 Difference (元)",
            "已逐项说明 Itemised (元)",
            "未说明 Unexplained (元)",
            "状态 Status",
            "日切时点 Ledger read at",
        ],
        (
            [
                t.day,
                names.get(t.institution_id, str(t.institution_id)),
                yuan(t.ledger_fen),
                yuan(t.bank_fen),
                yuan(t.difference_fen),
                yuan(t.explained_fen),
                yuan(t.unexplained_fen),
                t.get_status_display(),
                t.closes_at,
            ]
            for t in ties
        ),
        money_columns=(2, 3, 4, 5, 6),
    )
    _sheet(
        workbook,
        "差错 Breaks",
        [title, generated],
        [
            "编号 ID",
            "日期 Day",
            "机构 Institution",
            "类型 Kind",
            "金额（账簿−银行）Ledger − bank (元)",
            "状态 State",
            "处理人 Assignee",
            "说明 Explanation",
            "处理方式 Resolution",
            "处理结果 Resolution note",
            "调账提出人 Correction proposed by",
            "调账批准人 Approved by",
            "调账分录 Correction entry",
        ],
        (
            [
                b.pk,
                b.day,
                names.get(b.institution_id, str(b.institution_id)),
                b.get_kind_display(),
                yuan(b.amount_fen),
                b.get_state_display(),
                b.assignee.get_username() if b.assignee else "",
                b.explanation,
                b.get_resolution_kind_display() if b.resolution_kind else "",
                b.resolution,
                b.correction_proposed_by.get_username() if b.correction_proposed_by else "",
                b.correction_approved_by.get_username() if b.correction_approved_by else "",
                b.correction_entry_id or "",
            ]
            for b in breaks.select_related(
                "assignee", "correction_proposed_by", "correction_approved_by"
            ).order_by("day", "pk")
        ),
        money_columns=(4,),
    )
    _sheet(
        workbook,
        "未达账项 Open items",
        [title, "每日差额的逐项说明 what explains each day's difference (ledger − bank)"],
        ["日期 Day", "机构 Institution", "项目 Item", "金额 Amount (元)", "笔数 Count", "明细 First items"],
        _item_rows(ties, names),
        money_columns=(3,),
    )
    rows = (
        matches.values("institution_id", "rule")
        .annotate(count=Count("pk"), lines=Sum("lines_fen"), entries=Sum("entries_fen"))
        .order_by("institution_id", "rule")
    )
    _sheet(
        workbook,
        "匹配 Matches",
        [title, "银行流水记账日在报告期内的匹配 matches of bank lines booked in the period"],
        ["机构 Institution", "规则 Rule", "笔数 Matches", "银行金额 Bank lines (元)", "账簿金额 Ledger (元)"],
        (
            [
                names.get(r["institution_id"], str(r["institution_id"])),
                Match(rule=r["rule"]).get_rule_display(),
                r["count"],
                yuan(r["lines"] or 0),
                yuan(r["entries"] or 0),
            ]
            for r in rows
        ),
        money_columns=(3, 4),
    )
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def _item_rows(ties: Iterable[TieOut], names: dict[int, str]) -> Iterable[list[Any]]:
    for tie in ties:
        institution = names.get(tie.institution_id, str(tie.institution_id))
        for name, entry in tie.details.get("categories", {}).items():
            zh, en = CATEGORIES[name]
            items = ", ".join(str(i) for i in entry.get("items", []))
            yield [tie.day, institution, f"{zh} {en}", yuan(entry["fen"]), entry["count"], items]
        if tie.unexplained_fen:
            yield [tie.day, institution, "未能逐项说明 not itemised", yuan(tie.unexplained_fen), "", ""]


def _sheet(
    workbook: Any,
    title: str,
    preamble: Sequence[str],
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    money_columns: Sequence[int] = (),
) -> None:
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.styles import Font

    sheet = workbook.create_sheet(title=title)
    bold = Font(bold=True)
    for line in preamble:
        sheet.append([_cell(line)])
    sheet.append([])
    heading = []
    for name in header:
        cell = WriteOnlyCell(sheet, value=_cell(name))
        cell.font = bold
        heading.append(cell)
    sheet.append(heading)
    for row in rows:
        cells = []
        for index, value in enumerate(row):
            cell = WriteOnlyCell(sheet, value=_cell(value))
            if index in money_columns:
                cell.number_format = YUAN_FORMAT
            elif isinstance(value, date) and not isinstance(value, datetime):
                cell.number_format = "yyyy-mm-dd"
            elif isinstance(value, datetime):
                cell.number_format = "yyyy-mm-dd hh:mm:ss"
            cells.append(cell)
        sheet.append(cells)

"""``python manage.py reconcile`` (statement files or a day; progress bar, summary, dry run, report) and the
nightly Celery job."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from django.core.management import CommandError, call_command

from reconciliation.models import BankStatement, Break, BreakKind, Match, TieOut, TieOutStatus
from reconciliation.simulator import Fault, FaultKind
from reconciliation.tasks import reconcile_daily
from tests.reconciliation.conftest import DAY1, World

pytestmark = pytest.mark.django_db

DAY2 = DAY1 + timedelta(days=1)


def files(
    world_factory: Any, tmp_path: Path, *, fmt: str = "csv", **faults: list[Fault]
) -> tuple[World, list[Path]]:
    world: World = world_factory(1)
    school = world.institutions[0]
    with world.bank.day(DAY1, faults=faults.get("day1", [])):
        contract = world.contract(school)
        world.pay_bank(contract)
        world.pay_wechat(world.contract(school))
        world.consume(contract, 2)
        world.release(school)
    with world.bank.day(DAY2, faults=faults.get("day2", [])):
        world.pay_bank(world.contract(school))
    paths = []
    for delivery in world.bank.deliveries(fmt=fmt):
        path = tmp_path / delivery.filename
        path.write_bytes(delivery.data)
        paths.append(path)
    return world, paths


def run(*args: Any) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("reconcile", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_files_are_imported_matched_and_tied_out_with_a_progress_bar_and_a_summary(
    world_factory: Any, tmp_path: Path
) -> None:
    _, paths = files(world_factory, tmp_path, fmt="camt053", day2=[Fault(FaultKind.BANK_FEE, amount_fen=800)])
    report = tmp_path / "report.xlsx"

    out, err = run(*(str(p) for p in paths), "--report", str(report))

    assert "已导入 imported" in out and "statement 20240304-0001" in out
    assert "规则 rule reference: 2 组 matches" in out  # the transfer and the release on day 1
    assert "规则 rule amount_date_counterparty: 1 组 matches" in out  # WeChat's settlement on day 2
    assert "差错 break fee: 1" in out
    assert "相符 tied" in out and "银行扣费 bank charges: 8.00 (1)" in out
    assert "待处理差错 open breaks: 1" in out
    assert "[" in err and "%" in err and "references" in err
    assert BankStatement.objects.count() == 2
    assert [t.status for t in TieOut.objects.order_by("day")] == [TieOutStatus.TIED, TieOutStatus.EXPLAINED]
    assert openpyxl.load_workbook(report).sheetnames == [
        "汇总 Tie-outs",
        "差错 Breaks",
        "未达账项 Open items",
        "匹配 Matches",
    ]

    again, _ = run(str(paths[0]), "--no-progress")
    assert "已导入过，未改变 already imported, unchanged" in again
    assert BankStatement.objects.count() == 2 and Match.objects.count() == 4


def test_a_dry_run_shows_what_would_match_and_keeps_nothing_but_the_import(
    world_factory: Any, tmp_path: Path
) -> None:
    _, paths = files(world_factory, tmp_path)
    out, _ = run(str(paths[0]), "--dry-run", "--no-progress")
    assert "试运行（未写入）dry run (nothing written)" in out
    assert (
        "将匹配 would match [reference] serial:" in out and "将匹配 would match [reference] payout:PO" in out
    )
    assert Match.objects.count() == 0 and TieOut.objects.count() == 0
    assert BankStatement.objects.count() == 1  # the file itself is in: importing is not matching


def test_a_day_is_reconciled_for_every_institution_with_a_statement(
    world_factory: Any, tmp_path: Path
) -> None:
    _, paths = files(world_factory, tmp_path, day1=[Fault(FaultKind.MISSING_LINE)])
    run(*(str(p) for p in paths), "--no-progress")
    out, _ = run("--date", DAY2.isoformat(), "--no-progress")
    assert "日终核对 tie-out" in out
    assert Break.objects.get().kind == BreakKind.UNMATCHED_ENTRY


def test_a_refused_file_stops_with_its_line_and_reason(world_factory: Any, tmp_path: Path) -> None:
    _, paths = files(world_factory, tmp_path)
    broken = tmp_path / "broken.csv"
    text = paths[0].read_bytes().decode("gb18030")
    rows = text.split("\r\n")
    row = next(
        i for i, r in enumerate(rows) if ",800.00,800.00," in r
    )  # the transfer: 800.00 in, balance 800.00
    rows[row] = rows[row].replace(
        ",800.00,800.00,", ",800.00,800.10,"
    )  # a running balance that does not follow
    broken.write_bytes("\r\n".join(rows).encode("gb18030"))
    with pytest.raises(CommandError) as refused:
        run(str(broken), "--no-progress")
    assert "对账单被拒收 statement refused (balance)" in str(refused.value)
    assert f"第{row + 1}行 line {row + 1}" in str(refused.value)
    with pytest.raises(CommandError):
        run("--no-progress")
    with pytest.raises(CommandError):
        run(str(paths[0]), "--date", DAY1.isoformat())
    assert BankStatement.objects.count() == 0


def test_the_nightly_job_reconciles_yesterday_and_can_run_twice(world_factory: Any, tmp_path: Path) -> None:
    _, paths = files(world_factory, tmp_path, day2=[Fault(FaultKind.UNKNOWN_REFERENCE, amount_fen=1_000)])
    from reconciliation.services.imports import import_statement

    for path in paths:
        import_statement(data=path.read_bytes(), filename=path.name)
    first = reconcile_daily(DAY2.isoformat())
    second = reconcile_daily(DAY2.isoformat())
    assert first["day"] == DAY2.isoformat() and first["matches"] == 4
    assert second["matches"] == 0
    assert list(first["tie_outs"].values()) == [TieOutStatus.EXPLAINED]  # type: ignore[attr-defined]
    assert Break.objects.get().kind == BreakKind.UNMATCHED_LINE

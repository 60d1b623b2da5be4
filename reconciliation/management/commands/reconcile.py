"""``python manage.py reconcile``: import and reconcile bank statements, or reconcile a day.

    python manage.py reconcile statement.csv other.sta        # import each file, match it, tie out its days
    python manage.py reconcile --date 2024-03-05               # every institution with a statement that day
    python manage.py reconcile statement.xml --dry-run         # show what would match; write nothing
    python manage.py reconcile --date 2024-03-05 --report report.xlsx

A refused file stops the command with the file's line number and the reason (nothing of it is imported).
Progress goes to stderr as a bar; a summary goes to stdout.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser

from custody.models import Institution
from reconciliation.errors import ReconciliationError
from reconciliation.formats import StatementError
from reconciliation.formats.base import format_yuan
from reconciliation.models import Break, BreakState
from reconciliation.reports import build_report
from reconciliation.services.imports import import_statement
from reconciliation.services.matching import MatchSummary
from reconciliation.services.runs import RunSummary, reconcile_day, reconcile_statement, statement_days
from reconciliation.services.tieout import explain


class ProgressBar:
    """A one-line bar on stderr (``[#####-----]  50%  references 500,000 / 1,000,000``), redrawn in place."""

    def __init__(self, write: Callable[[str], None], *, width: int = 30) -> None:
        self.write = write
        self.width = width
        self.shown = ""

    def __call__(self, phase: str, done: int, total: int) -> None:
        fraction = done / total if total else 1.0
        filled = int(self.width * fraction)
        text = (
            f"\r[{'#' * filled}{'-' * (self.width - filled)}] {fraction:4.0%}  {phase} {done:,} / {total:,}"
        )
        if text != self.shown:
            self.write(text)
            self.shown = text

    def done(self) -> None:
        if self.shown:
            self.write("\n")
            self.shown = ""


class Command(BaseCommand):
    help = "对账 Import and reconcile bank statements, or reconcile one day for every institution."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "files", nargs="*", type=Path, help="statement files (CSV, XLSX, camt.053, MT940)"
        )
        parser.add_argument("--date", type=date.fromisoformat, help="reconcile this day (YYYY-MM-DD)")
        parser.add_argument("--institution", type=int, action="append", help="only this institution (id)")
        parser.add_argument("--format", choices=["csv", "xlsx", "camt053", "mt940"], help="the files' format")
        parser.add_argument(
            "--uploads", action="store_true", help="first import the banks' uploaded statements"
        )
        parser.add_argument(
            "--allow-gap", action="store_true", help="import a statement that skips a sequence"
        )
        parser.add_argument("--dry-run", action="store_true", help="show what would match; write nothing")
        parser.add_argument("--report", type=Path, help="write the XLSX report of the days reconciled here")
        parser.add_argument("--user", help="the username this is done as (recorded on imports and matches)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        files: list[Path] = options["files"]
        day: date | None = options["date"]
        if bool(files) == bool(day):
            raise CommandError(
                "给出对账单文件或 --date 其一 give statement files or --date, not both or neither"
            )
        user = self._user(options["user"])
        progress = None if options["no_progress"] else ProgressBar(self._progress_line)
        runs: list[RunSummary] = []
        days: set[date] = set()
        try:
            if day is not None:
                institutions = (
                    list(Institution.objects.filter(pk__in=options["institution"]))
                    if options["institution"]
                    else None
                )
                runs.append(
                    reconcile_day(
                        day=day,
                        institutions=institutions,
                        dry_run=options["dry_run"],
                        progress=progress,
                        by=user,
                    )
                )
                days.add(day)
            for path in files:
                data = path.read_bytes()
                result = import_statement(
                    data=data,
                    filename=path.name,
                    format=options["format"],
                    imported_by=user,
                    allow_gap=options["allow_gap"],
                )
                statement = result.statement
                verb = "已导入 imported" if result.created else "已导入过，未改变 already imported, unchanged"
                self.stdout.write(
                    f"{path.name}: {verb} — 对账单 statement {statement.statement_id} "
                    f"({statement.period_start}–{statement.period_end}), {statement.line_count:,} 笔 lines"
                )
                runs.append(
                    reconcile_statement(
                        statement=statement, dry_run=options["dry_run"], progress=progress, by=user
                    )
                )
                days.update(statement_days(statement))
        except StatementError as error:
            raise CommandError(f"对账单被拒收 statement refused ({error.rule}): {error.message}") from error
        except ReconciliationError as error:
            raise CommandError(error.message) from error
        finally:
            if progress is not None:
                progress.done()
        for run in runs:
            self._summary(run)
        open_count = Break.objects.filter(state__in=(BreakState.OPEN, BreakState.ASSIGNED)).count()
        self.stdout.write(f"待处理差错 open breaks: {open_count:,}")
        if options["report"] is not None and days:
            options["report"].write_bytes(build_report(start=min(days), end=max(days)))
            self.stdout.write(f"报告 report: {options['report']}")

    def _progress_line(self, text: str) -> None:
        self.stderr.write(text, ending="")
        self.stderr.flush()

    def _user(self, username: str | None) -> User | None:
        if not username:
            return None
        try:
            return User.objects.get(username=username)
        except User.DoesNotExist:
            raise CommandError(f"没有用户 no user {username!r}") from None

    def _summary(self, run: RunSummary) -> None:
        for matched in run.matched:
            self._matched(matched)
        for tie in run.tie_outs:
            self.stdout.write(
                f"日终核对 tie-out, institution {tie.institution_id}: {tie.get_status_display()}"
            )
            self.stdout.write(explain(tie))

    def _matched(self, m: MatchSummary) -> None:
        mode = "试运行（未写入）dry run (nothing written)" if m.dry_run else "已匹配 matched"
        self.stdout.write(
            f"对账单 statement #{m.statement_id}: {mode} — 流水 lines {m.matched_lines:,} / "
            f"{m.lines_considered:,}, "
            f"分录 postings {m.matched_postings:,} / {m.postings_considered:,}, "
            f"在途 in transit: {m.pending_lines:,} lines, {m.pending_postings:,} postings"
        )
        for rule, count in sorted(m.matches_by_rule.items()):
            self.stdout.write(f"  规则 rule {rule}: {count:,} 组 matches, {m.lines_by_rule[rule]:,} 笔 lines")
        for kind, count in sorted(m.breaks_by_kind.items()):
            self.stdout.write(f"  差错 break {kind}: {count:,}")
        if m.dry_run:
            for group in m.proposals[:20]:
                self.stdout.write(
                    f"  将匹配 would match [{group.rule}] {group.key}: lines "
                    f"{[line for line, _ in group.lines]} ↔ "
                    f"postings {[p for p, _, _ in group.items]}, 差额 difference "
                    f"{format_yuan(group.difference_fen)}"
                )
        seconds = ", ".join(f"{phase} {s:.2f}s" for phase, s in m.seconds.items())
        self.stdout.write(f"  用时 time: {seconds}")

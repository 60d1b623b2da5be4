"""``python manage.py verify_custody``: check the custody domain's invariants (DESIGN.md section 6: 3, 4, 6,
7, 10); with ``--ledger`` the ledger's too. Prints progress, every finding by name, and exits 1 on any."""

from __future__ import annotations

import sys
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from custody.verification import verify_custody
from ledger import verification

MAX_PRINTED = 200


class Command(BaseCommand):
    help = (
        "核对托管业务 Verify the custody invariants: custody balance per institution, each contract's "
        "position and hours, the caps of open contracts, closure refunds."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--ledger", action="store_true", help="run verify_ledger's checks as well")

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.monotonic()

        def progress(stage: str, done: int, total: int) -> None:
            self.stderr.write(f"  [{stage}] {done}/{total}")

        findings = []
        if options["ledger"]:
            ledger_report = verification.verify(progress=progress)
            findings.extend(ledger_report.findings)
            self.stdout.write(f"ledger: {ledger_report.counts.get('entries', 0)} entries checked")
        report = verify_custody(progress=progress)
        findings.extend(report.findings)
        self.stdout.write(
            f"checked {report.counts.get('institutions', 0)} institutions and "
            f"{report.counts.get('contracts', 0)} contracts in {time.monotonic() - started:.2f}s"
        )
        if not findings:
            self.stdout.write(self.style.SUCCESS("OK: the custody invariants hold 托管核对通过"))
            return
        for finding in findings[:MAX_PRINTED]:
            self.stdout.write(self.style.ERROR(f"[{finding.check}] {finding.subject}: {finding.problem}"))
        if len(findings) > MAX_PRINTED:
            self.stdout.write(self.style.ERROR(f"... and {len(findings) - MAX_PRINTED} more"))
        sys.stdout.flush()
        raise CommandError(f"{len(findings)} findings 托管核对未通过", returncode=1)

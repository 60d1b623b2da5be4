"""``python manage.py verify_ledger``: check every invariant of the ledger; exit 1 on any finding."""

from __future__ import annotations

import sys
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from ledger import chain, verification

MAX_PRINTED = 200


class Command(BaseCommand):
    help = "核对账本 Verify the ledger: zero-sum, totals, limits, holds, hash chain and signed checkpoints."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--seal", action="store_true", help="seal queued entries into the chain first")

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.monotonic()
        if options["seal"]:
            sealed = chain.seal()
            self.stdout.write(f"sealed {sealed} queued entries 已封存")
        last_report = [0.0]

        def progress(stage: str, done: int, total: int) -> None:
            now = time.monotonic()
            if stage != "chain" or now - last_report[0] > 1 or done == total:
                last_report[0] = now
                self.stderr.write(f"  [{stage}] {done}/{total}")

        report = verification.verify(progress=progress)
        elapsed = time.monotonic() - started
        entries = report.counts.get("entries", 0)
        rate = entries / elapsed if elapsed else 0.0
        self.stdout.write(
            f"checked {entries} entries, {report.counts.get('chain_links', 0)} chain links, "
            f"{report.counts.get('checkpoints', 0)} checkpoints in {elapsed:.2f}s ({rate:,.0f} entries/s); "
            f"{report.counts.get('unsealed_entries', 0)} entries queued for sealing"
        )
        if report.ok:
            self.stdout.write(self.style.SUCCESS("OK: the ledger verifies 账本核对通过"))
            return
        for finding in report.findings[:MAX_PRINTED]:
            self.stdout.write(self.style.ERROR(f"[{finding.check}] {finding.subject}: {finding.problem}"))
        if len(report.findings) > MAX_PRINTED:
            self.stdout.write(self.style.ERROR(f"... and {len(report.findings) - MAX_PRINTED} more"))
        sys.stdout.flush()
        raise CommandError(f"{len(report.findings)} findings 账本核对未通过", returncode=1)

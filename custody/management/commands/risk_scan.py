"""``python manage.py risk_scan [--jurisdiction CODE]``: run the risk scan now (the daily job does the same)
and list the alerts it raised or escalated. Notifications go out after the scan commits."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from custody.models import AlertLevel, AlertRule, Jurisdiction
from custody.services.alerts import run_risk_scan


class Command(BaseCommand):
    help = "风险扫描 Scan every institution against its jurisdiction's risk thresholds (yellow and red)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--jurisdiction", help="地区代码 only this jurisdiction's institutions")

    def handle(self, *args: Any, **options: Any) -> None:
        jurisdiction = None
        if options["jurisdiction"]:
            jurisdiction = Jurisdiction.objects.filter(code=options["jurisdiction"]).first()
            if jurisdiction is None:
                raise CommandError(f"地区 {options['jurisdiction']} 不存在 no such jurisdiction")
        started = time.perf_counter()
        result = run_risk_scan(jurisdiction=jurisdiction)
        for verb, alerts in (
            ("新预警 raised", result.raised),
            ("升级 escalated", result.escalated),
            ("再次出现 back", result.recurred),
            ("条件消除 cleared", result.cleared),
        ):
            for alert in alerts:
                self.stdout.write(
                    f"  {verb}: [{AlertLevel(alert.level).label}] institution {alert.institution_id} "
                    f"{AlertRule(alert.rule).label} {alert.value} / {alert.threshold} {alert.unit} "
                    f"({alert.window}) #{alert.pk}"
                )
        self.stdout.write(
            f"扫描完成 scanned {result.institutions} institutions in {time.perf_counter() - started:.2f} s: "
            f"{len(result.raised)} raised, {len(result.escalated)} escalated, "
            f"{result.seen_again} still open, {len(result.cleared)} cleared"
        )

"""``python manage.py setup_periodic_tasks``: write the Celery beat schedule (django-celery-beat) of the
ledger's and the custody domain's background jobs. Idempotent: re-running updates the same rows, never
duplicates them.

Times are Asia/Shanghai wall-clock times (working days and bank cut-offs are local).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction
from django_celery_beat.models import CrontabSchedule, PeriodicTask

TIMEZONE = "Asia/Shanghai"


@dataclass(frozen=True)
class Job:
    name: str  # the PeriodicTask's unique name
    task: str  # the registered Celery task name
    minute: str
    hour: str = "*"
    description: str = ""


SCHEDULE: tuple[Job, ...] = (
    Job(
        "ledger: seal the hash chain",
        "ledger.seal_chain",
        minute="*",
        description="每分钟封存新分录 every minute",
    ),
    Job(
        "ledger: expire holds",
        "ledger.expire_pending",
        minute="*/10",
        description="每10分钟 every 10 minutes",
    ),
    Job("ledger: signed checkpoint", "ledger.checkpoint", minute="50", description="每小时签名 hourly"),
    Job(
        "custody: auto-confirm lessons",
        "custody.auto_confirm_lessons",
        minute="*/15",
        description="逾期默认确认课时 confirm lessons past their deadline, every 15 minutes",
    ),
    Job(
        "custody: lapse unpaid contracts",
        "custody.lapse_unpaid_contracts",
        minute="25",
        description="逾期未付款的合同自动取消 cancel orders left unpaid past the policy's window, hourly",
    ),
    Job(
        "custody: approve unanswered refunds",
        "custody.approve_unanswered_refunds",
        minute="5",
        description="逾期未答复的退费视为同意 approve claims left unanswered, hourly",
    ),
    Job(
        "custody: instruct refund payouts",
        "custody.instruct_refund_payouts",
        minute="10",
        description="退费划付指令 send approved refunds to the bank, hourly",
    ),
    Job(
        "custody: run due closures",
        "custody.run_due_closures",
        minute="20",
        description="停办退费 run closures whose refunds have started, hourly",
    ),
    Job(
        "custody: release payouts",
        "custody.run_release_payouts",
        minute="0",
        hour="16",
        description="每日拨付 daily release payouts at 16:00, before the bank's cut-off",
    ),
    Job(
        "custody: reserve checks",
        "custody.check_reserves",
        minute="0",
        hour="1",
        description="风险保证金核查 daily risk-reserve check at 01:00",
    ),
    Job(
        "custody: daily checkpoint",
        "custody.daily_checkpoint",
        minute="5",
        hour="0",
        description="每日托管检查点 sign every contract's owed amount at 00:05",
    ),
    Job(
        "custody: risk scan",
        "custody.risk_scan",
        minute="30",
        hour="23",
        description="风险预警扫描 daily risk scan at 23:30, after the day's payouts and reserve check",
    ),
)


class Command(BaseCommand):
    help = "写入定时任务 Write the Celery beat schedule of the ledger's and custody's jobs (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            for job in SCHEDULE:
                crontab, _ = CrontabSchedule.objects.get_or_create(
                    minute=job.minute,
                    hour=job.hour,
                    day_of_week="*",
                    day_of_month="*",
                    month_of_year="*",
                    timezone=TIMEZONE,
                )
                task, created = PeriodicTask.objects.update_or_create(
                    name=job.name,
                    defaults={
                        "task": job.task,
                        "crontab": crontab,
                        "interval": None,
                        "enabled": True,
                        "description": job.description,
                    },
                )
                verb = "created 已创建" if created else "updated 已更新"
                self.stdout.write(
                    f"{verb}: {task.name} -> {job.task} at {job.minute} {job.hour} * * * ({TIMEZONE})"
                )

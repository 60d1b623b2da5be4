"""The background jobs: thin, idempotent task wrappers, follow-up work enqueued only after commit, and the
beat schedule written by ``setup_periodic_tasks``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from io import StringIO

import pytest
from celery import current_app
from django.core.management import call_command
from django_celery_beat.models import CrontabSchedule, PeriodicTask

import ledger.tasks  # noqa: F401 - registers the ledger's tasks, as the worker's autodiscovery does
from custody import tasks
from custody.management.commands.setup_periodic_tasks import SCHEDULE
from custody.models import ClosureState, Contract, LessonState, PayoutInstruction, Refund, RefundState
from custody.services.closures import order_closure
from custody.services.lessons import NewLesson, record_lessons
from custody.services.refunds import claim_refund
from ledger import clock

pytestmark = pytest.mark.django_db


def test_setup_periodic_tasks_writes_the_schedule_once_in_shanghai_time() -> None:
    out = StringIO()
    call_command("setup_periodic_tasks", stdout=out)
    call_command("setup_periodic_tasks", stdout=out)

    assert PeriodicTask.objects.count() == len(SCHEDULE)
    assert "created" in out.getvalue() and "updated" in out.getvalue()
    assert {str(zone) for zone in CrontabSchedule.objects.values_list("timezone", flat=True)} == {
        "Asia/Shanghai"
    }
    assert CrontabSchedule.objects.count() == len({(job.minute, job.hour) for job in SCHEDULE})
    release = PeriodicTask.objects.get(task="custody.run_release_payouts")
    assert (release.crontab.hour, release.crontab.minute, release.enabled) == ("16", "0", True)
    registered = set(current_app.tasks)
    assert {job.task for job in SCHEDULE} <= registered


def test_the_tasks_run_the_services_and_running_them_again_changes_nothing(paid_contract: Contract) -> None:
    (lesson,) = record_lessons(
        lessons=[NewLesson(contract=paid_contract, held_at=clock.now(), idempotency_key="T1")]
    )
    clock.advance(timedelta(days=40))
    assert tasks.auto_confirm_lessons() == 1
    assert tasks.auto_confirm_lessons() == 0
    assert lesson.__class__.objects.get(pk=lesson.pk).state == LessonState.CONFIRMED
    assert tasks.run_release_payouts() == 1
    assert tasks.run_release_payouts() == 0

    claim = claim_refund(contract=paid_contract, idempotency_key="T-claim")
    clock.advance(timedelta(days=10))
    assert tasks.approve_unanswered_refunds() == 1
    assert tasks.instruct_refund_payouts_task() == 1
    assert tasks.instruct_refund_payouts_task() == 0
    assert Refund.objects.get(pk=claim.pk).state == RefundState.INSTRUCTED
    assert tasks.check_reserves(on_date="2024-04-15") == 0  # no risk-reserve institution here


def test_an_abnormal_closure_enqueues_its_run_after_commit_and_the_task_is_idempotent(
    paid_contract: Contract, django_capture_on_commit_callbacks: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    enqueued: list[int] = []
    monkeypatch.setattr(tasks.run_closure_task, "delay", enqueued.append)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        closure = order_closure(
            institution=paid_contract.institution, mode="abnormal", reason="跑路 absconded"
        )
    assert enqueued == []
    for callback in callbacks:
        callback()
    assert enqueued == [closure.pk]

    first = tasks.run_closure_task(closure.pk)
    again = tasks.run_closure_task(closure.pk)
    assert (
        first
        == again
        == {
            "state": ClosureState.COMPLETED,
            "contracts_done": 1,
            "contracts_total": 1,
            "refunded_fen": 160_000,
        }
    )
    assert PayoutInstruction.objects.filter(kind="refund").count() == 1

    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.run_due_closures() == 0  # completed closures are not run again
    assert enqueued == [closure.pk]

"""Background jobs of the custody domain: thin wrappers over its services, each idempotent and safe to retry.

Celery acknowledges a task only after it ran and re-queues it if the worker dies (settings: acks_late), so
every task may run twice; the services make that harmless (state guards, deterministic ledger keys, the
closure run's per-batch transactions). Follow-up work is enqueued only after the transaction that made it
necessary commits (``transaction.on_commit``), never from inside it.

The schedule (``python manage.py setup_periodic_tasks``) also runs the ledger's own jobs:
``ledger.seal_chain``, ``ledger.expire_pending`` and ``ledger.checkpoint`` (ledger/tasks.py).
"""

from __future__ import annotations

from datetime import date
from functools import partial

from celery import shared_task
from django.db import transaction


@shared_task(name="custody.auto_confirm_lessons")
def auto_confirm_lessons() -> int:
    """Confirm lessons whose parents stayed silent past the deadline (逾期默认确认)."""
    from custody.services.lessons import auto_confirm_due_lessons

    return auto_confirm_due_lessons()


@shared_task(name="custody.lapse_unpaid_contracts")
def lapse_unpaid_contracts() -> int:
    """Cancel orders left unpaid past their policy's window (逾期未付款自动取消)."""
    from custody.services.contracts import lapse_unpaid_contracts as lapse

    return lapse()


@shared_task(name="custody.run_release_payouts")
def run_release_payouts() -> int:
    """Instruct the day's release payouts (拨付) to institutions."""
    from custody.services.payouts import run_release_payouts as run

    return len(run())


@shared_task(name="custody.approve_unanswered_refunds")
def approve_unanswered_refunds() -> int:
    """Approve refund claims the institution left unanswered past the deadline (逾期视为同意); each approval
    enqueues its payout instruction after commit."""
    from custody.services.refunds import approve_unanswered_refunds as approve

    return approve()


@shared_task(name="custody.instruct_refund_payouts")
def instruct_refund_payouts_task(refund_ids: list[int] | None = None) -> int:
    """Send approved refunds to the bank (all of them, or the ones named)."""
    from custody.models import Refund
    from custody.services.refunds import instruct_refund_payouts

    refunds = None if refund_ids is None else list(Refund.objects.filter(pk__in=refund_ids))
    return len(instruct_refund_payouts(refunds=refunds))


@shared_task(name="custody.run_closure")
def run_closure_task(closure_id: int) -> dict[str, int | str]:
    """Run (or resume) one closure's refund job."""
    from custody.models import Closure
    from custody.services.closures import run_closure

    closure = run_closure(closure=Closure.objects.get(pk=closure_id))
    return {
        "state": closure.state,
        "contracts_done": closure.contracts_done,
        "contracts_total": closure.contracts_total,
        "refunded_fen": closure.refunded_fen,
    }


@shared_task(name="custody.run_due_closures")
def run_due_closures() -> int:
    """Enqueue a run for every closure whose refunds have started and are not finished (planned closures
    after their notice period; runs that stopped half way, or wait for a contract's earlier refund)."""
    from custody.services.closures import due_closures

    closure_ids = due_closures()
    for closure_id in closure_ids:
        transaction.on_commit(partial(run_closure_task.delay, closure_id))
    return len(closure_ids)


@shared_task(name="custody.check_reserves")
def check_reserves(on_date: str | None = None) -> int:
    """The daily risk-reserve check; ``on_date`` is ISO (YYYY-MM-DD), default today in Shanghai."""
    from custody.services.reserve import check_reserves as check

    return len(check(on_date=date.fromisoformat(on_date) if on_date else None))


@shared_task(name="custody.daily_checkpoint")
def daily_checkpoint() -> int:
    """The daily custody checkpoint (每日检查点): sign the chain head, the entry log's root and every
    contract's owed amount with a total per institution. A second run signs a second, equally valid one."""
    from custody.services.checkpoints import create_custody_checkpoint

    return create_custody_checkpoint().pk


@shared_task(name="custody.risk_scan")
def risk_scan() -> dict[str, int]:
    """The daily risk scan (风险预警); notifications are sent after it commits. Re-running raises nothing
    twice: an unresolved alert is only seen again."""
    from custody.services.alerts import run_risk_scan

    result = run_risk_scan()
    return {
        "raised": len(result.raised),
        "escalated": len(result.escalated),
        "seen_again": result.seen_again,
        "cleared": len(result.cleared),
    }

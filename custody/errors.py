"""The custody domain's errors: one family, each naming the rule and the numbers that broke it.

``code`` is stable for machines; ``message`` is Chinese first with English beside it. The API maps these to
its error shape once, and forms map them to field errors once.
"""

from __future__ import annotations

from typing import Any


class CustodyError(Exception):
    code = "custody_error"

    def __init__(self, message: str, *, field: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details


class RuleViolation(CustodyError):
    """A supervision rule refuses the request, e.g.
    ``RuleViolation("max_paid_hours", "单次收费超过60课时 one charge may cover at most 60 hours",
    limit=60, requested=72)``."""

    code = "rule_violation"

    def __init__(self, rule: str, message: str, *, field: str | None = None, **details: Any) -> None:
        super().__init__(message, field=field, rule=rule, **details)
        self.rule = rule


class IllegalTransition(CustodyError):
    """A state machine refuses a transition (never a silent no-op)."""

    code = "illegal_transition"

    def __init__(self, entity: str, current: str, target: str) -> None:
        super().__init__(
            f"{entity}当前状态为{current}，不能变为{target} {entity} is {current}; it cannot become {target}",
            entity=entity,
            current=current,
            target=target,
        )


class RefundAlreadyAnswered(IllegalTransition):
    """Only a claimed refund (待答复) can be answered. An approved, instructed, paid or rejected one is past
    the answer; in particular an instructed refund is at the bank, and a failed payout is put back to
    approved by the bank's answer (``payouts.record_payout_result``), never by the institution."""

    code = "refund_already_answered"

    def __init__(self, refund_id: int, current: str, target: str) -> None:
        CustodyError.__init__(
            self,
            f"退费申请已答复（当前状态{current}），只有待答复的申请才能同意或拒绝 "
            f"the refund is already {current}; only a claimed refund can be approved or rejected",
            entity="refund",
            refund=refund_id,
            current=current,
            target=target,
        )


class NotFound(CustodyError):
    code = "not_found"


class PaymentRejected(CustodyError):
    """A payment callback that verified but cannot be accepted (wrong amount, unknown order, closed)."""

    code = "payment_rejected"

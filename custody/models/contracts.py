"""Contracts (培训合同, the model contract GF-2021-2604): what a parent bought, at what locked price."""

from __future__ import annotations

from django.db import models
from django.db.models import F, Q

from custody.models.institutions import Course, Institution
from custody.models.people import Guardian, Student
from custody.models.policy import Policy
from custody.pii import EncryptedTextField


class ContractState(models.TextChoices):
    AWAITING_PAYMENT = "awaiting_payment", "待支付 awaiting payment"
    ACTIVE = "active", "履行中 active"
    COMPLETED = "completed", "已完成 completed"
    REFUNDED = "refunded", "已退费 refunded"
    CANCELLED = "cancelled", "已取消 cancelled"


class CancelReason(models.TextChoices):
    NONE = "", "—"
    PARENT = "parent", "家长取消 cancelled by the parent"
    UNPAID = "unpaid", "逾期未付款 not paid in time"
    CLOSURE = "closure", "机构停办 the institution closed"


class Contract(models.Model):
    """One purchase. ``amount_fen`` buys ``paid_hours``; ``gift_hours`` (赠课) have no cash value.

    The unit price is locked at purchase: amount ÷ paid hours. Lessons consume paid hours first; the k-th paid
    hour releases floor(amount·k / paid_hours) − floor(amount·(k−1) / paid_hours) fen, so the released amounts
    add up to the amount exactly, to the fen.
    """

    # A contract's row changes with every lesson confirmed and at its end, and a change of state rewrites
    # every index entry: so only indexes something reads. The number is unique through a constraint
    # (unique=True adds a pattern-ops index for LIKE, which nothing runs); institution and student are the
    # leading columns of the two composite indexes below, which serve their look-ups and foreign keys.
    number = models.CharField(max_length=32)  # also the order reference payers pay against
    institution = models.ForeignKey(
        Institution, on_delete=models.PROTECT, related_name="contracts", db_index=False
    )
    course = models.ForeignKey(Course, on_delete=models.PROTECT, related_name="contracts")
    student = models.ForeignKey(Student, on_delete=models.PROTECT, related_name="contracts", db_index=False)
    guardian = models.ForeignKey(Guardian, on_delete=models.PROTECT, related_name="contracts")
    policy = models.ForeignKey(Policy, on_delete=models.PROTECT, related_name="contracts")
    subject = models.CharField(max_length=50)  # copied from the course: the anti-splitting rule's key
    paid_hours = models.PositiveIntegerField()
    gift_hours = models.PositiveIntegerField(default=0)
    amount_fen = models.BigIntegerField()
    service_starts_on = models.DateField()
    service_ends_on = models.DateField()
    # Indexed only where set (custody_contract_renews): most contracts renew nothing.
    renews = models.ForeignKey(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="renewals", db_index=False
    )
    state = models.CharField(
        max_length=16, choices=ContractState.choices, default=ContractState.AWAITING_PAYMENT
    )
    signed_at = models.DateTimeField()
    paid_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    # Why a contract was cancelled before it was paid (blank in every other state).
    cancel_reason = models.CharField(max_length=8, choices=CancelReason.choices, default="", blank=True)
    payer_account = EncryptedTextField(blank=True)  # the account that paid: refunds go back there (原路返回)
    # Hours, kept in step with lessons and refunds in the same transactions (the ledger holds the money).
    hours_consumed = models.PositiveIntegerField(default=0)  # confirmed lessons, paid and gift
    hours_pending = models.PositiveIntegerField(default=0)  # recorded or disputed, not yet confirmed
    paid_hours_refunded = models.PositiveIntegerField(default=0)
    # Ledger accounts: prepaid:c (liability, owed to the parent until earned) and refund_payable:c.
    prepaid_account = models.OneToOneField(
        "ledger.Account", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    refund_account = models.OneToOneField(
        "ledger.Account", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )

    class Meta:
        indexes = [
            models.Index(
                fields=["student", "institution", "subject", "state"], name="custody_contract_split"
            ),
            models.Index(fields=["institution", "state"], name="custody_contract_inst_state"),
            models.Index(
                fields=["renews"], name="custody_contract_renews", condition=Q(renews__isnull=False)
            ),
            # The hourly lapse job's look-up: orders awaiting payment are few, so this index stays small.
            models.Index(
                fields=["signed_at"],
                name="custody_contract_unpaid",
                condition=Q(state=ContractState.AWAITING_PAYMENT),
            ),
        ]
        constraints = [
            models.UniqueConstraint(fields=["number"], name="custody_contract_number"),
            models.CheckConstraint(
                condition=Q(paid_hours__gt=0), name="custody_contract_paid_hours_positive"
            ),
            models.CheckConstraint(condition=Q(amount_fen__gt=0), name="custody_contract_amount_positive"),
            models.CheckConstraint(
                condition=Q(service_ends_on__gte=F("service_starts_on")), name="custody_contract_period_order"
            ),
            # Invariant 6: consumed, pending and refunded hours never exceed what was bought.
            models.CheckConstraint(
                condition=Q(
                    hours_consumed__lte=F("paid_hours")
                    + F("gift_hours")
                    - F("hours_pending")
                    - F("paid_hours_refunded")
                ),
                name="custody_contract_hours_within_bought",
            ),
        ]

    def __str__(self) -> str:
        return self.number

    @property
    def total_hours(self) -> int:
        return self.paid_hours + self.gift_hours

    @property
    def remaining_hours(self) -> int:
        """Hours neither consumed, pending nor refunded."""
        return self.total_hours - self.hours_consumed - self.hours_pending - self.paid_hours_refunded

    def release_for_paid_hours(self, first: int, count: int) -> int:
        """Fen released by paid hours ``first`` .. ``first + count - 1`` (1-based), by the exact schedule."""
        last = min(first + count - 1, self.paid_hours)
        if count <= 0 or first > self.paid_hours:
            return 0
        return (self.amount_fen * last) // self.paid_hours - (
            self.amount_fen * (first - 1)
        ) // self.paid_hours

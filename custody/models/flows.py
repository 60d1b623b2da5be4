"""The money flows' records: payments in, lessons, refunds, payout instructions, closures, callback log."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from custody.models.contracts import Contract
from custody.models.institutions import Institution
from custody.pii import EncryptedTextField


class Payment(models.Model):
    """A payment confirmed by a channel's signed callback. Idempotent on (channel, transaction_id)."""

    contract = models.ForeignKey(Contract, on_delete=models.PROTECT, related_name="payments")
    channel = models.CharField(max_length=16)  # bank, wechat, alipay
    transaction_id = models.CharField(max_length=64)
    amount_fen = models.BigIntegerField()
    currency = models.CharField(max_length=3, default="CNY")
    paid_at = models.DateTimeField()
    received_at = models.DateTimeField()
    payer_account = EncryptedTextField()
    raw_payload = models.BinaryField()  # the exact bytes that were verified
    entry = models.ForeignKey(
        "ledger.Entry", on_delete=models.PROTECT, related_name="+"
    )  # Dr clearing / Cr prepaid
    # Settlement into the custody account: Dr custody_cash / Cr clearing.
    settlement_entry = models.ForeignKey(
        "ledger.Entry", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["channel", "transaction_id"], name="custody_payment_channel_txn"),
            models.CheckConstraint(condition=Q(amount_fen__gt=0), name="custody_payment_amount_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.channel}:{self.transaction_id}"


class CallbackOutcome(models.TextChoices):
    ACCEPTED = "accepted", "已受理 accepted"
    REPLAY = "replay", "重复通知 replay"
    REJECTED = "rejected", "已拒绝 rejected"


class CallbackLog(models.Model):
    """Every channel callback, accepted or not. Rejected ones keep only a digest, never personal data."""

    channel = models.CharField(max_length=16)
    received_at = models.DateTimeField()
    outcome = models.CharField(max_length=8, choices=CallbackOutcome.choices)
    reason_code = models.CharField(max_length=32, blank=True)
    transaction_id = models.CharField(max_length=64, blank=True)
    body_sha256 = models.CharField(max_length=64)
    body_size = models.PositiveIntegerField()
    source_ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["channel", "received_at"], name="custody_callback_time")]

    def __str__(self) -> str:
        return f"{self.channel} {self.outcome} {self.reason_code}"


class LessonState(models.TextChoices):
    PENDING = "pending", "待确认 awaiting confirmation"
    DISPUTED = "disputed", "有异议 disputed"
    CONFIRMED = "confirmed", "已确认 confirmed (released)"
    VOIDED = "voided", "已作废 voided"


class ConfirmedBy(models.TextChoices):
    PARENT = "parent", "家长确认 parent"
    SILENCE = "silence", "逾期默认 no answer in time"
    INSTITUTION = "institution", "机构处理异议 institution (dispute withdrawn)"
    REGULATOR = "regulator", "监管裁定 regulator"


class Lesson(models.Model):
    """一课一消: one delivered lesson. While unconfirmed it is a pending ledger transfer
    (Dr prepaid / Cr payable). ``amount_fen`` is what it releases (0 for gift hours, which have no
    transfer)."""

    # Every confirmation rewrites the row in every index of the table (its state is indexed, so the update is
    # never HOT), so the table keeps only the indexes something reads. No single-column indexes on the two
    # keys: custody_lesson_contract_state and custody_lesson_inst_state start with them. The idempotency key
    # is unique through a constraint, not ``unique=True``, which would add a second (pattern-ops) index
    # nothing uses.
    contract = models.ForeignKey(Contract, on_delete=models.PROTECT, related_name="lessons", db_index=False)
    institution = models.ForeignKey(
        Institution, on_delete=models.PROTECT, related_name="lessons", db_index=False
    )
    idempotency_key = models.CharField(max_length=200)
    held_at = models.DateTimeField()
    hours = models.PositiveSmallIntegerField(default=1)
    paid_hours = (
        models.PositiveSmallIntegerField()
    )  # how many of ``hours`` are paid (the rest are gift hours)
    amount_fen = models.BigIntegerField()
    state = models.CharField(max_length=10, choices=LessonState.choices, default=LessonState.PENDING)
    pending_transfer = models.OneToOneField(
        "ledger.PendingTransfer", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    recorded_at = models.DateTimeField()
    # Indexed only where set (custody_lesson_recorded_by): the bulk paths record lessons without a user.
    recorded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
    )
    confirm_deadline = models.DateTimeField()  # silence counts as confirmed after N working days
    confirmed_at = models.DateTimeField(null=True, blank=True)
    confirmed_by = models.CharField(max_length=12, choices=ConfirmedBy.choices, blank=True)
    disputed_at = models.DateTimeField(null=True, blank=True)
    dispute_reason = models.CharField(max_length=500, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution_note = models.CharField(max_length=500, blank=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["confirm_deadline"], name="custody_lesson_due", condition=Q(state="pending")
            ),
            models.Index(fields=["contract", "state"], name="custody_lesson_contract_state"),
            models.Index(fields=["institution", "state", "held_at"], name="custody_lesson_inst_state"),
            # For the foreign key's checks when a user is deleted (an ``=`` lookup implies NOT NULL).
            models.Index(
                fields=["recorded_by"],
                name="custody_lesson_recorded_by",
                condition=Q(recorded_by__isnull=False),
            ),
        ]
        constraints = [
            models.UniqueConstraint(fields=["idempotency_key"], name="custody_lesson_idempotency_key"),
            models.CheckConstraint(condition=Q(hours__gt=0), name="custody_lesson_hours_positive"),
            models.CheckConstraint(condition=Q(amount_fen__gte=0), name="custody_lesson_amount_non_negative"),
            models.CheckConstraint(
                condition=Q(amount_fen=0) | Q(pending_transfer__isnull=False),
                name="custody_lesson_paid_has_hold",
            ),
        ]

    def __str__(self) -> str:
        return f"lesson {self.pk} of {self.contract_id} ({self.state})"


class RefundReason(models.TextChoices):
    PARENT_CLAIM = "parent_claim", "家长申请 parent's claim"
    CLOSURE = "closure", "机构停办 institution closure"


class RefundState(models.TextChoices):
    CLAIMED = "claimed", "待机构答复 awaiting the institution"
    REJECTED = "rejected", "机构拒绝 rejected"
    APPROVED = "approved", "已批准 approved"
    INSTRUCTED = "instructed", "已发送银行 sent to the bank"
    PAID = "paid", "已退回 paid back"


class Refund(models.Model):
    """退费: a claim and, once approved, the money owed back (Dr prepaid / Cr refund_payable)."""

    contract = models.ForeignKey(Contract, on_delete=models.PROTECT, related_name="refunds")
    reason = models.CharField(max_length=16, choices=RefundReason.choices)
    state = models.CharField(max_length=10, choices=RefundState.choices, default=RefundState.CLAIMED)
    idempotency_key = models.CharField(max_length=200)  # unique: custody_refund_idempotency_key
    claimed_at = models.DateTimeField()
    claim_note = models.CharField(max_length=500, blank=True)
    answer_due = models.DateTimeField(null=True, blank=True)  # institution's deadline; silence approves
    answered_at = models.DateTimeField(null=True, blank=True)
    approved_by = models.CharField(max_length=16, blank=True)  # institution, silence, closure, regulator
    rejection_reason = models.CharField(max_length=500, blank=True)
    paid_hours = models.PositiveIntegerField(default=0)  # paid hours refunded
    amount_fen = models.BigIntegerField(default=0)
    # No index: nothing reads refunds by entry, and entries are never deleted (the ledger's append-only
    # guard), so nothing looks refunds up by it either. PostgreSQL checks the entry exists by a trigger, not a
    # constraint (migration 0012, custody/sql/ledger_references.postgresql.sql).
    entry = models.ForeignKey(
        "ledger.Entry",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    payout_due = models.DateField(null=True, blank=True)  # 5 or 10 working days after approval
    paid_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        # The keys' uniqueness as constraints, not unique=True: that also builds a pattern-matching
        # (varchar_pattern_ops) index on PostgreSQL, which nothing reads and every insert (a closure's
        # 10,000 refunds and instructions) had to write.
        constraints = [
            models.UniqueConstraint(fields=["idempotency_key"], name="custody_refund_idempotency_key"),
            models.UniqueConstraint(
                fields=["contract"],
                condition=Q(reason="closure"),
                name="custody_one_closure_refund_per_contract",
            ),
            models.UniqueConstraint(
                fields=["contract"],
                condition=Q(state__in=["claimed", "approved", "instructed"]),
                name="custody_one_open_refund_per_contract",
            ),
            models.CheckConstraint(condition=Q(amount_fen__gte=0), name="custody_refund_amount_non_negative"),
        ]
        indexes = [models.Index(fields=["state", "answer_due"], name="custody_refund_due")]

    def __str__(self) -> str:
        return f"refund {self.pk} of {self.contract_id} ({self.state})"


class PayoutKind(models.TextChoices):
    RELEASE = "release", "拨付机构 release to the institution"
    REFUND = "refund", "退费 refund to the payer"


class PayoutState(models.TextChoices):
    INSTRUCTED = "instructed", "已发送 instructed"
    EXECUTED = "executed", "已执行 executed"
    FAILED = "failed", "失败 failed"


class PayoutInstruction(models.Model):
    """A bank instruction out of the custody account. While instructed, the money is a ledger hold
    (Dr payable or refund_payable / Cr custody_cash); the bank's confirmation posts it, a failure voids it."""

    # Looked up through custody_payout_inst_state (institution first), which makes an index of its own a copy.
    institution = models.ForeignKey(
        Institution, on_delete=models.PROTECT, related_name="payouts", db_index=False
    )
    kind = models.CharField(max_length=8, choices=PayoutKind.choices)
    # Shown on the bank statement; unique: custody_payout_reference (see Refund.Meta for why a constraint).
    reference = models.CharField(max_length=40)
    amount_fen = models.BigIntegerField()
    destination_account = EncryptedTextField()
    # A refund has at most one live (instructed or executed) instruction; a failed one keeps its link, and the
    # refund is instructed again (custody_one_live_payout_per_refund).
    refund = models.ForeignKey(
        Refund, on_delete=models.PROTECT, null=True, blank=True, related_name="payouts"
    )
    # Checked by a trigger on PostgreSQL, like Refund.entry (migration 0012).
    pending_transfer = models.OneToOneField(
        "ledger.PendingTransfer", on_delete=models.PROTECT, related_name="+", db_constraint=False
    )
    state = models.CharField(max_length=10, choices=PayoutState.choices, default=PayoutState.INSTRUCTED)
    instructed_at = models.DateTimeField()
    executed_at = models.DateTimeField(null=True, blank=True)
    bank_reference = models.CharField(max_length=64, blank=True)
    failure_reason = models.CharField(max_length=500, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["reference"], name="custody_payout_reference"),
            models.CheckConstraint(condition=Q(amount_fen__gt=0), name="custody_payout_amount_positive"),
            models.UniqueConstraint(
                fields=["refund"],
                condition=Q(state__in=["instructed", "executed"]),
                name="custody_one_live_payout_per_refund",
            ),
        ]
        indexes = [models.Index(fields=["institution", "state"], name="custody_payout_inst_state")]

    def __str__(self) -> str:
        return self.reference


class ClosureMode(models.TextChoices):
    PLANNED = "planned", "计划停办 planned (30 days' notice)"
    ABNORMAL = "abnormal", "异常停办 abnormal (immediate freeze)"


class ClosureState(models.TextChoices):
    ANNOUNCED = "announced", "已公告 announced"
    RUNNING = "running", "退费中 refunding"
    COMPLETED = "completed", "已完成 completed"


class Closure(models.Model):
    """终止办学: the closure of one institution, and the progress of its refund run."""

    institution = models.OneToOneField(Institution, on_delete=models.PROTECT, related_name="closure")
    mode = models.CharField(max_length=8, choices=ClosureMode.choices)
    state = models.CharField(max_length=10, choices=ClosureState.choices, default=ClosureState.ANNOUNCED)
    ordered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    ordered_at = models.DateTimeField()
    reason = models.CharField(max_length=500)
    refunds_start_at = models.DateTimeField()  # planned: after the notice period; abnormal: at once
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    contracts_total = models.PositiveIntegerField(default=0)
    contracts_done = models.PositiveIntegerField(default=0)
    lessons_voided = models.PositiveIntegerField(default=0)
    refunded_fen = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"closure of {self.institution} ({self.state})"

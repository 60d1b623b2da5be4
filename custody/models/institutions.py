"""Training institutions (培训机构) and their courses."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from custody.models.policy import ClassSizeBand, Jurisdiction, TeachingMode


class TrainingCategory(models.TextChoices):
    SUBJECT = "subject", "学科类 subject"
    NON_SUBJECT = "non_subject", "非学科类 non-subject"


class SupervisionMode(models.TextChoices):
    CUSTODY = "custody", "银行托管 full custody"
    RISK_RESERVE = "risk_reserve", "风险保证金 risk reserve"


class InstitutionState(models.TextChoices):
    ACTIVE = "active", "正常 active"
    FROZEN = "frozen", "冻结 frozen"
    CLOSING = "closing", "停办中 closing"
    CLOSED = "closed", "已停办 closed"


class Institution(models.Model):
    jurisdiction = models.ForeignKey(Jurisdiction, on_delete=models.PROTECT, related_name="institutions")
    name = models.CharField(max_length=200)
    licence_number = models.CharField(max_length=64, unique=True)  # 办学许可证号
    unified_social_credit_code = models.CharField(max_length=18, blank=True)  # 统一社会信用代码
    category = models.CharField(max_length=16, choices=TrainingCategory.choices)
    supervision_mode = models.CharField(
        max_length=16, choices=SupervisionMode.choices, default=SupervisionMode.CUSTODY
    )
    custody_bank_name = models.CharField(max_length=100)
    custody_account_number = models.CharField(max_length=40)  # 预收费资金专用账户
    settlement_account_number = models.CharField(max_length=40)  # the institution's own (basic) account
    whitelisted = models.BooleanField(default=False)  # 白名单
    state = models.CharField(max_length=8, choices=InstitutionState.choices, default=InstitutionState.ACTIVE)
    state_changed_at = models.DateTimeField(null=True, blank=True)
    state_reason = models.CharField(max_length=500, blank=True)
    # Risk-reserve mode: the reserve that must stay deposited (风险保证金).
    reserve_required_fen = models.BigIntegerField(default=0)
    # Ledger accounts: custody_cash:i (asset, the supervised account) and payable:i (released, not paid out).
    cash_account = models.OneToOneField(
        "ledger.Account", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    payable_account = models.OneToOneField(
        "ledger.Account", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["jurisdiction", "state"], name="custody_inst_jur_state")]

    def __str__(self) -> str:
        return self.name


class Course(models.Model):
    """A published course with its price per class hour (课时)."""

    institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="courses")
    name = models.CharField(max_length=200)
    subject = models.CharField(max_length=50)  # e.g. 数学; the anti-splitting rule counts per subject
    category = models.CharField(max_length=16, choices=TrainingCategory.choices)
    class_size_band = models.CharField(max_length=8, choices=ClassSizeBand.choices)
    mode = models.CharField(max_length=8, choices=TeachingMode.choices)
    price_per_hour_fen = models.BigIntegerField()
    starts_on = models.DateField()
    published = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(price_per_hour_fen__gt=0), name="custody_course_price_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.institution} · {self.name}"

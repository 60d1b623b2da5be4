"""Jurisdictions (地区/区县) and their versioned policy: every threshold of the rules, editable by the
regulator.

A policy row is never edited: a change writes the next version, and a contract keeps the version it was signed
under. Defaults are the national rules (DESIGN.md section 1).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class Jurisdiction(models.Model):
    """A supervising area, e.g. a district education bureau's (教育局) area."""

    code = models.CharField(max_length=32, unique=True)
    name = models.CharField(max_length=100)
    parent = models.ForeignKey(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="children"
    )

    def __str__(self) -> str:
        return f"{self.name} ({self.code})"


class ReleaseCadence(models.TextChoices):
    DAILY = "daily", "每日 daily"
    WEEKLY = "weekly", "每周 weekly"


def default_risk_thresholds() -> dict[str, int]:
    """Every risk-alert threshold (风险预警阈值) with its default: the yellow key and its ``_red`` twin per
    rule (custody/services/alerts.py reads them). This is the one list: a policy may set exactly these keys,
    so a threshold added here is at once accepted by ``publish_policy`` and used by the alert scan."""
    return {
        "custody_balance_below_fen": 0,  # 0 = off
        "custody_balance_below_red_fen": 0,
        "custody_shortfall_fen": 1,
        "custody_shortfall_red_fen": 1,
        "outflow_per_day_fen": 100_000_000,  # 1,000,000 yuan (Hangzhou)
        "outflow_per_day_red_fen": 200_000_000,
        "outflow_per_week_fen": 200_000_000,  # 2,000,000 yuan
        "outflow_per_week_red_fen": 400_000_000,
        "refund_claims_per_week": 20,
        "refund_claims_per_week_red": 50,
        "consumption_spike_factor_percent": 300,
        "consumption_spike_red_percent": 500,
        "consumption_spike_min_fen": 1_000_000,
        "unconfirmed_lessons": 200,
        "unconfirmed_lessons_red": 500,
        "disputed_lessons": 20,
        "disputed_lessons_red": 50,
        "idle_days_with_funds": 14,
        "idle_days_with_funds_red": 30,
        "over_cap_attempts_per_week": 1,
        "over_cap_attempts_per_week_red": 5,
        "reserve_shortfall_fen": 1,
        "reserve_shortfall_red_fen": 1,
    }


class Policy(models.Model):
    """One version of a jurisdiction's rules. The newest version is in force for new contracts."""

    jurisdiction = models.ForeignKey(Jurisdiction, on_delete=models.PROTECT, related_name="policies")
    version = models.PositiveIntegerField()
    effective_from = models.DateTimeField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    change_note = models.CharField(max_length=500, blank=True)

    # Charging caps (教监管函〔2021〕2号; 2022 thirteen-department opinion)
    max_service_months = models.PositiveSmallIntegerField(default=3)
    max_paid_hours = models.PositiveIntegerField(default=60)
    non_subject_max_charge_fen = models.BigIntegerField(default=500_000)  # 5,000 yuan
    anti_splitting = models.BooleanField(default=True)
    earliest_charge_days_before_start = models.PositiveSmallIntegerField(default=30)
    renewal_max_remaining_hours = models.PositiveIntegerField(default=20)
    # An order left unpaid this many days after signing is cancelled: it no longer holds hours against the
    # anti-splitting sum, and a payment arriving later is refused (the bank sends it back).
    unpaid_contract_lapse_days = models.PositiveSmallIntegerField(default=7)
    # Subject training K-9: price at most guidance price + this markup (发改价格〔2021〕1279号)
    guidance_markup_percent = models.PositiveSmallIntegerField(default=10)
    # Lessons and refunds (national platform)
    lesson_auto_confirm_working_days = models.PositiveSmallIntegerField(default=15)
    refund_answer_working_days = models.PositiveSmallIntegerField(default=5)
    refund_payout_before_start_working_days = models.PositiveSmallIntegerField(default=5)
    refund_payout_after_start_working_days = models.PositiveSmallIntegerField(default=10)
    release_cadence = models.CharField(
        max_length=8, choices=ReleaseCadence.choices, default=ReleaseCadence.DAILY
    )
    # Closures (Chengdu)
    closure_notice_days = models.PositiveSmallIntegerField(default=30)
    # Risk-reserve mode (Zigong, Guangdong, Hangzhou)
    risk_reserve_allowed = models.BooleanField(default=False)
    reserve_ratio_percent = models.PositiveSmallIntegerField(default=20)
    reserve_minimum_fen = models.BigIntegerField(default=10_000_000)  # 100,000 yuan
    risk_thresholds = models.JSONField(default=default_risk_thresholds)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["jurisdiction", "version"], name="custody_policy_version_unique"),
            models.CheckConstraint(condition=Q(max_paid_hours__gt=0), name="custody_policy_hours_positive"),
            models.CheckConstraint(
                condition=Q(non_subject_max_charge_fen__gt=0), name="custody_policy_amount_cap_positive"
            ),
        ]
        ordering = ["jurisdiction", "-version"]

    def __str__(self) -> str:
        return f"{self.jurisdiction.code} policy v{self.version}"


class ClassSizeBand(models.TextChoices):
    SMALL = "small", "小班 <10"
    MEDIUM = "medium", "中班 10–35"
    LARGE = "large", "大班 >35"


class TeachingMode(models.TextChoices):
    OFFLINE = "offline", "线下 offline (45 min)"
    ONLINE = "online", "线上 online (30 min)"


class GuidancePrice(models.Model):
    """政府指导价: the base price of one standard lesson of subject training, per band and mode."""

    policy = models.ForeignKey(Policy, on_delete=models.PROTECT, related_name="guidance_prices")
    class_size_band = models.CharField(max_length=8, choices=ClassSizeBand.choices)
    mode = models.CharField(max_length=8, choices=TeachingMode.choices)
    price_per_lesson_fen = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["policy", "class_size_band", "mode"], name="custody_guidance_unique"
            ),
            models.CheckConstraint(condition=Q(price_per_lesson_fen__gt=0), name="custody_guidance_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.policy} {self.class_size_band}/{self.mode}: {self.price_per_lesson_fen} fen"


class WorkdayOverride(models.Model):
    """A date whose working-day status differs from the calendar package (new 调休 years, local holidays)."""

    date = models.DateField(unique=True)
    is_working_day = models.BooleanField()
    note = models.CharField(max_length=200, blank=True)

    def __str__(self) -> str:
        return f"{self.date}: {'workday' if self.is_working_day else 'holiday'}"

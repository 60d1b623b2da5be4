"""Risk alerts (风险预警) and how they reach people: the alerts a risk scan raises, the handling history of
each, the in-app inbox (站内信), and the refused over-cap charges one of the rules counts.

An alert is raised once per (institution, rule, window) while it is not resolved; a later scan that finds the
same condition only marks it seen again, or escalates it from yellow to red; a scan that no longer finds it
marks it cleared (it stays unresolved: only a regulator closes an alert, with a note). The database holds the
one-alert rule (a partial unique index), so two scans racing cannot raise it twice. Handling is a small state
machine (see ``custody.services.alerts``): open → acknowledged → investigating → resolved, resolved only with
a note.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from custody.models.institutions import Institution
from custody.models.policy import Jurisdiction


class AlertRule(models.TextChoices):
    CUSTODY_BELOW_PRESET = "custody_below_preset", "托管余额低于预设值 custody balance below the preset"
    CUSTODY_BELOW_OWED = "custody_below_owed", "托管余额低于应付金额 custody balance below what is owed"
    OUTFLOW_DAY = "outflow_day", "单日资金流出超限 outflow in a day above the preset"
    OUTFLOW_WEEK = "outflow_week", "七日资金流出超限 outflow in seven days above the preset"
    REFUND_CLAIMS_SPIKE = "refund_claims_spike", "退费申请激增 refund claims spiking"
    CONSUMPTION_SPIKE = "consumption_spike", "课消激增 lesson consumption spiking"
    UNCONFIRMED_LESSONS = "unconfirmed_lessons", "待确认课时过多 many unconfirmed lessons"
    DISPUTED_LESSONS = "disputed_lessons", "异议课时过多 many disputed lessons"
    IDLE_WITH_FUNDS = "idle_with_funds", "持有资金但长期未消课 no lessons recorded while holding funds"
    OVER_CAP_ATTEMPTS = "over_cap_attempts", "尝试超限收费 attempted over-cap charges"
    RESERVE_SHORTFALL = "reserve_shortfall", "风险保证金不足 risk reserve below the requirement"


class AlertLevel(models.TextChoices):
    YELLOW = "yellow", "黄色预警 yellow"
    RED = "red", "红色预警 red"


class AlertState(models.TextChoices):
    OPEN = "open", "待处理 open"
    ACKNOWLEDGED = "acknowledged", "已确认 acknowledged"
    INVESTIGATING = "investigating", "核查中 investigating"
    RESOLVED = "resolved", "已处置 resolved"


class RiskAlert(models.Model):
    """One alert: which rule fired for which institution in which window, at what level, on what figures.

    ``window`` names the period the figures cover: a local date (``2024-03-04``) for daily rules, an ISO
    week (``2024-W10``) for seven-day rules, ``ongoing`` for conditions that hold until they are fixed.
    ``value`` and ``threshold`` are the compared figures (fen, a count, days or a percentage, by rule);
    ``evidence`` holds every figure behind them as they were when the alert was raised or escalated, and
    ``latest_evidence`` as the last scan saw them. ``cleared_at`` is when a scan of the alert's window first
    found the condition gone; it goes back to empty if a later scan finds it again.
    """

    institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="risk_alerts")
    jurisdiction = models.ForeignKey(Jurisdiction, on_delete=models.PROTECT, related_name="risk_alerts")
    rule = models.CharField(max_length=24, choices=AlertRule.choices)
    level = models.CharField(max_length=8, choices=AlertLevel.choices)
    window = models.CharField(max_length=16)
    state = models.CharField(max_length=16, choices=AlertState.choices, default=AlertState.OPEN)
    value = models.BigIntegerField()
    threshold = models.BigIntegerField()
    unit = models.CharField(max_length=8)  # fen, count, days, percent
    message = models.CharField(max_length=500)
    evidence = models.JSONField(default=dict)
    latest_evidence = models.JSONField(default=dict)
    policy_version = models.PositiveIntegerField()
    raised_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    seen_count = models.PositiveIntegerField(default=1)
    escalated_at = models.DateTimeField(null=True, blank=True)
    cleared_at = models.DateTimeField(null=True, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    investigation_started_at = models.DateTimeField(null=True, blank=True)
    investigated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    resolution_note = models.TextField(blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["institution", "rule", "window"],
                condition=~Q(state="resolved"),
                name="custody_alert_one_unresolved",
            ),
            models.CheckConstraint(condition=Q(level__in=["yellow", "red"]), name="custody_alert_level"),
            models.CheckConstraint(
                condition=~Q(state="resolved") | (Q(resolved_at__isnull=False) & ~Q(resolution_note="")),
                name="custody_alert_resolved_with_note",
            ),
        ]
        indexes = [
            models.Index(fields=["jurisdiction", "state", "level"], name="custody_alert_jur_state"),
            models.Index(fields=["institution", "state"], name="custody_alert_inst_state"),
        ]

    def __str__(self) -> str:
        return f"{self.level} {self.rule} of institution {self.institution_id} ({self.window}, {self.state})"


class AlertAction(models.TextChoices):
    RAISED = "raised", "触发 raised"
    ESCALATED = "escalated", "升级 escalated"
    CLEARED = "cleared", "条件消除 condition cleared"
    RECURRED = "recurred", "再次出现 condition back"
    ACKNOWLEDGED = "acknowledged", "确认 acknowledged"
    INVESTIGATING = "investigating", "开始核查 investigating"
    RESOLVED = "resolved", "处置完毕 resolved"
    NOTIFIED = "notified", "已通知 notified"
    NOTIFY_FAILED = "notify_failed", "通知失败 notification failed"


class AlertEvent(models.Model):
    """The handling history of an alert: raised, escalated, each transition with who and why, and every
    notification sent or failed (``details``: channel, level, recipients or error)."""

    alert = models.ForeignKey(RiskAlert, on_delete=models.PROTECT, related_name="events")
    at = models.DateTimeField()
    action = models.CharField(max_length=16, choices=AlertAction.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    note = models.TextField(blank=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        indexes = [models.Index(fields=["alert", "action"], name="custody_alert_event_action")]

    def __str__(self) -> str:
        return f"{self.action} of alert {self.alert_id}"


class InboxMessage(models.Model):
    """站内信: a message in a jurisdiction's regulators' inbox (or an institution's)."""

    jurisdiction = models.ForeignKey(
        Jurisdiction, on_delete=models.PROTECT, null=True, blank=True, related_name="inbox_messages"
    )
    institution = models.ForeignKey(
        Institution, on_delete=models.PROTECT, null=True, blank=True, related_name="inbox_messages"
    )
    alert = models.ForeignKey(
        RiskAlert, on_delete=models.PROTECT, null=True, blank=True, related_name="inbox_messages"
    )
    subject = models.CharField(max_length=200)
    body = models.TextField()
    created_at = models.DateTimeField()
    read_at = models.DateTimeField(null=True, blank=True)
    read_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(jurisdiction__isnull=False) | Q(institution__isnull=False),
                name="custody_inbox_has_recipient",
            ),
        ]
        indexes = [
            models.Index(fields=["jurisdiction", "read_at"], name="custody_inbox_jur_unread"),
            models.Index(fields=["institution", "read_at"], name="custody_inbox_inst_unread"),
        ]

    def __str__(self) -> str:
        return self.subject


class ChargeRefusal(models.Model):
    """A charge refused because it broke a charging cap (尝试超限收费): more than 60 hours or 3 months, over
    5,000 yuan, split contracts, above the guidance price… Recorded by
    ``custody.services.alerts.record_charge_refusal`` after the refusal, counted by the risk scan."""

    institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="charge_refusals")
    rule = models.CharField(max_length=40)
    occurred_at = models.DateTimeField()
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        indexes = [models.Index(fields=["institution", "occurred_at"], name="custody_refusal_inst_time")]

    def __str__(self) -> str:
        return f"{self.rule} refused at institution {self.institution_id}"

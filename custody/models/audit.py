"""The audit trail (审计日志): who did what, when, from where, and for settings the value before and after.

Append-only: the database refuses UPDATE and DELETE of its rows (triggers installed by migration
0004_audit_guards from custody/sql/audit_guards.<vendor>.sql), so not even a bug or an administrator's
shell can rewrite history. Personal data never lands here unmasked: ``custody.services.audit`` masks it
before it writes (names, phone and ID numbers, account numbers).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class AuditOutcome(models.TextChoices):
    SUCCEEDED = "succeeded", "成功 succeeded"
    REFUSED = "refused", "被拒绝 refused"  # 4xx: a rule, a permission, bad input
    FAILED = "failed", "出错 failed"  # 5xx


class AuditEvent(models.Model):
    occurred_at = models.DateTimeField(db_index=True)  # wall-clock time of the server
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    actor_username = models.CharField(max_length=150, blank=True)
    actor_role = models.CharField(max_length=16, blank=True)  # parent, institution, regulator, bank, admin
    action = models.CharField(max_length=100)  # e.g. "institution.freeze", "policy.publish"
    method = models.CharField(max_length=8, blank=True)
    path = models.CharField(max_length=300, blank=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    outcome = models.CharField(max_length=10, choices=AuditOutcome.choices)
    target_type = models.CharField(max_length=50, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    jurisdiction = models.ForeignKey(
        "custody.Jurisdiction", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    institution = models.ForeignKey(
        "custody.Institution", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=200, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["jurisdiction", "occurred_at"], name="custody_audit_jur_time"),
            models.Index(fields=["actor", "occurred_at"], name="custody_audit_actor_time"),
            models.Index(fields=["action", "occurred_at"], name="custody_audit_action_time"),
            models.Index(fields=["target_type", "target_id"], name="custody_audit_target"),
        ]

    def __str__(self) -> str:
        return f"{self.occurred_at:%Y-%m-%d %H:%M:%S} {self.actor_username or '-'} {self.action}"

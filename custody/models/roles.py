"""Who a user is to the system (角色): institution staff, a regulator, a custody-bank operator.

Parents are ``Guardian.user`` (custody/models/people.py). A user holds at most one row of each kind; the API
grants each endpoint group to one kind (custody/api/permissions.py) and scopes every object to it: staff see
their institution, a regulator their jurisdiction and the jurisdictions under it, a bank operator the
institutions whose supervised account is held at their bank.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from custody.models.institutions import Institution
from custody.models.policy import Jurisdiction


class StaffRole(models.TextChoices):
    MANAGER = "manager", "负责人 manager"  # everything below, plus courses and refund answers
    FINANCE = "finance", "财务 finance"  # refunds, payouts, balances
    TEACHER = "teacher", "教师 teacher"  # records lessons and answers disputes


class InstitutionStaff(models.Model):
    """A staff account of one training institution (机构工作人员)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="institution_staff"
    )
    institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="staff")
    role = models.CharField(max_length=8, choices=StaffRole.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"staff {self.user_id} of {self.institution_id} ({self.role})"


class RegulatorProfile(models.Model):
    """A regulator (教育局监管人员) of one jurisdiction; sees that jurisdiction and the ones under it."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="regulator_profile"
    )
    jurisdiction = models.ForeignKey(Jurisdiction, on_delete=models.PROTECT, related_name="regulators")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"regulator {self.user_id} of {self.jurisdiction_id}"


class BankOperator(models.Model):
    """An operator of a custody bank (托管银行); ``bank_name`` matches ``Institution.custody_bank_name``."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="bank_operator"
    )
    bank_name = models.CharField(max_length=100, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"bank operator {self.user_id} of {self.bank_name}"

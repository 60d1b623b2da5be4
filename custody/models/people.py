"""Parents (家长, guardians) and students. Personal data is encrypted at rest (see custody/pii.py)."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from custody.pii import EncryptedTextField, mask


class Guardian(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="guardian"
    )
    name = EncryptedTextField()
    phone = EncryptedTextField()
    phone_index = models.CharField(max_length=64, db_index=True)  # blind index of the phone number
    id_number = EncryptedTextField()  # 身份证号
    id_number_index = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"guardian {self.pk} ({mask(self.phone)})"


class Student(models.Model):
    guardian = models.ForeignKey(Guardian, on_delete=models.PROTECT, related_name="students")
    name = EncryptedTextField()
    id_number = EncryptedTextField()
    id_number_index = models.CharField(max_length=64, unique=True)
    grade = models.CharField(max_length=20, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"student {self.pk}"

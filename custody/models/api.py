"""What the REST API keeps for itself: API tokens and the responses of idempotent requests.

``ApiToken`` stores only the SHA-256 of a token (a leaked table reveals no credential), when it expires, and
whether it was issued after a TOTP check (regulators, bank operators and administrators get no token
without one). ``IdempotencyRecord`` remembers, per user and ``Idempotency-Key``, the request's fingerprint and
the first response, written in the same transaction as the action itself (custody/api/idempotency.py).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class ApiToken(models.Model):
    key_hash = models.CharField(max_length=64, unique=True)  # hex SHA-256 of the token
    prefix = models.CharField(max_length=12)  # the token's first characters, to tell tokens apart
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    otp_verified = models.BooleanField(default=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"token {self.prefix}… of user {self.user_id}"


class IdempotencyRecord(models.Model):
    """The first response to (user, key). ``status_code`` is null while the first request is still running."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=200)
    method = models.CharField(max_length=8)
    path = models.CharField(max_length=300)
    fingerprint = models.CharField(max_length=64)  # SHA-256 of method, path and the canonical body
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "key"], name="custody_idempotency_user_key"),
        ]
        indexes = [models.Index(fields=["created_at"], name="custody_idempotency_created")]

    def __str__(self) -> str:
        return f"{self.method} {self.path} [{self.key}]"


class BankStatementUpload(models.Model):
    """A statement file a custody bank uploaded (对账单上传), parsed and checked on arrival
    (``reconciliation.formats.parse_statement``: balances add up, serials unique), kept byte for byte for
    reconciliation. The same file twice is one upload."""

    institution = models.ForeignKey(
        "custody.Institution", on_delete=models.PROTECT, related_name="statement_uploads"
    )
    account_number = models.CharField(max_length=40)
    format = models.CharField(max_length=10)
    statement_id = models.CharField(max_length=64)
    sequence = models.PositiveIntegerField(null=True, blank=True)
    period_start = models.DateField()
    period_end = models.DateField()
    opening_balance_fen = models.BigIntegerField()
    closing_balance_fen = models.BigIntegerField()
    credits_fen = models.BigIntegerField()
    debits_fen = models.BigIntegerField()
    line_count = models.PositiveIntegerField()
    filename = models.CharField(max_length=200, blank=True)
    file_sha256 = models.CharField(max_length=64)
    content = models.BinaryField()
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    uploaded_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["institution", "file_sha256"], name="custody_stmt_upload_file"),
        ]
        indexes = [models.Index(fields=["institution", "period_end"], name="custody_stmt_upload_period")]

    def __str__(self) -> str:
        return f"statement {self.statement_id} of {self.account_number}"

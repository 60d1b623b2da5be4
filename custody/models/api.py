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

"""Access to the API: who holds which role, and API tokens.

Roles are rows (custody/models/roles.py; parents are ``Guardian.user``). Tokens are random 32-byte strings
shown once; only their SHA-256 is stored. A token of a user who must use two factors (regulators, bank
operators, staff and superusers: ``requires_two_factor``) is issued only after a TOTP check and lives for
``API_PRIVILEGED_TOKEN_TTL`` (12 h by default); other tokens for ``API_TOKEN_TTL`` (30 days).
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, User
from django.db import transaction
from django.utils import timezone

from custody.errors import RuleViolation
from custody.models import (
    ApiToken,
    BankOperator,
    Institution,
    InstitutionStaff,
    Jurisdiction,
    RegulatorProfile,
    StaffRole,
)

TOKEN_PREFIX = "ck_"


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def requires_two_factor(user: AbstractBaseUser) -> bool:
    """Regulators, custody-bank operators and administrators sign in with a TOTP code as well."""
    return bool(
        getattr(user, "is_staff", False)
        or getattr(user, "is_superuser", False)
        or hasattr(user, "regulator_profile")
        or hasattr(user, "bank_operator")
    )


def token_lifetime(*, privileged: bool) -> timedelta:
    hours = settings.API_PRIVILEGED_TOKEN_TTL_HOURS if privileged else settings.API_TOKEN_TTL_HOURS
    return timedelta(hours=hours)


def issue_api_token(*, user: User, otp_verified: bool, name: str = "") -> tuple[str, ApiToken]:
    """A new token for ``user``: returns the token itself (shown once) and its row."""
    privileged = requires_two_factor(user)
    if privileged and not otp_verified:
        raise RuleViolation(
            "otp_required",
            "该账户须通过动态口令验证后才能获取令牌 this account needs a TOTP code to get a token",
            field="otp_token",
        )
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = timezone.now()
    token = ApiToken.objects.create(
        key_hash=hash_token(raw),
        prefix=raw[:10],
        user=user,
        name=name.strip()[:100],
        created_at=now,
        expires_at=now + token_lifetime(privileged=privileged),
        otp_verified=otp_verified,
    )
    return raw, token


def revoke_api_token(*, token: ApiToken) -> ApiToken:
    """Revoke the token (logout); revoking twice keeps the first time."""
    with transaction.atomic():
        locked = ApiToken.objects.select_for_update().get(pk=token.pk)
        if locked.revoked_at is None:
            locked.revoked_at = timezone.now()
            locked.save(update_fields=["revoked_at"])
    return locked


def grant_institution_staff(*, user: User, institution: Institution, role: str) -> InstitutionStaff:
    if role not in StaffRole.values:
        raise RuleViolation("staff_role", f"未知的岗位 unknown staff role {role!r}", field="role")
    staff, _ = InstitutionStaff.objects.update_or_create(
        user=user, defaults={"institution": institution, "role": role}
    )
    return staff


def grant_regulator(*, user: User, jurisdiction: Jurisdiction) -> RegulatorProfile:
    profile, _ = RegulatorProfile.objects.update_or_create(user=user, defaults={"jurisdiction": jurisdiction})
    return profile


def grant_bank_operator(*, user: User, bank_name: str) -> BankOperator:
    if not bank_name.strip():
        raise RuleViolation("required", "银行名称不能为空 a bank name is required", field="bank_name")
    operator, _ = BankOperator.objects.update_or_create(user=user, defaults={"bank_name": bank_name.strip()})
    return operator

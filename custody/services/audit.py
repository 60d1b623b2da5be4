"""Writing the audit trail (审计日志): one ``AuditEvent`` per state-changing request and per regulator or
administrator action, with personal data masked before it is written.

The API records an action's event inside the action's own transaction (custody/api/idempotency.py), so an
action that committed always has its event; requests refused before or outside that transaction (a failed
permission check, bad input, a callback) are recorded by ``custody.api.middleware.AuditMiddleware`` after the
response. Rows are append-only (database triggers, custody/sql/audit_guards.*.sql).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, User
from django.utils import timezone

from custody import pii
from custody.models import AuditEvent, AuditOutcome

# Keys whose values are personal data: shown masked (138****5678).
PERSONAL_KEYS = frozenset(
    {
        "name",
        "student_name",
        "guardian_name",
        "phone",
        "id_number",
        "payer_account",
        "destination_account",
        "custody_account_number",
        "settlement_account_number",
        "account_number",
        "openid",
        "email",
    }
)
# Keys whose values are secrets: never shown at all.
SECRET_KEYS = frozenset({"password", "otp_token", "token", "api_v3_key", "signature"})
MAX_DETAIL_CHARS = 4000


def mask_personal_data(value: Any, *, key: str = "") -> Any:
    """A copy of ``value`` (JSON-like) with personal data masked and secrets removed, at any depth."""
    lowered = key.lower()
    if lowered in SECRET_KEYS:
        return "[redacted]"
    if isinstance(value, Mapping):
        return {str(k): mask_personal_data(v, key=str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_personal_data(v, key=key) for v in value]
    if lowered in PERSONAL_KEYS and value not in (None, ""):
        return pii.mask(str(value))
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def bounded(value: Any) -> Any:
    """``value`` if its JSON is short enough to keep, else a note of its size (bulk input is not copied)."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) <= MAX_DETAIL_CHARS:
        return value
    return {"omitted": True, "chars": len(text)}


def outcome_for(status_code: int | None) -> AuditOutcome:
    if status_code is None or status_code < 400:
        return AuditOutcome.SUCCEEDED
    if status_code < 500:
        return AuditOutcome.REFUSED
    return AuditOutcome.FAILED


def record_event(
    *,
    action: str,
    actor: AbstractBaseUser | AnonymousUser | None,
    actor_role: str = "",
    method: str = "",
    path: str = "",
    status_code: int | None = None,
    target_type: str = "",
    target_id: str | int = "",
    jurisdiction_id: int | None = None,
    institution_id: int | None = None,
    source_ip: str | None = None,
    user_agent: str = "",
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Append one event. ``before``/``after``/``details`` are masked here, whatever the caller passed."""
    user = actor if isinstance(actor, User) else None
    return AuditEvent.objects.create(
        occurred_at=timezone.now(),
        actor=user,
        actor_username=user.get_username()[:150] if user is not None else "",
        actor_role=actor_role[:16],
        action=action[:100],
        method=method[:8],
        path=path[:300],
        status_code=status_code,
        outcome=outcome_for(status_code),
        target_type=target_type[:50],
        target_id=str(target_id)[:64],
        jurisdiction_id=jurisdiction_id,
        institution_id=institution_id,
        source_ip=source_ip,
        user_agent=user_agent[:200],
        before=bounded(mask_personal_data(before)) if before is not None else None,
        after=bounded(mask_personal_data(after)) if after is not None else None,
        details=bounded(mask_personal_data(details or {})),
    )

"""The API's side of the audit trail: what a view notes about its action, and the middleware that records
every other state-changing request (and every regulator's or administrator's request).

A view calls ``self.audit(target=…, before=…, after=…)``; ``@idempotent`` / ``@audited`` (idempotency.py)
write the event in the action's own transaction and mark the request as audited. ``AuditMiddleware`` then
records, after the response, any request not yet audited that is state-changing (POST, PUT, PATCH, DELETE:
refusals, replays, callbacks, the admin site) or made by a regulator or an administrator (reads included).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from axes.helpers import get_client_ip_address
from django.db import DatabaseError, models
from django.http import HttpRequest, HttpResponse

from custody.api.authentication import ACTOR_ATTRIBUTE, get_actor
from custody.models import Institution
from custody.services.audit import record_event

logger = logging.getLogger(__name__)

AUDITED_ATTRIBUTE = "_custody_audited"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def audit_context(view: Any) -> dict[str, Any]:
    view._audit = {}
    return view._audit


def note(
    view: Any,
    *,
    target: models.Model | None = None,
    target_type: str = "",
    target_id: str | int = "",
    institution_id: int | None = None,
    jurisdiction_id: int | None = None,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
    details: Mapping[str, Any] | None = None,
) -> None:
    context = getattr(view, "_audit", None)
    if context is None:
        context = audit_context(view)
    if target is not None:
        context["target_type"] = target._meta.model_name or ""
        context["target_id"] = target.pk
        if isinstance(target, Institution):
            context.setdefault("institution_id", target.pk)
            context.setdefault("jurisdiction_id", target.jurisdiction_id)
        elif getattr(target, "institution_id", None) is not None:
            context.setdefault("institution_id", getattr(target, "institution_id"))  # noqa: B009
    for name, value in (
        ("target_type", target_type),
        ("target_id", target_id),
        ("institution_id", institution_id),
        ("jurisdiction_id", jurisdiction_id),
        ("before", before),
        ("after", after),
        ("details", details),
    ):
        if value not in (None, ""):
            context[name] = value


def _client(request: HttpRequest) -> tuple[str | None, str]:
    return get_client_ip_address(request), request.headers.get("User-Agent", "")


def record_view_event(view: Any, request: Any, *, action: str, status_code: int) -> None:
    """Append the view's event (called inside the action's transaction)."""
    context = getattr(view, "_audit", {}) or {}
    actor = get_actor(request)
    institution_id = context.get("institution_id") or actor.institution_id
    jurisdiction_id = context.get("jurisdiction_id")
    if jurisdiction_id is None and institution_id is not None:
        jurisdiction_id = (
            Institution.objects.filter(pk=institution_id).values_list("jurisdiction_id", flat=True).first()
        )
    if jurisdiction_id is None:
        jurisdiction_id = actor.jurisdiction_id
    django_request = getattr(request, "_request", request)
    ip, agent = _client(django_request)
    record_event(
        action=action,
        actor=request.user,
        actor_role=actor.primary_role,
        method=request.method or "",
        path=request.path,
        status_code=status_code,
        target_type=context.get("target_type", ""),
        target_id=context.get("target_id", ""),
        jurisdiction_id=jurisdiction_id,
        institution_id=institution_id,
        source_ip=ip,
        user_agent=agent,
        before=context.get("before"),
        after=context.get("after"),
        details=context.get("details"),
    )
    setattr(django_request, AUDITED_ATTRIBUTE, True)


class AuditMiddleware:
    """Records what no view recorded: see the module docstring. Never breaks the response it follows."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if getattr(request, AUDITED_ATTRIBUTE, False):
            return response
        try:
            self._record(request, response)
        except DatabaseError:
            logger.exception("could not append an audit event for %s %s", request.method, request.path)
        return response

    def _record(self, request: HttpRequest, response: HttpResponse) -> None:
        unsafe = request.method not in SAFE_METHODS
        actor = getattr(request, ACTOR_ATTRIBUTE, None)
        if actor is None:
            if not unsafe and not _may_be_privileged(request):
                return  # the common case: an ordinary read, decided without touching the session
            actor = get_actor(request)
        privileged = actor.jurisdiction_id is not None or actor.is_admin
        if not unsafe and not privileged:
            return
        ip, agent = _client(request)
        match = getattr(request, "resolver_match", None)
        user = getattr(request, "user", None)
        record_event(
            action=f"{'write' if unsafe else 'read'}:{match.view_name if match else 'unresolved'}",
            actor=user,
            actor_role=actor.primary_role,
            method=request.method or "",
            path=request.path,
            status_code=response.status_code,
            jurisdiction_id=actor.jurisdiction_id,
            institution_id=actor.institution_id,
            source_ip=ip,
            user_agent=agent,
            details={"replayed": True} if response.headers.get("Idempotent-Replayed") else None,
        )


def _may_be_privileged(request: HttpRequest) -> bool:
    """Only a signed-in session (the admin site, the web pages) can carry a privileged user on a read that
    the API's authentication did not see."""
    from django.conf import settings

    return settings.SESSION_COOKIE_NAME in request.COOKIES

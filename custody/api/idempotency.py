"""``Idempotency-Key`` for every state-changing POST: a retry returns the first response, never runs twice.

A view method decorated with ``@idempotent("lesson.confirm")``:

1. requires the header (1–200 printable ASCII characters, no spaces), else 400 ``idempotency_key_required``;
2. fingerprints the request: SHA-256 over the method, the path and the body in canonical form (JSON with
   sorted keys; an uploaded file by its SHA-256), so the same content sent with other whitespace matches;
3. if (user, key) was recorded: the same fingerprint replays the stored status and body (header
   ``Idempotent-Replayed: true``); another fingerprint (another body or endpoint) is 409
   ``idempotency_conflict``;
4. otherwise, in ONE transaction: inserts the record (the unique (user, key) index makes a concurrent
   duplicate wait for this transaction and then replay it, so it never runs twice), runs the action in a
   savepoint, stores its response, and appends the audit event.

Responses to the domain's refusals (a rule, a state, a ledger limit) are stored and replayed like successes:
the action ran and said no; a view's ``after_refusal(exc)`` then runs in the same transaction (the action's
own writes are rolled back, so a record of the refusal must be written there). Bad input, authentication
and permission errors are not stored (the action never started): a corrected retry with the same key is
then accepted.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from custody.api.audit import AUDITED_ATTRIBUTE, audit_context, record_view_event
from custody.api.errors import domain_error_response, error_response, statement_error_response
from custody.errors import CustodyError
from custody.models import IdempotencyRecord
from ledger.errors import LedgerError

HEADER = "Idempotency-Key"
KEY_PATTERN = r"^[!-~]{1,200}$"
_KEY = re.compile(KEY_PATTERN)
REPLAY_HEADER = "Idempotent-Replayed"

Handler = Callable[..., Response]


class _AlreadyRecorded(Exception):
    pass


def _canonical(value: Any) -> Any:
    if isinstance(value, UploadedFile):
        digest = hashlib.sha256()
        for chunk in value.chunks():
            digest.update(chunk)
        value.seek(0)
        return {"file_sha256": digest.hexdigest(), "size": value.size}
    if hasattr(value, "lists"):  # QueryDict / MultiValueDict: keep every value of every key
        return {str(k): [_canonical(v) for v in vs] for k, vs in value.lists()}
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def fingerprint(request: Request) -> str:
    body = _canonical(request.data)
    text = json.dumps(
        {"method": request.method, "path": request.path, "body": body},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _stored(response: Response) -> Any:
    # What the client will see, as JSON (serializer output may hold ReturnDicts, dates, lazy strings).
    return json.loads(JSONRenderer().render(response.data) or b"null")


def _replay(record: IdempotencyRecord, print_: str) -> Response:
    if record.fingerprint != print_ or record.status_code is None:
        return error_response(
            "idempotency_conflict",
            "该幂等键已用于另一请求（请求体或接口不同）this Idempotency-Key was used for another request "
            "(another body or endpoint)",
            field=HEADER,
            details={"first_method": record.method, "first_path": record.path},
        )
    return Response(record.response_body, status=record.status_code, headers={REPLAY_HEADER: "true"})


def _domain_response(exc: Exception) -> Response | None:
    if isinstance(exc, CustodyError | LedgerError):
        return domain_error_response(exc)
    return statement_error_response(exc)


def _after_refusal(view: Any, exc: Exception) -> None:
    """Let the view record what a refusal means (e.g. an attempted over-cap charge) after the action's
    savepoint rolled back, in the transaction that stores the refusal."""
    hook = getattr(view, "after_refusal", None)
    if callable(hook):
        hook(exc)


def run_idempotently(view: Any, request: Request, action: str, run: Callable[[], Response]) -> Response:
    key = request.headers.get(HEADER, "")
    if not _KEY.fullmatch(key):
        return error_response(
            "idempotency_key_required",
            "此操作须提供 Idempotency-Key 请求头（1至200个可见ASCII字符）"
            "this request needs an Idempotency-Key header of 1 to 200 printable ASCII characters",
            field=HEADER,
        )
    user_id = int(request.user.pk or 0)
    print_ = fingerprint(request)
    existing = IdempotencyRecord.objects.filter(user_id=user_id, key=key).first()
    if existing is not None:
        return _replay(existing, print_)
    try:
        with transaction.atomic():
            try:
                with transaction.atomic():
                    record = IdempotencyRecord.objects.create(
                        user_id=user_id,
                        key=key,
                        method=request.method or "",
                        path=request.path[:300],
                        fingerprint=print_,
                        created_at=timezone.now(),
                    )
            except IntegrityError:
                raise _AlreadyRecorded from None
            try:
                with transaction.atomic():
                    response = run()
            except Exception as exc:
                refused = _domain_response(exc)
                if refused is None:
                    raise
                response = refused
                _after_refusal(view, exc)
            record.status_code = response.status_code
            record.response_body = _stored(response)
            record.save(update_fields=["status_code", "response_body"])
            record_view_event(view, request, action=action, status_code=response.status_code)
    except _AlreadyRecorded:
        # A concurrent request with this key committed first: answer what it answered.
        return _replay(IdempotencyRecord.objects.get(user_id=user_id, key=key), print_)
    return response


def idempotent(action: str) -> Callable[[Handler], Handler]:
    """Decorate a view's ``post``: require ``Idempotency-Key`` and audit the action as ``action``."""

    def decorate(handler: Handler) -> Handler:
        @wraps(handler)
        def wrapper(view: Any, request: Request, *args: Any, **kwargs: Any) -> Response:
            audit_context(view)  # reset what the handler will note for the audit trail
            return run_idempotently(view, request, action, lambda: handler(view, request, *args, **kwargs))

        wrapper.idempotent = True  # type: ignore[attr-defined]
        wrapper.audit_action = action  # type: ignore[attr-defined]
        return wrapper

    return decorate


def audited(action: str) -> Callable[[Handler], Handler]:
    """Decorate a state-changing handler that is not idempotent by key (sign-in, sign-out, a signed upload):
    its audit event is written in the same transaction as the action."""

    def decorate(handler: Handler) -> Handler:
        @wraps(handler)
        def wrapper(view: Any, request: Request, *args: Any, **kwargs: Any) -> Response:
            audit_context(view)
            with transaction.atomic():
                try:
                    with transaction.atomic():
                        response = handler(view, request, *args, **kwargs)
                except Exception as exc:
                    refused = _domain_response(exc)
                    if refused is None:
                        raise
                    response = refused
                record_view_event(view, request, action=action, status_code=response.status_code)
            return response

        wrapper.audit_action = action  # type: ignore[attr-defined]
        return wrapper

    return decorate


__all__ = ["AUDITED_ATTRIBUTE", "HEADER", "KEY_PATTERN", "audited", "fingerprint", "idempotent"]

"""The API's one error shape, and the one exception handler that produces it.

Every error response, whatever raised it, has this body (documented as ``Error`` in the OpenAPI schema)::

    {"error": {"code": "rule_violation",
               "message": "单次收费超过60课时 one charge may cover at most 60 hours",
               "field": "paid_hours",
               "details": {"rule": "max_paid_hours", "limit": 60, "requested": 72}}}

- ``code``: stable and machine-readable (``ERROR_CODES`` lists them with their HTTP status);
- ``message``: for people, Chinese first with English beside it, never with personal data;
- ``field``: the request field at fault, or null;
- ``details``: the numbers behind the error (a rule's name, limit and request; per-field messages of an
  invalid request), always an object.

The domain's errors (``custody.errors``, ``ledger.errors``, statement errors) are mapped here once; DRF's
own errors (bad JSON, validation, authentication, permission, throttling) and Django's (``Http404``,
``PermissionDenied``, model ``ValidationError``, database integrity and range errors) too. Anything else is
logged (without its message, which might hold data) and answered 500 ``internal_error``.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import (
    PermissionDenied as DjangoPermissionDenied,
)
from django.core.exceptions import (
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError, IntegrityError
from django.http import Http404
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response

from custody.errors import CustodyError, IllegalTransition, NotFound, PaymentRejected, RuleViolation
from ledger.errors import (
    AccountConflict,
    AccountNotFound,
    CurrencyMismatch,
    IdempotencyConflict,
    InvalidAmount,
    InvalidEntry,
    LedgerError,
    LimitExceeded,
    PendingTransferError,
    ReversalError,
    UnbalancedEntry,
)

logger = logging.getLogger(__name__)

# code -> (HTTP status, what it means). docs/api.md repeats this table.
ERROR_CODES: dict[str, tuple[int, str]] = {
    "invalid_request": (400, "请求参数无效 a field is missing, of the wrong type or out of range"),
    "malformed_json": (400, "请求体不是有效的 JSON the body is not valid JSON"),
    "invalid_amount": (400, "金额无效 not an exact, positive amount of fen"),
    "idempotency_key_required": (400, "缺少 Idempotency-Key 请求头 the header is required here"),
    "not_authenticated": (401, "未登录 no credentials"),
    "authentication_failed": (401, "凭证无效或已过期 invalid, revoked or expired credentials"),
    "invalid_credentials": (401, "用户名或密码错误 wrong username or password"),
    "otp_required": (401, "须动态口令 a TOTP code is required for this account"),
    "otp_invalid": (401, "动态口令错误 wrong TOTP code"),
    "permission_denied": (403, "无权访问 not allowed for this role"),
    "not_found": (404, "不存在或无权查看 no such object, or not yours"),
    "method_not_allowed": (405, "不支持该方法 method not allowed"),
    "not_acceptable": (406, "无法提供所请求的格式 cannot produce the requested format"),
    "idempotency_conflict": (409, "幂等键已用于其他请求 the key was used with another request"),
    "illegal_transition": (409, "当前状态不允许该操作 the object's state does not allow this"),
    "refund_already_answered": (409, "退费申请已答复 only a claimed refund can be answered"),
    "conflict": (409, "与并发修改冲突 conflicts with a concurrent change"),
    "pending_transfer_state": (409, "冻结款项状态不允许 the hold was already resolved"),
    "reversal_not_allowed": (409, "不能冲正 the entry cannot be reversed"),
    "account_conflict": (409, "账户已存在且属性不同 the account exists with other attributes"),
    "payload_too_large": (413, "请求体过大 the request body is too large"),
    "unsupported_media_type": (415, "不支持的内容类型 unsupported content type"),
    "rule_violation": (422, "违反监管规则 a supervision rule refuses the request"),
    "payment_rejected": (422, "付款不能入账 the payment cannot be accepted"),
    "limit_exceeded": (422, "超出账户余额限制 an account would go below zero"),
    "unbalanced_entry": (422, "借贷不平 debits and credits differ"),
    "invalid_entry": (422, "分录无效 the entry is malformed"),
    "currency_mismatch": (422, "币种不符 wrong currency"),
    "account_not_found": (422, "账户不存在 no such ledger account"),
    "statement_error": (422, "对账单无效 the statement file is refused"),
    "reconciliation_rule": (422, "对账规则不允许 a reconciliation rule refuses the request"),
    "ledger_error": (422, "账务错误 the ledger refuses the request"),
    "custody_error": (422, "业务错误 the request cannot be carried out"),
    "account_locked": (429, "登录失败次数过多，账户已锁定 too many failed logins: locked for a while"),
    "throttled": (429, "请求过于频繁 too many requests"),
    "internal_error": (500, "服务器内部错误 internal error"),
}

# Chinese for the ledger's errors, whose own messages are English.
_LEDGER_ZH: dict[type[LedgerError], str] = {
    LimitExceeded: "余额不足或超出账户限额",
    InvalidAmount: "金额无效",
    UnbalancedEntry: "借贷不平",
    InvalidEntry: "分录无效",
    CurrencyMismatch: "币种不符",
    AccountNotFound: "账户不存在",
    AccountConflict: "账户冲突",
    IdempotencyConflict: "幂等键已用于其他内容",
    PendingTransferError: "冻结款项状态不允许此操作",
    ReversalError: "不能冲正",
}


class ErrorBodySerializer(serializers.Serializer):
    code = serializers.CharField(help_text="稳定的错误码 stable machine code (see docs/api.md)")
    message = serializers.CharField(help_text="中文在前、英文在后 Chinese first, English beside it")
    field = serializers.CharField(allow_null=True, help_text="出错的字段 the request field at fault")
    details = serializers.DictField(help_text="规则名与数字 the rule and the numbers behind the error")


class ErrorSerializer(serializers.Serializer):
    """The one error shape of the API."""

    error = ErrorBodySerializer()


def error_payload(
    code: str, message: str, *, field: str | None = None, details: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field, "details": dict(details or {})}}


def error_response(
    code: str,
    message: str | None = None,
    *,
    status_code: int | None = None,
    field: str | None = None,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    default_status, default_message = ERROR_CODES.get(code, (400, code))
    return Response(
        error_payload(code, message or default_message, field=field, details=details),
        status=status_code or default_status,
        headers=dict(headers or {}),
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def domain_error_response(exc: CustodyError | LedgerError) -> Response:
    """The response for an error the services raised (also stored for idempotent replays)."""
    if isinstance(exc, CustodyError):
        code = exc.code
        status_code = {
            RuleViolation: 422,
            IllegalTransition: 409,
            NotFound: 404,
            PaymentRejected: 422,
        }.get(type(exc), ERROR_CODES.get(code, (422, ""))[0])
        if isinstance(exc, NotFound):
            code = "not_found"
        return error_response(
            code, exc.message, status_code=status_code, field=exc.field, details=_jsonable(exc.details)
        )
    code = exc.code if exc.code in ERROR_CODES else "ledger_error"
    zh = next((text for kind, text in _LEDGER_ZH.items() if isinstance(exc, kind)), "账务错误")
    return error_response(code, f"{zh} {exc.message}", details=_jsonable(exc.details))


def _validation_details(detail: Any) -> tuple[str | None, dict[str, Any]]:
    """The first field at fault and every field's messages, from a DRF ``ValidationError.detail``."""
    if isinstance(detail, Mapping):
        fields = {str(k): _flatten(v) for k, v in detail.items()}
        first = next((k for k in fields if k != "non_field_errors"), None)
        return first, {"fields": fields}
    return None, {"fields": {"non_field_errors": _flatten(detail)}}


def _flatten(detail: Any) -> Any:
    if isinstance(detail, Mapping):
        return {str(k): _flatten(v) for k, v in detail.items()}
    if isinstance(detail, list | tuple):
        return [_flatten(v) for v in detail]
    return str(detail)


def statement_error_response(exc: Exception) -> Response | None:
    """Reconciliation's refusals: a statement file (``StatementError``), a rule (``ReconciliationError``)."""
    from reconciliation.errors import ReconciliationError
    from reconciliation.formats.errors import StatementError

    if isinstance(exc, ReconciliationError):
        return error_response(
            "reconciliation_rule", exc.message, details={"rule": exc.rule, **_jsonable(exc.details)}
        )
    if not isinstance(exc, StatementError):
        return None
    return error_response(
        "statement_error",
        exc.message,
        field="file",
        details={"line": exc.line_number, "rule": exc.rule, **_jsonable(exc.details)},
    )


def exception_handler(exc: Exception, context: Mapping[str, Any]) -> Response:
    """DRF's ``EXCEPTION_HANDLER``: every exception a view raises becomes the one error shape."""
    if isinstance(exc, CustodyError | LedgerError):
        return domain_error_response(exc)
    statement = statement_error_response(exc)
    if statement is not None:
        return statement
    if isinstance(exc, exceptions.ParseError):
        return error_response("malformed_json", "请求体无法解析 the request body cannot be parsed")
    if isinstance(exc, exceptions.ValidationError):
        field, details = _validation_details(exc.detail)
        return error_response(
            "invalid_request", "请求参数无效 the request is invalid", field=field, details=details
        )
    if isinstance(exc, exceptions.Throttled):
        wait = int(getattr(exc, "wait", None) or 1)
        return error_response(
            "throttled",
            f"请求过于频繁，请{wait}秒后重试 too many requests; retry in {wait} s",
            details={"retry_after": wait},
            headers={"Retry-After": str(wait)},
        )
    if isinstance(exc, exceptions.NotAuthenticated):
        return error_response("not_authenticated", "请先登录 authentication credentials were not provided")
    if isinstance(exc, exceptions.AuthenticationFailed):
        code = exc.get_codes() if isinstance(exc.get_codes(), str) else "authentication_failed"
        if code not in ERROR_CODES or ERROR_CODES[code][0] != 401:
            code = "authentication_failed"
        return error_response(code, str(exc.detail), status_code=401)
    if isinstance(exc, exceptions.PermissionDenied | DjangoPermissionDenied):
        return error_response("permission_denied", "无权执行此操作 you are not allowed to do this")
    if isinstance(exc, exceptions.NotFound | Http404):
        return error_response("not_found", "不存在或无权查看 not found")
    if isinstance(exc, exceptions.MethodNotAllowed):
        return error_response("method_not_allowed", "不支持该请求方法 method not allowed")
    if isinstance(exc, exceptions.NotAcceptable):
        return error_response("not_acceptable")
    if isinstance(exc, exceptions.UnsupportedMediaType):
        return error_response("unsupported_media_type", "不支持的内容类型 unsupported media type")
    if isinstance(exc, RequestDataTooBig | TooManyFieldsSent | TooManyFilesSent):
        return error_response("payload_too_large", "请求体过大 the request body is too large")
    if isinstance(exc, SuspiciousOperation):
        return error_response("invalid_request", "请求无效 the request is not acceptable")
    if isinstance(exc, DjangoValidationError):
        details = {"fields": exc.message_dict} if hasattr(exc, "error_dict") else {"messages": exc.messages}
        return error_response(
            "invalid_request", "请求参数无效 the request is invalid", details=_jsonable(details)
        )
    if isinstance(exc, DataError):
        # A value the database cannot hold (an id or a number beyond its column): bad input, not a crash.
        return error_response("invalid_request", "数值超出允许范围 a value is out of range")
    if isinstance(exc, IntegrityError):
        logger.warning("integrity error answered 409 (%s)", type(exc).__name__)
        return error_response("conflict", "与并发修改冲突，请重试 conflicts with a concurrent change; retry")
    if isinstance(exc, exceptions.APIException):
        return error_response(
            "invalid_request", str(exc.detail), status_code=exc.status_code if exc.status_code < 500 else 400
        )
    # Unknown: log the type and the stack, never the message (it may quote personal data).
    view = context.get("view")
    logger.error(
        "unhandled %s in %s\n%s",
        type(exc).__name__,
        type(view).__name__ if view else "?",
        "".join(traceback.format_tb(exc.__traceback__)),
    )
    return error_response("internal_error", status_code=status.HTTP_500_INTERNAL_SERVER_ERROR)

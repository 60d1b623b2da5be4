"""OpenAPI generation (drf-spectacular): every operation documents the one error shape for each status it
can answer, its tag (the role it serves), and, for idempotent POSTs, the required ``Idempotency-Key``."""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter

from custody.api.errors import ERROR_CODES, ErrorSerializer
from custody.api.idempotency import HEADER, KEY_PATTERN

_READ_ERRORS = ("400", "401", "403", "404", "406", "429")
_WRITE_ERRORS = (*_READ_ERRORS, "409", "413", "415", "422")
_TAGS = {
    "auth": "auth 登录",
    "me": "auth 登录",
    "parent": "parent 家长",
    "institution": "institution 培训机构",
    "regulator": "regulator 监管部门",
    "bank": "bank 托管银行",
    "callbacks": "callbacks 支付渠道回调",
}


def _status_description(code: str) -> str:
    meanings = sorted({text for status, text in ERROR_CODES.values() if str(status) == code})
    return "错误 error: " + "; ".join(meanings) if meanings else "错误 error"


class CustodyAutoSchema(AutoSchema):
    def _handler(self) -> Any:
        return getattr(self.view, (self.method or "get").lower(), None)

    def is_idempotent(self) -> bool:
        return bool(getattr(self._handler(), "idempotent", False))

    def get_override_parameters(self) -> list[Any]:
        parameters = list(super().get_override_parameters())
        if self.is_idempotent():
            parameters.append(
                OpenApiParameter(
                    HEADER,
                    type={"type": "string", "minLength": 1, "maxLength": 200, "pattern": KEY_PATTERN},
                    location=OpenApiParameter.HEADER,
                    required=True,
                    description="每次操作唯一的键；重试时重复使用 a key unique to this operation; "
                    "reuse it to retry. The same key with the same body returns the first response; "
                    "with another body, 409 idempotency_conflict.",
                )
            )
        return parameters

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses = dict(super()._get_response_bodies(direction))
        codes = _READ_ERRORS if (self.method or "GET").upper() in ("GET", "HEAD") else _WRITE_ERRORS
        for code in codes:
            if code not in responses:
                response = self._get_response_for_code(ErrorSerializer, code, direction=direction)
                response["description"] = _status_description(code)
                responses[code] = response
        return responses

    def get_serializer_name(self, serializer: Any, direction: Any) -> str:
        """Inline ``InputSerializer`` / ``OutputSerializer`` classes (HackSoft style) are named after their
        view: ``ParentContractsView.InputSerializer`` becomes ``ParentContractsViewInput``."""
        qualname = type(serializer).__qualname__
        if "." not in qualname:
            return super().get_serializer_name(serializer, direction)
        return "".join(part.removesuffix("Serializer") for part in qualname.split(".") if part != "<locals>")

    def get_tags(self) -> list[str]:
        parts = [p for p in self.path.split("/") if p and not p.startswith("{")]
        # /api/v1/<area>/...
        area = parts[2] if len(parts) > 2 else "api"
        return [_TAGS.get(area, area)]

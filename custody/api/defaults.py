"""DRF defaults that must import nothing of the API itself (DRF imports them while it loads)."""

from __future__ import annotations

from typing import Any, cast

from rest_framework.exceptions import ParseError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import JSONParser
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.settings import DEFAULTS, IMPORT_STRINGS, APISettings


class DenyAll(BasePermission):
    """``DEFAULT_PERMISSION_CLASSES``: a view that names no permission classes is closed, not open."""

    message = "该接口未声明访问权限 this endpoint declares no permission"

    def has_permission(self, request: Request, view: Any) -> bool:
        return False


class Pagination(PageNumberPagination):
    """``DEFAULT_PAGINATION_CLASS``: ``page`` and ``page_size`` (50 by default, at most 200)."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


class JSONBodyParser(JSONParser):
    """``DEFAULT_PARSER_CLASSES``: DRF's JSON parser, with nesting too deep for the decoder (a recursion
    error) answered as malformed JSON instead of a crash."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON nested too deeply") from None


class JsonContentNegotiation(DefaultContentNegotiation):
    """``DEFAULT_CONTENT_NEGOTIATION_CLASS``: the API renders only JSON, so a request that plainly accepts it
    (no ``Accept`` header, ``*/*`` or ``application/json``, no ``?format=``) is answered without parsing its
    ``Accept`` header into media types, which DRF does on every request, reads included. Anything else is
    negotiated by DRF as before (406 ``not_acceptable`` when nothing fits)."""

    PLAIN_ACCEPT = frozenset({"", "*/*", "application/json"})

    def select_renderer(self, request: Request, renderers: Any, format_suffix: str | None = None) -> Any:
        if (
            format_suffix is None
            and len(renderers) == 1
            and renderers[0].media_type == "application/json"
            and request.META.get("HTTP_ACCEPT", "").strip() in self.PLAIN_ACCEPT
            and self.settings.URL_FORMAT_OVERRIDE not in request.query_params
        ):
            return renderers[0], renderers[0].media_type
        return super().select_renderer(request, renderers, format_suffix)


class NoFormatOverrideNegotiation(JsonContentNegotiation):
    """For a list whose own filter is named ``format`` (bank statements: csv, xlsx, camt053, mt940): DRF's
    ``?format=`` renderer override is off, so the parameter reaches the filter. Without this, ``?format=csv``
    looked for a CSV renderer and answered 404."""

    settings = cast(Any, APISettings(cast(Any, {"URL_FORMAT_OVERRIDE": None}), DEFAULTS, IMPORT_STRINGS))

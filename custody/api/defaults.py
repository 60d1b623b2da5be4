"""DRF defaults that must import nothing of the API itself (DRF imports them while it loads)."""

from __future__ import annotations

from typing import Any

from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import BasePermission
from rest_framework.request import Request


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

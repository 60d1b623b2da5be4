"""Base classes of the API's views: thin, explicit about permissions, scoped, paginated and filterable.

- ``ApiView``: an action (parse input, call one service, render output); ``self.audit(...)`` notes what
  the audit trail should say about it.
- ``ApiListView``: a list from a scoped queryset, with django-filter filters, ``ordering`` and page-number
  pagination (``page``, ``page_size`` up to 200).
- ``ApiDetailView``: one object from the same scoped queryset (another party's id is 404).

``DEFAULT_PERMISSION_CLASSES`` denies everything, so a view that forgets its ``permission_classes`` is closed,
not open; tests/custody/api/test_permission_matrix.py also fails on it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import django_filters
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import Http404
from django_filters.fields import IsoDateTimeField
from django_filters.rest_framework import DjangoFilterBackend
from rest_framework import generics, serializers
from rest_framework.filters import OrderingFilter
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

from custody.api import audit
from custody.api.authentication import get_actor
from custody.api.defaults import Pagination
from custody.selectors.access import Actor


class _ActorMixin:
    """Who is calling, for views whose permission class has already required the role: ``self.user`` is the
    signed-in user and ``guardian_id`` / ``institution_id`` / ``jurisdiction_id`` / ``bank_name`` are set."""

    @property
    def actor(self) -> Actor:
        return get_actor(getattr(self, "request"))  # noqa: B009 - DRF sets it; typed differently per base

    @property
    def user(self) -> User:
        return cast(User, getattr(self, "request").user)  # noqa: B009

    @property
    def guardian_id(self) -> int:
        return self._required(self.actor.guardian_id, 0)

    @property
    def institution_id(self) -> int:
        return self._required(self.actor.institution_id, 0)

    @property
    def jurisdiction_id(self) -> int:
        return self._required(self.actor.jurisdiction_id, 0)

    @property
    def bank_name(self) -> str:
        return self._required(self.actor.bank_name, "")

    def _required(self, value: Any, nobody: Any) -> Any:
        if value is not None:
            return value
        if getattr(self, "swagger_fake_view", False):
            return nobody  # drf-spectacular builds querysets without a caller: scope them to nothing
        # The view's permission class let in a caller without the role: a bug, never a response.
        raise PermissionError("the permission class did not require this role")

    def audit(self, **kwargs: Any) -> None:
        audit.note(self, **kwargs)


class MethodPermissionsMixin:
    """``method_permissions = {"GET": (IsInstitutionStaff,), "POST": (IsInstitutionManager,)}``: when one URL
    serves two roles' needs, each method names its own permission classes."""

    method_permissions: dict[str, tuple[type[BasePermission], ...]] = {}

    def get_permissions(self) -> list[BasePermission]:
        method = getattr(self, "request").method or "GET"  # noqa: B009
        classes = self.method_permissions.get(method.upper())
        if classes is None:
            return super().get_permissions()  # type: ignore[misc]
        return [permission() for permission in classes]


class ApiView(_ActorMixin, APIView):
    pass


class ApiListView(_ActorMixin, generics.ListAPIView):
    filter_backends = [DjangoFilterBackend, OrderingFilter]
    pagination_class = Pagination
    ordering_fields: list[str] = ["id"]
    ordering = ["-id"]


class ApiDetailView(_ActorMixin, generics.RetrieveAPIView):
    lookup_url_kwarg = "pk"


# Ids in requests are bounded to what a bigint column holds: a larger number is a field error, not a crash.
MAX_ID = 2**63 - 1


class _CalendarIsoDateTimeField(IsoDateTimeField):
    default_error_messages = {"calendar": "时间超出日历范围 the time is beyond the calendar"}

    def to_python(self, value: Any) -> datetime | None:
        moment = super().to_python(value)
        if moment is not None:
            try:
                moment.astimezone(UTC)  # what the database is sent
            except OverflowError:
                raise ValidationError(self.error_messages["calendar"], code="calendar") from None
        return moment


class IsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    """django-filter's ISO 8601 time filter, but a time with no UTC moment (``0001-01-01T00:00:00+14:00``,
    ``9999-12-31T23:59:59-14:00``) is a field error rather than a crash when the query is built."""

    field_class = _CalendarIsoDateTimeField


def validated(serializer_class: type[serializers.Serializer], request: Request) -> dict[str, Any]:
    """The request body validated by ``serializer_class`` (400 ``invalid_request`` otherwise)."""
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def own_or_field_error(queryset: QuerySet[Any], pk: int, field: str) -> Any:
    """The object ``pk`` among the caller's (``queryset`` is scoped); otherwise a field error that does not
    say whether the object exists for someone else."""
    found = queryset.filter(pk=pk).first()
    if found is None:
        raise serializers.ValidationError({field: ["不存在或无权使用 not found, or not yours"]})
    return found


def own_or_404(queryset: QuerySet[Any], pk: int) -> Any:
    """The object ``pk`` among the caller's, or 404 (another party's id is indistinguishable from none)."""
    found = queryset.filter(pk=pk).first()
    if found is None:
        raise Http404
    return found

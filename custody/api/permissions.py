"""Who may call which endpoint. Every view names its permission classes explicitly; objects are scoped by
the views' querysets (custody/selectors/access.py), so another party's id is simply not found (404).

| class | who |
|---|---|
| ``IsParent`` | a user with a ``Guardian`` |
| ``IsInstitutionStaff`` | any staff of an institution |
| ``IsInstitutionTeacher`` | staff who record lessons and answer disputes: teacher, manager |
| ``IsInstitutionFinance`` | staff who answer refunds: finance, manager |
| ``IsInstitutionManager`` | the manager: courses and prices |
| ``IsRegulator`` | a regulator of a jurisdiction |
| ``IsBankOperator`` | an operator of a custody bank |
| ``Anyone`` | no credentials needed (sign-in, signed channel callbacks, the schema) |
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import AllowAny, BasePermission
from rest_framework.request import Request

from custody.api.authentication import get_actor
from custody.models import StaffRole


class _RolePermission(BasePermission):
    message = "无权执行此操作 your role may not do this"

    def has_permission(self, request: Request, view: Any) -> bool:
        if not request.user or not request.user.is_authenticated:
            return False
        return self.allows(get_actor(request))

    def allows(self, actor: Any) -> bool:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError


class IsParent(_RolePermission):
    message = "仅家长可用 parents only"

    def allows(self, actor: Any) -> bool:
        return actor.guardian_id is not None


class IsInstitutionStaff(_RolePermission):
    message = "仅培训机构工作人员可用 institution staff only"
    staff_roles: frozenset[str] = frozenset(StaffRole.values)

    def allows(self, actor: Any) -> bool:
        return actor.institution_id is not None and actor.staff_role in self.staff_roles


class IsInstitutionTeacher(IsInstitutionStaff):
    message = "仅机构负责人或教师可用 institution managers and teachers only"
    staff_roles = frozenset({StaffRole.MANAGER, StaffRole.TEACHER})


class IsInstitutionFinance(IsInstitutionStaff):
    message = "仅机构负责人或财务可用 institution managers and finance staff only"
    staff_roles = frozenset({StaffRole.MANAGER, StaffRole.FINANCE})


class IsInstitutionManager(IsInstitutionStaff):
    message = "仅机构负责人可用 institution managers only"
    staff_roles = frozenset({StaffRole.MANAGER})


class IsRegulator(_RolePermission):
    message = "仅监管人员可用 regulators only"

    def allows(self, actor: Any) -> bool:
        return actor.jurisdiction_id is not None


class IsBankOperator(_RolePermission):
    message = "仅托管银行可用 custody bank operators only"

    def allows(self, actor: Any) -> bool:
        return actor.bank_name is not None


class Anyone(AllowAny):
    """No credentials needed: the endpoint authenticates its caller another way (a password and TOTP code,
    a channel's signature) or serves public data."""

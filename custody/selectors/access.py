"""Who is asking (``Actor``) and what they may see: the scopes every API query is filtered by.

An ``Actor`` is built once per request from the user and its role rows (loaded with the user by the
authentication class, so building it costs no query). Scopes:

- parent: rows whose ``guardian`` is the user's guardian;
- institution staff: rows of their institution;
- regulator: rows of institutions in their jurisdiction or any jurisdiction under it;
- bank operator: institutions whose supervised account is at their bank (``custody_bank_name``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, User
from django.db import connection
from django.db.models import Model, QuerySet
from django.utils import timezone

from custody.models import Institution, Jurisdiction
from custody.selectors._prepared import fetch_one
from custody.services.access import requires_two_factor

M = TypeVar("M", bound=Model)


class Role(StrEnum):
    PARENT = "parent"
    INSTITUTION = "institution"
    REGULATOR = "regulator"
    BANK = "bank"
    ADMIN = "admin"


@dataclass
class Actor:
    user_id: int | None
    username: str = ""
    guardian_id: int | None = None
    institution_id: int | None = None
    staff_role: str | None = None
    jurisdiction_id: int | None = None  # a regulator's own jurisdiction
    bank_name: str | None = None
    is_admin: bool = False
    two_factor_required: bool = False
    _jurisdiction_ids: frozenset[int] | None = field(default=None, repr=False)

    @property
    def roles(self) -> list[Role]:
        held = [
            (Role.PARENT, self.guardian_id is not None),
            (Role.INSTITUTION, self.institution_id is not None),
            (Role.REGULATOR, self.jurisdiction_id is not None),
            (Role.BANK, self.bank_name is not None),
            (Role.ADMIN, self.is_admin),
        ]
        return [role for role, has in held if has]

    @property
    def primary_role(self) -> str:
        roles = self.roles
        return roles[0].value if roles else ""

    def jurisdiction_ids(self) -> frozenset[int]:
        """The regulator's jurisdiction and every one under it (computed once per request)."""
        if self.jurisdiction_id is None:
            return frozenset()
        if self._jurisdiction_ids is None:
            self._jurisdiction_ids = jurisdiction_scope(self.jurisdiction_id)
        return self._jurisdiction_ids


ANONYMOUS = Actor(user_id=None)


def actor_for(user: AbstractBaseUser | AnonymousUser | None) -> Actor:
    """The actor of ``user``; its role rows are read through the reverse one-to-one accessors (select them
    with the user to avoid queries: ``ROLE_RELATIONS``)."""
    if user is None or not user.is_authenticated:
        return ANONYMOUS
    guardian = getattr(user, "guardian", None)
    staff = getattr(user, "institution_staff", None)
    regulator = getattr(user, "regulator_profile", None)
    bank = getattr(user, "bank_operator", None)
    return Actor(
        user_id=user.pk,
        username=user.get_username(),
        guardian_id=guardian.pk if guardian is not None else None,
        institution_id=staff.institution_id if staff is not None else None,
        staff_role=staff.role if staff is not None else None,
        jurisdiction_id=regulator.jurisdiction_id if regulator is not None else None,
        bank_name=bank.bank_name if bank is not None else None,
        is_admin=bool(getattr(user, "is_staff", False) or getattr(user, "is_superuser", False)),
        two_factor_required=requires_two_factor(user),
    )


# The reverse one-to-one relations ``actor_for`` reads; ``select_related`` them with the user.
ROLE_RELATIONS = ("guardian", "institution_staff", "regulator_profile", "bank_operator")


@dataclass(frozen=True)
class TokenHolder:
    """An API token and who holds it, as one row (the authentication of every API request)."""

    token_id: int
    expires_at: datetime
    revoked: bool
    otp_verified: bool
    user: User
    actor: Actor


# One statement per request, with no ORM query compilation, prepared once per connection: the token,
# its user and the user's role rows.
_TOKEN_SQL = """
SELECT t.id, t.expires_at, t.revoked_at IS NOT NULL, t.otp_verified,
       u.id, u.username, u.is_active, u.is_staff, u.is_superuser,
       g.id, s.institution_id, s.role, r.jurisdiction_id, b.bank_name
FROM custody_apitoken t
JOIN auth_user u ON u.id = t.user_id
LEFT JOIN custody_guardian g ON g.user_id = u.id
LEFT JOIN custody_institutionstaff s ON s.user_id = u.id
LEFT JOIN custody_regulatorprofile r ON r.user_id = u.id
LEFT JOIN custody_bankoperator b ON b.user_id = u.id
WHERE t.key_hash = %s
"""


def partial_instance(model: type[M], **values: Any) -> M:
    """An instance of ``model`` as loaded from the database with only these fields (the others deferred,
    loaded when read), without building a query: ``from_db`` wants the values in the model's field order."""
    names = [f.attname for f in model._meta.concrete_fields if f.attname in values]
    return model.from_db(connection.alias, names, [values[name] for name in names])


def token_holder(key_hash: str) -> TokenHolder | None:
    row = fetch_one(_TOKEN_SQL, [key_hash])
    if row is None:
        return None
    (token_id, expires_at, revoked, otp_verified, user_id, username, is_active, is_staff, is_superuser) = row[
        :9
    ]
    guardian_id, institution_id, staff_role, jurisdiction_id, bank_name = row[9:]
    # The fields authentication and permissions read; the others are deferred, so code that reads one (an
    # email, the last login) loads it then, as with ``.only()``.
    user = partial_instance(
        User,
        id=user_id,
        username=username,
        is_active=bool(is_active),
        is_staff=bool(is_staff),
        is_superuser=bool(is_superuser),
    )
    is_admin = bool(is_staff or is_superuser)
    actor = Actor(
        user_id=user_id,
        username=username,
        guardian_id=guardian_id,
        institution_id=institution_id,
        staff_role=staff_role,
        jurisdiction_id=jurisdiction_id,
        bank_name=bank_name,
        is_admin=is_admin,
        two_factor_required=is_admin or jurisdiction_id is not None or bank_name is not None,
    )
    if expires_at is not None and timezone.is_naive(expires_at):
        expires_at = timezone.make_aware(expires_at, UTC)
    return TokenHolder(token_id, expires_at, bool(revoked), bool(otp_verified), user, actor)


def jurisdiction_scope(root_id: int) -> frozenset[int]:
    """``root_id`` and all its descendants (jurisdictions nest a few levels: province, city, district)."""
    found = {root_id}
    frontier = {root_id}
    while frontier:
        frontier = (
            set(Jurisdiction.objects.filter(parent_id__in=frontier).values_list("pk", flat=True)) - found
        )
        found |= frontier
    return frozenset(found)


def institutions_in_scope(actor: Actor) -> QuerySet[Institution]:
    """Institutions a regulator supervises, a bank operator holds accounts of, or staff work at."""
    if actor.jurisdiction_id is not None:
        return Institution.objects.filter(jurisdiction_id__in=actor.jurisdiction_ids())
    if actor.bank_name is not None:
        return Institution.objects.filter(custody_bank_name=actor.bank_name)
    if actor.institution_id is not None:
        return Institution.objects.filter(pk=actor.institution_id)
    return Institution.objects.none()

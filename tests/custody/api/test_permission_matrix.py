"""The permission matrix, built from the URL configuration itself: every endpoint × every method × every
role, and for every endpoint that names an object, the caller's own object against another party's.

``EXPECTED`` declares who may call what. An endpoint added to custody/api/urls.py without a row here fails
``test_every_endpoint_is_in_the_matrix``; one with a path parameter and no ``OWN_AND_OTHER`` entry fails
``test_every_object_endpoint_has_an_own_and_other_case``; a list without a ``LIST_SCOPES`` entry fails
``test_every_list_has_a_scope_case``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.urls import reverse
from rest_framework.test import APIClient

from ledger import clock
from tests.custody.api.conftest import ROLES, World, client_for, idem
from tests.custody.api.routes import Route, api_routes
from tests.custody.conftest import valid_id_number

pytestmark = pytest.mark.django_db

STAFF = {"manager", "teacher", "finance"}
EVERYONE = set(ROLES)
SIGNED_IN = EVERYONE - {"anonymous"}

# name -> method -> roles allowed. Roles not listed get 401 (anonymous) or 403.
EXPECTED: dict[str, dict[str, set[str]]] = {
    "api:auth-token": {"POST": EVERYONE},
    "api:auth-token-revoke": {"POST": SIGNED_IN},
    "api:me": {"GET": SIGNED_IN},
    "api:parent-institutions": {"GET": {"parent"}},
    "api:parent-courses": {"GET": {"parent"}},
    "api:parent-students": {"GET": {"parent"}, "POST": {"parent"}},
    "api:parent-contracts": {"GET": {"parent"}, "POST": {"parent"}},
    "api:parent-contract": {"GET": {"parent"}},
    "api:parent-contract-statement": {"GET": {"parent"}},
    "api:parent-contract-cancel": {"POST": {"parent"}},
    "api:parent-balance": {"GET": {"parent"}},
    "api:parent-lessons": {"GET": {"parent"}},
    "api:parent-lesson-confirm": {"POST": {"parent"}},
    "api:parent-lesson-dispute": {"POST": {"parent"}},
    "api:parent-refunds": {"GET": {"parent"}, "POST": {"parent"}},
    "api:institution-profile": {"GET": STAFF},
    "api:institution-courses": {"GET": STAFF, "POST": {"manager"}},
    "api:institution-contracts": {"GET": STAFF},
    "api:institution-contract": {"GET": STAFF},
    "api:institution-lessons": {"GET": STAFF, "POST": {"manager", "teacher"}},
    "api:institution-lessons-bulk": {"POST": {"manager", "teacher"}},
    "api:institution-lesson-resolve": {"POST": {"manager", "teacher"}},
    "api:institution-refunds": {"GET": STAFF},
    "api:institution-refund-answer": {"POST": {"manager", "finance"}},
    "api:institution-payouts": {"GET": STAFF},
    "api:regulator-overview": {"GET": {"regulator"}},
    "api:regulator-institutions": {"GET": {"regulator"}},
    "api:regulator-institution": {"GET": {"regulator"}},
    "api:regulator-institution-freeze": {"POST": {"regulator"}},
    "api:regulator-institution-unfreeze": {"POST": {"regulator"}},
    "api:regulator-institution-closure": {"POST": {"regulator"}},
    "api:regulator-closures": {"GET": {"regulator"}},
    "api:regulator-policy": {"GET": {"regulator"}, "POST": {"regulator"}},
    "api:regulator-policy-versions": {"GET": {"regulator"}},
    "api:regulator-disputes": {"GET": {"regulator"}},
    "api:regulator-dispute-resolve": {"POST": {"regulator"}},
    "api:regulator-refunds": {"GET": {"regulator"}},
    "api:regulator-corrections": {"GET": {"regulator"}, "POST": {"regulator"}},
    "api:regulator-correction-approve": {"POST": {"regulator"}},
    "api:regulator-correction-reject": {"POST": {"regulator"}},
    "api:regulator-alerts": {"GET": {"regulator"}},
    "api:regulator-alert": {"GET": {"regulator"}},
    "api:regulator-alert-acknowledge": {"POST": {"regulator"}},
    "api:regulator-alert-investigate": {"POST": {"regulator"}},
    "api:regulator-alert-resolve": {"POST": {"regulator"}},
    "api:regulator-inbox": {"GET": {"regulator"}},
    "api:regulator-inbox-read": {"POST": {"regulator"}},
    "api:regulator-audit": {"GET": {"regulator"}},
    "api:regulator-ledger-verification": {"GET": {"regulator"}},
    "api:bank-accounts": {"GET": {"bank"}},
    "api:bank-payments": {"GET": {"bank"}},
    "api:bank-payouts": {"GET": {"bank"}},
    "api:bank-payout-result": {"POST": {"bank"}},
    "api:bank-settlements": {"POST": {"bank"}},
    "api:bank-statements": {"GET": {"bank"}, "POST": {"bank"}},
    # Signed by the channel, not by a user: everyone reaches the signature check.
    "api:callback-bank": {"POST": EVERYONE},
    "api:callback-wechat": {"POST": EVERYONE},
    "api:callback-alipay": {"POST": EVERYONE},
}

Kwargs = Callable[[World], dict[str, Any]]

# name -> (the primary role's own object, another party's object)
OWN_AND_OTHER: dict[str, tuple[Kwargs, Kwargs]] = {
    "api:parent-contract": (lambda w: {"pk": w.contract.pk}, lambda w: {"pk": w.other_contract.pk}),
    "api:parent-contract-statement": (lambda w: {"pk": w.contract.pk}, lambda w: {"pk": w.other_contract.pk}),
    "api:parent-contract-cancel": (lambda w: {"pk": w.contract.pk}, lambda w: {"pk": w.other_contract.pk}),
    "api:parent-lesson-confirm": (lambda w: {"pk": w.lesson.pk}, lambda w: {"pk": w.other_lesson.pk}),
    "api:parent-lesson-dispute": (lambda w: {"pk": w.lesson.pk}, lambda w: {"pk": w.other_lesson.pk}),
    "api:institution-contract": (lambda w: {"pk": w.contract.pk}, lambda w: {"pk": w.other_contract.pk}),
    "api:institution-lesson-resolve": (
        lambda w: {"pk": w.disputed.pk},
        lambda w: {"pk": w.other_disputed.pk},
    ),
    "api:institution-refund-answer": (lambda w: {"pk": w.refund.pk}, lambda w: {"pk": w.other_refund.pk}),
    "api:regulator-institution": (lambda w: {"pk": w.institution.pk}, lambda w: {"pk": w.remote.pk}),
    "api:regulator-institution-freeze": (lambda w: {"pk": w.institution.pk}, lambda w: {"pk": w.remote.pk}),
    "api:regulator-institution-unfreeze": (
        lambda w: {"pk": w.institution.pk},
        lambda w: {"pk": w.remote.pk},
    ),
    "api:regulator-institution-closure": (lambda w: {"pk": w.institution.pk}, lambda w: {"pk": w.remote.pk}),
    "api:regulator-dispute-resolve": (lambda w: {"pk": w.disputed.pk}, lambda w: {"pk": w.other_disputed.pk}),
    "api:regulator-correction-approve": (
        lambda w: {"pk": w.correction.pk},
        lambda w: {"pk": w.other_correction.pk},
    ),
    "api:regulator-correction-reject": (
        lambda w: {"pk": w.correction.pk},
        lambda w: {"pk": w.other_correction.pk},
    ),
    "api:regulator-alert": (lambda w: {"pk": w.alert.pk}, lambda w: {"pk": w.other_alert.pk}),
    "api:regulator-alert-acknowledge": (lambda w: {"pk": w.alert.pk}, lambda w: {"pk": w.other_alert.pk}),
    "api:regulator-alert-investigate": (lambda w: {"pk": w.alert.pk}, lambda w: {"pk": w.other_alert.pk}),
    "api:regulator-alert-resolve": (lambda w: {"pk": w.alert.pk}, lambda w: {"pk": w.other_alert.pk}),
    "api:bank-payout-result": (
        lambda w: {"reference": w.payout.reference},
        lambda w: {"reference": w.other_payout.reference},
    ),
}

Ids = Callable[[World], set[int]]

# list name -> (role, ids that must be listed, ids that must not be)
LIST_SCOPES: dict[str, tuple[str, Ids, Ids]] = {
    "api:parent-institutions": ("parent", lambda w: {w.institution.pk, w.remote.pk}, lambda w: set()),
    "api:parent-courses": ("parent", lambda w: {w.course.pk, w.remote_course.pk}, lambda w: set()),
    "api:parent-students": ("parent", lambda w: {w.student.pk}, lambda w: {w.other_student.pk}),
    "api:parent-contracts": (
        "parent",
        lambda w: {w.contract.pk, w.refund_contract.pk},
        lambda w: {w.other_contract.pk, w.other_refund_contract.pk},
    ),
    "api:parent-lessons": ("parent", lambda w: {w.lesson.pk, w.disputed.pk}, lambda w: {w.other_lesson.pk}),
    "api:parent-refunds": ("parent", lambda w: {w.refund.pk}, lambda w: {w.other_refund.pk}),
    "api:institution-courses": ("manager", lambda w: {w.course.pk}, lambda w: {w.remote_course.pk}),
    "api:institution-contracts": (
        "manager",
        lambda w: {w.contract.pk, w.refund_contract.pk},
        lambda w: {w.other_contract.pk},
    ),
    "api:institution-lessons": ("teacher", lambda w: {w.lesson.pk}, lambda w: {w.other_lesson.pk}),
    "api:institution-refunds": ("finance", lambda w: {w.refund.pk}, lambda w: {w.other_refund.pk}),
    "api:institution-payouts": ("manager", lambda w: {w.payout.pk}, lambda w: {w.other_payout.pk}),
    "api:regulator-institutions": (
        "regulator",
        lambda w: {w.institution.pk, w.neighbour.pk},
        lambda w: {w.remote.pk},
    ),
    "api:regulator-closures": ("regulator", lambda w: set(), lambda w: set()),
    "api:regulator-policy-versions": ("regulator", lambda w: set(), lambda w: set()),
    "api:regulator-disputes": ("regulator", lambda w: {w.disputed.pk}, lambda w: {w.other_disputed.pk}),
    "api:regulator-refunds": ("regulator", lambda w: {w.refund.pk}, lambda w: {w.other_refund.pk}),
    "api:regulator-corrections": (
        "regulator",
        lambda w: {w.correction.pk},
        lambda w: {w.other_correction.pk},
    ),
    "api:regulator-alerts": ("regulator", lambda w: {w.alert.pk}, lambda w: {w.other_alert.pk}),
    "api:regulator-inbox": ("regulator", lambda w: {w.message.pk}, lambda w: {w.other_message.pk}),
    "api:regulator-audit": ("regulator", lambda w: set(), lambda w: set()),
    "api:bank-accounts": ("bank", lambda w: {w.institution.pk, w.neighbour.pk}, lambda w: {w.remote.pk}),
    "api:bank-payments": (
        "bank",
        lambda w: _payment_ids(w, w.contract),
        lambda w: _payment_ids(w, w.other_contract),
    ),
    "api:bank-payouts": ("bank", lambda w: {w.payout.pk}, lambda w: {w.other_payout.pk}),
    "api:bank-statements": ("bank", lambda w: set(), lambda w: set()),
}


def _payment_ids(world: World, contract: Any) -> set[int]:
    return set(contract.payments.values_list("pk", flat=True))


def _body(name: str, world: World) -> tuple[dict[str, Any] | None, str]:
    """A valid body for each POST (so that an allowed role gets past validation to the object check)."""
    today = clock.now().date()
    bodies: dict[str, dict[str, Any]] = {
        "api:auth-token": {"username": "nobody"},
        "api:parent-students": {"name": "张小华", "id_number": valid_id_number("20130909"), "grade": "初一"},
        "api:parent-contracts": {
            "course": world.course.pk,
            "student": world.student.pk,
            "paid_hours": 10,
            "amount": {"amount": "800.00", "currency": "CNY"},
            "service_starts_on": str(world.course.starts_on),
            "service_ends_on": str(world.course.starts_on + timedelta(days=30)),
        },
        "api:parent-lesson-dispute": {"reason": "没有上课 no lesson was held"},
        "api:parent-refunds": {"contract": world.contract.pk, "note": "不想上了"},
        "api:institution-courses": {
            "name": "初一英语",
            "subject": "英语",
            "category": "subject",
            "class_size_band": "small",
            "mode": "offline",
            "price_per_hour": {"amount": "80.00", "currency": "CNY"},
            "starts_on": str(today + timedelta(days=20)),
        },
        "api:institution-lessons": {
            "contract": world.contract.pk,
            "held_at": clock.now().isoformat(),
            "hours": 1,
            "key": "matrix-1",
        },
        "api:institution-lessons-bulk": {
            "lessons": [
                {"contract": world.contract.pk, "held_at": clock.now().isoformat(), "key": "matrix-b1"}
            ]
        },
        "api:institution-lesson-resolve": {"release": False, "note": "同意家长 the parent is right"},
        "api:institution-refund-answer": {"approve": True},
        "api:regulator-institution-freeze": {"reason": "检查 inspection"},
        "api:regulator-institution-unfreeze": {"reason": "整改完成 fixed"},
        "api:regulator-institution-closure": {"mode": "planned", "reason": "停办 closing"},
        "api:regulator-policy": {"changes": {"max_paid_hours": 50}, "note": "收紧 tighter"},
        "api:regulator-dispute-resolve": {"release": True, "note": "课已上 the lesson was held"},
        "api:regulator-corrections": {
            "institution": world.institution.pk,
            "reason": "更正 fix",
            "legs": [
                {
                    "account": f"payable:i{world.institution.pk}",
                    "side": "debit",
                    "amount": {"amount": "1.00", "currency": "CNY"},
                },
                {
                    "account": f"prepaid:c{world.contract.pk}",
                    "side": "credit",
                    "amount": {"amount": "1.00", "currency": "CNY"},
                },
            ],
        },
        "api:regulator-correction-approve": {"note": "同意"},
        "api:regulator-correction-reject": {"note": "不同意 no"},
        "api:regulator-alert-acknowledge": {"note": "收到"},
        "api:regulator-alert-investigate": {"note": "核查中"},
        "api:regulator-alert-resolve": {"note": "已约谈机构 met the institution"},
        "api:regulator-inbox-read": {"ids": [world.message.pk]},
        "api:bank-payout-result": {"executed": True, "bank_reference": "B-1"},
        "api:bank-settlements": {"channel": "wechat", "transaction_ids": ["4200000001"]},
    }
    if name == "api:bank-statements":
        return {"file": SimpleUploadedFile("statement.csv", b"not a statement")}, "multipart"
    return bodies.get(name, {}), "json"


def _request(client: APIClient, method: str, url: str, name: str, world: World) -> Any:
    if method == "GET":
        return client.get(url)
    body, fmt = _body(name, world)
    return client.post(url, body, format=fmt, **idem())


def _kwargs(route: Route, world: World) -> dict[str, Any]:
    if not route.has_parameters:
        return {}
    return OWN_AND_OTHER[route.name][0](world)


def _matrix_cases() -> list[tuple[str, str]]:
    return [(name, method) for name, methods in sorted(EXPECTED.items()) for method in sorted(methods)]


def test_every_endpoint_is_in_the_matrix() -> None:
    declared = {(name, method) for name, methods in EXPECTED.items() for method in methods}
    served = {(route.name, method) for route in api_routes() for method in route.methods}
    assert served - declared == set(), "endpoints without a row in EXPECTED"
    assert declared - served == set(), "rows in EXPECTED for endpoints that do not exist"


def test_every_object_endpoint_has_an_own_and_other_case() -> None:
    with_parameters = {route.name for route in api_routes() if route.has_parameters}
    assert with_parameters == set(OWN_AND_OTHER)


def test_every_list_has_a_scope_case() -> None:
    from custody.api.base import ApiListView

    lists = {route.name for route in api_routes() if issubclass(route.view_class, ApiListView)}
    assert lists == set(LIST_SCOPES)


def test_every_view_names_its_permission_classes() -> None:
    for route in api_routes():
        declared = any(
            "permission_classes" in vars(cls)
            for cls in route.view_class.__mro__[:-1]
            if cls.__module__.startswith("custody.api.views")
        )
        assert declared, f"{route.view_class.__name__} does not name its permission classes"


@pytest.mark.parametrize(("name", "method"), _matrix_cases())
def test_role_matrix(world: World, name: str, method: str) -> None:
    route = next(r for r in api_routes() if r.name == name)
    url = reverse(name, kwargs=_kwargs(route, world))
    allowed = EXPECTED[name][method]
    for role in ROLES:
        client = client_for(world.users.get(role))
        with transaction.atomic():
            response = _request(client, method, url, name, world)
            transaction.set_rollback(True)
        assert response.status_code < 500, (role, response.status_code)
        if role in allowed:
            assert response.status_code not in (401, 403), (
                role,
                response.status_code,
                response.content[:300],
            )
        else:
            expected = 401 if role == "anonymous" else 403
            assert response.status_code == expected, (role, response.status_code, response.content[:300])
            code = response.json()["error"]["code"]
            assert code in ("not_authenticated", "permission_denied"), code


def _primary_role(name: str, method: str) -> str:
    allowed = EXPECTED[name][method]
    for role in ("parent", "manager", "teacher", "finance", "regulator", "bank"):
        if role in allowed:
            return role
    raise AssertionError(f"{name} has no primary role")


@pytest.mark.parametrize("name", sorted(OWN_AND_OTHER))
def test_own_object_is_served_and_another_partys_is_not_found(world: World, name: str) -> None:
    route = next(r for r in api_routes() if r.name == name)
    method = route.methods[0]
    own, other = OWN_AND_OTHER[name]
    client = world.client(_primary_role(name, method))
    with transaction.atomic():
        mine = _request(client, method, reverse(name, kwargs=own(world)), name, world)
        transaction.set_rollback(True)
    with transaction.atomic():
        theirs = _request(client, method, reverse(name, kwargs=other(world)), name, world)
        transaction.set_rollback(True)
    assert mine.status_code != 404 and mine.status_code < 500, mine.content[:300]
    assert theirs.status_code == 404, theirs.content[:300]
    assert theirs.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("name", sorted(LIST_SCOPES))
def test_lists_show_only_the_callers_objects(world: World, name: str) -> None:
    role, own, foreign = LIST_SCOPES[name]
    response = world.client(role).get(reverse(name), {"page_size": 200})
    assert response.status_code == 200, response.content[:300]
    listed = {row["id"] for row in response.json()["results"] if "id" in row}
    assert own(world) <= listed
    assert not (foreign(world) & listed)


@pytest.mark.parametrize(
    ("name", "parameter", "foreign"),
    [
        ("api:regulator-corrections", "institution", lambda world: world.remote.pk),
        ("api:regulator-inbox", "alert", lambda world: world.other_alert.pk),
    ],
)
def test_filtering_by_another_partys_id_answers_as_for_an_id_that_does_not_exist(
    world: World, name: str, parameter: str, foreign: Any
) -> None:
    # Otherwise a filter tells which ids exist elsewhere (a list of everyone's ids to choose from).
    client = world.client("regulator")
    theirs = client.get(reverse(name), {parameter: foreign(world)})
    nobodys = client.get(reverse(name), {parameter: 999_999_999})
    assert theirs.status_code == nobodys.status_code == 200, (theirs.content[:300], nobodys.content[:300])
    assert theirs.json()["count"] == nobodys.json()["count"] == 0

"""Schemathesis against /api/schema/: every operation, called as the role it serves (bearer token; the
channels' callbacks and sign-in unauthenticated), with generated parameters and bodies. No response may be a
5xx, and every response must match the schema: its status code, content type, headers and body.

Path parameters are pointed at the caller's own objects (the world of conftest.py), so the generated bodies
reach the services rather than stopping at a 404. Each operation runs in its own test, inside the module's
rolled-back world, with a modest number of examples so that both CI passes stay within a couple of minutes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err, Ok
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from config.wsgi import application
from custody.services.access import issue_api_token
from tests.custody.api.conftest import World

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Examples per operation, half positive, half negative; raise it for a deeper run.
MAX_EXAMPLES = int(os.environ.get("API_FUZZ_EXAMPLES", "10"))

# Who calls each area of the API.
ROLE_BY_PREFIX = (
    ("/api/v1/parent/", "parent"),
    ("/api/v1/institution/", "manager"),
    ("/api/v1/regulator/", "regulator"),
    ("/api/v1/bank/", "bank"),
    ("/api/v1/me/", "parent"),
    ("/api/v1/auth/token/revoke/", "parent"),
    ("/api/v1/auth/token/", None),
    ("/api/v1/callbacks/", None),
)

# The caller's own object for each path with a parameter.
OWN: dict[str, Callable[[World], dict[str, Any]]] = {
    "/api/v1/parent/contracts/{id}/": lambda w: {"id": w.contract.pk},
    "/api/v1/parent/contracts/{id}/statement/": lambda w: {"id": w.contract.pk},
    "/api/v1/parent/lessons/{id}/confirm/": lambda w: {"id": w.lesson.pk},
    "/api/v1/parent/lessons/{id}/dispute/": lambda w: {"id": w.lesson.pk},
    "/api/v1/institution/contracts/{id}/": lambda w: {"id": w.contract.pk},
    "/api/v1/institution/lessons/{id}/resolve/": lambda w: {"id": w.disputed.pk},
    "/api/v1/institution/refunds/{id}/answer/": lambda w: {"id": w.refund.pk},
    "/api/v1/regulator/institutions/{id}/": lambda w: {"id": w.institution.pk},
    "/api/v1/regulator/institutions/{id}/freeze/": lambda w: {"id": w.institution.pk},
    "/api/v1/regulator/institutions/{id}/unfreeze/": lambda w: {"id": w.institution.pk},
    "/api/v1/regulator/institutions/{id}/closure/": lambda w: {"id": w.institution.pk},
    "/api/v1/regulator/disputes/{id}/resolve/": lambda w: {"id": w.disputed.pk},
    "/api/v1/regulator/corrections/{id}/approve/": lambda w: {"id": w.correction.pk},
    "/api/v1/regulator/corrections/{id}/reject/": lambda w: {"id": w.correction.pk},
    "/api/v1/regulator/alerts/{id}/": lambda w: {"id": w.alert.pk},
    "/api/v1/regulator/alerts/{id}/acknowledge/": lambda w: {"id": w.alert.pk},
    "/api/v1/regulator/alerts/{id}/investigate/": lambda w: {"id": w.alert.pk},
    "/api/v1/regulator/alerts/{id}/resolve/": lambda w: {"id": w.alert.pk},
    "/api/v1/bank/payouts/{reference}/result/": lambda w: {"reference": w.payout.reference},
}


# Loaded at collection through the WSGI app itself (no server, no database query).
schema = schemathesis.openapi.from_wsgi("/api/schema/", application)
_RESULTS = list(schema.get_all_operations())
_INVALID = [result.err() for result in _RESULTS if isinstance(result, Err)]
OPERATIONS = sorted(
    (result.ok().method.upper(), result.ok().path) for result in _RESULTS if isinstance(result, Ok)
)


def role_for(path: str) -> str | None:
    for prefix, role in ROLE_BY_PREFIX:
        if path.startswith(prefix):
            return role
    raise AssertionError(f"no role declared for {path}")


@pytest.fixture(autouse=True)
def _keep_the_test_connection() -> Iterator[None]:
    """Calls go through the WSGI handler, whose request signals close "old" connections; inside the test's
    transaction that would close the test's own connection on PostgreSQL. Django's test client unhooks them
    the same way."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def tokens(world: World) -> dict[str, str]:
    """One token per role for the whole test (revoking it is one of the operations tested)."""
    roles = ("parent", "manager", "regulator", "bank")
    return {role: issue_api_token(user=world.users[role], otp_verified=True)[0] for role in roles}


def test_every_operation_is_tested() -> None:
    assert _INVALID == []
    assert len(OPERATIONS) == len(set(OPERATIONS)) > 60
    assert all(
        role_for(path) or path.startswith(("/api/v1/auth/", "/api/v1/callbacks/")) for _, path in OPERATIONS
    )


@pytest.mark.django_db
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_operation_conforms_to_the_schema(
    method: str, path: str, world: World, tokens: dict[str, str]
) -> None:
    operation = schema[path][method]
    role = role_for(path)
    fixed: dict[str, Any] = {"headers": {"Authorization": f"Bearer {tokens[role]}"}} if role else {}
    if path in OWN:
        fixed["path_parameters"] = OWN[path](world)
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE, **fixed),
        operation.as_strategy(GenerationMode.NEGATIVE, **fixed),
    )

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def run(case: Any) -> None:
        case.call_and_validate(checks=CHECKS)

    run()


@pytest.mark.django_db
def test_the_checks_catch_a_response_that_breaks_the_schema(world: World, tokens: dict[str, str]) -> None:
    """The checks are live: a balance response with a float amount, or a 500, fails them."""
    operation = schema["/api/v1/parent/balance/"]["GET"]
    case = operation.Case(headers={"Authorization": f"Bearer {tokens['parent']}"})
    response = case.call()
    case.validate_response(response, checks=CHECKS)  # the real response conforms
    body = json.loads(response.content)
    body["held"]["amount"] = 2320.0
    for status, content in ((200, json.dumps(body).encode()), (500, response.content)):
        forged = Response(
            status_code=status,
            headers=response.headers,
            content=content,
            request=response.request,
            elapsed=response.elapsed,
            verify=response.verify,
        )
        with pytest.raises(FailureGroup):
            case.validate_response(forged, checks=CHECKS)

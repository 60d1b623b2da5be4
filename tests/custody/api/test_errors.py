"""One error shape for every error, and never a 500 for bad input: malformed JSON, wrong types, huge
numbers, negative or fractional-fen amounts, unknown ids, other people's ids, wrong states, rule
violations, unknown paths and methods."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from rest_framework.test import APIClient

from ledger import clock
from tests.custody.api.conftest import World, idem

pytestmark = pytest.mark.django_db

CJK = re.compile(r"[\u4e00-\u9fff]")
LATIN = re.compile(r"[A-Za-z]{3,}")


def assert_error(response: Any, status: int, code: str, *, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.content[:400])
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "field", "details"}
    assert error["code"] == code, error
    assert CJK.search(error["message"]) and LATIN.search(error["message"]), error["message"]
    assert isinstance(error["details"], dict)
    if field is not None:
        assert error["field"] == field, error
    return error


def sign_body(world: World, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "course": world.course.pk,
        "student": world.student.pk,
        "paid_hours": 10,
        "amount": {"amount": "800.00", "currency": "CNY"},
        "service_starts_on": str(world.course.starts_on),
        "service_ends_on": str(world.course.starts_on + timedelta(days=30)),
    }
    body.update(overrides)
    return body


def test_malformed_json_is_400(world: World) -> None:
    response = world.client("parent").post(
        "/api/v1/parent/contracts/", data='{"course": 1,', content_type="application/json", **idem()
    )
    assert_error(response, 400, "malformed_json")


def test_a_list_where_an_object_is_due_is_400(world: World) -> None:
    response = world.client("parent").post("/api/v1/parent/contracts/", [1, 2], format="json", **idem())
    assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"paid_hours": "ten"}, "paid_hours"),
        ({"paid_hours": 10**30}, "paid_hours"),
        ({"paid_hours": -3}, "paid_hours"),
        ({"course": 10**30}, "course"),
        ({"course": "1 OR 1=1"}, "course"),
        ({"service_starts_on": "2024-02-30"}, "service_starts_on"),
        ({"amount": 800}, "amount"),
        ({"amount": {"amount": 800.5, "currency": "CNY"}}, "amount"),
        ({"amount": {"amount": "-5.00", "currency": "CNY"}}, "amount"),
        ({"amount": {"amount": "12.345", "currency": "CNY"}}, "amount"),
        ({"amount": {"amount": "1e3", "currency": "CNY"}}, "amount"),
        ({"amount": {"amount": "0.00", "currency": "CNY"}}, "amount"),
        ({"amount": {"amount": "99999999999999999999999", "currency": "CNY"}}, "amount"),
        ({"amount": {"amount": "800.00", "currency": "USD"}}, "amount"),
        ({"amount": {"amount": "800.00", "currency": "CNY", "rate": "1"}}, "amount"),
    ],
)
def test_wrong_types_huge_numbers_and_inexact_money_are_field_errors(
    world: World, overrides: dict[str, Any], field: str
) -> None:
    response = world.client("parent").post(
        "/api/v1/parent/contracts/", sign_body(world, **overrides), format="json", **idem()
    )
    error = assert_error(response, 400, "invalid_request", field=field)
    assert field in error["details"]["fields"]


def test_a_service_period_at_the_end_of_the_calendar_is_a_rule_violation(world: World) -> None:
    response = world.client("parent").post(
        "/api/v1/parent/contracts/",
        sign_body(world, service_starts_on="9999-12-01", service_ends_on="9999-12-31"),
        format="json",
        **idem(),
    )
    error = assert_error(response, 422, "rule_violation", field="service_starts_on")
    assert error["details"]["rule"] == "earliest_charge"


def test_unknown_and_other_peoples_ids_are_not_found(world: World) -> None:
    parent = world.client("parent")
    assert_error(parent.get("/api/v1/parent/contracts/999999999/"), 404, "not_found")
    assert_error(parent.get(f"/api/v1/parent/contracts/{world.other_contract.pk}/"), 404, "not_found")
    assert_error(parent.get(f"/api/v1/parent/contracts/{10**25}/"), 404, "not_found")
    assert_error(
        parent.post(f"/api/v1/parent/lessons/{world.other_lesson.pk}/confirm/", format="json", **idem()),
        404,
        "not_found",
    )
    # Another family's student in a body is a field error that does not say it exists.
    response = parent.post(
        "/api/v1/parent/contracts/", sign_body(world, student=world.other_student.pk), format="json", **idem()
    )
    assert_error(response, 400, "invalid_request", field="student")


def test_a_wrong_state_is_409_illegal_transition(world: World) -> None:
    parent = world.client("parent")
    url = f"/api/v1/parent/lessons/{world.lesson.pk}/confirm/"
    assert parent.post(url, format="json", **idem()).status_code == 200
    error = assert_error(parent.post(url, format="json", **idem()), 409, "illegal_transition")
    assert error["details"] == {"entity": "lesson", "current": "confirmed", "target": "confirmed"}


def test_a_rule_violation_names_the_rule_and_the_numbers(world: World) -> None:
    response = world.client("parent").post(
        "/api/v1/parent/contracts/",
        sign_body(world, paid_hours=72, amount={"amount": "5760.00", "currency": "CNY"}),
        format="json",
        **idem(),
    )
    error = assert_error(response, 422, "rule_violation")
    assert error["details"]["rule"] == "max_paid_hours"
    assert error["details"]["limit"] == 60 and error["details"]["requested"] == 72


def test_a_ledger_limit_is_422_with_the_ledger_code(world: World) -> None:
    # A correction that would take more out of payable:i than it holds.
    regulator, second = world.client("regulator"), world.client("second_regulator")
    body = {
        "institution": world.institution.pk,
        "reason": "过大 too big",
        "legs": [
            {
                "account": f"payable:i{world.institution.pk}",
                "side": "debit",
                "amount": {"amount": "999999.00", "currency": "CNY"},
            },
            {
                "account": f"custody_cash:i{world.institution.pk}",
                "side": "credit",
                "amount": {"amount": "999999.00", "currency": "CNY"},
            },
        ],
    }
    proposal = regulator.post("/api/v1/regulator/corrections/", body, format="json", **idem()).json()
    response = second.post(
        f"/api/v1/regulator/corrections/{proposal['id']}/approve/", {}, format="json", **idem()
    )
    assert_error(response, 422, "limit_exceeded")


def test_unsupported_media_type_unknown_paths_and_methods(world: World) -> None:
    parent = world.client("parent")
    response = parent.post("/api/v1/parent/contracts/", data="course=1", content_type="text/plain", **idem())
    assert_error(response, 415, "unsupported_media_type")
    assert_error(parent.get("/api/v1/no/such/endpoint/"), 404, "not_found")
    assert_error(parent.get("/api/nothing-here"), 404, "not_found")
    assert_error(parent.delete("/api/v1/parent/contracts/"), 405, "method_not_allowed")


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
@pytest.mark.parametrize("role", [None, "manager"])
def test_an_unknown_api_path_is_404_json_whatever_the_method(
    world: World, method: str, role: str | None
) -> None:
    # As a real client sends it: CSRF is checked (the test client skips that unless told), no cookie.
    client = world.client(role) if role else APIClient()
    client.handler.enforce_csrf_checks = True
    response = getattr(client, method)("/api/v1/institution/no-such-thing/", {}, format="json", **idem())
    assert_error(response, 404, "not_found")


def test_bad_query_parameters_are_400_and_pages_past_the_end_404(world: World) -> None:
    parent = world.client("parent")
    error = assert_error(parent.get("/api/v1/parent/contracts/", {"state": "bogus"}), 400, "invalid_request")
    assert "state" in error["details"]["fields"]
    assert_error(parent.get("/api/v1/parent/contracts/", {"student": "x" * 30}), 400, "invalid_request")
    assert_error(parent.get("/api/v1/parent/contracts/", {"page": 999}), 404, "not_found")
    assert_error(parent.get("/api/v1/parent/lessons/", {"held_after": "yesterday"}), 400, "invalid_request")
    assert_error(parent.get("/api/v1/parent/courses/", {"subject": "数\x00学"}), 400, "invalid_request")


@pytest.mark.parametrize(
    ("role", "path", "parameter"),
    [
        ("parent", "/api/v1/parent/lessons/", "held_after"),
        ("manager", "/api/v1/institution/lessons/", "held_before"),
        ("manager", "/api/v1/institution/payouts/", "instructed_after"),
        ("bank", "/api/v1/bank/payouts/", "instructed_before"),
        ("regulator", "/api/v1/regulator/disputes/", "held_after"),
        ("regulator", "/api/v1/regulator/alerts/", "raised_after"),
        ("regulator", "/api/v1/regulator/audit/", "occurred_before"),
    ],
)
@pytest.mark.parametrize(
    "moment", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00"]
)
def test_a_time_filter_beyond_the_calendar_is_400_not_500(
    world: World, role: str, path: str, parameter: str, moment: str
) -> None:
    # Valid ISO 8601, but with no UTC moment: the query cannot be built, so it is bad input.
    response = world.client(role).get(path, {parameter: moment})
    error = assert_error(response, 400, "invalid_request", field=parameter)
    assert parameter in error["details"]["fields"]


def test_lessons_in_the_future_and_beyond_the_hours_are_rule_violations(world: World) -> None:
    teacher = world.client("teacher")
    future = {
        "contract": world.contract.pk,
        "held_at": (clock.now() + timedelta(hours=1)).isoformat(),
        "key": "future-1",
    }
    error = assert_error(
        teacher.post("/api/v1/institution/lessons/", future, format="json", **idem()), 422, "rule_violation"
    )
    assert error["details"]["rule"] == "lesson_in_future"
    too_many = {"contract": world.contract.pk, "held_at": clock.now().isoformat(), "hours": 13, "key": "x"}
    assert_error(
        teacher.post("/api/v1/institution/lessons/", too_many, format="json", **idem()),
        400,
        "invalid_request",
        field="hours",
    )


def test_authentication_errors_have_the_shape(world: World) -> None:

    anonymous = APIClient()
    assert_error(anonymous.get("/api/v1/parent/balance/"), 401, "not_authenticated")
    bogus = APIClient()
    bogus.credentials(HTTP_AUTHORIZATION="Bearer ck_not-a-token")
    assert_error(bogus.get("/api/v1/parent/balance/"), 401, "authentication_failed")
    assert_error(world.client("bank").get("/api/v1/parent/balance/"), 403, "permission_denied")


def test_bodies_too_deep_or_too_large_are_refused_cleanly(world: World) -> None:
    parent = world.client("parent")
    deep = parent.post(
        "/api/v1/parent/contracts/", data="[" * 100_000, content_type="application/json", **idem()
    )
    assert_error(deep, 400, "malformed_json")
    huge = b'{"transaction_id": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    too_big = APIClient().post("/api/v1/callbacks/bank/", data=huge, content_type="application/json")
    assert_error(too_big, 413, "payload_too_large")


@pytest.mark.parametrize("accept", ["", "*/*", "application/json", "application/json; indent=2"])
def test_a_request_that_accepts_json_gets_json(world: World, accept: str) -> None:
    response = world.client("parent").get("/api/v1/parent/balance/", HTTP_ACCEPT=accept)
    assert response.status_code == 200 and response["Content-Type"].startswith("application/json")
    assert response.json()["paid"]["currency"] == "CNY"


@pytest.mark.parametrize(
    ("accept", "query", "status", "code"),
    [
        ("text/html", "", 406, "not_acceptable"),
        ("application/xml", "", 406, "not_acceptable"),
        ("application/json", "?format=xml", 404, "not_found"),
    ],
)
def test_a_request_that_accepts_no_json_is_refused(
    world: World, accept: str, query: str, status: int, code: str
) -> None:
    response = world.client("parent").get(f"/api/v1/parent/balance/{query}", HTTP_ACCEPT=accept)
    assert response.status_code == status, response.content[:300]
    assert response.json()["error"]["code"] == code


def test_answering_an_answered_refund_is_409_refund_already_answered(world: World) -> None:
    finance = world.client("finance")
    url = f"/api/v1/institution/refunds/{world.refund.pk}/answer/"
    assert finance.post(url, {"approve": True}, format="json", **idem()).status_code == 200

    again = finance.post(url, {"approve": True}, format="json", **idem())

    error = assert_error(again, 409, "refund_already_answered")
    assert error["details"] == {
        "entity": "refund",
        "refund": world.refund.pk,
        "current": "approved",
        "target": "approved",
    }
    rejected = finance.post(url, {"approve": False, "reason": "不同意 no"}, format="json", **idem())
    assert assert_error(rejected, 409, "refund_already_answered")["details"]["target"] == "rejected"

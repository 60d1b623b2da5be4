"""The audit trail: every state-changing request and every regulator request is recorded (who, what, when,
from where, before/after for settings), append-only in the database, searchable by regulators within their
jurisdiction, and personal data appears neither in it, nor in logs, nor in error messages."""

from __future__ import annotations

import json
import logging

import pytest
from django.db import DatabaseError, transaction
from rest_framework.test import APIClient

from custody.models import AuditEvent, AuditOutcome
from custody.services.audit import mask_personal_data, record_event
from tests.custody.api.conftest import World, idem
from tests.custody.conftest import valid_id_number

pytestmark = pytest.mark.django_db


def test_a_policy_change_records_who_what_when_where_and_before_after(world: World) -> None:
    response = world.client("regulator").post(
        "/api/v1/regulator/policy/",
        {"changes": {"max_paid_hours": 40}, "note": "收紧 tighter"},
        format="json",
        REMOTE_ADDR="10.20.30.40",
        HTTP_USER_AGENT="regulator-console/1.0",
        **idem(),
    )
    assert response.status_code == 201, response.content
    event = AuditEvent.objects.get(action="policy.publish")
    assert (event.actor_username, event.actor_role) == ("regulator-1", "regulator")
    assert event.jurisdiction_id == world.jurisdiction.pk
    assert (event.method, event.path, event.status_code) == ("POST", "/api/v1/regulator/policy/", 201)
    assert event.outcome == AuditOutcome.SUCCEEDED
    assert (event.source_ip, event.user_agent) == ("10.20.30.40", "regulator-console/1.0")
    assert event.before is not None and event.after is not None
    assert (event.before["max_paid_hours"], event.after["max_paid_hours"]) == (60, 40)
    assert (event.before["version"], event.after["version"]) == (1, 2)


def test_refused_requests_are_recorded_too(world: World) -> None:
    APIClient().post(f"/api/v1/parent/lessons/{world.lesson.pk}/confirm/", format="json", **idem())
    world.client("bank").post(
        f"/api/v1/regulator/institutions/{world.institution.pk}/freeze/",
        {"reason": "x"},
        format="json",
        **idem(),
    )
    refused = AuditEvent.objects.filter(outcome=AuditOutcome.REFUSED).order_by("pk")
    assert [(e.actor_username, e.status_code) for e in refused] == [("", 401), ("bank-x", 403)]
    assert refused[1].action == "write:api:regulator-institution-freeze"


def test_regulator_reads_are_recorded_and_ordinary_reads_are_not(world: World) -> None:
    world.client("parent").get("/api/v1/parent/balance/")
    world.client("manager").get("/api/v1/institution/contracts/")
    assert not AuditEvent.objects.exists()
    world.client("regulator").get("/api/v1/regulator/institutions/")
    event = AuditEvent.objects.get()
    assert event.action == "read:api:regulator-institutions" and event.actor_role == "regulator"


def test_the_trail_is_append_only_in_the_database(world: World) -> None:
    event = record_event(action="test.event", actor=None, details={"n": 1})
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(action="rewritten")
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).delete()
    assert AuditEvent.objects.get(pk=event.pk).action == "test.event"


def test_regulators_search_their_own_jurisdiction_only(world: World) -> None:
    world.client("regulator").post(
        f"/api/v1/regulator/institutions/{world.institution.pk}/freeze/",
        {"reason": "检查 inspection"},
        format="json",
        **idem(),
    )
    found = world.client("regulator").get("/api/v1/regulator/audit/", {"action": "institution.freeze"}).json()
    assert found["count"] == 1
    row = found["results"][0]
    assert row["target_type"] == "institution" and row["target_id"] == str(world.institution.pk)
    assert (row["before"], row["after"]) == ({"state": "active"}, {"state": "frozen"})
    elsewhere = world.client("remote_regulator").get(
        "/api/v1/regulator/audit/", {"action": "institution.freeze"}
    )
    assert elsewhere.json()["count"] == 0


def test_personal_data_is_masked_in_the_trail(world: World) -> None:
    masked = mask_personal_data(
        {
            "name": "张小华",
            "phone": "13812345678",
            "password": "secret",
            "nested": [{"id_number": "110101201001011234"}],
        }
    )
    assert masked == {
        "name": "***",
        "phone": "138****5678",
        "password": "[redacted]",
        "nested": [{"id_number": "110***********1234"}],
    }
    number = valid_id_number("20130909")
    response = world.client("parent").post(
        "/api/v1/parent/students/", {"name": "张小华", "id_number": number}, format="json", **idem()
    )
    assert response.status_code == 201
    assert number not in response.content.decode()
    events = json.dumps(list(AuditEvent.objects.values()), default=str, ensure_ascii=False)
    assert number not in events and "张小华" not in events


def test_personal_data_never_reaches_logs_or_error_messages(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    bad_number = valid_id_number("20130909")[:-1] + ("0" if valid_id_number("20130909")[-1] != "0" else "1")
    with caplog.at_level(logging.DEBUG):
        refused = world.client("parent").post(
            "/api/v1/parent/students/", {"name": "张小华", "id_number": bad_number}, format="json", **idem()
        )
        login = APIClient().post(
            "/api/v1/auth/token/", {"username": "13812345678", "password": "wrong"}, format="json"
        )
    assert refused.status_code == 422 and login.status_code == 401
    assert bad_number not in refused.content.decode()
    assert bad_number[:3] in refused.json()["error"]["message"]  # shown masked
    logged = caplog.text + json.dumps(list(AuditEvent.objects.values()), default=str, ensure_ascii=False)
    for secret in (bad_number, "张小华", "13812345678", "wrong"):
        assert secret not in logged, secret

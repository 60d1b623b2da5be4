"""``Idempotency-Key`` on every state-changing POST: required, a retry returns the first response and changes
nothing, the same key with another body (or endpoint) is 409, and concurrent duplicates run once."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection

from custody.models import AuditEvent, Contract, IdempotencyRecord, Lesson, LessonState
from ledger.models import Entry
from tests.custody.api.conftest import World, client_for

pytestmark = pytest.mark.django_db


def sign_body(world: World, hours: int = 10) -> dict[str, Any]:
    return {
        "course": world.course.pk,
        "student": world.student.pk,
        "paid_hours": hours,
        "amount": {"amount": f"{80 * hours}.00", "currency": "CNY"},
        "service_starts_on": str(world.course.starts_on),
        "service_ends_on": str(world.course.starts_on + timedelta(days=30)),
    }


def key(value: str) -> dict[str, Any]:
    return {"HTTP_IDEMPOTENCY_KEY": value}


def test_the_header_is_required_and_nothing_happens_without_it(world: World) -> None:
    parent = world.client("parent")
    url = f"/api/v1/parent/lessons/{world.lesson.pk}/confirm/"
    for headers in ({}, key(""), key("has space"), key("x" * 201), key("中文")):
        response = parent.post(url, format="json", **headers)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "idempotency_key_required"
    assert Lesson.objects.get(pk=world.lesson.pk).state == LessonState.PENDING


def test_a_retry_returns_the_first_response_and_changes_nothing(world: World) -> None:
    parent = world.client("parent")
    first = parent.post("/api/v1/parent/contracts/", sign_body(world), format="json", **key("sign-1"))
    assert first.status_code == 201
    contracts = Contract.objects.count()
    entries = Entry.objects.count()

    again = parent.post("/api/v1/parent/contracts/", sign_body(world), format="json", **key("sign-1"))
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert Contract.objects.count() == contracts and Entry.objects.count() == entries


def test_the_same_content_in_another_key_order_and_spacing_is_the_same_request(world: World) -> None:
    parent = world.client("parent")
    body = sign_body(world)
    first = parent.post("/api/v1/parent/contracts/", body, format="json", **key("sign-2"))
    reordered = json.dumps(dict(reversed(list(body.items()))), indent=4)
    again = parent.post(
        "/api/v1/parent/contracts/", data=reordered, content_type="application/json", **key("sign-2")
    )
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]


def test_the_same_key_with_another_body_or_endpoint_is_409(world: World) -> None:
    parent = world.client("parent")
    parent.post("/api/v1/parent/contracts/", sign_body(world, 10), format="json", **key("sign-3"))
    other_body = parent.post("/api/v1/parent/contracts/", sign_body(world, 5), format="json", **key("sign-3"))
    assert other_body.status_code == 409
    error = other_body.json()["error"]
    assert error["code"] == "idempotency_conflict" and error["field"] == "Idempotency-Key"
    other_endpoint = parent.post(
        f"/api/v1/parent/lessons/{world.lesson.pk}/confirm/", format="json", **key("sign-3")
    )
    assert other_endpoint.status_code == 409
    assert Lesson.objects.get(pk=world.lesson.pk).state == LessonState.PENDING


def test_a_refusal_by_the_rules_is_stored_and_replayed_but_bad_input_is_not(world: World) -> None:
    parent = world.client("parent")
    refused = parent.post("/api/v1/parent/contracts/", sign_body(world, 72), format="json", **key("r-1"))
    assert refused.status_code == 422
    replay = parent.post("/api/v1/parent/contracts/", sign_body(world, 72), format="json", **key("r-1"))
    assert replay.status_code == 422 and replay["Idempotent-Replayed"] == "true"
    assert replay.json() == refused.json()

    invalid = parent.post("/api/v1/parent/contracts/", {"course": "x"}, format="json", **key("r-2"))
    assert invalid.status_code == 400
    assert not IdempotencyRecord.objects.filter(key="r-2").exists()
    fixed = parent.post("/api/v1/parent/contracts/", sign_body(world), format="json", **key("r-2"))
    assert fixed.status_code == 201


def test_keys_belong_to_their_user(world: World) -> None:
    mine = world.client("parent").post(
        f"/api/v1/parent/lessons/{world.lesson.pk}/confirm/", format="json", **key("shared")
    )
    theirs = world.client("other_parent").post(
        f"/api/v1/parent/lessons/{world.other_lesson.pk}/confirm/", format="json", **key("shared")
    )
    assert mine.status_code == theirs.status_code == 200
    assert mine.json()["id"] != theirs.json()["id"]


def test_a_replay_writes_one_audit_event_for_the_action(world: World) -> None:
    parent = world.client("parent")
    url = f"/api/v1/parent/lessons/{world.lesson.pk}/confirm/"
    parent.post(url, format="json", **key("c-1"))
    parent.post(url, format="json", **key("c-1"))
    assert AuditEvent.objects.filter(action="lesson.confirm").count() == 1
    replayed = AuditEvent.objects.filter(path=url, details__replayed=True)
    assert replayed.count() == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_duplicates_run_once(committed_world: World) -> None:
    world = committed_world
    url = f"/api/v1/parent/lessons/{world.lesson.pk}/confirm/"
    user = world.users["parent"]
    clients = [client_for(user) for _ in range(4)]
    barrier = threading.Barrier(len(clients))
    responses: list[Any] = [None] * len(clients)

    def send(index: int) -> None:
        try:
            barrier.wait()
            responses[index] = clients[index].post(url, format="json", **key("race-1"))
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert {r.status_code for r in responses} == {200}
    assert len({json.dumps(r.json(), sort_keys=True) for r in responses}) == 1
    assert sum(1 for r in responses if r.get("Idempotent-Replayed") == "true") == len(clients) - 1
    assert Entry.objects.filter(idempotency_key=f"lesson:{world.lesson.pk}:release").count() == 1
    assert AuditEvent.objects.filter(action="lesson.confirm").count() == 1

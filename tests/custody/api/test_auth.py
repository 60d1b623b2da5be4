"""Authentication: tokens for API clients, the session for the web, TOTP for regulators, bank operators and
administrators, lockout after repeated failures, and throttling per user and per address."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.http import HttpRequest
from django.test import Client
from django.utils import timezone
from django_otp import login as otp_login
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice
from rest_framework.test import APIClient

from custody.api.throttling import ApiRateLimits
from custody.models import ApiToken, AuditEvent
from custody.services.access import hash_token
from tests.custody.api.conftest import World

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


def login(username: str, password: str = PASSWORD, **extra: Any) -> Any:
    return APIClient().post(
        "/api/v1/auth/token/", {"username": username, "password": password, **extra}, format="json"
    )


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def current_code(device: TOTPDevice) -> str:
    return f"{totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits):06d}"


def test_a_parent_signs_in_with_a_password_and_uses_the_token(world: World) -> None:
    response = login("parent1")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["token"].startswith("ck_") and body["roles"] == ["parent"] and body["otp_verified"] is False
    stored = ApiToken.objects.get(key_hash=hash_token(body["token"]))
    assert stored.prefix == body["token"][:10]
    assert not ApiToken.objects.filter(key_hash=body["token"]).exists()  # only the hash is kept
    assert timedelta(days=29) < stored.expires_at - timezone.now() <= timedelta(days=30)
    assert bearer(body["token"]).get("/api/v1/parent/balance/").status_code == 200


def test_a_wrong_password_and_an_unknown_user_get_the_same_answer(world: World) -> None:
    wrong = login("parent1", "nope")
    unknown = login("nobody-at-all", "nope")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["error"]["code"] == "invalid_credentials"


def test_five_failures_lock_the_username_out(world: World) -> None:
    for _ in range(4):
        assert login("parent1", "wrong").status_code == 401
    fifth = login("parent1", "wrong")
    assert fifth.status_code == 429 and fifth.json()["error"]["code"] == "account_locked"
    locked = login("parent1")  # even the right password, until the cool-off ends
    assert locked.status_code == 429
    assert locked.json()["error"]["code"] == "account_locked"


def test_regulators_need_a_totp_code(world: World) -> None:
    regulator = world.users["regulator"]
    device = TOTPDevice.objects.create(user=regulator, name="phone", confirmed=True)

    missing = login("regulator-1")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "otp_required"
    wrong = login("regulator-1", otp_token="000000" if current_code(device) != "000000" else "111111")
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "otp_invalid"

    device.refresh_from_db()
    device.throttling_failure_count = 0
    device.throttling_failure_timestamp = None
    device.save()
    granted = login("regulator-1", otp_token=current_code(device))
    assert granted.status_code == 201, granted.content
    body = granted.json()
    assert body["otp_verified"] is True and body["roles"] == ["regulator"]
    stored = ApiToken.objects.get(key_hash=hash_token(body["token"]))
    assert stored.expires_at - timezone.now() <= timedelta(hours=12)
    assert bearer(body["token"]).get("/api/v1/regulator/overview/").status_code == 200


def test_a_privileged_token_without_a_totp_check_is_refused(world: World) -> None:
    raw = "ck_unverified-regulator-token"
    ApiToken.objects.create(
        key_hash=hash_token(raw),
        prefix=raw[:10],
        user=world.users["bank"],
        created_at=timezone.now(),
        expires_at=timezone.now() + timedelta(hours=1),
        otp_verified=False,
    )
    response = bearer(raw).get("/api/v1/bank/payouts/")
    assert response.status_code == 401 and response.json()["error"]["code"] == "otp_required"


def test_expired_and_revoked_tokens_are_refused(world: World) -> None:
    token = login("parent1").json()["token"]
    client = bearer(token)
    revoked = client.post("/api/v1/auth/token/revoke/", format="json")
    assert revoked.status_code == 200 and revoked.json() == {"revoked": True}
    assert client.get("/api/v1/parent/balance/").status_code == 401

    token = login("parent1").json()["token"]
    ApiToken.objects.filter(key_hash=hash_token(token)).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    expired = bearer(token).get("/api/v1/parent/balance/")
    assert expired.status_code == 401 and expired.json()["error"]["code"] == "authentication_failed"


def test_the_session_works_for_the_web_with_csrf_and_totp(world: World) -> None:
    parent = APIClient(enforce_csrf_checks=True)
    parent.force_login(world.users["parent"])
    assert parent.get("/api/v1/parent/balance/").status_code == 200
    no_csrf = parent.post(
        f"/api/v1/parent/lessons/{world.lesson.pk}/confirm/", format="json", HTTP_IDEMPOTENCY_KEY="s1"
    )
    assert no_csrf.status_code == 403 and no_csrf.json()["error"]["code"] == "permission_denied"

    regulator = APIClient()
    regulator.force_login(world.users["regulator"])
    unverified = regulator.get("/api/v1/regulator/overview/")
    assert unverified.status_code == 401 and unverified.json()["error"]["code"] == "otp_required"


def test_me_names_the_roles_and_scope(world: World) -> None:
    body = world.client("manager").get("/api/v1/me/").json()
    assert body["roles"] == ["institution"] and body["staff_role"] == "manager"
    assert body["institution"] == world.institution.pk and body["two_factor_required"] is False
    body = world.client("bank").get("/api/v1/me/").json()
    assert body["roles"] == ["bank"] and body["two_factor_required"] is True


def test_requests_are_throttled_per_user(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ApiRateLimits, "THROTTLE_RATES", {**ApiRateLimits.THROTTLE_RATES, "user": "3/min"})
    parent, other = world.client("parent"), world.client("other_parent")
    statuses = [parent.get("/api/v1/parent/balance/").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    throttled = parent.get("/api/v1/parent/balance/")
    assert throttled.json()["error"]["code"] == "throttled" and int(throttled["Retry-After"]) > 0
    assert other.get("/api/v1/parent/balance/").status_code == 200  # another user has their own budget


def test_requests_are_throttled_per_address(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ApiRateLimits, "THROTTLE_RATES", {**ApiRateLimits.THROTTLE_RATES, "ip": "2/min"})
    parent, other = world.client("parent"), world.client("other_parent")
    assert parent.get("/api/v1/parent/balance/").status_code == 200
    assert other.get("/api/v1/parent/balance/").status_code == 200
    assert parent.get("/api/v1/parent/balance/").status_code == 429  # the same address, whoever signs in
    assert other.get("/api/v1/parent/balance/", REMOTE_ADDR="10.9.9.9").status_code == 200


def test_the_admin_site_needs_a_totp_verified_session_and_is_audited(world: World) -> None:
    admin = world.users["admin"]
    client = Client()
    client.force_login(admin)
    refused = client.get("/admin/")
    assert refused.status_code == 302 and "/admin/login/" in refused["Location"]

    request = HttpRequest()
    request.session = client.session
    request.user = admin
    otp_login(request, TOTPDevice.objects.create(user=admin, name="key", confirmed=True))
    request.session.save()
    assert client.get("/admin/").status_code == 200
    added = client.post("/admin/auth/group/add/", {"name": "审计组 auditors"})
    assert added.status_code == 302
    event = AuditEvent.objects.get(method="POST", path="/admin/auth/group/add/")
    assert (event.actor_username, event.actor_role, event.status_code) == ("admin", "admin", 302)
    assert AuditEvent.objects.filter(
        method="GET", path="/admin/", actor_role="admin", status_code=200
    ).exists()


def _redis_listening() -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.3):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not _redis_listening(), reason="needs Redis on 127.0.0.1:6379 (CI starts it)")
def test_throttle_counters_work_in_redis(
    world: World, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    from django.core.cache import caches

    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:6379/14",
        }
    }
    caches["default"].clear()
    monkeypatch.setattr(ApiRateLimits, "THROTTLE_RATES", {**ApiRateLimits.THROTTLE_RATES, "user": "2/min"})
    parent = world.client("parent")
    statuses = [parent.get("/api/v1/parent/balance/").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    caches["default"].clear()


def test_the_token_holder_is_the_user_with_other_fields_loaded_when_read(world: World) -> None:
    from custody.selectors.access import token_holder
    from custody.services.access import hash_token, issue_api_token

    user = world.users["parent"]
    user.email = "parent@example.com"
    user.save(update_fields=["email"])
    raw, _ = issue_api_token(user=user, otp_verified=False)
    holder = token_holder(hash_token(raw))
    assert holder is not None and holder.user.pk == user.pk and holder.actor.guardian_id is not None
    assert (holder.user.username, holder.user.is_active, holder.user.is_staff) == (user.username, True, False)
    assert "email" in holder.user.get_deferred_fields()
    assert holder.user.email == "parent@example.com"  # loaded on first read, not a blank default

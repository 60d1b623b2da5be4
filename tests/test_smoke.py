"""Smoke tests for the project skeleton: settings, the health endpoint, the Celery app and its broker."""

import base64
import uuid

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings
from django.db import connection
from django.test import Client

from config import celery_app


@pytest.mark.django_db
def test_healthz_reports_ok_and_database_vendor(client: Client) -> None:
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"status": "ok", "database": connection.vendor}


def test_time_is_shanghai_and_timezone_aware() -> None:
    assert settings.TIME_ZONE == "Asia/Shanghai"
    assert settings.USE_TZ is True
    assert settings.LANGUAGE_CODE == "zh-hans"
    assert [code for code, _ in settings.LANGUAGES] == ["zh-hans", "en"]


def test_celery_app_is_configured_from_django_settings() -> None:
    assert celery_app.main == "custody"
    assert celery_app.conf.broker_url == settings.CELERY_BROKER_URL
    assert str(celery_app.conf.timezone) == "Asia/Shanghai"
    assert celery_app.conf.task_acks_late is True
    assert celery_app.conf.task_reject_on_worker_lost is True
    assert celery_app.conf.beat_scheduler == "django_celery_beat.schedulers:DatabaseScheduler"


def test_broker_round_trips_a_message() -> None:
    """The configured broker (embedded SQLite, or Redis in the PostgreSQL CI pass) really carries messages."""
    queue_name = f"smoke-{uuid.uuid4().hex}"
    with celery_app.connection_for_write() as conn:
        queue = conn.SimpleQueue(queue_name)
        try:
            queue.put({"hello": "broker"})
            message = queue.get(block=True, timeout=10)
            message.ack()
            assert message.payload == {"hello": "broker"}
        finally:
            queue.queue.delete()
            queue.close()


def test_signing_and_pii_keys_are_usable() -> None:
    signing_key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(settings.LEDGER_SIGNING_KEY))
    signature = signing_key.sign(b"checkpoint")
    signing_key.public_key().verify(signature, b"checkpoint")  # raises if the key pair is broken
    assert settings.LEDGER_SIGNING_KEY_ID

    assert settings.PII_ENCRYPTION_KEYS
    token = Fernet(settings.PII_ENCRYPTION_KEYS[0]).encrypt(b"110101200001011234")
    assert Fernet(settings.PII_ENCRYPTION_KEYS[0]).decrypt(token) == b"110101200001011234"
    assert len(base64.b64decode(settings.PII_HASH_KEY)) >= 32
    assert settings.SECRET_KEY


@pytest.mark.postgres
@pytest.mark.django_db
def test_postgres_pass_runs_on_postgresql_15_or_newer() -> None:
    assert connection.vendor == "postgresql"
    assert connection.pg_version >= 150000  # type: ignore[attr-defined]

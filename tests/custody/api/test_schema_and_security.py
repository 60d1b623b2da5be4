"""The OpenAPI schema (valid, with money, errors and authentication described; interactive docs served) and
the production security settings (``manage.py check --deploy`` clean, security headers on responses)."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet
from django.test import Client
from drf_spectacular.validation import validate_schema

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def openapi() -> dict:
    response = Client().get("/api/schema/")
    assert response.status_code == 200
    return yaml.safe_load(response.content)


def test_the_schema_is_valid_openapi_3(openapi: dict) -> None:
    assert openapi["openapi"].startswith("3.")
    validate_schema(openapi)  # raises on any violation of the OpenAPI 3 meta-schema


def test_money_is_a_decimal_string_with_a_currency(openapi: dict) -> None:
    money = openapi["components"]["schemas"]["Money"]
    assert money["required"] == ["amount", "currency"]
    assert money["properties"]["amount"]["type"] == "string"
    assert money["properties"]["amount"]["pattern"] == r"^(0|[1-9][0-9]{0,15})(\.[0-9]{1,2})?$"
    balance = openapi["components"]["schemas"]["ParentBalanceViewOutput"]["properties"]
    assert balance["held"] == {"$ref": "#/components/schemas/Money"}


def test_every_operation_documents_the_error_shape_and_its_auth(openapi: dict) -> None:
    error = openapi["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    body = openapi["components"]["schemas"][error["properties"]["error"]["$ref"].rsplit("/", 1)[1]]
    assert set(body["required"]) == {"code", "message", "field", "details"}
    schemes = openapi["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    for path, item in openapi["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert {"400", "404", "429"} <= set(responses), (method, path)
            assert responses["404"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Error"
            }
            public = path.startswith(("/api/v1/callbacks/", "/api/v1/auth/token/")) and not path.endswith(
                "revoke/"
            )
            security = operation.get("security", openapi.get("security"))
            if public:
                assert security in ([], [{}], None), (method, path, security)
            else:
                assert {"bearerAuth": []} in security, (method, path, security)


def test_state_changing_posts_require_an_idempotency_key(openapi: dict) -> None:
    exempt = ("/api/v1/auth/", "/api/v1/callbacks/")
    for path, item in openapi["paths"].items():
        if "post" not in item or path.startswith(exempt):
            continue
        headers = {p["name"]: p for p in item["post"].get("parameters", []) if p["in"] == "header"}
        assert headers.get("Idempotency-Key", {}).get("required") is True, path


def test_the_interactive_docs_are_served() -> None:
    response = Client().get("/api/docs/")
    assert response.status_code == 200
    assert b"swagger" in response.content.lower() and b"/api/schema/" in response.content


def test_responses_carry_the_security_headers() -> None:
    response = Client().get("/api/v1/me/")
    assert response.status_code == 401
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"


def _b64(n: int) -> str:
    return base64.b64encode(os.urandom(n)).decode()


@pytest.mark.slow
def test_check_deploy_is_clean_with_production_settings() -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "DATABASE_URL", "CUSTODY_", "PII_", "LEDGER_"))
    }
    env.update(
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(64),
        DJANGO_ALLOWED_HOSTS="custody.example.cn",
        LEDGER_SIGNING_KEY=_b64(32),
        PII_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
        PII_HASH_KEY=_b64(32),
        CUSTODY_CHANNELS_JSON=json.dumps({"bank": {"keys": {"bank-1": _b64(32)}}}),
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout

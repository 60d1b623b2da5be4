"""Settings for custody-ledger, read from the environment (django-environ) with development defaults.

With no environment at all the project runs for development: DEBUG on, SQLite at var/db.sqlite3, an embedded
SQLAlchemy/SQLite Celery broker, and every secret generated once into var/ (git-ignored). With
DJANGO_DEBUG=false every secret must come from the environment, or startup fails with ImproperlyConfigured.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path

import environ
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.exceptions import ImproperlyConfigured
from django.core.management.utils import get_random_secret_key
from django.utils.translation import gettext_lazy as _

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()

DEBUG: bool = env.bool("DJANGO_DEBUG", default=True)
# The demo's landing page offers one-click logins as the demo users; only when DEBUG is on as well.
DEMO_MODE: bool = env.bool("DEMO_MODE", default=DEBUG)


def secret_from_env_or_var(env_var: str, var_file: str, generate: Callable[[], str]) -> str:
    """Return the secret in `env_var`; in DEBUG only, fall back to one generated once into var/`var_file`.

    The file is written to a temporary name and hard-linked into place, so concurrent first starts (xdist
    workers, the server and the Celery worker) all end up with the same value.
    """
    value: str = env.str(env_var, default="").strip()
    if value:
        return value
    if not DEBUG:
        raise ImproperlyConfigured(f"{env_var} must be set when DJANGO_DEBUG is false.")
    path = VAR_DIR / var_file
    if path.exists():
        return path.read_text().strip()
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    value = generate()
    fd, tmp_name = tempfile.mkstemp(dir=VAR_DIR, prefix=f".{var_file}.")
    try:
        with os.fdopen(fd, "w") as tmp:
            tmp.write(value + "\n")
        os.link(tmp_name, path)
    except FileExistsError:
        value = path.read_text().strip()
    finally:
        os.unlink(tmp_name)
    return value


def _new_ed25519_key() -> str:
    return base64.b64encode(Ed25519PrivateKey.generate().private_bytes_raw()).decode()


def _new_fernet_key() -> str:
    return Fernet.generate_key().decode()


def _new_hash_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


SECRET_KEY = secret_from_env_or_var("DJANGO_SECRET_KEY", "secret_key", get_random_secret_key)

ALLOWED_HOSTS: list[str] = env.list(
    "DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"] if DEBUG else []
)
CSRF_TRUSTED_ORIGINS: list[str] = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "django_celery_beat",
    "ledger",
    "custody",
    "reconciliation",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # Chinese unless the person chose English with the switch (not the browser's Accept-Language).
    "custody.web.middleware.ChineseFirstLocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
            "libraries": {"web": "custody.web.templatetags"},
        },
    },
]

# --- Database ---------------------------------------------------------------------------------------------

DATABASES = {"default": env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE takes the write lock at BEGIN, so two writers queue on `timeout` instead of failing with
    # "database is locked" when one upgrades its read lock mid-transaction.
    _db["OPTIONS"] = {"transaction_mode": "IMMEDIATE", "timeout": 20, **_db.get("OPTIONS", {})}
    if _db["NAME"] and _db["NAME"] != ":memory:":
        Path(_db["NAME"]).parent.mkdir(parents=True, exist_ok=True)
elif _db["ENGINE"] == "django.db.backends.postgresql":
    _db["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
    _db["CONN_HEALTH_CHECKS"] = True
    _db["ATOMIC_REQUESTS"] = False
    # Django binds parameters on the client and prepares nothing; the ledger's hot statement runs on a
    # server-side-binding cursor that psycopg may prepare once per connection (it needs a threshold set).
    _db["OPTIONS"] = {"prepare_threshold": 5, **_db.get("OPTIONS", {})}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The web pages' sign-in (custody/web/account.py).
LOGIN_URL = "web:login"

# --- Auth ---------------------------------------------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Language and time --------------------------------------------------------------------------------------

LANGUAGE_CODE = "zh-hans"
LANGUAGES = [("zh-hans", _("Simplified Chinese")), ("en", _("English"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
USE_I18N = True
# Stored in UTC; shown, and working days counted, in Shanghai time.
TIME_ZONE = "Asia/Shanghai"
USE_TZ = True

# --- Static files -------------------------------------------------------------------------------------------

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# --- REST API, authentication and security (custody/api/, docs/api.md) -------------------------------------
# Everything the API needs, in one block: DRF and its schema, tokens and two factors (django-otp), login
# lockout (django-axes), throttles, the audit middleware, the cache the throttles count in, and the security
# headers and cookies of production (`manage.py check --deploy` is clean with DJANGO_DEBUG=false).

INSTALLED_APPS += ["django_otp", "django_otp.plugins.otp_totp", "axes"]
# django-otp marks the session's user verified after a TOTP check; the audit middleware records what no view
# recorded; django-axes turns a locked-out login into its response (it must come last).
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.contrib.auth.middleware.AuthenticationMiddleware") + 1,
    "django_otp.middleware.OTPMiddleware",
)
MIDDLEWARE += ["custody.api.audit.AuditMiddleware", "axes.middleware.AxesMiddleware"]
AUTHENTICATION_BACKENDS = [
    "custody.api.authentication.LockoutBackend",
    "django.contrib.auth.backends.ModelBackend",
]

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "custody.api.schema.CustodyAutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "custody.api.authentication.BearerTokenAuthentication",
        "custody.api.authentication.TwoFactorSessionAuthentication",
    ],
    # Closed by default: every view names who may call it (custody/api/permissions.py).
    "DEFAULT_PERMISSION_CLASSES": ["custody.api.defaults.DenyAll"],
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "custody.api.defaults.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "custody.api.defaults.JsonContentNegotiation",
    "DEFAULT_PARSER_CLASSES": ["custody.api.defaults.JSONBodyParser"],
    "EXCEPTION_HANDLER": "custody.api.errors.exception_handler",
    # Per user, per address, and per scope (sign-in, callbacks), counted together (custody/api/throttling.py).
    "DEFAULT_THROTTLE_CLASSES": ["custody.api.throttling.ApiRateLimits"],
    "DEFAULT_THROTTLE_RATES": {
        "user": env.str("API_THROTTLE_USER", default="1200/min"),
        "anon": env.str("API_THROTTLE_ANON", default="120/min"),
        "ip": env.str("API_THROTTLE_IP", default="6000/min"),
        "login": env.str("API_THROTTLE_LOGIN", default="10/min"),
        "callbacks": env.str("API_THROTTLE_CALLBACKS", default="1200/min"),
    },
    "COERCE_DECIMAL_TO_STRING": True,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "custody-ledger API",
    "DESCRIPTION": (
        "校外培训预收费资金监管: supervision of prepaid tuition on a double-entry ledger. Money is "
        '`{"amount": "1234.50", "currency": "CNY"}`; every error is `{"error": {"code", "message", "field", '
        '"details"}}`; every state-changing POST needs an `Idempotency-Key` header. See docs/api.md.'
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_GENERATE_CHOICE_DESCRIPTION": False,
    "ENUM_NAME_OVERRIDES": {
        "TeachingModeEnum": "custody.models.policy.TeachingMode",
        "ClosureModeEnum": "custody.models.flows.ClosureMode",
    },
}

# Tokens (custody/services/access.py): ordinary users' for 30 days, two-factor users' for 12 hours.
API_TOKEN_TTL_HOURS: int = env.int("API_TOKEN_TTL_HOURS", default=24 * 30)
API_PRIVILEGED_TOKEN_TTL_HOURS: int = env.int("API_PRIVILEGED_TOKEN_TTL_HOURS", default=12)

# Confirmation by silence (custody/services/lessons.py) on PostgreSQL: this many transactions at a time, each
# over its own share of the institutions (1: one after another).
CUSTODY_AUTO_CONFIRM_WORKERS: int = env.int("CUSTODY_AUTO_CONFIRM_WORKERS", default=2)

# django-otp: TOTP devices for regulators, bank operators and administrators (added in the admin site).
OTP_TOTP_ISSUER = "custody-ledger"

# django-axes: 5 failed sign-ins (wrong password or TOTP code) for one username, or from one address, lock
# that username or address for 30 minutes.
AXES_FAILURE_LIMIT: int = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_HOURS", default=0.5)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_SENSITIVE_PARAMETERS = ["password", "otp_token"]
AXES_CLIENT_STR_CALLABLE = "custody.api.authentication.axes_client_str"
AXES_LOCKOUT_CALLABLE = "custody.api.authentication.lockout_response"
AXES_HTTP_RESPONSE_CODE = 429

# The cache the throttles count in: shared Redis when CACHE_URL is set (several server processes), else
# per process.
_cache_url = env.str("CACHE_URL", default="")
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": _cache_url}
        if _cache_url.startswith(("redis://", "rediss://"))
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
if not DEBUG:
    # Production sits behind a TLS-terminating proxy that sets X-Forwarded-Proto; cookies travel only over
    # HTTPS and browsers are told to use nothing else for a year.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT: bool = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS: int = env.int("DJANGO_SECURE_HSTS_SECONDS", default=365 * 24 * 3600)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

# --- Celery -------------------------------------------------------------------------------------------------

# The default broker is embedded (SQLite through SQLAlchemy): development needs no Redis or RabbitMQ.
CELERY_BROKER_URL: str = env.str(
    "CELERY_BROKER_URL", default=f"sqla+sqlite:///{VAR_DIR / 'celery-broker.sqlite3'}"
)
CELERY_RESULT_BACKEND: str | None = env.str("CELERY_RESULT_BACKEND", default=None)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER: bool = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TIMEZONE = TIME_ZONE
CELERY_ENABLE_UTC = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# A task is acknowledged only after it ran, and re-queued if its worker dies: tasks must be idempotent.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# The web's long actions (exports, reconciliation, verification) are tasks of custody/web/jobs.py, which is
# not an app's tasks.py; their progress files live in WEB_JOBS_DIR.
CELERY_IMPORTS = ("custody.web.jobs",)
WEB_JOBS_DIR = Path(env.str("WEB_JOBS_DIR", default=str(VAR_DIR / "web-jobs")))

# --- Ledger and PII keys ------------------------------------------------------------------------------------

# Base64 of a raw 32-byte Ed25519 private key; signs ledger checkpoints.
LEDGER_SIGNING_KEY = secret_from_env_or_var("LEDGER_SIGNING_KEY", "ledger_signing_key", _new_ed25519_key)
LEDGER_SIGNING_KEY_ID: str = env.str("LEDGER_SIGNING_KEY_ID", default="dev-1")
# Retired signing keys, so checkpoints signed before a rotation still verify: "key-id:hex-public-key,...".
LEDGER_VERIFY_KEYS: dict[str, str] = dict(
    item.split(":", 1) for item in env.list("LEDGER_VERIFY_KEYS", default=[]) if ":" in item
)
try:
    if len(base64.b64decode(LEDGER_SIGNING_KEY, validate=True)) != 32:
        raise ValueError("not 32 bytes")
except (binascii.Error, ValueError) as exc:
    raise ImproperlyConfigured(f"LEDGER_SIGNING_KEY must be base64 of 32 raw bytes ({exc}).") from exc

# Comma-separated Fernet keys; the first encrypts, all decrypt (rotation by prepending a new key).
PII_ENCRYPTION_KEYS: list[str] = [
    key.strip()
    for key in secret_from_env_or_var("PII_ENCRYPTION_KEYS", "pii_keys", _new_fernet_key).split(",")
    if key.strip()
]
if not PII_ENCRYPTION_KEYS:
    raise ImproperlyConfigured("PII_ENCRYPTION_KEYS must hold at least one Fernet key.")
for _key in PII_ENCRYPTION_KEYS:
    try:
        Fernet(_key)
    except (binascii.Error, ValueError) as exc:
        raise ImproperlyConfigured(
            f"PII_ENCRYPTION_KEYS holds a key that is not a Fernet key ({exc})."
        ) from exc
# Key for the keyed hash (HMAC) that lets PII be looked up without decrypting it.
PII_HASH_KEY = secret_from_env_or_var("PII_HASH_KEY", "pii_hash_key", _new_hash_key)

# --- Payment channels -------------------------------------------------------------------------------------
# The whole channel configuration (shape in custody/channels/__init__.py, secrets included) comes from the
# environment as JSON. In DEBUG without it, a demo custody bank key pair is generated once into var/, so
# `make run` and the bank simulator can send signed bank callbacks.
_channels_json = env.str("CUSTODY_CHANNELS_JSON", default="").strip()
DEMO_BANK_KEY_ID = "demo-bank-1"
DEMO_BANK_SIGNING_KEY = ""
if _channels_json:
    CUSTODY_CHANNELS: dict = json.loads(_channels_json)
elif DEBUG:
    DEMO_BANK_SIGNING_KEY = secret_from_env_or_var(
        "DEMO_BANK_SIGNING_KEY", "demo_bank_signing_key", _new_ed25519_key
    )
    _demo_public = Ed25519PrivateKey.from_private_bytes(base64.b64decode(DEMO_BANK_SIGNING_KEY)).public_key()
    CUSTODY_CHANNELS = {
        "bank": {"keys": {DEMO_BANK_KEY_ID: base64.b64encode(_demo_public.public_bytes_raw()).decode()}}
    }
else:
    raise ImproperlyConfigured("CUSTODY_CHANNELS_JSON must configure the payment channels in production.")

# --- Logging ------------------------------------------------------------------------------------------------

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("DJANGO_LOG_LEVEL", default="INFO")},
    "loggers": {
        # Replaces Django's default "django" handlers so each record is printed once, by the root's console.
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.db.backends": {"level": "INFO"},
    },
}

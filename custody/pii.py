"""Personal data at rest: encrypted fields (Fernet, with key rotation) and keyed hashes for look-ups.

ID numbers, phone numbers, names and bank accounts of parents and students are stored only encrypted. To find
a parent by phone without decrypting every row, a keyed hash (HMAC-SHA256, a "blind index") of the normalised
value is stored beside it. Keys come from the environment (``PII_ENCRYPTION_KEYS``, newest first, and
``PII_HASH_KEY``); ``python manage.py rotate_pii_keys`` re-encrypts every value with the newest key.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import models


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(k.encode()) for k in keys])


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.PII_ENCRYPTION_KEYS))


def encrypt(value: str) -> str:
    return fernet().encrypt(value.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise ValueError("personal data could not be decrypted with the configured keys") from None


def rotate(token: str) -> str:
    """Re-encrypt with the newest key (MultiFernet.rotate keeps the original timestamp)."""
    return fernet().rotate(token.encode()).decode()


def normalise(value: str) -> str:
    return "".join(value.split()).upper()


def blind_index(value: str, *, purpose: str) -> str:
    """Keyed hash for equality look-ups; ``purpose`` separates, e.g., phone numbers from ID numbers."""
    key = settings.PII_HASH_KEY.encode()
    return hmac.new(key, f"{purpose}:{normalise(value)}".encode(), hashlib.sha256).hexdigest()


def mask(value: str, *, keep_start: int = 3, keep_end: int = 4) -> str:
    """``13812345678`` -> ``138****5678``: what logs, lists and error messages may show."""
    if len(value) <= keep_start + keep_end:
        return "*" * len(value)
    return value[:keep_start] + "*" * (len(value) - keep_start - keep_end) + value[-keep_end:]


class EncryptedTextField(models.TextField):
    """A text field stored encrypted. The plaintext exists only in Python objects, never in the database."""

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> str | None:
        # get_prep_value stores "" as it is (a blank optional field), so "" reads back as "".
        return value if value is None or value == "" else decrypt(value)

    def get_prep_value(self, value: Any) -> str | None:
        value = super().get_prep_value(value)
        if value is None or value == "":
            return value
        return encrypt(str(value))

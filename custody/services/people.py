"""Parents (家长) and students, whose personal data is stored only encrypted (``custody.pii``).

Values are validated and normalised before they are encrypted: an 18-character resident ID number (居民身份证
号码, GB 11643-1999) with a valid birth date and ISO 7064 MOD 11-2 check character, and an 11-digit mainland
mobile number. Look-ups go through blind indexes (keyed hashes), so nothing is decrypted to find a person.
Errors show personal data only masked (``pii.mask``).

``rotate_encrypted_fields`` re-encrypts every encrypted column of the custody app with the newest key; the
``rotate_pii_keys`` management command calls it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date

from cryptography.fernet import Fernet, InvalidToken
from django.apps import apps
from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, connection, models, transaction

from custody import pii
from custody.errors import RuleViolation
from custody.models import Guardian, Student

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK_CHARACTERS = "10X98765432"
_ID_PATTERN = re.compile(r"^\d{17}[\dX]$")
_MOBILE_PATTERN = re.compile(r"^1[3-9]\d{9}$")


def id_number_check_character(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character of the first 17 digits."""
    total = sum(int(digit) * weight for digit, weight in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK_CHARACTERS[total % 11]


def normalise_id_number(value: str) -> str:
    """The ID number in canonical form (no spaces, upper-case X), or ``RuleViolation``."""
    number = pii.normalise(value)
    masked = pii.mask(number)
    if not _ID_PATTERN.match(number):
        raise RuleViolation(
            "id_number_format",
            f"身份证号码须为18位 {masked} is not an 18-character ID number",
            field="id_number",
        )
    try:
        date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        raise RuleViolation(
            "id_number_format",
            f"身份证号码中的出生日期无效 {masked} has an invalid birth date",
            field="id_number",
        ) from None
    if id_number_check_character(number[:17]) != number[17]:
        raise RuleViolation(
            "id_number_checksum",
            f"身份证号码校验位错误 {masked} has a wrong check character",
            field="id_number",
        )
    return number


def normalise_phone(value: str) -> str:
    """An 11-digit mainland mobile number; spaces, dashes and a +86 / 0086 prefix are dropped."""
    digits = re.sub(r"[\s\-()]", "", value)
    for prefix in ("+86", "0086"):
        if digits.startswith(prefix):
            digits = digits[len(prefix) :]
    if not _MOBILE_PATTERN.match(digits):
        raise RuleViolation(
            "phone_format",
            f"手机号码须为11位 {pii.mask(digits)} is not an 11-digit mobile number",
            field="phone",
        )
    return digits


def _required_name(name: str) -> str:
    cleaned = name.strip()
    if not cleaned:
        raise RuleViolation("required", "姓名不能为空 a name is required", field="name")
    return cleaned


def register_guardian(*, name: str, phone: str, id_number: str, user: User | None = None) -> Guardian:
    """The guardian with this ID number, registered on first sight (idempotent by ID number).

    An existing guardian keeps the name and phone on record; a user account is linked if none was.
    """
    number = normalise_id_number(id_number)
    phone_number = normalise_phone(phone)
    cleaned_name = _required_name(name)
    index = pii.blind_index(number, purpose="id_number")
    with transaction.atomic():
        guardian = Guardian.objects.select_for_update().filter(id_number_index=index).first()
        if guardian is None:
            try:
                with transaction.atomic():
                    return Guardian.objects.create(
                        user=user,
                        name=cleaned_name,
                        phone=phone_number,
                        phone_index=pii.blind_index(phone_number, purpose="phone"),
                        id_number=number,
                        id_number_index=index,
                    )
            except IntegrityError:
                # Registered concurrently: take the row the other transaction wrote.
                guardian = Guardian.objects.select_for_update().get(id_number_index=index)
        if user is not None and guardian.user_id != user.pk:
            if guardian.user_id is not None:
                raise RuleViolation(
                    "guardian_user_conflict",
                    f"身份证号{pii.mask(number)}已绑定其他用户 ID number {pii.mask(number)} belongs to "
                    "another user account",
                    field="user",
                )
            guardian.user = user
            guardian.save(update_fields=["user"])
        return guardian


def add_student(*, guardian: Guardian, name: str, id_number: str, grade: str = "") -> Student:
    """A student of ``guardian``; adding the same ID number to the same guardian again returns the student."""
    number = normalise_id_number(id_number)
    cleaned_name = _required_name(name)
    index = pii.blind_index(number, purpose="id_number")
    with transaction.atomic():
        student = Student.objects.filter(id_number_index=index).first()
        if student is None:
            try:
                with transaction.atomic():
                    return Student.objects.create(
                        guardian=guardian,
                        name=cleaned_name,
                        id_number=number,
                        id_number_index=index,
                        grade=grade.strip(),
                    )
            except IntegrityError:
                student = Student.objects.get(id_number_index=index)
        if student.guardian_id != guardian.pk:
            raise RuleViolation(
                "student_other_guardian",
                f"学生{pii.mask(number)}已登记在其他家长名下 student {pii.mask(number)} is registered "
                "under another guardian",
                field="id_number",
            )
        return student


def guardians_with_phone(phone: str) -> models.QuerySet[Guardian]:
    """Guardians found through the phone number's blind index (nothing is decrypted)."""
    return Guardian.objects.filter(phone_index=pii.blind_index(normalise_phone(phone), purpose="phone"))


# --- key rotation ---------------------------------------------------------------------------------------


@dataclass
class RotationReport:
    """Per ``app_label.Model``: values re-encrypted, values already under the newest key, and the pks of
    rows holding a value no configured key can decrypt."""

    rotated: dict[str, int] = field(default_factory=dict)
    current: dict[str, int] = field(default_factory=dict)
    undecryptable: dict[str, list[int]] = field(default_factory=dict)

    @property
    def total_rotated(self) -> int:
        return sum(self.rotated.values())


def encrypted_columns() -> Iterator[tuple[type[models.Model], list[str]]]:
    """Every custody model with encrypted fields, and those fields' column names."""
    for model in apps.get_app_config("custody").get_models():
        columns = [
            str(f.column) for f in model._meta.concrete_fields if isinstance(f, pii.EncryptedTextField)
        ]
        if columns:
            yield model, columns


def rotate_encrypted_fields(
    *, batch_size: int = 500, on_progress: Callable[[str, int, int], None] | None = None
) -> RotationReport:
    """Re-encrypt every encrypted value with the newest key (the first of ``PII_ENCRYPTION_KEYS``).

    Idempotent and resumable: a value already readable with the newest key is left as it is, so a second run
    writes nothing. Each batch is one short transaction of raw column reads and writes (the model fields
    would decrypt on read and encrypt afresh on write). ``on_progress(label, done, total)`` after each batch.
    """
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    newest = Fernet(settings.PII_ENCRYPTION_KEYS[0].encode())
    report = RotationReport()
    quote = connection.ops.quote_name
    for model, columns in encrypted_columns():
        label = model._meta.label
        table, pk_column = quote(model._meta.db_table), quote(str(model._meta.pk.column))
        select = (
            f"SELECT {pk_column}, {', '.join(quote(c) for c in columns)} FROM {table} "
            f"WHERE {pk_column} > %s ORDER BY {pk_column} LIMIT %s"
        )
        total = model._default_manager.count()
        report.rotated[label] = report.current[label] = 0
        done, last_pk = 0, 0
        while True:
            with transaction.atomic():
                with connection.cursor() as cursor:
                    cursor.execute(select, [last_pk, batch_size])
                    rows = cursor.fetchall()
                updates: dict[str, list[tuple[str, int]]] = {c: [] for c in columns}
                for pk, *tokens in rows:
                    for column, token in zip(columns, tokens, strict=True):
                        if not token:
                            continue
                        try:
                            newest.decrypt(token.encode())
                            report.current[label] += 1
                            continue
                        except InvalidToken:
                            pass
                        try:
                            updates[column].append((pii.rotate(token), pk))
                        except InvalidToken:
                            report.undecryptable.setdefault(label, []).append(pk)
                with connection.cursor() as cursor:
                    for column, params in updates.items():
                        if params:
                            cursor.executemany(
                                f"UPDATE {table} SET {quote(column)} = %s WHERE {pk_column} = %s", params
                            )
                            report.rotated[label] += len(params)
            if not rows:
                break
            done += len(rows)
            last_pk = rows[-1][0]
            if on_progress is not None:
                on_progress(label, done, total)
    return report

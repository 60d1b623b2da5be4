"""``custody.pii`` and ``rotate_pii_keys``: personal data is ciphertext in the database, found through blind
indexes, masked in ``str()`` and messages, and re-encrypted with the newest key on rotation."""

from __future__ import annotations

from io import StringIO

import pytest
from cryptography.fernet import Fernet
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings

from custody import pii
from custody.models import Contract, Guardian, Payment, PayoutInstruction, Student
from custody.services.people import encrypted_columns, register_guardian, rotate_encrypted_fields
from tests.custody.conftest import ContractFactory, valid_id_number

pytestmark = pytest.mark.django_db

PHONE = "13812345678"


def raw_columns(model: type, pk: int, *columns: str) -> tuple[str, ...]:
    table = connection.ops.quote_name(model._meta.db_table)  # type: ignore[attr-defined]
    names = ", ".join(connection.ops.quote_name(c) for c in columns)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {names} FROM {table} WHERE id = %s", [pk])
        return tuple(cursor.fetchone())


@pytest.fixture
def id_number() -> str:
    return valid_id_number("19850315")


@pytest.fixture
def parent(id_number: str) -> Guardian:
    return register_guardian(name="张伟", phone=PHONE, id_number=id_number)


def test_personal_data_is_ciphertext_at_rest(parent: Guardian, id_number: str) -> None:
    name, phone, number, phone_index, id_index = raw_columns(
        Guardian, parent.pk, "name", "phone", "id_number", "phone_index", "id_number_index"
    )
    for stored, plain in ((name, "张伟"), (phone, PHONE), (number, id_number)):
        assert plain not in stored
        assert pii.decrypt(stored) == plain
    assert PHONE not in phone_index and id_number not in id_index
    reloaded = Guardian.objects.get(pk=parent.pk)
    assert (reloaded.name, reloaded.phone, reloaded.id_number) == ("张伟", PHONE, id_number)


def test_the_same_value_encrypts_differently_each_time() -> None:
    assert pii.encrypt(PHONE) != pii.encrypt(PHONE)


def test_blind_indexes_find_people_without_decrypting(parent: Guardian, id_number: str) -> None:
    by_phone = Guardian.objects.filter(phone_index=pii.blind_index(PHONE, purpose="phone"))
    by_id = Guardian.objects.get(id_number_index=pii.blind_index(id_number.lower(), purpose="id_number"))
    assert list(by_phone) == [parent] and by_id == parent
    # The purpose separates indexes: the same digits as a phone and as an ID are different hashes.
    assert pii.blind_index(PHONE, purpose="phone") != pii.blind_index(PHONE, purpose="id_number")
    with override_settings(PII_HASH_KEY="another-key"):
        assert pii.blind_index(PHONE, purpose="phone") != parent.phone_index


def test_str_and_mask_show_only_masked_values(parent: Guardian, student: Student) -> None:
    assert str(parent) == f"guardian {parent.pk} (138****5678)"
    assert PHONE not in str(parent)
    assert str(student) == f"student {student.pk}"
    assert pii.mask("13812345678") == "138****5678"
    assert pii.mask("1234567") == "*******"


def test_a_blank_optional_field_stays_blank(make_contract: ContractFactory) -> None:
    contract = make_contract()
    assert raw_columns(Contract, contract.pk, "payer_account") == ("",)
    assert Contract.objects.get(pk=contract.pk).payer_account == ""
    Contract.objects.filter(pk=contract.pk).update(payer_account="6222020200112233445")
    (stored,) = raw_columns(Contract, contract.pk, "payer_account")
    assert "6222020200112233445" not in stored
    assert Contract.objects.get(pk=contract.pk).payer_account == "6222020200112233445"


def test_a_value_under_an_unknown_key_is_an_error_not_garbage(parent: Guardian) -> None:
    unknown = [Fernet.generate_key().decode()]
    with (
        override_settings(PII_ENCRYPTION_KEYS=unknown),
        pytest.raises(ValueError, match="could not be decrypted"),
    ):
        Guardian.objects.get(pk=parent.pk)


def test_rotation_covers_every_encrypted_column_of_the_custody_app() -> None:
    found = {model: set(columns) for model, columns in encrypted_columns()}
    assert found == {
        Guardian: {"name", "phone", "id_number"},
        Student: {"name", "id_number"},
        Contract: {"payer_account"},
        Payment: {"payer_account"},
        PayoutInstruction: {"destination_account"},
    }


def test_rotate_pii_keys_re_encrypts_with_the_newest_key_and_is_idempotent(
    parent: Guardian, student: Student, make_contract: ContractFactory, id_number: str
) -> None:
    contract = make_contract()
    Contract.objects.filter(pk=contract.pk).update(payer_account="6222020200112233445")
    old_keys = list(settings.PII_ENCRYPTION_KEYS)
    new_key = Fernet.generate_key().decode()
    before = {
        "guardian": raw_columns(Guardian, parent.pk, "name", "phone", "id_number"),
        "student": raw_columns(Student, student.pk, "name", "id_number"),
        "contract": raw_columns(Contract, contract.pk, "payer_account"),
    }
    with override_settings(PII_ENCRYPTION_KEYS=[new_key, *old_keys]):
        out, err = StringIO(), StringIO()
        call_command("rotate_pii_keys", batch_size=1, stdout=out, stderr=err)
        # Three columns per guardian (``parent`` and the student's), two per student, one payer account.
        expected = 3 * Guardian.objects.count() + 2 * Student.objects.count() + 1
        assert f"total re-encrypted: {expected}" in out.getvalue()
        assert (
            f"[custody.Guardian] {Guardian.objects.count()}/{Guardian.objects.count()} rows" in err.getvalue()
        )

        again = StringIO()
        call_command("rotate_pii_keys", stdout=again, stderr=StringIO())
        assert "total re-encrypted: 0" in again.getvalue()
        assert (
            f"custody.Guardian: 0 re-encrypted 已重新加密, {3 * Guardian.objects.count()}" in again.getvalue()
        )

    after = {
        "guardian": raw_columns(Guardian, parent.pk, "name", "phone", "id_number"),
        "student": raw_columns(Student, student.pk, "name", "id_number"),
        "contract": raw_columns(Contract, contract.pk, "payer_account"),
    }
    newest_only = Fernet(new_key.encode())
    for key in before:
        for old, new in zip(before[key], after[key], strict=True):
            assert old != new
            newest_only.decrypt(new.encode())  # readable with the new key alone
    # The old keys can be dropped: everything still reads.
    with override_settings(PII_ENCRYPTION_KEYS=[new_key]):
        reloaded = Guardian.objects.get(pk=parent.pk)
        assert (reloaded.name, reloaded.phone, reloaded.id_number) == ("张伟", PHONE, id_number)
        assert Student.objects.get(pk=student.pk).name == "张小明"
        assert Contract.objects.get(pk=contract.pk).payer_account == "6222020200112233445"


def test_rotation_reports_values_no_key_can_read(parent: Guardian) -> None:
    stranger = Fernet(Fernet.generate_key())  # written with raw SQL: the field would use our own key
    table = connection.ops.quote_name(Guardian._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET name = %s WHERE id = %s", [stranger.encrypt(b"x").decode(), parent.pk]
        )
    report = rotate_encrypted_fields(batch_size=10)
    assert report.undecryptable == {"custody.Guardian": [parent.pk]}
    with pytest.raises(CommandError, match=f"custody.Guardian pk \\[{parent.pk}\\]"):
        call_command("rotate_pii_keys", stdout=StringIO(), stderr=StringIO())


def test_rotation_refuses_a_non_positive_batch_size() -> None:
    with pytest.raises(CommandError):
        call_command("rotate_pii_keys", batch_size=0, stdout=StringIO(), stderr=StringIO())

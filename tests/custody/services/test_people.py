"""``custody.services.people``: ID-number and phone validation, idempotent registration, students under
one guardian, and errors that never show personal data unmasked."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from custody.errors import RuleViolation
from custody.models import Guardian, Student
from custody.services.people import (
    add_student,
    guardians_with_phone,
    id_number_check_character,
    normalise_id_number,
    normalise_phone,
    register_guardian,
)
from tests.custody.conftest import valid_id_number

pytestmark = pytest.mark.django_db


def test_the_check_character_is_iso_7064_mod_11_2() -> None:
    # The example of GB 11643-1999.
    assert id_number_check_character("11010519491231002") == "X"
    assert normalise_id_number("11010519491231002x") == "11010519491231002X"
    assert normalise_id_number(" 110105 19491231 002X ") == "11010519491231002X"
    assert id_number_check_character("44052418800101001") == "4"


@pytest.mark.parametrize(
    ("number", "rule"),
    [
        ("110105194912310021", "id_number_checksum"),  # should end in X
        ("11010519491231002", "id_number_format"),  # 17 characters
        ("1101051949123100211", "id_number_format"),  # 19 characters
        ("11010519491231002Y", "id_number_format"),
        ("X10105194912310021", "id_number_format"),
        ("110105194902300025", "id_number_format"),  # 30 February
        ("110105194913010021", "id_number_format"),  # month 13
    ],
)
def test_bad_id_numbers_are_refused_and_shown_masked(number: str, rule: str) -> None:
    with pytest.raises(RuleViolation) as refused:
        normalise_id_number(number)
    assert (refused.value.rule, refused.value.field) == (rule, "id_number")
    assert number not in refused.value.message
    assert number[6:14] not in refused.value.message  # not even the birth date


def test_every_wrong_check_character_is_refused() -> None:
    first17 = "31010420120601123"
    right = id_number_check_character(first17)
    assert normalise_id_number(first17 + right) == first17 + right
    for wrong in "0123456789X":
        if wrong != right:
            with pytest.raises(RuleViolation):
                normalise_id_number(first17 + wrong)


@pytest.mark.parametrize(
    ("phone", "normal"),
    [("13812345678", "13812345678"), ("138 1234 5678", "13812345678"), ("+86 138-1234-5678", "13812345678")],
)
def test_mobile_numbers_are_normalised(phone: str, normal: str) -> None:
    assert normalise_phone(phone) == normal


@pytest.mark.parametrize("phone", ["1381234567", "138123456789", "23812345678", "12812345678", "1381234567a"])
def test_bad_mobile_numbers_are_refused_masked(phone: str) -> None:
    with pytest.raises(RuleViolation) as refused:
        normalise_phone(phone)
    assert (refused.value.rule, refused.value.field) == ("phone_format", "phone")
    assert phone not in refused.value.message


def test_register_guardian_stores_normalised_values_and_is_idempotent_by_id_number() -> None:
    number = valid_id_number("19800101")
    guardian = register_guardian(name=" 王芳 ", phone="+86 139 0000 1111", id_number=number.lower())
    stored = Guardian.objects.get(pk=guardian.pk)
    assert (stored.name, stored.phone, stored.id_number) == ("王芳", "13900001111", number)
    again = register_guardian(name="王芳", phone="13900002222", id_number=number)
    assert again.pk == guardian.pk
    assert Guardian.objects.get(pk=guardian.pk).phone == "13900001111"
    assert Guardian.objects.count() == 1


def test_guardians_are_found_by_phone_through_the_blind_index() -> None:
    guardian = register_guardian(name="王芳", phone="13900001111", id_number=valid_id_number("19800101"))
    assert list(guardians_with_phone("139 0000 1111")) == [guardian]
    assert not guardians_with_phone("13900001112").exists()


def test_register_guardian_links_a_user_once() -> None:
    number = valid_id_number("19800101")
    first, second = User.objects.create_user("wangfang"), User.objects.create_user("someone")
    guardian = register_guardian(name="王芳", phone="13900001111", id_number=number)
    assert guardian.user is None
    assert register_guardian(name="王芳", phone="13900001111", id_number=number, user=first).user == first
    assert Guardian.objects.get(pk=guardian.pk).user == first
    with pytest.raises(RuleViolation) as refused:
        register_guardian(name="王芳", phone="13900001111", id_number=number, user=second)
    assert refused.value.rule == "guardian_user_conflict"
    assert number not in refused.value.message


def test_a_guardian_needs_a_name() -> None:
    with pytest.raises(RuleViolation) as refused:
        register_guardian(name=" ", phone="13900001111", id_number=valid_id_number())
    assert (refused.value.rule, refused.value.field) == ("required", "name")


def test_add_student_is_idempotent_for_the_same_guardian_and_refused_for_another(guardian: Guardian) -> None:
    number = valid_id_number("20130909")
    student = add_student(guardian=guardian, name="小明", id_number=number, grade=" 四年级 ")
    assert (Student.objects.get(pk=student.pk).name, student.grade) == ("小明", "四年级")
    assert add_student(guardian=guardian, name="小明", id_number=number).pk == student.pk
    other = register_guardian(name="李四", phone="13700000000", id_number=valid_id_number("19790101"))
    with pytest.raises(RuleViolation) as refused:
        add_student(guardian=other, name="小明", id_number=number)
    assert refused.value.rule == "student_other_guardian"
    assert number not in refused.value.message
    assert Student.objects.count() == 1


def test_a_guardian_may_have_several_students(guardian: Guardian) -> None:
    add_student(guardian=guardian, name="大宝", id_number=valid_id_number("20120101"))
    add_student(guardian=guardian, name="二宝", id_number=valid_id_number("20150101"))
    assert guardian.students.count() == 2

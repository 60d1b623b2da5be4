"""Shared fixtures for the custody domain's tests: a jurisdiction with the default policy, a subject and a
non-subject institution (both whitelisted, active, in custody mode), a subject course starting in two weeks
priced within the guidance cap, a guardian with a student, and factories that go through the services.

Every object is made by the real services (``register_institution``, ``publish_course``, ``sign_contract``…),
so the fixtures break when a rule changes, not silently later.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from itertools import count
from typing import Any, Protocol

import pytest

from custody.models import (
    ClassSizeBand,
    Contract,
    Course,
    Guardian,
    Institution,
    Jurisdiction,
    Student,
    TeachingMode,
    TrainingCategory,
)
from custody.services.calendar import local_today
from custody.services.contracts import sign_contract
from custody.services.courses import publish_course
from custody.services.institutions import register_institution
from custody.services.people import add_student, id_number_check_character, register_guardian
from custody.services.policy import ensure_jurisdiction
from ledger.money import cny, from_minor

_serial = count(1)


def valid_id_number(birth: str = "20150101", *, region: str = "310104", sequence: int | None = None) -> str:
    """A well-formed 18-character ID number (with its MOD 11-2 check character), unique per call."""
    seq = next(_serial) % 1000 if sequence is None else sequence
    first17 = f"{region}{birth}{seq:03d}"
    return first17 + id_number_check_character(first17)


def unique_phone() -> str:
    return f"139{next(_serial):08d}"


@pytest.fixture
def today() -> date:
    """Today in Shanghai, by business time."""
    return local_today()


@pytest.fixture
def jurisdiction(db: None) -> Jurisdiction:
    return ensure_jurisdiction(code="310104", name="徐汇区")


class InstitutionFactory(Protocol):
    def __call__(self, **overrides: Any) -> Institution: ...


@pytest.fixture
def make_institution(jurisdiction: Jurisdiction) -> InstitutionFactory:
    def make(**overrides: Any) -> Institution:
        n = next(_serial)
        fields: dict[str, Any] = {
            "jurisdiction": jurisdiction,
            "name": f"培训机构{n}",
            "licence_number": f"教民{n:012d}",
            "category": TrainingCategory.SUBJECT,
            "custody_bank_name": "中国工商银行徐汇支行",
            "custody_account_number": f"1001{n:012d}",
            "settlement_account_number": f"2002{n:012d}",
        }
        fields.update(overrides)
        return register_institution(**fields)

    return make


@pytest.fixture
def institution(make_institution: InstitutionFactory) -> Institution:
    """Subject training, bank custody, whitelisted, active."""
    return make_institution(name="启明学科培训中心")


@pytest.fixture
def non_subject_institution(make_institution: InstitutionFactory) -> Institution:
    return make_institution(name="星光艺术培训中心", category=TrainingCategory.NON_SUBJECT)


class CourseFactory(Protocol):
    def __call__(self, **overrides: Any) -> Course: ...


@pytest.fixture
def make_course(institution: Institution, today: date) -> CourseFactory:
    """``publish_course`` with defaults: a subject, small-class, offline course at 80.00 yuan per hour
    (the default guidance price; the cap is 88.00) starting in 14 days."""

    def make(**overrides: Any) -> Course:
        fields: dict[str, Any] = {
            "institution": institution,
            "name": f"初二数学{next(_serial)}",
            "subject": "数学",
            "category": TrainingCategory.SUBJECT,
            "class_size_band": ClassSizeBand.SMALL,
            "mode": TeachingMode.OFFLINE,
            "price_per_hour": cny("80.00"),
            "starts_on": today + timedelta(days=14),
        }
        fields.update(overrides)
        return publish_course(**fields)

    return make


@pytest.fixture
def course(make_course: CourseFactory) -> Course:
    return make_course(name="初二数学提高班")


@pytest.fixture
def non_subject_course(non_subject_institution: Institution, make_course: CourseFactory) -> Course:
    """A non-subject course at 300.00 yuan per hour: no guidance cap, 5,000 yuan per charge."""
    return make_course(
        institution=non_subject_institution,
        name="少儿美术",
        subject="美术",
        category=TrainingCategory.NON_SUBJECT,
        price_per_hour=cny("300.00"),
    )


@pytest.fixture
def guardian(db: None) -> Guardian:
    return register_guardian(name="张伟", phone=unique_phone(), id_number=valid_id_number("19850315"))


@pytest.fixture
def student(guardian: Guardian) -> Student:
    return add_student(guardian=guardian, name="张小明", id_number=valid_id_number("20120601"), grade="初二")


@pytest.fixture
def make_student(db: None) -> Callable[..., Student]:
    """A new guardian with a new student: ``make_student(name="…", grade="…")``."""

    def make(**overrides: Any) -> Student:
        parent = register_guardian(name="李娜", phone=unique_phone(), id_number=valid_id_number("19860101"))
        fields: dict[str, Any] = {"guardian": parent, "name": "李小华", "id_number": valid_id_number()}
        fields.update(overrides)
        return add_student(**fields)

    return make


class ContractFactory(Protocol):
    def __call__(self, **overrides: Any) -> Contract: ...


@pytest.fixture
def make_contract(course: Course, student: Student) -> ContractFactory:
    """``sign_contract`` with defaults: 20 paid hours of ``course`` at its list price for ``student``,
    serving from the course's start for two months. Any argument of ``sign_contract`` can be overridden;
    ``amount`` defaults to list price × paid hours of the (possibly overridden) course."""

    def make(**overrides: Any) -> Contract:
        chosen_course: Course = overrides.pop("course", course)
        paid_hours: int = overrides.pop("paid_hours", 20)
        starts_on: date = overrides.pop("service_starts_on", chosen_course.starts_on)
        fields: dict[str, Any] = {
            "course": chosen_course,
            "student": student,
            "paid_hours": paid_hours,
            "amount": from_minor(chosen_course.price_per_hour_fen * paid_hours, "CNY"),
            "service_starts_on": starts_on,
            "service_ends_on": starts_on + timedelta(days=59),
        }
        fields.update(overrides)
        return sign_contract(**fields)

    return make

"""``custody.services.courses``: the guidance-price cap for subject courses (exact, in fen), none for
non-subject courses, and only active, whitelisted institutions may publish."""

from __future__ import annotations

import pytest

from custody import rules
from custody.errors import RuleViolation
from custody.models import Course, Institution, Jurisdiction
from custody.services.institutions import freeze_institution
from custody.services.policy import publish_policy
from ledger.money import cny
from tests.custody.conftest import CourseFactory

pytestmark = pytest.mark.django_db


def refused(make_course: CourseFactory, **overrides: object) -> RuleViolation:
    with pytest.raises(RuleViolation) as caught:
        make_course(**overrides)
    return caught.value


def test_a_published_course_keeps_its_price_in_fen(course: Course, today) -> None:
    assert course.published
    assert course.price_per_hour_fen == 8000
    assert course.subject == "数学"
    assert (course.starts_on - today).days == 14


def test_a_subject_course_may_cost_the_guidance_price_plus_ten_percent_and_not_one_fen_more(
    make_course: CourseFactory,
) -> None:
    assert make_course(price_per_hour=cny("88.00")).price_per_hour_fen == 8800
    error = refused(make_course, price_per_hour=cny("88.01"))
    assert error.rule == rules.GUIDANCE_PRICE
    assert (error.details["limit"], error.details["requested"]) == (8800, 8801)
    assert (error.details["guidance"], error.details["markup_percent"]) == (8000, 10)
    assert error.field == "price_per_hour"


@pytest.mark.parametrize(
    ("band", "mode", "cap"),
    [
        ("medium", "offline", 6600),
        ("large", "offline", 4400),
        ("small", "online", 2200),
        ("large", "online", 2200),
    ],
)
def test_each_band_and_mode_has_its_own_cap(
    make_course: CourseFactory, band: str, mode: str, cap: int
) -> None:
    at_cap = make_course(class_size_band=band, mode=mode, price_per_hour=cny(f"{cap // 100}.{cap % 100:02d}"))
    assert at_cap.price_per_hour_fen == cap
    one_more = cap + 1
    error = refused(
        make_course,
        class_size_band=band,
        mode=mode,
        price_per_hour=cny(f"{one_more // 100}.{one_more % 100:02d}"),
    )
    assert (error.rule, error.details["limit"], error.details["requested"]) == (
        rules.GUIDANCE_PRICE,
        cap,
        one_more,
    )


def test_the_cap_is_exact_when_the_markup_does_not_divide_evenly(
    make_course: CourseFactory, jurisdiction: Jurisdiction
) -> None:
    publish_policy(
        jurisdiction=jurisdiction,
        changes={},
        changed_by=None,
        note="",
        guidance_prices={("medium", "offline"): 6001},
    )
    # 6001 × 110 / 100 = 6601.1: 66.01 yuan is allowed, 66.02 is not.
    assert make_course(class_size_band="medium", price_per_hour=cny("66.01")).price_per_hour_fen == 6601
    error = refused(make_course, class_size_band="medium", price_per_hour=cny("66.02"))
    assert (error.details["limit"], error.details["requested"]) == (6601, 6602)


def test_the_markup_comes_from_the_policy_in_force(
    make_course: CourseFactory, jurisdiction: Jurisdiction
) -> None:
    publish_policy(
        jurisdiction=jurisdiction, changes={"guidance_markup_percent": 5}, changed_by=None, note=""
    )
    assert make_course(price_per_hour=cny("84.00")).price_per_hour_fen == 8400
    error = refused(make_course, price_per_hour=cny("84.01"))
    assert (error.details["limit"], error.details["markup_percent"], error.details["policy_version"]) == (
        8400,
        5,
        2,
    )


def test_non_subject_courses_have_no_guidance_cap(
    make_course: CourseFactory, non_subject_institution
) -> None:
    course = make_course(
        institution=non_subject_institution,
        subject="钢琴",
        category="non_subject",
        price_per_hour=cny("1000.00"),
    )
    assert course.price_per_hour_fen == 100_000


def test_the_course_category_must_match_the_institution_licence(
    make_course: CourseFactory, non_subject_institution: Institution
) -> None:
    assert refused(make_course, category="non_subject").rule == "course_category"
    assert refused(make_course, institution=non_subject_institution).rule == "course_category"


def test_only_an_active_whitelisted_institution_may_publish(
    make_course: CourseFactory, institution: Institution
) -> None:
    freeze_institution(institution=institution, reason="冻结 frozen")
    assert refused(make_course).rule == rules.INSTITUTION_NOT_ACTIVE
    Institution.objects.filter(pk=institution.pk).update(state="active", whitelisted=False)
    assert refused(make_course).rule == rules.INSTITUTION_NOT_WHITELISTED
    assert not Course.objects.exists()


@pytest.mark.parametrize(
    ("overrides", "rule"),
    [
        ({"price_per_hour": cny("0.00")}, "positive_price"),
        ({"price_per_hour": cny("-5.00")}, "positive_price"),
        ({"class_size_band": "huge"}, "class_size_band"),
        ({"mode": "hybrid"}, "teaching_mode"),
        ({"category": "other"}, "course_category"),
        ({"name": ""}, "required"),
        ({"subject": " "}, "required"),
    ],
)
def test_bad_course_input_is_refused(
    make_course: CourseFactory, overrides: dict[str, object], rule: str
) -> None:
    assert refused(make_course, **overrides).rule == rule

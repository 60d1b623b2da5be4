"""An institution's manager records one class's lesson for every student in one form (bad input is refused
beside the field, and nothing is half-saved), and publishes a course only within the price cap shown."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from custody.models import Course, Lesson, LessonState
from tests.web.conftest import DESKTOP, PHONE, District

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_institution_records_a_class(district: District, browser_for: Any) -> None:
    b = browser_for("institution", viewport=DESKTOP)
    b.demo_login("institution")
    assert b.page.url.endswith("/institution/")
    b.check("home")

    b.visit(f"/institution/lessons/?course={district.course.pk}", "lessons")
    boxes = b.page.locator("input[name=contracts]")
    expect(boxes).to_have_count(len(district.class_contracts))
    for box in boxes.all():
        expect(box).to_be_checked()
    before = Lesson.objects.count()

    held = (timezone.localtime() - timedelta(days=1)).replace(hour=10, minute=0)
    b.page.get_by_label("上课时间").fill(held.strftime("%Y-%m-%dT%H:%M"))
    b.page.get_by_label("课时数").fill("0")
    b.page.get_by_role("button", name="登记本节课").click()
    expect(b.page.locator(".has-error .errorlist")).to_be_visible()
    assert Lesson.objects.count() == before

    # More hours than one contract has left: the service refuses the whole class, nothing is recorded.
    b.page.get_by_label("课时数").fill("5")
    b.page.get_by_role("button", name="登记本节课").click()
    expect(b.page.locator(".errorlist").first).to_be_visible()
    assert Lesson.objects.count() == before

    b.page.get_by_label("课时数").fill("2")
    b.page.get_by_role("button", name="登记本节课").click()
    expect(b.page.locator(".msg.success")).to_contain_text("已登记 3 名学生的课时")
    recorded = Lesson.objects.filter(recorded_by=district.clerk_user, hours=2)
    assert recorded.count() == len(district.class_contracts)
    assert {lesson.contract_id for lesson in recorded} == {c.pk for c in district.class_contracts}
    assert all(lesson.state == LessonState.PENDING for lesson in recorded)
    b.check("lessons-recorded")

    # A course above the guidance price: the cap is beside the field, the refusal too, nothing saved.
    b.visit("/institution/courses/", "courses")
    expect(b.page.locator("#price-cap")).to_contain_text("¥88.00")
    b.page.get_by_label("课程名称").fill("初三物理冲刺")
    b.page.get_by_label("科目", exact=True).fill("物理")
    b.page.get_by_label("课时单价（元）").fill("100")
    b.page.get_by_role("button", name="发布").click()
    expect(b.page.locator(".has-error")).to_contain_text("¥88.00")
    assert not Course.objects.filter(name="初三物理冲刺").exists()
    b.check("course-refused")
    b.page.get_by_label("课时单价（元）").fill("88")
    b.page.get_by_role("button", name="发布").click()
    expect(b.page.locator(".msg.success")).to_contain_text("初三物理冲刺")
    assert Course.objects.get(name="初三物理冲刺").price_per_hour_fen == 8800

    for path, label in (
        ("/institution/enrol/", "enrol"),
        ("/institution/refunds/", "refunds"),
        ("/institution/payouts/", "payouts"),
    ):
        b.visit(path, label)

    phone = browser_for("institution", viewport=PHONE)
    phone.demo_login("institution")
    phone.check("home")
    phone.visit(f"/institution/lessons/?course={district.course.pk}", "lessons")

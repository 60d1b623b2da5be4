"""Pieces of the web layer that need no browser: demo mode is off without DEBUG, domain errors land beside the
field they name, money and bilingual labels render as the pages show them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import translation

from custody.errors import RuleViolation
from custody.web.forms import CourseForm, EnrolForm, apply_error
from custody.web.templatetags import format_yuan, label
from reconciliation.errors import ReconciliationError

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(("debug", "demo_mode"), [(False, True), (True, False), (False, False)])
def test_one_click_demo_logins_exist_only_with_debug_and_demo_mode(
    settings: Any, debug: bool, demo_mode: bool
) -> None:
    settings.DEBUG = debug
    settings.DEMO_MODE = demo_mode
    client = Client()
    assert client.post("/demo/login/", {"role": "regulator"}).status_code == 404
    page = client.get("/").content.decode()
    assert 'action="/demo/login/"' not in page


def test_demo_login_without_demo_users_says_how_to_seed(settings: Any) -> None:
    settings.DEBUG = True
    settings.DEMO_MODE = True
    client = Client()
    assert 'action="/demo/login/"' in client.get("/").content.decode()
    response = client.post("/demo/login/", {"role": "parent"}, follow=True)
    assert "make seed" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_a_rule_violation_lands_beside_the_field_it_names() -> None:
    form = CourseForm(data={})
    form.is_valid()
    apply_error(
        form, RuleViolation("guidance_price", "课时单价超过上限 above the cap", field="price_per_hour")
    )
    assert "课时单价超过上限" in form.errors["price_per_hour"]  # the page's language (zh-hans) only


def test_a_service_field_is_renamed_and_an_unknown_field_goes_above_the_form() -> None:
    form = EnrolForm(data={}, courses=[(1, "数学")])
    form.is_valid()
    apply_error(
        form,
        RuleViolation("id_number_format", "身份证号码须为18位", field="id_number"),
        field_map={"id_number": "student_id_number"},
    )
    apply_error(form, ReconciliationError("note_required", "须填写备注", field="nowhere"))
    assert "身份证号码须为18位" in form.errors["student_id_number"]
    assert "须填写备注" in form.non_field_errors()


def test_money_and_labels_render_as_the_pages_show_them() -> None:
    assert format_yuan(123450) == "¥1,234.50"
    assert format_yuan(-1) == "-¥0.01"
    assert format_yuan(0) == "¥0.00"
    assert format_yuan(None) == "—"
    with translation.override("zh-hans"):
        assert label("待确认 awaiting confirmation") == "待确认"
        assert label("小班 <10") == "小班 <10"
    with translation.override("en"):
        assert label("待确认 awaiting confirmation") == "awaiting confirmation"
        assert label("异常停办 abnormal (immediate freeze)") == "abnormal (immediate freeze)"


@pytest.mark.parametrize(
    ("language", "shown", "hidden"),
    [
        ("zh-hans", "一次收费不能超过60课时（含赠课），本次61课时", "one charge may cover"),
        ("en", "one charge may cover at most 60 hours including gift hours, not 61", "一次收费"),
    ],
)
def test_a_refusal_beside_the_field_is_in_the_pages_language_only(
    language: str, shown: str, hidden: str
) -> None:
    """The services' messages are bilingual; the page shows the half in its own language, as labels are."""
    from django.contrib.auth.models import User

    from custody.models import ClassSizeBand, TeachingMode, TrainingCategory
    from custody.services.access import grant_institution_staff
    from custody.services.calendar import local_today
    from custody.services.courses import publish_course
    from custody.services.institutions import register_institution
    from custody.services.policy import ensure_jurisdiction
    from ledger.money import cny
    from tests.custody.conftest import unique_phone, valid_id_number

    institution = register_institution(
        jurisdiction=ensure_jurisdiction(code="310104", name="徐汇区"),
        name="培训机构",
        licence_number="教民000000000001",
        category=TrainingCategory.SUBJECT,
        custody_bank_name="中国工商银行徐汇支行",
        custody_account_number="1001000000000001",
        settlement_account_number="2002000000000001",
    )
    course = publish_course(
        institution=institution,
        name="初二数学",
        subject="数学",
        category=TrainingCategory.SUBJECT,
        class_size_band=ClassSizeBand.SMALL,
        mode=TeachingMode.OFFLINE,
        price_per_hour=cny("80.00"),
        starts_on=local_today() + timedelta(days=14),
    )
    clerk = User.objects.create_user(username="clerk", password="x")
    grant_institution_staff(user=clerk, institution=course.institution, role="manager")
    client = Client()
    client.force_login(clerk)
    client.cookies["django_language"] = language
    starts = course.starts_on
    response = client.post(
        "/institution/enrol/",
        {
            "guardian_name": "张红",
            "guardian_phone": unique_phone(),
            "guardian_id_number": valid_id_number("19840829"),
            "student_name": "张一诺",
            "student_id_number": valid_id_number(),
            "course": course.pk,
            "paid_hours": 61,
            "gift_hours": 0,
            "amount": "61.00",
            "service_starts_on": starts.isoformat(),
            "service_ends_on": (starts + timedelta(days=30)).isoformat(),
        },
    )

    assert response.status_code == 200
    errors = response.context["form"].errors["paid_hours"]
    assert errors == [shown]
    assert hidden not in response.content.decode()


def test_a_ledger_entry_kind_is_named_in_the_pages_language_not_by_its_code() -> None:
    """The regulator's postings table showed 'payout_release' and 'settlement' on Chinese pages."""
    from django.template import Context, Template

    template = Template("{% load web %}{{ kind|entry_kind }}")
    with translation.override("zh-hans"):
        assert template.render(Context({"kind": "payout_release"})) == "拨付机构"
        assert template.render(Context({"kind": "settlement"})) == "缴费到账"
    with translation.override("en"):
        assert template.render(Context({"kind": "payout_release"})) == "release to the institution"
    assert template.render(Context({"kind": "something_new"})) == "something_new"  # an unknown kind as is


def test_every_entry_kind_the_custody_services_post_has_a_name() -> None:
    """A kind added to a service without a name would show as its code on the regulator's pages."""
    import re
    from pathlib import Path

    from custody.services.payouts import REFUND_FROM_RESERVE_KIND
    from custody.web.templatetags import ENTRY_KINDS

    services = Path(__file__).resolve().parents[2] / "custody" / "services"
    posted = {REFUND_FROM_RESERVE_KIND}
    for source in services.glob("*.py"):
        posted |= set(re.findall(r'\bkind="([a-z_]+)"', source.read_text(encoding="utf-8")))
    assert {"lesson", "settlement", "payout_release"} <= posted  # the scan finds the services' kinds
    assert posted - ENTRY_KINDS.keys() == set()

"""A parent on a phone: confirms a lesson, disputes another (a reason is required), claims a refund and
follows it, checks the proof of liabilities in the page, and downloads the PDF statement."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from custody.models import Lesson, LessonState, Refund, RefundState
from tests.web.conftest import DESKTOP, District

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_parent_confirms_a_lesson_and_claims_a_refund(district: District, browser_for: Any) -> None:
    b = browser_for("parent")
    b.demo_login("parent")
    assert b.page.url.endswith("/parent/")
    b.check("home")

    b.page.get_by_role("link", name=re.compile("初二数学提高班")).click()
    b.check("contract")
    first, second = Lesson.objects.filter(contract=district.contracts[0]).order_by("confirm_deadline", "pk")

    # One tap confirms: the row updates in place.
    row = b.page.locator(f"#lesson-{first.pk}")
    row.get_by_role("button", name="确认上课").click()
    expect(b.page.locator(f"#lesson-{first.pk} .s-confirmed")).to_be_visible()
    first.refresh_from_db()
    assert (first.state, first.confirmed_by) == (LessonState.CONFIRMED, "parent")

    # A dispute without a reason is refused beside the field, and nothing changes.
    other = b.page.locator(f"#lesson-{second.pk}")
    other.get_by_text("有异议").click()
    other.get_by_role("button", name="提交异议").click()
    expect(b.page.locator(f"#lesson-{second.pk} .errorlist")).to_contain_text("必填")
    second.refresh_from_db()
    assert second.state == LessonState.PENDING
    b.page.locator(f"#lesson-{second.pk} textarea").fill("孩子当天请假，没有上课")
    b.page.locator(f"#lesson-{second.pk}").get_by_role("button", name="提交异议").click()
    expect(b.page.locator(f"#lesson-{second.pk} .s-disputed")).to_be_visible()
    second.refresh_from_db()
    assert (second.state, second.dispute_reason) == (LessonState.DISPUTED, "孩子当天请假，没有上课")
    b.check("contract-answered")

    # Claim a refund on the other child's contract; the confirmation box is required.
    b.goto(f"/parent/contracts/{district.contracts[1].pk}/")
    b.page.get_by_label("退费说明（可选）").fill("孩子转学")
    b.page.get_by_role("button", name="申请退费").click()
    expect(b.page.locator(".has-error .errorlist")).to_contain_text("必填")
    assert not Refund.objects.filter(contract=district.contracts[1]).exists()
    b.page.get_by_label("我确认申请退还未消费的课时费").check()
    b.page.get_by_role("button", name="申请退费").click()
    expect(b.page.locator(".msg.success")).to_contain_text("退费申请已提交")
    refund = Refund.objects.get(contract=district.contracts[1])
    assert (refund.state, refund.claim_note) == (RefundState.CLAIMED, "孩子转学")
    expect(b.page.locator("#refund .timeline")).to_contain_text("逾期视为同意")
    b.check("refund-claimed")

    # The proof of liabilities is verified in the page, each check shown.
    b.goto(f"/parent/contracts/{district.contracts[0].pk}/proof/")
    expect(b.page.locator("#verify-status[data-result]")).to_have_attribute("data-result", "verified")
    checks = b.page.locator("#verify-steps li")
    expect(checks).to_have_count(7)
    assert b.page.locator("#verify-steps li.fail").count() == 0
    b.check("proof")

    with b.page.expect_download() as download:
        b.page.get_by_role("link", name="对账单 PDF").click()
    assert download.value.suggested_filename == "statement.pdf"
    assert Path(download.value.path()).read_bytes().startswith(b"%PDF")

    # The same pages on a desktop.
    wide = browser_for("parent", viewport=DESKTOP)
    wide.demo_login("parent")
    wide.check("home")
    wide.visit(f"/parent/contracts/{district.contracts[0].pk}/", "contract")
    wide.visit(f"/parent/contracts/{district.contracts[1].pk}/", "refund-claimed")


def test_the_english_switch_translates_the_parent_pages(district: District, browser_for: Any) -> None:
    b = browser_for("parent-en")
    b.demo_login("parent")
    expect(b.page.locator("h1")).to_have_text("我的孩子与合同")
    b.page.get_by_role("button", name="English").click()
    expect(b.page.locator("h1")).to_have_text("My children and contracts")
    expect(b.page.locator("html")).to_have_attribute("lang", "en")
    b.check("home-en")


def test_parent_sees_how_to_pay_an_order_and_cancels_it(district: District, browser_for: Any) -> None:
    from custody.models import Contract, ContractState
    from custody.services.contracts import sign_contract, unpaid_lapses_at
    from ledger.money import cny

    order = sign_contract(
        course=district.other_course,
        student=district.contracts[0].student,
        paid_hours=10,
        amount=cny("800.00"),
        service_starts_on=district.other_course.starts_on,
        service_ends_on=district.other_course.starts_on + timedelta(days=30),
    )
    b = browser_for("parent-order")
    b.demo_login("parent")
    b.goto(f"/parent/contracts/{order.pk}/")
    pay = b.page.locator("#pay")
    expect(pay).to_contain_text(order.number)
    expect(pay).to_contain_text("¥800.00")
    deadline = timezone.localtime(unpaid_lapses_at(order)).strftime("%Y-%m-%d %H:%M")
    expect(pay).to_contain_text(f"{deadline} 前未付款，合同自动取消")
    b.check("order")

    pay.get_by_role("button", name="取消合同（不再付款）").click()
    expect(b.page.locator(".msg.success")).to_contain_text("合同已取消")
    expect(b.page.locator("p.muted")).to_contain_text("家长取消")
    expect(b.page.locator("#pay")).to_have_count(0)
    order.refresh_from_db()
    assert (order.state, order.cancel_reason) == (ContractState.CANCELLED, "parent")
    assert Contract.objects.filter(pk=order.pk, ended_at__isnull=False).exists()
    b.check("order-cancelled")

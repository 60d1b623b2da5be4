"""A regulator signs in with a TOTP code, orders an abnormal closure and watches its refunds complete as the
custody bank executes them; the other regulator pages (alerts, breaks, reconciliation, policy, checkpoint,
exports) load clean, and an export runs to a signed zip."""

from __future__ import annotations

from typing import Any

import pytest
from django_otp.oath import TOTP
from playwright.sync_api import expect

from custody.models import (
    Closure,
    ClosureState,
    InstitutionState,
    PayoutInstruction,
    PayoutKind,
    PayoutState,
    Refund,
    RefundReason,
    RefundState,
)
from custody.services.payouts import record_payout_result
from tests.web.conftest import DESKTOP, PHONE, District

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _totp(district: District) -> str:
    device = district.regulator_totp
    return str(TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift).token()).zfill(
        device.digits
    )


def test_regulator_closes_an_institution_and_watches_the_refunds_complete(
    district: District, browser_for: Any
) -> None:
    b = browser_for("regulator", viewport=DESKTOP)
    b.goto("/login/")
    b.page.get_by_label("用户名").fill("demo_regulator")
    b.page.get_by_label("密码").fill("web-test-password")
    b.page.get_by_role("button", name="登录").last.click()
    expect(b.page.locator("#id_otp_token_error, .has-error .errorlist")).to_contain_text("动态口令")
    b.page.get_by_label("密码").fill("web-test-password")
    b.page.get_by_label("动态口令（监管人员必填）").fill(_totp(district))
    b.page.get_by_role("button", name="登录").last.click()
    b.page.wait_for_url("**/regulator/")
    b.check("dashboard")

    b.page.get_by_role("link", name=district.closing.name).click()
    b.check("institution")
    b.page.get_by_label("异常停办").check()
    b.page.get_by_label("理由").last.fill("负责人失联，停止经营")
    b.page.get_by_label("我确认：", exact=False).check()
    b.page.get_by_role("button", name="下达停办").click()

    progress = b.page.locator("#closure-progress")
    expect(progress.locator("[data-closure-state]")).to_have_attribute("data-closure-state", "completed")
    expect(progress.locator("[data-refunds-total]")).to_have_text("2")
    expect(progress.locator("[data-refunds-paid]")).to_have_text("0")
    b.check("closure-running")

    # The custody bank executes the refund instructions (its signed result callbacks); the page follows.
    waiting = PayoutInstruction.objects.filter(
        institution=district.closing, kind=PayoutKind.REFUND, state=PayoutState.INSTRUCTED
    )
    assert waiting.count() == 2
    for reference in list(waiting.values_list("reference", flat=True)):
        record_payout_result(reference=reference, executed=True, bank_reference=f"BK-{reference}")
    expect(progress.locator("[data-refunds-paid]")).to_have_text("2", timeout=10_000)
    expect(b.page.locator("[data-closure-done]")).to_be_visible()
    closure = Closure.objects.get(institution=district.closing)
    assert closure.state == ClosureState.COMPLETED
    assert closure.contracts_done == closure.contracts_total == 2
    refunds = Refund.objects.filter(contract__institution=district.closing, reason=RefundReason.CLOSURE)
    assert {r.state for r in refunds} == {RefundState.PAID}
    assert sum(r.amount_fen for r in refunds) == closure.refunded_fen > 0
    district.closing.refresh_from_db()
    assert district.closing.state == InstitutionState.CLOSED
    b.check("closure-done")

    for path, label in (
        ("/regulator/alerts/", "alerts"),
        ("/regulator/breaks/", "breaks"),
        ("/regulator/policy/", "policy"),
        ("/regulator/checkpoint/", "checkpoint"),
    ):
        b.visit(path, label)

    # A reconciliation runs as a job and reports its result (no bank statement covers the day here).
    b.visit("/regulator/reconciliation/", "reconciliation")
    b.page.get_by_role("button", name="开始对账").click()
    expect(b.page.locator("#job")).to_have_attribute("data-job-state", "done")
    expect(b.page.locator("#job")).to_contain_text("没有覆盖该日的银行对账单")
    b.check("reconciliation-done")

    # An export runs (eagerly here) and offers its signed zip.
    b.visit("/regulator/exports/", "exports")
    b.page.get_by_role("button", name="生成导出").click()
    expect(b.page.locator("#job")).to_have_attribute("data-job-state", "done")
    expect(b.page.get_by_role("link", name="下载 ZIP")).to_be_visible()
    expect(b.page.locator("#job")).to_contain_text("重庆市渝北区")
    b.check("export-done")

    phone = browser_for("regulator", viewport=PHONE)
    phone.demo_login("regulator")
    phone.check("dashboard")
    phone.visit(f"/regulator/institutions/{district.closing.pk}/", "closure-done")


def test_policy_edit_refuses_bad_input_beside_the_field(district: District, browser_for: Any) -> None:
    b = browser_for("regulator-policy", viewport=DESKTOP)
    b.demo_login("regulator")
    b.visit("/regulator/policy/", "policy")
    b.page.get_by_label("单次收费最多课时").fill("0")
    b.page.get_by_label("修改说明").fill("试图取消课时上限")
    b.page.get_by_role("button", name="发布新版本").click()
    expect(b.page.locator(".has-error")).to_contain_text("max_paid_hours")
    assert district.jurisdiction.policies.count() == 1
    b.page.get_by_label("单次收费最多课时").fill("48")
    b.page.get_by_role("button", name="发布新版本").click()
    expect(b.page.locator(".msg.success")).to_contain_text("第 2 版")
    assert district.jurisdiction.policies.order_by("-version").first().max_paid_hours == 48
    expect(b.page.locator(".versions")).to_contain_text("60 → 48")
    b.check("policy-published")

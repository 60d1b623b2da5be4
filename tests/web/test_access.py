"""Each role tries another role's pages and is refused (403, with a page that says so); a visitor who is not
signed in is sent to the sign-in page."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.web.conftest import District

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

FORBIDDEN = {
    "parent": ("/institution/", "/institution/lessons/", "/regulator/", "/regulator/policy/"),
    "institution": ("/parent/", "/regulator/", "/regulator/exports/"),
    "regulator": ("/parent/", "/institution/", "/institution/refunds/"),
}


def test_each_role_is_refused_the_others_pages(district: District, browser_for: Any) -> None:
    for role, paths in FORBIDDEN.items():
        b = browser_for(f"refused-{role}")
        # The refusal itself is a 403, which Chromium logs; nothing else may be.
        b.allowed_errors.append(re.compile(r"status of 403"))
        b.demo_login(role)
        for path in paths:
            response = b.goto(path)
            assert response is not None and response.status == 403, (role, path)
            expect(b.page.locator("h1")).to_have_text("无权访问")
        b.check("refused")
    # Another family's contract is not found at all.
    other = browser_for("refused-other")
    other.allowed_errors.append(re.compile(r"status of 404"))
    other.demo_login("parent")
    from custody.models import Contract

    foreign = Contract.objects.exclude(guardian=district.guardian).first()
    assert foreign is not None
    response = other.goto(f"/parent/contracts/{foreign.pk}/")
    assert response is not None and response.status == 404


def test_a_visitor_is_sent_to_sign_in(district: District, browser_for: Any) -> None:
    b = browser_for("anonymous")
    b.visit("/", "landing")
    b.goto("/regulator/")
    assert "/login/?next=%2Fregulator%2F" in b.page.url
    b.check("login")

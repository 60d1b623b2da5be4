"""Browser tests of the web pages: a live server on the PostgreSQL test database, a small district seeded
through the services, and Debian's Chromium driven by Playwright's sync API.

- PostgreSQL only (``@pytest.mark.postgres``): the live server needs a transactional database, and on SQLite
  the flush between tests is a DELETE, which the ledger's append-only triggers refuse. CI's PostgreSQL pass
  runs them (a missing Chromium fails them there, it never skips them).
- Celery runs eagerly: a closure run or an export enqueued after a request's commit runs inside that request,
  so the page's first progress poll already sees it moving.
- Every page visited through ``Browser.visit`` is checked: a title, no console error or uncaught exception,
  and no serious or critical axe-core violation; a screenshot is saved to ``var/screenshots/`` (not
  committed) for people to look at.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# Playwright's sync API runs an event loop in this thread; the test's own ORM calls are still synchronous.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1440, "height": 900}
BANK_KEY_ID = "web-test-bank"
PAYER = "6222020200112233445"
SERIOUS = {"serious", "critical"}

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="session")
def bank_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def web_settings(settings: Any, bank_key: Ed25519PrivateKey, tmp_path: Path) -> Any:
    """Demo mode on (the one-click logins need DEBUG and DEMO_MODE), our bank key, jobs in a temp dir, and
    Celery tasks run in the request that enqueued them."""
    from config.celery import app

    settings.DEBUG = True
    settings.DEMO_MODE = True
    settings.WEB_JOBS_DIR = tmp_path / "jobs"
    settings.CUSTODY_CHANNELS = {
        "bank": {"keys": {BANK_KEY_ID: base64.b64encode(bank_key.public_key().public_bytes_raw()).decode()}}
    }
    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield settings
    app.conf.task_always_eager = previous


# --- the district -----------------------------------------------------------------------------------------


@dataclass
class District:
    jurisdiction: Any
    school: Any  # the demo clerk's institution
    closing: Any  # an institution the regulator closes
    course: Any
    other_course: Any
    parent_user: Any
    clerk_user: Any
    regulator_user: Any
    regulator_totp: Any
    guardian: Any
    contracts: list[Any] = field(default_factory=list)  # the demo parent's: [with lessons, without]
    class_contracts: list[Any] = field(default_factory=list)  # the school's course, for a class
    closing_contracts: list[Any] = field(default_factory=list)


def _user(username: str, password: str = "web-test-password") -> Any:
    from django.contrib.auth.models import User

    user = User(username=username)
    user.set_password(password)
    user.save()
    return user


@pytest.fixture
def district(web_settings: Any, transactional_db: Any, bank_key: Ed25519PrivateKey) -> District:
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from custody.channels.bank import bank_callback_body, sign_bank_callback
    from custody.demo import id_number
    from custody.models import ClassSizeBand, TeachingMode, TrainingCategory
    from custody.services import access, courses, institutions, people, policy
    from custody.services.calendar import SHANGHAI, local_today
    from custody.services.checkpoints import create_custody_checkpoint
    from custody.services.contracts import sign_contract
    from custody.services.lessons import NewLesson, record_lessons
    from custody.services.payments import receive_callback, settle_payments
    from ledger import clock
    from ledger.money import cny

    today = local_today()
    city = policy.ensure_jurisdiction(code="500000", name="重庆市")
    jurisdiction = policy.ensure_jurisdiction(code="500112", name="重庆市渝北区", parent=city)

    def school(index: int, name: str) -> Any:
        return institutions.register_institution(
            jurisdiction=jurisdiction,
            name=name,
            licence_number=f"教民15001126000{index:04d}",
            category=TrainingCategory.SUBJECT,
            custody_bank_name="重庆农村商业银行渝北支行",
            custody_account_number=f"50010000000000{index:04d}",
            settlement_account_number=f"31000000000000{index:04d}",
        )

    home, closing = school(1, "重庆渝北青蓝培训学校"), school(2, "重庆渝北启航培训学校")
    starts = today - timedelta(days=10)

    def course(institution: Any, name: str, subject: str) -> Any:
        return courses.publish_course(
            institution=institution,
            name=name,
            subject=subject,
            category=TrainingCategory.SUBJECT,
            class_size_band=ClassSizeBand.SMALL,
            mode=TeachingMode.OFFLINE,
            price_per_hour=cny("80.00"),
            starts_on=starts,
        )

    maths, english, closing_course = (
        course(home, "初二数学提高班", "数学"),
        course(home, "初二英语", "英语"),
        None,
    )
    closing_course = course(closing, "初一数学", "数学")

    parent_user, clerk_user, regulator_user = (
        _user("demo_parent"),
        _user("demo_clerk"),
        _user("demo_regulator"),
    )
    access.grant_institution_staff(user=clerk_user, institution=home, role="manager")
    access.grant_regulator(user=regulator_user, jurisdiction=jurisdiction)
    totp = TOTPDevice.objects.create(user=regulator_user, name="web-test", confirmed=True)

    serial = iter(range(1, 1000))

    def family(n: int, *, user: Any = None, children: int = 1) -> tuple[Any, list[Any]]:
        guardian = people.register_guardian(
            name=f"家长{n}",
            phone=f"1380013{n:04d}",
            id_number=id_number("500112", date(1985, 1, 1), n),
            user=user,
        )
        kids = [
            people.add_student(
                guardian=guardian,
                name=f"学生{n}-{k}",
                id_number=id_number("500112", date(2012, 3, 3), n * 10 + k),
            )
            for k in range(1, children + 1)
        ]
        return guardian, kids

    def paid_contract(course: Any, student: Any, hours: int = 20) -> Any:
        contract = sign_contract(
            course=course,
            student=student,
            paid_hours=hours,
            amount=cny(str(80 * hours)),
            service_starts_on=starts,
            service_ends_on=starts + timedelta(days=60),
        )
        txn = f"WEBTEST{next(serial):06d}"
        body = bank_callback_body(
            transaction_id=txn,
            order_reference=contract.number,
            amount_fen=contract.amount_fen,
            paid_at=clock.now(),
            payer_account=PAYER,
        )
        receive_callback(
            channel="bank", headers=sign_bank_callback(bank_key, BANK_KEY_ID, body, clock.now()), body=body
        )
        settle_payments(channel="bank", transaction_ids=[txn])
        contract.refresh_from_db()
        return contract

    guardian, (first, second) = family(1, user=parent_user, children=2)
    mine = [paid_contract(maths, first), paid_contract(english, second)]
    # The second classmate bought 4 hours only: a class of 5 hours is refused for the whole class.
    classmates = [paid_contract(maths, family(2)[1][0]), paid_contract(maths, family(3)[1][0], hours=4)]
    closing_contracts = [paid_contract(closing_course, family(n)[1][0]) for n in (4, 5)]

    yesterday = datetime.combine(today - timedelta(days=1), time(16, 0), tzinfo=SHANGHAI)
    record_lessons(
        lessons=[
            NewLesson(
                contract=mine[0], held_at=yesterday - timedelta(days=d), hours=1, idempotency_key=f"seed-{d}"
            )
            for d in (0, 2)
        ]
        + [
            NewLesson(
                contract=closing_contracts[0], held_at=yesterday, hours=1, idempotency_key="seed-closing"
            )
        ],
        recorded_by=clerk_user,
    )
    create_custody_checkpoint()
    return District(
        jurisdiction=jurisdiction,
        school=home,
        closing=closing,
        course=maths,
        other_course=english,
        parent_user=parent_user,
        clerk_user=clerk_user,
        regulator_user=regulator_user,
        regulator_totp=totp,
        guardian=guardian,
        contracts=mine,
        class_contracts=[mine[0], *classmates],
        closing_contracts=closing_contracts,
    )


# --- the browser ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def axe() -> Any:
    from axe_playwright_python.sync_playwright import Axe

    return Axe()


class Browser:
    """One person's browser: a page whose console errors and uncaught exceptions are collected, and a
    ``visit`` that checks each page (title, console, accessibility) and screenshots it."""

    def __init__(self, context: Any, base_url: str, axe: Any, name: str) -> None:
        self.context = context
        self.base_url = base_url
        self.axe = axe
        self.name = name
        self.page = context.new_page()
        self.errors: list[str] = []
        self.allowed_errors: list[re.Pattern[str]] = []
        self.page.on("console", lambda msg: msg.type == "error" and self.errors.append(msg.text))
        self.page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def url(self, path: str) -> str:
        return self.base_url + path

    def goto(self, path: str) -> Any:
        return self.page.goto(self.url(path))

    def check(self, label: str, *, viewport: dict[str, int] | None = None) -> None:
        """The current page: a title, no console error, no serious axe violation; then a screenshot."""
        page = self.page
        page.wait_for_load_state("networkidle")
        title = page.title()
        assert title.strip(), f"{page.url} has no title"
        violations = [v for v in self.axe.run(page).response["violations"] if v.get("impact") in SERIOUS]
        assert not violations, f"{label} ({page.url}) accessibility: " + "; ".join(
            f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
            for v in violations
        )
        self.assert_no_console_errors(label)
        self.screenshot(label, viewport=viewport)

    def assert_no_console_errors(self, label: str) -> None:
        unexpected = [e for e in self.errors if not any(p.search(e) for p in self.allowed_errors)]
        assert not unexpected, f"{label}: console errors {unexpected}"

    def screenshot(self, label: str, *, viewport: dict[str, int] | None = None) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        size = viewport or self.page.viewport_size or {}
        suffix = "phone" if size.get("width", 0) < 700 else "desktop"
        self.page.screenshot(path=str(SCREENSHOTS / f"{self.name}-{label}-{suffix}.png"), full_page=True)

    def visit(self, path: str, label: str) -> None:
        response = self.goto(path)
        assert response is not None and response.ok, f"{path}: HTTP {response.status if response else '?'}"
        self.check(label)

    def demo_login(self, role: str) -> None:
        self.goto("/")
        self.page.get_by_role(
            "button",
            name=re.compile(
                {"parent": "示范家长", "institution": "示范机构", "regulator": "示范监管员"}[role]
            ),
        ).click()
        self.page.wait_for_load_state("networkidle")


@pytest.fixture
def browser_for(chromium: Any, live_server: Any, axe: Any) -> Iterator[Any]:
    contexts: list[Any] = []

    def make(name: str, *, viewport: dict[str, int] = PHONE) -> Browser:
        context = chromium.new_context(viewport=viewport, locale="zh-CN", timezone_id="Asia/Shanghai")
        context.set_default_timeout(15_000)
        contexts.append(context)
        return Browser(context, live_server.url, axe, name)

    yield make
    for context in contexts:
        context.close()

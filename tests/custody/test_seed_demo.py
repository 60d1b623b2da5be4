"""``seed_demo``: a small demo district (``--scale 0.05``) has something in every state, was built only
through the services (payments through signed bank callbacks), and its books verify; the command refuses a
database that already has data, and the same seed gives the same district.

The story's end is fixed (2024-06-28, a year ``chinese_calendar`` knows), so working-day deadlines and
therefore every count are reproducible. The custody bank's key is made at test time.
"""

from __future__ import annotations

import base64
import io
from collections import Counter
from datetime import date
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction

from custody.demo import RECONCILED_DAYS, demo_counts, luhn_complete
from custody.models import (
    AlertState,
    CallbackLog,
    CallbackOutcome,
    Closure,
    ClosureMode,
    ClosureState,
    Contract,
    ContractState,
    Guardian,
    Institution,
    InstitutionState,
    Jurisdiction,
    Lesson,
    LessonState,
    Payment,
    Refund,
    RefundReason,
    RiskAlert,
    Student,
    SupervisionMode,
)
from custody.selectors.balances import contract_position, custody_invariant
from custody.services.people import normalise_id_number, normalise_phone
from custody.services.policy import ensure_jurisdiction
from ledger import verification
from ledger.models import Entry
from reconciliation.models import BankStatement, Break, BreakKind, TieOut

pytestmark = pytest.mark.django_db

END = date(2024, 6, 28)
KEY_ID = "demo-test-bank"


@pytest.fixture(autouse=True)
def demo_bank_key(settings: Any) -> None:
    key = Ed25519PrivateKey.generate()
    settings.DEMO_BANK_SIGNING_KEY = base64.b64encode(key.private_bytes_raw()).decode()
    settings.DEMO_BANK_KEY_ID = KEY_ID
    public = base64.b64encode(key.public_key().public_bytes_raw()).decode()
    settings.CUSTODY_CHANNELS = {"bank": {"keys": {KEY_ID: public}}}


def seed(*extra: str, seed_value: int = 11) -> str:
    out = io.StringIO()
    call_command(
        "seed_demo",
        "--scale",
        "0.05",
        "--seed",
        str(seed_value),
        "--end-date",
        END.isoformat(),
        *extra,
        stdout=out,
    )
    return out.getvalue()


def present(counts: dict[str, int], *keys: str) -> None:
    missing = [key for key in keys if counts.get(key, 0) < 1]
    assert not missing, f"nothing in {missing}; have {counts}"


def test_the_demo_has_every_state_and_its_books_verify(settings: Any) -> None:
    settings.DEBUG = True  # demo logins are made only in DEBUG
    output = seed()

    counts = demo_counts()
    present(
        counts["institutions"],
        "subject/custody/active",
        "subject/custody/closed",
        "non_subject/custody/closing",
        "non_subject/custody/frozen",
        "non_subject/risk_reserve/active",
    )
    present(counts["contracts"], "awaiting_payment", "cancelled", "active", "completed", "refunded")
    present(
        counts["lessons"],
        "pending/-",
        "disputed/-",
        "voided/-",
        "confirmed/parent",
        "confirmed/silence",
        "confirmed/institution",
    )
    present(
        counts["refunds"],
        "parent_claim/claimed/-",
        "parent_claim/rejected/-",
        "parent_claim/instructed/institution",
        "parent_claim/paid/institution",
        "parent_claim/paid/silence",
        "closure/paid/closure",
    )
    present(counts["payouts"], "release/executed", "release/failed", "refund/executed", "refund/instructed")
    assert counts["closures"] == {"abnormal/completed": 1, "planned/announced": 1}
    present(counts["callbacks"], "accepted", "replay", "rejected")
    assert counts["people"]["guardians"] == 16  # the minimum, whatever the scale

    # Every payment came through a signed custody-bank callback, and replays posted nothing.
    payments = Payment.objects.count()
    assert payments > 20
    assert Payment.objects.exclude(channel="bank").count() == 0
    assert CallbackLog.objects.filter(outcome=CallbackOutcome.ACCEPTED).count() == payments
    assert Entry.objects.filter(kind="payment").count() == payments
    assert Entry.objects.filter(kind="settlement").count() == payments

    # DESIGN.md section 6 on the result: the ledger, each institution, each contract.
    report = verification.verify()
    assert report.ok, report.findings[:10]
    for institution in Institution.objects.all():
        assert custody_invariant(institution).holds, institution.name
    for contract in Contract.objects.exclude(
        state__in=(ContractState.AWAITING_PAYMENT, ContractState.CANCELLED)
    ):
        assert contract_position(contract).balanced, contract.number
        assert contract.hours_consumed + contract.hours_pending + contract.paid_hours_refunded <= (
            contract.total_hours
        )

    # The custody bank's statements of the last week are reconciled: every day of every full-custody account
    # ties out, except where the bank did what the ledger never saw (the two faults the story plants).
    custody_accounts = Institution.objects.filter(supervision_mode=SupervisionMode.CUSTODY).count()
    assert BankStatement.objects.count() == RECONCILED_DAYS * custody_accounts
    assert sorted(Break.objects.values_list("kind", "amount_fen")) == [
        (BreakKind.FEE, 2_000),
        (BreakKind.UNMATCHED_LINE, -360_000),
    ]
    # The unknown credit (4 days before the end) and the fee (2 days before) stay in the bank's balance: those
    # accounts' days from then on are explained by their breaks, 5 + 3 of them.
    ties = Counter(TieOut.objects.values_list("status", flat=True))
    assert ties == {"tied": BankStatement.objects.count() - 8, "explained": 8}

    # The abnormal closure ran to completion: nothing prepaid is left, one closure refund per contract
    # with value.
    closure = Closure.objects.get(mode=ClosureMode.ABNORMAL)
    assert closure.state == ClosureState.COMPLETED
    assert closure.institution.state == InstitutionState.CLOSED
    for contract in Contract.objects.filter(institution=closure.institution).select_related(
        "prepaid_account"
    ):
        assert contract.prepaid_account is not None
        assert contract.prepaid_account.credits_posted == contract.prepaid_account.debits_posted
        closure_refunds = Refund.objects.filter(contract=contract, reason=RefundReason.CLOSURE).count()
        assert closure_refunds == (1 if contract.state == ContractState.REFUNDED else 0)

    # The lessons it recorded for nobody in its last evenings were disputed and voided by the closure, and the
    # regulator dealt with the alerts they raised.
    runaway = Lesson.objects.filter(
        contract__institution=closure.institution, idempotency_key__endswith="-evening"
    )
    assert runaway.exists() and set(runaway.values_list("state", flat=True)) == {LessonState.VOIDED}
    assert not RiskAlert.objects.filter(institution=closure.institution).exclude(state=AlertState.RESOLVED)

    # The personal data is well-formed and fictional by construction.
    people: list[Guardian | Student] = [*Guardian.objects.all(), *Student.objects.all()]
    for person in people:
        assert normalise_id_number(person.id_number) == person.id_number
        assert person.name and not person.name.isascii()
    for guardian in Guardian.objects.all():
        assert normalise_phone(guardian.phone) == guardian.phone
    for payment in Payment.objects.all():
        assert luhn_complete(payment.payer_account[:-1]) == payment.payer_account

    # Demo logins with their roles; the two privileged ones have a TOTP device.
    from django_otp.plugins.otp_totp.models import TOTPDevice

    parent = User.objects.get(username="demo_parent")
    assert Contract.objects.filter(guardian__user=parent).count() >= 1
    assert User.objects.get(username="demo_clerk").institution_staff.role == "manager"
    regulator = User.objects.get(username="demo_regulator")
    assert regulator.regulator_profile.jurisdiction.code == "500112"
    bank = User.objects.get(username="demo_bank")
    assert Institution.objects.filter(custody_bank_name=bank.bank_operator.bank_name).exists()
    assert TOTPDevice.objects.filter(user__in=[regulator, bank], confirmed=True).count() == 2
    assert "demo_regulator" in output and "TOTP secret" in output

    # verify_ledger --seal, as the brief for the demo says.
    out = io.StringIO()
    call_command("verify_ledger", "--seal", stdout=out, stderr=io.StringIO())
    assert "OK" in out.getvalue()
    # and verify_custody: the custody invariants 3, 4, 6, 7 and 10, set-based.
    out = io.StringIO()
    call_command("verify_custody", stdout=out, stderr=io.StringIO())
    assert "OK: the custody invariants hold" in out.getvalue()


def fingerprint() -> tuple[dict[str, dict[str, int]], list[tuple[str, str, str, int, int, int, str]]]:
    """What the demo made, without database ids (PostgreSQL sequences do not roll back)."""
    contracts = sorted(
        (c.institution.name, c.course.name, c.student.name, c.amount_fen, c.paid_hours, c.gift_hours, c.state)
        for c in Contract.objects.select_related("institution", "course", "student")
    )
    return (demo_counts(), contracts)


def test_the_same_seed_builds_the_same_district() -> None:
    prints = []
    for _ in range(2):
        with transaction.atomic():
            seed()
            prints.append(fingerprint())
            transaction.set_rollback(True)
    assert prints[0] == prints[1]
    assert len(prints[0][1]) > 20


def test_a_database_with_data_is_refused_or_skipped(settings: Any) -> None:
    ensure_jurisdiction(code="310104", name="徐汇区")

    with pytest.raises(CommandError, match="--if-empty"):
        seed()
    assert "skipped" in seed("--if-empty")
    assert not Institution.objects.exists()

    settings.DEBUG = False
    with pytest.raises(CommandError, match="DEBUG"):
        seed("--reset")
    if connection.vendor == "sqlite":
        settings.DEBUG = True
        with pytest.raises(CommandError, match="SQLite"):
            seed("--reset")


def test_without_the_dev_bank_key_it_says_what_is_missing(settings: Any) -> None:
    settings.DEMO_BANK_SIGNING_KEY = ""
    with pytest.raises(CommandError, match="DEMO_BANK_SIGNING_KEY"):
        seed()
    assert not Institution.objects.exists()


@pytest.mark.postgres
def test_reset_on_postgresql_empties_the_books_and_seeds_again(settings: Any) -> None:
    settings.DEBUG = True
    ensure_jurisdiction(code="310104", name="徐汇区")
    User.objects.create_user(username="demo_parent", password="old")

    output = seed("--reset")

    assert "truncating" in output
    assert not Jurisdiction.objects.filter(code="310104").exists()
    assert set(Institution.objects.values_list("jurisdiction__code", flat=True)) == {"500112"}
    assert User.objects.filter(username="demo_parent").count() == 1
    assert verification.verify().ok


def test_luhn_and_id_numbers_of_the_generator() -> None:
    assert luhn_complete("7992739871") == "79927398713"  # the textbook example
    from custody.demo import id_number

    number = id_number("500112", date(2014, 5, 17), 123)
    assert normalise_id_number(number) == number

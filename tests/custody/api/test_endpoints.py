"""What the endpoints do, over HTTP, for each role: the regulator's freeze, closure, policy, disputes, alerts
and four-eyes corrections; the institution's courses, lessons (one and in bulk) and refund answers; the
parent's statement and balance; the bank's payout results, settlements and statement uploads; the
channels' signed callbacks."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from custody.channels.wechat import build_wechat_notification, wechat_transaction
from custody.models import (
    CallbackLog,
    Contract,
    ContractState,
    CorrectionState,
    Institution,
    InstitutionState,
    Lesson,
    LessonState,
    Payment,
    PayoutState,
    Refund,
    RefundState,
    RiskAlert,
)
from ledger import clock, verification
from ledger.models import Entry
from reconciliation.formats import Statement, StatementLine, write_csv
from tests.custody.api.conftest import BANK_KEY_ID, BankCallback, World, idem, new_contract

pytestmark = pytest.mark.django_db


def money(amount: str) -> dict[str, str]:
    return {"amount": amount, "currency": "CNY"}


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.content[:500]
    return response.json()


# --- regulators ---------------------------------------------------------------------------------------------


def test_freeze_and_unfreeze_move_the_institution_and_say_why(world: World) -> None:
    regulator = world.client("regulator")
    url = f"/api/v1/regulator/institutions/{world.institution.pk}"
    frozen = ok(regulator.post(f"{url}/freeze/", {"reason": "投诉较多 complaints"}, format="json", **idem()))
    assert (frozen["state"], frozen["state_reason"]) == ("frozen", "投诉较多 complaints")
    again = regulator.post(f"{url}/freeze/", {"reason": "again"}, format="json", **idem())
    assert again.status_code == 409 and again.json()["error"]["code"] == "illegal_transition"
    assert (
        ok(regulator.post(f"{url}/unfreeze/", {"reason": "整改 fixed"}, format="json", **idem()))["state"]
        == "active"
    )
    detail = ok(regulator.get(f"{url}/"))
    assert detail["invariant"]["holds"] is True
    assert detail["custody_cash"] == money("2400.00")


def test_a_planned_closure_gives_notice(world: World) -> None:
    regulator = world.client("regulator")
    body = ok(
        regulator.post(
            f"/api/v1/regulator/institutions/{world.institution.pk}/closure/",
            {"mode": "planned", "reason": "停办 closing down"},
            format="json",
            **idem(),
        ),
        201,
    )
    assert body["state"] == "announced" and body["mode"] == "planned"
    assert Institution.objects.get(pk=world.institution.pk).state == InstitutionState.CLOSING
    listed = ok(regulator.get("/api/v1/regulator/closures/"))
    assert [row["id"] for row in listed["results"]] == [body["id"]]


def test_a_policy_change_is_a_new_version_with_its_guidance_prices(world: World) -> None:
    regulator = world.client("regulator")
    assert ok(regulator.get("/api/v1/regulator/policy/"))["version"] == 1
    body = ok(
        regulator.post(
            "/api/v1/regulator/policy/",
            {
                "changes": {"lesson_auto_confirm_working_days": 7, "release_cadence": "weekly"},
                "guidance_prices": [{"class_size_band": "small", "mode": "offline", "price": money("75.00")}],
                "note": "本地规则 local rules",
            },
            format="json",
            **idem(),
        ),
        201,
    )
    assert (body["version"], body["lesson_auto_confirm_working_days"], body["release_cadence"]) == (
        2,
        7,
        "weekly",
    )
    small_offline = next(
        p for p in body["guidance_prices"] if (p["class_size_band"], p["mode"]) == ("small", "offline")
    )
    assert small_offline["price"] == money("75.00")
    refused = regulator.post(
        "/api/v1/regulator/policy/", {"changes": {"max_paid_hours": 0}, "note": "x"}, format="json", **idem()
    )
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "max_paid_hours"
    versions = ok(regulator.get("/api/v1/regulator/policy/versions/", {"ordering": "version"}))
    assert [v["version"] for v in versions["results"] if v["jurisdiction"] == "310104"] == [1, 2]


def test_a_regulator_rules_on_a_dispute(world: World) -> None:
    regulator = world.client("regulator")
    listed = ok(regulator.get("/api/v1/regulator/disputes/"))
    assert [row["id"] for row in listed["results"]] == [world.disputed.pk]
    ruled = ok(
        regulator.post(
            f"/api/v1/regulator/disputes/{world.disputed.pk}/resolve/",
            {"release": False, "note": "机构未上课 no lesson was held"},
            format="json",
            **idem(),
        )
    )
    assert ruled["state"] == "voided"


def test_alerts_are_acknowledged_investigated_and_resolved_with_a_note(world: World) -> None:
    regulator = world.client("regulator")
    url = f"/api/v1/regulator/alerts/{world.alert.pk}"
    assert ok(regulator.get("/api/v1/regulator/overview/"))["alerts_yellow"] == 1
    assert ok(regulator.get(f"{url}/"))["cleared_at"] is None
    RiskAlert.objects.filter(pk=world.alert.pk).update(cleared_at=datetime(2024, 3, 5, 2, 0, tzinfo=UTC))
    # Still open, but the last scan no longer found the condition.
    assert ok(regulator.get(f"{url}/"))["cleared_at"] == "2024-03-05T10:00:00+08:00"
    assert ok(regulator.post(f"{url}/acknowledge/", {}, format="json", **idem()))["state"] == "acknowledged"
    assert (
        ok(regulator.post(f"{url}/investigate/", {"note": "约谈"}, format="json", **idem()))["state"]
        == "investigating"
    )
    no_note = regulator.post(f"{url}/resolve/", {}, format="json", **idem())
    assert no_note.status_code == 400 and no_note.json()["error"]["field"] == "note"
    resolved = ok(regulator.post(f"{url}/resolve/", {"note": "已整改 fixed"}, format="json", **idem()))
    assert resolved["state"] == "resolved" and resolved["resolution_note"] == "已整改 fixed"
    history = ok(regulator.get(f"{url}/"))["history"]
    assert [h["action"] for h in history] == ["acknowledged", "investigating", "resolved"]
    assert ok(regulator.get("/api/v1/regulator/overview/"))["alerts_yellow"] == 0
    back = regulator.post(f"{url}/acknowledge/", {}, format="json", **idem())
    assert back.status_code == 409


def test_the_inbox_lists_and_marks_read(world: World) -> None:
    regulator = world.client("regulator")
    assert ok(regulator.get("/api/v1/regulator/inbox/", {"unread": "true"}))["count"] == 1
    assert ok(
        regulator.post("/api/v1/regulator/inbox/read/", {"ids": [world.message.pk]}, format="json", **idem())
    ) == {"marked": 1}
    assert ok(regulator.get("/api/v1/regulator/inbox/", {"unread": "true"}))["count"] == 0
    theirs = regulator.post(
        "/api/v1/regulator/inbox/read/", {"ids": [world.other_message.pk]}, format="json", **idem()
    )
    assert theirs.status_code == 404


def correction_body(world: World, *, debit: str, credit: str, amount: str = "10.00") -> dict[str, Any]:
    return {
        "institution": world.institution.pk,
        "reason": "银行手续费误记 a bank fee booked to the wrong account",
        "legs": [
            {"account": debit, "side": "debit", "amount": money(amount)},
            {"account": credit, "side": "credit", "amount": money(amount)},
        ],
    }


def test_a_correction_needs_a_second_regulator_and_then_posts(world: World) -> None:
    first, second = world.client("regulator"), world.client("second_regulator")
    payable, prepaid = f"payable:i{world.institution.pk}", f"prepaid:c{world.contract.pk}"
    proposal = ok(
        first.post(
            "/api/v1/regulator/corrections/",
            correction_body(world, debit=prepaid, credit=payable),
            format="json",
            **idem(),
        ),
        201,
    )
    assert proposal["state"] == "proposed" and proposal["entry"] is None
    entries = Entry.objects.count()

    own = first.post(f"/api/v1/regulator/corrections/{proposal['id']}/approve/", {}, format="json", **idem())
    assert own.status_code == 422 and own.json()["error"]["details"]["rule"] == "four_eyes"
    assert Entry.objects.count() == entries

    remote = world.client("remote_regulator").post(
        f"/api/v1/regulator/corrections/{proposal['id']}/approve/", {}, format="json", **idem()
    )
    assert remote.status_code == 404

    approved = ok(
        second.post(
            f"/api/v1/regulator/corrections/{proposal['id']}/approve/",
            {"note": "核对无误"},
            format="json",
            **idem(),
        )
    )
    assert approved["state"] == CorrectionState.POSTED and approved["decided_by"] == "regulator-1b"
    entry = Entry.objects.get(pk=approved["entry"])
    assert entry.kind == "correction" and entry.idempotency_key == f"correction:{proposal['id']}"
    assert verification.verify().ok
    again = second.post(
        f"/api/v1/regulator/corrections/{proposal['id']}/approve/", {}, format="json", **idem()
    )
    assert again.status_code == 409 and Entry.objects.count() == entries + 1


def test_corrections_stay_inside_one_institution_and_balance(world: World) -> None:
    regulator = world.client("regulator")
    foreign = correction_body(
        world, debit=f"payable:i{world.institution.pk}", credit=f"prepaid:c{world.other_contract.pk}"
    )
    refused = regulator.post("/api/v1/regulator/corrections/", foreign, format="json", **idem())
    assert (
        refused.status_code == 422
        and refused.json()["error"]["details"]["rule"] == "correction_foreign_account"
    )
    unbalanced = correction_body(
        world, debit=f"payable:i{world.institution.pk}", credit=f"prepaid:c{world.contract.pk}"
    )
    unbalanced["legs"][1]["amount"] = money("9.99")
    refused = regulator.post("/api/v1/regulator/corrections/", unbalanced, format="json", **idem())
    assert (
        refused.status_code == 422 and refused.json()["error"]["details"]["rule"] == "correction_unbalanced"
    )
    rejected = ok(
        regulator.post(
            f"/api/v1/regulator/corrections/{world.correction.pk}/reject/",
            {"note": "撤回 withdrawn"},
            format="json",
            **idem(),
        )
    )
    assert rejected["state"] == "rejected"


# --- institutions -------------------------------------------------------------------------------------------


def test_courses_are_published_within_the_guidance_cap(world: World) -> None:
    manager = world.client("manager")
    body = {
        "name": "初一语文",
        "subject": "语文",
        "category": "subject",
        "class_size_band": "small",
        "mode": "offline",
        "price_per_hour": money("88.00"),
        "starts_on": str(clock.now().date() + timedelta(days=20)),
    }
    course = ok(manager.post("/api/v1/institution/courses/", body, format="json", **idem()), 201)
    assert course["price_per_hour"] == money("88.00") and course["institution"] == world.institution.pk
    over = manager.post(
        "/api/v1/institution/courses/", {**body, "price_per_hour": money("88.01")}, format="json", **idem()
    )
    assert over.status_code == 422 and over.json()["error"]["details"]["rule"] == "guidance_price"
    teacher = world.client("teacher").post("/api/v1/institution/courses/", body, format="json", **idem())
    assert teacher.status_code == 403


def test_lessons_are_recorded_in_bulk_all_or_nothing(world: World) -> None:
    teacher = world.client("teacher")
    held = (clock.now() - timedelta(hours=1)).isoformat()
    rows = [{"contract": world.contract.pk, "held_at": held, "key": f"bulk-{n}"} for n in range(3)]
    first = ok(
        teacher.post("/api/v1/institution/lessons/bulk/", {"lessons": rows}, format="json", **idem()), 201
    )
    assert first["recorded"] == 3 and [r["key"] for r in first["lessons"]] == ["bulk-0", "bulk-1", "bulk-2"]
    assert all(r["amount"] == money("80.00") and r["state"] == "pending" for r in first["lessons"])
    # The same lessons again under another request key: the institution's own keys make them the same lessons.
    again = ok(
        teacher.post("/api/v1/institution/lessons/bulk/", {"lessons": rows}, format="json", **idem()), 201
    )
    assert [r["id"] for r in again["lessons"]] == [r["id"] for r in first["lessons"]]
    count = Lesson.objects.count()
    mixed = rows[:1] + [{"contract": world.other_contract.pk, "held_at": held, "key": "bulk-x"}]
    refused = teacher.post("/api/v1/institution/lessons/bulk/", {"lessons": mixed}, format="json", **idem())
    assert refused.status_code == 400 and refused.json()["error"]["field"] == "contract"
    too_many = [{"contract": world.contract.pk, "held_at": held, "key": f"many-{n}"} for n in range(30)]
    refused = teacher.post(
        "/api/v1/institution/lessons/bulk/", {"lessons": too_many}, format="json", **idem()
    )
    assert (
        refused.status_code == 422
        and refused.json()["error"]["details"]["rule"] == "lesson_beyond_paid_hours"
    )
    assert Lesson.objects.count() == count


def test_an_institution_answers_a_refund_and_a_dispute(world: World) -> None:
    finance = world.client("finance")
    answered = ok(
        finance.post(
            f"/api/v1/institution/refunds/{world.refund.pk}/answer/",
            {"approve": True},
            format="json",
            **idem(),
        )
    )
    assert answered["state"] == "approved" and answered["amount"] == money("800.00")
    assert Refund.objects.get(pk=world.refund.pk).state == RefundState.APPROVED
    rejected_without_reason = finance.post(
        f"/api/v1/institution/refunds/{world.refund.pk}/answer/", {"approve": False}, format="json", **idem()
    )
    assert rejected_without_reason.status_code in (409, 422)
    teacher = world.client("teacher")
    resolved = ok(
        teacher.post(
            f"/api/v1/institution/lessons/{world.disputed.pk}/resolve/",
            {"release": False, "note": "同意家长 agreed"},
            format="json",
            **idem(),
        )
    )
    assert resolved["state"] == LessonState.VOIDED


# --- parents ------------------------------------------------------------------------------------------------


def test_a_parent_sees_balances_and_a_statement(world: World) -> None:
    parent = world.client("parent")
    balance = ok(parent.get("/api/v1/parent/balance/"))
    assert balance == {
        "contracts": 2,
        "paid": money("2400.00"),
        "held": money("2320.00"),
        "pending_confirmation": money("240.00"),
        "consumed": money("80.00"),
        "refunded": money("0.00"),
        "refund_paid": money("0.00"),
    }
    statement = ok(parent.get(f"/api/v1/parent/contracts/{world.contract.pk}/statement/"))
    assert statement["number"] == world.contract.number
    kinds = [line["kind"] for line in statement["prepaid"]["lines"]]
    assert kinds == ["payment", "lesson"]
    assert statement["prepaid"]["closing"] == money("1520.00")
    assert statement["liability_proof"] is None  # no custody checkpoint signed yet
    detail = ok(parent.get(f"/api/v1/parent/contracts/{world.contract.pk}/"))
    assert [p["channel"] for p in detail["payments"]] == ["bank"] and detail["state"] == "active"


def sign_order(parent: APIClient, world: World, **extra: Any) -> Any:
    """The parent signs 5 hours of the world's course for 400 yuan (``extra`` adds fields): the new order."""
    body = {
        "course": world.course.pk,
        "student": world.student.pk,
        "paid_hours": 5,
        "amount": money("400.00"),
        "service_starts_on": str(world.course.starts_on),
        "service_ends_on": str(world.course.starts_on + timedelta(days=30)),
        **extra,
    }
    return ok(parent.post("/api/v1/parent/contracts/", body, format="json", **idem()), 201)


def test_a_parent_signs_and_claims_a_refund(world: World) -> None:
    parent = world.client("parent")
    contract = sign_order(parent, world, gift_hours=1)
    assert contract["state"] == "awaiting_payment" and contract["paid"] == money("0.00")
    early = parent.post("/api/v1/parent/refunds/", {"contract": contract["id"]}, format="json", **idem())
    assert early.status_code == 422 and early.json()["error"]["details"]["rule"] == "refund_not_allowed"
    claimed = ok(
        parent.post(
            "/api/v1/parent/refunds/",
            {"contract": world.contract.pk, "note": "搬家"},
            format="json",
            **idem(),
        ),
        201,
    )
    assert claimed["state"] == "claimed" and claimed["contract_number"] == world.contract.number


def test_a_parent_cancels_an_order_before_paying_but_not_a_paid_contract(world: World) -> None:
    parent = world.client("parent")
    order = sign_order(parent, world)
    signed_at = Contract.objects.get(pk=order["id"]).signed_at
    assert datetime.fromisoformat(order["lapses_at"]) == signed_at + timedelta(days=7)
    assert order["cancel_reason"] == ""

    cancelled = ok(parent.post(f"/api/v1/parent/contracts/{order['id']}/cancel/", **idem()))
    assert (cancelled["state"], cancelled["cancel_reason"], cancelled["lapses_at"]) == (
        "cancelled",
        "parent",
        None,
    )
    assert cancelled["paid"] == money("0.00") and cancelled["ended_at"] is not None

    paid = parent.post(f"/api/v1/parent/contracts/{world.contract.pk}/cancel/", **idem())
    assert paid.status_code == 422, paid.content
    assert paid.json()["error"]["details"]["rule"] == "cancel_unpaid_only"
    assert Contract.objects.get(pk=world.contract.pk).state == ContractState.ACTIVE


# --- the custody bank ---------------------------------------------------------------------------------------


def test_the_bank_answers_payout_instructions_of_its_own_accounts(world: World) -> None:
    bank = world.client("bank")
    pending = ok(bank.get("/api/v1/bank/payouts/", {"state": "instructed"}))
    assert [p["reference"] for p in pending["results"]] == [world.payout.reference]
    assert pending["results"][0]["destination_account"].count("*") > 0
    done = ok(
        bank.post(
            f"/api/v1/bank/payouts/{world.payout.reference}/result/",
            {"executed": True, "bank_reference": "B-1"},
            format="json",
            **idem(),
        )
    )
    assert done["state"] == PayoutState.EXECUTED and done["bank_reference"] == "B-1"
    remote = bank.post(
        f"/api/v1/bank/payouts/{world.other_payout.reference}/result/",
        {"executed": True},
        format="json",
        **idem(),
    )
    assert remote.status_code == 404
    accounts = ok(bank.get("/api/v1/bank/accounts/"))
    ours = next(a for a in accounts["results"] if a["id"] == world.institution.pk)
    assert ours["custody_cash"] == money("2320.00") and ours["payable"] == money("0.00")


def test_the_bank_settles_wechat_payments_into_custody(world: World, settings: Any) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    serial = "PUB_KEY_ID_0114232024030400000000000000000009"
    settings.CUSTODY_CHANNELS = {
        **settings.CUSTODY_CHANNELS,
        "wechat": {
            "mchid": "1900000001",
            "api_v3_key": "0123456789abcdefghijABCDEFGHIJkl",
            "public_keys": {
                serial: key.public_key()
                .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
                .decode()
            },
        },
    }
    contract = new_contract(world.course, world.student, paid_hours=5)
    transaction = wechat_transaction(
        mchid="1900000001",
        appid="wx0000000000000001",
        transaction_id="4200000000000000000001",
        out_trade_no=contract.number,
        total_fen=contract.amount_fen,
        success_time=clock.now(),
        openid="o-parent-0001",
    )
    headers, body = build_wechat_notification(
        private_key=key,
        serial=serial,
        api_v3_key="0123456789abcdefghijABCDEFGHIJkl",
        transaction=transaction,
        sent_at=clock.now(),
    )
    http_headers: dict[str, Any] = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()}
    answer = APIClient().post(
        "/api/v1/callbacks/wechat/", data=body, content_type="application/json", **http_headers
    )
    assert answer.status_code == 204, answer.content
    bank = world.client("bank")
    unsettled = ok(bank.get("/api/v1/bank/payments/", {"settled": "false"}))
    assert [p["transaction_id"] for p in unsettled["results"]] == ["4200000000000000000001"]
    settled = ok(
        bank.post(
            "/api/v1/bank/settlements/",
            {"channel": "wechat", "transaction_ids": ["4200000000000000000001"]},
            format="json",
            **idem(),
        )
    )
    assert settled["settled"] == 1 and settled["payments"][0]["settled_at"] is not None
    unknown = bank.post(
        "/api/v1/bank/settlements/",
        {"channel": "wechat", "transaction_ids": ["nope"]},
        format="json",
        **idem(),
    )
    assert unknown.status_code == 404


def statement_csv(world: World, *, account: str, sequence: int = 1) -> bytes:
    day = date(2024, 3, 1)
    line = StatementLine(
        line_number=0,
        serial=f"SN{sequence:06d}",
        booked_on=day,
        value_on=day,
        amount_fen=160_000,
        balance_after_fen=160_000,
        counterparty_name="张伟",
        counterparty_account="6222020200112233445",
        reference=world.contract.number,
        summary="学费 tuition",
    )
    return write_csv(
        Statement(
            account_number=account,
            currency="CNY",
            statement_id=f"ST{sequence:04d}",
            sequence=sequence,
            period_start=day,
            period_end=day,
            opening_balance_fen=0,
            closing_balance_fen=160_000,
            lines=(line,),
        )
    )


def test_the_bank_uploads_statements_of_its_own_accounts(world: World) -> None:
    bank = world.client("bank")
    data = statement_csv(world, account=world.institution.custody_account_number)
    first = ok(
        bank.post(
            "/api/v1/bank/statements/",
            {"file": SimpleUploadedFile("0301.csv", data)},
            format="multipart",
            **idem(),
        ),
        201,
    )
    assert (first["statement_id"], first["line_count"], first["closing_balance"]) == (
        "ST0001",
        1,
        money("1600.00"),
    )
    again = ok(
        bank.post(
            "/api/v1/bank/statements/",
            {"file": SimpleUploadedFile("0301.csv", data)},
            format="multipart",
            **idem(),
        ),
        200,
    )
    assert again["id"] == first["id"]
    remote_file = statement_csv(world, account=world.remote.custody_account_number)
    remote = bank.post(
        "/api/v1/bank/statements/",
        {"file": SimpleUploadedFile("r.csv", remote_file)},
        format="multipart",
        **idem(),
    )
    assert remote.status_code == 404
    junk = bank.post(
        "/api/v1/bank/statements/",
        {"file": SimpleUploadedFile("x.csv", b"not,a,statement\n")},
        format="multipart",
        **idem(),
    )
    assert junk.status_code == 422 and junk.json()["error"]["code"] == "statement_error"
    listed = ok(bank.get("/api/v1/bank/statements/"))
    assert [s["id"] for s in listed["results"]] == [first["id"]]
    # The schema's ``format`` filter is the statement's file format, not DRF's ?format= renderer override.
    csv = ok(bank.get("/api/v1/bank/statements/", {"format": "csv"}))
    assert [s["id"] for s in csv["results"]] == [first["id"]]
    assert ok(bank.get("/api/v1/bank/statements/", {"format": "mt940"}))["count"] == 0


# --- signed callbacks ---------------------------------------------------------------------------------------


def test_a_signed_bank_callback_pays_a_contract_once(world: World, bank_callback: BankCallback) -> None:
    contract = new_contract(world.course, world.student, paid_hours=5)
    signed = bank_callback(contract, txn="BK-HTTP-1")
    client = APIClient()
    first = client.post(
        "/api/v1/callbacks/bank/", data=signed.body, content_type="application/json", **signed.http_headers()
    )
    assert first.status_code == 200 and first.json()["code"] == "SUCCESS"
    assert Contract.objects.get(pk=contract.pk).state == ContractState.ACTIVE
    entries = Entry.objects.count()
    replay = client.post(
        "/api/v1/callbacks/bank/", data=signed.body, content_type="application/json", **signed.http_headers()
    )
    assert replay.status_code == 200 and Entry.objects.count() == entries
    assert Payment.objects.filter(transaction_id="BK-HTTP-1").count() == 1
    assert list(
        CallbackLog.objects.filter(transaction_id="BK-HTTP-1")
        .values_list("outcome", flat=True)
        .order_by("pk")
    ) == [
        "accepted",
        "replay",
    ]


def test_bad_callbacks_get_the_channels_failure_reply(world: World, bank_callback: BankCallback) -> None:
    contract = new_contract(world.course, world.student, paid_hours=5)
    signed = bank_callback(contract, txn="BK-HTTP-2")
    headers = signed.http_headers()
    forged = APIClient().post(
        "/api/v1/callbacks/bank/",
        data=signed.body.replace(b"BK-HTTP-2", b"BK-HTTP-3"),
        content_type="application/json",
        **headers,
    )
    assert forged.status_code == 401 and forged.json()["code"] == "bad_signature"
    wrong_amount = bank_callback(contract, txn="BK-HTTP-4", amount_fen=1)
    refused = APIClient().post(
        "/api/v1/callbacks/bank/",
        data=wrong_amount.body,
        content_type="application/json",
        **wrong_amount.http_headers(),
    )
    assert refused.status_code == 400 and "1 fen" in refused.json()["message"]
    assert Contract.objects.get(pk=contract.pk).state == ContractState.AWAITING_PAYMENT
    unconfigured = APIClient().post(
        "/api/v1/callbacks/alipay/", data=b"a=b", content_type="application/x-www-form-urlencoded"
    )
    assert unconfigured.status_code == 404 and unconfigured.json()["error"]["code"] == "not_found"
    stale_headers = {**headers, "HTTP_X_BANK_KEY_ID": BANK_KEY_ID + "-retired"}
    unknown_key = APIClient().post(
        "/api/v1/callbacks/bank/", data=signed.body, content_type="application/json", **stale_headers
    )
    assert unknown_key.status_code == 401 and unknown_key.json()["code"] == "unknown_key"


def test_a_regulator_lists_refunds_past_their_payout_deadline(world: World) -> None:
    finance, regulator = world.client("finance"), world.client("regulator")
    ok(
        finance.post(
            f"/api/v1/institution/refunds/{world.refund.pk}/answer/",
            {"approve": True},
            format="json",
            **idem(),
        )
    )
    assert ok(regulator.get("/api/v1/regulator/refunds/", {"overdue": "true"}))["count"] == 0
    clock.advance(timedelta(days=30))
    overdue = ok(regulator.get("/api/v1/regulator/refunds/", {"overdue": "true"}))
    assert [r["id"] for r in overdue["results"]] == [world.refund.pk]
    assert ok(regulator.get("/api/v1/regulator/overview/"))["refunds_overdue"] == 1
    on_time = ok(
        regulator.get(
            "/api/v1/regulator/refunds/", {"overdue": "false", "institution": str(world.institution.pk)}
        )
    )
    assert world.refund.pk not in {r["id"] for r in on_time["results"]}


def test_the_balance_fast_path_renders_what_its_serializer_would() -> None:
    from custody.api.views.parents import ParentBalanceView, balance_json
    from custody.selectors.holdings import Holdings

    figures = Holdings(3, 120_050, 99_999, 1, 10_001, 10_050, 7)
    assert balance_json(figures) == ParentBalanceView.OutputSerializer(figures).data
    negative = Holdings(1, 0, 0, 0, -5, 5, 0)
    assert balance_json(negative)["consumed"] == {"amount": "-0.05", "currency": "CNY"}
    assert balance_json(negative) == ParentBalanceView.OutputSerializer(negative).data


def test_the_bulk_lesson_answer_renders_what_its_serializer_would(world: World) -> None:
    from custody.api.views.institutions import InstitutionLessonBulkView, bulk_lessons_json

    institution_id = world.institution.pk
    lessons = [
        Lesson(
            id=7, idempotency_key=f"i{institution_id}:k-1", contract_id=3, state="pending", amount_fen=8000
        ),
        Lesson(
            id=8, idempotency_key=f"i{institution_id}:k-2", contract_id=3, state="confirmed", amount_fen=5
        ),
    ]
    rendered = bulk_lessons_json(institution_id, lessons)
    assert rendered["lessons"][1] == {
        "id": 8,
        "key": "k-2",
        "contract": 3,
        "state": "confirmed",
        "amount": {"amount": "0.05", "currency": "CNY"},
    }
    rows = [
        {**row, "amount": lesson.amount_fen} for row, lesson in zip(rendered["lessons"], lessons, strict=True)
    ]
    assert InstitutionLessonBulkView.OutputSerializer({"recorded": 2, "lessons": rows}).data == rendered


@pytest.mark.parametrize(
    ("row", "field", "accepted"),
    [
        ({"contract": "CONTRACT", "key": "k"}, None, True),  # an id as a string: DRF converts it
        ({"contract": "CONTRACT", "key": "k", "hours": "2"}, None, True),
        ({"contract": True, "key": "k"}, "contract", False),
        ({"contract": 2**63, "key": "k"}, "contract", False),
        ({"contract": "CONTRACT", "key": "k", "hours": 13}, "hours", False),
        ({"contract": "CONTRACT", "key": "k", "hours": None}, "hours", False),
        ({"contract": "CONTRACT", "key": "has space"}, "key", False),
        ({"contract": "CONTRACT", "key": "k", "held_at": "yesterday"}, "held_at", False),
        ({"contract": "CONTRACT"}, "key", False),
    ],
)
def test_bulk_rows_outside_the_plain_shape_get_drf_s_own_validation(
    world: World, row: dict[str, Any], field: str | None, accepted: bool
) -> None:
    from custody.api.views.institutions import InstitutionLessonBulkView, LessonInput

    held = (clock.now() - timedelta(hours=1)).isoformat()
    plain = {"contract": world.contract.pk, "held_at": held, "key": "plain-1"}
    odd = {"held_at": held, **{k: (world.contract.pk if v == "CONTRACT" else v) for k, v in row.items()}}
    serializer = InstitutionLessonBulkView.InputSerializer(data={"lessons": [plain, odd]})
    assert serializer.is_valid() is accepted, serializer.errors
    if accepted:
        by_drf = [LessonInput(data=one) for one in (plain, odd)]
        assert all(one.is_valid() for one in by_drf)
        assert serializer.validated_data["lessons"] == [dict(one.validated_data) for one in by_drf]
        assert serializer.validated_data["lessons"][0]["held_at"].tzinfo is not None
    else:
        assert set(serializer.errors["lessons"]) == {1} and field in serializer.errors["lessons"][1]

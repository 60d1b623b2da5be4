"""A whole term over HTTP, every role through the API (the background jobs called as Celery would run them):

a regulator sets the policy; two institutions publish courses; three parents sign and pay through the custody
bank's signed callback; lessons are recorded in bulk, confirmed, disputed (one voided by the institution, one
released by the regulator) and confirmed by silence; refunds are claimed and answered (approved, rejected,
approved by silence); release payouts run; one institution closes abnormally; the bank executes every payout
and refund instruction. Then ``verify_ledger`` passes, every institution's custody invariant holds, and every
parent's held value is what they paid minus what they consumed and got back — each figure counted by the test
from what it did, not read back from the same ledger totals.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from custody import tasks
from custody.models import Contract, StaffRole
from custody.services.access import grant_bank_operator, grant_institution_staff, grant_regulator
from custody.services.institutions import register_institution
from custody.services.people import register_guardian
from custody.services.policy import ensure_jurisdiction
from ledger import clock
from tests.custody.api.conftest import BANK_X, BankCallback, client_for, idem, new_user
from tests.custody.conftest import unique_phone, valid_id_number

pytestmark = pytest.mark.django_db


def fen(money: dict[str, str]) -> int:
    assert money["currency"] == "CNY"
    return int(Decimal(money["amount"]) * 100)


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.content[:600])
    return response.json()


class Term:
    """The people of the term and their API clients."""

    def __init__(self) -> None:
        self.jurisdiction = ensure_jurisdiction(code="310106", name="静安区")
        self.regulator_user = new_user("e2e-regulator")
        grant_regulator(user=self.regulator_user, jurisdiction=self.jurisdiction)
        self.bank_user = new_user("e2e-bank")
        grant_bank_operator(user=self.bank_user, bank_name=BANK_X)
        self.regulator = client_for(self.regulator_user)
        self.bank = client_for(self.bank_user)
        self.institutions: dict[str, Any] = {}
        self.managers: dict[str, APIClient] = {}
        self.teachers: dict[str, APIClient] = {}
        self.finance: dict[str, APIClient] = {}
        for n, name in enumerate(("晨光学科培训中心", "远航学科培训中心")):
            institution = register_institution(
                jurisdiction=self.jurisdiction,
                name=name,
                licence_number=f"教民E2E{n:08d}",
                category="subject",
                custody_bank_name=BANK_X,
                custody_account_number=f"3001{n:012d}",
                settlement_account_number=f"4002{n:012d}",
            )
            key = "A" if n == 0 else "B"
            self.institutions[key] = institution
            for role, clients in (
                (StaffRole.MANAGER, self.managers),
                (StaffRole.TEACHER, self.teachers),
                (StaffRole.FINANCE, self.finance),
            ):
                user = new_user(f"e2e-{key}-{role}")
                grant_institution_staff(user=user, institution=institution, role=role)
                clients[key] = client_for(user)
        self.parents: dict[str, APIClient] = {}
        for key in ("P1", "P2", "P3"):
            user = new_user(f"e2e-{key}")
            register_guardian(
                name="家长", phone=unique_phone(), id_number=valid_id_number("19800101"), user=user
            )
            self.parents[key] = client_for(user)


def test_a_whole_term(bank_callback: BankCallback) -> None:
    term = Term()
    paid: dict[str, int] = defaultdict(int)

    # 1. The regulator sets the policy: 7 working days to confirm a lesson, 5 to answer a refund claim.
    policy = ok(
        term.regulator.post(
            "/api/v1/regulator/policy/",
            {
                "changes": {"lesson_auto_confirm_working_days": 7, "refund_answer_working_days": 5},
                "note": "本学期",
            },
            format="json",
            **idem(),
        ),
        201,
    )
    assert policy["version"] == 2

    # 2. Both institutions publish a course starting in a week.
    courses = {}
    for key in ("A", "B"):
        courses[key] = ok(
            term.managers[key].post(
                "/api/v1/institution/courses/",
                {
                    "name": f"数学{key}",
                    "subject": "数学",
                    "category": "subject",
                    "class_size_band": "medium",
                    "mode": "offline",
                    "price_per_hour": {"amount": "60.00", "currency": "CNY"},
                    "starts_on": str(clock.now().date() + timedelta(days=7)),
                },
                format="json",
                **idem(),
            ),
            201,
        )
    listed = ok(term.parents["P1"].get("/api/v1/parent/courses/", {"subject": "数学"}))
    assert {c["id"] for c in listed["results"]} >= {courses["A"]["id"], courses["B"]["id"]}

    # 3. Parents add their children, sign and pay through the bank's signed callback.
    plan = [("P1", "A", 10), ("P1", "A", 8), ("P2", "A", 12), ("P2", "B", 10), ("P3", "B", 6)]
    students: dict[str, int] = {}
    contracts: list[tuple[str, str, dict[str, Any]]] = []
    for parent, where, hours in plan:
        if parent not in students:
            students[parent] = ok(
                term.parents[parent].post(
                    "/api/v1/parent/students/",
                    {"name": "学生", "id_number": valid_id_number("20120101"), "grade": "初一"},
                    format="json",
                    **idem(),
                ),
                201,
            )["id"]
        course = courses[where]
        contract = ok(
            term.parents[parent].post(
                "/api/v1/parent/contracts/",
                {
                    "course": course["id"],
                    "student": students[parent],
                    "paid_hours": hours,
                    "amount": {"amount": f"{60 * hours}.00", "currency": "CNY"},
                    "service_starts_on": course["starts_on"],
                    "service_ends_on": str(clock.now().date() + timedelta(days=60)),
                },
                format="json",
                **idem(),
            ),
            201,
        )
        signed = bank_callback(Contract.objects.get(pk=contract["id"]))
        ack = APIClient().post(
            "/api/v1/callbacks/bank/",
            data=signed.body,
            content_type="application/json",
            **signed.http_headers(),
        )
        assert ack.status_code == 200 and ack.json()["code"] == "SUCCESS"
        paid[parent] += 6000 * hours
        contracts.append((parent, where, contract))
    for parent, _, contract in contracts:
        detail = ok(term.parents[parent].get(f"/api/v1/parent/contracts/{contract['id']}/"))
        assert detail["state"] == "active" and fen(detail["paid"]) == fen(contract["amount"])

    # 4. The course starts; teachers record three lessons on every contract, in bulk.
    clock.advance(timedelta(days=8))
    lessons_of: dict[int, list[dict[str, Any]]] = {}
    for where in ("A", "B"):
        rows = [
            {
                "contract": c["id"],
                "held_at": (clock.now() - timedelta(hours=n)).isoformat(),
                "key": f"{c['id']}-{n}",
            }
            for _, w, c in contracts
            if w == where
            for n in (3, 2, 1)
        ]
        recorded = ok(
            term.teachers[where].post(
                "/api/v1/institution/lessons/bulk/", {"lessons": rows}, format="json", **idem()
            ),
            201,
        )
        assert recorded["recorded"] == len(rows)
        for row in recorded["lessons"]:
            lessons_of.setdefault(row["contract"], []).append(row)
    (p1a, p1a2, p2a, p2b, p3b) = (c for _, _, c in contracts)

    # 5. Parents confirm and dispute; the institution upholds one dispute, the regulator releases another.
    p1 = term.parents["P1"]
    ok(p1.post(f"/api/v1/parent/lessons/{lessons_of[p1a['id']][0]['id']}/confirm/", format="json", **idem()))
    disputed_a = lessons_of[p1a["id"]][1]["id"]
    ok(
        p1.post(
            f"/api/v1/parent/lessons/{disputed_a}/dispute/",
            {"reason": "请假未上 absent"},
            format="json",
            **idem(),
        )
    )
    ok(
        term.parents["P2"].post(
            f"/api/v1/parent/lessons/{lessons_of[p2b['id']][0]['id']}/confirm/", format="json", **idem()
        )
    )
    disputed_b = lessons_of[p3b["id"]][0]["id"]
    ok(
        term.parents["P3"].post(
            f"/api/v1/parent/lessons/{disputed_b}/dispute/", {"reason": "时长不足"}, format="json", **idem()
        )
    )
    voided = ok(
        term.teachers["A"].post(
            f"/api/v1/institution/lessons/{disputed_a}/resolve/",
            {"release": False, "note": "确认请假"},
            format="json",
            **idem(),
        )
    )
    assert voided["state"] == "voided"
    released = ok(
        term.regulator.post(
            f"/api/v1/regulator/disputes/{disputed_b}/resolve/",
            {"release": True, "note": "课已上"},
            format="json",
            **idem(),
        )
    )
    assert released["state"] == "confirmed"

    # 6. Refunds: P2 claims on its A contract (approved by the institution), P1 on its second contract
    #    (rejected, then claimed again and left unanswered: approved by silence).
    p2_refund = ok(
        term.parents["P2"].post(
            "/api/v1/parent/refunds/", {"contract": p2a["id"], "note": "转学"}, format="json", **idem()
        ),
        201,
    )
    ok(
        term.finance["A"].post(
            f"/api/v1/institution/refunds/{p2_refund['id']}/answer/",
            {"approve": True},
            format="json",
            **idem(),
        )
    )
    first_claim = ok(
        p1.post("/api/v1/parent/refunds/", {"contract": p1a2["id"]}, format="json", **idem()), 201
    )
    rejected = ok(
        term.finance["A"].post(
            f"/api/v1/institution/refunds/{first_claim['id']}/answer/",
            {"approve": False, "reason": "已排课 scheduled"},
            format="json",
            **idem(),
        )
    )
    assert rejected["state"] == "rejected"
    ok(
        p1.post(
            "/api/v1/parent/refunds/", {"contract": p1a2["id"], "note": "再次申请"}, format="json", **idem()
        ),
        201,
    )

    # 7. Two weeks later: silence confirms the pending lessons and approves the unanswered claim.
    clock.advance(timedelta(days=14))
    assert tasks.approve_unanswered_refunds() == 1
    assert tasks.auto_confirm_lessons() > 0
    tasks.instruct_refund_payouts_task()
    assert tasks.run_release_payouts() >= 1

    # 8. Institution B closes abnormally (跑路): frozen at once, every contract refunded through the bank.
    closure = ok(
        term.regulator.post(
            f"/api/v1/regulator/institutions/{term.institutions['B'].pk}/closure/",
            {"mode": "abnormal", "reason": "负责人失联 the owner disappeared"},
            format="json",
            **idem(),
        ),
        201,
    )
    done = tasks.run_closure_task(closure["id"])
    assert done["contracts_done"] == 2

    # 9. The bank executes every instruction at its accounts.
    instructed = ok(term.bank.get("/api/v1/bank/payouts/", {"state": "instructed", "page_size": "200"}))[
        "results"
    ]
    kinds = {p["kind"] for p in instructed}
    assert kinds == {"release", "refund"}
    for payout in instructed:
        result = ok(
            term.bank.post(
                f"/api/v1/bank/payouts/{payout['reference']}/result/",
                {"executed": True, "bank_reference": f"BANK-{payout['id']}"},
                format="json",
                **idem(),
            )
        )
        assert result["state"] == "executed"
    assert ok(term.bank.get("/api/v1/bank/payouts/", {"state": "instructed"}))["count"] == 0

    # 10. The books: the ledger verifies, every institution's custody invariant holds…
    call_command("verify_ledger")
    for institution in term.institutions.values():
        detail = ok(term.regulator.get(f"/api/v1/regulator/institutions/{institution.pk}/"))
        assert detail["invariant"]["holds"], detail["invariant"]
    assert ok(term.regulator.get(f"/api/v1/regulator/institutions/{term.institutions['B'].pk}/"))[
        "prepaid"
    ] == {
        "amount": "0.00",
        "currency": "CNY",
    }

    # …and every parent's held value is what they paid, minus what they consumed and got back.
    for parent, client in term.parents.items():
        lessons = ok(client.get("/api/v1/parent/lessons/", {"page_size": "200"}))["results"]
        consumed = sum(fen(lesson["amount"]) for lesson in lessons if lesson["state"] == "confirmed")
        refunds = ok(client.get("/api/v1/parent/refunds/", {"page_size": "200"}))["results"]
        refunded = sum(fen(r["amount"]) for r in refunds if r["state"] in ("approved", "instructed", "paid"))
        assert all(r["state"] in ("paid", "rejected") for r in refunds), refunds
        balance = ok(client.get("/api/v1/parent/balance/"))
        assert fen(balance["paid"]) == paid[parent]
        assert fen(balance["held"]) == paid[parent] - consumed - refunded, (
            parent,
            balance,
            consumed,
            refunded,
        )
        assert fen(balance["refund_paid"]) == refunded
        assert fen(balance["consumed"]) == consumed
    assert sum(paid.values()) == 6000 * sum(hours for _, _, hours in plan)

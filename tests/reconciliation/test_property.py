"""A property: random ledger activity over a few days, the simulated bank's statements in a random format,
and random faults injected into the bank's book. After importing (retrying what arrived out of sequence) and
reconciling everything, the breaks are exactly the faults: each fault is found as its own break, and nothing
clean is flagged. A settlement a day late is found in the tie-out of its day (in transit) and matched the
next day, without a break (it is within its settlement window)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from custody.models import Contract
from reconciliation.formats import StatementError
from reconciliation.models import Break, BreakKind, BreakState, TieOut, TieOutStatus
from reconciliation.services.imports import import_statement
from reconciliation.services.runs import reconcile_statement
from reconciliation.simulator import AppliedFault, Delivery, Fault, FaultKind
from tests.reconciliation.conftest import DAY1, World

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

BOOKING_FAULTS = [
    FaultKind.MISSING_LINE,
    FaultKind.DUPLICATE_LINE,
    FaultKind.LATE_SETTLEMENT,
    FaultKind.AMOUNT_OFF,
]


@dataclass
class Plan:
    days: list[list[str]]  # each activity day: actions in order
    formats: str


actions = st.sampled_from(["pay_bank", "pay_bank", "pay_wechat", "release", "refund"])
plans = st.builds(
    Plan,
    days=st.lists(st.lists(actions, min_size=1, max_size=4), min_size=1, max_size=3),
    formats=st.sampled_from(["csv", "xlsx", "camt053", "mt940"]),
)


def act(world: World, action: str, paid: list[Contract], consumed: set[int]) -> None:
    school = world.institutions[0]
    if action == "pay_bank":
        contract = world.contract(school)
        world.pay_bank(contract)
        paid.append(contract)
    elif action == "pay_wechat":
        world.pay_wechat(world.contract(school))
    elif action == "release":
        fresh = [c for c in paid if c.pk not in consumed]
        if fresh:
            consumed.add(fresh[0].pk)
            world.consume(fresh[0], 2)
            world.release(school)
    elif action == "refund" and paid:
        world.refund(paid.pop(0))


def deliver(deliveries: list[Delivery]) -> None:
    """Import what arrives, in order. A statement refused as out of sequence waits; after each import the
    waiting ones are tried again, oldest period first (what an operator does when the missing one comes)."""

    def imported(delivery: Delivery) -> bool:
        try:
            statement = import_statement(data=delivery.data, filename=delivery.filename).statement
        except StatementError as error:
            assert error.rule == "continuity", error
            return False
        reconcile_statement(statement=statement)
        return True

    waiting: list[Delivery] = []
    for delivery in deliveries:
        if not imported(delivery):
            waiting.append(delivery)
            continue
        retried = True
        while retried:
            retried = False
            for held in sorted(waiting, key=lambda d: d.day):
                if imported(held):
                    waiting.remove(held)
                    retried = True
                    break
    assert not waiting, [d.filename for d in waiting]


def found(item: Break) -> tuple[str, str]:
    if item.line is not None:
        return item.kind, item.line.serial
    if item.kind == BreakKind.UNMATCHED_ENTRY:
        return item.kind, next(r for r in item.details["references"] if not r.startswith("HT"))
    if item.kind == BreakKind.AMOUNT_DIFFERENCE:
        assert item.match is not None
        return item.kind, item.match.key.split(":", 1)[1]
    return item.kind, item.details.get("statement_id", "")


def expected(fault: AppliedFault, statement_ids: dict[Any, str]) -> tuple[str, str] | None:
    return {
        FaultKind.MISSING_LINE: (BreakKind.UNMATCHED_ENTRY, fault.target),
        FaultKind.DUPLICATE_LINE: (BreakKind.DUPLICATE_LINE, fault.serial),
        FaultKind.AMOUNT_OFF: (BreakKind.AMOUNT_DIFFERENCE, fault.target),
        FaultKind.BANK_FEE: (BreakKind.FEE, fault.serial),
        FaultKind.UNKNOWN_REFERENCE: (BreakKind.UNMATCHED_LINE, fault.serial),
        FaultKind.OUT_OF_SEQUENCE: (
            BreakKind.SEQUENCE_GAP,
            statement_ids.get(fault.day + timedelta(days=1), ""),
        ),
        FaultKind.LATE_SETTLEMENT: None,
    }[fault.kind]


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=plans, data=st.data())
def test_every_injected_fault_is_found_and_nothing_clean_is_flagged(
    world_factory: Any, plan: Plan, data: st.DataObject
) -> None:
    with transaction.atomic():
        seed = data.draw(st.integers(0, 2**16), label="seed")
        world: World = world_factory(1, seed=seed)
        paid: list[Contract] = []
        consumed: set[int] = set()
        days = [DAY1 + timedelta(days=n) for n in range(len(plan.days) + 1)]  # and a quiet day to close
        for index, day in enumerate(days):
            with world.bank.day(day):
                for action in plan.days[index] if index < len(plan.days) else []:
                    act(world, action, paid, consumed)
                world.bank.execute_instructions()
                world.bank.settle_channels()
                singles = [b for b in world.bank.bookings_today() if not b.batch and not b.late]
                kinds = data.draw(
                    st.lists(st.sampled_from(list(FaultKind)), max_size=3, unique=True), label=f"faults {day}"
                )
                targeted = 0
                for kind in kinds:
                    if kind in BOOKING_FAULTS:
                        if (
                            targeted >= len(singles)
                            or index == len(days) - 1
                            and kind == FaultKind.LATE_SETTLEMENT
                        ):
                            continue
                        targeted += 1
                    if kind == FaultKind.OUT_OF_SEQUENCE and (index == 0 or index == len(days) - 1):
                        continue  # the first statement has nothing before it; the last nothing after it
                    world.bank.fault(
                        Fault(
                            kind,
                            amount_fen=data.draw(st.integers(1, 9_999), label="amount")
                            if kind in (FaultKind.BANK_FEE, FaultKind.UNKNOWN_REFERENCE)
                            else 0,
                        )
                    )
        deliver(world.bank.deliveries(fmt=plan.formats))

        statement_ids = {day: world.bank.statement(world.institutions[0], day).statement_id for day in days}
        applied = world.bank.applied
        for fault in applied:
            event(f"fault {fault.kind}")
        wanted = sorted(e for fault in applied if (e := expected(fault, statement_ids)) is not None)
        breaks = list(Break.objects.select_related("line", "match"))
        assert sorted(found(b) for b in breaks) == wanted, (applied, [b.explanation for b in breaks])
        for item in breaks:
            gap = item.kind == BreakKind.SEQUENCE_GAP
            assert item.state == (BreakState.RESOLVED if gap else BreakState.OPEN), item
        for fault in applied:
            if fault.kind == FaultKind.LATE_SETTLEMENT:
                tie = TieOut.objects.get(day=fault.day)
                assert tie.details["categories"]["in_transit_entries"]["count"] >= 1
        assert not TieOut.objects.filter(status=TieOutStatus.UNEXPLAINED).exists()
        if not applied:
            assert set(TieOut.objects.values_list("status", flat=True)) == {TieOutStatus.TIED}
        transaction.set_rollback(True)

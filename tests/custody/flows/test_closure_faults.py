"""Fault test of the closure job (issue 3): the abnormal closure run, in a real process, is SIGKILLed at 20
random moments and started again each time; at the end every contract is refunded exactly once, to the fen
(DESIGN.md section 6, invariant 10), and both the ledger and verify_custody verify.

No hook in the production code: a helper process sets Django up once and forks one child per run; the child
calls ``run_closure`` and nothing else. The test watches the closure's committed progress
(``contracts_done``) from its own connection, waits for a random number (0 to 2) of committed batches and
then a random fraction of a batch's measured duration, and SIGKILLs the child wherever it is: starting,
between batches, voiding lessons, posting refunds, writing payout instructions, committing, finishing. The
random choices come from one seed (``CLOSURE_FAULT_SEED``, default below), printed on failure so a failing
schedule can be replayed.

After each kill the partial state is checked too: a contract is either untouched (active, its value still
in ``prepaid:c``) or done (one closure refund for exactly its value, ``prepaid:c`` zero), never in between.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Q, Sum

from custody.models import (
    Closure,
    ClosureState,
    Contract,
    ContractState,
    Lesson,
    LessonState,
    PayoutInstruction,
    PayoutState,
    Refund,
    RefundReason,
    RefundState,
)
from custody.selectors.balances import contract_position, custody_invariant
from custody.services.closures import order_closure
from custody.services.lessons import NewLesson, confirm_lesson, dispute_lesson, record_lessons
from custody.services.refunds import claim_refund
from custody.verification import verify_custody
from ledger import clock, verification
from tests.custody.conftest import ContractFactory
from tests.custody.flows.conftest import available, cash, posted, prepaid, refund_payable

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

KILLS = 20
CONTRACTS = 40
BATCH_SIZE = 1
SEED = int(os.environ.get("CLOSURE_FAULT_SEED", "20261122"))

# Sets Django up once, then for each "closure_id batch_size" line on stdin forks a child that runs the
# closure and exits; reports "child <pid>" at once and "exit <code>" when the child is gone (-9: SIGKILL).
RUNNER = """
import os, sys, traceback
import django
django.setup()
from django.db import connections
from custody.models import Closure
from custody.services.closures import run_closure
print("ready", flush=True)
for line in sys.stdin:
    closure_id, batch_size = map(int, line.split())
    connections.close_all()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            run_closure(closure=Closure.objects.get(pk=closure_id), batch_size=batch_size)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        os._exit(code)
    print(f"child {pid}", flush=True)
    _, status = os.waitpid(pid, 0)
    print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)
"""


@dataclass
class Runner:
    """The helper process: ``start`` forks a closure run, ``exit_code`` waits for it."""

    process: subprocess.Popen[str]
    stdin: IO[str]
    stdout: IO[str]
    stderr: IO[str]

    def _line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"the closure runner said nothing for {timeout} s")
        line = self.stdout.readline()
        if not line:
            raise AssertionError(f"the closure runner died: {self.stderr.read()[-3000:]}")
        return line.strip()

    def wait_ready(self) -> None:
        assert self._line(120) == "ready"

    def start(self, closure_id: int) -> int:
        self.stdin.write(f"{closure_id} {BATCH_SIZE}\n")
        self.stdin.flush()
        word, pid = self._line(30).split()
        assert word == "child"
        return int(pid)

    def finished(self) -> bool:
        """Has the child exited (its "exit" line is waiting)?"""
        ready, _, _ = select.select([self.stdout], [], [], 0)
        return bool(ready)

    def exit_code(self) -> int:
        word, code = self._line(120).split()
        assert word == "exit"
        return int(code)


@pytest.fixture
def runner() -> Iterator[Runner]:
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "config.settings"}
    process = subprocess.Popen(
        [sys.executable, "-c", RUNNER],
        env=env,
        cwd=settings.BASE_DIR,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdin and process.stdout and process.stderr
    try:
        yield Runner(process, process.stdin, process.stdout, process.stderr)
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


@pytest.fixture
def no_broker(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The abnormal order enqueues its run after commit: keep it off the broker (the test runs it)."""
    from custody import tasks

    enqueued: list[int] = []
    monkeypatch.setattr(tasks.run_closure_task, "delay", enqueued.append)
    return enqueued


def record(contract: Contract, count: int, key: str) -> list[Lesson]:
    return record_lessons(
        lessons=[
            NewLesson(contract=contract, held_at=clock.now(), idempotency_key=f"{key}{contract.pk}-{n}")
            for n in range(count)
        ]
    )


def build_school(
    rng: random.Random, make_contract: ContractFactory, make_student: Callable, pay: Callable
) -> tuple[dict[int, int], Contract]:
    """``CONTRACTS`` paid contracts at one custody-mode institution, each with a random mix of confirmed,
    pending and disputed lessons (some fully consumed, some claimed for a refund not yet answered), plus
    one never paid. Returns what each contract's closure refund must be, in fen (0: no refund), and the
    unpaid contract."""
    expected: dict[int, int] = {}
    for n in range(CONTRACTS):
        paid_hours = rng.choice((2, 4, 10, 20))
        contract = pay(make_contract(student=make_student(), paid_hours=paid_hours))
        held = record(contract, rng.randint(0, paid_hours), key="F")
        for lesson in held:
            fate = rng.random()
            if fate < 0.5:
                confirm_lesson(lesson=lesson)
            elif fate < 0.7:
                dispute_lesson(lesson=lesson, reason="未上课 not held")
        if n % 7 == 3 and held and len(held) < paid_hours:
            claim_refund(contract=contract, idempotency_key=f"claim-{contract.pk}")
        position = contract_position(contract)
        expected[contract.pk] = position.paid_fen - position.released_fen  # pending and disputed are voided
    unpaid = make_contract(student=make_student())
    return expected, unpaid


def progress(closure_id: int) -> tuple[str, int]:
    closure = Closure.objects.get(pk=closure_id)
    return closure.state, closure.contracts_done


def check_partial_state(expected: dict[int, int], active: set[int], closure_id: int) -> int:
    """Every contract active when the closure began is either untouched or completely refunded, whatever the
    moment of the kill. Returns how many are done.

    Read in one snapshot: a killed child's server backend can still be finishing a COMMIT it had received,
    and that commit must not land between two of these reads (it would look half done)."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        return _check_partial_state(expected, active, closure_id)


def _check_partial_state(expected: dict[int, int], active: set[int], closure_id: int) -> int:
    closure_refunds = {
        row["contract_id"]: row
        for row in Refund.objects.filter(reason=RefundReason.CLOSURE)
        .values("contract_id")
        .annotate(n=Count("pk"), total=Sum("amount_fen"))
    }
    done = 0
    for contract in Contract.objects.filter(pk__in=expected).select_related("prepaid_account"):
        refund = closure_refunds.get(contract.pk)
        if contract.pk not in active:  # finished before the closure (every hour consumed)
            assert (refund, posted(prepaid(contract)), expected[contract.pk]) == (None, 0, 0)
            continue
        if contract.state == ContractState.ACTIVE:
            assert refund is None, (contract.pk, refund)
            assert posted(prepaid(contract)) > 0 or expected[contract.pk] == 0
            continue
        done += 1
        assert contract.state in (ContractState.REFUNDED, ContractState.COMPLETED), contract.state
        assert posted(prepaid(contract)) == 0, contract.pk
        if expected[contract.pk] == 0:
            assert refund is None, (contract.pk, refund)
        else:
            assert refund is not None and refund["n"] == 1, (contract.pk, refund)
            assert refund["total"] == expected[contract.pk], (contract.pk, refund, expected[contract.pk])
    closure = Closure.objects.get(pk=closure_id)
    assert closure.contracts_done == done
    assert closure.refunded_fen == sum(expected[cid] for cid in closure_refunds)
    return done


def test_the_closure_job_killed_20_times_at_random_points_refunds_each_contract_once(
    make_contract: ContractFactory,
    make_student: Callable,
    pay: Callable,
    runner: Runner,
    no_broker: list[int],
) -> None:
    rng = random.Random(SEED)
    expected, unpaid = build_school(rng, make_contract, make_student, pay)
    institution = unpaid.institution
    closure = order_closure(institution=institution, mode="abnormal", reason="负责人失联 owner unreachable")
    assert no_broker == [closure.pk]
    active = set(
        Contract.objects.filter(pk__in=expected, state=ContractState.ACTIVE).values_list("pk", flat=True)
    )
    assert len(active) >= CONTRACTS * 3 // 4
    runner.wait_ready()

    # The delay after the awaited commits is a random fraction of one batch's duration, measured as the runs
    # go (so the kills spread over the work on a quiet machine and a loaded one alike).
    batch_seconds = 0.02
    schedule: list[tuple[int, float, int, int]] = []  # batches waited, delay, exit code, contracts done
    for _ in range(KILLS):
        batches = rng.choice((0, 0, 1, 2))
        fraction = rng.random()
        _, done_before = progress(closure.pk)
        pid = runner.start(closure.pk)
        deadline = time.monotonic() + 60
        seen, seen_at = done_before, None
        while seen < done_before + batches * BATCH_SIZE and not runner.finished():
            assert time.monotonic() < deadline, f"seed {SEED}: no progress"
            time.sleep(0.002)
            done_now = progress(closure.pk)[1]
            if done_now != seen:
                now = time.monotonic()
                if seen_at is not None:
                    batch_seconds = (batch_seconds + (now - seen_at) * BATCH_SIZE / (done_now - seen)) / 2
                seen, seen_at = done_now, now
        delay = fraction * batch_seconds
        time.sleep(delay)
        with contextlib.suppress(ProcessLookupError):  # it had already finished
            os.kill(pid, signal.SIGKILL)
        code = runner.exit_code()
        assert code in (-signal.SIGKILL, 0), f"seed {SEED}: the run failed with {code}"
        done = check_partial_state(expected, active, closure.pk)
        schedule.append((batches, round(delay, 4), code, done))

    # The kills landed during the work, not after it: most runs died, and progress was made across them.
    killed = [s for s in schedule if s[2] == -signal.SIGKILL]
    assert len(killed) >= KILLS * 3 // 4, f"seed {SEED}: {schedule}"
    assert any(0 < s[3] < len(active) for s in killed), f"seed {SEED}: no kill mid-closure: {schedule}"

    runner.start(closure.pk)
    assert runner.exit_code() == 0
    runner.start(closure.pk)  # once more: a completed closure changes nothing
    assert runner.exit_code() == 0

    finished = Closure.objects.get(pk=closure.pk)
    assert finished.state == ClosureState.COMPLETED, f"seed {SEED}: {schedule}"
    assert check_partial_state(expected, active, closure.pk) == len(active)
    with_value = {cid: amount for cid, amount in expected.items() if amount > 0}
    assert finished.refunded_fen == sum(with_value.values())
    # Invariant 10: every prepaid:c zero, exactly one closure refund per contract with value, to the fen,
    # each with exactly one live payout instruction (backed by one hold) for that amount.
    for contract in Contract.objects.filter(pk__in=expected):
        assert posted(prepaid(contract)) == 0
        refunds = list(Refund.objects.filter(contract=contract, reason=RefundReason.CLOSURE))
        if contract.pk not in with_value:
            assert refunds == []
            continue
        (refund,) = refunds
        assert (refund.state, refund.amount_fen) == (RefundState.INSTRUCTED, with_value[contract.pk])
        assert posted(refund_payable(contract)) == with_value[contract.pk]
        assert available(refund_payable(contract)) == 0
        (payout,) = PayoutInstruction.objects.filter(refund=refund)
        assert (payout.state, payout.amount_fen) == (PayoutState.INSTRUCTED, refund.amount_fen)
    claims = Refund.objects.filter(reason=RefundReason.PARENT_CLAIM)
    assert not claims.filter(~Q(state=RefundState.REJECTED)).exists()  # superseded by the closure
    assert Lesson.objects.filter(state__in=(LessonState.PENDING, LessonState.DISPUTED)).count() == 0
    assert Contract.objects.get(pk=unpaid.pk).state == ContractState.CANCELLED
    held_for_refunds = PayoutInstruction.objects.filter(state=PayoutState.INSTRUCTED).aggregate(
        total=Sum("amount_fen")
    )["total"]
    assert posted(cash(institution)) - available(cash(institution)) == held_for_refunds
    assert custody_invariant(institution).holds
    report = verification.verify()
    assert report.ok, report.findings
    custody_report = verify_custody()  # invariants 3, 4, 6, 7 and 10, set-based
    assert custody_report.ok, custody_report.findings

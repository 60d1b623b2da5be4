"""Benchmarks of the custody flows on PostgreSQL, through the domain's services.

- ``custody.contract_signups_per_s``: contracts signed (every signing rule checked, anti-splitting sums
  included) and paid through a signed custody-bank callback, one after the other;
- ``custody.closure_10k_s``: an institution with 10,000 open contracts (each with confirmed and pending
  lessons) closes abnormally: seconds from the order until every refund is posted and instructed;
- ``custody.autoconfirm_100k_s``: 100,000 overdue lessons (500 institutions × 20 contracts × 10) confirmed by
  silence;
- ``custody.release_100k_s``: the release run over those 100,000 confirmed lessons: 500 institutions' payable
  money batched into 500 payout instructions (each a hold on the custody account).

The signups benchmark goes through ``sign_contract`` and ``receive_callback`` (real Ed25519-signed bank
callbacks) for every contract. The other three need 10,000 paid contracts each, which that path cannot build
in reasonable time on this shared machine, so their setup writes in bulk exactly what those two services
write (``_contracts_each``: contract rows and accounts, payment and settlement entries through
``ledger.services.post_batch``, ``Payment`` rows on those entries); lessons go through ``record_lessons`` in
bulk. Each run works in its own institutions (names carry a run id) in the shared jurisdiction ``bench``; the
bench database only grows (the ledger is append-only), and the jobs are restricted to the run's institutions
where the service allows it. Only the stated operation is timed; after it, the result is checked (counts,
exact sums per contract and institution, the custody invariant, the ledger's limits) and a failed check fails
the benchmark.

``CUSTODY_BENCH_SCALE`` (default 1) shrinks every workload by that factor (e.g. 0.1: 1,000 contracts closed,
10,000 lessons in 50 institutions, 100 signups), to compare before and after on a busy machine; the keys and
targets are for the full size, and a scaled run says its scale in its conditions.
"""

from __future__ import annotations

import base64
import os
import platform
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from bench.registry import benchmark

if TYPE_CHECKING:
    from custody.models import Contract, Course, Institution, Student

PRICE_FEN = 8_000  # 80.00 yuan per class hour: the default guidance price of a small offline class
SUBJECTS = ("数学", "语文", "英语", "物理", "化学")
BANK_KEY_ID = "bench-bank"
SCALE = float(os.environ.get("CUSTODY_BENCH_SCALE", "1"))


def _scaled(n: int) -> int:
    return max(1, round(n * SCALE))


# --- shared helpers -----------------------------------------------------------------------------------------


def _loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def _conditions(summary: str, **extra: Any) -> dict[str, Any]:
    from django.conf import settings
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('server_version'), current_setting('synchronous_commit')")
        version, sync = cursor.fetchone()
    db = settings.DATABASES["default"]
    if SCALE != 1:
        extra = {**extra, "scale": SCALE}
        summary = f"[scaled ×{SCALE}] {summary}"
    return {
        "summary": summary,
        "machine": f"{os.cpu_count()} cores, shared with other engineers' test runs",
        "database": f"PostgreSQL {version} db={db['NAME']} (synchronous_commit={sync})",
        "python": platform.python_version(),
        **extra,
    }


def _analyze() -> None:
    """Fresh planner statistics for the tables the flows read (autovacuum would have them in production)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "ANALYZE custody_contract, custody_lesson, custody_refund, custody_payoutinstruction, "
            "custody_payment, ledger_account, ledger_pendingtransfer, ledger_entry"
        )


@contextmanager
def _business_time(moment: datetime) -> Iterator[None]:
    from ledger import clock

    with clock.frozen_at(moment):
        yield


class _Bank:
    """The custody bank of the benchmarks: a key made for the run, registered as a bank channel key."""

    def __init__(self, private_key: bytes | None = None) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from django.conf import settings

        self.key = (
            Ed25519PrivateKey.generate()
            if private_key is None
            else Ed25519PrivateKey.from_private_bytes(private_key)
        )
        public = base64.b64encode(self.key.public_key().public_bytes_raw()).decode()
        channels = dict(getattr(settings, "CUSTODY_CHANNELS", {}) or {})
        bank = dict(channels.get("bank", {}))
        bank["keys"] = {**bank.get("keys", {}), BANK_KEY_ID: public}
        channels["bank"] = bank
        settings.CUSTODY_CHANNELS = channels

    def pay(self, contract: Contract, transaction_id: str) -> None:
        from custody.channels.bank import bank_callback_body, sign_bank_callback
        from custody.services.payments import receive_callback
        from ledger import clock

        body = bank_callback_body(
            transaction_id=transaction_id,
            order_reference=contract.number,
            amount_fen=contract.amount_fen,
            paid_at=clock.now(),
            payer_account="6222020200112233445",
        )
        headers = sign_bank_callback(self.key, BANK_KEY_ID, body, clock.now())
        receive_callback(channel="bank", headers=headers, body=body, source_ip="10.0.0.1")


@dataclass
class District:
    """One run's institutions, courses (one per subject) and students, built through the services."""

    run: str
    institutions: list[Institution]
    courses: dict[int, list[Course]]  # by institution id
    students: list[Student]
    contract_ids: list[int] = field(default_factory=list)
    bank: _Bank = field(default_factory=_Bank)
    paid: int = 0

    def sign_and_pay(self, course: Course, student: Student, *, hours: int) -> Contract:
        from custody.services.calendar import local_today
        from custody.services.contracts import sign_contract
        from ledger.money import from_minor

        today = local_today()
        contract = sign_contract(
            course=course,
            student=student,
            paid_hours=hours,
            amount=from_minor(PRICE_FEN * hours, "CNY"),
            service_starts_on=today,
            service_ends_on=today + timedelta(days=59),
        )
        self.paid += 1
        self.bank.pay(contract, f"B{self.run}{self.paid:08d}")
        self.contract_ids.append(contract.pk)
        return contract


def _id_numbers(run: str) -> Iterator[str]:
    """Valid, never-repeated resident ID numbers for one run (the region digits carry the run)."""
    from custody.services.people import id_number_check_character

    region = f"9{int(run[:6], 16) % 100_000:05d}"
    n = 0
    while True:
        birth = date(2010, 1, 1) + timedelta(days=n // 1000)
        first17 = f"{region}{birth:%Y%m%d}{n % 1000:03d}"
        yield first17 + id_number_check_character(first17)
        n += 1


def build_district(*, institutions: int, students: int, subjects: int = 1, progress: str = "") -> District:
    from custody.models import ClassSizeBand, TeachingMode, TrainingCategory
    from custody.services.calendar import local_today
    from custody.services.courses import publish_course
    from custody.services.institutions import register_institution
    from custody.services.people import add_student, register_guardian
    from custody.services.policy import ensure_jurisdiction
    from ledger.money import from_minor

    run = uuid.uuid4().hex[:10]
    ids = _id_numbers(run)
    jurisdiction = ensure_jurisdiction(code="bench", name="基准测试区 benchmark district")
    made: list[Institution] = []
    courses: dict[int, list[Course]] = {}
    for n in range(institutions):
        institution = register_institution(
            jurisdiction=jurisdiction,
            name=f"基准培训学校 {run}-{n}",
            licence_number=f"BENCH{run}{n:05d}",
            category=TrainingCategory.SUBJECT,
            custody_bank_name="基准托管银行",
            custody_account_number=f"1{run}{n:05d}",
            settlement_account_number=f"2{run}{n:05d}",
        )
        made.append(institution)
        courses[institution.pk] = [
            publish_course(
                institution=institution,
                name=f"{subject}同步班",
                subject=subject,
                category=TrainingCategory.SUBJECT,
                class_size_band=ClassSizeBand.SMALL,
                mode=TeachingMode.OFFLINE,
                price_per_hour=from_minor(PRICE_FEN, "CNY"),
                starts_on=local_today(),
            )
            for subject in SUBJECTS[:subjects]
        ]
    guardian = register_guardian(name="基准家长", phone="13900000000", id_number=next(ids))
    children = [add_student(guardian=guardian, name=f"学生{n}", id_number=next(ids)) for n in range(students)]
    if progress:
        print(f"  {progress}: {institutions} institutions, {students} students registered", flush=True)
    return District(run=run, institutions=made, courses=courses, students=children)


def _contracts_each(district: District, per_institution: int, *, hours: int, label: str) -> None:
    """``per_institution`` paid and settled contracts at every institution, written in bulk.

    Signing 20,000 contracts one by one through ``sign_contract`` and a callback (what
    ``custody.contract_signups_per_s`` measures) would take most of an hour on this shared machine, so the
    setup writes what those two services write, set-based: the contract rows (active, pinned to the policy in
    force, numbered ``HT{date}{pk}``), their ``prepaid:c`` / ``refund_payable:c`` accounts with the same
    codes and limits, and through ``ledger.services.post_batch`` the payment (Dr ``clearing:bank:i`` /
    Cr ``prepaid:c``, key ``payment:bank:{txn}``) and its settlement (Dr ``custody_cash:i`` /
    Cr ``clearing:bank:i``), with the ``Payment`` rows pointing at those entries. Students and subjects are
    spread so that no student holds more than 60 unconsumed hours at one institution in one subject."""
    from django.db import connection, transaction

    from custody.models import Contract, ContractState, Payment
    from custody.selectors.policy import current_policy
    from custody.services.calendar import local_today
    from custody.services.contracts import contract_number
    from custody.services.payments import clearing_account, payment_key, settlement_key
    from ledger import clock
    from ledger.models import Account, AccountType
    from ledger.money import from_minor
    from ledger.services import NewEntry, credit, debit, post_batch

    per_student = 60 // hours
    plan: list[tuple[Institution, Course, Student]] = []
    for institution in district.institutions:
        courses = district.courses[institution.pk]
        for k in range(per_institution):
            if k // (len(district.students) * len(courses)) >= per_student:
                raise ValueError("not enough students and subjects for the hours cap")
            course = courses[(k // len(district.students)) % len(courses)]
            plan.append((institution, course, district.students[k % len(district.students)]))
    policy = current_policy(district.institutions[0].jurisdiction)
    clearing = {i.pk: clearing_account("bank", i) for i in district.institutions}
    today, now = local_today(), clock.now()
    amount = PRICE_FEN * hours
    started = time.perf_counter()
    for start in range(0, len(plan), 5_000):
        chunk = plan[start : start + 5_000]
        with transaction.atomic():
            contracts = Contract.objects.bulk_create(
                [
                    Contract(
                        number=uuid.uuid4().hex,
                        institution=institution,
                        course=course,
                        student=student,
                        guardian_id=student.guardian_id,
                        policy=policy,
                        subject=course.subject,
                        paid_hours=hours,
                        amount_fen=amount,
                        service_starts_on=today,
                        service_ends_on=today + timedelta(days=59),
                        state=ContractState.ACTIVE,
                        signed_at=now,
                        paid_at=now,
                        payer_account="6222020200112233445",
                    )
                    for institution, course, student in chunk
                ]
            )
            accounts = Account.objects.bulk_create(
                [
                    Account(
                        code=f"{prefix}:c{c.pk}",
                        name=f"{contract_number(today, c.pk)} {label_}",
                        type=AccountType.LIABILITY,
                        currency="CNY",
                        debits_must_not_exceed_credits=True,
                    )
                    for c in contracts
                    for prefix, label_ in (
                        ("prepaid", "预收费 prepaid"),
                        ("refund_payable", "应退费 refund payable"),
                    )
                ]
            )
            with connection.cursor() as cursor:
                cursor.execute(
                    "UPDATE custody_contract c SET number = d.number, prepaid_account_id = d.prepaid, "
                    "refund_account_id = d.refund FROM unnest(%s::bigint[], %s::text[], %s::bigint[], "
                    "%s::bigint[]) AS d(id, number, prepaid, refund) WHERE c.id = d.id",
                    [
                        [c.pk for c in contracts],
                        [contract_number(today, c.pk) for c in contracts],
                        [a.pk for a in accounts[0::2]],
                        [a.pk for a in accounts[1::2]],
                    ],
                )
            money = from_minor(amount, "CNY")
            txns = [f"B{district.run}{c.pk:010d}" for c in contracts]
            posted = post_batch(
                entries=[
                    entry
                    for c, txn in zip(contracts, txns, strict=True)
                    for entry in (
                        NewEntry(
                            idempotency_key=payment_key("bank", txn),
                            kind="payment",
                            legs=[
                                debit(clearing[c.institution_id], money),
                                credit(f"prepaid:c{c.pk}", money),
                            ],
                            metadata={"contract": c.pk, "channel": "bank", "transaction_id": txn},
                        ),
                        NewEntry(
                            idempotency_key=settlement_key("bank", txn),
                            kind="settlement",
                            legs=[
                                debit(f"custody_cash:i{c.institution_id}", money),
                                credit(clearing[c.institution_id], money),
                            ],
                            metadata={"contract": c.pk},
                        ),
                    )
                ]
            ).entries
            Payment.objects.bulk_create(
                [
                    Payment(
                        contract=c,
                        channel="bank",
                        transaction_id=txn,
                        amount_fen=amount,
                        paid_at=now,
                        received_at=now,
                        payer_account="6222020200112233445",
                        raw_payload=b"{}",
                        entry=posted[2 * n],
                        settlement_entry=posted[2 * n + 1],
                        settled_at=now,
                    )
                    for n, (c, txn) in enumerate(zip(contracts, txns, strict=True))
                ]
            )
        district.contract_ids += [c.pk for c in contracts]
        rate = len(district.contract_ids) / (time.perf_counter() - started)
        print(
            f"  {label}: {len(district.contract_ids):,}/{len(plan):,} contracts paid ({rate:,.0f}/s)",
            flush=True,
        )


def _record_lessons(contract_ids: Sequence[int], *, rounds: int, run: str, tag: str) -> None:
    from custody.models import Contract
    from custody.services.lessons import NewLesson, record_lessons
    from ledger import clock

    contracts = list(Contract.objects.filter(pk__in=contract_ids).order_by("pk"))
    held = clock.now() - timedelta(hours=1)
    for r in range(rounds):
        for start in range(0, len(contracts), 10_000):
            record_lessons(
                lessons=[
                    NewLesson(contract=c, held_at=held, idempotency_key=f"bench:{run}:{tag}:{c.pk}:{r}")
                    for c in contracts[start : start + 10_000]
                ]
            )


def _check_custody(institutions: Sequence[Institution]) -> None:
    from custody.selectors.balances import custody_invariant

    for institution in institutions:
        invariant = custody_invariant(institution)
        if not invariant.holds:
            raise AssertionError(f"custody invariant broken: {invariant}")


def _check_limits(account_ids: Sequence[int]) -> None:
    """No account of the run past its limit (the ledger's own check, restricted to the run's accounts)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT code FROM ledger_account WHERE id = ANY(%s) AND ("
            "(debits_must_not_exceed_credits AND debits_posted + debits_pending > credits_posted) OR "
            "(credits_must_not_exceed_debits AND credits_posted + credits_pending > debits_posted)) LIMIT 5",
            [list(account_ids)],
        )
        broken = [row[0] for row in cursor.fetchall()]
    if broken:
        raise AssertionError(f"accounts past their limits: {broken}")


def _run_accounts(district: District) -> list[int]:
    from custody.models import Contract

    ids = [a for i in district.institutions for a in (i.cash_account_id, i.payable_account_id) if a]
    for prepaid, refund in Contract.objects.filter(pk__in=district.contract_ids).values_list(
        "prepaid_account_id", "refund_account_id"
    ):
        ids += [prepaid, refund]
    return ids


# --- contract signups ---------------------------------------------------------------------------------------


SIGNUPS = _scaled(1_000)
SIGNUP_PROCESSES = int(os.environ.get("BENCH_SIGNUP_PROCESSES", "4"))
SIGNUP_WARMUP = 10  # per process, before the clock starts: connections made, statements prepared


def _signup_plan(district: District, count: int) -> list[tuple[Course, Student]]:
    """Signings spread over institutions, subjects and students. A student comes back to the same
    institution and subject every 300 signings, so the cap checks sum real rows (at most 6 × 10 hours)."""
    institutions = len(district.institutions)
    return [
        (
            district.courses[district.institutions[n % institutions].pk][(n // institutions) % len(SUBJECTS)],
            district.students[(n * 7) % len(district.students)],
        )
        for n in range(count)
    ]


def _timed_signups(district: District, plan: Sequence[tuple[Course, Student]]) -> tuple[float, float]:
    """Seconds of wall and of Python CPU for signing and paying ``plan``, one autocommit request each."""
    cpu = time.process_time()
    started = time.perf_counter()
    for course, student in plan:
        district.sign_and_pay(course, student, hours=10)
    return time.perf_counter() - started, time.process_time() - cpu


def _signup_worker(
    worker: int, run: str, bank_key: bytes, pairs: list[tuple[int, int]], ready: Any, go: Any, out: Any
) -> None:
    """One client process of the parallel signups: its own connection, its share of the plan."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.conf import settings

    from custody.models import Course, Student

    settings.DEBUG = False
    courses = Course.objects.in_bulk({c for c, _ in pairs})
    students = Student.objects.in_bulk({s for _, s in pairs})
    plan = [(courses[c], students[s]) for c, s in pairs]
    district = District(run=f"{run}w{worker}", institutions=[], courses={}, students=[], bank=_Bank(bank_key))
    for course, student in plan[:SIGNUP_WARMUP]:
        district.sign_and_pay(course, student, hours=10)
    ready.release()
    go.wait()
    cpu = time.process_time()
    for course, student in plan[SIGNUP_WARMUP:]:
        district.sign_and_pay(course, student, hours=10)
    out.put((worker, time.time(), time.process_time() - cpu, district.contract_ids))


def _parallel_signups(district: District, plan: Sequence[tuple[Course, Student]], processes: int) -> float:
    """Seconds for ``processes`` client processes to sign and pay ``plan`` (each every n-th signing, after
    its own warm-up signings, which are not timed); the contracts are added to the district."""
    import multiprocessing

    from django.db import connection

    pairs = [(course.pk, student.pk) for course, student in plan]
    shares = [pairs[worker::processes] for worker in range(processes)]
    bank_key = district.bank.key.private_bytes_raw()
    connection.close()  # each child opens its own
    ctx = multiprocessing.get_context("spawn")
    ready, go, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    workers = [
        ctx.Process(target=_signup_worker, args=(n, district.run, bank_key, shares[n], ready, go, out))
        for n in range(processes)
    ]
    for process in workers:
        process.start()
    for _ in workers:
        if not ready.acquire(timeout=300):
            for process in workers:
                process.terminate()
            raise RuntimeError("a signup worker did not get ready within 300 s")
    started = time.time()
    go.set()
    finished = []
    for _ in workers:
        worker, done_at, _cpu, contract_ids = out.get(timeout=600)
        finished.append(done_at)
        district.contract_ids.extend(contract_ids)
    for process in workers:
        process.join(timeout=60)
        if process.exitcode != 0:
            raise RuntimeError(f"signup worker {process.name} exited with {process.exitcode}")
    return max(finished) - started


def _check_signups(district: District, expected: int) -> None:
    from django.db.models import Sum

    from custody.models import Contract, ContractState, Payment

    ours = Contract.objects.filter(pk__in=district.contract_ids)
    assert len(set(district.contract_ids)) == expected, (len(set(district.contract_ids)), expected)
    assert ours.filter(state=ContractState.ACTIVE).count() == expected
    assert Payment.objects.filter(contract_id__in=district.contract_ids).count() == expected
    credited = ours.aggregate(s=Sum("prepaid_account__credits_posted"))["s"]
    assert credited == expected * 10 * PRICE_FEN, credited
    _check_custody(district.institutions)
    _check_limits(_run_accounts(district))


@benchmark("custody.contract_signups_per_s", target="≥ 300")
def contract_signups_per_s() -> tuple[float, str, dict[str, Any]]:
    """Contracts signed and paid per second, each through sign_contract (every rule, the anti-splitting sum
    over the student's open contracts) and a signed bank callback (verify, log, post the payment, settle
    into custody): two requests, two commits, as in production. The figure is the throughput of
    ``SIGNUP_PROCESSES`` client processes (the API's workers); one process alone is measured too."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    load = _loadavg()
    district = build_district(institutions=20, students=300, subjects=5, progress="signups")
    plan = _signup_plan(district, SIGNUPS + 551)
    for course, student in plan[:50]:
        district.sign_and_pay(course, student, hours=10)
    with CaptureQueriesContext(connection) as queries:
        district.sign_and_pay(*plan[50], hours=10)
    commits = sum(1 for q in queries.captured_queries if q["sql"] == "COMMIT")
    _analyze()
    elapsed, python_cpu = _timed_signups(district, plan[51 : 51 + SIGNUPS])
    one_process = SIGNUPS / elapsed
    # The same path without waiting for the WAL flush at each commit: what the disk costs.
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit = off")
    try:
        no_flush, _ = _timed_signups(district, plan[51 + SIGNUPS :])
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit = on")
    no_flush_rate = (len(plan) - 51 - SIGNUPS) / no_flush
    _check_signups(district, len(plan))

    # The parallel run signs in a district of its own, so no student passes the 60-hour cap.
    parallel = build_district(institutions=20, students=300, subjects=5, progress="parallel signups")
    parallel_plan = _signup_plan(parallel, SIGNUPS + SIGNUP_PROCESSES * SIGNUP_WARMUP)
    _analyze()
    with connection.cursor() as cursor:
        # Building the district dirtied thousands of pages: flushed now, not by a checkpoint that would
        # otherwise fall inside the few timed seconds.
        cursor.execute("CHECKPOINT")
    parallel_elapsed = _parallel_signups(parallel, parallel_plan, SIGNUP_PROCESSES)
    rate = SIGNUPS / parallel_elapsed
    _check_signups(parallel, len(parallel_plan))
    print(
        f"  contract_signups_per_s: {SIGNUPS} in {parallel_elapsed:.2f} s = {rate:,.0f}/s with "
        f"{SIGNUP_PROCESSES} processes; one process {one_process:,.0f}/s "
        f"({no_flush_rate:,.0f}/s without the commit flush)"
    )
    return (
        round(rate, 1),
        "contracts/s",
        _conditions(
            f"{SIGNUP_PROCESSES} client processes: sign_contract + signed bank callback (receive_callback, "
            f"settled into custody), {SIGNUPS:,} contracts in {parallel_elapsed:.2f} s; one process alone: "
            f"{one_process:,.0f}/s = {1000 * elapsed / SIGNUPS:.1f} ms each (Python CPU "
            f"{1000 * python_cpu / SIGNUPS:.1f} ms; {commits} commits per contract), "
            f"{no_flush_rate:,.0f}/s with synchronous_commit=off; load avg {load} before, {_loadavg()} after",
            workload=(
                "20 institutions × 5 subjects, 300 students, 10-hour contracts; each student holds several "
                "open contracts, so anti-splitting sums real rows; 50 warm-up signings (one process), "
                f"{SIGNUP_WARMUP} per process before the parallel run"
            ),
            processes=SIGNUP_PROCESSES,
            one_process_per_s=round(one_process, 1),
            commits_per_contract=commits,
            python_cpu_ms_one_process=round(1000 * python_cpu / SIGNUPS, 2),
            rate_without_commit_flush_one_process=round(no_flush_rate, 1),
            checked="every contract active with one payment, Σ prepaid credits exact, custody invariant of "
            "each institution, no account of the run past its limit (both runs)",
        ),
    )


# --- closure of 10,000 contracts ----------------------------------------------------------------------------


@benchmark("custody.closure_10k_s", target="< 10")
def closure_10k_s() -> tuple[float, str, dict[str, Any]]:
    """An institution with 10,000 open contracts (10 paid hours each; 2 confirmed lessons and 1 pending)
    closed abnormally: order_closure + run_closure, until every refund is posted and instructed."""
    from django.db.models import Sum

    from bench.bench_ledger import _backend_cpu_seconds
    from custody.models import (
        ClosureState,
        Contract,
        ContractState,
        Lesson,
        LessonState,
        PayoutInstruction,
        PayoutKind,
        Refund,
        RefundReason,
        RefundState,
    )
    from custody.services.closures import order_closure, run_closure
    from custody.services.lessons import auto_confirm_due_lessons
    from ledger import clock

    load = _loadavg()
    n = _scaled(10_000)
    build_started = time.perf_counter()
    district = build_district(institutions=1, students=400, subjects=5, progress="closure")
    _contracts_each(district, n, hours=10, label="closure")
    institution = district.institutions[0]
    _record_lessons(district.contract_ids, rounds=2, run=district.run, tag="done")
    with _business_time(clock.now() + timedelta(days=40)):
        confirmed = auto_confirm_due_lessons()
        assert confirmed >= 2 * n, confirmed
        _record_lessons(district.contract_ids, rounds=1, run=district.run, tag="open")
        contracts = Contract.objects.filter(pk__in=district.contract_ids)
        left = contracts.aggregate(
            s=Sum("prepaid_account__credits_posted") - Sum("prepaid_account__debits_posted")
        )["s"]
        _analyze()
        # The ordering process's broker connection is open, as in a web or worker process (the first one
        # in a process loads the transport: most of a second not spent closing anything).
        from config.celery import app

        with app.connection_for_write() as broker:
            broker.ensure_connection(max_retries=1)
        setup = time.perf_counter() - build_started

        backend_before = _backend_cpu_seconds()
        cpu_started = time.process_time()
        started = time.perf_counter()
        closure = order_closure(institution=institution, mode="abnormal", reason="跑路 bench")
        closure = run_closure(closure=closure)
        elapsed = time.perf_counter() - started
        python_cpu = time.process_time() - cpu_started
        backend_after = _backend_cpu_seconds()
    backend_cpu = None if backend_before is None or backend_after is None else backend_after - backend_before
    cpu_note = f"CPU {python_cpu:.2f} s in Python" + (
        f" + {backend_cpu:.2f} s in PostgreSQL" if backend_cpu is not None else ""
    )

    assert closure.state == ClosureState.COMPLETED
    refunds = Refund.objects.filter(contract__in=contracts, reason=RefundReason.CLOSURE)
    assert refunds.count() == n
    assert refunds.filter(state=RefundState.INSTRUCTED).count() == n
    assert refunds.aggregate(s=Sum("amount_fen"))["s"] == left == n * 8 * PRICE_FEN
    payouts = PayoutInstruction.objects.filter(institution=institution, kind=PayoutKind.REFUND)
    assert payouts.count() == n and payouts.aggregate(s=Sum("amount_fen"))["s"] == left
    assert contracts.filter(state=ContractState.REFUNDED).count() == n
    assert (
        contracts.aggregate(s=Sum("prepaid_account__credits_posted") - Sum("prepaid_account__debits_posted"))[
            "s"
        ]
        == 0
    )
    assert Lesson.objects.filter(contract__in=contracts, state=LessonState.VOIDED).count() == n
    _check_custody(district.institutions)
    _check_limits(_run_accounts(district))
    print(f"  closure_10k_s: {elapsed:.2f} s (setup {setup:.0f} s)")
    return (
        round(elapsed, 3),
        "s",
        _conditions(
            f"abnormal closure of 1 institution with {n:,} open contracts (2 confirmed + 1 pending lesson "
            f"each): {n:,} lessons voided, {n:,} refunds posted, {n:,} payouts instructed in "
            f"{elapsed:.2f} s (batches of 500), of it {cpu_note}; load avg {load} before, {_loadavg()} after",
            setup_seconds=round(setup, 1),
            python_cpu_s=round(python_cpu, 2),
            postgres_backend_cpu_s=None if backend_cpu is None else round(backend_cpu, 2),
            checked="closure completed; exactly one instructed closure refund and one payout per contract, "
            "Σ refunds = Σ prepaid left = Σ payouts to the fen, every prepaid:c at 0, every pending lesson "
            "voided, custody invariant, limits",
        ),
    )


# --- 100,000 lessons: auto-confirmation and the release run -------------------------------------------------


@dataclass
class _LessonDistrict:
    district: District
    confirmed: bool = False


_SHARED: dict[str, _LessonDistrict] = {}
LESSON_INSTITUTIONS = _scaled(500)
LESSONS = LESSON_INSTITUTIONS * 20 * 10


def _lesson_district() -> _LessonDistrict:
    """500 institutions × 20 paid 10-hour contracts × 10 one-hour lessons = 100,000 pending lessons, built
    once per process (the release benchmark reuses what the auto-confirmation benchmark confirmed)."""
    if "lessons" not in _SHARED:
        district = build_district(institutions=LESSON_INSTITUTIONS, students=20, progress="100k lessons")
        _contracts_each(district, 20, hours=10, label="100k lessons")
        started = time.perf_counter()
        _record_lessons(district.contract_ids, rounds=10, run=district.run, tag="l")
        print(f"  100k lessons: recorded in {time.perf_counter() - started:.1f} s", flush=True)
        _SHARED["lessons"] = _LessonDistrict(district)
    return _SHARED["lessons"]


def _overdue() -> datetime:
    from ledger import clock

    return clock.now() + timedelta(days=40)  # past every 15-working-day deadline


@benchmark("custody.autoconfirm_100k_s", target="< 15")
def autoconfirm_100k_s() -> tuple[float, str, dict[str, Any]]:
    """auto_confirm_due_lessons over 100,000 overdue lessons: every hold posted to payable:i, lessons and
    contracts updated (set-based, 50,000 lessons per transaction, CUSTODY_AUTO_CONFIRM_WORKERS transactions
    at a time)."""
    from django.conf import settings
    from django.db.models import Sum

    from custody.models import Contract, ContractState, Lesson, LessonState
    from custody.services.lessons import auto_confirm_due_lessons

    load = _loadavg()
    shared = _lesson_district()
    if shared.confirmed:
        shared = _SHARED["lessons"] = _LessonDistrict(_fresh_lesson_district())
    district = shared.district
    ours = Lesson.objects.filter(contract_id__in=district.contract_ids)
    assert ours.filter(state=LessonState.PENDING).count() == LESSONS
    with _business_time(_overdue()):
        _analyze()
        started = time.perf_counter()
        confirmed = auto_confirm_due_lessons()
        elapsed = time.perf_counter() - started
    shared.confirmed = True

    assert confirmed >= LESSONS, confirmed
    assert ours.filter(state=LessonState.CONFIRMED, confirmed_by="silence").count() == LESSONS
    contracts = Contract.objects.filter(pk__in=district.contract_ids)
    completed = contracts.filter(state=ContractState.COMPLETED, hours_consumed=10, hours_pending=0).count()
    assert completed == LESSONS // 10, completed
    from ledger.models import Account

    payable_ids = [i.payable_account_id for i in district.institutions if i.payable_account_id is not None]
    totals = Account.objects.filter(pk__in=payable_ids).aggregate(
        cr=Sum("credits_posted"), dr=Sum("debits_posted")
    )
    payable = totals["cr"] - totals["dr"]
    assert payable == LESSONS * PRICE_FEN == contracts.aggregate(s=Sum("amount_fen"))["s"]
    _check_custody(district.institutions)
    _check_limits(_run_accounts(district))
    print(f"  autoconfirm_100k_s: {elapsed:.2f} s")
    return (
        round(elapsed, 3),
        "s",
        _conditions(
            f"auto_confirm_due_lessons: {LESSONS:,} overdue lessons ({LESSON_INSTITUTIONS} institutions × 20 "
            f"contracts × 10) "
            f"confirmed in {elapsed:.2f} s ({settings.CUSTODY_AUTO_CONFIRM_WORKERS} transactions at a time, "
            f"each over its share of the institutions); load avg {load} before, {_loadavg()} after",
            workers=settings.CUSTODY_AUTO_CONFIRM_WORKERS,
            other_due_lessons=confirmed - LESSONS,
            checked="every lesson confirmed by silence, 10,000 contracts completed with 10 hours consumed, "
            "Σ payable:i = Σ contract amounts to the fen, custody invariant, limits",
        ),
    )


def _fresh_lesson_district() -> District:
    _SHARED.pop("lessons", None)
    return _lesson_district().district


@benchmark("custody.release_100k_s", target="< 15")
def release_100k_s() -> tuple[float, str, dict[str, Any]]:
    """run_release_payouts over 500 institutions whose payable:i holds 100,000 confirmed lessons: one payout
    instruction (a hold Dr payable:i / Cr custody_cash:i) per institution, all holds in one ledger call."""
    from django.db.models import Sum

    from custody.models import Contract, PayoutInstruction, PayoutKind, PayoutState
    from custody.services.lessons import auto_confirm_due_lessons
    from custody.services.payouts import record_payout_result, run_release_payouts

    load = _loadavg()
    shared = _lesson_district()
    district = shared.district
    with _business_time(_overdue()):
        if not shared.confirmed:
            auto_confirm_due_lessons()
            shared.confirmed = True
        _analyze()
        started = time.perf_counter()
        payouts = run_release_payouts(institutions=district.institutions)
        elapsed = time.perf_counter() - started
        executed_started = time.perf_counter()
        for payout in payouts:
            record_payout_result(reference=payout.reference, executed=True, bank_reference="BENCH")
        executed = time.perf_counter() - executed_started

    amounts = dict(
        Contract.objects.filter(pk__in=district.contract_ids)
        .values_list("institution_id")
        .annotate(s=Sum("amount_fen"))
    )
    assert len(payouts) == LESSON_INSTITUTIONS
    assert {p.institution_id: p.amount_fen for p in payouts} == amounts
    assert (
        PayoutInstruction.objects.filter(
            institution__in=district.institutions, kind=PayoutKind.RELEASE, state=PayoutState.EXECUTED
        ).count()
        == LESSON_INSTITUTIONS
    )
    _check_custody(district.institutions)
    _check_limits(_run_accounts(district))
    _SHARED.pop("lessons", None)  # paid out: a later run builds afresh
    print(f"  release_100k_s: {elapsed:.2f} s (bank executing all {len(payouts)}: {executed:.2f} s)")
    return (
        round(elapsed, 3),
        "s",
        _conditions(
            f"run_release_payouts: {LESSON_INSTITUTIONS} institutions' payable from {LESSONS:,} confirmed "
            f"lessons batched into {len(payouts)} payout instructions in {elapsed:.2f} s (the bank then "
            f"executed all {len(payouts)} in {executed:.2f} s, "
            f"not timed); load avg {load} before, {_loadavg()} after",
            checked="500 payouts, each exactly the institution's Σ contract amounts; all executed; custody "
            "invariant (cash = Σ prepaid + payable + Σ refund payable) of every institution, limits",
        ),
    )

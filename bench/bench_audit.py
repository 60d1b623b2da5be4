"""Benchmarks of the audit features on PostgreSQL: the custody checkpoint over a million contracts, one
parent's proof checked by the standalone verifier, and a full risk scan over 1,000 institutions and a
million lessons.

One data set serves all three (jurisdiction ``BENCHAUDIT``), built once and reused by later runs:

- 1,000 institutions and one course each, through the services (``register_institution``,
  ``publish_course``), one guardian and student;
- then, by set-based SQL (the services would take hours for a million), 1,000,000 active contracts of
  1,600.00 yuan, each with its ``prepaid:c`` and ``refund_payable:c`` accounts whose posted totals are set
  directly (0–1,199.99 consumed; every 100th contract 50.00 refund payable), and each institution's custody
  cash set to what it owes. No ledger postings back these totals, so ``verify_ledger`` on the bench database
  reports them: the checkpoint reads the materialized totals, as in production, and that is what is timed;
- one lesson per contract with its hold (85 % confirmed, 14 % awaiting confirmation, 1 % disputed), recorded
  over 35 days; every 20th institution records 60 % of its lessons in the last week (a consumption spike);
  5 refund claims, 10 executed payouts and, for every 5th institution, one refused over-cap charge each.

The scans run at the data set's own "now" (its newest lesson), so a re-run days later scans the same picture.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from bench.registry import benchmark

BENCH_CODE = "BENCHAUDIT"
INSTITUTIONS = 1_000
CONTRACTS = 1_000_000
CONTRACT_FEN = 160_000
LESSON_FEN = 8_000


@dataclass(frozen=True)
class World:
    jurisdiction: Any
    institution_ids: list[int]
    now: datetime


def _loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def _conditions(summary: str, **extra: Any) -> dict[str, Any]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('server_version'), current_setting('shared_buffers')")
        version, buffers = cursor.fetchone()
    return {
        "summary": summary,
        "machine": f"{os.cpu_count()} cores, shared with other engineers' test runs",
        "database": f"PostgreSQL {version}, shared_buffers={buffers}",
        "python": platform.python_version(),
        **extra,
    }


def _execute(sql: str, params: dict[str, Any] | None = None) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params or {})
        return cursor.rowcount


def _world() -> World:
    """The data set, built on first use (several minutes) and reused after."""
    from custody.models import Contract, Institution, Lesson
    from custody.services.policy import ensure_jurisdiction

    jurisdiction = ensure_jurisdiction(code=BENCH_CODE, name="压测区 audit bench district")
    if Institution.objects.filter(jurisdiction=jurisdiction).count() < INSTITUTIONS:
        _institutions(jurisdiction)
    institution_ids = list(
        Institution.objects.filter(jurisdiction=jurisdiction).order_by("pk").values_list("pk", flat=True)
    )
    if not Contract.objects.filter(institution__jurisdiction=jurisdiction).exists():
        started = time.perf_counter()
        _bulk_world(jurisdiction, institution_ids)
        print(f"bench: audit data set built in {time.perf_counter() - started:.0f} s", flush=True)
    _analyze_once()
    newest = Lesson.objects.filter(institution__jurisdiction=jurisdiction).order_by("-recorded_at").first()
    assert newest is not None
    return World(jurisdiction, institution_ids, newest.recorded_at + timedelta(minutes=1))


_ANALYZED: list[bool] = []


def _analyze_once() -> None:
    """Fresh planner statistics for the tables the data set filled (as autovacuum would give in time):
    with stale ones the planner joins a million contracts by nested loops, several times slower."""
    if _ANALYZED:
        return
    for table in (
        "custody_institution",
        "custody_contract",
        "ledger_account",
        "ledger_pendingtransfer",
        "custody_lesson",
        "custody_refund",
        "custody_payoutinstruction",
        "custody_chargerefusal",
    ):
        _execute(f"ANALYZE {table}")
    _ANALYZED.append(True)


def _institutions(jurisdiction: Any) -> None:
    from custody.models import ClassSizeBand, Institution, TeachingMode, TrainingCategory
    from custody.services.courses import publish_course
    from custody.services.institutions import register_institution
    from ledger.money import cny

    have = set(Institution.objects.filter(jurisdiction=jurisdiction).values_list("licence_number", flat=True))
    for n in range(INSTITUTIONS):
        licence = f"BENCH-AUDIT-{n:05d}"
        if licence in have:
            continue
        institution = register_institution(
            jurisdiction=jurisdiction,
            name=f"压测机构{n:04d}",
            licence_number=licence,
            category=TrainingCategory.SUBJECT,
            custody_bank_name="压测银行",
            custody_account_number=f"9{n:015d}",
            settlement_account_number=f"8{n:015d}",
        )
        publish_course(
            institution=institution,
            name="压测数学",
            subject="数学",
            category=TrainingCategory.SUBJECT,
            class_size_band=ClassSizeBand.SMALL,
            mode=TeachingMode.OFFLINE,
            price_per_hour=cny("80.00"),
            starts_on=date(2024, 3, 1),
        )


def _student() -> tuple[int, int]:
    from custody.services.people import add_student, id_number_check_character, register_guardian

    def id_number(first17: str) -> str:
        return first17 + id_number_check_character(first17)

    guardian = register_guardian(
        name="压测家长", phone="13900000000", id_number=id_number("31010419800101999")
    )
    student = add_student(guardian=guardian, name="压测学生", id_number=id_number("31010420120601999"))
    return guardian.pk, student.pk


def _bulk_world(jurisdiction: Any, institution_ids: list[int]) -> None:
    from django.db import transaction
    from django.utils import timezone

    from custody.models import Course
    from custody.selectors.policy import current_policy

    guardian_id, student_id = _student()
    course_of = dict(
        Course.objects.filter(institution_id__in=institution_ids)
        .order_by("institution_id", "pk")
        .values_list("institution_id", "pk")
    )
    now = timezone.now()
    params: dict[str, Any] = {
        "institutions": institution_ids,
        "courses": [course_of[pk] for pk in institution_ids],
        "n_institutions": len(institution_ids),
        "guardian": guardian_id,
        "student": student_id,
        "policy": current_policy(jurisdiction).pk,
        "n": CONTRACTS,
        "now": now,
        "fen": CONTRACT_FEN,
        "lesson": LESSON_FEN,
        "jurisdiction": jurisdiction.pk,
    }
    with transaction.atomic():
        _execute(
            """
            INSERT INTO custody_contract (number, institution_id, course_id, student_id, guardian_id,
                policy_id, subject, paid_hours, gift_hours, amount_fen, service_starts_on, service_ends_on,
                state, signed_at, paid_at, payer_account, hours_consumed, hours_pending, paid_hours_refunded,
                cancel_reason)
            SELECT 'BA' || lpad(g::text, 10, '0'),
                (%(institutions)s::bigint[])[1 + g %% %(n_institutions)s],
                (%(courses)s::bigint[])[1 + g %% %(n_institutions)s],
                %(student)s, %(guardian)s, %(policy)s, '数学', 20, 0, %(fen)s, DATE '2024-03-01',
                DATE '2024-05-31', 'active', %(now)s, %(now)s, '', 0, 0, 0, ''
            FROM generate_series(1, %(n)s) g
            """,
            params,
        )
        _execute(
            """
            INSERT INTO ledger_account (code, name, type, currency, debits_must_not_exceed_credits,
                credits_must_not_exceed_debits, debits_posted, credits_posted, debits_pending,
                credits_pending, posting_count, metadata, created_at)
            SELECT 'prepaid:c' || c.id, '', 'liability', 'CNY', true, false, (c.id * 7919) %% 120000,
                %(fen)s, 0, 0, 0, '{}'::jsonb, %(now)s
            FROM custody_contract c WHERE c.number LIKE 'BA%%'
            UNION ALL
            SELECT 'refund_payable:c' || c.id, '', 'liability', 'CNY', true, false, 0,
                CASE WHEN c.id %% 100 = 0 THEN 5000 ELSE 0 END, 0, 0, 0, '{}'::jsonb, %(now)s
            FROM custody_contract c WHERE c.number LIKE 'BA%%'
            """,
            params,
        )
        for field, prefix in (("prepaid_account_id", "prepaid:c"), ("refund_account_id", "refund_payable:c")):
            _execute(
                f"UPDATE custody_contract c SET {field} = a.id FROM ledger_account a "
                f"WHERE a.code = '{prefix}' || c.id AND c.number LIKE 'BA%%'"
            )
        # Custody cash holds exactly what is owed, so the books of each institution balance.
        _execute(
            """
            UPDATE ledger_account cash SET debits_posted = owed.total
            FROM (
                SELECT c.institution_id, SUM(p.credits_posted - p.debits_posted
                    + r.credits_posted - r.debits_posted) AS total
                FROM custody_contract c
                JOIN ledger_account p ON p.id = c.prepaid_account_id
                JOIN ledger_account r ON r.id = c.refund_account_id
                WHERE c.number LIKE 'BA%%' GROUP BY c.institution_id
            ) owed JOIN custody_institution i ON i.id = owed.institution_id
            WHERE cash.id = i.cash_account_id
            """
        )
        _execute(
            """
            INSERT INTO ledger_pendingtransfer (idempotency_key, request_hash, kind, debit_account_id,
                credit_account_id, amount, currency, state, created_at, resolved_at, posted_amount, metadata)
            SELECT 'bench-audit:lesson:' || c.id, '', 'lesson', c.prepaid_account_id, i.payable_account_id,
                %(lesson)s, 'CNY', CASE WHEN c.id %% 100 < 85 THEN 'posted' ELSE 'pending' END, %(now)s,
                CASE WHEN c.id %% 100 < 85 THEN %(now)s END,
                CASE WHEN c.id %% 100 < 85 THEN %(lesson)s END, '{}'::jsonb
            FROM custody_contract c JOIN custody_institution i ON i.id = c.institution_id
            WHERE c.number LIKE 'BA%%'
            """,
            params,
        )
        _execute(
            """
            INSERT INTO custody_lesson (contract_id, institution_id, idempotency_key, held_at, hours,
                paid_hours, amount_fen, state, pending_transfer_id, recorded_at, confirm_deadline,
                confirmed_at, confirmed_by, disputed_at, dispute_reason, resolution_note)
            SELECT c.id, c.institution_id, t.idempotency_key, t.recorded, 1, 1, %(lesson)s,
                CASE WHEN c.id %% 100 < 85 THEN 'confirmed' WHEN c.id %% 100 < 99 THEN 'pending'
                     ELSE 'disputed' END,
                t.id, t.recorded, t.recorded + interval '21 days',
                CASE WHEN c.id %% 100 < 85 THEN t.recorded + interval '1 day' END,
                CASE WHEN c.id %% 100 < 85 THEN 'parent' ELSE '' END,
                CASE WHEN c.id %% 100 >= 99 THEN t.recorded + interval '1 day' END,
                CASE WHEN c.id %% 100 >= 99 THEN '压测异议' ELSE '' END, ''
            FROM custody_contract c
            JOIN LATERAL (
                SELECT p.id, p.idempotency_key,
                    CASE WHEN c.institution_id %% 20 = 0 AND c.id %% 2 = 0
                         THEN %(now)s - (c.id %% 7) * interval '1 day'
                         ELSE %(now)s - (c.id %% 35) * interval '1 day' END
                    - (c.id %% 1440) * interval '1 minute' AS recorded
                FROM ledger_pendingtransfer p WHERE p.idempotency_key = 'bench-audit:lesson:' || c.id
            ) t ON true
            WHERE c.number LIKE 'BA%%'
            """,
            params,
        )
        _execute(
            """
            INSERT INTO custody_refund (contract_id, reason, state, idempotency_key, claimed_at, claim_note,
                answer_due, approved_by, rejection_reason, paid_hours, amount_fen)
            SELECT c.id, 'parent_claim', 'claimed', 'bench-audit:refund:' || c.id,
                %(now)s - (c.id %% 6) * interval '1 day', '', %(now)s + interval '5 days', '', '', 0, 0
            FROM custody_contract c WHERE c.number LIKE 'BA%%' AND c.id %% 200 = 0
            """,
            params,
        )
        _execute(
            """
            INSERT INTO ledger_pendingtransfer (idempotency_key, request_hash, kind, debit_account_id,
                credit_account_id, amount, currency, state, created_at, resolved_at, posted_amount, metadata)
            SELECT 'bench-audit:payout:' || i.id || ':' || d, '', 'payout', i.payable_account_id,
                i.cash_account_id, 500000, 'CNY', 'posted', %(now)s, %(now)s, 500000, '{}'::jsonb
            FROM custody_institution i CROSS JOIN generate_series(0, 9) d
            WHERE i.jurisdiction_id = %(jurisdiction)s
            """,
            params,
        )
        _execute(
            """
            INSERT INTO custody_payoutinstruction (institution_id, kind, reference, amount_fen,
                destination_account, pending_transfer_id, state, instructed_at, executed_at, bank_reference,
                failure_reason)
            SELECT i.id, 'release', 'BA-PO-' || i.id || '-' || d, 500000, '', p.id, 'executed',
                %(now)s - d * interval '1 day', %(now)s - d * interval '1 day', '', ''
            FROM custody_institution i CROSS JOIN generate_series(0, 9) d
            JOIN ledger_pendingtransfer p ON p.idempotency_key = 'bench-audit:payout:' || i.id || ':' || d
            WHERE i.jurisdiction_id = %(jurisdiction)s
            """,
            params,
        )
        _execute(
            """
            INSERT INTO custody_chargerefusal (institution_id, rule, occurred_at, details)
            SELECT i.id, 'max_paid_hours', %(now)s - interval '1 day', '{"limit": 60, "requested": 72}'::jsonb
            FROM custody_institution i WHERE i.jurisdiction_id = %(jurisdiction)s AND i.id %% 5 = 0
            """,
            params,
        )


def _owed_in_bench(institution_ids: list[int]) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT SUM(p.credits_posted - p.debits_posted + r.credits_posted - r.debits_posted) "
            "FROM custody_contract c JOIN ledger_account p ON p.id = c.prepaid_account_id "
            "JOIN ledger_account r ON r.id = c.refund_account_id WHERE c.institution_id = ANY(%s)",
            [institution_ids],
        )
        return int(cursor.fetchone()[0])


@benchmark("audit.checkpoint_1m_s", target="< 30 s")
def checkpoint_1m() -> tuple[float, str, dict[str, Any]]:
    """Build, store and sign the custody checkpoint over every contract (1,000,000 of them the bench's)."""
    from custody.models import Institution
    from custody.services.checkpoints import create_custody_checkpoint
    from ledger import chain, proofs

    world = _world()
    # Bring the hash chain and the entry log's tree up to date first (untimed): what is timed is reading
    # every contract's owed amount, building the sum tree, storing its leaves and signing.
    chain.seal()
    proofs.create_checkpoint_with_proofs()
    load = _loadavg()
    started = time.perf_counter()
    checkpoint = create_custody_checkpoint()
    elapsed = time.perf_counter() - started
    body = json.loads(checkpoint.payload)
    licences = set(
        Institution.objects.filter(pk__in=world.institution_ids).values_list("licence_number", flat=True)
    )
    bench_total = sum(total for group, total in body["group_totals"].items() if group in licences)
    assert bench_total == _owed_in_bench(world.institution_ids), "signed totals differ from the accounts"
    assert body["liabilities_count"] >= CONTRACTS
    return (
        round(elapsed, 2),
        "s",
        _conditions(
            f"custody checkpoint over {body['liabilities_count']:,} contracts in "
            f"{len(body['group_totals']):,} institutions: read owed amounts, build + store + sign "
            f"the Merkle-sum tree ({elapsed:.1f} s)",
            checkpoint_id=checkpoint.pk,
            contracts=body["liabilities_count"],
            institutions=len(body["group_totals"]),
            checked="the bench institutions' signed totals equal the SQL sum of their accounts",
            load_avg_1min_before=load,
            load_avg_1min_after=_loadavg(),
        ),
    )


@benchmark("audit.proof_verify_ms", target="< 5 ms")
def proof_verify() -> tuple[float, str, dict[str, Any]]:
    """One parent's proof checked with the standalone verifier's own function (signature included)."""
    from custody.models import Contract
    from custody.selectors.checkpoints import contract_liability_proof, latest_custody_checkpoint
    from custody.services.checkpoints import create_custody_checkpoint
    from ledger import verify

    _world()
    contract = Contract.objects.get(number=f"BA{CONTRACTS // 2:010d}")
    checkpoint = latest_custody_checkpoint()
    if checkpoint is None or contract_liability_proof(contract, checkpoint=checkpoint) is None:
        checkpoint = create_custody_checkpoint()
    started = time.perf_counter()
    parent = contract_liability_proof(contract, checkpoint=checkpoint)
    serve_ms = (time.perf_counter() - started) * 1000
    assert parent is not None
    key = verify.parse_public_key(parent.public_key)
    timings = []
    for _ in range(500):
        started = time.perf_counter()
        verify.verify_liability_proof(parent.proof, parent.checkpoint, key, verify.Report())
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    median = statistics.median(timings)
    return (
        round(median, 3),
        "ms",
        _conditions(
            f"verify one contract's liability proof against a checkpoint of "
            f"{json.loads(checkpoint.payload)['liabilities_count']:,} contracts: median of 500 "
            f"(p99 {timings[int(len(timings) * 0.99)]:.3f} ms), Ed25519 signature and both Merkle-sum paths",
            path_hashes=len(parent.proof["group_path"]) + len(parent.proof["top_path"]),
            p99_ms=round(timings[int(len(timings) * 0.99)], 3),
            serve_proof_ms=round(serve_ms, 1),
            how="ledger.verify.verify_liability_proof in process (what `python -m ledger.verify liability` "
            "runs after reading the two files)",
        ),
    )


@benchmark("audit.risk_scan_s", target="< 20 s")
def risk_scan() -> tuple[float, str, dict[str, Any]]:
    """A full risk scan of the bench jurisdiction: every rule, every institution, alerts written."""
    from custody.models import Lesson, RiskAlert
    from custody.services.alerts import run_risk_scan

    world = _world()
    lessons = Lesson.objects.filter(institution__jurisdiction=world.jurisdiction).count()
    # Resolve what earlier runs raised (untimed), so the first timed scan raises and notifies again and the
    # second finds everything open: both paths are measured.
    RiskAlert.objects.filter(jurisdiction=world.jurisdiction).exclude(state="resolved").update(
        state="resolved", resolved_at=world.now, resolution_note="压测 resolved before the next timed scan"
    )
    runs = []
    results = []
    load = _loadavg()
    for _ in range(2):
        started = time.perf_counter()
        results.append(run_risk_scan(now=world.now, jurisdiction=world.jurisdiction))
        runs.append(time.perf_counter() - started)
    first, second = results
    alerts = RiskAlert.objects.filter(jurisdiction=world.jurisdiction, state="open").count()
    assert second.raised == [] and second.seen_again >= len(first.raised)
    return (
        round(max(runs), 2),
        "s",
        _conditions(
            f"risk scan of {first.institutions:,} institutions and {lessons:,} lessons, eleven rules: "
            f"the slower of two consecutive scans ({runs[0]:.1f} s raising and notifying "
            f"{len(first.raised)} alerts, {runs[1]:.1f} s finding them open)",
            institutions=first.institutions,
            lessons=lessons,
            runs_s=[round(r, 2) for r in runs],
            raised_first_run=len(first.raised),
            open_alerts=alerts,
            notes="inbox notifications are delivered inside the timed call (on_commit runs at once)",
            load_avg_1min_before=load,
            load_avg_1min_after=_loadavg(),
        ),
    )

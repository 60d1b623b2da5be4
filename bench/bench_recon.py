"""Benchmarks of reconciliation on PostgreSQL: matching a statement of 1,000,000 lines against the ledger.

What is measured: ``reconciliation.services.matching.match_statement`` over one statement of 1,000,000 lines
already in the database, against 1,000,000 unmatched postings on the institution's ``custody_cash:i`` (and
the custody records that give them their references): the temporary tables of unmatched lines and
postings, the four reference joins streamed in key order, the rules over what is left, the classification,
and the writing of every match (1,000,000 ``Match`` rows and as many line and entry links, by COPY). Not
measured: building the ledger (once, then reused), and importing the lines (``store_statement`` streams them
into the table with COPY; its time is recorded in the conditions). The statement is imported by the parent
process and matched in a child process, inside a transaction that is rolled back after the deferred
foreign-key checks have run (so their cost is measured), so the child's peak resident memory (VmHWM,
including Python and Django, about 100 MB of it) is the matching's, and every run starts from the same state.

The lines: 650,000 bank transfers matched by serial = the bank channel's transaction id (each quoting one
of 1,000 contract numbers); 100,000 transfers matched by their own contract number (HT…); 150,000 release
payouts and 50,000 refunds by their payout reference (PO…/RF…); 50,000 WeChat Pay settlements with no
reference, matched by amount, date and counterparty. Every line matches; no break is raised.

The ledger is built once through the ledger's services (``post_batch``, ``create_pending_batch``,
``resolve_pending_batch``) with custody rows created in bulk, under the institution ``BENCH-RECON-1M``, and
reused by later runs.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from datetime import date, timedelta
from typing import Any

from bench.registry import benchmark

# BENCH_RECON_SCALE=0.01 runs the same shape at 10,000 lines (for trying the benchmark out).
SCALE = float(os.environ.get("BENCH_RECON_SCALE", "1"))
BY_SERIAL = int(650_000 * SCALE)
BY_CONTRACT = int(100_000 * SCALE)
RELEASES = int(150_000 * SCALE)
REFUNDS = int(50_000 * SCALE)
BY_RULE = int(50_000 * SCALE)
LINES = BY_SERIAL + BY_CONTRACT + RELEASES + REFUNDS + BY_RULE
LICENCE = f"BENCH-RECON-{LINES}"
POOL = max(1, int(1_000 * SCALE))  # contracts the serial-matched transfers quote
CHUNK = 10_000
_measured: dict[str, Any] = {}


# --- the ledger, built once ---------------------------------------------------------------------------


def _institution() -> Any:
    from custody.models import Institution
    from custody.services.institutions import register_institution
    from custody.services.policy import ensure_jurisdiction

    found = Institution.objects.filter(licence_number=LICENCE).first()
    if found is not None:
        return found
    jurisdiction = ensure_jurisdiction(code="310199", name="基准测试区")
    return register_institution(
        jurisdiction=jurisdiction,
        name="对账基准机构",
        licence_number=LICENCE,
        category="subject",
        custody_bank_name="基准银行",
        custody_account_number=f"999{LINES:013d}",
        settlement_account_number=f"888{LINES:013d}",
    )


def _contracts(institution: Any, count: int, prefix: str) -> list[Any]:
    """``count`` paid contracts with their prepaid and refund accounts, in bulk (as tests/custody/flows/
    test_scale.py builds them)."""
    from django.db import connection

    from custody.models import Contract, Course
    from custody.selectors.policy import current_policy
    from custody.services.people import add_student, register_guardian
    from ledger import clock
    from ledger.models import Account, AccountType

    existing = list(
        Contract.objects.filter(institution=institution, number__startswith=prefix).order_by("pk")
    )
    if len(existing) >= count:
        return existing[:count]
    earlier = Contract.objects.filter(institution=institution).select_related("student", "guardian").first()
    if earlier is not None:
        guardian, student = earlier.guardian, earlier.student
    else:
        guardian = register_guardian(name="基准家长", phone="13900000001", id_number=_id_number("19800101"))
        student = add_student(guardian=guardian, name="基准学生", id_number=_id_number("20140101"))
    course = Course.objects.filter(institution=institution).first() or Course.objects.create(
        institution=institution,
        name="数学",
        subject="数学",
        category="subject",
        class_size_band="small",
        mode="offline",
        price_per_hour_fen=8_000,
        starts_on=date.today(),
        published=True,
    )
    policy = current_policy(institution.jurisdiction)
    today = date.today()
    now = clock.now()
    made: list[Any] = []
    for start in range(len(existing), count, CHUNK):
        batch = Contract.objects.bulk_create(
            [
                Contract(
                    number=f"{prefix}{n:08d}",
                    institution=institution,
                    course=course,
                    student=student,
                    guardian=guardian,
                    policy=policy,
                    subject="数学",
                    paid_hours=10,
                    amount_fen=80_000,
                    service_starts_on=today,
                    service_ends_on=today + timedelta(days=59),
                    state="active",
                    signed_at=now,
                    paid_at=now,
                )
                for n in range(start, min(start + CHUNK, count))
            ]
        )
        accounts = Account.objects.bulk_create(
            [
                Account(
                    code=f"{kind}:c{c.pk}",
                    type=AccountType.LIABILITY,
                    currency="CNY",
                    debits_must_not_exceed_credits=True,
                )
                for c in batch
                for kind in ("prepaid", "refund_payable")
            ]
        )
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE custody_contract c SET prepaid_account_id = d.p, refund_account_id = d.r "
                "FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) AS d(id, p, r) WHERE c.id = d.id",
                [[c.pk for c in batch], [a.pk for a in accounts[0::2]], [a.pk for a in accounts[1::2]]],
            )
        made.extend(batch)
    return existing + made


def _id_number(birth: str) -> str:
    from custody.services.people import id_number_check_character

    first17 = f"310199{birth}999"
    return first17 + id_number_check_character(first17)


def _payments(
    institution: Any, contracts: list[Any], *, count: int, channel: str, tag: str, amount: Any
) -> None:
    """``count`` payments of ``contracts`` (round robin), confirmed and settled through post_batch."""
    from custody.models import Payment
    from ledger import clock
    from ledger.money import from_minor
    from ledger.services import NewEntry, credit, debit, open_account, post_batch

    done = Payment.objects.filter(channel=channel, transaction_id__startswith=tag).count()
    clearing = open_account(code=f"clearing:{channel}", type="asset")
    cash = f"custody_cash:i{institution.pk}"
    for start in range(done, count, CHUNK):
        rows = []
        entries = []
        for n in range(start, min(start + CHUNK, count)):
            contract = contracts[n % len(contracts)]
            fen = amount(n)
            txn = f"{tag}{n:010d}"
            money = from_minor(fen, "CNY")
            entries.append(
                NewEntry(
                    f"bench:recon:pay:{txn}",
                    "payment",
                    [debit(clearing, money), credit(f"prepaid:c{contract.pk}", money)],
                )
            )
            entries.append(
                NewEntry(
                    f"bench:recon:settle:{txn}", "settlement", [debit(cash, money), credit(clearing, money)]
                )
            )
            rows.append((contract, txn, fen))
        result = post_batch(entries=entries)
        now = clock.now()
        Payment.objects.bulk_create(
            [
                Payment(
                    contract=contract,
                    channel=channel,
                    transaction_id=txn,
                    amount_fen=fen,
                    paid_at=now,
                    received_at=now,
                    payer_account="",
                    raw_payload=b"{}",
                    entry=result.entries[2 * i],
                    settlement_entry=result.entries[2 * i + 1],
                    settled_at=now,
                )
                for i, (contract, txn, fen) in enumerate(rows)
            ]
        )


def _payouts(institution: Any) -> None:
    """Executed payouts: holds on custody cash posted through the ledger, with their instructions."""
    from custody.models import PayoutInstruction
    from custody.services._bulk import reserve_ids
    from custody.services.payouts import hold_key, reference_for
    from ledger import clock
    from ledger.money import from_minor
    from ledger.services import (
        NewEntry,
        NewPending,
        Resolution,
        create_pending_batch,
        credit,
        debit,
        open_account,
        post_batch,
        resolve_pending_batch,
    )

    total = RELEASES + REFUNDS
    done = PayoutInstruction.objects.filter(institution=institution).count()
    if done >= total:
        return
    payable = f"payable:i{institution.pk}"
    # What the institution earned, so the payouts have something to pay (lessons are not what is measured).
    earned = from_minor(10_000 * total, "CNY")
    open_account(code="clearing:bench", type="asset")
    post_batch(
        entries=[
            NewEntry(
                f"bench:recon:earned:{LINES}",
                "bench_funding",
                [debit("clearing:bench", earned), credit(payable, earned)],
            )
        ]
    )
    cash = f"custody_cash:i{institution.pk}"
    for start in range(done, total, CHUNK):
        count = min(CHUNK, total - start)
        ids = reserve_ids(PayoutInstruction, count)
        holds = create_pending_batch(
            transfers=[
                NewPending(
                    hold_key(pk),
                    "payout_release",
                    payable,
                    cash,
                    from_minor(_payout_amount(start + i), "CNY"),
                )
                for i, pk in enumerate(ids)
            ]
        )
        now = clock.now()
        PayoutInstruction.objects.bulk_create(
            [
                PayoutInstruction(
                    id=pk,
                    institution=institution,
                    kind="release" if start + i < RELEASES else "refund",
                    reference=reference_for("release" if start + i < RELEASES else "refund", pk, now),
                    amount_fen=_payout_amount(start + i),
                    destination_account="",
                    pending_transfer=hold,
                    state="executed",
                    instructed_at=now,
                    executed_at=now,
                )
                for i, (pk, hold) in enumerate(zip(ids, holds, strict=True))
            ]
        )
        resolve_pending_batch(
            resolutions=[
                Resolution(h.pk, "post", f"payout:{pk}:executed") for pk, h in zip(ids, holds, strict=True)
            ]
        )


def _transfer_amount(n: int) -> int:
    return 10_000 + (n * 7919) % 990_000


def _settlement_amount(n: int) -> int:
    return 5_000 + (n * 104_729) % 4_995_000


def _payout_amount(n: int) -> int:
    return 100 + (n * 31) % 9_900


def build_ledger() -> Any:
    institution = _institution()
    pool = _contracts(institution, POOL, f"HT9{LINES:07d}")
    own = _contracts(institution, BY_CONTRACT, f"HT8{LINES:07d}")
    _payments(institution, pool, count=BY_SERIAL, channel="bank", tag=f"BKS{LINES}-", amount=_transfer_amount)
    _payments(
        institution, own, count=BY_CONTRACT, channel="unionpay", tag=f"UPC{LINES}-", amount=_transfer_amount
    )
    _payments(
        institution, pool, count=BY_RULE, channel="wechat", tag=f"WXR{LINES}-", amount=_settlement_amount
    )
    _payouts(institution)
    return institution


# --- the statement ----------------------------------------------------------------------------------


def statement_lines(institution: Any, day: date) -> list[Any]:
    """The 1,000,000 lines the bank would print for what the ledger holds, in its own order. Read before
    the COPY starts (one connection cannot read while it copies)."""
    from django.db import connection

    from reconciliation.formats import StatementLine

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT p.transaction_id, p.channel, p.amount_fen, c.number FROM custody_payment p "
            "JOIN custody_contract c ON c.id = p.contract_id WHERE c.institution_id = %s ORDER BY p.id",
            [institution.pk],
        )
        payments = cursor.fetchall()
        cursor.execute(
            "SELECT reference, amount_fen FROM custody_payoutinstruction "
            "WHERE institution_id = %s ORDER BY id",
            [institution.pk],
        )
        payouts = cursor.fetchall()
    lines: list[StatementLine] = []
    for txn, channel, fen, number in payments:
        n = len(lines) + 1
        if channel == "bank":
            serial, reference, name = txn, number, "家长"
        elif channel == "unionpay":
            serial, reference, name = f"S{n:011d}", number, "银联商务股份有限公司"
        else:
            serial, reference, name = f"S{n:011d}", "", "财付通支付科技有限公司"
        lines.append(StatementLine(n, serial, day, day, fen, None, name, "", reference, "学费"))
    for reference, fen in payouts:
        n = len(lines) + 1
        lines.append(StatementLine(n, f"S{n:011d}", day, day, -fen, None, "", "", reference, "拨付"))
    return lines


def import_statement_of(institution: Any, run: str) -> tuple[Any, float]:
    from ledger.models import Posting
    from reconciliation.formats import Statement
    from reconciliation.selectors.days import local_date
    from reconciliation.services.imports import store_statement

    last = (
        Posting.objects.filter(account_id=institution.cash_account_id)
        .order_by("-posted_at")
        .values_list("posted_at", flat=True)
        .first()
    )
    if last is None:
        raise RuntimeError("the bench ledger has no postings on custody cash")
    day = local_date(last)
    _clean(institution)
    cash = institution.cash_account
    cash.refresh_from_db()
    closing = cash.debits_posted - cash.credits_posted
    header = Statement(
        institution.custody_account_number, "CNY", f"BENCH-{run}", None, day, day, 0, closing, ()
    )
    started = time.perf_counter()
    result = store_statement(
        header=header,
        lines=statement_lines(institution, day),
        format="generated",
        file_sha256=f"bench-{run}".ljust(64, "0"),
    )
    return result.statement, time.perf_counter() - started


def _clean(institution: Any) -> None:
    """Remove what an earlier run left (a run rolls its matching back; this is for one that was killed)."""
    from reconciliation.models import BankStatement, BankStatementLine, Break

    left = BankStatement.objects.filter(institution=institution)
    if Break.objects.filter(institution=institution).exists():
        raise RuntimeError("the bench institution has breaks from an earlier run; run bench/run.py --fresh")
    BankStatementLine.objects.filter(statement__in=left).delete()
    left.delete()


# --- the measurement (a child process) ---------------------------------------------------------------


def child(statement_id: int) -> dict[str, Any]:
    from django.db import connection, transaction

    from reconciliation.models import BankStatement, Break
    from reconciliation.services.matching import match_statement

    statement = BankStatement.objects.get(pk=statement_id)
    with transaction.atomic():
        started = time.perf_counter()
        summary = match_statement(statement=statement)
        matched = time.perf_counter()
        with connection.cursor() as cursor:
            # The foreign keys are checked at commit; check them now, so their cost is measured too.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        seconds = time.perf_counter() - started
        breaks = Break.objects.filter(institution_id=statement.institution_id).count()
        transaction.set_rollback(True)
    return {
        "seconds": round(seconds, 2),
        "peak_mb": _peak_resident_mb(),
        "matched_lines": summary.matched_lines,
        "matched_postings": summary.matched_postings,
        "matches_by_rule": dict(summary.matches_by_rule),
        "breaks": breaks,
        "phases_s": {**summary.seconds, "foreign_key_checks": round(seconds - (matched - started), 3)},
    }


def _peak_resident_mb() -> float:
    """This process's peak resident memory: VmHWM, the high-water mark of its own address space (reset at
    exec, unlike ``ru_maxrss``, which a child started by fork and exec inherits from its parent)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _measure() -> dict[str, Any]:
    if _measured:
        return _measured
    from django.db import connection

    build_started = time.perf_counter()
    institution = build_ledger()
    build_s = time.perf_counter() - build_started
    run = str(int(time.time()))
    _vacuum_analyze()
    statement, import_s = import_statement_of(institution, run)
    try:
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE reconciliation_bankstatementline")
        completed = subprocess.run(
            [sys.executable, __file__, "--child", str(statement.pk)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
        result = json.loads(completed.stdout.strip().splitlines()[-1])
    finally:
        _clean(institution)
    if result["matched_lines"] != LINES or result["breaks"]:
        raise RuntimeError(f"the benchmark statement did not match cleanly: {result}")
    _measured.update(result, import_s=round(import_s, 2), build_s=round(build_s, 1), lines=LINES)
    return _measured


def _vacuum_analyze() -> None:
    """Fresh statistics and visibility maps, as autovacuum keeps them in production (not measured)."""
    from django.db import connection

    tables = [
        "ledger_posting",
        "ledger_entry",
        "ledger_pendingtransfer",
        "custody_payment",
        "custody_payoutinstruction",
        "custody_contract",
        "reconciliation_match",
        "reconciliation_matchline",
        "reconciliation_matchentry",
        "reconciliation_bankstatementline",
    ]
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"VACUUM ANALYZE {table}")


def _conditions(summary: str) -> dict[str, Any]:
    m = _measured
    return {
        "summary": summary,
        "lines": LINES,
        "postings": m["matched_postings"],
        "matches_by_rule": m["matches_by_rule"],
        "phases_s": m["phases_s"],
        "import_s (not measured: COPY of the lines)": m["import_s"],
        "ledger build or reuse s": m["build_s"],
        "machine": f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}",
        "database": "PostgreSQL, one connection, matching in a child process, rolled back",
    }


@benchmark("recon.match_1m_s", target="< 60")
def match_1m_s() -> tuple[float, str, dict[str, Any]]:
    m = _measure()
    return (
        m["seconds"],
        "s",
        _conditions(f"match a {LINES:,}-line statement against {LINES:,} postings: {m['seconds']} s"),
    )


@benchmark("recon.match_1m_peak_mb", target="< 1,024")
def match_1m_peak_mb() -> tuple[float, str, dict[str, Any]]:
    m = _measure()
    return (
        m["peak_mb"],
        "MB",
        _conditions(f"peak RSS of the matching process (Django included): {m['peak_mb']} MB"),
    )


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--child":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    print(json.dumps(child(int(sys.argv[2]))))

"""Benchmarks of the ledger engine on PostgreSQL, all through its service API.

Every benchmark works in its own accounts (codes start with ``bench:<area>:``) and uses idempotency keys that
carry a per-run id, so re-runs never collide and the append-only tables only grow. The read and verification
benchmarks share one large data set (``bench:read:*``, 500,000 transfers = 1,000,000 postings) that is built
once with ``post_batch`` under deterministic keys; later runs reuse it (or finish it if a build stopped).

Timed sections call the services exactly as production code does; only funding and data setup use
``post_batch`` for speed (it is a service too, so every invariant holds and ``verify`` passes afterwards).
``BENCH_SECONDS`` (default 5) is how long the timed posting runs last. Each result's conditions record the
machine, the database and its size, the processes, the load average before and after, and what was checked.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import random
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bench.registry import benchmark

if TYPE_CHECKING:
    from ledger.services import Limit

CURRENCY = "CNY"
RUN_SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
WARMUP_TRANSFERS = 200

# --- shared helpers -----------------------------------------------------------------------------------------


def _run_id() -> str:
    return uuid.uuid4().hex[:12]


def _money(minor: int) -> Any:
    from ledger.money import from_minor

    return from_minor(minor, CURRENCY)


def _pg_setting(name: str) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting(%s)", [name])
        return str(cursor.fetchone()[0])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _database_size() -> dict[str, int]:
    """Row counts of the ledger's big tables (estimates are not good enough to state in conditions)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT count(*) FROM ledger_entry), (SELECT count(*) FROM ledger_posting), "
            "(SELECT count(*) FROM ledger_account)"
        )
        entries, postings, accounts = cursor.fetchone()
    return {"entries": entries, "postings": postings, "accounts": accounts}


def _load_note(before: list[float]) -> str:
    after = _loadavg()
    return f"load avg (1 min) {before[0]:.2f} before, {after[0]:.2f} after, on {os.cpu_count()} cores"


def _base_conditions(summary: str, **extra: Any) -> dict[str, Any]:
    from django.conf import settings

    db = settings.DATABASES["default"]
    return {
        "summary": summary,
        "machine": f"{os.cpu_count()} cores, {_cpu_model()}, shared with other engineers' test runs",
        "database": (
            f"PostgreSQL {_pg_setting('server_version')} "
            f"db={db['NAME']} on {db.get('HOST') or 'localhost'} (synchronous_commit="
            f"{_pg_setting('synchronous_commit')}, fsync={_pg_setting('fsync')}, "
            f"shared_buffers={_pg_setting('shared_buffers')})"
        ),
        "python": platform.python_version(),
        "maintenance": _autovacuum_note(),
        **extra,
    }


def _accounts(prefix: str, count: int, *, type: str, limit: Limit) -> list[Any]:
    """Open (or reuse) ``count`` accounts named ``prefix:0000`` ... in one currency with one limit."""
    from ledger import services
    from ledger.models import Account

    codes = [f"{prefix}:{n:04d}" for n in range(count)]
    existing = {a.code: a for a in Account.objects.filter(code__in=codes)}
    for code in codes:
        if code not in existing:
            existing[code] = services.open_account(code=code, type=type, currency=CURRENCY, limit=limit)
    return [existing[code] for code in codes]


def _account(code: str, *, type: str, limit: Limit) -> Any:
    from ledger import services

    return services.open_account(code=code, type=type, currency=CURRENCY, limit=limit)


def _fund(cash: Any, liabilities: Sequence[Any], *, minimum: int, amount: int, run: str) -> int:
    """Top up every liability below ``minimum`` minor units by ``amount`` (Dr cash / Cr liability).

    Funding keeps the limit-carrying accounts far from their limits, so the timed transfers never fail."""
    from ledger import selectors, services
    from ledger.models import Account
    from ledger.money import to_minor

    fresh = {a.pk: a for a in Account.objects.filter(pk__in=[a.pk for a in liabilities])}
    low = [
        a for a in liabilities if to_minor(selectors.balance(fresh[a.pk], refresh=False).available) < minimum
    ]
    if not low:
        return 0
    entries = [
        services.NewEntry(
            idempotency_key=f"{cash.code}:fund:{run}:{a.code}",
            kind="bench_funding",
            legs=[services.debit(cash, _money(amount)), services.credit(a, _money(amount))],
        )
        for a in low
    ]
    for start in range(0, len(entries), 5_000):
        services.post_batch(entries=entries[start : start + 5_000])
    return len(low)


LEDGER_TABLES = (
    "ledger_account",
    "ledger_entry",
    "ledger_posting",
    "ledger_unsealedentry",
    "ledger_chainlink",
    "ledger_pendingtransfer",
)


def _vacuum_analyze() -> None:
    """VACUUM (ANALYZE) the ledger's tables before timing. Autovacuum may be off on a shared server (it is
    on the one these results come from); without it the hot account rows bloat and the planner has no
    statistics, which would measure the server's configuration rather than the ledger."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM (ANALYZE) {', '.join(LEDGER_TABLES)}")


def _autovacuum_note() -> str:
    return (
        f"autovacuum={_pg_setting('autovacuum')} on this server, so the ledger tables were "
        "VACUUM (ANALYZE)d before timing"
    )


def _posting_counts(accounts: Sequence[Any]) -> dict[int, int]:
    from ledger.models import Account

    return dict(Account.objects.filter(pk__in=[a.pk for a in accounts]).values_list("pk", "posting_count"))


def _assert_posting_delta(accounts: Sequence[Any], before: dict[int, int], expected: int, what: str) -> int:
    after = _posting_counts(accounts)
    delta = sum(after[pk] - before[pk] for pk in before)
    if delta != expected:
        raise AssertionError(f"{what}: expected {expected} new postings on the bench accounts, found {delta}")
    return delta


def _backend_cpu_seconds() -> float | None:
    """CPU seconds used so far by this connection's PostgreSQL backend (None unless the server is local)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # utime and stime are fields 14 and 15 of /proc/<pid>/stat; fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_split(python_s: float, backend_s: float | None, transfers: int, elapsed_s: float) -> dict[str, Any]:
    """Where one transfer's wall time goes: CPU in the Python client, CPU in its backend, and the rest
    (waiting for WAL flushes, locks and for a core on this shared machine)."""
    per = 1000 / transfers
    split: dict[str, Any] = {"wall": round(elapsed_s * per, 3), "python_cpu": round(python_s * per, 3)}
    if backend_s is not None:
        split["postgres_backend_cpu"] = round(backend_s * per, 3)
    return split


def _split_note(split: dict[str, Any]) -> str:
    backend = split.get("postgres_backend_cpu")
    return f"{split['wall']:.2f} ms wall per transfer, of it CPU {split['python_cpu']:.2f} ms in Python" + (
        f" + {backend:.2f} ms in PostgreSQL" if backend is not None else ""
    )


def _timed_calls(call: Callable[[], object], *, warmup: int, samples: int) -> list[float]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times


def _commit_floor_ms(samples: int = 300) -> float:
    """Median wall time of a one-row INSERT + COMMIT on this server: the WAL flush every serial transaction
    waits for (synchronous_commit and fsync as configured), so a serial figure can be read against it."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS bench_commit_floor (n integer)")
        times = []
        for n in range(samples):
            started = time.perf_counter()
            cursor.execute("INSERT INTO bench_commit_floor VALUES (%s)", [n])  # autocommit: one flush each
            times.append((time.perf_counter() - started) * 1000)
        cursor.execute("TRUNCATE bench_commit_floor")
    return round(statistics.median(times), 3)


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# --- posting: one process -----------------------------------------------------------------------------------


@benchmark("ledger.post_serial_tps", target="≥ 2,000")
def post_serial_tps() -> tuple[float, str, dict[str, Any]]:
    """Two-posting transfers per second, one autocommit transaction each, one process."""
    from django.db import connection

    from ledger import services

    load_before = _loadavg()
    run = _run_id()
    cash = _account("bench:serial:cash", type="asset", limit="credits_must_not_exceed_debits")
    wallets = _accounts("bench:serial:wallet", 200, type="liability", limit="debits_must_not_exceed_credits")
    _fund(cash, wallets, minimum=100_000_00, amount=1_000_000_00, run=run)
    _vacuum_analyze()
    rng = random.Random(1)
    pairs: list[tuple[Any, Any]] = []
    while len(pairs) < 1_000:
        a, b = rng.sample(wallets, 2)
        pairs.append((a, b))
    assert not connection.in_atomic_block, "transfer must run outside atomic() for the autocommit path"
    commit_floor = _commit_floor_ms()

    counter = 0

    def one_transfer() -> None:
        nonlocal counter
        counter += 1
        dr, cr = pairs[counter % len(pairs)]
        services.transfer(
            idempotency_key=f"bench:serial:{run}:{counter}",
            kind="bench_transfer",
            debit_account=dr,
            credit_account=cr,
            amount=_money(1 + counter % 10_000),
        )

    for _ in range(WARMUP_TRANSFERS):
        one_transfer()
    before = _posting_counts(wallets)
    backend_before = _backend_cpu_seconds()
    done = 0
    cpu_started = time.process_time()
    started = time.perf_counter()
    deadline = started + RUN_SECONDS
    while time.perf_counter() < deadline:
        one_transfer()
        done += 1
    elapsed = time.perf_counter() - started
    python_cpu = time.process_time() - cpu_started
    backend_after = _backend_cpu_seconds()
    backend_cpu = None if backend_before is None or backend_after is None else backend_after - backend_before
    _assert_posting_delta(wallets, before, 2 * done, "post_serial_tps")
    tps = done / elapsed
    db_size = _database_size()
    print(f"  post_serial_tps: {done} transfers in {elapsed:.2f} s = {tps:,.0f}/s")
    return (
        round(tps, 1),
        "transfers/s",
        _base_conditions(
            f"1 process, services.transfer in autocommit (2 postings), {done:,} transfers in "
            f"{elapsed:.1f} s; {_split_note(_cpu_split(python_cpu, backend_cpu, done, elapsed))}; "
            f"a bare one-row INSERT + COMMIT takes {commit_floor:.2f} ms here (median); "
            f"{_load_note(load_before)}",
            processes=1,
            commit_floor_ms=commit_floor,
            connections=1,
            workload=(
                f"services.transfer outside atomic() (one autocommit round trip each), 2 postings, "
                f"1,000 random pairs of 200 funded liability accounts with limits; {WARMUP_TRANSFERS} "
                f"warm-up transfers, then {done:,} in {elapsed:.2f} s"
            ),
            ms_per_transfer=_cpu_split(python_cpu, backend_cpu, done, elapsed),
            checked=f"posting_count grew by exactly {2 * done:,} on the bench accounts",
            data_size=db_size,
            loadavg_before=load_before,
            loadavg_after=_loadavg(),
        ),
    )


# --- posting: four processes on one hot account -------------------------------------------------------------


@dataclass(frozen=True)
class _WorkerResult:
    transfers: int
    debited_to_hot: int
    credited_to_hot: int
    started: float
    finished: float
    python_cpu: float
    backend_cpu: float | None


def _contended_worker(
    worker: int, run: str, hot_id: int, others: list[int], ready: Any, go: Any, start_at: Any, out: Any
) -> None:
    """One writer process: set up Django, warm up, then move money to and from the hot account until the
    shared deadline."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from ledger import services
    from ledger.models import Account

    hot = Account.objects.get(pk=hot_id)
    accounts = {a.pk: a for a in Account.objects.filter(pk__in=others)}
    peers = [accounts[pk] for pk in others]
    rng = random.Random(worker)
    counter = 0
    debited = credited = 0

    def one_transfer() -> None:
        nonlocal counter, debited, credited
        counter += 1
        peer = peers[rng.randrange(len(peers))]
        amount = rng.randint(1, 10_000)
        # Payments in (Dr cash) and refunds out (Cr cash) alternate: cash's limit is checked both ways.
        if counter % 2:
            dr, cr = hot, peer
            debited += amount
        else:
            dr, cr = peer, hot
            credited += amount
        services.transfer(
            idempotency_key=f"bench:contended:{run}:{worker}:{counter}",
            kind="bench_transfer",
            debit_account=dr,
            credit_account=cr,
            amount=_money(amount),
        )

    for _ in range(WARMUP_TRANSFERS // 4):
        one_transfer()
    warm_counter, warm_debited, warm_credited = counter, debited, credited
    backend_before = _backend_cpu_seconds()
    ready.release()
    go.wait()
    cpu_started = time.process_time()
    started = time.perf_counter()
    deadline = start_at.value + RUN_SECONDS
    while time.time() < deadline:
        one_transfer()
    finished = time.perf_counter()
    python_cpu = time.process_time() - cpu_started
    backend_after = _backend_cpu_seconds()
    out.put(
        (
            worker,
            _WorkerResult(
                counter - warm_counter,
                debited - warm_debited,
                credited - warm_credited,
                started,
                finished,
                python_cpu,
                None if backend_before is None or backend_after is None else backend_after - backend_before,
            ),
            counter,
        )
    )


@benchmark("ledger.post_contended_tps", target="≥ 1,500")
def post_contended_tps() -> tuple[float, str, dict[str, Any]]:
    """Four processes, every transfer debiting or crediting one hot cash account; invariants checked after."""
    from django.db import connection

    from ledger import verification
    from ledger.models import Account

    processes = 4
    load_before = _loadavg()
    run = _run_id()
    hot = _account("bench:contended:cash", type="asset", limit="credits_must_not_exceed_debits")
    peers = _accounts(
        "bench:contended:prepaid", 1_000, type="liability", limit="debits_must_not_exceed_credits"
    )
    _fund(hot, peers, minimum=100_000_00, amount=1_000_000_00, run=run)
    _vacuum_analyze()
    connection.close()  # children open their own connections; the parent reconnects after

    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Semaphore(0)
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    out = ctx.Queue()
    workers = [
        ctx.Process(
            target=_contended_worker,
            args=(n, run, hot.pk, [p.pk for p in peers], ready, go, start_at, out),
            name=f"bench-contended-{n}",
        )
        for n in range(processes)
    ]
    for w in workers:
        w.start()
    for _ in workers:
        if not ready.acquire(timeout=120):
            for w in workers:
                w.terminate()
            raise RuntimeError("a contended worker did not get ready within 120 s")
    before = Account.objects.get(pk=hot.pk)
    start_at.value = time.time()
    go.set()
    results: dict[int, _WorkerResult] = {}
    total_calls = 0
    for _ in workers:
        worker, result, calls = out.get(timeout=RUN_SECONDS + 120)
        results[worker] = result
        total_calls += calls
    for w in workers:
        w.join(timeout=30)
        if w.exitcode != 0:
            raise RuntimeError(f"contended worker {w.name} exited with {w.exitcode}")
    after = Account.objects.get(pk=hot.pk)

    transfers = sum(r.transfers for r in results.values())
    elapsed = max(r.finished - r.started for r in results.values())
    tps = transfers / elapsed
    # Every transfer touched the hot account once, so its counters must have moved by exactly what was sent.
    checks = {
        "hot postings": (after.posting_count - before.posting_count, transfers),
        "hot debits": (
            after.debits_posted - before.debits_posted,
            sum(r.debited_to_hot for r in results.values()),
        ),
        "hot credits": (
            after.credits_posted - before.credits_posted,
            sum(r.credited_to_hot for r in results.values()),
        ),
    }
    for name, (got, expected) in checks.items():
        if got != expected:
            raise AssertionError(f"post_contended_tps: {name} moved by {got}, workers sent {expected}")

    report = verification.Report()
    verify_started = time.perf_counter()
    verification.check_entries_balance(report)
    verification.check_materialized_totals(report)
    verification.check_limits(report)
    verify_seconds = time.perf_counter() - verify_started
    db_size = _database_size()
    if not report.ok:
        shown = "; ".join(f"[{f.check}] {f.subject}: {f.problem}" for f in report.findings[:10])
        raise AssertionError(f"post_contended_tps: invariants violated ({len(report.findings)}): {shown}")
    split = _cpu_split(
        sum(r.python_cpu for r in results.values()),
        None
        if any(r.backend_cpu is None for r in results.values())
        else sum(r.backend_cpu or 0.0 for r in results.values()),
        transfers,
        elapsed,
    )
    print(
        f"  post_contended_tps: {transfers} transfers by {processes} processes in {elapsed:.2f} s "
        f"= {tps:,.0f}/s"
    )
    return (
        round(tps, 1),
        "transfers/s",
        _base_conditions(
            f"{processes} processes (spawn), each transfer debits or credits 1 hot cash account, "
            f"{transfers:,} transfers in {elapsed:.1f} s; {_split_note(split)} (4 clients, 4 backends); "
            "invariants OK (check_entries_balance, check_materialized_totals, check_limits); "
            f"{_load_note(load_before)}",
            processes=f"{processes} (multiprocessing spawn, each its own Django setup and connection)",
            workload=(
                "services.transfer outside atomic(), 2 postings; every transfer debits or credits one hot "
                "asset account (bench:contended:cash, limit: never below zero) against one of 1,000 funded "
                f"liability accounts with limits; payments in and refunds out alternate; "
                f"{WARMUP_TRANSFERS // 4} warm-up transfers per process, then {transfers:,} in "
                f"{elapsed:.2f} s "
                f"({', '.join(str(results[n].transfers) for n in sorted(results))} per process)"
            ),
            checked=(
                "hot account posting_count/debits/credits moved by exactly what the workers sent; "
                "verification.check_entries_balance, check_materialized_totals, check_limits: "
                f"OK, no findings ({verify_seconds:.1f} s over the whole database)"
            ),
            invariants="OK",
            ms_per_transfer=split,
            data_size=db_size,
            loadavg_before=load_before,
            loadavg_after=_loadavg(),
        ),
    )


# --- posting: batches ---------------------------------------------------------------------------------------

BATCH_TRANSFERS = 100_000
BATCH_SIZES = (5_000, 10_000)
BATCH_PROBE = 20_000  # transfers per candidate size, to pick the size the 100,000 are posted with


def _batch_entries(
    tag: str, count: int, prepaid: Sequence[Any], payable: Sequence[Any], seed: int
) -> list[Any]:
    """A release run: Dr one of 1,000 prepaid liabilities / Cr one of 10 institution payables."""
    from ledger import services

    rng = random.Random(seed)
    return [
        services.NewEntry(
            idempotency_key=f"bench:batch:{tag}:{n}",
            kind="bench_release",
            legs=[
                services.debit(prepaid[rng.randrange(len(prepaid))], _money(amount)),
                services.credit(payable[rng.randrange(len(payable))], _money(amount)),
            ],
        )
        for n, amount in enumerate(rng.randint(1, 10_000) for _ in range(count))
    ]


@dataclass(frozen=True)
class _BatchRun:
    transfers: int
    size: int
    seconds: float
    split: dict[str, Any]

    @property
    def rate(self) -> float:
        return self.transfers / self.seconds


def _post_in_batches(entries: list[Any], size: int, accounts: Sequence[Any]) -> _BatchRun:
    """Post ``entries`` with services.post_batch, ``size`` at a time; check every one became an entry."""
    from ledger import services

    before = _posting_counts(accounts)
    created = 0
    backend_before = _backend_cpu_seconds()
    cpu_started = time.process_time()
    started = time.perf_counter()
    for start in range(0, len(entries), size):
        created += services.post_batch(entries=entries[start : start + size]).created
    elapsed = time.perf_counter() - started
    python_cpu = time.process_time() - cpu_started
    backend_after = _backend_cpu_seconds()
    if created != len(entries):
        raise AssertionError(f"post_batch_tps: {created} entries created, {len(entries)} sent")
    _assert_posting_delta(accounts, before, 2 * len(entries), f"post_batch_tps batch size {size}")
    backend_cpu = None if backend_before is None or backend_after is None else backend_after - backend_before
    split = _cpu_split(python_cpu, backend_cpu, len(entries) // 1000, elapsed)
    return _BatchRun(len(entries), size, elapsed, split)


@benchmark("ledger.post_batch_tps", target="≥ 30,000")
def post_batch_tps() -> tuple[float, str, dict[str, Any]]:
    """100,000 two-posting transfers through services.post_batch, at the batch size a probe found best."""
    load_before = _loadavg()
    run = _run_id()
    cash = _account("bench:batch:cash", type="asset", limit="credits_must_not_exceed_debits")
    prepaid = _accounts(
        "bench:batch:prepaid", 1_000, type="liability", limit="debits_must_not_exceed_credits"
    )
    payable = _accounts("bench:batch:payable", 10, type="liability", limit="debits_must_not_exceed_credits")
    accounts = [*prepaid, *payable]
    _fund(cash, prepaid, minimum=200_000_00, amount=1_000_000_00, run=run)
    _vacuum_analyze()
    # Warm-up: one small batch so the connection, caches and plans are in place.
    _post_in_batches(_batch_entries(f"{run}:warm", 1_000, prepaid, payable, seed=0), 1_000, accounts)

    probes = {
        size: _post_in_batches(
            _batch_entries(f"{run}:probe{size}", BATCH_PROBE, prepaid, payable, seed=size), size, accounts
        )
        for size in BATCH_SIZES
    }
    for probe in probes.values():
        print(f"  post_batch_tps: probe, batch size {probe.size:,}: {probe.rate:,.0f}/s")
    best = max(BATCH_SIZES, key=lambda size: probes[size].rate)
    timed = _post_in_batches(
        _batch_entries(f"{run}:timed", BATCH_TRANSFERS, prepaid, payable, seed=1), best, accounts
    )
    print(f"  post_batch_tps: {BATCH_TRANSFERS:,} in {timed.seconds:.2f} s at batch size {best:,}")
    db_size = _database_size()
    probe_note = ", ".join(f"{p.size:,}: {p.rate:,.0f}/s" for p in probes.values())
    return (
        round(timed.rate, 1),
        "transfers/s",
        _base_conditions(
            f"{BATCH_TRANSFERS:,} transfers via services.post_batch in batches of {best:,} (the faster "
            f"size in a {BATCH_PROBE:,}-transfer probe: {probe_note}), {timed.seconds:.1f} s; "
            f"{_load_note(load_before)}",
            processes=1,
            workload=(
                f"{BATCH_TRANSFERS:,} transfers (Dr one of 1,000 prepaid liabilities / Cr one of 10 "
                "payables, all with limits) through services.post_batch(on_error='rollback'), timed from "
                "Python objects to committed rows (validation, request hashes and the set-based statement: "
                "one per batch, or past 2,500 entries one per 2,500-entry chunk, pipelined in one "
                "transaction)"
            ),
            batch_size=best,
            probe=(
                f"{BATCH_PROBE:,} transfers at each of {', '.join(f'{s:,}' for s in BATCH_SIZES)}: "
                + probe_note
            ),
            ms_per_1000_transfers={
                "timed": timed.split,
                **{f"probe {p.size:,}": p.split for p in probes.values()},
            },
            checked="post_batch created one entry per transfer and posting_count grew by 2 per transfer",
            data_size=db_size,
            loadavg_before=load_before,
            loadavg_after=_loadavg(),
        ),
    )


# --- the large data set for reads and verification -------------------------------------------------------

READ_TRANSFERS = 500_000  # = 1,000,000 postings, every one of them touching the hot cash account once
READ_FILL_BATCH = 10_000
READ_PEERS = 1_000


@dataclass(frozen=True)
class ReadDataSet:
    cash: Any
    peers: list[Any]
    built_seconds: float
    transfers_posted_now: int


def _read_dataset() -> ReadDataSet:
    """Build (or finish building) the 500,000-transfer data set; return at once when it is complete.

    Keys are deterministic (``bench:read:<batch>:<n>``) and each batch is atomic, so the hot account's
    posting_count says exactly how many batches exist; an interrupted build resumes where it stopped."""
    from ledger import services
    from ledger.models import Account

    cash = _account("bench:read:cash", type="asset", limit="credits_must_not_exceed_debits")
    peers = _accounts(
        "bench:read:prepaid", READ_PEERS, type="liability", limit="debits_must_not_exceed_credits"
    )
    done = Account.objects.get(pk=cash.pk).posting_count
    if done % READ_FILL_BATCH:
        raise RuntimeError(f"bench:read:cash has {done} postings, not a multiple of {READ_FILL_BATCH}")
    started = time.perf_counter()
    posted = 0
    for batch in range(done // READ_FILL_BATCH, READ_TRANSFERS // READ_FILL_BATCH):
        rng = random.Random(batch)
        entries = []
        for n in range(READ_FILL_BATCH):
            peer = peers[rng.randrange(READ_PEERS)]
            amount = _money(rng.randint(1, 100_000))
            # Payments in only, so no limit can break whatever order batches land in.
            entries.append(
                services.NewEntry(
                    idempotency_key=f"bench:read:{batch}:{n}",
                    kind="bench_payment",
                    legs=[services.debit(cash, amount), services.credit(peer, amount)],
                )
            )
        result = services.post_batch(entries=entries)
        if result.created != READ_FILL_BATCH:
            raise AssertionError(f"read data set batch {batch}: {result.created} created")
        posted += result.created
        if batch % 10 == 9:
            print(
                f"  read data set: {(batch + 1) * READ_FILL_BATCH:,} / {READ_TRANSFERS:,} transfers",
                flush=True,
            )
    _vacuum_analyze()
    return ReadDataSet(cash, peers, time.perf_counter() - started, posted)


def _dataset_conditions(data: ReadDataSet) -> str:
    built = (
        f"built now: {data.transfers_posted_now:,} transfers in {data.built_seconds:.1f} s"
        if data.transfers_posted_now
        else "reused from an earlier run"
    )
    return (
        f"bench:read data set: {READ_TRANSFERS:,} transfers (Dr bench:read:cash / Cr one of {READ_PEERS:,} "
        f"prepaid accounts) = {2 * READ_TRANSFERS:,} postings, {READ_TRANSFERS:,} of them on "
        "bench:read:cash, "
        f"posted with services.post_batch in batches of {READ_FILL_BATCH:,} ({built})"
    )


def _explain(sql: str, params: list[Any]) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
        return " | ".join(row[0].strip() for row in cursor.fetchall())


@benchmark("ledger.balance_read_ms", target="< 1")
def balance_read_ms() -> tuple[float, str, dict[str, Any]]:
    """Median latency of selectors.balance for the account with 500,000 postings."""
    from django.db import connection

    from ledger import selectors
    from ledger.money import to_minor

    load_before = _loadavg()
    data = _read_dataset()
    cash = data.cash
    # Correctness, once: the materialized balance equals the sum of the account's postings.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(sum(amount), 0), count(*) FROM ledger_posting WHERE account_id = %s", [cash.pk]
        )
        summed, count = cursor.fetchone()
    current = selectors.balance(cash)
    if to_minor(current.posted) != summed:
        raise AssertionError(f"balance_read_ms: balance {current.posted} but postings sum to {summed} fen")
    times = _timed_calls(lambda: selectors.balance(cash), warmup=200, samples=5_000)
    median = statistics.median(times)
    db_size = _database_size()
    print(f"  balance_read_ms: median {median:.3f} ms, p99 {_percentile(times, 0.99):.3f} ms")
    return (
        round(median, 4),
        "ms median",
        _base_conditions(
            f"selectors.balance on an account with {count:,} postings, database holding "
            f"{db_size['postings']:,} postings; p99 {_percentile(times, 0.99):.3f} ms; "
            f"{_load_note(load_before)}",
            processes=1,
            workload=(
                "selectors.balance(account) (refresh=True: one primary-key read of the account row), "
                f"5,000 timed calls after 200 warm-up, on an account with {count:,} postings"
            ),
            data=_dataset_conditions(data),
            latency_ms={
                "median": round(median, 4),
                "p90": round(_percentile(times, 0.9), 4),
                "p99": round(_percentile(times, 0.99), 4),
                "max": round(max(times), 4),
            },
            checked="balance equals the sum of the account's postings",
            data_size=db_size,
            loadavg_before=load_before,
            loadavg_after=_loadavg(),
        ),
    )


@benchmark("ledger.balance_at_ms", target="< 5")
def balance_at_ms() -> tuple[float, str, dict[str, Any]]:
    """Median latency of selectors.balance_at at random past moments on the account with 500,000 postings."""
    from django.db import connection

    from ledger import selectors
    from ledger.models import Posting
    from ledger.money import to_minor

    load_before = _loadavg()
    data = _read_dataset()
    cash = data.cash
    postings = Posting.objects.filter(account_id=cash.pk)
    first = postings.order_by("posted_at", "id").values_list("posted_at", flat=True).first()
    last = postings.order_by("-posted_at", "-id").values_list("posted_at", flat=True).first()
    assert first is not None and last is not None
    span = (last - first).total_seconds()
    rng = random.Random(7)
    moments: list[datetime] = [first + (last - first) * rng.random() for _ in range(5_000)]

    # Correctness at a few moments: the running totals agree with summing every posting up to the moment.
    for moment in moments[:3]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT coalesce(sum(amount), 0) FROM ledger_posting "
                "WHERE account_id = %s AND posted_at <= %s",
                [cash.pk, moment],
            )
            summed = cursor.fetchone()[0]
        got = selectors.balance_at(cash, moment)
        if to_minor(got) != summed:
            raise AssertionError(
                f"balance_at_ms: balance_at({moment}) = {got} but postings sum to {summed} fen"
            )
    plan = _explain(
        "SELECT debits_after, credits_after FROM ledger_posting WHERE account_id = %s AND posted_at <= %s "
        "ORDER BY posted_at DESC, id DESC LIMIT 1",
        [cash.pk, moments[0]],
    )
    index = iter(moments)
    times = _timed_calls(lambda: selectors.balance_at(cash, next(index)), warmup=200, samples=4_800)
    median = statistics.median(times)
    db_size = _database_size()
    print(f"  balance_at_ms: median {median:.3f} ms, p99 {_percentile(times, 0.99):.3f} ms")
    return (
        round(median, 4),
        "ms median",
        _base_conditions(
            f"selectors.balance_at at random past moments on an account with {cash.posting_count:,} "
            "postings, "
            f"database holding {db_size['postings']:,} postings; p99 {_percentile(times, 0.99):.3f} ms; "
            f"{_load_note(load_before)}",
            processes=1,
            workload=(
                "selectors.balance_at(account, moment), 4,800 timed calls after 200 warm-up, each at a "
                "random "
                f"moment within the {span:.0f} s over which the account's {cash.posting_count:,} "
                "postings were written"
            ),
            data=_dataset_conditions(data),
            latency_ms={
                "median": round(median, 4),
                "p90": round(_percentile(times, 0.9), 4),
                "p99": round(_percentile(times, 0.99), 4),
                "max": round(max(times), 4),
            },
            plan=plan,
            checked="balance_at at 3 moments equals the sum of the account's postings up to each moment",
            data_size=db_size,
            loadavg_before=load_before,
            loadavg_after=_loadavg(),
        ),
    )


@benchmark("ledger.verify_entries_per_s", target="≥ 20,000")
def verify_entries_per_s() -> tuple[float, str, dict[str, Any]]:
    """Entries per second checked by verification.verify() on the whole (>= 1M-posting) database."""
    from ledger import chain, proofs, verification

    load_before = _loadavg()
    data = _read_dataset()
    seal_started = time.perf_counter()
    sealed = chain.seal()
    seal_seconds = time.perf_counter() - seal_started
    # As the checkpoint job does: sign the chain head and the entry log's Merkle root, so verify() also
    # recomputes that root.
    checkpoint_started = time.perf_counter()
    checkpoint = proofs.create_checkpoint_with_proofs()
    checkpoint_seconds = time.perf_counter() - checkpoint_started
    _vacuum_analyze()
    db_size = _database_size()
    if db_size["postings"] < 1_000_000:
        raise AssertionError(f"verify_entries_per_s: only {db_size['postings']:,} postings; 1,000,000 needed")

    stage_started: dict[str, float] = {}
    stage_seconds: dict[str, float] = {}
    last_stage = [""]

    def progress(stage: str, done: int, total: int) -> None:
        if stage != last_stage[0]:
            now = time.perf_counter()
            if last_stage[0]:
                stage_seconds[last_stage[0]] = now - stage_started[last_stage[0]]
            stage_started[stage] = now
            last_stage[0] = stage

    started = time.perf_counter()
    report = verification.verify(progress=progress)
    elapsed = time.perf_counter() - started
    stage_seconds[last_stage[0]] = time.perf_counter() - stage_started[last_stage[0]]
    if not report.ok:
        shown = "; ".join(f"[{f.check}] {f.subject}: {f.problem}" for f in report.findings[:10])
        raise AssertionError(
            f"verify_entries_per_s: the ledger does not verify ({len(report.findings)}): {shown}"
        )
    entries = report.counts["entries"]
    if report.counts.get("chain_links") != entries or report.counts.get("unsealed_entries"):
        raise AssertionError(f"verify_entries_per_s: chain does not cover every entry: {report.counts}")
    rate = entries / elapsed
    seal_rate = sealed / seal_seconds if sealed else 0.0
    print(
        f"  verify_entries_per_s: {entries:,} entries in {elapsed:.1f} s = {rate:,.0f}/s; sealed {sealed:,}"
    )
    return (
        round(rate, 1),
        "entries/s",
        _base_conditions(
            f"verification.verify() (every check, full chain walk, log roots) over {entries:,} entries / "
            f"{db_size['postings']:,} postings in {elapsed:.1f} s; sealing not timed ("
            + (f"{seal_rate:,.0f} entries/s for {sealed:,}" if sealed else "nothing queued")
            + f"); {_load_note(load_before)}",
            processes=1,
            workload=(
                "verification.verify() over the whole bench database (zero-sum, totals and running totals, "
                "limits, pending transfers, full hash-chain walk, checkpoint signatures, entry-log Merkle "
                "roots); chain.seal() and proofs.create_checkpoint_with_proofs() ran first and are not timed"
            ),
            data=_dataset_conditions(data),
            data_size=db_size,
            verify_seconds=round(elapsed, 2),
            stage_seconds={k: round(v, 2) for k, v in stage_seconds.items()},
            sealing=(
                f"chain.seal(): {sealed:,} entries in {seal_seconds:.1f} s = {seal_rate:,.0f} entries/s"
                if sealed
                else "chain.seal(): nothing queued"
            ),
            checkpoint=(
                f"proofs.create_checkpoint_with_proofs(): checkpoint {checkpoint.pk} at link "
                f"{checkpoint.chain_seq} in {checkpoint_seconds:.1f} s"
            ),
            checked=f"report.ok, {report.counts}",
            loadavg_before=load_before,
            loadavg_after=_loadavg(),
        ),
    )

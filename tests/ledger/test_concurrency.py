"""The ledger under real parallel writers on PostgreSQL: separate processes, each with its own connections.

A module-wide pool of worker processes is started with the "spawn" method; each worker runs ``django.setup()``
itself, closes any connection it might hold and points the default database at the parent's test database
before its first query. Scenarios start their callers together on a barrier, then the parent checks the books
with its own connection: exact balances, one entry per idempotency key, one winner per hold, and a clean
``verify()`` after sealing the chain.

This module imports nothing that needs Django set up at import time: the workers import it (to find the
functions they run) before they call ``django.setup()``.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import pytest
from django.db import connection

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

WORKERS = 8
BARRIER_TIMEOUT = 60  # seconds: a caller that never arrives fails the scenario instead of hanging it
RESULT_TIMEOUT = 120


# --- in the worker processes ----------------------------------------------------------------------------


def _init_worker(db_name: str) -> None:
    """Runs once in each spawned worker, before any task."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.db import connections

    connections.close_all()
    settings.DATABASES["default"]["NAME"] = db_name
    connections["default"].settings_dict["NAME"] = db_name


def _database_name() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT current_database()")
        return str(cursor.fetchone()[0])


def _describe(error: BaseException) -> str:
    return f"{type(error).__module__}.{type(error).__name__}: {error}"


def _ping(barrier: Any) -> tuple[int, str]:
    """Warm-up: every worker is up, set up, and connected to the test database."""
    from django.db import connections

    try:
        name = _database_name()
        barrier.wait(BARRIER_TIMEOUT)
        return os.getpid(), name
    finally:
        connections.close_all()


def _drain(
    worker: int, account: str, sink: str, attempts: int, amount_fen: int, barrier: Any
) -> dict[str, Any]:
    """Try ``attempts`` times to take ``amount_fen`` out of ``account``: even attempts by a transfer, odd
    ones by a hold that is then posted in full. Each success or LimitExceeded is counted; anything else is an
    error."""
    from django.db import connection, connections

    from ledger import services
    from ledger.errors import LimitExceeded
    from ledger.money import from_minor

    amount = from_minor(amount_fen, "CNY")
    out: dict[str, Any] = {"successes": 0, "refused": 0, "errors": [], "db": _database_name()}
    try:
        connection.ensure_connection()
        barrier.wait(BARRIER_TIMEOUT)
        for i in range(attempts):
            key = f"drain:{worker}:{i}"
            try:
                if i % 2 == 0:
                    services.transfer(
                        idempotency_key=key,
                        kind="drain",
                        debit_account=account,
                        credit_account=sink,
                        amount=amount,
                    )
                else:
                    hold = services.create_pending(
                        idempotency_key=key,
                        kind="drain",
                        debit_account=account,
                        credit_account=sink,
                        amount=amount,
                    )
                    services.post_pending(transfer=hold, idempotency_key=f"{key}:post")
                out["successes"] += 1
            except LimitExceeded:
                out["refused"] += 1
            except Exception as error:
                out["errors"].append(_describe(error))
    finally:
        connections.close_all()
    return out


def _swap(worker: int, source: str, target: str, iterations: int, barrier: Any) -> dict[str, Any]:
    """Move money from ``source`` to ``target`` ``iterations`` times, cycling through a transfer, a batch of
    two entries and a hold posted in full. Returns the total moved and every error."""
    from django.db import connection, connections

    from ledger import services
    from ledger.money import from_minor

    out: dict[str, Any] = {"moved": 0, "errors": [], "db": _database_name()}
    try:
        connection.ensure_connection()
        barrier.wait(BARRIER_TIMEOUT)
        for i in range(iterations):
            key = f"swap:{source}>{target}:{worker}:{i}"
            fen = 100 + i
            amount = from_minor(fen, "CNY")
            try:
                if i % 3 == 0:
                    services.transfer(
                        idempotency_key=key,
                        kind="swap",
                        debit_account=source,
                        credit_account=target,
                        amount=amount,
                    )
                    out["moved"] += fen
                elif i % 3 == 1:
                    services.post_batch(
                        entries=[
                            services.NewEntry(
                                f"{key}:{n}",
                                "swap",
                                [services.debit(source, amount), services.credit(target, amount)],
                            )
                            for n in range(2)
                        ]
                    )
                    out["moved"] += 2 * fen
                else:
                    hold = services.create_pending(
                        idempotency_key=key,
                        kind="swap",
                        debit_account=source,
                        credit_account=target,
                        amount=amount,
                    )
                    services.post_pending(transfer=hold, idempotency_key=f"{key}:post")
                    out["moved"] += fen
            except Exception as error:
                out["errors"].append(_describe(error))
    finally:
        connections.close_all()
    return out


def _same_key(operation: str, threads: int, barrier: Any, args: dict[str, Any]) -> list[tuple[str, Any]]:
    """``threads`` callers in this process, each on its own connection, make the same request at once.
    Returns ("ok", id) or ("error", description) per caller."""
    from django.db import connection, connections

    from ledger import services
    from ledger.money import from_minor

    results: list[tuple[str, Any]] = []
    lock = threading.Lock()

    def call() -> None:
        try:
            connection.ensure_connection()
            barrier.wait(BARRIER_TIMEOUT)
            amount = from_minor(args["amount_fen"], "CNY")
            if operation == "transfer":
                outcome: tuple[str, Any] = (
                    "ok",
                    services.transfer(
                        idempotency_key=args["key"],
                        kind="payment",
                        debit_account=args["debit"],
                        credit_account=args["credit"],
                        amount=amount,
                        metadata={"channel_txn": args["key"]},
                    ).pk,
                )
            else:
                outcome = (
                    "ok",
                    services.create_pending(
                        idempotency_key=args["key"],
                        kind="lesson",
                        debit_account=args["debit"],
                        credit_account=args["credit"],
                        amount=amount,
                    ).pk,
                )
        except Exception as error:
            outcome = ("error", _describe(error))
        finally:
            connections.close_all()  # this thread's connections only
        with lock:
            results.append(outcome)

    callers = [threading.Thread(target=call) for _ in range(threads)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    return results


def _resolve(role: str, holds: list[tuple[int, str, int | None]], barrier: Any) -> list[tuple[int, str, str]]:
    """Post (or void) each hold, meeting the other racer on ``barrier`` before each one.
    Returns (hold id, "won" | "lost" | "error", detail) per hold."""
    from django.db import connection, connections

    from ledger import services
    from ledger.errors import PendingTransferError
    from ledger.models import PendingTransfer
    from ledger.money import from_minor

    out: list[tuple[int, str, str]] = []
    try:
        connection.ensure_connection()
        for pk, key, partial_fen in holds:
            hold = PendingTransfer.objects.get(pk=pk)
            barrier.wait(BARRIER_TIMEOUT)
            try:
                if role == "post":
                    amount = None if partial_fen is None else from_minor(partial_fen, "CNY")
                    services.post_pending(transfer=hold, idempotency_key=f"{key}:post", amount=amount)
                else:
                    services.void_pending(transfer=hold, idempotency_key=f"{key}:void")
                out.append((pk, "won", role))
            except PendingTransferError as error:
                out.append((pk, "lost", str(error)))
            except Exception as error:
                out.append((pk, "error", _describe(error)))
    finally:
        connections.close_all()
    return out


# --- in the test process --------------------------------------------------------------------------------


class Pool:
    """The worker processes and a manager for barriers shared with them."""

    def __init__(self, executor: ProcessPoolExecutor, manager: Any) -> None:
        self.executor = executor
        self.manager = manager

    def barrier(self, parties: int) -> Any:
        return self.manager.Barrier(parties)

    def run(self, calls: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[Any]:
        """Run each call in its own worker at the same time (callers wait on a barrier inside)."""
        assert len(calls) <= WORKERS, "more simultaneous calls than workers would deadlock on the barrier"
        futures: list[Future[Any]] = [self.executor.submit(fn, *args) for fn, args in calls]
        return [f.result(timeout=RESULT_TIMEOUT) for f in futures]


@pytest.fixture(scope="module")
def pool(django_db_setup: None) -> Iterator[Pool]:
    database = connection.settings_dict["NAME"]
    ctx = multiprocessing.get_context("spawn")
    with (
        ctx.Manager() as manager,
        ProcessPoolExecutor(
            max_workers=WORKERS, mp_context=ctx, initializer=_init_worker, initargs=(database,)
        ) as executor,
    ):
        workers = Pool(executor, manager)
        barrier = workers.barrier(WORKERS)
        pings = workers.run([(_ping, (barrier,)) for _ in range(WORKERS)])
        assert len({pid for pid, _ in pings}) == WORKERS, "every worker is a separate process"
        assert {name for _, name in pings} == {database}, "every worker uses the parent's test database"
        yield workers


def _verify_clean() -> None:
    from ledger import chain, verification

    chain.seal()
    report = verification.verify()
    assert report.ok, report.findings
    assert report.counts["unsealed_entries"] == 0


def _fund(account: str, fen: int, key: str) -> None:
    from ledger import services
    from ledger.money import from_minor

    services.transfer(
        idempotency_key=key,
        kind="payment",
        debit_account="clearing",
        credit_account=account,
        amount=from_minor(fen, "CNY"),
    )


def _open_chart(*limited_liabilities: str) -> None:
    from ledger import services

    services.open_account(code="clearing", type="asset")
    services.open_account(code="income", type="income")
    for code in limited_liabilities:
        services.open_account(code=code, type="liability", limit="debits_must_not_exceed_credits")


def _deadlocks_detected() -> int:
    """PostgreSQL's count of deadlocks it broke in this database (its statistics lag by at most a second, so
    this can miss a deadlock but never invents one)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


def _account(code: str) -> Any:
    from ledger.models import Account

    return Account.objects.get(code=code)


def test_parallel_writers_never_overdraw_a_limited_account(pool: Pool) -> None:
    """8 writers drain one liability that may not go below zero: exactly what it held goes out, no more."""
    from ledger.models import Posting

    _open_chart("prepaid")
    funded, amount, attempts = 10_050, 100, 40  # room for exactly 100 withdrawals of 1.00
    _fund("prepaid", funded, "fund")
    prepaid = _account("prepaid")

    lowest = [funded]
    stop = threading.Event()

    def watch() -> None:
        from django.db import connection as own

        try:
            while not stop.is_set():
                with own.cursor() as cursor:
                    cursor.execute(
                        "SELECT credits_posted - debits_posted - debits_pending FROM ledger_account "
                        "WHERE id = %s",
                        [prepaid.pk],
                    )
                    lowest[0] = min(lowest[0], cursor.fetchone()[0])
                time.sleep(0.002)
        finally:
            own.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    barrier = pool.barrier(WORKERS)
    try:
        results = pool.run(
            [(_drain, (w, "prepaid", "income", attempts, amount, barrier)) for w in range(WORKERS)]
        )
    finally:
        stop.set()
        watcher.join()

    assert [r["errors"] for r in results] == [[]] * WORKERS
    assert {r["db"] for r in results} == {connection.settings_dict["NAME"]}
    successes = sum(r["successes"] for r in results)
    refused = sum(r["refused"] for r in results)
    assert successes + refused == WORKERS * attempts
    assert successes == funded // amount, "every withdrawal that fitted went through, and no other"
    prepaid.refresh_from_db()
    drained = prepaid.debits_posted
    assert drained == successes * amount <= funded
    assert prepaid.credits_posted - prepaid.debits_posted == funded - drained == funded % amount
    assert prepaid.debits_pending == 0
    assert lowest[0] >= 0, f"available went to {lowest[0]} while the writers ran"
    history = Posting.objects.filter(account_id=prepaid.pk).values_list("credits_after", "debits_after")
    assert min(cr - dr for cr, dr in history) >= 0, "no posting ever left the account below zero"
    assert _account("income").credits_posted == drained
    _verify_clean()


def test_opposite_transfers_in_parallel_do_not_deadlock(pool: Pool) -> None:
    """4 processes move A→B while 4 move B→A, by transfers, batches and holds: locks are taken in one order,
    so no caller sees a deadlock, and the balances are exactly the arithmetic."""
    _open_chart("a", "b")
    iterations = 30
    per_worker = sum((2 if i % 3 == 1 else 1) * (100 + i) for i in range(iterations))
    opening = WORKERS * per_worker  # enough that no interleaving can hit the limit
    _fund("a", opening, "fund:a")
    _fund("b", opening, "fund:b")

    deadlocks_before = _deadlocks_detected()
    barrier = pool.barrier(WORKERS)
    results = pool.run(
        [(_swap, (w, "a", "b", iterations, barrier)) for w in range(WORKERS // 2)]
        + [(_swap, (w, "b", "a", iterations, barrier)) for w in range(WORKERS // 2)]
    )

    errors = [e for r in results for e in r["errors"]]
    assert not [e for e in errors if "eadlock" in e], errors
    assert errors == []
    assert [r["moved"] for r in results] == [per_worker] * WORKERS
    a, b = _account("a"), _account("b")
    moved_ab = moved_ba = (WORKERS // 2) * per_worker
    assert a.credits_posted - a.debits_posted == opening - moved_ab + moved_ba
    assert b.credits_posted - b.debits_posted == opening - moved_ba + moved_ab
    assert a.debits_posted == moved_ab and b.debits_posted == moved_ba
    assert (a.debits_pending, a.credits_pending, b.debits_pending, b.credits_pending) == (0, 0, 0, 0)
    assert _deadlocks_detected() == deadlocks_before, "PostgreSQL detected a deadlock in this database"
    _verify_clean()


def _fifty_callers(pool: Pool, operation: str, args: dict[str, Any]) -> list[tuple[str, Any]]:
    callers = 50
    barrier = pool.barrier(callers)
    shares = [callers // WORKERS + (1 if w < callers % WORKERS else 0) for w in range(WORKERS)]
    results = pool.run([(_same_key, (operation, n, barrier, args)) for n in shares])
    flat = [outcome for per_worker in results for outcome in per_worker]
    assert len(flat) == callers
    return flat


def test_fifty_concurrent_posts_with_one_key_make_one_entry(pool: Pool) -> None:
    from ledger.models import Entry

    _open_chart("prepaid")
    key = "wechat:4200001234202611220001"
    outcomes = _fifty_callers(
        pool, "transfer", {"key": key, "debit": "clearing", "credit": "prepaid", "amount_fen": 12_345}
    )

    assert Counter(kind for kind, _ in outcomes) == Counter({"ok": 50}), outcomes
    entry = Entry.objects.get(idempotency_key=key)
    assert {entry_id for _, entry_id in outcomes} == {entry.pk}, "every caller got the one entry"
    assert Entry.objects.count() == 1
    prepaid = _account("prepaid")
    assert (prepaid.credits_posted, prepaid.posting_count) == (12_345, 1)
    _verify_clean()


def test_fifty_concurrent_holds_with_one_key_make_one_hold(pool: Pool) -> None:
    from ledger.models import PendingTransfer

    _open_chart("prepaid")
    _fund("prepaid", 50_000, "fund")
    key = "lesson:8812"
    outcomes = _fifty_callers(
        pool, "create_pending", {"key": key, "debit": "prepaid", "credit": "income", "amount_fen": 9_000}
    )

    assert Counter(kind for kind, _ in outcomes) == Counter({"ok": 50}), outcomes
    hold = PendingTransfer.objects.get(idempotency_key=key)
    assert {pk for _, pk in outcomes} == {hold.pk}, "every caller got the one hold"
    assert PendingTransfer.objects.count() == 1
    prepaid = _account("prepaid")
    assert prepaid.debits_pending == 9_000, "the amount is reserved once, not once per caller"
    assert _account("income").credits_pending == 9_000
    _verify_clean()


def test_post_and_void_racing_on_a_hold_have_exactly_one_winner(pool: Pool) -> None:
    from ledger import services
    from ledger.models import Entry, PendingTransfer
    from ledger.money import from_minor

    _open_chart("prepaid")
    _fund("prepaid", 1_000_000, "fund")
    pairs, per_pair = WORKERS // 2, 5
    holds: list[tuple[int, str, int | None]] = []
    for n in range(pairs * per_pair):
        key = f"lesson:{n}"
        amount = 1_000 + n
        hold = services.create_pending(
            idempotency_key=key,
            kind="lesson",
            debit_account="prepaid",
            credit_account="income",
            amount=from_minor(amount, "CNY"),
        )
        holds.append((hold.pk, key, None if n % 2 == 0 else amount - 7))  # odd ones are posted in part

    calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
    for p in range(pairs):
        barrier = pool.barrier(2)
        mine = holds[p * per_pair : (p + 1) * per_pair]
        calls += [(_resolve, ("post", mine, barrier)), (_resolve, ("void", mine, barrier))]
    results = pool.run(calls)

    outcomes: dict[int, list[tuple[str, str]]] = {}
    for per_worker in results:
        for pk, result, detail in per_worker:
            outcomes.setdefault(pk, []).append((result, detail))
    assert len(outcomes) == len(holds)
    posted_total = 0
    for pk, key, partial in holds:
        results_for_hold = sorted(outcomes[pk])
        assert [r for r, _ in results_for_hold] == ["lost", "won"], (key, results_for_hold)
        winner = next(detail for r, detail in results_for_hold if r == "won")
        hold = PendingTransfer.objects.get(pk=pk)
        if winner == "post":
            expected = hold.amount if partial is None else partial
            assert (hold.state, hold.posted_amount, hold.resolution_key) == (
                "posted",
                expected,
                f"{key}:post",
            )
            entry = Entry.objects.get(pending_transfer_id=pk)
            assert dict(entry.postings.values_list("account__code", "amount")) == {
                "prepaid": expected,
                "income": -expected,
            }
            posted_total += expected
        else:
            assert (hold.state, hold.resolution_key) == ("voided", f"{key}:void")
            assert not Entry.objects.filter(pending_transfer_id=pk).exists()
    prepaid = _account("prepaid")
    assert prepaid.debits_pending == 0
    assert prepaid.debits_posted == posted_total
    assert _account("income").credits_posted == posted_total
    _verify_clean()

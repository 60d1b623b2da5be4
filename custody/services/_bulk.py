"""Set-based SQL shared by the money flows (lessons, refunds, payouts, closures).

The flows change thousands of rows at once (an auto-confirmation run, a closure batch); each helper here is
one statement on PostgreSQL (``unnest`` arrays, ``= ANY``) and a short ``executemany`` on SQLite, never a
loop of ORM saves. Every helper runs inside the caller's transaction.

Lock order, the same in every flow so writers never deadlock: closure → contracts (by id) → lessons, refunds,
payouts → ledger accounts (by id, taken by the ledger's services).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from django.db import connection, models

from ledger.backends import execute_bound

T = TypeVar("T")

# SQLite refuses statements with more bound variables than this (32,766 since 3.32; older builds 999).
SQLITE_CHUNK = 500


def is_postgres() -> bool:
    return connection.vendor == "postgresql"


def chunked(items: Sequence[T], size: int = SQLITE_CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def reserve_ids(model: type[models.Model], count: int) -> list[int]:
    """Primary keys for ``count`` rows about to be inserted, known before the insert.

    The flows derive ledger idempotency keys from domain ids (``lesson:{pk}:hold``), and a lesson's hold
    must exist when its row is inserted (a CHECK constraint), so the ids are taken first. PostgreSQL draws
    them from the table's identity sequence; SQLite's writers are serialised (BEGIN IMMEDIATE), so the next
    ids after the largest ever used are free until the caller's transaction ends.
    """
    if count <= 0:
        return []
    table = model._meta.db_table
    with connection.cursor() as cursor:
        if is_postgres():
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)", [table, count]
            )
            return [row[0] for row in cursor.fetchall()]
        cursor.execute(f'SELECT COALESCE(MAX(id), 0) FROM "{table}"')
        largest = cursor.fetchone()[0]
        cursor.execute("SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = %s", [table])
        largest = max(largest, cursor.fetchone()[0])
    return list(range(largest + 1, largest + count + 1))


def lock_rows(table: str, ids: Iterable[int]) -> list[int]:
    """Lock rows of ``table`` in id order (SELECT … FOR UPDATE); returns the ids that exist.

    SQLite has no row locks: its one writer at a time holds the database from BEGIN IMMEDIATE."""
    ordered = sorted(set(ids))
    if not ordered:
        return []
    if is_postgres():
        rows, _ = execute_bound(
            f"SELECT id FROM {table} WHERE id = ANY(%b) ORDER BY id FOR NO KEY UPDATE", [ordered]
        )
        return [row[0] for row in rows]
    found: list[int] = []
    with connection.cursor() as cursor:
        for chunk in chunked(ordered):
            cursor.execute(
                f"SELECT id FROM {table} WHERE id IN ({','.join(['%s'] * len(chunk))}) ORDER BY id",
                list(chunk),
            )
            found.extend(row[0] for row in cursor.fetchall())
    return found


def add_contract_hours(
    changes: Mapping[int, tuple[int, int, int]], *, finish_at: datetime | None = None
) -> None:
    """Add (pending, consumed, paid_refunded) hour deltas to contracts, in one statement on PostgreSQL.

    With ``finish_at``, an active contract left with nothing to deliver ends at that moment in the same
    statement: completed once every hour is consumed, refunded once its approved refund has emptied prepaid:c
    (``_ENDS``). Each contract row is then rewritten once, not once for its hours and again for its state.
    The contract's CHECK constraint (consumed + pending + refunded ≤ bought) is the database's guard.
    """
    rows = sorted(
        (cid, p, c, r)
        for cid, (p, c, r) in changes.items()
        if finish_at is not None or (p, c, r) != (0, 0, 0)
    )
    if not rows:
        return
    if finish_at is not None:
        from custody.services.contracts import CONTRACT_TRANSITIONS

        # The contract state machine lives in contracts.py; this bulk path may only take its legal edges.
        for target in _ENDS:
            if target not in CONTRACT_TRANSITIONS["active"]:
                raise RuntimeError(f"active → {target} is not a contract transition")
    with connection.cursor() as cursor:
        if is_postgres():
            # SET expressions read the row as it was: the conditions are on the counters plus the deltas.
            after = {
                "pending": "hours_pending + d.pending",
                "consumed": "hours_consumed + d.consumed",
                "refunded": "paid_hours_refunded + d.refunded",
            }
            assignments = [f"{column} = {after[delta]}" for delta, column in _COUNTERS.items()]
            params: list[Any] = []
            if finish_at is not None:
                ends = {target: condition.format(**after) for target, condition in _ENDS.items()}
                cases = " ".join(f"WHEN {condition} THEN '{target}'" for target, condition in ends.items())
                assignments += [
                    f"state = CASE WHEN state <> 'active' THEN state {cases} ELSE state END",
                    f"ended_at = CASE WHEN state = 'active' AND ({' OR '.join(ends.values())}) THEN %s "
                    "ELSE ended_at END",
                ]
                params.append(finish_at)
            cursor.execute(
                f"UPDATE custody_contract SET {', '.join(assignments)} "
                "FROM unnest(%s::bigint[], %s::int[], %s::int[], %s::int[]) "
                "AS d(id, pending, consumed, refunded) "
                "WHERE custody_contract.id = d.id",
                [*params, *([r[i] for r in rows] for i in range(4))],
            )
            return
        cursor.executemany(
            "UPDATE custody_contract SET hours_pending = hours_pending + %s, "
            "hours_consumed = hours_consumed + %s, paid_hours_refunded = paid_hours_refunded + %s "
            "WHERE id = %s",
            [(p, c, r, cid) for cid, p, c, r in rows],
        )
    if finish_at is not None:
        # SQLite: the counters are updated; end the contracts on them, one statement per end state.
        ids = [cid for cid, *_ in rows]
        for target, condition in _ENDS.items():
            update_states(
                "custody_contract",
                ids,
                from_states=["active"],
                to_state=target,
                extra={"ended_at": finish_at},
                where=condition.format(**_COUNTERS),
            )


_COUNTERS = {"pending": "hours_pending", "consumed": "hours_consumed", "refunded": "paid_hours_refunded"}

# When an active contract ends, on its hour counters after the change ({pending}, {consumed}, {refunded}): all
# hours consumed, it is completed; its approved refund taken (paid hours refunded) with nothing pending and
# nothing left in prepaid:c, it is refunded (a lesson voided after the refund leaves value: see refunds.py).
_ENDS = {
    "completed": "{pending} = 0 AND {consumed} = paid_hours + gift_hours",
    "refunded": (
        "{pending} = 0 AND {refunded} > 0 AND EXISTS (SELECT 1 FROM ledger_account a "
        "WHERE a.id = custody_contract.prepaid_account_id AND a.credits_posted = a.debits_posted "
        "AND a.debits_pending = 0)"
    ),
}


def end_contracts(changes: Mapping[int, tuple[int, int, str]], *, now: datetime) -> int:
    """Active contracts end, in one statement: each gets (pending-hours delta, paid-refunded-hours delta,
    final state). Returns how many changed; a contract no longer active is left alone and not counted."""
    from custody.services.contracts import CONTRACT_TRANSITIONS

    rows = sorted((cid, p, r, str(state)) for cid, (p, r, state) in changes.items())
    for *_, state in rows:
        if state not in CONTRACT_TRANSITIONS["active"]:
            raise RuntimeError(f"active → {state} is not a contract transition")
    if not rows:
        return 0
    if is_postgres():
        _, changed = execute_bound(
            "UPDATE custody_contract c SET hours_pending = c.hours_pending + d.pending, "
            "paid_hours_refunded = c.paid_hours_refunded + d.refunded, state = d.state, ended_at = %b "
            "FROM unnest(%b::bigint[], %b::int[], %b::int[], %b::text[]) "
            "AS d(id, pending, refunded, state) "
            "WHERE c.id = d.id AND c.state = 'active'",
            [now, *([r[i] for r in rows] for i in range(4))],
        )
        return changed
    with connection.cursor() as cursor:
        changed = 0
        for cid, pending, refunded, state in rows:
            cursor.execute(
                "UPDATE custody_contract SET hours_pending = hours_pending + %s, "
                "paid_hours_refunded = paid_hours_refunded + %s, state = %s, ended_at = %s "
                "WHERE id = %s AND state = 'active'",
                [pending, refunded, state, _adapt(now), cid],
            )
            changed += cursor.rowcount
        return changed


def update_states(
    table: str,
    ids: Sequence[int],
    *,
    from_states: Sequence[str],
    to_state: str,
    extra: Mapping[str, Any] | None = None,
    where: str = "",
) -> int:
    """``UPDATE table SET state = to_state, … WHERE id IN ids AND state IN from_states [AND where]``.

    The ``state IN from_states`` guard makes the transition explicit in SQL: a row in any other state is left
    alone and not counted, and callers compare the count with what they expected. Returns the rows changed.
    """
    return len(
        transition_rows(table, ids, from_states=from_states, to_state=to_state, extra=extra, where=where)
    )


def transition_rows(
    table: str,
    ids: Sequence[int],
    *,
    from_states: Sequence[str],
    to_state: str,
    extra: Mapping[str, Any] | None = None,
    where: str = "",
    returning: str = "id",
) -> list[tuple]:
    """Like ``update_states``, and returns the ``returning`` columns of the rows it changed (one statement:
    the rows are read as they are moved, so nothing can change in between)."""
    if not ids:
        return []
    assignments = ["state = %s"]
    values: list[Any] = [str(to_state)]
    states = [str(state) for state in from_states]
    for column, value in (extra or {}).items():
        assignments.append(f"{column} = %s")
        values.append(_adapt(str(value) if isinstance(value, str) else value))
    condition = f" AND ({where})" if where else ""
    if is_postgres():
        found, _ = execute_bound(
            f"UPDATE {table} SET {', '.join(assignments)} WHERE id = ANY(%b) "
            f"AND state = ANY(%b){condition} RETURNING {returning}",
            [*values, list(ids), states],
        )
        return found
    rows: list[tuple] = []
    with connection.cursor() as cursor:
        for chunk in chunked(list(ids)):
            cursor.execute(
                f"UPDATE {table} SET {', '.join(assignments)} "
                f"WHERE id IN ({','.join(['%s'] * len(chunk))}) "
                f"AND state IN ({','.join(['%s'] * len(states))}){condition} RETURNING {returning}",
                [*values, *chunk, *states],
            )
            rows.extend(cursor.fetchall())
    return rows


def _adapt(value: Any) -> Any:
    if isinstance(value, datetime) and not is_postgres():
        return connection.ops.adapt_datetimefield_value(value)
    return value


def fetch_by_ids(sql: str, ids: Sequence[int], params: Sequence[Any] = ()) -> list[tuple]:
    """Run ``sql`` whose ``{ids}`` placeholder stands for "id is one of ``ids``" and return all rows.

    ``sql`` names the column itself, e.g. ``"SELECT id, hours FROM custody_lesson WHERE id {ids} AND …"``; the
    placeholder becomes ``= ANY(%s)`` on PostgreSQL (one array parameter, whatever the count) and chunked
    ``IN (…)`` lists on SQLite. ``params`` are bound after the ids."""
    if not ids:
        return []
    if is_postgres():
        return execute_bound(sql.format(ids="= ANY(%b)"), [list(ids), *params])[0]
    rows: list[tuple] = []
    with connection.cursor() as cursor:
        for chunk in chunked(list(ids)):
            cursor.execute(sql.format(ids=f"IN ({','.join(['%s'] * len(chunk))})"), [*chunk, *params])
            rows.extend(cursor.fetchall())
    return rows

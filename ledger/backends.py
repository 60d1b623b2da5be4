"""How entries reach the database: one set-based statement on PostgreSQL, a plain path on SQLite.

Both do the same thing, in the same order of locks: lock the touched accounts in id order, insert the entries
(skipping keys that exist: idempotency), add the postings' amounts to the accounts' posted totals, and insert
the postings with the running totals after each. Balance limits are CHECK constraints on the account rows, so
an overdraft aborts the statement. The database then checks that every entry balances (see migrations).

PostgreSQL does all of it in one statement, so a single transfer in autocommit mode is one round trip; a batch
is one statement too, or for a large one a statement per chunk, pipelined in one transaction
(``post_entries_pipelined``), which first inserts as if every key were new and is written again, skipping the
keys that exist, if one does. SQLite is the embedded development database; its writers are serialised by
``BEGIN IMMEDIATE``, so the plain path needs no row locks.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.utils import timezone
from psycopg.types.numeric import Int8


@dataclass(frozen=True)
class EntrySpec:
    """A validated entry, ready to write. Legs are (account id, signed amount in minor units)."""

    idempotency_key: str
    request_hash: str
    kind: str
    legs: tuple[tuple[int, int], ...]
    effective_at: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    reverses_id: int | None = None
    pending_transfer_id: int | None = None
    # The metadata as JSON text instead, when the caller holds it encoded already (a hold's, as PostgreSQL
    # returned it: decoding and encoding it again cost more than writing the entry's other columns).
    metadata_json: str | None = None

    def metadata_text(self) -> str:
        if self.metadata_json is not None:
            return self.metadata_json
        return json.dumps(self.metadata, sort_keys=True) if self.metadata else "{}"


@dataclass(frozen=True)
class WrittenEntry:
    id: int
    idempotency_key: str
    posted_at: datetime
    effective_at: datetime


_POSTGRES_POST_ENTRIES = """
WITH
e_in AS (
    SELECT * FROM unnest(
        %(keys)b::text[], %(hashes)b::text[], %(kinds)b::text[], %(effective)b::timestamptz[],
        %(metadata)b::text[], %(reverses)b::bigint[], %(pending)b::bigint[]
    ) WITH ORDINALITY AS t(idempotency_key, request_hash, kind, effective_at, metadata, reverses_id,
                           pending_transfer_id, idx)
),
p_in AS (
    SELECT * FROM unnest(%(p_entry)b::bigint[], %(p_account)b::bigint[], %(p_amount)b::bigint[])
        WITH ORDINALITY AS t(idx, account_id, amount, ord)
),
locked AS (
    -- The accounts the caller names: those of the postings, or for the first chunk of a pipelined batch every
    -- account of the batch (later chunks then name none; their rows are locked already).
    SELECT a.id FROM ledger_account a
    WHERE a.id = ANY(%(lock)b::bigint[])
    ORDER BY a.id
    FOR NO KEY UPDATE
),
stamp AS (
    -- Taken after every lock is held, so posted_at never goes backwards on an account.
    SELECT clock_timestamp() AS ts, count(*) AS n FROM locked
),
ins_e AS (
    INSERT INTO ledger_entry (idempotency_key, request_hash, kind, posted_at, effective_at, metadata,
                              reverses_id, pending_transfer_id)
    SELECT e.idempotency_key, e.request_hash, e.kind, s.ts, coalesce(e.effective_at, s.ts),
           e.metadata::jsonb, e.reverses_id, e.pending_transfer_id
    FROM e_in e CROSS JOIN stamp s
    ORDER BY e.idx
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id, idempotency_key
),
queued AS (
    INSERT INTO ledger_unsealedentry (entry_id) SELECT id FROM ins_e
),
new_p AS (
    SELECT p.ord, p.account_id, p.amount, ie.id AS entry_id
    FROM p_in p
    JOIN e_in e ON e.idx = p.idx
    JOIN ins_e ie ON ie.idempotency_key = e.idempotency_key
),
deltas AS (
    SELECT account_id, sum(greatest(amount, 0)) AS dr, sum(greatest(-amount, 0)) AS cr, count(*) AS n
    FROM new_p GROUP BY account_id
),
upd AS (
    UPDATE ledger_account a
    SET debits_posted = a.debits_posted + d.dr,
        credits_posted = a.credits_posted + d.cr,
        posting_count = a.posting_count + d.n
    FROM deltas d
    WHERE a.id = d.account_id
    RETURNING a.id, a.currency, a.debits_posted - d.dr AS dr_before, a.credits_posted - d.cr AS cr_before
),
ins_p AS (
    INSERT INTO ledger_posting
        (entry_id, account_id, amount, currency, posted_at, debits_after, credits_after)
    SELECT np.entry_id, np.account_id, np.amount, u.currency, s.ts,
           u.dr_before + sum(greatest(np.amount, 0)) OVER w,
           u.cr_before + sum(greatest(-np.amount, 0)) OVER w
    FROM new_p np JOIN upd u ON u.id = np.account_id CROSS JOIN stamp s
    WINDOW w AS (PARTITION BY np.account_id ORDER BY np.ord)
    -- Ids rise with the running totals on each account (the window's order, so no second sort).
    ORDER BY np.account_id, np.ord
)
-- One row whatever the size: the shared posted_at and the new entries' ids by key (two arrays parse much
-- faster than a row per entry).
SELECT (SELECT ts FROM stamp), array_agg(id), array_agg(idempotency_key) FROM ins_e
"""

# The same statement for keys the caller expects to be new: a plain INSERT, so a key that exists fails the
# statement with a unique violation (``KeyTaken``) instead of being skipped. ON CONFLICT inserts each row
# speculatively (a lock taken and released, and the row written twice), which cost about 6 µs of the server's
# 41 per transfer of a large batch.
_SKIP_EXISTING_KEYS = "ON CONFLICT (idempotency_key) DO NOTHING"
_POSTGRES_POST_NEW_ENTRIES = _POSTGRES_POST_ENTRIES.replace(_SKIP_EXISTING_KEYS, "")
assert _POSTGRES_POST_NEW_ENTRIES != _POSTGRES_POST_ENTRIES


class KeyTaken(Exception):
    """A statement that inserts new keys only found one of them taken: posted before, or by a concurrent
    transaction (whose commit the statement waited for). Its transaction or savepoint must be rolled back."""


# The same write for the common case, one entry of two postings on two accounts, with scalar parameters. Its
# plan does not depend on the values (no arrays whose length the planner would look at), so PostgreSQL
# switches the prepared statement to one generic plan after five executions instead of planning every call,
# which cost more than executing it. Each account appears once, so its totals after the UPDATE are the
# posting's running totals.
_POSTGRES_POST_TRANSFER = """
WITH
locked AS (
    SELECT a.id FROM ledger_account a
    WHERE a.id IN (%(account1)s::bigint, %(account2)s::bigint)
    ORDER BY a.id
    FOR NO KEY UPDATE
),
stamp AS (
    SELECT clock_timestamp() AS ts, count(*) AS n FROM locked
),
ins_e AS (
    INSERT INTO ledger_entry (idempotency_key, request_hash, kind, posted_at, effective_at, metadata,
                              reverses_id, pending_transfer_id)
    SELECT %(key)s::text, %(hash)s::text, %(kind)s::text, s.ts, coalesce(%(effective)s::timestamptz, s.ts),
           %(metadata)s::jsonb, %(reverses)s::bigint, %(pending)s::bigint
    FROM stamp s
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id, posted_at
),
queued AS (
    INSERT INTO ledger_unsealedentry (entry_id) SELECT id FROM ins_e
),
upd AS (
    UPDATE ledger_account a
    SET debits_posted = a.debits_posted + greatest(l.amount, 0),
        credits_posted = a.credits_posted + greatest(-l.amount, 0),
        posting_count = a.posting_count + 1
    FROM (VALUES (%(account1)s::bigint, %(amount1)s::bigint), (%(account2)s::bigint, %(amount2)s::bigint))
             AS l(account_id, amount),
         ins_e
    WHERE a.id = l.account_id
    RETURNING a.id, a.currency, a.debits_posted, a.credits_posted, l.amount, ins_e.id AS entry_id,
              ins_e.posted_at
),
ins_p AS (
    INSERT INTO ledger_posting
        (entry_id, account_id, amount, currency, posted_at, debits_after, credits_after)
    SELECT u.entry_id, u.id, u.amount, u.currency, u.posted_at, u.debits_posted, u.credits_posted
    FROM upd u
    ORDER BY u.id
)
-- effective_at is not read back: it is the caller's, or posted_at (one timestamp fewer to parse).
SELECT id, posted_at FROM ins_e
"""

# Posting holds in full, each under its own key, in one statement: what resolve_pending_batch's general
# path does in five (lock the accounts, lock and read the holds, take the holds out of the pending totals,
# mark them posted, write their entries), with the same locks in the same order and the same rows written.
# Each account row is rewritten once (its pending and posted totals together), the holds are locked by the
# UPDATE that marks them, and nothing travels to the client and back: the entry's request hash is
# canonical.post_pending_request_hash spelled in SQL, its metadata the hold's. Only clean holds are taken
# (pending and not expired); the caller compares the counts and rolls the statement back if any hold or key
# was not, so that the general path can replay or refuse it with its own error.
_POSTGRES_POST_HOLDS = """
WITH
r AS (
    SELECT * FROM unnest(%(ids)b::bigint[], %(keys)b::text[]) WITH ORDINALITY AS r(id, key, ord)
),
locked AS (
    SELECT a.id FROM ledger_account a
    WHERE a.id IN (SELECT unnest(ARRAY[h.debit_account_id, h.credit_account_id]) FROM ledger_pendingtransfer h
                   WHERE h.id = ANY(%(ids)b::bigint[]))
    ORDER BY a.id
    FOR NO KEY UPDATE
),
stamp AS (
    -- Taken after every lock is held, so posted_at never goes backwards on an account.
    SELECT clock_timestamp() AS ts, count(*) AS n FROM locked
),
held AS (
    UPDATE ledger_pendingtransfer p
    SET state = 'posted', posted_amount = p.amount, resolution_key = r.key, resolved_at = %(at)s
    FROM r CROSS JOIN stamp s
    -- The array again, so that the holds are found by their key's index (not a scan of every hold).
    WHERE p.id = ANY(%(ids)b::bigint[]) AND p.id = r.id AND p.state = 'pending'
      AND (p.expires_at IS NULL OR p.expires_at > %(now)s)
    RETURNING p.id, r.key, r.ord, p.kind, p.amount, p.debit_account_id, p.credit_account_id, p.metadata, s.ts
),
ins_e AS (
    INSERT INTO ledger_entry (idempotency_key, request_hash, kind, posted_at, effective_at, metadata,
                              reverses_id, pending_transfer_id)
    SELECT h.key,
           encode(sha256(convert_to(
               '{"amount":' || h.amount || ',"op":"post_pending","transfer":' || h.id || '}', 'UTF8'
           )), 'hex'),
           h.kind, h.ts, h.ts, h.metadata, NULL, h.id
    FROM held h
    ORDER BY h.ord
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id, pending_transfer_id
),
queued AS (
    INSERT INTO ledger_unsealedentry (entry_id) SELECT id FROM ins_e
),
new_p AS (
    SELECT h.ord, leg.account_id, leg.amount, e.id AS entry_id, h.ts
    FROM held h
    JOIN ins_e e ON e.pending_transfer_id = h.id
    CROSS JOIN LATERAL (VALUES (h.debit_account_id, h.amount), (h.credit_account_id, -h.amount))
        AS leg(account_id, amount)
),
deltas AS (
    SELECT account_id, sum(greatest(amount, 0)) AS dr, sum(greatest(-amount, 0)) AS cr, count(*) AS n
    FROM new_p GROUP BY account_id
),
upd AS (
    -- A hold posted in full leaves the pending totals for the posted ones, on each side.
    UPDATE ledger_account a
    SET debits_pending = a.debits_pending - d.dr,
        credits_pending = a.credits_pending - d.cr,
        debits_posted = a.debits_posted + d.dr,
        credits_posted = a.credits_posted + d.cr,
        posting_count = a.posting_count + d.n
    FROM deltas d
    WHERE a.id = d.account_id
    RETURNING a.id, a.currency, a.debits_posted - d.dr AS dr_before, a.credits_posted - d.cr AS cr_before
),
ins_p AS (
    INSERT INTO ledger_posting
        (entry_id, account_id, amount, currency, posted_at, debits_after, credits_after)
    SELECT np.entry_id, np.account_id, np.amount, u.currency, np.ts,
           u.dr_before + sum(greatest(np.amount, 0)) OVER w,
           u.cr_before + sum(greatest(-np.amount, 0)) OVER w
    FROM new_p np JOIN upd u ON u.id = np.account_id
    WINDOW w AS (PARTITION BY np.account_id ORDER BY np.ord)
    ORDER BY np.account_id, np.ord
)
SELECT (SELECT count(*) FROM held), (SELECT count(*) FROM ins_e)
"""


def post_holds_in_full(
    transfer_ids: Sequence[int], keys: Sequence[str], *, at: datetime, now: datetime
) -> tuple[int, int]:
    """PostgreSQL: post each hold of ``transfer_ids`` in full under the key at the same index, if it is
    pending and not expired at ``now`` (business time); ``at`` is when they are marked resolved. Returns how
    many holds were marked posted and how many entries written: both ``len(transfer_ids)`` when every hold and
    key was clean, otherwise the caller must roll the statement back (see ``_POSTGRES_POST_HOLDS``)."""
    setup = large_batch_setup(len(transfer_ids))
    ((held, written),), _ = _execute_server_side(
        _POSTGRES_POST_HOLDS,
        {"ids": list(transfer_ids), "keys": list(keys), "at": at, "now": now},
        setup,
        # A large batch is planned for its own arrays every time: the generic plan, made for a few holds,
        # joins the holds to their entries by nested loops (10,000 holds: 20 s instead of 0.5).
        prepare=not setup,
    )
    return held, written


# Past this many entries a statement's estimated cost crosses jit_above_cost, and compiling it (about a
# second for a 10,000-entry batch) would cost more than running it.
_JIT_OFF_FROM_ENTRIES = 100
_LARGE_BATCH_SETUP = ["SET LOCAL jit = off", "SET LOCAL plan_cache_mode = auto"]


def post_entries(specs: Sequence[EntrySpec]) -> dict[str, WrittenEntry]:
    """Write the entries whose keys are new; return them by key. Existing keys are left to the caller."""
    if not specs:
        return {}
    vendor = connection.vendor
    if vendor == "postgresql":
        if len(specs) == 1 and len(specs[0].legs) == 2 and specs[0].legs[0][0] != specs[0].legs[1][0]:
            return _post_transfer_postgres(specs[0])
        return _post_entries_postgres(specs)
    if vendor == "sqlite":
        return _post_entries_sqlite(specs)
    raise NotImplementedError(f"the ledger supports PostgreSQL and SQLite, not {vendor}")


def use_generic_plans() -> None:
    """Let the current transaction's prepared statements run on their generic plans (PostgreSQL).

    PostgreSQL plans a prepared statement afresh on every execution while it estimates a plan made for the
    actual values to be cheaper, which it does for the general posting statement's arrays; for a small batch
    (a payment and its settlement) that planning costs more CPU than running it (1.8 ms of 2.9 for a
    two-entry batch). A transaction that posts one calls this first; ``SET LOCAL`` ends with it. (Statements
    with scalar parameters need not: PostgreSQL settles on their generic plans after five calls.) A large
    batch posted later in the same transaction switches back to plans sized for its arrays
    (``post_entries``)."""
    db = connections[DEFAULT_DB_ALIAS]  # once: see execute_prepared
    if db.vendor == "postgresql":
        if not db.in_atomic_block:
            raise RuntimeError("use_generic_plans() needs a transaction: SET LOCAL lasts until it ends")
        db.ensure_connection()
        with psycopg.Cursor(db.connection) as cursor:  # no Django wrapper: see execute_prepared
            cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")


def generic_plans_column(vendor: str) -> str:
    """What ``use_generic_plans()`` does, as an item of a select list: a transaction whose first statement
    selects it runs the statements after that one on their generic plans, without a round trip of its own
    (``set_config(…, true)`` is ``SET LOCAL``). ``NULL`` on other databases."""
    return "set_config('plan_cache_mode', 'force_generic_plan', true)" if vendor == "postgresql" else "NULL"


def execute_prepared(
    sql: str, params: Mapping[str, Any] | Sequence[Any], setup: Sequence[str] = ()
) -> list[tuple[Any, ...]]:
    """Run ``sql`` as a prepared statement on Django's PostgreSQL connection (same transaction) and return
    its rows. For fixed statements on hot paths (the ledger's postings, the API's hottest reads).

    Django binds parameters on the client, so PostgreSQL would parse and plan the statement on every call;
    a server-side-binding cursor lets psycopg prepare it once per connection."""
    return _execute_server_side(sql, params, setup, prepare=True)[0]


def execute_bound(sql: str, params: Mapping[str, Any] | Sequence[Any]) -> tuple[list[tuple[Any, ...]], int]:
    """Run ``sql`` with its parameters bound by the server, not prepared, and return its rows (none for a
    statement without a result) and its row count. For statements over large arrays built per call (the bulk
    flows' ``unnest`` and ``= ANY``): Django's client-side binding spells every element out as quoted text,
    which cost the closure more Python time than its rows cost the database, and the server then parsed that
    text back; bound (binary with ``%b``) they go as they are. Not prepared, so each execution is planned for
    its own arrays, as the client-bound statement was."""
    return _execute_server_side(sql, params, (), prepare=False)


def _execute_server_side(
    sql: str, params: Mapping[str, Any] | Sequence[Any], setup: Sequence[str], *, prepare: bool
) -> tuple[list[tuple[Any, ...]], int]:
    # The wrapper itself, not the ``connection`` proxy: each attribute read through the proxy is a look-up of
    # the connection for the current thread (several microseconds, a few percent of a transfer).
    db = connections[DEFAULT_DB_ALIAS]
    # As Django's own cursor() does: drop a connection that failed its health check, then (re)connect.
    db.close_if_health_check_failed()
    db.ensure_connection()
    cursor = _server_side_cursor(db)
    try:
        for statement in setup:
            cursor.execute(statement)
        cursor.execute(sql, params, prepare=prepare)
        # Whether it has rows, from the result's field count: ``cursor.description`` would build a Column
        # object per field on every call (a contract's lock statement reads 60 columns).
        result = cursor.pgresult
        rows = cursor.fetchall() if result is not None and result.nfields else []
        return rows, cursor.rowcount
    except psycopg.Error as error:
        with db.wrap_database_errors:
            raise error


def _server_side_cursor(db: Any) -> psycopg.Cursor[Any]:
    """One cursor per connection for ``_execute_server_side``, kept on Django's wrapper: making a cursor (its
    adapters map and transformer, whose dumpers it then caches) cost about 30 µs per statement, a third of a
    small prepared statement's client time. A new connection (after a reconnect) gets a new cursor."""
    connection_ = db.connection
    cursor: psycopg.Cursor[Any] | None = getattr(db, "_ledger_cursor", None)
    if cursor is None or cursor.connection is not connection_:
        cursor = psycopg.Cursor(connection_)
        db._ledger_cursor = cursor
    return cursor


def large_batch_setup(rows: int) -> Sequence[str]:
    """The ``setup`` for ``execute_prepared`` of a statement over arrays of ``rows`` elements: from
    ``_JIT_OFF_FROM_ENTRIES`` on, inside a transaction, no JIT and the planner's own choice of plan again
    (``plan_cache_mode = auto``, even after a caller's ``use_generic_plans()``), as ``post_entries`` runs a
    large batch: custom plans sized for the arrays for the first five executions on a connection, then the
    generic plan if PostgreSQL estimates it no dearer (it does for the 2,500-entry pipelined chunks, whose
    generic plan is hash joins and index look-ups). Both settings last until the transaction ends, so a
    statement needs them only when it is the first large one of its transaction."""
    return _LARGE_BATCH_SETUP if rows >= _JIT_OFF_FROM_ENTRIES and connection.in_atomic_block else []


# A new account: its totals start at zero and it has no metadata, so only eight columns are parameters (a
# caller that writes it in one statement with its own rows stays under psycopg's 50 parameters, past which
# the query text is parsed again on every call).
_INSERT_NEW_ACCOUNT = """
INSERT INTO ledger_account (id, code, name, type, currency, debits_must_not_exceed_credits,
                            credits_must_not_exceed_debits, debits_posted, credits_posted, debits_pending,
                            credits_pending, posting_count, metadata, created_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, 0, 0, 0, 0, 0, '{}', %s)
RETURNING id
"""


def new_account_insert(account: Any) -> tuple[str, list[Any]]:
    """The one-row ``INSERT`` (SQL and parameters, returning the id) of an account built by
    ``services.new_accounts``, for the caller to run with its own writes; it sets ``created_at``."""
    if account.pk is None or account.metadata or account.posting_count:
        raise ValueError("a new account has its id drawn already, no metadata and no postings")
    account.created_at = timezone.now()
    created_at = type(account)._meta.get_field("created_at").get_db_prep_save(account.created_at, connection)
    params = [
        account.pk,
        account.code,
        account.name,
        str(account.type),
        account.currency,
        account.debits_must_not_exceed_credits,
        account.credits_must_not_exceed_debits,
        created_at,
    ]
    return _INSERT_NEW_ACCOUNT, params


def next_id_column(model: Any, vendor: str) -> str:
    """An item of a select list that draws a new id for ``model``'s table from its sequence (PostgreSQL), so a
    statement that reads can also reserve the keys of rows about to be written (``services.new_accounts``, a
    contract's signing); ``NULL`` on other databases, whose callers reserve ids their own way."""
    if vendor == "postgresql":
        return f"nextval(pg_get_serial_sequence('{model._meta.db_table}', 'id'))"
    return "NULL"


def mark_saved(objs: Iterable[Any]) -> None:
    """Leave model instances that hand-written SQL inserted as ``save()`` leaves them: no longer being added,
    and read from the default database (the one every hand-written write goes to). Their keys are the
    caller's to set."""
    for obj in objs:
        obj._state.adding = False
        obj._state.db = DEFAULT_DB_ALIAS


def _post_transfer_postgres(spec: EntrySpec) -> dict[str, WrittenEntry]:
    (account1, amount1), (account2, amount2) = spec.legs
    rows = execute_prepared(
        _POSTGRES_POST_TRANSFER,
        {
            "key": spec.idempotency_key,
            "hash": spec.request_hash,
            "kind": spec.kind,
            "effective": spec.effective_at,
            "metadata": spec.metadata_text(),
            "reverses": spec.reverses_id,
            "pending": spec.pending_transfer_id,
            # int8 always: psycopg would pick int2/int4/int8 by value, and each choice is a separate
            # prepared statement that would be planned afresh.
            "account1": Int8(account1),
            "amount1": Int8(amount1),
            "account2": Int8(account2),
            "amount2": Int8(amount2),
        },
    )
    if not rows:
        return {}
    ((entry_id, posted_at),) = rows
    key = spec.idempotency_key
    return {key: WrittenEntry(entry_id, key, posted_at, _effective_at(spec.effective_at, posted_at))}


def _post_entries_postgres(specs: Sequence[EntrySpec]) -> dict[str, WrittenEntry]:
    params = _entries_params(specs, lock=sorted({a for s in specs for a, _ in s.legs}))
    setup = large_batch_setup(len(specs))  # a single entry may run in autocommit: no SET LOCAL then
    ((posted_at, ids, keys),) = execute_prepared(_POSTGRES_POST_ENTRIES, params, setup)
    return _written_entries(specs, posted_at, ids, keys)


# A pipelined batch is written this many entries at a time. Smaller chunks overlap more of Python's work, but
# each chunk updates the accounts it touches again: in the batch benchmark (1,010 accounts) 1,000-entry chunks
# raised the server's CPU per transfer by 15 to 60 %, 2,500-entry ones by 5 to 10 % (four 2,500-entry
# statements ran as fast as one of 10,000 in isolation, 517 ms, so part of that is the two processes
# sharing the machine's cores).
PIPELINE_CHUNK = 2_500
# The first chunk is smaller: the database idles until it arrives, and the caller validates a 500-entry chunk
# in about a fifth of the time of a full one (in the batch benchmark, five interleaved pairs: +9 % on
# average, though the host's own swings were as large).
FIRST_CHUNK = 500


def post_entries_pipelined(
    specs: Iterable[EntrySpec], *, account_ids: Iterable[int], new_keys_only: bool = False
) -> dict[str, WrittenEntry]:
    """PostgreSQL, inside a transaction: write a large batch as one statement per chunk of ``PIPELINE_CHUNK``
    specs (the first of ``FIRST_CHUNK``), sent in pipeline mode, so the database writes a chunk while the
    caller builds the next (``specs`` may be a generator that validates as it goes; an error it raises aborts
    the transaction like any other).

    ``account_ids`` must include every account the specs post to: the first statement locks them all, in id
    order, so the batch still takes its locks in the one global order before it changes anything.

    ``new_keys_only``: raise ``KeyTaken`` if any key exists (the caller rolls back and writes the batch again
    without it) instead of skipping those keys; cheaper when, as usual, none does."""
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    if not connection.in_atomic_block:
        raise RuntimeError("post_entries_pipelined writes several statements; call it inside a transaction")
    conn = connection.connection
    lock = sorted(set(account_ids))
    sql = _POSTGRES_POST_NEW_ENTRIES if new_keys_only else _POSTGRES_POST_ENTRIES
    sent: list[tuple[psycopg.Cursor[Any], list[EntrySpec]]] = []
    try:
        with conn.pipeline():
            for statement in _LARGE_BATCH_SETUP:
                conn.execute(statement)
            chunk: list[EntrySpec] = []
            size = FIRST_CHUNK
            for spec in specs:
                chunk.append(spec)
                if len(chunk) == size:
                    sent.append(_send_chunk(conn, sql, chunk, lock))
                    lock, chunk, size = [], [], PIPELINE_CHUNK
            if chunk:
                sent.append(_send_chunk(conn, sql, chunk, lock))
        written: dict[str, WrittenEntry] = {}
        for cursor, sent_chunk in sent:
            ((posted_at, ids, keys),) = cursor.fetchall()
            written.update(_written_entries(sent_chunk, posted_at, ids, keys))
        return written
    except psycopg.errors.UniqueViolation as error:
        if new_keys_only and error.diag.constraint_name == "ledger_entry_idempotency_key":
            raise KeyTaken(str(error)) from error
        with connection.wrap_database_errors:
            raise error
    except psycopg.Error as error:
        with connection.wrap_database_errors:
            raise error
    finally:
        for cursor, _ in sent:
            cursor.close()


def _send_chunk(
    conn: psycopg.Connection[Any], sql: str, chunk: list[EntrySpec], lock: list[int]
) -> tuple[psycopg.Cursor[Any], list[EntrySpec]]:
    # A cursor per statement: in a pipeline each keeps its own result until it is read.
    cursor = psycopg.Cursor(conn)
    cursor.execute(sql, _entries_params(chunk, lock=lock), prepare=True)
    return cursor, chunk


def _entries_params(specs: Sequence[EntrySpec], *, lock: list[int]) -> dict[str, Any]:
    p_entry: list[int] = []
    p_account: list[int] = []
    p_amount: list[int] = []
    for index, spec in enumerate(specs, start=1):
        for account_id, amount in spec.legs:
            p_entry.append(index)
            p_account.append(account_id)
            p_amount.append(amount)
    return {
        "keys": [s.idempotency_key for s in specs],
        "hashes": [s.request_hash for s in specs],
        "kinds": [s.kind for s in specs],
        "effective": [s.effective_at for s in specs],
        "metadata": [s.metadata_text() for s in specs],
        "reverses": [s.reverses_id for s in specs],
        "pending": [s.pending_transfer_id for s in specs],
        "p_entry": p_entry,
        "p_account": p_account,
        "p_amount": p_amount,
        "lock": lock,
    }


def _written_entries(
    specs: Sequence[EntrySpec], posted_at: datetime, ids: list[int] | None, keys: list[str] | None
) -> dict[str, WrittenEntry]:
    if not ids or not keys:
        return {}
    effective = {s.idempotency_key: s.effective_at for s in specs}
    return {
        key: WrittenEntry(id_, key, posted_at, _effective_at(effective[key], posted_at))
        for id_, key in zip(ids, keys, strict=True)
    }


def _effective_at(requested: datetime | None, posted_at: datetime) -> datetime:
    """An entry's ``effective_at`` as PostgreSQL stored it and would read it back: the requested moment (the
    instant kept, in posted_at's zone, UTC; a naive one taken as the session's, UTC) or else posted_at."""
    if requested is None:
        return posted_at
    if requested.tzinfo is None:
        requested = requested.replace(tzinfo=posted_at.tzinfo)
    return requested.astimezone(posted_at.tzinfo)


def _post_entries_sqlite(specs: Sequence[EntrySpec]) -> dict[str, WrittenEntry]:
    """Same effect as the PostgreSQL statement. Postings go in before their entry: SQLite has no deferred
    triggers, so its trigger checks an entry's balance when the entry row is inserted (see migrations)."""
    written: dict[str, WrittenEntry] = {}
    with connection.cursor() as cursor:
        keys = [s.idempotency_key for s in specs]
        existing: set[str] = set()
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            cursor.execute(
                "SELECT idempotency_key FROM ledger_entry WHERE idempotency_key IN "
                f"({','.join(['%s'] * len(chunk))})",
                chunk,
            )
            existing.update(row[0] for row in cursor.fetchall())
        cursor.execute("SELECT COALESCE(MAX(id), 0) FROM ledger_entry")
        next_id = cursor.fetchone()[0] + 1
        posted_at = timezone.now()
        fresh = [s for s in specs if s.idempotency_key not in existing]
        # Within one batch a key counts once: the first spec with it wins, as on PostgreSQL.
        seen: set[str] = set()
        to_write = []
        for spec in fresh:
            if spec.idempotency_key not in seen:
                seen.add(spec.idempotency_key)
                to_write.append(spec)
        account_ids = sorted({account_id for spec in to_write for account_id, _ in spec.legs})
        totals: dict[int, list[int]] = {}
        currencies: dict[int, str] = {}
        for start in range(0, len(account_ids), 500):
            id_chunk = account_ids[start : start + 500]
            cursor.execute(
                "SELECT id, debits_posted, credits_posted, posting_count, currency FROM ledger_account "
                f"WHERE id IN ({','.join(['%s'] * len(id_chunk))})",
                id_chunk,
            )
            for id_, dr, cr, n, cur in cursor.fetchall():
                totals[id_] = [dr, cr, n]
                currencies[id_] = cur
        deltas: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
        postings = []
        entries = []
        for spec in to_write:
            entry_id = next_id
            next_id += 1
            for account_id, amount in spec.legs:
                t = totals[account_id]
                if amount > 0:
                    t[0] += amount
                    deltas[account_id][0] += amount
                else:
                    t[1] -= amount
                    deltas[account_id][1] -= amount
                t[2] += 1
                deltas[account_id][2] += 1
                postings.append((entry_id, account_id, amount, currencies[account_id], posted_at, t[0], t[1]))
            effective_at = _effective_at(spec.effective_at, posted_at)
            entries.append(
                (
                    entry_id,
                    spec.idempotency_key,
                    spec.request_hash,
                    spec.kind,
                    posted_at,
                    effective_at,
                    spec.metadata_text(),
                    spec.reverses_id,
                    spec.pending_transfer_id,
                )
            )
            written[spec.idempotency_key] = WrittenEntry(
                entry_id, spec.idempotency_key, posted_at, effective_at
            )
        cursor.executemany(
            "UPDATE ledger_account SET debits_posted = debits_posted + %s, "
            "credits_posted = credits_posted + %s, "
            "posting_count = posting_count + %s WHERE id = %s",
            [(dr, cr, n, account_id) for account_id, (dr, cr, n) in sorted(deltas.items())],
        )
        cursor.executemany(
            "INSERT INTO ledger_posting (entry_id, account_id, amount, currency, posted_at, debits_after, "
            "credits_after) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            [(*p[:4], _sqlite_time(p[4]), p[5], p[6]) for p in postings],
        )
        cursor.executemany(
            "INSERT INTO ledger_entry (id, idempotency_key, request_hash, kind, posted_at, effective_at, "
            "metadata, "
            "reverses_id, pending_transfer_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(*e[:4], _sqlite_time(e[4]), _sqlite_time(e[5]), *e[6:]) for e in entries],
        )
        cursor.executemany(
            "INSERT INTO ledger_unsealedentry (entry_id) VALUES (%s)", [(e[0],) for e in entries]
        )
    return written


def _sqlite_time(moment: datetime) -> str:
    # Django stores aware datetimes in SQLite as naive UTC text.
    return connection.ops.adapt_datetimefield_value(moment)  # type: ignore[return-value]

"""The ledger's write API. Every money movement in the product goes through these functions.

Each function is atomic and idempotent: it takes an ``idempotency_key``; calling it again with the same key
and the same content returns the first result and writes nothing, with other content it raises
``IdempotencyConflict``. Amounts are ``Money`` here and integers of minor units inside.

- ``open_account``: an account of the chart, with its currency and balance limit.
- ``post_entry`` / ``transfer``: one balanced entry; ``post_batch``: many, in one statement.
- ``create_pending`` / ``post_pending`` / ``void_pending`` / ``expire_pending``: two-phase transfers (holds),
  one at a time or in bulk (``resolve_pending_batch``).
- ``reverse_entry``: the only way to correct a posted entry.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any, Literal, NamedTuple

from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections, transaction
from django.utils import timezone
from moneyed import Money

from ledger import backends, clock
from ledger.backends import EntrySpec
from ledger.canonical import entry_request_hash, post_pending_request_hash, request_hash, timestamp
from ledger.errors import (
    AccountConflict,
    AccountNotFound,
    CurrencyMismatch,
    IdempotencyConflict,
    InvalidAmount,
    InvalidEntry,
    LedgerError,
    LimitExceeded,
    PendingTransferError,
    ReversalError,
    UnbalancedEntry,
)
from ledger.models import Account, AccountType, Entry, PendingTransfer
from ledger.money import to_minor

AccountRef = Account | str
Side = Literal["debit", "credit"]
Limit = Literal["none", "debits_must_not_exceed_credits", "credits_must_not_exceed_debits"]


@dataclass(frozen=True)
class Leg:
    """One side of an entry: ``Leg(account, Money("10.00", "CNY"), "debit")``. Amounts are positive."""

    account: AccountRef
    amount: Money
    side: Side


def debit(account: AccountRef, amount: Money) -> Leg:
    return Leg(account, amount, "debit")


def credit(account: AccountRef, amount: Money) -> Leg:
    return Leg(account, amount, "credit")


@dataclass(frozen=True)
class NewEntry:
    idempotency_key: str
    kind: str
    legs: Sequence[Leg]
    effective_at: datetime | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchFailure:
    index: int
    idempotency_key: str
    error: LedgerError


@dataclass
class BatchResult:
    """What a batch did. ``entries`` (written and replayed, in batch order, failures left out) are built on
    first use: a bulk caller that only counts pays nothing for thousands of objects."""

    created: int
    replayed: int
    failures: list[BatchFailure]
    build_entries: Callable[[], list[Entry]] = field(default=list, repr=False, compare=False)

    @cached_property
    def entries(self) -> list[Entry]:
        return self.build_entries()


# --- accounts -------------------------------------------------------------------------------------------


def open_account(
    *,
    code: str,
    type: AccountType | str,
    currency: str = "CNY",
    limit: Limit = "none",
    name: str = "",
    metadata: Mapping[str, Any] | None = None,
) -> Account:
    """Create the account, or return it if it exists with the same type, currency and limit."""
    attributes = {
        "type": AccountType(type),
        "currency": currency.upper(),
        "debits_must_not_exceed_credits": limit == "debits_must_not_exceed_credits",
        "credits_must_not_exceed_debits": limit == "credits_must_not_exceed_debits",
    }
    try:
        with transaction.atomic():
            account, created = Account.objects.get_or_create(
                code=code, defaults={**attributes, "name": name, "metadata": dict(metadata or {})}
            )
    except IntegrityError:
        account, created = Account.objects.get(code=code), False
    if not created:
        differing = {k: v for k, v in attributes.items() if getattr(account, k) != v}
        if differing:
            raise AccountConflict(
                f"account {code} exists with other attributes: {sorted(differing)}", code=code
            )
    return account


@dataclass(frozen=True)
class NewAccount:
    code: str
    type: AccountType | str
    currency: str = "CNY"
    limit: Limit = "none"
    name: str = ""


def new_accounts(*, accounts: Sequence[NewAccount], ids: Sequence[int]) -> list[Account]:
    """Accounts whose codes the caller has just made unique (e.g. from a primary key drawn in its own
    transaction), under ids it drew from the accounts' sequence (``backends.next_id_column``), built
    but not saved: the caller inserts them (``backends.new_account_insert``) in the same statement as its own
    rows (a contract's signing writes its two accounts and the contract in one). Returned in order.

    Nothing is looked up first, as ``open_account`` does: a code that exists fails the caller's insert on the
    unique code (an ``IntegrityError``)."""
    if len(ids) != len(accounts):
        raise ValueError(f"{len(accounts)} accounts need {len(accounts)} ids, got {len(ids)}")
    codes = [a.code for a in accounts]
    if len(set(codes)) != len(codes):
        raise AccountConflict("an account code appears twice", code=codes[0])
    return [
        Account(
            id=pk,
            code=a.code,
            name=a.name,
            type=AccountType(a.type),
            currency=a.currency.upper(),
            debits_must_not_exceed_credits=a.limit == "debits_must_not_exceed_credits",
            credits_must_not_exceed_debits=a.limit == "credits_must_not_exceed_debits",
        )
        for a, pk in zip(accounts, ids, strict=True)
    ]


def get_account(ref: AccountRef) -> Account:
    if isinstance(ref, Account):
        return ref
    try:
        return Account.objects.get(code=ref)
    except Account.DoesNotExist:
        raise AccountNotFound(f"no account {ref}", code=ref) from None


# --- entries --------------------------------------------------------------------------------------------


def transfer(
    *,
    idempotency_key: str,
    kind: str,
    debit_account: AccountRef,
    credit_account: AccountRef,
    amount: Money,
    effective_at: datetime | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Entry:
    """Move ``amount`` from ``credit_account`` to ``debit_account`` (Dr debit_account / Cr credit_account)."""
    return post_entry(
        idempotency_key=idempotency_key,
        kind=kind,
        legs=[debit(debit_account, amount), credit(credit_account, amount)],
        effective_at=effective_at,
        metadata=metadata,
    )


def post_entry(
    *,
    idempotency_key: str,
    kind: str,
    legs: Sequence[Leg],
    effective_at: datetime | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Entry:
    new = NewEntry(idempotency_key, kind, legs, effective_at, metadata or {})
    accounts = {leg.account.code: leg.account for leg in legs if isinstance(leg.account, Account)}
    if len(accounts) == len(legs):
        entry = _post_new_in_autocommit(new, accounts)
        if entry is not None:
            return entry
    return post_batch(entries=[new], on_error="rollback").entries[0]


def _post_new_in_autocommit(new: NewEntry, accounts: Mapping[str, Account]) -> Entry | None:
    """The commonest write, one entry outside any transaction on PostgreSQL (its accounts given as objects,
    so nothing needs looking up), without ``post_batch``'s bookkeeping for batches, about 0.05 ms of Python
    a call: its one statement commits on its own. ``None`` on other databases, inside a transaction, or when
    the key was posted before (``post_batch`` then replays it or reports the conflict)."""
    db = connections[DEFAULT_DB_ALIAS]
    if db.vendor != "postgresql" or db.in_atomic_block:
        return None
    spec = _entry_spec(new, accounts)
    try:
        written = backends.post_entries([spec]).get(spec.idempotency_key)
    except IntegrityError as error:
        raise _explain_integrity_error(error, [spec]) from None
    return None if written is None else _entry_of(spec, written, db.alias)


def post_batch(
    *,
    entries: Sequence[NewEntry],
    on_error: Literal["rollback", "skip"] = "rollback",
    savepoint: bool = True,
) -> BatchResult:
    """Post many entries atomically with set-based SQL.

    ``on_error="rollback"``: any bad entry raises and nothing is posted. ``on_error="skip"``: bad entries are
    reported in ``failures`` and the rest are posted. Entries whose keys were posted before are replayed.

    Inside a caller's ``atomic()`` block the batch takes a savepoint, so that after an error (a limit, a
    conflicting key) the caller's transaction is still usable. ``savepoint=False`` (rollback mode only) is for
    callers whose whole transaction fails with any error anyway: no savepoint is taken (two statements fewer),
    and an error marks the caller's block for rollback, as Django's ``atomic(savepoint=False)`` does; a limit
    error then carries the database's message but not the account's numbers (they cannot be read any more).
    """
    if not savepoint and on_error != "rollback":
        raise ValueError("savepoint=False needs on_error='rollback': skip mode isolates errors in savepoints")
    accounts = _resolve_accounts((leg.account for new in entries for leg in new.legs), strict=False)
    if (
        on_error == "rollback"
        and connection.vendor == "postgresql"
        and len(entries) > backends.PIPELINE_CHUNK
    ):
        # Built as they are written: the database writes one chunk while the next is validated.
        def write_pipelined(new_keys_only: bool) -> BatchResult:
            return _write_specs(
                (_entry_spec(new, accounts) for new in entries),
                [],
                on_error,
                savepoint=savepoint,
                pipelined_accounts=[a.pk for a in accounts.values()],
                new_keys_only=new_keys_only,
            )

        # First as if every key were new, when the batch can be written again after one turns out to exist
        # (it runs in a savepoint or a transaction of its own); then skipping the keys that exist.
        if savepoint or not connection.in_atomic_block:
            try:
                return write_pipelined(new_keys_only=True)
            except backends.KeyTaken:
                pass  # a replay, or a key a concurrent transaction took: rolled back, so written again
        return write_pipelined(new_keys_only=False)
    specs: list[EntrySpec | None] = []
    failures: list[BatchFailure] = []
    for index, new in enumerate(entries):
        try:
            specs.append(_entry_spec(new, accounts))
        except LedgerError as error:
            if on_error == "rollback":
                raise
            specs.append(None)
            failures.append(BatchFailure(index, new.idempotency_key, error))
    return _write_specs(specs, failures, on_error, savepoint=savepoint)


def reverse_entry(*, entry: Entry, idempotency_key: str, reason: str) -> Entry:
    """Post the mirror image of ``entry``. An entry is reversed at most once; a reversal is not reversed."""
    if entry.reverses_id is not None:
        raise ReversalError(f"entry {entry.pk} is itself a reversal", entry_id=entry.pk)
    # Checked before writing: SQLite would otherwise hit the account limits before the unique index.
    earlier = Entry.objects.filter(reverses_id=entry.pk).first()
    if earlier is not None and earlier.idempotency_key != idempotency_key:
        raise ReversalError(f"entry {entry.pk} is already reversed by entry {earlier.pk}", entry_id=entry.pk)
    legs = [(p.account_id, -p.amount) for p in entry.postings.all()]
    spec = EntrySpec(
        idempotency_key=idempotency_key,
        kind="reversal",
        legs=tuple(sorted(legs)),
        metadata={"reason": reason, "reverses_kind": entry.kind},
        reverses_id=entry.pk,
        request_hash=request_hash({"op": "reverse", "entry": entry.pk, "reason": reason}),
    )
    try:
        return _write_specs([spec], [], "rollback").entries[0]
    except IntegrityError as error:
        if "reversed_once" in str(error) or "reverses_id" in str(error):
            raise ReversalError(f"entry {entry.pk} is already reversed", entry_id=entry.pk) from None
        raise


def _resolve_accounts(refs: Iterable[AccountRef], *, strict: bool = True) -> dict[str, Account]:
    """Accounts by code, looked up in one query. ``strict=False`` leaves unknown codes out (the caller
    reports them per entry)."""
    found: dict[str, Account] = {}
    codes: set[str] = set()
    for ref in refs:
        if isinstance(ref, Account):
            found[ref.code] = ref
        else:
            codes.add(ref)
    codes -= found.keys()
    if codes:
        found.update({a.code: a for a in Account.objects.filter(code__in=codes)})
        missing = codes - found.keys()
        if missing and strict:
            raise AccountNotFound(f"no account {sorted(missing)[0]}", code=sorted(missing)[0])
    return found


def _entry_spec(new: NewEntry, accounts: Mapping[str, Account]) -> EntrySpec:
    if not new.idempotency_key or len(new.idempotency_key) > 200:
        raise InvalidEntry("an idempotency key of 1 to 200 characters is required")
    if len(new.legs) < 2:
        raise InvalidEntry(f"an entry needs at least 2 postings, got {len(new.legs)}")
    by_account: dict[int, int] = {}
    per_currency: dict[str, int] = {}
    for leg in new.legs:
        code = leg.account.code if isinstance(leg.account, Account) else leg.account
        account = accounts.get(code)
        if account is None:
            raise AccountNotFound(f"no account {code}", code=code)
        minor = to_minor(leg.amount)
        if minor <= 0:
            raise InvalidAmount(f"posting amounts must be positive, got {leg.amount}", account=account.code)
        currency = account.currency
        if leg.amount.currency.code != currency:
            raise CurrencyMismatch(
                f"account {account.code} is in {currency}, not {leg.amount.currency.code}",
                account=account.code,
            )
        pk = account.pk
        if pk in by_account:
            raise InvalidEntry(f"account {account.code} appears twice in one entry", account=account.code)
        signed = minor if leg.side == "debit" else -minor
        by_account[pk] = signed
        per_currency[currency] = per_currency.get(currency, 0) + signed
    for currency, total in per_currency.items():
        if total != 0:
            raise UnbalancedEntry(
                f"debits and credits differ by {total} minor units of {currency}",
                currency=currency,
                difference=total,
            )
    legs = tuple(sorted(by_account.items()))
    metadata = dict(new.metadata)
    return EntrySpec(
        idempotency_key=new.idempotency_key,
        request_hash=entry_request_hash(
            kind=new.kind, legs=legs, effective_at=timestamp(new.effective_at), metadata=metadata
        ),
        kind=new.kind,
        legs=legs,
        effective_at=new.effective_at,
        metadata=metadata,
    )


def _write_specs(
    specs: Iterable[EntrySpec | None],
    failures: list[BatchFailure],
    on_error: Literal["rollback", "skip"],
    *,
    savepoint: bool = True,
    pipelined_accounts: Sequence[int] | None = None,
    new_keys_only: bool = False,
) -> BatchResult:
    """Write the specs, replay the known keys, and in skip mode isolate entries that break a limit.

    Rollback mode takes no savepoint of its own around the statement: the block below (a savepoint inside a
    caller's transaction) already undoes everything on any error, and a refused statement is explained once
    that block has rolled back and the connection is usable again.

    ``pipelined_accounts`` (rollback mode, PostgreSQL): write in pipelined chunks, consuming ``specs`` as they
    are sent; it names every account the specs may post to (see ``backends.post_entries_pipelined``, also for
    ``new_keys_only``)."""
    all_specs: list[EntrySpec | None] = []
    # A key repeated inside one batch: the same content is one entry, other content is a conflict.
    first_hash: dict[str, str] = {}
    unique: list[tuple[int, EntrySpec]] = []

    def unique_specs() -> Iterator[EntrySpec]:
        for index, spec in enumerate(specs):
            all_specs.append(spec)
            if spec is None:
                continue
            known = first_hash.get(spec.idempotency_key)
            if known is None:
                first_hash[spec.idempotency_key] = spec.request_hash
                unique.append((index, spec))
                yield spec
            elif known != spec.request_hash:
                error = IdempotencyConflict(
                    f"idempotency key {spec.idempotency_key} used twice in one batch with different content",
                    key=spec.idempotency_key,
                )
                if on_error == "rollback":
                    raise error
                failures.append(BatchFailure(index, spec.idempotency_key, error))

    written: dict[str, backends.WrittenEntry] = {}
    db = connections[DEFAULT_DB_ALIAS]  # once: each read through the ``connection`` proxy is a look-up
    pipelined = pipelined_accounts is not None
    specs_to_write = [] if pipelined else list(unique_specs())
    # One entry outside any transaction: its single statement is atomic on its own (autocommit), and if its
    # key exists nothing was written, so the replay check needs no transaction either. One round trip in all.
    autocommit = not pipelined and db.vendor == "postgresql" and len(unique) == 1 and not db.in_atomic_block
    try:
        with (
            contextlib.nullcontext()
            if autocommit
            else transaction.atomic(savepoint=savepoint or on_error != "rollback")
        ):
            if pipelined:
                written = backends.post_entries_pipelined(
                    unique_specs(), account_ids=pipelined_accounts or (), new_keys_only=new_keys_only
                )
            elif on_error == "rollback":
                written = backends.post_entries(specs_to_write)
            else:
                _write_isolating(
                    specs_to_write, [i for i, _ in unique], written, failures, savepoint=not autocommit
                )
            existing = _existing_entries(
                [s.idempotency_key for _, s in unique if s.idempotency_key not in written]
            )
            for index, spec in unique:
                if spec.idempotency_key in written or spec.idempotency_key not in existing:
                    continue
                if existing[spec.idempotency_key].request_hash != spec.request_hash:
                    error = IdempotencyConflict(
                        f"idempotency key {spec.idempotency_key} was used before with different content",
                        key=spec.idempotency_key,
                    )
                    if on_error == "rollback":
                        raise error
                    failures.append(BatchFailure(index, spec.idempotency_key, error))
    except IntegrityError as error:
        if on_error != "rollback":
            raise
        raise _explain_integrity_error(error, [s for _, s in unique]) from None

    failed = {f.index for f in failures}
    kept: list[EntrySpec] = []
    seen: set[str] = set()
    for index, maybe_spec in enumerate(all_specs):
        if maybe_spec is None or index in failed or maybe_spec.idempotency_key in seen:
            continue
        seen.add(maybe_spec.idempotency_key)
        kept.append(maybe_spec)
    alias = db.alias

    def build_entries() -> list[Entry]:
        entries: list[Entry] = []
        for spec in kept:
            if spec.idempotency_key in written:
                entries.append(_entry_of(spec, written[spec.idempotency_key], alias))
            else:
                entries.append(existing[spec.idempotency_key])
        return entries

    return BatchResult(
        created=len(written),
        replayed=len(kept) - len(written),
        failures=failures,
        build_entries=build_entries,
    )


def _entry_of(spec: EntrySpec, written: backends.WrittenEntry, alias: str) -> Entry:
    """The ``Entry`` just written, without reading it back: built as the ORM builds a row it read
    (positional, in field order), since a batch builds thousands."""
    return Entry.from_db(
        alias,
        _WRITTEN_ENTRY_FIELDS,
        (
            written.id,
            spec.idempotency_key,
            spec.request_hash,
            spec.kind,
            written.posted_at,
            written.effective_at,
            spec.metadata,
            spec.reverses_id,
            spec.pending_transfer_id,
        ),
    )


# The fields a written entry is known by without reading it back, in Entry's field order.
_WRITTEN_ENTRY_FIELDS = (
    "id",
    "idempotency_key",
    "request_hash",
    "kind",
    "posted_at",
    "effective_at",
    "metadata",
    "reverses_id",
    "pending_transfer_id",
)


def _write_or_explain(
    specs: Sequence[EntrySpec], *, savepoint: bool = True
) -> dict[str, backends.WrittenEntry]:
    """Write in one statement; turn a balance-limit violation into LimitExceeded with its numbers.

    The savepoint keeps a caller's transaction usable after a refused statement."""
    try:
        if not savepoint:
            return backends.post_entries(specs)
        with transaction.atomic():
            return backends.post_entries(specs)
    except IntegrityError as error:
        raise _explain_integrity_error(error, specs) from None


def _write_isolating(
    specs: list[EntrySpec],
    indexes: list[int],
    written: dict[str, backends.WrittenEntry],
    failures: list[BatchFailure],
    *,
    savepoint: bool = True,
) -> None:
    """Skip mode: write the whole set; if it breaks a limit, split it in halves until the bad entries are
    alone. k bad entries in n cost about k·log(n) extra statements, and good entries still go in sets."""
    if not specs:
        return
    try:
        written.update(_write_or_explain(specs, savepoint=savepoint))
    except LimitExceeded as error:
        if len(specs) == 1:
            failures.append(BatchFailure(indexes[0], specs[0].idempotency_key, error))
            return
        middle = len(specs) // 2
        _write_isolating(specs[:middle], indexes[:middle], written, failures)
        _write_isolating(specs[middle:], indexes[middle:], written, failures)


def _existing_entries(keys: Sequence[str]) -> dict[str, Entry]:
    if not keys:
        return {}
    return {e.idempotency_key: e for e in Entry.objects.filter(idempotency_key__in=keys)}


def _explain_integrity_error(
    error: IntegrityError, specs: Sequence[EntrySpec]
) -> LedgerError | IntegrityError:
    text = str(error)
    if "within_credits" not in text and "within_debits" not in text and "non_negative" not in text:
        return error
    if connection.in_atomic_block and connection.needs_rollback:
        # Written without a savepoint (post_batch(savepoint=False)): the transaction can only roll back now.
        return LimitExceeded(f"a balance limit would be exceeded: {text.splitlines()[0]}")
    # Find an account the set would push past its limit, from the current totals.
    deltas: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for spec in specs:
        for account_id, amount in spec.legs:
            deltas[account_id][0 if amount > 0 else 1] += abs(amount)
    for account in Account.objects.filter(pk__in=deltas.keys()).order_by("pk"):
        dr, cr = deltas[account.pk]
        return_error = _limit_error(account, extra_debits=dr, extra_credits=cr)
        if return_error:
            return return_error
    return LimitExceeded("a balance limit would be exceeded")


def _limit_error(account: Account, *, extra_debits: int = 0, extra_credits: int = 0) -> LimitExceeded | None:
    if account.debits_must_not_exceed_credits:
        available = account.credits_posted - account.debits_posted - account.debits_pending
        if extra_debits - extra_credits > available:
            return LimitExceeded(
                f"account {account.code} would go below zero: "
                f"available {available}, requested {extra_debits - extra_credits}",
                account=account.code,
                available=available,
                requested=extra_debits - extra_credits,
            )
    if account.credits_must_not_exceed_debits:
        available = account.debits_posted - account.credits_posted - account.credits_pending
        if extra_credits - extra_debits > available:
            return LimitExceeded(
                f"account {account.code} would go below zero: "
                f"available {available}, requested {extra_credits - extra_debits}",
                account=account.code,
                available=available,
                requested=extra_credits - extra_debits,
            )
    return None


# --- pending transfers ----------------------------------------------------------------------------------


def create_pending(
    *,
    idempotency_key: str,
    kind: str,
    debit_account: AccountRef,
    credit_account: AccountRef,
    amount: Money,
    expires_at: datetime | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> PendingTransfer:
    """Reserve ``amount`` (Dr debit_account / Cr credit_account) until it is posted, voided or expires.

    The reservation counts against the debit account's limit at once, so nothing can spend it twice.
    """
    return create_pending_batch(
        transfers=[
            NewPending(
                idempotency_key, kind, debit_account, credit_account, amount, expires_at, metadata or {}
            )
        ]
    )[0]


@dataclass(frozen=True)
class NewPending:
    idempotency_key: str
    kind: str
    debit_account: AccountRef
    credit_account: AccountRef
    amount: Money
    expires_at: datetime | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


def create_pending_batch(*, transfers: Sequence[NewPending]) -> list[PendingTransfer]:
    """Create many holds atomically (all or none). Keys seen before are replayed."""
    accounts = _resolve_accounts([t.debit_account for t in transfers] + [t.credit_account for t in transfers])
    rows: list[PendingTransfer] = []
    hashes: dict[str, str] = {}
    for t in transfers:
        dr = accounts[t.debit_account.code if isinstance(t.debit_account, Account) else t.debit_account]
        cr = accounts[t.credit_account.code if isinstance(t.credit_account, Account) else t.credit_account]
        minor = to_minor(t.amount)
        if minor <= 0:
            raise InvalidAmount(f"a pending transfer must be positive, got {t.amount}")
        if dr.pk == cr.pk:
            raise InvalidEntry("a pending transfer needs two different accounts")
        for account in (dr, cr):
            if account.currency != t.amount.currency.code:
                raise CurrencyMismatch(
                    f"account {account.code} is in {account.currency}", account=account.code
                )
        digest = request_hash(
            {
                "op": "pending",
                "kind": t.kind,
                "dr": dr.pk,
                "cr": cr.pk,
                "amount": minor,
                "expires_at": timestamp(t.expires_at),
                "metadata": dict(t.metadata),
            }
        )
        if hashes.setdefault(t.idempotency_key, digest) != digest:
            raise IdempotencyConflict(
                f"idempotency key {t.idempotency_key} used twice with different content"
            )
        rows.append(
            PendingTransfer(
                idempotency_key=t.idempotency_key,
                request_hash=digest,
                kind=t.kind,
                # By id: setting the related instances cost more than the rest of the row.
                debit_account_id=dr.pk,
                credit_account_id=cr.pk,
                amount=minor,
                currency=dr.currency,
                expires_at=t.expires_at,
                metadata=dict(t.metadata),
            )
        )
    existing = _existing_hold_hashes(list(hashes))
    for key, digest in existing.items():
        if digest != hashes[key]:
            raise IdempotencyConflict(
                f"idempotency key {key} was used before with different content", key=key
            )
    fresh: list[PendingTransfer] = []
    seen: set[str] = set(existing)
    for row in rows:
        if row.idempotency_key not in seen:
            seen.add(row.idempotency_key)
            fresh.append(row)
    if fresh:
        try:
            with transaction.atomic():
                debits: dict[int, int] = defaultdict(int)
                credits: dict[int, int] = defaultdict(int)
                for row in fresh:
                    debits[row.debit_account_id] += row.amount
                    credits[row.credit_account_id] += row.amount
                _lock_accounts(debits.keys() | credits.keys())
                _add_to_pending_totals(debits, credits, sign=+1)
                _insert_holds(fresh, now=timezone.now())
        except IntegrityError as error:
            if "idempotency_key" in str(error):
                # A concurrent request with the same key won; replay its result.
                return create_pending_batch(transfers=transfers)
            explained = _explain_pending_limit(error, fresh)
            raise explained from None
    # The new holds are returned as written (the insert set their ids); only replayed ones are read.
    by_key = {row.idempotency_key: row for row in fresh}
    if existing:
        by_key.update(
            (p.idempotency_key, p) for p in PendingTransfer.objects.filter(idempotency_key__in=list(existing))
        )
    return [by_key[t.idempotency_key] for t in transfers]


def _existing_hold_hashes(keys: Sequence[str]) -> dict[str, str]:
    """Request hashes of the holds whose keys exist already, by key: one array query on PostgreSQL."""
    if connection.vendor == "postgresql":
        rows, _ = backends.execute_bound(
            "SELECT idempotency_key, request_hash FROM ledger_pendingtransfer "
            "WHERE idempotency_key = ANY(%b)",
            [list(keys)],
        )
        return dict(rows)
    found: dict[str, str] = {}
    for start in range(0, len(keys), 500):
        found.update(
            PendingTransfer.objects.filter(idempotency_key__in=keys[start : start + 500]).values_list(
                "idempotency_key", "request_hash"
            )
        )
    return found


def _insert_holds(rows: Sequence[PendingTransfer], *, now: datetime) -> None:
    """Insert new holds and set their ids: one ``INSERT … SELECT unnest(…)`` on PostgreSQL (``bulk_create``
    prepares every value of every row in Python, the larger part of the cost at thousands of rows)."""
    for row in rows:
        row.created_at = now
    if connection.vendor != "postgresql":
        PendingTransfer.objects.bulk_create(rows, batch_size=2000)
        return
    written, _ = backends.execute_bound(
        "INSERT INTO ledger_pendingtransfer (idempotency_key, request_hash, kind, debit_account_id, "
        "credit_account_id, amount, currency, state, created_at, expires_at, metadata) "
        "SELECT u.key, u.hash, u.kind, u.dr, u.cr, u.amount, u.currency, 'pending', %b, u.expires_at, "
        "u.metadata::jsonb FROM unnest(%b::text[], %b::text[], %b::text[], %b::bigint[], %b::bigint[], "
        "%b::bigint[], %b::text[], %b::timestamptz[], %b::text[]) "
        "AS u(key, hash, kind, dr, cr, amount, currency, expires_at, metadata) "
        "RETURNING id, idempotency_key",
        [
            now,
            [r.idempotency_key for r in rows],
            [r.request_hash for r in rows],
            [r.kind for r in rows],
            [r.debit_account_id for r in rows],
            [r.credit_account_id for r in rows],
            [r.amount for r in rows],
            [r.currency for r in rows],
            [r.expires_at for r in rows],
            [json.dumps(r.metadata) for r in rows],
        ],
    )
    ids = {key: id_ for id_, key in written}
    for row in rows:
        row.id = ids[row.idempotency_key]
    backends.mark_saved(rows)


def _explain_pending_limit(
    error: IntegrityError, rows: Sequence[PendingTransfer]
) -> LedgerError | IntegrityError:
    text = str(error)
    if "within_credits" not in text and "within_debits" not in text:
        return error
    debits: dict[int, int] = defaultdict(int)
    credits: dict[int, int] = defaultdict(int)
    for row in rows:
        debits[row.debit_account_id] += row.amount
        credits[row.credit_account_id] += row.amount
    for account in Account.objects.filter(pk__in=debits.keys() | credits.keys()).order_by("pk"):
        found = _limit_error(account, extra_debits=debits[account.pk], extra_credits=credits[account.pk])
        if found:
            return found
    return LimitExceeded("a balance limit would be exceeded")


@dataclass(frozen=True)
class Resolution:
    """Post (all, or ``amount`` of it), void or expire one pending transfer. Expiries carry no key ("")."""

    transfer_id: int
    action: Literal["post", "void", "expire"]
    idempotency_key: str
    amount: Money | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


def post_pending(
    *,
    transfer: PendingTransfer,
    idempotency_key: str,
    amount: Money | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Entry:
    """Post the hold, in full or ``amount`` of it (the rest is released). Returns the posting entry."""
    resolve_pending_batch(
        resolutions=[Resolution(transfer.pk, "post", idempotency_key, amount, metadata or {})]
    )
    return Entry.objects.get(pending_transfer_id=transfer.pk)


def void_pending(*, transfer: PendingTransfer, idempotency_key: str) -> PendingTransfer:
    """Release the hold; nothing is posted."""
    resolve_pending_batch(resolutions=[Resolution(transfer.pk, "void", idempotency_key)])
    return PendingTransfer.objects.get(pk=transfer.pk)


def expire_pending(*, now: datetime | None = None, limit: int = 10_000) -> int:
    """Expire holds whose ``expires_at`` has passed (business time). Returns how many expired."""
    moment = now or clock.now()
    due = list(
        PendingTransfer.objects.filter(state=PendingTransfer.State.PENDING, expires_at__lte=moment)
        .order_by("id")
        .values_list("id", "idempotency_key")[:limit]
    )
    if not due:
        return 0
    result = resolve_pending_batch(
        resolutions=[Resolution(pk, "expire", "") for pk, _ in due], skip_resolved=True
    )
    return result


def resolve_pending_batch(*, resolutions: Sequence[Resolution], skip_resolved: bool = False) -> int:
    """Post, void or expire many holds in one transaction with set-based SQL. Returns how many changed.

    A resolution whose key already resolved that transfer the same way is a replay and changes nothing. Any
    other resolution of a transfer that is no longer pending raises PendingTransferError (or, with
    ``skip_resolved``, is left alone: for jobs such as expiry that race with people).

    On PostgreSQL a batch that posts every hold in full under keys of its own (a day's confirmed lessons) is
    tried first as one statement (``backends.post_holds_in_full``), which writes what the general path writes;
    if it meets anything else (a replay, a hold not pending, a key used before) it is rolled back and the
    general path decides.
    """
    if not resolutions:
        return 0
    ids = [r.transfer_id for r in resolutions]
    if len(set(ids)) != len(ids):
        raise PendingTransferError("a batch may resolve each pending transfer once")
    if connection.vendor == "postgresql" and _posts_in_full(resolutions):
        # The common case in one statement; anything it does not take cleanly (a replay, a hold no longer
        # pending or expired, a key used before) rolls it back, and the general path below replays or refuses.
        try:
            with transaction.atomic():
                marked, entries = backends.post_holds_in_full(
                    ids, [r.idempotency_key for r in resolutions], at=timezone.now(), now=clock.now()
                )
                if marked != len(ids) or entries != len(ids):
                    raise _NotClean
            return entries
        except (_NotClean, IntegrityError):
            pass
    with transaction.atomic():
        holds = _lock_holds(ids)
        missing = set(ids) - holds.keys()
        if missing:
            raise PendingTransferError(f"no pending transfer {min(missing)}", transfer_id=min(missing))
        now = timezone.now()
        business_now = clock.now()
        to_apply: list[tuple[_Hold, Resolution, int | None]] = []
        for r in resolutions:
            p = holds[r.transfer_id]
            state = _RESOLVED_STATE[r.action]
            if p.state != PendingTransfer.State.PENDING:
                if p.resolution_key == r.idempotency_key and p.state == state:
                    requested = p.amount if r.amount is None else to_minor(r.amount)
                    if r.action == "post" and requested != p.posted_amount:
                        raise IdempotencyConflict(
                            f"idempotency key {r.idempotency_key} posted {p.posted_amount}, not {requested}",
                            key=r.idempotency_key,
                        )
                    continue
                if skip_resolved:
                    continue
                raise PendingTransferError(
                    f"pending transfer {p.id} is already {p.state}; it cannot be {state}",
                    transfer_id=p.id,
                    state=p.state,
                )
            if r.action == "post" and p.expires_at is not None and p.expires_at <= business_now:
                raise PendingTransferError(
                    f"pending transfer {p.id} expired at {p.expires_at.isoformat()}; it cannot be posted",
                    transfer_id=p.id,
                    expires_at=p.expires_at.isoformat(),
                )
            posted: int | None = None
            if r.action == "post":
                posted = p.amount if r.amount is None else to_minor(r.amount)
                if r.amount is not None and r.amount.currency.code != p.currency:
                    raise CurrencyMismatch(f"pending transfer {p.id} is in {p.currency}")
                if not 0 < posted <= p.amount:
                    raise PendingTransferError(
                        f"pending transfer {p.id} holds {p.amount}; cannot post {posted}",
                        transfer_id=p.id,
                        held=p.amount,
                        requested=posted,
                    )
            to_apply.append((p, r, posted))
        if not to_apply:
            return 0
        # Expiry is the ledger's own job, not a client request: it carries no key (stored NULL), so no
        # caller-chosen key can collide with it. A key that resolved another transfer before is refused by
        # the unique index on resolution_key when the holds are marked (_mark_resolved).
        keys: set[str] = set()
        for _, r, _ in to_apply:
            if r.action != "expire":
                if r.idempotency_key in keys:
                    raise IdempotencyConflict(
                        f"idempotency key {r.idempotency_key} resolves two pending transfers in one batch",
                        key=r.idempotency_key,
                    )
                keys.add(r.idempotency_key)
        debits: dict[int, int] = defaultdict(int)
        credits: dict[int, int] = defaultdict(int)
        for p, _, _ in to_apply:
            debits[p.debit_account_id] += p.amount
            credits[p.credit_account_id] += p.amount
        _add_to_pending_totals(debits, credits, sign=-1)
        _mark_resolved(
            [
                (p.id, _RESOLVED_STATE[r.action], posted, r.idempotency_key or None)
                for p, r, posted in to_apply
            ],
            at=now,
        )
        specs: list[EntrySpec] = []
        for p, r, posted in to_apply:
            if r.action != "post" or not posted:
                continue
            metadata: dict[str, Any] = {}
            metadata_json: str | None = None
            if isinstance(p.metadata, str) and not r.metadata:
                metadata_json = p.metadata  # the hold's, as the database gave it: nothing to add
            else:
                metadata = {**_metadata(p.metadata), **dict(r.metadata)}
            dr, cr = (p.debit_account_id, posted), (p.credit_account_id, -posted)
            specs.append(
                EntrySpec(
                    idempotency_key=r.idempotency_key,
                    request_hash=post_pending_request_hash(transfer=p.id, amount=posted),
                    kind=p.kind,
                    legs=(dr, cr) if dr < cr else (cr, dr),
                    metadata=metadata,
                    metadata_json=metadata_json,
                    pending_transfer_id=p.id,
                )
            )
        if specs:
            written = _write_or_explain(specs)
            if len(written) != len(specs):
                raise IdempotencyConflict("an idempotency key of these posts was used for another entry")
        return len(to_apply)


_RESOLVED_STATE: Mapping[str, str] = {"post": "posted", "void": "voided", "expire": "expired"}


class _NotClean(Exception):
    """The one-statement post met a hold or key it does not take: roll it back for the general path."""


def _posts_in_full(resolutions: Sequence[Resolution]) -> bool:
    """Every resolution posts its whole hold under a key of its own, adding no metadata."""
    keys = {r.idempotency_key for r in resolutions}
    return len(keys) == len(resolutions) and all(
        r.action == "post" and r.amount is None and not r.metadata and r.idempotency_key for r in resolutions
    )


class _Hold(NamedTuple):
    """A pending transfer as ``resolve_pending_batch`` reads it: values, not a model instance."""

    id: int
    state: str
    amount: int
    currency: str
    debit_account_id: int
    credit_account_id: int
    expires_at: datetime | None
    resolution_key: str | None
    posted_amount: int | None
    kind: str
    metadata: str | dict[str, Any]  # JSON text as PostgreSQL returns it to a plain cursor, or decoded


def _lock_holds(ids: Sequence[int]) -> dict[int, _Hold]:
    """Lock the holds' accounts (id order, as every writer does), then the holds, and read them as values.
    On PostgreSQL two prepared statements whatever the count, their ids sent as binary arrays."""
    if connection.vendor == "postgresql":
        params = {"ids": list(ids)}
        backends.execute_prepared(_POSTGRES_LOCK_HOLD_ACCOUNTS, params, backends.large_batch_setup(len(ids)))
        return {row[0]: _Hold(*row) for row in backends.execute_prepared(_POSTGRES_LOCK_HOLDS, params)}
    # SQLite: one writer at a time (BEGIN IMMEDIATE), no row locks to take.
    holds: dict[int, _Hold] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for row in PendingTransfer.objects.filter(pk__in=chunk).values_list(*_Hold._fields):
            holds[row[0]] = _Hold(*row)
    return holds


_POSTGRES_LOCK_HOLD_ACCOUNTS = """
SELECT id FROM ledger_account
WHERE id IN (SELECT unnest(ARRAY[debit_account_id, credit_account_id]) FROM ledger_pendingtransfer
             WHERE id = ANY(%(ids)b::bigint[]))
ORDER BY id
FOR NO KEY UPDATE
"""

_POSTGRES_LOCK_HOLDS = f"""
SELECT {", ".join(_Hold._fields)} FROM ledger_pendingtransfer
WHERE id = ANY(%(ids)b::bigint[])
ORDER BY id
FOR UPDATE
"""


def _metadata(value: str | dict[str, Any]) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else dict(value)


def _lock_accounts(account_ids: Iterable[int]) -> None:
    """Lock account rows in id order: every writer does the same, so writers never deadlock."""
    ids = sorted(account_ids)
    if ids and connection.vendor == "postgresql":
        backends.execute_bound(
            "SELECT id FROM ledger_account WHERE id = ANY(%b) ORDER BY id FOR NO KEY UPDATE", [ids]
        )


def _add_to_pending_totals(debits: Mapping[int, int], credits: Mapping[int, int], *, sign: int) -> None:
    changes = sorted(
        {(a, sign * debits.get(a, 0), sign * credits.get(a, 0)) for a in debits.keys() | credits.keys()}
    )
    if connection.vendor == "postgresql":
        backends.execute_prepared(
            _POSTGRES_ADD_TO_PENDING_TOTALS,
            {
                "ids": [c[0] for c in changes],
                "debits": [c[1] for c in changes],
                "credits": [c[2] for c in changes],
            },
        )
        return
    with connection.cursor() as cursor:
        cursor.executemany(
            "UPDATE ledger_account SET debits_pending = debits_pending + %s, "
            "credits_pending = credits_pending + %s WHERE id = %s",
            [(dr, cr, a) for a, dr, cr in changes],
        )


# The UPDATEs below are counted in a CTE: a prepared statement's rows are what execute_prepared returns.
_POSTGRES_ADD_TO_PENDING_TOTALS = """
WITH changed AS (
    UPDATE ledger_account a
    SET debits_pending = a.debits_pending + c.dr, credits_pending = a.credits_pending + c.cr
    FROM unnest(%(ids)b::bigint[], %(debits)b::bigint[], %(credits)b::bigint[]) AS c(id, dr, cr)
    WHERE a.id = c.id
    RETURNING 1
)
SELECT count(*) FROM changed
"""


def _mark_resolved(rows: Sequence[tuple[int, str, int | None, str | None]], *, at: datetime) -> None:
    """Mark the holds resolved at ``at``. A resolution key that already resolved another hold breaks the
    unique index on resolution_key: that is ``IdempotencyConflict`` (and the caller's transaction rolls
    back)."""
    try:
        _update_resolved(rows, at=at)
    except IntegrityError as error:
        if "resolution_key" not in str(error):
            raise
        reused = re.search(r"Key \(resolution_key\)=\((.*)\) already exists", str(error))
        key = reused.group(1) if reused else None
        raise IdempotencyConflict(
            f"idempotency key {key or '(of this batch)'} already resolved another pending transfer", key=key
        ) from None


def _update_resolved(rows: Sequence[tuple[int, str, int | None, str | None]], *, at: datetime) -> None:
    if connection.vendor == "postgresql":
        ((changed,),) = backends.execute_prepared(
            _POSTGRES_MARK_RESOLVED,
            {
                "ids": [r[0] for r in rows],
                "states": [r[1] for r in rows],
                "posted": [r[2] for r in rows],
                "keys": [r[3] for r in rows],
                "at": at,
            },
        )
    else:
        with connection.cursor() as cursor:
            cursor.executemany(
                "UPDATE ledger_pendingtransfer SET state = %s, posted_amount = %s, resolution_key = %s, "
                "resolved_at = %s WHERE id = %s AND state = 'pending'",
                [
                    (state, posted, key, connection.ops.adapt_datetimefield_value(at), pk)
                    for pk, state, posted, key in rows
                ],
            )
            changed = cursor.rowcount
    # The holds are locked and were read pending, so every row changes; the check is a last guard.
    if changed != len(rows):
        raise PendingTransferError("a pending transfer changed state during the batch")


_POSTGRES_MARK_RESOLVED = """
WITH changed AS (
    UPDATE ledger_pendingtransfer p
    SET state = r.state, posted_amount = r.posted, resolution_key = r.key, resolved_at = %(at)s
    FROM unnest(%(ids)b::bigint[], %(states)b::text[], %(posted)b::bigint[], %(keys)b::text[])
        AS r(id, state, posted, key)
    WHERE p.id = r.id AND p.state = 'pending'
    RETURNING 1
)
SELECT count(*) FROM changed
"""

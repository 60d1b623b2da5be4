"""A pure-Python reference ledger: what the real one must do, written as plainly as possible.

The stateful test (``test_stateful.py``) runs every operation on both and compares. The model keeps what the
ledger keeps (accounts with their type, limit and four counters; holds with their states; entries by
idempotency key with a hash of their content) and says, for each request, either how the books change or
which error the ledger must raise. It touches no database and shares no code with the ledger except its
error classes, which are the contract's vocabulary.

Where the ledger's behaviour is a design choice rather than arithmetic, the model follows the documented
choice and says so: limits are checked on a batch's net effect per account, and ``on_error="skip"`` finds the
bad entries by halving the batch (``ledger.services._write_isolating``).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from ledger.errors import (
    AccountConflict,
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

DEBIT_NORMAL = frozenset({"asset", "expense"})
NO_LIMIT = "none"
DEBITS_WITHIN_CREDITS = "debits_must_not_exceed_credits"
CREDITS_WITHIN_DEBITS = "credits_must_not_exceed_debits"

Side = Literal["debit", "credit"]
ErrorType = type[LedgerError]


def content_hash(payload: Mapping[str, Any]) -> str:
    """The model's own fingerprint of a request; equal payloads are the same request."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


@dataclass
class ModelAccount:
    code: str
    type: str
    currency: str
    limit: str = NO_LIMIT
    debits_posted: int = 0
    credits_posted: int = 0
    debits_pending: int = 0
    credits_pending: int = 0

    @property
    def debit_normal(self) -> bool:
        return self.type in DEBIT_NORMAL

    @property
    def posted(self) -> int:
        """Balance on the account's normal side."""
        if self.debit_normal:
            return self.debits_posted - self.credits_posted
        return self.credits_posted - self.debits_posted

    @property
    def available(self) -> int:
        outflow = self.credits_pending if self.debit_normal else self.debits_pending
        return self.posted - outflow

    def within_limit(self) -> bool:
        if self.limit == DEBITS_WITHIN_CREDITS:
            return self.debits_posted + self.debits_pending <= self.credits_posted
        if self.limit == CREDITS_WITHIN_DEBITS:
            return self.credits_posted + self.credits_pending <= self.debits_posted
        return True


@dataclass(frozen=True)
class ProposedLeg:
    account: str
    side: Side
    amount: int  # minor units, as the caller states it (may be zero or negative in a bad request)
    currency: str


@dataclass(frozen=True)
class ProposedEntry:
    key: str
    kind: str
    legs: tuple[ProposedLeg, ...]
    metadata: tuple[tuple[str, str], ...] = ()

    def signed_legs(self) -> dict[str, int]:
        return {leg.account: leg.amount if leg.side == "debit" else -leg.amount for leg in self.legs}

    def fingerprint(self) -> str:
        return content_hash(
            {
                "op": "entry",
                "kind": self.kind,
                "legs": sorted(self.signed_legs().items()),
                "metadata": dict(self.metadata),
            }
        )


@dataclass
class ModelEntry:
    key: str
    fingerprint: str
    legs: dict[str, int]  # account code -> signed amount (debit > 0)
    # How to ask for it again: ("entry", ProposedEntry) | ("post", hold key, amount or None) |
    # ("reverse", entry key, reason).
    origin: tuple[Any, ...]
    reverses: str | None = None
    hold: str | None = None
    reversed_by: str | None = None
    entry_id: int | None = None  # the real ledger's id, filled in by the test


@dataclass
class ModelHold:
    key: str
    fingerprint: str
    kind: str
    debit: str
    credit: str
    amount: int
    currency: str
    expires_at: datetime | None
    metadata: tuple[tuple[str, str], ...] = ()
    state: str = "pending"
    posted_amount: int | None = None
    resolution_key: str | None = None
    transfer_id: int | None = None  # the real ledger's id


@dataclass
class BatchOutcome:
    """What a post_batch must do: raise ``raised`` (and change nothing), or post ``created``, replay
    ``replayed`` and report ``failures`` (index -> error type)."""

    raised: ErrorType | None = None
    created: list[str] = field(default_factory=list)
    replayed: list[str] = field(default_factory=list)
    failures: dict[int, ErrorType] = field(default_factory=dict)
    # Keys in the order the result lists its entries.
    result_keys: list[str] = field(default_factory=list)


class ReferenceLedger:
    def __init__(self, now: datetime) -> None:
        self.accounts: dict[str, ModelAccount] = {}
        self.entries: dict[str, ModelEntry] = {}
        self.holds: dict[str, ModelHold] = {}
        self.now = now

    # --- accounts -------------------------------------------------------------------------------------

    def open_account(self, code: str, type: str, currency: str, limit: str) -> tuple[ErrorType | None, bool]:
        """Returns (error, created): an existing code with other attributes is a conflict."""
        existing = self.accounts.get(code)
        if existing is not None:
            if (existing.type, existing.currency, existing.limit) != (type, currency, limit):
                return AccountConflict, False
            return None, False
        self.accounts[code] = ModelAccount(code, type, currency, limit)
        return None, True

    def room(self, code: str, side: Side) -> int | None:
        """How much more this account can take on ``side`` before its limit (None: no limit that way)."""
        a = self.accounts[code]
        if side == "debit" and a.limit == DEBITS_WITHIN_CREDITS:
            return a.credits_posted - a.debits_posted - a.debits_pending
        if side == "credit" and a.limit == CREDITS_WITHIN_DEBITS:
            return a.debits_posted - a.credits_posted - a.credits_pending
        return None

    def codes(self, currency: str | None = None) -> list[str]:
        return sorted(c for c, a in self.accounts.items() if currency is None or a.currency == currency)

    # --- applying changes -----------------------------------------------------------------------------

    def _gross_of(self, entries: Sequence[Mapping[str, int]]) -> dict[str, tuple[int, int]]:
        gross: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for legs in entries:
            for code, signed in legs.items():
                gross[code][0 if signed > 0 else 1] += abs(signed)
        return {code: (dr, cr) for code, (dr, cr) in gross.items()}

    def entries_break_limits(self, entries: Sequence[Mapping[str, int]]) -> bool:
        """Posting all of ``entries`` together: is any account past its limit afterwards?"""
        for code, (dr, cr) in self._gross_of(entries).items():
            trial = copy.copy(self.accounts[code])
            trial.debits_posted += dr
            trial.credits_posted += cr
            if not trial.within_limit():
                return True
        return False

    def _apply_posted(self, legs: Mapping[str, int]) -> None:
        for code, signed in legs.items():
            account = self.accounts[code]
            if signed > 0:
                account.debits_posted += signed
            else:
                account.credits_posted -= signed

    # --- entries --------------------------------------------------------------------------------------

    def validate(self, new: ProposedEntry) -> ErrorType | None:
        """The request's own shape, in the order the ledger checks it."""
        if not new.key or len(new.key) > 200 or len(new.legs) < 2:
            return InvalidEntry
        seen: set[str] = set()
        per_currency: dict[str, int] = defaultdict(int)
        for leg in new.legs:
            account = self.accounts[leg.account]
            if leg.amount <= 0:
                return InvalidAmount
            if leg.currency != account.currency:
                return CurrencyMismatch
            if leg.account in seen:
                return InvalidEntry
            seen.add(leg.account)
            per_currency[account.currency] += leg.amount if leg.side == "debit" else -leg.amount
        if any(per_currency.values()):
            return UnbalancedEntry
        return None

    def post_batch(self, batch: Sequence[ProposedEntry], mode: Literal["rollback", "skip"]) -> BatchOutcome:
        """Predict ``post_batch``; on success the model's books change as the ledger's must."""
        out = BatchOutcome()
        valid: list[tuple[int, ProposedEntry]] = []
        for index, new in enumerate(batch):
            error = self.validate(new)
            if error is None:
                valid.append((index, new))
            elif mode == "rollback":
                out.raised = error
                return out
            else:
                out.failures[index] = error
        # A key twice in one batch: the same content is one entry; other content is a conflict.
        first: dict[str, str] = {}
        unique: list[tuple[int, ProposedEntry]] = []
        for index, new in valid:
            known = first.setdefault(new.key, new.fingerprint())
            if known != new.fingerprint():
                if mode == "rollback":
                    out.raised = IdempotencyConflict
                    return out
                out.failures[index] = IdempotencyConflict
            elif all(new.key != u.key for _, u in unique):
                unique.append((index, new))
        fresh = [(i, n) for i, n in unique if n.key not in self.entries]
        written: list[tuple[int, ProposedEntry]] = []
        if mode == "rollback":
            if self.entries_break_limits([n.signed_legs() for _, n in fresh]):
                out.raised = LimitExceeded
                return out
            written = fresh
        else:
            written = self._isolate([(i, n) for i, n in unique], out)
        for index, new in unique:
            if new.key in self.entries and self.entries[new.key].fingerprint != new.fingerprint():
                if mode == "rollback":
                    out.raised = IdempotencyConflict
                    return out
                out.failures[index] = IdempotencyConflict
        if mode == "rollback":
            for _, new in written:
                self._record(new)
        out.created = [new.key for _, new in written]
        created = set(out.created)
        for index, new in enumerate(batch):
            if index in out.failures or new.key in out.result_keys:
                continue
            out.result_keys.append(new.key)
            if new.key not in created:
                out.replayed.append(new.key)
        return out

    def _record(self, new: ProposedEntry) -> None:
        self._apply_posted(new.signed_legs())
        self.entries[new.key] = ModelEntry(new.key, new.fingerprint(), new.signed_legs(), ("entry", new))

    def _isolate(
        self, items: list[tuple[int, ProposedEntry]], out: BatchOutcome
    ) -> list[tuple[int, ProposedEntry]]:
        """Skip mode: post the whole set if its net effect keeps every limit, else halve it (keys already
        posted change nothing). Mirrors the ledger's documented bisection, so which entries fail is exact."""
        if not items:
            return []
        fresh = [n.signed_legs() for _, n in items if n.key not in self.entries]
        if not self.entries_break_limits(fresh):
            written = [(i, n) for i, n in items if n.key not in self.entries]
            for _, new in written:  # posted now, so the second half sees them
                self._record(new)
            return written
        if len(items) == 1:
            out.failures[items[0][0]] = LimitExceeded
            return []
        middle = len(items) // 2
        return self._isolate(items[:middle], out) + self._isolate(items[middle:], out)

    # --- holds ----------------------------------------------------------------------------------------

    def create_hold(
        self,
        *,
        key: str,
        kind: str,
        debit: str,
        credit: str,
        amount: int,
        currency: str,
        expires_at: datetime | None,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> tuple[ModelHold | None, ErrorType | None, bool]:
        """Returns (hold, error, created)."""
        if amount <= 0:
            return None, InvalidAmount, False
        if debit == credit:
            return None, InvalidEntry, False
        if currency != self.accounts[debit].currency or currency != self.accounts[credit].currency:
            return None, CurrencyMismatch, False
        fingerprint = content_hash(
            {
                "op": "pending",
                "kind": kind,
                "dr": debit,
                "cr": credit,
                "amount": amount,
                "expires_at": _iso(expires_at),
                "metadata": dict(metadata),
            }
        )
        existing = self.holds.get(key)
        if existing is not None:
            if existing.fingerprint != fingerprint:
                return None, IdempotencyConflict, False
            return existing, None, False
        dr, cr = copy.copy(self.accounts[debit]), copy.copy(self.accounts[credit])
        dr.debits_pending += amount
        cr.credits_pending += amount
        if not (dr.within_limit() and cr.within_limit()):
            return None, LimitExceeded, False
        self.accounts[debit].debits_pending += amount
        self.accounts[credit].credits_pending += amount
        hold = ModelHold(key, fingerprint, kind, debit, credit, amount, currency, expires_at, metadata)
        self.holds[key] = hold
        return hold, None, True

    def resolution_keys(self) -> dict[str, str]:
        return {h.resolution_key: k for k, h in self.holds.items() if h.resolution_key is not None}

    def resolve(
        self, hold_key: str, action: Literal["post", "void"], key: str, amount: int | None = None
    ) -> tuple[ErrorType | None, bool]:
        """Post (all, or ``amount``) or void a hold. Returns (error, changed)."""
        hold = self.holds[hold_key]
        target = {"post": "posted", "void": "voided"}[action]
        if hold.state != "pending":
            if hold.resolution_key == key and hold.state == target:
                # "Post it all" replayed after a partial post asks for something else: a conflict.
                requested = hold.amount if amount is None else amount
                if action == "post" and requested != hold.posted_amount:
                    return IdempotencyConflict, False
                return None, False
            return PendingTransferError, False
        if action == "post" and hold.expires_at is not None and hold.expires_at <= self.now:
            return PendingTransferError, False  # expired in business time, even before the expiry job ran
        posted = None
        if action == "post":
            posted = hold.amount if amount is None else amount
            if not 0 < posted <= hold.amount:
                return PendingTransferError, False
            if key in self.entries:
                return IdempotencyConflict, False
        if key in self.resolution_keys():
            return IdempotencyConflict, False
        self.accounts[hold.debit].debits_pending -= hold.amount
        self.accounts[hold.credit].credits_pending -= hold.amount
        hold.state, hold.posted_amount, hold.resolution_key = target, posted, key
        if posted is not None:
            legs = {hold.debit: posted, hold.credit: -posted}
            self._apply_posted(legs)
            fingerprint = content_hash({"op": "post_pending", "hold": hold_key, "amount": posted})
            self.entries[key] = ModelEntry(key, fingerprint, legs, ("post", hold_key, amount), hold=hold_key)
        return None, True

    def expire(self, now: datetime) -> list[str]:
        """Holds whose expiry has passed at ``now`` expire (keys of those that did)."""
        due = [
            h
            for h in self.holds.values()
            if h.state == "pending" and h.expires_at is not None and h.expires_at <= now
        ]
        for hold in due:
            self.accounts[hold.debit].debits_pending -= hold.amount
            self.accounts[hold.credit].credits_pending -= hold.amount
            hold.state, hold.resolution_key = "expired", None
        return [h.key for h in due]

    # --- reversals ------------------------------------------------------------------------------------

    def reverse(self, entry_key: str, key: str, reason: str) -> tuple[ErrorType | None, bool]:
        """Returns (error, changed). A reversal is not reversed, an entry is reversed once (a second
        reversal under another key is refused; under the same key it is a replay). The entry that posted a
        hold may be reversed too: that is how a posted hold is corrected."""
        target = self.entries[entry_key]
        if target.reverses is not None:
            return ReversalError, False
        if target.reversed_by is not None and target.reversed_by != key:
            return ReversalError, False
        fingerprint = content_hash({"op": "reverse", "entry": entry_key, "reason": reason})
        if key in self.entries:
            if self.entries[key].fingerprint != fingerprint:
                return IdempotencyConflict, False
            return None, False
        mirrored = {code: -signed for code, signed in target.legs.items()}
        if self.entries_break_limits([mirrored]):
            return LimitExceeded, False
        self._apply_posted(mirrored)
        self.entries[key] = ModelEntry(
            key, fingerprint, mirrored, ("reverse", entry_key, reason), reverses=entry_key
        )
        target.reversed_by = key
        return None, True

    # --- invariants -----------------------------------------------------------------------------------

    def postings_sum(self) -> dict[str, int]:
        """Σ debits - Σ credits per currency over every account: zero in a double-entry ledger."""
        sums: dict[str, int] = defaultdict(int)
        for account in self.accounts.values():
            sums[account.currency] += account.debits_posted - account.credits_posted
        return dict(sums)

"""The ledger against a reference model, driven by Hypothesis's rule-based state machine.

Each example opens accounts and runs a random program of transfers, replays, holds (post, partial post, void,
expiry in business time), illegal transitions, batches (rollback and skip mode) and reversals, on the real
ledger and on ``reference_model.ReferenceLedger``. After every step the balances read through
``ledger.selectors.balance`` equal the model's, postings sum to zero per currency, the verification checks
find nothing and no limited account is below zero. Each example runs inside a savepoint that is rolled back
(SQLite's flush cannot DELETE append-only rows), so examples never see each other's rows.

``HYPOTHESIS_PROFILE=ci`` (or ``nightly``) runs more and longer programs than the default.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from django.db import transaction
from django.db.models import Sum
from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ledger import chain, clock, services, verification
from ledger.errors import (
    AccountConflict,
    IdempotencyConflict,
    LedgerError,
    PendingTransferError,
)
from ledger.models import Account, ChainLink, Entry, PendingTransfer, Posting, UnsealedEntry
from ledger.money import from_minor
from ledger.selectors import balance
from tests.ledger.reference_model import (
    CREDITS_WITHIN_DEBITS,
    DEBITS_WITHIN_CREDITS,
    NO_LIMIT,
    BatchOutcome,
    ErrorType,
    ModelHold,
    ProposedEntry,
    ProposedLeg,
    ReferenceLedger,
    Side,
)

# (max_examples, stateful_step_count)
PROFILES = {"dev": (30, 25), "ci": (100, 40), "nightly": (500, 60)}
MAX_EXAMPLES, STEP_COUNT = PROFILES[os.environ.get("HYPOTHESIS_PROFILE", "dev")]
FULL_VERIFY_EVERY = 5
MAX_ACCOUNTS = 10

# Business time starts here in every example; expiry moves it forward.
START = datetime(2031, 3, 3, 1, 0, tzinfo=UTC)

ACCOUNT_KINDS = [
    ("asset", CREDITS_WITHIN_DEBITS),
    ("liability", DEBITS_WITHIN_CREDITS),
    ("asset", NO_LIMIT),
    ("liability", NO_LIMIT),
    ("equity", NO_LIMIT),
    ("income", NO_LIMIT),
    ("expense", NO_LIMIT),
]
AMOUNTS = st.integers(min_value=1, max_value=5_000)
KINDS = st.sampled_from(["payment", "release", "refund"])
# Most holds never expire; some expire within a few hours of business time.
EXPIRY = st.sampled_from([None, None]) | st.integers(1, 180)
METADATA = st.sampled_from([(), (("ref", "A-1"),), (("ref", "B-2"), ("note", "退费 refund"))])

T = TypeVar("T")


def expect(error: ErrorType | None, call: Callable[[], T]) -> T | None:
    """Run ``call``: it must raise exactly ``error`` (then None is returned), or succeed if there is none."""
    if error is None:
        return call()
    with pytest.raises(LedgerError) as raised:
        call()
    assert type(raised.value) is error, f"raised {type(raised.value).__name__}, expected {error.__name__}"
    return None


def in_business_time(step: Callable[..., None]) -> Callable[..., None]:
    """Run the step with the ledger's clock at the model's business time (expiry is judged by it)."""

    @functools.wraps(step)
    def run(self: LedgerMachine, **kwargs: Any) -> None:
        with clock.frozen_at(self.model.now):
            step(self, **kwargs)

    return run


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model = ReferenceLedger(now=START)
        self.account_ids: dict[str, int] = {}
        self.counter = 0
        self.steps = 0
        self._atomic = transaction.atomic()
        self._atomic.__enter__()

    def teardown(self) -> None:
        transaction.set_rollback(True)
        self._atomic.__exit__(None, None, None)

    # --- helpers --------------------------------------------------------------------------------------

    def fresh_key(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter}"

    def draw_pair(self, data: st.DataObject) -> list[str]:
        """Two distinct accounts of one currency (every currency of the chart has at least two)."""
        currency = data.draw(st.sampled_from(sorted({a.currency for a in self.model.accounts.values()})))
        return data.draw(st.permutations(self.model.codes(currency)))[:2]

    def draw_transfer(self, data: st.DataObject, key: str | None = None) -> ProposedEntry:
        """A random entry between random accounts: usually two legs, sometimes one side split in two."""
        split = data.draw(st.booleans()) and data.draw(st.booleans())
        codes = data.draw(st.permutations(self.model.codes(data.draw(st.sampled_from(["CNY", "USD"])))))
        currency = self.model.accounts[codes[0]].currency
        if split and len(codes) >= 3:
            a, b, c = codes[:3]
            x, y = data.draw(AMOUNTS), data.draw(AMOUNTS)
            side: Side = data.draw(st.sampled_from(["debit", "credit"]))
            other: Side = "credit" if side == "debit" else "debit"
            legs: tuple[ProposedLeg, ...] = (
                ProposedLeg(a, side, x + y, currency),
                ProposedLeg(b, other, x, currency),
                ProposedLeg(c, other, y, currency),
            )
        else:
            amount = data.draw(AMOUNTS)
            legs = (
                ProposedLeg(codes[0], "debit", amount, currency),
                ProposedLeg(codes[1], "credit", amount, currency),
            )
        return ProposedEntry(key or self.fresh_key("e"), data.draw(KINDS), legs, data.draw(METADATA))

    def legs(self, new: ProposedEntry, reverse_order: bool = False) -> list[services.Leg]:
        legs = [services.Leg(leg.account, from_minor(leg.amount, leg.currency), leg.side) for leg in new.legs]
        return legs[::-1] if reverse_order else legs

    def new_entry(self, new: ProposedEntry, reverse_order: bool = False) -> services.NewEntry:
        return services.NewEntry(
            new.key, new.kind, self.legs(new, reverse_order), metadata=dict(new.metadata)
        )

    def post_one(self, new: ProposedEntry, reverse_order: bool = False) -> None:
        """Post one entry with post_entry (or transfer) and compare with the model."""
        known = self.model.entries.get(new.key)
        outcome = self.model.post_batch([new], "rollback")
        note(f"post {new} -> {outcome}")
        if len(new.legs) == 2 and new.legs[0].side == "debit" and not reverse_order:
            call: Callable[[], Entry] = lambda: services.transfer(  # noqa: E731
                idempotency_key=new.key,
                kind=new.kind,
                debit_account=new.legs[0].account,
                credit_account=new.legs[1].account,
                amount=from_minor(new.legs[0].amount, new.legs[0].currency),
                metadata=dict(new.metadata),
            )
        else:
            call = lambda: services.post_entry(  # noqa: E731
                idempotency_key=new.key,
                kind=new.kind,
                legs=self.legs(new, reverse_order),
                metadata=dict(new.metadata),
            )
        entry = expect(outcome.raised, call)
        if entry is None:
            return
        if known is not None:
            assert outcome.replayed == [new.key]
            assert entry.pk == known.entry_id, "a replay must return the first entry"
        else:
            assert outcome.created == [new.key]
            self.model.entries[new.key].entry_id = entry.pk
        assert entry.idempotency_key == new.key

    def hold_transfer(self, hold: ModelHold) -> PendingTransfer:
        assert hold.transfer_id is not None
        return PendingTransfer.objects.get(pk=hold.transfer_id)

    def entry(self, key: str) -> Entry:
        return Entry.objects.get(idempotency_key=key)

    def holds(self, state: str | None = None) -> list[ModelHold]:
        return [h for h in self.model.holds.values() if state is None or h.state == state]

    def has_pending(self) -> bool:
        return bool(self.holds("pending"))

    def has_entries(self) -> bool:
        return bool(self.model.entries)

    # --- accounts -------------------------------------------------------------------------------------

    def _open(self, code: str, type_: str, limit: str, currency: str) -> None:
        error, created = self.model.open_account(code, type_, currency, limit)
        account = expect(
            error,
            lambda: services.open_account(code=code, type=type_, currency=currency, limit=limit),  # type: ignore[arg-type]
        )
        if account is None:
            return
        if created:
            self.account_ids[code] = account.pk
        else:
            assert account.pk == self.account_ids[code], "opening an existing account returns it"

    @initialize()
    def open_chart(self) -> None:
        self._open("clearing", "asset", NO_LIMIT, "CNY")
        self._open("custody_cash", "asset", CREDITS_WITHIN_DEBITS, "CNY")
        self._open("prepaid", "liability", DEBITS_WITHIN_CREDITS, "CNY")
        self._open("clearing_usd", "asset", NO_LIMIT, "USD")
        self._open("prepaid_usd", "liability", DEBITS_WITHIN_CREDITS, "USD")

    @precondition(lambda self: len(self.model.accounts) < MAX_ACCOUNTS)
    @rule(kind=st.sampled_from(ACCOUNT_KINDS), currency=st.sampled_from(["CNY", "CNY", "USD"]))
    def open_account(self, kind: tuple[str, str], currency: str) -> None:
        self._open(self.fresh_key(f"{kind[0]}_{currency.lower()}"), kind[0], kind[1], currency)

    @rule(data=st.data(), same=st.booleans())
    def reopen_account(self, data: st.DataObject, same: bool) -> None:
        code = data.draw(st.sampled_from(self.model.codes()))
        account = self.model.accounts[code]
        if same:
            self._open(code, account.type, account.limit, account.currency)
        else:
            kind = data.draw(
                st.sampled_from([k for k in ACCOUNT_KINDS if k != (account.type, account.limit)])
            )
            error, _ = self.model.open_account(code, kind[0], account.currency, kind[1])
            assert error is AccountConflict
            self._open(code, kind[0], kind[1], account.currency)

    # --- entries --------------------------------------------------------------------------------------

    @rule(data=st.data())
    def transfer(self, data: st.DataObject) -> None:
        self.post_one(self.draw_transfer(data))

    @precondition(has_entries)
    @rule(data=st.data())
    @in_business_time
    def replay_same_content(self, data: st.DataObject) -> None:
        """The same key with the same content returns the first result and changes nothing."""
        key = data.draw(st.sampled_from(sorted(self.model.entries)))
        known = self.model.entries[key]
        before = Entry.objects.count()
        origin = known.origin
        if origin[0] == "entry":
            self.post_one(origin[1], reverse_order=data.draw(st.booleans()))
        elif origin[0] == "post":
            hold = self.model.holds[origin[1]]
            assert self.model.resolve(hold.key, "post", key, origin[2]) == (None, False)
            amount = None if origin[2] is None else from_minor(origin[2], hold.currency)
            entry = services.post_pending(
                transfer=self.hold_transfer(hold), idempotency_key=key, amount=amount
            )
            assert entry.pk == known.entry_id
        else:
            target = self.model.entries[origin[1]]
            assert self.model.reverse(origin[1], key, origin[2]) == (None, False)
            entry = services.reverse_entry(
                entry=self.entry(target.key), idempotency_key=key, reason=origin[2]
            )
            assert entry.pk == known.entry_id
        assert Entry.objects.count() == before

    @precondition(has_entries)
    @rule(data=st.data())
    @in_business_time
    def replay_other_content(self, data: st.DataObject) -> None:
        """The same key with other content is refused, whatever the operation: IdempotencyConflict (or
        ReversalError when the reversal asked for is not allowed at all)."""
        key = data.draw(st.sampled_from(sorted(self.model.entries)))
        origin = self.model.entries[key].origin
        how = data.draw(st.sampled_from(["amount", "kind", "metadata", "as_transfer", "as_reversal"]))
        if origin[0] == "entry" and how in ("amount", "kind", "metadata"):
            new: ProposedEntry = origin[1]
            if how == "amount":
                legs = tuple(ProposedLeg(g.account, g.side, g.amount * 2, g.currency) for g in new.legs)
                other = ProposedEntry(key, new.kind, legs, new.metadata)
            elif how == "kind":
                other = ProposedEntry(key, new.kind + "_x", new.legs, new.metadata)
            else:
                other = ProposedEntry(key, new.kind, new.legs, (*new.metadata, ("extra", "1")))
            self.post_one(other)
        elif origin[0] == "post" and how == "amount" and self.model.holds[origin[1]].amount > 1:
            hold = self.model.holds[origin[1]]
            posted = hold.posted_amount
            assert posted is not None
            other_amount: int | None = posted - 1 if posted > 1 else posted + 1
            if posted < hold.amount and data.draw(st.booleans()):
                other_amount = None  # "post it all" after a partial post
            error, _ = self.model.resolve(hold.key, "post", key, other_amount)
            assert error is IdempotencyConflict
            expect(
                error,
                lambda: services.post_pending(
                    transfer=self.hold_transfer(hold),
                    idempotency_key=key,
                    amount=None if other_amount is None else from_minor(other_amount, hold.currency),
                ),
            )
        elif how == "as_reversal" or origin[0] == "reverse":
            target = data.draw(st.sampled_from(sorted(self.model.entries)))
            reason = "other reason"
            if origin[0] == "reverse" and target == origin[1]:
                reason = origin[2] + " (again)"
            error, changed = self.model.reverse(target, key, reason)
            assert not changed
            expect(
                error,
                lambda: services.reverse_entry(
                    entry=self.entry(target),
                    idempotency_key=key,
                    reason=reason,
                ),
            )
        else:
            self.post_one(self.draw_transfer(data, key=key))

    @rule(data=st.data())
    def post_batch_rollback(self, data: st.DataObject) -> None:
        """One bad entry in a batch: the whole batch is refused and nothing changes."""
        batch = [self.draw_transfer(data) for _ in range(data.draw(st.integers(1, 4)))]
        bad = self.draw_bad_entry(data, batch)
        batch.insert(data.draw(st.integers(0, len(batch))), bad)
        before = Entry.objects.count()
        outcome = self.model.post_batch(batch, "rollback")
        note(f"batch {batch} -> {outcome}")
        assert outcome.raised is not None
        expect(
            outcome.raised,
            lambda: services.post_batch(entries=[self.new_entry(n) for n in batch], on_error="rollback"),
        )
        assert Entry.objects.count() == before

    def draw_bad_entry(self, data: st.DataObject, batch: list[ProposedEntry]) -> ProposedEntry:
        """An entry that is refused whatever the rest of the batch does."""
        how = data.draw(st.sampled_from(["overdraw", "unbalanced", "zero", "conflict", "currency"]))
        template = self.draw_transfer(data)
        legs = list(template.legs)
        if how == "overdraw":
            # Takes more from a limited account than it and the whole batch could ever hold.
            limited = [a for a in self.model.accounts.values() if a.limit != NO_LIMIT]
            account = data.draw(st.sampled_from(sorted(limited, key=lambda a: a.code)))
            other = data.draw(
                st.sampled_from([c for c in self.model.codes(account.currency) if c != account.code])
            )
            amount = (
                sum(g.amount for e in batch for g in e.legs)
                + account.debits_posted
                + account.credits_posted
                + 1
            )
            side_of_limited = "debit" if account.limit == DEBITS_WITHIN_CREDITS else "credit"
            other_side = "credit" if side_of_limited == "debit" else "debit"
            legs = [
                ProposedLeg(account.code, side_of_limited, amount, account.currency),  # type: ignore[arg-type]
                ProposedLeg(other, other_side, amount, account.currency),  # type: ignore[arg-type]
            ]
        elif how == "unbalanced":
            legs[0] = ProposedLeg(legs[0].account, legs[0].side, legs[0].amount + 1, legs[0].currency)
        elif how == "zero":
            legs = [ProposedLeg(g.account, g.side, 0, g.currency) for g in legs]
        elif how == "conflict" and self.model.entries:
            key = data.draw(st.sampled_from(sorted(self.model.entries)))
            return ProposedEntry(key, template.kind + "_other", template.legs, template.metadata)
        else:
            other = "USD" if legs[0].currency == "CNY" else "CNY"
            legs[0] = ProposedLeg(legs[0].account, legs[0].side, legs[0].amount, other)
        return ProposedEntry(template.key, template.kind, tuple(legs), template.metadata)

    @rule(data=st.data())
    def post_batch_skip(self, data: st.DataObject) -> None:
        """Skip mode: bad entries are reported, the rest posted; limits are checked on the net effect."""
        batch = [self.draw_transfer(data) for _ in range(data.draw(st.integers(1, 6)))]
        if data.draw(st.booleans()):
            batch.insert(data.draw(st.integers(0, len(batch))), self.draw_bad_entry(data, batch))
        if bool(self.model.entries) and data.draw(st.booleans()):
            key = data.draw(st.sampled_from(sorted(self.model.entries)))
            origin = self.model.entries[key].origin
            if origin[0] == "entry":  # a replay of an earlier entry rides along
                batch.insert(data.draw(st.integers(0, len(batch))), origin[1])
        outcome = self.model.post_batch(batch, "skip")
        note(f"batch {batch} -> {outcome}")
        result = services.post_batch(entries=[self.new_entry(n) for n in batch], on_error="skip")
        self.check_batch_result(result, outcome)

    def check_batch_result(self, result: services.BatchResult, outcome: BatchOutcome) -> None:
        assert {f.index: type(f.error) for f in result.failures} == outcome.failures
        assert [e.idempotency_key for e in result.entries] == outcome.result_keys
        assert result.created == len(outcome.created)
        assert result.replayed == len(outcome.replayed)
        for entry in result.entries:
            known = self.model.entries[entry.idempotency_key]
            if entry.idempotency_key in outcome.created:
                known.entry_id = entry.pk
            else:
                assert entry.pk == known.entry_id

    @precondition(has_entries)
    @rule(data=st.data(), reason=st.sampled_from(["录入错误 mistake", "duplicate"]))
    def reverse_entry(self, data: st.DataObject, reason: str) -> None:
        target = data.draw(st.sampled_from(sorted(self.model.entries)))
        key = self.fresh_key("rev")
        error, changed = self.model.reverse(target, key, reason)
        entry = expect(
            error,
            lambda: services.reverse_entry(
                entry=self.entry(target),
                idempotency_key=key,
                reason=reason,
            ),
        )
        if entry is not None:
            assert changed
            self.model.entries[key].entry_id = entry.pk
            assert entry.reverses_id == self.model.entries[target].entry_id

    # --- holds ----------------------------------------------------------------------------------------

    @rule(data=st.data(), expires_in=EXPIRY, metadata=METADATA)
    def create_pending(self, data: st.DataObject, expires_in: int | None, metadata: Any) -> None:
        """A hold between random accounts: refused exactly when it would break a limit."""
        debit, credit = self.draw_pair(data)
        amount = data.draw(AMOUNTS)
        self.create_new_hold(debit, credit, amount, expires_in, metadata)

    @rule(data=st.data(), expires_in=EXPIRY, metadata=METADATA)
    def create_covered_pending(self, data: st.DataObject, expires_in: int | None, metadata: Any) -> None:
        """A hold that fits within both accounts' limits, so holds are common enough to post and void."""
        pairs = [
            (dr, cr)
            for currency in sorted({a.currency for a in self.model.accounts.values()})
            for dr in self.model.codes(currency)
            for cr in self.model.codes(currency)
            if dr != cr and all((r is None or r > 0) for r in self.rooms(dr, cr))
        ]
        debit, credit = data.draw(st.sampled_from(pairs))
        ceiling = min([r for r in self.rooms(debit, credit) if r is not None] or [5_000])
        self.create_new_hold(debit, credit, data.draw(st.integers(1, ceiling)), expires_in, metadata)

    def rooms(self, debit: str, credit: str) -> tuple[int | None, int | None]:
        return self.model.room(debit, "debit"), self.model.room(credit, "credit")

    def create_new_hold(
        self, debit: str, credit: str, amount: int, expires_in: int | None, metadata: Any
    ) -> None:
        expires_at = None if expires_in is None else self.model.now + timedelta(minutes=expires_in)
        currency = self.model.accounts[debit].currency
        self.create_hold(self.fresh_key("h"), "lesson", debit, credit, amount, currency, expires_at, metadata)

    def create_hold(
        self,
        key: str,
        kind: str,
        debit: str,
        credit: str,
        amount: int,
        currency: str,
        expires_at: datetime | None,
        metadata: Any,
    ) -> None:
        known = self.model.holds.get(key)
        hold, error, created = self.model.create_hold(
            key=key,
            kind=kind,
            debit=debit,
            credit=credit,
            amount=amount,
            currency=currency,
            expires_at=expires_at,
            metadata=metadata,
        )
        transfer = expect(
            error,
            lambda: services.create_pending(
                idempotency_key=key,
                kind=kind,
                debit_account=debit,
                credit_account=credit,
                amount=from_minor(amount, currency),
                expires_at=expires_at,
                metadata=dict(metadata),
            ),
        )
        if transfer is None:
            return
        assert hold is not None
        if created:
            hold.transfer_id = transfer.pk
        else:
            assert known is not None and transfer.pk == known.transfer_id, "a replay returns the first hold"
        assert (transfer.state, transfer.amount) == (hold.state, hold.amount)

    @precondition(lambda self: bool(self.model.holds))
    @rule(data=st.data(), change=st.sampled_from([None, "amount", "kind", "expires_at", "metadata"]))
    def replay_pending(self, data: st.DataObject, change: str | None) -> None:
        """A hold's key replayed: same content returns it (in any state), other content is a conflict."""
        hold = data.draw(st.sampled_from(sorted(self.model.holds.values(), key=lambda h: h.key)))
        amount, kind, expires_at, metadata = hold.amount, hold.kind, hold.expires_at, hold.metadata
        if change == "amount":
            amount += 1
        elif change == "kind":
            kind += "_other"
        elif change == "expires_at":
            expires_at = (expires_at or self.model.now) + timedelta(minutes=1)
        elif change == "metadata":
            metadata = (*metadata, ("retry", "1"))
        self.create_hold(hold.key, kind, hold.debit, hold.credit, amount, hold.currency, expires_at, metadata)

    @precondition(has_pending)
    @rule(data=st.data(), partial=st.booleans())
    @in_business_time
    def post_pending(self, data: st.DataObject, partial: bool) -> None:
        hold = data.draw(st.sampled_from(self.holds("pending")))
        amount = data.draw(st.integers(1, hold.amount)) if partial else None
        key = self.fresh_key("post")
        error, changed = self.model.resolve(hold.key, "post", key, amount)
        entry = expect(
            error,
            lambda: services.post_pending(
                transfer=self.hold_transfer(hold),
                idempotency_key=key,
                amount=None if amount is None else from_minor(amount, hold.currency),
            ),
        )
        if entry is None:
            return
        assert changed
        self.model.entries[key].entry_id = entry.pk
        assert entry.pending_transfer_id == hold.transfer_id
        posted = dict(entry.postings.values_list("account_id", "amount"))
        assert hold.posted_amount is not None
        assert posted == {
            self.account_ids[hold.debit]: hold.posted_amount,
            self.account_ids[hold.credit]: -hold.posted_amount,
        }

    @precondition(has_pending)
    @rule(data=st.data())
    @in_business_time
    def void_pending(self, data: st.DataObject) -> None:
        hold = data.draw(st.sampled_from(self.holds("pending")))
        key = self.fresh_key("void")
        assert self.model.resolve(hold.key, "void", key) == (None, True)
        transfer = services.void_pending(transfer=self.hold_transfer(hold), idempotency_key=key)
        assert (transfer.state, transfer.resolution_key) == ("voided", key)

    def has_resolved(self) -> bool:
        return any(h.state in ("posted", "voided") for h in self.model.holds.values())

    @precondition(has_resolved)
    @rule(data=st.data())
    @in_business_time
    def replay_resolution(self, data: st.DataObject) -> None:
        """Posting or voiding again with the key that resolved the hold is a replay: nothing changes."""
        hold = data.draw(st.sampled_from([h for h in self.holds() if h.state in ("posted", "voided")]))
        assert hold.resolution_key is not None
        if hold.state == "voided":
            assert self.model.resolve(hold.key, "void", hold.resolution_key) == (None, False)
            transfer = services.void_pending(
                transfer=self.hold_transfer(hold), idempotency_key=hold.resolution_key
            )
            assert transfer.state == "voided"
        else:
            asked = self.model.entries[hold.resolution_key].origin[2]  # None: "post it all"
            assert self.model.resolve(hold.key, "post", hold.resolution_key, asked) == (None, False)
            entry = services.post_pending(
                transfer=self.hold_transfer(hold),
                idempotency_key=hold.resolution_key,
                amount=None if asked is None else from_minor(asked, hold.currency),
            )
            assert entry.pk == self.model.entries[hold.resolution_key].entry_id

    @precondition(lambda self: self.has_pending() and (self.model.entries or self.model.resolution_keys()))
    @rule(data=st.data(), action=st.sampled_from(["post", "void"]))
    @in_business_time
    def resolve_with_used_key(self, data: st.DataObject, action: str) -> None:
        """A key that already resolved another hold, or (for a post) already names an entry, is a conflict.
        A void writes no entry, so an entry's key is free for it."""
        hold = data.draw(st.sampled_from(self.holds("pending")))
        key = data.draw(st.sampled_from(sorted({*self.model.entries, *self.model.resolution_keys()})))
        error, changed = self.model.resolve(hold.key, action, key)  # type: ignore[arg-type]
        transfer = self.hold_transfer(hold)
        if action == "void":
            result = expect(error, lambda: services.void_pending(transfer=transfer, idempotency_key=key))
            assert result is None or (changed and result.state == "voided")
        else:
            entry = expect(error, lambda: services.post_pending(transfer=transfer, idempotency_key=key))
            if entry is not None:
                assert changed
                self.model.entries[key].entry_id = entry.pk

    @precondition(lambda self: bool(self.model.holds))
    @rule(data=st.data(), action=st.sampled_from(["post", "void", "overpost", "zero"]))
    @in_business_time
    def illegal_transition(self, data: st.DataObject, action: str) -> None:
        """Resolving a resolved hold, posting more than is held or nothing: PendingTransferError."""
        hold = data.draw(st.sampled_from(sorted(self.model.holds.values(), key=lambda h: h.key)))
        key = self.fresh_key("bad")
        if hold.state == "pending" and action in ("post", "void"):
            action = "overpost"
        amount = {"overpost": hold.amount + data.draw(st.integers(1, 100)), "zero": 0}.get(action)
        verb = "void" if action == "void" else "post"
        error, changed = self.model.resolve(hold.key, verb, key, amount)  # type: ignore[arg-type]
        assert error is PendingTransferError and not changed
        transfer = self.hold_transfer(hold)
        if verb == "void":
            expect(error, lambda: services.void_pending(transfer=transfer, idempotency_key=key))
        else:
            money = None if amount is None else from_minor(amount, hold.currency)
            expect(error, lambda: services.post_pending(transfer=transfer, idempotency_key=key, amount=money))

    @rule(minutes=st.integers(0, 120), to_next_expiry=st.booleans(), through_clock=st.booleans())
    def expire(self, minutes: int, to_next_expiry: bool, through_clock: bool) -> None:
        """Business time moves on; holds whose expiry is at or before it are released, once."""
        upcoming = [
            h.expires_at
            for h in self.holds("pending")
            if h.expires_at is not None and h.expires_at > self.model.now
        ]
        if to_next_expiry and upcoming:
            self.model.now = min(upcoming)  # exactly on the boundary: expires_at <= now expires
        else:
            self.model.now += timedelta(minutes=minutes)
        expired = self.model.expire(self.model.now)
        if through_clock:
            with clock.frozen_at(self.model.now):
                count = services.expire_pending()
        else:
            count = services.expire_pending(now=self.model.now)
        assert count == len(expired)

    @rule()
    def seal(self) -> None:
        chain.seal()
        assert ChainLink.objects.count() == len(self.model.entries)
        assert not UnsealedEntry.objects.exists()

    # --- invariants -----------------------------------------------------------------------------------

    @invariant()
    def books_match_model(self) -> None:
        self.steps += 1
        accounts = {a.code: a for a in Account.objects.all()}
        assert accounts.keys() == self.model.accounts.keys()
        for code, expected in self.model.accounts.items():
            account = accounts[code]
            counters = (
                account.debits_posted,
                account.credits_posted,
                account.debits_pending,
                account.credits_pending,
            )
            assert counters == (
                expected.debits_posted,
                expected.credits_posted,
                expected.debits_pending,
                expected.credits_pending,
            ), code
            got = balance(account, refresh=False)
            cur = expected.currency
            assert got.posted == from_minor(expected.posted, cur), code
            assert got.pending_debits == from_minor(expected.debits_pending, cur), code
            assert got.pending_credits == from_minor(expected.credits_pending, cur), code
            assert got.available == from_minor(expected.available, cur), code
            if expected.limit != NO_LIMIT:
                assert expected.posted >= 0 and expected.available >= 0, code
                assert got.posted.amount >= 0 and got.available.amount >= 0, code

    @invariant()
    def double_entry_holds(self) -> None:
        sums = dict(Posting.objects.values_list("currency").annotate(total=Sum("amount")).order_by())
        assert all(total == 0 for total in sums.values()), sums
        assert all(total == 0 for total in self.model.postings_sum().values())
        assert Entry.objects.count() == len(self.model.entries)
        holds = {
            pk: row
            for pk, *row in PendingTransfer.objects.values_list(
                "pk", "state", "posted_amount", "resolution_key"
            )
        }
        assert holds == {
            h.transfer_id: [h.state, h.posted_amount, h.resolution_key] for h in self.model.holds.values()
        }

    @invariant()
    def verification_is_clean(self) -> None:
        report = verification.Report()
        verification.check_entries_balance(report)
        verification.check_materialized_totals(report)
        verification.check_limits(report)
        verification.check_pending_transfers(report)
        assert report.ok, report.findings
        if self.steps % FULL_VERIFY_EVERY == 0:
            full = verification.verify()
            assert full.ok, full.findings


@pytest.mark.django_db
def test_ledger_matches_reference_model() -> None:
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=MAX_EXAMPLES,
            stateful_step_count=STEP_COUNT,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


@pytest.mark.django_db
def test_a_resolution_key_shaped_like_an_expiry_key_does_not_stop_expiry() -> None:
    """Found while modelling expiry: the expiry job must not be blocked by another hold's resolution key."""
    services.open_account(code="clearing", type="asset")
    services.open_account(code="prepaid", type="liability")
    due = services.create_pending(
        idempotency_key="lesson-1",
        kind="lesson",
        debit_account="clearing",
        credit_account="prepaid",
        amount=from_minor(100, "CNY"),
        expires_at=START + timedelta(hours=1),
    )
    other = services.create_pending(
        idempotency_key="lesson-2",
        kind="lesson",
        debit_account="clearing",
        credit_account="prepaid",
        amount=from_minor(200, "CNY"),
    )
    services.void_pending(transfer=other, idempotency_key="lesson-1:expire")

    assert services.expire_pending(now=START + timedelta(hours=2)) == 1
    assert PendingTransfer.objects.get(pk=due.pk).state == "expired"

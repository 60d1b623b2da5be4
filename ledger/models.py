"""The ledger's tables: accounts with materialized totals, append-only entries and postings, pending
transfers (holds), the hash chain and signed checkpoints.

Amounts are integers of minor units (fen). A posting's ``amount`` is positive for a debit and negative for a
credit, so an entry balances when its postings sum to zero per currency. The database enforces what must
never happen (see the migrations): unbalanced entries, UPDATE or DELETE of history, balances past their
limits, illegal pending-transfer transitions.
"""

from __future__ import annotations

from django.db import models
from django.db.models import F, Q


class AccountType(models.TextChoices):
    ASSET = "asset", "资产 asset"
    LIABILITY = "liability", "负债 liability"
    EQUITY = "equity", "权益 equity"
    INCOME = "income", "收入 income"
    EXPENSE = "expense", "费用 expense"


DEBIT_NORMAL_TYPES = frozenset({AccountType.ASSET, AccountType.EXPENSE})


class Account(models.Model):
    """One account of the chart, in one currency, with its running totals (TigerBeetle's four counters).

    The totals are updated in the same transaction as the postings and pending transfers that change them, so
    reading a balance is one row. ``verify_ledger`` recomputes them from history.
    """

    code = models.CharField(max_length=200)
    name = models.CharField(max_length=200, blank=True)
    type = models.CharField(max_length=16, choices=AccountType.choices)
    currency = models.CharField(max_length=3)
    # A liability that may never go below zero: debits (posted and pending) never exceed posted credits.
    debits_must_not_exceed_credits = models.BooleanField(default=False)
    # An asset that may never go below zero: credits (posted and pending) never exceed posted debits.
    credits_must_not_exceed_debits = models.BooleanField(default=False)
    debits_posted = models.BigIntegerField(default=0)
    credits_posted = models.BigIntegerField(default=0)
    debits_pending = models.BigIntegerField(default=0)
    credits_pending = models.BigIntegerField(default=0)
    # Number of postings on this account; each posting records the totals after it.
    posting_count = models.BigIntegerField(default=0)
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["code"], name="ledger_account_code"),
            models.CheckConstraint(
                condition=Q(debits_posted__gte=0)
                & Q(credits_posted__gte=0)
                & Q(debits_pending__gte=0)
                & Q(credits_pending__gte=0),
                name="ledger_account_totals_non_negative",
            ),
            models.CheckConstraint(
                condition=Q(debits_must_not_exceed_credits=False)
                | Q(credits_posted__gte=F("debits_posted") + F("debits_pending")),
                name="ledger_account_debits_within_credits",
            ),
            models.CheckConstraint(
                condition=Q(credits_must_not_exceed_debits=False)
                | Q(debits_posted__gte=F("credits_posted") + F("credits_pending")),
                name="ledger_account_credits_within_debits",
            ),
            models.CheckConstraint(
                condition=~(Q(debits_must_not_exceed_credits=True) & Q(credits_must_not_exceed_debits=True)),
                name="ledger_account_one_limit",
            ),
        ]

    def __str__(self) -> str:
        return self.code

    @property
    def is_debit_normal(self) -> bool:
        return self.type in DEBIT_NORMAL_TYPES

    def signed_balance(self, debits: int, credits: int) -> int:
        """Balance on the normal side: debits - credits for assets and expenses, else the reverse."""
        return debits - credits if self.is_debit_normal else credits - debits


class PendingTransfer(models.Model):
    """A hold (two-phase transfer): reserves ``amount`` from debit to credit until posted, voided or expired.

    While pending it counts in the accounts' pending totals, and so against their limits. Posting writes an
    ordinary entry for the posted amount (all or part); the rest is released. Each resolution happens once;
    the database rejects any other change (see the migrations).
    """

    class State(models.TextChoices):
        PENDING = "pending", "待定 pending"
        POSTED = "posted", "已入账 posted"
        VOIDED = "voided", "已撤销 voided"
        EXPIRED = "expired", "已过期 expired"

    idempotency_key = models.CharField(max_length=200)
    request_hash = models.CharField(max_length=64)
    kind = models.CharField(max_length=64)
    # No index on either account (migration 0011): nothing reads holds by account, and each index would be
    # rewritten when a hold is resolved. Accounts are never deleted, so the foreign keys need none either.
    # PostgreSQL checks the accounts exist in a statement trigger (migration 0013), not a constraint.
    debit_account = models.ForeignKey(
        Account, on_delete=models.PROTECT, related_name="pending_debits", db_index=False, db_constraint=False
    )
    credit_account = models.ForeignKey(
        Account, on_delete=models.PROTECT, related_name="pending_credits", db_index=False, db_constraint=False
    )
    amount = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    posted_amount = models.BigIntegerField(null=True, blank=True)
    # Idempotency key of the post or void that resolved it.
    # NULL, not "", while pending: the partial unique index skips NULLs.
    resolution_key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001
    metadata = models.JSONField(default=dict, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["expires_at"], name="ledger_pending_expiry", condition=Q(state="pending")),
        ]
        constraints = [
            models.UniqueConstraint(fields=["idempotency_key"], name="ledger_pending_idempotency_key"),
            models.UniqueConstraint(
                fields=["resolution_key"],
                condition=Q(resolution_key__isnull=False),
                name="ledger_pending_resolution_key",
            ),
            models.CheckConstraint(condition=Q(amount__gt=0), name="ledger_pending_amount_positive"),
            models.CheckConstraint(
                condition=~Q(debit_account=F("credit_account")), name="ledger_pending_distinct_accounts"
            ),
            models.CheckConstraint(
                condition=(Q(state="pending") & Q(resolved_at__isnull=True) & Q(posted_amount__isnull=True))
                | (Q(state="posted") & Q(posted_amount__gt=0) & Q(posted_amount__lte=F("amount")))
                | (Q(state__in=["voided", "expired"]) & Q(posted_amount__isnull=True)),
                name="ledger_pending_state_consistent",
            ),
        ]

    def __str__(self) -> str:
        return (
            f"pending {self.pk} {self.debit_account_id}->{self.credit_account_id} {self.amount} {self.state}"
        )


class Entry(models.Model):
    """A journal entry: two or more postings that sum to zero per currency. Append-only."""

    idempotency_key = models.CharField(max_length=200)
    request_hash = models.CharField(max_length=64)
    kind = models.CharField(max_length=64)
    # When the ledger recorded it (transaction time; balances "as of" use this).
    posted_at = models.DateTimeField()
    # The value date the business means (a bank's value date, a lesson's date); defaults to posted_at.
    effective_at = models.DateTimeField()
    metadata = models.JSONField(default=dict, blank=True)
    # Each at most once (partial unique indexes: the common case, NULL, costs no index write).
    reverses = models.ForeignKey(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="reversals", db_index=False
    )
    # No foreign-key constraint on PostgreSQL (migration 0009): the entry trigger checks, once per statement,
    # that the hold exists, and holds are never deleted nor change id. SQLite keeps the constraint.
    pending_transfer = models.ForeignKey(
        PendingTransfer,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="posting_entries",
        db_index=False,
        db_constraint=False,
    )

    class Meta:
        verbose_name_plural = "entries"
        constraints = [
            models.UniqueConstraint(fields=["idempotency_key"], name="ledger_entry_idempotency_key"),
            models.UniqueConstraint(
                fields=["reverses"], condition=Q(reverses__isnull=False), name="ledger_entry_reversed_once"
            ),
            models.UniqueConstraint(
                fields=["pending_transfer"],
                condition=Q(pending_transfer__isnull=False),
                name="ledger_entry_pending_posted_once",
            ),
        ]

    def __str__(self) -> str:
        return f"entry {self.pk} {self.kind}"


class Posting(models.Model):
    """One leg of an entry. ``amount`` > 0 debits the account, < 0 credits it.

    ``debits_after`` and ``credits_after`` are the account's posted totals just after this posting, so the
    balance at any past moment is one index lookup.
    """

    # Both lookups are served by the composite indexes below.
    # No foreign-key constraint on PostgreSQL (migration 0007): the posting trigger already refuses, at once,
    # a posting whose entry does not exist or was not inserted by the current transaction, and entries are
    # never updated or deleted, so the constraint's per-posting check at COMMIT only repeated it. SQLite keeps
    # the constraint from 0001 (it has no other way to refuse, at COMMIT, a posting whose entry never came).
    entry = models.ForeignKey(
        Entry, on_delete=models.PROTECT, related_name="postings", db_index=False, db_constraint=False
    )
    # Likewise (migration 0008): the posting trigger checks, once per statement, that every posting's account
    # exists, and accounts are never deleted nor change id. SQLite keeps the constraint.
    account = models.ForeignKey(
        Account, on_delete=models.PROTECT, related_name="postings", db_index=False, db_constraint=False
    )
    amount = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    posted_at = models.DateTimeField()
    debits_after = models.BigIntegerField()
    credits_after = models.BigIntegerField()

    class Meta:
        indexes = [models.Index(fields=["account", "posted_at", "id"], name="ledger_posting_account_time")]
        constraints = [
            models.CheckConstraint(condition=~Q(amount=0), name="ledger_posting_amount_nonzero"),
            models.UniqueConstraint(fields=["entry", "account"], name="ledger_posting_one_per_account"),
        ]

    def __str__(self) -> str:
        return f"posting {self.pk}: {self.amount} on {self.account_id}"

    @property
    def debit(self) -> int:
        return max(self.amount, 0)

    @property
    def credit(self) -> int:
        return max(-self.amount, 0)


class UnsealedEntry(models.Model):
    """Queue of entries not yet in the hash chain. Writers add to it; the sealer takes from it.

    Sealing asynchronously keeps writers from serialising on the chain head (as Formance and Blnk do).
    """

    # On PostgreSQL a statement trigger checks that the entry exists (guards.postgresql.sql, 3d) instead of
    # a foreign key; SQLite keeps the key (migration 0010).
    entry = models.OneToOneField(
        Entry, on_delete=models.PROTECT, primary_key=True, related_name="+", db_constraint=False
    )

    def __str__(self) -> str:
        return f"unsealed entry {self.entry_id}"


class ChainLink(models.Model):
    """The ``seq``-th link of the hash chain: hash = SHA-256(prev_hash || canonical form of ``entry``)."""

    seq = models.BigIntegerField(primary_key=True)
    entry = models.OneToOneField(Entry, on_delete=models.PROTECT, related_name="chain_link")
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)
    sealed_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"link {self.seq}: entry {self.entry_id}"


class Checkpoint(models.Model):
    """A signed statement of the chain head. ``payload`` is the exact canonical JSON that was signed."""

    created_at = models.DateTimeField()
    chain_seq = models.BigIntegerField()
    chain_hash = models.CharField(max_length=64)
    payload = models.TextField()
    key_id = models.CharField(max_length=64)
    public_key = models.CharField(max_length=64)
    signature = models.CharField(max_length=128)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"checkpoint {self.pk} at link {self.chain_seq}"


class LiabilityTree(models.Model):
    """A Merkle-sum tree of liabilities (负债证明) as a checkpoint signed it, kept to serve proofs later.

    One subtree per group (e.g. per institution) and a top tree over the groups; ``groups`` lists them in
    tree order as ``{"group", "root", "total", "count"}``. The leaves are ``LiabilityLeaf`` rows. Nothing here
    is trusted: a proof built from a changed row no longer leads to the signed root (see ``ledger.proofs``).

    ``salt_key`` is the tree's secret: every leaf's salt derives from it and the leaf's place in the tree
    (``ledger.proofs.leaf_salts``), so salts are not stored. It is as secret as the salts were: with it,
    anyone could test guessed amounts against the leaf hashes. Trees signed before it have none; their
    leaves keep their salts.
    """

    created_at = models.DateTimeField()
    root_hash = models.CharField(max_length=64)
    total = models.BigIntegerField()
    leaf_count = models.BigIntegerField()
    groups = models.JSONField(default=list)
    salt_key = models.BinaryField(null=True, blank=True)

    def __str__(self) -> str:
        return f"liability tree {self.pk}: {self.leaf_count} leaves, total {self.total}"


class LiabilityLeaf(models.Model):
    """One liability in a tree: what ``reference`` (a contract) is owed, at which place of which group."""

    # No foreign key constraint in the database: a tree's leaves are written once, by one COPY in the
    # transaction that creates the tree, and never updated, so checking each of a million rows against the
    # tree (deferred to commit, a trigger event per row) proves nothing and made storing them ~3x slower.
    # Leaves of a missing tree cannot lead to any signed root anyway.
    tree = models.ForeignKey(
        LiabilityTree, on_delete=models.PROTECT, related_name="leaves", db_index=False, db_constraint=False
    )
    group_position = models.IntegerField()
    position = models.IntegerField()
    reference = models.CharField(max_length=200)
    amount = models.BigIntegerField()
    # Hex salt, only for trees signed before ``LiabilityTree.salt_key``; empty (NULL) since.
    salt = models.CharField(max_length=64, null=True, blank=True)  # noqa: DJ001

    class Meta:
        constraints = [
            # Unique per group, and so the index that finds a leaf by its group and reference. A tree-wide
            # unique reference would cost a random index insert per leaf (doubling the time to store a
            # million); references are checked unique across the tree before the tree is signed.
            models.UniqueConstraint(
                fields=["tree", "group_position", "reference"], name="ledger_liability_leaf_group_reference"
            ),
            models.UniqueConstraint(
                fields=["tree", "group_position", "position"], name="ledger_liability_leaf_position"
            ),
            models.CheckConstraint(
                condition=Q(amount__gte=0), name="ledger_liability_leaf_amount_non_negative"
            ),
        ]

    def __str__(self) -> str:
        return f"liability {self.reference}: {self.amount}"


class CheckpointProofs(models.Model):
    """What a checkpoint signed beyond the chain head: the entry log's Merkle root over the link hashes, the
    right edge of that tree (so the next checkpoint extends it without re-reading history) and, when given,
    the liabilities tree."""

    checkpoint = models.OneToOneField(
        Checkpoint, on_delete=models.PROTECT, primary_key=True, related_name="proofs"
    )
    log_size = models.BigIntegerField()
    log_root = models.CharField(max_length=64)
    # Hex roots of the perfect subtrees on the tree's right edge, largest first (merkle.CompactRange).
    log_frontier = models.JSONField(default=list)
    liability_tree = models.ForeignKey(
        LiabilityTree, on_delete=models.PROTECT, null=True, blank=True, related_name="checkpoints"
    )

    class Meta:
        indexes = [models.Index(fields=["log_size"], name="ledger_checkpointproofs_size")]

    def __str__(self) -> str:
        return f"proofs of checkpoint {self.checkpoint_id}: log of {self.log_size}"


class LogNode(models.Model):
    """A perfect subtree of the entry log's Merkle tree: the root of links ``index * 2**height + 1`` to
    ``(index + 1) * 2**height`` (by seq), stored by the checkpoint that completed it, for subtrees of
    ``ledger.proofs.LOG_NODE_MIN_HEIGHT`` and up (one row per 128 links).

    History only grows, so such a node never changes: an inclusion proof takes its sibling hashes from
    these rows and at most two blocks of links below them (O(log n) reads) instead of every link. Nothing
    here is trusted: a proof from a changed row no longer leads to the signed root (``ProofMismatch``)."""

    height = models.SmallIntegerField()
    index = models.BigIntegerField()
    hash = models.CharField(max_length=64)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["height", "index"], name="ledger_lognode_position"),
        ]

    def __str__(self) -> str:
        return f"log node {self.height}/{self.index}"

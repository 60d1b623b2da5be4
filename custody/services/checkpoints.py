"""The custody domain's checkpoint (每日检查点): the ledger's signed checkpoint plus a Merkle-sum tree of what
custody owes on every contract, so each parent can check their contract is counted (proof of liabilities).

What each contract's leaf says (``ledger.proofs`` stores and signs it; ``ledger.verify`` checks it):

- reference: the contract number (``HT20240304…``), what the parent sees on their contract and bank slip;
- group: the institution's licence number (办学许可证号), so the checkpoint signs a total per institution;
- amount: what custody owes the parent on this contract, in fen: the posted balance of ``prepaid:c`` (paid,
  not yet released or refunded) **plus** the posted balance of ``refund_payable:c`` (refund approved, not yet
  paid back by the bank). Lessons recorded but not confirmed are still owed (their holds are pending, not
  posted), so they count; a refund approved but unpaid is owed too, so a closure run does not make the money
  vanish from the signed total.

Which contracts: every contract with a ledger account that is open (awaiting payment, active) or still owes
something. Closed contracts owing nothing drop out, so the tree tracks what is held, not all history.

The balances and the chain head are read in one snapshot: the checkpoint runs in a REPEATABLE READ
transaction on PostgreSQL, with the chain's sealer lock taken before it starts, so the signed liabilities
are exactly the balances after the entries up to the signed head, no more, no fewer. (``verify`` below
recomputes them from those entries' postings and names every contract that differs.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

from django.db import DatabaseError, connection, transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce

from custody.models import Contract, ContractState, Institution
from ledger import chain, merkle, proofs, verify
from ledger.models import Checkpoint, CheckpointProofs, LiabilityLeaf, LiabilityTree
from ledger.verification import Finding

OPEN_STATES = (ContractState.AWAITING_PAYMENT, ContractState.ACTIVE)
_CHUNK = 20_000

OWED_FEN = (F("prepaid_account__credits_posted") - F("prepaid_account__debits_posted")) + Coalesce(
    F("refund_account__credits_posted") - F("refund_account__debits_posted"), 0
)


def contract_liabilities() -> list[tuple[str, str, int]]:
    """``(contract number, institution licence number, owed fen)`` for each contract in the tree, from the
    materialized account totals: one set-based statement, its rows taken as the driver gives them (the
    ORM's per-row converters cost seconds over a million contracts and add nothing to two strings and an
    integer). Ordered as the tree is (by institution, then contract), so the leaves come already grouped
    and are stored in index order."""
    sql, params = (
        Contract.objects.filter(prepaid_account__isnull=False)
        .annotate(owed_fen=OWED_FEN)
        .filter(Q(state__in=OPEN_STATES) | ~Q(owed_fen=0))
        .order_by("institution__licence_number", "number")
        .values_list("number", "institution__licence_number", "owed_fen")
        .query.sql_with_params()
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows: list[tuple[str, str, int]] = cursor.fetchall()
    return rows


@contextmanager
def _one_snapshot() -> Iterator[None]:
    """A transaction that reads one snapshot of the ledger while it seals and signs.

    On PostgreSQL the sealer's advisory lock is taken (at session level) *before* the transaction's snapshot,
    so no other sealer can append links the snapshot would not see; the ledger's own sealing inside re-enters
    that lock. Inside an outer transaction (tests, a caller's atomic block) the isolation level can no
    longer be chosen, and the caller's transaction is used as it is."""
    if connection.vendor != "postgresql":
        with transaction.atomic():
            yield
        return
    fresh = not connection.in_atomic_block
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [chain._SEALER_LOCK_ID])
    try:
        with transaction.atomic():
            if fresh:
                with connection.cursor() as cursor:
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield
    finally:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [chain._SEALER_LOCK_ID])
        except DatabaseError:
            # The caller's transaction is aborted: the lock goes with the session; nothing else to do here.
            pass


def create_custody_checkpoint() -> Checkpoint:
    """Seal the chain and sign its head, the entry log's Merkle root, and the liabilities tree over every
    contract's owed amount with a total per institution. All or nothing."""
    with _one_snapshot():
        return proofs.create_checkpoint_with_proofs(liabilities=contract_liabilities())


# --- the custody-level audit of a checkpoint ----------------------------------------------------------------


@dataclass
class CheckpointAudit:
    """What ``verify_checkpoint_liabilities`` found: nothing when the checkpoint, its stored tree and the
    ledger agree."""

    checkpoint_id: int
    leaves: int = 0
    total_fen: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


_FINDINGS_LIMIT = 1000


def verify_checkpoint_liabilities(checkpoint: Checkpoint) -> CheckpointAudit:
    """Check a custody checkpoint three ways and name every difference:

    1. its signature, with the platform's trusted keys (old key ids included, after rotation);
    2. its stored leaves rebuild the signed root, every group's signed total and the grand total;
    3. each leaf equals what the ledger's postings say that contract was owed at the signed chain head
       (the postings of entries sealed at or before it, not the materialized totals), each contract owing
       anything then is in the tree, and in its institution's group.
    """
    audit = CheckpointAudit(checkpoint_id=checkpoint.pk)
    subject = f"checkpoint {checkpoint.pk}"
    try:
        document = proofs.checkpoint_document(checkpoint, head_proof=False)
        key_hex = chain.trusted_public_keys().get(checkpoint.key_id)
        if key_hex is None:
            raise verify.VerificationFailed("签名密钥未知", f"signed with unknown key {checkpoint.key_id}")
        body = verify.verify_checkpoint(document, verify.parse_public_key(key_hex), verify.Report())
    except (verify.VerificationFailed, proofs.ProofError) as exc:
        audit.findings.append(Finding("signature", subject, str(exc)))
        return audit
    if "liabilities_root" not in body:
        audit.findings.append(Finding("liabilities", subject, "signs no liabilities"))
        return audit
    tree_id = (
        CheckpointProofs.objects.filter(checkpoint=checkpoint)
        .values_list("liability_tree_id", flat=True)
        .first()
    )
    if tree_id is None:
        audit.findings.append(Finding("liabilities", subject, "its liabilities tree is missing"))
        return audit
    _check_tree(audit, tree_id, body)
    _check_against_ledger(audit, tree_id, int(body["chain_seq"]), sorted(body["group_totals"]))
    return audit


def _check_tree(audit: CheckpointAudit, tree_id: int, body: dict[str, Any]) -> None:
    signed_groups: dict[str, int] = body["group_totals"]
    names = sorted(signed_groups)
    rows = (
        LiabilityLeaf.objects.filter(tree_id=tree_id)
        .order_by("group_position", "position")
        .values_list("group_position", "position", "reference", "amount", "salt")
        .iterator(chunk_size=_CHUNK)
    )
    tree = LiabilityTree.objects.get(pk=tree_id)
    top: list[merkle.SumNode] = []
    seen_groups: list[int] = []
    for group_position, members in groupby(rows, key=lambda row: row[0]):
        leaves = list(members)
        seen_groups.append(group_position)
        name = names[group_position] if group_position < len(names) else f"#{group_position}"
        if [row[1] for row in leaves] != list(range(len(leaves))):
            audit.findings.append(Finding("tree", f"group {name}", "leaf positions have gaps or repeats"))
        amounts = [row[3] for row in leaves]
        if any(amount < 0 for amount in amounts):
            audit.findings.append(Finding("tree", f"group {name}", "holds a negative amount"))
            return
        try:
            salts = proofs.group_salts(tree, group_position, [row[4] for row in leaves])
        except proofs.ProofMismatch as exc:
            audit.findings.append(Finding("tree", f"group {name}", str(exc)))
            return
        root = merkle.SumTree.from_parts(
            merkle.liability_commitments([row[2] for row in leaves], amounts, salts), amounts
        ).root()
        if root.sum != signed_groups.get(name):
            audit.findings.append(
                Finding(
                    "tree",
                    f"group {name}",
                    f"stored leaves add up to {root.sum} fen; signed: {signed_groups.get(name)}",
                )
            )
        top.append(merkle.group_leaf(name, root))
        audit.leaves += len(leaves)
        audit.total_fen += root.sum
    if seen_groups != list(range(len(names))):
        audit.findings.append(
            Finding(
                "tree", f"tree {tree_id}", f"stored groups {len(seen_groups)}, signed groups {len(names)}"
            )
        )
    root = merkle.SumTree(top).root()
    if root.hash.hex() != body["liabilities_root"] or root.sum != body["liabilities_total"]:
        audit.findings.append(
            Finding(
                "tree",
                f"tree {tree_id}",
                "stored leaves do not rebuild the signed liabilities root "
                f"(they total {audit.total_fen} fen; signed {body['liabilities_total']})",
            )
        )


# Each contract's owed amount from the postings of entries sealed at or before the signed head (not the
# materialized totals), with its institution; and the signed groups by position. Two passes compare them
# with the stored leaves, one from each side.
_OWED_AT_HEAD = """
WITH owed_parts AS (
    SELECT c.number AS reference, c.institution_id AS institution_id, -p.amount AS amount
    FROM custody_contract c
    JOIN ledger_posting p ON p.account_id = c.prepaid_account_id
    JOIN ledger_chainlink l ON l.entry_id = p.entry_id AND l.seq <= %(seq)s
    UNION ALL
    SELECT c.number, c.institution_id, -p.amount
    FROM custody_contract c
    JOIN ledger_posting p ON p.account_id = c.refund_account_id
    JOIN ledger_chainlink l ON l.entry_id = p.entry_id AND l.seq <= %(seq)s
), owed AS (
    SELECT reference, SUM(amount) AS amount FROM owed_parts GROUP BY reference
)
"""

_LEDGER_SIDE = """
SELECT o.reference, o.amount, lf.amount
FROM owed o
LEFT JOIN ledger_liabilityleaf lf ON lf.tree_id = %(tree)s AND lf.reference = o.reference
WHERE (lf.id IS NULL AND o.amount <> 0) OR (lf.id IS NOT NULL AND lf.amount <> o.amount)
ORDER BY o.reference LIMIT %(limit)s
"""

_TREE_SIDE = """
SELECT lf.reference, lf.amount, c.number, o.reference, g.name, i.licence_number
FROM ledger_liabilityleaf lf
LEFT JOIN custody_contract c ON c.number = lf.reference
LEFT JOIN custody_institution i ON i.id = c.institution_id
LEFT JOIN owed o ON o.reference = lf.reference
LEFT JOIN signed_groups g ON g.position = lf.group_position
WHERE lf.tree_id = %(tree)s AND (
    c.id IS NULL OR (o.reference IS NULL AND lf.amount <> 0) OR g.name IS NULL OR g.name <> i.licence_number
)
ORDER BY lf.reference LIMIT %(limit)s
"""


def _check_against_ledger(audit: CheckpointAudit, tree_id: int, seq: int, group_names: list[str]) -> None:
    params: dict[str, Any] = {"seq": seq, "tree": tree_id, "limit": _FINDINGS_LIMIT}
    values = ", ".join(f"(%(p{i})s, %(g{i})s)" for i in range(len(group_names)))
    for i, name in enumerate(group_names):
        params[f"p{i}"], params[f"g{i}"] = i, name
    groups_cte = f", signed_groups(position, name) AS (VALUES {values})\n"
    with connection.cursor() as cursor:
        cursor.execute(_OWED_AT_HEAD + _LEDGER_SIDE, params)
        for reference, owed, signed in cursor.fetchall():
            if signed is None:
                problem = (
                    f"the ledger's postings up to link {seq} say {owed} fen is owed, "
                    "but the contract is missing from the signed liabilities"
                )
            else:
                problem = (
                    f"signed as owed {signed} fen, but the ledger's postings up to link {seq} say {owed} fen"
                )
            audit.findings.append(Finding("ledger", f"contract {reference}", problem))
        if not group_names:
            return  # an empty tree: nothing signed, nothing to compare from its side
        cursor.execute(_OWED_AT_HEAD.rstrip() + groups_cte + _TREE_SIDE, params)
        for reference, amount, contract, owed_reference, group, licence in cursor.fetchall():
            if contract is None:
                problem = f"signed as owed {amount} fen, but no such contract exists"
            elif owed_reference is None and amount != 0:
                problem = (
                    f"signed as owed {amount} fen, but the ledger has no postings for it up to link {seq}"
                )
            else:
                # Counting a contract under another institution shifts money between signed totals.
                problem = f"counted in group {group}, but belongs to the institution with licence {licence}"
            audit.findings.append(Finding("ledger", f"contract {reference}", problem))


def institution_group(institution: Institution) -> str:
    """The group name an institution's contracts are signed under."""
    return institution.licence_number

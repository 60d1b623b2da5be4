"""Proofs for regulators and parents (监管与家长可验证的证明): checkpoints that sign Merkle roots, the proofs
served from them, and signed export bundles. Everything produced here is checked by ``ledger.verify`` with
the public key alone.

A checkpoint made by ``create_checkpoint_with_proofs`` signs, besides the chain head:

- ``log_root`` / ``log_size``: the RFC 9162 Merkle root over the chain's link hashes in ``seq`` order (leaf =
  the link's 32-byte hash; size = ``chain_seq``). It is extended from the previous checkpoint's right edge
  (``CheckpointProofs.log_frontier``), so signing costs the entries sealed since then, not all history,
  and stores the perfect subtrees of 256 links and up it completes (``LogNode``), as transparency logs
  keep tiles. ``entry_inclusion_proof`` shows one entry is in it, read from those subtrees and two blocks
  of links (O(log n)); ``consistency_proof`` shows a newer checkpoint only appended to an older one (it
  and the checkpoint file's head path re-read every link: they are also the check that history before
  the checkpoint was not rewritten).
- ``liabilities_root`` / ``liabilities_total`` / ``group_totals`` (when liabilities are given): a
  Merkle-sum tree with one subtree per group (e.g. per institution) under a top tree over the groups, so one
  ``liability_proof`` shows a parent that their contract's amount is counted both in their institution's
  signed total and in the grand total. The ledger stays generic: callers pass (reference, group, amount).

Proof functions re-check what they produce against the signed roots and raise ``ProofMismatch`` when the
stored rows no longer lead there: that is tampering, and it must be loud, not served.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import groupby, islice
from operator import itemgetter
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from ledger import chain, merkle, verify
from ledger.canonical import canonical_json, timestamp
from ledger.errors import InvalidAmount, LedgerError
from ledger.models import ChainLink, Checkpoint, CheckpointProofs, LiabilityLeaf, LiabilityTree, LogNode

PROOF_VERSION = verify.PROOF_VERSION
_LINK_CHUNK = 50_000
_INSERT_CHUNK = 10_000
_COPY_LINES = 50_000
# Perfect log subtrees of 2**8 links and up are stored (``LogNode``); smaller ones are hashed from links.
LOG_NODE_MIN_HEIGHT = 8
_SALT_KEY_SIZE = 32
_LEAF_COLUMNS = ("tree_id", "group_position", "position", "reference", "amount")


class ProofError(LedgerError):
    code = "proof_error"


class InvalidLiabilities(ProofError):
    """The liabilities given cannot be put in a tree: a negative amount, a reference twice, an empty name."""

    code = "invalid_liabilities"


class ProofUnavailable(ProofError):
    """There is nothing to prove from: the checkpoint signed no log or no liabilities, the entry is newer."""

    code = "proof_unavailable"


class ProofMismatch(ProofError):
    """The stored rows no longer lead to what was signed: history or proof data changed behind our back."""

    code = "proof_mismatch"


# --- liabilities ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Liabilities:
    """Validated liabilities in tree order, as columns: groups by name, each group's leaves as given."""

    references: list[str]
    amounts: list[int]
    groups: list[tuple[str, int]]  # (name, number of leaves), in tree order


def _validated(leaves: Iterable[tuple[str, str, int]]) -> _Liabilities:
    """Check and order the liabilities. A million rows are checked with a few passes in C (types, lengths,
    ranges, duplicates); only when one of them fails does a row-by-row pass find and name the bad row."""
    rows = list(leaves)
    references: list[str] = []
    groups: list[str] = []
    amounts: list[int] = []
    if rows:
        try:
            if set(map(len, rows)) != {3}:
                raise ValueError("not three columns")
            references, groups, amounts = (list(map(itemgetter(i), rows)) for i in range(3))
        except (TypeError, ValueError, LookupError):
            _refuse(rows)
            raise
    if rows and not (
        set(map(type, references)) == {str}
        and set(map(type, groups)) == {str}
        and set(map(type, amounts)) == {int}
        and min(map(len, references)) >= 1
        and max(map(len, references)) <= 200
        and min(map(len, groups)) >= 1
        and min(amounts) >= 0
        and max(amounts) <= merkle.MAX_SUM
        and len(set(references)) == len(references)
    ):
        _refuse(rows)
    # A stable sort by group name keeps each group's leaves as given (linear when already grouped).
    order = sorted(range(len(groups)), key=groups.__getitem__)
    if order != list(range(len(order))):
        references = [references[i] for i in order]
        amounts = [amounts[i] for i in order]
        groups = [groups[i] for i in order]
    return _Liabilities(
        references, amounts, [(name, sum(1 for _ in members)) for name, members in groupby(groups)]
    )


def _refuse(rows: list[Any]) -> None:
    """Name the first liability that cannot be put in a tree (the slow path of ``_validated``)."""
    seen: set[str] = set()
    for row in rows:
        if not isinstance(row, tuple | list) or len(row) != 3:
            raise InvalidLiabilities(f"负债格式无效 a liability must be (reference, group, amount): {row!r}")
        reference, group, amount = row
        if not isinstance(reference, str) or not reference or len(reference) > 200:
            raise InvalidLiabilities(f"引用无效 invalid reference {reference!r}", reference=reference)
        if not isinstance(group, str) or not group:
            raise InvalidLiabilities(f"分组无效 invalid group {group!r} for {reference}", reference=reference)
        if type(amount) is not int or not 0 <= amount <= merkle.MAX_SUM:
            raise InvalidAmount(
                "负债金额必须是非负整数分 a liability must be a non-negative integer of fen: "
                f"{reference} {amount!r}",
                reference=reference,
                amount=amount,
            )
        if reference in seen:
            raise InvalidLiabilities(f"引用重复 reference listed twice: {reference}", reference=reference)
        seen.add(reference)


def leaf_salts(key: bytes, first: int, count: int) -> bytes:
    """The salts of leaves ``first .. first + count - 1`` (in tree order) of a tree with secret ``key``,
    concatenated: leaf *i*'s salt is AES-256(key, 2i) || AES-256(key, 2i + 1), i.e. the AES-CTR keystream
    from counter 2i. One secret per tree, kept with it and never published, gives every leaf a fresh,
    unpredictable 32-byte salt that need not be stored, and a million of them cost one call; a proof
    reveals its own leaf's salt, from which no other salt follows."""
    encryptor = Cipher(algorithms.AES(key), modes.CTR((2 * first).to_bytes(16, "big"))).encryptor()
    return encryptor.update(bytes(merkle.SALT_SIZE * count)) + encryptor.finalize()


def build_liability_tree(leaves: Iterable[tuple[str, str, int]]) -> LiabilityTree:
    """Build and store the Merkle-sum tree of ``(reference, group, amount_fen)`` liabilities.

    Leaves are ordered by group, then as given; their salts come from a fresh secret key of this tree
    (``leaf_salts``). Stored are the tree's roots, its key and each leaf's reference and amount, enough to
    serve any leaf's proof later without rebuilding the rest."""
    liabilities = _validated(leaves)
    key = os.urandom(_SALT_KEY_SIZE)
    references, amounts = liabilities.references, liabilities.amounts
    commitments = merkle.liability_commitments(references, amounts, leaf_salts(key, 0, len(references)))
    groups: list[dict[str, Any]] = []
    start = 0
    for name, count in liabilities.groups:
        end = start + count
        root = merkle.SumTree.from_parts(commitments[start:end], amounts[start:end]).root()
        groups.append({"group": name, "root": root.hash.hex(), "total": root.sum, "count": count})
        start = end
    top = _top_tree(groups).root()
    with transaction.atomic():
        tree = LiabilityTree.objects.create(
            created_at=timezone.now(),
            root_hash=top.hash.hex(),
            total=top.sum,
            leaf_count=len(references),
            groups=groups,
            salt_key=key,
        )
        _insert_leaves(tree.pk, liabilities)
    return tree


def group_salts(tree: LiabilityTree, group_position: int, stored: list[str | None]) -> bytes:
    """The salts of one group's leaves, in position order: derived from the tree's key, or for a tree
    signed before keys (``salt_key`` empty) the hex salts ``stored`` with its leaves."""
    if tree.salt_key is None:
        if None in stored:
            raise ProofMismatch(f"liability tree {tree.pk}: a leaf has lost its salt")
        return b"".join(bytes.fromhex(salt) for salt in stored if salt is not None)
    first = sum(int(group["count"]) for group in tree.groups[:group_position])
    return leaf_salts(bytes(tree.salt_key), first, len(stored))


def _top_tree(groups: list[dict[str, Any]]) -> merkle.SumTree:
    return merkle.SumTree(
        [merkle.group_leaf(g["group"], merkle.SumNode(bytes.fromhex(g["root"]), g["total"])) for g in groups]
    )


def _insert_leaves(tree_id: int, liabilities: _Liabilities) -> None:
    """Set-based: one COPY on PostgreSQL, fed as text built in bulk; chunked executemany elsewhere."""
    columns = ", ".join(_LEAF_COLUMNS)
    table = LiabilityLeaf._meta.db_table
    positions = [
        (group_position, position)
        for group_position, (_, count) in enumerate(liabilities.groups)
        for position in range(count)
    ]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            references, joined = liabilities.references, "".join(liabilities.references)
            if any(char in joined for char in "\\\t\n\r"):
                references = [_copy_text(reference) for reference in references]
            lines = [
                f"{tree_id}\t{group_position}\t{position}\t{reference}\t{amount}\n"
                for (group_position, position), reference, amount in zip(
                    positions, references, liabilities.amounts, strict=True
                )
            ]
            with cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for i in range(0, len(lines), _COPY_LINES):
                    copy.write("".join(lines[i : i + _COPY_LINES]))
            return
        placeholders = ", ".join(["%s"] * len(_LEAF_COLUMNS))
        sql = f"INSERT INTO {table} ({columns}) VALUES ({placeholders})"
        rows = zip(positions, liabilities.references, liabilities.amounts, strict=True)
        values = ((tree_id, gp, position, reference, amount) for (gp, position), reference, amount in rows)
        while chunk := list(islice(values, _INSERT_CHUNK)):
            cursor.executemany(sql, chunk)


def _copy_text(value: str) -> str:
    """A value escaped for COPY's text format."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


# --- the entry log ----------------------------------------------------------------------------------------


def _link_hashes(first: int, last: int) -> Iterator[bytes]:
    """Link hashes of seq ``first..last`` in order, read in chunks; a missing link is a mismatch."""
    expected = first
    while expected <= last:
        chunk = list(
            ChainLink.objects.filter(seq__gte=expected, seq__lte=min(last, expected + _LINK_CHUNK - 1))
            .order_by("seq")
            .values_list("seq", "hash")
        )
        for seq, digest in chunk:
            if seq != expected:
                raise ProofMismatch(
                    f"哈希链缺少第 {expected} 条 chain link {expected} is missing", seq=expected
                )
            yield bytes.fromhex(digest)
            expected += 1
        if not chunk:
            raise ProofMismatch(f"哈希链缺少第 {expected} 条 chain link {expected} is missing", seq=expected)


def _signed_body(checkpoint: Checkpoint) -> dict[str, Any]:
    """The checkpoint's signed payload, after checking the signature with a trusted key."""
    public = chain.trusted_public_keys().get(checkpoint.key_id)
    if public is None or not chain.signature_valid(checkpoint.payload, checkpoint.signature, public):
        raise ProofMismatch(
            f"检查点 {checkpoint.pk} 的签名无效 checkpoint {checkpoint.pk} does not verify",
            checkpoint=checkpoint.pk,
        )
    body: dict[str, Any] = json.loads(checkpoint.payload)
    return body


def _extend_log(seq: int, head_hash: str) -> merkle.CompactRange:
    """The log's right edge at ``seq``: the latest earlier checkpoint's edge, checked against what it signed,
    extended with the links sealed since."""
    base = (
        CheckpointProofs.objects.filter(log_size__lte=seq)
        .select_related("checkpoint")
        .order_by("-log_size", "-checkpoint_id")
        .first()
    )
    frontier = merkle.CompactRange()
    if base is not None:
        frontier = merkle.CompactRange(base.log_size, [bytes.fromhex(h) for h in base.log_frontier])
        try:
            frontier.check()
        except ValueError as exc:
            raise ProofMismatch(
                f"checkpoint {base.checkpoint_id}: stored log edge is malformed: {exc}"
            ) from exc
        signed = _signed_body(base.checkpoint).get("log_root")
        if frontier.root().hex() != signed or base.log_root != signed:
            raise ProofMismatch(
                f"检查点 {base.checkpoint_id} 保存的日志树与签名不符 the stored log tree of checkpoint "
                f"{base.checkpoint_id} no longer matches its signed root; run verify_ledger",
                checkpoint=base.checkpoint_id,
            )
    last, batch, nodes = b"", [], []

    def completed(height: int, index: int, digest: bytes) -> None:
        nodes.append(LogNode(height=height, index=index, hash=digest.hex()))

    for digest in _link_hashes(frontier.size + 1, seq):
        batch.append(merkle.leaf_hash(digest))
        last = digest
        if len(batch) == _LINK_CHUNK:
            frontier.extend(batch, completed, LOG_NODE_MIN_HEIGHT)
            batch = []
    frontier.extend(batch, completed, LOG_NODE_MIN_HEIGHT)
    if seq > (base.log_size if base else 0) and last.hex() != head_hash:
        raise ProofMismatch(f"chain link {seq} changed while signing", seq=seq)
    # Another checkpoint may have stored the same nodes (they never change): keep the first.
    LogNode.objects.bulk_create(nodes, ignore_conflicts=True)
    return frontier


def create_checkpoint_with_proofs(*, liabilities: Iterable[tuple[str, str, int]] | None = None) -> Checkpoint:
    """Seal, then sign a checkpoint of the chain head, the entry log's Merkle root and, when
    ``liabilities`` are given as ``(reference, group, amount_fen)``, their sum tree's root, total and
    per-group totals. All or nothing: a failure leaves no tree and no checkpoint behind."""
    # Seal the backlog first, in the sealer's own short transactions: the sealer's lock is then held only
    # for the few entries queued while the tree is built, from the checkpoint's seal to its commit.
    chain.seal()
    edge: list[merkle.CompactRange] = []
    tree: LiabilityTree | None = None

    def at_head(seq: int, head_hash: str) -> dict[str, Any]:
        frontier = _extend_log(seq, head_hash)
        edge.append(frontier)
        fields: dict[str, Any] = {
            "proofs_version": PROOF_VERSION,
            "log_size": frontier.size,
            "log_root": frontier.root().hex(),
        }
        if tree is not None:
            fields["liabilities_root"] = tree.root_hash
            fields["liabilities_total"] = tree.total
            fields["liabilities_count"] = tree.leaf_count
            fields["group_totals"] = {g["group"]: g["total"] for g in tree.groups}
        return fields

    with transaction.atomic():
        if liabilities is not None:
            tree = build_liability_tree(liabilities)
        checkpoint = chain.create_checkpoint(extra_at_head=at_head)
        frontier = edge[-1]
        CheckpointProofs.objects.create(
            checkpoint=checkpoint,
            log_size=frontier.size,
            log_root=frontier.root().hex(),
            log_frontier=[h.hex() for h in frontier.hashes],
            liability_tree=tree,
        )
    return checkpoint


def _proofs_of(checkpoint: Checkpoint) -> tuple[CheckpointProofs, dict[str, Any]]:
    try:
        proofs = CheckpointProofs.objects.select_related("liability_tree").get(checkpoint=checkpoint)
    except CheckpointProofs.DoesNotExist:
        raise ProofUnavailable(
            f"检查点 {checkpoint.pk} 未签名日志树 checkpoint {checkpoint.pk} was signed without a log root",
            checkpoint=checkpoint.pk,
        ) from None
    body = _signed_body(checkpoint)
    if body.get("log_root") != proofs.log_root or body.get("log_size") != proofs.log_size:
        raise ProofMismatch(
            f"检查点 {checkpoint.pk} 保存的证明数据与签名不符 "
            f"stored proof data of checkpoint {checkpoint.pk} differs from what it signed",
            checkpoint=checkpoint.pk,
        )
    return proofs, body


def log_tree(size: int) -> merkle.MerkleTree:
    """The entry log's tree over the first ``size`` links, from the links as they are now (O(size))."""
    return merkle.MerkleTree(b"".join(merkle.leaf_hash(digest) for digest in _link_hashes(1, size)))


def stored_inclusion_path(index: int, size: int) -> list[bytes] | None:
    """PATH(index, D[0:size]) of the entry log from stored subtrees (``LogNode``) and at most two blocks of
    2**LOG_NODE_MIN_HEIGHT links (the leaf's own and the log's last): O(log n) rows, not every link. None
    when a subtree it needs was never stored (history sealed before subtrees were kept)."""
    covers = [merkle.perfect_cover(start, end) for start, end in merkle.inclusion_subtrees(index, size)]
    wanted = {node for cover in covers for node in cover}
    high = [node for node in wanted if node[0] >= LOG_NODE_MIN_HEIGHT]
    hashes: dict[tuple[int, int], bytes] = {}
    if high:
        positions = Q()
        for height, number in high:
            positions |= Q(height=height, index=number)
        for height, number, stored in LogNode.objects.filter(positions).values_list(
            "height", "index", "hash"
        ):
            hashes[height, number] = bytes.fromhex(stored)
        if len(hashes) < len(high):
            return None
    block = 1 << LOG_NODE_MIN_HEIGHT
    low = [node for node in wanted if node[0] < LOG_NODE_MIN_HEIGHT]
    leaves: dict[int, bytes] = {}
    for first in sorted({(number << height) // block * block for height, number in low}):
        for offset, digest in enumerate(_link_hashes(first + 1, min(first + block, size))):
            leaves[first + offset] = merkle.leaf_hash(digest)
    for height, number in low:
        start = number << height
        hashes[height, number] = merkle.MerkleTree(
            b"".join(leaves[i] for i in range(start, start + (1 << height)))
        ).root()
    return [merkle.fold([hashes[node] for node in cover]) for cover in covers]


def checkpoint_document(checkpoint: Checkpoint, *, head_proof: bool = True) -> dict[str, Any]:
    """The checkpoint as a file for ``python -m ledger.verify``: the signed payload and signature, plus (not
    signed, checked) the inclusion path showing the chain head is the last leaf of the signed log tree."""
    document: dict[str, Any] = {
        "format": verify.CHECKPOINT_FORMAT,
        "checkpoint_id": checkpoint.pk,
        "payload": checkpoint.payload,
        "signature": checkpoint.signature,
        "key_id": checkpoint.key_id,
        "public_key": checkpoint.public_key,
    }
    if head_proof and CheckpointProofs.objects.filter(checkpoint=checkpoint).exists():
        proofs, body = _proofs_of(checkpoint)
        if proofs.log_size:
            tree = log_tree(proofs.log_size)
            path = tree.inclusion_proof(proofs.log_size - 1)
            leaf = merkle.leaf_hash(bytes.fromhex(body["chain_hash"]))
            if not merkle.verify_inclusion(leaf, proofs.log_size - 1, proofs.log_size, path, tree.root()) or (
                tree.root().hex() != proofs.log_root
            ):
                raise ProofMismatch(
                    f"检查点 {checkpoint.pk} 之前的历史已被改写 "
                    f"history before checkpoint {checkpoint.pk} was rewritten",
                    checkpoint=checkpoint.pk,
                )
            document["head_inclusion"] = [h.hex() for h in path]
    return document


def entry_inclusion_proof(entry_id: int, checkpoint: Checkpoint, *, check: bool = True) -> dict[str, Any]:
    """Proof that entry ``entry_id``, with its content, is in the log ``checkpoint`` signed. Its path comes
    from the stored log subtrees (``stored_inclusion_path``), or from every link up to the checkpoint for
    history sealed before subtrees were stored.

    With ``check=False`` the proof is returned even when it does not verify (evidence of tampering)."""
    proofs, body = _proofs_of(checkpoint)
    link = ChainLink.objects.filter(entry_id=entry_id).values_list("seq", "hash", "prev_hash").first()
    if link is None:
        raise ProofUnavailable(f"分录 {entry_id} 尚未封存 entry {entry_id} is not sealed yet", entry=entry_id)
    seq, link_hash, prev_hash = link
    if seq > proofs.log_size:
        raise ProofUnavailable(
            f"分录 {entry_id} 封存于检查点 {checkpoint.pk} 之后 entry {entry_id} was sealed after checkpoint "
            f"{checkpoint.pk}; use a later checkpoint",
            entry=entry_id,
        )
    path = stored_inclusion_path(seq - 1, proofs.log_size)
    if path is None:
        path = log_tree(proofs.log_size).inclusion_proof(seq - 1)
    proof = {
        "type": "entry_inclusion",
        "version": PROOF_VERSION,
        "checkpoint_id": checkpoint.pk,
        "log_size": proofs.log_size,
        "entry_id": entry_id,
        "seq": seq,
        "index": seq - 1,
        "link_hash": link_hash,
        "prev_hash": prev_hash,
        "entry": json.loads(canonical_json(chain.documents_for([entry_id])[entry_id])),
        "path": [h.hex() for h in path],
    }
    if check:
        document = _document(checkpoint)
        _check(checkpoint, lambda report, key: verify.verify_entry_inclusion(proof, document, key, report))
    return proof


def consistency_proof(
    old_checkpoint: Checkpoint, new_checkpoint: Checkpoint, *, check: bool = True
) -> dict[str, Any]:
    """Proof that ``new_checkpoint``'s log only appended to ``old_checkpoint``'s (RFC 9162 §2.1.4)."""
    old, _ = _proofs_of(old_checkpoint)
    new, _ = _proofs_of(new_checkpoint)
    if old.log_size > new.log_size:
        raise ProofUnavailable(
            f"检查点 {old_checkpoint.pk} 比 {new_checkpoint.pk} 新 "
            f"checkpoint {old_checkpoint.pk} is the newer one",
        )
    tree = log_tree(new.log_size)
    proof = {
        "type": "consistency",
        "version": PROOF_VERSION,
        "old_checkpoint_id": old_checkpoint.pk,
        "new_checkpoint_id": new_checkpoint.pk,
        "old_size": old.log_size,
        "new_size": new.log_size,
        "path": [h.hex() for h in tree.consistency_proof(old.log_size)],
    }
    if check:
        old_doc, new_doc = _document(old_checkpoint), _document(new_checkpoint)
        _check(
            new_checkpoint,
            lambda report, key: verify.verify_consistency_proof(proof, old_doc, new_doc, key, report),
        )
    return proof


def liability_proof(
    reference: str, checkpoint: Checkpoint, *, group: str | None = None, check: bool = True
) -> dict[str, Any]:
    """Proof for a parent that ``reference``'s amount is counted in its group's signed total and in the
    signed grand total. Reveals the contract's own amount and salt, and only subtree sums of the others.

    Give the ``group`` the reference was signed under when it is known: its leaf is then found by index
    among its group's; without it every leaf of the tree is searched (fine for a command line, too slow
    per request over a million leaves)."""
    proofs, _ = _proofs_of(checkpoint)
    tree = proofs.liability_tree
    if tree is None:
        raise ProofUnavailable(
            f"检查点 {checkpoint.pk} 未签名负债 checkpoint {checkpoint.pk} signs no liabilities",
            checkpoint=checkpoint.pk,
        )
    leaf = _find_leaf(tree, reference, group)
    if leaf is None:
        raise ProofUnavailable(
            f"{reference} 不在检查点 {checkpoint.pk} 的负债中 {reference} is not among checkpoint "
            f"{checkpoint.pk}'s liabilities",
            reference=reference,
        )
    members = list(
        LiabilityLeaf.objects.filter(tree=tree, group_position=leaf.group_position)
        .order_by("position")
        .values_list("position", "reference", "amount", "salt")
    )
    if [m[0] for m in members] != list(range(len(members))):
        raise ProofMismatch(f"liability tree {tree.pk}: leaves of group {leaf.group_position} are missing")
    salts = group_salts(tree, leaf.group_position, [salt for _, _, _, salt in members])
    amounts = [amount for _, _, amount, _ in members]
    group_tree = merkle.SumTree.from_parts(
        merkle.liability_commitments([ref for _, ref, _, _ in members], amounts, salts), amounts
    )
    salt = salts[leaf.position * merkle.SALT_SIZE : (leaf.position + 1) * merkle.SALT_SIZE]
    signed_group = tree.groups[leaf.group_position]
    proof = {
        "type": "liability_inclusion",
        "version": PROOF_VERSION,
        "checkpoint_id": checkpoint.pk,
        "reference": reference,
        "group": signed_group["group"],
        "amount": leaf.amount,
        "salt": salt.hex(),
        "group_index": leaf.position,
        "group_size": len(members),
        "group_path": [_sum_node(n) for n in group_tree.inclusion_proof(leaf.position)],
        "top_index": leaf.group_position,
        "top_size": len(tree.groups),
        "top_path": [_sum_node(n) for n in _top_tree(tree.groups).inclusion_proof(leaf.group_position)],
    }
    if check:
        document = _document(checkpoint)
        _check(checkpoint, lambda report, key: verify.verify_liability_proof(proof, document, key, report))
    return proof


def _find_leaf(tree: LiabilityTree, reference: str, group: str | None) -> LiabilityLeaf | None:
    leaves = LiabilityLeaf.objects.filter(tree=tree, reference=reference)
    if group is not None:
        positions = [i for i, signed in enumerate(tree.groups) if signed["group"] == group]
        if not positions:
            return None
        leaves = leaves.filter(group_position=positions[0])
    return leaves.first()


def _sum_node(node: merkle.SumNode) -> dict[str, Any]:
    return {"hash": node.hash.hex(), "sum": node.sum}


def _document(checkpoint: Checkpoint) -> dict[str, Any]:
    return checkpoint_document(checkpoint, head_proof=False)


def _check(checkpoint: Checkpoint, run: Callable[[verify.Report, Ed25519PublicKey], object]) -> None:
    """Run the standalone verifier's check with our trusted key, exactly as a regulator would with theirs."""
    key_hex = chain.trusted_public_keys().get(checkpoint.key_id)
    if key_hex is None:
        raise ProofMismatch(f"checkpoint {checkpoint.pk} is signed with unknown key {checkpoint.key_id}")
    key = verify.parse_public_key(key_hex)
    try:
        run(verify.Report(), key)
    except verify.VerificationFailed as exc:
        raise ProofMismatch(f"证明不成立 the proof does not verify: {exc.zh} / {exc.en}") from exc


# --- export bundles ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its files and the signed manifest's fields."""

    files: dict[str, bytes]
    meta: dict[str, Any]
    key_id: str
    created_at: str


class BundleInvalid(ProofError):
    code = "bundle_invalid"


def write_bundle(
    destination: str | Path,
    files: Mapping[str, bytes],
    *,
    meta: Mapping[str, Any] | None = None,
    as_zip: bool = False,
) -> Path:
    """Write ``files`` (name -> content) and a ``manifest.json`` listing each file's SHA-256 and size, signed
    with the platform's Ed25519 key, into a new directory or a zip file. Any file types: CSV, XLSX, JSON."""
    destination = Path(destination)
    for name in files:
        try:
            verify.safe_member_name(name)
        except ValueError as exc:
            raise BundleInvalid(str(exc), name=name) from exc
    # The checkpoints' signing key: one platform identity for everything it publishes.
    key_id, private = chain._signing_key()
    body = {
        "format": verify.BUNDLE_FORMAT,
        "created_at": timestamp(timezone.now()),
        "key_id": key_id,
        "meta": dict(meta or {}),
        "files": [
            {"path": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for name, data in sorted(files.items())
        ],
    }
    payload = canonical_json(body)
    manifest = {
        "payload": payload.decode(),
        "signature": private.sign(verify.MANIFEST_CONTEXT + payload).hex(),
        "key_id": key_id,
        "public_key": chain.public_key_hex(private),
    }
    manifest_bytes = json.dumps(manifest, ensure_ascii=False, indent=2).encode()
    if destination.exists():
        raise BundleInvalid(f"目标已存在 {destination} already exists", path=str(destination))
    if as_zip:
        with zipfile.ZipFile(destination, "x", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(verify.MANIFEST_NAME, manifest_bytes)
            for name, data in sorted(files.items()):
                archive.writestr(name, data)
        return destination
    destination.mkdir(parents=True)
    (destination / verify.MANIFEST_NAME).write_bytes(manifest_bytes)
    for name, data in files.items():
        path = destination / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return destination


def read_bundle(source: str | Path) -> Bundle:
    """Read a bundle back, checking its signature (with a trusted key) and every file; ``BundleInvalid`` if
    anything was changed, added or removed."""
    try:
        manifest, files = verify.load_bundle(source)
        key_id = manifest.get("key_id") if isinstance(manifest, dict) else None
        key_hex = chain.trusted_public_keys().get(str(key_id))
        if key_hex is None:
            raise BundleInvalid(f"清单由未知密钥签名 manifest signed by an unknown key in {source}")
        body = verify.check_bundle(manifest, files, verify.parse_public_key(key_hex), verify.Report())
    except verify.BadInput as exc:
        raise BundleInvalid(str(exc)) from exc
    except verify.VerificationFailed as exc:
        raise BundleInvalid(f"{exc.zh} / {exc.en}") from exc
    return Bundle(
        files=files, meta=body.get("meta", {}), key_id=body["key_id"], created_at=body["created_at"]
    )

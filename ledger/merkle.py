"""Merkle trees anyone can check with this one file and SHA-256: the entry log and the liabilities sum tree.

Two structures, both shaped as RFC 6962 / RFC 9162 trees (the left subtree holds the largest power of two
smaller than the number of leaves):

- The **log tree** (RFC 9162 §2.1): leaf hash = SHA-256(0x00 || leaf), node = SHA-256(0x01 || left || right).
  A signed root lets anyone check with O(log n) hashes that one leaf is in the tree (inclusion proof) and
  that an older signed tree is a prefix of a newer one (consistency proof), i.e. history was only appended.
- The **Merkle-sum tree** (proof of liabilities, 负债证明): every node carries a hash and a non-negative sum
  of fen; node = (SHA-256(0x01 || left.hash || left.sum || right.hash || right.sum), left.sum + right.sum),
  sums as 8-byte big-endian. Hashing both children's sums (not only their total) is what stops a prover from
  shifting value between siblings, and refusing negative amounts, when building *and* when verifying, is
  what stops a fake negative leaf from hiding a real liability. A leaf's hash is a salted commitment to its
  reference and amount, so a proof shows one contract and reveals nothing about its neighbours.

Trees are built level by level, iteratively, once; proofs are read from the stored levels, so a tree of a
million leaves costs about two million hashes to build and O(log n) to prove. This module imports nothing
outside Python's standard library so the standalone verifier (``ledger.verify``) can ship with it alone.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import add

HASH_SIZE = 32
SUM_SIZE = 8
MAX_SUM = (1 << (8 * SUM_SIZE)) - 1
# RFC 9162 §2.1.1: the hash of an empty list is the hash of an empty string.
EMPTY_ROOT = hashlib.sha256(b"").digest()

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
# Domain tags of the sum tree's leaves: a contract's commitment and a group's (institution's) subtree root.
_LIABILITY_TAG = b"leaf"
_GROUP_TAG = b"group"
SALT_SIZE = 32
_SUM = struct.Struct(">Q")
_LENGTH = struct.Struct(">I")


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _check_hash(value: bytes, what: str) -> None:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        raise ValueError(f"{what} must be {HASH_SIZE} bytes")


def _split(size: int) -> int:
    """The largest power of two smaller than ``size`` (size >= 2): where RFC 6962 splits a tree."""
    return 1 << ((size - 1).bit_length() - 1)


# --- the log tree (RFC 9162) -----------------------------------------------------------------------------


def leaf_hash(leaf: bytes) -> bytes:
    return _sha256(_LEAF_PREFIX + leaf)


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(_NODE_PREFIX + left + right)


class MerkleTree:
    """An RFC 9162 tree over leaf hashes, with every level kept so proofs are slices, not recomputation.

    Level ``j`` holds the hashes of the aligned subtrees of 2**j leaves (the last one possibly smaller),
    concatenated into one ``bytes`` (32 bytes each): a million leaves take about 64 MB, not two million
    Python objects. Pairing left to right and carrying an odd last node up unchanged gives exactly the
    RFC's tree, whose split is at the largest power of two.
    """

    def __init__(self, leaf_hashes: bytes) -> None:
        if len(leaf_hashes) % HASH_SIZE:
            raise ValueError("leaf hashes must be a concatenation of 32-byte hashes")
        self.size = len(leaf_hashes) // HASH_SIZE
        self._levels = [bytes(leaf_hashes)]
        level = self._levels[0]
        while len(level) > HASH_SIZE:
            count = len(level) // HASH_SIZE
            pairs = (count // 2) * 2 * HASH_SIZE
            parts = [
                _sha256(_NODE_PREFIX + level[i : i + 2 * HASH_SIZE]) for i in range(0, pairs, 2 * HASH_SIZE)
            ]
            if count % 2:
                parts.append(level[-HASH_SIZE:])
            level = b"".join(parts)
            self._levels.append(level)

    @classmethod
    def from_leaves(cls, leaves: list[bytes] | tuple[bytes, ...]) -> MerkleTree:
        return cls(b"".join(leaf_hash(leaf) for leaf in leaves))

    @classmethod
    def from_leaf_hashes(cls, hashes: list[bytes] | tuple[bytes, ...]) -> MerkleTree:
        for value in hashes:
            _check_hash(value, "a leaf hash")
        return cls(b"".join(hashes))

    def _node(self, level: int, index: int) -> bytes:
        start = index * HASH_SIZE
        return self._levels[level][start : start + HASH_SIZE]

    def leaf(self, index: int) -> bytes:
        return self._node(0, index)

    def _subtree(self, start: int, end: int) -> bytes:
        """MTH of leaves [start, end): a stored node, or perfect left parts folded onto one (O(log n))."""
        lefts = []
        while True:
            width = end - start
            height = (width - 1).bit_length()
            # Stored nodes cover [i * 2**h, min((i + 1) * 2**h, size)); ``start`` is always aligned here.
            if width == 1 << height or end == self.size:
                node = self._node(height, start >> height)
                break
            lefts.append(self._node(height - 1, start >> (height - 1)))
            start += 1 << (height - 1)
        for left in reversed(lefts):
            node = node_hash(left, node)
        return node

    def root(self, size: int | None = None) -> bytes:
        """The root of the first ``size`` leaves (all of them by default): any older tree head."""
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise ValueError(f"tree size {size} outside 0..{self.size}")
        return EMPTY_ROOT if size == 0 else self._subtree(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.3.1 PATH(index, D[0:size]): sibling hashes from the leaf up."""
        size = self.size if size is None else size
        if not 0 <= index < size <= self.size:
            raise ValueError(f"leaf {index} is not in a tree of {size} leaves")
        return [self._subtree(start, end) for start, end in inclusion_subtrees(index, size)]

    def consistency_proof(self, old_size: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.4.1 PROOF(old_size, D[0:size]): what proves the old tree is a prefix of this one."""
        size = self.size if size is None else size
        if not 0 <= old_size <= size <= self.size:
            raise ValueError(f"no consistency proof from size {old_size} to size {size}")
        if old_size in (0, size):
            return []
        # SUBPROOF(m, D[start:end], b), unrolled: each step appends one hash after the deeper part.
        start, end, m, complete = 0, size, old_size, True
        outer = []
        while m != end - start:
            k = _split(end - start)
            if m <= k:
                outer.append(self._subtree(start + k, end))
                end = start + k
            else:
                outer.append(self._subtree(start, start + k))
                start += k
                m -= k
                complete = False
        proof = [] if complete else [self._subtree(start, end)]
        proof.extend(reversed(outer))
        return proof


def inclusion_subtrees(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges ``[start, end)`` whose roots form PATH(index, D[0:size]), from the leaf up."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size} leaves")
    start, end, ranges = 0, size, []
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    ranges.reverse()
    return ranges


def perfect_cover(start: int, end: int) -> list[tuple[int, int]]:
    """The perfect subtrees ``(height, index)`` (leaves ``[index * 2**height, (index + 1) * 2**height)``),
    left to right, whose ``fold`` is the root of leaves ``[start, end)``, for a range that is one node of an
    RFC 9162 tree: aligned, and perfect or ending at the tree's last leaf. At most one per level."""
    nodes = []
    while start < end:
        width = end - start
        k = width if width & (width - 1) == 0 else _split(width)
        height = k.bit_length() - 1
        if start % k:
            raise ValueError(f"leaves [{start}, {end}) are not one node of a tree")
        nodes.append((height, start >> height))
        start += k
    return nodes


def fold(hashes: list[bytes]) -> bytes:
    """The root over perfect subtrees given left to right (largest first), as RFC 9162 splits: each one is
    the left child of the rest."""
    root = hashes[-1]
    for left in reversed(hashes[:-1]):
        root = node_hash(left, root)
    return root


def tree_root(leaves: list[bytes] | tuple[bytes, ...]) -> bytes:
    return MerkleTree.from_leaves(leaves).root()


def inclusion_proof(index: int, leaves: list[bytes] | tuple[bytes, ...]) -> list[bytes]:
    return MerkleTree.from_leaves(leaves).inclusion_proof(index)


def consistency_proof(old_size: int, leaves: list[bytes] | tuple[bytes, ...]) -> list[bytes]:
    return MerkleTree.from_leaves(leaves).consistency_proof(old_size)


def root_from_inclusion_proof(leaf_hash_value: bytes, index: int, size: int, proof: list[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2: the root a proof leads to. Raises ``ValueError`` if the proof cannot be right
    for this index and size (wrong length, malformed hashes); the caller compares the root."""
    _check_hash(leaf_hash_value, "the leaf hash")
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of {size} leaves")
    fn, sn, r = index, size - 1, bytes(leaf_hash_value)
    for p in proof:
        _check_hash(p, "every proof hash")
        if sn == 0:
            raise ValueError("the proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("the proof is shorter than the tree is deep")
    return r


def verify_inclusion(leaf_hash_value: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> bool:
    try:
        return root_from_inclusion_proof(leaf_hash_value, index, size, proof) == root
    except ValueError:
        return False


def roots_from_consistency_proof(
    old_size: int, new_size: int, old_root: bytes, proof: list[bytes]
) -> tuple[bytes, bytes]:
    """RFC 9162 §2.1.4.2, for 0 < old_size < new_size: the (old root, new root) a consistency proof leads
    to. ``old_root`` is only read when ``old_size`` is a power of two (it is then the first node of the path).
    Raises ``ValueError`` when the proof cannot be right for these sizes."""
    _check_hash(old_root, "the old root")
    for p in proof:
        _check_hash(p, "every proof hash")
    if not 0 < old_size < new_size:
        raise ValueError(f"no consistency walk from {old_size} to {new_size} leaves")
    if not proof:
        raise ValueError("the consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ValueError("the proof is longer than the trees are deep")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("the proof is shorter than the trees are deep")
    return fr, sr


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: list[bytes]
) -> bool:
    try:
        _check_hash(old_root, "the old root")
        _check_hash(new_root, "the new root")
        if not 0 <= old_size <= new_size:
            return False
        if old_size == new_size:
            # The same tree needs no proof.
            return not proof and old_root == new_root
        if old_size == 0:
            # Every tree extends the empty one.
            return not proof and old_root == EMPTY_ROOT
        first, second = roots_from_consistency_proof(old_size, new_size, old_root, proof)
    except ValueError:
        return False
    return first == old_root and second == new_root


@dataclass
class CompactRange:
    """The right edge of a growing log: the roots of its perfect subtrees, largest first (one per set bit of
    ``size``). Appending is O(1) amortised and the root is O(log n), so a checkpoint extends the previous
    one's range with the new leaves only, never re-reading history."""

    size: int = 0
    hashes: list[bytes] = field(default_factory=list)

    def append(self, leaf_hash_value: bytes) -> None:
        self.extend([leaf_hash_value])

    def extend(
        self,
        leaf_hashes: Sequence[bytes],
        completed: Callable[[int, int, bytes], None] | None = None,
        min_height: int = 1,
    ) -> None:
        """Append leaves in order: each merges the equal-sized subtrees it completes (one per trailing zero
        bit of the new size). ``completed(height, index, hash)``, when given, is told of every perfect
        subtree of ``min_height`` or more finished on the way (leaves ``[index * 2**height, (index + 1) *
        2**height)``): history is append-only, so such a node never changes and can be stored to serve
        later proofs."""
        hashes, size, sha256, prefix = self.hashes, self.size, hashlib.sha256, _NODE_PREFIX
        for value in leaf_hashes:
            if len(value) != HASH_SIZE:
                raise ValueError(f"a leaf hash must be {HASH_SIZE} bytes")
            hashes.append(bytes(value))
            size += 1
            merges, height = size, 0
            while not merges & 1:
                right = hashes.pop()
                hashes[-1] = sha256(prefix + hashes[-1] + right).digest()
                merges >>= 1
                height += 1
                if completed is not None and height >= min_height:
                    completed(height, (size >> height) - 1, hashes[-1])
            self.size = size

    def root(self) -> bytes:
        return fold(self.hashes) if self.hashes else EMPTY_ROOT

    def check(self) -> None:
        if len(self.hashes) != bin(self.size).count("1"):
            raise ValueError(f"a range of {self.size} leaves has {bin(self.size).count('1')} subtree roots")
        for value in self.hashes:
            _check_hash(value, "a subtree root")


# --- the Merkle-sum tree (proof of liabilities) -----------------------------------------------------------


@dataclass(frozen=True)
class SumNode:
    """A node of the sum tree: a hash and the fen it stands for."""

    hash: bytes
    sum: int

    def record(self) -> bytes:
        return self.hash + self.sum.to_bytes(SUM_SIZE, "big")


def _check_sum(value: object, what: str) -> int:
    if type(value) is not int:
        raise ValueError(f"{what} must be an integer number of fen")
    if value < 0:
        raise ValueError(f"{what} is negative ({value}); a negative amount could hide a liability")
    if value > MAX_SUM:
        raise ValueError(f"{what} ({value}) does not fit in {SUM_SIZE} bytes")
    return value


def _check_sums(values: Sequence[int], what: str) -> None:
    """``_check_sum`` for many values: a few passes in C when all is well, the exact error otherwise."""
    if values and (set(map(type, values)) != {int} or min(values) < 0 or max(values) > MAX_SUM):
        for value in values:
            _check_sum(value, what)


def _encode_text(text: str) -> bytes:
    raw = text.encode("utf-8")
    return len(raw).to_bytes(4, "big") + raw


def liability_commitment(reference: str, amount: int, salt: bytes) -> bytes:
    """SHA-256("leaf" || salt || canonical(reference, amount)): binds the amount to one contract; the random
    salt (32 bytes, new per leaf per checkpoint) keeps a leaf's hash from revealing anything."""
    return liability_commitments([reference], [amount], salt)[0]


def liability_commitments(references: list[str], amounts: list[int], salts: bytes) -> list[bytes]:
    """``liability_commitment`` for many leaves at once; ``salts`` is their 32-byte salts concatenated."""
    if len(references) != len(amounts) or len(salts) != SALT_SIZE * len(references):
        raise ValueError(f"one amount and one {SALT_SIZE}-byte salt are needed per reference")
    _check_sums(amounts, "the amount")
    sha256, length, pack = hashlib.sha256, _LENGTH.pack, _SUM.pack
    # One formatted message and one hash per leaf, nothing else: this runs a million times per checkpoint.
    return [
        sha256(b"leaf%b%b%b%b" % (salts[i : i + SALT_SIZE], length(len(raw)), raw, pack(amount))).digest()
        for i, raw, amount in zip(
            range(0, len(salts), SALT_SIZE), [r.encode("utf-8") for r in references], amounts, strict=True
        )
    ]


def liability_leaf(reference: str, amount: int, salt: bytes) -> SumNode:
    return SumNode(liability_commitment(reference, amount, salt), amount)


def group_leaf(group: str, root: SumNode) -> SumNode:
    """A group's (e.g. an institution's) subtree, as one leaf of the top tree: its name, root and total."""
    _check_sum(root.sum, "the group total")
    _check_hash(root.hash, "the group root")
    return SumNode(_sha256(_GROUP_TAG + _encode_text(group) + root.record()), root.sum)


def sum_node(left: SumNode, right: SumNode) -> SumNode:
    """The parent of two nodes. Refuses negative or oversized sums, so verifying a path enforces them too."""
    _check_hash(left.hash, "a node hash")
    _check_hash(right.hash, "a node hash")
    total = _check_sum(left.sum, "a node sum") + _check_sum(right.sum, "a node sum")
    _check_sum(total, "a parent sum")
    return SumNode(_sha256(_NODE_PREFIX + left.record() + right.record()), total)


EMPTY_SUM_ROOT = SumNode(EMPTY_ROOT, 0)
_RECORD = HASH_SIZE + SUM_SIZE


def _records(hashes: bytes, sums: list[int]) -> bytes:
    """Concatenated 32-byte ``hashes`` and ``sums`` interleaved into 40-byte records (hash || sum as 8 bytes
    big-endian), by 40 strided copies in C instead of one small object per node."""
    packed = struct.pack(f">{len(sums)}Q", *sums)
    records = bytearray(_RECORD * len(sums))
    for k in range(HASH_SIZE):
        records[k::_RECORD] = hashes[k::HASH_SIZE]
    for k in range(SUM_SIZE):
        records[HASH_SIZE + k :: _RECORD] = packed[k::SUM_SIZE]
    return bytes(records)


class SumTree:
    """A Merkle-sum tree with every level kept, shaped like the log tree (same split, same proofs).

    Each level is one ``bytes`` of 40-byte records (hash || sum), so a parent's hash is SHA-256 of 0x01 and
    one contiguous 80-byte slice; sums are kept beside as integers.
    """

    def __init__(self, leaves: list[SumNode] | tuple[SumNode, ...]) -> None:
        self._build([leaf.hash for leaf in leaves], [leaf.sum for leaf in leaves])

    @classmethod
    def from_parts(cls, hashes: list[bytes], sums: list[int]) -> SumTree:
        """The same tree from leaf hashes and amounts side by side (no ``SumNode`` per leaf: faster)."""
        tree = cls.__new__(cls)
        tree._build(hashes, sums)
        return tree

    def _build(self, hashes: list[bytes], sums: list[int]) -> None:
        if len(hashes) != len(sums):
            raise ValueError("as many leaf hashes as amounts are needed")
        _check_sums(sums, "an amount")
        if hashes and (
            not set(map(type, hashes)) <= {bytes, bytearray} or set(map(len, hashes)) != {HASH_SIZE}
        ):
            for digest in hashes:
                _check_hash(digest, "a leaf hash")
        # Amounts are non-negative, so no subtotal exceeds the total: one check covers every node.
        _check_sum(sum(sums), "the total")
        sums = list(sums)
        level = _records(b"".join(hashes), sums)
        self.size = len(sums)
        self._levels = [level]
        self._sums = [sums]
        sha256, prefix, pair = hashlib.sha256, _NODE_PREFIX, 2 * _RECORD
        while len(sums) > 1:
            count = len(sums)
            pairs = count // 2
            parent_sums = list(map(add, sums[0 : 2 * pairs : 2], sums[1 : 2 * pairs : 2]))
            parents = b"".join(
                [sha256(prefix + level[i : i + pair]).digest() for i in range(0, pairs * pair, pair)]
            )
            if count % 2:
                parents += level[-_RECORD:-SUM_SIZE]
                parent_sums.append(sums[-1])
            level = _records(parents, parent_sums)
            sums = parent_sums
            self._levels.append(level)
            self._sums.append(sums)

    def _node(self, level: int, index: int) -> SumNode:
        start = index * _RECORD
        return SumNode(self._levels[level][start : start + HASH_SIZE], self._sums[level][index])

    def _subtree(self, start: int, end: int) -> SumNode:
        height = (end - start - 1).bit_length()
        # Proof paths only ask for stored nodes: aligned, full or ending at the tree's last leaf.
        if end - start != 1 << height and end != self.size:
            raise ValueError(f"leaves [{start}, {end}) are not one node of the tree")
        return self._node(height, start >> height)

    def root(self) -> SumNode:
        return EMPTY_SUM_ROOT if self.size == 0 else self._node(len(self._levels) - 1, 0)

    def inclusion_proof(self, index: int) -> list[SumNode]:
        if not 0 <= index < self.size:
            raise ValueError(f"leaf {index} is not in a tree of {self.size} leaves")
        start, end, path = 0, self.size, []
        while end - start > 1:
            k = _split(end - start)
            if index < start + k:
                path.append(self._subtree(start + k, end))
                end = start + k
            else:
                path.append(self._subtree(start, start + k))
                start += k
        path.reverse()
        return path


def sum_tree_root(leaves: list[SumNode] | tuple[SumNode, ...]) -> tuple[bytes, int]:
    root = SumTree(leaves).root()
    return root.hash, root.sum


def sum_inclusion_proof(index: int, leaves: list[SumNode] | tuple[SumNode, ...]) -> list[SumNode]:
    return SumTree(leaves).inclusion_proof(index)


def sum_root_from_proof(leaf: SumNode, index: int, size: int, proof: list[SumNode]) -> SumNode:
    """The root (hash and total) a sum-tree path leads to, by the RFC 9162 §2.1.3.2 walk. Raises
    ``ValueError`` on a negative or oversized amount or sum anywhere, or a path of the wrong shape."""
    _check_hash(leaf.hash, "the leaf hash")
    _check_sum(leaf.sum, "the leaf amount")
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of {size} leaves")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ValueError("the proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = sum_node(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = sum_node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("the proof is shorter than the tree is deep")
    return r


def verify_sum_inclusion(
    leaf: SumNode, index: int, size: int, proof: list[SumNode], root_hash: bytes, root_total: int
) -> bool:
    try:
        root = sum_root_from_proof(leaf, index, size, proof)
    except ValueError:
        return False
    return root.hash == root_hash and root.sum == root_total

"""The Merkle trees against the RFC's published vectors and a naive recursive reference written from the RFC
text, and the sum tree against the attacks it exists to stop. No database."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import merkle
from ledger.merkle import SumNode

# RFC 6962 test data as used by certificate-transparency and its descendants (Trillian, Tessera).
CT_LEAVES = [bytes.fromhex(h) for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                        "606162636465666768696a6b6c6d6e6f"]]  # fmt: skip
CT_ROOTS = {
    0: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    1: "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    2: "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    3: "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    4: "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    5: "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    6: "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    7: "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    8: "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
}
CT_INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip
CT_CONSISTENCY = [
    (2, 8, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip

REFERENCE_MAX = 20


# --- a naive reference, transcribed from RFC 6962 §2.1 (recursive, slow, obviously right) --------------


def ref_mth(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:])).digest()


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    if m < k:
        return ref_path(m, leaves[:k]) + [ref_mth(leaves[k:])]
    return ref_path(m - k, leaves[k:]) + [ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: list[bytes], b: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if b else [ref_mth(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return ref_subproof(m, leaves[:k], b) + [ref_mth(leaves[k:])]
    return ref_subproof(m - k, leaves[k:], False) + [ref_mth(leaves[:k])]


def ref_proof(m: int, leaves: list[bytes]) -> list[bytes]:
    return ref_subproof(m, leaves, True) if 0 < m < len(leaves) else []


LEAVES = [f"leaf {i}".encode() for i in range(REFERENCE_MAX)]


# --- published vectors -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 6, 7, 8])
def test_roots_match_the_rfc_vectors(size: int) -> None:
    assert merkle.tree_root(CT_LEAVES[:size]).hex() == CT_ROOTS[size]
    assert ref_mth(CT_LEAVES[:size]).hex() == CT_ROOTS[size]


@pytest.mark.parametrize(("index", "size", "expected"), CT_INCLUSION)
def test_inclusion_proofs_match_the_rfc_vectors(index: int, size: int, expected: list[str]) -> None:
    proof = merkle.inclusion_proof(index, CT_LEAVES[:size])
    assert [p.hex() for p in proof] == expected
    root = bytes.fromhex(CT_ROOTS[size])
    assert merkle.verify_inclusion(merkle.leaf_hash(CT_LEAVES[index]), index, size, proof, root)


@pytest.mark.parametrize(("old", "new", "expected"), CT_CONSISTENCY)
def test_consistency_proofs_match_the_rfc_vectors(old: int, new: int, expected: list[str]) -> None:
    proof = merkle.consistency_proof(old, CT_LEAVES[:new])
    assert [p.hex() for p in proof] == expected
    old_root, new_root = bytes.fromhex(CT_ROOTS[old]), bytes.fromhex(CT_ROOTS[new])
    assert merkle.verify_consistency(old, new, old_root, new_root, proof)


# --- every shape against the reference ---------------------------------------------------------------


def test_roots_and_old_roots_match_the_reference_for_every_size() -> None:
    tree = merkle.MerkleTree.from_leaves(LEAVES)
    for size in range(REFERENCE_MAX + 1):
        assert merkle.tree_root(LEAVES[:size]) == ref_mth(LEAVES[:size]), size
        assert tree.root(size) == ref_mth(LEAVES[:size]), size


def test_every_inclusion_proof_matches_the_reference_and_verifies() -> None:
    tree = merkle.MerkleTree.from_leaves(LEAVES)
    checked = 0
    for size in range(1, REFERENCE_MAX + 1):
        root = ref_mth(LEAVES[:size])
        for index in range(size):
            expected = ref_path(index, LEAVES[:size])
            assert merkle.inclusion_proof(index, LEAVES[:size]) == expected, (index, size)
            # An older tree's proof from the bigger tree's levels is the same proof.
            assert tree.inclusion_proof(index, size) == expected, (index, size)
            leaf = merkle.leaf_hash(LEAVES[index])
            assert merkle.verify_inclusion(leaf, index, size, expected, root)
            # The same proof for another position does not verify. (For another tree size it may: the
            # size is not in the hashes, which is why the verifier takes it from the signed checkpoint.)
            assert not merkle.verify_inclusion(leaf, (index + 1) % (size + 1), size, expected, root)
            checked += 1
    assert checked == REFERENCE_MAX * (REFERENCE_MAX + 1) // 2


def test_inclusion_paths_fold_from_perfect_subtrees_alone() -> None:
    """What proofs served from stored subtrees rely on: every path hash is the fold of at most one perfect
    subtree per level, each the root of its 2**height leaves."""
    for size in range(1, REFERENCE_MAX + 1):
        for index in range(size):
            path = []
            for start, end in merkle.inclusion_subtrees(index, size):
                cover = merkle.perfect_cover(start, end)
                heights = [height for height, _ in cover]
                assert heights == sorted(set(heights), reverse=True), (start, end)
                roots = [ref_mth(LEAVES[i << h : (i + 1) << h]) for h, i in cover]
                assert sum(1 << h for h, _ in cover) == end - start
                path.append(merkle.fold(roots))
            assert path == ref_path(index, LEAVES[:size]), (index, size)
    with pytest.raises(ValueError, match="not one node"):
        merkle.perfect_cover(2, 7)


def test_a_compact_range_reports_every_perfect_subtree_it_completes() -> None:
    completed: list[tuple[int, int, bytes]] = []
    edge = merkle.CompactRange()
    leaves = [f"entry {i}".encode() for i in range(45)]
    for start in range(0, 45, 7):
        chunk = [merkle.leaf_hash(leaf) for leaf in leaves[start : start + 7]]
        edge.extend(chunk, lambda h, i, d: completed.append((h, i, d)), 2)
    assert sorted((h, i) for h, i, _ in completed) == sorted(
        (h, i) for h in range(2, 6) for i in range(45 >> h)
    )
    for height, index, digest in completed:
        assert digest == ref_mth(leaves[index << height : (index + 1) << height])
    assert edge.root() == ref_mth(leaves)


def test_every_consistency_proof_matches_the_reference_and_verifies() -> None:
    tree = merkle.MerkleTree.from_leaves(LEAVES)
    for new in range(REFERENCE_MAX + 1):
        new_root = ref_mth(LEAVES[:new])
        for old in range(new + 1):
            old_root = ref_mth(LEAVES[:old])
            expected = ref_proof(old, LEAVES[:new])
            assert merkle.consistency_proof(old, LEAVES[:new]) == expected, (old, new)
            assert tree.consistency_proof(old, new) == expected, (old, new)
            assert merkle.verify_consistency(old, new, old_root, new_root, expected), (old, new)
            if 0 < old < new:
                other_old = ref_mth(LEAVES[: old - 1] + [b"rewritten"])
                assert not merkle.verify_consistency(old, new, other_old, new_root, expected)
                assert not merkle.verify_consistency(old, new, old_root, ref_mth(LEAVES[: new - 1]), expected)


def test_degenerate_consistency_cases() -> None:
    root4, root5 = ref_mth(LEAVES[:4]), ref_mth(LEAVES[:5])
    assert merkle.verify_consistency(4, 4, root4, root4, [])
    assert not merkle.verify_consistency(4, 4, root4, root5, [])
    assert not merkle.verify_consistency(4, 4, root4, root4, [root4])
    assert merkle.verify_consistency(0, 5, merkle.EMPTY_ROOT, root5, [])
    assert not merkle.verify_consistency(0, 5, root4, root5, [])
    assert not merkle.verify_consistency(5, 4, root5, root4, merkle.consistency_proof(4, LEAVES[:5]))
    assert not merkle.verify_consistency(4, 5, root4, root5, [])


def test_compact_range_gives_the_same_root_as_the_full_tree() -> None:
    frontier = merkle.CompactRange()
    assert frontier.root() == merkle.EMPTY_ROOT
    for size, leaf in enumerate(LEAVES, start=1):
        frontier.append(merkle.leaf_hash(leaf))
        frontier.check()
        assert frontier.root() == ref_mth(LEAVES[:size])
        assert len(frontier.hashes) == bin(size).count("1")


@settings(max_examples=50, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=70), max_size=6))
def test_compact_range_extended_in_any_chunks_matches_the_tree(cuts: list[int]) -> None:
    hashes = [merkle.leaf_hash(i.to_bytes(2, "big")) for i in range(70)]
    frontier = merkle.CompactRange()
    start = 0
    for cut in [*sorted(cuts), len(hashes)]:
        frontier.extend(hashes[start:cut])
        start = max(start, cut)
        assert frontier.size == start
        assert frontier.root() == merkle.MerkleTree(b"".join(hashes[:start])).root()
    with pytest.raises(ValueError, match="32 bytes"):
        frontier.extend([b"short"])


# --- tampering: any flipped byte fails ---------------------------------------------------------------


def _flip(data: bytes, position: int, mask: int) -> bytes:
    position %= len(data)
    return data[:position] + bytes([data[position] ^ mask]) + data[position + 1 :]


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=40),
    index_seed=st.integers(min_value=0),
    target=st.sampled_from(["leaf", "sibling", "root"]),
    position=st.integers(min_value=0),
    mask=st.integers(min_value=1, max_value=255),
)
def test_flipping_any_byte_breaks_an_inclusion_proof(
    size: int, index_seed: int, target: str, position: int, mask: int
) -> None:
    leaves = [os.urandom(32) for _ in range(size)]
    index = index_seed % size
    tree = merkle.MerkleTree.from_leaf_hashes([merkle.leaf_hash(leaf) for leaf in leaves])
    proof, root, leaf = tree.inclusion_proof(index), tree.root(), tree.leaf(index)
    assert merkle.verify_inclusion(leaf, index, size, proof, root)
    if target == "leaf":
        leaf = _flip(leaf, position, mask)
    elif target == "root":
        root = _flip(root, position, mask)
    elif proof:
        which = position % len(proof)
        proof = [*proof[:which], _flip(proof[which], position // len(proof), mask), *proof[which + 1 :]]
    else:
        proof = [os.urandom(32)]  # a one-leaf tree has no sibling to flip: an extra one must fail too
    assert not merkle.verify_inclusion(leaf, index, size, proof, root)


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.tuples(st.integers(min_value=1, max_value=40), st.integers(min_value=1, max_value=40)),
    target=st.sampled_from(["proof", "old_root", "new_root"]),
    position=st.integers(min_value=0),
    mask=st.integers(min_value=1, max_value=255),
)
def test_flipping_any_byte_breaks_a_consistency_proof(
    sizes: tuple[int, int], target: str, position: int, mask: int
) -> None:
    old, new = sorted(sizes)
    tree = merkle.MerkleTree.from_leaves([os.urandom(8) for _ in range(new)])
    proof, old_root, new_root = tree.consistency_proof(old), tree.root(old), tree.root()
    assert merkle.verify_consistency(old, new, old_root, new_root, proof)
    if target == "old_root":
        old_root = _flip(old_root, position, mask)
    elif target == "new_root":
        new_root = _flip(new_root, position, mask)
    elif proof:
        which = position % len(proof)
        proof = [*proof[:which], _flip(proof[which], position // len(proof), mask), *proof[which + 1 :]]
    else:
        proof = [os.urandom(32)]
    assert not merkle.verify_consistency(old, new, old_root, new_root, proof)


# --- the sum tree ------------------------------------------------------------------------------------


def _liabilities(amounts: list[int]) -> tuple[list[tuple[str, int, bytes]], list[SumNode]]:
    rows = [(f"contract:{i}", amount, os.urandom(merkle.SALT_SIZE)) for i, amount in enumerate(amounts)]
    return rows, [merkle.liability_leaf(ref, amount, salt) for ref, amount, salt in rows]


def ref_sum_root(nodes: list[SumNode]) -> SumNode:
    """RFC-shaped recursion over sum nodes, from the definition in the module docstring."""
    if not nodes:
        return merkle.EMPTY_SUM_ROOT
    if len(nodes) == 1:
        return nodes[0]
    k = 1
    while k * 2 < len(nodes):
        k *= 2
    left, right = ref_sum_root(nodes[:k]), ref_sum_root(nodes[k:])
    digest = hashlib.sha256(
        b"\x01" + left.hash + left.sum.to_bytes(8, "big") + right.hash + right.sum.to_bytes(8, "big")
    ).digest()
    return SumNode(digest, left.sum + right.sum)


def test_sum_tree_root_matches_the_reference_and_every_proof_verifies() -> None:
    for size in range(REFERENCE_MAX + 1):
        _, leaves = _liabilities([(i * 7919) % 100_000 for i in range(size)])
        root_hash, total = merkle.sum_tree_root(leaves)
        assert SumNode(root_hash, total) == ref_sum_root(leaves)
        assert total == sum(leaf.sum for leaf in leaves)
        for index in range(size):
            proof = merkle.sum_inclusion_proof(index, leaves)
            assert merkle.verify_sum_inclusion(leaves[index], index, size, proof, root_hash, total)
            assert not merkle.verify_sum_inclusion(leaves[index], index, size, proof, root_hash, total + 1)


def test_commitment_binds_reference_amount_and_salt() -> None:
    salt = bytes(32)
    base = merkle.liability_commitment("contract:1", 500, salt)
    assert merkle.liability_commitment("contract:1", 501, salt) != base
    assert merkle.liability_commitment("contract:2", 500, salt) != base
    assert merkle.liability_commitment("contract:1", 500, b"\x01" + bytes(31)) != base
    # Length-prefixed: moving a character between reference and amount is impossible by construction.
    assert merkle.liability_commitment("contract:1", 500, salt) == base


@settings(max_examples=200, deadline=None)
@given(
    amounts=st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=30),
    index_seed=st.integers(min_value=0),
    target=st.sampled_from(
        ["leaf_hash", "leaf_sum", "sibling_hash", "sibling_sum", "root_hash", "root_total"]
    ),
    position=st.integers(min_value=0),
    mask=st.integers(min_value=1, max_value=255),
    delta=st.integers(min_value=1, max_value=10**6),
)
def test_flipping_any_byte_or_sum_breaks_a_liability_proof(
    amounts: list[int], index_seed: int, target: str, position: int, mask: int, delta: int
) -> None:
    _, leaves = _liabilities(amounts)
    size, index = len(leaves), index_seed % len(leaves)
    root_hash, total = merkle.sum_tree_root(leaves)
    proof = merkle.sum_inclusion_proof(index, leaves)
    leaf = leaves[index]
    assert merkle.verify_sum_inclusion(leaf, index, size, proof, root_hash, total)
    if target == "leaf_hash":
        leaf = SumNode(_flip(leaf.hash, position, mask), leaf.sum)
    elif target == "leaf_sum":
        leaf = SumNode(leaf.hash, leaf.sum + delta)
    elif target == "root_hash":
        root_hash = _flip(root_hash, position, mask)
    elif target == "root_total":
        total += delta
    elif not proof:
        proof = [SumNode(os.urandom(32), 0)]
    else:
        which = position % len(proof)
        node = proof[which]
        if target == "sibling_hash":
            node = SumNode(_flip(node.hash, position // len(proof), mask), node.sum)
        else:
            node = SumNode(node.hash, max(node.sum - delta, 0) if node.sum else delta)
        proof = [*proof[:which], node, *proof[which + 1 :]]
    assert not merkle.verify_sum_inclusion(leaf, index, size, proof, root_hash, total)


def test_building_refuses_negative_amounts() -> None:
    _, leaves = _liabilities([100, 200])
    with pytest.raises(ValueError, match="negative"):
        merkle.liability_leaf("contract:x", -1, bytes(32))
    with pytest.raises(ValueError, match="negative"):
        merkle.SumTree([*leaves, SumNode(bytes(32), -50)])
    with pytest.raises(ValueError, match="integer"):
        merkle.SumTree([SumNode(bytes(32), 1.5)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not fit"):
        merkle.SumTree([SumNode(bytes(32), merkle.MAX_SUM), SumNode(bytes(32), 1)])
    with pytest.raises(ValueError, match="32 bytes"):
        merkle.SumTree.from_parts([bytes(32), bytes(31) + bytes(2)], [1, 2])
    with pytest.raises(ValueError, match="32 bytes"):
        merkle.SumTree.from_parts([bytes(32), "x" * 32], [1, 2])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="negative"):
        merkle.liability_commitments(["a", "b"], [1, -1], bytes(64))


def _evil_node(left: SumNode, right: SumNode) -> SumNode:
    """What a dishonest prover computes: the same node formula with signed sums and no checks."""
    digest = hashlib.sha256(
        b"\x01"
        + left.hash
        + left.sum.to_bytes(8, "big", signed=True)
        + right.hash
        + right.sum.to_bytes(8, "big", signed=True)
    ).digest()
    return SumNode(digest, left.sum + right.sum)


def test_a_negative_leaf_cannot_hide_a_liability() -> None:
    """The platform owes a parent 10,000 fen but wants to publish a total 10,000 lower. It adds a fake leaf of
    -10,000 next to the real one. The parent whose 10,000 would vanish gets a proof carrying the negative
    sibling, and it is refused; the fake leaf's own proof has a negative amount and is refused too. Whoever
    else checks sees only subtree sums, all non-negative, so the cheat needs the victim not to look."""
    (_, real_leaves) = _liabilities([10_000, 5_000])
    fake = SumNode(hashlib.sha256(b"fake").digest(), -10_000)
    pair = _evil_node(real_leaves[0], fake)
    root = _evil_node(pair, real_leaves[1])
    assert root.sum == 5_000  # the 10,000 owed to contract 0 has vanished from the published total

    real_proof = [fake, real_leaves[1]]
    with pytest.raises(ValueError, match="negative"):
        merkle.sum_root_from_proof(real_leaves[0], 0, 3, real_proof)
    assert not merkle.verify_sum_inclusion(real_leaves[0], 0, 3, real_proof, root.hash, root.sum)

    fake_proof = [real_leaves[0], real_leaves[1]]
    assert not merkle.verify_sum_inclusion(fake, 1, 3, fake_proof, root.hash, root.sum)

    # Netting the fake leaf against the real one leaves a subtree summing to 0: contract 1's proof shows
    # that sibling subtree as 0 and verifies (contract 1 is counted), but the victim's proof above does not.
    assert merkle.verify_sum_inclusion(real_leaves[1], 1, 2, [pair], root.hash, root.sum)

    # A sibling subtree whose sum is itself negative is refused at any depth.
    deeper = _evil_node(_evil_node(fake, SumNode(hashlib.sha256(b"x").digest(), 1)), real_leaves[1])
    negative_subtree = _evil_node(fake, SumNode(hashlib.sha256(b"x").digest(), 1))
    assert negative_subtree.sum < 0
    with pytest.raises(ValueError, match="negative"):
        merkle.sum_root_from_proof(real_leaves[1], 1, 2, [negative_subtree])
    assert not merkle.verify_sum_inclusion(real_leaves[1], 1, 2, [negative_subtree], deeper.hash, deeper.sum)


def test_a_lowered_sibling_sum_does_not_lower_the_total() -> None:
    """Under-reporting a sibling's sum (the flaw of Maxwell's original scheme, where only the parent total was
    hashed) changes the parent's hash, because each node hashes both children's sums."""
    _, leaves = _liabilities([10_000, 5_000, 7_000])
    root_hash, total = merkle.sum_tree_root(leaves)
    proof = merkle.sum_inclusion_proof(0, leaves)
    lowered = [proof[0], SumNode(proof[1].hash, proof[1].sum - 3_000)]
    assert merkle.sum_root_from_proof(leaves[0], 0, 3, lowered).sum == total - 3_000
    assert not merkle.verify_sum_inclusion(leaves[0], 0, 3, lowered, root_hash, total)
    assert not merkle.verify_sum_inclusion(leaves[0], 0, 3, lowered, root_hash, total - 3_000)


def test_group_leaf_binds_the_group_name_and_its_total() -> None:
    _, leaves = _liabilities([1, 2, 3])
    root = merkle.SumTree(leaves).root()
    leaf = merkle.group_leaf("institution:1", root)
    assert leaf.sum == 6
    assert merkle.group_leaf("institution:2", root).hash != leaf.hash
    assert merkle.group_leaf("institution:1", SumNode(root.hash, 7)).hash != leaf.hash

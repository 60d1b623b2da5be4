"""``ledger.proofs``: checkpoints that sign the entry log's Merkle root and a liabilities sum tree, the proofs
served from them (checked here with the standalone verifier's functions, as a regulator would), and signed
export bundles. Runs on both databases; rewriting history behind the triggers' back needs PostgreSQL."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import chain, merkle, proofs, verify
from ledger.canonical import chain_hash
from ledger.errors import InvalidAmount
from ledger.models import (
    ChainLink,
    Checkpoint,
    CheckpointProofs,
    Entry,
    LiabilityLeaf,
    LiabilityTree,
    LogNode,
    Posting,
)
from ledger.money import cny
from ledger.services import transfer
from tests.ledger.conftest import Chart

pytestmark = pytest.mark.django_db

Liability = tuple[str, str, int]
SYNTHETIC: list[Liability] = [
    ("contract:a1", "institution:a", 120_000),
    ("contract:a2", "institution:a", 0),
    ("contract:a3", "institution:a", 35_050),
    ("contract:b1", "institution:b", 999_999),
    ("contract:c1", "institution:c", 1),
    ("contract:c2", "institution:c", 60_000),
    ("contract:c3", "institution:c", 42),
    ("contract:c4", "institution:c", 7_700),
    ("contract:c5", "institution:c", 123_456),
]


def platform_key() -> verify.Ed25519PublicKey:
    """The regulator's copy of the public key, as they would pass it on the command line."""
    key_id = Checkpoint.objects.order_by("-id").values_list("key_id", flat=True).first()
    return verify.parse_public_key(chain.trusted_public_keys()[key_id or ""])


def link_hashes() -> list[bytes]:
    return [bytes.fromhex(h) for h in ChainLink.objects.order_by("seq").values_list("hash", flat=True)]


def body(checkpoint: Checkpoint) -> dict:
    return json.loads(checkpoint.payload)


@pytest.fixture
def pays(accounts: Chart, pay_in: Callable[..., Entry]) -> Callable[[int], list[Entry]]:
    """``pays(n)`` posts n payments of distinct amounts."""
    counter = iter(range(1, 10_000))

    def make(n: int) -> list[Entry]:
        return [pay_in(cny(str(10 + i)), key=f"pay-{i}") for i in (next(counter) for _ in range(n))]

    return make


# --- the entry log root ---------------------------------------------------------------------------------


def test_a_checkpoint_signs_the_merkle_root_over_the_link_hashes(pays: Callable[[int], list[Entry]]) -> None:
    pays(5)
    checkpoint = proofs.create_checkpoint_with_proofs()

    signed = body(checkpoint)
    assert signed["chain_seq"] == signed["log_size"] == 5
    # Leaf = the link's 32-byte hash, in seq order: anyone holding the links can recompute the root.
    assert signed["log_root"] == merkle.tree_root(link_hashes()).hex()
    assert chain.signature_valid(checkpoint.payload, checkpoint.signature, checkpoint.public_key)
    stored = CheckpointProofs.objects.get(checkpoint=checkpoint)
    assert (stored.log_size, stored.log_root, stored.liability_tree) == (5, signed["log_root"], None)
    assert "liabilities_root" not in signed

    report = verify.Report()
    verify.verify_checkpoint(proofs.checkpoint_document(checkpoint), platform_key(), report)
    assert any("last leaf" in line for line in report.lines)


def test_the_log_root_is_extended_incrementally_and_equals_a_full_rebuild(
    pays: Callable[[int], list[Entry]],
) -> None:
    """Each checkpoint extends the previous one's right edge; the result is always the root of all links,
    also across a plain checkpoint (no proofs) and a checkpoint with nothing new."""
    sizes = []
    for batch in (1, 0, 6, 3, 16):
        pays(batch)
        if batch == 3:
            chain.create_checkpoint()
        checkpoint = proofs.create_checkpoint_with_proofs()
        signed = body(checkpoint)
        assert signed["log_root"] == merkle.tree_root(link_hashes()).hex()
        assert len(CheckpointProofs.objects.get(checkpoint=checkpoint).log_frontier) == bin(
            signed["log_size"]
        ).count("1")
        sizes.append(signed["log_size"])
    assert sizes == [1, 1, 7, 10, 26]


def test_a_checkpoint_of_an_empty_ledger_signs_the_empty_root() -> None:
    checkpoint = proofs.create_checkpoint_with_proofs()
    signed = body(checkpoint)
    assert (signed["log_size"], signed["log_root"]) == (0, merkle.EMPTY_ROOT.hex())
    verify.verify_checkpoint(proofs.checkpoint_document(checkpoint), platform_key(), verify.Report())


def test_a_stored_log_edge_that_differs_from_its_signature_stops_the_next_checkpoint(
    pays: Callable[[int], list[Entry]],
) -> None:
    pays(3)
    first = proofs.create_checkpoint_with_proofs()
    CheckpointProofs.objects.filter(checkpoint=first).update(log_frontier=["ab" * 32, "cd" * 32])
    pays(1)
    with pytest.raises(proofs.ProofMismatch, match="no longer matches its signed root"):
        proofs.create_checkpoint_with_proofs(liabilities=SYNTHETIC)
    # All or nothing: the liabilities tree built for it is gone with it.
    assert (Checkpoint.objects.count(), LiabilityTree.objects.count(), LiabilityLeaf.objects.count()) == (
        1,
        0,
        0,
    )


# --- entry inclusion ------------------------------------------------------------------------------------


def test_every_entry_has_an_inclusion_proof_that_verifies(pays: Callable[[int], list[Entry]]) -> None:
    entries = pays(7)
    checkpoint = proofs.create_checkpoint_with_proofs()
    document = proofs.checkpoint_document(checkpoint)
    for entry in entries:
        proof = proofs.entry_inclusion_proof(entry.pk, checkpoint)
        assert proof["entry"]["id"] == entry.pk
        assert sorted(p["amount"] for p in proof["entry"]["postings"]) == sorted(
            Posting.objects.filter(entry=entry).values_list("amount", flat=True)
        )
        report = verify.Report()
        verify.verify_entry_inclusion(json.loads(json.dumps(proof)), document, platform_key(), report)
        assert any(f"link {proof['seq']} is in the signed log tree" in line for line in report.lines)


def test_inclusion_proofs_read_stored_subtrees_and_two_blocks_of_links(
    pays: Callable[[int], list[Entry]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints store every perfect subtree of the log they complete (here of 4 links and up, so a small
    log has some); a proof then reads those and at most two blocks of 4 links, and is the same proof a
    rebuild of the whole tree gives, for every entry of every checkpoint."""
    monkeypatch.setattr(proofs, "LOG_NODE_MIN_HEIGHT", 2)
    checkpoints = []
    for batch in (5, 9, 17):
        pays(batch)
        checkpoints.append(proofs.create_checkpoint_with_proofs())
    total = ChainLink.objects.count()
    assert set(LogNode.objects.values_list("height", "index")) == {
        (h, i) for h in range(2, total.bit_length()) for i in range(total >> h)
    }
    read: list[tuple[int, int]] = []
    links = proofs._link_hashes

    def counted(first: int, last: int) -> Iterator[bytes]:
        read.append((first, last))
        return links(first, last)

    monkeypatch.setattr(proofs, "_link_hashes", counted)
    for checkpoint in checkpoints:
        size = body(checkpoint)["log_size"]
        full = merkle.MerkleTree.from_leaves(link_hashes()[:size])
        for seq, entry_id in ChainLink.objects.filter(seq__lte=size).values_list("seq", "entry_id"):
            read.clear()
            proof = proofs.entry_inclusion_proof(entry_id, checkpoint)
            assert proof["path"] == [h.hex() for h in full.inclusion_proof(seq - 1)]
            assert len(read) <= 2 and sum(last - first + 1 for first, last in read) <= 8


def test_a_changed_stored_subtree_is_refused_and_a_missing_one_falls_back_to_the_links(
    pays: Callable[[int], list[Entry]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proofs, "LOG_NODE_MIN_HEIGHT", 2)
    pays(9)
    checkpoint = proofs.create_checkpoint_with_proofs()
    first_entry = ChainLink.objects.get(seq=1).entry_id
    # Link 1's path holds the subtree of links 5-8: (height 2, index 1).
    LogNode.objects.filter(height=2, index=1).update(hash="00" * 32)
    with pytest.raises(proofs.ProofMismatch, match="does not verify"):
        proofs.entry_inclusion_proof(first_entry, checkpoint)
    # History sealed before subtrees were stored: proven from every link, as before.
    LogNode.objects.all().delete()
    proof = proofs.entry_inclusion_proof(first_entry, checkpoint)
    verify.verify_entry_inclusion(
        proof, proofs.checkpoint_document(checkpoint), platform_key(), verify.Report()
    )


def test_the_standalone_canonical_form_is_the_ledgers(accounts: Chart) -> None:
    """The verifier re-hashes entry documents with its own copy of canonical_json: it must give the chain's
    bytes, Chinese text and nested metadata included."""
    entry = transfer(
        idempotency_key="pay-中文",
        kind="payment",
        debit_account=accounts.cash,
        credit_account=accounts.prepaid,
        amount=cny("12.34"),
        metadata={"摘要": "学费 tuition", "nested": {"b": [1, 2], "a": None}},
    )
    chain.seal()
    seq, digest, prev = ChainLink.objects.filter(entry=entry).values_list("seq", "hash", "prev_hash").get()
    document = json.loads(json.dumps(chain.documents_for([entry.pk])[entry.pk]))
    assert verify.chain_link_hash(prev, document) == chain_hash(prev, document) == digest


def test_inclusion_proofs_are_refused_when_there_is_nothing_to_prove_from(
    pays: Callable[[int], list[Entry]],
) -> None:
    early = pays(2)
    plain = chain.create_checkpoint()
    with pytest.raises(proofs.ProofUnavailable, match="without a log root"):
        proofs.entry_inclusion_proof(early[0].pk, plain)
    checkpoint = proofs.create_checkpoint_with_proofs()
    late = pays(1)[0]
    with pytest.raises(proofs.ProofUnavailable, match="not sealed yet"):
        proofs.entry_inclusion_proof(late.pk, checkpoint)
    chain.seal()
    with pytest.raises(proofs.ProofUnavailable, match="sealed after checkpoint"):
        proofs.entry_inclusion_proof(late.pk, checkpoint)
    # A regulator given a checkpoint that signs no log root is told so, not shown a pass.
    proof = proofs.entry_inclusion_proof(early[0].pk, checkpoint)
    with pytest.raises(verify.VerificationFailed, match="the checkpoint signs no entry log root"):
        verify.verify_entry_inclusion(
            proof, proofs.checkpoint_document(plain), platform_key(), verify.Report()
        )


# --- consistency ----------------------------------------------------------------------------------------


def test_a_later_checkpoint_is_consistent_with_every_earlier_one(pays: Callable[[int], list[Entry]]) -> None:
    checkpoints = []
    for batch in (3, 1, 4, 9):
        pays(batch)
        checkpoints.append(proofs.create_checkpoint_with_proofs())
    documents = [proofs.checkpoint_document(c) for c in checkpoints]
    for i, old in enumerate(checkpoints):
        for j in range(i, len(checkpoints)):
            proof = proofs.consistency_proof(old, checkpoints[j])
            report = verify.Report()
            verify.verify_consistency_proof(proof, documents[i], documents[j], platform_key(), report)
            assert any("history is unchanged" in line for line in report.lines)
    with pytest.raises(proofs.ProofUnavailable, match="newer one"):
        proofs.consistency_proof(checkpoints[2], checkpoints[1])
    # The proof names sizes the checkpoints sign: swapping in another checkpoint fails.
    proof = proofs.consistency_proof(checkpoints[0], checkpoints[2])
    with pytest.raises(verify.VerificationFailed, match="checkpoints sign"):
        verify.verify_consistency_proof(proof, documents[1], documents[2], platform_key(), verify.Report())


@contextmanager
def triggers_off(*tables: str) -> Iterator[CursorWrapper]:
    """Raw SQL with the append-only triggers disabled, as an attacker with database access would."""
    with transaction.atomic(), connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        yield cursor
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        for table in tables:
            cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_postgres_rewriting_an_entry_sealed_before_a_checkpoint_breaks_consistency(
    accounts: Chart, pays: Callable[[int], list[Entry]]
) -> None:
    """An attacker doubles a payment sealed before checkpoint 1 (both postings, so it still balances) and
    re-seals the whole chain so every link follows from the changed entries. The hash chain walk is then
    clean; only the signed log root shows the past was rewritten."""
    entries = pays(3)
    first = proofs.create_checkpoint_with_proofs()
    pays(2)

    with triggers_off("ledger_posting", "ledger_chainlink") as cursor:
        cursor.execute("UPDATE ledger_posting SET amount = amount * 2 WHERE entry_id = %s", [entries[0].pk])
        prev = chain.GENESIS_HASH
        links = list(ChainLink.objects.order_by("seq").values_list("seq", "entry_id"))
        documents = chain.documents_for([entry_id for _, entry_id in links])
        for seq, entry_id in links:
            digest = chain_hash(prev, documents[entry_id])
            cursor.execute(
                "UPDATE ledger_chainlink SET prev_hash = %s, hash = %s WHERE seq = %s", [prev, digest, seq]
            )
            prev = digest
    assert list(chain.walk_chain()) == []

    second = proofs.create_checkpoint_with_proofs()
    old_root = bytes.fromhex(body(first)["log_root"])
    assert merkle.tree_root(link_hashes()[:3]) != old_root

    with pytest.raises(proofs.ProofMismatch, match="history was rewritten"):
        proofs.consistency_proof(first, second)
    evidence = proofs.consistency_proof(first, second, check=False)
    documents_signed = (
        proofs.checkpoint_document(first, head_proof=False),
        proofs.checkpoint_document(second, head_proof=False),
    )
    with pytest.raises(verify.VerificationFailed, match="history was rewritten"):
        verify.verify_consistency_proof(evidence, *documents_signed, platform_key(), verify.Report())
    # The changed entry no longer proves into the log it was signed in.
    with pytest.raises(proofs.ProofMismatch):
        proofs.entry_inclusion_proof(entries[0].pk, first)
    with pytest.raises(proofs.ProofMismatch, match="rewritten"):
        proofs.checkpoint_document(first)


# --- liabilities ----------------------------------------------------------------------------------------


def test_a_checkpoint_signs_the_liabilities_root_total_and_group_totals(
    pays: Callable[[int], list[Entry]],
) -> None:
    pays(2)
    checkpoint = proofs.create_checkpoint_with_proofs(liabilities=SYNTHETIC)
    signed = body(checkpoint)
    assert signed["liabilities_total"] == sum(amount for _, _, amount in SYNTHETIC) == 1_346_248
    assert signed["liabilities_count"] == len(SYNTHETIC)
    assert signed["group_totals"] == {
        "institution:a": 155_050,
        "institution:b": 999_999,
        "institution:c": 191_199,
    }
    tree = CheckpointProofs.objects.get(checkpoint=checkpoint).liability_tree
    assert tree is not None and tree.root_hash == signed["liabilities_root"]
    assert LiabilityLeaf.objects.filter(tree=tree).count() == len(SYNTHETIC)
    # Salts are not stored: each leaf's 32 bytes derive from the tree's secret key, all different.
    assert set(LiabilityLeaf.objects.filter(tree=tree).values_list("salt", flat=True)) == {None}
    assert tree.salt_key is not None and len(bytes(tree.salt_key)) == 32
    salts = [proofs.liability_proof(reference, checkpoint)["salt"] for reference, _, _ in SYNTHETIC]
    assert len(set(salts)) == len(salts) and all(len(bytes.fromhex(s)) == 32 for s in salts)
    verify.verify_checkpoint(proofs.checkpoint_document(checkpoint), platform_key(), verify.Report())


def test_every_liability_proof_verifies_against_its_group_and_the_grand_total() -> None:
    checkpoint = proofs.create_checkpoint_with_proofs(liabilities=SYNTHETIC)
    document = proofs.checkpoint_document(checkpoint)
    for reference, group, amount in SYNTHETIC:
        proof = proofs.liability_proof(reference, checkpoint)
        assert (proof["group"], proof["amount"]) == (group, amount)
        report = verify.Report()
        verify.verify_liability_proof(json.loads(json.dumps(proof)), document, platform_key(), report)
        assert any(f"{reference}'s {amount} fen is counted in {group}" in line for line in report.lines)
    with pytest.raises(proofs.ProofUnavailable, match="not among"):
        proofs.liability_proof("contract:zz", checkpoint)


def test_the_same_liabilities_get_new_salts_in_each_checkpoint() -> None:
    first = proofs.create_checkpoint_with_proofs(liabilities=SYNTHETIC)
    second = proofs.create_checkpoint_with_proofs(liabilities=SYNTHETIC)
    assert body(first)["liabilities_total"] == body(second)["liabilities_total"]
    assert body(first)["liabilities_root"] != body(second)["liabilities_root"]
    assert (
        proofs.liability_proof("contract:a1", first)["salt"]
        != proofs.liability_proof("contract:a1", second)["salt"]
    )


def test_an_empty_set_of_liabilities_signs_a_zero_total() -> None:
    checkpoint = proofs.create_checkpoint_with_proofs(liabilities=[])
    signed = body(checkpoint)
    assert (signed["liabilities_total"], signed["group_totals"]) == (0, {})
    verify.verify_checkpoint(proofs.checkpoint_document(checkpoint), platform_key(), verify.Report())


@pytest.mark.parametrize(
    ("leaves", "error", "match"),
    [
        ([("contract:1", "i", -1)], InvalidAmount, "non-negative"),
        ([("contract:1", "i", 1.5)], InvalidAmount, "non-negative"),
        ([("contract:1", "i", True)], InvalidAmount, "non-negative"),
        ([("contract:1", "i", 1), ("contract:1", "j", 2)], proofs.InvalidLiabilities, "twice"),
        ([("", "i", 1)], proofs.InvalidLiabilities, "reference"),
        ([("x" * 201, "i", 1)], proofs.InvalidLiabilities, "reference"),
        ([(7, "i", 1)], proofs.InvalidLiabilities, "reference"),
        ([("contract:1", "", 1)], proofs.InvalidLiabilities, "group"),
        ([("contract:1", None, 1)], proofs.InvalidLiabilities, "group"),
        ([("contract:1", "i", 1), ("contract:2", "i")], proofs.InvalidLiabilities, "must be"),
        ([("contract:1", "i", 1), 5], proofs.InvalidLiabilities, "must be"),
        ([("contract:1", "i", 1), {"a": 1, "b": 2, "c": 3}], proofs.InvalidLiabilities, "must be"),
        # A bad row among many good ones is still found and named.
        (
            [(f"contract:{i}", "i", i) for i in range(500)] + [("contract:7", "j", 1)],
            proofs.InvalidLiabilities,
            "twice: contract:7",
        ),
    ],
)
def test_invalid_liabilities_are_refused_before_anything_is_signed(
    leaves: list, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        proofs.create_checkpoint_with_proofs(liabilities=leaves)
    assert (Checkpoint.objects.count(), LiabilityTree.objects.count()) == (0, 0)


def test_references_with_copy_control_characters_are_stored_as_given() -> None:
    """PostgreSQL stores leaves by COPY in text format: a backslash, tab or newline in a reference must not
    shift a column or change the reference."""
    odd = [("a\\b", "g:1", 5), ("tab\there", "g:1", 6), ("new\nline\r", "g:2", 7), ("\\N", "g:2", 8)]
    checkpoint = proofs.create_checkpoint_with_proofs(liabilities=odd)
    assert sorted(LiabilityLeaf.objects.values_list("reference", "amount")) == sorted(
        (reference, amount) for reference, _, amount in odd
    )
    for reference, group, amount in odd:
        proof = proofs.liability_proof(reference, checkpoint, group=group)
        assert (proof["reference"], proof["amount"]) == (reference, amount)


def test_leaves_are_ordered_by_group_then_as_given() -> None:
    given = [("r:3", "g:b", 3), ("r:1", "g:a", 1), ("r:2", "g:b", 2), ("r:0", "g:a", 0)]
    checkpoint = proofs.create_checkpoint_with_proofs(liabilities=given)
    stored = list(
        LiabilityLeaf.objects.order_by("group_position", "position").values_list("reference", flat=True)
    )
    assert stored == ["r:1", "r:0", "r:3", "r:2"]
    assert [(g["group"], g["count"]) for g in proofs_tree(checkpoint).groups] == [("g:a", 2), ("g:b", 2)]


def proofs_tree(checkpoint: Checkpoint) -> LiabilityTree:
    tree = CheckpointProofs.objects.get(checkpoint=checkpoint).liability_tree
    assert tree is not None
    return tree


def test_each_salt_is_the_aes_block_pair_of_its_leaf_index() -> None:
    """Leaf i's salt is AES-256(key, 2i) || AES-256(key, 2i + 1): the bulk keystream used to build the
    tree and the slice a proof derives agree, for any place and length."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = bytes(range(32))
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    expected = b"".join(
        ecb.update((2 * i).to_bytes(16, "big") + (2 * i + 1).to_bytes(16, "big")) for i in range(40)
    )
    assert proofs.leaf_salts(key, 0, 40) == expected
    assert proofs.leaf_salts(key, 13, 5) == expected[13 * 32 : 18 * 32]
    assert proofs.leaf_salts(bytes(32), 0, 40) != expected


def test_a_leaf_is_found_by_its_group_and_not_under_another() -> None:
    checkpoint = proofs.create_checkpoint_with_proofs(liabilities=SYNTHETIC)
    assert proofs.liability_proof("contract:c3", checkpoint, group="institution:c")["amount"] == 42
    for group in ("institution:a", "institution:zz"):
        with pytest.raises(proofs.ProofUnavailable, match="not among"):
            proofs.liability_proof("contract:c3", checkpoint, group=group)


def test_a_tree_signed_before_salt_keys_serves_proofs_from_its_stored_salts() -> None:
    """Trees stored before ``salt_key`` kept each leaf's salt in hex; their proofs are still served, and a
    lost salt is a mismatch, not a crash."""
    checkpoint = proofs.create_checkpoint_with_proofs(liabilities=SYNTHETIC)
    tree = proofs_tree(checkpoint)
    key = bytes(tree.salt_key)
    for group_position, group in enumerate(tree.groups):
        first = sum(g["count"] for g in tree.groups[:group_position])
        for position in range(group["count"]):
            salt = proofs.leaf_salts(key, first + position, 1).hex()
            LiabilityLeaf.objects.filter(tree=tree, group_position=group_position, position=position).update(
                salt=salt
            )
    LiabilityTree.objects.filter(pk=tree.pk).update(salt_key=None)
    before = proofs.leaf_salts(key, 0, 1).hex()
    assert proofs.liability_proof("contract:a1", checkpoint)["salt"] == before
    for reference, _, _ in SYNTHETIC:
        proofs.liability_proof(reference, checkpoint)
    LiabilityLeaf.objects.filter(tree=tree, reference="contract:b1").update(salt=None)
    with pytest.raises(proofs.ProofMismatch, match="lost its salt"):
        proofs.liability_proof("contract:b1", checkpoint)


def test_a_changed_stored_liability_is_refused_not_served() -> None:
    checkpoint = proofs.create_checkpoint_with_proofs(liabilities=SYNTHETIC)
    LiabilityLeaf.objects.filter(reference="contract:c2").update(amount=10)
    with pytest.raises(proofs.ProofMismatch, match="does not verify"):
        proofs.liability_proof("contract:c3", checkpoint)
    evidence = proofs.liability_proof("contract:c2", checkpoint, check=False)
    with pytest.raises(verify.VerificationFailed):
        verify.verify_liability_proof(
            evidence, proofs.checkpoint_document(checkpoint), platform_key(), verify.Report()
        )
    # Other institutions' proofs do not depend on the changed group's leaves.
    proofs.liability_proof("contract:a1", checkpoint)


# --- any flipped byte fails (hypothesis over real documents) ---------------------------------------------


def _flip_hex(text: str, position: int) -> str:
    position %= len(text)
    replacement = "0" if text[position] != "0" else "1"
    return text[:position] + replacement + text[position + 1 :]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_flipping_any_signed_or_proven_value_of_a_liability_proof_fails(
    signed_liabilities: tuple[dict, dict], data: st.DataObject
) -> None:
    proof, document = (
        json.loads(json.dumps(signed_liabilities[0])),
        json.loads(json.dumps(signed_liabilities[1])),
    )
    target = data.draw(
        st.sampled_from(
            [
                "amount",
                "salt",
                "reference",
                "group_path.hash",
                "group_path.sum",
                "top_path.hash",
                "top_path.sum",
                "group_index",
                "payload",
                "signature",
            ]  # fmt: skip
        )
    )
    position = data.draw(st.integers(min_value=0, max_value=10_000))
    if target == "amount":
        proof["amount"] += data.draw(st.integers(min_value=1, max_value=10**6))
    elif target == "salt":
        proof["salt"] = _flip_hex(proof["salt"], position)
    elif target == "reference":
        proof["reference"] += "x"
    elif target == "group_index":
        proof["group_index"] = (proof["group_index"] + 1) % (proof["group_size"] + 1)
    elif target == "payload":
        document["payload"] = _flip_hex(document["payload"], position)
    elif target == "signature":
        document["signature"] = _flip_hex(document["signature"], position)
    else:
        name, part = target.split(".")
        node = proof[name][position % len(proof[name])]
        if part == "hash":
            node["hash"] = _flip_hex(node["hash"], position // len(proof[name]))
        else:
            node["sum"] += data.draw(st.sampled_from([1, -1, 1000, -(node["sum"] + 1)]))
    with pytest.raises(verify.VerificationFailed):
        verify.verify_liability_proof(proof, document, platform_key(), verify.Report())


@pytest.fixture
def signed_liabilities() -> tuple[dict, dict]:
    checkpoint = proofs.create_checkpoint_with_proofs(liabilities=SYNTHETIC)
    # contract:c2 sits inside institution:c's five leaves, with siblings on both sides and both tree levels.
    return proofs.liability_proof("contract:c2", checkpoint), proofs.checkpoint_document(checkpoint)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_flipping_any_signed_or_proven_value_of_an_entry_proof_fails(
    signed_entry: tuple[dict, dict], data: st.DataObject
) -> None:
    proof, document = json.loads(json.dumps(signed_entry[0])), json.loads(json.dumps(signed_entry[1]))
    target = data.draw(
        st.sampled_from(
            ["link_hash", "prev_hash", "path", "posting", "index", "log_size", "payload", "signature"]
        )
    )
    position = data.draw(st.integers(min_value=0, max_value=10_000))
    if target in ("link_hash", "prev_hash"):
        proof[target] = _flip_hex(proof[target], position)
    elif target == "path":
        which = position % len(proof["path"])
        proof["path"][which] = _flip_hex(proof["path"][which], position // len(proof["path"]))
    elif target == "posting":
        posting = proof["entry"]["postings"][position % 2]
        posting["amount"] += 1 if posting["amount"] > 0 else -1
    elif target == "index":
        proof["index"] = (proof["index"] + 1 + position % 5) % proof["log_size"]
    elif target == "log_size":
        proof["log_size"] += 1
    else:
        document[target] = _flip_hex(document[target], position)
    with pytest.raises(verify.VerificationFailed):
        verify.verify_entry_inclusion(proof, document, platform_key(), verify.Report())


@pytest.fixture
def signed_entry(pays: Callable[[int], list[Entry]]) -> tuple[dict, dict]:
    entries = pays(11)
    checkpoint = proofs.create_checkpoint_with_proofs()
    return proofs.entry_inclusion_proof(entries[6].pk, checkpoint), proofs.checkpoint_document(checkpoint)


# --- export bundles -------------------------------------------------------------------------------------

FILES = {
    "statement.csv": "合同,托管余额\ncontract:a1,1200.00\n".encode(),
    "reports/summary.xlsx": bytes(range(256)) * 4,
    "checkpoint.json": b'{"payload": "{}"}',
}


@pytest.mark.parametrize("as_zip", [False, True])
def test_a_bundle_reads_back_with_its_files_and_signed_meta(tmp_path: Path, as_zip: bool) -> None:
    target = proofs.write_bundle(
        tmp_path / "export", FILES, meta={"jurisdiction": "成都市武侯区"}, as_zip=as_zip
    )
    bundle = proofs.read_bundle(target)
    assert bundle.files == FILES
    assert bundle.meta == {"jurisdiction": "成都市武侯区"}
    report = verify.Report()
    verify.verify_bundle(target, platform_key_for_bundles(), report)
    assert sum("intact" in line for line in report.lines) == len(FILES)


def platform_key_for_bundles() -> verify.Ed25519PublicKey:
    from django.conf import settings as django_settings

    return verify.parse_public_key(chain.trusted_public_keys()[django_settings.LEDGER_SIGNING_KEY_ID])


def _rewrite_zip(path: Path, change: Callable[[dict[str, bytes]], None]) -> None:
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    change(members)
    path.unlink()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            lambda m: m.__setitem__("statement.csv", m["statement.csv"] + b"contract:x,1.00\n"),
            "does not match",
        ),
        (lambda m: m.__setitem__("extra.csv", b"x"), "not in the manifest"),
        (lambda m: m.pop("reports/summary.xlsx"), "missing"),
        (
            lambda m: m.__setitem__(
                "manifest.json", m["manifest.json"].replace(b'\\"size\\":1024', b'\\"size\\":1025')
            ),
            "signature",
        ),
    ],
)
def test_a_changed_bundle_is_refused(
    tmp_path: Path, change: Callable[[dict[str, bytes]], None], match: str
) -> None:
    target = proofs.write_bundle(tmp_path / "export.zip", FILES, as_zip=True)
    _rewrite_zip(target, change)
    with pytest.raises(proofs.BundleInvalid, match=match):
        proofs.read_bundle(target)


def test_a_bundle_refuses_unsafe_names_and_an_existing_target(tmp_path: Path) -> None:
    for name in ("../escape.csv", "/etc/passwd", "manifest.json", "a//b.csv", "a\\b.csv", ""):
        with pytest.raises(proofs.BundleInvalid):
            proofs.write_bundle(tmp_path / f"x{abs(hash(name))}", {name: b"x"})
    (tmp_path / "taken").mkdir()
    with pytest.raises(proofs.BundleInvalid, match="already exists"):
        proofs.write_bundle(tmp_path / "taken", FILES)


def test_a_manifest_signature_cannot_pass_for_a_checkpoint(tmp_path: Path) -> None:
    """Manifests are signed with a context prefix, so the same key's manifest signature never verifies as a
    checkpoint signature over the same text."""
    target = proofs.write_bundle(tmp_path / "export", FILES)
    manifest = json.loads((target / "manifest.json").read_text())
    with pytest.raises(verify.VerificationFailed, match="signature"):
        verify.verify_checkpoint(manifest, platform_key_for_bundles(), verify.Report())

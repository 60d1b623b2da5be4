"""``ledger.chain``: sealing queued entries into the SHA-256 hash chain, and Ed25519-signed checkpoints."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings

from ledger.canonical import GENESIS_HASH, canonical_json, chain_hash
from ledger.chain import (
    create_checkpoint,
    document_bytes_for,
    documents_for,
    public_key_hex,
    seal,
    signature_valid,
    trusted_public_keys,
    walk_chain,
)
from ledger.models import ChainLink, Checkpoint, Entry, UnsealedEntry
from ledger.money import cny
from ledger.services import (
    NewEntry,
    create_pending,
    credit,
    debit,
    post_batch,
    post_pending,
    reverse_entry,
    transfer,
)
from tests.ledger.conftest import Chart

pytestmark = pytest.mark.django_db


@pytest.fixture
def some_entries(accounts: Chart, pay_in: Callable[..., Entry]) -> list[Entry]:
    """Five entries of three kinds: two payments, a batch of two releases, a posted hold."""
    entries = [pay_in("100", key="pay-1"), pay_in("50", key="pay-2")]
    entries += post_batch(
        entries=[
            NewEntry(
                f"r-{i}", "release", [debit(accounts.prepaid, cny("10")), credit(accounts.payable, cny("10"))]
            )
            for i in range(2)
        ]
    ).entries
    lesson = create_pending(
        idempotency_key="lesson-1",
        kind="lesson",
        debit_account=accounts.prepaid,
        credit_account=accounts.payable,
        amount=cny("5"),
    )
    entries.append(post_pending(transfer=lesson, idempotency_key="confirm-1"))
    return entries


def chain() -> list[tuple[int, int, str, str]]:
    return list(ChainLink.objects.order_by("seq").values_list("seq", "entry_id", "prev_hash", "hash"))


def test_every_entry_is_queued_for_sealing(some_entries: list[Entry]) -> None:
    assert sorted(UnsealedEntry.objects.values_list("entry_id", flat=True)) == sorted(
        e.pk for e in some_entries
    )
    assert ChainLink.objects.count() == 0


def test_seal_links_every_queued_entry_in_order(some_entries: list[Entry]) -> None:
    sealed = seal()

    assert sealed == len(some_entries)
    links = chain()
    assert [seq for seq, _, _, _ in links] == list(range(1, len(some_entries) + 1))
    assert [entry_id for _, entry_id, _, _ in links] == sorted(e.pk for e in some_entries)
    documents = documents_for([entry_id for _, entry_id, _, _ in links])
    previous = GENESIS_HASH
    for _, entry_id, prev_hash, digest in links:
        assert prev_hash == previous
        assert digest == chain_hash(prev_hash, documents[entry_id])
        assert len(digest) == 64
        previous = digest
    assert UnsealedEntry.objects.count() == 0


def test_sealing_again_seals_nothing(some_entries: list[Entry]) -> None:
    seal()
    links = chain()

    assert seal() == 0
    assert chain() == links


def test_seal_with_a_limit_and_later_entries_continue_the_chain(
    accounts: Chart, some_entries: list[Entry], pay_in: Callable[..., Entry]
) -> None:
    assert seal(limit=2) == 2
    assert [entry_id for _, entry_id, _, _ in chain()] == sorted(e.pk for e in some_entries)[:2]
    assert UnsealedEntry.objects.count() == len(some_entries) - 2

    assert seal() == len(some_entries) - 2
    head_seq, _, _, head_hash = chain()[-1]
    late = pay_in("1", key="pay-late")
    assert seal() == 1

    seq, entry_id, prev_hash, _ = chain()[-1]
    assert (seq, entry_id, prev_hash) == (head_seq + 1, late.pk, head_hash)
    assert list(walk_chain()) == []


def test_the_chain_hash_covers_the_entry_and_its_postings(some_entries: list[Entry]) -> None:
    seal()
    _, entry_id, prev_hash, digest = chain()[0]
    document = documents_for([entry_id])[entry_id]

    assert document["key"] == "pay-1"
    assert {(p["account"], p["amount"]) for p in document["postings"]} == {
        ("custody_cash:i1", 10000),
        ("prepaid:c1", -10000),
    }
    altered = {
        **document,
        "postings": [{**document["postings"][0], "amount": 10001}, *document["postings"][1:]],
    }
    assert chain_hash(prev_hash, altered) != digest
    assert chain_hash(prev_hash, {**document, "metadata": {"x": 1}}) != digest
    assert chain_hash(GENESIS_HASH.replace("0", "1"), document) != digest


def test_create_checkpoint_seals_then_signs_the_head(some_entries: list[Entry]) -> None:
    checkpoint = create_checkpoint()

    head_seq, _, _, head_hash = chain()[-1]
    assert UnsealedEntry.objects.count() == 0
    assert (
        (checkpoint.chain_seq, checkpoint.chain_hash)
        == (head_seq, head_hash)
        == (len(some_entries), head_hash)
    )
    body = json.loads(checkpoint.payload)
    assert body["chain_seq"] == head_seq
    assert body["chain_hash"] == head_hash
    assert body["key_id"] == checkpoint.key_id == settings.LEDGER_SIGNING_KEY_ID
    assert checkpoint.public_key == trusted_public_keys()[checkpoint.key_id]
    assert signature_valid(checkpoint.payload, checkpoint.signature, checkpoint.public_key)
    assert Checkpoint.objects.get(pk=checkpoint.pk).payload == checkpoint.payload


def test_a_checkpoint_may_sign_extra_fields(some_entries: list[Entry]) -> None:
    checkpoint = create_checkpoint(extra={"liabilities_root": "ab" * 32, "liabilities_total": 14000})

    body = json.loads(checkpoint.payload)
    assert (body["liabilities_root"], body["liabilities_total"]) == ("ab" * 32, 14000)
    assert signature_valid(checkpoint.payload, checkpoint.signature, checkpoint.public_key)


def test_a_checkpoint_of_an_empty_ledger_signs_the_genesis_hash() -> None:
    checkpoint = create_checkpoint()

    assert (checkpoint.chain_seq, checkpoint.chain_hash) == (0, GENESIS_HASH)
    assert signature_valid(checkpoint.payload, checkpoint.signature, checkpoint.public_key)


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def test_signature_valid_rejects_a_flipped_byte_of_payload_or_signature(some_entries: list[Entry]) -> None:
    checkpoint = create_checkpoint()
    payload = checkpoint.payload.encode()
    signature = bytes.fromhex(checkpoint.signature)
    assert payload.isascii()

    for index in (0, len(payload) // 2, len(payload) - 1):
        forged_payload = flip(payload, index).decode()
        assert forged_payload != checkpoint.payload
        assert not signature_valid(forged_payload, checkpoint.signature, checkpoint.public_key)
    for index in (0, 31, 32, 63):
        forged_signature = flip(signature, index).hex()
        assert not signature_valid(checkpoint.payload, forged_signature, checkpoint.public_key)
    assert signature_valid(checkpoint.payload, checkpoint.signature, checkpoint.public_key)


def test_signature_valid_rejects_another_key_and_malformed_input(some_entries: list[Entry]) -> None:
    checkpoint = create_checkpoint()
    other_key = public_key_hex(Ed25519PrivateKey.generate())

    assert not signature_valid(checkpoint.payload, checkpoint.signature, other_key)
    assert not signature_valid(checkpoint.payload, "zz" * 64, checkpoint.public_key)
    assert not signature_valid(checkpoint.payload, checkpoint.signature[:-2], checkpoint.public_key)
    assert not signature_valid(checkpoint.payload, checkpoint.signature, "00" * 31)


def test_walk_chain_finds_nothing_on_a_clean_chain(accounts: Chart, some_entries: list[Entry]) -> None:
    seal()
    transfer(
        idempotency_key="pay-3",
        kind="payment",
        debit_account=accounts.cash,
        credit_account=accounts.prepaid,
        amount=cny("3"),
    )
    steps: list[int] = []

    assert list(walk_chain(chunk=2, progress=steps.append)) == []
    assert steps == [2, 2, 1]


def test_the_bytes_the_chain_hashes_are_the_canonical_json_of_each_document(
    accounts: Chart, some_entries: list[Entry]
) -> None:
    """document_bytes_for (sealer and verifier) against canonical_json of documents_for (proofs), on entries
    of every shape: a hold posted (pending set), a reversal (reverses set, metadata with a reason)."""
    reversal = reverse_entry(entry=some_entries[0], idempotency_key="rev-1", reason='重复 "duplicate"\n')
    ids = [e.pk for e in some_entries] + [reversal.pk]

    encoded = document_bytes_for(ids)
    assert encoded == {pk: canonical_json(document) for pk, document in documents_for(ids).items()}
    assert json.loads(encoded[reversal.pk])["reverses"] == some_entries[0].pk
    assert json.loads(encoded[some_entries[-1].pk])["pending"] is not None

"""The hash chain over entries, and signed checkpoints of its head.

Writers only queue new entries (``UnsealedEntry``); ``seal`` appends them to the chain in order, computing
hash = SHA-256(previous hash || canonical entry). A checkpoint signs (Ed25519) the chain head, so a regulator
who keeps checkpoints can detect any history rewritten afterwards with the public key alone.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from ledger.canonical import (
    GENESIS_HASH,
    canonical_json,
    chain_hash,
    entry_document,
    entry_document_json,
    timestamp,
)
from ledger.models import ChainLink, Checkpoint, Entry, Posting, UnsealedEntry

SEAL_CHUNK = 5_000
_SEALER_LOCK_ID = 0x1ED6E5  # a constant advisory-lock id: one sealer at a time


_PG_CANONICAL_TIME = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
# An entry's fields in the order ``_entry_fields`` takes them, on PostgreSQL with the times already canonical.
_PG_ENTRY_COLUMNS = (
    "e.id, e.idempotency_key, e.kind, "
    f"{_PG_CANONICAL_TIME.format('e.posted_at')}, {_PG_CANONICAL_TIME.format('e.effective_at')}, "
    "e.metadata::text, e.reverses_id, e.pending_transfer_id"
)
_PG_POSTING_COLUMNS = "p.entry_id, p.id, a.code, p.amount, p.currency"

EntryRow = tuple[Any, ...]  # _PG_ENTRY_COLUMNS
Postings = dict[int, list[tuple[int, str, int, str]]]


def _entry_rows(
    entry_ids: Sequence[int], *, links: tuple[int, int] | None = None
) -> tuple[list[EntryRow], Postings]:
    """These entries' rows and their postings, read with two queries.

    This is the sealer's and the verifier's hot loop, so it uses raw SQL: one array parameter instead of
    thousands of bound ids, and on PostgreSQL timestamps already in canonical form instead of parsed and
    re-formatted. The walk passes ``links`` (after, last): the entries are those of the links after seq
    ``after`` up to ``last``, and PostgreSQL builds the array itself instead of receiving it. Always
    ``= ANY(array)``: with ``IN (subquery)`` or a join the planner may scan every entry or posting, per
    chunk."""
    ids = list(entry_ids)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            params: list[Any] = [ids] if links is None else list(links)
            id_array = (
                "%s"
                if links is None
                else "ARRAY(SELECT entry_id FROM ledger_chainlink WHERE seq > %s AND seq <= %s)"
            )
            cursor.execute(
                f"SELECT {_PG_ENTRY_COLUMNS} FROM ledger_entry e WHERE e.id = ANY({id_array})", params
            )
            entries = cursor.fetchall()
            cursor.execute(
                f"SELECT {_PG_POSTING_COLUMNS} FROM ledger_posting p "
                f"JOIN ledger_account a ON a.id = p.account_id WHERE p.entry_id = ANY({id_array})",
                params,
            )
            posting_rows = cursor.fetchall()
        else:
            entries = list(
                Entry.objects.filter(pk__in=ids).values_list(
                    "id",
                    "idempotency_key",
                    "kind",
                    "posted_at",
                    "effective_at",
                    "metadata",
                    "reverses_id",
                    "pending_transfer_id",
                )
            )
            entries = [(*row[:3], timestamp(row[3]), timestamp(row[4]), *row[5:]) for row in entries]
            posting_rows = list(
                Posting.objects.filter(entry_id__in=ids).values_list(
                    "entry_id", "id", "account__code", "amount", "currency"
                )
            )
    return entries, _by_entry(posting_rows)


def _by_entry(posting_rows: Iterable[tuple[int, int, str, int, str]]) -> Postings:
    postings: Postings = {}
    for eid, pid, code, amount, currency in posting_rows:
        postings.setdefault(eid, []).append((pid, code, amount, currency))
    return postings


def _entry_fields(row: EntryRow, postings: Postings) -> dict[str, Any]:
    metadata = row[5]
    if isinstance(metadata, str):
        metadata = {} if metadata == "{}" else json.loads(metadata)
    return {
        "entry_id": row[0],
        "idempotency_key": row[1],
        "kind": row[2],
        "posted_at": row[3],
        "effective_at": row[4],
        "metadata": metadata,
        "reverses_id": row[6],
        "pending_transfer_id": row[7],
        "postings": postings.get(row[0], []),
    }


def documents_for(entry_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Canonical documents for these entries (as proofs show them)."""
    entries, postings = _entry_rows(entry_ids)
    return {row[0]: entry_document(**_entry_fields(row, postings)) for row in entries}


def document_bytes_for(entry_ids: Sequence[int], *, links: tuple[int, int] | None = None) -> dict[int, bytes]:
    """``canonical_json`` of ``documents_for``: what the chain hashes (``links``: see ``_entry_rows``)."""
    entries, postings = _entry_rows(entry_ids, links=links)
    return {row[0]: entry_document_json(**_entry_fields(row, postings)) for row in entries}


def seal(*, limit: int | None = None) -> int:
    """Append queued entries to the chain, oldest first. Safe to run concurrently and to re-run."""
    sealed = 0
    while limit is None or sealed < limit:
        chunk = SEAL_CHUNK if limit is None else min(SEAL_CHUNK, limit - sealed)
        with transaction.atomic():
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_SEALER_LOCK_ID])
            queued = list(
                UnsealedEntry.objects.order_by("entry_id").values_list("entry_id", flat=True)[:chunk]
            )
            if not queued:
                break
            head = ChainLink.objects.order_by("-seq").values_list("seq", "hash").first() or (0, GENESIS_HASH)
            seq, prev = head
            docs = document_bytes_for(queued)
            now = timezone.now()
            links = []
            for entry_id in queued:
                seq += 1
                digest = chain_hash(prev, docs[entry_id])
                links.append(
                    ChainLink(seq=seq, entry_id=entry_id, prev_hash=prev, hash=digest, sealed_at=now)
                )
                prev = digest
            ChainLink.objects.bulk_create(links)
            UnsealedEntry.objects.filter(entry_id__in=queued).delete()
            sealed += len(queued)
    return sealed


# --- signing --------------------------------------------------------------------------------------------


def _signing_key() -> tuple[str, Ed25519PrivateKey]:
    raw = base64.b64decode(settings.LEDGER_SIGNING_KEY)
    return settings.LEDGER_SIGNING_KEY_ID, Ed25519PrivateKey.from_private_bytes(raw)


def public_key_hex(private: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def trusted_public_keys() -> dict[str, str]:
    """Key id -> raw public key (hex) that checkpoints may be signed with: the current key, plus retired keys
    kept in ``LEDGER_VERIFY_KEYS`` (``id:hex,id:hex``) so old checkpoints still verify after rotation."""
    key_id, private = _signing_key()
    keys = dict(getattr(settings, "LEDGER_VERIFY_KEYS", {}) or {})
    keys[key_id] = public_key_hex(private)
    return keys


def create_checkpoint(
    *,
    extra: dict[str, Any] | None = None,
    extra_at_head: Callable[[int, str], Mapping[str, Any]] | None = None,
) -> Checkpoint:
    """Seal what is queued, then sign the chain head (and any ``extra`` fields, e.g. Merkle roots).

    ``extra_at_head(seq, hash)`` is called inside the transaction, with the head about to be signed, for
    fields that must describe exactly that head (the entry log's Merkle root, see ``ledger.proofs``)."""
    seal()
    with transaction.atomic():
        head = ChainLink.objects.order_by("-seq").values_list("seq", "hash").first() or (0, GENESIS_HASH)
        key_id, private = _signing_key()
        created_at = timezone.now()
        body = {
            "chain_seq": head[0],
            "chain_hash": head[1],
            "created_at": timestamp(created_at),
            "key_id": key_id,
            **(extra or {}),
            **(extra_at_head(head[0], head[1]) if extra_at_head else {}),
        }
        payload = canonical_json(body)
        return Checkpoint.objects.create(
            created_at=created_at,
            chain_seq=head[0],
            chain_hash=head[1],
            payload=payload.decode(),
            key_id=key_id,
            public_key=public_key_hex(private),
            signature=private.sign(payload).hex(),
        )


def signature_valid(payload: str, signature_hex: str, public_key_hex_value: str) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex_value)).verify(
            bytes.fromhex(signature_hex), payload.encode()
        )
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class LinkCheck:
    seq: int
    entry_id: int | None
    problem: str


Link = tuple[int, int, str, str]  # seq, entry id, prev_hash, hash


def _links_with_documents(after_seq: int, chunk: int) -> tuple[list[Link], dict[int, bytes]]:
    """The next ``chunk`` links after ``after_seq``, and the canonical bytes of their entries as they are
    now."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT seq, entry_id, prev_hash, hash FROM ledger_chainlink WHERE seq > %s "
            "ORDER BY seq LIMIT %s",
            [after_seq, chunk],
        )
        links = cursor.fetchall()
    if not links:
        return [], {}
    return links, document_bytes_for([link[1] for link in links], links=(after_seq, links[-1][0]))


def _chunks(chunk: int) -> Iterator[tuple[list[Link], dict[int, bytes]]]:
    """Every link in seq order, ``chunk`` at a time, with its entry's canonical bytes."""
    last_seq = 0
    while True:
        links, documents = _links_with_documents(last_seq, chunk)
        if not links:
            return
        yield links, documents
        last_seq = links[-1][0]


def walk_chain(*, chunk: int = SEAL_CHUNK, progress: Any = None) -> Iterator[LinkCheck]:
    """Recompute every link from the entries as they are now; yield each link that does not match."""
    prev = GENESIS_HASH
    expected_seq = 0
    for links, docs in _chunks(chunk):
        for seq, entry_id, prev_hash, digest in links:
            expected_seq += 1
            if seq != expected_seq:
                yield LinkCheck(seq, entry_id, f"chain sequence jumps from {expected_seq - 1} to {seq}")
                expected_seq = seq
            if prev_hash != prev:
                yield LinkCheck(seq, entry_id, "link does not follow the previous one (prev_hash differs)")
            document = docs.get(entry_id)
            if document is None:
                yield LinkCheck(seq, entry_id, f"entry {entry_id} of link {seq} is missing")
            elif chain_hash(prev_hash, document) != digest:
                yield LinkCheck(seq, entry_id, f"entry {entry_id} differs from what was sealed at link {seq}")
            prev = digest
        if progress:
            progress(len(links))


def link_hashes(seqs: Iterable[int]) -> dict[int, str]:
    return dict(ChainLink.objects.filter(seq__in=list(seqs)).values_list("seq", "hash"))

"""The spelled-out canonical forms must give exactly the bytes the general encoder gives: keys posted before
must still replay, entries sealed before must still verify."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.canonical import (
    GENESIS_HASH,
    chain_hash,
    entry_document,
    entry_document_json,
    entry_request_hash,
    post_pending_request_hash,
    request_hash,
    timestamp,
)


def reference_hash(kind: Any, legs: Any, effective_at: Any, metadata: Any) -> str:
    """The request hash as _entry_spec computed it before entry_request_hash existed."""
    payload = {"op": "entry", "kind": kind, "legs": legs, "effective_at": effective_at, "metadata": metadata}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# Any text, including quotes, backslashes, control characters and non-ASCII (kept as is, ensure_ascii=False).
texts = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=30)
ints = st.integers(min_value=-(2**63), max_value=2**63)
json_values = st.recursive(
    st.none() | st.booleans() | ints | texts | st.floats(allow_nan=False) | st.decimals(allow_nan=False),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=8,
)
legs = st.lists(st.tuples(ints, ints), min_size=0, max_size=5).map(tuple)
moments = st.none() | st.datetimes(timezones=st.just(UTC)).map(timestamp) | texts


@settings(max_examples=2000)
@given(kind=texts, legs=legs, effective_at=moments, metadata=st.dictionaries(texts, json_values, max_size=4))
def test_the_same_hash_as_the_generic_encoder(
    kind: str, legs: tuple[tuple[int, int], ...], effective_at: str | None, metadata: dict[str, Any]
) -> None:
    expected = reference_hash(kind, legs, effective_at, metadata)

    assert entry_request_hash(kind=kind, legs=legs, effective_at=effective_at, metadata=metadata) == expected
    assert (
        request_hash(
            {"op": "entry", "kind": kind, "legs": legs, "effective_at": effective_at, "metadata": metadata}
        )
        == expected
    )


@given(
    kind=texts,
    legs=st.lists(st.tuples(st.booleans() | ints, st.booleans() | ints), max_size=3).map(tuple),
    metadata=st.dictionaries(texts, json_values, max_size=2),
)
def test_other_shapes_fall_back_to_the_generic_encoder(
    kind: str, legs: tuple[tuple[Any, Any], ...], metadata: dict[str, Any]
) -> None:
    """bool is an int to Python but true/false to JSON; such legs take the generic path."""
    assert entry_request_hash(kind=kind, legs=legs, effective_at=None, metadata=metadata) == reference_hash(
        kind, legs, None, metadata
    )


def test_a_known_hash_is_unchanged() -> None:
    """Pinned: an entry hashed by every version of the ledger so far."""
    legs = ((1, 1234), (2, -1234))
    moment = timestamp(datetime(2025, 9, 1, 8, 30, tzinfo=UTC))
    metadata = {"lesson": "数学", "n": 3}

    assert entry_request_hash(
        kind="release", legs=legs, effective_at=moment, metadata=metadata
    ) == reference_hash("release", legs, moment, metadata)
    assert entry_request_hash(kind="release", legs=legs, effective_at=None, metadata={}) == (
        hashlib.sha256(
            b'{"effective_at":null,"kind":"release","legs":[[1,1234],[2,-1234]],"metadata":{},"op":"entry"}'
        ).hexdigest()
    )


@given(transfer=st.booleans() | ints, amount=st.booleans() | ints)
def test_posting_a_hold_hashes_as_the_generic_encoder(transfer: int, amount: int) -> None:
    """Holds posted before the spelled-out hash existed must still replay (bools take the generic path)."""
    payload = {"op": "post_pending", "transfer": transfer, "amount": amount}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)

    assert (
        post_pending_request_hash(transfer=transfer, amount=amount)
        == hashlib.sha256(text.encode()).hexdigest()
    )
    assert (
        post_pending_request_hash(transfer=7, amount=1234)
        == hashlib.sha256(b'{"amount":1234,"op":"post_pending","transfer":7}').hexdigest()
    )


ids = st.integers(min_value=1, max_value=2**63 - 1)
postings = st.lists(st.tuples(ids, texts, ints, texts), max_size=5)


@settings(max_examples=2000)
@given(
    entry_id=ids,
    key=texts,
    kind=texts,
    posted_at=moments.filter(lambda m: m is not None),
    effective_at=moments.filter(lambda m: m is not None),
    metadata=st.dictionaries(texts, json_values, max_size=4),
    reverses=st.none() | ids,
    pending=st.none() | ids,
    postings=postings,
)
def test_an_entry_document_spelled_out_is_the_canonical_json_of_the_document(
    entry_id: int,
    key: str,
    kind: str,
    posted_at: str,
    effective_at: str,
    metadata: dict[str, Any],
    reverses: int | None,
    pending: int | None,
    postings: list[tuple[int, str, int, str]],
) -> None:
    """The chain walk hashes entry_document_json; what was sealed before it existed must still verify."""
    fields = dict(
        entry_id=entry_id,
        idempotency_key=key,
        kind=kind,
        posted_at=posted_at,
        effective_at=effective_at,
        metadata=metadata,
        reverses_id=reverses,
        pending_transfer_id=pending,
        postings=postings,
    )
    expected = json.dumps(
        entry_document(**fields), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    ).encode()

    assert entry_document_json(**fields) == expected
    assert chain_hash(GENESIS_HASH, entry_document_json(**fields)) == chain_hash(
        GENESIS_HASH, entry_document(**fields)
    )


@given(
    odd=st.sampled_from(["entry_id", "reverses_id", "pending_transfer_id", "amount", "kind", "metadata"]),
    value=st.booleans() | st.none() | st.floats(allow_nan=False) | st.decimals(allow_nan=False) | ids,
)
def test_other_entry_shapes_fall_back_to_the_canonical_encoder(odd: str, value: Any) -> None:
    """bool is an int to Python but true/false to JSON; a Decimal or float id is not an int: such fields take
    the general path (and so does a metadata mapping that is not a plain dict)."""
    fields: dict[str, Any] = dict(
        entry_id=7,
        idempotency_key='k\u2028"\\',
        kind="release",
        posted_at="2025-09-01T08:30:00.000000Z",
        effective_at="2025-09-01T08:30:00.000000Z",
        metadata={"b": [1, 2.5, None], "a": {"z": "数学", "y": True}},
        reverses_id=None,
        pending_transfer_id=3,
        postings=[(12, "prepaid:c1", -1234, "CNY"), (11, "cash", 1234, "CNY")],
    )
    if odd == "amount":
        fields["postings"] = [(12, "prepaid:c1", value, "CNY"), (11, "cash", 1234, "CNY")]
    elif odd == "metadata":
        fields["metadata"] = MappingProxyType({"v": value})
    else:
        fields[odd] = value
    expected = json.dumps(
        entry_document(**fields), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    ).encode()

    assert entry_document_json(**fields) == expected

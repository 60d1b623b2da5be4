"""entry_request_hash must give exactly the bytes request_hash gives: keys posted before must still replay."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.canonical import entry_request_hash, post_pending_request_hash, request_hash, timestamp


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

"""Consistency and inclusion proofs: the streaming forms agree with RFC 6962's recursion,
verify, and reject every tampered proof."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.audit.merkle import (
    ProofError,
    collect_nodes,
    consistency_path,
    consistency_proof,
    fold_range,
    inclusion_path,
    inclusion_proof,
    leaf_hash,
    root_from_inclusion_proof,
    root_of,
    subtree_nodes,
    verify_consistency,
)

LEAVES = [leaf_hash(b"leaf %d" % i) for i in range(80)]


def _list_source(leaves: list[bytes]):  # type: ignore[no-untyped-def]
    return lambda begin, end: root_of(leaves[begin:end])


@given(st.integers(0, 80), st.integers(0, 80))
def test_consistency_path_matches_reference_and_verifies(a: int, b: int) -> None:
    """The proof from any size to any larger one is RFC 6962's SUBPROOF and verifies."""
    old, new = min(a, b), max(a, b)
    leaves = LEAVES[:new]
    proof = consistency_path(old, new, _list_source(leaves))
    assert proof == consistency_proof(leaves, old)
    verify_consistency(old, new, root_of(leaves[:old]), root_of(leaves), proof)


@given(st.integers(1, 80), st.data())
def test_inclusion_path_matches_reference_and_verifies(size: int, data: st.DataObject) -> None:
    """The audit path of any leaf is RFC 6962's PATH and leads to the root."""
    index = data.draw(st.integers(0, size - 1))
    leaves = LEAVES[:size]
    path = inclusion_path(index, size, _list_source(leaves))
    assert path == inclusion_proof(leaves, index)
    assert root_from_inclusion_proof(index, size, leaves[index], path) == root_of(leaves)


@given(st.integers(1, 79), st.integers(2, 80), st.data())
def test_any_changed_proof_hash_is_rejected(a: int, b: int, data: st.DataObject) -> None:
    """Flipping one bit of any proof hash makes the consistency proof fail."""
    old, new = min(a, b), max(a, b)
    if old == new:
        return
    leaves = LEAVES[:new]
    proof = consistency_proof(leaves, old)
    position = data.draw(st.integers(0, len(proof) - 1))
    bit = data.draw(st.integers(0, 255))
    changed = bytearray(proof[position])
    changed[bit // 8] ^= 1 << (bit % 8)
    proof[position] = bytes(changed)
    with pytest.raises(ProofError):
        verify_consistency(old, new, root_of(leaves[:old]), root_of(leaves), proof)


@given(st.integers(1, 40), st.integers(1, 40))
def test_a_rewritten_history_has_no_consistency_proof(old: int, extra: int) -> None:
    """A log that changed one early leaf cannot prove it extends its old root."""
    new = old + extra
    honest = LEAVES[:old]
    forked = [leaf_hash(b"rewritten"), *LEAVES[1:new]]
    proof = consistency_proof(forked, old)
    with pytest.raises(ProofError):
        verify_consistency(old, new, root_of(honest), root_of(forked), proof)


@pytest.mark.parametrize(
    ("old", "new", "proof", "message"),
    [
        pytest.param(5, 3, [], "shrunk", id="size-goes-back"),
        pytest.param(4, 4, [LEAVES[0]], "must be empty", id="equal-sizes-with-proof"),
        pytest.param(0, 4, [LEAVES[0]], "must be empty", id="from-zero-with-proof"),
        pytest.param(3, 8, [], "empty", id="missing-proof"),
        pytest.param(3, 8, [LEAVES[0]] * 12, "longer", id="proof-too-long"),
    ],
)
def test_malformed_proofs_are_named(old: int, new: int, proof: list[bytes], message: str) -> None:
    """Each malformed proof fails with a message naming what is wrong."""
    with pytest.raises(ProofError, match=message):
        verify_consistency(old, new, root_of(LEAVES[:old]), root_of(LEAVES[:new]), proof)


def test_equal_sizes_with_different_roots_is_a_split_view() -> None:
    """Two roots at one size are refused as two histories."""
    with pytest.raises(ProofError, match="two different roots"):
        verify_consistency(4, 4, root_of(LEAVES[:4]), root_of(LEAVES[1:5]), [])


@given(st.integers(0, 6), st.integers(0, 9), st.integers(1, 64), st.integers(0, 80))
def test_collected_nodes_fold_into_subtree_roots(level: int, j: int, width: int, lead: int) -> None:
    """Streaming the leaves once yields the root of every subtree a proof names: ranges
    that start on a multiple of a power of two and are no wider than it."""
    width = min(width, 1 << level)
    begin = j << level
    end = min(begin + width, len(LEAVES))
    if end <= begin:
        return
    start = max(0, begin - lead)
    nodes = collect_nodes(start, LEAVES[start:end], subtree_nodes([(begin, end)]))
    assert fold_range(begin, end, nodes) == root_of(LEAVES[begin:end])

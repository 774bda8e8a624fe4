"""RFC 6962 hashing: the frontier and compact ranges agree with the recursive definition."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.audit.merkle import (
    EMPTY_ROOT,
    Frontier,
    RangeBuilder,
    inclusion_proof,
    leaf_hash,
    node_hash,
    range_decomposition,
    root_from_inclusion_proof,
    root_of,
)

LEAVES = [leaf_hash(b"leaf %d" % i) for i in range(70)]


def test_hashes_are_domain_separated() -> None:
    """Leaves and nodes hash with the 0x00 and 0x01 prefixes of RFC 6962."""
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert node_hash(b"a", b"b") == hashlib.sha256(b"\x01ab").digest()
    assert root_of([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()


def test_known_root_of_rfc6962_shape() -> None:
    """Three leaves hash as node(node(l0, l1), l2): the split is at the largest power of two."""
    l0, l1, l2 = LEAVES[:3]
    assert root_of([l0, l1, l2]) == node_hash(node_hash(l0, l1), l2)


@pytest.mark.parametrize("n", range(0, 70))
def test_frontier_root_matches_reference(n: int) -> None:
    """Appending leaf by leaf gives the RFC root at every size."""
    frontier = Frontier()
    for leaf in LEAVES[:n]:
        frontier.append(leaf)
    assert frontier.size == n
    assert frontier.root() == root_of(LEAVES[:n])
    assert Frontier.unpack(n, frontier.packed()).root() == frontier.root()


@given(st.integers(0, 69), st.integers(0, 69))
def test_compact_range_merges_into_frontier(a: int, b: int) -> None:
    """Leaves [0, a) plus the compact range [a, b) give the root of [0, b)."""
    a, b = min(a, b), max(a, b)
    frontier = Frontier()
    for leaf in LEAVES[:a]:
        frontier.append(leaf)
    builder = RangeBuilder(a)
    for leaf in LEAVES[a:b]:
        builder.append(leaf)
    assert len(builder.hashes()) == len(range_decomposition(a, b))
    frontier.extend_range(b, builder.hashes())
    assert frontier.root() == root_of(LEAVES[:b])


@pytest.mark.parametrize(
    ("begin", "end", "hashes"),
    [
        pytest.param(0, 4, 2, id="too-many-hashes"),
        pytest.param(0, 4, 0, id="too-few-hashes"),
    ],
)
def test_compact_range_of_wrong_length_is_refused(begin: int, end: int, hashes: int) -> None:
    with pytest.raises(ValueError, match="compact range"):
        Frontier().extend_range(end, LEAVES[:hashes])


@given(st.integers(1, 70).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))))
def test_inclusion_proofs_verify(case: tuple[int, int]) -> None:
    """Every audit path leads from its leaf to the root; a wrong leaf does not."""
    n, index = case
    proof = inclusion_proof(LEAVES[:n], index)
    root = root_of(LEAVES[:n])
    assert root_from_inclusion_proof(index, n, LEAVES[index], proof) == root
    assert root_from_inclusion_proof(index, n, leaf_hash(b"forged"), proof) != root

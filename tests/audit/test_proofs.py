"""Proofs from the store agree with the reference model over the same leaves."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.audit.log import AuditLog
from gateway.audit.merkle import (
    consistency_proof,
    inclusion_proof,
    root_of,
    verify_consistency,
)
from gateway.audit.proofs import consistency, inclusion
from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore
from tests.audit.support import fill

SIZE = 77


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> tuple[AuditStore, list[bytes]]:
    data_dir: Path = tmp_path_factory.mktemp("proofs")
    store = AuditStore.open(data_dir=data_dir)

    async def scenario() -> None:
        log = AuditLog(store, KeyRing.load_or_create(data_dir), checkpoint_interval=0.01)
        await log.start()
        await fill(log, SIZE, per_round=7)  # checkpoints fall at assorted sizes
        await log.close()

    asyncio.run(scenario())
    leaves = [row.leaf_hash for row in store.iter_records(0, SIZE)]
    return store, leaves


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, SIZE), st.integers(0, SIZE))
def test_store_consistency_proof_is_the_reference(
    filled: tuple[AuditStore, list[bytes]], a: int, b: int
) -> None:
    """From any size to any later one, the store's proof is RFC 6962's and verifies,
    whether or not the old size has a stored checkpoint."""
    store, leaves = filled
    old, new = min(a, b), max(a, b)
    proof, old_root, new_root = consistency(store, old, new)
    assert proof == consistency_proof(leaves[:new], old)
    assert (old_root, new_root) == (root_of(leaves[:old]), root_of(leaves[:new]))
    verify_consistency(old, new, old_root, new_root, proof)


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, SIZE), st.lists(st.integers(0, SIZE - 1), min_size=1, max_size=6))
def test_store_inclusion_proofs_are_the_reference(
    filled: tuple[AuditStore, list[bytes]], size: int, seqs: list[int]
) -> None:
    """Several audit paths computed in one pass equal RFC 6962's PATH for each leaf."""
    store, leaves = filled
    seqs = [s % size for s in seqs]
    proofs = inclusion(store, seqs, size)
    for seq in seqs:
        assert proofs[seq] == inclusion_proof(leaves[:size], seq)

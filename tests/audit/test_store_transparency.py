"""The store's transparency tables and functions on SQLite and PostgreSQL alike:
cosignatures, frontiers for proofs, retention pruning."""

from __future__ import annotations

import asyncio

import pytest

from gateway.audit.log import AuditLog
from gateway.audit.merkle import consistency_proof, root_of
from gateway.audit.proofs import consistency
from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore
from tests.audit.support import make_entry


def _exercise(store: AuditStore, keyring: KeyRing) -> None:
    async def scenario() -> None:
        log = AuditLog(store, keyring)
        await log.start()
        for i in range(12):
            await log.append(*make_entry(i))
        await log.checkpoint()
        for i in range(12, 20):
            await log.append(*make_entry(i))
        await log.close()

    asyncio.run(scenario())
    leaves = list(store.iter_leaf_hashes(0, 20))
    frontier = store.frontier_at(12)
    assert frontier is not None
    assert frontier.root() == root_of(leaves[:12])
    proof, old, new = consistency(store, 12, 20)
    assert proof == consistency_proof(leaves, 12)
    assert (old, new) == (root_of(leaves[:12]), root_of(leaves))

    assert store.last_cosigned_size("w") == 0
    assert store.latest_cosigned_checkpoint() is None
    store.add_cosignature(12, "w", "\u2014 w first")
    store.add_cosignature(12, "w", "\u2014 w second")  # the first one stays
    store.add_cosignature(20, "v", "\u2014 v line")
    assert store.cosignatures(0, 100) == {12: ["\u2014 w first"], 20: ["\u2014 v line"]}
    assert store.last_cosigned_size("w") == 12
    latest = store.latest_cosigned_checkpoint()
    assert latest is not None
    assert latest.size == 20

    assert store.pruned_until() == 0
    assert store.first_seq_since(0, "2026-11-25T18:16:05.000000Z") == 5
    assert store.prune(0, 5) == 5
    assert store.pruned_until() == 5
    assert [row.body for row in store.iter_records(0, 6)][:5] == [b""] * 5
    assert list(store.iter_leaf_hashes(0, 20)) == leaves  # hashes are kept
    assert store.prune(0, 5) == 0  # idempotent


def test_sqlite_store(store: AuditStore, keyring: KeyRing) -> None:
    _exercise(store, keyring)


@pytest.mark.postgres
def test_postgres_store(pg_store: AuditStore, keyring: KeyRing) -> None:
    _exercise(pg_store, keyring)

"""Subject access: records by pseudonym, with inclusion proofs that check against a checkpoint."""

from __future__ import annotations

import asyncio

from gateway.audit.export import fresh_checkpoint
from gateway.audit.log import AuditLog
from gateway.audit.merkle import leaf_hash, root_from_inclusion_proof
from gateway.audit.people import PersonCommitter
from gateway.audit.record import canonical_bytes
from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore, subject_tag
from gateway.audit.subject import subject_records, with_inclusion_proofs
from tests.audit.support import TEST_COMMITTER, make_entry, make_record_v1

ALICE = "hmac-sha256:" + "a" * 64


def test_inclusion_proofs_check_against_the_checkpoint(store: AuditStore, keyring: KeyRing) -> None:
    async def scenario() -> None:
        log = AuditLog(store, keyring)
        await log.start()
        for i in range(37):
            await log.append(*make_entry(i, subjects=[ALICE] if i % 6 == 1 else ()))
        await log.close()

    asyncio.run(scenario())
    checkpoint = fresh_checkpoint(store, keyring)
    entries = with_inclusion_proofs(
        store, list(subject_records(store, [ALICE], TEST_COMMITTER)), checkpoint
    )
    assert [e.seq for e in entries] == [1, 7, 13, 19, 25, 31]
    for entry in entries:
        assert entry.proof is not None
        leaf = leaf_hash(canonical_bytes(entry.record))
        proof = [bytes.fromhex(h) for h in entry.proof]
        assert (
            root_from_inclusion_proof(entry.seq, checkpoint.size, leaf, proof)
            == checkpoint.root_hash
        )
    assert list(subject_records(store, [ALICE], TEST_COMMITTER, upstream="kred")) == []


def test_index_tag_collisions_are_filtered(store: AuditStore, keyring: KeyRing) -> None:
    """Two pseudonyms sharing the 60-bit index tag still only find their own records."""
    tail = "1" * 15
    alice, mallory = "hmac-sha256:" + "a" * 49 + tail, "hmac-sha256:" + "b" * 49 + tail
    assert subject_tag(alice) == subject_tag(mallory)

    async def scenario() -> None:
        log = AuditLog(store, keyring)
        await log.start()
        await log.append(*make_entry(0, subjects=[alice]))
        await log.append(*make_entry(1, subjects=[mallory]))
        await log.close()

    asyncio.run(scenario())
    assert [e.seq for e in subject_records(store, [alice], TEST_COMMITTER)] == [0]
    assert [e.seq for e in subject_records(store, [mallory], TEST_COMMITTER)] == [1]


def test_subject_tag_of_other_strings_is_stable() -> None:
    assert subject_tag("plain-id") == subject_tag("plain-id")
    assert subject_tag("plain-id") != subject_tag("plain-ie")
    assert subject_tag("hmac-sha256:" + "z" * 64) == subject_tag("hmac-sha256:" + "z" * 64)


def test_format_1_and_format_2_records_are_both_found(store: AuditStore, keyring: KeyRing) -> None:
    """A log written before format 2 keeps answering subject access after the upgrade."""

    async def scenario() -> None:
        log = AuditLog(store, keyring)
        await log.start()
        await log.append(make_record_v1(0, subjects=[ALICE]))
        await log.append(*make_entry(1, subjects=[ALICE]))
        await log.append(*make_entry(2, subjects=["hmac-sha256:" + "c" * 64]))
        await log.close()

    asyncio.run(scenario())
    entries = list(subject_records(store, [ALICE], TEST_COMMITTER))
    assert [e.seq for e in entries] == [0, 1]
    assert [type(e.record).__name__ for e in entries] == ["AuditRecordV1", "AuditRecord"]


def test_format_2_records_hold_no_pseudonym_in_clear(store: AuditStore, keyring: KeyRing) -> None:
    """Only a commitment names the person; the wrong salt key opens nothing."""

    async def scenario() -> None:
        log = AuditLog(store, keyring)
        await log.start()
        await log.append(*make_entry(0, subjects=[ALICE]))
        await log.close()

    asyncio.run(scenario())
    (row,) = store.iter_records(0, 1)
    assert ALICE.encode() not in row.body
    assert b"a" * 64 not in row.body
    other = PersonCommitter(b"\x08" * 32)
    assert list(subject_records(store, [ALICE], other)) == []

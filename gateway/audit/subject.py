"""Subject access: every audit record about one person, found by pseudonym.

Records never hold a raw identifier, only ``Pseudonymizer.pseudonym(namespace,
identifier)`` (a keyed HMAC), so the caller recomputes the pseudonym from the
identifier the person gives (and the namespace it belongs to, e.g.
``twitter_screen_name``) and looks that up in the ``audit_subject`` index.

Each entry carries ``seq``, the record's canonical bytes and, when asked for, an
RFC 6962 inclusion proof against a signed checkpoint, so the person can check
that the records shown are the ones in the log (verify with
:func:`gateway.audit.merkle.root_from_inclusion_proof` and the checkpoint's root).
Each proof streams the log's leaf hashes once (O(log n) memory): fine for the
handful of records about one person, not for bulk use.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import msgspec

from gateway.audit.checkpoint import Checkpoint
from gateway.audit.merkle import Frontier
from gateway.audit.people import PersonCommitter
from gateway.audit.record import AnyRecord, decode_record
from gateway.audit.store import AuditStore


class SubjectEntry(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    record: AnyRecord
    proof: list[str] | None = None  # hex audit path to the checkpoint's root


def subject_records(
    store: AuditStore,
    pseudonyms: Sequence[str],
    committer: PersonCommitter,
    *,
    upstream: str | None = None,
) -> Iterator[SubjectEntry]:
    """Every record naming one of ``pseudonyms`` (optionally only for ``upstream``), by seq.

    The index is keyed by a 64-bit tag of the pseudonym, so each hit is confirmed
    against the record itself: a format-1 pseudonym in clear, or a format-2
    commitment that ``committer`` opens. Tag collisions are dropped.
    """
    # A format-2 outcome does not repeat its intent's upstream: it belongs to the
    # upstream of the intent with its request id, which comes before it in the log.
    intents: set[str] = set()
    for row in store.subject_records(pseudonyms):
        record = decode_record(row.body)
        if next(committer.find(record, pseudonyms), None) is None:
            continue
        if upstream is not None:
            if record.upstream is None and record.request_id in intents:
                pass
            elif record.upstream != upstream:
                continue
            if record.kind == "lookup.intent":
                intents.add(record.request_id)
        yield SubjectEntry(seq=row.seq, record=record)


def with_inclusion_proofs(
    store: AuditStore, entries: Sequence[SubjectEntry], checkpoint: Checkpoint
) -> list[SubjectEntry]:
    """Attach RFC 6962 audit paths for ``entries`` in the tree of ``checkpoint.size``."""
    size = checkpoint.size
    wanted = [e for e in entries if e.seq < size]
    if not wanted:
        return list(entries)
    leaves = _LeafSource(store, size)
    proofs = {e.seq: [h.hex() for h in _proof(leaves, e.seq, 0, size)] for e in wanted}
    return [msgspec.structs.replace(e, proof=proofs.get(e.seq)) for e in entries]


class _LeafSource:
    def __init__(self, store: AuditStore, size: int) -> None:
        self.store, self.size = store, size

    def root(self, begin: int, end: int) -> bytes:
        frontier = Frontier()
        for row in self.store.iter_records(begin, end):
            frontier.append(row.leaf_hash)
        return frontier.root()


def _proof(leaves: _LeafSource, index: int, begin: int, end: int) -> list[bytes]:
    # RFC 6962 section 2.1.1: PATH(m, D[n]) recursion, with subtree roots read from the store.
    n = end - begin
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if index - begin < k:
        return [*_proof(leaves, index, begin, begin + k), leaves.root(begin + k, end)]
    return [*_proof(leaves, index, begin + k, end), leaves.root(begin, begin + k)]

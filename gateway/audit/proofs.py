"""RFC 6962 proofs from the store: consistency between two sizes, inclusion of records.

A proof names the roots of a few subtrees. They are computed in one streaming pass
over the leaf hashes (:func:`gateway.audit.merkle.collect_nodes`, O(log n) memory),
and the pass starts as late as it can: every subtree left of a size that has a
stored checkpoint is in that checkpoint's frontier. So the witness push, which asks
for a proof from the last size a witness co-signed (always a checkpoint) to the
newest one, reads only the leaves appended in between.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.audit.merkle import (
    collect_nodes,
    consistency_path,
    fold_range,
    inclusion_path,
    range_decomposition,
    subtree_nodes,
)
from gateway.audit.store import AuditStore

_Range = tuple[int, int]


class _Recorder:
    """A ``subtree_root`` that only notes which ranges a proof asks for."""

    def __init__(self) -> None:
        self.ranges: list[_Range] = []

    def __call__(self, begin: int, end: int) -> bytes:
        self.ranges.append((begin, end))
        return b""


def _roots(store: AuditStore, ranges: Iterable[_Range], hint: int | None) -> dict[_Range, bytes]:
    """The root of every range; ``hint`` is a size whose stored frontier may cover the left."""
    ranges = set(ranges)
    wanted = subtree_nodes(ranges)
    known: dict[tuple[int, int], bytes] = {}
    frontier = store.frontier_at(hint) if hint else None
    if frontier is not None:
        known = dict(zip(range_decomposition(0, hint or 0), frontier.hashes, strict=True))
    missing = {node for node in wanted if node not in known}
    if missing:
        begin = min(start for start, _ in missing)
        end = max(start + (1 << level) for start, level in missing)
        known.update(collect_nodes(begin, store.iter_leaf_hashes(begin, end), missing))
    return {r: fold_range(r[0], r[1], known) for r in ranges}


def consistency(store: AuditStore, old: int, new: int) -> tuple[list[bytes], bytes, bytes]:
    """The proof that the tree of ``new`` leaves extends the one of ``old``, and both roots."""
    recorder = _Recorder()
    consistency_path(old, new, recorder)
    roots = _roots(store, [*recorder.ranges, (0, old), (0, new)], old)
    proof = consistency_path(old, new, lambda b, e: roots[(b, e)])
    return proof, roots[(0, old)], roots[(0, new)]


def inclusion(store: AuditStore, seqs: Iterable[int], size: int) -> dict[int, list[bytes]]:
    """The audit path of each ``seq`` in the tree of ``size`` leaves, in one pass."""
    wanted = sorted(set(seqs))
    recorder = _Recorder()
    for seq in wanted:
        inclusion_path(seq, size, recorder)
    roots = _roots(store, recorder.ranges, size)
    return {seq: inclusion_path(seq, size, lambda b, e: roots[(b, e)]) for seq in wanted}

"""RFC 6962 Merkle tree hashing: leaves, nodes, roots, compact ranges, inclusion proofs.

The audit log is an append-only Merkle tree in the shape of RFC 6962 section 2.1
(Certificate Transparency; RFC 9162 keeps it):

    "The hash of a tree with one entry: MTH({d(0)}) = SHA-256(0x00 || d(0))."
    "MTH(D[n]) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n])), where k is the largest
     power of two smaller than n."
    The hash of an empty list is the hash of an empty string, SHA-256().

A leaf ``d(i)`` is the canonical bytes of the audit record with ``seq == i``
(:func:`gateway.audit.record.canonical_bytes`); ``seq`` is the 0-based leaf index.

A *compact range* ``[begin, end)`` is the list of roots of the maximal aligned
perfect subtrees covering exactly those leaves, left to right (a subtree of
``2**k`` leaves starting at ``s`` is aligned when ``s % 2**k == 0``). It is unique
for a given ``(begin, end)`` (:func:`range_decomposition`). The compact range
``[0, n)`` is the *frontier* of the tree: at most 64 hashes from which the root is
``node(h0, node(h1, ... node(h_{m-2}, h_{m-1})))``. The writer keeps the frontier,
so appending is O(1) amortised hashes per leaf and the root costs O(log n).
Exports use compact ranges to stand in for records left out of a filtered
export: merging ``[0, a)`` with ``[a, b)`` gives ``[0, b)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``: the hash of one leaf."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: the hash of an interior node."""
    return _sha256(b"\x01" + left + right).digest()


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes, straight from the RFC's recursive definition (reference model)."""
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaf_hashes[0]
    k = 1 << ((n - 1).bit_length() - 1)  # largest power of two smaller than n
    return node_hash(root_of(leaf_hashes[:k]), root_of(leaf_hashes[k:]))


def range_decomposition(begin: int, end: int) -> list[tuple[int, int]]:
    """The ``(start, level)`` of each subtree of the compact range ``[begin, end)``, in order."""
    if not 0 <= begin <= end:
        raise ValueError(f"invalid range [{begin}, {end})")
    out: list[tuple[int, int]] = []
    pos = begin
    while pos < end:
        # The largest aligned subtree that starts at pos and does not pass end.
        level = (pos & -pos).bit_length() - 1 if pos else 63
        while pos + (1 << level) > end:
            level -= 1
        out.append((pos, level))
        pos += 1 << level
    return out


class Frontier:
    """The compact range ``[0, size)``: append leaves, read the root.

    ``hashes`` holds the roots of the perfect subtrees for the set bits of
    ``size``, largest first. A failed batch must not advance the writer's
    frontier, so the writer appends to a :meth:`copy` and swaps it in on commit.
    """

    __slots__ = ("_hashes", "size")

    def __init__(self, size: int = 0, hashes: Iterable[bytes] = ()) -> None:
        self.size = size
        self._hashes = list(hashes)
        if len(self._hashes) != size.bit_count():
            raise ValueError(
                f"a frontier of size {size} has {size.bit_count()} hashes, got {len(self._hashes)}"
            )

    @property
    def hashes(self) -> list[bytes]:
        return list(self._hashes)

    def copy(self) -> Frontier:
        return Frontier(self.size, self._hashes)

    def append(self, leaf: bytes) -> None:
        """Append one leaf hash (``leaf_hash(data)``, not the data)."""
        hashes = self._hashes
        s = self.size
        h = leaf
        while s & 1:
            h = _sha256(b"\x01" + hashes.pop() + h).digest()
            s >>= 1
        hashes.append(h)
        self.size += 1

    def append_subtree(self, level: int, subtree_root: bytes) -> None:
        """Append a perfect subtree of ``2**level`` leaves; ``size`` must be aligned to it."""
        if self.size & ((1 << level) - 1):
            raise ValueError(f"a subtree of 2**{level} leaves cannot start at {self.size}")
        hashes = self._hashes
        s = self.size >> level
        h = subtree_root
        while s & 1:
            h = _sha256(b"\x01" + hashes.pop() + h).digest()
            s >>= 1
        hashes.append(h)
        self.size += 1 << level

    def extend_range(self, end: int, range_hashes: Sequence[bytes]) -> None:
        """Merge the compact range ``[size, end)`` (as produced by :class:`RangeBuilder`)."""
        parts = range_decomposition(self.size, end)
        if len(parts) != len(range_hashes):
            raise ValueError(
                f"the compact range [{self.size}, {end}) has {len(parts)} hashes, "
                f"got {len(range_hashes)}"
            )
        for (_, level), h in zip(parts, range_hashes, strict=True):
            self.append_subtree(level, h)

    def root(self) -> bytes:
        hashes = self._hashes
        if not hashes:
            return EMPTY_ROOT
        h = hashes[-1]
        for left in reversed(hashes[:-1]):
            h = _sha256(b"\x01" + left + h).digest()
        return h

    def packed(self) -> bytes:
        """The hashes concatenated, for storage next to ``size``."""
        return b"".join(self._hashes)

    @classmethod
    def unpack(cls, size: int, packed: bytes) -> Frontier:
        if len(packed) % HASH_SIZE:
            raise ValueError(f"a packed frontier is a multiple of {HASH_SIZE} bytes")
        return cls(size, [packed[i : i + HASH_SIZE] for i in range(0, len(packed), HASH_SIZE)])


class RangeBuilder:
    """Build the compact range ``[begin, end)`` from the leaf hashes of that range, streaming."""

    __slots__ = ("_stack", "begin", "end")

    def __init__(self, begin: int) -> None:
        self.begin = begin
        self.end = begin
        self._stack: list[tuple[int, int, bytes]] = []  # (start, level, hash)

    def append(self, leaf: bytes) -> None:
        stack = self._stack
        start, level, h = self.end, 0, leaf
        # Merge with the left neighbour while both are siblings under an aligned parent.
        while stack:
            s, lv, left = stack[-1]
            if lv != level or s % (1 << (level + 1)):
                break
            stack.pop()
            h = node_hash(left, h)
            start, level = s, level + 1
        stack.append((start, level, h))
        self.end += 1

    def hashes(self) -> list[bytes]:
        return [h for _, _, h in self._stack]


def compact_range(begin: int, leaves: Sequence[bytes]) -> list[bytes]:
    """The compact range ``[begin, begin + len(leaves))`` of these leaf hashes, in bulk.

    Same result as feeding a :class:`RangeBuilder`, but each subtree is folded
    level by level in a list comprehension (about twice as fast for long runs).
    """
    out: list[bytes] = []
    pos = 0
    sha = _sha256
    for _, level in range_decomposition(begin, begin + len(leaves)):
        layer = list(leaves[pos : pos + (1 << level)])
        pos += 1 << level
        while len(layer) > 1:
            layer = [
                sha(b"\x01" + layer[i] + layer[i + 1]).digest() for i in range(0, len(layer), 2)
            ]
        out.append(layer[0])
    return out


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """The RFC 6962 audit path for leaf ``index`` in the tree of ``len(leaf_hashes)`` leaves."""
    n = len(leaf_hashes)
    if not 0 <= index < n:
        raise ValueError(f"leaf {index} is not in a tree of size {n}")
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if index < k:
        return [*inclusion_proof(leaf_hashes[:k], index), root_of(leaf_hashes[k:])]
    return [*inclusion_proof(leaf_hashes[k:], index - k), root_of(leaf_hashes[:k])]


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """RFC 9162 section 2.1.3.2: the root implied by an audit path; compare it with a checkpoint."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise ValueError("the inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("the inclusion proof is shorter than the tree is deep")
    return r


# -- proofs over any source of subtree roots -----------------------------------------------
#
# The proofs below are written once against ``subtree_root(begin, end)``, the MTH of the
# leaves ``[begin, end)``. The reference model passes ``root_of`` over a list; the store
# (:mod:`gateway.audit.proofs`) passes roots it computed in one streaming pass.

SubtreeRoot = Callable[[int, int], bytes]


def inclusion_path(index: int, size: int, subtree_root: SubtreeRoot) -> list[bytes]:
    """RFC 6962 section 2.1.1, ``PATH(m, D[n])``, for leaf ``index`` of a tree of ``size``.

    "PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n]) for m < k; and
     PATH(m, D[n]) = PATH(m - k, D[k:n]) : MTH(D[0:k]) for m >= k"
    """
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    out: list[bytes] = []
    begin, end = 0, size
    while end - begin > 1:
        k = 1 << ((end - begin - 1).bit_length() - 1)
        if index - begin < k:
            out.append(subtree_root(begin + k, end))
            end = begin + k
        else:
            out.append(subtree_root(begin, begin + k))
            begin += k
    out.reverse()  # the recursion appends the deepest sibling first
    return out


def consistency_path(old: int, new: int, subtree_root: SubtreeRoot) -> list[bytes]:
    """RFC 6962 section 2.1.2, ``PROOF(m, D[n]) = SUBPROOF(m, D[n], true)``.

        "SUBPROOF(m, D[m], true) = {}
         SUBPROOF(m, D[m], false) = {MTH(D[m])}
         SUBPROOF(m, D[n], b) = SUBPROOF(m, D[0:k], b) : MTH(D[k:n]) for m <= k
         SUBPROOF(m, D[n], b) = SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k]) for m > k"

    An empty proof for ``old == 0`` (C2SP tlog-witness: "The proof MUST be empty if
    the old size is zero") and for ``old == new``.
    """
    if not 0 <= old <= new:
        raise ValueError(f"no consistency proof from size {old} to size {new}")
    if old == 0 or old == new:
        return []
    out: list[bytes] = []
    begin, end, whole = 0, new, True
    while end != old:
        k = 1 << ((end - begin - 1).bit_length() - 1)
        if old - begin <= k:
            out.append(subtree_root(begin + k, end))
            end = begin + k
        else:
            out.append(subtree_root(begin, begin + k))
            begin += k
            whole = False
    if not whole:
        out.append(subtree_root(begin, end))
    out.reverse()
    return out


def consistency_proof(leaf_hashes: Sequence[bytes], old: int) -> list[bytes]:
    """The reference model: RFC 6962's SUBPROOF recursion over a list, verbatim."""

    def subproof(m: int, leaves: Sequence[bytes], whole: bool) -> list[bytes]:
        n = len(leaves)
        if m == n:
            return [] if whole else [root_of(leaves)]
        k = 1 << ((n - 1).bit_length() - 1)
        if m <= k:
            return [*subproof(m, leaves[:k], whole), root_of(leaves[k:])]
        return [*subproof(m - k, leaves[k:], False), root_of(leaves[:k])]

    if not 0 <= old <= len(leaf_hashes):
        raise ValueError(f"no consistency proof from size {old} to size {len(leaf_hashes)}")
    return [] if old == 0 else subproof(old, leaf_hashes, True)


class ProofError(ValueError):
    """A proof does not verify; the message says which step failed."""


def verify_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 section 2.1.4.2: raise :class:`ProofError` unless ``proof`` shows that
    the tree of ``new`` leaves with ``new_root`` extends the one of ``old`` with ``old_root``."""
    if not 0 <= old <= new:
        raise ProofError(f"size {new} cannot extend size {old}: the log would have shrunk")
    if old == new:
        if proof:
            raise ProofError("a proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError(f"two different roots at the same size {old}")
        return
    if old == 0:
        if proof:
            raise ProofError("a proof from size 0 must be empty")
        return
    if not proof:
        raise ProofError("the proof is empty")
    path = list(proof)
    if old & (old - 1) == 0:  # "If first is an exact power of 2, then prepend first_hash"
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the proof is longer than the trees are deep")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the proof is shorter than the trees are deep")
    if fr != old_root:
        raise ProofError(f"the proof does not lead to the root at size {old}")
    if sr != new_root:
        raise ProofError(f"the proof does not lead to the root at size {new}")


def subtree_nodes(ranges: Iterable[tuple[int, int]]) -> set[tuple[int, int]]:
    """The aligned perfect subtrees ``(start, level)`` whose roots give every range's root."""
    return {node for begin, end in ranges for node in range_decomposition(begin, end)}


def collect_nodes(
    begin: int, leaves: Iterable[bytes], wanted: set[tuple[int, int]]
) -> dict[tuple[int, int], bytes]:
    """Stream leaf hashes from position ``begin``; keep the roots of the ``wanted`` aligned
    perfect subtrees that start at or after ``begin``. O(log n) memory, n - 1 node hashes."""
    found: dict[tuple[int, int], bytes] = {}
    stack: list[tuple[int, int, bytes]] = []  # (start, level, hash)
    position = begin
    for leaf in leaves:
        start, level, h = position, 0, leaf
        if (start, 0) in wanted:
            found[(start, 0)] = h
        while stack:
            s, lv, left = stack[-1]
            if lv != level or s % (1 << (level + 1)):
                break
            stack.pop()
            h = _sha256(b"\x01" + left + h).digest()
            start, level = s, level + 1
            if (start, level) in wanted:
                found[(start, level)] = h
        stack.append((start, level, h))
        position += 1
    return found


def fold_range(begin: int, end: int, nodes: dict[tuple[int, int], bytes]) -> bytes:
    """The root of ``[begin, end)`` from the roots of its compact range (right to left)."""
    parts = [nodes[node] for node in range_decomposition(begin, end)]
    if not parts:
        return EMPTY_ROOT
    h = parts[-1]
    for left in reversed(parts[:-1]):
        h = node_hash(left, h)
    return h

"""Streaming audit export: one self-contained, offline-verifiable JSONL file.

JSONL format ``score-gateway-audit-export/2`` (``/1`` files, without pruned lines
and with format-1 checkpoints only, stay valid and verify). Every line is one JSON object in
canonical form (msgspec, keys in the order below, no whitespace, ``\\n`` after
every line including the last); a verifier re-encodes each line and insists on
the same bytes. Lines, in order:

1. ``{"type":"header","format":"score-gateway-audit-export/2","origin":O,"size":N,
   "since":S,"until":U}``
   ``size`` is the tree size the export covers (records ``0 <= seq < N``);
   ``since``/``until`` the time window asked for (RFC 3339 strings or ``null``).
2. For every ``seq`` from 0 to N-1, in order, either
   * ``{"type":"record","seq":I,"record":R}`` where ``R`` is verbatim the
     canonical record bytes that leaf ``I`` hashes (``SHA-256(0x00 || R)``); or,
     for a run ``[a, b)`` of records outside the time window, one
     * ``{"type":"range","begin":a,"end":b,"hashes":[H,...]}``: the compact range of
       those leaves (hex subtree roots, :func:`gateway.audit.merkle.range_decomposition`
       gives their positions), so the tree can still be recomputed without them; or,
     for a run of records inside the window whose bodies retention dropped,
     * ``{"type":"pruned","begin":a,"end":b,"hashes":[H,...]}``, the same compact
       range; ``audit.prune`` records are always exported, and one of them must
       name a range covering it (:mod:`gateway.audit.retention`).
   After the line that completes leaf ``s-1`` comes the stored checkpoint of size
   ``s``, if there is one:
   * ``{"type":"checkpoint","origin":O,"size":s,"root":B64,"time":T,"key_id":K,"signature":B64,
     "format":2,"cosignatures":[LINE,...]}`` (see :mod:`gateway.audit.checkpoint`
     for the signed note; each LINE is a witness's C2SP cosignature line over it,
     :mod:`gateway.audit.note`; format-1 checkpoint lines end at ``signature``). Checkpoints
     whose size falls inside an omitted range are left out. The export signs a
     fresh checkpoint of size ``N`` first, so the last checkpoint always covers
     every record and range.
3. Last, the seal: ``{"type":"seal","origin":O,"size":N,"root":B64,"lines":L,
   "sha256":HEX,"time":T,"key_id":K,"signature":B64}``. ``lines`` counts all
   lines before the seal; ``sha256`` is SHA-256 over all of their bytes
   (newlines included); ``size`` and ``root`` repeat the last checkpoint.
   ``signature`` is Ed25519 over the text (each line ending in ``\\n``)
   ``{format}`` (the header's), ``{origin}``, ``{size}``, ``{root}``, ``{lines}``,
   ``{sha256}``, ``{time}``. Cutting the file anywhere removes or breaks the seal.

Why a filtered export still verifies: the ranges stand in for the left-out
leaves, so the verifier recomputes every root and checks the final signed
checkpoint exactly as for a full export; it learns nothing about the left-out
records but their count and subtree hashes.

The CSV for spreadsheets (one row per lookup, or per record) is
:mod:`gateway.audit.lookup_csv`: it carries no hashes or signatures and cannot be
verified.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import time
from collections.abc import Callable, Iterator
from typing import IO

import msgspec

from gateway.audit.checkpoint import Checkpoint, b64, sign_checkpoint
from gateway.audit.merkle import RangeBuilder
from gateway.audit.record import rfc3339
from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore

FORMAT = "score-gateway-audit-export/2"
#: Every export format the verifier reads. /2 adds checkpoint lines of format 2
#: (``"format":2`` and witness ``cosignatures``); /1 files stay valid forever.
FORMATS = ("score-gateway-audit-export/1", FORMAT)
CHECKPOINT_FORMAT = 2
#: How every ``audit.prune`` record begins (format 2): exports always carry them.
PRUNE_PREFIX = b'{"v":2,"kind":"audit.prune",'
_PRUNED_RANGE = re.compile(r"^pruned \[(\d+), (\d+)\)")


def prune_range(detail: str | None) -> tuple[int, int] | None:
    """The ``[from, until)`` an ``audit.prune`` record's detail names
    (:mod:`gateway.audit.retention` writes it)."""
    match = _PRUNED_RANGE.match(detail or "")
    if match is None:
        return None
    begin, end = int(match.group(1)), int(match.group(2))
    return (begin, end) if begin < end else None


class HeaderLine(
    msgspec.Struct,
    tag="header",
    tag_field="type",
    frozen=True,
    forbid_unknown_fields=True,
    kw_only=True,
):
    format: str
    origin: str
    size: int
    since: str | None
    until: str | None


class RecordLine(
    msgspec.Struct,
    tag="record",
    tag_field="type",
    frozen=True,
    forbid_unknown_fields=True,
    kw_only=True,
):
    seq: int
    # The stored bytes verbatim. Records come in more than one format
    # (docs/decisions/0001-audit-record-format.md), so the verifier decodes and
    # re-encodes them separately with :func:`gateway.audit.record.decode_record`.
    record: msgspec.Raw


class RangeLine(
    msgspec.Struct,
    tag="range",
    tag_field="type",
    frozen=True,
    forbid_unknown_fields=True,
    kw_only=True,
):
    begin: int
    end: int
    hashes: list[str]


class PrunedLine(
    msgspec.Struct,
    tag="pruned",
    tag_field="type",
    frozen=True,
    forbid_unknown_fields=True,
    kw_only=True,
):
    """Records ``[begin, end)`` inside the window whose bodies retention dropped: only
    their compact range is left. An ``audit.prune`` record in the export covers them."""

    begin: int
    end: int
    hashes: list[str]


class CheckpointLine(
    msgspec.Struct,
    tag="checkpoint",
    tag_field="type",
    frozen=True,
    forbid_unknown_fields=True,
    kw_only=True,
    omit_defaults=True,
):
    """A signed checkpoint. Format 1 lines end at ``signature``; format 2 lines add
    ``"format":2`` and the witnesses' C2SP cosignature lines (possibly none)."""

    origin: str
    size: int
    root: str
    time: str
    key_id: str
    signature: str
    format: int = 1
    cosignatures: list[str] = []

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(
            origin=self.origin,
            size=self.size,
            root=self.root,
            time=self.time,
            key_id=self.key_id,
            signature=self.signature,
        )


class SealLine(
    msgspec.Struct,
    tag="seal",
    tag_field="type",
    frozen=True,
    forbid_unknown_fields=True,
    kw_only=True,
):
    origin: str
    size: int
    root: str
    lines: int
    sha256: str
    time: str
    key_id: str
    signature: str

    def message(self, format: str = FORMAT) -> bytes:
        """The signed text; ``format`` is the export header's (each format signs its own)."""
        return (
            f"{format}\n{self.origin}\n{self.size}\n{self.root}\n{self.lines}\n"
            f"{self.sha256}\n{self.time}\n"
        ).encode()


ExportLine = HeaderLine | RecordLine | RangeLine | PrunedLine | CheckpointLine | SealLine

line_encoder = msgspec.json.Encoder(order="deterministic")


def _checkpoint_line(checkpoint: Checkpoint, cosignatures: list[str]) -> bytes:
    line = CheckpointLine(
        origin=checkpoint.origin,
        size=checkpoint.size,
        root=checkpoint.root,
        time=checkpoint.time,
        key_id=checkpoint.key_id,
        signature=checkpoint.signature,
        format=CHECKPOINT_FORMAT,
        cosignatures=cosignatures,
    )
    return line_encoder.encode(line) + b"\n"


def _cosigned(
    store: AuditStore, checkpoints: Iterator[Checkpoint], batch: int = 1000
) -> Iterator[tuple[Checkpoint, list[str]]]:
    """Each checkpoint with its stored cosignatures, read a batch at a time."""
    while True:
        chunk = list(itertools.islice(checkpoints, batch))
        if not chunk:
            return
        lines = store.cosignatures(chunk[0].size, chunk[-1].size)
        for checkpoint in chunk:
            yield checkpoint, lines.get(checkpoint.size, [])


def fresh_checkpoint(
    store: AuditStore, keyring: KeyRing, *, clock: Callable[[], float] = time.time
) -> Checkpoint:
    """A checkpoint of the committed head, reusing the stored one if the size has one.

    Usable while a gateway is appending: the head row and the records it covers
    are committed together, so the checkpoint covers a consistent prefix.
    """
    head = store.head()
    existing = store.checkpoint_at(head.size)
    if existing is not None:
        return existing
    checkpoint = sign_checkpoint(
        keyring, origin=store.origin, size=head.size, root=head.root(), timestamp=clock()
    )
    if not store.add_checkpoint(checkpoint, head):
        return store.checkpoint_at(head.size) or checkpoint
    return checkpoint


def iter_export_lines(
    store: AuditStore,
    checkpoint: Checkpoint,
    *,
    since: str | None = None,
    until: str | None = None,
) -> Iterator[bytes]:
    """The lines before the seal (each ending in ``\\n``), up to ``checkpoint.size``."""
    size = checkpoint.size
    yield (
        line_encoder.encode(
            HeaderLine(format=FORMAT, origin=checkpoint.origin, size=size, since=since, until=until)
        )
        + b"\n"
    )
    # Earlier checkpoints go where their size is reached; ``checkpoint`` (size N) goes last.
    checkpoints = _cosigned(store, store.iter_checkpoints(0, size - 1))
    pending, pending_lines = next(checkpoints, (None, []))
    while pending is not None and pending.size == 0:
        yield _checkpoint_line(pending, pending_lines)
        pending, pending_lines = next(checkpoints, (None, []))
    gap: RangeBuilder | None = None
    pruned = False  # whether ``gap`` holds pruned records (inside the window) or omitted ones
    for row in store.iter_records(0, size):
        inside = (since is None or row.time >= since) and (until is None or row.time < until)
        # Prune records authorise the pruned ranges: every export that has a range keeps them.
        inside = inside or row.body.startswith(PRUNE_PREFIX)
        hashes_only = not inside or not row.body
        if hashes_only:
            if gap is not None and pruned != (inside and not row.body):
                yield _range_line(gap, pruned)
                gap = None
            if gap is None:
                gap, pruned = RangeBuilder(row.seq), inside
            gap.append(row.leaf_hash)
        else:
            if gap is not None:
                yield _range_line(gap, pruned)
                gap = None
            yield b'{"type":"record","seq":%d,"record":%s}\n' % (row.seq, row.body)
        # Checkpoints up to this size are passed; those inside an omitted range are skipped.
        while pending is not None and pending.size <= row.seq + 1:
            if pending.size == row.seq + 1 and gap is None:
                yield _checkpoint_line(pending, pending_lines)
            pending, pending_lines = next(checkpoints, (None, []))
    if gap is not None:
        yield _range_line(gap, pruned)
    yield _checkpoint_line(checkpoint, store.cosignatures(size, size).get(size, []))


def _range_line(gap: RangeBuilder, pruned: bool = False) -> bytes:
    hashes = [h.hex() for h in gap.hashes()]
    kind = PrunedLine if pruned else RangeLine
    return line_encoder.encode(kind(begin=gap.begin, end=gap.end, hashes=hashes)) + b"\n"


class ExportError(Exception):
    """The export asked for cannot be made (no witnessed checkpoint yet)."""


def witnessed_checkpoint(store: AuditStore) -> Checkpoint:
    checkpoint = store.latest_cosigned_checkpoint()
    if checkpoint is None:
        raise ExportError("no checkpoint has been cosigned by a witness yet")
    return checkpoint


def iter_export_chunks(
    store: AuditStore,
    keyring: KeyRing,
    *,
    since: str | None = None,
    until: str | None = None,
    chunk_size: int = 1 << 20,
    clock: Callable[[], float] = time.time,
    witnessed: bool = False,
) -> Iterator[bytes]:
    """The whole sealed JSONL export as chunks of about ``chunk_size`` bytes.

    Signs a fresh checkpoint first (or re-uses the one of the current size). With
    ``witnessed``, ends instead at the newest checkpoint a witness has cosigned, so
    that ``verify --min-witnesses`` holds for the export's final checkpoint; raises
    :class:`ExportError` if there is none. For streaming responses;
    :func:`export_jsonl` writes the same bytes to a file.
    """
    checkpoint = (
        witnessed_checkpoint(store) if witnessed else fresh_checkpoint(store, keyring, clock=clock)
    )
    digest = hashlib.sha256()
    lines = 0
    buffer: list[bytes] = []
    buffered = 0
    for line in iter_export_lines(store, checkpoint, since=since, until=until):
        buffer.append(line)
        buffered += len(line)
        lines += 1
        if buffered >= chunk_size:
            chunk = b"".join(buffer)
            digest.update(chunk)
            yield chunk
            buffer.clear()
            buffered = 0
    chunk = b"".join(buffer)
    digest.update(chunk)
    yield chunk + seal_line(
        keyring, checkpoint, lines=lines, sha256=digest.hexdigest(), clock=clock
    )


def seal_line(
    keyring: KeyRing,
    checkpoint: Checkpoint,
    *,
    lines: int,
    sha256: str,
    clock: Callable[[], float] = time.time,
) -> bytes:
    """The signed last line of an export, with its newline."""
    unsigned = SealLine(
        origin=checkpoint.origin,
        size=checkpoint.size,
        root=checkpoint.root,
        lines=lines,
        sha256=sha256,
        time=rfc3339(clock()),
        key_id=keyring.key_id,
        signature="",
    )
    seal = msgspec.structs.replace(unsigned, signature=b64(keyring.sign(unsigned.message())))
    return line_encoder.encode(seal) + b"\n"


def export_jsonl(
    store: AuditStore,
    keyring: KeyRing,
    out: IO[bytes],
    *,
    since: str | None = None,
    until: str | None = None,
    clock: Callable[[], float] = time.time,
    witnessed: bool = False,
) -> SealLine:
    """Write a sealed JSONL export of the whole log (time window optional) to ``out``."""
    last = b""
    for chunk in iter_export_chunks(
        store, keyring, since=since, until=until, clock=clock, witnessed=witnessed
    ):
        out.write(chunk)
        last = chunk
    seal: SealLine = msgspec.json.decode(last[last.rfind(b"\n", 0, -1) + 1 :], type=SealLine)
    return seal

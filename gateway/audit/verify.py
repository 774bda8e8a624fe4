"""Offline verifier for JSONL audit exports: no database, no network, constant memory.

The export format is documented in :mod:`gateway.audit.export`. Verification is a
chain of small steps; the first one that fails ends it, naming a stable code and
the line (1-based) where the evidence shows the problem:

==================  ==============================================================
code                meaning
==================  ==============================================================
``malformed``       a line is not JSON of a known line type, or lines are out of place
``non_canonical``   a line decodes but is not byte-for-byte its canonical encoding
``modified``        the records before a checkpoint (or the sealed bytes) are not
                    what was signed; the message names the seq range
``inserted``        a record, range or line that the signed tree or seal does not have
``deleted``         records (or lines) missing: a seq gap that never closes
``reordered``       records or checkpoints out of order
``duplicated``      a line repeated (the same record twice in a row, a checkpoint twice)
``truncated``       the file ends before its seal, or mid-line
``bad_signature``   a checkpoint or the seal does not verify under its key
``unknown_key``     a checkpoint or the seal names a key id not among the given keys
``origin_mismatch`` a checkpoint of another log (origin) than the header's
==================  ==============================================================

Steps per line: decode (``malformed``) → re-encode and compare bytes
(``non_canonical``) → position (seq contiguity: ``reordered``, ``deleted``,
``duplicated``, ``inserted``) → for a record, hash the leaf into the Merkle
frontier; for a checkpoint: origin, key, signature, size against the records
seen, root against the recomputed root (``modified``) → for the seal: key,
signature, line count, SHA-256 of all preceding bytes, final size and root.

The public keys are pinned by the caller (``--public-key``), never taken from
the export. What this cannot detect on its own (reliability anchors (b)): a
whole-log rewrite by someone holding the signing key, or a fork shown to
different people; compare the checkpoints with ones kept elsewhere for that.

Speed: no per-record signature exists to check; each record line costs one
msgspec decode, one encode, one leaf SHA-256, about one node hash and its share
of the whole-file SHA-256 (~9 us of CPU here: SHA-256 runs at ~290 MB/s on this
machine). Files of 16 MiB or more are
read in 1 MiB blocks that worker processes decode, check and fold into compact
ranges (:func:`scan_block`) while this process merges them in order; at most
two blocks per worker are in flight, so memory stays constant. Any block the
fast path does not fully understand (every failure included) is re-run line by
line from the same state, so both paths report the same code and line.
"""

from __future__ import annotations

import collections
import hashlib
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit.checkpoint import b64, strict_b64decode
from gateway.audit.export import (
    FORMAT,
    CheckpointLine,
    ExportLine,
    HeaderLine,
    RangeLine,
    RecordLine,
    SealLine,
    line_encoder,
)
from gateway.audit.merkle import Frontier, compact_range
from gateway.audit.record import canonical_bytes as canonical_record
from gateway.audit.record import decode_record
from gateway.audit.signing import load_public_keys, verify_signature

CODES = (
    "malformed",
    "non_canonical",
    "modified",
    "inserted",
    "deleted",
    "reordered",
    "duplicated",
    "truncated",
    "bad_signature",
    "unknown_key",
    "origin_mismatch",
)

BLOCK_SIZE = 1 << 20
PARALLEL_FROM = 16 << 20


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    code: str | None = None
    line: int | None = None
    message: str = ""
    records: int = 0  # record lines verified
    size: int = 0  # tree size covered (records + omitted ranges)
    checkpoints: int = 0
    root: str | None = None
    key_ids: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        if self.ok:
            return (
                f"OK: {self.records} records, tree size {self.size}, {self.checkpoints} "
                f"checkpoints, root {self.root}, keys {', '.join(self.key_ids)}"
            )
        return f"FAIL line {self.line}: {self.code}: {self.message}"


class _Failure(Exception):
    def __init__(self, code: str, line: int, message: str) -> None:
        super().__init__(message)
        self.code, self.line, self.message = code, line, message


class _Gap(Exception):
    """``found`` came where ``expected`` was due: deleted or reordered, decided by lookahead."""

    def __init__(self, line: int, expected: int, found: int, what: str) -> None:
        super().__init__(what)
        self.line, self.expected, self.found, self.what = line, expected, found, what


_decoder = msgspec.json.Decoder(ExportLine)
_encode = line_encoder.encode
_sha256 = hashlib.sha256


class _Verifier:
    def __init__(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        self.keys = keys
        self.frontier = Frontier()
        self.header: HeaderLine | None = None
        self.digest = _sha256()
        self.lines = 0  # complete lines consumed
        self.records = 0
        self.checkpoints = 0
        self.last_checkpoint: CheckpointLine | None = None
        self.last_checkpoint_line = b""
        self.verified_upto = 0  # tree size covered by the last matching checkpoint
        self.prev_record_line = b""
        self.prev_seq = -1
        self.seal: SealLine | None = None
        self.key_ids: set[str] = set()

    # -- the serial path: one line at a time --------------------------------------------

    def feed_block(self, data: bytes, rest: Iterator[bytes]) -> None:
        """Verify one block of complete lines; ``rest`` is what follows (for lookahead)."""
        lines = data.split(b"\n")
        lines.pop()  # the empty string after the last newline
        base = self.lines
        decode = _decoder.decode
        encode = _encode
        sha = _sha256
        append = self.frontier.append
        try:
            for index, line in enumerate(lines):
                number = base + index + 1
                if self.seal is not None:
                    raise _Failure("inserted", number, "a line follows the seal")
                try:
                    obj = decode(line)
                except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                    raise _Failure("malformed", number, str(exc)) from None
                if encode(obj) != line:
                    raise _Failure("non_canonical", number, "the line is not in canonical encoding")
                if type(obj) is RecordLine:
                    seq = obj.seq
                    if seq != self.frontier.size:
                        self._out_of_place_record(number, obj, line)
                    # The record's bytes are verbatim between the prefix and the final "}".
                    body = line[33 + len(str(seq)) : -1]
                    try:
                        canonical = canonical_record(decode_record(body)) == body
                    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                        raise _Failure("malformed", number, str(exc)) from None
                    if not canonical:
                        raise _Failure(
                            "non_canonical", number, "the record is not in canonical encoding"
                        )
                    append(sha(b"\x00" + body).digest())
                    self.records += 1
                    self.prev_record_line = line
                    self.prev_seq = seq
                    self._check_within_header(number)
                elif type(obj) is SealLine:
                    if index:
                        self.digest.update(b"\n".join(lines[:index]) + b"\n")
                    self._seal(number, obj)
                else:
                    self._other(number, obj, line)
        except _Gap as gap:
            lookahead = _lookahead(gap.line + 1, lines[gap.line - base :], rest)
            raise self._classify_gap(gap, lookahead) from None
        if self.seal is None:
            self.digest.update(data)
        self.lines = base + len(lines)

    def finish(self, leftover: bytes) -> None:
        if self.seal is not None and leftover:
            raise _Failure("inserted", self.lines + 1, "bytes follow the seal")
        if leftover:
            raise _Failure("truncated", self.lines + 1, "the file ends in the middle of a line")
        if self.header is None:
            raise _Failure("truncated", 1, "the export is empty")
        if self.seal is None:
            raise _Failure(
                "truncated",
                self.lines + 1,
                f"the export ends after line {self.lines} without its seal",
            )

    # -- the parallel path: worker processes scan blocks, this process merges -------------

    def apply_scan(self, data: bytes, scan: list[_ScanItem] | None) -> bool:
        """Merge a worker's scan of ``data``; False (state unchanged) if it needs the serial path.

        The fast path only takes blocks made of well-formed records in sequence and
        checkpoint or range lines; anything unusual (including every failure) is
        re-run line by line from the same state, so both paths report alike.
        """
        if scan is None or self.header is None or self.seal is not None:
            return False
        saved = self._save()
        lines: list[bytes] | None = None
        base = self.lines
        try:
            for item in scan:
                if type(item) is int:
                    if lines is None:
                        lines = data.split(b"\n")
                    line = lines[item]
                    obj = _decoder.decode(line)
                    if type(obj) not in (CheckpointLine, RangeLine):
                        raise _Fallback
                    self._other(base + item + 1, obj, line)
                    self.prev_record_line = b""
                    continue
                assert isinstance(item, tuple)
                _, first, count, range_hashes = item
                if first != self.frontier.size or first + count > self.header.size:
                    raise _Fallback
                self.frontier.extend_range(first + count, range_hashes)
                self.records += count
                self.prev_seq = first + count - 1
                self.prev_record_line = _last_line(data)
        except (_Fallback, _Failure, _Gap, ValueError):
            self._restore(saved)
            return False
        self.digest.update(data)
        self.lines = base + data.count(b"\n")
        return True

    def _save(self) -> dict[str, object]:
        state = {name: getattr(self, name) for name in _STATE}
        state["frontier"] = self.frontier.copy()
        state["digest"] = self.digest.copy()
        state["key_ids"] = set(self.key_ids)
        return state

    def _restore(self, state: dict[str, object]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    # -- positions -----------------------------------------------------------------------

    def _out_of_place_record(self, number: int, obj: RecordLine, line: bytes) -> None:
        expected = self.frontier.size
        seq = obj.seq
        if self.header is None:
            raise _Failure("malformed", number, "the first line must be the export header")
        if seq > expected:
            raise _Gap(number, expected, seq, f"record seq {seq}")
        if line == self.prev_record_line:
            raise _Failure("duplicated", number, f"record seq {seq} repeats line {number - 1}")
        if seq == self.prev_seq:
            raise _Failure(
                "inserted",
                number,
                f"a second, different record claims seq {seq} (line {number - 1})",
            )
        raise _Failure("reordered", number, f"record seq {seq} follows seq {expected - 1}")

    def _check_within_header(self, number: int) -> None:
        if self.header is None:
            raise _Failure("malformed", number, "the first line must be the export header")
        if self.frontier.size > self.header.size:
            raise _Failure(
                "inserted",
                number,
                f"record seq {self.frontier.size - 1} is beyond the header size {self.header.size}",
            )

    def _classify_gap(
        self, gap: _Gap, lookahead: Iterator[tuple[int, ExportLine | None]]
    ) -> _Failure:
        for number, obj in lookahead:
            covers = (type(obj) is RecordLine and obj.seq == gap.expected) or (
                type(obj) is RangeLine and obj.begin <= gap.expected < obj.end
            )
            if covers:
                return _Failure(
                    "reordered",
                    gap.line,
                    f"{gap.what} comes before seq {gap.expected} (line {number})",
                )
        last = gap.found - 1
        missing = f"seq {gap.expected}" if last == gap.expected else f"seq {gap.expected}..{last}"
        return _Failure("deleted", gap.line, f"records {missing} are missing before {gap.what}")

    # -- the other line types ------------------------------------------------------------

    def _other(self, number: int, obj: ExportLine, line: bytes) -> None:
        if type(obj) is HeaderLine:
            if self.header is not None:
                code = "duplicated" if number == 2 else "inserted"
                raise _Failure(code, number, "a second header line")
            if number != 1:
                raise _Failure("malformed", number, "the header must be the first line")
            if obj.format != FORMAT:
                raise _Failure("malformed", number, f"unsupported export format {obj.format!r}")
            self.header = obj
            return
        if self.header is None:
            raise _Failure("malformed", number, "the first line must be the export header")
        if type(obj) is CheckpointLine:
            self._checkpoint(number, obj, line)
        elif type(obj) is RangeLine:
            self._range(number, obj)

    def _range(self, number: int, obj: RangeLine) -> None:
        expected = self.frontier.size
        if obj.begin > expected:
            raise _Gap(number, expected, obj.begin, f"omitted range [{obj.begin}, {obj.end})")
        if obj.begin < expected:
            raise _Failure(
                "reordered",
                number,
                f"omitted range [{obj.begin}, {obj.end}) follows seq {expected - 1}",
            )
        if obj.end <= obj.begin:
            raise _Failure("malformed", number, f"empty omitted range [{obj.begin}, {obj.end})")
        hashes: list[bytes] = []
        for position, text in enumerate(obj.hashes):
            if len(text) != 64 or text != text.lower():
                raise _Failure(
                    "malformed", number, f"hashes[{position}] is not 64 lowercase hex digits"
                )
            try:
                hashes.append(bytes.fromhex(text))
            except ValueError:
                raise _Failure("malformed", number, f"hashes[{position}] is not hex") from None
        try:
            self.frontier.extend_range(obj.end, hashes)
        except ValueError as exc:
            raise _Failure("malformed", number, str(exc)) from None
        self.prev_record_line = b""
        self.prev_seq = obj.end - 1
        self._check_within_header(number)

    def _checkpoint(self, number: int, obj: CheckpointLine, line: bytes) -> None:
        assert self.header is not None
        if obj.origin != self.header.origin:
            raise _Failure(
                "origin_mismatch",
                number,
                f"checkpoint of log {obj.origin!r} in an export of {self.header.origin!r}",
            )
        checkpoint = obj.checkpoint()
        key = self.keys.get(obj.key_id)
        if key is None:
            raise _Failure(
                "unknown_key", number, f"checkpoint signed by unknown key id {obj.key_id}"
            )
        if not checkpoint.verify(key):
            raise _Failure("bad_signature", number, f"checkpoint at size {obj.size}")
        self.key_ids.add(obj.key_id)
        last = self.last_checkpoint
        if last is not None and obj.size <= last.size:
            if line == self.last_checkpoint_line:
                raise _Failure("duplicated", number, f"checkpoint at size {obj.size} repeats")
            raise _Failure(
                "reordered", number, f"checkpoint at size {obj.size} follows size {last.size}"
            )
        size = self.frontier.size
        if obj.size > size:
            raise _Failure(
                "deleted",
                number,
                f"checkpoint at size {obj.size} follows only {size} records: "
                f"seq {size}..{obj.size - 1} are missing",
            )
        if obj.size < size:
            raise _Failure(
                "inserted",
                number,
                f"{size} records precede the checkpoint at size {obj.size}",
            )
        if obj.root != b64(self.frontier.root()):
            raise _Failure(
                "modified",
                number,
                f"records seq {self.verified_upto}..{obj.size - 1} do not match the checkpoint "
                f"at size {obj.size}",
            )
        self.verified_upto = obj.size
        self.last_checkpoint = obj
        self.last_checkpoint_line = line
        self.checkpoints += 1

    def _seal(self, number: int, seal: SealLine) -> None:
        if self.header is None:
            raise _Failure("malformed", number, "the first line must be the export header")
        key = self.keys.get(seal.key_id)
        if key is None:
            raise _Failure("unknown_key", number, f"seal signed by unknown key id {seal.key_id}")
        signature = strict_b64decode(seal.signature)
        if signature is None or not verify_signature(key, signature, seal.message()):
            raise _Failure("bad_signature", number, "the seal's signature does not verify")
        self.key_ids.add(seal.key_id)
        lines = number - 1
        if seal.lines != lines:
            code = "deleted" if lines < seal.lines else "inserted"
            raise _Failure(
                code, number, f"the seal covers {seal.lines} lines, the file has {lines} before it"
            )
        if self.digest.hexdigest() != seal.sha256:
            raise _Failure("modified", number, "the lines before the seal are not the sealed bytes")
        if seal.origin != self.header.origin:
            raise _Failure("origin_mismatch", number, f"seal of log {seal.origin!r}")
        last = self.last_checkpoint
        if last is None or last.size != seal.size or last.root != seal.root:
            raise _Failure("malformed", number, "the seal does not repeat the last checkpoint")
        if self.frontier.size != seal.size or self.header.size != seal.size:
            raise _Failure(
                "inserted",
                number,
                f"records beyond the last checkpoint (size {seal.size}): {self.frontier.size}",
            )
        self.seal = seal


def _lookahead(
    first: int, rest_lines: list[bytes], rest: Iterator[bytes]
) -> Iterator[tuple[int, ExportLine | None]]:
    """Decode the lines after a gap (failure path only) to tell deletion from reordering."""

    def decoded(line: bytes) -> ExportLine | None:
        try:
            obj: ExportLine = _decoder.decode(line)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return None
        return obj

    def lines() -> Iterator[bytes]:
        yield from rest_lines
        for block in rest:
            yield from block.split(b"\n")[:-1]

    for number, line in enumerate(lines(), first):
        yield number, decoded(line)


def _last_line(data: bytes) -> bytes:
    return data[data.rfind(b"\n", 0, len(data) - 1) + 1 : -1]


class _Fallback(Exception):
    """The fast path declines a block; the serial path re-runs it."""


# (line index of a non-record line) or (line index, first seq, count, compact range hashes)
_ScanItem = int | tuple[int, int, int, list[bytes]]

_STATE = (
    "header", "lines", "records", "checkpoints", "last_checkpoint", "last_checkpoint_line",
    "verified_upto", "prev_record_line", "prev_seq", "seal", "key_ids",
)  # fmt: skip


def scan_block(data: bytes) -> list[_ScanItem] | None:
    """Worker side: decode, check canonical form and hash a block; None if anything is odd.

    Runs of consecutive record seqs come back as their compact range (RFC 6962
    subtree roots), so the merging process does O(log n) hashing per block.
    """
    decode = _decoder.decode
    encode = _encode
    sha = _sha256
    lines = data.split(b"\n")
    lines.pop()
    items: list[_ScanItem] = []
    leaves: list[bytes] = []
    start = first = expected = -1
    for index, line in enumerate(lines):
        try:
            obj = decode(line)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return None
        if encode(obj) != line:
            return None
        if type(obj) is RecordLine:
            seq = obj.seq
            if seq != expected:
                if leaves:
                    items.append((start, first, len(leaves), compact_range(first, leaves)))
                    leaves = []
                start, first = index, seq
            body = line[33 + len(str(seq)) : -1]
            try:
                if canonical_record(decode_record(body)) != body:
                    return None
            except (msgspec.DecodeError, UnicodeDecodeError):
                return None
            leaves.append(sha(b"\x00" + body).digest())
            expected = seq + 1
        else:
            if leaves:
                items.append((start, first, len(leaves), compact_range(first, leaves)))
                leaves = []
            expected = -1
            items.append(index)
    if leaves:
        items.append((start, first, len(leaves), compact_range(first, leaves)))
    return items


class _LineBlocks:
    """Blocks of whole lines from blocks of bytes; ``leftover`` is a final partial line."""

    def __init__(self, blocks: Iterable[bytes], progress: _Progress | None) -> None:
        self._blocks = iter(blocks)
        self._progress = progress
        self.leftover = b""

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        while True:
            block = next(self._blocks)
            if self._progress is not None:
                self._progress.advance(len(block))
            data = self.leftover + block if self.leftover else block
            end = data.rfind(b"\n") + 1
            self.leftover = data[end:]
            if end:
                return data[:end] if end != len(data) else data


def _blocks(path: Path) -> Iterator[bytes]:
    with path.open("rb", buffering=0) as f:
        while block := f.read(BLOCK_SIZE):
            yield block


def _run_serial(verifier: _Verifier, blocks: _LineBlocks) -> None:
    for data in blocks:
        verifier.feed_block(data, blocks)
    verifier.finish(blocks.leftover)


def _run_parallel(verifier: _Verifier, blocks: _LineBlocks, workers: int) -> None:
    """Workers scan blocks ahead (at most ``2 * workers`` in flight: constant memory)."""
    window: collections.deque[tuple[bytes, Future[list[_ScanItem] | None]]] = collections.deque()

    def rest() -> Iterator[bytes]:  # what follows the block being merged, for lookahead
        for data, _ in window:
            yield data
        yield from blocks

    with ProcessPoolExecutor(workers) as pool:
        exhausted = False
        while window or not exhausted:
            while not exhausted and len(window) < 2 * workers:
                data = next(blocks, None)
                if data is None:
                    exhausted = True
                else:
                    window.append((data, pool.submit(scan_block, data)))
            if not window:
                break
            data, future = window.popleft()
            if not verifier.apply_scan(data, future.result()):
                verifier.feed_block(data, rest())
    verifier.finish(blocks.leftover)


class _Progress:
    """A one-line progress bar on stderr (only when stderr is a terminal)."""

    def __init__(self, total: int, stream: IO[str]) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream
        self._shown = -1

    def advance(self, n: int) -> None:
        self.done += n
        percent = self.done * 100 // self.total
        if percent != self._shown:
            self._shown = percent
            bar = "#" * (percent // 4)
            self.stream.write(f"\rverifying [{bar:<25}] {percent:3d}%")
            self.stream.flush()

    def finish(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def verify_export(
    source: str | os.PathLike[str] | Iterable[bytes],
    public_keys: Mapping[str, Ed25519PublicKey] | bytes,
    *,
    progress: bool | None = None,
    workers: int | None = None,
) -> VerifyResult:
    """Verify an export file (path) or its bytes (an iterable of chunks or lines).

    ``public_keys`` is a mapping key id → key, or PEM bytes holding one or more keys.
    ``progress`` defaults to "stderr is a terminal and the file is over 64 MiB".
    ``workers``: processes that decode and hash blocks in parallel; by default one
    per CPU for files of ``PARALLEL_FROM`` bytes or more, else none (serial).
    """
    keys = load_public_keys(public_keys) if isinstance(public_keys, bytes) else public_keys
    verifier = _Verifier(keys)
    bar: _Progress | None = None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        size = path.stat().st_size
        if progress is None:
            progress = sys.stderr.isatty() and size > 64 << 20
        bar = _Progress(size, sys.stderr) if progress else None
        if workers is None:
            workers = min(os.cpu_count() or 1, 8) if size >= PARALLEL_FROM else 1
        raw: Iterable[bytes] = _blocks(path)
    else:
        raw = source
    blocks = _LineBlocks(raw, bar)
    try:
        if workers and workers > 1:
            _run_parallel(verifier, blocks, workers)
        else:
            _run_serial(verifier, blocks)
    except _Failure as failure:
        return VerifyResult(
            ok=False,
            code=failure.code,
            line=failure.line,
            message=failure.message,
            records=verifier.records,
            size=verifier.frontier.size,
            checkpoints=verifier.checkpoints,
        )
    finally:
        if bar is not None:
            bar.finish()
    assert verifier.seal is not None
    return VerifyResult(
        ok=True,
        records=verifier.records,
        size=verifier.frontier.size,
        checkpoints=verifier.checkpoints,
        root=verifier.seal.root,
        key_ids=tuple(sorted(verifier.key_ids)),
    )

#!/usr/bin/env python3
"""Standalone verifier for score-gateway audit exports: Python 3.11 and `cryptography` only.

An auditor runs it without installing the gateway:

    python3 verify_audit.py audit.jsonl --public-key keys.pem
        [--previous older.jsonl] [--witness-key witness.vkey [--min-witnesses N]]

It gives the same verdicts as ``gateway audit verify`` (exit 0 for an intact export;
exit 1 and one line ``FAIL line L: CODE: message`` naming the first failure), from
the published formats alone:

* export lines (``score-gateway-audit-export/1`` and ``/2``): header, record, range,
  pruned, checkpoint, seal; every line must be its canonical encoding (compact JSON,
  keys in the order below, fields at their default left out where the format says);
* records: format 1 (every field) and format 2 (``"v":2`` first, defaults left out);
* RFC 6962 Merkle tree: leaf ``SHA-256(0x00 || record bytes)``, node
  ``SHA-256(0x01 || left || right)``; checkpoints sign ``origin\\nsize\\nroot\\ntime\\n``
  with Ed25519; the seal signs the format, origin, size, root, line count,
  SHA-256 of all preceding bytes and time;
* witness cosignatures (C2SP tlog-cosignature, type 0x04) on format-2 checkpoints;
* pruned ranges must be covered by an ``audit.prune`` record in the same export.

It reads the file line by line in constant memory (no parallel fast path).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import re
import struct
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

FORMATS = ("score-gateway-audit-export/1", "score-gateway-audit-export/2")
PRUNE_PREFIX = b'{"v":2,"kind":"audit.prune",'
EMPTY_ROOT = hashlib.sha256(b"").digest()

# -- canonical JSON, as the gateway's encoder writes it ----------------------------------


def _string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # same escapes as the gateway's encoder


def _float(value: float) -> str:
    text = repr(value)
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    power = int(exponent)
    if -5 <= power < 16:  # written out in full from 1e-5 on
        digits = mantissa.replace(".", "").lstrip("-")
        sign = "-" if mantissa.startswith("-") else ""
        return f"{sign}0.{'0' * (-power - 1)}{digits}"
    return f"{mantissa}e{power}"


def encode(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ",".join(encode(v) for v in value) + "]"
    if isinstance(value, _Ordered):
        return "{" + ",".join(f"{_string(k)}:{encode(v)}" for k, v in value.items) + "}"
    raise TypeError(type(value))


@dataclass
class _Ordered:
    items: list[tuple[str, Any]]


class Malformed(Exception):
    pass


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check(value: Any, kind: str, where: str) -> Any:
    """Validate one field by its declared type; return it normalised (ints in floats)."""
    optional = kind.endswith("?")
    kind = kind.rstrip("?")
    if value is None:
        if optional:
            return None
        raise Malformed(f"Expected `{kind}`, got `null` - at `{where}`")
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "int" and _is_int(value):
        return value
    if kind == "float" and (_is_int(value) or isinstance(value, float)):
        return float(value)
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind.startswith("lit:") and isinstance(value, str) and value in kind[4:].split("|"):
        return value
    if kind == "list[str]" and isinstance(value, list):
        return [_check(v, "str", f"{where}[{i}]") for i, v in enumerate(value)]
    if kind == "any":
        return value
    raise Malformed(f"Invalid value for `{kind}` - at `{where}`")


def _struct(obj: Any, fields: list[tuple[str, str, Any]], where: str, omit: bool) -> _Ordered:
    """Decode ``obj`` as a struct of ``(name, type, default)`` fields (``...``: required)."""
    if not isinstance(obj, dict):
        raise Malformed(f"Expected `object` - at `{where}`")
    names = {name for name, _, _ in fields}
    for key in obj:
        if key not in names:
            raise Malformed(f"Object contains unknown field `{key}` - at `{where}`")
    items: list[tuple[str, Any]] = []
    for name, kind, default in fields:
        if name not in obj:
            if default is ...:
                raise Malformed(f"Object missing required field `{name}` - at `{where}`")
            value = default
        elif kind == "people":
            if not isinstance(obj[name], list):
                raise Malformed(f"Expected `array` - at `{where}.{name}`")
            value = [_person(p, f"{where}.{name}[{i}]") for i, p in enumerate(obj[name])]
        else:
            value = _check(obj[name], kind, f"{where}.{name}")
        if omit and value == default and not (value is None and default is ...):
            continue
        items.append((name, value))
    return _Ordered(items)


def _person(obj: Any, where: str) -> _Ordered:
    fields = [
        ("c", "str", ...),
        ("r", "lit:asked|disclosed|withheld", "asked"),
        ("o", "str?", None),
    ]
    return _struct(obj, fields, where, omit=True)


_V1: list[tuple[str, str, Any]] = [
    ("kind", "lit:lookup.intent|lookup|policy.load|key.rotate|gateway.start", ...),
    ("time", "str", ...),
    ("request_id", "str", ...),
    ("client", "str?", None),
    ("client_kind", "str?", None),
    ("purpose", "str?", None),
    ("upstream", "str?", None),
    ("route", "str?", None),
    ("subjects", "list[str]", []),
    ("decision", "str?", None),
    ("rules", "list[str]", []),
    ("policy_version", "str?", None),
    ("outcome", "str?", None),
    ("upstream_status", "int?", None),
    ("status", "int?", None),
    ("latency_ms", "float?", None),
    ("error", "str?", None),
    ("detail", "str?", None),
]
_V2: list[tuple[str, str, Any]] = [
    ("kind", "str", ...),
    ("time", "str", ...),
    ("request_id", "str", ...),
    ("client", "str?", None),
    ("client_kind", "str?", None),
    ("purpose", "str?", None),
    ("upstream", "str?", None),
    ("route", "str?", None),
    ("people", "people", []),
    ("decision", "str?", None),
    ("rules", "list[str]", []),
    ("policy_version", "str?", None),
    ("outcome", "str?", None),
    ("upstream_status", "int?", None),
    ("status", "int?", None),
    ("latency_ms", "float?", None),
    ("error", "str?", None),
    ("detail", "str?", None),
    ("actor", "str?", None),
    ("role", "str?", None),
    ("source", "str?", None),
    ("count", "int?", None),
    ("request_ids", "list[str]", []),
    ("until", "str?", None),
    ("loosening", "bool?", None),
]
_LINES: dict[str, list[tuple[str, str, Any]]] = {
    "header": [
        ("format", "str", ...),
        ("origin", "str", ...),
        ("size", "int", ...),
        ("since", "str?", ...),
        ("until", "str?", ...),
    ],
    "record": [("seq", "int", ...), ("record", "any", ...)],
    "range": [("begin", "int", ...), ("end", "int", ...), ("hashes", "list[str]", ...)],
    "pruned": [("begin", "int", ...), ("end", "int", ...), ("hashes", "list[str]", ...)],
    "checkpoint": [
        ("origin", "str", ...),
        ("size", "int", ...),
        ("root", "str", ...),
        ("time", "str", ...),
        ("key_id", "str", ...),
        ("signature", "str", ...),
        ("format", "int", 1),
        ("cosignatures", "list[str]", []),
    ],
    "seal": [
        ("origin", "str", ...),
        ("size", "int", ...),
        ("root", "str", ...),
        ("lines", "int", ...),
        ("sha256", "str", ...),
        ("time", "str", ...),
        ("key_id", "str", ...),
        ("signature", "str", ...),
    ],
}


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Malformed(str(exc)) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")


def decode_line(line: bytes) -> tuple[str, dict[str, Any], bytes]:
    """``(type, fields, canonical bytes)``; raise Malformed as the gateway's decoder would."""
    obj = _loads(line)
    if not isinstance(obj, dict):
        raise Malformed("Expected `object`")
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in _LINES:
        raise Malformed(f"Invalid value {kind!r} - at `$.type`")
    rest = {k: v for k, v in obj.items() if k != "type"}
    omit = kind == "checkpoint"
    ordered = _struct(rest, _LINES[kind], "$", omit)
    fields = dict(ordered.items)
    if kind == "checkpoint":
        fields.setdefault("format", 1)
        fields.setdefault("cosignatures", [])
    if kind == "record":
        prefix = b'{"type":"record","seq":%d,"record":' % fields["seq"]
        raw = line[len(prefix) : -1] if line.startswith(prefix) and line.endswith(b"}") else None
        ok = raw is not None and _raw_matches(raw, obj["record"])
        canonical = line if ok else b""
    else:
        canonical = encode(_Ordered([("type", kind), *ordered.items])).encode()
    return kind, fields, canonical


def _raw_matches(raw: bytes, value: Any) -> bool:
    try:
        return bool(json.loads(raw.decode("utf-8")) == value)
    except (UnicodeDecodeError, ValueError):
        return False


def canonical_record(body: bytes) -> bytes:
    obj = _loads(body)
    if body.startswith(b'{"v":2,'):
        if not isinstance(obj, dict) or obj.get("v") != 2:
            raise Malformed("Expected a format-2 record")
        rest = {k: v for k, v in obj.items() if k != "v"}
        return encode(_Ordered([("v", 2), *_struct(rest, _V2, "$", omit=True).items])).encode()
    return encode(_struct(obj, _V1, "$", omit=False)).encode()


def record_detail(body: bytes) -> str | None:
    obj = _loads(body)
    detail = obj.get("detail") if isinstance(obj, dict) else None
    return detail if isinstance(detail, str) else None


# -- RFC 6962 -----------------------------------------------------------------------------


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class Frontier:
    def __init__(self) -> None:
        self.size = 0
        self.hashes: list[bytes] = []

    def append_subtree(self, level: int, root: bytes) -> None:
        if self.size & ((1 << level) - 1):
            raise ValueError(f"a subtree of 2**{level} leaves cannot start at {self.size}")
        s, h = self.size >> level, root
        while s & 1:
            h = _node(self.hashes.pop(), h)
            s >>= 1
        self.hashes.append(h)
        self.size += 1 << level

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        h = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            h = _node(left, h)
        return h


def decomposition(begin: int, end: int) -> list[int]:
    """The level of each subtree of the compact range ``[begin, end)``, in order."""
    out, pos = [], begin
    while pos < end:
        level = (pos & -pos).bit_length() - 1 if pos else 63
        while pos + (1 << level) > end:
            level -= 1
        out.append(level)
        pos += 1 << level
    return out


# -- keys, notes, cosignatures ---------------------------------------------------------------


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(_raw(key)).hexdigest()[:16]


def load_pem_keys(pem: bytes) -> dict[str, Ed25519PublicKey]:
    marker = b"-----BEGIN PUBLIC KEY-----"
    keys: dict[str, Ed25519PublicKey] = {}
    blocks = [marker + part for part in pem.split(marker)[1:]]
    if not blocks:
        raise ValueError("no PEM public key block found")
    for index, block in enumerate(blocks, 1):
        key = serialization.load_pem_public_key(block)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"PEM block {index} is not an Ed25519 public key")
        keys[key_id(key)] = key
    return keys


def _verifies(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def strict_b64(text: str) -> bytes | None:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if base64.b64encode(data).decode() == text else None


@dataclass(frozen=True)
class Witness:
    name: str
    key: Ed25519PublicKey

    @property
    def note_id(self) -> bytes:
        return hashlib.sha256(self.name.encode() + b"\n\x04" + _raw(self.key)).digest()[:4]


def load_witnesses(text: str) -> list[Witness]:
    out = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, key_hex, encoded = line.strip().split("+", 2)
        raw = base64.b64decode(encoded, validate=True)
        if len(raw) != 33 or raw[0] != 0x04:
            raise ValueError(f"{name!r} is not a witness (cosignature) vkey")
        witness = Witness(name, Ed25519PublicKey.from_public_bytes(raw[1:]))
        if witness.note_id.hex() != key_hex:
            raise ValueError(f"the key ID of vkey {name!r} does not match its key")
        out.append(witness)
    if not out:
        raise ValueError("no witness vkey found")
    return out


def read_checkpoint_note(data: bytes, keys: dict[str, Ed25519PublicKey]) -> Result:
    """The tree a C2SP checkpoint note signed by a pinned key commits to (signed-note:
    key name = origin, key ID = SHA-256(origin || 0x0A || 0x01 || key)[:4])."""
    text_part, sep, signatures = data.decode("utf-8").rpartition("\n\n")
    lines = text_part.split("\n")
    if not sep or len(lines) != 4 or not signatures.endswith("\n"):
        raise ValueError("not a checkpoint note of this log (origin, size, root, time)")
    origin, size, root = lines[0], lines[1], lines[2]
    if not size.isdigit() or (size != "0" and size.startswith("0")):
        raise ValueError("the tree size is not a decimal")
    text = (text_part + "\n").encode()
    by_id = {
        hashlib.sha256(origin.encode() + b"\n\x01" + _raw(k)).digest()[:4]: k for k in keys.values()
    }
    trusted = False
    for line in signatures[:-1].split("\n"):
        prefix, _, rest = line.partition(" ")
        name, _, encoded = rest.partition(" ")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise ValueError("a signature line is not base64") from None
        if prefix != "\u2014" or name != origin or raw[:4] not in by_id:
            continue
        if not _verifies(by_id[raw[:4]], raw[4:], text):
            raise ValueError(
                f"no signature on the checkpoint verifies under a pinned key of {origin}"
            )
        trusted = True
    if not trusted:
        raise ValueError(f"no signature on the checkpoint verifies under a pinned key of {origin}")
    return Result(size=int(size), root=root, origin=origin)


class BadCosignature(Exception):
    pass


def cosigned_by(witnesses: list[Witness], text: bytes, lines: list[str]) -> set[str]:
    """Witnesses whose cosignature verifies; unknown ones are ignored."""
    valid = set()
    for position, line in enumerate(lines):
        prefix, _, rest = line.partition(" ")
        name, _, encoded = rest.partition(" ")
        if prefix != "\u2014" or not name or not encoded or " " in encoded:
            raise Malformed(f"cosignatures[{position}]: a signature line is '\u2014 <name> <b64>'")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise Malformed(f"cosignatures[{position}]: not base64") from None
        if len(raw) < 5:
            raise Malformed(f"cosignatures[{position}]: too short")
        for witness in witnesses:
            if name != witness.name or raw[:4] != witness.note_id:
                continue
            if len(raw) != 4 + 8 + 64:
                raise Malformed(f"cosignatures[{position}]: not 8 + 64 bytes")
            (timestamp,) = struct.unpack(">Q", raw[4:12])
            message = b"cosignature/v1\ntime %d\n" % timestamp + text
            if timestamp > 2**63 - 1 or not _verifies(witness.key, raw[12:], message):
                raise BadCosignature(f"cosignatures[{position}]: {name} does not verify")
            valid.add(name)
    return valid


# -- the verifier ------------------------------------------------------------------------------


class Failure(Exception):
    def __init__(self, code: str, line: int, message: str) -> None:
        super().__init__(message)
        self.code, self.line, self.message = code, line, message


@dataclass
class Result:
    records: int = 0
    size: int = 0
    checkpoints: int = 0
    root: str = ""
    origin: str = ""
    key_ids: set[str] = field(default_factory=set)
    witnesses: tuple[str, ...] = ()
    watched_root: str | None = None
    watch_hidden: tuple[int, int] | None = None
    pruned: list[tuple[int, int]] = field(default_factory=list)


class Verifier:
    def __init__(
        self,
        keys: dict[str, Ed25519PublicKey],
        witnesses: list[Witness],
        min_witnesses: int,
        watch: int | None,
    ) -> None:
        self.keys, self.witness_keys, self.min_witnesses = keys, witnesses, min_witnesses
        self.watch = -1 if watch is None else watch
        self.frontier = Frontier()
        self.header: dict[str, Any] | None = None
        self.digest = hashlib.sha256()
        self.result = Result()
        self.result.watched_root = base64.b64encode(EMPTY_ROOT).decode() if watch == 0 else None
        self.last_checkpoint: dict[str, Any] | None = None
        self.last_checkpoint_line = b""
        self.last_checkpoint_number = 0
        self.last_witnesses: tuple[str, ...] = ()
        self.verified_upto = 0
        self.prev_record_line = b""
        self.prev_seq = -1
        self.sealed = False
        self.pruned: list[tuple[int, int, int]] = []
        self.prune_records: list[tuple[int, int]] = []

    def run(self, lines: Iterator[tuple[int, bytes]], peek: list[tuple[int, bytes]]) -> None:
        for number, line in lines:
            self.line(number, line, lines, peek)

    def line(
        self,
        number: int,
        line: bytes,
        rest: Iterator[tuple[int, bytes]],
        peek: list[tuple[int, bytes]],
    ) -> None:
        if self.sealed:
            raise Failure("inserted", number, "a line follows the seal")
        try:
            kind, obj, canonical = decode_line(line)
        except Malformed as exc:
            raise Failure("malformed", number, str(exc)) from None
        if canonical != line:
            raise Failure("non_canonical", number, "the line is not in canonical encoding")
        if kind == "seal":
            self.seal(number, obj)
        else:
            self.digest.update(line + b"\n")
            if kind == "record":
                self.record(number, obj, line, rest, peek)
            else:
                self.other(number, kind, obj, line, rest, peek)

    # positions
    def record(
        self,
        number: int,
        obj: dict[str, Any],
        line: bytes,
        rest: Iterator[tuple[int, bytes]],
        peek: list[tuple[int, bytes]],
    ) -> None:
        seq = obj["seq"]
        if seq != self.frontier.size:
            self.out_of_place(number, seq, line, rest, peek)
        body = line[33 + len(str(seq)) : -1]
        try:
            canonical = canonical_record(body) == body
        except Malformed as exc:
            raise Failure("malformed", number, str(exc)) from None
        if not canonical:
            raise Failure("non_canonical", number, "the record is not in canonical encoding")
        self.frontier.append_subtree(0, hashlib.sha256(b"\x00" + body).digest())
        if body.startswith(PRUNE_PREFIX):
            match = re.match(r"^pruned \[(\d+), (\d+)\)", record_detail(body) or "")
            if match and int(match.group(1)) < int(match.group(2)):
                self.prune_records.append((int(match.group(1)), int(match.group(2))))
        if seq + 1 == self.watch:
            self.result.watched_root = base64.b64encode(self.frontier.root()).decode()
        self.result.records += 1
        self.prev_record_line, self.prev_seq = line, seq
        self.within_header(number)

    def out_of_place(
        self,
        number: int,
        seq: int,
        line: bytes,
        rest: Iterator[tuple[int, bytes]],
        peek: list[tuple[int, bytes]],
    ) -> None:
        expected = self.frontier.size
        if self.header is None:
            raise Failure("malformed", number, "the first line must be the export header")
        if seq > expected:
            raise self.gap(number, expected, seq, f"record seq {seq}", rest, peek)
        if line == self.prev_record_line:
            raise Failure("duplicated", number, f"record seq {seq} repeats line {number - 1}")
        if seq == self.prev_seq:
            raise Failure(
                "inserted",
                number,
                f"a second, different record claims seq {seq} (line {number - 1})",
            )
        raise Failure("reordered", number, f"record seq {seq} follows seq {expected - 1}")

    def gap(
        self,
        number: int,
        expected: int,
        found: int,
        what: str,
        rest: Iterator[tuple[int, bytes]],
        peek: list[tuple[int, bytes]],
    ) -> Failure:
        for later_number, later in [*peek, *rest]:
            try:
                kind, obj, _ = decode_line(later)
            except Malformed:
                continue
            covers = (kind == "record" and obj["seq"] == expected) or (
                kind == "range" and obj["begin"] <= expected < obj["end"]
            )
            if covers:
                return Failure(
                    "reordered", number, f"{what} comes before seq {expected} (line {later_number})"
                )
        last = found - 1
        missing = f"seq {expected}" if last == expected else f"seq {expected}..{last}"
        return Failure("deleted", number, f"records {missing} are missing before {what}")

    def within_header(self, number: int) -> None:
        if self.header is None:
            raise Failure("malformed", number, "the first line must be the export header")
        if self.frontier.size > self.header["size"]:
            raise Failure(
                "inserted",
                number,
                f"record seq {self.frontier.size - 1} is beyond "
                f"the header size {self.header['size']}",
            )

    def other(
        self,
        number: int,
        kind: str,
        obj: dict[str, Any],
        line: bytes,
        rest: Iterator[tuple[int, bytes]],
        peek: list[tuple[int, bytes]],
    ) -> None:
        if kind == "header":
            if self.header is not None:
                raise Failure(
                    "duplicated" if number == 2 else "inserted", number, "a second header line"
                )
            if number != 1:
                raise Failure("malformed", number, "the header must be the first line")
            if obj["format"] not in FORMATS:
                raise Failure("malformed", number, f"unsupported export format {obj['format']!r}")
            self.header = obj
            self.result.origin = obj["origin"]
            return
        if self.header is None:
            raise Failure("malformed", number, "the first line must be the export header")
        if kind == "checkpoint":
            self.checkpoint(number, obj, line)
        elif kind in ("range", "pruned"):
            if kind == "pruned" and self.header["format"] == FORMATS[0]:
                raise Failure("malformed", number, "a format-1 export has no pruned ranges")
            self.range(number, obj, rest, peek)
            if kind == "pruned":
                self.pruned.append((obj["begin"], obj["end"], number))

    def range(
        self,
        number: int,
        obj: dict[str, Any],
        rest: Iterator[tuple[int, bytes]],
        peek: list[tuple[int, bytes]],
    ) -> None:
        expected, begin, end = self.frontier.size, obj["begin"], obj["end"]
        if begin > expected:
            raise self.gap(number, expected, begin, f"omitted range [{begin}, {end})", rest, peek)
        if begin < expected:
            raise Failure(
                "reordered", number, f"omitted range [{begin}, {end}) follows seq {expected - 1}"
            )
        if end <= begin:
            raise Failure("malformed", number, f"empty omitted range [{begin}, {end})")
        hashes = []
        for position, text in enumerate(obj["hashes"]):
            if len(text) != 64 or text != text.lower():
                raise Failure(
                    "malformed", number, f"hashes[{position}] is not 64 lowercase hex digits"
                )
            try:
                hashes.append(bytes.fromhex(text))
            except ValueError:
                raise Failure("malformed", number, f"hashes[{position}] is not hex") from None
        levels = decomposition(begin, end)
        if len(levels) != len(hashes):
            raise Failure(
                "malformed",
                number,
                f"the compact range [{begin}, {end}) has {len(levels)} hashes, got {len(hashes)}",
            )
        for level, h in zip(levels, hashes, strict=True):
            self.frontier.append_subtree(level, h)
        if end == self.watch:
            self.result.watched_root = base64.b64encode(self.frontier.root()).decode()
        elif begin < self.watch < end:
            self.result.watch_hidden = (begin, end)
        self.prev_record_line, self.prev_seq = b"", end - 1
        self.within_header(number)

    def checkpoint(self, number: int, obj: dict[str, Any], line: bytes) -> None:
        assert self.header is not None
        if obj["format"] not in (1, 2) or (
            obj["format"] != 1 and self.header["format"] == FORMATS[0]
        ):
            raise Failure("malformed", number, f"unsupported checkpoint format {obj['format']}")
        if obj["format"] == 1 and obj["cosignatures"]:
            raise Failure("malformed", number, "a format-1 checkpoint carries no cosignatures")
        if obj["origin"] != self.header["origin"]:
            raise Failure(
                "origin_mismatch",
                number,
                f"checkpoint of log {obj['origin']!r} in an export of {self.header['origin']!r}",
            )
        key = self.keys.get(obj["key_id"])
        if key is None:
            raise Failure(
                "unknown_key", number, f"checkpoint signed by unknown key id {obj['key_id']}"
            )
        text = f"{obj['origin']}\n{obj['size']}\n{obj['root']}\n{obj['time']}\n".encode()
        signature = strict_b64(obj["signature"])
        if signature is None or not _verifies(key, signature, text):
            raise Failure("bad_signature", number, f"checkpoint at size {obj['size']}")
        self.result.key_ids.add(obj["key_id"])
        last = self.last_checkpoint
        if last is not None and obj["size"] <= last["size"]:
            if line == self.last_checkpoint_line:
                raise Failure("duplicated", number, f"checkpoint at size {obj['size']} repeats")
            raise Failure(
                "reordered", number, f"checkpoint at size {obj['size']} follows size {last['size']}"
            )
        size = self.frontier.size
        if obj["size"] > size:
            raise Failure(
                "deleted",
                number,
                f"checkpoint at size {obj['size']} follows only "
                f"{size} records: seq {size}..{obj['size'] - 1} are missing",
            )
        if obj["size"] < size:
            raise Failure(
                "inserted", number, f"{size} records precede the checkpoint at size {obj['size']}"
            )
        if obj["root"] != base64.b64encode(self.frontier.root()).decode():
            raise Failure(
                "modified",
                number,
                f"records seq {self.verified_upto}..{obj['size'] - 1}"
                f" do not match the checkpoint at size {obj['size']}",
            )
        try:
            self.last_witnesses = tuple(
                sorted(cosigned_by(self.witness_keys, text, obj["cosignatures"]))
            )
        except Malformed as exc:
            raise Failure("malformed", number, f"at size {obj['size']}: {exc}") from None
        except BadCosignature as exc:
            raise Failure("bad_cosignature", number, f"at size {obj['size']}: {exc}") from None
        self.verified_upto = obj["size"]
        self.last_checkpoint, self.last_checkpoint_line = obj, line
        self.last_checkpoint_number = number
        self.result.checkpoints += 1

    def seal(self, number: int, seal: dict[str, Any]) -> None:
        if self.header is None:
            raise Failure("malformed", number, "the first line must be the export header")
        key = self.keys.get(seal["key_id"])
        if key is None:
            raise Failure("unknown_key", number, f"seal signed by unknown key id {seal['key_id']}")
        message = (
            f"{self.header['format']}\n{seal['origin']}\n{seal['size']}\n{seal['root']}\n"
            f"{seal['lines']}\n{seal['sha256']}\n{seal['time']}\n"
        ).encode()
        signature = strict_b64(seal["signature"])
        if signature is None or not _verifies(key, signature, message):
            raise Failure("bad_signature", number, "the seal's signature does not verify")
        self.result.key_ids.add(seal["key_id"])
        if seal["lines"] != number - 1:
            raise Failure(
                "deleted" if number - 1 < seal["lines"] else "inserted",
                number,
                f"the seal covers {seal['lines']} lines, the file has {number - 1} before it",
            )
        if self.digest.hexdigest() != seal["sha256"]:
            raise Failure("modified", number, "the lines before the seal are not the sealed bytes")
        if seal["origin"] != self.header["origin"]:
            raise Failure("origin_mismatch", number, f"seal of log {seal['origin']!r}")
        last = self.last_checkpoint
        if last is None or last["size"] != seal["size"] or last["root"] != seal["root"]:
            raise Failure("malformed", number, "the seal does not repeat the last checkpoint")
        if self.frontier.size != seal["size"] or self.header["size"] != seal["size"]:
            raise Failure(
                "inserted",
                number,
                f"records beyond the last checkpoint (size {seal['size']}): {self.frontier.size}",
            )
        for begin, end, line_number in self.pruned:
            position = begin
            for low, high in sorted(self.prune_records):
                if low <= position < high:
                    position = high
            if position < end:
                raise Failure(
                    "deleted",
                    line_number,
                    f"records seq {position}..{end - 1} were "
                    "dropped without a signed audit.prune record covering them",
                )
        if len(self.last_witnesses) < self.min_witnesses:
            raise Failure(
                "unwitnessed",
                self.last_checkpoint_number,
                f"the final checkpoint (size {seal['size']}) has "
                f"{len(self.last_witnesses)} valid cosignatures of pinned witnesses, "
                f"{self.min_witnesses} required",
            )
        self.sealed = True
        self.result.root, self.result.size = seal["root"], seal["size"]
        self.result.witnesses = self.last_witnesses
        self.result.pruned = [(b, e) for b, e, _ in self.pruned]


def verify(
    path: Path,
    keys: dict[str, Ed25519PublicKey],
    witnesses: Sequence[Witness] = (),
    min_witnesses: int = 0,
    watch: int | None = None,
) -> Result:
    """Verify one export; raise Failure at the first problem."""
    verifier = Verifier(keys, list(witnesses), min_witnesses, watch)
    with path.open("rb") as f:
        data_lines = _numbered(f)
        peek: list[tuple[int, bytes]] = []
        last = 0
        leftover = b""
        for number, line, complete in data_lines:
            last = number if complete else last
            if not complete:
                leftover = line
                break
            verifier.line(number, line, (x[:2] for x in data_lines if x[2]), peek)
    if verifier.sealed and leftover:
        raise Failure("inserted", last + 1, "bytes follow the seal")
    if leftover:
        raise Failure("truncated", last + 1, "the file ends in the middle of a line")
    if verifier.header is None:
        raise Failure("truncated", 1, "the export is empty")
    if not verifier.sealed:
        raise Failure("truncated", last + 1, f"the export ends after line {last} without its seal")
    return verifier.result


def _numbered(f: Any) -> Iterator[tuple[int, bytes, bool]]:
    for number, line in enumerate(f, 1):
        if line.endswith(b"\n"):
            yield number, line[:-1], True
        else:
            yield number, line, False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="verify_audit.py", description=__doc__.split("\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--public-key", type=Path, action="append", required=True)
    earlier = parser.add_mutually_exclusive_group()
    earlier.add_argument("--previous", type=Path, help="an earlier export FILE must extend")
    earlier.add_argument(
        "--trusted-checkpoint", type=Path, help="a C2SP checkpoint note FILE must extend"
    )
    parser.add_argument("--witness-key", type=Path, action="append", default=[])
    parser.add_argument("--min-witnesses", type=int)
    parser.add_argument("--quiet", action="store_true", help="accepted for compatibility")
    args = parser.parse_args(argv)
    try:
        keys = load_pem_keys(b"".join(p.read_bytes() for p in args.public_key))
        witnesses = [w for p in args.witness_key for w in load_witnesses(p.read_text())]
    except (OSError, ValueError) as exc:
        print(f"bad key file: {exc}", file=sys.stderr)
        return 1
    minimum = args.min_witnesses if args.min_witnesses is not None else min(1, len(witnesses))
    if minimum > len({w.name for w in witnesses}):
        print(f"--min-witnesses {minimum} needs that many --witness-key witnesses", file=sys.stderr)
        return 1
    old: Result | None = None
    try:
        if args.previous is not None:
            try:
                old = verify(args.previous, keys)
            except Failure as failure:
                print(
                    f"{args.previous}: FAIL line {failure.line}: {failure.code}: {failure.message}",
                    file=sys.stderr,
                )
                return 1
        if args.trusted_checkpoint is not None:
            try:
                old = read_checkpoint_note(args.trusted_checkpoint.read_bytes(), keys)
            except ValueError as exc:
                print(f"{args.trusted_checkpoint}: {exc}", file=sys.stderr)
                return 1
        result = verify(args.file, keys, witnesses, minimum, None if old is None else old.size)
    except Failure as failure:
        print(f"FAIL line {failure.line}: {failure.code}: {failure.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot read: {exc}", file=sys.stderr)
        return 1
    source = str(args.previous or args.trusted_checkpoint)
    if old is not None:
        code, message = _extends(old, result, source)
        if code:
            print(f"FAIL: {code}: {message}", file=sys.stderr)
            return 1
    pruned = "".join(f", pruned seq {b}..{e - 1} (retention)" for b, e in result.pruned)
    print(
        f"OK: {result.records} records, tree size {result.size}, {result.checkpoints} "
        f"checkpoints, root {result.root}, keys {', '.join(sorted(result.key_ids))}{pruned}"
    )
    for kid in sorted(result.key_ids):
        print(f"trusted key {kid} sha256:{hashlib.sha256(_raw(keys[kid])).hexdigest()}")
    if witnesses:
        print(f"witnessed by {', '.join(result.witnesses) or 'none'}")
    if old is not None:
        print(
            f"extends: tree size {old.size} of {args.previous} (root {old.root}) is a prefix "
            f"of the new export (size {result.size})"
        )
    return 0


def _extends(old: Result, new: Result, source: str) -> tuple[str | None, str]:
    if new.origin != old.origin:
        return "origin_mismatch", f"{source} is log {old.origin!r}, not {new.origin!r}"
    if new.size < old.size:
        return (
            "rollback",
            f"the new export covers {new.size} records, fewer than the {old.size} of {source}",
        )
    if new.watched_root is None:
        return "unprovable", f"size {old.size} of {source} is not a line boundary of the new export"
    if new.watched_root != old.root:
        return "inconsistent", (
            f"the new export's tree at size {old.size} has root "
            f"{new.watched_root}, {source} has {old.root}"
        )
    return None, ""


if __name__ == "__main__":
    sys.exit(main())

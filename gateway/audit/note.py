"""C2SP signed notes: checkpoints as ``tlog-checkpoint`` notes, witness cosignatures, vkeys.

A checkpoint's signed text (:meth:`gateway.audit.checkpoint.Checkpoint.note`) is
already a C2SP ``tlog-checkpoint`` body: origin, size, base64 root, then one
extension line, the signing time. As a signed note (c2sp.org/signed-note) it is
that text, a blank line, and one signature line per signer::

    — <key name> base64(4-byte key ID || signature)

* the log signs with key name = origin ("The log's key name in its signature line
  SHOULD match the origin line") and type 0x01 (Ed25519 over the note text);
* a witness cosigns with its own name and type 0x04 (c2sp.org/tlog-cosignature):
  the signature is ``u64 timestamp || Ed25519("cosignature/v1\\ntime T\\n" || text)``.

"key ID = SHA-256(key name || 0x0A || signature type || public key)[:4]", so the
4 bytes bind a key to its name and type. Verifier keys travel as *vkeys*, one
line ``<name>+<8 hex key ID>+base64(type || 32-byte public key)``, which an
auditor pins out of band like a PEM key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.audit.signing import verify_signature

ED25519 = 0x01
COSIGNATURE_ED25519 = 0x04
DASH = "\u2014"  # "em dash (U+2014), space (U+0020), key name, space, base64-encoded signature"
COSIGNATURE_HEADER = b"cosignature/v1\n"


class NoteError(ValueError):
    """A note, signature line or vkey is malformed."""


def raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def note_key_id(name: str, kind: int, public_key: Ed25519PublicKey) -> bytes:
    """``SHA-256(key name || 0x0A || signature type || public key)[:4]``."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([kind]) + raw_public(public_key)).digest()[
        :4
    ]


def check_key_name(name: str) -> None:
    """ "Key names MUST be non-empty and MUST NOT contain any Unicode spaces or plus"."""
    if not name or "+" in name or any(c.isspace() for c in name):
        raise NoteError(f"a key name is non-empty, without spaces or '+': {name[:60]!r}")


def signature_line(name: str, key_id: bytes, signature: bytes) -> str:
    return f"{DASH} {name} {base64.b64encode(key_id + signature).decode()}"


def parse_signature_line(line: str) -> tuple[str, bytes, bytes]:
    """``(name, 4-byte key ID, signature)`` of one ``— name base64`` line."""
    prefix, _, rest = line.partition(" ")
    name, _, encoded = rest.partition(" ")
    if prefix != DASH or not name or not encoded or " " in encoded:
        raise NoteError("a signature line is '\u2014 <name> <base64>'")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise NoteError(f"the signature of {name[:60]!r} is not base64") from None
    if len(raw) < 5:
        raise NoteError(f"the signature of {name[:60]!r} is too short")
    return name, raw[:4], raw[4:]


@dataclass(frozen=True, slots=True)
class SignedNote:
    text: bytes  # the signed text, ending in "\n"
    signatures: tuple[str, ...]  # signature lines, without their newline


def parse_note(data: bytes) -> SignedNote:
    """Split a signed note at its last blank line: text, then signature lines."""
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError("a signed note is UTF-8") from None
    if any(ord(c) < 0x20 and c != "\n" for c in decoded):
        raise NoteError("a signed note has no control characters other than newline")
    if not decoded.endswith("\n"):
        raise NoteError("a signed note ends with a newline")
    cut = decoded.rfind("\n\n")
    if cut < 0:
        raise NoteError("a signed note has a blank line before its signatures")
    text, tail = decoded[: cut + 1], decoded[cut + 2 :]
    lines = tail[:-1].split("\n") if tail else []
    if not lines:
        raise NoteError("a signed note has at least one signature line")
    for line in lines:
        parse_signature_line(line)
    return SignedNote(text.encode(), tuple(lines))


def render_note(text: bytes, signatures: list[str]) -> bytes:
    return text + b"\n" + "".join(line + "\n" for line in signatures).encode()


# -- checkpoints signed by the log (type 0x01) ---------------------------------------------


def log_signature_line(origin: str, public_key: Ed25519PublicKey, signature: bytes) -> str:
    return signature_line(origin, note_key_id(origin, ED25519, public_key), signature)


def verify_log_signature(
    note: SignedNote, origin: str, keys: dict[str, Ed25519PublicKey]
) -> str | None:
    """The id (16 hex) of the pinned key whose signature on ``note`` verifies, or None.

    "Verifiers MUST ignore signatures from unknown keys"; a known key whose
    signature does not verify makes the whole note fail (None)."""
    by_note_id = {note_key_id(origin, ED25519, key): (key_id, key) for key_id, key in keys.items()}
    trusted = None
    for line in note.signatures:
        name, key_hash, signature = parse_signature_line(line)
        if name != origin or key_hash not in by_note_id:
            continue
        key_id, key = by_note_id[key_hash]
        if not verify_signature(key, signature, note.text):
            return None
        trusted = key_id
    return trusted


# -- witness cosignatures (type 0x04) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class WitnessKey:
    name: str
    public_key: Ed25519PublicKey

    @property
    def key_id(self) -> bytes:
        return note_key_id(self.name, COSIGNATURE_ED25519, self.public_key)

    def vkey(self) -> str:
        return vkey(self.name, COSIGNATURE_ED25519, self.public_key)

    def verify(self, text: bytes, line: str) -> int | None:
        """The cosignature's timestamp if ``line`` is this witness's valid cosignature of
        ``text``; None if it is another key's; raise :class:`NoteError` if it is ours and bad."""
        name, key_hash, raw = parse_signature_line(line)
        if name != self.name or key_hash != self.key_id:
            return None
        if len(raw) != 8 + 64:
            raise NoteError(f"the cosignature of {name} is not 8 + 64 bytes")
        (timestamp,) = struct.unpack(">Q", raw[:8])
        if timestamp > 2**63 - 1 or not verify_signature(
            self.public_key, raw[8:], cosigned_message(text, timestamp)
        ):
            raise NoteError(f"the cosignature of {name} does not verify")
        return int(timestamp)


def cosigned_message(text: bytes, timestamp: int) -> bytes:
    """ "two newline terminated lines (one header line and one timestamp line) followed by
    the whole note body of the cosigned checkpoint"."""
    return COSIGNATURE_HEADER + b"time %d\n" % timestamp + text


def cosign(name: str, private_key: Ed25519PrivateKey, text: bytes, timestamp: int) -> str:
    """One ``tlog-cosignature`` v1 line over a checkpoint's note text."""
    key_id = note_key_id(name, COSIGNATURE_ED25519, private_key.public_key())
    signature = private_key.sign(cosigned_message(text, timestamp))
    return signature_line(name, key_id, struct.pack(">Q", timestamp) + signature)


# -- vkeys -----------------------------------------------------------------------------------


def vkey(name: str, kind: int, public_key: Ed25519PublicKey) -> str:
    check_key_name(name)
    key_id = note_key_id(name, kind, public_key).hex()
    return f"{name}+{key_id}+{base64.b64encode(bytes([kind]) + raw_public(public_key)).decode()}"


def parse_vkey(text: str) -> tuple[str, int, Ed25519PublicKey]:
    """``(name, signature type, public key)``; the embedded key ID must match."""
    parts = text.strip().split("+", 2)  # the base64 key may itself hold "+"
    if len(parts) != 3:
        raise NoteError("a vkey is <name>+<8 hex key ID>+<base64 key>")
    name, key_hex, encoded = parts
    check_key_name(name)
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise NoteError("the key part of a vkey is not base64") from None
    if len(raw) != 33 or raw[0] not in (ED25519, COSIGNATURE_ED25519):
        raise NoteError("a vkey holds a type byte (0x01 or 0x04) and a 32-byte Ed25519 key")
    public_key = Ed25519PublicKey.from_public_bytes(raw[1:])
    if note_key_id(name, raw[0], public_key).hex() != key_hex:
        raise NoteError(f"the key ID of vkey {name!r} does not match its key")
    return name, raw[0], public_key


def load_witness_keys(text: str) -> list[WitnessKey]:
    """Every cosigner vkey (type 0x04) in a file, one per line (``#`` lines are comments)."""
    keys: list[WitnessKey] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            name, kind, public_key = parse_vkey(line)
        except NoteError as exc:
            raise NoteError(f"line {number}: {exc}") from None
        if kind != COSIGNATURE_ED25519:
            raise NoteError(f"line {number}: {name!r} is not a witness (cosignature) key")
        keys.append(WitnessKey(name, public_key))
    if not keys:
        raise NoteError("no witness vkey found")
    return keys

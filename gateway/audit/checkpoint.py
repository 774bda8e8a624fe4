"""Checkpoints: tiny signed notes that commit to the whole log at one size.

In the style of Rekor / the C2SP ``tlog-checkpoint`` note, the signed text is
exactly (UTF-8, every line ending in ``\\n``)::

    {origin}
    {size}
    {root}
    {time}

* ``origin``: the log's identity, generated once per store
  (``score-gateway/audit/<32 hex>``); a checkpoint of another log cannot pass for
  one of this log;
* ``size``: the tree size (number of leaves, i.e. records ``seq < size``), decimal;
* ``root``: the RFC 6962 root hash of those leaves, standard base64 with padding;
* ``time``: RFC 3339 UTC with microseconds, when the checkpoint was signed.

``signature`` is Ed25519 over that text, standard base64; ``key_id`` names the
signing key (see :mod:`gateway.audit.signing`). The log signs one checkpoint per
size: it never re-signs an unchanged tree (Rekor issue 1025: re-signed
checkpoints of the same root confuse witnesses), so sizes strictly increase.

That text is a C2SP ``tlog-checkpoint`` body with one extension line (the time):
:func:`checkpoint_note` renders the checkpoint as a signed note (the log's
signature line, key name = origin, then witness cosignatures) and
:func:`checkpoint_from_note` reads one back, checking the log's signature.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit.note import (
    ED25519,
    NoteError,
    log_signature_line,
    note_key_id,
    parse_note,
    parse_signature_line,
    render_note,
    verify_log_signature,
)
from gateway.audit.record import rfc3339
from gateway.audit.signing import KeyRing, verify_signature


class Checkpoint(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    origin: str
    size: int
    root: str  # base64 of the 32-byte RFC 6962 root
    time: str
    key_id: str
    signature: str  # base64 of the 64-byte Ed25519 signature

    def note(self) -> bytes:
        """The exact bytes that are signed."""
        return f"{self.origin}\n{self.size}\n{self.root}\n{self.time}\n".encode()

    @property
    def root_hash(self) -> bytes:
        return base64.b64decode(self.root)

    def verify(self, public_key: Ed25519PublicKey) -> bool:
        signature = strict_b64decode(self.signature)
        return signature is not None and verify_signature(public_key, signature, self.note())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def strict_b64decode(text: str) -> bytes | None:
    """Decode base64 only in its one canonical spelling (no padding-bit or alphabet slack)."""
    try:
        data = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    return data if base64.b64encode(data).decode() == text else None


def sign_checkpoint(
    keyring: KeyRing, *, origin: str, size: int, root: bytes, timestamp: float
) -> Checkpoint:
    unsigned = Checkpoint(
        origin=origin,
        size=size,
        root=b64(root),
        time=rfc3339(timestamp),
        key_id=keyring.key_id,
        signature="",
    )
    return msgspec.structs.replace(unsigned, signature=b64(keyring.sign(unsigned.note())))


def checkpoint_note(
    checkpoint: Checkpoint, public_key: Ed25519PublicKey, cosignatures: Sequence[str] = ()
) -> bytes:
    """The checkpoint as a C2SP ``tlog-checkpoint`` signed note (see :mod:`gateway.audit.note`):
    the signed text, a blank line, the log's signature line, then witness cosignatures."""
    signature = strict_b64decode(checkpoint.signature)
    if signature is None:
        raise NoteError(f"the checkpoint at size {checkpoint.size} has a malformed signature")
    line = log_signature_line(checkpoint.origin, public_key, signature)
    return render_note(checkpoint.note(), [line, *cosignatures])


def checkpoint_from_note(
    data: bytes, keys: dict[str, Ed25519PublicKey]
) -> tuple[Checkpoint, tuple[str, ...]]:
    """A checkpoint note whose log signature verifies under one of ``keys``, and its other
    signature lines (cosignatures, unchecked here). Raises :class:`NoteError`."""
    note = parse_note(data)
    lines = note.text.decode().split("\n")[:-1]
    if len(lines) < 3 or not all(lines):
        raise NoteError("a checkpoint's text is origin, size and root hash, then extension lines")
    origin, size_text, root = lines[0], lines[1], lines[2]
    if not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
        raise NoteError(f"the tree size {size_text[:30]!r} is not a decimal without leading zeros")
    decoded_root = strict_b64decode(root)
    if decoded_root is None or len(decoded_root) != 32:
        raise NoteError("the root hash is not the base64 of 32 bytes")
    if len(lines) != 4:
        raise NoteError("a checkpoint of this log has one extension line, its signing time")
    key_id = verify_log_signature(note, origin, keys)
    if key_id is None:
        raise NoteError(f"no signature on the checkpoint verifies under a pinned key of {origin}")
    by_name = {note_key_id(origin, ED25519, keys[key_id]): key_id}
    own = None
    others: list[str] = []
    for line in note.signatures:
        name, key_hash, signature = parse_signature_line(line)
        if name == origin and key_hash in by_name and own is None:
            own = signature
        else:
            others.append(line)
    assert own is not None
    checkpoint = Checkpoint(
        origin=origin,
        size=int(size_text),
        root=root,
        time=lines[3],
        key_id=key_id,
        signature=b64(own),
    )
    return checkpoint, tuple(others)

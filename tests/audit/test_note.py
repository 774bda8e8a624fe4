"""C2SP signed notes: vkeys, signature lines, checkpoint notes and cosignatures."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit.checkpoint import checkpoint_from_note, checkpoint_note, sign_checkpoint
from gateway.audit.note import (
    COSIGNATURE_ED25519,
    ED25519,
    NoteError,
    WitnessKey,
    cosign,
    note_key_id,
    parse_note,
    parse_vkey,
    raw_public,
    vkey,
)
from gateway.audit.signing import KeyRing


def test_vkeys_round_trip_even_when_their_base64_holds_a_plus() -> None:
    """Any key, whatever characters its base64 holds, parses back to itself."""
    for _ in range(64):
        key = Ed25519PrivateKey.generate().public_key()
        name, kind, parsed = parse_vkey(vkey("log.example/a", ED25519, key))
        assert (name, kind, raw_public(parsed)) == ("log.example/a", ED25519, raw_public(key))


def test_the_key_id_follows_signed_note() -> None:
    """key ID = SHA-256(name || 0x0A || type || public key)[:4], as signed-note recommends."""
    import hashlib

    key = Ed25519PrivateKey.generate().public_key()
    expected = hashlib.sha256(b"w.example\n\x04" + raw_public(key)).digest()[:4]
    assert note_key_id("w.example", COSIGNATURE_ED25519, key) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("log.example+00000000+AAAA", id="short-key"),
        pytest.param("log example+00000000+" + "A" * 44, id="space-in-name"),
        pytest.param("no-separators", id="no-separators"),
    ],
)
def test_malformed_vkeys_are_refused(text: str) -> None:
    with pytest.raises(NoteError):
        parse_vkey(text)


def test_a_vkey_whose_id_does_not_match_is_refused() -> None:
    """The embedded key ID must be the one its name and key give."""
    good = vkey("log.example/a", ED25519, Ed25519PrivateKey.generate().public_key())
    name, _, rest = good.partition("+")
    with pytest.raises(NoteError, match="does not match"):
        parse_vkey(f"{name}+00000000+{rest.split('+', 1)[1]}")


def test_a_checkpoint_note_round_trips_and_its_cosignature_verifies(tmp_path: object) -> None:
    """The printed note parses back to the signed checkpoint; a cosignature over its text
    verifies under the witness key and no other."""
    from pathlib import Path

    ring = KeyRing.load_or_create(Path(str(tmp_path)))
    checkpoint = sign_checkpoint(
        ring, origin="score-gateway/audit/x", size=7, root=b"\x01" * 32, timestamp=1.5
    )
    witness = Ed25519PrivateKey.generate()
    line = cosign("w.example/1", witness, checkpoint.note(), 1_700_000_000)
    note = checkpoint_note(checkpoint, ring.public_keys[ring.key_id], [line])
    parsed, others = checkpoint_from_note(note, ring.public_keys)
    assert parsed == checkpoint
    assert others == (line,)
    key = WitnessKey("w.example/1", witness.public_key())
    assert key.verify(checkpoint.note(), line) == 1_700_000_000
    stranger = WitnessKey("w.example/1", Ed25519PrivateKey.generate().public_key())
    assert stranger.verify(checkpoint.note(), line) is None  # another key ID: ignored
    with pytest.raises(NoteError, match="does not verify"):
        key.verify(checkpoint.note().replace(b"\n7\n", b"\n8\n"), line)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"origin\n1\nroot\n", id="no-signatures"),
        pytest.param(b"origin\n1\nroot\n\nnot a signature\n", id="bad-signature-line"),
        pytest.param(b"origin\n1\x07\nroot\n\n\xe2\x80\x94 a AAAAAAA=\n", id="control-character"),
        pytest.param(
            b"origin\n\n\xe2\x80\x94 a " + base64.b64encode(b"x" * 8) + b"", id="no-final-newline"
        ),
    ],
)
def test_malformed_notes_are_refused(data: bytes) -> None:
    with pytest.raises(NoteError):
        parse_note(data)

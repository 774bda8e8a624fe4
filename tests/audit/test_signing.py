"""The key ring: ids, file modes, rotation, and refusing unusable keys."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from gateway.audit.signing import KeyRing, SigningKeyError, load_public_keys


def test_first_start_creates_a_key(data_dir: Path) -> None:
    """A fresh data dir gets one key: private file 0600, id from the raw public key."""
    ring = KeyRing.load_or_create(data_dir)
    private = ring.private_key_path
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    raw = ring.public_keys[ring.key_id].public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert ring.key_id == hashlib.sha256(raw).hexdigest()[:16]
    assert KeyRing.load_or_create(data_dir).key_id == ring.key_id


def test_rotation_keeps_old_public_keys(data_dir: Path) -> None:
    """After rotation the new key signs; the old public key stays; the old private key is gone."""
    old = KeyRing.load_or_create(data_dir)
    new = old.rotate()
    assert new.key_id != old.key_id
    loaded = KeyRing.load(data_dir)
    assert loaded.key_id == new.key_id
    assert set(loaded.public_keys) == {old.key_id, new.key_id}
    assert not old.private_key_path.exists()
    assert set(load_public_keys(loaded.public_pems())) == {old.key_id, new.key_id}


def _corrupt(path: Path) -> None:
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")


def _wrong_type(path: Path) -> None:
    path.write_bytes(
        generate_private_key(SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(_corrupt, id="corrupt-pem"),
        pytest.param(_wrong_type, id="ecdsa-not-ed25519"),
        pytest.param(_empty, id="empty-file"),
        pytest.param(_directory, id="unreadable-directory"),
    ],
)
def test_unusable_key_refuses_to_start(data_dir: Path, damage: object) -> None:
    """A present but bad key raises audit.signing_key_invalid; no new key is made."""
    ring = KeyRing.load_or_create(data_dir)
    path = ring.private_key_path
    damage(path)  # type: ignore[operator]
    with pytest.raises(SigningKeyError) as info:
        KeyRing.load_or_create(data_dir)
    assert info.value.code == "audit.signing_key_invalid"
    assert sorted(p.name for p in (data_dir / "keys").glob("*.private.pem*")) in ([], [path.name])


def test_missing_private_key_is_not_replaced(data_dir: Path) -> None:
    """Deleting the active private key does not make load_or_create generate another."""
    ring = KeyRing.load_or_create(data_dir)
    ring.private_key_path.unlink()
    with pytest.raises(SigningKeyError) as info:
        KeyRing.load_or_create(data_dir)
    assert info.value.code == "audit.signing_key_missing"


def test_generate_refuses_to_overwrite(data_dir: Path) -> None:
    KeyRing.generate(data_dir)
    with pytest.raises(SigningKeyError):
        KeyRing.generate(data_dir)


@pytest.mark.parametrize(
    "pem",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", id="garbage"),
    ],
)
def test_bad_public_key_bundle(pem: bytes) -> None:
    with pytest.raises(ValueError, match=r"PEM|public key"):
        load_public_keys(pem)
